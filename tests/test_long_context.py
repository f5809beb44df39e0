"""Statistics at any context length (forward.block_attention): each head's statistics from blocks of query rows,
never a whole pattern, against oracles computed from whole eager patterns: TransformerLens's detect_head and the
figures' definitions on Hugging Face's own `output_attentions`, family by family; padded batches and one-token
prompts; the examples' sparse rows; a model the path cannot serve; memory that grows linearly, in a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_architectures import configs
from tiny_model import train_tokenizer

from attention_lens import compute_activations as ca
from attention_lens import forward, lens, storage

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "model"
TEXTS = [
    "The cat sat on the mat. The cat sat on the mat.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Hi",
    "def add(a, b):\n    return a + b\ndef add(a, b):\n    return a + b",
    "Attention patterns show which earlier tokens each token reads from, and how strongly.",
]
# attention that matters on tiny random models: Mistral's and Gemma-2's windows shorter than the prompts,
# Gemma-2's softcap low enough to bite
OVERRIDES = {"mistral-gqa": {"sliding_window": 8}, "gemma2-gqa": {"sliding_window": 8, "attn_logit_softcapping": 5.0}}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(512)


def make_family(path: Path, family: str, tokenizer):
    """test_architectures' tiny checkpoint of a family, its patterns made far from uniform (weights x 8) and its
    norms and biases moved off their defaults (TransformerLens's compatibility mode folds them into the weights)."""
    config_cls, model_cls, size = configs()[family]
    torch.manual_seed(0)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = config_cls(vocab_size=len(tokenizer), **size, **OVERRIDES.get(family, {}), **special,
                        attn_implementation="eager")
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not any(e in name for e in ("embed", "wte", "wpe")):
                p.mul_(8)
            elif p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def eager_not_allowed(monkeypatch) -> None:
    """Fail any statistics taken from a whole pattern: the run must go through block_attention."""
    def refuse(*args):
        raise AssertionError("statistics from a whole eager pattern")
    monkeypatch.setattr(forward.DeviceStats, "add_layer", refuse)


def part_values(data: Path, model_dir: str) -> dict[str, np.ndarray]:
    """{text: [statistics, layers, heads]} of the run's part."""
    [part] = storage.read_parts(data, model_dir)
    assert part.stats == list(forward.DEVICE_STATISTICS)
    return {row["text"]: values for row, values in zip(part.rows, part.values)}


def figures_of(attn: np.ndarray, ids: list[int]) -> np.ndarray:
    """figures/head_stats.py's statistics [DEVICE_STATISTICS, heads] of one layer's whole pattern [heads, n, n]."""
    registry, _ = lens.load_figures()
    return np.array([[lens.call_plugin(registry[name], a, {"token_ids": ids}) for a in attn]
                     for name in forward.DEVICE_STATISTICS])


@pytest.mark.parametrize("family", list(configs()))
def test_block_statistics_equal_detect_head_and_the_figures_on_eager_patterns(family, tokenizer, tmp_path,
                                                                              monkeypatch, capsys):
    """--patterns none on a padded batch, in blocks of 3 query rows (so keys are trimmed and pairs cross blocks):
    every statistic equals the figures' definitions on Hugging Face's eager pattern of the prompt alone, and the
    three detect_head scores equal TransformerLens's detect_head."""
    from transformer_lens.head_detector import detect_head
    hf = make_family(tmp_path / family, family, tokenizer)
    monkeypatch.setitem(forward.BLOCK_BYTES, "cpu", 4 * 3 * 4 * 3 * 40)  # 3 rows of 3 prompts x 4 heads x 40 keys
    model = forward.load_model(str(tmp_path / family), "cpu", "float32")
    eager_not_allowed(monkeypatch)
    ca.compute_activations(TEXTS, model, tmp_path / "data", model_name=family, batch_size=3, patterns="none",
                           progress=False)
    assert "eager" not in capsys.readouterr().err
    monkeypatch.undo()
    got = part_values(tmp_path / "data", family)
    for text in TEXTS:
        ids = ca.tokenize(model.to_tokens, text)
        with torch.inference_mode():
            attentions = hf(torch.tensor([ids]), output_attentions=True).attentions
        expected = np.stack([figures_of(a[0].numpy(), ids) for a in attentions], 1)
        np.testing.assert_allclose(got[text], expected, atol=1e-4, rtol=1e-5, err_msg=f"{family}: {text}")
        for name in ("previous_token_head", "duplicate_token_head", "induction_head"):
            oracle = detect_head(model, text, name).numpy()
            s = forward.DEVICE_STATISTICS.index(name)
            np.testing.assert_allclose(got[text][s], oracle, atol=1e-4, err_msg=f"{family}: {name}: {text}")


@pytest.mark.parametrize("texts", [["the", "and"], ["the", "the cat", "the cat sat on the mat and the dog ran to "
                                   "the cat", "the cat sat on the mat"]], ids=["only-one-token", "mixed"])
def test_a_padded_batch_with_one_token_prompts_gets_each_prompts_own_statistics(texts, tmp_path, monkeypatch):
    """The demo model (trained: its norms matter) through block_attention on one padded batch: each prompt's
    statistics equal the figures' definitions on its own eager pattern; a one-token prompt gets NaN."""
    model = forward.load_model(str(DEMO), "cpu", "float32")
    ids = [ca.tokenize(model.to_tokens, t) for t in texts]
    assert len(ids[0]) == 1 and (len(texts) == 2 or len({len(x) for x in ids}) == len(texts))
    eager_not_allowed(monkeypatch)
    ca.compute_activations(texts, model, tmp_path, model_name="demo", patterns="none", batch_size=len(texts),
                           progress=False)
    monkeypatch.undo()
    got = part_values(tmp_path, "demo")
    for text, x in zip(texts, ids):
        if len(x) == 1:
            assert np.isnan(got[text]).all()
            continue
        _, cache = model.run_with_cache(torch.tensor([x]), names_filter=forward.is_pattern_hook)
        expected = np.stack([figures_of(cache[f"blocks.{l}.attn.hook_pattern"][0].numpy(), x) for l in range(2)], 1)
        np.testing.assert_allclose(got[text], expected, atol=1e-4, rtol=1e-5, err_msg=text)


@pytest.mark.parametrize("causal, window, rows", [(True, None, 1), (True, None, 4), (True, 3, 2), (False, None, 3),
                                                  (True, None, 64)])
def test_block_sums_equal_the_figures_and_a_brute_force_count(causal, window, rows):
    """BlockStats fed blocks of rows of random patterns, keys trimmed to what the mask allows (a sliding window, an
    encoder's padding): the statistics equal the figures' definitions, the look-back and token totals a count
    entry by entry over each fresh prompt's pattern (the stale one adds nothing)."""
    rng = np.random.default_rng(rows)
    lengths, n_layers, n_heads, vocab = [5, 9, 1, 7], 2, 3, 4
    width = max(lengths)
    ids = [list(rng.integers(0, vocab, n)) for n in lengths]
    tokens = np.array([x + [0] * (width - len(x)) for x in ids])
    fresh = np.array([True, True, True, False])
    q = np.arange(width)
    allowed = np.ones((len(lengths), width, width), bool)
    if causal:
        allowed &= q[None, :] <= q[:, None]
    if window:
        allowed &= q[:, None] - q[None, :] < window
    if not causal:
        allowed &= (q[None] < np.array(lengths)[:, None])[:, None, :]
    scores = [torch.from_numpy(np.where(allowed[:, None], rng.normal(size=(len(lengths), n_heads, width, width)) * 3,
                                        np.finfo(np.float32).min)).float() for _ in range(n_layers)]
    patterns = [s.softmax(-1) for s in scores]  # as block_attention: the mask's scores at float32's lowest
    sums = forward.HeadSums(n_layers, n_heads, vocab, "cpu")
    stats = forward.BlockStats(np.array(lengths), tokens, "cpu", n_layers, n_heads, causal=causal, sums=sums,
                               fresh=fresh)
    for layer, (s, pattern) in enumerate(zip(scores, patterns)):
        for q0 in range(0, width, rows):
            q1 = min(width, q0 + rows)
            k0, k1 = forward.rows_of(torch.from_numpy(allowed[:, None, q0:q1]), q0, q1)[:2]
            assert (pattern[:, :, q0:q1, :k0] == 0).all() and (pattern[:, :, q0:q1, k1:] == 0).all()
            stats.add_block(layer, q0, k0, pattern[:, :, q0:q1, k0:k1].contiguous(), s[:, :, q0:q1, k0:k1])
    values, got = stats.values(fresh), sums.snapshot()
    edges = list(forward.LOOKBACK_EDGES)
    lookback = np.zeros((n_layers, n_heads, len(edges)))
    query, key, counts = np.zeros((n_layers, n_heads, vocab)), np.zeros((n_layers, n_heads, vocab)), np.zeros(vocab)
    for b, n in enumerate(lengths):
        if n == 1:
            assert np.isnan(values[b]).all()
            continue
        for layer, pattern in enumerate(patterns):
            a = pattern[b, :, :n, :n].numpy()
            np.testing.assert_allclose(values[b, :, layer], figures_of(a, ids[b]), atol=2e-5, rtol=1e-5)
            for i in range(n * fresh[b]):
                for k in range(n):
                    lookback[layer, :, max(e for e, edge in enumerate(edges) if edge <= abs(i - k))] += a[:, i, k]
                    if i >= 1 and k >= 1:
                        query[layer, :, ids[b][i]] += a[:, i, k]
                        key[layer, :, ids[b][k]] += a[:, i, k]
        counts += np.bincount(ids[b][1:], minlength=vocab) * fresh[b]
    np.testing.assert_allclose(got["lookback"], lookback, atol=1e-5)
    assert list(got["counts"]) == list(counts[counts > 0])
    np.testing.assert_allclose(got["query"], query[..., got["ids"]], atol=1e-5)
    np.testing.assert_allclose(got["key"], key[..., got["ids"]], atol=1e-5)


def test_the_examples_sparse_rows_from_blocks_are_the_top_k_of_each_eager_row(monkeypatch):
    """sparse_attention through block_attention (blocks of 2 rows) keeps, per row, the 3 largest weights of the
    Hugging Face eager pattern that are at least 0.05, in (q, k) order."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(DEMO, attn_implementation="eager", dtype=torch.float32).eval()
    monkeypatch.setitem(forward.BLOCK_BYTES, "cpu", 4 * 2 * 4 * 2 * 32)
    model = forward.load_model(str(DEMO), "cpu", "float32")
    prompts = [ca.tokenize(model.to_tokens, t) for t in TEXTS]
    heads = [[(0, 1), (1, 2)], [(1, 0)], [(0, 0)], [(0, 3), (1, 3)], [(1, 1)]]
    eager_not_allowed(monkeypatch)
    monkeypatch.setattr(forward, "forward_patterns", lambda *a, **k: pytest.fail("eager pass"))
    kept = forward.sparse_attention(model, prompts, heads, 3, 0.05, batch_size=2, progress=False)
    for ids, wanted, found in zip(prompts, heads, kept):
        with torch.inference_mode():
            attentions = hf(torch.tensor([ids]), output_attentions=True).attentions
        assert set(found) == set(wanted)
        for layer, head in wanted:
            a = attentions[layer][0, head].numpy()
            top = np.sort(np.argsort(-a, 1, kind="stable")[:, :3], 1)
            rows = [(i, j) for i in range(len(a)) for j in top[i] if a[i, j] >= 0.05]
            q, k, w = found[(layer, head)]
            assert list(zip(q.tolist(), k.tolist())) == rows
            np.testing.assert_allclose(w, a[q, k], atol=1e-5)


def test_a_model_the_path_cannot_serve_falls_back_to_eager_saying_so_once(tmp_path, monkeypatch, capsys):
    """A layer whose attention does not come through block_attention (here: one the path does not know) sends the
    run to eager attention with one line; its statistics still equal the figures' definitions."""
    model = forward.load_model(str(DEMO), "cpu", "float32")
    blocks = forward.block_attention_of(model)
    layer1 = {k for k, layer in blocks.layer_of.items() if layer == 1}
    monkeypatch.setattr(blocks, "layer_of", {k: v for k, v in blocks.layer_of.items() if k not in layer1})
    texts = TEXTS[:2] + TEXTS[3:]
    ca.compute_activations(texts, model, tmp_path, model_name="demo", patterns="none", batch_size=2, progress=False)
    err = capsys.readouterr().err
    assert err.count("statistics come from eager attention") == 1 and "is not a layer's attention" in err
    got = part_values(tmp_path, "demo")
    for text in texts:
        ids = ca.tokenize(model.to_tokens, text)
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=forward.is_pattern_hook)
        expected = np.stack([figures_of(cache[f"blocks.{l}.attn.hook_pattern"][0].numpy(), ids) for l in range(2)], 1)
        np.testing.assert_allclose(got[text], expected, atol=1e-4, rtol=1e-5)


