"""Examples across each head's range: which prompts show what a head does, chosen over every prompt computed.

Each head has one activation per prompt: by default the built-in statistic max_attention (its largest attention
weight, the first query and first key left out, as Neuronpedia's head pages sample by), or any statistic every
prompt has (--examples-by). Max attention is reached on a prompt's first few queries, where few keys compete,
by most heads of small models on most prompts: a statistic of the behaviour studied (induction_head for
induction heads) shows that behaviour's range better. Its values over all the model's
prompts are cut into `intervals` quantile intervals (Neuronpedia's boundaries: the values at ranks round(i N / Q)
of the N sorted values, an interval holding the values from its lower boundary up to the next); the highest
interval keeps its `top` highest prompts (ties: the lower key first), each other interval the `per_interval`
prompts of smallest key, key = sha256("<seed>:<prompt hash>"). The key is the prompt's, not the head's: heads
share example prompts, so the pass that fetches their attention runs few forwards. The choice depends only on the
stored values, so shards copied together choose what one run over all their prompts would, and a killed run
chooses again on its rerun.

A second pass (forward.sparse_attention) runs the chosen prompts again and keeps, for each chosen head, its
`keys_per_row` largest weights of each query row at or above `threshold`. Written under the data dir's lock:

<model>/examples.json: {"version", "statistic", "seed", "intervals", "per_interval", "top", "keys_per_row",
    "threshold", "basis" (what the choice was made from), "n_prompts", "n_layers", "n_heads", "heads": [[offset,
    length, data offset, data length] or null per head, layer-major], "prompts": {hash: [offset, length]}}
<model>/examples.bin: a head's JSON block {"layer", "head", "count", "boundaries", "interval_counts",
    "examples": [{"hash", "interval" (1 = lowest), "value", "n_tokens", "entries", "at"}]} (the highest interval
    first) and its data: each example's sparse attention at "at" in pack_attention's form (6 bytes an entry);
    a prompt's JSON block {"hash", "text", "n_tokens", "tokens"}.
"""
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attention_lens import datadir, lens, storage

STATISTIC = "max_attention"
VERSION = 1


