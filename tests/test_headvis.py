"""build_index.py --export-headvis (headvis.py) against what others published: every file's keys, types and lengths
as Anthropic's HeadVis contract and Neuronpedia's writer and loaders have them; the metrics against Neuronpedia's
formulas, written out here over the stored patterns; the sparse attention against the stored patterns' top 8; the
errors a user can cause.

Sources (read, not copied):
- NP: hijohnnylin/neuronpedia @ ebb8426fc550ad5d1f76d52c271a624af3c08a57, utils/neuronpedia-utils/neuronpedia_utils/
  headvis/compute-head-metrics.py (write_run_config_json, write_scatter_data, write_head_json,
  _records_to_sequence_dicts, _compute_qk_distance_histogram, _compute_top_tokens, _activation_histogram_payload,
  compute_attention_metrics_for_batch, build_induction_indices) and load-head-sequences.py / load-head-metrics.py
  (CONFIG_KEYS, _normalize_pipeline_config, HEAD_FILENAME_RE);
- HV: anthropics/headvis data_pipeline.py's docstrings (the data contract) and src/lib/data.js, read in the copy
  nikbearbrown/musinique @ 9d928288aa0f99d590d0367d6efb9694bf7193c7, headvis/ (anthropics/headvis is not reachable
  here).
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_compute_stats import TEXTS, run_main

from attention_lens import datadir, headvis, lens, storage

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "model"
MODEL = "model"

# HV write_config's docstring, with the keys NP's write_run_config_json adds (np_model_id, dataset_name,
# pipeline_config)
CONFIG = {"model_name": str, "np_model_id": str, "dataset_name": str, "heads": list, "n_layers": int, "n_heads": int,
          "n_intervals": int, "metrics": list, "metric_descriptions": dict, "head_data_pattern": str, "has_umap": bool,
          "umap_heads": list, "custom_plots": list, "custom_tables": list, "statistics_display": dict,
          "pipeline_config": dict}
NP_CONFIG_KEYS = ("model_name", "dataset_name", "n_sequences", "seq_len", "dtype", "attn_implementation")
NP_METRICS = ["self_attention_score", "prev_token_score", "pattern_entropy", "qk_distance", "qk_distance_variance",
              "induction_score"]  # NP METRIC_NAMES, in write_scatter_data's order; load-head-metrics reads these keys
HEAD = {"sequences": list, "qk_distance_histogram": dict, "top_query_tokens": list, "top_key_tokens": list,
        "histogram": dict, "statistics": dict}  # NP write_head_json, in its order; HV write_head_json's keys
SEQUENCE = {"sequence_id": int, "interval": int, "tokens": list, "attention_indices": list, "attention_values": list,
            "seq_len": int, "max_activation": float}  # HV sample_by_decile's docstring; NP writes these, in this order
QK_EDGES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]  # NP QK_DISTANCE_BIN_EDGES
FLT_MIN = np.finfo(np.float32).tiny  # NP's entropy clamps the weight here before the log


def is_a(value, kind) -> bool:
    """JSON's types: an int is not a bool, a float is a number with a decimal point."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def export(data: Path, out: Path, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "build_index.py"), "--save-path", str(data),
                           "--export-headvis", str(out), *map(str, flags)], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def computed(tmp_path_factory) -> Path:
    """The demo model on the test prompts and the probe set (its repeated sequences make induction heads), every
    pattern stored, examples at their defaults (5 intervals, 3 each, the top 10)."""
    tmp = tmp_path_factory.mktemp("headvis")
    prompts = tmp / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    run_main(DEMO, prompts, "--save-path", tmp / "data", "--probe")
    return tmp / "data"


@pytest.fixture(scope="module")
def exported(computed) -> Path:
    out = computed.parent / "export"
    r = export(computed, out)
    assert r.returncode == 0, r.stderr
    return out


def read(out: Path) -> tuple[dict, list[dict], dict[tuple[int, int], dict]]:
    config = json.loads((out / "config.json").read_text())
    heads = {(l, h): json.loads((out / "heads" / f"L{l}H{h}.json").read_text()) for l, h in config["heads"]}
    return config, json.loads((out / "scatter_data.json").read_text()), heads


def stored_prompts(data: Path) -> list[tuple[np.ndarray, list[int]]]:
    """Every prompt's stored patterns [layers, heads, n, n] (float64) and token ids."""
    return [(storage.load_patterns(data, MODEL, h).all().astype(np.float64),
             lens.read_json(datadir.prompt_json_path(data, MODEL, h))["token_ids"])
            for h in lens.finished_prompts(data, MODEL)]


