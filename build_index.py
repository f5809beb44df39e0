"""Write the indexes the site reads and copy the site next to the data.

    python build_index.py                    # for attn_data/
    python build_index.py --save-path DIR
    python build_index.py --import-pattern-lens --save-path DIR   # convert a pattern-lens data dir first

Writes models.jsonl (every <model>/model_cfg.json), <model>/index/ (every prompt with statistics or
stored patterns, sorted by hash, in chunks a page fetches as it needs them, and a word index to search
them; prompt.json is read only where it is new or changed since the last run), figures.jsonl (the
figure registry of the figures dir that render_figures.py last rendered with, else figures/),
colormaps.json (the tables the images use, for the site's legends) and copies site/ into the data
dir: it alone writes what the site reads about figures. It only reads what is on disk, so it is
idempotent and merges the outputs of shards run on several machines once they are copied into one
data dir.
compute_activations.py and render_figures.py run it when they finish.
"""
import contextlib
import gzip
import inspect
import json
import os
import re
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

import kinds
import lens
import storage

SITE_DIR = Path(__file__).resolve().parent / "site"


# ---- Where the index's files are (site/data.js builds the same paths) ----

def prompt_index_dir(save_path: Path, model: str) -> Path:
    """The prompt index (build_index.py): rows in hash order, the statistics tables' row order, in chunks."""
    return Path(save_path) / model / "index"


def prompt_index_path(save_path: Path, model: str) -> Path:
    """{count, chunk_size, text_chars, n_stored}: all a page reads before the rows it shows."""
    return prompt_index_dir(save_path, model) / "meta.json"


def index_hashes_path(save_path: Path, model: str) -> Path:
    """The first hash of each chunk of rows: where to look a hash up."""
    return prompt_index_dir(save_path, model) / "hashes.json"


def index_rows_path(save_path: Path, model: str, chunk: int) -> Path:
    """Rows chunk * chunk_size ... of the index, one JSON object a line."""
    return prompt_index_dir(save_path, model) / "rows" / f"{chunk}.jsonl"


def index_words_path(save_path: Path, model: str, shard: str) -> Path:
    """{word: rows (first, then differences)} of the words starting with the shard's characters."""
    return prompt_index_dir(save_path, model) / "words" / f"{shard}.json"


def index_shards_path(save_path: Path, model: str) -> Path:
    """The names of the word shards there are: a search never asks for one that does not exist."""
    return prompt_index_dir(save_path, model) / "shards.json"


def index_order_path(save_path: Path, model: str) -> Path:
    """uint32 row numbers sorted by n_tokens (ties in row order): the prompt table's token order."""
    return prompt_index_dir(save_path, model) / "by_tokens.u32"


def index_stored_path(save_path: Path, model: str) -> Path:
    """The rows of the prompts whose patterns are stored, ascending."""
    return prompt_index_dir(save_path, model) / "stored.json"


def index_cache_path(save_path: Path, model: str) -> Path:
    """build_index.py's own record of the prompt.json files it read (the site never reads it)."""
    return prompt_index_dir(save_path, model) / "prompt_json_cache.jsonl"


# ---- The statistics' aggregates (write_stat_aggregates) ----
# <model>/stats/<name>.f32: little-endian float32 [n_prompts, n_layers, n_heads], NaN where missing; row r
#                      is the r-th prompt in hash order (the prompt index's row r), read by byte range.
# <model>/stats.json: {"n_prompts", "n_layers", "n_heads", "top_k", "stats": {name: {"doc", "mean", "std",
#                      "min", "max", "count", "quantiles": {"0.05": .., "0.95": ..}}}}, each a [layer][head] table.
# <model>/stats/<name>.heads.json: {"bins", "heads": [[{"hist": {"lo", "hi", "counts"} | null, "top": [[hash,
#                      value] x K], "bottom": ..} per head] per layer], "prompts": {hash: {"text", "n_tokens",
#                      "stored"}} (those in some top or bottom list)}. build_index.write_stat_aggregates writes them.


# ---- The prompt index: every prompt's row in hash order, in chunks, with a word index to search it ----

INDEX_CHUNK_ROWS = 200  # rows per index/rows/<k>.jsonl: a page of search results touches at most 100 of them
INDEX_TEXT_CHARS = 300  # a row holds the text up to this length; prompt.json holds it whole
WORD = re.compile(r"\w+")  # site/data.js's WORD: letters, digits and _ (Unicode)


