"""The grid view in a real browser (Debian's chromium, headless, network off)."""
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from browser import assert_only_local, bos, browser_session, render, screenshot
from conftest import FINAL
from fake_data import TEXTS, drop_images, fake_patterns, index_rows, make_data

from attention_lens import datadir, lens, storage
from attention_lens.build_index import build_index

MODEL = "fake-model"  # 2 layers x 3 heads, 4 prompts (tests/fake_data.py)
HASHES = sorted(lens.prompt_hash(t) for t in TEXTS)  # the prompt index's order


@pytest.fixture
def site(rendered_data_dir) -> Path:
    """Rendered data (tests/browser.py's figures), where one head's figure failed and one image is missing."""
    drop_images(rendered_data_dir, MODEL, HASHES[0], "raw", [(1, 2)], error="ValueError: figure exploded on this head")
    drop_images(rendered_data_dir, MODEL, HASHES[0], "raw", [(0, 1)])
    return rendered_data_dir


def tiles(page) -> list[dict]:
    """The grid's tiles as (L, H, prompt, figure, what the frame shows), in page order."""
    return page.eval_on_selector_all(".tile", """nodes => nodes.map(n => ({
        layer: +n.dataset.layer, head: +n.dataset.head, prompt: n.dataset.prompt, figure: n.dataset.figure,
        src: n.querySelector('img')?.getAttribute('src') ?? null,
        loaded: !!n.querySelector('img') && n.querySelector('img').complete && n.querySelector('img').naturalWidth > 0,
        error: n.querySelector('.figure-error')?.textContent ?? null,
        placeholder: n.querySelector('.no-image')?.textContent ?? null,
        not_stored: n.querySelector('.not-stored')?.textContent ?? null,
        stat: n.querySelector('.stat')?.textContent ?? null}))""")


def wait_settled(page, n: int) -> None:
    """Wait until n tiles exist and each shows an image, an error text or a placeholder."""
    page.wait_for_function(f"""() => {{
        const t = [...document.querySelectorAll('.tile')];
        return t.length === {n} && t.every(n => n.querySelector('.figure-error, .no-image, .not-stored')
            || (n.querySelector('img')?.complete && n.querySelector('img').naturalWidth > 0));
    }}""", timeout=10000)


