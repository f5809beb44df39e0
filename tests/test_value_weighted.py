"""Value-weighted attention: stored value norms reach figures and statistics, as a user's plug-in receives them."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_render import pack_png

from attention_lens import datadir, lens, storage

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["When Mary and John went to the store, John gave a drink to Mary.", "The cat sat on the mat."]


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def data_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("vw")
    (work / "p.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    r = run("compute_activations.py", str(tiny_checkpoint), "p.jsonl", "--no-probe", "--save-path", "data", cwd=work)
    assert r.returncode == 0, r.stderr
    r = run("render_figures.py", "--save-path", "data", "--figures", "value_weighted,raw", "--jobs", "1", cwd=work)
    assert r.returncode == 0, r.stderr
    return work / "data"


def test_value_weighted_figure_is_attention_times_value_norms(data_dir):
    model = lens.model_dirs(data_dir)[0]
    for text in TEXTS:
        phash = lens.prompt_hash(text)
        patterns = storage.load_patterns(data_dir, model, phash)
        norms = storage.read_value_norms(data_dir, model, phash, (2, 4, patterns.n_tokens))
        assert np.isfinite(norms).all() and (norms > 0).all()
        for layer, head in patterns.heads:
            product = patterns.head(layer, head) * norms[layer, head][None, :]
            expected = lens.colormap_table("viridis")[lens.quantize(product, normalize=True, normalize_min=0.0)]
            size, pixels = pack_png(datadir.prompt_dir(data_dir, model, phash), "value_weighted", layer, head)
            assert size == (patterns.n_tokens, patterns.n_tokens)
            np.testing.assert_array_equal(pixels, expected)


def test_a_users_statistic_receives_value_norms_by_name(data_dir):
    namespace = {}
    exec("from attention_lens import statistic\n"
         "@statistic\n"
         "def moved(attn, token_ids, value_norms):\n"
         "    return float((attn * value_norms).sum(-1).mean()) + 0 * len(token_ids)\n", namespace)
    fig = lens._REGISTERING.pop()
    assert fig.options["inputs"] == ["token_ids", "value_norms"]
    attn, norms = np.full((3, 3), 1 / 3, np.float32), np.array([1.0, 2.0, 3.0], np.float32)
    assert lens.call_plugin(fig, attn, {"token_ids": [1, 2, 3], "value_norms": norms}) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no value_norms stored"):
        lens.call_plugin(fig, attn, {"token_ids": [1, 2, 3], "value_norms": None})


def test_a_prompt_without_value_norms_makes_no_such_image_and_says_so(data_dir):
    model = lens.model_dirs(data_dir)[0]
    phash = lens.prompt_hash(TEXTS[1])
    datadir.value_norms_path(data_dir, model, phash).unlink()  # as data computed before value norms existed
    datadir.figure_pack_path(data_dir, model, phash, "value_weighted").unlink()
    r = run("render_figures.py", "--save-path", str(data_dir), "--figures", "value_weighted", "--force",
            "--jobs", "1", cwd=data_dir.parent)
    assert r.returncode == 0, r.stderr
    assert ", 0 failed" in r.stdout
    assert "8 not made: their prompts have no value norms or token ids" in r.stdout  # 2 layers x 4 heads
    assert not datadir.figure_pack_path(data_dir, model, phash, "value_weighted").exists()
    assert not datadir.figure_errors_path(data_dir, model, phash, "value_weighted").exists()
    assert storage.read_pack_image(
        datadir.figure_pack_path(data_dir, model, lens.prompt_hash(TEXTS[0]), "value_weighted"), 0, 0)
