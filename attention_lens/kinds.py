"""Head kinds, fingerprints and nearest heads: <model>/heads.json, written by build_index.py for every model.

    python compute_activations.py demo --probe    # the probe set (probe.jsonl); then build_index.py writes heads.json

Each kind is one score per head, a mean over prompts, and a threshold (KINDS: the one place they are defined;
docs/kinds.md says where each comes from). The prompts are the probe set's when the model has computed it, else
all the model's prompts. The detect_head scores, first-token and diagonal attention come from the statistics
tables every prompt has; the pattern-shape features (attention by offset, distance, entropy per query, output
mass) from the stored patterns of at most MAX_SHAPE_PROMPTS of those prompts, one head at a time. Copying and copy
suppression come from the weights alone, no prompts (weight_scores.json, written by compute_activations.py).

A head's fingerprint is its vector of FEATURES. Every model's heads are pooled, each feature standardised
over the pool, and heads compared by cosine similarity; the map is the pool's first two principal components.
"""
import json
import math
import random
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from attention_lens import datadir, lens, storage

PROBE_PATH = Path(__file__).resolve().parent.parent / "probe.jsonl"
MAX_SHAPE_PROMPTS = 32  # stored prompts whose patterns give the shape features: the probe set has 20
N_OFFSETS = 8  # attention mass at offsets 0 (self) ... 7 back
N_NEAREST = 8


@dataclass(frozen=True)
class Kind:
    """A kind of head: `feature` (a FEATURES entry) compared with `threshold` by `op`."""
    name: str
    feature: str
    op: str  # ">=" or "<="
    threshold: float
    doc: str
    source: str


# Thresholds: Gu et al.'s for the sink; copying's above every random-weight head of d_head 16 or more; the others sit
# in the gap measured between the demo model's known heads and every other head of the demo's checkpoints and of
# random-weight models (docs/kinds.md has the numbers).
KINDS = [
    Kind("previous-token", "previous_token_head", ">=", 0.5,
         "share of all attention on the previous token (detect_head previous_token_head); "
         "a perfect head scores (n-1)/n",
         "TransformerLens head_detector.detect_head; Olsson et al. 2022"),
    Kind("duplicate-token", "duplicate_token_head", ">=", 0.2,
         "share of all attention on earlier copies of the query's token (detect_head duplicate_token_head), on the "
         "probe's repeated sequences", "TransformerLens head_detector.detect_head; Wang et al. 2022 (IOI)"),
    Kind("induction", "induction_head", ">=", 0.2,
         "share of all attention on the token after an earlier copy of the query's token (detect_head "
         "induction_head), on the probe's repeated random sequences; a perfect head scores about 0.5",
         "TransformerLens head_detector.detect_head; Olsson et al. 2022 (repeated random tokens)"),
    Kind("sink", "bos", ">=", 0.3,
         "mean attention to the first token over the queries after it",
         "Gu et al. 2025 (arXiv 2410.10781): threshold 0.3"),
    Kind("self", "diagonal", ">=", 0.5, "mean attention of a token to itself over the queries after the first",
         "the diagonal of the pattern"),
    Kind("positional", "offset_peak", ">=", 0.5,
         "the largest mean attention at one fixed offset of 2 to 7 tokens back (1 is previous-token, 0 self)",
         "attention mass by relative offset (Clark et al. 2019, positional heads)"),
    Kind("local", "mean_distance", "<=", 5.0,
         "mean distance in tokens from the query to what it attends to, the first token left out (renormalised)",
         "mean attention distance (Vig & Belinkov 2019; Dosovitskiy et al. 2021)"),
    Kind("broad", "entropy_ratio", ">=", 0.9,
         "mean over queries of the entropy of its attention divided by the uniform maximum, log(keys)",
         "attention entropy (Clark et al. 2019)"),
    Kind("sparse", "effective_tokens", "<=", 3.0,
         "effective number of attended tokens, exp(entropy), mean over queries", "AttentionViz issue 60"),
    Kind("inactive", "output_ratio", "<=", 0.2,
         "mean over queries of sum_j A_ij ||v_j W_O|| (the value-weighted mass bounding the head's output norm), "
         "divided by the mean of its layer's heads",
         "Sandoval-Segura et al. 2025 (arXiv 2504.03889): head output norm, layer-normalised"),
    Kind("copying", "copying", ">=", 0.7,
         "from the weights alone, no prompts: the share of the eigenvalue mass of the full OV circuit "
         "W_E W_V W_O W_U on positive real parts, sum max(Re e, 0) / sum |e| over its eigenvalues e; 1 when the head "
         "raises the logits of the tokens it attends to; random weights score about 0.33",
         "Elhage et al. 2021 (A Mathematical Framework for Transformer Circuits), OV eigenvalues: their "
         "sum e / sum |e| equals copying - copy_suppression"),
    Kind("copy-suppression", "copy_suppression", ">=", 0.7,
         "from the weights alone, no prompts: the share on negative real parts, sum max(-Re e, 0) / sum |e|; 1 when "
         "the head lowers the logits of the tokens it attends to",
         "McDougall et al. 2023 (Copy Suppression: Comprehensively Understanding an Attention Head); "
         "in the eigenvalue form of Elhage et al. 2021, sign reversed"),
]
STAT_FEATURES = ["previous_token_head", "duplicate_token_head", "induction_head", "bos", "diagonal"]
SHAPE_FEATURES = ["entropy_ratio", "effective_tokens", "mean_distance", "output_ratio",
                  *(f"offset_{k}" for k in range(N_OFFSETS))]
