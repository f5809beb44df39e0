"""Examples across each head's range (examples.py) against brute force: the choice against a plain computation
over every prompt's activation in the statistics tables, each example's sparse attention against the top-k of
the stored pattern, shards merged against one run; the head pages' blocks against the aggregates."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fake_data import index_rows
from test_compute_stats import TEXTS, run_main

from attention_lens import datadir, examples, head_pages, lens, prompt_index, storage

MODEL = "model"
DEMO = Path(__file__).resolve().parent.parent / "demo" / "model"


@pytest.fixture(scope="module")
def computed(tmp_path_factory) -> Path:
    """The demo model on 24 prompts, every pattern stored, 4 intervals of 2 and a top of 3 (so that intervals
    matter with 24 prompts)."""
    tmp = tmp_path_factory.mktemp("examples")
    prompts = tmp / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    data = tmp / "data"
    run_main(DEMO, prompts, "--save-path", data, "--examples-intervals", "4", "--examples-per-interval", "2",
             "--examples-top", "3", "--examples-seed", "7")
    return data


def brute_force_choice(values: list[float], hashes: list[str], seed: int, q: int, per: int, top: int) -> list:
    """[(hash, interval)] of one head, highest interval first, computed plainly from the definition."""
    pairs = sorted((v, h) for v, h in zip(values, hashes) if v == v)
    n = len(pairs)
    bounds = [pairs[min(int(round(i * n / q)), n - 1)][0] for i in range(1, q)]
    key = {h: int(hashlib.sha256(f"{seed}:{h}".encode()).hexdigest()[:16], 16) for _, h in pairs}
    out = []
    for interval in range(q, 0, -1):
        inside = [(v, h) for v, h in pairs if sum(v >= b for b in bounds) + 1 == interval]
        if interval == q:
            inside.sort(key=lambda x: (-x[0], key[x[1]]))
            out += [(h, interval) for _, h in inside[:top]]
        else:
            out += [(h, interval) for _, h in sorted(inside, key=lambda x: key[x[1]])[:per]]
    return out


def test_the_choice_equals_a_brute_force_one_over_every_prompt(computed):
    rows = [r["hash"] for r in index_rows(computed, MODEL)]
    table = np.fromfile(datadir.stat_table_path(computed, MODEL, "max_attention"), "<f4").reshape(len(rows), 2, 4)
    index = lens.read_json(datadir.examples_index_path(computed, MODEL))
    assert (index["intervals"], index["per_interval"], index["top"], index["seed"]) == (4, 2, 3, 7)
    assert index["n_prompts"] == len(TEXTS)
    for layer in range(2):
        for head in range(4):
            block = examples.read_head_examples(computed, MODEL, layer, head)
            got = [(e["hash"], e["interval"]) for e in block["examples"]]
            column = table[:, layer, head].astype(float).tolist()
            assert got == brute_force_choice(column, rows, 7, 4, 2, 3), (layer, head)
            assert sum(block["interval_counts"]) == block["count"] == len(TEXTS)
            assert len(got) == 3 + 3 * 2


def test_each_example_keeps_the_top_k_of_its_stored_pattern(computed):
    """Every kept (q, k, w) is the stored weight; every key left out of a row weighs no more than the row's
    smallest kept one, or is under the threshold: the kept entries are the row's top 8 at or above 0.005."""
    for layer in range(2):
        for head in range(4):
            for e in examples.read_head_examples(computed, MODEL, layer, head)["examples"]:
                pattern = storage.load_patterns(computed, MODEL, e["hash"]).head(layer, head)
                n = len(pattern)
                assert e["n_tokens"] == n == len(e["tokens"])
                q, k, w = (np.array(e[x]) for x in ("q", "k", "w"))
                np.testing.assert_allclose(w, pattern[q, k], atol=1e-4)
                assert (w >= 0.005).all() and len(q) > 0
                for row in range(n):
                    kept = k[q == row]
                    assert len(kept) <= 8 and len(set(kept)) == len(kept)
                    rest = np.delete(pattern[row], kept)
                    floor = w[q == row].min() if len(kept) == 8 else 0.005
                    assert (rest <= floor + 1e-4).all(), (layer, head, row)
                assert abs(e["value"] - pattern[1:, 1:].max()) < 1e-4  # the activation it was chosen by


