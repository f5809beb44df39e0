"""compute_activations.py: batched patterns equal single-prompt ones, storage, resume, sharding, bad input."""
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attention_lens import compute_activations as ca
from attention_lens import datadir, forward, lens, prompt_sources, storage

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "The cat sat on the mat.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "def add(a, b):\n    return a + b",
    "Hi",
    "Attention patterns show which earlier tokens each token reads from, and how strongly.",
]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return forward.load_model(str(tiny_checkpoint), "cpu", "float32")


def single_patterns(model, text: str) -> np.ndarray:
    """Oracle: an unbatched, full run_with_cache of one prompt, [layers, heads, n, n] float32."""
    _, cache = model.run_with_cache(text, names_filter=forward.is_pattern_hook)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0]
                        for l in range(model.cfg.n_layers)]).numpy()


def write_prompts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "meta": {"i": i}}) + "\n" for i, t in enumerate(texts)))
    return path


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """compute_activations.py with these flags on the given prompts only (--no-probe: counts are the test's own)."""
    return subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), *args, "--no-probe"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def prompt_dirs(save_path: Path) -> list[Path]:
    return sorted(save_path.glob("*/prompts/*"))


def test_batched_patterns_equal_single_prompt_patterns(model):
    ids = [ca.tokenize(model.to_tokens, t) for t in TEXTS]
    width = max(map(len, ids))
    tokens = torch.full((len(ids), width), model.tokenizer.pad_token_id)
    for i, row in enumerate(ids):
        tokens[i, :len(row)] = torch.tensor(row)
    layers = {}
    forward.forward_patterns(model, tokens, lambda layer, pattern: layers.update({layer: pattern.clone()}), 1)
    batched = torch.stack([layers[0], layers[1]]).numpy()
    assert batched.shape == (2, len(TEXTS), 4, width, width)
    for i, text in enumerate(TEXTS):
        n = len(ids[i])
        single = single_patterns(model, text)
        assert single.shape == (2, 4, n, n)
        np.testing.assert_allclose(batched[:, i, :, :n, :n], single, atol=1e-4, rtol=0)


def test_library_call_stores_patterns_and_prompt_json(model, tmp_path):
    summary = ca.compute_activations([{"text": t, "meta": {"i": i}} for i, t in enumerate(TEXTS)],
                                     model, tmp_path, model_name="tiny", batch_size=2, progress=False)
    assert summary["done"] == len(TEXTS) and summary["skipped"] == 0
    cfg = json.loads((tmp_path / "tiny" / "model_cfg.json").read_text())
    assert {k: cfg[k] for k in ["n_layers", "n_heads", "d_model", "d_head", "n_ctx"]} == \
        {"n_layers": 2, "n_heads": 4, "d_model": 32, "d_head": 8, "n_ctx": 128}
    assert cfg["model_name"] == "tiny" and cfg["default_prepend_bos"] is True
    for i, text in enumerate(TEXTS):
        h = lens.prompt_hash(text)
        info = json.loads((datadir.prompt_dir(tmp_path, "tiny", h) / "prompt.json").read_text())
        assert info["text"] == text and info["hash"] == h and info["meta"] == {"i": i}
        assert info["tokens"][0] == "<|endoftext|>" and "".join(info["tokens"][1:]) == text
        assert info["n_tokens"] == len(info["tokens"]) == len(info["token_ids"])
        stored = storage.load_patterns(tmp_path, "tiny", h)
        single = single_patterns(model, text)
        assert np.abs(stored.all() - single).max() < 1e-3
        np.testing.assert_array_equal(stored.head(1, 3), stored.all()[1, 3])


class InterfaceOnly:
    """Exposes only the shared TransformerLens interface, like a wrapper (auto_circuit's PatchableModel)."""

    def __init__(self, model):
        self._model = model
        self.cfg, self.tokenizer = model.cfg, model.tokenizer

    def run_with_cache(self, *args, **kwargs):
        return self._model.run_with_cache(*args, **kwargs)

    def to_tokens(self, *args, **kwargs):
        return self._model.to_tokens(*args, **kwargs)

    def to_str_tokens(self, *args, **kwargs):
        return self._model.to_str_tokens(*args, **kwargs)


def test_any_object_with_the_interface_works(model, tmp_path):
    ca.compute_activations(TEXTS[:3], InterfaceOnly(model), tmp_path, model_name="wrapped", progress=False)
    for text in TEXTS[:3]:
        stored = storage.load_patterns(tmp_path, "wrapped", lens.prompt_hash(text)).all()
        assert np.abs(stored - single_patterns(model, text)).max() < 1e-3


