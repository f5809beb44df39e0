"""One model's heads as a HeadVis data tree: the folder Anthropic's HeadVis frontend serves as its data/ and
Neuronpedia's loaders (load-head-metrics.py, load-head-sequences.py) read, written from the data dir's statistics
tables and examples (docs/headvis.md).

    python build_index.py --export-headvis DIR [--models MODEL]

DIR/config.json                  the model, its heads, the metrics' names and descriptions, how it was made
DIR/scatter_data.json            one row per head: Neuronpedia's six metrics over every query of every prompt
DIR/heads/L{l}H{h}.json          the head's examples (examples.py) with their sparse attention, the histogram of its
                                 max_activation over every prompt, the look-back and top tokens of the examples
DIR/server_config.json, DIR/attributions/manifest.json    {}: the frontend's static mode

The metrics are Neuronpedia's definitions (hijohnnylin/neuronpedia, compute-head-metrics.py), computed from our
per-prompt statistics: each of those is a prompt's sum over its queries divided by a count the export knows
(n_tokens, or n_repeated for induction_score), so weighting it by that count pools the sums over every query of
every prompt, as Neuronpedia sums them. DIR is written in a temp dir beside it and renamed into place.
"""
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from attention_lens import attn_frames, datadir, examples, lens, storage

METRICS = {  # Neuronpedia's metric names (scatter_data.json's columns) and what config.json says of each
    "self_attention_score": "Mean attention of a query to itself, over every query of every prompt (the first "
                            "included). Near 1: the head attends to the current token.",
    "prev_token_score": "Mean attention to the previous token, over the queries that have one. Near 1: a "
                        "previous-token head.",
    "pattern_entropy": "Mean entropy of a query's attention in nats, over every query (the first's is 0). Low: "
                       "peaked; high: spread out.",
    "qk_distance": "Mean |q - k| weighted by attention, over every query: how far back the head looks.",
    "qk_distance_variance": "Variance of |q - k| weighted by attention, pooled over every query of every prompt.",
    "induction_score": "Mean attention from a query whose token occurred earlier to the tokens after its earlier "
                       "copies (weights under 0.01 dropped), over those queries. High: an induction head.",
}
SOURCES = {  # each metric's statistics of ours (figures/head_stats.py's definitions), per prompt
    "self_attention_score": ["diagonal"], "prev_token_score": ["previous_token_head"], "pattern_entropy": ["entropy"],
    "qk_distance": ["qk_distance"], "qk_distance_variance": ["qk_distance", "qk_distance_variance"],
    "induction_score": ["induction_score"]}
STATISTICS = ("max_attention", "diagonal", "previous_token_head", "entropy", "qk_distance", "qk_distance_variance",
              "induction_score")  # max_attention: HeadVis's max_activation
QK_EDGES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]  # Neuronpedia's look-back bins; d >= 4096 out
BINS = 50  # the max_activation histogram's bins over [0, 1]
TOP_TOKENS = 50
EXPORTED_BY = "attention_lens build_index.py --export-headvis"  # pipeline_config's mark of a dir it may replace
CHUNK = 1024  # prompts read at a time from the statistics tables (memory: CHUNK x heads x 8 bytes a table)


def export_headvis(save_path: Path, models: str | None, out: Path, figures_dir: Path, progress: bool = True) -> None:
    """Write the HeadVis tree of the model `models` names (or the data dir's only model) into `out`: a new dir, an
    empty one, or one an earlier export wrote, which is replaced whole. `figures_dir`: the one the index was built
    with (its statistics must be figures/'s)."""
    model = export_model(save_path, models)
    out = check_target(save_path, Path(out))
    cfg = lens.read_model_cfg(save_path, model)
    sampling = read_sampling(save_path, model, cfg)
    hashes, n_tokens, n_probe = index_rows(save_path, model)
    tables = statistics_tables(save_path, model, figures_dir, len(hashes), cfg)
    pooled = pool(save_path, model, hashes, n_tokens, tables)
    if sampling["n_prompts"] != pooled.prompts:
        print(f"warning: {model}'s examples were chosen from {sampling['n_prompts']} prompts, its statistics cover "
              f"{pooled.prompts}: `{examples_command(save_path, cfg)}` chooses them again", file=sys.stderr)
    rows = {h: r for r, h in enumerate(hashes)}
    with staged(out) as tmp:
        causal = write_heads(tmp, save_path, model, cfg, rows, tables["max_attention"], pooled, progress)
        if not causal:
            print(f"warning: {model} attends both ways: self_attention_score and pattern_entropy, which need a causal "
                  "model's first row, are null", file=sys.stderr)
        write_scatter(tmp, cfg, pooled.metrics(causal), tables, causal)
        run = {"n_sequences": pooled.prompts, "seq_len": int(n_tokens.max()), "causal": causal,
               "probe_prompts": n_probe}
        write_json(tmp / "config.json", config_json(save_path, model, cfg, sampling, run), indent=2)
        write_json(tmp / "server_config.json", {})
        write_json(tmp / "attributions" / "manifest.json", {})
    print(f"build_index.py: {model}'s {len(all_heads(cfg))} heads over {pooled.prompts} prompts exported to {out} "
          f"(HeadVis: serve it as the frontend's data/; docs/headvis.md)")


