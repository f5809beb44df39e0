"""The bundled demo model: the README's offline first run end to end, and the heads it is known to have."""
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fake_data import index_rows

from attention_lens import datadir, kinds, lens, storage

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
# The heads demo/train.py grew (its closing table): one previous-token head in layer 0; every layer-1 head is an
# induction head, two of them sharper than the others.
PREVIOUS_TOKEN_HEAD = (0, 1)
INDUCTION_HEADS = [(1, 0), (1, 1), (1, 2), (1, 3)]
SHARPEST_INDUCTION_HEADS = [(1, 2), (1, 3)]
MODEL = lens.model_dir_name("demo")


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompt_rows() -> list[dict]:
    return read_jsonl(ROOT / "prompts.jsonl")


def stored_prompts(data: Path) -> list[dict]:
    """The prompt.json of every prompt in the data dir's index, in index order."""
    return [lens.read_json(datadir.prompt_json_path(data, MODEL, row["hash"])) for row in index_rows(data, MODEL)]


def repeated_texts() -> list[str]:
    """The repeated-random prompts of prompts.jsonl: 25 random words, then the same 25 again."""
    return [r["text"] for r in prompt_rows() if r.get("meta", {}).get("kind") == "repeated-random"]


def top_heads(scores, k: int) -> list[tuple[int, int]]:
    """The k heads with the highest scores, best first."""
    scores = np.asarray(scores)
    order = np.argsort(-scores, axis=None, kind="stable")[:k]
    return [tuple(int(i) for i in np.unravel_index(o, scores.shape)) for o in order]


def detect_head_scores(model_dir: Path) -> dict[str, np.ndarray]:
    """transformer_lens.head_detector.detect_head, the oracle, on the repeated prompts: {head name: [layer, head]}."""
    from transformer_lens.head_detector import HEAD_NAMES, detect_head

    from attention_lens import forward

    model = forward.load_model(str(model_dir), "cpu", "float32")
    return {name: detect_head(model, repeated_texts(), name).numpy() for name in HEAD_NAMES}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    """The README's first run on the demo model, step by step as a user types it, into a temporary data dir."""
    data = tmp_path_factory.mktemp("demo") / "attn_data"
    run("compute_activations.py", "demo", "prompts.jsonl", "--save-path", str(data), cwd=ROOT)
    run("render_figures.py", "--save-path", str(data), "--jobs", "2", cwd=ROOT)
    run("build_index.py", "--save-path", str(data), cwd=ROOT)
    return data


@pytest.fixture(scope="module")
def final_scores() -> dict[str, np.ndarray]:
    return detect_head_scores(DEMO / "model")


def test_first_run_writes_everything_the_site_reads(demo_data):
    [model] = read_jsonl(datadir.models_path(demo_data))
    texts = {r["text"] for r in prompt_rows()} | {p["text"] for p in kinds.probe_prompts()}  # the probe by default
    assert (model["model_dir"], model["n_layers"], model["n_heads"], model["n_prompts"]) == (MODEL, 2, 4, len(texts))
    assert (demo_data / "index.html").is_file() and datadir.figures_path(demo_data).is_file()
    for p in stored_prompts(demo_data):
        folder = datadir.prompt_dir(demo_data, MODEL, p["hash"])
        assert "".join(p["tokens"]) == p["text"] and len(p["tokens"]) == p["n_tokens"]  # no BOS, as Pythia
        pack = datadir.figure_pack_path(demo_data, MODEL, p["hash"], "raw")
        assert all(storage.read_pack_image(pack, l, h).startswith(b"\x89PNG") for l in range(2) for h in range(4))
        assert not list(folder.glob("*.errors.json"))


