"""The heads page (layer x head heatmap of a statistic, a head's panel) in a real offline chromium, and the
statistic aggregates it reads (write_stat_aggregates); on the demo model's training checkpoints: one model minus
another, and a statistic across checkpoints."""
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from browser import assert_only_local, browser_session, render, screenshot
from conftest import FINAL, MODELS
from fake_data import make_data, read_stats, write_stat_aggregates
from test_site_single import MODEL, oracle, prompt_hashes, url_state

from attention_lens import datadir, lens, storage
from attention_lens.build_index import build_index


def long_only(data_dir) -> np.ndarray:
    """The tests' `long_only` statistic from the stored patterns: [prompts, layers, heads], NaN on short prompts."""
    out = []
    for h in prompt_hashes(data_dir):
        p = storage.load_patterns(data_dir, MODEL, h)
        out.append([[p.head(l, hd)[-1].max() if p.n_tokens > 10 else np.nan for hd in range(3)] for l in range(2)])
    return np.array(out)


def cells(page) -> np.ndarray:
    """The heatmap's values as [layers, heads] (NaN for a missing value)."""
    rows = page.eval_on_selector_all(".heatmap-grid .heat",
                                     "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head, +c.dataset.value])")
    out = np.full((max(r[0] for r in rows) + 1, max(r[1] for r in rows) + 1), np.inf)
    for l, h, v in rows:
        out[l, h] = v
    return out


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def wait_ready(page) -> None:
    page.wait_for_selector("body[data-ready='1'] .heatmap-grid")


def test_heatmap_mean_and_one_prompt(rendered_data_dir):
    data = rendered_data_dir
    prompts = prompt_hashes(data)
    values = oracle(data)["bos"]
    with browser_session(data) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos")
        wait_ready(s.page)
        mean = values.mean(0)
        assert np.allclose(cells(s.page), mean, atol=1e-6)
        best = np.unravel_index(np.argmax(mean), mean.shape)
        assert s.page.text_content(".top-table tbody tr td a") == f"L{best[0]}H{best[1]}"  # highest first
        s.page.select_option("#over", "prompt")  # one prompt's values come from stats/bos.f32
        s.page.keyboard.press("n")
        s.page.wait_for_function(f"() => new URLSearchParams(location.search).get('prompt') === '{prompts[1]}'")
        assert np.allclose(cells(s.page), values[1], atol=1e-6)
        s.page.keyboard.press("s")  # next statistic: long_only, undefined on short prompts
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('stat') === 'long_only'")
        expected = long_only(data)[1]
        assert np.allclose(cells(s.page), expected, atol=1e-6, equal_nan=True)
        assert s.page.locator(".heatmap-grid .heat.no-value").count() == np.isnan(expected).sum()
        screenshot(s, "heads-light")
        assert not s.errors
        assert_only_local(s)


def test_missing_values_are_shown_as_missing(rendered_data_dir):
    data = rendered_data_dir
    short = [i for i, row in enumerate(long_only(data)) if np.isnan(row).all()][0]
    with browser_session(data) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=long_only&over=prompt&prompt={prompt_hashes(data)[short]}")
        wait_ready(s.page)
        assert np.isnan(cells(s.page)).all()
        assert s.page.locator(".heatmap-grid .heat.no-value").count() == 6
        assert s.page.locator(".top-table tbody tr").count() == 0
        assert not s.errors


