"""import_pattern_lens.py (and its alias build_index.py --import-pattern-lens): a pattern-lens data dir converted in
place, then rendered and indexed."""
import base64
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_data import fake_patterns, index_rows
from PIL import Image
from tiny_model import train_tokenizer

from attention_lens import datadir, lens, storage

ROOT = Path(__file__).resolve().parent.parent
MODEL, N_LAYERS, N_HEADS = "gpt2-tiny", 2, 3
TEXTS = {
    "npz": "When Mary and John went to the store, John gave a drink to Mary.",
    "npy": "def add(a, b):\n    return a + b  # café",
    "corrupt": "The quick brown fox jumps over the lazy dog.",
}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()


def pattern_lens_hash(text: str) -> str:
    """pattern-lens 0.6.0's prompt hash (load_activations.augment_prompt_with_hash)."""
    return base64.urlsafe_b64encode(hashlib.md5(text.encode()).digest()).decode().rstrip("=")


def figure_image(kind: str) -> bytes:
    """A PNG as pattern-lens writes one per head, different for each prompt."""
    return lens.matrix_as_png(np.full((2, 2), len(kind) / 10, np.float32))


def write_pattern_lens_dir(root: Path, tokenizer) -> dict[str, np.ndarray]:
    """A data dir as pattern-lens 0.6.0 writes it; returns each prompt's patterns [layers, heads, n, n]."""
    model_dir = root / MODEL
    model_dir.mkdir(parents=True)
    # pattern-lens dumps the whole HookedTransformerConfig; a few of its many fields
    (model_dir / "model_cfg.json").write_text(json.dumps({
        "d_model": 48, "d_head": 16, "n_layers": N_LAYERS, "n_ctx": 128, "n_heads": N_HEADS, "d_mlp": 192,
        "d_vocab": 512, "device": "cpu", "default_prepend_bos": True, "positional_embedding_type": "standard",
        "act_fn": "gelu_new", "normalization_type": "LNPre", "dtype": "torch.float32", "model_name": MODEL,
        "original_architecture": "GPT2LMHeadModel", "tokenizer_name": None, "attention_dir": "causal"}))
    rng = np.random.default_rng(0)
    patterns = {}
    for kind, text in TEXTS.items():
        tokens = tokenizer.tokenize(text)  # what pattern-lens stores: byte-level strings, no BOS
        pdir = model_dir / "prompts" / pattern_lens_hash(text)
        pdir.mkdir(parents=True)
        (pdir / "prompt.json").write_text(json.dumps({
            "text": text, "meta": {"kind": kind}, "source_fname": "data/pile_1k.jsonl",
            "hash": pattern_lens_hash(text), "n_tokens": len(tokens), "tokens": tokens}))
        p = fake_patterns(N_LAYERS, N_HEADS, len(tokens) + 1, rng)
        if kind == "npy":
            np.save(pdir / "activations.npy", p)
        else:
            np.savez_compressed(pdir / "activations.npz",
                                **{f"blocks.{l}.attn.hook_pattern": p[l][None] for l in range(N_LAYERS)})
        (pdir / "L0" / "H1").mkdir(parents=True)
        (pdir / "L0" / "H1" / "raw.png").write_bytes(figure_image(kind))
        patterns[kind] = p
    corrupt = model_dir / "prompts" / pattern_lens_hash(TEXTS["corrupt"]) / "activations.npz"
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # a copy cut short
    return patterns