def test_shards_merged_choose_what_one_run_chooses(computed, tmp_path, capsys):
    """Two shards into one data dir (no examples: they say to run --examples), then --examples: the same examples
    as the one run's (the activations, computed in other batches, may differ in float32's last bits); a second
    --examples runs nothing."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    data = tmp_path / "data"
    flags = ["--examples-intervals", "4", "--examples-per-interval", "2", "--examples-top", "3", "--examples-seed", "7"]
    for shard in ("1/2", "2/2"):
        run_main(DEMO, prompts, "--save-path", data, "--shard", shard, *flags)
        assert not datadir.examples_index_path(data, MODEL).exists()
    assert "--examples" in capsys.readouterr().err
    run_main(DEMO, "--examples", "--save-path", data, *flags)
    for layer in range(2):
        for head in range(4):
            a, b = (examples.read_head_examples(d, MODEL, layer, head) for d in (computed, data))
            np.testing.assert_allclose(a.pop("boundaries"), b.pop("boundaries"), atol=1e-5)
            for x, y in zip(a["examples"], b["examples"]):
                for field in ("value", "w"):
                    np.testing.assert_allclose(x.pop(field), y.pop(field), atol=1e-4)
            assert a == b
    before = datadir.examples_path(data, MODEL).stat().st_mtime_ns
    run_main(DEMO, "--examples", "--save-path", data, *flags)
    assert datadir.examples_path(data, MODEL).stat().st_mtime_ns == before


def test_examples_flags_are_checked(tmp_path, capsys):
    for args, words in [(["x.jsonl", "--examples"], "no PROMPTS"), (["--examples"], "has no statistics"),
                        (["x.jsonl", "--examples-threshold", "1.5"], "--examples-threshold=1.5")]:
        with pytest.raises(SystemExit) as e:
            lens.run_main(lambda a=args: run_main(DEMO, *a, "--save-path", tmp_path / "d"), "")
        assert e.value.code != 0 and words in f"{e.value.code} {capsys.readouterr().err}"


def test_head_pages_hold_each_heads_statistics_and_totals(computed):
    """A head's block: each statistic's mean and rank agree with stats.json; its look-back shares sum to 1 over
    every prompt; its top tokens' counts are the tokens' counts after the first position."""
    summary = lens.read_json(datadir.stats_path(computed, MODEL))
    tokens = {}
    for row in index_rows(computed, MODEL):
        for t in lens.read_json(datadir.prompt_json_path(computed, MODEL, row["hash"]))["tokens"][1:]:
            tokens[t] = tokens.get(t, 0) + 1
    for layer in range(2):
        for head in range(4):
            page = head_pages.read_head_page(computed, MODEL, layer, head)
            for name, s in page["stats"].items():
                means = np.array(summary["stats"][name]["mean"], float)
                assert s["mean"] == summary["stats"][name]["mean"][layer][head]
                assert s["rank"] == 1 + int((means > means[layer, head]).sum()) and s["of"] == 8
            assert abs(sum(page["lookback"]["share"]) - 1) < 1e-4 and page["lookback"]["prompts"] == len(TEXTS)
            for side in ("query", "key"):
                for token, count, _ in page["tokens"][side]:
                    assert count == tokens[token]


def test_a_recomputed_run_is_left_out_of_the_totals(computed, tmp_path):
    """--force computes every prompt again: the first run's totals are left out, not counted twice."""
    data = tmp_path / "data"
    shutil.copytree(computed, data)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:5]))
    run_main(DEMO, prompts, "--save-path", data, "--force", "--patterns", "none", "--no-examples")
    assert len(head_pages.superseded_parts(prompt_index.read_index_state(data, MODEL))) == 1
    page = head_pages.read_head_page(data, MODEL, 0, 1)
    assert page["lookback"]["prompts"] == 5


def test_examples_patterns_stores_each_example_prompt(computed, tmp_path):
    """--examples-patterns after a statistics-only run: every example prompt's patterns are stored, nothing
    else; no new part (their statistics are not computed again)."""
    data = tmp_path / "data"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    run_main(DEMO, prompts, "--save-path", data, "--patterns", "none", "--examples-top", "2",
             "--examples-per-interval", "1")
    parts = sorted(datadir.parts_dir(data, MODEL).glob("*.json"))
    run_main(DEMO, "--examples", "--examples-patterns", "--save-path", data, "--examples-top", "2",
             "--examples-per-interval", "1")
    chosen = set(lens.read_json(datadir.examples_index_path(data, MODEL))["prompts"])
    assert chosen and set(lens.finished_prompts(data, MODEL)) == chosen
    assert sorted(datadir.parts_dir(data, MODEL).glob("*.json")) == parts


def test_a_model_past_the_token_totals_limit_keeps_the_look_back(tmp_path, monkeypatch, capsys):
    """Heads x vocabulary past HeadSums.MAX_TOKEN_ENTRIES: no token totals (said once), the look-back still."""
    from attention_lens import forward
    monkeypatch.setattr(forward.HeadSums, "MAX_TOKEN_ENTRIES", 100)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:6]))
    run_main(DEMO, prompts, "--save-path", tmp_path / "data", "--patterns", "none", "--no-examples")
    assert "past the token totals' limit" in capsys.readouterr().err
    page = head_pages.read_head_page(tmp_path / "data", MODEL, 0, 1)
    assert page["tokens"] is None and page["tokens_skipped"] and page["lookback"]["prompts"] == 6
