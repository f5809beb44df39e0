"""The head page (site/head.js) in a real offline chromium, on the demo model computed by compute_activations.py
(examples.py, head_pages.py, projections.py): 12 prompts, the patterns of 4 stored, and its step-0 checkpoint computed
without examples or projections and indexed before head pages existed. The files (read by examples.py, head_pages.py
and projections.py), stats.json, heads.json and the stored patterns are the oracles for what the page shows. One
browser serves every test."""
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from browser import assert_only_local, browser_session, screenshot

from attention_lens import datadir, examples, head_pages, lens, projections, storage

ROOT = Path(__file__).resolve().parent.parent
MODEL, STEP0 = "demo", "demo_step0"  # STEP0: a training checkpoint of MODEL (checkpointOf: base "demo", step 0)
HEAD = (1, 2)  # the demo's induction head


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("head-page") / "data"
    for extra in [["--patterns", "4"], ["--checkpoint", "0", "--no-examples", "--no-projections"]]:
        done = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), "demo",
                               str(ROOT / "prompts.jsonl"), "--n-samples", "12", "--no-probe", *extra,
                               "--save-path", str(data)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    for path in (datadir.head_pages_index_path(data, STEP0), datadir.head_pages_path(data, STEP0)):
        path.unlink()  # as build_index.py left a data dir before head pages existed
    return data


@pytest.fixture(scope="module")
def browser(data):
    with browser_session(data) as s:
        yield s


@pytest.fixture
def s(browser):
    """The module's browser, its record of requests and errors emptied for this test."""
    for record in (browser.requests, browser.errors, browser.missing):
        record.clear()
    return browser


def open_head(s, model: str, head: str, **more) -> None:
    query = "&".join(f"{k}={v}" for k, v in {"model": model, "head": head, **more}.items())
    s.page.goto(f"{s.url}head.html?{query}")
    s.page.wait_for_selector("body[data-ready='1']")


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def stats_json(data: Path, model: str) -> dict:
    return json.loads(datadir.stats_path(data, model).read_text())


def means_of(data: Path, model: str, stat: str) -> np.ndarray:
    mean = stats_json(data, model)["stats"][stat]["mean"]
    return np.array([[np.nan if v is None else v for v in row] for row in mean])


def ordinal(n: int) -> str:
    return f"{n}{'th' if 11 <= n % 100 <= 13 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def stored_hashes(data: Path, model: str) -> set[str]:
    return {h for h in lens.finished_prompts(data, model) if datadir.patterns_path(data, model, h).is_file()}


def assert_real_commands(page, selector: str) -> None:
    """Every compute_activations.py command the page shows under `selector` uses flags its --help lists."""
    usage = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), "--help"], capture_output=True,
                           text=True, timeout=60).stdout
    commands = page.eval_on_selector_all(f"{selector} code.command", "cs => cs.map(c => c.textContent)")
    assert commands
    for command in commands:
        if "compute_activations.py" in command:
            assert all(f"{flag} " in usage or f"{flag}\n" in usage for flag in command.split() if flag.startswith("--"))


def shown_weights(page, phash: str) -> dict[int, float]:
    """The stored weight each token of an example shows (data-w), by position; tokens without one left out."""
    return {int(i): float(w) for i, w in page.eval_on_selector_all(
        f".example[data-hash='{phash}'] .tok[data-w]", "ts => ts.map(t => [t.dataset.i, t.dataset.w])")}