def test_first_run_labels_the_readmes_heads_and_opens_on_a_prompt_that_shows_them(demo_data):
    """No flag needed: the probe set comes with the first run, so heads.json labels the previous-token head and all
    four induction heads, and the grid opens (models.jsonl start_prompt) on a stored repeated probe sequence."""
    info = lens.read_json(datadir.heads_json_path(demo_data, MODEL))
    labelled = lambda kind: [(l, h) for l, row in enumerate(info["heads"]) for h, head in enumerate(row)
                             if any(k["name"] == kind for k in head["kinds"])]
    assert info["prompts"]["source"] == "probe"
    assert labelled("previous-token") == [PREVIOUS_TOKEN_HEAD] and labelled("induction") == INDUCTION_HEADS
    [model] = read_jsonl(datadir.models_path(demo_data))
    repeats = [p["text"] for p in kinds.probe_prompts() if p["meta"]["probe"] == "repeat"]
    assert model["start_prompt"] == min(lens.prompt_hash(t) for t in repeats)
    assert lens.is_finished(datadir.prompt_dir(demo_data, MODEL, model["start_prompt"]))


def repeat_period(ids: list[int]) -> int:
    """The shift d at which the token sequence best matches itself: the length of the repeated part in tokens.

    Not (len - 1) / 2: the first copy's first word has no leading space, so it tokenises differently."""
    return max(range(len(ids) // 3, len(ids) - 1), key=lambda d: sum(a == b for a, b in zip(ids[d:], ids)))


def test_stored_patterns_show_the_induction_heads(demo_data):
    """On a repeated prompt, an induction head's stored pattern puts its weight one past the earlier copy of the
    query's token (for tokens that occur once in the first copy, so that the target is unambiguous); layer 0 does
    not."""
    for text in repeated_texts():
        prompt = json.loads(datadir.prompt_json_path(demo_data, MODEL, lens.prompt_hash(text)).read_text())
        ids = prompt["token_ids"]
        d = repeat_period(ids)
        counts = Counter(ids[:d])
        queries = np.array([q for q in range(d, len(ids)) if ids[q] == ids[q - d] and counts[ids[q]] == 1])
        assert len(queries) >= 10, text
        patterns = storage.load_patterns(demo_data, MODEL, prompt["hash"])
        weight = np.array([[patterns.head(layer, head)[queries, queries - d + 1].mean() for head in range(4)]
                           for layer in range(2)])
        assert all(weight[h] > 0.25 for h in INDUCTION_HEADS), (text, weight)
        assert all(weight[h] > 0.6 for h in SHARPEST_INDUCTION_HEADS), (text, weight)
        assert weight[0].max() < 0.05, (text, weight)


def test_stored_patterns_show_the_previous_token_head(demo_data):
    """On every prompt, text and repeated alike, one layer-0 head puts most of its attention on the previous token."""
    for prompt in stored_prompts(demo_data):
        patterns = storage.load_patterns(demo_data, MODEL, prompt["hash"])
        rows = np.arange(1, prompt["n_tokens"])
        previous = np.array([patterns.head(0, h)[rows, rows - 1] for h in range(4)])
        assert previous[PREVIOUS_TOKEN_HEAD[1]].mean() > 0.6, prompt["text"]
        assert np.delete(previous, PREVIOUS_TOKEN_HEAD[1], axis=0).mean(axis=1).max() < 0.25, prompt["text"]


def test_stored_statistics_rank_the_known_heads_first(demo_data, final_scores):
    """render_figures.py's per-prompt statistics, averaged over the repeated prompts, agree with the oracle's
    ranking."""
    stats = [json.loads(datadir.prompt_stats_path(demo_data, MODEL, lens.prompt_hash(t)).read_text())
             for t in repeated_texts()]
    assert all(s.pop(storage.CODE_KEY).keys() == s.keys() for s in stats)  # which code computed each statistic
    mean = {name: np.mean([s[name] for s in stats], axis=0) for name in stats[0]}
    assert top_heads(mean["previous_token_head"], 1) == [PREVIOUS_TOKEN_HEAD]
    assert sorted(top_heads(mean["induction_head"], len(INDUCTION_HEADS))) == INDUCTION_HEADS
    for name, scores in final_scores.items():  # detect_head averages over prompts too
        np.testing.assert_allclose(mean[name], scores, atol=1e-4)


def test_detect_head_ranks_the_known_heads_first(final_scores):
    prev, induction = final_scores["previous_token_head"], final_scores["induction_head"]
    assert top_heads(prev, 1) == [PREVIOUS_TOKEN_HEAD]
    assert prev[PREVIOUS_TOKEN_HEAD] > 0.8  # a perfect previous-token head scores (n - 1) / n
    assert np.sort(prev, axis=None)[-2] < 0.2
    # a perfect induction head scores about 0.5: detect_head counts every row, and only the second copy's match
    assert sorted(top_heads(induction, len(INDUCTION_HEADS))) == INDUCTION_HEADS
    assert min(induction[h] for h in INDUCTION_HEADS) > 0.3
    assert min(induction[h] for h in SHARPEST_INDUCTION_HEADS) > 0.5
    assert induction[0].max() < 0.05


def test_induction_heads_form_during_training():
    """The untrained checkpoint has none; the last one has them and equals demo/model."""
    steps = sorted(int(p.name[4:]) for p in (DEMO / "checkpoints").glob("step*"))
    assert steps[0] == 0 and len(steps) >= 3
    first, last = (detect_head_scores(DEMO / "checkpoints" / f"step{s}") for s in (steps[0], steps[-1]))
    assert first["induction_head"].max() < 0.05 and first["previous_token_head"].max() < 0.05
    assert sorted(top_heads(last["induction_head"], len(INDUCTION_HEADS))) == INDUCTION_HEADS
    assert last["induction_head"].max() > 0.5 and last["previous_token_head"].max() > 0.8
    last_dir = DEMO / "checkpoints" / f"step{steps[-1]}"
    assert (last_dir / "model.safetensors").read_bytes() == (DEMO / "model" / "model.safetensors").read_bytes()


def test_demo_fits_in_8_mb():
    assert sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file()) <= 8e6


def test_training_is_deterministic(tmp_path):
    """Two short runs of demo/train.py write the same bytes."""
    for out in ["a", "b"]:
        run("demo/train.py", "--steps", "3", "--out", str(tmp_path / out), cwd=tmp_path)
    for name in ["checkpoints/step0/model.safetensors", "model/model.safetensors", "model/tokenizer.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_head_pages_show_what_the_known_heads_do(demo_data):
    """The first run chooses examples by max_attention and writes head pages; chosen by induction_head, each
    induction head's top examples are the repeated sequences, its strongest kept weights one past an earlier copy
    of the query's token; the previous-token head's look-back histogram peaks at distance 1, its top query tokens
    counted over every prompt."""
    from attention_lens import examples, head_pages

    assert lens.read_json(datadir.examples_index_path(demo_data, MODEL))["statistic"] == "max_attention"
    data = demo_data.parent / "by_induction"
    shutil.copytree(demo_data, data)
    run("compute_activations.py", "demo", "--examples", "--examples-by", "induction_head", "--save-path", str(data),
        cwd=ROOT)
    repeated = {lens.prompt_hash(t) for t in repeated_texts()} | {  # and the probe's, which the first run adds
        lens.prompt_hash(p["text"]) for p in kinds.probe_prompts() if p["meta"]["probe"] == "repeat"}
    for layer, head in INDUCTION_HEADS:
        block = examples.read_head_examples(data, MODEL, layer, head)
        top = [e for e in block["examples"] if e["interval"] == 5]
        # the repeated random words, and the counting prompts (", " again and again; the weekdays twice)
        assert len(top) == 10 and len({e["hash"] for e in top} & repeated) >= 7, (layer, head)
        for e in (e for e in top if e["hash"] in repeated):  # on the second copy
            ids = lens.read_json(datadir.prompt_json_path(data, MODEL, e["hash"]))["token_ids"]
            strong = [(q, k) for q, k, w in zip(e["q"], e["k"], e["w"]) if w > 0.5 and q > len(ids) // 2 + 2]
            matched = sum(ids[k - 1] == ids[q] for q, k in strong)
            assert strong and matched / len(strong) > 0.8, (layer, head, matched, len(strong))
    page = head_pages.read_head_page(demo_data, MODEL, *PREVIOUS_TOKEN_HEAD)
    share = page["lookback"]["share"]
    assert page["lookback"]["edges"][:3] == [0, 1, 2] and int(np.argmax(share)) == 1 and share[1] > 0.5
    assert page["lookback"]["prompts"] == page["n_prompts"]
    tokens = Counter(t for p in stored_prompts(demo_data) for t in p["tokens"][1:])
    for token, count, mass in page["tokens"]["query"][:5]:
        assert count == tokens[token] and 0 < mass <= count
