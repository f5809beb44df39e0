"""Statistics at compute time: the device statistics against the figures' definitions, --patterns, --top,
shards merged by build_index.py, a killed run resumed, plug-in statistics, bad flags; and the index's rerun
after more prompts (prompt_index.py), which those statistics feed."""
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_data import index_rows, read_stats

from attention_lens import compute_activations as ca
from attention_lens import datadir, forward, lens, prompt_index, storage
from attention_lens.build_index import build_index
from attention_lens.datadir import index_cache_path, index_state_path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "model"
WORDS = "the of and to in is for that with as on by it be from this are cat sat mat dog ran".split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Prose-like word strings, half of them said twice (so induction and duplicate scores vary)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        seq = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        texts.append(f"{i}: {seq} {seq}" if i % 2 else f"{i}: {seq}.")
    return texts


TEXTS = make_texts(24)


@pytest.fixture(scope="module")
def demo_model():
    return forward.load_model(str(DEMO), "cpu", "float32")


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


def run_main(*args) -> None:
    """compute_activations.py's main() on the test's prompts alone (--no-probe: its counts are the test's own)."""
    ca.main([str(a) for a in args] + ([] if "--probe" in args else ["--no-probe"]))


def stored(data: Path, model: str = "model") -> set[str]:
    return set(lens.finished_prompts(data, model))


def stat_tables(data: Path, model: str = "model") -> tuple[dict, dict[str, np.ndarray]]:
    return read_stats(data, model)


def test_device_statistics_equal_the_figures_definitions(demo_model, tmp_path):
    summary = ca.compute_activations(TEXTS, demo_model, tmp_path, model_name="demo", patterns="none",
                                     batch_size=5, progress=False)
    assert summary["done"] == len(TEXTS) and summary["stored"] == 0 and stored(tmp_path, "demo") == set()
    [part] = storage.read_parts(tmp_path, "demo")
    assert part.stats == list(forward.DEVICE_STATISTICS)
    assert sorted(r["text"] for r in part.rows) == sorted(TEXTS)
    registry, _ = lens.load_figures()
    for row, values in zip(part.rows, part.values):
        ids = ca.tokenize(demo_model.to_tokens, row["text"])
        assert row["n_tokens"] == len(ids)
        _, cache = demo_model.run_with_cache(torch.tensor([ids]), names_filter=forward.is_pattern_hook)
        for layer in range(demo_model.cfg.n_layers):
            exact = cache[f"blocks.{layer}.attn.hook_pattern"][0].numpy()
            for s, name in enumerate(part.stats):
                expected = [lens.call_plugin(registry[name], a, {"token_ids": ids}) for a in exact]
                np.testing.assert_allclose(values[s, layer], expected, atol=1e-4, rtol=0,
                                           err_msg=f"{name} L{layer} on {row['text']!r}")


def test_patterns_sample_stores_n_prompts_and_statistics_for_every_prompt_and_head(prompts_file, tmp_path, capsys):
    data = tmp_path / "data"
    run_main(DEMO, prompts_file, "--patterns", "5", "--heads", "L0H0", "--save-path", data)
    assert "24 prompts computed, 0 skipped (already saved), 5 of them with patterns stored" in capsys.readouterr().out
    assert len(stored(data)) == 5
    assert all(storage.load_patterns(data, "model", h).heads == [(0, 0)] for h in stored(data))
    index, tables = stat_tables(data)
    assert index["n_prompts"] == 24 and list(index["stats"]) == list(forward.DEVICE_STATISTICS)
    assert np.isfinite(tables["bos"]).all() and np.isfinite(tables["induction_head"]).all()  # every head
    run_main(DEMO, prompts_file, "--patterns", "5", "--heads", "L0H0", "--save-path", data)
    assert "0 prompts computed, 24 skipped" in capsys.readouterr().out
    assert len(storage.read_parts(data, "model")) == 1  # the rerun wrote no part: nothing was new
    run_main(DEMO, prompts_file, "--patterns", "none", "--save-path", data / "none")
    assert stored(data / "none") == set() and stat_tables(data / "none")[0]["n_prompts"] == 24