def test_click_opens_head(rendered_data_dir):
    data = rendered_data_dir
    prompts = prompt_hashes(data)
    t = long_only(data)
    with browser_session(data, dark=True) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=long_only&click=single")
        wait_ready(s.page)
        screenshot(s, "heads-dark")
        # mean over prompts: the single view opens on the prompt where this head scores highest
        s.page.click(".heatmap-grid .heat[data-layer='1'][data-head='2']")
        s.page.wait_for_selector("body[data-ready='1'] #matrix")
        q = query(s.page.url)
        assert (q["layer"], q["head"]) == ("1", "2")
        assert q["prompt"] == prompts[int(np.nanargmax(t[:, 1, 2]))]
        assert "single.html" in s.page.url
        # ... or the grid, with that head on its top prompts (those with a value) sorted by the statistic
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=long_only&click=grid")
        wait_ready(s.page)
        href = s.page.eval_on_selector(".heatmap-grid .heat[data-layer='0'][data-head='1']", "c => c.href")
        s.page.click(".heatmap-grid .heat[data-layer='0'][data-head='1']")
        s.page.wait_for_url("**/index.html?**")
        q = query(href)
        order = [prompts[i] for i in np.argsort(-np.nan_to_num(t[:, 0, 1], nan=-np.inf)) if not np.isnan(t[i, 0, 1])]
        assert q["heads"] == "L0H1" and q["prompts"].split(",") == order
        assert (q["stat"], q["sort"], q["desc"]) == ("long_only", "stat", "1")
        assert not s.errors


def test_hover_line_follows_the_shown_prompt(rendered_data_dir):
    """The line under the heatmap names the last hovered head's value; after the next prompt (the mouse has left
    the heatmap for the button), that prompt's value, not the one before."""
    data = rendered_data_dir
    prompts = prompt_hashes(data)
    values = oracle(data)["bos"]
    assert abs(values[0, 1, 2] - values[1, 1, 2]) > 0.01  # the stale value would be told apart
    hovered = lambda page: float(page.text_content("#hover-info").split(": ")[1].split()[0])  # noqa: E731
    with browser_session(data) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos&over=prompt&prompt={prompts[0]}")
        wait_ready(s.page)
        s.page.hover(".heatmap-grid .heat[data-layer='1'][data-head='2']")
        assert s.page.text_content("#hover-info").startswith("L1H2: ")
        assert hovered(s.page) == pytest.approx(values[0, 1, 2], abs=1e-3)
        s.page.click("#next-prompt")
        s.page.wait_for_function(f"() => new URLSearchParams(location.search).get('prompt') === '{prompts[1]}'")
        assert hovered(s.page) == pytest.approx(values[1, 1, 2], abs=1e-3)
        assert not s.errors


def test_tied_heads_share_a_rank(rendered_data_dir):
    """`tokens` is the same for every head of a prompt: every head ranks 1 here and in the single view."""
    data = rendered_data_dir
    with browser_session(data) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=tokens")
        wait_ready(s.page)
        ranks = s.page.eval_on_selector_all(".top-table tbody tr td:first-child", "ts => ts.map(t => t.textContent)")
        assert ranks == ["1"] * 6
        assert "(rank 1 / 6)" in s.page.get_attribute(".heat[data-layer='1'][data-head='2']", "title")
        assert not s.errors


def test_model_without_stats(fake_data_dir):
    from attention_lens.build_index import build_index
    build_index(fake_data_dir)
    with browser_session(fake_data_dir) as s:
        s.page.goto(f"{s.url}heads.html")
        s.page.wait_for_selector("body[data-ready='1']")
        assert "no head statistics yet" in s.page.text_content("#heatmap")
        assert not s.errors


def test_heads_not_stored(partial_heads_data_dir):
    """A prompt computed with --heads L0H0,L1H*: its other heads read "not stored", not a missing value."""
    data = partial_heads_data_dir
    partial = lens.prompt_hash("When Mary and John went to the store, John gave a drink to Mary.")
    with browser_session(data) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos&over=prompt&prompt={partial}")
        wait_ready(s.page)
        not_stored = s.page.eval_on_selector_all(".heat.not-stored",
                                                 "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head])")
        assert not_stored == [[0, 1], [0, 2]]
        assert "L0H1: not stored" in s.page.get_attribute(".heat[data-layer='0'][data-head='1']", "title")
        assert np.isnan(cells(s.page)[0, 1:]).all() and s.page.locator(".heat.no-value").count() == 0
        assert s.page.locator(".top-table tbody tr").count() == 4
        screenshot(s, "heads-not-stored")
        s.page.keyboard.press("m")  # mean over prompts: the other prompts store every head
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('over') === null")
        assert s.page.locator(".heat.not-stored").count() == 0
        assert not s.errors


