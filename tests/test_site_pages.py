"""What every page must do whatever the data dir holds: ask only for files that exist (no 404)."""
import os
from pathlib import Path

import pytest
from browser import browser_session

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"{i}. the cat sat on the mat and the cat sat on the mat again, said {w}"
         for i, w in enumerate(["north", "river", "stone", "cloud", "lamp", "seven"])]


@pytest.fixture(scope="module")
def half_done(tmp_path_factory) -> Path:
    """The demo model's statistics of six prompts, the patterns of two, no figure rendered: a data dir just
    after `compute_activations.py --patterns 2`."""
    from attention_lens import compute_activations as ca
    data = tmp_path_factory.mktemp("half") / "data"
    from attention_lens import forward
    model = forward.load_model(str(ROOT / "demo" / "model"), "cpu", "float32")
    ca.compute_activations(TEXTS, model, data, model_name="demo", patterns=2, progress=False)
    from attention_lens.build_index import build_index
    build_index(data)
    return data


def visit(session, page: str) -> None:
    session.page.goto(session.url + page)
    session.page.wait_for_function("document.body.dataset.ready === '1'")
    session.page.wait_for_load_state("networkidle")


@pytest.mark.parametrize("data_dir", ["half_done", "rendered_data_dir"])
def test_no_page_asks_for_a_file_that_is_not_there(data_dir, request):
    """The grid, the single view (its figures, value-weighted) and the heads page (a head's panel), and a search
    for words no prompt has: every request is answered, none with 404, and no page shows an error."""
    data = request.getfixturevalue(data_dir)
    with browser_session(data) as s:
        for page in ["index.html", "index.html?figures=raw,no_bos", "single.html", "single.html?figure=no_bos",
                     "single.html?vw=raw", "heads.html", "heads.html?panel=L1H0"]:
            visit(s, page)
        visit(s, "index.html")
        s.page.fill("#search", "qqqzzz xyzzy")
        s.page.wait_for_function("document.querySelector('#prompt-count').textContent.includes(' 0 of ')")
        s.page.wait_for_load_state("networkidle")
        assert len(s.requests) > 20
        assert not s.missing, s.missing
        assert not s.errors, s.errors


def test_a_page_opened_from_a_file_says_how_to_open_it(half_done):
    """index.html and the other pages opened from disk (file://, where their modules cannot read the data) say in
    one line how to serve them; served, the note stays hidden."""
    for page in ["index.html", "single.html", "heads.html", "head.html"]:
        with browser_session(half_done / page) as s:
            s.page.goto(s.url)
            note = s.page.locator("#file-note")
            assert note.is_visible() and "python serve.py --save-path DIR" in note.inner_text(), page
    with browser_session(half_done) as s:
        visit(s, "index.html")
        assert not s.page.locator("#file-note").is_visible()
    assert (half_done / ".nojekyll").is_file()  # build_index.py writes it: a Jekyll host keeps the "_" shards


def test_a_word_shard_the_index_lists_but_the_host_lacks_is_an_error(half_done, tmp_path):
    """A host that drops a listed shard (GitHub Pages drops names starting with "_" without .nojekyll): the
    search says which file and why, instead of finding nothing."""
    import json
    import shutil
    data = tmp_path / "data"
    shutil.copytree(half_done, data)
    words = data / "demo" / "index" / "words"
    assert "th" in json.loads((data / "demo" / "index" / "shards.json").read_text())
    (words / "th.json").unlink()
    with browser_session(data) as s:
        visit(s, "index.html")
        s.page.fill("#search", "the")
        s.page.wait_for_selector("#errors", timeout=10_000)
        text = s.page.locator("#errors").inner_text()
        assert "demo/index/words/th.json: HTTP 404" in text and "the index lists it" in text


def test_a_static_host_without_cache_headers_never_shows_a_stale_index(half_done, tmp_path):
    """Behind a host that sends no Cache-Control (python -m http.server), files a browser would deem fresh for
    a year (last modified long ago) are still checked: after more prompts are indexed, a reload shows them.
    No request routing here: Playwright turns the HTTP cache off when routes are set."""
    import functools
    import http.server
    import shutil
    import threading

    from browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    from attention_lens import compute_activations as ca
    from attention_lens import forward
    from attention_lens.build_index import build_index

    data = tmp_path / "data"
    shutil.copytree(half_done, data)

    def age(year):
        for p in data.rglob("*"):
            os.utime(p, (0, 86400 * 365 * (year - 1970)))
    age(2015)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(data))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    count = "document.querySelector('#prompt-count').textContent.endsWith(' of {} match')"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            foreign = []
            page.on("request", lambda r: r.url.startswith(url) or foreign.append(r.url))
            page.goto(url + "index.html")
            page.wait_for_function(count.format(6))
            model = forward.load_model(str(ROOT / "demo" / "model"), "cpu", "float32")
            ca.compute_activations(["one more prompt about rivers", "and another about stones"], model, data,
                                   model_name="demo", patterns="none", progress=False)
            build_index(data)
            age(2016)
            page.reload()
            page.wait_for_function(count.format(8), timeout=10_000)
            browser.close()
            assert not foreign
    finally:
        server.shutdown()
        server.server_close()
