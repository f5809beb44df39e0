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
from browser import assert_only_local, browser_session, render, screenshot
from fake_data import index_rows
from test_site_single import formatted, hover_cell, open_single

import lens
import render_figures
import storage

ROOT = Path(__file__).resolve().parent.parent
STEPS = sorted(int(p.name[4:]) for p in (ROOT / "demo" / "checkpoints").glob("step*"))
MODELS = [f"demo_step{s}" for s in STEPS]  # compute_activations.py --checkpoint's model dirs (demo@step<N>)
FINAL = MODELS[-1]


@pytest.fixture(scope="session")
def _demo_site(tmp_path_factory) -> Path:
    """compute_activations.py demo --checkpoint <every step> on 4 prompts, then render_figures.py."""
    assert len(STEPS) >= 2, "demo/checkpoints holds fewer than two checkpoints"
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
    """The model's prompts in the index's order, each its prompt.json (the index rows hold no tokens)."""
    return [lens.read_json(lens.prompt_json_path(data, model, r["hash"])) for r in index_rows(data, model)]


def norms_of(data: Path, model: str, phash: str) -> np.ndarray:
    cfg = json.loads(lens.model_cfg_path(data, model).read_text())
    n = storage.load_patterns(data, model, phash).n_tokens
    return render_figures.read_value_norms(data, model, phash, (cfg["n_layers"], cfg["n_heads"], n))


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
    attn = storage.load_patterns(demo_site, FINAL, p["hash"]).head(1, 2)
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


# ---- 2. compare two patterns ----

def shown_values(page) -> tuple[float, float, float]:
    return exact(page, "#cell-value"), exact(page, "#cell-b"), exact(page, "#cell-d")


