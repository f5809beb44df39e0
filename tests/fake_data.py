"""Write a data dir with synthetic patterns (no torch needed): for render, index and site tests."""
import zlib
from pathlib import Path

import numpy as np

from attention_lens import aggregate, build_index, datadir, lens, prompt_index, storage

TEXTS = [
    "The cat sat on the mat.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "def add(a, b):\n    return a + b",
    "Attention is all you need.",
]


def fake_patterns(n_layers: int, n_heads: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Causal softmax patterns with sharp and diffuse heads, float32 [layers, heads, n, n]."""
    logits = rng.normal(0, 1, (n_layers, n_heads, n, n)) * rng.uniform(0.5, 4, (n_layers, n_heads, 1, 1))
    logits = np.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


def make_data(save_path: Path, model: str = "fake-model", n_layers: int = 2, n_heads: int = 3,
              texts: list[str] = TEXTS, seed: int = 0) -> list[str]:
    """Write model_cfg.json and, per text, patterns.bin then prompt.json (as compute_activations.py
    orders them) through lens's writers and paths; return the prompt hashes."""
    rng = np.random.default_rng(seed)
    lens.write_json(datadir.model_cfg_path(save_path, model), {
        "model_name": model, "model_dir": model, "n_layers": n_layers, "n_heads": n_heads,
        "d_model": 16 * n_heads, "d_head": 16, "n_ctx": 256, "default_prepend_bos": True,
    })
    hashes = []
    for text in texts:
        tokens = ["<|endoftext|>"] + [t for t in text.replace(" ", "\u0120 ").split(" ") if t]
        tokens = [t.replace("\u0120", " ") for t in tokens]
        h = lens.prompt_hash(text)
        lens.write_atomic(datadir.patterns_path(save_path, model, h),
                          storage.encode_patterns(fake_patterns(n_layers, n_heads, len(tokens), rng)))
        lens.write_json(datadir.prompt_json_path(save_path, model, h), {
            "text": text, "hash": h, "tokens": tokens, "token_ids": [zlib.crc32(t.encode()) % 1000 for t in tokens],
            "n_tokens": len(tokens), "meta": {}})
        hashes.append(h)
    return hashes


def drop_images(save_path: Path, model: str, phash: str, output: str, heads: list[tuple[int, int]],
                error: str | None = None) -> None:
    """Rewrite a rendered pack without the images of `heads` (as render_figures.py leaves a head it made no image
    of); with `error`, those heads failed with that traceback, in the output's errors file."""
    cfg = lens.read_json(datadir.model_cfg_path(save_path, model))
    path = datadir.figure_pack_path(save_path, model, phash, output)
    images = {(l, h): storage.read_pack_image(path, l, h)
              for l in range(cfg["n_layers"]) for h in range(cfg["n_heads"])}
    pack = storage.PackWriter(path, cfg["n_layers"], cfg["n_heads"])
    for (l, h), image in images.items():
        if image is not None and (l, h) not in heads:
            pack.add(l, h, image)
    pack.close()
    if error is not None:
        lens.write_json(datadir.figure_errors_path(save_path, model, phash, output),
                        {f"L{l}H{h}": error for l, h in heads})
        build_index.build_index(save_path)  # as render_figures.py ends: the index lists the new file


def index_rows(save_path: Path, model: str) -> list[dict]:
    """The prompt index's rows as build_index.py wrote them: every chunk, in row order (the tables' rows)."""
    count = lens.read_json(datadir.prompt_index_path(save_path, model))["count"]
    rows, k = [], 0
    while len(rows) < count:
        rows += [row for _, row in lens.iter_jsonl(datadir.index_rows_path(save_path, model, k))]
        k += 1
    return rows


def read_stats(save_path: Path, model: str) -> tuple[dict, dict[str, np.ndarray]]:
    """stats.json and each statistic's float32 [prompts, layers, heads] table."""
    index = lens.read_json(datadir.stats_path(save_path, model))
    shape = (index["n_prompts"], index["n_layers"], index["n_heads"])
    return index, {name: np.fromfile(datadir.stat_table_path(save_path, model, name), "<f4").reshape(shape)
                   for name in index["stats"]}



def write_prompt_index(save_path: Path, model: str, records: list[dict]) -> None:
    """The whole index of these rows (build_index's own writers, for a benchmark's data dir)."""
    rows = prompt_index.Rows()
    for record in records:
        r = rows.add(record["hash"], record["n_tokens"], -1, None)
        rows.stored[r] = record["stored"]
    prompt_index.write_index(save_path, model, rows, 0, dict(enumerate(records)))


def write_stat_aggregates(save_path: Path, model: str, hashes: list[str], tables: dict[str, np.ndarray],
                          docs: dict[str, str], prompts: dict[str, dict], top_k: int = 10, bins: int = 32) -> None:
    """Each statistic's float32 [prompts (the index's rows), layers, heads] table (NaN: no value) written whole as
    stats/<name>.f32, then its aggregates (write_aggregates)."""
    clean = {}
    for name, table in tables.items():
        if table.ndim != 3 or len(table) != len(hashes):
            raise ValueError(f"{name}: table of shape {table.shape} for {len(hashes)} prompts")
        clean[name] = aggregate.finite(table)
        lens.write_atomic(datadir.stat_table_path(save_path, model, name), clean[name].tobytes())
    aggregate.write_aggregates(save_path, model, hashes, clean, docs, prompts, top_k, bins)
