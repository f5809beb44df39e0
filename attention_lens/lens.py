"""What two or more of the scripts and modules share: prompt hashing and model dir names, the CLI skeleton, head
specs, search words, JSON and atomic writes, colormaps and PNG images, the figure registry (the plug-in API).
Every path of a data dir is in datadir.py; the file formats (pattern files, figure packs, statistic parts, a
prompt's stats.json) are in storage.py.
"""
import argparse
import base64
import errno
import hashlib
import importlib.util
import inspect
import json
import math
import os
import re
import socket
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from attention_lens import datadir

DEFAULT_SAVE_PATH = Path("attn_data")
SITE_DIR = Path(__file__).resolve().parent.parent / "site"
# model_cfg.json keys we keep of TransformerLens's config (import_pattern_lens.py keeps the same of pattern-lens's)
MODEL_CFG_KEYS = ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab", "act_fn",
                  "default_prepend_bos", "positional_embedding_type", "original_architecture")


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


def model_dirs(save_path: Path) -> list[str]:
    """Names of the data dir's model directories (those holding a model_cfg.json), sorted."""
    return sorted(p.parent.name for p in Path(save_path).glob("*/model_cfg.json"))


def is_finished(pdir: Path) -> bool:
    """Whether a prompt dir is complete: prompt.json is written after patterns.bin."""
    return (pdir / "prompt.json").is_file() and (pdir / datadir.PATTERN_FILE).is_file()


def finished_prompts(save_path: Path, model: str) -> list[str]:
    """Hashes of a model's complete prompts, sorted."""
    return sorted(p.parent.name for p in datadir.prompts_dir(save_path, model).glob("*/prompt.json")
                  if is_finished(p.parent))


def read_model_cfg(save_path: Path, model: str) -> dict:
    """A model's model_cfg.json, with the shape every reader needs; a UserError naming the file otherwise."""
    path = datadir.model_cfg_path(save_path, model)
    cfg = read_json(path)
    if not all(isinstance(cfg.get(k), int) and cfg[k] > 0 for k in ("n_layers", "n_heads")):
        raise UserError(f"{path}: no n_layers and n_heads (compute_activations.py writes this file: run it again "
                        "for this model, or remove the model's dir)")
    return cfg


def require_data_dir(save_path: Path) -> Path:
    """The data dir to read, or a UserError saying why there is none."""
    save_path = Path(save_path)
    if save_path.exists() and not save_path.is_dir():
        raise UserError(f"--save-path {save_path}: a file, not a data dir")
    if not save_path.is_dir():
        raise UserError(f"{save_path}: no data dir; run compute_activations.py first (or pass --save-path)")
    return save_path