def prompt_index_records(save_path: Path, model: str, parts: list[storage.Part] | None = None,
                         finished: list[str] | None = None) -> list[dict]:
    """Every prompt with statistics (the parts' rows) or stored patterns (prompt.json without its token
    lists), sorted by hash: the statistics tables' rows. "stored" says whether the patterns are kept."""
    records = {}
    for part in storage.read_parts(save_path, model) if parts is None else parts:
        for row in part.rows:
            records.setdefault(row["hash"], {**index_record(row), "stored": False})
    records.update(stored_prompt_records(save_path, model, finished))
    for record in records.values():
        if record["stored"]:
            record["files"] = prompt_files(save_path, model, record["hash"])
    return [records[h] for h in sorted(records)]


def index_record(info: dict) -> dict:
    """What the index keeps of a prompt.json or a part's row: no token lists."""
    return {"hash": info["hash"], "text": info["text"], "n_tokens": info["n_tokens"], "meta": info.get("meta", {}),
            "truncated": info.get("truncated", False), **({"heads": info["heads"]} if "heads" in info else {})}


def prompt_files(save_path: Path, model: str, phash: str) -> list[str]:
    """The files of a prompt dir the site may ask for (packs, their errors, stats.json, value norms): listed in
    its row, so that a page never requests one that is not there."""
    skip = {"prompt.json", lens.PATTERN_FILE}
    return sorted(f for f in os.listdir(lens.prompt_dir(save_path, model, phash)) if f not in skip and f[0] != ".")


def stored_prompt_records(save_path: Path, model: str, finished: list[str] | None = None) -> dict[str, dict]:
    """The records of the finished prompt dirs by hash, reading prompt.json only where it is new or changed
    (mtime, size) since the last run: the others come from the index's cache. An unreadable one is a warning.
    `finished`: lens.finished_prompts, when the caller has listed them already."""
    cache_path = index_cache_path(save_path, model)
    try:
        cached = {row["hash"]: row for _, row in lens.iter_jsonl(cache_path)} if cache_path.is_file() else {}
    except lens.UserError:  # our own file, damaged: read every prompt.json again
        cached = {}
    entries = {}
    for h in lens.finished_prompts(save_path, model) if finished is None else finished:
        path = lens.prompt_json_path(save_path, model, h)
        stat = path.stat()
        stamp = [stat.st_mtime_ns, stat.st_size]
        if h in cached and cached[h]["stamp"] == stamp:
            entries[h] = cached[h]
            continue
        try:
            entries[h] = {"hash": h, "stamp": stamp, "record": {**read_stored_record(path, h), "stored": True}}
        except lens.UserError as e:  # one bad prompt must not hide the others from the site
            print(f"build_index.py: warning: {e}; prompt left out of the index", file=sys.stderr)
    if entries != cached:
        write_jsonl(cache_path, entries.values())
    return {h: e["record"] for h, e in entries.items()}


def read_stored_record(path: Path, phash: str) -> dict:
    info = lens.read_json(path)
    if not isinstance(info.get("text"), str) or not isinstance(info.get("n_tokens"), int):
        raise lens.UserError(f"{path}: no text or n_tokens")
    return index_record({**info, "hash": phash})


def index_row(record: dict) -> dict:
    """A record as an index row: its text cut to INDEX_TEXT_CHARS ("snippet": true when cut)."""
    if len(record["text"]) <= INDEX_TEXT_CHARS:
        return record
    return {**record, "text": record["text"][:INDEX_TEXT_CHARS], "snippet": True}


def shard_name(word: str) -> str:
    """The word shard a word is in: its first two characters, those other than a-z and 0-9 as _<hex code point>
    (file names safe on any file system); site/data.js shardName is the same rule."""
    return "".join(c if "a" <= c <= "z" or "0" <= c <= "9" else f"_{ord(c):x}" for c in word[:2])


def search_words(record: dict) -> set[str]:
    """The words a search finds a prompt by: of its text and its meta values, lowercased."""
    meta = record["meta"]
    text = record["text"] + (" " + json.dumps(list(meta.values()), ensure_ascii=False) if meta else "")
    return set(WORD.findall(" ".join(set(text.lower().split()))))  # no \w is a space: each piece once is enough


def word_shards(records: list[dict]) -> dict[str, dict[str, list[int]]]:
    """{shard: {word: its rows, first row then differences}}: a search fetches the shards of its words only."""
    rows = {}
    for r, record in enumerate(records):
        for word in search_words(record):
            rows.setdefault(word, []).append(r)
    shards = {}
    for word in sorted(rows):
        found = rows[word]
        shards.setdefault(shard_name(word), {})[word] = found[:1] + [b - a for a, b in zip(found, found[1:])]
    return shards


