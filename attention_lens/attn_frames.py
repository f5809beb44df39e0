"""A data dir as pandas DataFrames, one call each: the statistics of every prompt and head, the prompts with their
full text, the heads' kinds, and the per-head summaries; and a parquet export that pandas, polars and duckdb read
directly. What build_index.py wrote is read as it is (the statistics tables memory-mapped), nothing recomputed.

    from attention_lens import attn_frames as af
    stats = af.statistics("attn_data", "gpt2")                  # model, hash, row, layer, head, a column per statistic
    prompts = af.prompts("attn_data", "gpt2")                   # hash, row, text, n_tokens, truncated, stored, meta
    top = (stats.query("layer == 1 and head == 2").nlargest(20, "induction_head")
           .merge(prompts, on=["hash", "row"]))                 # the 20 prompts where L1H2's induction score is highest
    af.to_parquet("attn_data", "gpt2", "tables/")               # statistics, prompts, kinds and summary .parquet

pandas (and pyarrow, for parquet) come with transformer_lens, through datasets.
"""
from pathlib import Path

import numpy as np

from attention_lens import datadir, lens, prompt_index


def model_dir(save_path: Path | str, model: str) -> tuple[Path, str]:
    """The data dir and a model's dir name in it; a UserError naming the models there when it has no such model."""
    save_path = lens.require_data_dir(Path(save_path))
    name = lens.model_dir_name(model)
    if not datadir.model_cfg_path(save_path, name).is_file():
        raise lens.UserError(f"{save_path}: no model {model} (it has: "
                             f"{', '.join(lens.model_dirs(save_path)) or 'none'})")
    return save_path, name


def index_hashes(save_path: Path, model: str) -> list[str]:
    """The prompt index's hashes in row order (the statistics tables' rows)."""
    meta = lens.read_json(datadir.prompt_index_path(save_path, model))
    hashes, k = [], 0
    while len(hashes) < meta["count"]:
        hashes += [row["hash"] for _, row in lens.iter_jsonl(datadir.index_rows_path(save_path, model, k))]
        k += 1
    return hashes


def statistics(save_path: Path | str, model: str, heads: str | None = None, stats: list[str] | None = None):
    """One row per prompt and head: model, hash, row (the prompt index's), layer, head and one column per statistic
    (NaN where it has no value). `heads`: a spec such as "L1H2,L5H*" (default: all); `stats`: names (default:
    all). Rows are by prompt (index order), then layer, then head."""
    import pandas as pd

    save_path, name = model_dir(save_path, model)
    try:
        summary = lens.read_json(datadir.stats_path(save_path, name))
    except lens.UserError:
        raise lens.UserError(f"{model}: no statistics yet (run build_index.py)") from None
    n, n_layers, n_heads = summary["n_prompts"], summary["n_layers"], summary["n_heads"]
    names = list(summary["stats"]) if stats is None else list(stats)
    unknown = [s for s in names if s not in summary["stats"]]
    if unknown:
        raise lens.UserError(f"stats: no statistic {unknown[0]!r} (computed: {', '.join(summary['stats'])})")
    chosen = lens.parse_heads(heads, n_layers, n_heads) if heads else [(l, h) for l in range(n_layers)
                                                                        for h in range(n_heads)]
    flat = np.array([l * n_heads + h for l, h in chosen], np.int64)
    hashes = np.array(index_hashes(save_path, name))
    frame = {"model": name, "hash": np.repeat(hashes, len(flat)), "row": np.repeat(np.arange(n), len(flat)),
             "layer": np.tile(flat // n_heads, n), "head": np.tile(flat % n_heads, n)}
    for stat in names:
        table = np.memmap(datadir.stat_table_path(save_path, name, stat), "<f4", "r", shape=(n, n_layers * n_heads))
        frame[stat] = np.asarray(table[:, flat]).ravel() if n else np.zeros(0, np.float32)
    return pd.DataFrame(frame)


def prompts(save_path: Path | str, model: str):
    """One row per prompt, in the prompt index's order: hash, row, text (whole), n_tokens, truncated, stored (its
    patterns are kept), meta (a dict), and one column per top-level meta key ("meta_<key>")."""
    import pandas as pd

    save_path, name = model_dir(save_path, model)
    records = {r["hash"]: r for r in prompt_index.prompt_index_records(save_path, name)}
    at = [(i, records[h]) for i, h in enumerate(index_hashes(save_path, name)) if h in records]
    rows = [r for _, r in at]
    frame = pd.DataFrame({"hash": [r["hash"] for r in rows], "row": [i for i, _ in at],
                          "text": [r["text"] for r in rows], "n_tokens": [r["n_tokens"] for r in rows],
                          "truncated": [r.get("truncated", False) for r in rows],
                          "stored": [r["stored"] for r in rows], "meta": [r.get("meta", {}) for r in rows]})
    keys = sorted({k for r in rows for k in r.get("meta", {})})
    for key in keys:
        frame[f"meta_{key}"] = [r.get("meta", {}).get(key) for r in rows]
    return frame


def kinds(save_path: Path | str, model: str):
    """One row per head and kind it has: layer, head, kind, score, feature, op, threshold, source (heads.json;
    a head with no kind has no row)."""
    import pandas as pd

    save_path, name = model_dir(save_path, model)
    try:
        info = lens.read_json(datadir.heads_json_path(save_path, name))
    except lens.UserError:
        raise lens.UserError(f"{model}: no heads.json yet (run build_index.py)") from None
    defined = {k["name"]: k for k in info["kinds"]}
    out = [{"layer": l, "head": h, "kind": k["name"], "score": k["score"],
            **{f: defined.get(k["name"], {}).get(f) for f in ("feature", "op", "threshold", "source")}}
           for l, row in enumerate(info["heads"]) for h, head in enumerate(row) for k in head["kinds"]]
    return pd.DataFrame(out, columns=["layer", "head", "kind", "score", "feature", "op", "threshold", "source"])


def summary(save_path: Path | str, model: str):
    """One row per statistic and head: stat, layer, head, mean, std, min, max, count and the quantiles
    ("q0.05" ... "q0.95") over prompts (stats.json)."""
    import pandas as pd

    save_path, name = model_dir(save_path, model)
    info = lens.read_json(datadir.stats_path(save_path, name))
    out = []
    for stat, s in info["stats"].items():
        for l in range(info["n_layers"]):
            for h in range(info["n_heads"]):
                out.append({"stat": stat, "layer": l, "head": h,
                            **{k: s[k][l][h] for k in ("mean", "std", "min", "max", "count")},
                            **{f"q{q}": v[l][h] for q, v in s["quantiles"].items()}})
    return pd.DataFrame(out).astype({k: float for k in ("mean", "std", "min", "max")}) if out else pd.DataFrame()


def to_parquet(save_path: Path | str, model: str, out: Path | str) -> list[Path]:
    """statistics.parquet, prompts.parquet, kinds.parquet and summary.parquet of a model into `out` (made if
    needed); prompts' meta dicts as JSON text. Returns the files written."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = {"statistics": statistics(save_path, model), "prompts": prompts(save_path, model),
              "summary": summary(save_path, model)}
    try:
        frames["kinds"] = kinds(save_path, model)
    except lens.UserError:
        pass
    frames["prompts"]["meta"] = [json.dumps(m, ensure_ascii=False) for m in frames["prompts"]["meta"]]
    written = []
    for name, frame in frames.items():
        path = out / f"{name}.parquet"
        frame.to_parquet(path, index=False)
        written.append(path)
    return written