def test_compare_another_head_and_another_checkpoint(demo_site):
    """Pin A as B, move A to another head: A, B and A - B hover exactly; B from another checkpoint on
    the same prompt; all of it in the URL; the value-weighted mode compares value-weighted patterns."""
    p = prompts_of(demo_site, FINAL)[1]
    final, first = (storage.load_patterns(demo_site, m, p["hash"]) for m in (FINAL, MODELS[0]))
    with browser_session(demo_site) as s:
        open_single(s, model=FINAL, prompt=p["hash"], layer=1, head=2)
        s.page.keyboard.press("b")  # pin this pattern as B
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('bhead') === '2'")
        s.page.keyboard.press("h")  # A moves on to L1H3, B stays
        s.page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L1H3')")
        a, b = final.head(1, 3), final.head(1, 2)
        n = len(a)
        for q, k in [(n - 1, 0), (n // 2, 5), (9, 9)]:
            hover_cell(s.page, q, k)
            assert shown_values(s.page) == pytest.approx((a[q, k], b[q, k], a[q, k] - b[q, k]), abs=1e-7)
            assert s.page.text_content("#cell-d") == formatted(float(np.float32(a[q, k]) - np.float32(b[q, k])))
        # B: the same head (L1H2) of the first checkpoint, same prompt
        s.page.select_option("#b-model", MODELS[0])
        s.page.wait_for_function(f"() => new URLSearchParams(location.search).get('bmodel') === '{MODELS[0]}'")
        s.page.wait_for_function("() => document.querySelector('#caption-b').textContent.includes('demo_step0')")
        assert s.page.text_content("#b-note") == "same tokens as A"
        s.page.select_option("#b-head", "3")
        s.page.wait_for_function("() => document.querySelector('#caption-b').textContent.includes('L1H3')")
        b = first.head(1, 3)
        hover_cell(s.page, n - 1, 2)
        assert shown_values(s.page) == pytest.approx((a[n - 1, 2], b[n - 1, 2], a[n - 1, 2] - b[n - 1, 2]), abs=1e-7)
        s.page.click("#matrix-d")  # pin a cell on the A - B panel: every panel shares it
        assert {k: url_state(s.page)[k] for k in ["bmodel", "bprompt", "blayer", "bhead"]} == {
            "bmodel": MODELS[0], "bprompt": p["hash"], "blayer": "1", "bhead": "3"}
        screenshot(s, "single-compare-light")
        url = s.page.url
        s.page.goto(url.replace("?", "?vw=raw&"))  # a link reproduces it, here value weighted
        s.page.wait_for_selector("body[data-ready='1']")
        q, k = int(url_state(s.page)["q"]), int(url_state(s.page)["k"])
        na, nb = (norms_of(demo_site, m, p["hash"])[1, 3] for m in (FINAL, MODELS[0]))
        wa, wb = a[q, k] * na[k], b[q, k] * nb[k]
        assert shown_values(s.page) == pytest.approx((wa, wb, wa - wb), rel=1e-6)
        assert s.page.is_visible("#matrix-b") and s.page.is_visible("#matrix-d")
        s.page.keyboard.press("b")  # unpin B
        s.page.wait_for_function("() => !new URLSearchParams(location.search).has('bmodel')")
        assert not s.page.is_visible("#matrix-d")
        assert not s.errors
        assert_only_local(s)


@pytest.mark.parametrize("dark", [False, True])
def test_what_cannot_be_compared_says_why(demo_site, dark):
    """Another prompt with a different token count, or a head B's model does not have: a message, not a blank."""
    ps = prompts_of(demo_site, FINAL)
    a, b = next((x, y) for x in ps for y in ps if x["n_tokens"] != y["n_tokens"])
    with browser_session(demo_site, dark=dark) as s:
        open_single(s, model=FINAL, prompt=a["hash"], layer=1, head=0,
                    bmodel=MODELS[0], bprompt=b["hash"], blayer=1, bhead=0)
        assert s.page.is_visible("#not-stored-d")
        assert s.page.text_content("#not-stored-d").startswith(
            f"cannot compare: A has {a['n_tokens']} tokens, B has {b['n_tokens']}")
        hover_cell(s.page, 3, 1)
        assert s.page.text_content("#cell-d") == "\u2013"
        assert exact(s.page, "#cell-b") == float(storage.load_patterns(demo_site, MODELS[0], b["hash"]).head(1, 0)[3, 1])
        screenshot(s, f"single-compare-mismatch-{'dark' if dark else 'light'}")
        open_single(s, model=FINAL, prompt=a["hash"], layer=1, head=0, bmodel=MODELS[0], bprompt=a["hash"],
                    blayer=7, bhead=0)
        assert "has no head L7H0" in s.page.text_content("#not-stored-b")
        assert "A \u2212 B needs both patterns" in s.page.text_content("#not-stored-d")
        assert not s.errors


# ---- 5. the grid is for reading ----

@pytest.mark.parametrize("dark", [False, True])
def test_grid_first_screen_shows_patterns(demo_site, dark):
    """On a 1440 x 900 screen the first pattern starts within the first screen; hiding the controls (URL
    controls=hide, key c) leaves one summary line; showing them again loses no control."""
    with browser_session(demo_site, dark=dark, width=1440, height=900) as s:
        s.page.goto(s.url + f"index.html?models={FINAL}")
        s.page.wait_for_selector("body[data-ready='1'] .tile img")
        top = s.page.eval_on_selector(".tile", "t => t.getBoundingClientRect().top")
        assert top < 450, top  # was ~700 px with every control shown in full
        controls = s.page.eval_on_selector_all("#controls input, #controls select, #controls button", "n => n.length")
        screenshot(s, f"grid-first-screen-{'dark' if dark else 'light'}")
        s.page.keyboard.press("c")
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('controls') === 'hide'")
        assert s.page.eval_on_selector(".tile", "t => t.getBoundingClientRect().top") < 120
        assert s.page.text_content("#controls-summary").startswith(f"models {FINAL} \u00b7 heads L*H*")
        screenshot(s, f"grid-controls-hidden-{'dark' if dark else 'light'}")
        s.page.reload()
        s.page.wait_for_selector("body[data-ready='1']")
        assert not s.page.is_visible("#controls")
        s.page.click("#toggle-controls")
        assert s.page.is_visible("#heads-spec") and s.page.is_visible("#prompt-table")
        assert s.page.eval_on_selector_all("#controls input, #controls select, #controls button", "n => n.length") == controls
        assert "controls" not in url_state(s.page)
        assert not s.errors
        assert_only_local(s)


# ---- 4. figures ready for a paper ----

SVG = "{http://www.w3.org/2000/svg}"


def visible(token: str) -> str:
    """A token as the axis labels show it (site/dom.js visibleToken)."""
    return token.replace(" ", "\u00b7").replace("\n", "\u21b5").replace("\t", "\u2192")


def export(page, button: str, tmp_path: Path) -> Path:
    with page.expect_download() as d:
        page.click(button)
    path = tmp_path / d.value.suggested_filename
    d.value.save_as(path)
    return path


def read_svg(path: Path):
    """The exported SVG parsed: (root, row labels, column labels, [(image element, decoded PIL image)])."""
    import base64
    import io
    import xml.etree.ElementTree as ET

    from PIL import Image
    root = ET.parse(path).getroot()
    texts = lambda cls: [t.text for t in root.iter(f"{SVG}text") if t.get("class") == cls]  # noqa: E731
    images = [(i, Image.open(io.BytesIO(base64.b64decode(i.get("href").split(",", 1)[1]))))
              for i in root.iter(f"{SVG}image")]
    return root, texts("row-label"), texts("col-label"), images


def test_export_svg_and_png(demo_site, tmp_path):
    from PIL import Image
    p = prompts_of(demo_site, FINAL)[1]
    attn = storage.load_patterns(demo_site, FINAL, p["hash"]).head(1, 2)
    n = len(attn)
    labels = [visible(t) for t in p["tokens"]]
    with browser_session(demo_site, dark=True) as s:  # the figure is for paper: light in either theme
        open_single(s, model=FINAL, prompt=p["hash"], layer=1, head=2)
        root, rows, cols, images = read_svg(export(s.page, "#export-svg", tmp_path))
        title = "".join(t.text for t in root.iter(f"{SVG}text") if t.get("font-weight") == "bold")
        assert title.startswith(f"{FINAL} L1H2 \u00b7 attention \u00b7 \"{p['text'][:20]}")
        assert rows == labels and cols == labels  # 43 tokens: every one labelled, on both axes
        ((element, image),) = images
        assert image.size == (n, n)  # one pixel per cell
        assert float(element.get("width")) == pytest.approx(n * min(16, 480 / n), abs=0.01)
        viridis = lens.colormap_table("viridis")
        rgba = image.convert("RGBA")
        for q, k in [(n - 1, 0), (20, 3), (5, 5)]:
            assert rgba.getpixel((k, q))[:3] == tuple(viridis[round(float(attn[q, k]) * 255)])
        assert rgba.getpixel((n - 1, 0))[3] == 0  # masked cells stay empty
        ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "tick"]
        assert ticks == ["0.00", "0.25", "0.50", "0.75", "1.00"]
        assert next(root.iter(f"{SVG}rect")).get("fill") == "rgb(255, 255, 255)"  # a white page in the dark theme
        width, height = int(root.get("width")), int(root.get("height"))
        for button, scale in [("#export-png2", 2), ("#export-png4", 4)]:
            png = Image.open(export(s.page, button, tmp_path))
            assert png.size == (width * scale, height * scale)
        # compare, value weighted: three panels with their captions, A - B on a diverging bar centred on 0
        open_single(s, model=FINAL, prompt=p["hash"], layer=1, head=3, vw="row",
                    bmodel=MODELS[0], bprompt=p["hash"], blayer=1, bhead=3)
        root, rows, cols, images = read_svg(export(s.page, "#export-svg", tmp_path))
        assert [im.size for _, im in images] == [(n, n)] * 3
        assert rows == labels * 3
        captions = [t.text for t in root.iter(f"{SVG}text") if t.get("font-size") == "12"]
        assert [c[:2] for c in captions] == ["A:", "B:", "A \u2212"[:2]]
        ticks = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "tick"]
        assert ticks[-5:][2] == "0.00" and float(ticks[-5:][0]) == -float(ticks[-5:][4])
        assert not s.errors
        assert_only_local(s)


