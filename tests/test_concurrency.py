"""Runs at once on one data dir, as a cluster array has them: compute shards and a duplicate run started together
(each ending in build_index.py), then renders and build_index.py runs together, end in the data dir that one run
after another gives, round after round; and the statistics of different batch compositions agree within the
tolerance docs/data.md states."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_data import index_rows, read_stats

from attention_lens import compute_activations as ca
from attention_lens import datadir, forward, kinds, lens, storage
from attention_lens.build_index import build_index

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "model"
WORDS = "the of and to in is for that with as on by it be from this are cat sat mat dog ran".split()
TEXTS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 9)) + f" number {i}." for i in range(20)]
TABLE_TOLERANCE = 1e-6  # docs/data.md: the statistics of one prompt in different batches, absolute ...
TABLE_RTOL = 1e-5  # ... or relative (the look-back's variance grows with the distances)


def start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def finish(*runs: subprocess.Popen) -> None:
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, f"{run.args}\n{err}"


def digest(data: Path, model: str = "model") -> dict:
    """What a user reads of a data dir: the indexed prompts, each one's patterns, statistics, figure files, and the
    heads' kinds."""
    rows = index_rows(data, model)
    _, tables = read_stats(data, model)
    stats = {name: {r["hash"]: table[i] for i, r in enumerate(rows)} for name, table in tables.items()}
    stored = sorted(lens.finished_prompts(data, model))
    heads = lens.read_json(datadir.heads_json_path(data, model))
    return {
        "prompts": sorted(r["hash"] for r in rows),
        "stored": stored,
        "patterns": {h: storage.load_patterns(data, model, h).all() for h in stored},
        "files": {h: sorted(p.name for p in datadir.prompt_dir(data, model, h).iterdir()) for h in stored},
        "stats": stats,
        "kinds": [[sorted(k["name"] for k in head["kinds"]) for head in row] for row in heads["heads"]],
        "leftovers": sorted(p.name for p in data.rglob(".*.tmp*")),
    }


def assert_same(got: dict, want: dict) -> None:
    for key in ("prompts", "stored", "files", "kinds", "leftovers"):
        assert got[key] == want[key], key
    for h, patterns in want["patterns"].items():  # one quantum: the same values in another batch
        np.testing.assert_allclose(got["patterns"][h], patterns, atol=1.01 / storage.PATTERN_SCALE)
    assert got["stats"].keys() == want["stats"].keys()
    for name, rows in want["stats"].items():
        for h, values in rows.items():
            np.testing.assert_allclose(got["stats"][name][h], values, atol=TABLE_TOLERANCE, rtol=TABLE_RTOL,
                                       err_msg=name)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


@pytest.fixture(scope="module")
def one_after_another(prompts_file, tmp_path_factory) -> dict:
    data = tmp_path_factory.mktemp("sequential") / "data"
    compute = ["compute_activations.py", DEMO, prompts_file, "--save-path", data, "--patterns", "8", "--no-probe"]
    finish(start(*compute, "--shard", "1/2"))
    finish(start(*compute, "--shard", "2/2"))
    finish(start("render_figures.py", "--save-path", data, "--figures", "raw,bos", "--jobs", "1"))
    finish(start("build_index.py", "--save-path", data))
    return digest(data)


@pytest.mark.parametrize("round_", range(3))
def test_runs_at_once_on_one_data_dir_end_as_one_after_another(prompts_file, one_after_another, tmp_path, round_):
    data = tmp_path / "data"
    compute = ["compute_activations.py", DEMO, prompts_file, "--save-path", data, "--patterns", "8", "--no-probe"]
    # two shards of an array and an accidental second run of the whole set, each ending in build_index.py
    finish(start(*compute, "--shard", "1/2"), start(*compute, "--shard", "2/2"), start(*compute))
    render = ["render_figures.py", "--save-path", data, "--figures", "raw,bos", "--jobs", "1"]
    finish(start(*render), start(*render), start("build_index.py", "--save-path", data),
           start("build_index.py", "--save-path", data))
    assert_same(digest(data), one_after_another)