def run(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_import_keeps_values_fields_and_figures(tmp_path, tokenizer):
    data = tmp_path / "attn_data"
    patterns = write_pattern_lens_dir(data, tokenizer)
    r = run("import_pattern_lens.py", "--save-path", data)
    assert r.returncode == 0, r.stderr

    warnings = r.stderr.strip().splitlines()
    corrupt = data / MODEL / "prompts" / pattern_lens_hash(TEXTS["corrupt"]) / "activations.npz"
    assert len(warnings) == 1 and str(corrupt) in warnings[0]
    assert warnings[0].startswith("import_pattern_lens.py: warning: ")
    assert "imported 2 pattern-lens prompt(s)" in r.stdout and "1 failed" in r.stdout

    for kind in ("npz", "npy"):
        text = TEXTS[kind]
        stored = storage.load_patterns(data, MODEL, lens.prompt_hash(text))
        assert np.abs(stored.all() - patterns[kind]).max() < 1e-3
        info = json.loads((datadir.prompt_dir(data, MODEL, lens.prompt_hash(text)) / "prompt.json").read_text())
        ids = tokenizer(text)["input_ids"]
        assert info["tokens"] == ["<bos>"] + [tokenizer.decode([i]) for i in ids]  # as to_str_tokens shows them
        assert info["n_tokens"] == len(ids) + 1 == patterns[kind].shape[-1]
        assert (info["text"], info["hash"], info["meta"]) == (text, lens.prompt_hash(text), {"kind": kind})
        assert (info["source_fname"], info["pattern_lens_hash"]) == ("data/pile_1k.jsonl", pattern_lens_hash(text))
        pack = datadir.figure_pack_path(data, MODEL, lens.prompt_hash(text), "pattern-lens.raw")
        assert storage.read_pack_image(pack, 0, 1) == figure_image(kind)
        assert storage.read_pack_image(pack, 0, 0) is None  # pattern-lens had no figure for that head
        assert not (data / MODEL / "prompts" / pattern_lens_hash(text)).exists()
    assert corrupt.exists()  # left as it was, for the user to look at

    cfg = json.loads((data / MODEL / "model_cfg.json").read_text())
    assert {k: cfg[k] for k in ("model_name", "model_dir", "n_layers", "n_heads", "d_model", "n_ctx")} == {
        "model_name": MODEL, "model_dir": MODEL, "n_layers": N_LAYERS, "n_heads": N_HEADS, "d_model": 48,
        "n_ctx": 128}
    assert "dtype" not in cfg


def test_imported_prompts_render_and_reach_the_site_index(tmp_path, tokenizer):
    data = tmp_path / "attn_data"
    write_pattern_lens_dir(data, tokenizer)
    assert run("build_index.py", "--import-pattern-lens", "--save-path", data).returncode == 0
    r = run("render_figures.py", "--save-path", data, "--figures", "raw,bos", "--jobs", "1")
    assert r.returncode == 0, r.stderr

    hashes = sorted(lens.prompt_hash(TEXTS[k]) for k in ("npz", "npy"))
    for h in hashes:
        for l in range(N_LAYERS):
            for head in range(N_HEADS):
                png = storage.read_pack_image(datadir.figure_pack_path(data, MODEL, h, "raw"), l, head)
                assert Image.open(io.BytesIO(png)).size == (storage.load_patterns(data, MODEL, h).n_tokens,) * 2
    assert [p["hash"] for p in index_rows(data, MODEL)] == hashes
    [model] = read_lines(data / "models.jsonl")
    assert (model["model_dir"], model["n_prompts"]) == (MODEL, 2)
    assert (data / "index.html").is_file() and (data / MODEL / "stats" / "bos.f32").is_file()


def test_nothing_importable_is_an_error(tmp_path, tokenizer):
    data = tmp_path / "attn_data"
    write_pattern_lens_dir(data, tokenizer)
    for path in (data / MODEL / "prompts").glob("*/activations.np[yz]"):
        path.write_bytes(b"not an array")
    r = run("import_pattern_lens.py", "--save-path", data)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(TEXTS) + 1 and all("warning" in line for line in lines[:-1])
    assert lines[-1].startswith("error: ") and "none of the 3 pattern-lens prompt(s)" in lines[-1]


def test_a_dir_without_pattern_lens_data_is_an_error(fake_data_dir):
    r = run("import_pattern_lens.py", "--save-path", fake_data_dir)
    assert r.returncode != 0 and r.stderr.startswith("error: ") and "no pattern-lens prompts" in r.stderr


def test_an_imported_svg_becomes_the_png_it_embeds_and_its_script_is_dropped(tmp_path, tokenizer):
    """pattern-lens draws a figure as an SVG around a PNG; packs hold only that PNG, so a script an SVG carries
    never reaches the site's origin, and an SVG without a PNG is not imported (its prompt stays as it was)."""
    data = tmp_path / "attn_data"
    write_pattern_lens_dir(data, tokenizer)
    png = lens.matrix_as_png(np.eye(3, dtype=np.float32))
    script = b"<script>fetch('/models.jsonl').then(r => r.text()).then(alert)</script>"
    npz_dir = data / MODEL / "prompts" / pattern_lens_hash(TEXTS["npz"])
    (npz_dir / "L1" / "H0").mkdir(parents=True)
    (npz_dir / "L1" / "H0" / "raw.svg").write_bytes(
        b'<svg xmlns="http://www.w3.org/2000/svg">' + script + b'<image href="data:image/png;base64,'
        + base64.b64encode(png) + b'"/></svg>')
    npy_dir = data / MODEL / "prompts" / pattern_lens_hash(TEXTS["npy"])
    (npy_dir / "L1" / "H0").mkdir(parents=True)
    (npy_dir / "L1" / "H0" / "raw.svg").write_bytes(b'<svg xmlns="http://www.w3.org/2000/svg">' + script + b"</svg>")
    r = run("import_pattern_lens.py", "--save-path", data)
    assert r.returncode == 0, r.stderr
    assert "imported 1 pattern-lens prompt(s)" in r.stdout and "2 failed" in r.stdout
    assert f"{npy_dir / 'L1' / 'H0' / 'raw.svg'}: an SVG without one embedded PNG" in r.stderr
    pack = datadir.figure_pack_path(data, MODEL, lens.prompt_hash(TEXTS["npz"]), "pattern-lens.raw")
    assert storage.read_pack_image(pack, 1, 0) == png
    assert not any(b"<script" in p.read_bytes() for p in data.rglob("*.pack"))
    assert (npy_dir / "L1" / "H0" / "raw.svg").exists()  # not imported: left for the user
