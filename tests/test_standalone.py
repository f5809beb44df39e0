"""Self-contained views in a real chromium opened from disk with the network off: standalone.py's file and
notebook.attention_view's cell output show exact hover values, compare and export, and make no request at all."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from browser import browser_session, render, screenshot
from fake_data import index_rows
from test_site_single import formatted, hover_cell, read_svg, shown

from attention_lens import datadir, lens, standalone, storage

ROOT = Path(__file__).resolve().parent.parent
MODEL = lens.model_dir_name("demo")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """compute_activations.py demo on 4 prompts, then render_figures.py, as a user runs them."""
    tmp = tmp_path_factory.mktemp("standalone")
    proc = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), "demo", str(ROOT / "prompts.jsonl"),
                           "--n-samples", "4", "--no-probe", "--save-path", "data"], cwd=tmp, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    render(tmp / "data")
    return tmp / "data"


def build_html(data: Path, out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "standalone.py"), str(out), "--save-path", str(data), *flags],
                          capture_output=True, text=True, timeout=300)


class InFrame:
    """A pane's frame with the page's mouse, so test_site_single's helpers drive a page inside a frame."""

    def __init__(self, page, frame):
        self.mouse, self.frame = page.mouse, frame
        self.locator, self.eval_on_selector = frame.locator, frame.eval_on_selector


def pane(page, file: str):
    """The frame showing `file` (embed.js titles each pane's iframe by its page), once the page is ready."""
    page.wait_for_function(f"""() => {{
        const frames = [...document.querySelectorAll('iframe')]
            .flatMap(f => [f, ...f.contentDocument.querySelectorAll('iframe')]);
        return frames.some(f => f.title === '{file}' && f.contentDocument.body?.dataset.ready === '1');
    }}""")
    frames = [f for f in page.frames if f.parent_frame and f.frame_element().get_attribute("title") == file]
    return frames[-1]


def assert_no_requests(s) -> None:
    """Nothing was requested but the file itself: no server, no network, no file next to it."""
    assert s.requests == [s.url], s.requests


