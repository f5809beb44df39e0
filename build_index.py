"""Write the indexes the site reads and copy the site next to the data.

    python build_index.py                    # for attn_data/
    python build_index.py --save-path DIR
    python build_index.py --import-pattern-lens --save-path DIR   # convert a pattern-lens data dir first

Writes models.jsonl (every <model>/model_cfg.json), <model>/index/ (every prompt with statistics or
stored patterns, in chunks a page fetches as it needs them, and a word index to search them; a rerun
appends the prompts computed since and reads only them), the statistics' tables and aggregates,
figures.jsonl (the figure registry of the figures dir that render_figures.py last rendered with, else figures/),
colormaps.json (the tables the images use, for the site's legends) and copies site/ into the data
dir: it alone writes what the site reads about figures. It only reads what is on disk, so it is
idempotent and merges the outputs of shards run on several machines once they are copied into one
data dir.
compute_activations.py and render_figures.py run it when they finish.
"""
import contextlib
import gzip
import inspect
import itertools
import json
import os
import re
import sys
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import kinds
import lens
import storage

SITE_DIR = Path(__file__).resolve().parent / "site"


# ---- Where the index's files are (site/data.js builds the same paths) ----

def prompt_index_dir(save_path: Path, model: str) -> Path:
    """The prompt index (build_index.py): rows in the order first indexed, the statistics tables' row order."""
    return Path(save_path) / model / "index"


def prompt_index_path(save_path: Path, model: str) -> Path:
    """{count, chunk_size, text_chars, n_stored}: all a page reads before the rows it shows."""
    return prompt_index_dir(save_path, model) / "meta.json"


def index_hashes_path(save_path: Path, model: str) -> Path:
    """The names of the hash shards (by_hash/<shard>.json: {hash: row}), where the site looks a hash up."""
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


def index_state_path(save_path: Path, model: str) -> Path:
    """build_index.py's record of the rows it wrote and how far it read each part (index/state.json): a rerun
    starts from it and writes only what the new prompts change (the site never reads it)."""
    return prompt_index_dir(save_path, model) / "state.json"


def index_hash_shard_path(save_path: Path, model: str, shard: str) -> Path:
    return prompt_index_dir(save_path, model) / "by_hash" / f"{shard}.json"


# ---- The statistics' aggregates (write_aggregates) ----
# <model>/stats/<name>.f32: little-endian float32 [n_prompts, n_layers, n_heads], NaN where missing; row r
#                      is the prompt index's row r, read by byte range; a rerun appends the new prompts' rows.
# <model>/stats.json: {"n_prompts", "n_layers", "n_heads", "top_k", "stats": {name: {"doc", "mean", "std",
#                      "min", "max", "count", "quantiles": {"0.05": .., "0.95": ..}}}}, each a [layer][head] table.
# <model>/stats/<name>.heads.json: {"bins", "heads": [[{"hist": {"lo", "hi", "counts"} | null, "top": [[hash,
#                      value] x K], "bottom": ..} per head] per layer], "prompts": {hash: {"text", "n_tokens",
#                      "stored"}} (those in some top or bottom list)}.


# ---- The prompt index: every prompt's row in the order build_index.py first saw it (the parts in name order,
# each in its run's order, then prompts stored without statistics, by hash), so that new prompts are appended:
# a rerun rewrites the last chunks and the word and hash shards of the new prompts, and reads only new rows ----

INDEX_CHUNK_ROWS = 200  # rows per index/rows/<k>.jsonl: a page of search results touches at most 100 of them
INDEX_TEXT_CHARS = 300  # a row holds the text up to this length; prompt.json holds it whole
INDEX_STATE_VERSION = 1
WORD = re.compile(r"\w+")  # site/data.js's WORD: letters, digits and _ (Unicode)