def test_shards_copied_together_give_the_aggregates_of_one_run(prompts_file, tmp_path):
    one, merged = tmp_path / "one", tmp_path / "merged"
    run_main(DEMO, prompts_file, "--patterns", "6", "--save-path", one)
    for k in (1, 2):
        run_main(DEMO, prompts_file, "--patterns", "6", "--shard", f"{k}/2", "--save-path", tmp_path / f"shard{k}")
        shutil.copytree(tmp_path / f"shard{k}" / "model", merged / "model", dirs_exist_ok=True)
    assert len(storage.read_parts(merged, "model")) == 2
    build_index(merged)
    assert stored(merged) == stored(one) and len(stored(one)) == 6  # the sample does not depend on the shard
    (index1, tables1), (index2, tables2) = stat_tables(one), stat_tables(merged)
    assert index1["n_prompts"] == index2["n_prompts"] == 24
    rows1, rows2 = ([r["hash"] for r in index_rows(d, "model")] for d in (one, merged))
    order = [rows2.index(h) for h in rows1]  # the merged rows: shard 1's prompts, then shard 2's
    for name, table in tables1.items():
        np.testing.assert_allclose(tables2[name][order], table, atol=1e-6, rtol=1e-5, err_msg=name)
        for key in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(index2["stats"][name][key], index1["stats"][name][key], atol=1e-6, rtol=1e-5,
                                       err_msg=name)
        heads1, heads2 = (json.loads(datadir.stat_heads_path(d, "model", name).read_text()) for d in (one, merged))
        tops = [[[[h for h, _ in head[side]] for head in layer] for layer in heads["heads"]]
                for heads in (heads1, heads2) for side in ("top", "bottom")]
        assert tops[:2] == tops[2:] and heads1["prompts"] == heads2["prompts"]


def test_a_killed_run_resumes_and_loses_at_most_the_batches_in_flight(demo_model, tmp_path, monkeypatch):
    full = tmp_path / "full"
    ca.compute_activations(TEXTS, demo_model, full, model_name="m", patterns=3, batch_size=4, progress=False)
    data = tmp_path / "data"
    real_run_batch, calls = ca.run_batch, []

    def dying_run_batch(model, batch, *args):
        calls.append([job.hash for job in batch])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_run_batch(model, batch, *args)

    monkeypatch.setattr(ca, "run_batch", dying_run_batch)
    with pytest.raises(KeyboardInterrupt):
        ca.compute_activations(TEXTS, demo_model, data, model_name="m", patterns=3, batch_size=4, progress=False)
    monkeypatch.setattr(ca, "run_batch", real_run_batch)
    [part] = storage.read_parts(data, "m")
    assert sorted(r["hash"] for r in part.rows) == sorted(sum(calls[:3], []))  # the three batches before the kill
    with part.path.with_suffix(".jsonl").open("a") as f:
        f.write('{"hash": "0123')  # a kill in the middle of a line: ignored
    summary = ca.compute_activations(TEXTS, demo_model, data, model_name="m", patterns=3, batch_size=4, progress=False)
    # those without statistics, and any sampled prompt whose patterns were in flight (a batch at most)
    lost = 24 - len(part.rows)
    assert lost <= summary["done"] <= lost + 4 and summary["done"] + summary["skipped"] == 24
    for d in (full, data):
        build_index(d)
    assert stored(data, "m") == stored(full, "m")
    (_, tables1), (index2, tables2) = stat_tables(full, "m"), stat_tables(data, "m")
    assert index2["n_prompts"] == 24
    rows1, rows2 = ([r["hash"] for r in index_rows(d, "m")] for d in (full, data))
    order = [rows2.index(h) for h in rows1]  # the resumed run's rows: the first part's 12, then the second's
    for name in tables1:
        np.testing.assert_allclose(tables2[name][order], tables1[name], atol=1e-6, rtol=1e-5, err_msg=name)


