"""Copying and copy suppression from the weights alone (forward.copying_scores -> <model>/weight_scores.json -> the
"copying" and "copy-suppression" kinds of heads.json), against an oracle nobody here wrote: numpy's eigenvalues of
the vocab x vocab OV circuit W_E W_V W_O W_U multiplied out, and heads built by hand to copy or to suppress."""
import json

import numpy as np
import pytest
import torch
import transformers as tf
from test_compute import InterfaceOnly  # a wrapper: the interface, no W_E, no blocks
from tiny_model import train_tokenizer

from attention_lens import build_index, datadir, forward, kinds, lens
from attention_lens import compute_activations as ca

D_MODEL, D_HEAD = 64, 16  # no score of 8,000 random heads of d_head 16 reached 0.65 (docs/kinds.md)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(512)


def orthonormal(seed: int) -> torch.Tensor:
    """Q [D_MODEL, D_HEAD] with orthonormal columns: W_V = Q and W_O = Q^T make the full circuit W_E Q Q^T W_U."""
    return torch.linalg.qr(torch.randn(D_MODEL, D_HEAD, generator=torch.Generator().manual_seed(seed)))[0]


def build_gpt2(model, q: torch.Tensor) -> None:
    """L0H0 reads and writes Q (W_V W_O = Q Q^T), L0H1 writes -Q Q^T; with tied embeddings (W_U = W_E^T) their full
    circuits are +-(Q^T W_E^T)^T (Q^T W_E^T): semidefinite, every eigenvalue of one sign."""
    attn = model.transformer.h[0].attn  # Conv1D weights are [in, out]; the values are c_attn's last third
    attn.c_attn.weight[:, 2 * D_MODEL:2 * D_MODEL + 2 * D_HEAD] = torch.cat([q, q], 1)
    attn.c_proj.weight[:2 * D_HEAD] = torch.cat([q.T, -q.T])


def build_llama(model, q: torch.Tensor) -> None:
    """Grouped-query: query heads 0 and 1 both read kv head 0 (Hugging Face's repeat_kv); kv head 0 reads Q, head 0
    writes Q^T and head 1 -Q^T. A wrong head-to-kv map gives head 1 a random kv head instead."""
    attn = model.model.layers[0].self_attn  # nn.Linear weights are [out, in]
    attn.v_proj.weight[:D_HEAD] = q.T
    attn.o_proj.weight[:, :2 * D_HEAD] = torch.cat([q, -q], 1)


FAMILIES = {  # name: (config, model class, how L0H0 and L0H1 are built to copy and to suppress, or None)
    "gpt2-tied": (lambda v, s: tf.GPT2Config(vocab_size=v, n_embd=D_MODEL, n_layer=2, n_head=4, n_positions=128, **s),
                  tf.GPT2LMHeadModel, build_gpt2),
    "llama-gqa-tied": (lambda v, s: tf.LlamaConfig(vocab_size=v, hidden_size=D_MODEL, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                                   max_position_embeddings=128, tie_word_embeddings=True, **s),
                       tf.LlamaForCausalLM, build_llama),
    "neox-untied": (lambda v, s: tf.GPTNeoXConfig(vocab_size=v, hidden_size=D_MODEL, num_hidden_layers=2,
                                                  num_attention_heads=4, intermediate_size=128,
                                                  max_position_embeddings=128, **s),
                    tf.GPTNeoXForCausalLM, None),
}


def checkpoint(path, family: str, tokenizer):
    """A random-weight checkpoint of the family, its heads L0H0 and L0H1 built to copy and to suppress where it says
    how; loaded as compute_activations.py loads a model."""
    config, model_class, build = FAMILIES[family]
    torch.manual_seed(0)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    hf = model_class(config(len(tokenizer), special))
    if build:
        with torch.no_grad():
            build(hf, orthonormal(1))
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return forward.load_model(str(path), "cpu", "float32")


def explicit_scores(model) -> np.ndarray:
    """The oracle: each head's vocab x vocab W_E W_V W_O W_U multiplied out in float64 from TransformerLens's own OV
    circuit (model.OV, which maps grouped-query heads itself), its eigenvalues e by numpy; [layers, heads, 2] of
    sum max(Re e, 0) / sum |e| and sum max(-Re e, 0) / sum |e| (docs/kinds.md)."""
    w_e, w_u = (w.detach().double().numpy() for w in (model.W_E, model.W_U))
    a, b = (w.detach().double().numpy() for w in (model.OV.A, model.OV.B))
    out = np.zeros((*a.shape[:2], 2))
    for l, h in np.ndindex(*a.shape[:2]):
        e = np.linalg.eigvals(w_e @ a[l, h] @ b[l, h] @ w_u)
        out[l, h] = [np.maximum(e.real, 0).sum(), np.maximum(-e.real, 0).sum()] / np.abs(e).sum()
    return out