def params(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def test_default_view_shows_every_head_of_the_first_prompt(site):
    with browser_session(site) as s:
        s.page.goto(s.url)
        wait_settled(s.page, 6)
        shown = tiles(s.page)
        assert [(t["layer"], t["head"]) for t in shown] == [(l, h) for l in range(2) for h in range(3)]
        assert {t["prompt"] for t in shown} == {HASHES[0]} and {t["figure"] for t in shown} == {"raw"}
        by_head = {(t["layer"], t["head"]): t for t in shown}
        for (l, h), t in by_head.items():
            if (l, h) not in [(1, 2), (0, 1)]:
                assert t["loaded"] and t["src"].startswith("blob:")  # read from the raw pack by range
        assert "ValueError: figure exploded on this head" in by_head[(1, 2)]["error"]
        assert "no image" in by_head[(0, 1)]["placeholder"]
        assert params(s.page) == {"models": MODEL, "prompts": HASHES[0], "figures": "raw"}
        assert s.page.inner_text("#summary") == "6 images"
        assert s.errors == []
        assert_only_local(s)


def test_a_pack_image_that_is_not_a_png_is_refused_not_shown(site):
    """Packs hold PNG only: an SVG in one (a script inside would run in the site's origin once opened) is an error
    on the page, and no image of it is made."""
    pack = datadir.figure_pack_path(site, MODEL, HASHES[1], "raw")
    writer = storage.PackWriter(pack, 2, 3)
    writer.add(0, 0, b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>')
    writer.close()
    with browser_session(site) as s:
        s.page.goto(s.url + f"index.html?prompts={HASHES[1]}&heads=L0H0")
        s.page.wait_for_function("document.querySelector('#errors')?.textContent.includes('not a PNG image')")
        assert "raw.pack: L0H0 is not a PNG image; packs hold PNG only" in s.page.inner_text("#errors")
        assert s.page.eval_on_selector_all(".tile img", "imgs => imgs.length") == 0


def test_select_heads_prompts_figures_and_restore_from_the_url(site):
    with browser_session(site) as s:
        page = s.page
        page.goto(s.url + "index.html")
        wait_settled(page, 6)
        page.fill("#heads-spec", "L1H*, L0H0")
        page.press("#heads-spec", "Enter")
        wait_settled(page, 4)
        assert [(t["layer"], t["head"]) for t in tiles(page)] == [(0, 0), (1, 0), (1, 1), (1, 2)]
        page.click("#head-picker .pick[data-l='1'][data-h='1']")  # picker toggles one head off
        wait_settled(page, 3)
        assert params(page)["heads"] == "L0H0,L1H0,L1H2"
        page.click("#head-picker .pick-label[data-l='0']")  # a layer label toggles the whole layer on
        assert params(page)["heads"] == "L0H*,L1H0,L1H2"

        page.fill("#search", "cat")  # one matching prompt in the table; select it too
        page.wait_for_function("document.querySelectorAll('#prompt-table tbody tr').length === 1")
        page.click("#prompt-table tbody tr")
        page.check("#figures input[value='sharp']")
        n = 5 * 2 * 2  # heads x prompts x figures
        wait_settled(page, n)
        assert {t["prompt"] for t in tiles(page)} == {HASHES[0], lens.prompt_hash(TEXTS[0])}
        sharp = [t for t in tiles(page) if t["figure"] == "sharp"]
        assert len(sharp) == 10 and all(t["loaded"] for t in sharp)

        page.select_option("#group", "prompt")
        page.select_option("#sort", "figure")
        page.fill("#size", "100")
        page.dispatch_event("#size", "input")
        wait_settled(page, n)
        url = page.url
        expected = tiles(page)
        assert page.eval_on_selector_all(".group-title", "n => n.length") == 2

        page.goto("about:blank")
        page.goto(url)  # a link reproduces the view
        wait_settled(page, n)
        same = lambda t: {**t, "src": t["src"] and t["src"][:5]}  # noqa: E731 (a blob URL is new on each load)
        assert [same(t) for t in tiles(page)] == [same(t) for t in expected]
        assert page.input_value("#heads-spec") == "L0H*,L1H0,L1H2"
        assert page.input_value("#search") == "cat"
        assert page.input_value("#group") == "prompt" and page.input_value("#size") == "100"
        assert page.eval_on_selector(".tile", "n => Math.round(n.getBoundingClientRect().width)") < 140
        assert s.errors == []
        assert_only_local(s)


def test_tile_opens_the_single_view(site):
    with browser_session(site) as s:
        s.page.goto(s.url + f"index.html?heads=L1H0&prompts={HASHES[2]}")
        wait_settled(s.page, 1)
        s.page.click(".tile")
        s.page.wait_for_url(re.compile(r"single\.html"))
        s.page.wait_for_selector("body[data-ready='1']")
        assert params(s.page) == {"model": MODEL, "prompt": HASHES[2], "layer": "1"}  # head 0, figure raw: defaults
        assert s.page.text_content("#title") == f"{MODEL} L1H0" and s.page.input_value("#figure") == "raw"
        assert s.errors == []


def test_sort_and_filter_by_statistic(site):
    values = {(h, l, hd): bos(storage.load_patterns(site, MODEL, h), l, hd)
              for h in HASHES for l in range(2) for hd in range(3)}
    with browser_session(site) as s:
        page = s.page
        page.goto(s.url + f"index.html?prompts={HASHES[1]},{HASHES[3]}&sort=stat&stat=bos&desc=1")
        wait_settled(page, 12)
        shown = tiles(page)
        got = [values[(t["prompt"], t["layer"], t["head"])] for t in shown]
        assert got == sorted(got, reverse=True)
        assert [float(t["stat"]) for t in shown] == pytest.approx(got, abs=1e-3)
        cut = round((sorted(got)[4] + sorted(got)[5]) / 2, 6)  # keeps the 7 highest
        page.fill("#stat-min", str(cut))
        page.wait_for_function("document.querySelectorAll('.tile').length < 12")
        assert sorted(values[(t["prompt"], t["layer"], t["head"])] for t in tiles(page)) == \
            pytest.approx(sorted(got)[5:])
        assert params(page)["min"] == str(cut)
        assert s.errors == []


def make_many_prompts(save_path: Path, n: int) -> None:
    """A GPT-2-shaped model (12 x 12 heads) with n short prompts, every 100th holding "needle"; indexed."""
    rng = np.random.default_rng(0)
    lens.write_json(save_path / "many" / "model_cfg.json", {"model_name": "many", "n_layers": 12, "n_heads": 12})
    patterns = storage.encode_patterns(fake_patterns(12, 12, 4, rng))  # every prompt has 4 tokens
    for i in range(n):
        text = f"{'needle' if i % 100 == 7 else 'hay'} stack #{i}"
        h = lens.prompt_hash(text)
        d = datadir.prompt_dir(save_path, "many", h)
        lens.write_atomic(d / datadir.PATTERN_FILE, patterns)
        tokens = ["<|endoftext|>"] + [" " + w for w in text.split()]
        lens.write_json(d / "prompt.json", {"text": text, "hash": h, "tokens": tokens, "token_ids": [0, 1, 2, 3],
                                            "n_tokens": 4, "meta": {"i": i}})
    build_index(save_path)


def test_many_prompts_search_page_and_select(tmp_path):
    """1,050 prompts: the table pages and searches; "select all matching" stops at 1,000 prompts; tiles are
    added 500 at a time. (bench/bench_site.py --prompts 10000 times this at scale.)"""
    make_many_prompts(tmp_path, 1050)
    with browser_session(tmp_path) as s:
        page = s.page
        page.goto(s.url + "index.html")
        page.wait_for_function("document.querySelectorAll('#prompt-table tbody tr').length === 100")
        assert page.inner_text("#prompt-count") == "1 selected \u00b7 1050 of 1050 match"
        assert page.inner_text("#page-info") == "page 1 / 11"
        page.fill("#search", "needle")
        page.wait_for_function("document.querySelectorAll('#prompt-table tbody tr').length === 11")
        texts = page.eval_on_selector_all("#prompt-table td.text", "n => n.map(x => x.title)")
        assert sorted(int(t.split("#")[1]) for t in texts) == list(range(7, 1050, 100))

        page.click("#clear-prompts")
        page.click("#select-matching")  # 11 prompts x 144 heads: 1,584 tiles, added in chunks
        page.wait_for_function("document.querySelector('#summary').textContent === '1584 images'")
        assert page.evaluate("document.querySelectorAll('.tile').length") == 500
        page.evaluate("document.querySelector('.grid .more').scrollIntoView()")
        page.wait_for_function("document.querySelectorAll('.tile').length === 1000")

        page.click("#clear-prompts")
        page.fill("#search", "")
        page.wait_for_function("document.querySelector('#prompt-count').textContent.endsWith('1050 of 1050 match')")
        page.click("#select-matching")  # the cap: 1,000 prompts x 144 heads
        page.wait_for_function("document.querySelector('#summary').textContent === '144000 images'")
        assert page.inner_text("#prompt-count").startswith("1000 selected")
        assert page.evaluate("document.querySelectorAll('.tile').length") == 500
        page.fill("#search", "needle")  # the page still answers
        page.wait_for_function("document.querySelectorAll('#prompt-table tbody tr').length === 11")
        assert s.errors == []


@pytest.mark.parametrize("dark", [False, True])
def test_the_grid_follows_the_systems_colour_scheme(site, dark):
    """The page's palette follows prefers-color-scheme (docs/make_screenshots.py takes the README's pictures)."""
    with browser_session(site, dark=dark, height=1500) as s:
        s.page.goto(s.url + f"index.html?prompts={HASHES[0]},{HASHES[1]}&figures=raw,sharp&group=prompt&stat=bos")
        wait_settled(s.page, 24)
        bg = s.page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (bg == "rgb(22, 24, 28)") == dark
        assert s.errors == []


def test_two_models_of_different_shapes(site):
    """Heads a model lacks are skipped; captions name the model; the prompt table merges both models."""
    make_data(site, model="small-model", n_layers=1, n_heads=2, texts=TEXTS[:2], seed=3)
    render(site)
    with browser_session(site) as s:
        page = s.page
        page.goto(s.url + f"index.html?heads=L*H1,L1H2&prompts={HASHES[0]}")
        wait_settled(page, 3)
        page.check("#models input[value='small-model']")
        wait_settled(page, 4)  # small-model (1 layer x 2 heads) has only L0H1 of these
        shown = page.eval_on_selector_all(".tile",
                                          "n => n.map(x => [x.dataset.model, x.dataset.layer, x.dataset.head])")
        assert shown == [[MODEL, "0", "1"], [MODEL, "1", "1"], [MODEL, "1", "2"], ["small-model", "0", "1"]]
        assert "small-model" in page.inner_text(".tile:last-child .caption")
        assert page.eval_on_selector_all("#head-picker .pick", "n => n.length") == 6  # the larger shape
        page.uncheck(f"#models input[value='{MODEL}']")
        wait_settled(page, 1)
        assert page.inner_text("#prompt-count").endswith("2 of 2 match")
        assert params(page)["models"] == "small-model"
        assert s.errors == []


def test_bad_head_spec_is_explained_and_kept_out_of_the_url(site):
    with browser_session(site) as s:
        page = s.page
        page.goto(s.url + "index.html?heads=L1H0")
        wait_settled(page, 1)
        # the messages of tests/rules.json's cases, as compute_activations.py --heads words them
        for spec, message in [("L7H0", "layers 7 out of range (the model's layers are 0-1)"),
                              ("L0H9", "heads 9 out of range (the model's heads are 0-2)"),
                              ("X3", '"X3" is not a head spec'), ("L1-0H*", "layers 1-0 run backwards"),
                              ("L0-9H2", "layers 0-9 out of range")]:
            page.fill("#heads-spec", spec)
            page.press("#heads-spec", "Enter")
            assert message in page.inner_text("#heads-error")
            assert params(page)["heads"] == "L1H0" and len(tiles(page)) == 1
        page.fill("#heads-spec", "L0-1H2")
        page.press("#heads-spec", "Enter")
        wait_settled(page, 2)
        assert page.inner_text("#heads-error") == ""


def test_prompt_table_sorts_by_tokens_and_theme_toggle_persists(site):
    with browser_session(site) as s:
        page = s.page
        page.goto(s.url)
        wait_settled(page, 6)
        counts = lambda: page.eval_on_selector_all("#prompt-table td.num", "n => n.map(x => +x.textContent)")
        assert counts() != sorted(counts())
        table = "[...document.querySelectorAll('#prompt-table td.num')].map(x => +x.textContent)"
        page.click("#sort-tokens")  # the order is read from the index's by_tokens.u32: wait for it
        page.wait_for_function(f"() => {{ const c = {table}; "
                               f"return c.length === 4 && c.every((x, i) => !i || c[i - 1] <= x); }}")
        page.click("#sort-tokens")
        page.wait_for_function(f"() => {{ const c = {table}; "
                               f"return c.length === 4 && c.every((x, i) => !i || c[i - 1] >= x); }}")
        assert counts() == sorted(counts(), reverse=True) and params(page)["order"] == "-tokens"

        page.fill("#cols", "4")  # tiles per row, e.g. one layer's heads on a row
        page.wait_for_function("location.search.includes('cols=4')")
        columns = "getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length"
        assert page.evaluate(columns) == 4

        assert page.evaluate("document.documentElement.dataset.theme") is None  # follows the system
        page.click(".theme-toggle")
        page.click(".theme-toggle")
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        page.reload()
        wait_settled(page, 6)
        assert page.evaluate("document.documentElement.dataset.theme") == "dark"
        assert page.evaluate(columns) == 4 and page.input_value("#cols") == "4"
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(22, 24, 28)"


def test_data_dir_without_indexes_says_what_is_missing(tmp_path):
    """Every missing index is named, whichever answer arrives first."""
    for src in Path(__file__).resolve().parent.parent.joinpath("site").iterdir():
        (tmp_path / src.name).write_bytes(src.read_bytes())
    with browser_session(tmp_path) as s:
        s.page.goto(s.url)
        s.page.wait_for_selector("body[data-ready='1']")
        errors = s.page.inner_text("#errors")
        assert "models.jsonl: HTTP 404" in errors and "figures.jsonl: HTTP 404" in errors
        assert "build_index.py" in errors


def test_whole_pipeline_on_a_tiny_model(tiny_checkpoint, tmp_path):
    """compute_activations.py -> render_figures.py (which runs build_index.py) -> the grid, as a user runs them."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    texts = ["When Mary and John went to the store, John gave a drink to Mary.", "def add(a, b):\n    return a + b"]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"text": t, "meta": {"src": "test"}}) + "\n"
                                                    for t in texts))
    for script, *args in [("compute_activations.py", str(tiny_checkpoint), "prompts.jsonl", "--no-probe"),
                          ("render_figures.py", "--jobs", "1")]:
        proc = subprocess.run([sys.executable, str(root / script), *args, "--save-path", "data"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    data = tmp_path / "data"
    (model,) = [m["model_dir"] for m in map(json.loads, (data / "models.jsonl").read_text().splitlines())]
    cfg = json.loads((data / model / "model_cfg.json").read_text())
    n_heads = cfg["n_layers"] * cfg["n_heads"]
    prompts = {p["hash"]: p for p in index_rows(data, model)}
    assert {p["text"] for p in prompts.values()} == set(texts)
    stat = next(iter(json.loads((data / model / "stats.json").read_text())["stats"]))  # any statistic

    with browser_session(data) as s:
        s.page.goto(s.url + f"index.html?prompts={','.join(prompts)}&figures=raw&sort=stat&stat={stat}&desc=1")
        wait_settled(s.page, 2 * n_heads)
        shown = tiles(s.page)
        assert all(t["loaded"] for t in shown)
        # each raw image is the pattern itself: one pixel per token, query rows x key columns
        sizes = s.page.eval_on_selector_all(".tile img", "n => n.map(i => [i.naturalWidth, i.naturalHeight])")
        assert sizes == [[prompts[t["prompt"]]["n_tokens"]] * 2 for t in shown]
        values = [float(t["stat"]) for t in shown]
        assert values == sorted(values, reverse=True)
        assert s.errors == []
        assert_only_local(s)


def test_long_patterns_shrink_by_averaging_not_skipping(tmp_path):
    """A 300-token pattern in a ~170 px tile: a browser shrinks a pixelated image by dropping rows and
    columns (a one-token stripe can vanish); the grid averages instead, so every stripe stays visible."""
    (phash,) = make_data(tmp_path, n_layers=1, n_heads=1, texts=[" ".join(["w"] * 299)])
    stripes = np.zeros((300, 300), np.float32)
    stripes[:, ::7] = 1.0  # one-pixel columns
    pack = storage.PackWriter(datadir.figure_pack_path(tmp_path, MODEL, phash, "raw"), 1, 1)
    pack.add(0, 0, lens.matrix_as_png(stripes))
    pack.close()
    build_index(tmp_path)
    weakest_stripe = """(nearest) => {
        let c = document.querySelector('.tile canvas');
        if (nearest) {  // what the browser does: pick the nearest pixel
            const img = document.querySelector('.tile img'), n = document.createElement('canvas');
            n.width = c.width; n.height = c.height;
            const ctx = n.getContext('2d');
            ctx.imageSmoothingEnabled = false;
            ctx.drawImage(img, 0, 0, n.width, n.height);
            c = n;
        }
        const s = c.width / 300, px = c.getContext('2d').getImageData(0, c.height >> 1, c.width, 1).data;
        const green = (x) => px[4 * Math.min(c.width - 1, Math.max(0, x)) + 1];
        let weakest = 255;
        for (let col = 0; col < 300; col += 7) {
            const x = Math.floor(col * s);
            weakest = Math.min(weakest, Math.max(green(x - 1), green(x), green(x + 1)));
        }
        return weakest;
    }"""
    with browser_session(tmp_path) as s:
        page = s.page
        page.goto(s.url + "index.html?size=160")
        page.wait_for_selector(".tile canvas")
        assert page.eval_on_selector(".tile img", "i => getComputedStyle(i).display") == "none"
        # viridis: 0 -> green 1, 1 -> green 231; picking pixels loses whole stripes, averaging dims them
        assert page.evaluate(weakest_stripe, True) < 10
        assert page.evaluate(weakest_stripe, False) > 30
        page.goto(s.url + "index.html?size=480")  # a tile wider than the image shows the image itself
        wait_settled(page, 1)
        page.wait_for_function("!document.querySelector('.tile canvas')")
        assert page.eval_on_selector(".tile img", "i => getComputedStyle(i).display") == "block"
        assert s.errors == []


def test_heads_not_stored_show_a_placeholder(partial_heads_data_dir):
    """A prompt computed with --heads L0H0,L1H*: its other heads say "not stored" and fetch nothing."""
    data = partial_heads_data_dir
    partial, full = lens.prompt_hash(TEXTS[1]), lens.prompt_hash(TEXTS[0])
    with browser_session(data) as s:
        s.page.goto(s.url + f"index.html?prompts={full},{partial}&stat=bos")
        wait_settled(s.page, 12)
        by_tile = {(t["prompt"], t["layer"], t["head"]): t for t in tiles(s.page)}
        for layer in range(2):
            for head in range(3):
                assert by_tile[(full, layer, head)]["loaded"]
                kept = by_tile[(partial, layer, head)]
                if (layer, head) in [(0, 1), (0, 2)]:
                    assert "not stored" in kept["not_stored"] and kept["src"] is None
                    assert kept["stat"] == "\u2013" and kept["placeholder"] is None  # not "no image"
                else:
                    assert kept["loaded"] and kept["not_stored"] is None
        assert not [u for u in s.requests if f"{partial}/L0/H1/" in u or f"{partial}/L0/H2/" in u]
        screenshot(s, "grid-not-stored")
        assert s.errors == []


def test_the_prompt_table_shows_enough_of_each_prompt_to_recognise_it(tmp_path):
    """At 1440 px with every built-in figure listed, each row shows at least 40 characters of its prompt
    (the panel once shrank beside the others to two letters), and its title holds the whole text."""
    texts = [json.loads(line)["text"] for line in (Path(__file__).resolve().parent.parent / "prompts.jsonl")
             .read_text().splitlines()[:6]]
    make_data(tmp_path, texts=texts)
    build_index(tmp_path)
    with browser_session(tmp_path, width=1440) as s:
        s.page.goto(s.url)
        s.page.wait_for_selector("body[data-ready='1'] #prompt-table td.text")
        cells = s.page.eval_on_selector_all("#prompt-table td.text", """cs => cs.map(c => {
            const ctx = document.createElement('canvas').getContext('2d');
            ctx.font = getComputedStyle(c).font;
            return {chars: c.clientWidth / ctx.measureText('0').width, title: c.title};
        })""")
        assert len(cells) == 6
        assert all(c["chars"] >= 40 for c in cells), cells
        assert sorted(c["title"] for c in cells) == sorted(texts)
        assert s.errors == []
        assert_only_local(s)


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
        assert s.page.eval_on_selector_all("#controls input, #controls select, #controls button",
                                           "n => n.length") == controls
        assert "controls" not in params(s.page)
        assert not s.errors
        assert_only_local(s)