def test_top_k_stores_each_heads_extremes_and_is_idempotent(prompts_file, tmp_path, capsys):
    data = tmp_path / "data"
    run_main(DEMO, prompts_file, "--patterns", "none", "--save-path", data)
    heads = json.loads(datadir.stat_heads_path(data, "model", "induction_head").read_text())
    expected = {h for layer in heads["heads"] for head in layer for side in ("top", "bottom")
                for h, _ in head[side][:2]}
    assert all(not p["stored"] for p in heads["prompts"].values())
    capsys.readouterr()
    run_main(DEMO, "--top", "2", "--stat", "induction_head", "--save-path", data)
    assert f"{len(expected)} prompts computed" in capsys.readouterr().out
    assert stored(data) == expected and 2 < len(expected) < 24
    heads = json.loads(datadir.stat_heads_path(data, "model", "induction_head").read_text())
    assert {h for h, p in heads["prompts"].items() if p["stored"]} >= expected
    run_main(DEMO, "--top", "2", "--stat", "induction_head", "--save-path", data)
    assert "0 prompts computed" in capsys.readouterr().out and stored(data) == expected
    assert stat_tables(data)[0]["n_prompts"] == 24


def test_a_plugin_statistic_runs_at_compute_time_from_the_stored_form(prompts_file, tmp_path, demo_model):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "mine.py").write_text("from attention_lens import statistic\n\n@statistic\ndef first_key(attn):\n"
                                  "    '''Mean attention to key 0.'''\n    return float(attn[:, 0].mean())\n")
    data = tmp_path / "data"
    run_main(DEMO, prompts_file, "--patterns", "none", "--figures-dir", figs, "--save-path", data)
    index, tables = stat_tables(data)
    assert list(index["stats"]) == ["first_key"] and index["stats"]["first_key"]["doc"] == "Mean attention to key 0."
    hashes = [r["hash"] for r in index_rows(data, "model")]  # the tables' row order
    assert sorted(hashes) == sorted(map(lens.prompt_hash, TEXTS))
    for text in TEXTS:
        i = hashes.index(lens.prompt_hash(text))
        _, cache = demo_model.run_with_cache(text, names_filter=forward.is_pattern_hook)
        for layer in range(demo_model.cfg.n_layers):
            exact = cache[f"blocks.{layer}.attn.hook_pattern"][0].numpy()
            np.testing.assert_allclose(tables["first_key"][i, layer], exact[:, :, 0].mean(-1),
                                       atol=2 / storage.PATTERN_SCALE)


def test_a_plugin_statistic_that_fails_at_compute_time_is_missing_there_and_counted(demo_model, tmp_path, capsys):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "picky.py").write_text("from attention_lens import statistic\n\n@statistic\ndef picky(attn):\n"
                                   "    if len(attn) > 8:\n        raise ValueError('too long')\n    return 1.0\n\n"
                                   "@statistic\ndef endless(attn):\n    return float('inf')\n\n"
                                   "@statistic\ndef quits(attn):\n    raise SystemExit(5)\n")
    texts = TEXTS[:6]
    lengths = [len(ca.tokenize(demo_model.to_tokens, t)) for t in texts]
    s = ca.compute_activations(texts, demo_model, tmp_path / "data", model_name="model", patterns="none",
                               figures_dir=figs, progress=False)
    n_heads = demo_model.cfg.n_layers * demo_model.cfg.n_heads
    long = sum(n > 8 for n in lengths)
    failed = long * n_heads + 2 * len(texts) * n_heads  # picky on every head of a long prompt, the others on all
    assert 0 < long < len(texts) and s["failed"] == failed
    warning = capsys.readouterr().err
    assert "picky failed on L" in warning and f"{long * n_heads} value(s) of it failed in all" in warning
    assert "endless failed on L" in warning and "returned inf" in warning
    assert "quits failed on L" in warning and "quits called sys.exit(5)" in warning  # the run went on
    assert f"; {failed} statistic value(s) failed" in ca.summary_line(s, tmp_path / "data")
    build_index(tmp_path / "data")
    _, tables = stat_tables(tmp_path / "data")
    hashes = [r["hash"] for r in index_rows(tmp_path / "data", "model")]
    for text, n in zip(texts, lengths):
        row = tables["picky"][hashes.index(lens.prompt_hash(text))]
        assert np.isnan(row).all() if n > 8 else (row == 1).all()
        assert np.isnan(tables["endless"][hashes.index(lens.prompt_hash(text))]).all()