def export_model(save_path: Path, spec: str | None) -> str:
    """The one model dir --models names (one export per model), or the data dir's only model."""
    names = lens.model_dirs(save_path)
    chosen = [m.strip() for m in spec.split(",") if m.strip()] if spec else names
    if len(chosen) != 1:
        raise lens.UserError(f"--export-headvis: one model per export; name it with --models (the data dir has: "
                             f"{', '.join(names) or 'none'})")
    return attn_frames.model_dir(save_path, chosen[0])[1]


def check_target(save_path: Path, out: Path) -> Path:
    """`out`, if an export may be written there: outside the data dir, and new, empty or an earlier export."""
    if out.resolve().is_relative_to(save_path.resolve()):
        raise lens.UserError(f"--export-headvis {out}: inside the data dir {save_path}; choose a dir outside it")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or is_export(out))):
        raise lens.UserError(f"--export-headvis {out}: exists and is not an earlier export (no config.json of "
                             "one); choose a new dir, or remove it")
    return out


def is_export(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text())["pipeline_config"]["exported_by"] == EXPORTED_BY
    except (OSError, ValueError, KeyError, TypeError):
        return False


def examples_command(save_path: Path, cfg: dict) -> str:
    """The command that chooses a model's examples (a checkpoint's model dir is MODEL@stepN)."""
    name, _, step = cfg["model_name"].partition("@step")
    return (f"python compute_activations.py {name} --examples" + (f" --checkpoint {step}" if step else "")
            + (f" --save-path {save_path}" if Path(save_path) != lens.DEFAULT_SAVE_PATH else ""))


def read_sampling(save_path: Path, model: str, cfg: dict) -> dict:
    """examples.json's settings; a UserError naming the command that makes them when there are none."""
    path = datadir.examples_index_path(save_path, model)
    if not path.is_file() or not datadir.examples_path(save_path, model).is_file():
        raise lens.UserError(f"{model}: no examples yet (HeadVis shows each head's); make them with: "
                             f"{examples_command(save_path, cfg)}")
    sampling = lens.read_json(path)
    if (sampling.get("n_layers"), sampling.get("n_heads")) != (cfg["n_layers"], cfg["n_heads"]):
        raise lens.UserError(f"{path}: chosen for another shape of {model}; choose them again with: "
                             f"{examples_command(save_path, cfg)}")
    return sampling


def index_rows(save_path: Path, model: str) -> tuple[list[str], np.ndarray, int]:
    """The prompt index's hashes and token counts, in row order (the statistics tables' rows), and how many of
    its prompts are the probe set's (kinds.py), which every run adds unless --no-probe."""
    count = lens.read_json(datadir.prompt_index_path(save_path, model))["count"]
    rows, k = [], 0
    while len(rows) < count:
        rows += [row for _, row in lens.iter_jsonl(datadir.index_rows_path(save_path, model, k))]
        k += 1
    return ([r["hash"] for r in rows], np.array([r["n_tokens"] for r in rows], np.float64),
            sum(1 for r in rows if r.get("meta", {}).get("probe")))


def statistics_tables(save_path: Path, model: str, figures_dir: Path, n: int, cfg: dict) -> dict[str, np.ndarray]:
    """{name: [prompts, layers, heads] table} of STATISTICS that hold figures/head_stats.py's definition; each other
    one is a warning saying why, and its metric is null. max_attention must be there."""
    indexed = lens.load_figures(figures_dir)[0]
    builtin = lens.load_figures(lens.FIGURES_DIR)[0]
    tables, missing = {}, {}
    for name in STATISTICS:
        path = datadir.stat_table_path(save_path, model, name)
        if name not in indexed or lens.code_of(indexed[name]) != lens.code_of(builtin[name]):
            missing[name] = f"{figures_dir} does not define it as figures/head_stats.py does"
        elif not path.is_file():
            missing[name] = ("not computed yet (compute_activations.py --force computes it again for the prompts; "
                             "render_figures.py for those whose patterns are stored)")
        else:
            tables[name] = np.memmap(path, "<f4", "r", shape=(n, cfg["n_layers"], cfg["n_heads"])) if n else \
                np.zeros((0, cfg["n_layers"], cfg["n_heads"]), np.float32)
    if "max_attention" in missing:
        raise lens.UserError(f"max_attention: {missing['max_attention']} (HeadVis's max_activation)")
    for name, why in missing.items():
        print(f"warning: {name}: {why}; its metric is null", file=sys.stderr)
    return tables