def write_prompt_index(save_path: Path, model: str, records: list[dict]) -> None:
    """index/: meta.json, hashes.json, rows/<k>.jsonl, words/<shard>.json, shards.json, by_tokens.u32 and stored.json
    (the paths above); files whose bytes did not change are left alone, files of a larger former index are removed."""
    size = INDEX_CHUNK_ROWS
    chunks = [records[i:i + size] for i in range(0, len(records), size)]
    written = set()

    def write(path: Path, data: bytes) -> None:
        write_if_changed(path, data)
        written.add(path)
    for k, chunk in enumerate(chunks):
        write(index_rows_path(save_path, model, k), lens.jsonl_bytes(map(index_row, chunk)))
    shards = word_shards(records)
    for shard, words in shards.items():
        write(index_words_path(save_path, model, shard), json.dumps(words, separators=(",", ":")).encode())
    write(index_shards_path(save_path, model), json.dumps(sorted(shards), ensure_ascii=False).encode())
    n_tokens = np.array([r["n_tokens"] for r in records], np.int64)
    write(index_order_path(save_path, model),
          np.lexsort((np.arange(len(records)), n_tokens)).astype("<u4").tobytes())
    stored = [r for r, record in enumerate(records) if record["stored"]]
    write(index_stored_path(save_path, model), json.dumps(stored).encode())
    write(index_hashes_path(save_path, model), json.dumps([c[0]["hash"] for c in chunks]).encode())
    write(prompt_index_path(save_path, model), lens.json_bytes(  # last: it says how many rows there are
        {"count": len(records), "chunk_size": size, "text_chars": INDEX_TEXT_CHARS, "n_stored": len(stored)}))
    written.add(index_cache_path(save_path, model))
    for old in prompt_index_dir(save_path, model).rglob("*"):
        if old.is_file() and old not in written:
            old.unlink()


def write_jsonl(path: Path, rows) -> None:
    lens.write_atomic(path, lens.jsonl_bytes(rows))


def write_if_changed(path: Path, data: bytes) -> None:
    """Atomic write that leaves an identical file alone, so its mtime (and browser caches) stay valid."""
    if not (path.is_file() and path.read_bytes() == data):
        lens.write_atomic(path, data)


def figure_records(figures: dict[str, lens.Figure]) -> list[dict]:
    """One figures.jsonl row per registered function: what the site shows and needs to find images."""
    return [{"name": f.name, "kind": f.kind, "outputs": f.outputs, "format": f.format,
             "doc": inspect.getdoc(f.func) or "", "source": f.source,
             "code": inspect.getsource(f.func), "options": f.options} for f in figures.values()]


def copy_site(save_path: Path) -> None:
    """Copy site/ (pages, scripts, styles) into the data dir, which serve.py serves as is."""
    for src in sorted(SITE_DIR.rglob("*")):
        if src.is_file() and not src.name.startswith("."):
            write_if_changed(Path(save_path) / src.relative_to(SITE_DIR), src.read_bytes())


def rendered_figures_dir(save_path: Path) -> Path:
    """The figures dir render_figures.py last rendered with (figures/ before any render, or if it is gone)."""
    record = lens.render_record_path(save_path)
    if not record.exists():
        return lens.FIGURES_DIR
    figures_dir = Path(lens.read_json(record).get("figures_dir", lens.FIGURES_DIR))
    if not figures_dir.is_dir():
        print(f"build_index.py: warning: {figures_dir} (rendered with, says {record}) is gone; "
              f"indexing {lens.FIGURES_DIR} (pass --figures-dir to choose)", file=sys.stderr)
        return lens.FIGURES_DIR
    return figures_dir


def colormaps_json() -> bytes:
    """{name: ["#rrggbb" x 256]} for the site's legends: the same tables the images use."""
    return lens.json_bytes({name: ["#" + bytes(rgb).hex() for rgb in lens.colormap_table(name)]
                            for name in lens.COLORMAPS})


# ---- Statistic aggregates: what the heads page reads, none of it growing with the number of prompts ----

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SNIPPET_CHARS = 200  # of a prompt's text in heads.json