def test_statistics_kinds_and_similar_heads(s, data):
    stats, kinds = stats_json(data, MODEL), json.loads(datadir.heads_json_path(data, MODEL).read_text())
    l, h = HEAD
    open_head(s, MODEL, f"L{l}H{h}")
    assert s.page.text_content("#title") == f"{MODEL} L{l}H{h}"
    rows = s.page.eval_on_selector_all(".head-stats tbody tr[data-stat]", """rs => rs.map(r => [r.dataset.stat,
        +r.dataset.mean, r.querySelector('.rank').textContent,
        [...r.querySelectorAll('[data-q]')].map(c => [c.dataset.q, +c.dataset.value])])""")
    assert [r[0] for r in rows] == list(stats["stats"]) and "max_attention" in stats["stats"]
    for name, mean, rank, quantiles in rows:
        means = means_of(data, MODEL, name)
        assert mean == means[l, h]
        # the site's one rank rule: 1 + the heads with a strictly higher mean (tied heads share a rank)
        assert rank == f"{ordinal(1 + int((means > means[l, h]).sum()))} of {np.isfinite(means).sum()}"
        assert dict(quantiles) == {q: v[l][h] for q, v in stats["stats"][name]["quantiles"].items()}
    # the statistic the examples are chosen by is open, with its highest prompts
    assert query(s.page.url)["stat"] == "max_attention"
    top = json.loads(datadir.stat_heads_path(data, MODEL, "max_attention").read_text())["heads"][l][h]["top"]
    listed = s.page.eval_on_selector_all(".stat-detail [data-list='highest'] li", "ls => ls.map(l => l.dataset.hash)")
    assert listed == [p for p, _ in top]
    scores = s.page.eval_on_selector_all(".kinds-scores tbody tr",
                                         "rs => rs.map(r => [r.dataset.kind, r.dataset.passes])")
    mine = kinds["heads"][l][h]
    assert {k for k, passes in scores if passes} == {k["name"] for k in mine["kinds"]}
    assert {k for k, _ in scores} == {k["name"] for k in kinds["kinds"]}
    similar = s.page.eval_on_selector_all(".similar-heads li a", "as => as.map(a => a.getAttribute('href'))")
    assert similar == [f"head.html?model={m}&head=L{a}H{b}" for m, a, b, _ in mine["nearest"]]
    screenshot(s, "head-page-light", full_page=True)
    s.page.emulate_media(color_scheme="dark")
    screenshot(s, "head-page-dark", full_page=True)
    s.page.emulate_media(color_scheme="light")
    assert not s.errors
    assert_only_local(s)


def test_hovering_a_token_shades_with_the_stored_weights(s, data):
    l, h = HEAD
    block = examples.read_head_examples(data, MODEL, l, h)
    stored = stored_hashes(data, MODEL)
    ex = max((e for e in block["examples"] if e["hash"] in stored), key=lambda e: e["n_tokens"])
    entries, phash = list(zip(ex["q"], ex["k"], ex["w"])), ex["hash"]
    pattern = storage.load_patterns(data, MODEL, phash).head(l, h)
    assert all(abs(pattern[q, k] - w) < 1e-4 for q, k, w in entries)  # the sparse rows are the head's pattern
    open_head(s, MODEL, f"L{l}H{h}")
    card = f".example[data-hash='{phash}']"
    # at rest: the query of the largest weight (the first query and key left out), the example's value
    q0, k0, w0 = max((e for e in entries if e[0] >= 1 and e[1] >= 1), key=lambda e: e[2])
    assert w0 == pytest.approx(ex["value"], abs=1e-4)
    assert s.page.get_attribute(card, "data-active") == str(q0)
    assert shown_weights(s.page, phash) == {k: w for q, k, w in entries if q == q0}

    q = max(range(1, ex["n_tokens"]), key=lambda q: (sum(qq == q for qq, _, _ in entries), q))  # the fullest row
    s.page.hover(f"{card} .tok[data-i='{q}']")
    row = {k: w for qq, k, w in entries if qq == q}
    assert len(row) > 1 and shown_weights(s.page, phash) == row  # exact: the stored numbers themselves
    shades = s.page.eval_on_selector_all(f"{card} .tok", "ts => ts.map(t => +t.style.getPropertyValue('--w'))")
    assert shades == pytest.approx([row.get(i, 0) / max(row.values()) for i in range(len(shades))], abs=1e-3)
    assert s.page.eval_on_selector_all(f"{card} .tok.is-active", "ts => ts.map(t => +t.dataset.i)") == [q]

    s.page.click("#examples-legend [data-shade='k']")  # what attends to a token
    s.page.wait_for_function("() => new URLSearchParams(location.search).get('shade') === 'k'")
    assert s.page.text_content("#shade-legend").startswith("the token is a key")
    k = max(range(1, ex["n_tokens"]), key=lambda k: (sum(kk == k for _, kk, _ in entries), k))
    s.page.hover(f"{card} .tok[data-i='{k}']")
    column = {qq: w for qq, kk, w in entries if kk == k}
    assert len(column) > 1 and shown_weights(s.page, phash) == column

    s.page.click(f"{card} .tok[data-i='{k}']")  # a click pins the token: it stays when the mouse leaves
    s.page.wait_for_function(f"() => new URLSearchParams(location.search).get('pin') === '{phash}:{k}'")
    s.page.hover("#title")
    assert s.page.get_attribute(card, "data-active") == str(k)
    s.page.keyboard.press("Escape")
    s.page.wait_for_function("() => !new URLSearchParams(location.search).has('pin')")
    assert s.page.get_attribute(card, "data-active") == str(k0)  # at rest again: the key of the largest weight
    assert not s.errors