def test_the_tables_of_two_batch_compositions_agree_within_the_stated_tolerance(tmp_path):
    model = forward.load_model(str(DEMO), "cpu", "float32")
    tables = []
    for batch_size in (1, 8):
        data = tmp_path / f"batch{batch_size}"
        ca.compute_activations(TEXTS, model, data, model_name="model", batch_size=batch_size, patterns="none",
                               progress=False)
        build_index(data)
        rows = [r["hash"] for r in index_rows(data, "model")]
        _, t = read_stats(data, "model")
        tables.append({name: table[np.argsort(rows)] for name, table in t.items()})
    for name in tables[0]:
        np.testing.assert_allclose(tables[1][name], tables[0][name], atol=TABLE_TOLERANCE, rtol=TABLE_RTOL,
                                   err_msg=name)
    stated = (ROOT / "docs" / "data.md").read_text()
    assert f"within {TABLE_TOLERANCE:g} or {TABLE_RTOL:g} of it relative" in stated


def test_a_writer_drops_only_the_temp_files_of_writers_that_are_gone(tmp_path):
    path = tmp_path / "patterns.bin"
    live = lens.AtomicFile(path)  # another writer of the same file, still writing
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".patterns.bin.tmp.{lens.HOST}.{gone.stdout.strip()}.00ff"
    elsewhere = tmp_path / ".patterns.bin.tmp.another-machine.12.00ff"  # its writer may be alive: not ours to judge
    old = tmp_path / ".patterns.bin.tmp.another-machine.13.00ff"
    for p in (dead, elsewhere, old):
        p.write_bytes(b"half")
    os.utime(old, (0, 0))  # a day old: a killed run's
    mine = lens.AtomicFile(path, drop_stale=True)
    assert sorted(tmp_path.iterdir()) == sorted([live.tmp, mine.tmp, elsewhere])
    live.file.write(b"theirs")
    live.commit()
    mine.file.write(b"mine")
    mine.commit()
    assert path.read_bytes() == b"mine" and sorted(tmp_path.iterdir()) == sorted([path, elsewhere])


def test_the_save_path_check_keeps_what_another_task_may_be_writing(tmp_path):
    """Array tasks start at once: the first one's check must not remove the dir the others write into, and a dir
    holding only another task's half-made model dir is a data dir in the making, not someone else's folder."""
    data = tmp_path / "shared" / "data"
    ca.check_writable_dir(data)
    assert data.is_dir()  # kept: another task may have found it there already
    (data / "model" / "prompts").mkdir(parents=True)  # what another task has written so far
    ca.check_writable_dir(data)
    (data / "notes.txt").write_text("mine")
    with pytest.raises(lens.UserError, match="holds files and is not a data dir"):
        ca.check_writable_dir(data)


def test_the_kinds_do_not_depend_on_how_the_prompts_were_sharded(tmp_path):
    """More stored prompts than the kinds' shape features read (kinds.MAX_SHAPE_PROMPTS): one run, and two shards
    run in either order, index their rows in three orders and give one heads.json."""
    model = forward.load_model(str(DEMO), "cpu", "float32")
    texts = [f"{t} and then {WORDS[i % len(WORDS)]} again" for i, t in enumerate(TEXTS + TEXTS[::-1])]
    assert len(set(texts)) > kinds.MAX_SHAPE_PROMPTS
    heads, orders = [], []
    for name, shards in [("one", [None]), ("first-second", [(1, 2), (2, 2)]), ("second-first", [(2, 2), (1, 2)])]:
        data = tmp_path / name
        for shard in shards:
            chosen = [t for t in texts if lens.in_shard(lens.prompt_hash(t), shard)]
            ca.compute_activations(chosen, model, data, model_name="model", progress=False)
        build_index(data)
        orders.append([r["hash"] for r in index_rows(data, "model")])
        record = lens.read_json(datadir.heads_json_path(data, "model"))
        heads.append([[(sorted(k["name"] for k in h["kinds"]), h["features"]) for h in row] for row in record["heads"]])
    assert orders[1] != orders[2]  # the rows were indexed in another order
    assert heads[1] == heads[0] and heads[2] == heads[0]
