"""The file formats one script writes and another reads: pattern files (patterns.bin), figure packs,
statistic parts and a prompt's stats.json. site/patterns.js and site/data.js read the first two in the browser;
this is their Python twin. It is not in lens.py because it is a third of the shared code and a format is read as
a whole:
compute_activations.py writes patterns and parts, render_figures.py packs, build_index.py reads all three.

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
import inspect
import io
import json
import math
import os
import struct
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from attention_lens import datadir, lens

PATTERN_MAGIC = b"ATTNPAT2"
PATTERN_MAGIC_V1 = b"ATTNPAT1"  # format 1: header first, every head stored
PATTERN_SCALE = 2**14


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
        self.out = lens.AtomicFile(path, drop_stale=True)
        self.file = self.out.file
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
        self.out.commit()
        return size

    def abort(self) -> None:
        self.out.abort()


def tril_positions(n: int, layout: str) -> np.ndarray:
    """Flat positions (row * n + col) a layout stores, in stored order."""
    return np.flatnonzero(np.tri(n, dtype=bool)) if layout == "tril" else np.arange(n * n)


def encode_patterns(patterns: np.ndarray, heads: list[tuple[int, int]] | None = None, level: int = 1) -> bytes:
    """Encode [n_layers, n_heads, n, n] attention patterns (all heads, or those listed) as a pattern file."""
    n_layers, n_heads, n, _ = patterns.shape
    heads = sorted(heads) if heads is not None else [(l, h) for l in range(n_layers) for h in range(n_heads)]
    layout = "tril" if not np.triu(patterns, 1).any() else "full"
    keep = tril_positions(n, layout)
    with tempfile.TemporaryDirectory() as tmp:
        writer = PatternWriter(Path(tmp) / datadir.PATTERN_FILE, n_layers, n_heads, n, layout, heads)
        for l, h in heads:
            writer.add(head_streams(stored_form(patterns[l, h].reshape(1, -1)[:, keep]), level))
        writer.close()
        return (Path(tmp) / datadir.PATTERN_FILE).read_bytes()


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
            raise lens.UserError(f"{self.path}: truncated or corrupt pattern file ({type(e).__name__}: {e}); "
                            "recompute it with compute_activations.py --force") from None
        if any(start + size > self.size for start, size in chunks):
            raise lens.UserError(f"{self.path}: truncated pattern file ({self.size} bytes, its index needs more); "
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
        raise lens.UserError(f"{self.path}: not a pattern file")

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
            raise lens.UserError(f"{self.path}: head L{layer}H{head} is corrupt ({e}); "
                            "recompute it with compute_activations.py --force") from None
        if len(raw) != expected:
            raise lens.UserError(f"{self.path}: head L{layer}H{head} holds {len(raw)} bytes, not {expected}; "
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
    path = datadir.patterns_path(save_path, model, phash)
    if not path.exists():
        raise lens.UserError(f"{path}: no patterns stored for prompt {phash} of model {model}")
    return Patterns(path)


# ---- Figure packs: every head's image of one figure output in one file --------------------
# <output>.pack: the magic b"ATTNFIG1", uint32 n_layers, uint32 n_heads (16 bytes), then n_layers * n_heads + 1
# little-endian uint64 offsets from the file's start, then the images: PNG (SVG for some imported from
# pattern-lens). Head i = layer * n_heads + head is bytes [offset[i], offset[i + 1]); an empty range is a head
# without an image (not stored, or the figure failed on it: <output>.errors.json). A reader takes the 16 bytes
# at 16 + 8 i, then the image: two HTTP range requests for the site (data.js loadFigureImage).

PACK_MAGIC = b"ATTNFIG1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # every image a pack holds starts so (site/data.js loadFigureImage checks it)
PACK_HEADER = 16


class PackWriter:
    """Write one figure output's pack head by head, in ascending head order, then rename it into place:
    a prompt's images are never all held in memory, and a killed run leaves no pack that looks finished."""

    def __init__(self, path: Path, n_layers: int, n_heads: int):
        self.path = Path(path)
        self.out = lens.AtomicFile(path, drop_stale=True)
        self.file = self.out.file
        self.n_heads, self.n = n_heads, n_layers * n_heads
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
        self.out.commit()

    def abort(self) -> None:
        """Drop the temp file (nothing once closed)."""
        self.out.abort()


