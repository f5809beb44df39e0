"""Head statistics: known answers, TransformerLens's detect_head as the oracle, the stored tables, a hand-wired
model."""
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_data import index_rows

from attention_lens import datadir, lens, storage

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "model"
STATS, _ = lens.load_figures()
TL_SCORES = ["previous_token_head", "duplicate_token_head", "induction_head"]


def stat(name: str, attn: np.ndarray, token_ids=None) -> float:
    fig = STATS[name]
    return lens.call_plugin(fig, attn, {"token_ids": token_ids})


def previous_token(n: int) -> np.ndarray:
    a = np.zeros((n, n), np.float32)
    a[0, 0] = 1
    a[np.arange(1, n), np.arange(n - 1)] = 1
    return a


def uniform(n: int) -> np.ndarray:
    return np.tri(n, dtype=np.float32) / np.arange(1, n + 1, dtype=np.float32)[:, None]


def test_known_answers():
    n = 6
    sink = np.zeros((n, n), np.float32)
    sink[:, 0] = 1
    assert stat("bos", sink) == 1 and stat("previous_token_head", sink) == pytest.approx(1 / n)  # query 1 -> BOS
    assert stat("diagonal", sink) == 0 and stat("entropy", sink) == 0
    prev = previous_token(n)
    assert stat("previous_token_head", prev) == pytest.approx((n - 1) / n)  # BOS has no previous token
    assert stat("bos", prev) == pytest.approx(1 / (n - 1))
    assert stat("diagonal", np.eye(n, dtype=np.float32)) == 1
    # uniform rows 1..n-1 see 2..n tokens: entropy log2(k), BOS weight 1/k
    ks = np.arange(2, n + 1)
    assert stat("entropy", uniform(n)) == pytest.approx(np.log2(ks).mean(), rel=1e-5)
    assert stat("bos", uniform(n)) == pytest.approx((1 / ks).mean(), rel=1e-5)
    assert stat("previous_token_head", uniform(n)) == pytest.approx((1 / ks).sum() / n, rel=1e-5)
    assert np.isnan(stat("previous_token_head", np.ones((1, 1), np.float32)))  # detect_head refuses 1 token


def induction_pattern(seq: int) -> tuple[np.ndarray, list[int]]:
    """BOS + a random sequence twice; the second copy attends to the token after its earlier copy."""
    ids = [0] + list(range(10, 10 + seq)) * 2
    n = len(ids)
    a = uniform(n)
    for i in range(seq + 1, n):
        a[i] = 0
        a[i, i - seq + 1] = 1
    return a, ids


def test_induction_and_duplicate_scores():
    a, ids = induction_pattern(8)
    n = len(ids)
    assert stat("induction_head", a, ids) == pytest.approx(8 / n)  # only the second copy's 8 queries can
    assert stat("duplicate_token_head", a, ids) == 0
    assert stat("induction_head", previous_token(n), ids) == pytest.approx(0)
    duplicate = np.zeros((n, n), np.float32)
    duplicate[:9, 0] = 1
    duplicate[np.arange(9, n), np.arange(1, 9)] = 1  # the second copy looks at the first
    assert stat("duplicate_token_head", duplicate, ids) == pytest.approx(8 / n)
    # no token repeats: nothing to score, 0 as detect_head says
    assert stat("induction_head", uniform(5), [0, 1, 2, 3, 4]) == 0
    assert stat("duplicate_token_head", uniform(5), [0, 1, 2, 3, 4]) == 0


def test_scores_equal_detect_head_on_patterns():
    """TransformerLens's own detection patterns and score function on random patterns and token ids:
    repeated BOS ids, adjacent repeats (the induction key is then the query itself), few and many repeats."""
    import torch
    from transformer_lens import head_detector

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(2, 40))
        ids = [0] + rng.integers(0, 4 if trial % 2 else 60, n - 1).tolist()
        a = np.tril(rng.random((n, n)) ** 8).astype(np.float32)
        a /= a.sum(1, keepdims=True)
        for name in TL_SCORES:
            detection = getattr(head_detector, f"get_{name}_detection_pattern")(torch.tensor([ids]))
            expected = head_detector.compute_head_attention_similarity_score(
                torch.tensor(a), detection, exclude_bos=False, exclude_current_token=False, error_measure="mul")
            assert stat(name, a, ids) == pytest.approx(expected, abs=1e-6), (name, ids)


# ---- what users see: the real scripts against detect_head ----