@dataclass
class Rows:
    """The index's rows as build_index.py keeps them between runs (index/state.json): per row its hash, token
    count, whether its patterns are stored, its first part (-1: none) and probe kind; how far each part was read
    ({name: [rows, bytes]}); the statistics' names."""
    hashes: list[str] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    stored: list[bool] = field(default_factory=list)
    part: list[int] = field(default_factory=list)
    probe: dict[int, str] = field(default_factory=dict)
    part_names: list[str] = field(default_factory=list)
    read: dict[str, list[int]] = field(default_factory=dict)
    stats: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.position = {h: r for r, h in enumerate(self.hashes)}

    def add(self, phash: str, n_tokens: int, part: int, probe: str | None) -> int:
        r = len(self.hashes)
        self.hashes.append(phash)
        self.n_tokens.append(n_tokens)
        self.stored.append(False)
        self.part.append(part)
        if probe:
            self.probe[r] = probe
        self.position[phash] = r
        return r

    def light_records(self) -> list[dict]:
        """What kinds.py reads of each row: hash, stored, the probe kind in meta."""
        return [{"hash": h, "stored": s, "meta": {"probe": self.probe[r]} if r in self.probe else {}}
                for r, (h, s) in enumerate(zip(self.hashes, self.stored))]


def read_index_state(save_path: Path, model: str) -> Rows | None:
    """The last run's rows; None (index anew) when there are none, or they were written with other settings."""
    path = index_state_path(save_path, model)
    try:
        state = json.loads(path.read_bytes())
        if [state["version"], state["chunk_size"], state["text_chars"]] != [
                INDEX_STATE_VERSION, INDEX_CHUNK_ROWS, INDEX_TEXT_CHARS]:
            return None
        return Rows(state["hashes"], state["n_tokens"], [bool(s) for s in state["stored"]], state["part"],
                    {int(r): p for r, p in state["probe"].items()}, state["part_names"], state["read"], state["stats"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or our own file damaged: index anew
        return None


def write_index_state(save_path: Path, model: str, rows: Rows) -> None:
    write_if_changed(index_state_path(save_path, model), json.dumps(
        {"version": INDEX_STATE_VERSION, "chunk_size": INDEX_CHUNK_ROWS, "text_chars": INDEX_TEXT_CHARS,
         "count": len(rows.hashes), "stats": rows.stats, "part_names": rows.part_names, "read": rows.read,
         "hashes": rows.hashes, "n_tokens": rows.n_tokens, "stored": [int(s) for s in rows.stored],
         "part": rows.part, "probe": {str(r): p for r, p in rows.probe.items()}}, separators=(",", ":")).encode())


@dataclass
class Change:
    """A row to (re)write: `base`, the prompt's first record (a part's row; None: the row as written before),
    `stored`, its prompt.json's record when new or changed, `values`, (part, row) its statistics come from."""
    base: dict | None = None
    stored: dict | None = None
    values: tuple[storage.Part, int] | None = None


def add_rows(rows: Rows, parts: list[storage.Part], stored: dict[str, dict], changed: set[str]) -> dict[int, Change]:
    """Append the prompts `rows` has not seen (the parts' rows in name order, then stored prompts by hash) and
    return the rows to write: the new ones, and those whose prompt.json (in `changed`) is new or changed."""
    out = {}
    for part in parts:
        if part.name not in rows.part_names:
            rows.part_names.append(part.name)
        p = rows.part_names.index(part.name)
        for i, row in enumerate(part.rows):
            if row["hash"] not in rows.position:  # a prompt recomputed later keeps its first part's values
                out[rows.add(row["hash"], row["n_tokens"], p, row.get("meta", {}).get("probe"))] = Change(row, None,
                                                                                                         (part, i))
        rows.read[part.name] = [part.first_row + len(part.rows), part.end_byte]
    for h in sorted(changed):
        record = stored[h]
        if h not in rows.position:
            out[rows.add(h, record["n_tokens"], -1, record.get("meta", {}).get("probe"))] = Change(record)
        r = rows.position[h]
        rows.stored[r], rows.n_tokens[r] = True, record["n_tokens"]
        out.setdefault(r, Change()).stored = record
    return out


def index_record(info: dict) -> dict:
    """What the index keeps of a prompt.json or a part's row: no token lists."""
    return {"hash": info["hash"], "text": info["text"], "n_tokens": info["n_tokens"], "meta": info.get("meta", {}),
            "truncated": info.get("truncated", False), **({"heads": info["heads"]} if "heads" in info else {})}


def row_record(base: dict, stored: dict | None) -> dict:
    """A prompt's row: the meta of its first record (`base`), the rest of its prompt.json when stored (with the
    files of its dir the site may ask for), else of `base`."""
    source = stored or base
    return {**index_record({**source, "meta": base.get("meta", {})}), "stored": stored is not None,
            **({"files": stored["files"]} if stored else {})}


def prompt_index_records(save_path: Path, model: str, parts: list[storage.Part] | None = None,
                         finished: list[str] | None = None) -> list[dict]:
    """Every prompt with statistics (the parts' rows) or stored patterns, as the index's rows, in its order (what
    a build from nothing writes). "stored" says whether the patterns are kept."""
    stored = StoredPrompts.read(save_path, model, finished)
    changes = add_rows(Rows(), storage.read_parts(save_path, model) if parts is None else parts, stored.records,
                       set(stored.records))
    return [row_record(c.base, c.stored) for _, c in sorted(changes.items())]


def prompt_files(save_path: Path, model: str, phash: str) -> list[str]:
    """The files of a prompt dir the site may ask for (packs, their errors, stats.json, value norms): listed in
    its row, so that a page never requests one that is not there."""
    skip = {"prompt.json", lens.PATTERN_FILE}
    return sorted(f for f in os.listdir(lens.prompt_dir(save_path, model, phash)) if f not in skip and f[0] != ".")


@dataclass
class StoredPrompts:
    """The records of the finished prompt dirs by hash (their prompt.json's, with their files), and the hashes
    read anew: prompt.json is read only where it or its dir changed (mtime, size) since the last run, the others
    come from index/prompt_json_cache.jsonl, which save() writes once the index is."""
    records: dict[str, dict]
    changed: set[str]
    entries: dict[str, dict]
    cache_path: Path
    cached: dict[str, dict]
    n_finished: int

    @classmethod
    def read(cls, save_path: Path, model: str, finished: list[str] | None = None) -> "StoredPrompts":
        cache_path = index_cache_path(save_path, model)
        try:
            cached = {row["hash"]: row for _, row in lens.iter_jsonl(cache_path)} if cache_path.is_file() else {}
        except lens.UserError:  # our own file, damaged: read every prompt.json again
            cached = {}
        entries, changed = {}, set()
        finished = lens.finished_prompts(save_path, model) if finished is None else finished
        for h in finished:
            path = lens.prompt_json_path(save_path, model, h)
            stat = path.stat()
            stamp = [stat.st_mtime_ns, stat.st_size, path.parent.stat().st_mtime_ns]  # the dir: files added
            if h in cached and cached[h]["stamp"] == stamp:
                entries[h] = cached[h]
                continue
            try:
                record = {**read_stored_record(path, h), "files": prompt_files(save_path, model, h)}
            except lens.UserError as e:  # one bad prompt must not hide the others from the site
                print(f"build_index.py: warning: {e}; prompt left out of the index", file=sys.stderr)
                continue
            entries[h] = {"hash": h, "stamp": stamp, "record": record}
            changed.add(h)
        return cls({h: e["record"] for h, e in entries.items()}, changed, entries, cache_path, cached,
                   len(finished))

    def save(self) -> None:
        if self.entries != self.cached:
            write_jsonl(self.cache_path, self.entries.values())


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


def row_line(record: dict) -> bytes:
    return lens.jsonl_bytes([index_row(record)])


def shard_name(word: str) -> str:
    """The word shard a word is in: its first two characters, those other than a-z and 0-9 as _<hex code point>
    (file names safe on any file system); site/data.js shardName is the same rule. Hashes are sharded alike."""
    return "".join(c if "a" <= c <= "z" or "0" <= c <= "9" else f"_{ord(c):x}" for c in word[:2])


def search_words(record: dict) -> set[str]:
    """The words a search finds a prompt by: of its text and its meta values, lowercased."""
    meta = record["meta"]
    text = record["text"] + (" " + json.dumps(list(meta.values()), ensure_ascii=False) if meta else "")
    return set(WORD.findall(" ".join(set(text.lower().split()))))  # no \w is a space: each piece once is enough


def chunk_lines(save_path: Path, model: str, k: int, n_rows: int) -> list[bytes]:
    """The first n_rows lines of chunk k as written before (a killed run's later rows are not kept)."""
    path = index_rows_path(save_path, model, k)
    lines = path.read_bytes().splitlines(keepends=True) if n_rows > 0 and path.is_file() else []
    if len(lines) < n_rows:
        raise lens.UserError(f"{path}: {len(lines)} rows, {n_rows} expected; delete "
                             f"{index_state_path(save_path, model)} and run build_index.py again")
    return lines[:n_rows]


def resolve_records(save_path: Path, model: str, changes: dict[int, Change], n_old: int) -> dict[int, dict]:
    """The changed rows' records; a row written before keeps its first record's meta, read from its chunk."""
    size, records, old = INDEX_CHUNK_ROWS, {}, {}
    for r, change in sorted(changes.items()):
        base = change.base
        if base is None:
            k = r // size
            if k not in old:
                old[k] = chunk_lines(save_path, model, k, min(size, n_old - k * size))
            base = json.loads(old[k][r - k * size])
        records[r] = row_record(base, change.stored)
    return records


def update_shards(path_of, names: set[str], n_old: int, new: dict[str, dict], merge) -> set[Path]:
    """Merge each shard's new entries into what it held of the first n_old rows; returns the paths written."""
    written = set()
    for shard, entries in new.items():
        path = path_of(shard)
        held = json.loads(path.read_bytes()) if n_old and shard in names and path.is_file() else {}
        write_if_changed(path, json.dumps(merge(held, n_old, entries), ensure_ascii=False,
                                          separators=(",", ":")).encode())
        written.add(path)
    return written


def merge_words(held: dict[str, list[int]], n_old: int, new: dict[str, list[int]]) -> dict[str, list[int]]:
    """{word: its rows, first row then differences}: a shard's words with the new rows appended (rows from
    n_old on that a killed run wrote are dropped first; only then is a word's list decoded)."""
    out = {}
    for word, d in held.items():
        if sum(d) >= n_old:
            kept = [r for r in itertools.accumulate(d) if r < n_old]
            d = kept[:1] + [b - a for a, b in zip(kept, kept[1:])]
        if d:
            out[word] = d
    for word, rows in new.items():
        d = out.get(word, [])
        out[word] = d + [rows[0] - sum(d)] + [b - a for a, b in zip(rows, rows[1:])]
    return dict(sorted(out.items()))


def merge_hashes(held: dict[str, int], n_old: int, new: dict[str, int]) -> dict[str, int]:
    """{hash: row}: a shard's hashes with the new rows' added."""
    return dict(sorted({**{h: r for h, r in held.items() if r < n_old}, **new}.items()))


def write_index(save_path: Path, model: str, rows: Rows, n_old: int, records: dict[int, dict]) -> None:
    """index/: the chunks holding a changed row, the word and hash shards of the rows from n_old on (the new
    ones), and meta.json, shards.json, hashes.json, by_tokens.u32 and stored.json whole. n_old = 0 writes
    everything anew and removes the files of a former index; files whose bytes did not change are left alone."""
    size, count, written = INDEX_CHUNK_ROWS, len(rows.hashes), set()
    for k in sorted({r // size for r in records}):
        start = k * size
        old = chunk_lines(save_path, model, k, min(size, n_old - start)) if start < n_old else []
        lines = [row_line(records[r]) if r in records else old[r - start]
                 for r in range(start, min(count, start + size))]
        written.add(index_rows_path(save_path, model, k))
        write_if_changed(index_rows_path(save_path, model, k), b"".join(lines))
    rows_of, words, by_hash = {}, {}, {}
    for r in range(n_old, count):
        for word in search_words(records[r]):
            rows_of.setdefault(word, []).append(r)
        by_hash.setdefault(shard_name(rows.hashes[r]), {})[rows.hashes[r]] = r
    for word, found in rows_of.items():
        words.setdefault(shard_name(word), {})[word] = found
    for names_path, path_of, new, merge in [
            (index_shards_path(save_path, model), lambda s: index_words_path(save_path, model, s), words, merge_words),
            (index_hashes_path(save_path, model), lambda s: index_hash_shard_path(save_path, model, s), by_hash,
             merge_hashes)]:
        names = set(json.loads(names_path.read_bytes())) if n_old and names_path.is_file() else set()
        written |= update_shards(path_of, names, n_old, new, merge)
        write_if_changed(names_path, json.dumps(sorted(names | set(new)), ensure_ascii=False).encode())
        written.add(names_path)
    order = np.lexsort((np.arange(count), np.array(rows.n_tokens, np.int64))).astype("<u4")
    stored = [r for r, s in enumerate(rows.stored) if s]
    meta = {"count": count, "chunk_size": size, "text_chars": INDEX_TEXT_CHARS, "n_stored": len(stored)}
    for path, data in [(index_order_path(save_path, model), order.tobytes()),
                       (index_stored_path(save_path, model), json.dumps(stored).encode()),
                       (prompt_index_path(save_path, model), lens.json_bytes(meta))]:  # last: it says how many rows
        write_if_changed(path, data)
        written.add(path)
    if not n_old:
        written |= {index_cache_path(save_path, model), index_state_path(save_path, model)}
        for old in prompt_index_dir(save_path, model).rglob("*"):
            if old.is_file() and old not in written:
                old.unlink()


def write_prompt_index(save_path: Path, model: str, records: list[dict]) -> None:
    """The whole index of these rows (build_index's own writers, for a view's or a benchmark's data dir)."""
    rows = Rows()
    for record in records:
        r = rows.add(record["hash"], record["n_tokens"], -1, None)
        rows.stored[r] = record["stored"]
    write_index(save_path, model, rows, 0, dict(enumerate(records)))


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
    """Each statistic's float32 [prompts (the index's rows), layers, heads] table (NaN: no value) written whole as
    stats/<name>.f32, then its aggregates (write_aggregates)."""
    clean = {}
    for name, table in tables.items():
        if table.ndim != 3 or len(table) != len(hashes):
            raise ValueError(f"{name}: table of shape {table.shape} for {len(hashes)} prompts")
        clean[name] = finite(table)
        lens.write_atomic(storage.stat_table_path(save_path, model, name), clean[name].tobytes())
    write_aggregates(save_path, model, hashes, clean, docs, prompts, top_k, bins)


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
        write_if_changed(storage.stat_heads_path(save_path, model, name),
                         json.dumps(heads, ensure_ascii=False, separators=(",", ":")).encode())
        out["stats"][name] = {"doc": docs.get(name, ""), **stat_summary(table)}
    write_if_changed(storage.stats_path(save_path, model), lens.json_bytes(out))  # last: names the files above


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


# ---- One model's index and statistics, updated from what changed since the last run ----

@dataclass
class Update:
    """What a run writes: the rows (those before n_old as written before), the rows to write, the stored prompts'
    statistics of render_figures.py (by row), and each part's statistics and docs."""
    rows: Rows
    n_old: int
    changes: dict[int, Change]
    rendered: dict[int, dict[str, np.ndarray]]
    part_stats: dict[str, list[str]]
    docs: dict[str, str]


def plan_update(save_path: Path, model: str, shape: tuple[int, int], stored: StoredPrompts, old: Rows | None,
                parts: list[storage.Part] | None = None) -> Update | None:
    """The update from the last run's rows (`old`; None: from nothing); None when a statistic is new, which
    rows indexed before may have, so that everything is indexed anew."""
    rows = old or Rows()
    n_old = len(rows.hashes)
    if parts is None:
        parts = storage.read_parts(save_path, model, {n: tuple(v) for n, v in rows.read.items()})
    for part in parts:
        if part.values.shape[2:] != shape:
            raise lens.UserError(f"{part.path}: statistics of {part.values.shape[2]} x {part.values.shape[3]} heads, "
                                 f"but the model has {shape[0]} x {shape[1]}")
    changed = stored.changed | {h for h in stored.records
                                if h not in rows.position or not rows.stored[rows.position[h]]}
    changes = add_rows(rows, parts, stored.records, changed)
    rendered = {}
    for r, change in changes.items():
        if change.stored and (values := read_rendered_stats(save_path, model, rows.hashes[r], shape)):
            rendered[r] = values
    names = set().union(*(p.stats for p in parts), *rendered.values())
    if old is not None and names - set(old.stats):
        return None
    rows.stats = sorted(names | set(rows.stats))
    return Update(rows, n_old, changes, rendered, {p.name: p.stats for p in parts},
                  {name: doc for part in parts for name, doc in part.docs.items()})


def state_holds(save_path: Path, model: str, rows: Rows, stored: StoredPrompts, shape: tuple[int, int]) -> bool:
    """Whether a rerun can start from the last run's rows: nothing they were built from is gone or shorter."""
    for name, (_, n_bytes) in rows.read.items():
        path = storage.parts_dir(save_path, model) / f"{name}.jsonl"
        if not path.is_file() or path.stat().st_size < n_bytes:
            return False
    if any(s and h not in stored.records for h, s in zip(rows.hashes, rows.stored)):
        return False  # a stored prompt deleted (or now unreadable)
    table_bytes = len(rows.hashes) * shape[0] * shape[1] * 4
    tables = [storage.stat_table_path(save_path, model, name) for name in rows.stats]
    chunks = [index_rows_path(save_path, model, k) for k in range(-(-len(rows.hashes) // INDEX_CHUNK_ROWS))]
    meta = prompt_index_path(save_path, model)
    return (all(p.is_file() and p.stat().st_size >= table_bytes for p in tables) and all(p.is_file() for p in chunks)
            and meta.is_file() and json.loads(meta.read_bytes()).get("count") == len(rows.hashes))  # else not ours


def fill_tables(tables: dict[str, np.ndarray], update: Update) -> None:
    """The changed rows' values: a new row's from its first part, then a stored prompt's stats.json
    (render_figures.py) for the statistics its first part does not have."""
    rows, groups = update.rows, {}
    for r, change in update.changes.items():
        if change.values:
            part, i = change.values
            group = groups.setdefault(part.name, (part, [], []))
            group[1].append(r)
            group[2].append(i)
    for part, at, source in groups.values():
        for s, name in enumerate(part.stats):
            tables[name][np.array(at)] = finite(part.values[np.array(source), s])
    for r, values in update.rendered.items():
        first = update.part_stats.get(rows.part_names[rows.part[r]], []) if rows.part[r] >= 0 else []
        for name, v in values.items():
            if name not in first:
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
            k = r // INDEX_CHUNK_ROWS
            text = json.loads(chunk_lines(self.save_path, self.model, k, r - k * INDEX_CHUNK_ROWS + 1)[-1])["text"]
        return {"text": text, "n_tokens": self.rows.n_tokens[r], "stored": self.rows.stored[r]}


def write_model_stats(save_path: Path, model: str, shape: tuple[int, int], figures: dict[str, lens.Figure],
                      update: Update, records: dict[int, dict]) -> None:
    """Write the changed rows of the statistics' tables, then the aggregates the site reads."""
    rows = update.rows
    if not rows.stats:  # said as such, so the site knows there are none (and a former build's are gone)
        write_if_changed(storage.stats_path(save_path, model), lens.json_bytes(
            {"n_prompts": len(rows.hashes), "n_layers": shape[0], "n_heads": shape[1], "stats": {}}))
        return
    tables = {n: open_table(storage.stat_table_path(save_path, model, n), update.n_old, len(rows.hashes), shape)
              for n in rows.stats}
    fill_tables(tables, update)
    former = {}
    for name in rows.stats:
        path = storage.stat_heads_path(save_path, model, name)
        if update.n_old and path.is_file():
            former.update(json.loads(path.read_bytes()).get("prompts", {}))
    order = [n for n in figures if n in tables] + sorted(set(tables) - set(figures))
    docs = {**update.docs, **{name: inspect.getdoc(figures[name].func) or "" for name in order if name in figures}}
    write_aggregates(save_path, model, rows.hashes, {n: tables[n] for n in order}, docs,
                     Snippets(save_path, model, rows, records, former))
    for table in tables.values():
        if isinstance(table, np.memmap):
            table.flush()


def index_model(save_path: Path, model: str, cfg: dict, figures: dict[str, lens.Figure],
                parts: list[storage.Part] | None = None, remember: bool = True) -> tuple[Rows, int]:
    """One model's prompt index and statistics: the prompts new or changed since the last run (index/state.json)
    appended or rewritten, or all of them the first time. `parts`: only these (a view's data dir), from nothing;
    `remember`: keep the state for the next run. Returns the rows and the number of finished prompt dirs."""
    shape = (cfg["n_layers"], cfg["n_heads"])
    stored = StoredPrompts.read(save_path, model)
    old = read_index_state(save_path, model) if parts is None else None
    update = (plan_update(save_path, model, shape, stored, old)
              if old is not None and state_holds(save_path, model, old, stored, shape) else None)
    if update is None:
        update = plan_update(save_path, model, shape, stored, None, parts)
    records = resolve_records(save_path, model, update.changes, update.n_old)
    write_model_stats(save_path, model, shape, figures, update, records)
    write_index(save_path, model, update.rows, update.n_old, records)
    if remember:  # after everything it describes: a killed run redoes this update
        write_index_state(save_path, model, update.rows)
        stored.save()
    return update.rows, stored.n_finished


def read_rendered_stats(save_path: Path, model: str, phash: str, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """A stored prompt's stats.json (render_figures.py); {} when it has none, a warning when it is unreadable."""
    try:
        return storage.read_prompt_stats(save_path, model, phash, shape)
    except lens.UserError as e:
        print(f"build_index.py: warning: {e}; left out of the statistics", file=sys.stderr)
        return {}


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
    shape = (cfg["n_layers"], cfg["n_heads"])
    update = plan_update(save_path, model, shape, StoredPrompts.read(save_path, model), None, parts)
    rows = update.rows
    tables = {n: np.full((len(rows.hashes), *shape), np.nan, np.float32) for n in rows.stats}
    fill_tables(tables, update)
    names = [n.strip() for n in (stat_spec or ",".join(tables)).split(",") if n.strip()]
    unknown = [n for n in names if n not in tables]
    if unknown or not names:
        raise lens.UserError(f"--stat {stat_spec}: no statistic {unknown[0] if unknown else ''!r} "
                             f"(computed: {', '.join(tables)})")
    chosen, ranks = set(), hash_ranks(rows.hashes)
    for name in names:
        table = tables[name]
        for layer in range(table.shape[1]):
            for head in range(table.shape[2]):
                column = table[:, layer, head]
                finite_rows = np.flatnonzero(np.isfinite(column))
                for highest in (True, False):
                    chosen.update(r for r, _ in extremes(finite_rows, column[finite_rows], k, highest, ranks))
    records = [row_record(c.base, c.stored) for _, c in sorted(update.changes.items())]
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
        rows, n_finished = index_model(save_path, name, cfg, figures)
        records_by_model[name] = rows.light_records()
        models.append({**cfg, "model_dir": name, "n_prompts": len(rows.hashes)})
        n_prompts += len(rows.hashes)
        n_unreadable += n_finished - sum(rows.stored)
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