# ---- The command line, the same in every script --------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are UserErrors: one `error:` line, like every other mistake."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def script_parser(doc: str) -> ArgumentParser:
    """A script's parser: its docstring's first line as description, the whole docstring under --help."""
    return ArgumentParser(description=doc.split("\n\n")[0], epilog=doc,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def save_path_arg(text: str) -> Path:
    """argparse type of --save-path: a dir name (an empty one would mean the current directory unsaid)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; name the data dir, e.g. attn_data")
    return Path(text)


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
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        sys.exit(f"error: {e.filename or 'a file'}: {e.strerror} ({interrupted})")


# what the machine, not the code, makes of a write: a full disk or quota, a read-only or forbidden dir
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


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
    if a > b:
        raise UserError(f"--heads {spec}: {what}s {text} run backwards")
    if b >= n:
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


TEMP_NAME = re.compile(r"\.tmp(\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+|(?P<old_pid>\d+))$")  # old: .tmp<pid>
STALE_SECONDS = 24 * 3600  # a temp file of another machine's writer this old is a killed run's
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


class AtomicFile:
    """A file written under a temp name beside it and renamed into place by commit(), so a killed run never leaves
    a half file that looks finished; abort() drops it. The temp name is this writer's own (host, pid, random):
    two writers of one path, in two runs on one data dir, never touch each other's. The one temp-file scheme
    (write_atomic, storage's writers)."""

    def __init__(self, path: Path, drop_stale: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if drop_stale:
            drop_stale_temps(self.path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp.{HOST}.{os.getpid()}.{os.urandom(4).hex()}")
        self.file = open(self.tmp, "wb")

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temp file (nothing once committed)."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def drop_stale_temps(path: Path) -> None:
    """Delete the temp files of `path` that killed runs left: those of a process of this machine that is gone, and
    any a day old (another machine's); a live writer's are left alone."""
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        m = TEMP_NAME.search(tmp.name)
        here = m and (m["host"] == HOST or m["old_pid"])  # a writer of this machine, alive or not
        try:
            if here and process_alive(int(m["pid"] or m["old_pid"])):
                continue
            if not here and time.time() - tmp.stat().st_mtime < STALE_SECONDS:
                continue
            tmp.unlink()
        except FileNotFoundError:  # its writer finished or dropped it meanwhile
            pass


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temp file and rename, so a killed run never leaves a half file."""
    out = AtomicFile(path)
    try:
        out.file.write(data.encode("utf-8") if isinstance(data, str) else data)
        out.commit()
    except BaseException:  # a full disk, Ctrl-C: no temp file stays behind
        out.abort()
        raise


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file alone, so its mtime (and browser caches) stay valid."""
    if not (path.is_file() and path.read_bytes() == data):
        write_atomic(path, data)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def write_json(path: Path, obj) -> None:
    write_atomic(path, json_bytes(obj))


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


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
        try:  # NaN and Infinity (not JSON, but Python writes them) are kept as the strings they are
            row = json.loads(line, parse_constant=str)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise UserError(f"{path}:{lineno}: nested too deeply to read") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


# ---- Search: the words a prompt is found by (site/data.js searchTerms is the same rule) ----

WORD = re.compile(r"\w+")  # site/data.js's WORD: letters, digits and _ (Unicode)


def search_words(record: dict) -> set[str]:
    """The words a search finds a prompt by: of its text and its meta values, lowercased."""
    meta = record["meta"]
    text = record["text"] + (" " + json.dumps(list(meta.values()), ensure_ascii=False) if meta else "")
    return set(WORD.findall(" ".join(set(text.lower().split()))))  # no \w is a space: each piece once is enough


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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC (the palette PNGs here, the notebook's RGB picture)."""
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
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + png_chunk(b"PLTE", palette.tobytes()) + png_chunk(b"IDAT", z.compress(raw.tobytes()) + z.flush())
            + png_chunk(b"IEND", b""))


def matrix_as_png(matrix: np.ndarray, cmap: str = "viridis", normalize: bool = False,
                  diverging: bool = False, normalize_min: float | None = None) -> bytes:
    """A matrix as a palette PNG, one pixel per entry (see quantize for the value range)."""
    return indices_as_png(quantize(matrix, normalize, diverging, normalize_min), cmap)


def png_as_svg(png: bytes) -> str:
    """A PNG as an <svg> holding it (base64), drawn pixelated at its own width x height (site/export.js pngAsSvg)."""
    w, h = struct.unpack(">II", png[16:24])  # the IHDR chunk, first after the signature
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
            f'<image width="{w}" height="{h}" style="image-rendering:pixelated" preserveAspectRatio="none" '
            f'href="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"/></svg>')


def matrix_as_svg(matrix: np.ndarray, cmap: str = "viridis", normalize: bool = False,
                  diverging: bool = False, normalize_min: float | None = None) -> str:
    """A matrix as an <svg> holding its PNG (base64), drawn pixelated at width x height = columns x rows."""
    return png_as_svg(matrix_as_png(matrix, cmap, normalize, diverging, normalize_min))


# ---- Figure registry: plug-ins in figures/*.py --------------------------------------

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass
class Figure:
    """One registered function: a figure (matrix -> image), a multi-figure, or a statistic."""
    name: str
    func: Callable
    kind: str  # "figure" | "multi" | "statistic"
    outputs: list[str]  # image names it writes; [] for statistics
    options: dict = field(default_factory=dict)
    source: str = ""  # the file it came from, e.g. "figures/raw.py"


_REGISTERING: list[Figure] = []  # filled by the decorators while load_figures imports one file


def figure(func: Callable | None = None, *, cmap: str | None = None, normalize: bool = False,
           diverging: bool = False, normalize_min: float | None = None,
           outputs: list[str] | tuple[str, ...] | None = None):
    """Register `func(attn) -> 2-D matrix` as a figure; with outputs=[names], func returns {name: matrix}.

    Usable bare (@figure) or with options (@figure(cmap="Blues", normalize=True))."""
    cmap = cmap or ("RdBu" if diverging else "viridis")
    colormap_table(cmap)
    if outputs is not None and (not outputs or len(set(outputs)) != len(outputs)
                                or not all(_NAME_RE.match(o) for o in outputs)):
        raise UserError(f"outputs must be distinct names made of letters, digits, _ and -, got {outputs!r}")
    options = {"cmap": cmap, "normalize": normalize, "diverging": diverging, "normalize_min": normalize_min}

    def register(f: Callable) -> Callable:
        check_plugin_name(f)
        outs = [f.__name__] if outputs is None else [f"{f.__name__}.{o}" for o in outputs]
        _REGISTERING.append(Figure(f.__name__, f, "figure" if outputs is None else "multi", outs,
                                   {**options, "inputs": plugin_inputs(f)}))
        return f
    return register(func) if func is not None else register


def statistic(func: Callable) -> Callable:
    """Register `func(attn) -> float` (or with `token_ids`, `value_norms` parameters) as a head statistic."""
    check_plugin_name(func)
    _REGISTERING.append(Figure(func.__name__, func, "statistic", [], {"inputs": plugin_inputs(func)}))
    return func


def code_of(fig: "Figure") -> str:
    """The identity of a plug-in's code (a hash of its source): values computed by other code are not its values."""
    return hashlib.sha256(inspect.getsource(fig.func).encode("utf-8")).hexdigest()[:16]


def check_plugin_name(func: Callable) -> None:
    """A plug-in's name names its files (packs, errors): letters, digits, _ and - only, so it stays in its dir."""
    if not isinstance(func.__name__, str) or not _NAME_RE.match(func.__name__):
        raise UserError(f"plug-in name {func.__name__!r}: use letters, digits, _ and - only (it names files)")


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
    """Call a figure or statistic with the inputs it asks for (see plugin_inputs). It gets read-only views (one
    that edited its input would change what the plug-ins after it see), and an exit it calls is its failure,
    not the end of the run."""
    missing = [name for name in fig.options["inputs"] if inputs.get(name) is None]
    if missing:
        raise ValueError(f"this prompt has no {missing[0]} stored (recompute it with compute_activations.py --force)")
    args = [read_only(attn), *(read_only(inputs[name]) for name in fig.options["inputs"])]
    try:
        return fig.func(*args)
    except SystemExit as e:
        raise RuntimeError(f"{fig.name} called sys.exit({e.code!r})") from None


def statistic_value(value) -> float:
    """A statistic's return value as stored: a float, NaN meaning "not defined here"; an infinite one fails."""
    value = float(value)
    if math.isinf(value):
        raise ValueError(f"returned {value} (a statistic is a finite number, or NaN where it is not defined)")
    return value


def read_only(x):
    """A view of an array that raises on write (other inputs as they are)."""
    if not isinstance(x, np.ndarray):
        return x
    view = x.view()
    view.flags.writeable = False
    return view


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
        except (Exception, SystemExit) as e:  # a broken figure file (even one that exits) must not stop the others
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


def load_figures_or_warn(figures_dir: Path = FIGURES_DIR) -> dict[str, Figure]:
    """load_figures, with a warning on stderr for each file that failed to import (every script's one wording)."""
    figures, errors = load_figures(figures_dir)
    for error in errors:
        print(f"warning: skipping a figure file that failed to import: {error}", file=sys.stderr)
    return figures