@dataclass(frozen=True)
class Sampling:
    intervals: int = 5
    per_interval: int = 3
    top: int = 10
    keys_per_row: int = 8
    threshold: float = 0.005
    seed: int = 0
    statistic: str = STATISTIC  # the activation examples are chosen by: any statistic every prompt has

    def check(self) -> None:
        for name in ("intervals", "per_interval", "top", "keys_per_row"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise lens.UserError(f"--examples-{name.replace('_', '-')}={value!r}: expected a positive integer")
        if not 0 <= self.threshold < 1:
            raise lens.UserError(f"--examples-threshold={self.threshold!r}: expected a weight in [0, 1)")


def prompt_keys(hashes: list[str], seed: int) -> np.ndarray:
    """Each prompt's sampling key: the first 8 bytes of sha256("<seed>:<hash>"), as an unsigned integer."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{h}".encode()).digest()[:8], "big") for h in hashes],
                    np.uint64)


class Activations:
    """Every computed prompt's part row (the latest part's, as the index keeps), in hash order, and its activations
    read one layer at a time (memory: prompts x heads, whatever the layers), NaN where undefined; a prompt whose
    latest part lacks the statistic has none."""

    def __init__(self, save_path: Path, model: str, statistic: str = STATISTIC):
        latest, known = {}, set()
        for part in storage.read_parts(save_path, model):
            known.update(part.stats)
            s = part.stats.index(statistic) if statistic in part.stats else None
            for i, row in enumerate(part.rows):
                latest[row["hash"]] = (row, part, i, s)
        latest = {h: x for h, x in latest.items() if x[3] is not None}
        if known and not latest:
            raise lens.UserError(f"--examples-by {statistic}: no prompt of {model} has that statistic (it has: "
                                 f"{', '.join(sorted(known))})")
        hashes = sorted(latest)
        self.rows = [latest[h][0] for h in hashes]
        self.shape = latest[hashes[0]][1].values.shape[2:] if hashes else (0, 0)
        self.groups = {}  # part name -> (part, statistic index, [row in part], [row here])
        for r, h in enumerate(hashes):
            _, part, i, s = latest[h]
            group = self.groups.setdefault(part.name, (part, s, [], []))
            group[2].append(i)
            group[3].append(r)

    def layer(self, layer: int) -> np.ndarray:
        """[prompts, heads] of one layer."""
        out = np.empty((len(self.rows), self.shape[1]), np.float32)
        for part, s, inside, here in self.groups.values():
            out[here] = part.values[np.array(inside), s, layer]
        return out


def choose(column: np.ndarray, keys: np.ndarray, sampling: Sampling) -> dict:
    """One head's intervals and examples from its activations over the prompts (NaN: none): {"count",
    "boundaries", "interval_counts", "chosen": [(row, interval, value)]}, the highest interval first."""
    rows = np.flatnonzero(np.isfinite(column))
    values = column[rows].astype(np.float64)
    q = sampling.intervals
    if not len(rows):
        return {"count": 0, "boundaries": [], "interval_counts": [0] * q, "chosen": []}
    ordered = np.sort(values)
    n = len(ordered)
    boundaries = [float(ordered[min(int(round(i * n / q)), n - 1)]) for i in range(1, q)]
    interval = np.searchsorted(np.array(boundaries), values, side="right") + 1  # 1 .. q
    chosen = []
    for i in range(q, 0, -1):
        inside = np.flatnonzero(interval == i)
        if i == q:  # the highest values, ties by key
            order = np.lexsort((keys[rows[inside]], -values[inside]))[:sampling.top]
        else:
            order = np.argsort(keys[rows[inside]], kind="stable")[:sampling.per_interval]
        chosen += [(int(rows[inside[j]]), i, float(values[inside[j]])) for j in order]
    counts = np.bincount(interval, minlength=q + 1)[1:].tolist()
    return {"count": n, "boundaries": boundaries, "interval_counts": counts, "chosen": chosen}


def basis(rows: list[dict], layers, sampling: Sampling) -> str:
    """What a choice depends on: the prompts, their activations (each layer's) and the settings."""
    h = hashlib.sha256(json.dumps([VERSION, sampling.__dict__, [r["hash"] for r in rows]]).encode())
    for values in layers:
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()[:32]


def compute_examples(model, save_path: Path, model_dir: str, sampling: Sampling = Sampling(),
                     batch_size: int = 8, progress: bool = True, required: bool = True) -> dict | None:
    """Choose every head's examples from the stored activations and fetch their sparse attention with `model`;
    write examples.json and examples.bin. Nothing is run when the stored choice was made from the same data.
    Returns a summary (None when there is nothing to choose from). Not `required` (the end of a run), a figures
    dir without the statistic is a warning, not an error."""
    from attention_lens import forward  # torch: only here
    from attention_lens.build_index import data_dir_lock

    sampling.check()
    try:
        acts = Activations(save_path, model_dir, sampling.statistic)
    except lens.UserError as e:
        if required:
            raise
        print(f"warning: {e}: no examples chosen", file=sys.stderr)
        return None
    rows = acts.rows
    if not rows:
        return None
    n_layers, n_heads = acts.shape
    made_from = basis(rows, (acts.layer(l) for l in range(n_layers)), sampling)
    index_path = datadir.examples_index_path(save_path, model_dir)
    try:
        if (lens.read_json(index_path).get("basis") == made_from
                and datadir.examples_path(save_path, model_dir).is_file()):
            return {"prompts": 0, "heads": 0, "skipped": True}
    except (lens.UserError, OSError, AttributeError):
        pass
    keys = prompt_keys([r["hash"] for r in rows], sampling.seed)
    heads = []
    for layer in range(n_layers):
        values = acts.layer(layer)
        heads += [choose(values[:, h], keys, sampling) for h in range(n_heads)]
    wanted: dict[int, list[tuple[int, int]]] = {}
    for flat, head in enumerate(heads):
        for r, _, _ in head["chosen"]:
            wanted.setdefault(r, []).append(divmod(flat, n_heads))
    order = sorted(wanted)
    to_tokens, _ = forward.tokenizer_functions(model)
    ids = {}
    for r in order:
        ids[r] = to_tokens(rows[r]["text"], truncate=False)[0].tolist()[:rows[r]["n_tokens"]]
    attention = forward.sparse_attention(model, [ids[r] for r in order], [wanted[r] for r in order],
                                         sampling.keys_per_row, sampling.threshold, batch_size, progress)
    by_row = dict(zip(order, attention))
    to_str = forward.token_strings(model)
    blocks, index = bytearray(), {"heads": [], "prompts": {}}

    def put(obj) -> list[int]:
        data = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        at = len(blocks)
        blocks.extend(data)
        return [at, len(data)]
    for flat, head in enumerate(heads):
        layer, h = divmod(flat, n_heads)
        examples, data = [], bytearray()
        for r, interval, value in head["chosen"]:
            q, k, w = by_row[r][(layer, h)]
            examples.append({"hash": rows[r]["hash"], "interval": interval, "value": round(value, 6),
                             "n_tokens": len(ids[r]), "entries": len(q), "at": len(data)})
            data.extend(pack_attention(q, k, w, len(ids[r])))
        if not head["count"]:
            index["heads"].append(None)
            continue
        where = put({"layer": layer, "head": h, "count": head["count"], "boundaries": head["boundaries"],
                     "interval_counts": head["interval_counts"], "examples": examples})
        index["heads"].append(where + [len(blocks), len(data)])
        blocks.extend(data)
    for r in order:
        index["prompts"][rows[r]["hash"]] = put({"hash": rows[r]["hash"], "text": rows[r]["text"],
                                                 "n_tokens": len(ids[r]), "tokens": to_str(ids[r])})
    meta = {"version": VERSION, **sampling.__dict__, "basis": made_from,
            "n_prompts": len(rows), "n_layers": n_layers, "n_heads": n_heads, **index}
    with data_dir_lock(save_path, "compute_activations.py"):  # the pair is written whole, one run at a time
        lens.write_atomic(datadir.examples_path(save_path, model_dir), bytes(blocks))
        lens.write_json(index_path, meta)
    if progress:
        print(f"{model_dir}: examples of {n_layers * n_heads} heads from {len(rows)} prompts "
              f"({len(order)} prompts run again for their attention)", file=sys.stderr)
    return {"prompts": len(order), "heads": n_layers * n_heads, "skipped": False}


def example_prompts(save_path: Path, model: str) -> list[dict]:
    """The prompts some head shows as an example, as {"text", "meta"} (compute_activations --examples-patterns)."""
    try:
        chosen = set(lens.read_json(datadir.examples_index_path(save_path, model))["prompts"])
    except (lens.UserError, OSError, KeyError):
        return []
    latest = {}
    for part in storage.read_parts(save_path, model):
        latest.update((row["hash"], row) for row in part.rows if row["hash"] in chosen)
    return [{"text": row["text"], "meta": row.get("meta", {})} for _, row in sorted(latest.items())]


W_SCALE = 65535  # a kept weight is stored as round(w * W_SCALE) in a uint16


def pack_attention(q: np.ndarray, k: np.ndarray, w: np.ndarray, n: int) -> bytes:
    """One example's sparse attention, entries in (q, k) order: the number kept in each query row (uint8 x n),
    zero bytes up to a multiple of 4, each entry's key (uint32) and weight (uint16, w * W_SCALE), little-endian."""
    rows = np.bincount(q, minlength=n).astype(np.uint8).tobytes()
    rows += bytes(-len(rows) % 4)
    return rows + k.astype("<u4").tobytes() + np.round(np.asarray(w, np.float64) * W_SCALE).astype("<u2").tobytes()


def unpack_attention(data: bytes, n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pack_attention's (q, k, w) back, w to the nearest 1 / W_SCALE."""
    rows = np.frombuffer(data, np.uint8, n)
    at = n + (-n % 4)
    k = np.frombuffer(data, "<u4", m, at).astype(np.int64)
    w = np.frombuffer(data, "<u2", m, at + 4 * m) / W_SCALE
    return np.repeat(np.arange(n), rows), k, w


def read_head_examples(save_path: Path, model: str, layer: int, head: int) -> dict | None:
    """A head's block of examples.bin, each example with its prompt's tokens added (None: not computed)."""
    try:
        index = lens.read_json(datadir.examples_index_path(save_path, model))
    except (lens.UserError, OSError):
        return None
    at = index["heads"][layer * index["n_heads"] + head]
    if at is None:
        return None
    with open(datadir.examples_path(save_path, model), "rb") as f:
        def read(offset, length):
            f.seek(offset)
            return f.read(length)
        out = json.loads(read(*at[:2]))
        data = read(*at[2:])
        for e in out["examples"]:
            e["tokens"] = json.loads(read(*index["prompts"][e["hash"]]))["tokens"]
            q, k, w = unpack_attention(data[e.pop("at"):], e["n_tokens"], e.pop("entries"))
            e.update(q=q.tolist(), k=k.tolist(), w=w.tolist())
    return out


def example_hashes(save_path: Path, model: str, n_heads: int) -> dict[int, list[str]]:
    """{flat head: the hashes of its examples}, from each head's JSON block alone ({} when there are none, or they
    were chosen for another shape)."""
    try:
        index = lens.read_json(datadir.examples_index_path(save_path, model))
        if index["n_heads"] != n_heads:
            return {}
        out = {}
        with open(datadir.examples_path(save_path, model), "rb") as f:
            for flat, at in enumerate(index["heads"]):
                if at:
                    f.seek(at[0])
                    out[flat] = [e["hash"] for e in json.loads(f.read(at[1]))["examples"]]
        return out
    except (lens.UserError, OSError, KeyError, ValueError):
        return {}