@pytest.mark.parametrize("dark", [False, True])
def test_gpt2_shaped_heatmap(tmp_path, dark):
    """144 heads: every cell drawn, the top list is the mean's order; screenshots of a realistic size."""
    from fake_data import make_data
    data = tmp_path / "data"
    hashes = make_data(data, n_layers=12, n_heads=12, texts=["one two three", "four five six seven"])
    render(data, "bos")
    mean = np.mean([[[float(storage.load_patterns(data, MODEL, h).head(l, hd)[:, 0].mean()) for hd in range(12)]
                     for l in range(12)] for h in hashes], 0)
    order = [f"L{i // 12}H{i % 12}" for i in np.argsort(-mean.ravel(), kind="stable")[:10]]
    with browser_session(data, dark=dark) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos")
        wait_ready(s.page)
        assert s.page.locator(".heatmap-grid .heat").count() == 144
        assert s.page.eval_on_selector_all(".top-table tbody a", "as => as.map(a => a.textContent)") == order
        screenshot(s, "heads-144-dark" if dark else "heads-144-light")
        assert not s.errors


# ---- the aggregates the page reads: stats.json, stats/<name>.heads.json, stats/<name>.f32 ----

def test_write_stat_aggregates_on_a_hand_checked_table(tmp_path):
    """Head L0H0 holds 0..9 over ten prompts, L0H1 four values with ties, L0H2 none."""
    hashes = [f"h{i}" for i in range(10)]
    table = np.full((10, 1, 3), np.nan, np.float32)
    table[:, 0, 0] = np.arange(10)
    table[[1, 2, 4, 5], 0, 1] = [5, 5, 1, 5]
    prompts = {h: {"text": f"text {h} " + "x" * 300, "n_tokens": 7, "stored": h != "h9"} for h in hashes}
    write_stat_aggregates(tmp_path, "m", hashes, {"s": table}, {"s": "a doc"}, prompts, top_k=3, bins=3)

    index, tables = read_stats(tmp_path, "m")
    assert np.array_equal(tables["s"], table, equal_nan=True)
    assert (index["n_prompts"], index["n_layers"], index["n_heads"], index["top_k"]) == (10, 1, 3, 3)
    s = index["stats"]["s"]
    assert s["doc"] == "a doc" and s["count"] == [[10, 4, 0]]
    assert s["mean"] == [[4.5, 4.0, None]] and s["min"] == [[0.0, 1.0, None]] and s["max"] == [[9.0, 5.0, None]]
    assert s["std"][0][0] == pytest.approx(np.sqrt(8.25)) and s["std"][0][2] is None
    assert {q: v[0][0] for q, v in s["quantiles"].items()} == pytest.approx(
        {"0.05": 0.45, "0.25": 2.25, "0.5": 4.5, "0.75": 6.75, "0.95": 8.55})
    assert s["quantiles"]["0.5"][0][1:] == [5.0, None]

    heads = json.loads(datadir.stat_heads_path(tmp_path, "m", "s").read_text())
    h0, h1, h2 = heads["heads"][0]
    assert heads["bins"] == 3 and h0["hist"] == {"lo": 0.0, "hi": 9.0, "counts": [3, 3, 4]}  # [0,3) [3,6) [6,9]
    assert (h0["top"] == [["h9", 9.0], ["h8", 8.0], ["h7", 7.0]]
            and h0["bottom"] == [["h0", 0.0], ["h1", 1.0], ["h2", 2.0]])
    assert h1["hist"] == {"lo": 1.0, "hi": 5.0, "counts": [1, 0, 3]}
    assert h1["top"] == [["h1", 5.0], ["h2", 5.0], ["h5", 5.0]]  # ties in hash order
    assert h1["bottom"] == [["h4", 1.0], ["h1", 5.0], ["h2", 5.0]]
    assert h2 == {"hist": None, "top": [], "bottom": []}
    assert sorted(heads["prompts"]) == ["h0", "h1", "h2", "h4", "h5", "h7", "h8", "h9"]  # only the listed ones
    assert heads["prompts"]["h9"] == {"text": prompts["h9"]["text"][:200], "n_tokens": 7, "stored": False}