def test_examples_by_interval_link_to_the_single_view_or_say_how_to_store(s, data):
    l, h = HEAD
    block = examples.read_head_examples(data, MODEL, l, h)
    stored = stored_hashes(data, MODEL)
    open_head(s, MODEL, f"L{l}H{h}")
    shown = s.page.eval_on_selector_all(".example", "es => es.map(e => [e.dataset.hash, +e.dataset.interval])")
    assert shown == [[e["hash"], e["interval"]] for e in block["examples"]]  # the highest interval first, as stored
    assert {p for p, _ in shown} - stored and {p for p, _ in shown} & stored  # some stored, some not
    for phash, _ in shown:
        link = s.page.query_selector(f".example[data-hash='{phash}'] a.single-link")
        assert (link is not None) == (phash in stored)
        if link:
            q = query(link.get_attribute("href"))
            assert (q["model"], q["prompt"], q["layer"], q["head"]) == (MODEL, phash, str(l), str(h))
        else:
            assert "not stored" in s.page.text_content(f".example[data-hash='{phash}'] header")
    # which are stored comes with the head's block: no prompt index chunk is read per example
    assert not [u for u in s.requests if "/index/rows/" in u or "/index/by_hash/" in u], s.requests
    page = head_pages.read_head_page(data, MODEL, l, h)
    assert set(page["example_patterns"]) == {p for p, _ in shown} & stored
    note = s.page.text_content("#examples .not-stored-note")
    assert f"python compute_activations.py {MODEL} --examples --examples-patterns" in note
    assert_real_commands(s.page, "#examples .not-stored-note")
    first = next(p for p, _ in shown if p in stored)
    s.page.click(f".example[data-hash='{first}'] a.single-link")
    s.page.wait_for_selector("body[data-ready='1'] #matrix")
    assert s.page.text_content("#title") == f"{MODEL} L{l}H{h}" and query(s.page.url)["prompt"] == first
    assert not s.errors


def test_top_tokens_sort_and_look_back(s, data):
    page = head_pages.read_head_page(data, MODEL, *HEAD)
    open_head(s, MODEL, "L{}H{}".format(*HEAD))
    rows = lambda side: s.page.eval_on_selector_all(  # noqa: E731
        f".token-table[data-side='{side}'] tbody tr",
        "rs => rs.map(r => [r.dataset.token, +r.dataset.count, +r.dataset.mass])")
    for side in ("query", "key"):
        assert rows(side) == page["tokens"][side]  # by mass, as the file lists them
    s.page.click(".token-table[data-side='key'] [data-sort='mean']")
    s.page.wait_for_function("() => new URLSearchParams(location.search).get('sort') === 'mean'")
    for side in ("query", "key"):  # by mean: the tokens seen often enough, highest mean first
        by_mean = page["tokens"][f"{side}_by_mean"]
        assert rows(side) == sorted(by_mean, key=lambda r: -r[2] / r[1])
        assert all(c >= page["tokens"]["min_count"] for _, c, _ in rows(side))
    shares = s.page.eval_on_selector_all(".lookback-bars .bar", "bs => bs.map(b => +b.dataset.share)")
    share = page["lookback"]["share"]
    assert shares == share[:len(shares)] and not any(share[len(shares):])
    assert sum(shares) == pytest.approx(1, abs=1e-4)
    assert not s.errors