def run_pipeline(ckpt: Path, texts: list[str], data: Path, *render_args: str) -> Path:
    """compute_activations.py + render_figures.py on these texts, as a user runs them; returns the model dir."""
    prompts = data.parent / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    for script, args in [("compute_activations.py", [ckpt, prompts, "--no-probe"]),
                         ("render_figures.py", ["--jobs", "1", *render_args])]:
        r = subprocess.run([sys.executable, script, *map(str, args), "--save-path", str(data)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    [model] = lens.model_dirs(data)
    return data / model


def repeated_texts(words: list[str], seed: int = 0) -> list[str]:
    """Prose, random word sequences said twice (induction), and text with repeated tokens."""
    rng = random.Random(seed)
    texts = ["The quick brown fox jumps over the lazy dog.",
             "When Mary and John went to the store, John gave a drink to Mary."]
    for length in (6, 12, 20):
        seq = " ".join(rng.choice(words) for _ in range(length))
        texts.append(f"{seq} {seq}")
    texts.append("the the the cat cat sat sat on on the the mat mat")
    return texts


def assert_equal_to_detect_head(ckpt: Path, texts: list[str], tmp_path: Path) -> None:
    """Every prompt's stored TL scores equal detect_head's within 1e-4, and the stored means its mean."""
    from transformer_lens.head_detector import detect_head

    from attention_lens.forward import load_model

    model_dir = run_pipeline(ckpt, texts, tmp_path / "data", "--figures", ",".join(TL_SCORES))
    index = json.loads((model_dir / "stats.json").read_text())
    hashes = [r["hash"] for r in index_rows(model_dir.parent, model_dir.name)]  # the tables' rows
    text_of = {h: json.loads((model_dir / "prompts" / h / "prompt.json").read_text())["text"] for h in hashes}
    assert sorted(text_of.values()) == sorted(texts)
    model = load_model(str(ckpt), "cpu", "float32")
    assert all(1 < len(model.to_tokens(t)[0]) < model.cfg.n_ctx for t in texts)  # what detect_head accepts
    shape = (len(texts), index["n_layers"], index["n_heads"])
    for name in TL_SCORES:
        table = np.fromfile(model_dir / "stats" / f"{name}.f32", "<f4").reshape(shape)
        for i, h in enumerate(hashes):
            expected = detect_head(model, text_of[h], name).numpy()
            np.testing.assert_allclose(table[i], expected, atol=1e-4, rtol=0, err_msg=f"{name} on {text_of[h]!r}")
        mean = detect_head(model, texts, name).numpy()  # detect_head on a list: the mean over prompts
        np.testing.assert_allclose(index["stats"][name]["mean"], mean, atol=1e-4, rtol=0, err_msg=name)
        assert index["stats"][name]["doc"].startswith("TransformerLens detect_head score")
    assert np.fromfile(model_dir / "stats" / "induction_head.f32", "<f4").max() > 0  # the texts do repeat


def test_scores_equal_detect_head_on_random_model(tiny_checkpoint, tmp_path):
    from tiny_model import CORPUS

    words = sorted({w for text in CORPUS for w in text.split()})
    assert_equal_to_detect_head(tiny_checkpoint, repeated_texts(words), tmp_path)


def test_scores_equal_detect_head_on_demo_model(tmp_path):
    words = "the of and to in is for that with as on by it be from this are".split()
    assert_equal_to_detect_head(DEMO, repeated_texts(words), tmp_path)


def test_stats_tables_on_disk(fake_data_dir):
    r = subprocess.run([sys.executable, "render_figures.py", "--save-path", str(fake_data_dir),
                        "--figures", "bos,previous_token_head,induction_head", "--jobs", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    model = fake_data_dir / "fake-model"
    index = json.loads((model / "stats.json").read_text())
    hashes = sorted(p.name for p in (model / "prompts").iterdir())
    assert index["n_prompts"] == len(hashes) and (index["n_layers"], index["n_heads"]) == (2, 3)
    assert list(index["stats"]) == ["bos", "previous_token_head", "induction_head"]
    table = np.fromfile(model / "stats" / "bos.f32", "<f4").reshape(len(hashes), 2, 3)
    for i, h in enumerate(hashes):
        patterns = storage.Patterns(model / "prompts" / h / datadir.PATTERN_FILE)
        assert table[i, 1, 2] == pytest.approx(patterns.head(1, 2)[1:, 0].mean(), abs=1e-6)
        per_prompt = json.loads((model / "prompts" / h / "stats.json").read_text())
        assert per_prompt["bos"][1][2] == pytest.approx(float(table[i, 1, 2]), abs=1e-6)
    np.testing.assert_allclose(index["stats"]["bos"]["mean"], table.mean(0), atol=1e-6)
    assert index["stats"]["bos"]["doc"].startswith("Mean attention to the first")


def test_failing_statistic_is_isolated(fake_data_dir, tmp_path):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "s.py").write_text("from attention_lens import statistic\n\n@statistic\ndef picky(attn):\n"
                               "    if attn.shape[0] > 6:\n        raise ValueError('too long')\n    return 1.0\n")
    r = subprocess.run([sys.executable, "render_figures.py", "--save-path", str(fake_data_dir),
                        "--figures-dir", str(figs), "--jobs", "2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    table = np.fromfile(fake_data_dir / "fake-model" / "stats" / "picky.f32", "<f4").reshape(4, 6)
    n_tokens = [json.loads(p.read_text())["n_tokens"]
                for p in sorted((fake_data_dir / "fake-model" / "prompts").glob("*/prompt.json"))]
    for row, n in zip(table, n_tokens):
        assert np.isnan(row).all() if n > 6 else (row == 1).all()
    failed = 6 * sum(n > 6 for n in n_tokens)
    assert failed and f"{failed} statistic values failed" in r.stdout
    errors = [json.loads(p.read_text()) for p in (fake_data_dir / "fake-model" / "prompts").glob("*/picky.errors.json")]
    assert len(errors) == sum(n > 6 for n in n_tokens) and all(len(e) == 6 and "L0H0" in e for e in errors)
    for row, p in zip(table, sorted((fake_data_dir / "fake-model" / "prompts").glob("*/stats.json"))):
        values = json.loads(p.read_text())["picky"]
        assert np.array_equal(np.array(values, dtype=float).ravel(), row, equal_nan=True)  # NaN is null in JSON


# ---- a model with real structure ----

D_MODEL, N_HEADS, D_HEAD, N_POSITIONS = 32, 4, 8, 128
OMEGAS = [0.31, 0.67, 1.29, 2.13, 0.45, 0.93, 1.71, 2.71]  # one (cos, sin) pair each fills d_model


def hand_wired_checkpoint(path: Path) -> Path:
    """A 2-layer GPT-2 whose L0H1 attends to the previous token and L1H2 to BOS; other heads are uniform.

    Position embeddings hold (cos, sin, -cos, -sin)(omega * pos) per frequency: mean zero and
    constant norm, so LayerNorm only rescales them. L0H1's query rotates each pair back by one
    position; L1H2's query is position 0's embedding for every token. Token embeddings are zero."""
    import torch
    from tiny_model import train_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=N_POSITIONS, n_embd=D_MODEL, n_layer=2,
                        n_head=N_HEADS, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for k in state:
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            state[k] += 1
    angles = np.arange(N_POSITIONS)[:, None] * np.array(OMEGAS)
    wpe = np.stack([np.cos(angles), np.sin(angles), -np.cos(angles), -np.sin(angles)], -1).reshape(N_POSITIONS, -1)
    state["transformer.wpe.weight"] = torch.tensor(wpe, dtype=torch.float32)
    for layer, head, kind in [(0, 1, "previous"), (1, 2, "bos")]:
        w, b = state[f"transformer.h.{layer}.attn.c_attn.weight"], state[f"transformer.h.{layer}.attn.c_attn.bias"]
        for p in range(D_HEAD // 2):
            cos_in, sin_in, omega = 4 * p, 4 * p + 1, OMEGAS[p]
            q_cos, q_sin = head * D_HEAD + 2 * p, head * D_HEAD + 2 * p + 1
            w[cos_in, D_MODEL + q_cos] = w[sin_in, D_MODEL + q_sin] = 8.0  # key: the position itself, sharpened
            if kind == "previous":
                w[cos_in, q_cos], w[sin_in, q_cos] = np.cos(omega), np.sin(omega)
                w[sin_in, q_sin], w[cos_in, q_sin] = np.cos(omega), -np.sin(omega)
            else:
                b[q_cos] = 1.0
    model.load_state_dict(state)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_statistics_find_the_previous_token_and_bos_heads(tmp_path):
    ckpt = hand_wired_checkpoint(tmp_path / "wired-gpt2")
    texts = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n",
             "When Mary and John went to the store, John gave a drink to Mary."]
    index = json.loads((run_pipeline(ckpt, texts, tmp_path / "data") / "stats.json").read_text())["stats"]

    def ranking(name: str) -> list[tuple[int, int]]:
        mean = np.array(index[name]["mean"], dtype=float)
        order = np.argsort(-mean, axis=None)
        return [tuple(int(i) for i in np.unravel_index(k, mean.shape)) for k in order]

    assert ranking("previous_token_head")[0] == (0, 1)
    assert ranking("bos")[0] == (1, 2)
    assert np.array(index["previous_token_head"]["mean"])[0][1] > 0.9  # a perfect head: (n - 1) / n
    assert np.array(index["bos"]["mean"])[1][2] > 0.95
    assert ranking("entropy")[-2:] in ([(0, 1), (1, 2)], [(1, 2), (0, 1)])  # the two sharp heads