def pool(save_path: Path, model: str, hashes: list[str], n_tokens: np.ndarray, tables: dict) -> "Pooled":
    """Neuronpedia's sums over every prompt of the index, read a block of prompts at a time."""
    repeated = repeated_counts(save_path, model, hashes) if "induction_score" in tables else None
    pooled = Pooled(tables["max_attention"].shape[1:])
    for start in range(0, len(hashes), CHUNK):
        pooled.add(tables, n_tokens, repeated, slice(start, start + CHUNK))
    if not pooled.prompts:
        raise lens.UserError(f"{model}: no prompt of two tokens or more with statistics; nothing to export")
    return pooled


def repeated_counts(save_path: Path, model: str, hashes: list[str]) -> np.ndarray:
    """Each prompt's n_repeated (its queries whose token occurred earlier): its latest part row's, else its
    prompt.json's token ids'; NaN where neither says (computed before the parts kept it, patterns not stored)."""
    latest = {}
    for part in storage.read_parts(save_path, model):
        latest.update((row["hash"], row.get("n_repeated")) for row in part.rows)
    out = np.full(len(hashes), np.nan)
    for r, h in enumerate(hashes):
        if latest.get(h) is not None:
            out[r] = latest[h]
            continue
        path = datadir.prompt_json_path(save_path, model, h)
        ids = lens.read_json(path).get("token_ids") if path.is_file() else None
        if ids:
            out[r] = len(ids) - len(set(ids))
    return out