def test_missing_files_say_which_command_makes_them(s, data):
    """A model computed without examples and indexed before head pages: the page names the missing files and the
    commands that make them, shows the statistics from stats.json, and no error."""
    open_head(s, STEP0, "L0H1")
    missing = s.page.text_content("#examples [data-missing]")
    assert missing.startswith(f"{STEP0}/examples.json is missing")
    assert "python compute_activations.py demo --checkpoint 0 --examples" in missing  # from the statistics it has
    missing = s.page.text_content("#stats [data-missing]")
    assert missing.startswith(f"{STEP0}/head_pages.json is missing") and "python build_index.py" in missing
    assert_real_commands(s.page, "[data-missing]")
    means = s.page.eval_on_selector_all(".head-stats tr[data-stat]",
                                        "rs => rs.map(r => [r.dataset.stat, +r.dataset.mean])")
    assert means == [[name, st["mean"][0][1]] for name, st in stats_json(data, STEP0)["stats"].items()]
    missing = s.page.text_content("#projections [data-missing]")
    assert missing.startswith(f"{STEP0}/projections.json is missing")
    assert "python compute_activations.py demo --checkpoint 0 --projections" in missing
    s.page.wait_for_selector(".stat-detail .head-hist")  # the open statistic's histogram, from its heads.json
    assert s.page.is_hidden("#examples-legend")
    assert "no head page" in s.page.text_content("#lookback") and "no head page" in s.page.text_content("#tokens")
    screenshot(s, "head-page-missing", full_page=True)
    assert not s.errors


def canvas_places(s, name: str, coords: np.ndarray) -> np.ndarray:
    """Where points at these coordinates sit on a projection's canvas, from its data-frame and data-x-domain /
    data-y-domain (scatter.js: the plot's pixel box and the values at its edges)."""
    frame, xd, yd = s.page.eval_on_selector(f"#projections canvas[data-set='{name}']",
                                            "c => [c.dataset.frame, c.dataset.xDomain, c.dataset.yDomain]")
    (left, top, right, bottom), (x0, x1), (y0, y1) = ([float(v) for v in a.split(",")] for a in (frame, xd, yd))
    return np.stack([left + (coords[:, 0] - x0) / (x1 - x0) * (right - left),
                     bottom + (coords[:, 1] - y0) / (y1 - y0) * (top - bottom)], 1)


def test_projections_draw_every_point_and_a_hover_names_its_token(s, data):
    """Each of the three scatters draws every stored point; hovering the point farthest from the others (placed by
    the stored coordinates) names its token and its key's position as projections.bin holds them; colouring by weight
    spans the stored weights."""
    l, h = HEAD
    index = projections.read_points(data, MODEL)
    block, stored = index["points"], projections.read_head_projections(data, MODEL, l, h)
    open_head(s, MODEL, f"L{l}H{h}")
    assert index["n_points"] > 50
    for name in index["sets"]:
        canvas = s.page.locator(f"#projections canvas[data-set='{name}']")
        assert canvas.get_attribute("data-points") == str(index["n_points"])
        places = canvas_places(s, name, stored.sets[name].coords)
        apart = np.linalg.norm(places[:, None] - places[None], axis=-1) + np.eye(len(places)) * 1e9
        i = int(apart.min(1).argmax())
        assert apart[i].min() > 8  # no other point within pickPoint's reach
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        s.page.mouse.move(box["x"] + places[i, 0], box["y"] + places[i, 1])
        s.page.wait_for_function(f"() => document.getElementById('projection-hover').dataset.point === '{i}'")
        hover = s.page.eval_on_selector("#projection-hover", "e => ({...e.dataset})")
        prompt, position = block["prompts"][block["prompt"][i]], block["position"][i]
        assert hover == {"set": name, "point": str(i), "position": str(position),
                         "token": prompt["tokens"][position], "key": str(stored.key_position[i])}
        assert prompt["hash"] in s.page.text_content("#projection-hover")
        marked = s.page.eval_on_selector_all("#projections canvas", "cs => cs.map(c => c.dataset.marked)")
        assert marked == [str(i)] * len(index["sets"])  # the same position ringed in every scatter
    s.page.select_option("#projection-colour", "weight")
    s.page.wait_for_function("() => new URLSearchParams(location.search).get('pcolor') === 'weight'")
    lo, hi = s.page.eval_on_selector("#projections .value-legend", "e => [+e.dataset.lo, +e.dataset.hi]")
    assert (lo, hi) == pytest.approx((stored.weight.min(), stored.weight.max()), abs=1e-6)
    screenshot(s, "head-page-projections")
    assert not s.errors
    assert_only_local(s)


