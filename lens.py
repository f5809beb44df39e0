"""What the scripts share: paths, prompt hashing, atomic writes, pattern storage.

Pattern file (one per prompt, `patterns.bin`): the magic b"ATTNPAT1", a little-endian
uint32 header length, a JSON header, then one zlib chunk per head (layer-major). A chunk
holds the head's lower triangle (or full matrix for non-causal models) row by row as
uint16 fixed point (value = q / scale, scale 2**14, max abs error 3.1e-5), low bytes
first, then high bytes: attention values are small, so the high bytes are nearly all
zero and compress to almost nothing. One head is read without touching the others.
"""
import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

DEFAULT_SAVE_PATH = Path("attn_data")
PATTERN_FILE = "patterns.bin"
PATTERN_MAGIC = b"ATTNPAT1"
PATTERN_SCALE = 2**14


class UserError(Exception):
    """A mistake the user can fix (bad input, missing data); reported as one line, no traceback."""


def prompt_hash(text: str) -> str:
    """Stable, URL-safe, case-insensitive-filesystem-safe id of a prompt's text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def model_dir_name(model_name: str) -> str:
    """Directory name for a model: a local checkpoint path becomes its folder name."""
    name = Path(model_name).name if os.sep in model_name and Path(model_name).exists() else model_name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("/", "__")).strip(".") or "model"


def prompt_dir(save_path: Path, model: str, phash: str) -> Path:
    return Path(save_path) / model / "prompts" / phash


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temp file and rename, so a killed run never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def write_jsonl(path: Path, rows) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in iter_jsonl(path)]


def iter_jsonl(path: Path):
    """Yield (line number, object) of a JSONL file; a bad line is a UserError naming file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def encode_patterns(patterns: np.ndarray, level: int = 1) -> bytes:
    """Encode [n_layers, n_heads, n, n] attention patterns into the pattern file format."""
    n_layers, n_heads, n, _ = patterns.shape
    causal = not np.triu(patterns, 1).any()
    rows, cols = np.tril_indices(n) if causal else np.indices((n, n)).reshape(2, -1)
    flat = patterns[:, :, rows, cols].reshape(n_layers * n_heads, -1)
    q = np.ascontiguousarray(np.round(np.clip(flat, 0.0, 1.0) * PATTERN_SCALE), dtype="<u2")
    shuffled = np.ascontiguousarray(q.view(np.uint8).reshape(len(q), -1, 2).transpose(0, 2, 1))
    chunks = [zlib.compress(h.tobytes(), level) for h in shuffled]
    offsets = np.cumsum([0] + [len(c) for c in chunks]).tolist()
    header = json.dumps({
        "n_layers": n_layers, "n_heads": n_heads, "n_tokens": n, "scale": PATTERN_SCALE,
        "layout": "tril" if causal else "full", "offsets": offsets,
    }).encode()
    return PATTERN_MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)


class Patterns:
    """One prompt's stored patterns; each head is read and decompressed on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            if f.read(8) != PATTERN_MAGIC:
                raise UserError(f"{self.path}: not a pattern file")
            (size,) = struct.unpack("<I", f.read(4))
            meta = json.loads(f.read(size))
        self.data_start = 12 + size
        self.n_layers, self.n_heads, self.n_tokens = meta["n_layers"], meta["n_heads"], meta["n_tokens"]
        self.scale, self.layout, self.offsets = meta["scale"], meta["layout"], meta["offsets"]

    def head(self, layer: int, head: int) -> np.ndarray:
        """The [n_tokens, n_tokens] float32 pattern of one head (query rows, key columns)."""
        if not (0 <= layer < self.n_layers and 0 <= head < self.n_heads):
            raise IndexError(f"{self.path}: no head L{layer}H{head}")
        i = layer * self.n_heads + head
        with open(self.path, "rb") as f:
            f.seek(self.data_start + self.offsets[i])
            raw = zlib.decompress(f.read(self.offsets[i + 1] - self.offsets[i]))
        q = np.frombuffer(raw, np.uint8).reshape(2, -1).T.copy().view("<u2")[:, 0]
        n = self.n_tokens
        out = np.zeros((n, n), np.float32)
        if self.layout == "tril":
            out[np.tril_indices(n)] = q / np.float32(self.scale)
        else:
            out[:] = (q / np.float32(self.scale)).reshape(n, n)
        return out

    def all(self) -> np.ndarray:
        """Every head as one [n_layers, n_heads, n_tokens, n_tokens] float32 array."""
        return np.stack([np.stack([self.head(l, h) for h in range(self.n_heads)])
                         for l in range(self.n_layers)])


def load_patterns(save_path: Path, model: str, phash: str) -> Patterns:
    """Open the stored patterns of one prompt of one model (see Patterns.head)."""
    path = prompt_dir(save_path, model, phash) / PATTERN_FILE
    if not path.exists():
        raise UserError(f"{path}: no patterns stored for prompt {phash} of model {model}")
    return Patterns(path)
