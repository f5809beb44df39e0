"""The single view in a real (offline) chromium: hover values equal the stored patterns, keys, URL state, long
prompts; on the demo model's training checkpoints: value-weighted attention, comparing two patterns, figure export."""
import json
import struct
import zlib
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from browser import assert_only_local, bos, browser_session, render, screenshot
from conftest import FINAL, MODELS
from fake_data import TEXTS, drop_images, index_rows, make_data

from attention_lens import datadir, lens, storage

MODEL = "fake-model"


def oracle(data_dir: Path) -> dict[str, np.ndarray]:
    """The tests' statistics (tests/browser.py) computed from the stored patterns: [prompts (hash order), layers,
    heads]."""
    hashes = prompt_hashes(data_dir)
    bos_ = np.array([[[bos(storage.load_patterns(data_dir, MODEL, h), l, hd) for hd in range(3)] for l in range(2)]
                     for h in hashes])
    return {"bos": bos_}


def formatted(v: float) -> str:
    """What the page shows: JS toFixed(5) (round half up on the exact float value)."""
    return str(Decimal(float(v)).quantize(Decimal("0.00001"), ROUND_HALF_UP))


def open_single(s, **params) -> None:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    s.page.goto(f"{s.url}single.html?{query}")
    s.page.wait_for_selector("body[data-ready='1']")


def hover_cell(page, q: int, k: int) -> None:
    """Move the mouse to the centre of cell (q, k) using the geometry the canvas publishes."""
    box = page.locator("#matrix").bounding_box()
    d = page.eval_on_selector("#matrix", "c => ({...c.dataset})")
    cs = float(d["cell"])
    x = box["x"] + float(d["marginLeft"]) + (k - float(d["ox"]) + 0.5) * cs
    y = box["y"] + float(d["marginTop"]) + (q - float(d["oy"]) + 0.5) * cs
    page.mouse.move(x, y)


def shown(page) -> tuple[str, int, int]:
    d = page.eval_on_selector("#cell-value", "e => [e.textContent, e.dataset.q, e.dataset.k]")
    return d[0], int(d[1]), int(d[2])


