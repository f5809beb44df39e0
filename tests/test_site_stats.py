"""The heads page (layer x head heatmap of a statistic) in a real offline chromium."""
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

import lens
from browser import assert_only_local, browser_session, render, screenshot
from test_site_single import MODEL, oracle, prompt_hashes


def long_only(data_dir) -> np.ndarray:
    """The tests' `long_only` statistic from the stored patterns: [prompts, layers, heads], NaN on short prompts."""
    out = []
    for h in prompt_hashes(data_dir):
        p = lens.load_patterns(data_dir, MODEL, h)
        out.append([[p.head(l, hd)[-1].max() if p.n_tokens > 10 else np.nan for hd in range(3)] for l in range(2)])
    return np.array(out)


def cells(page) -> np.ndarray:
    """The heatmap's values as [layers, heads] (NaN for a missing value)."""
    rows = page.eval_on_selector_all(".heatmap-grid .heat", "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head, +c.dataset.value])")
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
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=long_only")
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
    from build_index import build_index
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
        not_stored = s.page.eval_on_selector_all(".heat.not-stored", "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head])")
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
    mean = np.mean([[[float(lens.load_patterns(data, MODEL, h).head(l, hd)[:, 0].mean()) for hd in range(12)]
                     for l in range(12)] for h in hashes], 0)
    order = [f"L{i // 12}H{i % 12}" for i in np.argsort(-mean.ravel(), kind="stable")[:10]]
    with browser_session(data, dark=dark) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos")
        wait_ready(s.page)
        assert s.page.locator(".heatmap-grid .heat").count() == 144
        assert s.page.eval_on_selector_all(".top-table tbody a", "as => as.map(a => a.textContent)") == order
        screenshot(s, "heads-144-dark" if dark else "heads-144-light")
        assert not s.errors