def check_single_view(s, frame, stored: dict, tmp_path: Path) -> None:
    """On the single view of L1H2: exact hover values, compare with L1H3 pinned as B, SVG export of A, B and A - B."""
    view = InFrame(s.page, frame)
    a = stored[(1, 2)]
    n = len(a)
    for q, k in [(n - 1, 0), (n // 2, 3), (5, 5)]:
        hover_cell(view, q, k)
        text, sq, sk = shown(view)
        assert (text, sq, sk) == (formatted(a[q, k]), q, k)
        assert float(frame.eval_on_selector("#cell-value", "e => e.dataset.value")) == float(a[q, k])
    frame.focus("#matrix")
    s.page.keyboard.press("h")  # L1H3
    frame.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L1H3')")
    s.page.keyboard.press("b")  # pin L1H3 as B
    s.page.keyboard.press("H")  # A back to L1H2
    frame.wait_for_function("() => document.querySelector('#caption-b').textContent.includes('L1H3')")
    frame.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L1H2')")
    b = stored[(1, 3)]
    hover_cell(view, n - 1, 2)
    values = [float(frame.eval_on_selector(sel, "e => e.dataset.value"))
              for sel in ("#cell-value", "#cell-b", "#cell-d")]
    assert values == pytest.approx([a[n - 1, 2], b[n - 1, 2], a[n - 1, 2] - b[n - 1, 2]], abs=1e-7)
    with s.page.expect_download() as download:
        frame.click("#export-svg")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    _, _, _, images = read_svg(path)
    assert [im.size for _, im in images] == [(n, n)] * 3  # A, B and A - B, one pixel per cell
    viridis = lens.colormap_table("viridis")
    for q, k in [(n - 1, 0), (n // 2, 3)]:
        assert images[0][1].convert("RGB").getpixel((k, q)) == tuple(viridis[round(float(a[q, k]) * 255)])


def test_html_file_opens_from_disk_with_no_request(demo_data, tmp_path):
    rows = index_rows(demo_data, MODEL)
    chosen = [rows[0]["hash"], rows[2]["hash"]]
    out = tmp_path / "view.html"
    proc = build_html(demo_data, out, "--models", "demo", "--prompts", ",".join(h[:8] for h in chosen),
                      "--heads", "L1H*")
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(rf"standalone.py: {out}: {len(out.read_bytes()) / 1e6:.1f} MB \(1 model\(s\), 2 prompt\(s\), "
                        r"heads L1H\*\)\n", proc.stdout)
    alias = tmp_path / "alias.html"  # build_index.py --html is an alias: the same file
    assert subprocess.run([sys.executable, str(ROOT / "build_index.py"), "--save-path", str(demo_data), "--html",
                           str(alias), "--models", "demo", "--prompts", ",".join(h[:8] for h in chosen),
                           "--heads", "L1H*"], capture_output=True, timeout=300).returncode == 0
    assert alias.read_bytes() == out.read_bytes()
    patterns = storage.load_patterns(demo_data, MODEL, chosen[1])
    stored = {(1, h): patterns.head(1, h) for h in range(4)}
    with browser_session(out) as s:
        s.page.goto(s.url)
        grid = pane(s.page, "index.html")
        assert len(grid.query_selector_all(".tile")) == 2 * 4  # two prompts x the four heads of layer 1
        grid.wait_for_function("() => [...document.querySelectorAll('.tile img')]"
                               ".every(i => i.complete && i.naturalWidth)")
        screenshot(s, "standalone-file-grid")
        href = [h for h in grid.eval_on_selector_all(".tile", "ts => ts.map(t => t.getAttribute('href'))")
                if chosen[1] in h and "layer=1&head=2" in h][0]
        grid.click(f'.tile[href="{href}"]')  # a tile opens the single view in the same pane
        single = pane(s.page, "single.html")
        assert s.page.url.startswith(s.url + "#single.html?")
        check_single_view(s, single, stored, tmp_path)
        screenshot(s, "standalone-file-single")
        s.page.reload()  # the address after '#' reopens the view
        single = pane(s.page, "single.html")
        assert single.text_content("#title").endswith("L1H2")
        s.page.go_back()  # the grid again
        grid = pane(s.page, "index.html")
        grid.click("#heads-link")  # and the third page: the heads page
        heads = pane(s.page, "heads.html")
        assert heads.query_selector("#errors") is None
        heads.wait_for_selector(".heatmap-grid")
        screenshot(s, "standalone-file-heads")
        assert not s.errors
        assert s.requests and all(u == s.url for u in s.requests), s.requests


def test_html_view_shows_the_heads_kinds(demo_data, tmp_path):
    """heads.json comes with the file, as the data dir measured it: each tile shows its head's kinds, and a head's
    nearest heads are only those of the view's models."""
    kinds = json.loads(datadir.heads_json_path(demo_data, MODEL).read_text())
    labelled = [h for h in range(4) if kinds["heads"][0][h]["kinds"]]
    assert labelled  # the demo's previous-token head at least
    out = tmp_path / "view.html"
    assert build_html(demo_data, out, "--models", "demo", "--heads", "L0H*").returncode == 0
    with browser_session(out) as s:
        s.page.goto(s.url)
        grid = pane(s.page, "index.html")
        grid.wait_for_selector(".tile .tile-kinds .kind")
        n_prompts = len(index_rows(demo_data, MODEL))
        for h in range(4):
            names = [k["name"] for k in kinds["heads"][0][h]["kinds"]]
            shown = grid.eval_on_selector_all(f".tile[data-layer='0'][data-head='{h}'] .tile-kinds .kind",
                                              "ks => ks.map(k => k.dataset.kind)")
            assert shown == names * n_prompts, (h, shown, names)
        assert not s.errors


def test_html_embeds_only_the_chosen_heads_and_prompts(demo_data, tmp_path):
    rows = index_rows(demo_data, MODEL)
    others = set().union(*(lens.search_words(r) for r in rows if r is not rows[1]))
    word = max((w for w in lens.search_words(rows[1]) if not any(o.startswith(w) for o in others)),
               key=len)  # no other prompt has a word starting so
    view = standalone.view_files(demo_data, ["demo"], word, "L0H1,L1H*")
    assert view.hashes == [rows[1]["hash"]]  # a search: every word starts a word of the text
    files = view.files
    info = json.loads(files[f"{MODEL}/prompts/{rows[1]['hash']}/prompt.json"])
    assert info["heads"] == "L0H1,L1H*"
    meta = json.loads(files[f"{MODEL}/index/meta.json"])
    assert (meta["count"], meta["n_stored"]) == (1, 1)
    src = storage.load_patterns(demo_data, MODEL, rows[1]["hash"])
    (tmp_path / "patterns.bin").write_bytes(files[f"{MODEL}/prompts/{rows[1]['hash']}/patterns.bin"])
    embedded = storage.Patterns(tmp_path / "patterns.bin")
    assert embedded.heads == [(0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert np.array_equal(embedded.head(1, 3), src.head(1, 3))
    table = np.frombuffer(files[f"{MODEL}/stats/bos.f32"], "<f4")
    assert table.size == 2 * 4  # one prompt's row
    assert all(name.startswith((MODEL + "/", "models.jsonl", "figures.jsonl", "colormaps.json"))
               or (ROOT / "site" / name).is_file() for name in files)


def test_html_over_the_limit_is_refused(demo_data, tmp_path):
    out = tmp_path / "big.html"
    proc = build_html(demo_data, out, "--max-size", "0.1")
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"standalone.py: {out}: ")  # the size, printed first
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {out}: ")
    assert "--models, --prompts or --heads" in proc.stderr and "--max-size 0.1" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [
    (["--heads", "L1H*"], "error: --heads: chooses what --html embeds; add --html OUT.html\n"),
])
def test_html_flags_need_html(demo_data, flags, message):
    proc = subprocess.run([sys.executable, str(ROOT / "build_index.py"), "--save-path", str(demo_data), *flags],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (1, message)


def test_html_prompts_matching_nothing(demo_data, tmp_path):
    proc = build_html(demo_data, tmp_path / "x.html", "--prompts", "zzzzqqq")
    assert proc.returncode == 1 and proc.stderr == f"error: --prompts zzzzqqq: no prompt of {MODEL} matches\n"
    proc = build_html(demo_data, tmp_path / "x.html", "--prompts", "3f8e1dc8,the")
    assert proc.stderr == "error: --prompts 3f8e1dc8,the: 'the' is not a prompt hash (a search has no commas)\n"
    assert not (tmp_path / "x.html").exists()


def notebook_page(view, path: Path) -> Path:
    """The cell output in an HTML page, as a notebook renders it."""
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body><p>In [1]:</p>{view._repr_html_()}"
                    "</body></html>")
    return path


def test_notebook_output_works_offline(demo_data, tmp_path):
    from attention_lens.notebook import attention_view
    rows = index_rows(demo_data, MODEL)
    view = attention_view("demo", save_path=demo_data, prompts=rows[3]["hash"], layer=1, head=2, height=1000)
    patterns = storage.load_patterns(demo_data, MODEL, rows[3]["hash"])
    stored = {(1, h): patterns.head(1, h) for h in range(4)}
    with browser_session(notebook_page(view, tmp_path / "notebook.html"), height=1900) as s:  # the grid is above
        s.page.goto(s.url)
        grid, single = pane(s.page, "index.html"), pane(s.page, "single.html")
        assert len(grid.query_selector_all(".tile")) == 8
        assert grid.is_hidden("#controls")  # folded: the patterns first
        screenshot(s, "standalone-notebook")
        check_single_view(s, single, stored, tmp_path)
        tile = grid.eval_on_selector_all(".tile", "ts => ts.map(t => t.getAttribute('href'))")[1]  # L0H1
        grid.click(f'.tile[href="{tile}"]')  # opens in the single view's pane, the grid stays
        s.page.wait_for_function("() => [...document.querySelector('iframe').contentDocument"
                                 ".querySelectorAll('iframe')]"
                                 ".some(f => f.contentDocument.querySelector('#title')?.textContent.endsWith('L0H1'))")
        assert len(pane(s.page, "index.html").query_selector_all(".tile")) == 8
        assert not s.errors
        assert_no_requests(s)


def code_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_notebook_md_runs(tmp_path, monkeypatch, capsys):
    """docs/notebook.md's code, run as a notebook runs it: the view it shows pins the value it prints."""
    monkeypatch.chdir(tmp_path)
    space = {}
    blocks = code_blocks(ROOT / "docs" / "notebook.md")
    assert len(blocks) == 4
    exec(blocks[0], space)  # the model, in a cell of its own
    capsys.readouterr()
    exec(blocks[1], space)
    assert capsys.readouterr() == ("", "")  # nothing above the view
    exec(blocks[2], space)
    printed = capsys.readouterr().out.strip()
    first = space["view"]
    exec(blocks[3], space)
    assert (tmp_path / "lighthouse.html").is_file()
    with browser_session(notebook_page(first, tmp_path / "notebook.html"), height=1100) as s:
        s.page.goto(s.url)
        single = pane(s.page, "single.html")
        assert single.text_content("#cell-value") == printed
        assert (single.eval_on_selector("#cell-value", "e => [e.dataset.q, e.dataset.k]")) == ["16", "6"]
        assert "pinned" in single.text_content("#pinned")
        assert not s.errors
        assert_no_requests(s)


def test_html_into_a_directory_is_refused(demo_data, tmp_path):
    proc = build_html(demo_data, tmp_path)
    assert (proc.returncode, proc.stderr) == (1, f"error: {tmp_path}: a directory; name the file to write, "
                                                 f"e.g. {tmp_path / 'view.html'}\n")


def test_notebook_view_of_a_model_name_in_a_temporary_dir(tmp_path, monkeypatch):
    """A model name is loaded; without save_path nothing stays on disk; heads limit the grid and the first of
    them is the single view's head."""
    from attention_lens.notebook import attention_view
    monkeypatch.chdir(tmp_path)
    view = attention_view("demo", "one two three one two three", heads="L1H2-3")
    panes = json.loads(re.search(r'<script type="application/json" id="attn-panes">(.*?)</script>', view.document)[1])
    phash = lens.prompt_hash("one two three one two three")
    assert [p["url"] for p in panes] == [f"index.html?models=demo&heads=L1H2-3&prompts={phash}&controls=hide&cols=4",
                                         f"single.html?model=demo&prompt={phash}&layer=1&head=2"]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(lens.UserError, match="give texts to compute, or save_path="):
        attention_view("demo")


@pytest.mark.parametrize("native_base64", [True, False])
def test_in_memory_fetch_answers_byte_ranges_as_serve_py(demo_data, tmp_path, native_base64):
    """attnFetch (site/embed.js), which data.js uses inside the file: whole files, a-b, a-, -n, 416, 404; the
    embedded bytes decoded by Uint8Array.fromBase64 or, in browsers without it, by atob."""
    phash = index_rows(demo_data, MODEL)[0]["hash"]
    out = tmp_path / "view.html"
    assert build_html(demo_data, out, "--prompts", phash).returncode == 0
    path = f"{MODEL}/prompts/{phash}/patterns.bin"
    data = datadir.patterns_path(demo_data, MODEL, phash).read_bytes()
    size = len(data)
    with browser_session(out) as s:
        if not native_base64:
            s.page.add_init_script("delete Uint8Array.fromBase64")
        s.page.goto(s.url)
        grid = pane(s.page, "index.html")
        assert s.page.evaluate("typeof Uint8Array.fromBase64") == ("function" if native_base64 else "undefined")
        answers = grid.evaluate("""async ([path, ranges]) => Promise.all(ranges.map(async (range) => {
            const r = await attnFetch(path, range ? { headers: { Range: range } } : undefined);
            return [r.status, r.headers.get('Content-Range'), [...new Uint8Array(await r.arrayBuffer())]];
        }))""", [path, ["", "bytes=0-15", "bytes=10-", f"bytes=-{size + 5}", "bytes=-7", f"bytes={size}-",
                        "bytes=5-2"]])
        missing = grid.evaluate("async () => (await attnFetch('nope/prompt.json')).status")
    assert answers[0] == [200, None, list(data)]
    assert answers[1] == [206, f"bytes 0-15/{size}", list(data[:16])]
    assert answers[2] == [206, f"bytes 10-{size - 1}/{size}", list(data[10:])]
    assert answers[3] == [206, f"bytes 0-{size - 1}/{size}", list(data)]
    assert answers[4] == [206, f"bytes {size - 7}-{size - 1}/{size}", list(data[-7:])]
    assert answers[5][0] == 416
    assert answers[6] == [200, None, list(data)]  # malformed (backwards): the whole file, as serve.py
    assert missing == 404


def test_a_shared_file_names_no_local_path(tiny_checkpoint, tmp_path):
    """A model computed from a local checkpoint dir and a figure's traceback both hold paths of this machine; the
    one-file view, made to be mailed, holds neither."""
    data, figs = tmp_path / "data", tmp_path / "figs"
    (tmp_path / "p.jsonl").write_text('{"text": "one two three four five"}\n')
    figs.mkdir()
    (figs / "boom.py").write_text("from attention_lens import figure\n\n@figure\n"
                                  "def boom(attn):\n    raise ValueError('no')\n")
    for script, *args in [("compute_activations.py", tiny_checkpoint, tmp_path / "p.jsonl", "--no-probe"),
                          ("render_figures.py", "--figures-dir", figs, "--jobs", "1")]:
        r = subprocess.run([sys.executable, str(ROOT / script), *map(str, args), "--save-path", str(data)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    model = lens.model_dir_name(str(tiny_checkpoint))
    traceback = next(data.rglob("boom.errors.json")).read_text()
    assert str(ROOT) in traceback and str(tiny_checkpoint) in (data / model / "model_cfg.json").read_text()
    out = tmp_path / "view.html"
    assert build_html(data, out).returncode == 0
    html = out.read_text()
    assert "ValueError: no" in html and f'\\"model_name\\": \\"{model}\\"' in html  # the error and the model are there
    assert str(ROOT) not in html and str(tiny_checkpoint.parent) not in html and str(tmp_path) not in html