def test_the_tree_holds_the_published_files(computed, exported):
    files = {str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()}
    config = json.loads((exported / "config.json").read_text())
    assert files == {"config.json", "scatter_data.json", "server_config.json", "attributions/manifest.json",
                     *(f"heads/L{l}H{h}.json" for l, h in config["heads"])}
    assert all(re.fullmatch(r"L(\d+)H(\d+)\.json", p.name) for p in (exported / "heads").iterdir())  # NP's glob
    for stub in ("server_config.json", "attributions/manifest.json"):  # HV main(): static-only mode
        assert json.loads((exported / stub).read_text()) == {}
    assert not list(computed.parent.glob(".export.*"))  # no temp dir left beside it


def test_config_has_the_contracts_keys_and_what_neuronpedias_loaders_require(exported):
    config, _, heads = read(exported)
    assert list(config) == list(CONFIG) and all(is_a(config[k], t) for k, t in CONFIG.items())
    assert config["heads"] == [[l, h] for l in range(2) for h in range(4)]  # the demo: 2 layers x 4 heads
    assert (config["n_layers"], config["n_heads"], config["n_intervals"]) == (2, 4, 5)
    assert config["metrics"] == NP_METRICS and set(config["metric_descriptions"]) == set(NP_METRICS)
    assert config["head_data_pattern"] == "L{layer}H{head}.json" and config["has_umap"] is False
    for plot in config["custom_plots"]:  # HV: "Plots need {bin_edges, bin_values} shape; tables need [{token, weight}]"
        assert all({"bin_edges", "bin_values"} <= set(h[plot["key"]]) for h in heads.values())
    for table in config["custom_tables"]:
        assert all(set(row) == {"token", "weight"} for h in heads.values() for row in h[table["key"]])
    assert set(config["statistics_display"]) == set(next(iter(heads.values()))["statistics"])
    merged = {**config, **config["pipeline_config"]}  # NP _normalize_pipeline_config: pipeline_config's win
    assert all(merged[k] is not None for k in NP_CONFIG_KEYS)
    assert int(merged["n_sequences"]) == len(TEXTS) + 20 and int(merged["seq_len"]) > 0  # the probe set's 20
    assert config["np_model_id"] == MODEL


def test_scatter_has_one_row_per_head_with_neuronpedias_metric_names(exported):
    config, scatter, _ = read(exported)
    assert [[r["layer"], r["head"]] for r in scatter] == config["heads"]
    for row in scatter:
        assert list(row) == ["layer", "head", *NP_METRICS]
        assert all(is_a(row[m], float) for m in NP_METRICS)  # HV offers an axis only if rows[0] has a number
        assert all(row[m] == round(row[m], 4) for m in NP_METRICS)


def test_head_files_have_the_published_shapes(computed, exported):
    _, _, heads = read(exported)
    n_prompts = len(lens.finished_prompts(computed, MODEL))
    for head in heads.values():
        assert list(head) == list(HEAD) and all(is_a(head[k], t) for k, t in HEAD.items())
        intervals = [s["interval"] for s in head["sequences"]]
        assert intervals == sorted(intervals) and set(intervals) <= set(range(1, 6))
        assert intervals.count(5) <= 10 and all(intervals.count(i) <= 3 for i in range(1, 5))
        for s in head["sequences"]:
            assert list(s) == list(SEQUENCE) and all(is_a(s[k], t) for k, t in SEQUENCE.items())
            assert s["seq_len"] == len(s["tokens"]) and all(is_a(t, str) for t in s["tokens"])
            index, values = s["attention_indices"], s["attention_values"]
            assert len(index) == len(values) and all(is_a(i, int) for i in index)
            assert index == sorted(set(index)) and 0 <= index[0] and index[-1] < s["seq_len"] ** 2
            assert all(is_a(v, float) and v == round(v, 4) and 0.005 <= v <= 1 for v in values)
        assert head["qk_distance_histogram"]["bin_edges"] == QK_EDGES
        assert len(head["qk_distance_histogram"]["bin_values"]) == len(QK_EDGES) - 1
        for side in ("top_query_tokens", "top_key_tokens"):
            weights = [x["weight"] for x in head[side]]
            assert len(weights) <= 50 and weights == sorted(weights, reverse=True)
        hist = head["histogram"]
        assert list(hist) == ["bin_edges", "bin_values"]  # NP _activation_histogram_payload
        assert hist["bin_edges"] == [round(i / 50, 4) for i in range(51)]
        assert len(hist["bin_values"]) == 50 and all(is_a(c, int) for c in hist["bin_values"])
        assert sum(hist["bin_values"]) == n_prompts  # NP: every sequence processed, not only the kept ones
        assert list(head["statistics"]) == ["n_samples", "mean_max_activation"]  # NP write_head_json
        assert head["statistics"]["n_samples"] == len(head["sequences"])
        assert is_a(head["statistics"]["mean_max_activation"], float)