def stored_scores(save_path, model_dir: str) -> np.ndarray:
    scores = json.loads(datadir.weight_scores_path(save_path, model_dir).read_text())
    return np.stack([np.array(scores["copying"]), np.array(scores["copy_suppression"])], -1)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_scores_are_the_eigenvalues_of_the_multiplied_out_circuit(family, tokenizer, tmp_path):
    model = checkpoint(tmp_path / family, family, tokenizer)
    ca.compute_activations(["The cat sat on the mat."], model, tmp_path / "data", model_name=family, progress=False)
    assert model.W_E.shape[0] == len(tokenizer) > D_MODEL and model.cfg.d_head == D_HEAD  # vocab x vocab
    np.testing.assert_allclose(stored_scores(tmp_path / "data", family), explicit_scores(model), atol=2e-6)


@pytest.mark.parametrize("family", ["gpt2-tied", "llama-gqa-tied"])
def test_heads_built_to_copy_and_to_suppress_score_one_and_are_labelled(family, tokenizer, tmp_path):
    model = checkpoint(tmp_path / family, family, tokenizer)
    ca.compute_activations(kinds.probe_prompts(), model, tmp_path / "data", model_name=family, progress=False)
    build_index.build_index(tmp_path / "data")
    info = lens.read_json(datadir.heads_json_path(tmp_path / "data", family))
    table = {k["name"]: k for k in info["kinds"]}
    assert table["copying"]["threshold"] == table["copy-suppression"]["threshold"] == 0.7
    assert "Elhage" in table["copying"]["source"] and "McDougall" in table["copy-suppression"]["source"]
    labels = {(l, h): {k["name"]: k["score"] for k in head["kinds"]} for l, row in enumerate(info["heads"])
              for h, head in enumerate(row)}
    assert labels[0, 0]["copying"] >= 0.999 and "copy-suppression" not in labels[0, 0]
    assert labels[0, 1]["copy-suppression"] >= 0.999 and "copying" not in labels[0, 1]
    others = {head: found for head, found in labels.items() if head not in [(0, 0), (0, 1)]}
    assert not [head for head, found in others.items() if {"copying", "copy-suppression"} & set(found)]


def test_each_checkpoint_is_scored_once_and_force_recomputes(tmp_path):
    data = tmp_path / "data"
    for step in (0, 4000):
        model = forward.load_model("demo", "cpu", "float32", checkpoint=step)
        ca.compute_activations(["One prompt."], model, data, model_name=f"demo@step{step}", progress=False)
    untrained, trained = stored_scores(data, "demo_step0"), stored_scores(data, "demo_step4000")
    assert untrained.max() < 0.7 <= trained[..., 0].max()  # random initialisation copies nothing
    path = datadir.weight_scores_path(data, "demo_step4000")
    path.write_text(json.dumps({"copying": [[0.5] * 4] * 2, "copy_suppression": [[0.5] * 4] * 2}))
    ca.compute_activations(["One prompt."], model, data, model_name="demo@step4000", progress=False)
    assert (stored_scores(data, "demo_step4000") == 0.5).all()  # the model's weights have not changed
    ca.compute_activations(["One prompt."], model, data, model_name="demo@step4000", progress=False, force=True)
    np.testing.assert_array_equal(stored_scores(data, "demo_step4000"), trained)


def test_a_model_without_readable_weights_gets_no_scores_and_a_note(tiny_checkpoint, tmp_path, capsys):
    model = InterfaceOnly(forward.load_model(str(tiny_checkpoint), "cpu", "float32"))
    ca.compute_activations(["The cat sat on the mat."], model, tmp_path, model_name="wrapped", progress=False)
    assert "note: wrapped: no copying scores" in capsys.readouterr().err
    assert not datadir.weight_scores_path(tmp_path, "wrapped").exists()
    build_index.build_index(tmp_path)
    info = lens.read_json(datadir.heads_json_path(tmp_path, "wrapped"))
    at = [info["features"].index(name) for name in kinds.WEIGHT_FEATURES]
    assert all(head["features"][i] is None for row in info["heads"] for head in row for i in at)