def test_render_writes_the_aggregates(rendered_data_dir):
    """render_figures.py's tables give the same summaries and lists as numpy on the oracle."""
    data = rendered_data_dir
    hashes = lens.finished_prompts(data, MODEL)
    values = oracle(data)["bos"]
    index = json.loads(datadir.stats_path(data, MODEL).read_text())
    assert "prompts" not in index and index["n_prompts"] == len(hashes)
    np.testing.assert_allclose(index["stats"]["bos"]["std"], values.std(0), atol=1e-6)
    heads = json.loads(datadir.stat_heads_path(data, MODEL, "bos").read_text())
    for l in range(2):
        for h in range(3):
            assert ([hash for hash, _ in heads["heads"][l][h]["top"]]
                    == [hashes[i] for i in np.argsort(-values[:, l, h])])
            assert sum(heads["heads"][l][h]["hist"]["counts"]) == len(hashes)
    assert heads["prompts"][hashes[0]]["stored"] is True


# ---- the head panel ----

def heads_json(data: Path, stat: str) -> dict:
    return json.loads(datadir.stat_heads_path(data, MODEL, stat).read_text())


def rewrite_aggregates(data: Path, unstored: set[str]) -> None:
    """The aggregates again, as if `unstored` prompts had statistics but no patterns (compute_activations.py
    computes statistics for every prompt and may keep only some prompts' patterns)."""
    index, tables = read_stats(data, MODEL)
    hashes = lens.finished_prompts(data, MODEL)
    prompts = {}
    for h in hashes:
        info = json.loads(datadir.prompt_json_path(data, MODEL, h).read_text())
        prompts[h] = {"text": info["text"], "n_tokens": info["n_tokens"], "stored": h not in unstored}
    docs = {name: s["doc"] for name, s in index["stats"].items()}
    write_stat_aggregates(data, MODEL, hashes, tables, docs, prompts)


@pytest.mark.parametrize("dark", [False, True])
def test_head_panel(rendered_data_dir, dark):
    data = rendered_data_dir
    hashes = lens.finished_prompts(data, MODEL)
    bos = oracle(data)["bos"]
    _, tables = read_stats(data, MODEL)
    short = np.isnan(tables["long_only"]).all((1, 2))  # prompts without long_only values: never opened below
    layer, head = next((l, h) for l in range(2) for h in range(3) if short[np.argmax(bos[:, l, h])])
    unstored = hashes[np.argmax(bos[:, layer, head])]
    rewrite_aggregates(data, {unstored})  # the highest prompt of that head: statistics, but no stored patterns
    with browser_session(data, dark=dark) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=long_only")
        wait_ready(s.page)
        s.page.click(".heatmap-grid .heat[data-layer='1'][data-head='2']")  # a click opens the head's panel
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('panel') === 'L1H2'")
        panel = s.page.locator("#head-panel")
        assert panel.is_visible() and "single.html" not in s.page.url
        column = tables["long_only"][:, 1, 2]
        counts = s.page.eval_on_selector_all("#head-panel .head-hist .bar", "bs => bs.map(b => +b.dataset.count)")
        assert sum(counts) == np.isfinite(column).sum() and 0 < sum(counts) < len(hashes)  # long prompts only
        assert f"{sum(counts)} of {len(hashes)} prompts have a value" in panel.text_content()
        first = s.page.locator("#head-panel [data-list='highest'] li").first
        row = int(np.nanargmax(column))
        assert first.get_attribute("data-hash") == hashes[row]
        assert float(first.get_attribute("data-value")) == float(column[row])  # exact: the table's float32
        snippet = heads_json(data, "long_only")["prompts"][hashes[row]]["text"].replace("\n", "\u21b5")
        assert first.locator(".snippet").text_content() == snippet
        mean = s.page.get_attribute("#head-panel .head-numbers [data-key='mean']", "data-value")
        assert float(mean) == pytest.approx(np.nanmean(column), abs=1e-6)
        screenshot(s, f"heads-panel-{'dark' if dark else 'light'}")
        first.locator("a").click()  # a prompt opens the single view on it and this head
        s.page.wait_for_selector("body[data-ready='1'] #matrix")
        assert "single.html" in s.page.url
        assert {k: query(s.page.url)[k] for k in ("model", "prompt", "layer", "head")} == {
            "model": MODEL, "prompt": hashes[row], "layer": "1", "head": "2"}

        # the panel's state is in the URL; this head's top prompt has no stored patterns: the page says how to
        # store them
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos&panel=L{layer}H{head}")
        wait_ready(s.page)
        s.page.wait_for_selector("#head-panel [data-list='highest'] li")
        first = s.page.locator("#head-panel [data-list='highest'] li").first
        assert first.get_attribute("data-hash") == unstored and first.locator("a").count() == 0
        assert "not stored" in first.text_content()
        assert float(first.get_attribute("data-value")) == pytest.approx(bos[:, layer, head].max(), abs=1e-6)
        note = s.page.text_content("#head-panel .not-stored-note")
        assert f"python compute_activations.py {MODEL} PROMPTS --top 10" in note and "same --save-path" in note
        cell = f".heat[data-layer='{layer}'][data-head='{head}']"
        assert query(s.page.get_attribute(cell, "href"))["panel"] == f"L{layer}H{head}"
        screenshot(s, f"heads-panel-not-stored-{'dark' if dark else 'light'}")
        s.page.keyboard.press("ArrowUp" if layer else "ArrowDown")  # the panel moves to the neighbouring head
        s.page.wait_for_function(f"() => new URLSearchParams(location.search).get('panel') === 'L{1 - layer}H{head}'")
        s.page.keyboard.press("Escape")
        s.page.wait_for_function("() => !new URLSearchParams(location.search).has('panel')")
        assert not panel.is_visible()
        assert not s.errors
        assert_only_local(s)


