"""The prompt index (build_index.py write_prompt_index, site/data.js openPromptIndex): rows without tokens in
hash order, split into chunks; statistic-only prompts; incremental reruns; find, search and order in a browser."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import assert_only_local, browser_session
from fake_data import index_rows, make_data

from attention_lens import build_index, datadir, lens, prompt_index

ROOT = Path(__file__).resolve().parent.parent
MODEL = "fake-model"
CHUNK = 7  # rows per chunk in these tests: 30 prompts make 5 chunks
LONG = "a long prompt " + " ".join(f"word{i}" for i in range(80)) + " far-away-tail"
TEXTS = ([f"prompt {i}: " + "hay " * (i % 5) + ("needle" if i % 7 == 3 else "straw") for i in range(26)]
         + ["Caf\u00e9 au lait, s'il vous pla\u00eet", "\u65e5\u672c\u8a9e \u306e \u30c6\u30ad\u30b9\u30c8",
            "x_y is one word", LONG])


@pytest.fixture
def indexed(tmp_path, monkeypatch) -> Path:
    """TEXTS as stored prompts (tests/fake_data.py), indexed in chunks of CHUNK rows."""
    monkeypatch.setattr(prompt_index, "INDEX_CHUNK_ROWS", CHUNK)
    make_data(tmp_path / "data", texts=TEXTS)
    build_index.build_index(tmp_path / "data")
    return tmp_path / "data"


def test_rows_hold_no_tokens_and_split_at_chunk_size(indexed):
    meta = lens.read_json(datadir.prompt_index_path(indexed, MODEL))
    assert meta == {"count": 30, "chunk_size": CHUNK, "text_chars": prompt_index.INDEX_TEXT_CHARS, "n_stored": 30}
    chunks = sorted(datadir.prompt_index_dir(indexed, MODEL).glob("rows/*.jsonl"), key=lambda p: int(p.stem))
    assert [len(p.read_text().splitlines()) for p in chunks] == [7, 7, 7, 7, 2]
    rows = index_rows(indexed, MODEL)
    assert [r["hash"] for r in rows] == sorted(lens.prompt_hash(t) for t in TEXTS)
    shards = json.loads(datadir.index_hashes_path(indexed, MODEL).read_text())
    assert shards == sorted({r["hash"][:2] for r in rows})
    by_hash = {}
    for shard in shards:
        by_hash.update(json.loads(datadir.index_hash_shard_path(indexed, MODEL, shard).read_text()))
    assert by_hash == {r["hash"]: i for i, r in enumerate(rows)}
    for row in rows:
        info = lens.read_json(datadir.prompt_json_path(indexed, MODEL, row["hash"]))
        assert not {"tokens", "token_ids"} & set(row)
        assert row["n_tokens"] == info["n_tokens"] and row["stored"] is True
        assert row["text"] == info["text"][:prompt_index.INDEX_TEXT_CHARS]
        assert row.get("snippet", False) == (info["text"] == LONG) and len(LONG) > prompt_index.INDEX_TEXT_CHARS
    order = np.fromfile(datadir.index_order_path(indexed, MODEL), "<u4")
    assert [rows[r]["n_tokens"] for r in order] == sorted(r["n_tokens"] for r in rows)
    assert json.loads(datadir.index_stored_path(indexed, MODEL).read_text()) == list(range(30))


def test_a_smaller_index_leaves_no_stale_chunks(indexed, monkeypatch):
    for h in lens.finished_prompts(indexed, MODEL)[:10]:
        datadir.prompt_json_path(indexed, MODEL, h).unlink()
    build_index.build_index(indexed)
    assert sorted(p.name for p in datadir.prompt_index_dir(indexed, MODEL).glob("rows/*")) == [
        "0.jsonl", "1.jsonl", "2.jsonl"]
    assert len(index_rows(indexed, MODEL)) == 20


def counting_reads(monkeypatch) -> list[str]:
    """The hashes of the prompt.json files read from now on."""
    reads, read_json = [], lens.read_json
    monkeypatch.setattr(lens, "read_json",
                        lambda path: (reads.append(Path(path).parent.name) if Path(path).name == "prompt.json"
                                      else None) or read_json(path))
    return reads


def test_a_rerun_reads_only_new_and_changed_prompt_dirs(indexed, monkeypatch):
    rows_dir = datadir.prompt_index_dir(indexed, MODEL) / "rows"
    before = {p.name: p.stat().st_mtime_ns for p in rows_dir.iterdir()}
    added = [f"a new prompt {i}" for i in range(3)]
    make_data(indexed, texts=added, seed=1)
    changed = datadir.prompt_json_path(indexed, MODEL, lens.prompt_hash(TEXTS[0]))
    lens.write_json(changed, {**lens.read_json(changed), "heads": "L0H*"})
    reads = counting_reads(monkeypatch)
    build_index.build_index(indexed)
    assert sorted(reads) == sorted([lens.prompt_hash(t) for t in added] + [changed.parent.name])
    rows = index_rows(indexed, MODEL)
    assert len(rows) == 33 and next(r for r in rows if r["hash"] == changed.parent.name)["heads"] == "L0H*"
    first_new = min(r for r, row in enumerate(rows) if row["text"] in added or row["hash"] == changed.parent.name)
    kept = [f"{k}.jsonl" for k in range(first_new // CHUNK)]  # the chunks before the first new row are not rewritten
    assert all(rows_dir.joinpath(name).stat().st_mtime_ns == before[name] for name in kept)
    reads.clear()
    build_index.build_index(indexed)  # nothing changed: no prompt.json is read
    assert reads == []


@pytest.fixture(scope="module")
def statistics_only(tmp_path_factory, tiny_checkpoint) -> Path:
    """compute_activations.py on 4 prompts storing the patterns of 1 (--patterns 1): statistics for all 4."""
    tmp = tmp_path_factory.mktemp("stats-only")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"text": t, "meta": {"i": i}}) + "\n"
                                               for i, t in enumerate(TEXTS[:4])))
    proc = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), str(tiny_checkpoint), "prompts.jsonl",
                           "--patterns", "1", "--no-probe", "--save-path", "data"],
                          cwd=tmp, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return tmp / "data"


def test_statistic_only_prompts_are_rows_with_stored_false(statistics_only):
    [model] = lens.model_dirs(statistics_only)
    records = prompt_index.prompt_index_records(statistics_only, model)
    rows = index_rows(statistics_only, model)
    # rows in the order the run computed them (batches of like lengths, the stored prompts' apart)
    assert [r["hash"] for r in rows] == [r["hash"] for r in records]
    assert sorted(r["hash"] for r in rows) == sorted(lens.prompt_hash(t) for t in TEXTS[:4])
    stored = lens.finished_prompts(statistics_only, model)
    assert len(stored) == 1
    assert [r["stored"] for r in rows] == [r["hash"] in stored for r in rows]
    assert {r["text"]: r["meta"] for r in rows} == {t: {"i": i} for i, t in enumerate(TEXTS[:4])}
    assert json.loads(datadir.index_stored_path(statistics_only, model).read_text()) == \
        [i for i, r in enumerate(rows) if r["stored"]]
    models = datadir.models_path(statistics_only).read_text().splitlines()
    assert [m["n_prompts"] for m in map(json.loads, models)] == [4]


def test_statistic_only_prompts_show_not_stored_in_the_grid(statistics_only):
    [model] = lens.model_dirs(statistics_only)
    rows = index_rows(statistics_only, model)
    only = [r["hash"] for r in rows if not r["stored"]]
    with browser_session(statistics_only) as s:
        s.page.goto(f"{s.url}index.html?heads=L0H0,L1H1&prompts={only[0]}")
        s.page.wait_for_function("document.querySelectorAll('.tile .not-stored').length === 2")
        s.page.wait_for_function("document.querySelectorAll('#prompt-table tbody tr').length === 4")
        assert not [u for u in s.requests if f"/prompts/{only[0]}/" in u]  # nothing asked of a prompt dir it lacks
        assert not s.errors


# What openPromptIndex answers, evaluated in the page (the site's own module, served by serve.py).
QUERIES = """async (hashes) => {
  const { openPromptIndex, shardName } = await import('./data.js');
  const index = await openPromptIndex('fake-model');
  const hashOf = (found) => found.map((f) => f.record.hash);
  return {
    count: index.count,
    found: await Promise.all(hashes.map(async (h) => (await index.find(h))?.row ?? null)),
    missing: await index.find('0000000000000000'), after: await index.find('ffffffffffffffff'),
    rows: (await index.rows(5, 10)).map((r) => r.hash), tail: (await index.rows(28, 10)).map((r) => r.hash),
    needle: hashOf(await index.search('needle', 100)), prefix: hashOf(await index.search('NEED', 100)),
    both: hashOf(await index.search('needle prompt 10', 100)), cafe: hashOf(await index.search('caf\u00e9', 100)),
    japanese: hashOf(await index.search('\u65e5\u672c', 100)), word: hashOf(await index.search('x_y', 100)),
    tail_word: hashOf(await index.search('far away', 100)),
    hash: hashOf(await index.search(hashes[3].slice(0, 8), 100)),
    none: await index.search('zebra', 100), empty: await index.matches('  '),
    limited: (await index.search('prompt', 3)).length,
    tokens: await index.ordered('tokens', 0, 30), longest: await index.ordered('-tokens', 0, 3),
    among: await index.ordered('tokens', 1, 2, new Set([0, 4, 9, 20])),
    shards: ['ne', 'caf\u00e9', '\u65e5\u672c', 'x_y', 'a', '9z'].map(shardName),
  };
}"""


def test_find_search_and_order_in_the_browser(indexed):
    rows = index_rows(indexed, MODEL)
    hashes = [r["hash"] for r in rows]
    with_words = lambda *words: [r["hash"] for r in rows if all(w in lens.search_words(
        {**r, "text": next(t for t in TEXTS if lens.prompt_hash(t) == r["hash"])}) for w in words)]
    by_text = {lens.prompt_hash(t): t for t in TEXTS}
    with browser_session(indexed) as s:
        s.page.goto(s.url + "index.html")
        s.page.wait_for_selector("body[data-ready='1']")
        start = len(s.requests)
        got = s.page.evaluate(QUERIES, hashes)
        fetched = [u[len(s.url):] for u in s.requests[start:]]
        assert not s.errors
        assert_only_local(s)
    assert got["count"] == 30 and got["found"] == list(range(30))
    assert got["missing"] is None and got["after"] is None
    assert got["rows"] == hashes[5:15] and got["tail"] == hashes[28:]
    needles = [h for h in hashes if by_text[h].endswith("needle")]
    assert got["needle"] == got["prefix"] == needles == with_words("needle") and len(needles) == 4
    assert got["both"] == [lens.prompt_hash(TEXTS[10])]
    assert got["cafe"] == [lens.prompt_hash(TEXTS[26])] and got["japanese"] == [lens.prompt_hash(TEXTS[27])]
    assert got["word"] == [lens.prompt_hash(TEXTS[28])]
    assert got["tail_word"] == [lens.prompt_hash(LONG)]  # words past the row's snippet are found too
    assert got["hash"] == [hashes[3]]
    assert got["none"] == [] and got["empty"] is None and got["limited"] == 3
    n_tokens = [r["n_tokens"] for r in rows]
    assert got["tokens"] == sorted(range(30), key=lambda r: (n_tokens[r], r))
    assert got["longest"] == sorted(range(30), key=lambda r: (-n_tokens[r], -r))[:3]
    assert got["among"] == sorted([0, 4, 9, 20], key=lambda r: (n_tokens[r], r))[1:3]
    assert got["shards"] == [prompt_index.shard_name(w) for w in ["ne", "caf\u00e9", "\u65e5\u672c", "x_y", "a", "9z"]]
    words = sorted({u.split("/words/")[1] for u in fetched if "/words/" in u})
    shards = set(json.loads(datadir.index_shards_path(indexed, MODEL).read_text()))  # those that exist
    asked = {prompt_index.shard_name(w) for w in ["needle", "need", "prompt", "10", "caf\u00e9", "\u65e5\u672c", "x_y",
                                                  "far", "away", hashes[3][:8], "zebra"]}
    assert prompt_index.shard_name("zebra") not in shards  # no word starts so: never asked for (no 404)
    assert words == sorted(f"{shard}.json" for shard in asked & shards)
    assert not [u for u in fetched if u.endswith("prompt.json")]  # the index alone answers