def write_stat_aggregates(save_path: Path, model: str, hashes: list[str], tables: dict[str, np.ndarray],
                          docs: dict[str, str], prompts: dict[str, dict], top_k: int = 10, bins: int = 32) -> None:
    """Each statistic's float32 [prompts (sorted hashes), layers, heads] table (NaN: no value) as stats/<name>.f32,
    its heads' histograms and top/bottom prompts as stats/<name>.heads.json, and per-head summaries as stats.json.

    `prompts` holds {"text", "n_tokens", "stored"} per hash; heads.json keeps those of the listed prompts."""
    n_layers, n_heads = next(iter(tables.values())).shape[1:]
    out = {"n_prompts": len(hashes), "n_layers": n_layers, "n_heads": n_heads, "top_k": top_k, "stats": {}}
    for name, table in tables.items():
        if table.shape != (len(hashes), n_layers, n_heads):
            raise ValueError(f"{name}: table of shape {table.shape} for {len(hashes)} prompts x {n_layers} x {n_heads}")
        table = np.where(np.isfinite(table), table, np.nan).astype("<f4")
        lens.write_atomic(storage.stat_table_path(save_path, model, name), table.tobytes())
        heads = stat_heads(table, hashes, prompts, top_k, bins)
        lens.write_atomic(storage.stat_heads_path(save_path, model, name),
                          json.dumps(heads, ensure_ascii=False, separators=(",", ":")))
        out["stats"][name] = {"doc": docs.get(name, ""), **stat_summary(table)}
    lens.write_json(storage.stats_path(save_path, model), out)  # last: it names the statistics written above


def stat_summary(table: np.ndarray) -> dict:
    """Per head over prompts, as [layer][head] lists: mean, std, min, max, quantiles (null where no prompt
    has a value) and the count of prompts with a value."""
    count = np.isfinite(table).sum(0)
    values = table if len(table) else np.full((1, *table.shape[1:]), np.nan, table.dtype)
    with warnings.catch_warnings():  # a head without values is NaN, written as null
        warnings.simplefilter("ignore", RuntimeWarning)
        quantiles = np.nanquantile(values, QUANTILES, axis=0)
        summary = {"mean": np.nanmean(values, 0, dtype=np.float64), "std": np.nanstd(values, 0, dtype=np.float64),
                   "min": np.nanmin(values, 0), "max": np.nanmax(values, 0)}
    return {**{k: storage.nan_as_null(v) for k, v in summary.items()}, "count": count.tolist(),
            "quantiles": {str(q): storage.nan_as_null(v) for q, v in zip(QUANTILES, quantiles)}}


def stat_heads(table: np.ndarray, hashes: list[str], prompts: dict[str, dict], top_k: int, bins: int) -> dict:
    """heads.json: per head its histogram over prompts and its top_k highest and lowest prompts."""
    heads, listed = [], set()
    for layer in range(table.shape[1]):
        heads.append([])
        for head in range(table.shape[2]):
            column = table[:, layer, head]
            rows = np.flatnonzero(np.isfinite(column))
            top, bottom = (extremes(rows, column[rows], top_k, highest) for highest in (True, False))
            listed.update(r for r, _ in top + bottom)
            heads[-1].append({"hist": histogram(column[rows], bins),
                              "top": [[hashes[r], v] for r, v in top], "bottom": [[hashes[r], v] for r, v in bottom]})
    snippets = {hashes[r]: prompts.get(hashes[r]) for r in sorted(listed)}
    return {"bins": bins, "heads": heads, "prompts": {
        h: {"text": p["text"][:SNIPPET_CHARS], "n_tokens": p["n_tokens"], "stored": p["stored"]}
        for h, p in snippets.items() if p is not None}}


def extremes(rows: np.ndarray, values: np.ndarray, k: int, highest: bool) -> list[tuple[int, float]]:
    """The k (row, value) pairs of the highest (or lowest) values, best first; tied values in row (hash) order."""
    key = -values if highest else values
    if len(key) > k > 0:  # the candidates: every value at least as good as the k-th best, ties included
        keep = key <= np.partition(key, k - 1)[k - 1]
        rows, values, key = rows[keep], values[keep], key[keep]
    order = np.lexsort((rows, key))[:k]
    return [(int(r), float(v)) for r, v in zip(rows[order], values[order])]