def url_state(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


@pytest.fixture
def site(rendered_data_dir) -> Path:
    return rendered_data_dir


def prompt_hashes(data_dir: Path) -> list[str]:
    return [row["hash"] for row in index_rows(data_dir, MODEL)]


def test_hover_shows_stored_values(site):
    h = lens.prompt_hash(TEXTS[1])  # the longest fake prompt (15 tokens)
    stored = storage.load_patterns(site, MODEL, h).head(1, 2)
    n = len(stored)
    with browser_session(site) as s:
        open_single(s, model=MODEL, prompt=h, layer=1, head=2)
        for q, k in [(0, 0), (n - 1, 0), (n - 1, n - 1), (5, 3), (7, 7), (2, 9)]:
            hover_cell(s.page, q, k)
            text, sq, sk = shown(s.page)
            assert (sq, sk) == (q, k)
            assert text == formatted(stored[q, k]), (q, k)
            exact = float(s.page.eval_on_selector("#cell-value", "e => e.dataset.value"))
            assert exact == float(stored[q, k])
        tokens = json.loads((datadir.prompt_dir(site, MODEL, h) / "prompt.json").read_text())["tokens"]
        hover_cell(s.page, 5, 3)
        assert s.page.text_content("#cell-q") == f"5 {json.dumps(tokens[5])}"
        assert s.page.text_content("#cell-k") == f"3 {json.dumps(tokens[3])}"
        # the prompt's text: token i shaded by query 5's attention to it, relative to the row's max
        weights = s.page.eval_on_selector_all("#prompt-text .tok",
                                              "ts => ts.map(t => +t.style.getPropertyValue('--w'))")
        assert np.allclose(weights, stored[5] / stored[5].max(), atol=1e-3)
        assert "".join(s.page.eval_on_selector_all("#prompt-text .tok", "ts => ts.map(t => t.textContent)")) \
            == "".join(tokens)
        s.page.keyboard.press("r")  # shade by the key column instead
        weights = s.page.eval_on_selector_all("#prompt-text .tok",
                                              "ts => ts.map(t => +t.style.getPropertyValue('--w'))")
        assert np.allclose(weights, stored[:, 3] / stored[:, 3].max(), atol=1e-3)
        assert url_state(s.page)["shade"] == "col"
        screenshot(s, "single-light")
        assert not s.errors
        assert_only_local(s)


def test_keys_pin_and_url_state(site):
    hashes = prompt_hashes(site)
    with browser_session(site, dark=True) as s:
        open_single(s, model=MODEL, prompt=hashes[0], layer=0, head=0, q=4, k=2)
        assert shown(s.page)[1:] == (4, 2)  # the pinned cell comes back from the URL
        s.page.keyboard.press("ArrowDown")
        s.page.keyboard.press("ArrowRight")
        s.page.keyboard.press("ArrowRight")
        assert shown(s.page)[1:] == (5, 4)
        assert (url_state(s.page)["q"], url_state(s.page)["k"]) == ("5", "4")
        s.page.keyboard.press("h")  # next head
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('head') === '1'")
        text, q, k = shown(s.page)
        assert text == formatted(storage.load_patterns(site, MODEL, hashes[0]).head(0, 1)[5, 4])
        s.page.keyboard.press("l")  # next layer
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('layer') === '1'")
        s.page.keyboard.press("p")  # next prompt
        s.page.wait_for_function(f"() => new URLSearchParams(location.search).get('prompt') === '{hashes[1]}'")
        s.page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L1H1')")
        stored = storage.load_patterns(site, MODEL, hashes[1]).head(1, 1)
        q, k = min(5, len(stored) - 1), min(4, len(stored) - 1)
        s.page.wait_for_function("() => document.querySelector('#cell-value').textContent === "
                                 f"'{formatted(stored[q, k])}'")
        s.page.keyboard.press("H")  # previous head wraps to the previous layer's last head
        s.page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L1H0')")
        s.page.keyboard.press("Escape")
        assert "q" not in url_state(s.page)
        s.page.keyboard.press("?")
        assert s.page.is_visible("#help")
        # a link reproduces the view
        s.page.goto(f"{s.url}single.html?model={MODEL}&prompt={hashes[2]}&layer=1&head=2&q=3&k=3&shade=col")
        s.page.wait_for_selector("body[data-ready='1']")
        assert s.page.text_content("#title").endswith("L1H2")
        assert s.page.input_value("#shade") == "col"
        assert shown(s.page)[0] == formatted(storage.load_patterns(site, MODEL, hashes[2]).head(1, 2)[3, 3])
        screenshot(s, "single-dark")
        for _ in range(5):  # fast key presses: the last head asked for is the one drawn
            s.page.keyboard.press("h")
        s.page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L1H1')")
        s.page.wait_for_timeout(300)  # L1H2 + 5 heads (of 6) is L1H1, and stays so
        assert s.page.text_content("#title").endswith("L1H1")
        assert (url_state(s.page)["layer"], url_state(s.page)["head"]) == ("1", "1")
        assert shown(s.page)[0] == formatted(storage.load_patterns(site, MODEL, hashes[2]).head(1, 1)[3, 3])
        assert not s.errors
        assert_only_local(s)


def test_head_statistics_panel(site):
    """This prompt's value, the mean over prompts and the rank, for every statistic; tied heads share a rank."""
    hashes = prompt_hashes(site)
    values = oracle(site)["bos"]
    i = 2
    with browser_session(site) as s:
        open_single(s, model=MODEL, prompt=hashes[i], layer=1, head=0)
        rows = s.page.eval_on_selector_all(".stats-table tbody tr",
                                           "rs => rs.map(r => [...r.cells].map(c => c.textContent))")
        by_name = {r[0]: r[1:] for r in rows}
        assert list(by_name) == ["bos", "long_only", "tokens"]
        mean = values.mean(0)
        assert float(by_name["bos"][0]) == pytest.approx(values[i, 1, 0], abs=5e-4)
        assert float(by_name["bos"][1]) == pytest.approx(mean[1, 0], abs=5e-4)
        assert by_name["bos"][2] == f"{1 + (mean > mean[1, 0]).sum()} / {mean.size}"
        attn = storage.load_patterns(site, MODEL, hashes[i]).head(1, 0)
        if len(attn) > 10:
            assert float(by_name["long_only"][0]) == pytest.approx(attn[-1].max(), abs=5e-4)
        else:
            assert by_name["long_only"][0] == "\u2013"  # undefined on this prompt
        assert by_name["tokens"][2] == "1 / 6"  # every head has the same value: all share rank 1
        assert s.page.get_attribute(".stats-table a", "href").startswith("heads.html?")
        assert not s.errors


def test_figure_image_or_error(site):
    h = prompt_hashes(site)[0]
    drop_images(site, MODEL, h, "raw", [(0, 1)], error="ValueError: boom")
    with browser_session(site) as s:
        open_single(s, model=MODEL, prompt=h, layer=0, head=1, figure="raw")
        s.page.wait_for_selector("#figure-view .figure-error")
        assert "boom" in s.page.text_content("#figure-view")
        open_single(s, model=MODEL, prompt=h, layer=0, head=2, figure="sharp")
        s.page.wait_for_function("() => document.querySelector('#figure-view img')?.naturalWidth > 0")
        assert not s.errors


def test_long_prompt_stays_usable(tmp_path):
    """A 1,000-token prompt: thins its labels, zooms, and still hovers exact values
    (bench/bench_site.py times it)."""
    data = tmp_path / "data"
    text = " ".join(f"w{i}" for i in range(999))
    (h,) = make_data(data, n_layers=2, n_heads=2, texts=[text])
    render(data, "raw")
    stored = storage.load_patterns(data, MODEL, h).head(1, 1)
    assert stored.shape == (1000, 1000)
    with browser_session(data) as s:
        open_single(s, model=MODEL, prompt=h, layer=1, head=1)
        hover_cell(s.page, 700, 300)
        text, q, k = shown(s.page)
        assert text == formatted(stored[q, k])
        for _ in range(8):
            s.page.keyboard.press("+")
        assert float(s.page.eval_on_selector("#matrix", "c => c.dataset.cell")) > 10  # labels readable again
        s.page.keyboard.press("x")  # a key with no binding: nothing breaks
        for key in ["ArrowDown"] * 3 + ["Shift+ArrowRight"]:
            s.page.keyboard.press(key)
        text, q, k = shown(s.page)
        assert text == formatted(stored[q, k])
        hover_cell(s.page, q, k)  # the pinned cell was scrolled into view
        assert shown(s.page)[1:] == (q, k)
        s.page.keyboard.press("h")
        s.page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L0H0')")
        screenshot(s, "single-long")
        assert not s.errors


def test_real_pipeline_output(fake_data_dir):
    """render_figures.py's real statistics, images, colormaps.json and build_index.py's site, end to end."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, str(root / "render_figures.py"), "--save-path", str(fake_data_dir), "--jobs", "1"],
                   check=True, capture_output=True, cwd=root)
    h = lens.prompt_hash(TEXTS[1])
    stored = storage.load_patterns(fake_data_dir, MODEL, h).head(0, 1)
    names = list(json.loads((fake_data_dir / MODEL / "stats.json").read_text())["stats"])  # the built-in ones
    with browser_session(fake_data_dir) as s:
        open_single(s, model=MODEL, prompt=h, layer=0, head=1, q=9, k=4)
        assert shown(s.page)[0] == formatted(stored[9, 4])
        rows = s.page.eval_on_selector_all(".stats-table tbody tr td:first-child", "ts => ts.map(t => t.textContent)")
        assert rows == names
        s.page.wait_for_function("() => document.querySelector('#figure-view img')?.naturalWidth > 0")
        # the canvas colours the cell with the same viridis table the images use
        d = s.page.eval_on_selector("#matrix", "c => ({...c.dataset})")
        x = float(d["marginLeft"]) + 0.5 * float(d["cell"])
        y = float(d["marginTop"]) + 12.5 * float(d["cell"])  # row 12: outside the pinned crosshair
        rgb = s.page.eval_on_selector("#matrix", f"""c => {{
            const r = c.width / c.getBoundingClientRect().width;
            return [...c.getContext('2d').getImageData(Math.round({x} * r), Math.round({y} * r), 1, 1).data]
                .slice(0, 3);
        }}""")
        expected = lens.colormap_table("viridis")[round(float(stored[12, 0]) * 255)]
        assert np.abs(np.array(rgb) - expected).max() <= 2
        screenshot(s, "single-rendered")
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat={names[-1]}")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        assert s.page.locator(".heatmap-grid .heat").count() == 6
        assert not s.errors
        assert_only_local(s)


def test_head_not_stored(partial_heads_data_dir):
    """A prompt computed with --heads L0H0,L1H*: its other heads say "not stored"; keys still move on."""
    data = partial_heads_data_dir
    h = lens.prompt_hash(TEXTS[1])
    patterns = storage.load_patterns(data, MODEL, h)
    with browser_session(data) as s:
        open_single(s, model=MODEL, prompt=h, layer=0, head=1, q=4, k=2)
        assert "not stored" in s.page.text_content("#not-stored") and s.page.is_visible("#not-stored")
        assert s.page.text_content("#cell-value") == "not stored"
        assert s.page.text_content("#figure-view") == "not stored"
        rows = s.page.eval_on_selector_all(".stats-table tbody tr", "rs => rs.map(r => r.cells[1].textContent)")
        assert set(rows) == {"\u2013"}  # render_figures.py computed nothing for this head
        screenshot(s, "single-not-stored")
        s.page.keyboard.press("h")  # L0H2: not stored either
        s.page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L0H2')")
        assert s.page.is_visible("#not-stored")
        s.page.keyboard.press("h")  # L1H0 is stored
        s.page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L1H0')")
        s.page.wait_for_function("() => document.querySelector('#cell-value').dataset.value !== undefined")
        assert not s.page.is_visible("#not-stored")
        assert shown(s.page) == (formatted(patterns.head(1, 0)[4, 2]), 4, 2)
        s.page.keyboard.press("L")  # back to layer 0: L0H0 is stored, L0H1 (via H) is not
        s.page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L0H0')")
        s.page.wait_for_function("() => document.querySelector('#cell-value').dataset.value !== undefined")
        assert shown(s.page)[0] == formatted(patterns.head(0, 0)[4, 2])
        s.page.keyboard.press("ArrowDown")
        assert shown(s.page) == (formatted(patterns.head(0, 0)[5, 2]), 5, 2)
        assert not s.errors
        assert_only_local(s)


def format_1(patterns: np.ndarray) -> bytes:
    """A causal pattern file as format 1 wrote it: "ATTNPAT1", uint32 header length, a JSON header with
    "offsets", then every head's stream, layer-major (what data dirs written before format 2 hold)."""
    n_layers, n_heads, n, _ = patterns.shape
    q = np.round(patterns.reshape(-1, n, n)[:, np.tri(n, dtype=bool)] * storage.PATTERN_SCALE).astype("<u2")
    streams = [zlib.compress(np.ascontiguousarray(h).view(np.uint8).reshape(-1, 2).T.tobytes()) for h in q]
    header = json.dumps({"n_layers": n_layers, "n_heads": n_heads, "n_tokens": n, "scale": storage.PATTERN_SCALE,
                         "layout": "tril", "offsets": np.cumsum([0] + [len(c) for c in streams]).tolist()}).encode()
    return b"ATTNPAT1" + struct.pack("<I", len(header)) + header + b"".join(streams)


def test_format_1_files_still_read(site):
    h = lens.prompt_hash(TEXTS[1])
    path = datadir.prompt_dir(site, MODEL, h) / datadir.PATTERN_FILE
    lens.write_atomic(path, format_1(storage.Patterns(path).all()))
    stored = storage.Patterns(path).head(1, 1)  # the oracle reads format 1 too
    with browser_session(site) as s:
        open_single(s, model=MODEL, prompt=h, layer=1, head=1)
        for q, k in [(0, 0), (9, 4), (14, 14)]:
            hover_cell(s.page, q, k)
            assert shown(s.page) == (formatted(stored[q, k]), q, k)
        assert not s.errors


def test_one_head_is_read_by_byte_ranges(site):
    """Format 2: the first 16 bytes, the footer (an open-ended range), then only the head's own stream."""
    h = lens.prompt_hash(TEXTS[1])
    patterns = storage.load_patterns(site, MODEL, h)
    start, size = patterns.chunks[1 * 3 + 2]
    footer = struct.unpack("<Q", patterns.path.read_bytes()[8:16])[0]
    with browser_session(site) as s:
        ranges = []
        s.page.on("request", lambda r: r.url.endswith("patterns.bin") and ranges.append(r.headers.get("range")))
        open_single(s, model=MODEL, prompt=h, layer=1, head=2)
        assert ranges == ["bytes=0-15", f"bytes={footer}-", f"bytes={start}-{start + size - 1}"]
        assert not s.errors


# ---- value-weighted attention, comparing two patterns, figure export: the demo model's checkpoints ----

def prompts_of(data: Path, model: str) -> list[dict]:
    """The model's prompts in the index's order, each its prompt.json (the index rows hold no tokens)."""
    return [lens.read_json(datadir.prompt_json_path(data, model, r["hash"])) for r in index_rows(data, model)]


def norms_of(data: Path, model: str, phash: str) -> np.ndarray:
    cfg = json.loads(datadir.model_cfg_path(data, model).read_text())
    n = storage.load_patterns(data, model, phash).n_tokens
    return storage.read_value_norms(data, model, phash, (cfg["n_layers"], cfg["n_heads"], n))


def exact(page, selector: str) -> float:
    return float(page.eval_on_selector(selector, "e => e.dataset.value"))


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
        n_heads = json.loads(datadir.model_cfg_path(demo_site, FINAL).read_text())["n_heads"]
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
    datadir.value_norms_path(demo_site, FINAL, p["hash"]).unlink()
    with browser_session(demo_site) as s:
        open_single(s, model=FINAL, prompt=p["hash"], layer=0, head=1, vw="raw")
        assert s.page.is_visible("#not-stored")
        assert s.page.text_content("#not-stored") == "no value norms stored (recompute with compute_activations.py)"
        s.page.keyboard.press("v")
        s.page.keyboard.press("v")  # attention: drawn as usual
        s.page.wait_for_function("() => !new URLSearchParams(location.search).has('vw')")
        s.page.wait_for_function("() => document.querySelector('#not-stored').classList.contains('hidden')")
        assert not s.errors


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
        assert exact(s.page, "#cell-b") == float(
            storage.load_patterns(demo_site, MODELS[0], b["hash"]).head(1, 0)[3, 1])
        screenshot(s, f"single-compare-mismatch-{'dark' if dark else 'light'}")
        open_single(s, model=FINAL, prompt=a["hash"], layer=1, head=0, bmodel=MODELS[0], bprompt=a["hash"],
                    blayer=7, bhead=0)
        assert "has no head L7H0" in s.page.text_content("#not-stored-b")
        assert "A \u2212 B needs both patterns" in s.page.text_content("#not-stored-d")
        assert not s.errors


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
    # the longest prompt whose every token is labelled (cells of 480 / n px, at least MIN_LABEL_CELL = 11)
    p = max((p for p in prompts_of(demo_site, FINAL) if p["n_tokens"] <= 43), key=lambda p: p["n_tokens"])
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
    data = tmp_path / "data"
    text = " ".join(f"w{i}" for i in range(599))
    (h,) = make_data(data, n_layers=1, n_heads=1, texts=[text])
    render(data, "raw")
    tokens = json.loads(datadir.prompt_json_path(data, "fake-model", h).read_text())["tokens"]
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