def neuronpedia_metrics(prompts) -> dict[str, np.ndarray]:
    """NP compute_attention_metrics_for_batch's sums over every query row of every prompt (row 0 included), then
    their quotients, for every head at once; and, to show the tolerance tells them apart, the definitions theirs is
    not: entropy over the rows after the first, induction with no 0.01 cut or over every query."""
    s = {k: 0.0 for k in ("self", "prev", "entropy", "entropy_after_first", "d", "d2", "ind", "ind_uncut")}
    queries = previous = repeated = 0
    for a, ids in prompts:
        n = len(ids)
        for q in range(n):
            row = a[:, :, q, :]
            h = -(row * np.log(np.maximum(row, FLT_MIN))).sum(-1)
            d = np.abs(q - np.arange(n))
            s["self"] += row[..., q]
            s["entropy"] += h
            s["d"] += (row * d).sum(-1)
            s["d2"] += (row * d * d).sum(-1)
            if q:
                s["prev"] += row[..., q - 1]
                s["entropy_after_first"] += h
                previous += 1
            after_copies = row[..., [p + 1 for p in range(q) if ids[p] == ids[q]]]
            if after_copies.shape[-1]:  # build_induction_indices: a query whose token occurred earlier
                repeated += 1
                s["ind"] += np.where(after_copies >= 0.01, after_copies, 0).sum(-1)
                s["ind_uncut"] += after_copies.sum(-1)
        queries += n
    mean = s["d"] / queries
    return {"self_attention_score": s["self"] / queries, "prev_token_score": s["prev"] / previous,
            "pattern_entropy": s["entropy"] / queries, "qk_distance": mean,
            "qk_distance_variance": s["d2"] / queries - mean ** 2, "induction_score": s["ind"] / repeated,
            "not: entropy after the first row": s["entropy_after_first"] / previous,
            "not: induction with no cut": s["ind_uncut"] / repeated,
            "not: induction over every query": s["ind"] / queries}


def close(got, expected) -> np.ndarray:
    """Within the 4-decimal rounding and what the stored patterns' quantum (2^-14) moves the sums: weights under
    half of it are stored as 0, which biases sums of weight x distance (measured: 1.1e-3 relative at most)."""
    return np.abs(got - expected) <= 1e-4 + 2e-3 * np.abs(expected)


def test_metrics_equal_neuronpedias_definitions_on_the_stored_patterns(computed, exported):
    _, scatter, _ = read(exported)
    expected = neuronpedia_metrics(stored_prompts(computed))
    got = {m: np.array([[r[m] for r in scatter if r["layer"] == l] for l in range(2)]) for m in NP_METRICS}
    for m in NP_METRICS:
        assert close(got[m], expected[m]).all(), (m, got[m], expected[m])
    for name, other in [("pattern_entropy", "not: entropy after the first row"),
                        ("induction_score", "not: induction with no cut"),
                        ("induction_score", "not: induction over every query")]:
        assert not close(got[name], expected[other]).all(), other  # the test tells their definition from these
    assert expected["prev_token_score"][0, 1] > 0.5 and expected["induction_score"][1].min() > 0.3  # the demo's kinds


def test_sparse_attention_decodes_to_each_rows_top_8_of_the_stored_pattern(computed, exported):
    """q = i // seq_len, k = i % seq_len; each value is the stored weight; a key left out of a row weighs under
    0.005 or no more than the row's smallest kept one (its top 8): all within 1e-4 (the stored quantum, the
    examples' uint16 and the 4 decimals)."""
    _, _, heads = read(exported)
    hashes = [row["hash"] for _, row in lens.iter_jsonl(datadir.index_rows_path(computed, MODEL, 0))]
    for (l, h), head in heads.items():
        for s in head["sequences"]:
            pattern = storage.load_patterns(computed, MODEL, hashes[s["sequence_id"]]).head(l, h)
            n = s["seq_len"]
            assert len(pattern) == n
            q, k = np.divmod(np.array(s["attention_indices"]), n)
            w = np.array(s["attention_values"])
            np.testing.assert_allclose(w, pattern[q, k], atol=1e-4)
            for row in range(n):
                kept = k[q == row]
                assert 1 <= len(kept) <= 8
                left = np.delete(pattern[row], kept)
                assert (left < 0.005 + 1e-4).all() or (len(kept) == 8 and left.max() <= w[q == row].min() + 1e-4)
            peak = pattern[1:, 1:].max()  # NP max_act: query and key 0 left out, the diagonal kept
            assert abs(s["max_activation"] - peak) <= 1e-4