def histogram(values: np.ndarray, bins: int) -> dict | None:
    """Counts in `bins` equal bins from the lowest value to the highest (all in the first when they are equal)."""
    if not len(values):
        return None
    values = values.astype(np.float64)  # float32 values one ulp apart cannot make 32 float32 bins
    lo, hi = float(values.min()), float(values.max())
    counts = np.histogram(values, bins, (lo, hi))[0] if hi > lo else np.eye(bins, dtype=int)[0] * len(values)
    return {"lo": lo, "hi": hi, "counts": counts.tolist()}


# ---- Merging statistics: every compute run's parts (shards copied together), and stored prompts' stats.json ----

def merged_stats(save_path: Path, model: str, shape: tuple[int, int], parts: list[storage.Part],
                 records: list[dict]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every prompt's statistics, {name: float32 [prompts, layers, heads], NaN where missing}, with rows in the
    order of `records` (prompt_index_records: the prompt index's rows), and the parts' docs of their statistics.

    A prompt in several parts (a run recomputed it) takes its first part's values, in part name order, so
    the result does not depend on which shard ran first; stored prompts' stats.json (render_figures.py's
    statistics) fill in the statistics no part has."""
    position = {r["hash"]: i for i, r in enumerate(records)}
    names = list(dict.fromkeys(name for part in parts for name in part.stats))
    tables = {name: np.full((len(records), *shape), np.nan, np.float32) for name in names}
    seen = set()
    for part in parts:
        if (part.values.shape[2:]) != shape:
            raise lens.UserError(f"{part.path}: statistics of {part.values.shape[2]} x {part.values.shape[3]} heads, "
                                 f"but the model has {shape[0]} x {shape[1]}")
        keep = [r for r, row in enumerate(part.rows) if row["hash"] not in seen]
        seen.update(part.rows[r]["hash"] for r in keep)
        at = np.array([position[part.rows[r]["hash"]] for r in keep], int)
        for s, name in enumerate(part.stats):
            tables[name][at] = part.values[keep, s]
    for record in records:
        if not record["stored"]:
            continue
        for name, values in read_rendered_stats(save_path, model, record["hash"], shape).items():
            table = tables.setdefault(name, np.full((len(records), *shape), np.nan, np.float32))
            if np.isnan(table[position[record["hash"]]]).all():
                table[position[record["hash"]]] = values
    return tables, {name: doc for part in parts for name, doc in part.docs.items()}


def read_rendered_stats(save_path: Path, model: str, phash: str, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """A stored prompt's stats.json (render_figures.py); {} when it has none, a warning when it is unreadable."""
    try:
        return storage.read_prompt_stats(save_path, model, phash, shape)
    except lens.UserError as e:
        print(f"build_index.py: warning: {e}; left out of the statistics", file=sys.stderr)
        return {}


def write_model_stats(save_path: Path, model: str, cfg: dict, figures: dict[str, lens.Figure],
                      parts: list[storage.Part], records: list[dict]) -> int:
    """Merge a model's statistics and write the aggregates the site reads; returns the number of statistics."""
    tables, part_docs = merged_stats(save_path, model, (cfg["n_layers"], cfg["n_heads"]), parts, records)
    if not tables:  # said as such, so the site knows there are none (and a former build's are gone)
        write_if_changed(storage.stats_path(save_path, model), lens.json_bytes(
            {"n_prompts": len(records), "n_layers": cfg["n_layers"], "n_heads": cfg["n_heads"], "stats": {}}))
        return 0
    order = [n for n in figures if n in tables] + sorted(set(tables) - set(figures))
    docs = {**part_docs, **{name: inspect.getdoc(figures[name].func) or "" for name in order if name in figures}}
    write_stat_aggregates(save_path, model, [r["hash"] for r in records], {n: tables[n] for n in order}, docs,
                          {r["hash"]: r for r in records})
    return len(order)


def top_prompts(save_path: Path, model_name: str, k: int, stat_spec: str | None) -> tuple[list[dict], str]:
    """compute_activations.py --top K: the prompts among each head's K highest and K lowest by the statistics
    computed so far (the lists heads.json shows), as prompts to store the patterns of."""
    model = lens.model_dir_name(model_name)
    cfg_path = lens.model_cfg_path(save_path, model)
    parts = storage.read_parts(save_path, model) if cfg_path.is_file() else []
    if not parts:
        raise lens.UserError(f"--top {k}: no statistics of {model_name} in {save_path} yet; compute them first: "
                             f"python compute_activations.py {model_name} PROMPTS --patterns none")
    cfg = lens.read_json(cfg_path)
    records = prompt_index_records(save_path, model, parts)
    tables, _ = merged_stats(save_path, model, (cfg["n_layers"], cfg["n_heads"]), parts, records)
    names = [n.strip() for n in (stat_spec or ",".join(tables)).split(",") if n.strip()]
    unknown = [n for n in names if n not in tables]
    if unknown or not names:
        raise lens.UserError(f"--stat {stat_spec}: no statistic {unknown[0] if unknown else ''!r} "
                             f"(computed: {', '.join(tables)})")
    chosen = set()
    for name in names:
        table = tables[name]
        for layer in range(table.shape[1]):
            for head in range(table.shape[2]):
                column = table[:, layer, head]
                finite = np.flatnonzero(np.isfinite(column))
                for highest in (True, False):
                    chosen.update(r for r, _ in extremes(finite, column[finite], k, highest))
    return [{"text": records[r]["text"], "meta": records[r]["meta"]} for r in sorted(chosen)], "all"


def build_index(save_path: Path, figures_dir: Path | None = None) -> None:
    """Rebuild models.jsonl, each model's prompt index, figures.jsonl and colormaps.json, and copy the site."""
    save_path = lens.require_data_dir(save_path)
    names = lens.model_dirs(save_path)
    if not names:
        raise lens.UserError(f"{save_path}: no models (no <model>/model_cfg.json); run compute_activations.py first")
    figures, errors = lens.load_figures(figures_dir or rendered_figures_dir(save_path))
    for error in errors:
        print(f"build_index.py: warning: {error}", file=sys.stderr)
    models, n_prompts, n_unreadable, records_by_model = [], 0, 0, {}
    for name in names:
        cfg = lens.read_json(lens.model_cfg_path(save_path, name))
        parts = storage.read_parts(save_path, name)
        finished = lens.finished_prompts(save_path, name)  # listed once: 100,000 dirs are not free
        records = prompt_index_records(save_path, name, parts, finished)
        write_model_stats(save_path, name, cfg, figures, parts, records)
        write_prompt_index(save_path, name, records)
        records_by_model[name] = records
        models.append({**cfg, "model_dir": name, "n_prompts": len(records)})
        n_prompts += len(records)
        n_unreadable += len(finished) - sum(r["stored"] for r in records)
    # after every model's statistics: nearest heads span them all
    kinds.write_heads(save_path, records_by_model, write_if_changed)
    write_if_changed(lens.models_path(save_path), lens.jsonl_bytes(models))
    write_if_changed(lens.figures_path(save_path), lens.jsonl_bytes(figure_records(figures)))
    write_if_changed(lens.colormaps_path(save_path), colormaps_json())
    copy_site(save_path)
    print(f"build_index.py: {len(models)} model(s), {n_prompts} prompt(s), {len(figures)} figure function(s)"
          f" indexed in {save_path}" + (f" ({n_unreadable} unreadable prompt(s) left out, see the warnings)"
                                         if n_unreadable else "")
          + f"; view with: python serve.py --save-path {save_path}")


# ---- Importing a pattern-lens data dir ----------------------------------------------------

# model_cfg.json keys we keep: TransformerLens's config names, which pattern-lens stores with all the others
MODEL_CFG_KEYS = ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab", "act_fn",
                  "default_prepend_bos", "positional_embedding_type", "original_architecture")
