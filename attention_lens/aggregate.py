"""The statistics' tables and aggregates of one model (build_index.py writes them, the heads page and kinds.py
read them): none of what the site reads grows with the number of prompts.

<model>/stats/<name>.f32: little-endian float32 [n_prompts, n_layers, n_heads], NaN where missing; row r is the
    prompt index's row r, read by byte range; a rerun appends the new prompts' rows.
<model>/stats.json: {"n_prompts", "n_layers", "n_heads", "top_k", "stats": {name: {"doc", "mean", "std", "min",
    "max", "count", "quantiles": {"0.05": .., "0.95": ..}}}}, each a [layer][head] table.
<model>/stats/<name>.heads.json: {"bins", "heads": [[{"hist": {"lo", "hi", "counts"} | null, "top": [[hash, value]
    x K], "bottom": ..} per head] per layer], "prompts": {hash: {"text", "n_tokens", "stored"}} (those in some top
    or bottom list)}.
"""
import inspect
import json
import warnings
from pathlib import Path

import numpy as np

from attention_lens import datadir, lens, prompt_index, storage
from attention_lens.prompt_index import Rows, Update

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)

SNIPPET_CHARS = 200  # of a prompt's text in heads.json


def finite(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.nan).astype("<f4")


def write_aggregates(save_path: Path, model: str, hashes: list[str], tables: dict[str, np.ndarray],
                     docs: dict[str, str], prompts, top_k: int = 10, bins: int = 32) -> None:
    """Each statistic's heads' histograms and top/bottom prompts as stats/<name>.heads.json, and per-head summaries
    as stats.json, from its table. `prompts.get(hash)`: {"text", "n_tokens", "stored"}, for the listed prompts."""
    n_layers, n_heads = next(iter(tables.values())).shape[1:]
    out = {"n_prompts": len(hashes), "n_layers": n_layers, "n_heads": n_heads, "top_k": top_k, "stats": {}}
    for name, table in tables.items():
        heads = stat_heads(table, hashes, prompts, top_k, bins)
        lens.write_if_changed(datadir.stat_heads_path(save_path, model, name),
                         json.dumps(heads, ensure_ascii=False, separators=(",", ":")).encode())
        out["stats"][name] = {"doc": docs.get(name, ""), **stat_summary(table)}
    lens.write_if_changed(datadir.stats_path(save_path, model), lens.json_bytes(out))  # last: names the files above


def stat_summary(table: np.ndarray) -> dict:
    """Per head over prompts, as [layer][head] lists: mean, std, min, max, quantiles (null where no prompt
    has a value) and the count of prompts with a value."""
    table = np.asarray(table)
    count = np.isfinite(table).sum(0)
    values = table if len(table) else np.full((1, *table.shape[1:]), np.nan, table.dtype)
    with warnings.catch_warnings():  # a head without values is NaN, written as null
        warnings.simplefilter("ignore", RuntimeWarning)
        quantiles = np.nanquantile(values, QUANTILES, axis=0)
        summary = {"mean": np.nanmean(values, 0, dtype=np.float64), "std": np.nanstd(values, 0, dtype=np.float64),
                   "min": np.nanmin(values, 0), "max": np.nanmax(values, 0)}
    return {**{k: storage.nan_as_null(v) for k, v in summary.items()}, "count": count.tolist(),
            "quantiles": {str(q): storage.nan_as_null(v) for q, v in zip(QUANTILES, quantiles)}}


def stat_heads(table: np.ndarray, hashes: list[str], prompts, top_k: int, bins: int) -> dict:
    """heads.json: per head its histogram over prompts and its top_k highest and lowest prompts."""
    heads, listed, ranks = [], set(), hash_ranks(hashes)
    for layer in range(table.shape[1]):
        heads.append([])
        columns = np.asarray(table[:, layer])
        for head in range(table.shape[2]):
            column = columns[:, head]
            rows = np.flatnonzero(np.isfinite(column))
            top, bottom = (extremes(rows, column[rows], top_k, highest, ranks) for highest in (True, False))
            listed.update(r for r, _ in top + bottom)
            heads[-1].append({"hist": histogram(column[rows], bins),
                              "top": [[hashes[r], v] for r, v in top], "bottom": [[hashes[r], v] for r, v in bottom]})
    snippets = {h: prompts.get(h) for h in sorted(hashes[r] for r in listed)}
    return {"bins": bins, "heads": heads, "prompts": {
        h: {"text": p["text"][:SNIPPET_CHARS], "n_tokens": p["n_tokens"], "stored": p["stored"]}
        for h, p in snippets.items() if p is not None}}


def hash_ranks(hashes: list[str]) -> np.ndarray:
    """Each row's place among the rows sorted by hash: extremes' tie order."""
    ranks = np.empty(len(hashes), np.int64)
    ranks[np.argsort(np.array(hashes))] = np.arange(len(hashes))
    return ranks


def extremes(rows: np.ndarray, values: np.ndarray, k: int, highest: bool,
             ranks: np.ndarray) -> list[tuple[int, float]]:
    """The k (row, value) pairs of the highest (or lowest) values, best first; tied values in hash order
    (`ranks`: hash_ranks), so that the lists do not depend on the order the prompts were indexed in."""
    key = -values if highest else values
    if len(key) > k > 0:  # the candidates: every value at least as good as the k-th best, ties included
        keep = key <= np.partition(key, k - 1)[k - 1]
        rows, values, key = rows[keep], values[keep], key[keep]
    order = np.lexsort((ranks[rows], key))[:k]
    return [(int(r), float(v)) for r, v in zip(rows[order], values[order])]


