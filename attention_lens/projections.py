"""What each head reads and writes: a 2-D PCA of its query vectors, of the key vectors it attends to most and of its
outputs z W_O, at a seeded sample of query positions chosen over all of a model's prompts.

    python compute_activations.py demo prompts.jsonl         # at the end of every run, after the examples
    python compute_activations.py demo --projections         # alone, once --shard runs are together

The sample: every head shares one set of points, so the three plots of two heads show the same positions. Prompts
are taken in the order of their key sha256("<seed>:<prompt hash>") (examples.prompt_keys), each giving its
`per_prompt` query positions after the first of smallest key sha256("<seed>:<prompt hash>:<position>"), until
`size` points (the last prompt taken gives only as many as are missing). The choice depends only on the computed
prompts' hashes and lengths: shards copied together sample what one run over all their prompts samples, whatever
the batch size, and a run whose sample is unchanged skips the pass (projections.json's "basis"). Capping the points
per prompt spreads the sample over size / per_prompt prompts at least, and bounds the prompts run again.

A second pass (forward.head_vectors) runs the chosen prompts again and keeps, at each point and for every head, its
query, the key of the position it attends to most (its largest weight; grouped-query: its kv head's), that weight
and z (the weighted values). Each set is centred and reduced to 2-D by numpy's SVD (pcas); the outputs z W_O are d_model
wide but lie in W_O's d_head-dimensional row space, where their PCA is computed exactly (pcas). Only the
projections, the two components and the mean are stored, as float16: the vectors themselves would take
2 x size x (2 d_head + d_model) bytes per head (3.6 MB per head of GPT-2 small). Written under the data dir's lock:

<model>/projections.json: {"version", "size", "per_prompt", "seed", "basis", "n_prompts" (prompts sampled from),
    "n_points", "n_layers", "n_heads", "sets" (["query", "key", "output"]; no "output" when W_O is hidden), "dims"
    (each set's width), "query_hook", "key_hook" (the TransformerLens hooks read), "rotary", "points": [offset,
    length], "heads_at", "head_bytes", "page_bytes"}
<model>/projections.bin: the points' JSON block {"prompts": [{"hash", "n_tokens", "tokens"}], "prompt" (each
    point's index in "prompts"), "position"}, zero bytes to a multiple of 4, then one record per head, layer-major,
    `head_bytes` each at heads_at + i * head_bytes, little-endian: explained variance shares float32 [sets, 2],
    coordinates float16 [sets, points, 2], the largest weight uint16 [points] (w * W_SCALE), its key's position uint32
    [points] (the `page_bytes` the site reads), then each set's mean and two components float16 [3, dims].
"""
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attention_lens import datadir, examples, lens, storage

VERSION = 1
SETS = ("query", "key", "output")
W_SCALE = examples.W_SCALE  # a weight is stored as round(w * W_SCALE) in a uint16, as the examples' are


