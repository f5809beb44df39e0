"""What each head reads and writes (projections.py) against oracles the code did not compute: the sample against its
definition worked out with hashlib, each head's three PCAs against numpy's SVD of the vectors TransformerLens's
run_with_cache gives at the sampled positions (z W_O multiplied out in d_model), each stored output projection
against that point's z W_O, a grouped-query model's rotated keys against the scores the model computed with them,
and shards run with another batch size against one run."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_compute_stats import TEXTS, run_main

from attention_lens import compute_activations as ca
from attention_lens import datadir, forward, lens, projections

MODEL = "model"
DEMO = Path(__file__).resolve().parent.parent / "demo" / "model"
SIZE, PER_PROMPT, SEED = 100, 5, 3
FLAGS = ["--projections-size", SIZE, "--projections-per-prompt", PER_PROMPT, "--projections-seed", SEED]


@pytest.fixture(scope="module")
def computed(tmp_path_factory) -> Path:
    """The demo model's statistics of 24 prompts and its projections at 100 points, at most 5 a prompt (so both
    limits cut), in batches of 8."""
    tmp = tmp_path_factory.mktemp("projections")
    prompts = tmp / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    run_main(DEMO, prompts, "--save-path", tmp / "data", "--patterns", "none", "--no-examples", "--batch-size", "8",
             *FLAGS)
    return tmp / "data"


@pytest.fixture(scope="module")
def demo_model():
    return forward.load_model(str(DEMO), "cpu", "float32")


def key64(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:16], 16)


def sample_by_definition(texts: list[str], n_tokens: dict[str, int]) -> list[tuple[str, int]]:
    """[(prompt hash, position)]: prompts by sha256("<seed>:<hash>"), each its PER_PROMPT positions after the first of
    smallest sha256("<seed>:<hash>:<position>"), until SIZE points (docs/data.md)."""
    out = []
    for h in sorted((lens.prompt_hash(t) for t in texts), key=lambda h: key64(f"{SEED}:{h}")):
        take = min(PER_PROMPT, SIZE - len(out), n_tokens[h] - 1)
        chosen = sorted(range(1, n_tokens[h]), key=lambda p: key64(f"{SEED}:{h}:{p}"))[:max(take, 0)]
        out += [(h, p) for p in sorted(chosen)]
    return out


def points_of(data: Path, model: str = MODEL) -> list[tuple[str, int]]:
    block = projections.read_points(data, model)["points"]
    return [(block["prompts"][i]["hash"], p) for i, p in zip(block["prompt"], block["position"])]


def lens_vectors(model, data: Path, model_dir: str, texts: list[str]) -> dict[str, np.ndarray]:
    """At every stored point, [points, layers, heads, ...] from TransformerLens's run_with_cache on its prompt alone
    (point_vectors)."""
    index = projections.read_points(data, model_dir)
    block, by_hash, rows = index["points"], {lens.prompt_hash(t): t for t in texts}, []
    for i, prompt in enumerate(block["prompts"]):
        ids = model.to_tokens(by_hash[prompt["hash"]])[0, :prompt["n_tokens"]]
        with torch.no_grad():
            _, cache = model.run_with_cache(ids[None], return_type=None)
        rows += [point_vectors(model, cache, index, pos)
                 for p, pos in zip(block["prompt"], block["position"]) if p == i]
    return {name: np.array([r[name] for r in rows]) for name in rows[0]}


def point_vectors(model, cache, index: dict, pos: int) -> dict[str, np.ndarray]:
    """Each head's query at `pos` (the hook projections.json names), the key of its largest weight (its kv head's,
    repeat_interleave'd as Hugging Face's repeat_kv), z W_O multiplied out, that weight and key position, and the
    key's score recomputed as q.k / sqrt(d) next to the score the model computed (hook_attn_scores): [layers, heads]."""
    out = {name: [] for name in ("query", "key", "output", "weight", "key_position", "score", "model_score")}
    w_o, d_head = model.W_O.detach(), model.cfg.d_head
    for layer in range(index["n_layers"]):
        names = (index["query_hook"], index["key_hook"], "hook_pattern", "hook_z", "hook_attn_scores")
        hooks = {name: cache[f"blocks.{layer}.attn.{name}"][0] for name in names}
        keys = hooks[index["key_hook"]]
        keys = keys.repeat_interleave(index["n_heads"] // keys.shape[1], 1)
        for name in out:
            out[name].append([])
        for head in range(index["n_heads"]):
            row = hooks["hook_pattern"][head, pos]
            k = int(row.argmax())
            q, key = hooks[index["query_hook"]][pos, head], keys[k, head]
            for name, value in [("query", q), ("key", key), ("output", hooks["hook_z"][pos, head] @ w_o[layer, head]),
                                ("weight", row[k]), ("key_position", k), ("score", q @ key / d_head ** 0.5),
                                ("model_score", hooks["hook_attn_scores"][head, pos, k])]:
                out[name][-1].append(np.asarray(value, np.float64))
    return {name: np.array(v) for name, v in out.items()}


def assert_pca_of(stored: projections.Pca, vectors: np.ndarray) -> None:
    """The stored projection is numpy's SVD of the centred vectors (each component up to its sign), to float16's
    precision; each vector projected by the stored mean and components lands on its stored point."""
    centred = vectors - vectors.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    scale = np.abs(u[:, :2] * s[:2]).max()
    for c in range(2):
        oracle = u[:, c] * s[c]
        assert (s[c] - s[c + 1]) / s[c] > 1e-3  # a component numpy itself pins down, up to its sign
        sign = np.sign(stored.coords[:, c] @ oracle)
        np.testing.assert_allclose(stored.coords[:, c], sign * oracle, atol=2e-3 * scale)
    np.testing.assert_allclose(stored.explained, s[:2] ** 2 / (s ** 2).sum(), atol=1e-4)
    np.testing.assert_allclose((vectors - stored.mean) @ stored.components.T, stored.coords, atol=3e-3 * scale)
    np.testing.assert_allclose(stored.components @ stored.components.T, np.eye(2), atol=2e-3)


def test_the_sample_is_the_smallest_keys_prompt_by_prompt(computed, demo_model):
    index = projections.read_points(computed, MODEL)
    block = index["points"]
    n_tokens = {p["hash"]: p["n_tokens"] for p in block["prompts"]}
    for text in TEXTS:
        n_tokens.setdefault(lens.prompt_hash(text), len(demo_model.to_tokens(text)[0]))
    assert points_of(computed) == sample_by_definition(TEXTS, n_tokens)
    assert index["n_points"] == SIZE and index["n_prompts"] == len(TEXTS)
    assert max(np.bincount(block["prompt"])) == PER_PROMPT and len(block["prompts"]) >= SIZE // PER_PROMPT
    for p in block["prompts"]:  # each chosen prompt's tokens, as its own tokenizer decodes them one by one
        text = next(t for t in TEXTS if lens.prompt_hash(t) == p["hash"])
        assert p["tokens"] == [demo_model.tokenizer.decode([t]) for t in demo_model.to_tokens(text)[0].tolist()]


def test_each_projection_is_numpys_pca_of_the_vectors_transformer_lens_computes(computed, demo_model):
    """Query, key and output z W_O of every head, recomputed by TransformerLens on each prompt alone. The demo model
    (GPT-NeoX) rotates its queries and keys inside the attention, where the bridge has no hook: the file says so."""
    index = projections.read_points(computed, MODEL)
    assert (index["query_hook"], index["key_hook"], index["rotary"]) == ("hook_q", "hook_k", True)
    assert index["sets"] == ["query", "key", "output"] and index["dims"] == [32, 32, 128]
    size = datadir.projections_path(computed, MODEL).stat().st_size
    assert size == index["heads_at"] + 2 * 4 * index["head_bytes"]
    oracle = lens_vectors(demo_model, computed, MODEL, TEXTS)
    for layer in range(2):
        for head in range(4):
            stored = projections.read_head_projections(computed, MODEL, layer, head)
            np.testing.assert_array_equal(stored.key_position, oracle["key_position"][:, layer, head])
            np.testing.assert_allclose(stored.weight, oracle["weight"][:, layer, head], atol=1 / 65535)
            for name in ("query", "key", "output"):
                assert_pca_of(stored.sets[name], oracle[name][:, layer, head])


def test_grouped_query_heads_read_their_kv_heads_rotated(tmp_path):
    """A Llama with 4 query heads on 2 kv heads: the keys are hook_rot_k's (rotated, as the scores use them) of each
    query head's kv head; q.k / sqrt(d) of the recomputed vectors is the score the model computed there."""
    import transformers as tf
    from tiny_model import train_tokenizer

    tokenizer = train_tokenizer(512)
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    tf.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    model = forward.load_model(str(tmp_path / "llama"), "cpu", "float32")
    ca.compute_activations(TEXTS, model, tmp_path / "data", model_name="llama", patterns="none", progress=False)
    projections.compute_projections(model, tmp_path / "data", "llama", projections.Sampling(60, 4), 5, False)
    index = projections.read_points(tmp_path / "data", "llama")
    assert (index["query_hook"], index["key_hook"], index["n_points"]) == ("hook_rot_q", "hook_rot_k", 60)
    oracle = lens_vectors(model, tmp_path / "data", "llama", TEXTS)
    np.testing.assert_allclose(oracle["score"], oracle["model_score"], atol=1e-4)
    for layer in range(2):
        for head in range(4):
            stored = projections.read_head_projections(tmp_path / "data", "llama", layer, head)
            np.testing.assert_array_equal(stored.key_position, oracle["key_position"][:, layer, head])
            for name in ("query", "key", "output"):
                assert_pca_of(stored.sets[name], oracle[name][:, layer, head])


def test_shards_in_other_batches_project_what_one_run_does(computed, tmp_path, capsys):
    """Two shards in batches of 3 (no projections: they say to run --projections), then --projections: the same
    points and, to float16's precision, the same projections; a second --projections runs nothing."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    data = tmp_path / "data"
    for shard in ("1/2", "2/2"):
        run_main(DEMO, prompts, "--save-path", data, "--shard", shard, "--patterns", "none", "--batch-size", "3",
                 *FLAGS)
        assert not datadir.projections_index_path(data, MODEL).exists()
    assert "--examples --projections" in capsys.readouterr().err
    run_main(DEMO, "--projections", "--save-path", data, "--batch-size", "3", *FLAGS)
    assert points_of(data) == points_of(computed)
    for layer in range(2):
        for head in range(4):
            a, b = (projections.read_head_projections(d, MODEL, layer, head) for d in (computed, data))
            np.testing.assert_array_equal(a.key_position, b.key_position)
            for name in ("query", "key", "output"):
                scale = np.abs(a.sets[name].coords).max()
                np.testing.assert_allclose(a.sets[name].coords, b.sets[name].coords, atol=2e-3 * scale)
    before = datadir.projections_path(data, MODEL).stat().st_mtime_ns
    run_main(DEMO, "--projections", "--save-path", data, *FLAGS)
    assert datadir.projections_path(data, MODEL).stat().st_mtime_ns == before


def test_projections_flags_are_checked(tmp_path, capsys):
    for args, words in [(["x.jsonl", "--projections"], "no PROMPTS"), (["--projections"], "has no statistics"),
                        (["--projections", "--no-projections"], "contradict"),
                        (["x.jsonl", "--projections-size", "0"], "--projections-size")]:
        with pytest.raises(SystemExit) as e:
            lens.run_main(lambda a=args: run_main(DEMO, *a, "--save-path", tmp_path / "d"), "")
        assert e.value.code != 0 and words in f"{e.value.code} {capsys.readouterr().err}"


def test_pca_in_d_head_dimensions_equals_pca_of_the_product():
    """pcas(z, W) works in z's dimensions, heads at once; numpy's SVD of each head's z @ W itself, d_model wide, is
    the oracle."""
    rng = np.random.default_rng(0)
    z, w = rng.normal(size=(300, 3, 8)) * np.arange(1, 9), rng.normal(size=(3, 8, 40))
    for head, got in enumerate(projections.pcas(z, w)):
        assert_pca_of(got, z[:, head] @ w[head])
        np.testing.assert_allclose(got.mean, (z[:, head] @ w[head]).mean(0), atol=1e-9)
    for head, got in enumerate(projections.pcas(z)):
        assert_pca_of(got, z[:, head])