def test_long_prompt_is_truncated_with_warning(model, tmp_path, capsys):
    text = "word " * 300
    ca.compute_activations([text], model, tmp_path, model_name="tiny", progress=False)
    assert "more than n_ctx=128: truncated" in capsys.readouterr().err
    info = json.loads((datadir.prompt_dir(tmp_path, "tiny", lens.prompt_hash(text)) / "prompt.json").read_text())
    assert info["n_tokens"] == 128 and info["truncated"] is True
    assert storage.load_patterns(tmp_path, "tiny", info["hash"]).n_tokens == 128


def test_script_runs_skips_and_forces(tiny_checkpoint, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", TEXTS)
    first = run_script(str(tiny_checkpoint), str(prompts), "--save-path", "data", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"{len(TEXTS)} prompts computed, 0 skipped" in first.stdout
    assert len(prompt_dirs(tmp_path / "data")) == len(TEXTS)
    assert "prompts/s" in first.stderr or "prompt/s" in first.stderr  # the progress bar
    again = run_script(str(tiny_checkpoint), str(prompts), "--save-path", "data", cwd=tmp_path)
    assert f"0 prompts computed, {len(TEXTS)} skipped" in again.stdout
    forced = run_script(str(tiny_checkpoint), str(prompts), "--save-path", "data", "--force",
                        "--n-samples", "2", cwd=tmp_path)
    assert "2 prompts computed, 0 skipped" in forced.stdout


def test_shards_partition_the_prompts(model, tmp_path):
    texts = [f"Prompt number {i} about something." for i in range(20)]
    prompts = [{"text": t} for t in texts]
    shards = [prompt_sources.select_prompts(prompts, None, False, 0, (k, 3)) for k in (1, 2, 3)]
    assert sorted(p["text"] for s in shards for p in s) == sorted(texts)
    assert all(len(s) > 0 for s in shards)
    for shard in shards:  # three jobs, one data dir
        ca.compute_activations(shard, model, tmp_path, model_name="tiny", progress=False)
    assert len(prompt_dirs(tmp_path)) == 20


def test_interrupted_run_resumes_without_redoing_finished_prompts(model, tmp_path):
    ca.compute_activations(TEXTS, model, tmp_path, model_name="tiny", progress=False)
    # What a kill leaves: a temp file mid-write, and a prompt whose prompt.json was not yet written.
    victim = datadir.prompt_dir(tmp_path, "tiny", lens.prompt_hash(TEXTS[2]))
    (victim / "prompt.json").unlink()
    (victim / f".{datadir.PATTERN_FILE}.tmp123").write_bytes(b"half")
    before = {d: (d / datadir.PATTERN_FILE).stat().st_mtime_ns for d in prompt_dirs(tmp_path) if d != victim}
    summary = ca.compute_activations(TEXTS, model, tmp_path, model_name="tiny", progress=False)
    assert (summary["done"], summary["skipped"]) == (1, len(TEXTS) - 1)
    assert {d: (d / datadir.PATTERN_FILE).stat().st_mtime_ns for d in before} == before
    assert json.loads((victim / "prompt.json").read_text())["text"] == TEXTS[2]


def test_write_atomic_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "x" / "patterns.bin"
    lens.write_atomic(target, b"old")

    def killed(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(lens.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        lens.write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["patterns.bin"]  # no .tmp<pid> left behind


def test_pattern_storage_round_trip_and_size(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    logits = np.where(np.tril(np.ones((n, n), bool)), rng.normal(0, 3, (3, 4, n, n)), -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    data = storage.encode_patterns(p)
    assert len(data) < p.size  # under half the bytes of float16 for the full square
    lens.write_atomic(tmp_path / "p.bin", data)
    stored = storage.Patterns(tmp_path / "p.bin")
    assert (stored.n_layers, stored.n_heads, stored.n_tokens, stored.layout) == (3, 4, n, "tril")
    assert np.abs(stored.all() - p).max() <= 0.5 / storage.PATTERN_SCALE + 1e-7
    full = rng.uniform(0, 1, (1, 2, 7, 7)).astype(np.float32)  # bidirectional: upper triangle kept
    lens.write_atomic(tmp_path / "f.bin", storage.encode_patterns(full))
    assert np.abs(storage.Patterns(tmp_path / "f.bin").head(0, 1) - full[0, 1]).max() < 1e-4


def test_raw_documents_split_at_whitespace():
    doc = " ".join(f"word{i}" for i in range(400))
    pieces = prompt_sources.split_document(doc, 50, 200)
    assert all(50 <= len(p) <= 200 for p in pieces)
    assert " ".join(pieces) == doc


@pytest.mark.parametrize("content, message", [
    (None, "no such prompts file"),
    ("", "no prompts in file"),
    ('{"text": "ok"}\n{"text": broken\n', "p.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n\n{"meta": {}}\n', 'p.jsonl:3: needs a non-empty string "text"'),
    ('["a list"]\n', "p.jsonl:1: expected a JSON object"),
    ('{"text": "ok"}\n{"text": "caf\xe9"}\n'.encode("latin-1"), "p.jsonl:2: not UTF-8 text (byte 0xe9)"),
    ('{"text": "ok"}\n{"text": "\\ud800"}\n', "p.jsonl:2: holds a lone surrogate"),
    ('{"text": "ok", "meta": ' + "[" * 5000 + "]" * 5000 + "}\n", "p.jsonl:1: nested too deeply to read"),
])
def test_bad_prompt_files_fail_with_one_line(tmp_path, content, message):
    if content is not None:
        (tmp_path / "p.jsonl").write_bytes(content if isinstance(content, bytes) else content.encode())
    r = run_script("gpt2", "p.jsonl", "--save-path", "data", cwd=tmp_path)
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("model_arg, extra, message", [
    ("no-such-model-xyz", [], "cannot load model 'no-such-model-xyz'"),
    ("EMPTY_DIR", [], "is not a Hugging Face checkpoint"),
    ("./missing-dir", [], "no such model directory"),
    ("CKPT", ["--shard", "3/2"], "--shard 3/2: expected K/N"),
    ("CKPT", ["--heads", "L2H0"], "--heads L2H0: layers 2 out of range (the model's layers are 0-1)"),
    ("CKPT", ["--heads", "L0H0-9"], "--heads L0H0-9: heads 0-9 out of range (the model's heads are 0-3)"),
    ("CKPT", ["--heads", "layer0"], "--heads layer0: 'layer0' is not a head spec"),
    ("CKPT", ["--checkpoint", "1000"], "--checkpoint 1000: "),
    ("gpt2", ["--checkpoint", "1000"], "--checkpoint 1000: model 'gpt2' has no training checkpoints"),
    ("pythia-70m", ["--checkpoint", "999"], "--checkpoint 999: not a checkpoint of pythia-70m"),
    ("CKPT", ["--checkpoint", "late"], "--checkpoint late: expected training steps"),
    ("CKPT", ["--device-map", "auto", "--device", "cpu"], "--device-map and --device are exclusive"),
    ("CKPT", ["--device", "cuda"] if not torch.cuda.is_available() else ["--max-tokens", "0"], "error: --"),
    ("CKPT", ["--max-tokens", "0"], "error: argument --max-tokens: expected a positive integer, got '0'"),
    ("CKPT", ["--batch-size", "0"], "error: argument --batch-size: expected a positive integer, got '0'"),
    ("CKPT", ["--n-samples", "-1"], "error: argument --n-samples: expected a positive integer, got '-1'"),
    ("CKPT", ["--no-such-flag"], "error: unrecognized arguments: --no-such-flag (see compute_activations.py --help)"),
    ("CKPT", ["--device", "tpu"], "error: --device tpu: "),
    ("CKPT", ["--save-path", ""], "error: argument --save-path: empty; name the data dir"),
    ("CKPT", ["--save-path", "."], "error: --save-path .: holds files and is not a data dir"),
])
def test_bad_model_or_flags_fail_with_one_line(tiny_checkpoint, tmp_path, model_arg, extra, message):
    write_prompts(tmp_path / "p.jsonl", TEXTS[:2])
    (tmp_path / "EMPTY_DIR").mkdir()
    model_arg = str(tiny_checkpoint) if model_arg == "CKPT" else model_arg
    r = run_script(model_arg, "p.jsonl", "--save-path", "data", *extra, cwd=tmp_path)
    assert r.returncode != 0
    assert message in r.stderr and r.stderr.strip().splitlines()[-1].startswith("error:"), r.stderr
    assert prompt_dirs(tmp_path / "data") == []


def test_nan_and_infinity_in_meta_are_kept_as_strings_and_the_index_stays_json(tiny_checkpoint, tmp_path):
    (tmp_path / "p.jsonl").write_text('{"text": "one two three", "meta": {"score": NaN, "hi": Infinity}}\n'
                                      '{"text": "four five", "meta": {"lo": -Infinity}}\n')
    r = run_script(str(tiny_checkpoint), "p.jsonl", "--save-path", "data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = lens.model_dir_name(str(tiny_checkpoint))
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a file the site reads"))
    rows = [strict(line) for path in (tmp_path / "data" / model / "index" / "rows").iterdir()
            for line in path.read_text().splitlines()]
    assert sorted(json.dumps(r["meta"], sort_keys=True) for r in rows) == [
        '{"hi": "Infinity", "score": "NaN"}', '{"lo": "-Infinity"}']


def test_a_dir_holding_other_files_is_not_written_into(tiny_checkpoint, tmp_path):
    """--save-path naming a folder that is not a data dir (a site, a home dir) is refused before any write."""
    write_prompts(tmp_path / "p.jsonl", TEXTS[:2])
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("mine")
    r = run_script(str(tiny_checkpoint), "p.jsonl", "--save-path", "www", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.startswith("error: --save-path www: holds files and is not a data dir")
    assert sorted(p.name for p in (tmp_path / "www").iterdir()) == ["index.html"]
    assert (tmp_path / "www" / "index.html").read_text() == "mine"


def test_a_repeated_text_with_other_meta_is_computed_once_and_said(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"text": "same", "meta": {"a": 1}}\n{"text": "other"}\n'
                                      '{"text": "same", "meta": {"a": 2}}\n{"text": "same", "meta": {"a": 1}}\n')
    prompts = prompt_sources.load_prompts(tmp_path / "p.jsonl")
    assert prompts == [{"text": "same", "meta": {"a": 1}}, {"text": "other", "meta": {}}]
    err = capsys.readouterr().err
    assert err == f"warning: {tmp_path / 'p.jsonl'}:3: the same text as line 1: computed once, with line 1's meta\n"


def test_a_prompts_file_with_a_byte_order_mark_is_read(tmp_path):
    """Windows tools write UTF-8 with a BOM: the first line is read like the others."""
    (tmp_path / "p.jsonl").write_text("\ufeff" + json.dumps({"text": "caf\u00e9"}) + "\n", encoding="utf-8")
    assert prompt_sources.load_prompts(tmp_path / "p.jsonl") == [{"text": "caf\u00e9", "meta": {}}]


@pytest.mark.parametrize("save_path, message", [
    ("afile", "--save-path afile: a file, not a directory"),
    ("afile/data", "--save-path afile/data: cannot be created ("),
    ("/proc/nope", "--save-path /proc/nope: cannot be created or written ("),  # os.access says yes to root
])
def test_a_save_path_that_cannot_be_a_data_dir_fails_before_the_model_loads(tiny_checkpoint, tmp_path, save_path,
                                                                             message):
    write_prompts(tmp_path / "p.jsonl", TEXTS[:2])
    (tmp_path / "afile").write_text("mine")
    r = run_script(str(tiny_checkpoint), "p.jsonl", "--save-path", save_path, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.strip().startswith(f"error: {message}"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "afile").read_text() == "mine"


def test_heads_stores_only_those_and_more_heads_recompute(model, tmp_path):
    ca.compute_activations(TEXTS[:2], model, tmp_path, model_name="tiny", heads="L1H0-1", progress=False)
    pdir = datadir.prompt_dir(tmp_path, "tiny", lens.prompt_hash(TEXTS[1]))
    stored = storage.Patterns(pdir / datadir.PATTERN_FILE)
    assert stored.heads == [(1, 0), (1, 1)] and not stored.stored(0, 0)
    assert json.loads((pdir / "prompt.json").read_text())["heads"] == "L1H0,L1H1"
    with pytest.raises(storage.NotStored):
        stored.head(0, 0)
    oracle = single_patterns(model, TEXTS[1])
    assert np.abs(stored.head(1, 1) - oracle[1, 1]).max() <= 3.1e-5
    again = ca.compute_activations(TEXTS[:2], model, tmp_path, model_name="tiny", heads="L1H1", progress=False)
    assert (again["done"], again["skipped"]) == (0, 2)  # heads already held: nothing to do
    more = ca.compute_activations(TEXTS[:2], model, tmp_path, model_name="tiny", heads="L0H2", progress=False)
    assert more["done"] == 2
    stored = storage.Patterns(pdir / datadir.PATTERN_FILE)
    assert stored.heads == [(0, 2), (1, 0), (1, 1)]  # what it had, plus what was asked
    assert np.abs(stored.head(0, 2) - oracle[0, 2]).max() <= 3.1e-5
    everything = ca.compute_activations(TEXTS[:2], model, tmp_path, model_name="tiny", progress=False)
    assert everything["done"] == 2
    assert "heads" not in json.loads((pdir / "prompt.json").read_text())
    assert np.abs(storage.Patterns(pdir / datadir.PATTERN_FILE).all() - oracle).max() <= 3.1e-5


def test_max_tokens_truncates_and_the_estimate_says_how_to_shrink(model, tmp_path, capsys):
    ca.compute_activations([TEXTS[4]], model, tmp_path, model_name="tiny", max_tokens=6)
    err = capsys.readouterr().err
    assert "more than --max-tokens=6: truncated" in err
    assert "tiny: 1 prompts, 6 tokens, 8 heads each: at most 336 B to write" in err  # 8 heads x 21 values x 2 B
    assert "--heads SPEC stores only some heads" in err
    info = json.loads((datadir.prompt_dir(tmp_path, "tiny", lens.prompt_hash(TEXTS[4])) / "prompt.json").read_text())
    assert info["n_tokens"] == 6 and info["truncated"] is True


def test_loader_gets_checkpoint_revision_and_placement(tiny_checkpoint, monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge
    calls = []
    real = TransformerBridge.boot_transformers

    def boot(name, **kwargs):
        calls.append((name, kwargs))
        return real(str(tiny_checkpoint), device="cpu")
    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    forward.load_model("pythia-70m", None, "float32", revision=None, checkpoint=1000, n_devices=2, device_map="auto")
    forward.load_model("gpt2", "cpu", "float32", revision="main")
    assert calls[0] == ("pythia-70m", {"dtype": torch.float32, "device_map": "auto", "n_devices": 2,
                                       "checkpoint_value": 1000})
    assert calls[1] == ("gpt2", {"dtype": torch.float32, "device": "cpu", "revision": "main"})


def test_device_map_places_a_local_checkpoint_on_the_cpu(tiny_checkpoint, tmp_path):
    model = forward.load_model(str(tiny_checkpoint), None, "float32", device_map="cpu")
    ca.compute_activations(TEXTS[:2], model, tmp_path, model_name="mapped", progress=False)
    stored = storage.load_patterns(tmp_path, "mapped", lens.prompt_hash(TEXTS[1])).all()
    assert np.abs(stored - single_patterns(model, TEXTS[1])).max() <= 3.1e-5


class PatchableModelLike:
    """Mimics auto_circuit 1.0.1's PatchableModel: to_tokens() and to_str_tokens() take no arguments
    and return the wrapped model's functions; run_with_cache, cfg and tokenizer pass through; no
    run_with_hooks."""

    def __init__(self, model):
        self.wrapped_model = model
        self.cfg, self.tokenizer = model.cfg, model.tokenizer

    def to_tokens(self):
        return self.wrapped_model.to_tokens

    def to_str_tokens(self):
        return self.wrapped_model.to_str_tokens

    def run_with_cache(self, *args, **kwargs):
        return self.wrapped_model.run_with_cache(*args, **kwargs)


def test_auto_circuit_style_wrapper_works(model, tmp_path):
    ca.compute_activations(TEXTS[:3], PatchableModelLike(model), tmp_path, model_name="patchable",
                           batch_size=2, progress=False)
    for text in TEXTS[:3]:
        stored = storage.load_patterns(tmp_path, "patchable", lens.prompt_hash(text)).all()
        assert np.abs(stored - single_patterns(model, text)).max() <= 3.1e-5


@pytest.mark.parametrize("prompts, kwargs, message", [
    ([{"text": ""}], {}, 'prompts[0]: expected a non-empty string or a dict with a non-empty "text"'),
    (["fine", {"meta": {}}], {}, "prompts[1]: expected a non-empty string"),
    ([{"text": "fine", "meta": ["x"]}], {}, 'prompts[0]: "meta" must be a dict'),
    (["fine"], {"batch_size": 0}, "batch_size=0: expected a positive integer"),
    (["fine"], {"max_tokens": 1.5}, "max_tokens=1.5: expected a positive integer"),
    (["fine"], {"patterns": "some"}, "patterns='some': expected 'all', 'none', a number of prompts"),
])
def test_the_python_api_names_a_bad_argument_before_any_work(model, tmp_path, prompts, kwargs, message):
    with pytest.raises(lens.UserError, match=re.escape(message)):
        ca.compute_activations(prompts, model, tmp_path / "data", progress=False, **kwargs)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_disk_or_a_read_only_dir_is_one_error_line(code, capsys):
    def main():
        raise OSError(code, os.strerror(code), "data/demo/prompts/0123/patterns.bin")
    with pytest.raises(SystemExit) as exit_:
        lens.run_main(main, "finished prompts are saved")
    path = "data/demo/prompts/0123/patterns.bin"
    assert exit_.value.code == f"error: {path}: {os.strerror(code)} (finished prompts are saved)"