def test_an_alibi_model_falls_back_to_eager_with_one_line(tokenizer, tmp_path, capsys):
    """BLOOM computes its ALiBi attention itself (no attention function to switch to): one line says so, and its
    statistics are eager attention's, equal to the figures' definitions on Hugging Face's own patterns."""
    from transformers import BloomConfig, BloomForCausalLM
    torch.manual_seed(0)
    hf = BloomForCausalLM(BloomConfig(vocab_size=len(tokenizer), hidden_size=64, n_layer=2, n_head=4,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)).eval()
    hf.save_pretrained(tmp_path / "bloom")
    tokenizer.save_pretrained(tmp_path / "bloom")
    model = forward.load_model(str(tmp_path / "bloom"), "cpu", "float32")
    ca.compute_activations(TEXTS, model, tmp_path / "data", model_name="bloom", patterns="none", batch_size=2,
                           progress=False)
    err = capsys.readouterr().err
    assert err.count("statistics come from eager attention") == 1 and "ALiBi" in err
    got = part_values(tmp_path / "data", "bloom")
    for text in TEXTS:
        ids = ca.tokenize(model.to_tokens, text)
        with torch.inference_mode():
            attentions = hf(torch.tensor([ids]), output_attentions=True).attentions
        expected = np.stack([figures_of(a[0].numpy(), ids) for a in attentions], 1)
        np.testing.assert_allclose(got[text], expected, atol=1e-4, rtol=1e-5, err_msg=text)


