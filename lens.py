"""What the scripts share: the data layout's paths, the CLI skeleton, prompt hashing, atomic writes,
head specs, pattern storage, figure packs, statistic tables, colormaps and images, the figure registry.

Pattern file (one per prompt, `patterns.bin`, format 2): the magic b"ATTNPAT2", a little-endian
uint64 offset of the JSON footer, one zlib stream per stored head, then the footer (to the end
of the file: n_layers, n_heads, n_tokens, scale, layout, "heads" = the flat indices
layer * n_heads + head stored, "chunks" = [start, size] of each head's stream). A stream holds
the head's lower triangle (or full matrix for non-causal models) row by row as uint16 fixed
point (value = q / scale, scale 2**14, max abs error 3.1e-5), low bytes first, then high bytes:
attention values are small, so the high bytes are nearly all zero and compress to almost
nothing. The footer comes last so that a file is written head by head as the forward pass goes.
One head is read without touching the others. Format 1 (b"ATTNPAT1", a header with "offsets",
every head stored) is still read.
"""
import argparse
import base64
import hashlib
import importlib.util
import inspect
import json
import math
import os
import re
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

DEFAULT_SAVE_PATH = Path("attn_data")
PATTERN_FILE = "patterns.bin"
VALUE_NORMS_FILE = "value_norms.f32"  # ||v_j W_O^h||: float32 [n_layers, n_heads, n_tokens], NaN where not stored
PATTERN_MAGIC = b"ATTNPAT2"
PATTERN_MAGIC_V1 = b"ATTNPAT1"  # format 1: header first, every head stored
PATTERN_SCALE = 2**14


class UserError(Exception):
    """A mistake the user can fix (bad input, missing data); reported as one line, no traceback."""


def prompt_hash(text: str) -> str:
    """Stable, URL-safe, case-insensitive-filesystem-safe id of a prompt's text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def model_dir_name(model_name: str) -> str:
    """Directory name for a model, the same from any working directory: a path (./ckpt, /x/ckpt,
    ~/ckpt) becomes its folder's name, a hub name its name with / as __ (EleutherAI__pythia-70m)."""
    if model_name.startswith((".", "/", "~")) or (os.altsep and model_name.startswith(os.altsep)):
        path = Path(model_name).expanduser()
        model_name = path.name if path.name not in ("", ".", "..") else path.resolve().name  # "." is a folder too
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_name.replace("/", "__")).strip(".") or "model"


# ---- The data layout: every path of a data dir, named as site/data.js names them --------------

def models_path(save_path: Path) -> Path:
    return Path(save_path) / "models.jsonl"


def figures_path(save_path: Path) -> Path:
    return Path(save_path) / "figures.jsonl"


def colormaps_path(save_path: Path) -> Path:
    return Path(save_path) / "colormaps.json"


def render_record_path(save_path: Path) -> Path:
    """Which figures dir render_figures.py rendered with: build_index.py indexes that one (the site never reads it)."""
    return Path(save_path) / "render.json"


def model_cfg_path(save_path: Path, model: str) -> Path:
    return Path(save_path) / model / "model_cfg.json"


def prompt_index_dir(save_path: Path, model: str) -> Path:
    """The prompt index (build_index.py): rows in hash order, the statistics tables' row order, in chunks."""
    return Path(save_path) / model / "index"


def prompt_index_path(save_path: Path, model: str) -> Path:
    """{count, chunk_size, text_chars, n_stored}: all a page reads before the rows it shows."""
    return prompt_index_dir(save_path, model) / "meta.json"


def index_hashes_path(save_path: Path, model: str) -> Path:
    """The first hash of each chunk of rows: where to look a hash up."""
    return prompt_index_dir(save_path, model) / "hashes.json"


def index_rows_path(save_path: Path, model: str, chunk: int) -> Path:
    """Rows chunk * chunk_size ... of the index, one JSON object a line."""
    return prompt_index_dir(save_path, model) / "rows" / f"{chunk}.jsonl"


def index_words_path(save_path: Path, model: str, shard: str) -> Path:
    """{word: rows (first, then differences)} of the words starting with the shard's characters."""
    return prompt_index_dir(save_path, model) / "words" / f"{shard}.json"


def index_order_path(save_path: Path, model: str) -> Path:
    """uint32 row numbers sorted by n_tokens (ties in row order): the prompt table's token order."""
    return prompt_index_dir(save_path, model) / "by_tokens.u32"


def index_stored_path(save_path: Path, model: str) -> Path:
    """The rows of the prompts whose patterns are stored, ascending."""
    return prompt_index_dir(save_path, model) / "stored.json"


def index_cache_path(save_path: Path, model: str) -> Path:
    """build_index.py's own record of the prompt.json files it read (the site never reads it)."""
    return prompt_index_dir(save_path, model) / "prompt_json_cache.jsonl"


def stats_path(save_path: Path, model: str) -> Path:
    return Path(save_path) / model / "stats.json"


def stat_table_path(save_path: Path, model: str, stat: str) -> Path:
    return Path(save_path) / model / "stats" / f"{stat}.f32"