def test_histogram_and_mean_cover_every_prompts_max_activation(computed, exported):
    _, _, heads = read(exported)
    prompts = stored_prompts(computed)
    for (l, h), head in heads.items():
        peaks = np.array([a[l, h, 1:, 1:].max() for a, _ in prompts])
        counts = np.bincount(np.minimum((peaks * 50).astype(int), 49), minlength=50)
        near_edge = int((np.abs(peaks * 50 - np.round(peaks * 50)) < 50 * 1e-4).sum())  # the quantum may move these
        assert np.abs(np.array(head["histogram"]["bin_values"]) - counts).sum() <= 2 * near_edge
        assert abs(head["statistics"]["mean_max_activation"] - peaks.mean()) <= 1e-4


def test_look_back_and_top_tokens_sum_the_exported_entries(exported):
    """NP _compute_qk_distance_histogram and _compute_top_tokens, over every kept entry of the file's sequences:
    attention mass by bin [edge i, edge i+1) of |q - k|, and by token string (row 0 and its first token included)."""
    _, _, heads = read(exported)
    for head in heads.values():
        mass, by_token = np.zeros(13), {"query": {}, "key": {}}
        for s in head["sequences"]:
            for i, v in zip(s["attention_indices"], s["attention_values"]):
                q, k = divmod(i, s["seq_len"])
                mass[max(b for b in range(13) if QK_EDGES[b] <= abs(q - k))] += v
                for side, pos in (("query", q), ("key", k)):
                    token = s["tokens"][pos]
                    by_token[side][token] = by_token[side].get(token, 0) + v
        np.testing.assert_allclose(head["qk_distance_histogram"]["bin_values"], mass, atol=1e-4)
        for side in ("query", "key"):
            top = head[f"top_{side}_tokens"]
            assert len(top) == min(50, len(by_token[side]))
            assert all(abs(by_token[side][x["token"]] - x["weight"]) <= 1e-4 for x in top)
            assert min(x["weight"] for x in top) >= sorted(by_token[side].values())[-len(top)] - 1e-4


def test_induction_score_on_the_device_and_in_figures_equals_neuronpedias_on_one_prompt():
    """The built-in statistic the export pools: forward.DeviceStats (a padded batch) and figures/head_stats.py's
    function against NP's per-sequence score written out (build_induction_indices, then the 0.01 cut before the
    sum), on random patterns whose weights straddle the cut; NaN where no token repeats; n_repeated its count."""
    import torch

    from attention_lens import forward
    rng = np.random.default_rng(3)
    lengths, n_layers, n_heads = [7, 1, 12, 5, 30], 2, 3
    ids = [list(rng.integers(0, 5, n)) for n in lengths[:-2]] + [[1, 2, 3, 4, 0], list(rng.integers(0, 9, 30))]
    width = max(lengths)
    tokens = np.array([x + [0] * (width - len(x)) for x in ids])
    future = np.triu(np.ones((width, width), bool), 1)
    patterns = [torch.from_numpy(np.where(future, -np.inf, rng.normal(size=(len(ids), n_heads, width, width)) * 2))
                .float().softmax(-1) for _ in range(n_layers)]
    stats = forward.DeviceStats(np.array(lengths), tokens, "cpu", n_layers, n_heads)
    for layer, pattern in enumerate(patterns):
        stats.add_layer(layer, pattern)
    device = stats.values()[:, forward.DEVICE_STATISTICS.index("induction_score")]
    induction_score = lens.load_figures()[0]["induction_score"]
    kept = cut = 0
    for b, t in enumerate(ids):
        queries = [q for q in range(len(t)) if t[q] in t[:q]]
        assert forward.n_repeated(t) == len(queries)
        for layer, pattern in enumerate(patterns):
            for head in range(n_heads):
                a = pattern[b, head, :len(t), :len(t)].numpy().astype(np.float64)
                terms = [a[q, p + 1] for q in queries for p in range(q) if t[p] == t[q]]
                kept, cut = kept + sum(x >= 0.01 for x in terms), cut + sum(x < 0.01 for x in terms)
                expected = sum(x for x in terms if x >= 0.01) / len(queries) if queries and len(t) > 1 else np.nan
                host = lens.call_plugin(induction_score, a.astype(np.float32), {"token_ids": t})
                np.testing.assert_allclose([device[b, layer, head], host], expected, atol=1e-6)
    assert kept > 20 and cut > 20  # the cut mattered