WEIGHT_FEATURES = ["copying", "copy_suppression"]  # weight_scores.json: the weights alone, no prompts
FEATURES = [*STAT_FEATURES, "offset_peak", *SHAPE_FEATURES, *WEIGHT_FEATURES]
REPEAT_FEATURES = ("duplicate_token_head", "induction_head")  # measured on the repeated probe prompts only


# ---- the probe set ----

def make_probe(n_repeat: int = 16, n_words: int = 20, seed: int = 0) -> list[dict]:
    """probe.jsonl: n_repeat sequences of n_words distinct random words, each said twice (Olsson et al.'s repeated
    random tokens, in words so that any tokenizer reads them), then the prose lines of PROBE_PROSE."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_repeat):
        words = " ".join(rng.sample(PROBE_WORDS, n_words))
        rows.append({"text": f"{words} {words}", "meta": {"probe": "repeat", "words": n_words}})
    return rows + [{"text": t, "meta": {"probe": "prose"}} for t in PROBE_PROSE]


PROBE_WORDS = ("apple river stone cloud paper window garden silver number orange market doctor engine "
               "forest bottle planet winter candle pocket ladder mirror button tunnel rabbit island castle "
               "pencil jacket hammer violin wallet basket carpet dragon helmet magnet rocket saddle turtle "
               "anchor cactus feather lemon marble needle oyster parrot quartz ribbon spider tomato velvet").split()
PROBE_PROSE = [
    "The old lighthouse keeper climbed the stairs every evening and lit the lamp for the ships outside the harbour.",
    "When the rain stopped, the children ran into the garden to look for snails under the wet leaves.",
    "The committee met on Tuesday, read the report twice, and decided to postpone the vote until spring.",
    "A river carries sand and stones downstream and leaves them where the water slows near the sea.",
]


def probe_prompts() -> list[dict]:
    return [row for _, row in lens.iter_jsonl(PROBE_PATH)]


# ---- per-head features ----

def head_shape(attn: np.ndarray, norms: np.ndarray | None) -> np.ndarray:
    """SHAPE_FEATURES of one head on one prompt (queries after the first); output_ratio is the raw value-weighted
    mass here (the layer mean divides it later), NaN without value norms."""
    n = len(attn)
    rows = attn[1:].astype(np.float64)
    q = np.arange(1, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(rows > 0, rows * np.log(rows), 0.0).sum(1)
        ratio = np.mean(h / np.log(q + 1))
        rest = rows[:, 1:]  # keys after the first
        mass = rest.sum(1)
        distance = (rest * (q[:, None] - np.arange(1, n)[None, :])).sum(1) / mass
        distance = np.nanmean(np.where(mass > 1e-6, distance, np.nan)) if (mass > 1e-6).any() else np.nan
    output = float((rows @ norms).mean()) if norms is not None and np.isfinite(norms).all() else np.nan
    offsets = [np.trace(attn, -k) / (n - 1) - (attn[0, 0] / (n - 1) if k == 0 else 0) for k in range(N_OFFSETS)]
    return np.array([ratio, np.exp(h).mean(), distance, output, *offsets])


def prompt_shapes(save_path: Path, model: str, phash: str, shape: tuple[int, int]) -> dict[tuple[int, int], np.ndarray]:
    """SHAPE_FEATURES of each stored head of one prompt ({} for a one-token prompt)."""
    patterns = storage.load_patterns(save_path, model, phash)
    if patterns.n_tokens < 2:
        return {}
    norms = storage.read_value_norms(save_path, model, phash, (*shape, patterns.n_tokens))
    return {(l, h): head_shape(patterns.head(l, h), None if norms is None else norms[l, h]) for l, h in patterns.heads}


def shape_features(save_path: Path, model: str, hashes: list[str], shape: tuple[int, int]) -> np.ndarray:
    """SHAPE_FEATURES per head, mean over the prompts given: float64 [layers, heads, features], NaN without any."""
    total = np.zeros((*shape, len(SHAPE_FEATURES)))
    count = np.zeros_like(total)
    for phash in hashes:
        try:
            heads = prompt_shapes(save_path, model, phash, shape)
        except lens.UserError as e:  # one damaged prompt must not hide the others' kinds
            print(f"warning: {e}; its pattern shapes are left out of the heads' kinds", file=sys.stderr)
            continue
        for (l, h), f in heads.items():
            ok = np.isfinite(f)
            total[l, h, ok] += f[ok]
            count[l, h, ok] += 1
    with np.errstate(invalid="ignore"):
        features = total / count
    out = features[..., SHAPE_FEATURES.index("output_ratio")]
    with warnings.catch_warnings():  # a layer without norms stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        features[..., SHAPE_FEATURES.index("output_ratio")] = out / np.nanmean(out, axis=1, keepdims=True)
    return features


def weight_features(save_path: Path, model: str, shape: tuple[int, int]) -> np.ndarray:
    """WEIGHT_FEATURES per head from weight_scores.json: float64 [layers, heads, 2], NaN without the file (a data dir
    computed before it existed, or a model whose weights could not be read)."""
    path = datadir.weight_scores_path(save_path, model)
    out = np.full((*shape, len(WEIGHT_FEATURES)), np.nan)
    try:
        scores = lens.read_json(path) if path.is_file() else {}
        values = [np.array(scores[name], np.float64) for name in WEIGHT_FEATURES] if scores else []
        if values and any(v.shape != shape for v in values):
            raise ValueError(f"expected {shape[0]} layers x {shape[1]} heads")
    except (lens.UserError, KeyError, TypeError, ValueError) as e:  # a damaged file must not hide the other kinds
        print(f"warning: {path}: {e}; the heads' copying kinds are left out", file=sys.stderr)
        return out
    if values:
        out[:] = np.stack(values, -1)
    return out


def kind_rows(records: list[dict]) -> tuple[str, list[int], list[int]]:
    """Which prompts the kinds use: ("probe", its rows, its repeated rows) when the model has the probe set,
    else ("prompts", every row, every row); in hash order, so that the kinds do not depend on the order the
    prompts were indexed in (which shard of a run started first)."""
    by_hash = sorted(range(len(records)), key=lambda r: records[r]["hash"])
    probe = [r for r in by_hash if records[r].get("meta", {}).get("probe")]
    if probe:
        return "probe", probe, [r for r in probe if records[r]["meta"]["probe"] == "repeat"] or probe
    return "prompts", by_hash, by_hash


def stat_means(save_path: Path, model: str, index: dict, rows: list[int]) -> dict[str, np.ndarray]:
    """Mean over the rows of each statistic of STAT_FEATURES the model has, read by row from its table."""
    shape = (index["n_prompts"], index["n_layers"], index["n_heads"])
    means = {}
    for name in STAT_FEATURES:
        path = datadir.stat_table_path(save_path, model, name)
        if name not in index["stats"] or not path.is_file() or not rows:
            continue
        table = np.memmap(path, "<f4", mode="r", shape=shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means[name] = np.nanmean(table[rows].astype(np.float64), 0)  # summed in the rows' (hash) order
    return means


def model_features(save_path: Path, model: str, records: list[dict]) -> tuple[np.ndarray, dict]:
    """FEATURES per head, float64 [layers, heads, features] (NaN where not measured), and which prompts gave them."""
    index = lens.read_json(datadir.stats_path(save_path, model))
    shape = (index["n_layers"], index["n_heads"])
    source, rows, repeat_rows = kind_rows(records)
    features = np.full((*shape, len(FEATURES)), np.nan)
    means, repeat_means = (stat_means(save_path, model, index, r) for r in (rows, repeat_rows))
    for name in STAT_FEATURES:
        mean = (repeat_means if name in REPEAT_FEATURES else means).get(name)
        if mean is not None:
            features[..., FEATURES.index(name)] = mean
    stored = [records[r]["hash"] for r in rows if records[r]["stored"]][:MAX_SHAPE_PROMPTS]  # the first by hash
    shapes = shape_features(save_path, model, stored, shape)
    features[..., FEATURES.index(SHAPE_FEATURES[0]):FEATURES.index(SHAPE_FEATURES[-1]) + 1] = shapes
    features[..., FEATURES.index(WEIGHT_FEATURES[0]):] = weight_features(save_path, model, shape)
    offsets = shapes[..., SHAPE_FEATURES.index("offset_2"):]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        features[..., FEATURES.index("offset_peak")] = np.nanmax(offsets, -1)
    return features, {"source": source, "n_prompts": len(rows), "n_repeat_prompts": len(repeat_rows),
                      "n_shape_prompts": len(stored)}


def head_kinds(f: np.ndarray) -> list[dict]:
    """The kinds one head's features pass, each {name, score, threshold} (positional adds its offset)."""
    found = []
    for kind in KINDS:
        score = f[FEATURES.index(kind.feature)]
        if np.isfinite(score) and (score >= kind.threshold if kind.op == ">=" else score <= kind.threshold):
            found.append({"name": kind.name, "score": round(float(score), 4), "threshold": kind.threshold})
            if kind.name == "positional":
                offsets = f[FEATURES.index("offset_2"):FEATURES.index(f"offset_{N_OFFSETS - 1}") + 1]
                found[-1]["offset"] = 2 + int(np.nanargmax(offsets))
    return found