BOS_LABEL = "<bos>"  # pattern-lens stores tokens without the BOS its patterns include


def pattern_lens_prompts(save_path: Path) -> dict[str, list[Path]]:
    """{model dir: its prompt dirs holding pattern-lens activations (activations.npz or a stacked .npy)}."""
    found = {}
    for model in lens.model_dirs(save_path):
        dirs = sorted({p.parent for p in lens.prompts_dir(save_path, model).glob("*/activations*.np[yz]")})
        if dirs:
            found[model] = dirs
    return found


def load_activations(path: Path, n_layers: int) -> np.ndarray:
    """An npz (blocks.{l}.attn.hook_pattern, [1, heads, n, n] each) or a stacked npy as [n_layers, heads, n, n]."""
    if path.suffix == ".npy":
        patterns = np.load(path, mmap_mode="r")
        return patterns.reshape(patterns.shape[-4:]) if patterns.ndim == 5 else patterns
    with np.load(path) as npz:  # one layer decompressed at a time, straight into the result
        shape = npz["blocks.0.attn.hook_pattern"].shape[-3:]
        patterns = np.empty((n_layers, *shape), np.float32)
        for l in range(n_layers):
            patterns[l] = npz[f"blocks.{l}.attn.hook_pattern"].reshape(shape)
    return patterns