class Pooled:
    """Neuronpedia's sums over every query of every prompt with two tokens or more, from our per-prompt statistics,
    a block of prompts at a time; and the histogram and mean of each head's max_activation over those prompts."""

    def __init__(self, shape: tuple[int, int]):
        self.sums = {name: np.zeros(shape) for name in ("self", "previous", "entropy", "distance", "distance2",
                                                         "induction", "max")}
        self.queries = self.previous = self.repeated = 0.0
        self.prompts = 0
        self.histogram = np.zeros((*shape, BINS), np.int64)

    def add(self, tables: dict[str, np.ndarray], n_tokens: np.ndarray, repeated: np.ndarray | None, rows: slice):
        """Add the prompts `rows` of the tables: those with two tokens or more and every head's max_attention."""
        peak = np.asarray(tables["max_attention"][rows])
        keep = (n_tokens[rows] >= 2) & np.isfinite(peak).all((1, 2))
        n = n_tokens[rows][keep][:, None, None]
        t = {name: np.asarray(tables[name][rows], np.float64)[keep] if name in tables else np.full(n.shape, np.nan)
             for name in STATISTICS}
        s = self.sums
        s["self"] += ((n - 1) * t["diagonal"] + 1).sum(0)  # a causal model's first query attends to itself alone
        s["previous"] += (n * t["previous_token_head"]).sum(0)  # previous_token_head divides by sum(A) = n
        s["entropy"] += ((n - 1) * t["entropy"]).sum(0) * math.log(2)  # bits over the queries after the first
        s["distance"] += (n * t["qk_distance"]).sum(0)
        s["distance2"] += (n * (t["qk_distance_variance"] + t["qk_distance"] ** 2)).sum(0)
        r = (repeated[rows][keep] if repeated is not None else np.full(len(n), np.nan))[:, None, None]
        s["induction"] += np.where(r == 0, 0, t["induction_score"] * r).sum(0)  # NaN where unknown: null
        s["max"] += t["max_attention"].sum(0)
        self.queries += n.sum()
        self.previous += (n - 1).sum()
        self.repeated += r.sum()
        self.prompts += len(n)
        # Neuronpedia's bin: int(max_act * 50) in float32, the last bin taking 1.0
        bins = np.clip((peak[keep] * np.float32(BINS)).astype(np.int64), 0, BINS - 1)
        heads = np.arange(self.histogram.size // BINS).reshape(self.histogram.shape[:2])
        self.histogram += np.bincount((heads * BINS + bins).ravel(),
                                      minlength=self.histogram.size).reshape(self.histogram.shape)

    def metrics(self, causal: bool) -> dict[str, np.ndarray]:
        """{Neuronpedia's metric: [layers, heads]}, NaN where undefined (null in JSON)."""
        s = self.sums
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s["distance"] / self.queries
            out = {"self_attention_score": s["self"] / self.queries, "prev_token_score": s["previous"] / self.previous,
                   "pattern_entropy": s["entropy"] / self.queries, "qk_distance": mean,
                   "qk_distance_variance": s["distance2"] / self.queries - mean ** 2,
                   "induction_score": s["induction"] / self.repeated}
        if not causal:  # an encoder's first row is not 1 on itself: its diagonal and entropy are not ours to derive
            out["self_attention_score"] = out["pattern_entropy"] = np.full_like(mean, np.nan)
        return out


def write_heads(tmp: Path, save_path: Path, model: str, cfg: dict, rows: dict[str, int], peak: np.ndarray,
                pooled: Pooled, progress: bool) -> bool:
    """Write every head's file into `tmp`/heads; returns whether every example attends only backwards (causal)."""
    from tqdm import tqdm

    causal = True
    edges = [round(float(e), 4) for e in np.linspace(0, 1, BINS + 1)]
    for l, h in tqdm(all_heads(cfg), unit="head", desc="headvis", disable=not progress):
        block = examples.read_head_examples(save_path, model, l, h) or {"examples": []}
        sequences = []
        for e in sorted(block["examples"], key=lambda e: e["interval"]):  # stable: the top one's by value
            r = rows.get(e["hash"])
            if r is not None and np.isfinite(peak[r, l, h]):  # else gone from the index since it was chosen
                sequences.append(head_sequence(e, r, float(peak[r, l, h])))
            causal &= all(k <= q for q, k in zip(e["q"], e["k"]))
        counted = int(pooled.histogram[l, h].sum())
        write_json(tmp / "heads" / f"L{l}H{h}.json", {
            "sequences": sequences,
            "qk_distance_histogram": qk_distance_histogram(sequences),
            "top_query_tokens": top_tokens(sequences, "query"), "top_key_tokens": top_tokens(sequences, "key"),
            "histogram": {"bin_edges": edges, "bin_values": pooled.histogram[l, h].tolist()},
            "statistics": {"n_samples": len(sequences),
                           "mean_max_activation": rounded(pooled.sums["max"][l, h] / counted) if counted else None}})
    return causal


def write_scatter(tmp: Path, cfg: dict, metrics: dict[str, np.ndarray], tables: dict, causal: bool) -> None:
    """scatter_data.json: one row per head, in config.json's order, its metrics to 4 decimals, null where undefined;
    a warning for a metric null where its statistics are there (some prompts lack them)."""
    for m in METRICS:
        explained = not causal and m in ("self_attention_score", "pattern_entropy")
        if np.isnan(metrics[m]).any() and all(s in tables for s in SOURCES[m]) and not explained:
            print(f"warning: {m}: null for {int(np.isnan(metrics[m]).sum())} heads: some prompts lack "
                  f"{' or '.join(SOURCES[m] + (['n_repeated'] if m == 'induction_score' else []))} (computed before "
                  "it was kept: compute_activations.py --force computes them again)", file=sys.stderr)
    write_json(tmp / "scatter_data.json", [{"layer": l, "head": h, **{m: rounded(metrics[m][l, h]) for m in METRICS}}
                                           for l, h in all_heads(cfg)])


def head_sequence(example: dict, row: int, peak: float) -> dict:
    """One example as HeadVis's sequence: its kept entries as flat indices q * seq_len + k, in (q, k) order, each
    weight to 4 decimals (in float64, so that it is a short decimal); its prompt index row as sequence_id."""
    n = example["n_tokens"]
    return {"sequence_id": row, "interval": example["interval"], "tokens": example["tokens"],
            "attention_indices": [q * n + k for q, k in zip(example["q"], example["k"])],
            "attention_values": [round(w, 4) for w in example["w"]], "seq_len": n, "max_activation": round(peak, 4)}


def entries(sequences: list[dict]):
    """(sequence, q, k, value) of every kept entry of the sequences."""
    for s in sequences:
        for i, v in zip(s["attention_indices"], s["attention_values"]):
            yield s, i // s["seq_len"], i % s["seq_len"], v


def qk_distance_histogram(sequences: list[dict]) -> dict:
    """The kept attention mass by look-back |q - k| in QK_EDGES' bins (Neuronpedia's: mass, not counts)."""
    mass = np.zeros(len(QK_EDGES) - 1)
    for _, q, k, v in entries(sequences):
        if abs(q - k) < QK_EDGES[-1]:
            mass[np.searchsorted(QK_EDGES, abs(q - k), side="right") - 1] += v
    return {"bin_edges": QK_EDGES, "bin_values": [round(float(x), 4) for x in mass]}


def top_tokens(sequences: list[dict], side: str) -> list[dict]:
    """The TOP_TOKENS token strings with the most kept attention mass as query or as key (ties: first seen first)."""
    mass = {}
    for s, q, k, v in entries(sequences):
        token = s["tokens"][q if side == "query" else k]
        mass[token] = mass.get(token, 0.0) + v
    ranked = sorted(mass.items(), key=lambda x: -x[1])[:TOP_TOKENS]
    return [{"token": t, "weight": round(w, 4)} for t, w in ranked]


def config_json(save_path: Path, model: str, cfg: dict, sampling: dict, run: dict) -> dict:
    """config.json: what the frontend reads, and the keys Neuronpedia's loaders need (pipeline_config). `run`:
    n_sequences (the prompts the metrics cover), seq_len (the longest), causal, probe_prompts (among them)."""
    dataset = Path(save_path).resolve().name
    pipeline = {"model_name": cfg["model_name"], "np_model_id": model, "dataset_name": dataset,
                "n_sequences": run["n_sequences"], "seq_len": run["seq_len"], "dtype": cfg.get("dtype", "unknown"),
                "attn_implementation": "transformer_lens", "induction_attention_threshold": 0.01,
                "n_intervals": sampling["intervals"], "samples_per_interval": sampling["per_interval"],
                "samples_per_top_interval": sampling["top"], "sparse_topk_per_row": sampling["keys_per_row"],
                "sparse_threshold": sampling["threshold"], "sample_seed": sampling["seed"],
                "examples_by": sampling["statistic"], "examples_prompts": sampling["n_prompts"],
                "actual_sequences_processed": run["n_sequences"], "probe_prompts": run["probe_prompts"],
                "num_hidden_layers": cfg["n_layers"], "num_attention_heads": cfg["n_heads"],
                "attention_layer_indices": list(range(cfg["n_layers"])), "causal": run["causal"],
                "exported_by": EXPORTED_BY,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
    return {"model_name": cfg["model_name"], "np_model_id": model, "dataset_name": dataset,
            "heads": [list(x) for x in all_heads(cfg)], "n_layers": cfg["n_layers"], "n_heads": cfg["n_heads"],
            "n_intervals": sampling["intervals"], "metrics": list(METRICS), "metric_descriptions": METRICS,
            "head_data_pattern": "L{layer}H{head}.json", "has_umap": False, "umap_heads": [],
            "custom_plots": [{"key": "qk_distance_histogram", "label": "Q-K distance"}],
            "custom_tables": [{"key": "top_query_tokens", "label": "Top query tokens"},
                              {"key": "top_key_tokens", "label": "Top key tokens"}],
            "statistics_display": {"n_samples": {"label": "Samples kept", "format": "default"},
                                   "mean_max_activation": {"label": "Mean max activation", "format": "default"}},
            "pipeline_config": pipeline}


def all_heads(cfg: dict) -> list[tuple[int, int]]:
    return [(l, h) for l in range(cfg["n_layers"]) for h in range(cfg["n_heads"])]


def rounded(x: float) -> float | None:
    """4 decimals, as Neuronpedia writes every number; None (null) where not finite."""
    return round(float(x), 4) if math.isfinite(x) else None


def write_json(path: Path, obj, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    separators = None if indent else (",", ":")
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=indent, separators=separators) + "\n", "utf-8")


@contextmanager
def staged(out: Path):
    """A temp dir beside `out` that replaces `out` when the block ends, and is removed if it fails: a failed or
    interrupted export leaves `out` as it was. Temp dirs of killed exports on this machine are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f".{out.name}.*.{lens.HOST}.*"):
        pid = old.name.rsplit(".", 2)[-2]
        if old.is_dir() and pid.isdigit() and not lens.process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.tmp.{lens.HOST}.{os.getpid()}.{os.urandom(4).hex()}")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():  # an earlier export (or an empty dir): moved aside, then dropped once the new one is in
            old = tmp.with_name(tmp.name.replace(".tmp.", ".old.", 1))
            os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