# ---- what the page fetches does not grow with the number of prompts ----

def many_prompts_dir(save_path: Path, n: int) -> Path:
    """fake-model with n prompts, indexed, and random `bos`-like statistics written as render_figures.py would."""
    texts = [f"prompt {i}: " + "word " * (i % 13) for i in range(n)]
    make_data(save_path, texts=texts)
    build_index(save_path)
    hashes = lens.finished_prompts(save_path, MODEL)
    rng = np.random.default_rng(n)
    table = rng.random((n, 2, 3), dtype=np.float32)
    table[rng.random(table.shape) < 0.1] = np.nan
    prompts = {lens.prompt_hash(t): {"text": t, "n_tokens": 3, "stored": True} for t in texts}
    write_stat_aggregates(save_path, MODEL, hashes, {"bos": table}, {"bos": "random"}, prompts)
    return save_path


def fetched(data: Path, name: str) -> tuple[int, list[tuple[str, str | None, int]]]:
    """Open the heads page, a head's panel, one prompt and the next one; (bytes of data files,
    [(path, range, bytes)])."""
    with browser_session(data) as s:
        seen = []
        s.page.on("requestfinished", lambda r: seen.append(
            (r.url[len(s.url):].split("?")[0], r.headers.get("range"), r.sizes()["responseBodySize"])))
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos&panel=L1H2")
        wait_ready(s.page)
        s.page.wait_for_selector("#head-panel .head-hist")
        screenshot(s, name)
        s.page.select_option("#over", "prompt")
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('over') === 'prompt'")
        s.page.keyboard.press("n")
        second = lens.finished_prompts(data, MODEL)[1]
        s.page.wait_for_function(f"() => new URLSearchParams(location.search).get('prompt') === '{second}'")
        assert not s.errors
    data_files = [r for r in seen if not r[0].endswith((".js", ".css", ".html")) and r[0]]
    return sum(size for _, _, size in data_files), data_files