def read_activations(path: Path, n_layers: int, n_heads: int) -> np.ndarray:
    """A pattern-lens prompt's float32 [n_layers, n_heads, n, n] patterns; a UserError naming the file if unusable."""
    try:
        patterns = load_activations(path, n_layers)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise lens.UserError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if patterns.ndim != 4 or patterns.shape[:2] != (n_layers, n_heads) or patterns.shape[2] != patterns.shape[3]:
        raise lens.UserError(f"{path}: shape {patterns.shape}, expected [{n_layers}, {n_heads}, n, n]")
    if not np.isfinite(patterns).all():
        raise lens.UserError(f"{path}: holds NaN or infinite values")
    return patterns


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE: the printable character each byte is written as inside a token string."""
    printable = [*range(0x21, 0x7f), *range(0xa1, 0xad), *range(0xae, 0x100)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


def readable_tokens(tokens: list[str], text: str) -> list[str]:
    """Byte-level BPE token strings ("\u0120world") decoded as our prompt.json has them (" world"),
    only when the decoded tokens spell the text exactly; other tokenizers' strings are kept."""
    alphabet = _byte_level_alphabet()
    if not all(c in alphabet for t in tokens for c in t):
        return tokens
    raw = [bytes(alphabet[c] for c in t) for t in tokens]
    if b"".join(raw) != text.encode("utf-8"):
        return tokens
    return [r.decode("utf-8", errors="replace") for r in raw]


def converted_prompt(path: Path, n: int) -> dict:
    """Our prompt.json from pattern-lens's: our hash, BOS in tokens and n_tokens, every other field kept."""
    old = lens.read_json(path)
    if not isinstance(old.get("text"), str):
        raise lens.UserError(f"{path}: no text")
    tokens = readable_tokens(old.get("tokens") or [], old["text"])
    if len(tokens) == n - 1:
        tokens = [BOS_LABEL] + tokens
    if len(tokens) != n:
        raise lens.UserError(f"{path}: {len(tokens)} tokens, but the patterns have {n}")
    rest = {k: v for k, v in old.items() if k not in ("text", "hash", "tokens", "n_tokens", "meta")}
    return {"text": old["text"], "hash": lens.prompt_hash(old["text"]), "tokens": tokens, "n_tokens": n,
            "meta": old.get("meta", {}), **rest, "pattern_lens_hash": old.get("hash")}


PATTERN_LENS_FIGURE = re.compile(r"L(\d+)/H(\d+)/([A-Za-z0-9_.-]+)\.(png|svg|svgz)")
IMPORTED_PACK = "pattern-lens.{}"  # a pack name no figure function can have (not an identifier): render keeps it


def pattern_lens_figures(old_dir: Path, n_layers: int, n_heads: int) -> dict[str, dict[tuple[int, int], Path]]:
    """pattern-lens's per-head images, L<l>/H<h>/<name>.<fmt>, as {name: {(layer, head): file}} (the first
    format of a name per head; files of heads the model lacks are not figures of it)."""
    found = {}
    for src in sorted(old_dir.glob("L*/H*/*")):
        m = PATTERN_LENS_FIGURE.fullmatch(src.relative_to(old_dir).as_posix())
        if m and src.is_file() and int(m[1]) < n_layers and int(m[2]) < n_heads:
            found.setdefault(m[3], {}).setdefault((int(m[1]), int(m[2])), src)
    return found


def write_imported_packs(save_path: Path, model: str, phash: str, figures: dict, cfg: dict) -> None:
    """One pack per pattern-lens figure name, pattern-lens.<name>.pack; svgz is stored as the SVG it holds."""
    for name, files in figures.items():
        pack = storage.PackWriter(lens.figure_pack_path(save_path, model, phash, IMPORTED_PACK.format(name)),
                               cfg["n_layers"], cfg["n_heads"])
        try:
            for (layer, head), src in sorted(files.items()):
                data = src.read_bytes()
                pack.add(layer, head, gzip.decompress(data) if src.suffix == ".svgz" else data)
            pack.close()
        finally:
            pack.abort()