def histogram(values: np.ndarray, bins: int) -> dict | None:
    """Counts in `bins` equal bins from the lowest value to the highest (all in the first when they are equal)."""
    if not len(values):
        return None
    values = values.astype(np.float64)  # float32 values one ulp apart cannot make 32 float32 bins
    lo, hi = float(values.min()), float(values.max())
    counts = np.histogram(values, bins, (lo, hi))[0] if hi > lo else np.eye(bins, dtype=int)[0] * len(values)
    return {"lo": lo, "hi": hi, "counts": counts.tolist()}


def fill_tables(tables: dict[str, np.ndarray], update: Update) -> None:
    """The changed rows' values: from the row's latest part, then a stored prompt's stats.json
    (render_figures.py) for the statistics that part does not have; of each, only values its current code
    computed (Update.follows): the others stay missing."""
    rows, groups = update.rows, {}
    for r, change in update.changes.items():
        if change.values:
            part, i = change.values
            group = groups.setdefault(part.name, (part, [], []))
            group[1].append(r)
            group[2].append(i)
    for part, at, source in groups.values():
        for s, name in enumerate(part.stats):
            if update.follows(name, part.code.get(name)):
                tables[name][np.array(at)] = finite(part.values[np.array(source), s])
    for r, (values, code) in update.rendered.items():
        part = rows.part_names[rows.part[r]] if rows.part[r] >= 0 else None
        code_of_part = update.part_code.get(part, {})
        latest = [n for n in update.part_stats.get(part, []) if update.follows(n, code_of_part.get(n))]
        for name, v in values.items():
            if name not in latest and update.follows(name, code.get(name)):
                tables[name][r] = finite(v)


def open_table(path: Path, n_old: int, count: int, shape: tuple[int, int]) -> np.ndarray:
    """A statistic's table, its first n_old rows as written before and NaN after them, mapped for writing."""
    row = np.full((4096, *shape), np.nan, "<f4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "r+b" if n_old else "wb") as f:
        f.truncate(n_old * row[0].nbytes)  # a killed run's rows after them go too
        f.seek(n_old * row[0].nbytes)
        for start in range(n_old, count, len(row)):
            f.write(row[:min(len(row), count - start)].tobytes())
    return np.memmap(path, "<f4", "r+", shape=(count, *shape)) if count else np.full((0, *shape), np.nan, "<f4")


class Snippets:
    """heads.json's prompt texts: of the rows written this run, else of the former heads.json files, else of
    the rows' chunks."""

    def __init__(self, save_path: Path, model: str, rows: Rows, records: dict[int, dict], former: dict[str, dict]):
        self.save_path, self.model, self.rows, self.records, self.former = save_path, model, rows, records, former

    def get(self, phash: str) -> dict | None:
        r = self.rows.position.get(phash)
        if r is None:
            return None
        if r in self.records:
            text = self.records[r]["text"]
        elif phash in self.former:
            text = self.former[phash]["text"]
        else:
            size = prompt_index.INDEX_CHUNK_ROWS
            line = prompt_index.chunk_lines(self.save_path, self.model, r // size, r % size + 1)[-1]
            text = json.loads(line)["text"]
        return {"text": text, "n_tokens": self.rows.n_tokens[r], "stored": self.rows.stored[r]}


def write_model_stats(save_path: Path, model: str, shape: tuple[int, int], figures: dict[str, lens.Figure],
                      update: Update, records: dict[int, dict]) -> None:
    """Write the changed rows of the statistics' tables, then the aggregates the site reads."""
    rows = update.rows
    if not rows.stats:  # said as such, so the site knows there are none (and a former build's are gone)
        lens.write_if_changed(datadir.stats_path(save_path, model), lens.json_bytes(
            {"n_prompts": len(rows.hashes), "n_layers": shape[0], "n_heads": shape[1], "stats": {}}))
        return
    count = len(rows.hashes)
    if update.changes or update.n_old < count or not count:
        tables = {n: open_table(datadir.stat_table_path(save_path, model, n), update.n_old, count, shape)
                  for n in rows.stats}
    else:  # no row to write: read them only (a read-only data dir indexes as long as nothing changed)
        tables = {n: np.memmap(datadir.stat_table_path(save_path, model, n), "<f4", "r", shape=(count, *shape))
                  for n in rows.stats}
    fill_tables(tables, update)
    former = {}
    for name in rows.stats:
        path = datadir.stat_heads_path(save_path, model, name)
        if update.n_old and path.is_file():
            former.update(json.loads(path.read_bytes()).get("prompts", {}))
    order = [n for n in figures if n in tables] + sorted(set(tables) - set(figures))
    docs = {**update.docs, **{name: inspect.getdoc(figures[name].func) or "" for name in order if name in figures}}
    write_aggregates(save_path, model, rows.hashes, {n: tables[n] for n in order}, docs,
                     Snippets(save_path, model, rows, records, former))
    for table in tables.values():
        if isinstance(table, np.memmap):
            table.flush()
