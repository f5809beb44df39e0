"""The head page's data: one block per head with what the site's head.html shows besides the examples (examples.py)
and the kinds (kinds.py). build_index.py writes them from the statistics' aggregates and the runs' totals, so a
head page reads one small block whatever the number of prompts or heads:

<model>/head_pages.json: {"version", "n_layers", "n_heads", "n_prompts", "heads": [[offset, length] per head,
    layer-major]}
<model>/head_pages.bin: UTF-8 JSON blocks {"layer", "head", "n_prompts", "stats": {name: {"doc", "mean", "rank"
    (1 = the highest mean of the model's heads), "of", "quantiles", "hist", "top", "bottom"}}, "prompts": {hash:
    {"text", "n_tokens", "stored"}}, "lookback": {"edges", "share", "prompts"} | null, "tokens": {"query", "key"
    ([token, count, mass] by mass), "query_by_mean", "key_by_mean" (by mass / count, tokens seen MIN_COUNT times
    or more), "min_count", "prompts"} | null, "tokens_skipped" (only when a run kept no token totals: the model
    is past HeadSums.MAX_TOKEN_ENTRIES), "example_patterns": {hash: the heads it stores ("*": all) for each
    of the head's examples whose patterns are stored}}.

The look-back and token totals are each run's (storage.read_sums); a run some of whose prompts a later run
computed again is left out of them, and "prompts" says how many prompts they cover.
"""
import json
from pathlib import Path

import numpy as np

from attention_lens import datadir, examples, lens, storage

TOP_TOKENS = 50
MIN_COUNT = 5  # a token's mean weight is ranked once it was seen this often


def superseded_parts(rows) -> set[str]:
    """The parts some of whose prompts a later part holds again: from the index's rows (prompt_index.Rows, each
    with its latest part), those with fewer rows latest in them than were read from them."""
    latest = np.bincount([p for p in rows.part if p >= 0], minlength=len(rows.part_names))
    return {name for i, name in enumerate(rows.part_names) if rows.read.get(name, [0])[0] > latest[i]}


def token_table(ids: np.ndarray, counts: np.ndarray, mass: np.ndarray, strings: dict[int, str]) -> tuple:
    """One side's top tokens [token, count, mass] of one head: by mass, and by mass per occurrence."""
    def rows(order):
        return [[strings.get(int(ids[i]), f"<{int(ids[i])}>"), int(counts[i]), round(float(mass[i]), 4)]
                for i in order]
    by_mass = np.lexsort((ids, -mass))[:TOP_TOKENS]
    often = np.flatnonzero(counts >= MIN_COUNT)
    mean = mass[often] / counts[often]
    by_mean = often[np.lexsort((ids[often], -mean))[:TOP_TOKENS]]
    return rows(by_mass), rows(by_mean)


def read_token_strings(save_path: Path, model: str) -> dict[int, str]:
    try:
        return {int(k): v for k, v in lens.read_json(datadir.token_strings_path(save_path, model)).items()}
    except (lens.UserError, OSError):
        return {}


def write_head_pages(save_path: Path, model: str, shape: tuple[int, int], rows, stored: dict[str, dict]) -> None:
    """Write head_pages.bin and head_pages.json from stats.json, each statistic's heads.json and the runs' totals
    (`rows`: the index's prompt_index.Rows, which say the parts to leave out of the totals; `stored`: the records
    of the prompts whose patterns are stored, which say which examples open in the single view)."""
    n_layers, n_heads = shape
    try:
        summary = lens.read_json(datadir.stats_path(save_path, model))
    except (lens.UserError, OSError):
        return
    names = list(summary.get("stats", {}))
    per_stat = {}
    for name in names:
        try:
            per_stat[name] = json.loads(datadir.stat_heads_path(save_path, model, name).read_bytes())
        except (OSError, ValueError):
            per_stat[name] = None
    ranks = {}
    for name in names:
        mean = np.array([[np.nan if v is None else v for v in row] for row in summary["stats"][name]["mean"]], float)
        finite = mean[np.isfinite(mean)]
        rank = np.array([1 + int((finite > v).sum()) for v in mean.ravel()])  # tied heads share a rank, as the site's
        ranks[name] = (mean, rank.reshape(mean.shape), int(np.isfinite(mean).sum()))
    sums = storage.read_sums(save_path, model, superseded_parts(rows))
    shown = examples.example_hashes(save_path, model, n_heads)
    strings = read_token_strings(save_path, model) if sums is not None else {}
    blocks, index = bytearray(), []
    for layer in range(n_layers):
        for head in range(n_heads):
            stats, prompts = {}, {}
            for name in names:
                s, heads = summary["stats"][name], per_stat[name]
                mean, rank, of = ranks[name]
                entry = heads["heads"][layer][head] if heads else {"hist": None, "top": [], "bottom": []}
                stats[name] = {"doc": s.get("doc", ""), "mean": s["mean"][layer][head],
                               "rank": int(rank[layer, head]) if np.isfinite(mean[layer, head]) else None, "of": of,
                               "quantiles": {q: v[layer][head] for q, v in s.get("quantiles", {}).items()},
                               **{k: entry[k] for k in ("hist", "top", "bottom")}}
                for h, _ in entry["top"] + entry["bottom"]:
                    if heads and h in heads["prompts"]:
                        prompts[h] = heads["prompts"][h]
            block = {"layer": layer, "head": head, "n_prompts": summary.get("n_prompts", 0), "stats": stats,
                     "prompts": prompts, "lookback": None, "tokens": None,
                     "example_patterns": {h: stored[h].get("heads", "*") for h in shown.get(layer * n_heads + head, [])
                                          if h in stored}}
            if sums is not None:
                lookback = sums["lookback"][layer, head]
                total = lookback.sum()
                block["lookback"] = {"edges": sums["edges"].tolist(), "prompts": sums["prompts"],
                                     "share": [round(float(x / total), 6) if total else 0 for x in lookback]}
            if sums is not None and not sums["tokens"]:  # a model past HeadSums.MAX_TOKEN_ENTRIES has none
                block["tokens_skipped"] = True
            elif sums is not None:
                tables = [token_table(sums["ids"], sums["counts"], sums[side][layer, head], strings)
                          for side in ("query", "key")]
                block["tokens"] = {"query": tables[0][0], "key": tables[1][0], "query_by_mean": tables[0][1],
                                   "key_by_mean": tables[1][1], "min_count": MIN_COUNT, "prompts": sums["prompts"]}
            data = json.dumps(block, ensure_ascii=False, separators=(",", ":")).encode()
            index.append([len(blocks), len(data)])
            blocks.extend(data)
    lens.write_if_changed(datadir.head_pages_path(save_path, model), bytes(blocks))
    lens.write_if_changed(datadir.head_pages_index_path(save_path, model), lens.json_bytes(
        {"version": 1, "n_layers": n_layers, "n_heads": n_heads, "n_prompts": summary.get("n_prompts", 0),
         "heads": index}))


def read_head_page(save_path: Path, model: str, layer: int, head: int) -> dict:
    """One head's block (what head.html reads)."""
    index = lens.read_json(datadir.head_pages_index_path(save_path, model))
    at, length = index["heads"][layer * index["n_heads"] + head]
    with open(datadir.head_pages_path(save_path, model), "rb") as f:
        f.seek(at)
        return json.loads(f.read(length))