# ---- fingerprints, nearest heads and the map, over every model of the data dir ----

def fingerprints(features: list[np.ndarray]) -> np.ndarray:
    """Every model's heads pooled [heads, features], each feature standardised over the pool (0 where missing),
    rows scaled to unit length: dot products are cosine similarities."""
    x = np.concatenate([f.reshape(-1, f.shape[-1]) for f in features])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(x, 0), np.nanstd(x, 0)
    z = np.where(np.isfinite(x), (x - mean) / np.where(std > 1e-9, std, 1.0), 0.0)
    z = np.nan_to_num(z)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def nearest_heads(z: np.ndarray, owners: np.ndarray,
                  k: int = N_NEAREST) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For every head: its k most similar other heads (indices, similarities) and the most similar head of each
    model ([heads, models] indices and similarities); owners are ascending (each model's heads together). In
    float32, a block of 1,024 heads at a time, so memory stays small."""
    z = z.astype(np.float32)
    starts = np.searchsorted(owners, np.arange(int(owners.max()) + 2))  # model m's heads: starts[m]:starts[m + 1]
    k = min(k, len(z) - 1)  # a model of six heads has five others
    top_i, top_s = np.zeros((len(z), k), int), np.zeros((len(z), k), np.float32)
    best = np.zeros((len(z), len(starts) - 1), int)
    best_s = np.zeros((len(z), len(starts) - 1), np.float32)
    for start in range(0, len(z), 1024):
        s = z[start:start + 1024] @ z.T
        rows = np.arange(len(s))
        s[rows, rows + start] = -np.inf  # not itself
        block = slice(start, start + len(s))
        if k:
            order = np.argpartition(-s, k - 1, axis=1)[:, :k]
            order = np.take_along_axis(order, np.argsort(-np.take_along_axis(s, order, 1), 1, kind="stable"), 1)
            top_i[block], top_s[block] = order, np.take_along_axis(s, order, 1)
        for m, (a, b) in enumerate(zip(starts, starts[1:])):
            pick = a + np.argmax(s[:, a:b], 1)
            best[block, m], best_s[block, m] = pick, s[rows, pick]
    return top_i, top_s, best, best_s


def pca_map(z: np.ndarray) -> np.ndarray:
    """The first two principal components of the fingerprints [heads, 2], signs fixed so reruns agree."""
    centred = z - z.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:2] * np.sign(vt[:2, [np.argmax(np.abs(v)) for v in vt[:2]]].diagonal())[:, None]
    xy = centred @ vt.T
    return np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))


def write_heads(save_path: Path, records_by_model: dict[str, list[dict]]) -> None:
    """heads.json of every model with statistics: its heads' kinds, fingerprint, map position and nearest heads
    (an unchanged one is left alone)."""
    models = [m for m in records_by_model if datadir.stats_path(save_path, m).is_file()]
    measured = [model_features(save_path, m, records_by_model[m]) for m in models]
    for m, record in zip(models, heads_records(models, measured)):
        data = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        lens.write_if_changed(datadir.heads_json_path(save_path, m), data)


def heads_records(models: list[str], measured: list[tuple[np.ndarray, dict]]) -> list[dict]:
    """Each model's heads.json from every model's (features, prompts): the search and the map span them all."""
    if not models:
        return []
    shapes = [f.shape[:2] for f, _ in measured]
    owners = np.concatenate([np.full(a * b, i) for i, (a, b) in enumerate(shapes)])
    local = np.concatenate([np.arange(a * b) for a, b in shapes])
    z = fingerprints([f for f, _ in measured])
    top_i, top_s, best, best_s = nearest_heads(z, owners)
    xy = pca_map(z)
    per_model = np.array([b for _, b in shapes])[owners]
    where = list(zip(owners.tolist(), (local // per_model).tolist(), (local % per_model).tolist()))
    best_s, top_s = np.round(best_s.astype(np.float64), 4).tolist(), np.round(top_s.astype(np.float64), 4).tolist()
    best, top_i = best.tolist(), top_i.tolist()

    def ref(i: int, s: float) -> list:
        o, l, h = where[i]
        return [models[o], l, h, s]
    records, at = [], 0
    for features, prompts in measured:
        n_layers, n_heads = features.shape[:2]
        heads = []
        for l in range(n_layers):
            heads.append([])
            for h in range(n_heads):
                i = at + l * n_heads + h
                heads[-1].append(head_record(features[l, h], i, xy, [ref(j, s) for j, s in zip(top_i[i], top_s[i])],
                                             {models[o]: ref(best[i][o], best_s[i][o])[1:] for o in range(len(models))
                                              if math.isfinite(best_s[i][o])}))  # a one-head model has no other
        at += n_layers * n_heads
        records.append({"prompts": prompts, "kinds": [asdict(k) for k in KINDS], "features": FEATURES, "heads": heads})
    return records


def head_record(f: np.ndarray, i: int, xy: np.ndarray, nearest: list, best: dict) -> dict:
    """One head of heads.json: kinds, features (null where not measured), map position, nearest heads overall and
    the best match in each model (in its own model: the best other head)."""
    return {"kinds": head_kinds(f), "features": [round(float(v), 5) if math.isfinite(v) else None for v in f],
            "xy": [round(float(v), 4) for v in xy[i]], "nearest": nearest, "best": best}
