"""Head kinds and nearest heads (kinds.py, heads.json): the demo model's known heads, its untrained checkpoint,
random-weight models, hand-built patterns and a brute-force search as oracles."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attention_lens import datadir, kinds, lens

ROOT = Path(__file__).resolve().parent.parent
STEPS = (0, 2000, 4000)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert not check or done.returncode == 0, done.stderr
    return done


def heads_json(data: Path, model: str) -> dict:
    return json.loads(datadir.heads_json_path(data, model).read_text())


def labelled(info: dict, kind: str) -> list[tuple[int, int]]:
    return [(l, h) for l, row in enumerate(info["heads"]) for h, head in enumerate(row)
            if any(k["name"] == kind for k in head["kinds"])]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """The probe set on the demo model and three of its checkpoints, with no prompts file, as a user runs it."""
    data = tmp_path_factory.mktemp("kinds") / "data"
    run("demo", "--probe", "--save-path", str(data))
    run("demo", "--probe", "--checkpoint", ",".join(map(str, STEPS)), "--save-path", str(data))
    return data


def test_the_shipped_probe_set_is_make_probe():
    assert kinds.probe_prompts() == kinds.make_probe()
    for row in kinds.probe_prompts():
        if row["meta"]["probe"] == "repeat":
            words = row["text"].split()
            half = len(words) // 2
            assert words[:half] == words[half:] and len(set(words[:half])) == half == row["meta"]["words"]


def test_probe_needs_no_prompts_file_and_stores_its_patterns(demo_data):
    rows = demo_data / "demo" / "index" / "rows" / "0.jsonl"
    records = [json.loads(line) for line in rows.read_text().splitlines()]
    assert sorted(r["text"] for r in records) == sorted(p["text"] for p in kinds.probe_prompts())
    assert all(r["stored"] and r["meta"]["probe"] for r in records)
    assert heads_json(demo_data, "demo")["prompts"] == {"source": "probe", "n_prompts": 20, "n_repeat_prompts": 16,
                                                      "n_shape_prompts": 20}


def test_probe_patterns_are_stored_whatever_patterns_says(tmp_path, tiny_checkpoint):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "a user prompt of a few words"}\n')
    run(str(tiny_checkpoint), str(prompts), "--patterns", "none", "--save-path", str(tmp_path / "d"))  # adds it
    stored = lens.finished_prompts(tmp_path / "d", "tiny-gpt2")
    assert sorted(stored) == sorted(lens.prompt_hash(p["text"]) for p in kinds.probe_prompts())


def test_no_prompts_file_and_no_probe_is_one_error_line(tiny_checkpoint, tmp_path):
    done = run(str(tiny_checkpoint), "--save-path", str(tmp_path / "d"), check=False)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "error: PROMPTS: a prompts file is needed (or --dataset, or --top K, to store the top prompts of "
        "statistics already computed, or --probe, the probe set alone)"]


def test_demo_model_has_its_known_kinds(demo_data):
    info = heads_json(demo_data, "demo")
    assert (0, 1) in labelled(info, "previous-token")
    induction = labelled(info, "induction")
    assert sum(l == 1 for l, _ in induction) >= 3 and not any(l == 0 for l, _ in induction)
    assert labelled(info, "previous-token") == [(0, 1)]  # and no other head passes for one


def test_kind_scores_are_detect_head_on_the_probe(demo_data):
    """The oracle: TransformerLens's detect_head over the probe's repeated sequences (its "mul" default)."""
    from transformer_lens.head_detector import detect_head

    from attention_lens import forward

    model = forward.load_model("demo", "cpu", "float32")
    info = heads_json(demo_data, "demo")
    repeats = [p["text"] for p in kinds.probe_prompts() if p["meta"]["probe"] == "repeat"]
    features = np.array([[h["features"] for h in row] for row in info["heads"]], np.float64)
    for name in kinds.REPEAT_FEATURES:
        np.testing.assert_allclose(features[..., kinds.FEATURES.index(name)], detect_head(model, repeats, name).numpy(),
                                   atol=1e-4)
    every = [p["text"] for p in kinds.probe_prompts()]
    np.testing.assert_allclose(features[..., kinds.FEATURES.index("previous_token_head")],
                               detect_head(model, every, "previous_token_head").numpy(), atol=1e-4)
    for l, h in labelled(info, "induction"):
        [k] = [k for k in info["heads"][l][h]["kinds"] if k["name"] == "induction"]
        assert k["score"] >= k["threshold"] == 0.2 and k["score"] == pytest.approx(features[l, h, 2], abs=1e-4)


def test_untrained_checkpoint_has_no_previous_token_or_induction_head(demo_data):
    info = heads_json(demo_data, "demo_step0")
    assert labelled(info, "previous-token") == [] and labelled(info, "induction") == []
    assert len(labelled(info, "broad")) == 8  # near-uniform attention at initialisation


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_weight_models_have_at_most_one_previous_token_or_induction_head(tmp_path, seed):
    from tiny_model import make_checkpoint
    ckpt = make_checkpoint(tmp_path / f"random-{seed}", n_layer=2, n_head=4, n_positions=256, seed=seed)
    run(str(ckpt), "--probe", "--save-path", str(tmp_path / "d"))
    info = heads_json(tmp_path / "d", f"random-{seed}")
    assert len(set(labelled(info, "previous-token")) | set(labelled(info, "induction"))) <= 1


def test_nearest_checkpoint_heads_are_the_same_heads(demo_data):
    info = heads_json(demo_data, "demo_step4000")
    assert info["heads"][0][1]["best"]["demo_step2000"][:2] == [0, 1]
    before = set(labelled(heads_json(demo_data, "demo_step2000"), "induction"))
    for l, h in labelled(info, "induction"):
        assert tuple(info["heads"][l][h]["best"]["demo_step2000"][:2]) in before


def test_heads_json_labels_each_head_by_its_own_features_and_the_stated_thresholds(demo_data):
    """Each head's kinds are exactly those whose feature (in the file) passes the threshold the file states, with
    that feature as the score: a reader can check every label from heads.json alone."""
    info = heads_json(demo_data, "demo")
    assert all(k["source"] and k["doc"] and k["op"] in (">=", "<=") for k in info["kinds"])
    table = {k["name"]: k for k in info["kinds"]}
    assert table["sink"]["threshold"] == 0.3 and table["sink"]["feature"] == "bos"  # Gu et al. 2025
    assert "L0H1" in [f"L{l}H{h}" for l, row in enumerate(info["heads"]) for h, head in enumerate(row)
                      if "previous-token" in [k["name"] for k in head["kinds"]]]  # the demo's previous-token head
    models = lens.model_dirs(demo_data)
    for row in info["heads"]:
        for head in row:
            labels = {k["name"]: k for k in head["kinds"]}
            for name, kind in table.items():
                value = head["features"][info["features"].index(kind["feature"])]
                passes = value is not None and (value >= kind["threshold"] if kind["op"] == ">="
                                                else value <= kind["threshold"])
                assert (name in labels) == passes, (name, value)
                if passes:
                    assert labels[name]["threshold"] == kind["threshold"]
                    assert labels[name]["score"] == pytest.approx(value, abs=1e-4)
            assert len(head["features"]) == len(kinds.FEATURES) and len(head["xy"]) == 2
            assert sorted(head["best"]) == models
            sims = [n[3] for n in head["nearest"]]
            assert sims == sorted(sims, reverse=True) and all(-1 - 1e-6 <= s <= 1 + 1e-6 for s in sims)
            assert all(n[0] in models for n in head["nearest"])
    assert info["heads"][0][1]["best"]["demo"][:2] != [0, 1]  # its own model's best match is another head


def test_shape_features_of_known_patterns():
    n = 10
    prev = np.zeros((n, n))
    prev[0, 0] = 1
    prev[np.arange(1, n), np.arange(n - 1)] = 1
    f = dict(zip(kinds.SHAPE_FEATURES, kinds.head_shape(prev, np.ones(n))))
    assert f["offset_1"] == pytest.approx(1) and f["offset_0"] == 0 and f["effective_tokens"] == pytest.approx(1)
    assert f["entropy_ratio"] == pytest.approx(0) and f["mean_distance"] == pytest.approx(1)  # query 1 sees only key 0
    assert f["output_ratio"] == pytest.approx(1)
    uniform = np.tri(n) / np.arange(1, n + 1)[:, None]
    f = dict(zip(kinds.SHAPE_FEATURES, kinds.head_shape(uniform, np.arange(n, dtype=float))))
    assert f["entropy_ratio"] == pytest.approx(1) and f["effective_tokens"] == pytest.approx(np.arange(2, n + 1).mean())
    assert f["mean_distance"] == pytest.approx(np.mean([np.arange(q).mean() for q in range(1, n)]))
    assert f["output_ratio"] == pytest.approx(np.mean([np.arange(q + 1).mean() for q in range(1, n)]))
    assert f["offset_3"] == pytest.approx(sum(1 / (q + 1) for q in range(3, n)) / (n - 1))


def test_nearest_heads_match_a_brute_force_search():
    rng = np.random.default_rng(0)
    z = kinds.fingerprints([rng.normal(size=(3, 5, 7)), rng.normal(size=(2, 6, 7))])
    owners = np.repeat([0, 1], [15, 12])
    top_i, top_s, best, best_s = kinds.nearest_heads(z, owners, k=4)
    sims = z @ z.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(top_i, np.argsort(-sims, 1, kind="stable")[:, :4])
    np.testing.assert_allclose(top_s, np.sort(sims, 1)[:, ::-1][:, :4], rtol=1e-5)  # float32
    for m in (0, 1):
        cols = np.flatnonzero(owners == m)
        np.testing.assert_array_equal(best[:, m], cols[np.argmax(sims[:, cols], 1)])
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1)


def test_without_the_probe_kinds_use_the_users_prompts(rendered_data_dir):
    info = heads_json(rendered_data_dir, "fake-model")
    assert info["prompts"]["source"] == "prompts" and info["prompts"]["n_prompts"] == 4
    for l, row in enumerate(info["heads"]):  # 6 heads: each has the 5 others as its nearest, never itself
        for h, head in enumerate(row):
            others = {(n[1], n[2]) for n in head["nearest"]}
            assert len(head["nearest"]) == 5 and (l, h) not in others and len(others) == 5