def test_a_wrapper_without_a_hugging_face_model_says_it_uses_eager(tmp_path, capsys):
    class Wrapped:  # the TransformerLens interface alone, as a 3.x HookedTransformer or a wrapper gives it
        def __init__(self, model):
            self.cfg, self.tokenizer, self._model = model.cfg, model.tokenizer, model

        def __getattr__(self, name):
            return getattr(self._model, name) if name in ("run_with_hooks", "to_tokens", "to_str_tokens") else \
                object.__getattribute__(self, name)
    model = forward.load_model(str(DEMO), "cpu", "float32")
    ca.compute_activations(TEXTS[:2], Wrapped(model), tmp_path, model_name="w", patterns="none", progress=False)
    assert capsys.readouterr().err.count("is not a TransformerLens 4 TransformerBridge") == 1


def test_the_prompts_whose_patterns_are_stored_alone_go_through_eager_attention(tmp_path, monkeypatch):
    """--patterns with one prompt's hash, batches of 8: that prompt is computed alone from whole patterns (its
    patterns are stored), the other four in blocks; every prompt gets its statistics."""
    model = forward.load_model(str(DEMO), "cpu", "float32")
    eager_batches, original = [], forward.DeviceStats.__init__

    def counted(self, n, *args, **kwargs):
        eager_batches.append(list(n))
        original(self, n, *args, **kwargs)
    monkeypatch.setattr(forward.DeviceStats, "__init__", counted)
    stored = lens.prompt_hash(TEXTS[1])
    ca.compute_activations(TEXTS, model, tmp_path, model_name="demo", patterns={stored}, progress=False)
    assert eager_batches == [[len(ca.tokenize(model.to_tokens, TEXTS[1]))]]
    assert set(part_values(tmp_path, "demo")) == set(TEXTS) and set(lens.finished_prompts(tmp_path, "demo")) == {stored}