def test_export_long_prompt_thins_labels_and_exports_the_zoomed_region(tmp_path):
    from fake_data import make_data
    data = tmp_path / "data"
    text = " ".join(f"w{i}" for i in range(599))
    (h,) = make_data(data, n_layers=1, n_heads=1, texts=[text])
    render(data, "raw")
    tokens = json.loads(lens.prompt_json_path(data, "fake-model", h).read_text())["tokens"]
    n = len(tokens)
    with browser_session(data) as s:
        open_single(s, model="fake-model", prompt=h)
        root, rows, cols, images = read_svg(export(s.page, "#export-svg", tmp_path))
        step = int(np.ceil(11 / (480 / n)))
        assert rows == cols == [visible(tokens[i]) for i in range(0, n, step)]
        assert images[0][1].size == (n, n)
        for _ in range(6):
            s.page.keyboard.press("+")
        s.page.keyboard.press("ArrowDown")  # pins a cell and pans to it: the view is some middle region
        d = s.page.eval_on_selector("#matrix", "c => ({...c.dataset, size: c.getBoundingClientRect().width})")
        span = (d["size"] - float(d["marginLeft"])) / float(d["cell"])
        part = lambda o: (int(np.floor(o + 1e-9)), min(n, int(np.ceil(o + span - 1e-9))))  # noqa: E731
        (q0, q1), (k0, k1) = part(float(d["oy"])), part(float(d["ox"]))
        s.page.select_option("#export-range", "zoom")
        root, rows, cols, images = read_svg(export(s.page, "#export-svg", tmp_path))
        assert images[0][1].size == (k1 - k0, q1 - q0)
        count = max(q1 - q0, k1 - k0)
        step = int(np.ceil(11 / min(16, 480 / count)))
        assert rows == [visible(tokens[i]) for i in range(q0, q1) if i % step == 0]
        assert cols == [visible(tokens[i]) for i in range(k0, k1) if i % step == 0]
        assert not s.errors