def test_an_older_data_dir_takes_n_repeated_from_the_stored_token_ids(computed, exported, tmp_path):
    """Parts written before they kept n_repeated: the induction score's weights come from prompt.json's ids."""
    data = Path(shutil.copytree(computed, tmp_path / "data"))
    for lines in datadir.parts_dir(data, MODEL).glob("*.jsonl"):
        rows = [{k: v for k, v in row.items() if k != "n_repeated"} for _, row in lens.iter_jsonl(lines)]
        lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert export(data, tmp_path / "out").returncode == 0
    assert read(tmp_path / "out")[1] == read(exported)[1]
    # a prompt whose count is nowhere (no token ids either): the pooled score is unknown, not a guess
    info = datadir.prompt_json_path(data, MODEL, lens.finished_prompts(data, MODEL)[0])
    info.write_text(json.dumps({k: v for k, v in json.loads(info.read_text()).items() if k != "token_ids"}))
    r = export(data, tmp_path / "out")
    assert r.returncode == 0 and "warning: induction_score: null for 8 heads" in r.stderr
    assert [row["induction_score"] for row in read(tmp_path / "out")[1]] == [None] * 8


def test_a_statistic_redefined_in_the_figures_dir_exports_null_not_a_number(computed, tmp_path):
    data = Path(shutil.copytree(computed, tmp_path / "data"))
    figures = Path(shutil.copytree(ROOT / "figures", tmp_path / "figures"))
    stats = figures / "head_stats.py"
    stats.write_text(stats.read_text().replace("np.log2(p + np.float32(1e-30))", "np.log(p + np.float32(1e-30))"))
    r = export(data, tmp_path / "out", "--figures-dir", figures)
    assert r.returncode == 0 and "warning: entropy:" in r.stderr
    scatter = read(tmp_path / "out")[1]
    assert all(row["pattern_entropy"] is None and row["prev_token_score"] is not None for row in scatter)


def test_the_tables_read_in_blocks_of_prompts_give_the_same_tree(computed, exported, tmp_path, monkeypatch):
    monkeypatch.setattr(headvis, "CHUNK", 5)  # 44 prompts: 9 blocks, the last one short
    headvis.export_headvis(computed, None, tmp_path / "out", ROOT / "figures", progress=False)
    assert read(tmp_path / "out")[1:] == read(exported)[1:]


def test_a_rerun_replaces_an_earlier_export_whole(computed, exported, tmp_path):
    out = Path(shutil.copytree(exported, tmp_path / "out"))
    (out / "heads" / "L9H9.json").write_text("{}")
    assert export(computed, out).returncode == 0
    assert not (out / "heads" / "L9H9.json").exists() and read(out)[1] == read(exported)[1]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_export_leaves_the_target_as_it_was(computed, exported, tmp_path, monkeypatch):
    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(headvis, "top_tokens", fail)
    out = Path(shutil.copytree(exported, tmp_path / "out"))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for target in (tmp_path / "new", out):
        with pytest.raises(OSError):
            headvis.export_headvis(computed, None, target, ROOT / "figures", progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no "new", no temp dir


def test_mistakes_end_in_one_error_line_and_write_nothing(computed, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = [
        (taken, [], "exists and is not an earlier export"),
        (tmp_path / "out", ["--models", "nosuch"], "no model nosuch"),
        (computed / "headvis", [], "inside the data dir"),
        (tmp_path / "out", ["--html", tmp_path / "x.html"], "one at a time"),
    ]
    for out, flags, message in cases:
        r = export(computed, out, *flags)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert (taken / "notes.txt").read_text() == "mine" and not (tmp_path / "out").exists()
    assert not (computed / "headvis").exists()


def test_a_data_dir_without_examples_names_the_command_that_makes_them(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:3]))
    run_main(DEMO, prompts, "--save-path", tmp_path / "data", "--no-examples")
    r = export(tmp_path / "data", tmp_path / "out")
    assert r.returncode == 1 and r.stderr.strip() == (
        f"error: {MODEL}: no examples yet (HeadVis shows each head's); make them with: python compute_activations.py "
        f"{DEMO} --examples --save-path {tmp_path / 'data'}")
    assert not (tmp_path / "out").exists()