def test_bytes_fetched_do_not_grow_with_the_prompts(tmp_path, monkeypatch):
    # both indexes' first chunk of rows is a full one
    monkeypatch.setattr("attention_lens.prompt_index.INDEX_CHUNK_ROWS", 10)
    dirs = {n: many_prompts_dir(tmp_path / f"p{n}", n) for n in (10, 2000)}
    small, small_requests = fetched(dirs[10], "heads-panel-10-prompts")
    large, large_requests = fetched(dirs[2000], "heads-panel-2000-prompts")
    heads = {n: datadir.stat_heads_path(d, MODEL, "bos") for n, d in dirs.items()}
    print(f"heads page data bytes: {small} with 10 prompts, {large} with 2000 "
          f"(heads.json {heads[10].stat().st_size} and {heads[2000].stat().st_size})")
    for path, byte_range, size in large_requests:
        assert "/index/rows/" not in path or path.endswith("/rows/0.jsonl"), (
            "more of the prompt index than its first rows")
        if path.endswith(".f32"):
            assert byte_range and size == 2 * 3 * 4, f"{path} fetched without a byte range"
    assert sum(path.endswith(".f32") for path, _, _ in large_requests) == 2  # two prompts' rows
    # heads.json lists at most 2 x top_k prompts per head: it grows with the heads, not the prompts, and
    # everything else (stats.json, the prompt index's first rows, two rows of the table) stays the same size
    assert len(json.loads(heads[2000].read_text())["prompts"]) <= 6 * 2 * 10
    growth = heads[2000].stat().st_size - heads[10].stat().st_size
    assert large - small < growth + 4096, (small_requests, large_requests)


# ---- one model minus another, and across checkpoints (the demo model's training checkpoints) ----

def stat_means(data: Path, model: str, stat: str) -> np.ndarray:
    mean = json.loads((data / model / "stats.json").read_text())["stats"][stat]["mean"]
    return np.array([[np.nan if v is None else v for v in row] for row in mean], float)


@pytest.mark.parametrize("dark", [False, True])
def test_heads_difference_and_across_checkpoints(demo_site, dark):
    a, b = stat_means(demo_site, FINAL, "bos"), stat_means(demo_site, MODELS[0], "bos")
    with browser_session(demo_site, dark=dark) as s:
        s.page.goto(s.url + f"heads.html?model={FINAL}&stat=bos&vs={MODELS[0]}")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        cells = s.page.eval_on_selector_all("#heatmap .heat",
                                            "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head, +c.dataset.value])")
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
            got = s.page.eval_on_selector_all(
                f".series-map[data-model='{model}'] .heat",
                "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head, +c.dataset.value])")
            assert all(v == pytest.approx(means[l, h], abs=1e-6) for l, h, v in got) and len(got) == means.size
        lines = s.page.eval_on_selector_all(".series-chart polyline",
                                            "ps => ps.map(p => [p.dataset.head, JSON.parse(p.dataset.values)])")
        # the top head of the last step
        assert lines[0][0] == "L{}H{}".format(*np.unravel_index(np.nanargmax(a), a.shape))
        for head, values in lines:
            l, h = int(head[1]), int(head[3])
            assert values == pytest.approx([stat_means(demo_site, m, "bos")[l, h] for m in MODELS], abs=1e-6)
        screenshot(s, f"heads-checkpoints-{'dark' if dark else 'light'}", full_page=True)
        assert not s.errors
        assert_only_local(s)


def test_heads_difference_of_different_shapes_says_why(demo_site, tmp_path):
    make_data(demo_site, model="other", n_layers=3, n_heads=2)
    build_index(demo_site)
    with browser_session(demo_site) as s:
        s.page.goto(s.url + f"heads.html?model={FINAL}&stat=bos&vs=other")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        assert s.page.is_visible("#vs-problem")
        cfg = json.loads(datadir.model_cfg_path(demo_site, FINAL).read_text())
        assert s.page.text_content("#vs-problem") == (f"cannot compare: {FINAL} has {cfg['n_layers']} x "
                                                      f"{cfg['n_heads']} heads (layers x heads), other has 3 x 2")
        # the choice lists only the models of this shape (and keeps the URL's choice shown)
        assert s.page.eval_on_selector_all("#vs option", "os => os.map(o => o.value)") == ["", "other", *MODELS[:-1]]
        assert not s.errors