@pytest.mark.parametrize("extra, message", [
    (["--patterns", "-1"], "error: argument --patterns: expected all, none or a number of prompts, got '-1'"),
    (["--patterns", "some"], "error: argument --patterns: expected all, none or a number of prompts, got 'some'"),
    (["--top", "0"], "error: argument --top: expected a positive integer, got '0'"),
    (["--top", "3", "--no-prompts"], "error: --top 3: no statistics of MODEL in data yet; compute them first"),
    (["--no-prompts"], "error: PROMPTS: a prompts file is needed (or --dataset, or --top K"),
])
def test_bad_scale_flags_fail_with_one_line_and_write_nothing(tmp_path, prompts_file, extra, message):
    args = [a for a in extra if a != "--no-prompts"]
    prompts = [] if "--no-prompts" in extra else [str(prompts_file)]
    r = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), str(DEMO), *prompts, *args,
                        "--save-path", "data"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert message.replace("MODEL", str(DEMO)) in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error:") and not (tmp_path / "data").exists()


def test_top_with_an_unknown_statistic_names_the_computed_ones(prompts_file, tmp_path):
    data = tmp_path / "data"
    run_main(DEMO, prompts_file, "--patterns", "none", "--save-path", data)
    with pytest.raises(lens.UserError, match=r"--stat nope: no statistic 'nope' \(computed: bos, diagonal"):
        run_main(DEMO, "--top", "2", "--stat", "nope", "--save-path", data)
    assert stored(data) == set()


def test_a_rerun_reads_only_the_new_rows_and_writes_what_a_build_from_nothing_writes(demo_model, tmp_path):
    data, fresh = tmp_path / "data", tmp_path / "fresh"
    ca.compute_activations(TEXTS[:16], demo_model, data, model_name="model", patterns=4, progress=False)
    build_index(data)
    [old_part] = [p.with_suffix(".jsonl") for p in datadir.parts_dir(data, "model").glob("*.json")]
    ca.compute_activations(TEXTS[16:], demo_model, data, model_name="model", patterns="all", progress=False)
    ca.compute_activations(TEXTS[:2], demo_model, data, model_name="model", patterns="all", progress=False)
    shutil.copytree(data, fresh)
    for private in (index_state_path, index_cache_path):
        private(fresh, "model").unlink()
    # the rows indexed before, garbled: a rerun that read them again would fail on them
    old_part.write_bytes(b"".join(b"x" * (len(line) - 1) + b"\n" for line in old_part.read_bytes().splitlines(True)))
    build_index(data)
    build_index(fresh)
    rows = [r["hash"] for r in index_rows(data, "model")]
    assert sorted(rows[:16]) == sorted(map(lens.prompt_hash, TEXTS[:16])) and len(rows) == 24  # appended
    assert rows == [r["hash"] for r in index_rows(fresh, "model")]
    assert {r["hash"] for r in index_rows(data, "model") if r["stored"]} == stored(data)
    skip = {"state.json", "prompt_json_cache.jsonl"}
    written = sorted(p.relative_to(fresh) for p in (fresh / "model").rglob("*")
                     if p.is_file() and p.name not in skip and "prompts" not in p.parts and "parts" not in p.parts)
    assert len(written) > 20 and any(p.suffix == ".f32" for p in written)
    for path in written:
        assert (data / path).read_bytes() == (fresh / path).read_bytes(), path