def read_pack_image(path: Path, layer: int, head: int) -> bytes | None:
    """One head's image from a figure pack, read as the site reads it (its offsets, then its bytes); None when
    the head has none. A file that is not a whole pack is a lens.UserError naming it."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(PACK_HEADER)
        if len(header) < PACK_HEADER or header[:8] != PACK_MAGIC:
            raise lens.UserError(f"{path}: not a figure pack; re-render it with render_figures.py --force")
        n_layers, n_heads = struct.unpack("<II", header[8:])
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise IndexError(f"{path}: no head L{layer}H{head} (the pack has {n_layers} x {n_heads})")
        f.seek(PACK_HEADER + 8 * (layer * n_heads + head))
        start, end = struct.unpack("<QQ", f.read(16).ljust(16, b"\xff"))
        if not start <= end <= size:
            raise lens.UserError(f"{path}: truncated or corrupt at L{layer}H{head}; "
                            "re-render it with render_figures.py --force")
        f.seek(start)
        return f.read(end - start) or None


# ---- Statistic parts: what compute_activations.py writes for every prompt, patterns stored or not ----
# <model>/parts/<run>.json: {"stats": [names], "docs": {name: doc}, "n_layers", "n_heads"}, written when the run starts;
# <run>.f32: float32 [len(stats), n_layers, n_heads] per prompt, appended batch by batch;
# <run>.jsonl: one {"hash", "text", "n_tokens", "meta", "truncated", "n_repeated"} per prompt, appended after its
# values, so a line means its values are whole. A killed run leaves at most a partial last line, which is ignored.


@dataclass
class Part:
    """One run's statistics: its prompts (rows of its .jsonl from first_row on) and their values [prompts, stats,
    layers, heads]; end_byte: the .jsonl's length up to its last whole row (where a later read starts)."""
    path: Path  # the .json header
    stats: list[str]
    docs: dict[str, str]
    rows: list[dict]
    values: np.ndarray
    first_row: int = 0
    end_byte: int = 0
    code: dict[str, str] = field(default_factory=dict)  # {name: lens.code_of} of its statistics ({}: not recorded)

    @property
    def name(self) -> str:
        return self.path.stem


class StatsPart:
    """This run's statistics part (storage.read_parts reads it): created on first use, appended batch by batch."""

    def __init__(self, save_path: Path, model_dir: str, stats: list[lens.Figure], n_layers: int, n_heads: int):
        now = time.time_ns()  # names sort as the runs started (the index's row order): to the nanosecond
        run = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}-{os.getpid()}-" \
              f"{os.urandom(3).hex()}"  # shards never collide
        self.header = datadir.parts_dir(save_path, model_dir) / f"{run}.json"
        # the docs travel with the values: the site shows them whichever figures dir build_index.py reads
        self.meta = {"stats": [f.name for f in stats], "docs": {f.name: inspect.getdoc(f.func) or "" for f in stats},
                     "code": {f.name: lens.code_of(f) for f in stats}, "n_layers": n_layers, "n_heads": n_heads}
        self.rows = 0

    def append(self, rows: list[dict], values: np.ndarray) -> None:
        """Values [prompts, stats, layers, heads] first, then one line per prompt: a line means its values are whole."""
        if not self.rows:
            lens.write_json(self.header, self.meta)
        with open(self.header.with_suffix(".f32"), "ab") as f:
            f.write(values.astype("<f4").tobytes())
        with open(self.header.with_suffix(".jsonl"), "ab") as f:
            f.write(lens.jsonl_bytes(rows))
        self.rows += len(rows)

    def write_sums(self, sums: dict) -> None:
        """The run's model-wide totals over its rows so far (forward.HeadSums.snapshot), as <run>.sums.npz with
        those rows' count: written after the rows they cover, so a killed run's file never covers a missing row."""
        if not self.rows:
            return
        buf = io.BytesIO()
        np.savez(buf, rows=np.int64(self.rows), **sums)
        lens.write_atomic(self.header.with_suffix(".sums.npz"), buf.getvalue())


def read_sums(save_path: Path, model: str, superseded: set[str] = frozenset()) -> dict | None:
    """The model-wide totals of every part (each part's <run>.sums.npz) added up: {"edges", "lookback" [layers,
    heads, bins], "counts" [vocab ids seen], "ids", "query", "key" [layers, heads, ids], "prompts", "tokens" (every
    run kept token totals)}; None when no part has any. A part in `superseded` (a later run computed some of its
    prompts again) is left out, lest those prompts count twice."""
    total, prompts, runs = None, 0, []
    for header in sorted(datadir.parts_dir(save_path, model).glob("*.json")):
        path = header.with_suffix(".sums.npz")
        if header.stem in superseded or not path.is_file():
            continue
        try:
            with np.load(path) as z:
                got = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise lens.UserError(f"{path}: unreadable ({e}); delete it (its part's prompts then have no look-back "
                                 "or token totals)") from None
        prompts += int(got["rows"])
        if total is None:
            total = {"edges": got["edges"], "lookback": got["lookback"].copy(), "tokens": True}
        else:
            total["lookback"] += got["lookback"]
        total["tokens"] &= bool(got.get("tokens", True))  # a run past HeadSums.MAX_TOKEN_ENTRIES kept none
        runs.append(got)
    if total is None:
        return None
    # each part's token ids are distinct: its columns add into the union's by fancy-index +=
    ids, where = np.unique(np.concatenate([r["ids"] for r in runs]).astype(np.int64), return_inverse=True)
    shape = (*total["lookback"].shape[:2], len(ids))
    total.update(prompts=prompts, ids=ids, counts=np.zeros(len(ids), np.int64), query=np.zeros(shape),
                 key=np.zeros(shape))
    at = 0
    for r in runs:
        cols = where[at:at + len(r["ids"])]
        at += len(r["ids"])
        total["counts"][cols] += r["counts"]
        total["query"][..., cols] += r["query"]
        total["key"][..., cols] += r["key"]
    return total