def test_a_run_whose_eager_attention_would_not_fit_stops_first_naming_what_fits(tmp_path, monkeypatch):
    """With 12 MiB free, a batch of 4 prompts of 256 tokens through eager attention (patterns stored: 4 heads x 256^2
    x 18 bytes = 4.7 MB a prompt) stops before anything is written, naming --patterns none and a batch size that
    fits; --patterns none runs."""
    model = forward.load_model(str(DEMO), "cpu", "float32")
    texts = [" ".join(["word"] * 300) + f" {i}" for i in range(4)]
    monkeypatch.setattr(forward, "free_memory", lambda device: 12 * 2**20)
    with pytest.raises(lens.UserError, match=r"eager attention over 4 prompt\(s\) of 256 tokens needs about .* "
                       r"what fits: --patterns none .* or --batch-size 2$"):
        ca.compute_activations(texts, model, tmp_path, model_name="demo", batch_size=4, progress=False)
    assert not any(tmp_path.iterdir())
    ca.compute_activations(texts, model, tmp_path, model_name="demo", batch_size=4, patterns="none", progress=False)
    assert len(part_values(tmp_path, "demo")) == 4


# compute_activations once on a short prompt (warm-up), then on N tokens: prints the peak RSS over the RSS before it
CHILD = """
import json, resource, sys
sys.path[:0] = {paths!r}
from attention_lens import compute_activations as ca, forward
model = forward.load_model({ckpt!r}, "cpu", "float32")
text = " ".join(["the cat sat on the mat and the dog ran"] * 2000)
ca.compute_activations([text[:200]], model, {data!r} + "/warm", patterns="none", progress=False, max_tokens=16)
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
s = ca.compute_activations([text], model, {data!r} + "/run", patterns="none", progress=False, max_tokens={n})
print(json.dumps([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before, s["tokens"]]))
"""


def test_peak_memory_at_four_times_the_tokens_is_under_eight_times(tmp_path, tokenizer):
    """A 16-head Llama-shaped model, --patterns none, 1,024 and 4,096 tokens, each in its own process: the peak RSS
    grows less than 8x (eager attention's would grow 16x: at 4,096 tokens its weights alone are 4.5 GB)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    growth = {}
    for n in (1024, 4096):
        script = CHILD.format(paths=[str(ROOT), str(ROOT / "tests")], ckpt=str(tmp_path / "llama"),
                              data=str(tmp_path / f"d{n}"), n=n)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})  # no heap fragments
        growth[n], tokens = json.loads(out.stdout.splitlines()[-1])
        assert tokens == n
    assert 0 < growth[4096] < 8 * growth[1024], growth
