"""Stored patterns equal Hugging Face's own eager `output_attentions`, family by family, in batches.

Each family is a tiny random checkpoint built here (decoders with grouped-query attention among
them, and BERT, an encoder that attends both ways); prompts of different lengths share batches, so
right padding must be harmless (causal) or masked (encoder).
"""
import json

import numpy as np
import pytest
import torch
from tiny_model import train_tokenizer

from attention_lens import compute_activations as ca
from attention_lens import datadir, forward, lens, storage

TEXTS = [
    "The cat sat on the mat.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "Hi",
    "def add(a, b):\n    return a + b",
    "Attention patterns show which earlier tokens each token reads from, and how strongly.",
]
SIZE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "max_position_embeddings": 128}


def configs():
    import transformers as tf
    gqa = {**SIZE, "num_key_value_heads": 2}
    return {
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128}),
        "neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, SIZE),
        "llama-gqa": (tf.LlamaConfig, tf.LlamaForCausalLM, gqa),
        "mistral-gqa": (tf.MistralConfig, tf.MistralForCausalLM, gqa),
        "qwen2-gqa": (tf.Qwen2Config, tf.Qwen2ForCausalLM, gqa),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, {**gqa, "head_dim": 16}),
        "gemma2-gqa": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {**gqa, "head_dim": 16}),
        "opt": (tf.OPTConfig, tf.OPTForCausalLM, {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                                  "ffn_dim": 128, "max_position_embeddings": 128,
                                                  "word_embed_proj_dim": 64}),
        "phi": (tf.PhiConfig, tf.PhiForCausalLM, SIZE),
        "gptj": (tf.GPTJConfig, tf.GPTJForCausalLM, {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128,
                                                     "rotary_dim": 8}),
        "bert": (tf.BertConfig, tf.BertForMaskedLM, SIZE),
    }


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(512)


def make_family(path, family: str, tokenizer):
    config_cls, model_cls, size = configs()[family]
    torch.manual_seed(0)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    config = config_cls(vocab_size=len(tokenizer), **size, **special, attn_implementation="eager")
    model = model_cls(config).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


@pytest.mark.parametrize("family", list(configs()))
def test_stored_patterns_equal_hugging_face_attentions(family, tokenizer, tmp_path):
    hf = make_family(tmp_path / family, family, tokenizer)
    model = forward.load_model(str(tmp_path / family), "cpu", "float32")
    assert forward.is_causal(model) == (family != "bert")
    ca.compute_activations(TEXTS, model, tmp_path / "data", model_name=family, batch_size=3, progress=False)
    for text in TEXTS:
        pdir = datadir.prompt_dir(tmp_path / "data", family, lens.prompt_hash(text))
        ids = json.loads((pdir / "prompt.json").read_text())["token_ids"]
        with torch.inference_mode():
            oracle = torch.stack(hf(torch.tensor([ids]), output_attentions=True).attentions)[:, 0].numpy()
        stored = storage.Patterns(pdir / datadir.PATTERN_FILE)
        assert stored.layout == ("full" if family == "bert" else "tril")
        assert np.abs(stored.all() - oracle).max() <= 3.1e-5, family
        np.testing.assert_allclose(stored.all().sum(-1), 1, atol=len(ids) * 3.1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa", "bert"])
def test_stored_value_norms_equal_a_direct_computation(family, tokenizer, tmp_path):
    make_family(tmp_path / family, family, tokenizer)
    model = forward.load_model(str(tmp_path / family), "cpu", "float32")
    ca.compute_activations(TEXTS, model, tmp_path / "data", model_name=family, batch_size=3, progress=False,
                           heads="L0H*,L1H1")
    n_heads = model.cfg.n_heads
    for text in TEXTS:
        pdir = datadir.prompt_dir(tmp_path / "data", family, lens.prompt_hash(text))
        ids = json.loads((pdir / "prompt.json").read_text())["token_ids"]
        stored = np.fromfile(pdir / datadir.VALUE_NORMS_FILE, "<f4").reshape(2, n_heads, len(ids))
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n.endswith("attn.hook_v"))
        for layer in range(2):
            v = cache[f"blocks.{layer}.attn.hook_v"][0]  # [pos, kv_heads, d_head]
            group = n_heads // v.shape[1]
            w_o = model.blocks[layer].attn.W_O  # [heads, d_head, d_model]
            with torch.no_grad():
                direct = torch.stack([(v[:, h // group] @ w_o[h]).norm(dim=-1) for h in range(n_heads)]).numpy()
            for h in range(n_heads):
                if layer == 0 or h == 1:
                    np.testing.assert_allclose(stored[layer, h], direct[h], rtol=1e-4, atol=1e-5)
                else:
                    assert np.isnan(stored[layer, h]).all()  # not stored