def stat_heads_path(save_path: Path, model: str, stat: str) -> Path:
    return Path(save_path) / model / "stats" / f"{stat}.heads.json"


def prompts_dir(save_path: Path, model: str) -> Path:
    """The folder holding one folder per prompt."""
    return Path(save_path) / model / "prompts"


def prompt_dir(save_path: Path, model: str, phash: str) -> Path:
    return prompts_dir(save_path, model) / phash


def prompt_json_path(save_path: Path, model: str, phash: str) -> Path:
    return prompt_dir(save_path, model, phash) / "prompt.json"


def patterns_path(save_path: Path, model: str, phash: str) -> Path:
    return prompt_dir(save_path, model, phash) / PATTERN_FILE


def prompt_stats_path(save_path: Path, model: str, phash: str) -> Path:
    return prompt_dir(save_path, model, phash) / "stats.json"


def value_norms_path(save_path: Path, model: str, phash: str) -> Path:
    return prompt_dir(save_path, model, phash) / VALUE_NORMS_FILE


def figure_pack_path(save_path: Path, model: str, phash: str, output: str) -> Path:
    """Every head's image of one figure output (`raw`, or `func.name` for a multi-figure): see PackWriter."""
    return prompt_dir(save_path, model, phash) / f"{output}.pack"


def figure_errors_path(save_path: Path, model: str, phash: str, name: str) -> Path:
    """{"L<l>H<h>": traceback} of the heads a figure output or statistic failed on; only when one did."""
    return prompt_dir(save_path, model, phash) / f"{name}.errors.json"


def model_dirs(save_path: Path) -> list[str]:
    """Names of the data dir's model directories (those holding a model_cfg.json), sorted."""
    return sorted(p.parent.name for p in Path(save_path).glob("*/model_cfg.json"))


def is_finished(pdir: Path) -> bool:
    """Whether a prompt dir is complete: prompt.json is written after patterns.bin."""
    return (pdir / "prompt.json").is_file() and (pdir / PATTERN_FILE).is_file()


def finished_prompts(save_path: Path, model: str) -> list[str]:
    """Hashes of a model's complete prompts, sorted."""
    return sorted(p.parent.name for p in prompts_dir(save_path, model).glob("*/prompt.json")
                  if is_finished(p.parent))


def require_data_dir(save_path: Path) -> Path:
    """The data dir to read, or a UserError saying why there is none."""
    save_path = Path(save_path)
    if save_path.exists() and not save_path.is_dir():
        raise UserError(f"--save-path {save_path}: a file, not a data dir")
    if not save_path.is_dir():
        raise UserError(f"{save_path}: no data dir; run compute_activations.py first (or pass --save-path)")
    return save_path