# ---- 3. heads page: one model minus another, and across checkpoints ----

def stat_means(data: Path, model: str, stat: str) -> np.ndarray:
    mean = json.loads((data / model / "stats.json").read_text())["stats"][stat]["mean"]
    return np.array([[np.nan if v is None else v for v in row] for row in mean], float)


@pytest.mark.parametrize("dark", [False, True])
def test_heads_difference_and_across_checkpoints(demo_site, dark):
    a, b = stat_means(demo_site, FINAL, "bos"), stat_means(demo_site, MODELS[0], "bos")
    with browser_session(demo_site, dark=dark) as s:
        s.page.goto(s.url + f"heads.html?model={FINAL}&stat=bos&vs={MODELS[0]}")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        cells = s.page.eval_on_selector_all("#heatmap .heat", "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head, +c.dataset.value])")
        assert len(cells) == a.size
        for l, h, v in cells:
            assert v == pytest.approx(a[l, h] - b[l, h], abs=1e-6)
        assert not s.page.is_visible("#vs-problem")
        s.page.select_option("#over", "prompt")  # one prompt: its value in each model
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('over') === 'prompt'")
        s.page.select_option("#vs", "")
        s.page.check("#series")
        s.page.wait_for_selector(".series-map")
        assert url_state(s.page)["series"] == "1"
        maps = s.page.eval_on_selector_all(".series-map", "ms => ms.map(m => m.dataset.model)")
        assert maps == MODELS  # ordered by training step
        for model in MODELS:
            means = stat_means(demo_site, model, "bos")
            got = s.page.eval_on_selector_all(f".series-map[data-model='{model}'] .heat",
                                              "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head, +c.dataset.value])")
            assert all(v == pytest.approx(means[l, h], abs=1e-6) for l, h, v in got) and len(got) == means.size
        lines = s.page.eval_on_selector_all(".series-chart polyline", "ps => ps.map(p => [p.dataset.head, JSON.parse(p.dataset.values)])")
        assert lines[0][0] == "L{}H{}".format(*np.unravel_index(np.nanargmax(a), a.shape))  # the top head of the last step
        for head, values in lines:
            l, h = int(head[1]), int(head[3])
            assert values == pytest.approx([stat_means(demo_site, m, "bos")[l, h] for m in MODELS], abs=1e-6)
        screenshot(s, f"heads-checkpoints-{'dark' if dark else 'light'}", full_page=True)
        assert not s.errors
        assert_only_local(s)


def test_heads_difference_of_different_shapes_says_why(demo_site, tmp_path):
    from fake_data import make_data

    from build_index import build_index
    make_data(demo_site, model="other", n_layers=3, n_heads=2)
    build_index(demo_site)
    with browser_session(demo_site) as s:
        s.page.goto(s.url + f"heads.html?model={FINAL}&stat=bos&vs=other")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        assert s.page.is_visible("#vs-problem")
        cfg = json.loads(lens.model_cfg_path(demo_site, FINAL).read_text())
        assert s.page.text_content("#vs-problem") == (f"cannot compare: {FINAL} has {cfg['n_layers']} x "
                                                      f"{cfg['n_heads']} heads (layers x heads), other has 3 x 2")
        # the choice lists only the models of this shape (and keeps the URL's choice shown)
        assert s.page.eval_on_selector_all("#vs option", "os => os.map(o => o.value)") == ["", "other", *MODELS[:-1]]
        assert not s.errors