def read_parts(save_path: Path, model: str, start: dict[str, tuple[int, int]] | None = None) -> list[Part]:
    """Every statistic part of a model, in name order; an unreadable one is a lens.UserError naming it.
    `start`: {part name: (rows, bytes)} already read, skipped (build_index.py reads only the rows added since)."""
    parts = []
    for header in sorted(datadir.parts_dir(save_path, model).glob("*.json")):
        meta = lens.read_json(header)
        shape = (len(meta["stats"]), meta["n_layers"], meta["n_heads"])
        first_row, first_byte = (start or {}).get(header.stem, (0, 0))
        lines = header.with_suffix(".jsonl")
        data = b""
        if lines.exists():
            with open(lines, "rb") as f:
                f.seek(first_byte)
                data = f.read()
        complete = data[:data.rfind(b"\n") + 1]  # a killed run's partial last line is not a row
        try:
            rows = [json.loads(line) for line in complete.decode("utf-8").splitlines() if line]
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise lens.UserError(f"{lines}: not valid JSON ({getattr(e, 'msg', e)}); delete the part's three files "
                            "and recompute") from None
        table = header.with_suffix(".f32")
        values = (np.memmap(table, "<f4", mode="r") if table.exists() and table.stat().st_size
                  else np.zeros(0, np.float32))  # mapped: a 100,000-prompt part is not read to list its rows
        per_row = int(np.prod(shape))
        end_row = first_row + len(rows)
        if values.size < end_row * per_row:
            raise lens.UserError(f"{table}: {values.size // max(per_row, 1)} rows of values for {end_row} prompts "
                            f"in {lines}")
        parts.append(Part(header, meta["stats"], meta.get("docs", {}), rows,
                          values[first_row * per_row:end_row * per_row].reshape(len(rows), *shape),
                          first_row, first_byte + len(complete), meta.get("code", {})))
    return parts


# ---- Statistics: one value per head and prompt; prompts/<hash>/stats.json: {name: [[value per head] per layer]},
# null where undefined

def nan_as_null(values) -> list:
    """[layers, heads] values as nested lists, NaN (or None) as null."""
    return [[v if math.isfinite(v) else None for v in row]
            for row in np.array(values, np.float64).tolist()]


CODE_KEY = "#code"  # stats.json's {name: lens.code_of} of the code that computed each (no statistic is so named)


def read_prompt_stats(save_path: Path, model: str, phash: str,
                      shape: tuple[int, int]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A prompt's statistics as {name: float64 [n_layers, n_heads]}, NaN where undefined, and the code that
    computed them ({name: lens.code_of}, where recorded); ({}, {}) before any."""
    path = datadir.prompt_stats_path(save_path, model, phash)
    if not path.exists():
        return {}, {}
    stats, found = {}, lens.read_json(path)
    code = found.pop(CODE_KEY, {})
    if not isinstance(code, dict):
        raise lens.UserError(f"{path}: {CODE_KEY} is not an object; delete the file and re-run render_figures.py")
    for name, values in found.items():
        try:
            stats[name] = np.array(values, np.float64)
            ok = stats[name].shape == shape
        except (TypeError, ValueError):  # ragged lists, strings, objects
            ok = False
        if not ok:
            raise lens.UserError(f"{path}: {name} is not a {shape[0]} x {shape[1]} table of numbers; "
                            "delete the file and re-run render_figures.py")
    return stats, code


def read_value_norms(save_path: Path, model: str, phash: str, shape: tuple[int, int, int]) -> np.ndarray | None:
    """A prompt's value norms [n_layers, n_heads, n_tokens] (NaN where not stored); None when it has none."""
    path = datadir.value_norms_path(save_path, model, phash)
    if not path.is_file():
        return None
    data = np.fromfile(path, "<f4")
    if data.size != np.prod(shape):
        raise lens.UserError(f"{path}: {data.size} values, expected {shape[0]} x {shape[1]} x {shape[2]}; "
                        "recompute the prompt with compute_activations.py --force")
    return data.reshape(shape)