def check_writable_dir(save_path: Path) -> None:
    """Fail before any work when the data dir to write is a file or cannot be created."""
    save_path = Path(save_path)
    if save_path.exists() and not save_path.is_dir():
        raise UserError(f"--save-path {save_path}: a file, not a directory")
    existing = next(p for p in [save_path.absolute(), *save_path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise UserError(f"--save-path {save_path}: cannot be created ({existing} is a file)")
    created = [p for p in [save_path.absolute(), *save_path.absolute().parents] if not p.exists()]
    try:  # try it: os.access says yes to root, even where nothing can be created (/proc, a read-only mount)
        save_path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=save_path).close()
    except OSError as e:
        raise UserError(f"--save-path {save_path}: cannot be created or written ({e.strerror})") from None
    finally:
        for p in created:  # nothing is left behind by the check itself
            if p.is_dir():
                p.rmdir()


# ---- The command line, the same in every script --------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are UserErrors: one `error:` line, like every other mistake."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def script_parser(doc: str) -> ArgumentParser:
    """A script's parser: its docstring's first line as description, the whole docstring under --help."""
    return ArgumentParser(description=doc.split("\n\n")[0], epilog=doc,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def positive_int(text: str) -> int:
    """argparse type for counts such as --jobs and --n-samples: 0 is a mistake, not "one"."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run_main(main: Callable[[], None], interrupted: str) -> None:
    """Run a script's main(): a UserError ends in one `error:` line and exit status 1, Ctrl-C in
    `interrupted` (what was kept, how to go on) and exit status 130, never in a traceback."""
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """--shard K/N as (K, N), 1-based; None for no sharding."""
    if spec is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise UserError(f"--shard {spec}: expected K/N with 1 <= K <= N, e.g. 2/8")
    return int(m[1]), int(m[2])


def in_shard(phash: str, shard: tuple[int, int] | None) -> bool:
    """Whether a prompt falls in shard (K, N): by its hash, so every job agrees without talking."""
    return shard is None or int(phash, 16) % shard[1] == shard[0] - 1


def parse_heads(spec: str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """Heads named by a spec such as `L0-3H*,L5H1,L*H0` (the grid's syntax), as sorted (layer, head) pairs."""
    chosen = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"L([0-9]+(?:-[0-9]+)?|\*)H([0-9]+(?:-[0-9]+)?|\*)", part.replace(" ", ""), re.I)
        if not m:
            raise UserError(f"--heads {spec}: {part!r} is not a head spec (try L0-3H*, L5H1, L*H0)")
        layers, heads = (_spec_range(spec, text, n, what) for text, n, what in
                         [(m[1], n_layers, "layer"), (m[2], n_heads, "head")])
        chosen.update((l, h) for l in layers for h in heads)
    if not chosen:
        raise UserError(f"--heads {spec!r}: names no head")
    return sorted(chosen)


def _spec_range(spec: str, text: str, n: int, what: str) -> range:
    if text == "*":
        return range(n)
    a, _, b = text.partition("-")
    a, b = int(a), int(b or a)
    if a > b or b >= n:
        raise UserError(f"--heads {spec}: {what}s {text} out of range (the model's {what}s are 0-{n - 1})")
    return range(a, b + 1)


def format_heads(heads: list[tuple[int, int]], n_layers: int, n_heads: int) -> str:
    """The shortest spec for a set of heads: whole layers as `L0-3H*`, the rest per head (as site/data.js)."""
    by_layer = [sorted(h for l2, h in heads if l2 == l) for l in range(n_layers)]
    parts, l = [], 0
    while l < n_layers:
        if len(by_layer[l]) == n_heads:
            end = l
            while end + 1 < n_layers and len(by_layer[end + 1]) == n_heads:
                end += 1
            parts.append(f"L{l}-{end}H*" if end > l else f"L{l}H*")
            l = end + 1
            continue
        parts += [f"L{l}H{h}" for h in by_layer[l]]
        l += 1
    return ",".join(parts)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temp file and rename, so a killed run never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no temp file stays behind
        tmp.unlink(missing_ok=True)
        raise


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def write_json(path: Path, obj) -> None:
    write_atomic(path, json_bytes(obj))


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl(path: Path, rows) -> None:
    write_atomic(path, jsonl_bytes(rows))


def read_text(path: Path) -> str:
    """A UTF-8 text file (a byte-order mark, as Windows tools write, is dropped); other bytes are a
    UserError naming the file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{lineno}: not UTF-8 text (byte {data[e.start]:#04x}); save it as UTF-8") from None


def read_json(path: Path) -> dict:
    """A JSON object file; a missing, corrupt or non-object file is a UserError naming it."""
    try:
        obj = json.loads(read_text(path))
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}); delete it and re-run its script") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def iter_jsonl(path: Path):
    """Yield (line number, object) of a JSONL file; a bad line is a UserError naming file and line."""
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def head_streams(stored: np.ndarray, level: int = 1) -> list[bytes]:
    """Compress [heads, 2, m] uint8 (stored form: low bytes, then high bytes) into one zlib stream per head."""
    return [zlib.compress(h, level) for h in np.ascontiguousarray(stored)]


def stored_form(values: np.ndarray) -> np.ndarray:
    """[heads, m] attention values in [0, 1] -> [heads, 2, m] uint8: uint16 fixed point, low then high bytes."""
    q = np.round(np.clip(values, 0.0, 1.0) * PATTERN_SCALE).astype("<u2", order="C")
    return np.ascontiguousarray(q.view(np.uint8).reshape(len(q), -1, 2).transpose(0, 2, 1))


class PatternWriter:
    """Write one prompt's pattern file head by head (format 2), then rename it into place.

    Streams are appended as they come (in ascending head order) and the footer that indexes
    them is written last, so no more than one head's stream is ever held for the file."""

    def __init__(self, path: Path, n_layers: int, n_heads: int, n_tokens: int, layout: str,
                 heads: list[tuple[int, int]]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.tmp*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.file = open(self.tmp, "wb")
        self.file.write(PATTERN_MAGIC + bytes(8))
        self.meta = {"format": 2, "n_layers": n_layers, "n_heads": n_heads, "n_tokens": n_tokens,
                     "scale": PATTERN_SCALE, "layout": layout,
                     "heads": [l * n_heads + h for l, h in heads], "chunks": []}

    def add(self, streams: list[bytes]) -> None:
        for s in streams:
            self.meta["chunks"].append([self.file.tell(), len(s)])
            self.file.write(s)

    def close(self) -> int:
        """Write the footer and move the file into place; returns its size in bytes."""
        if len(self.meta["chunks"]) != len(self.meta["heads"]):
            raise RuntimeError(f"{self.path}: {len(self.meta['chunks'])} streams for {len(self.meta['heads'])} heads")
        footer = self.file.tell()
        self.file.write(json.dumps(self.meta, separators=(",", ":")).encode())
        size = self.file.tell()
        self.file.seek(len(PATTERN_MAGIC))
        self.file.write(struct.pack("<Q", footer))
        self.file.close()
        os.replace(self.tmp, self.path)
        return size

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def tril_positions(n: int, layout: str) -> np.ndarray:
    """Flat positions (row * n + col) a layout stores, in stored order."""
    return np.flatnonzero(np.tri(n, dtype=bool)) if layout == "tril" else np.arange(n * n)


def encode_patterns(patterns: np.ndarray, heads: list[tuple[int, int]] | None = None, level: int = 1) -> bytes:
    """Encode [n_layers, n_heads, n, n] attention patterns (all heads, or those listed) as a pattern file."""
    import tempfile
    n_layers, n_heads, n, _ = patterns.shape
    heads = sorted(heads) if heads is not None else [(l, h) for l in range(n_layers) for h in range(n_heads)]
    layout = "tril" if not np.triu(patterns, 1).any() else "full"
    keep = tril_positions(n, layout)
    with tempfile.TemporaryDirectory() as tmp:
        writer = PatternWriter(Path(tmp) / PATTERN_FILE, n_layers, n_heads, n, layout, heads)
        for l, h in heads:
            writer.add(head_streams(stored_form(patterns[l, h].reshape(1, -1)[:, keep]), level))
        writer.close()
        return (Path(tmp) / PATTERN_FILE).read_bytes()


class NotStored(KeyError):
    """A head the pattern file does not hold (compute_activations.py --heads stored others)."""


class Patterns:
    """One prompt's stored patterns (format 1 or 2); each head is read and decompressed on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            meta, chunks = self._read_index()
            self.n_layers, self.n_heads, self.n_tokens = meta["n_layers"], meta["n_heads"], meta["n_tokens"]
            self.scale, self.layout = meta["scale"], meta["layout"]
            heads = meta["heads"]
        except (struct.error, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
            raise UserError(f"{self.path}: truncated or corrupt pattern file ({type(e).__name__}: {e}); "
                            "recompute it with compute_activations.py --force") from None
        if any(start + size > self.size for start, size in chunks):
            raise UserError(f"{self.path}: truncated pattern file ({self.size} bytes, its index needs more); "
                            "recompute it with compute_activations.py --force")
        self.chunks = dict(zip(heads, chunks))
        self.heads = [divmod(i, self.n_heads) for i in heads]

    def _read_index(self) -> tuple[dict, list[list[int]]]:
        """The file's metadata and each stored head's [start, size], from the footer (or format 1's header)."""
        with open(self.path, "rb") as f:
            self.size = os.fstat(f.fileno()).st_size
            magic = f.read(8)
            if magic == PATTERN_MAGIC:
                (footer,) = struct.unpack("<Q", f.read(8))
                f.seek(footer)
                meta = json.loads(f.read())
                return meta, meta["chunks"]
            if magic == PATTERN_MAGIC_V1:
                (size,) = struct.unpack("<I", f.read(4))
                meta = json.loads(f.read(size))
                offsets = meta["offsets"]
                meta["heads"] = list(range(len(offsets) - 1))
                return meta, [[12 + size + a, b - a] for a, b in zip(offsets, offsets[1:])]
        raise UserError(f"{self.path}: not a pattern file")

    def stored(self, layer: int, head: int) -> bool:
        return 0 <= head < self.n_heads and layer * self.n_heads + head in self.chunks

    def head(self, layer: int, head: int) -> np.ndarray:
        """The [n_tokens, n_tokens] float32 pattern of one head (query rows, key columns)."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise IndexError(f"{self.path}: no head L{layer}H{head}")
        if not self.stored(layer, head):
            raise NotStored(f"{self.path}: head L{layer}H{head} is not stored")
        start, size = self.chunks[layer * self.n_heads + head]
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(size)
        expected = 2 * (self.n_tokens ** 2 if self.layout == "full" else self.n_tokens * (self.n_tokens + 1) // 2)
        try:
            raw = zlib.decompress(data)
        except zlib.error as e:
            raise UserError(f"{self.path}: head L{layer}H{head} is corrupt ({e}); "
                            "recompute it with compute_activations.py --force") from None
        if len(raw) != expected:
            raise UserError(f"{self.path}: head L{layer}H{head} holds {len(raw)} bytes, not {expected}; "
                            "recompute it with compute_activations.py --force")
        return decode_stored(np.frombuffer(raw, np.uint8).reshape(2, -1), self.n_tokens, self.layout, self.scale)

    def all(self) -> np.ndarray:
        """Every head as one [n_layers, n_heads, n_tokens, n_tokens] float32 array (NaN where not stored)."""
        out = np.full((self.n_layers, self.n_heads, self.n_tokens, self.n_tokens), np.nan, np.float32)
        for l, h in self.heads:
            out[l, h] = self.head(l, h)
        return out


def decode_stored(stored: np.ndarray, n: int, layout: str, scale: int = PATTERN_SCALE) -> np.ndarray:
    """One head's stored form [2, m] uint8 (low bytes, high bytes; see stored_form) as its float32 [n, n] pattern."""
    lo, hi = stored
    values = (lo | (hi.astype(np.uint16) << 8)) * np.float32(1 / scale)
    if layout == "full":
        return values.reshape(n, n)
    out = np.zeros((n, n), np.float32)
    out[_tril_mask(n)] = values
    return out


@lru_cache(maxsize=16)
def _tril_mask(n: int) -> np.ndarray:
    return np.tri(n, dtype=bool)


def load_patterns(save_path: Path, model: str, phash: str) -> Patterns:
    """Open the stored patterns of one prompt of one model (see Patterns.head)."""
    path = patterns_path(save_path, model, phash)
    if not path.exists():
        raise UserError(f"{path}: no patterns stored for prompt {phash} of model {model}")
    return Patterns(path)


# ---- Figure packs: every head's image of one figure output in one file --------------------
# <output>.pack: the magic b"ATTNFIG1", uint32 n_layers, uint32 n_heads (16 bytes), then n_layers * n_heads + 1
# little-endian uint64 offsets from the file's start, then the images: PNG (SVG for some imported from
# pattern-lens). Head i = layer * n_heads + head is bytes [offset[i], offset[i + 1]); an empty range is a head
# without an image (not stored, or the figure failed on it: <output>.errors.json). A reader takes the 16 bytes
# at 16 + 8 i, then the image: two HTTP range requests for the site (data.js loadFigureImage).

PACK_MAGIC = b"ATTNFIG1"
PACK_HEADER = 16


class PackWriter:
    """Write one figure output's pack head by head, in ascending head order, then rename it into place:
    a prompt's images are never all held in memory, and a killed run leaves no pack that looks finished."""

    def __init__(self, path: Path, n_layers: int, n_heads: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.path.parent.glob(f".{self.path.name}.tmp*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.n_heads, self.n = n_heads, n_layers * n_heads
        self.file = open(self.tmp, "wb")
        self.file.write(PACK_MAGIC + struct.pack("<II", n_layers, n_heads) + bytes(8 * (self.n + 1)))
        self.starts: dict[int, int] = {}

    def add(self, layer: int, head: int, image: bytes) -> None:
        index = layer * self.n_heads + head
        if not 0 <= head < self.n_heads or not 0 <= index < self.n or any(i >= index for i in self.starts):
            raise ValueError(f"{self.path}: head L{layer}H{head} out of range or out of order")
        self.starts[index] = self.file.tell()
        self.file.write(image)

    def close(self) -> None:
        offsets = [self.file.tell()] * (self.n + 1)
        for i in reversed(range(self.n)):  # a head without an image ends where the next one starts
            offsets[i] = self.starts.get(i, offsets[i + 1])
        self.file.seek(PACK_HEADER)
        self.file.write(struct.pack(f"<{self.n + 1}Q", *offsets))
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temp file (nothing once closed)."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def read_pack_image(path: Path, layer: int, head: int) -> bytes | None:
    """One head's image from a figure pack, read as the site reads it (its offsets, then its bytes); None when
    the head has none. A file that is not a whole pack is a UserError naming it."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(PACK_HEADER)
        if len(header) < PACK_HEADER or header[:8] != PACK_MAGIC:
            raise UserError(f"{path}: not a figure pack; re-render it with render_figures.py --force")
        n_layers, n_heads = struct.unpack("<II", header[8:])
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise IndexError(f"{path}: no head L{layer}H{head} (the pack has {n_layers} x {n_heads})")
        f.seek(PACK_HEADER + 8 * (layer * n_heads + head))
        start, end = struct.unpack("<QQ", f.read(16).ljust(16, b"\xff"))
        if not start <= end <= size:
            raise UserError(f"{path}: truncated or corrupt at L{layer}H{head}; re-render it with render_figures.py --force")
        f.seek(start)
        return f.read(end - start) or None


def png_as_svg(png: bytes) -> str:
    """A PNG as an <svg> holding it (base64), drawn pixelated at its own width x height (site/export.js pngAsSvg)."""
    w, h = struct.unpack(">II", png[16:24])  # the IHDR chunk, first after the signature
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<image width="{w}" height="{h}" style="image-rendering:pixelated" preserveAspectRatio="none" '
            f'href="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"/></svg>')


# ---- Statistics: one value per head and prompt ---------------------------------------------
# prompts/<hash>/stats.json: {name: [[value per head] per layer]}, null where undefined.
# <model>/stats/<name>.f32: little-endian float32 [n_prompts, n_layers, n_heads], NaN where missing; row r
#                      is the r-th prompt in hash order (the prompt index's row r), read by byte range.
# <model>/stats.json: {"n_prompts", "n_layers", "n_heads", "top_k", "stats": {name: {"doc", "mean", "std",
#                      "min", "max", "count", "quantiles": {"0.05": .., "0.95": ..}}}}, each a [layer][head] table.
# <model>/stats/<name>.heads.json: {"bins", "heads": [[{"hist": {"lo", "hi", "counts"} | null, "top": [[hash,
#                      value] x K], "bottom": ..} per head] per layer], "prompts": {hash: {"text", "n_tokens",
#                      "stored"}} (those in some top or bottom list)}. build_index.write_stat_aggregates writes them.

def _nulls(values) -> list:
    """[layers, heads] values as nested lists, NaN (or None) as null."""
    return [[v if math.isfinite(v) else None for v in row]
            for row in np.array(values, np.float64).tolist()]


def read_prompt_stats(save_path: Path, model: str, phash: str, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """A prompt's statistics as {name: float64 [n_layers, n_heads]}, NaN where undefined; {} before any."""
    path = prompt_stats_path(save_path, model, phash)
    if not path.exists():
        return {}
    stats = {}
    for name, values in read_json(path).items():
        try:
            stats[name] = np.array(values, np.float64)
            ok = stats[name].shape == shape
        except (TypeError, ValueError):  # ragged lists, strings, objects
            ok = False
        if not ok:
            raise UserError(f"{path}: {name} is not a {shape[0]} x {shape[1]} table of numbers; "
                            "delete the file and re-run render_figures.py")
    return stats


def write_prompt_stats(save_path: Path, model: str, phash: str, stats: dict[str, np.ndarray]) -> None:
    write_json(prompt_stats_path(save_path, model, phash), {name: _nulls(v) for name, v in stats.items()})


# ---- Statistic parts: what compute_activations.py writes for every prompt, patterns stored or not ----
# <model>/parts/<run>.json: {"stats": [names], "docs": {name: doc}, "n_layers", "n_heads"}, written when the run starts;
# <run>.f32: float32 [len(stats), n_layers, n_heads] per prompt, appended batch by batch;
# <run>.jsonl: one {"hash", "text", "n_tokens", "meta", "truncated"} per prompt, appended after its values,
# so a line means its values are whole. A killed run leaves at most a partial last line, which is ignored.

def parts_dir(save_path: Path, model: str) -> Path:
    return Path(save_path) / model / "parts"


@dataclass
class Part:
    """One run's statistics: its prompts (rows of its .jsonl) and their values [prompts, stats, layers, heads]."""
    path: Path  # the .json header
    stats: list[str]
    docs: dict[str, str]
    rows: list[dict]
    values: np.ndarray


def read_parts(save_path: Path, model: str) -> list[Part]:
    """Every statistic part of a model, in name order; an unreadable one is a UserError naming it."""
    parts = []
    for header in sorted(parts_dir(save_path, model).glob("*.json")):
        meta = read_json(header)
        shape = (len(meta["stats"]), meta["n_layers"], meta["n_heads"])
        lines = header.with_suffix(".jsonl")
        text = lines.read_bytes().decode("utf-8") if lines.exists() else ""
        complete = text[:text.rfind("\n") + 1]  # a killed run's partial last line is not a row
        try:
            rows = [json.loads(line) for line in complete.splitlines() if line]
        except json.JSONDecodeError as e:
            raise UserError(f"{lines}: not valid JSON ({e.msg}); delete the part's three files and recompute") from None
        table = header.with_suffix(".f32")
        values = (np.memmap(table, "<f4", mode="r") if table.exists() and table.stat().st_size
                  else np.zeros(0, np.float32))  # mapped: a 100,000-prompt part is not read to list its rows
        per_row = int(np.prod(shape))
        if values.size < len(rows) * per_row:
            raise UserError(f"{table}: {values.size // max(per_row, 1)} rows of values for {len(rows)} prompts in {lines}")
        parts.append(Part(header, meta["stats"], meta.get("docs", {}), rows, values[:len(rows) * per_row].reshape(len(rows), *shape)))
    return parts


def part_hashes(save_path: Path, model: str) -> set[str]:
    """The prompts whose statistics some part holds."""
    return {row["hash"] for part in read_parts(save_path, model) for row in part.rows}


def read_stats(save_path: Path, model: str) -> tuple[dict, dict[str, np.ndarray]]:
    """stats.json and each statistic's float32 [prompts, layers, heads] table."""
    index = read_json(stats_path(save_path, model))
    shape = (index["n_prompts"], index["n_layers"], index["n_heads"])
    return index, {name: np.fromfile(stat_table_path(save_path, model, name), "<f4").reshape(shape)
                   for name in index["stats"]}


# ---- Colormaps and matrix images (numpy only; no matplotlib, no pillow) ------------------

# Evenly spaced anchor colours, linearly interpolated to 256 entries. viridis and magma:
# every 8th entry of matplotlib's 256-colour tables (max error 2/255); Blues, Greys and
# RdBu: the ColorBrewer schemes matplotlib itself interpolates, so those tables match it.
_COLORMAP_ANCHORS = {
    "viridis": "440154 470d60 48186a 482374 472d7b 453781 424086 3e4989 3b528b 375b8d 33638d "
               "2f6b8e 2c728e 297a8e 26828e 23898e 21918c 1f988b 1fa088 22a785 28ae80 32b67a "
               "3fbc73 4ec36b 5ec962 70cf57 84d44b 98d83e addc30 c2df23 d8e219 ece51b fde725",
    "magma": "000004 030312 0a0822 130d34 1d1147 29115a 36106b 440f76 51127c 5d177f 6a1c81 "
             "762181 832681 902a81 9c2e7f aa337d b73779 c43c75 d0416f dc4869 e75263 ef5d5e "
             "f56b5c f9795d fc8961 fd9869 fea772 feb67c fec488 fed395 fde2a3 fcf0b2 fcfdbf",
    "Blues": "f7fbff deebf7 c6dbef 9ecae1 6baed6 4292c6 2171b5 08519c 08306b",
    "Greys": "ffffff f0f0f0 d9d9d9 bdbdbd 969696 737373 525252 252525 000000",
    "RdBu": "67001f b2182b d6604d f4a582 fddbc7 f7f7f7 d1e5f0 92c5de 4393c3 2166ac 053061",
}
COLORMAPS = tuple(_COLORMAP_ANCHORS) + tuple(f"{name}_r" for name in _COLORMAP_ANCHORS)
IMAGE_FORMATS = ("svg", "svgz", "png")  # accepted from plug-ins; packs store PNG whatever they say
_COLORMAP_CACHE: dict[str, np.ndarray] = {}


def colormap_table(name: str) -> np.ndarray:
    """The colormap as a read-only uint8 [256, 3] RGB table; a "_r" suffix reverses it."""
    if name not in COLORMAPS:
        raise UserError(f"unknown colormap {name!r} (known: {', '.join(COLORMAPS)})")
    if name not in _COLORMAP_CACHE:
        hexes = "".join(_COLORMAP_ANCHORS[name.removesuffix("_r")].split())
        anchors = np.frombuffer(bytes.fromhex(hexes), np.uint8).reshape(-1, 3).astype(np.float64)
        x = np.linspace(0, 1, 256)
        xp = np.linspace(0, 1, len(anchors))
        table = np.stack([np.interp(x, xp, anchors[:, c]) for c in range(3)], 1)
        table = np.round(table[::-1] if name.endswith("_r") else table).astype(np.uint8)
        table.flags.writeable = False
        _COLORMAP_CACHE[name] = table
    return _COLORMAP_CACHE[name]


def quantize(matrix: np.ndarray, normalize: bool = False, diverging: bool = False,
             normalize_min: float | None = None) -> np.ndarray:
    """Map a matrix to colormap indices 0..255 (uint8).

    Without normalize, values must lie in [0, 1] ([-1, 1] when diverging); with it the
    range is the matrix's own (symmetric around 0 when diverging; normalize_min fixes the low end)."""
    m = np.asarray(matrix, np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a non-empty 2-D matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("matrix contains NaN or infinite values")
    if diverging:
        lim = float(np.abs(m).max()) if normalize else 1.0
        lo, hi = -(lim or 1.0), (lim or 1.0)
    elif normalize:
        lo = float(m.min()) if normalize_min is None else float(normalize_min)
        hi = float(m.max())
        hi = hi if hi > lo else lo + 1.0
    else:
        lo, hi = 0.0, 1.0
    if not normalize and (m.min() < lo - 1e-6 or m.max() > hi + 1e-6):
        raise ValueError(f"values in [{m.min():.4g}, {m.max():.4g}] outside [{lo:g}, {hi:g}]; use normalize=True")
    scaled = (m - np.float32(lo)) * np.float32(255.0 / (hi - lo)) + np.float32(0.5)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def indices_as_png(indices: np.ndarray, cmap: str = "viridis") -> bytes:
    """An 8-bit palette PNG whose palette is the colormap: 3x smaller raw data than RGB.

    The palette holds only the colours used (a head uses ~50-150 of 256), renumbered in
    order, which saves up to 768 bytes per image: an eighth of a typical file."""
    h, w = indices.shape
    used = np.bincount(indices.ravel(), minlength=256) > 0
    raw = np.empty((h, w + 1), np.uint8)
    raw[:, 0] = 0  # PNG filter "None": on attention patterns, filters cost size and time
    np.take((np.cumsum(used) - 1).astype(np.uint8), indices, out=raw[:, 1:])
    # Z_RLE: long zero runs (the causal upper triangle) plus Huffman-coded values; on
    # attention patterns it is both smaller and faster than the default strategy at any level.
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    palette = colormap_table(cmap)[used]
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + _png_chunk(b"PLTE", palette.tobytes()) + _png_chunk(b"IDAT", z.compress(raw.tobytes()) + z.flush())
            + _png_chunk(b"IEND", b""))


def matrix_as_png(matrix: np.ndarray, cmap: str = "viridis", normalize: bool = False,
                  diverging: bool = False, normalize_min: float | None = None) -> bytes:
    """A matrix as a palette PNG, one pixel per entry (see quantize for the value range)."""
    return indices_as_png(quantize(matrix, normalize, diverging, normalize_min), cmap)


def matrix_as_svg(matrix: np.ndarray, cmap: str = "viridis", normalize: bool = False,
                  diverging: bool = False, normalize_min: float | None = None) -> str:
    """A matrix as an <svg> holding its PNG (base64), drawn pixelated at width x height = columns x rows."""
    return png_as_svg(matrix_as_png(matrix, cmap, normalize, diverging, normalize_min))


# ---- Figure registry: plug-ins in figures/*.py --------------------------------------

FIGURES_DIR = Path(__file__).resolve().parent / "figures"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass
class Figure:
    """One registered function: a figure (matrix -> image), a multi-figure, or a statistic."""
    name: str
    func: Callable
    kind: str  # "figure" | "multi" | "statistic"
    outputs: list[str]  # image names it writes; [] for statistics
    format: str = "svg"
    options: dict = field(default_factory=dict)
    source: str = ""  # the file it came from, e.g. "figures/raw.py"


_REGISTERING: list[Figure] = []  # filled by the decorators while load_figures imports one file


def figure(func: Callable | None = None, *, cmap: str | None = None, normalize: bool = False,
           diverging: bool = False, normalize_min: float | None = None, format: str = "svg",
           outputs: list[str] | tuple[str, ...] | None = None):
    """Register `func(attn) -> 2-D matrix` as a figure; with outputs=[names], func returns {name: matrix}.

    Usable bare (@figure) or with options (@figure(cmap="Blues", normalize=True))."""
    cmap = cmap or ("RdBu" if diverging else "viridis")
    colormap_table(cmap)
    if format not in IMAGE_FORMATS:
        raise UserError(f"unknown format {format!r} (known: {', '.join(IMAGE_FORMATS)})")
    if outputs is not None and (not outputs or len(set(outputs)) != len(outputs)
                                or not all(_NAME_RE.match(o) for o in outputs)):
        raise UserError(f"outputs must be distinct names made of letters, digits, _ and -, got {outputs!r}")
    options = {"cmap": cmap, "normalize": normalize, "diverging": diverging, "normalize_min": normalize_min}

    def register(f: Callable) -> Callable:
        outs = [f.__name__] if outputs is None else [f"{f.__name__}.{o}" for o in outputs]
        _REGISTERING.append(Figure(f.__name__, f, "figure" if outputs is None else "multi", outs, format,
                                   {**options, "inputs": plugin_inputs(f)}))
        return f
    return register(func) if func is not None else register


def statistic(func: Callable) -> Callable:
    """Register `func(attn) -> float` (or with `token_ids`, `value_norms` parameters) as a head statistic."""
    _REGISTERING.append(Figure(func.__name__, func, "statistic", [], "", {"inputs": plugin_inputs(func)}))
    return func


PLUGIN_INPUTS = ("token_ids", "value_norms")


def plugin_inputs(func: Callable) -> list[str]:
    """What a figure or statistic receives after `attn`, by parameter name: `token_ids` (the prompt's
    token ids) and `value_norms` (this head's ||v_j W_O|| per key token). A single second parameter
    with another name gets token_ids, as statistics always have."""
    extra = list(inspect.signature(func).parameters)[1:]
    if len(extra) == 1 and extra[0] not in PLUGIN_INPUTS:
        return ["token_ids"]
    unknown = [p for p in extra if p not in PLUGIN_INPUTS]
    if unknown:
        raise UserError(f"{func.__name__}: parameter {unknown[0]!r} is not an input a figure receives "
                        f"(attn, then any of {', '.join(PLUGIN_INPUTS)})")
    return extra


def call_plugin(fig: "Figure", attn: np.ndarray, inputs: dict):
    """Call a figure or statistic with the inputs it asks for (see plugin_inputs)."""
    missing = [name for name in fig.options["inputs"] if inputs.get(name) is None]
    if missing:
        raise ValueError(f"this prompt has no {missing[0]} stored (recompute it with compute_activations.py --force)")
    return fig.func(attn, *(inputs[name] for name in fig.options["inputs"]))


def read_value_norms(save_path: Path, model: str, phash: str, shape: tuple[int, int, int]) -> np.ndarray | None:
    """A prompt's value norms [n_layers, n_heads, n_tokens] (NaN where not stored); None when it has none."""
    path = value_norms_path(save_path, model, phash)
    if not path.is_file():
        return None
    data = np.fromfile(path, "<f4")
    if data.size != np.prod(shape):
        raise UserError(f"{path}: {data.size} values, expected {shape[0]} x {shape[1]} x {shape[2]}; "
                        "recompute the prompt with compute_activations.py --force")
    return data.reshape(shape)


def load_figures(figures_dir: Path = FIGURES_DIR) -> tuple[dict[str, Figure], list[str]]:
    """Import every figures_dir/*.py; return the registry and one message per file that failed to import."""
    figures_dir = Path(figures_dir)
    if not figures_dir.is_dir():
        raise UserError(f"{figures_dir}: no figures directory")
    figures: dict[str, Figure] = {}
    errors = []
    for path in sorted(figures_dir.glob("*.py")):
        if path.name.startswith("_"):
            continue
        _REGISTERING.clear()
        spec = importlib.util.spec_from_file_location(f"lens_figures.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # a user's broken figure file must not stop the others
            errors.append(f"{path}: {type(e).__name__}: {e}")
            continue
        for fig in _REGISTERING:
            fig.source = f"{figures_dir.name}/{path.name}"
            if fig.name in figures:
                raise UserError(f"figure name {fig.name!r} is defined twice: in {figures[fig.name].source} "
                                f"and in {fig.source}; rename one")
            figures[fig.name] = fig
    _REGISTERING.clear()
    return figures, errors


def figure_records(figures: dict[str, Figure]) -> list[dict]:
    """One figures.jsonl row per registered function: what the site shows and needs to find images."""
    return [{"name": f.name, "kind": f.kind, "outputs": f.outputs, "format": f.format,
             "doc": inspect.getdoc(f.func) or "", "source": f.source,
             "code": inspect.getsource(f.func), "options": f.options} for f in figures.values()]