def test_a_build_killed_before_its_state_is_written_is_redone_whole(demo_model, tmp_path, monkeypatch):
    data, fresh = tmp_path / "data", tmp_path / "fresh"
    ca.compute_activations(TEXTS[:16], demo_model, data, model_name="model", patterns=4, progress=False)
    build_index(data)
    ca.compute_activations(TEXTS[16:], demo_model, data, model_name="model", patterns=2, progress=False)
    shutil.copytree(data, fresh)

    def killed(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(prompt_index, "write_index_state", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(data)  # the index, tables and shards written with the new rows, the state not
    monkeypatch.undo()
    build_index(data)
    build_index(fresh)
    for path in sorted(p.relative_to(fresh) for p in (fresh / "model").rglob("*") if p.is_file()):
        assert (data / path).read_bytes() == (fresh / path).read_bytes(), path


def test_word_shards_merge_new_rows_and_drop_a_killed_runs():
    held = {"cat": [1, 4, 7], "dog": [3], "eel": [11]}  # cat: rows 1, 5, 12; eel: row 11, from a killed run
    merged = prompt_index.merge_words(held, 10, {"cat": [10, 13], "fox": [10]})
    assert merged == {"cat": [1, 4, 5, 3], "dog": [3], "fox": [10]}
    assert prompt_index.merge_hashes({"a": 3, "b": 10}, 10, {"c": 10}) == {"a": 3, "c": 10}


@pytest.mark.parametrize("lengths", [[1, 1, 1], [1, 6, 2, 9]], ids=["only-one-token", "mixed"])
def test_device_statistics_of_a_padded_batch_with_one_token_prompts(lengths):
    """Each prompt's statistics equal the figures' definitions on its own pattern, whatever the padding
    beside it; a one-token prompt (detect_head refuses it) gets NaN, and a batch of only those still runs."""
    rng = np.random.default_rng(0)
    width, n_layers, n_heads = max(lengths), 2, 3
    ids = [list(rng.integers(0, 4, n)) for n in lengths]  # 4 token ids: repeats are common
    tokens = np.array([x + [0] * (width - len(x)) for x in ids])
    causal = np.triu(np.ones((width, width), bool), 1)
    patterns = []
    for _ in range(n_layers):
        scores = np.where(causal, -np.inf, rng.normal(size=(len(lengths), n_heads, width, width)))
        patterns.append(torch.from_numpy(scores).float().softmax(-1))
    stats = forward.DeviceStats(np.array(lengths), tokens, "cpu", n_layers, n_heads)
    for layer, pattern in enumerate(patterns):
        stats.add_layer(layer, pattern)
    values = stats.values()
    assert values.shape == (len(lengths), len(forward.DEVICE_STATISTICS), n_layers, n_heads)
    registry, _ = lens.load_figures()
    for b, n in enumerate(lengths):
        if n == 1:
            assert np.isnan(values[b]).all()
            continue
        for layer, pattern in enumerate(patterns):
            exact = pattern[b, :, :n, :n].numpy()
            for s, name in enumerate(forward.DEVICE_STATISTICS):
                expected = [lens.call_plugin(registry[name], a, {"token_ids": ids[b]}) for a in exact]
                np.testing.assert_allclose(values[b, s, layer], expected, atol=1e-5, rtol=0, err_msg=f"{name} {n}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
def test_look_back_and_token_sums_equal_a_brute_force_count(causal):
    """HeadSums' look-back histogram and per-token masses over a padded batch equal sums taken entry by entry
    over each fresh prompt's own pattern (the stale prompt adds nothing); the distance statistics equal the
    figures' definitions for an encoder too (its keys ahead of the query count as distance k - q)."""
    rng = np.random.default_rng(1)
    lengths, n_layers, n_heads, vocab = [5, 9, 1, 7], 2, 3, 6
    width = max(lengths)
    ids = [list(rng.integers(0, vocab, n)) for n in lengths]
    tokens = np.array([x + [0] * (width - len(x)) for x in ids])
    fresh = np.array([True, True, True, False])
    masked = ~(np.arange(width)[None] < np.array(lengths)[:, None])  # padding keys (an encoder is told)
    future = np.triu(np.ones((width, width), bool), 1)
    patterns = []
    for _ in range(n_layers):
        scores = rng.normal(size=(len(lengths), n_heads, width, width)) * 3
        scores = np.where(future if causal else masked[:, None, None, :], -np.inf, scores)
        patterns.append(torch.from_numpy(scores).float().softmax(-1))
    sums = forward.HeadSums(n_layers, n_heads, vocab, "cpu")
    stats = forward.DeviceStats(np.array(lengths), tokens, "cpu", n_layers, n_heads, causal=causal, sums=sums,
                                fresh=fresh)
    for layer, pattern in enumerate(patterns):
        stats.add_layer(layer, pattern)
    values = stats.values(fresh)
    got = sums.snapshot()
    edges = list(forward.LOOKBACK_EDGES)
    lookback = np.zeros((n_layers, n_heads, len(edges)))
    query, key = np.zeros((n_layers, n_heads, vocab)), np.zeros((n_layers, n_heads, vocab))
    counts = np.zeros(vocab, int)
    registry, _ = lens.load_figures()
    for b, n in enumerate(lengths):
        if n < 2:
            continue
        for layer, pattern in enumerate(patterns):
            a = pattern[b, :, :n, :n].numpy().astype(np.float64)
            for s, name in enumerate(["qk_distance", "qk_distance_variance", "max_attention"]):
                expected = [lens.call_plugin(registry[name], x, {}) for x in a]
                s = forward.DEVICE_STATISTICS.index(name)
                np.testing.assert_allclose(values[b, s, layer], expected, atol=2e-5, rtol=1e-5, err_msg=name)
            if not fresh[b]:
                continue
            for q in range(n):
                for k in range(n):
                    d = abs(q - k)
                    lookback[layer, :, max(i for i, e in enumerate(edges) if e <= d)] += a[:, q, k]
                    if q >= 1 and k >= 1:
                        query[layer, :, ids[b][q]] += a[:, q, k]
                        key[layer, :, ids[b][k]] += a[:, q, k]
        if fresh[b]:
            counts += np.bincount(ids[b][1:], minlength=vocab)
    np.testing.assert_allclose(got["lookback"], lookback, atol=1e-5)
    assert list(got["ids"]) == list(np.flatnonzero(counts)) and list(got["counts"]) == list(counts[counts > 0])
    np.testing.assert_allclose(got["query"], query[..., got["ids"]], atol=1e-5)
    np.testing.assert_allclose(got["key"], key[..., got["ids"]], atol=1e-5)
    assert got["lookback"][..., 0].sum() > 0 and got["lookback"][..., 2].sum() > 0  # the test sees several bins


def test_a_rerun_with_another_max_tokens_or_new_meta_computes_those_prompts_again(tmp_path, capsys):
    """A rerun without --max-tokens computes again the prompts an earlier run cut; one with a prompt's meta
    changed computes that prompt again; the index shows the latest run's lengths, meta and values."""
    data, prompts = tmp_path / "data", tmp_path / "p.jsonl"
    write = lambda metas: prompts.write_text("".join(json.dumps({"text": t, "meta": m}) + "\n"
                                                     for t, m in zip(TEXTS, metas)))
    write([{"v": 1}] * len(TEXTS))
    run_main(DEMO, prompts, "--patterns", "4", "--save-path", data, "--max-tokens", "6")
    rows = {r["hash"]: r for r in index_rows(data, "model")}
    cut = {h for h, r in rows.items() if r["truncated"]}
    assert len(cut) > len(TEXTS) // 2 and all(r["n_tokens"] <= 6 for r in rows.values())
    capsys.readouterr()
    run_main(DEMO, prompts, "--patterns", "4", "--save-path", data)
    assert f"model: {len(cut)} prompts computed" in capsys.readouterr().out
    full = {r["hash"]: r for r in index_rows(data, "model")}
    assert not any(r["truncated"] for r in full.values())
    assert all(full[h]["n_tokens"] > 6 for h in cut) and all(full[h] == rows[h] for h in set(rows) - cut)
    for h in stored(data):  # the stored patterns follow
        assert storage.load_patterns(data, "model", h).n_tokens == full[h]["n_tokens"]
    write([{"v": 2}] + [{"v": 1}] * (len(TEXTS) - 1))
    run_main(DEMO, prompts, "--patterns", "4", "--save-path", data)
    assert "model: 1 prompts computed" in capsys.readouterr().out
    latest = {r["hash"]: r for r in index_rows(data, "model")}
    assert latest[lens.prompt_hash(TEXTS[0])]["meta"] == {"v": 2}
    assert {h: r for h, r in latest.items() if h != lens.prompt_hash(TEXTS[0])} == {
        h: r for h, r in full.items() if h != lens.prompt_hash(TEXTS[0])}
    assert [r["hash"] for r in index_rows(data, "model")] == list(full)  # the rows keep their places


def test_a_statistics_values_follow_its_current_code(prompts_file, tmp_path):
    """A plug-in that redefines a statistic of the compute run (or a statistic whose code changed) takes effect
    with render_figures.py --force on the stored prompts; the prompts only a run of the old code computed have no
    value until compute_activations.py --force; the site's docstring is always the code's whose values it shows."""
    data, mine = tmp_path / "data", tmp_path / "mine"
    run_main(DEMO, prompts_file, "--patterns", "4", "--save-path", data)
    mine.mkdir()
    (mine / "bos.py").write_text("from attention_lens import statistic\n\n@statistic\ndef bos(attn):\n"
                                 "    '''A half, everywhere.'''\n    return 0.5\n")
    r = subprocess.run([sys.executable, str(ROOT / "render_figures.py"), "--save-path", str(data), "--force",
                        "--figures-dir", str(mine), "--jobs", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    index, tables = stat_tables(data)
    rows = index_rows(data, "model")
    kept = np.array([r["stored"] for r in rows])
    assert kept.sum() == 4 and (tables["bos"][kept] == 0.5).all() and np.isnan(tables["bos"][~kept]).all()
    assert index["stats"]["bos"]["doc"] == "A half, everywhere."
    assert np.isfinite(tables["entropy"]).all()  # a statistic mine does not redefine keeps its values
    run_main(DEMO, prompts_file, "--patterns", "4", "--save-path", data, "--force", "--figures-dir", mine)
    _, tables = stat_tables(data)
    assert (tables["bos"] == 0.5).all()


def test_a_plugin_statistic_over_the_time_limit_fails_and_is_skipped_from_then_on(demo_model, tmp_path, capsys):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "slow.py").write_text("import time\n\nfrom attention_lens import statistic\n\n@statistic\ndef slow(attn):\n"
                                  "    time.sleep(0.3)\n    return 1.0\n")
    s = ca.compute_activations(TEXTS[:3], demo_model, tmp_path / "data", model_name="model", patterns="none",
                               figures_dir=figs, progress=False, time_limit=0.1)
    n_heads = demo_model.cfg.n_layers * demo_model.cfg.n_heads
    assert s["failed"] == 3 * n_heads  # each head: over the limit, or skipped after one was
    err = capsys.readouterr().err
    assert "more than --time-limit 0.1 s; skipped for the rest of the run" in err or "skipped after taking" in err
    build_index(tmp_path / "data")
    _, tables = stat_tables(tmp_path / "data")
    assert s["done"] == 3 and tables["slow"].shape[0] == 3 and np.isnan(tables["slow"]).all()  # the run went on