@dataclass(frozen=True)
class Sampling:
    """Which query positions the projections are computed at (module docstring)."""
    size: int = 2000  # points, shared by every head
    per_prompt: int = 8  # at most this many query positions of one prompt
    seed: int = 0

    def check(self) -> None:
        for name in ("size", "per_prompt"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise lens.UserError(f"--projections-{name.replace('_', '-')}={value!r}: expected a positive integer")


@dataclass(frozen=True)
class Sample:
    """The points: the chosen prompts (their part rows, in key order) and each one's query positions."""
    rows: list[dict]
    positions: list[list[int]]

    @property
    def n_points(self) -> int:
        return sum(map(len, self.positions))


@dataclass(frozen=True)
class Pca:
    """A 2-D PCA: each point's coordinates [n, 2], the share of the variance each component explains, the mean and the
    two components [2, d] (unit vectors; coordinates = (x - mean) @ components.T)."""
    coords: np.ndarray
    explained: np.ndarray
    mean: np.ndarray
    components: np.ndarray


@dataclass(frozen=True)
class HeadProjections:
    """One head's record as read back: at each point its largest weight and that key's position, and each set's Pca
    ("query", "key", "output")."""
    weight: np.ndarray
    key_position: np.ndarray
    sets: dict[str, Pca]


def computed_prompts(save_path: Path, model: str) -> list[dict]:
    """Every computed prompt's latest part row, in hash order."""
    latest = {}
    for part in storage.read_parts(save_path, model):
        latest.update((row["hash"], row) for row in part.rows)
    return [latest[h] for h in sorted(latest)]


def position_keys(phash: str, n_tokens: int, seed: int) -> np.ndarray:
    """The sampling key of each query position 1 .. n_tokens - 1: sha256("<seed>:<hash>:<position>")'s first 8 bytes."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{phash}:{p}".encode()).digest()[:8], "big")
                     for p in range(1, n_tokens)], np.uint64)


def choose(rows: list[dict], sampling: Sampling) -> Sample:
    """The points over `rows` (module docstring): prompts by key, each its per_prompt positions of smallest key."""
    keys = examples.prompt_keys([r["hash"] for r in rows], sampling.seed)
    chosen, positions, total = [], [], 0
    for r in np.argsort(keys, kind="stable"):
        if total >= sampling.size:
            break
        row = rows[r]
        take = min(sampling.per_prompt, sampling.size - total, row["n_tokens"] - 1)
        if take < 1:
            continue
        by_key = np.argsort(position_keys(row["hash"], row["n_tokens"], sampling.seed), kind="stable")[:take]
        chosen.append(row)
        positions.append(sorted(int(p) + 1 for p in by_key))
        total += take
    return Sample(chosen, positions)


def basis(sample: Sample, sampling: Sampling, shape: tuple[int, int]) -> str:
    """What the projections depend on besides the model: the points and the settings."""
    points = [[row["hash"], row["n_tokens"], p] for row, p in zip(sample.rows, sample.positions)]
    return hashlib.sha256(json.dumps([VERSION, sampling.__dict__, list(shape), points]).encode()).hexdigest()[:32]


def pcas(x: np.ndarray, w: np.ndarray | None = None) -> list[Pca]:
    """Each head's 2-D PCA of its rows of x @ w[head] (of x without w), centred, in float64; x: [points, heads, d],
    w: [heads, d, d_model]. Worked in x's d dimensions: each head's centred rows c have the inner products of c @ w's
    when multiplied by L = U sqrt(E) (w w^T = U E U^T), so the right singular vectors v of c L (numpy's SVD of its
    d x d Gram matrix, whose singular values are the squared ones) give the coordinates c L v and, d_model wide, the
    unit components w^T c^T (c L v) / |c L v|^2. The heads of a layer go through numpy at once: one small SVD per head
    took 20 times longer while torch's threads shared the CPU."""
    x = np.asarray(x, np.float64).transpose(1, 0, 2)  # [heads, points, d]
    mean = x.mean(1, keepdims=True)
    centred = basis = x - mean
    if w is not None:
        w = np.asarray(w, np.float64)
        e, u = np.linalg.eigh(w @ w.transpose(0, 2, 1))
        basis, mean = centred @ (u * np.sqrt(np.clip(e, 0, None))[:, None]), mean @ w
    _, variance, vt = np.linalg.svd(basis.transpose(0, 2, 1) @ basis, hermitian=True)
    return [head_pca(basis[h], centred[h], variance[h], vt[h], mean[h, 0], None if w is None else w[h])
            for h in range(len(x))]


def head_pca(basis: np.ndarray, centred: np.ndarray, variance: np.ndarray, vt: np.ndarray, mean: np.ndarray,
             w: np.ndarray | None) -> Pca:
    """One head's Pca from pcas' SVD; a component without variance is 0. Each component's sign makes its largest
    coordinate positive."""
    k = int((variance[:2] > variance.max(initial=0) * 1e-12).sum())
    coords, components, explained = np.zeros((len(basis), 2)), np.zeros((2, centred.shape[1])), np.zeros(2)
    coords[:, :k] = basis @ vt[:k].T
    components[:k] = (coords[:, :k].T @ centred) / variance[:k, None]
    components = components @ w if w is not None else components
    explained[:k] = variance[:k] / variance.sum()
    flip = np.where(coords[np.abs(coords).argmax(0), [0, 1]] < 0, -1.0, 1.0)
    return Pca(coords * flip, explained, mean, components * flip[:, None])


def head_record(sets: list[Pca], weight: np.ndarray, key: np.ndarray) -> bytes:
    """One head's record of projections.bin (module docstring)."""
    return b"".join([
        np.array([p.explained for p in sets], "<f4").tobytes(),
        np.array([p.coords for p in sets], "<f2").tobytes(),
        np.round(np.clip(weight, 0, 1).astype(np.float64) * W_SCALE).astype("<u2").tobytes(),
        key.astype("<u4").tobytes(),
        *(np.concatenate([p.mean[None], p.components]).astype("<f2").tobytes() for p in sets),
    ])


def points_block(sample: Sample, ids: list[list[int]], to_str) -> bytes:
    """The points' JSON block: the chosen prompts' tokens, each point's prompt and position."""
    prompts = [{"hash": row["hash"], "n_tokens": len(t), "tokens": to_str(t)} for row, t in zip(sample.rows, ids)]
    block = {"prompts": prompts, "prompt": [i for i, p in enumerate(sample.positions) for _ in p],
             "position": [q for p in sample.positions for q in p]}
    return json.dumps(block, ensure_ascii=False, separators=(",", ":")).encode()


def head_records(model, vectors) -> tuple[bytes, list[str]]:
    """Every head's record, layer-major, and the sets they hold (no "output" when the model hides W_O)."""
    from attention_lens import forward

    records, sets = bytearray(), list(SETS)
    for layer in range(model.cfg.n_layers):
        w_o = forward.layer_output_weights(model, layer)
        sets = list(SETS) if w_o is not None else list(SETS[:2])
        layer_sets = [pcas(vectors.q[:, layer]), pcas(vectors.k[:, layer])]
        layer_sets += [pcas(vectors.z[:, layer], w_o)] if w_o is not None else []
        for head in range(model.cfg.n_heads):
            records.extend(head_record([p[head] for p in layer_sets], vectors.weight[:, layer, head],
                                       vectors.key[:, layer, head]))
    return bytes(records), sets


def index_meta(cfg, sample: Sample, sampling: Sampling, vectors, sets: list[str]) -> dict:
    """projections.json but for "basis", "n_prompts", "points" and "heads_at" (module docstring)."""
    n, dims = sample.n_points, [cfg.d_head, cfg.d_head, cfg.d_model][:len(sets)]
    page_bytes = 8 * len(sets) + 4 * n * len(sets) + 6 * n
    return {"version": VERSION, **sampling.__dict__, "n_points": n, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "sets": sets, "dims": dims, "query_hook": vectors.query_hook, "key_hook": vectors.key_hook,
            "rotary": getattr(cfg, "positional_embedding_type", None) == "rotary",
            "head_bytes": page_bytes + 6 * sum(dims), "page_bytes": page_bytes}


def is_current(save_path: Path, model_dir: str, made_from: str, n_prompts: int) -> bool:
    """Whether the stored projections were made from this sample; if so, their count of prompts sampled from is
    brought up to date (prompts added whose keys come after the sample's change that alone)."""
    from attention_lens.build_index import data_dir_lock

    index_path = datadir.projections_index_path(save_path, model_dir)
    try:
        index = lens.read_json(index_path)
    except (lens.UserError, OSError):
        return False
    if not isinstance(index, dict) or index.get("basis") != made_from \
            or not datadir.projections_path(save_path, model_dir).is_file():
        return False
    if index.get("n_prompts") != n_prompts:
        with data_dir_lock(save_path, "compute_activations.py"):
            lens.write_json(index_path, {**index, "n_prompts": n_prompts})
    return True


def compute_projections(model, save_path: Path, model_dir: str, sampling: Sampling = Sampling(),
                        batch_size: int = 8, progress: bool = True, required: bool = True) -> dict | None:
    """Sample the points over every computed prompt of the model, run the chosen prompts again for every head's
    vectors there and write projections.json and projections.bin. Nothing is run when the stored projections were
    made from the same sample. Returns a summary (None when no prompt has two tokens). Not `required` (the end of a
    run), a model without the hooks read is a warning, not an error."""
    from attention_lens import forward  # torch: only here
    from attention_lens.build_index import data_dir_lock

    sampling.check()
    rows = computed_prompts(save_path, model_dir)
    sample = choose(rows, sampling)
    if not sample.n_points:
        return None
    made_from = basis(sample, sampling, (model.cfg.n_layers, model.cfg.n_heads))
    if is_current(save_path, model_dir, made_from, len(rows)):
        return {"prompts": 0, "points": sample.n_points, "skipped": True}
    to_tokens, _ = forward.tokenizer_functions(model)
    ids = [to_tokens(row["text"], truncate=False)[0].tolist()[:row["n_tokens"]] for row in sample.rows]
    try:
        vectors = forward.head_vectors(model, ids, sample.positions, batch_size, progress)
    except lens.UserError as e:
        if required:
            raise
        print(f"warning: {model_dir}: {e}", file=sys.stderr)
        return None
    points = points_block(sample, ids, forward.token_strings(model))
    records, sets = head_records(model, vectors)
    meta = {**index_meta(model.cfg, sample, sampling, vectors, sets), "basis": made_from, "n_prompts": len(rows),
            "points": [0, len(points)], "heads_at": len(points) + (-len(points) % 4)}
    with data_dir_lock(save_path, "compute_activations.py"):  # the pair is written whole, one run at a time
        lens.write_atomic(datadir.projections_path(save_path, model_dir), points + bytes(-len(points) % 4) + records)
        lens.write_json(datadir.projections_index_path(save_path, model_dir), meta)
    if progress:
        print(f"{model_dir}: projections of {len(records) // meta['head_bytes']} heads at {sample.n_points} positions "
              f"of {len(sample.rows)} prompts (run again for their vectors)", file=sys.stderr)
    return {"prompts": len(sample.rows), "points": sample.n_points, "skipped": False}


def read_points(save_path: Path, model: str) -> dict | None:
    """projections.json with the points' block under "points" (None: no projections)."""
    try:
        index = lens.read_json(datadir.projections_index_path(save_path, model))
        with open(datadir.projections_path(save_path, model), "rb") as f:
            f.seek(index["points"][0])
            return {**index, "points": json.loads(f.read(index["points"][1]))}
    except (lens.UserError, OSError, KeyError, ValueError):
        return None


def read_head_projections(save_path: Path, model: str, layer: int, head: int) -> HeadProjections | None:
    """One head's record of projections.bin (None: no projections)."""
    index = read_points(save_path, model)
    if index is None:
        return None
    n, names = index["n_points"], index["sets"]
    with open(datadir.projections_path(save_path, model), "rb") as f:
        f.seek(index["heads_at"] + (layer * index["n_heads"] + head) * index["head_bytes"])
        data = f.read(index["head_bytes"])
    at = 0

    def take(dtype: str, shape: tuple) -> np.ndarray:
        nonlocal at
        a = np.frombuffer(data, dtype, int(np.prod(shape)), at).reshape(shape)
        at += a.nbytes
        return a.astype(np.float64)
    explained, coords = take("<f4", (len(names), 2)), take("<f2", (len(names), n, 2))
    weight, key_position = take("<u2", (n,)) / W_SCALE, take("<u4", (n,)).astype(np.int64)
    sets = {}
    for s, (name, d) in enumerate(zip(names, index["dims"])):
        vectors = take("<f2", (3, d))
        sets[name] = Pca(coords[s], explained[s], vectors[0], vectors[1:])
    return HeadProjections(weight, key_position, sets)