def import_prompt(save_path: Path, model: str, old_dir: Path, cfg: dict) -> None:
    """Convert one pattern-lens prompt dir into ours (patterns.bin, figure packs, prompt.json last)."""
    activations = sorted(old_dir.glob("activations*.np[yz]"))
    patterns = read_activations(activations[0], cfg["n_layers"], cfg["n_heads"])
    old_json = lens.prompt_json_path(save_path, model, old_dir.name)
    info = converted_prompt(old_json, patterns.shape[-1])
    figures = pattern_lens_figures(old_dir, cfg["n_layers"], cfg["n_heads"])
    lens.write_atomic(lens.patterns_path(save_path, model, info["hash"]), storage.encode_patterns(patterns))
    write_imported_packs(save_path, model, info["hash"], figures, cfg)
    lens.write_json(lens.prompt_json_path(save_path, model, info["hash"]), info)
    for path in [*activations, old_json, *(src for files in figures.values() for src in files.values())]:
        path.unlink()
    for d in [*sorted(old_dir.glob("L*/H*")), *sorted(old_dir.glob("L*")), old_dir]:
        with contextlib.suppress(OSError):  # a dir still holding files we do not know stays
            d.rmdir()


def import_pattern_lens(save_path: Path) -> int:
    """Convert a pattern-lens data dir into ours in place; a prompt that fails is a warning. Returns the count."""
    save_path = Path(save_path)
    found = pattern_lens_prompts(save_path) if save_path.is_dir() else {}
    if not found:
        raise lens.UserError(f"{save_path}: no pattern-lens prompts (<model>/prompts/<hash>/activations.npz)")
    imported, failed = 0, 0
    for model, dirs in found.items():
        cfg = lens.read_json(lens.model_cfg_path(save_path, model))
        if not all(isinstance(cfg.get(k), int) for k in ("n_layers", "n_heads")):
            raise lens.UserError(f"{lens.model_cfg_path(save_path, model)}: no n_layers and n_heads")
        for old_dir in dirs:
            try:
                import_prompt(save_path, model, old_dir, cfg)
                imported += 1
            except (lens.UserError, OSError) as e:
                print(f"build_index.py: warning: {e}; prompt not imported", file=sys.stderr)
                failed += 1
        if "model_dir" not in cfg:  # pattern-lens's config: keep what ours holds
            lens.write_json(lens.model_cfg_path(save_path, model), {
                "model_name": cfg.get("model_name", model), "model_dir": model,
                **{k: cfg.get(k) for k in MODEL_CFG_KEYS}, "imported_from": "pattern-lens"})
    print(f"build_index.py: imported {imported} pattern-lens prompt(s) of {len(found)} model(s)"
          + (f"; {failed} failed (see the warnings)" if failed else ""))
    if not imported:
        raise lens.UserError(f"{save_path}: none of the {failed} pattern-lens prompt(s) could be imported")
    return imported


def main() -> None:
    parser = lens.script_parser(__doc__)
    parser.add_argument("--save-path", type=Path, default=lens.DEFAULT_SAVE_PATH,
                        help="data dir (default: %(default)s)")
    parser.add_argument("--figures-dir", type=Path,
                        help="figure plug-ins to index (default: the dir render_figures.py last rendered with, "
                        "else figures/ next to this script)")
    parser.add_argument("--import-pattern-lens", action="store_true",
                        help="first convert pattern-lens prompts (activations.npz/.npy) into ours, in place")
    parser.add_argument("--html", type=Path, metavar="OUT.html",
                        help="instead of indexing, write one self-contained file of the site and the data chosen by "
                        "--models, --prompts and --heads, which opens from disk with no server and no network")
    parser.add_argument("--models", help="--html: model dirs, comma separated (default: all)")
    parser.add_argument("--prompts",
                        help="--html: prompt hashes, comma separated, or a search as the grid's (default: all)")
    parser.add_argument("--heads", help="--html: heads as the grid's spec, e.g. L0-3H*,L5H1 (default: all)")
    parser.add_argument("--max-size", type=float, default=50, metavar="MB",
                        help="--html: refuse to write a file larger than this (default: %(default)s MB)")
    args = parser.parse_args()
    if args.html:
        from standalone import write_html
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        write_html(args.save_path, args.html, models, args.prompts, args.heads, args.max_size)
        return
    for flag, value in [("--models", args.models), ("--prompts", args.prompts), ("--heads", args.heads)]:
        if value is not None:
            raise lens.UserError(f"{flag}: chooses what --html embeds; add --html OUT.html")
    if args.import_pattern_lens:
        import_pattern_lens(args.save_path)
    build_index(args.save_path, args.figures_dir)


if __name__ == "__main__":
    lens.run_main(main, "each file is written whole or not at all; run the same command again")
