"""The prompt index of one model (build_index.py writes it; site/data.js openPromptIndex reads it): every prompt's
row in the order build_index.py first saw it (the parts in name order, each in its run's order, then prompts
stored without statistics, by hash), so that new prompts are appended. A rerun starts from index/state.json,
rewrites the last chunks and the word and hash shards of the new prompts, and reads only new rows."""
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attention_lens import datadir, lens, storage

INDEX_CHUNK_ROWS = 200  # rows per index/rows/<k>.jsonl: a page of search results touches at most 100 of them

INDEX_TEXT_CHARS = 300  # a row holds the text up to this length; prompt.json holds it whole

INDEX_STATE_VERSION = 2


@dataclass
class Rows:
    """The index's rows as build_index.py keeps them between runs (index/state.json): per row its hash, token
    count, whether its patterns are stored, its latest part (-1: none) and probe kind; how far each part was read
    ({name: [rows, bytes]}); the statistics' names, and the code of those the figures dir defined ({name:
    lens.code_of}): values of other code were left out."""
    hashes: list[str] = field(default_factory=list)
    n_tokens: list[int] = field(default_factory=list)
    stored: list[bool] = field(default_factory=list)
    part: list[int] = field(default_factory=list)
    probe: dict[int, str] = field(default_factory=dict)
    part_names: list[str] = field(default_factory=list)
    read: dict[str, list[int]] = field(default_factory=dict)
    stats: list[str] = field(default_factory=list)
    code: dict[str, str] = field(default_factory=dict)

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
    path = datadir.index_state_path(save_path, model)
    try:
        state = json.loads(path.read_bytes())
        if [state["version"], state["chunk_size"], state["text_chars"]] != [
                INDEX_STATE_VERSION, INDEX_CHUNK_ROWS, INDEX_TEXT_CHARS]:
            return None
        return Rows(state["hashes"], state["n_tokens"], [bool(s) for s in state["stored"]], state["part"],
                    {int(r): p for r, p in state["probe"].items()}, state["part_names"], state["read"], state["stats"],
                    state["code"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or our own file damaged: index anew
        return None


def write_index_state(save_path: Path, model: str, rows: Rows) -> None:
    lens.write_if_changed(datadir.index_state_path(save_path, model), json.dumps(
        {"version": INDEX_STATE_VERSION, "chunk_size": INDEX_CHUNK_ROWS, "text_chars": INDEX_TEXT_CHARS,
         "count": len(rows.hashes), "stats": rows.stats, "part_names": rows.part_names, "read": rows.read,
         "hashes": rows.hashes, "n_tokens": rows.n_tokens, "stored": [int(s) for s in rows.stored],
         "part": rows.part, "probe": {str(r): p for r, p in rows.probe.items()}, "code": rows.code},
        separators=(",", ":")).encode())


@dataclass
class Change:
    """A row to (re)write: `base`, the prompt's record its meta comes from (its latest part's row, or its
    prompt.json when no part has it; None: the row as written before),
    `stored`, its prompt.json's record when new or changed, `values`, (part, row) its statistics come from."""
    base: dict | None = None
    stored: dict | None = None
    values: tuple[storage.Part, int] | None = None


def add_rows(rows: Rows, parts: list[storage.Part], stored: dict[str, dict], changed: set[str]) -> dict[int, Change]:
    """Append the prompts `rows` has not seen (the parts' rows in name order, then stored prompts by hash) and
    return the rows to write: the new ones, those a later run computed again (its values and meta win: --force,
    another --max-tokens, new meta), and those whose prompt.json (in `changed`) is new or changed."""
    out = {}
    for part in parts:
        if part.name not in rows.part_names:
            rows.part_names.append(part.name)
        p = rows.part_names.index(part.name)
        for i, row in enumerate(part.rows):
            h, probe = row["hash"], row.get("meta", {}).get("probe")
            if h not in rows.position:
                out[rows.add(h, row["n_tokens"], p, probe)] = Change(row, None, (part, i))
                continue
            r = rows.position[h]  # the row keeps its place
            rows.part[r], rows.n_tokens[r] = p, row["n_tokens"]
            if probe:
                rows.probe[r] = probe
            else:
                rows.probe.pop(r, None)
            change = out.setdefault(r, Change())
            change.base, change.values = row, (part, i)
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
    """A prompt's row: the meta of `base` (Change.base), the rest of its prompt.json when stored (with the
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
    skip = {"prompt.json", datadir.PATTERN_FILE}
    return sorted(f for f in os.listdir(datadir.prompt_dir(save_path, model, phash)) if f not in skip and f[0] != ".")


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
        cache_path = datadir.index_cache_path(save_path, model)
        try:
            cached = {row["hash"]: row for _, row in lens.iter_jsonl(cache_path)} if cache_path.is_file() else {}
        except lens.UserError:  # our own file, damaged: read every prompt.json again
            cached = {}
        entries, changed = {}, set()
        finished = lens.finished_prompts(save_path, model) if finished is None else finished
        for h in finished:
            path = datadir.prompt_json_path(save_path, model, h)
            try:
                stat = path.stat()
            except FileNotFoundError:  # a run on this data dir is storing it again: not finished now
                continue
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
            lens.write_atomic(self.cache_path, lens.jsonl_bytes(self.entries.values()))


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


def chunk_lines(save_path: Path, model: str, k: int, n_rows: int) -> list[bytes]:
    """The first n_rows lines of chunk k as written before (a killed run's later rows are not kept)."""
    path = datadir.index_rows_path(save_path, model, k)
    lines = path.read_bytes().splitlines(keepends=True) if n_rows > 0 and path.is_file() else []
    if len(lines) < n_rows:
        raise lens.UserError(f"{path}: {len(lines)} rows, {n_rows} expected")  # build_index indexes anew
    return lines[:n_rows]


def resolve_records(save_path: Path, model: str, changes: dict[int, Change], n_old: int) -> dict[int, dict]:
    """The changed rows' records; a row written before keeps its meta, read from its chunk."""
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
        lens.write_if_changed(path, json.dumps(merge(held, n_old, entries), ensure_ascii=False,
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
        written.add(datadir.index_rows_path(save_path, model, k))
        lens.write_if_changed(datadir.index_rows_path(save_path, model, k), b"".join(lines))
    rows_of, words, by_hash = {}, {}, {}
    for r in range(n_old, count):
        for word in lens.search_words(records[r]):
            rows_of.setdefault(word, []).append(r)
        by_hash.setdefault(shard_name(rows.hashes[r]), {})[rows.hashes[r]] = r
    for word, found in rows_of.items():
        words.setdefault(shard_name(word), {})[word] = found
    for names_path, path_of, new, merge in [
            (datadir.index_shards_path(save_path, model), lambda s: datadir.index_words_path(save_path, model, s),
             words, merge_words),
            (datadir.index_hashes_path(save_path, model),
             lambda s: datadir.index_hash_shard_path(save_path, model, s), by_hash, merge_hashes)]:
        names = set(json.loads(names_path.read_bytes())) if n_old and names_path.is_file() else set()
        written |= update_shards(path_of, names, n_old, new, merge)
        lens.write_if_changed(names_path, json.dumps(sorted(names | set(new)), ensure_ascii=False).encode())
        written.add(names_path)
    order = np.lexsort((np.arange(count), np.array(rows.n_tokens, np.int64))).astype("<u4")
    stored = [r for r, s in enumerate(rows.stored) if s]
    meta = {"count": count, "chunk_size": size, "text_chars": INDEX_TEXT_CHARS, "n_stored": len(stored)}
    for path, data in [(datadir.index_order_path(save_path, model), order.tobytes()),
                       (datadir.index_stored_path(save_path, model), json.dumps(stored).encode()),
                       (datadir.prompt_index_path(save_path, model), lens.json_bytes(meta))]:  # last: the row count
        lens.write_if_changed(path, data)
        written.add(path)
    if not n_old:
        written |= {datadir.index_cache_path(save_path, model), datadir.index_state_path(save_path, model)}
        for old in datadir.prompt_index_dir(save_path, model).rglob("*"):
            if old.is_file() and old not in written:
                old.unlink()


@dataclass
class Update:
    """What a run writes: the rows (those before n_old as written before), the rows to write, the stored prompts'
    statistics of render_figures.py (by row: values and the code that computed them), each part's statistics,
    their code and docs, and the code of the statistics the figures dir defines."""
    rows: Rows
    n_old: int
    changes: dict[int, Change]
    rendered: dict[int, tuple[dict[str, np.ndarray], dict[str, str]]]
    part_stats: dict[str, list[str]]
    part_code: dict[str, dict[str, str]]
    docs: dict[str, str]
    current: dict[str, str]

    def follows(self, name: str, code: str | None) -> bool:
        """Whether values of `name` computed by `code` are its values now: the figures dir's statistic of that name
        has that code. Values of a statistic it does not define, or of code not recorded, are kept."""
        return name not in self.current or code is None or code == self.current[name]


def plan_update(save_path: Path, model: str, shape: tuple[int, int], stored: StoredPrompts, old: Rows | None,
                parts: list[storage.Part] | None = None, current: dict[str, str] | None = None) -> Update | None:
    """The update from the last run's rows (`old`; None: from nothing), with `current` the code of the statistics
    the figures dir defines. None when a statistic is new or its code changed, which rows indexed before may
    have, or a row indexed before was computed again: then everything is indexed anew."""
    current = current or {}
    if old is not None and old.code != current:
        return None
    rows = old or Rows(code=current)
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
    if any(r < n_old and c.base is not None for r, c in changes.items()):
        return None  # a row written before has new meta, so new words: the word shards are written anew
    rendered = {}
    for r, change in changes.items():
        if change.stored and (found := read_rendered_stats(save_path, model, rows.hashes[r], shape))[0]:
            rendered[r] = found
    names = set().union(*(p.stats for p in parts), *(values for values, _ in rendered.values()))
    if old is not None and names - set(old.stats):
        return None
    rows.stats = sorted(names | set(rows.stats))
    return Update(rows, n_old, changes, rendered, {p.name: p.stats for p in parts}, {p.name: p.code for p in parts},
                  {name: doc for part in parts for name, doc in part.docs.items()}, current)


def state_holds(save_path: Path, model: str, rows: Rows, stored: StoredPrompts, shape: tuple[int, int]) -> bool:
    """Whether a rerun can start from the last run's rows: nothing they were built from is gone or shorter."""
    for name, (_, n_bytes) in rows.read.items():
        path = datadir.parts_dir(save_path, model) / f"{name}.jsonl"
        if not path.is_file() or path.stat().st_size < n_bytes:
            return False
    if any(s and h not in stored.records for h, s in zip(rows.hashes, rows.stored)):
        return False  # a stored prompt deleted (or now unreadable)
    table_bytes = len(rows.hashes) * shape[0] * shape[1] * 4
    tables = [datadir.stat_table_path(save_path, model, name) for name in rows.stats]
    chunks = [datadir.index_rows_path(save_path, model, k) for k in range(-(-len(rows.hashes) // INDEX_CHUNK_ROWS))]
    try:  # a meta.json damaged or of another build: not ours
        count = json.loads(datadir.prompt_index_path(save_path, model).read_bytes()).get("count")
    except (OSError, ValueError, AttributeError):
        return False
    return (all(p.is_file() and p.stat().st_size >= table_bytes for p in tables) and all(p.is_file() for p in chunks)
            and count == len(rows.hashes))


def read_rendered_stats(save_path: Path, model: str, phash: str,
                        shape: tuple[int, int]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A stored prompt's stats.json (render_figures.py) and its code; empty when it has none, a warning when it is
    unreadable."""
    try:
        return storage.read_prompt_stats(save_path, model, phash, shape)
    except lens.UserError as e:
        print(f"build_index.py: warning: {e}; left out of the statistics", file=sys.stderr)
        return {}, {}
