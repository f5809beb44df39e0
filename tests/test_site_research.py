"""Research views in a real (offline) chromium, on data made by the real scripts from the bundled demo
model's training checkpoints: value-weighted attention, compare two patterns, statistics across
checkpoints, figure export, the grid's first screen."""
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

import lens
from browser import assert_only_local, browser_session, render, screenshot
from test_site_single import formatted, hover_cell, open_single

ROOT = Path(__file__).resolve().parent.parent
STEPS = sorted(int(p.name[4:]) for p in (ROOT / "demo" / "checkpoints").glob("step*"))
MODELS = [f"demo_step{s}" for s in STEPS]  # compute_activations.py --checkpoint's model dirs (demo@step<N>)
FINAL = MODELS[-1]


@pytest.fixture(scope="session")
def _demo_site(tmp_path_factory) -> Path:
    """compute_activations.py demo --checkpoint <every step> on 4 prompts, then render_figures.py."""
    if len(STEPS) < 2:
        pytest.skip("demo/checkpoints holds fewer than two checkpoints")
    tmp = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), "demo", str(ROOT / "prompts.jsonl"),
                           "--checkpoint", ",".join(map(str, STEPS)), "--n-samples", "4", "--save-path", "data"],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    render(tmp / "data")
    return tmp / "data"


@pytest.fixture
def demo_site(_demo_site, tmp_path) -> Path:
    import shutil
    return Path(shutil.copytree(_demo_site, tmp_path / "data"))


def prompts_of(data: Path, model: str) -> list[dict]:
    return [json.loads(line) for line in (data / model / "prompts.jsonl").read_text().splitlines()]


def norms_of(data: Path, model: str, phash: str) -> np.ndarray:
    cfg = json.loads(lens.model_cfg_path(data, model).read_text())
    n = lens.load_patterns(data, model, phash).n_tokens
    return lens.read_value_norms(data, model, phash, (cfg["n_layers"], cfg["n_heads"], n))


def url_state(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def exact(page, selector: str) -> float:
    return float(page.eval_on_selector(selector, "e => e.dataset.value"))


# ---- 1. value-weighted attention ----

@pytest.mark.parametrize("dark", [False, True])
def test_value_weighted_hover_values(demo_site, dark):
    """alpha_ij * ||v_j W_O^h|| exactly (float32 product), and each row normalised to sum to 1;
    the norms are read by one byte range of value_norms.f32."""
    p = prompts_of(demo_site, FINAL)[1]
    attn = lens.load_patterns(demo_site, FINAL, p["hash"]).head(1, 2)
    norms = norms_of(demo_site, FINAL, p["hash"])
    n = len(attn)
    weighted = attn * norms[1, 2][None, :]  # float32 x float32, as the page multiplies
    rows = weighted.astype(np.float64) / weighted.astype(np.float64).sum(-1, keepdims=True)
    with browser_session(demo_site, dark=dark) as s:
        ranges = []
        s.page.on("request", lambda r: r.url.endswith("value_norms.f32") and ranges.append(r.headers.get("range")))
        open_single(s, model=FINAL, prompt=p["hash"], layer=1, head=2, vw="raw")
        n_heads = json.loads(lens.model_cfg_path(demo_site, FINAL).read_text())["n_heads"]
        start = (1 * n_heads + 2) * n * 4
        assert ranges == [f"bytes={start}-{start + n * 4 - 1}"]
        for q, k in [(0, 0), (n - 1, 0), (n - 1, n - 1), (n // 2, 3), (7, 7)]:
            hover_cell(s.page, q, k)
            assert exact(s.page, "#cell-value") == float(weighted[q, k])
            assert s.page.text_content("#cell-value") == formatted(weighted[q, k])
            assert exact(s.page, "#cell-attn") == float(attn[q, k])
            assert exact(s.page, "#cell-norm") == float(norms[1, 2, k])
        assert s.page.text_content("#cell-label") == "value-weighted"
        s.page.select_option("#vw", "row")
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('vw') === 'row'")
        s.page.wait_for_function("() => document.querySelector('#cell-label').textContent.includes('row')")
        for q, k in [(0, 0), (n - 1, 0), (n // 2, 3)]:
            hover_cell(s.page, q, k)
            assert exact(s.page, "#cell-value") == pytest.approx(rows[q, k], abs=1e-6)
        screenshot(s, f"single-value-weighted-{'dark' if dark else 'light'}")
        s.page.keyboard.press("v")  # back to attention
        s.page.wait_for_function("() => !new URLSearchParams(location.search).has('vw')")
        hover_cell(s.page, n - 1, 0)
        assert exact(s.page, "#cell-value") == float(attn[n - 1, 0])
        assert not s.errors
        assert_only_local(s)


def test_no_value_norms_stored(demo_site):
    """A data dir computed before value norms were stored says so instead of drawing nothing."""
    p = prompts_of(demo_site, FINAL)[0]
    lens.value_norms_path(demo_site, FINAL, p["hash"]).unlink()
    with browser_session(demo_site) as s:
        open_single(s, model=FINAL, prompt=p["hash"], layer=0, head=1, vw="raw")
        assert s.page.is_visible("#not-stored")
        assert s.page.text_content("#not-stored") == "no value norms stored (recompute with compute_activations.py)"
        s.page.keyboard.press("v")
        s.page.keyboard.press("v")  # attention: drawn as usual
        s.page.wait_for_function("() => !new URLSearchParams(location.search).has('vw')")
        s.page.wait_for_function("() => document.querySelector('#not-stored').classList.contains('hidden')")
        assert not s.errors