def test_the_site_reads_float16_as_numpy_does(s):
    """data.halfFloat against numpy's float16 on every bit pattern that is a number."""
    bits = np.arange(2 ** 16, dtype=np.uint16)
    values = bits.view(np.float16).astype(np.float64)
    s.page.goto(f"{s.url}head.html?model={MODEL}")
    got = np.array(s.page.evaluate("async () => { const { halfFloat } = await import('./data.js'); "
                                   "return Array.from({ length: 65536 }, (_, b) => { const v = halfFloat(b); "
                                   "return Number.isNaN(v) ? 'nan' : String(v); }); }"), dtype=object)
    nan = np.isnan(values)
    assert (got[nan] == "nan").all()
    np.testing.assert_array_equal(got[~nan].astype(float), values[~nan])  # infinities and both zeros included


def test_checkpoints_link_to_the_same_head(s, data):
    open_head(s, MODEL, "L1H2", stat="induction_head")
    rows = s.page.eval_on_selector_all(".checkpoints-table tbody tr", "rs => rs.map(r => [r.dataset.model, "
                                       "r.querySelector('a').getAttribute('href'), r.children[2].textContent])")
    assert [r[0] for r in rows] == [STEP0, MODEL]  # by step, the model without one (the final) last
    for model, href, mean in rows:
        assert href == f"head.html?model={model}&head=L1H2"
        assert float(mean) == pytest.approx(means_of(data, model, "induction_head")[1, 2], abs=5e-4)
    assert not s.errors


def test_links_lead_to_the_head_page(s, data):
    expected = lambda l, h: f"head.html?model={MODEL}&head=L{l}H{h}"  # noqa: E731
    s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos&panel=L1H2")
    s.page.wait_for_selector("body[data-ready='1'] #head-panel .head-page-link")
    assert s.page.get_attribute("#head-panel .head-page-link", "href") == expected(1, 2)
    s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos&click=page")  # "click opens: head page"
    s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
    assert s.page.get_attribute(".heat[data-layer='0'][data-head='1']", "href") == expected(0, 1)
    assert s.page.get_attribute(".top-table tbody tr a", "href").startswith("head.html?")
    s.page.click(".heat[data-layer='0'][data-head='1']")
    s.page.wait_for_selector("body[data-ready='1'] .head-stats")
    assert query(s.page.url) == {"model": MODEL, "head": "L0H1", "stat": "max_attention"}

    s.page.goto(f"{s.url}single.html?model={MODEL}&layer=1&head=2")
    s.page.wait_for_selector("body[data-ready='1'] #head-kinds .head-page-link a")
    assert s.page.get_attribute("#head-link", "href") == expected(1, 2)
    assert s.page.get_attribute("#head-kinds .head-page-link a", "href") == expected(1, 2)

    prompt = sorted(stored_hashes(data, MODEL))[0]
    s.page.goto(f"{s.url}index.html?models={MODEL}&heads=L1H0&prompts={prompt}")
    s.page.wait_for_selector("body[data-ready='1'] .tile .head-page-link")
    assert s.page.get_attribute(".tile", "href").startswith("single.html")  # the tile itself opens the single view
    s.page.click(".tile .head-page-link")
    s.page.wait_for_selector("body[data-ready='1'] .head-stats")
    assert query(s.page.url)["head"] == "L1H0" and "head.html" in s.page.url
    assert not s.errors
