"""The heads page (layer x head heatmap of a statistic) in a real offline chromium."""
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

from browser import assert_only_local, browser_session, screenshot
from test_site_single import MODEL, publish, write_stats


@pytest.fixture
def site(fake_data_dir):
    publish(fake_data_dir)
    return fake_data_dir, write_stats(fake_data_dir)


def cells(page) -> np.ndarray:
    """The heatmap's values as [layers, heads] (NaN for a missing value)."""
    rows = page.eval_on_selector_all(".heatmap-grid .cell", "cs => cs.map(c => [+c.dataset.layer, +c.dataset.head, +c.dataset.value])")
    out = np.full((max(r[0] for r in rows) + 1, max(r[1] for r in rows) + 1), np.inf)
    for l, h, v in rows:
        out[l, h] = v
    return out


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_heatmap_mean_and_one_prompt(site):
    data, tables = site
    prompts = sorted(p.name for p in (data / MODEL / "prompts").iterdir())
    with browser_session(data) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        assert np.allclose(cells(s.page), np.nanmean(tables["bos"], 0), atol=1e-6)
        # top list, highest first
        mean = np.nanmean(tables["bos"], 0)
        best = np.unravel_index(np.argmax(mean), mean.shape)
        assert s.page.text_content(".top-table tbody tr td a") == f"L{best[0]}H{best[1]}"
        # one prompt's values come from stats/bos.f32
        s.page.select_option("#over", "prompt")
        s.page.keyboard.press("n")
        s.page.wait_for_function(f"() => new URLSearchParams(location.search).get('prompt') === '{prompts[1]}'")
        assert np.allclose(cells(s.page), tables["bos"][1], atol=1e-6)
        s.page.keyboard.press("s")  # next statistic: induction, whose prompt 1 is all missing
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('stat') === 'induction'")
        assert np.isnan(cells(s.page)).all()
        assert s.page.locator(".heatmap-grid .cell.missing").count() == tables["induction"][1].size
        screenshot(s, "heads-light")
        assert not s.errors
        assert_only_local(s)


def test_click_opens_head(site):
    data, tables = site
    prompts = sorted(p.name for p in (data / MODEL / "prompts").iterdir())
    t = tables["induction"]
    with browser_session(data, dark=True) as s:
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=induction")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        screenshot(s, "heads-dark")
        # mean over prompts: the single view opens on the prompt where this head scores highest
        s.page.click(".heatmap-grid .cell[data-layer='1'][data-head='2']")
        s.page.wait_for_selector("body[data-ready='1']")
        q = query(s.page.url)
        assert (q["layer"], q["head"]) == ("1", "2")
        assert q["prompt"] == prompts[int(np.nanargmax(t[:, 1, 2]))]
        assert "single.html" in s.page.url
        # ... or the grid, with that head on its top prompts sorted by the statistic
        s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=induction&click=grid")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        href = s.page.eval_on_selector(".heatmap-grid .cell[data-layer='0'][data-head='1']", "c => c.href")
        s.page.click(".heatmap-grid .cell[data-layer='0'][data-head='1']")
        s.page.wait_for_url("**/index.html?**")
        q = query(href)
        order = [prompts[i] for i in np.argsort(-np.nan_to_num(t[:, 0, 1], nan=-np.inf)) if not np.isnan(t[i, 0, 1])]
        assert q["heads"] == "L0H1" and q["prompts"].split(",") == order
        assert (q["stat"], q["sort"], q["desc"]) == ("induction", "stat", "1")
        assert not [e for e in s.errors if "heads" in e or "single" in e]
        assert_only_local(s)


def test_model_without_stats(fake_data_dir):
    publish(fake_data_dir)
    with browser_session(fake_data_dir) as s:
        s.page.goto(f"{s.url}heads.html")
        s.page.wait_for_selector("body[data-ready='1']")
        assert "no head statistics yet" in s.page.text_content("#heatmap")
        assert not s.errors


def test_gpt2_shaped_heatmap(tmp_path):
    """144 heads: every cell drawn, the top list is the mean's order; screenshots of a realistic size."""
    from fake_data import make_data
    data = tmp_path / "data"
    make_data(data, n_layers=12, n_heads=12, texts=["one two three", "four five six seven"])
    publish(data)
    tables = write_stats(data)
    mean = np.nanmean(tables["bos"], 0)
    order = [f"L{i // 12}H{i % 12}" for i in np.argsort(-mean.ravel(), kind="stable")[:10]]
    for dark in (False, True):
        with browser_session(data, dark=dark) as s:
            s.page.goto(f"{s.url}heads.html?model={MODEL}&stat=bos")
            s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
            assert s.page.locator(".heatmap-grid .cell").count() == 144
            assert s.page.eval_on_selector_all(".top-table tbody a", "as => as.map(a => a.textContent)") == order
            screenshot(s, "heads-144-dark" if dark else "heads-144-light")
            assert not s.errors
