"""Head statistics: known answers on constructed patterns, the stored tables, and a hand-wired model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lens

ROOT = Path(__file__).resolve().parent.parent
STATS, _ = lens.load_figures()


def stat(name: str, attn: np.ndarray, token_ids=None) -> float:
    fig = STATS[name]
    return fig.func(attn, token_ids) if fig.options["needs_tokens"] else fig.func(attn)


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
    assert stat("bos", sink) == 1 and stat("prev_token", sink) == 0 and stat("diagonal", sink) == 0
    assert stat("entropy", sink) == 0
    prev = previous_token(n)
    assert stat("prev_token", prev) == 1 and stat("bos", prev) == pytest.approx(1 / (n - 1))
    assert stat("diagonal", np.eye(n, dtype=np.float32)) == 1
    # uniform rows 1..n-1 see 2..n tokens: entropy log2(k), BOS weight 1/k
    ks = np.arange(2, n + 1)
    assert stat("entropy", uniform(n)) == pytest.approx(np.log2(ks).mean(), rel=1e-5)
    assert stat("bos", uniform(n)) == pytest.approx((1 / ks).mean(), rel=1e-5)
    assert stat("prev_token", uniform(n)) == pytest.approx((1 / ks[1:]).mean(), rel=1e-5)


def induction_pattern(seq: int) -> tuple[np.ndarray, list[int]]:
    """BOS + a random sequence twice; the second copy attends to the token after its earlier copy."""
    ids = [0] + list(range(10, 10 + seq)) * 2
    n = len(ids)
    a = uniform(n)
    for i in range(seq + 1, n):
        a[i] = 0
        a[i, i - seq + 1] = 1
    return a, ids


def test_induction_score():
    a, ids = induction_pattern(8)
    assert stat("induction", a, ids) == 1
    assert stat("induction", previous_token(len(ids)), ids) == pytest.approx(0)
    assert stat("induction", uniform(len(ids)), ids) < 0.2
    assert np.isnan(stat("induction", uniform(5), [0, 1, 2, 3, 4]))  # no repeated token: undefined


def test_stats_tables_on_disk(fake_data_dir):
    r = subprocess.run([sys.executable, "render_figures.py", "--save-path", str(fake_data_dir),
                        "--figures", "bos,prev_token,induction", "--jobs", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    model = fake_data_dir / "fake-model"
    index = json.loads((model / "stats.json").read_text())
    hashes = sorted(p.name for p in (model / "prompts").iterdir())
    assert index["prompts"] == hashes and (index["n_layers"], index["n_heads"]) == (2, 3)
    assert list(index["stats"]) == ["bos", "prev_token", "induction"]
    table = np.fromfile(model / "stats" / "bos.f32", "<f4").reshape(len(hashes), 2, 3)
    for i, h in enumerate(hashes):
        patterns = lens.Patterns(model / "prompts" / h / lens.PATTERN_FILE)
        assert table[i, 1, 2] == pytest.approx(patterns.head(1, 2)[1:, 0].mean(), abs=1e-6)
        per_prompt = json.loads((model / "prompts" / h / "stats.json").read_text())
        assert per_prompt["bos"][1][2] == pytest.approx(float(table[i, 1, 2]), abs=1e-6)
    np.testing.assert_allclose(index["stats"]["bos"]["mean"], table.mean(0), atol=1e-6)
    assert index["stats"]["bos"]["doc"].startswith("Mean attention to the first")
    # the fake prompts repeat few tokens: prompts without repeats are NaN in the table, null in JSON
    induction = np.fromfile(model / "stats" / "induction.f32", "<f4").reshape(len(hashes), 2, 3)
    for i, h in enumerate(hashes):
        per_prompt = json.loads((model / "prompts" / h / "stats.json").read_text())
        assert (per_prompt["induction"][0][0] is None) == bool(np.isnan(induction[i, 0, 0]))


def test_failing_statistic_is_isolated(fake_data_dir, tmp_path):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "s.py").write_text("from lens import statistic\n\n@statistic\ndef picky(attn):\n"
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
    assert list((fake_data_dir / "fake-model" / "prompts").glob("*/L0/H0/picky.error.txt"))


# ---- a model with real structure ----

D_MODEL, N_HEADS, D_HEAD, N_POSITIONS = 32, 4, 8, 128
OMEGAS = [0.31, 0.67, 1.29, 2.13, 0.45, 0.93, 1.71, 2.71]  # one (cos, sin) pair each fills d_model


def hand_wired_checkpoint(path: Path) -> Path:
    """A 2-layer GPT-2 whose L0H1 attends to the previous token and L1H2 to BOS; other heads are uniform.

    Position embeddings hold (cos, sin, -cos, -sin)(omega * pos) per frequency: mean zero and
    constant norm, so LayerNorm only rescales them. L0H1's query rotates each pair back by one
    position; L1H2's query is position 0's embedding for every token. Token embeddings are zero."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from tiny_model import train_tokenizer

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
    prompts = tmp_path / "prompts.jsonl"
    texts = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b\n",
             "When Mary and John went to the store, John gave a drink to Mary."]
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = tmp_path / "data"
    for script, args in [("compute_activations.py", [ckpt, prompts]), ("render_figures.py", ["--jobs", "1"])]:
        r = subprocess.run([sys.executable, script, *map(str, args), "--save-path", str(data)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    index = json.loads((data / "wired-gpt2" / "stats.json").read_text())["stats"]

    def ranking(name: str) -> list[tuple[int, int]]:
        mean = np.array(index[name]["mean"], dtype=float)
        order = np.argsort(-mean, axis=None)
        return [tuple(int(i) for i in np.unravel_index(k, mean.shape)) for k in order]

    assert ranking("prev_token")[0] == (0, 1)
    assert ranking("bos")[0] == (1, 2)
    assert np.array(index["prev_token"]["mean"])[0][1] > 0.95
    assert np.array(index["bos"]["mean"])[1][2] > 0.95
    assert ranking("entropy")[-2:] in ([(0, 1), (1, 2)], [(1, 2), (0, 1)])  # the two sharp heads
