"""notebook.attention_view's output where the live view cannot run: the static picture (a PNG of the grid, read
back by pillow, its tiles the stored patterns in viridis), the mime bundle, the HTML a sanitizer leaves, the text
repr; and where it runs: nothing printed above it, a grid of 12 heads a layer without a scrollbar."""
import base64
import html
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import browser_session
from PIL import Image

from attention_lens import lens, storage
from attention_lens.notebook import attention_view

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The old lighthouse keeper climbed the stairs. The old lighthouse keeper climbed the stairs."
LONG = " ".join(f"word{i % 37} and {i}" for i in range(60))  # over 128 tokens: drawn one px per block of cells
GAP = 4  # px around and between the picture's tiles
IFRAME = re.compile(r"<iframe\b.*?</iframe>", re.S)  # what a sanitizer removes


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook") / "data"


@pytest.fixture(scope="module")
def view(demo):
    return attention_view("demo", TEXT, save_path=demo)


def picture(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.mode) == ("PNG", "RGB")
    return np.asarray(image)


def viridis(value: float) -> np.ndarray:
    """The colour the site gives a stored value in [0, 1]."""
    return lens.colormap_table("viridis")[int(value * 255 + 0.5)]


def test_picture_tiles_are_the_stored_patterns_in_viridis(view, demo):
    """Layers as rows and heads as columns; each cell of a short prompt a square of 128 // n_tokens px in the
    colour of its stored value; light gaps."""
    patterns = storage.load_patterns(demo, "demo", lens.prompt_hash(TEXT))
    n = patterns.n_tokens
    cell = 128 // n
    tile = n * cell
    rgb = picture(view.picture)
    assert rgb.shape == (GAP + 2 * (tile + GAP), GAP + 4 * (tile + GAP), 3)
    for layer, head in [(0, 1), (1, 2), (1, 3)]:
        attn = patterns.head(layer, head)
        top, left = GAP + layer * (tile + GAP), GAP + head * (tile + GAP)
        for q, k in [(0, 0), (n - 1, 0), (n - 1, n - 1), (n // 2, 3), (5, 6)]:
            square = rgb[top + q * cell:top + (q + 1) * cell, left + k * cell:left + (k + 1) * cell]
            assert (square == viridis(attn[q, k])).all(), (layer, head, q, k)
    assert (rgb[:GAP] > 200).all() and (rgb[:, left - GAP:left] > 200).all()


def test_long_prompt_tiles_keep_each_blocks_largest_value(tmp_path):
    """A prompt over 128 tokens: one px per 2 x 2 cells, the block's largest value (a sparse head's strong cells
    stay visible)."""
    view = attention_view("demo", LONG, save_path=tmp_path, heads="L1H*")
    attn = storage.load_patterns(tmp_path, "demo", lens.prompt_hash(LONG)).head(1, 2)
    n = len(attn)
    assert 128 < n <= 256
    tile = (n + 1) // 2
    rgb = picture(view.picture)
    assert rgb.shape == (GAP + tile + GAP, GAP + 4 * (tile + GAP), 3)  # one layer: L1
    left = GAP + 2 * (tile + GAP)
    for i, j in [(0, 0), (tile - 1, 0), (tile - 1, tile - 1), (40, 20), (60, 59)]:
        block = attn[2 * i:2 * i + 2, 2 * j:2 * j + 2]
        assert (rgb[GAP + i, left + j] == viridis(block.max())).all(), (i, j)


def test_mimebundle_holds_html_png_and_text(view):
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {"text/html", "image/png", "text/plain"}
    assert base64.b64decode(bundle["image/png"]) == view.picture
    assert bundle["text/plain"] == repr(view)
    assert bundle["text/html"] == view._repr_html_()


def test_html_without_its_iframe_still_shows_the_picture_and_how_to_see_it_live(view):
    """A sanitizer (an untrusted notebook, GitHub's preview) strips the iframe: the line and the picture remain."""
    page = view._repr_html_()
    assert len(IFRAME.findall(page)) == 1
    static = IFRAME.sub("", page)
    assert "<iframe" not in static and "srcdoc" not in static
    image = re.search(r'<img src="data:image/png;base64,([^"]+)"', static)
    assert image and base64.b64decode(image[1]) == view.picture
    line = html.unescape(re.sub(r"<[^>]+>", "", static))  # the text a reader sees
    assert "static picture of demo's heads L*H* (8)" in line
    for how in ("Trust Notebook", "jupyter trust NAME.ipynb", 'view.save("view.html")'):
        assert how in line


def test_text_repr_is_one_line_saying_what_and_how(view):
    text = repr(view)
    assert "\n" not in text
    assert text.startswith("<attention view of demo, 1 prompt, heads L*H* (8): live where the notebook is trusted")
    assert "jupyter trust NAME.ipynb" in text and 'view.save("view.html")' in text


def test_the_live_view_covers_the_picture_which_shows_when_it_is_stripped(view, tmp_path):
    """In a browser: the iframe lies over the picture (what is at the picture's centre is the iframe); without
    the iframe the picture shows whole."""
    for name, output in [("live", view._repr_html_()), ("stripped", IFRAME.sub("", view._repr_html_()))]:
        page = tmp_path / f"{name}.html"
        page.write_text(f"<!doctype html><meta charset='utf-8'><body>{output}</body>")
        with browser_session(page, width=1000, height=1400) as s:
            s.page.goto(s.url)
            s.page.wait_for_function("() => document.querySelector('img').complete")
            on_top = s.page.evaluate("""() => { const r = document.querySelector('img').getBoundingClientRect();
                return document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2).tagName; }""")
            size = s.page.evaluate("() => { const i = document.querySelector('img'); "
                                   "return [i.naturalWidth, i.naturalHeight, i.clientWidth, i.clientHeight]; }")
            assert on_top == ("IFRAME" if name == "live" else "IMG")
            assert size[:2] == list(Image.open(io.BytesIO(view.picture)).size) == size[2:]
            assert s.requests == [s.url] and not s.errors


def test_a_model_loaded_by_name_prints_nothing():
    """attention_view("demo", text) as a notebook cell runs it: no progress bar or warning above the view."""
    code = f"from attention_lens.notebook import attention_view\nprint(repr(attention_view('demo', {TEXT!r})))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("<attention view of demo, 1 prompt") and proc.stdout.count("\n") == 1


@pytest.fixture(scope="module")
def twelve_heads(tmp_path_factory):
    """The view of a model of 3 layers of 12 heads (random weights; tests/tiny_model.py)."""
    from tiny_model import make_checkpoint
    tmp = tmp_path_factory.mktemp("twelve")
    ckpt = make_checkpoint(tmp / "tiny-12-heads", n_layer=3, n_head=12, n_embd=48)
    return attention_view(str(ckpt), TEXT, model_name="tiny-12-heads", save_path=tmp / "data")


@pytest.mark.parametrize("width", [700, 1300])
def test_the_grid_of_12_heads_a_layer_fits_its_pane(twelve_heads, tmp_path, width):
    """Every tile inside the grid's pane, which does not scroll, and the panes inside the output's frame."""
    page = tmp_path / "cell.html"
    page.write_text(f"<!doctype html><meta charset='utf-8'><body>{twelve_heads._repr_html_()}</body>")
    with browser_session(page, width=width, height=1200) as s:
        s.page.goto(s.url)
        s.page.wait_for_function("""() => [...document.querySelector('iframe').contentDocument
            .querySelectorAll('iframe')].some(f => f.contentDocument.querySelectorAll('.tile').length === 36)""")
        fit = s.page.evaluate("""() => {
            const outer = document.querySelector('iframe'), doc = outer.contentDocument.documentElement;
            const grid = [...outer.contentDocument.querySelectorAll('iframe')].find(f => f.title === 'index.html');
            const page = grid.contentDocument.documentElement;
            const bottom = Math.max(...[...page.querySelectorAll('.tile')].map(t => t.getBoundingClientRect().bottom));
            return {gridScrolls: page.scrollHeight > page.clientHeight, tilesBottom: bottom, pane: grid.clientHeight,
                    frameScrolls: doc.scrollHeight > doc.clientHeight}; }""")
        assert fit["tilesBottom"] <= fit["pane"], fit
        assert not fit["gridScrolls"] and not fit["frameScrolls"], fit
        assert not s.errors
