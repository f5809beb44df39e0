"""The heads page's scatter of heads (site/scatter.js) in a real offline chromium, on the demo model's training
checkpoints: each model's stats.json is the oracle for where a head is drawn and what hovering it says, heads.json
for its kinds."""
import json
import math
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from browser import assert_only_local, browser_session, screenshot
from conftest import FINAL, MODELS

from attention_lens import datadir


def stats_json(data: Path, model: str) -> dict:
    return json.loads(datadir.stats_path(data, model).read_text())


def summary(stats: dict, stat: str, which: str, layer: int, head: int) -> float | None:
    """A head's summary of a statistic as stats.json stores it: a table by name, or a quantile's."""
    s = stats["stats"][stat]
    return (s["quantiles"][which] if which.startswith("0.") else s[which])[layer][head]


def kinds_of(data: Path, model: str, layer: int, head: int) -> str:
    info = json.loads(datadir.heads_json_path(data, model).read_text())
    return ", ".join(k["name"] for k in info["heads"][layer][head]["kinds"]) or "no kind"


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def canvas_box(page) -> dict:
    """The scatter's plot box in canvas pixels and the values at its edges (its data-* attributes)."""
    d = page.eval_on_selector("#scatter-canvas", "c => ({...c.dataset})")
    left, top, right, bottom = map(float, d["frame"].split(","))
    return {"frame": (left, top, right, bottom), "x": tuple(map(float, d["xDomain"].split(","))),
            "y": tuple(map(float, d["yDomain"].split(","))), "points": int(d["points"])}


def position(box: dict, x: float, y: float, xlog: bool = False, ylog: bool = False) -> tuple[float, float]:
    """Where a head with values (x, y) belongs: its values' place between the axes' ends, linear or log."""
    def t(v, log):
        return math.log10(v) if log else v
    left, top, right, bottom = box["frame"]
    (x0, x1), (y0, y1) = box["x"], box["y"]
    fx = (t(x, xlog) - t(x0, xlog)) / (t(x1, xlog) - t(x0, xlog))
    fy = (t(y, ylog) - t(y0, ylog)) / (t(y1, ylog) - t(y0, ylog))
    return left + fx * (right - left), bottom - fy * (bottom - top)


def hover(page, xy: tuple[float, float]) -> dict:
    page.locator("#scatter-canvas").hover(position={"x": xy[0], "y": xy[1]})  # offsetX, offsetY: the padding box
    return page.eval_on_selector("#map-hover", "p => ({...p.dataset, text: p.textContent})")


def apart(points: dict, key, px: float = 6) -> bool:
    """Whether a point is more than `px` from every other, so hovering it cannot pick a neighbour."""
    return all(math.dist(points[key], xy) > px for k, xy in points.items() if k != key)


def wait_scatter(page, points: int | None = None) -> None:
    page.wait_for_selector("body[data-ready='1'] #scatter-canvas[data-points"
                           + (f"='{points}']" if points is not None else "]"))


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_scatter_draws_each_head_at_its_statistics_and_opens_it(demo_site, dark):
    stats = stats_json(demo_site, FINAL)
    heads = [(l, h) for l in range(stats["n_layers"]) for h in range(stats["n_heads"])]
    values = {lh: (summary(stats, "induction_head", "mean", *lh), summary(stats, "previous_token_head", "mean", *lh))
              for lh in heads}
    with browser_session(demo_site, dark=dark) as s:
        s.page.goto(f"{s.url}heads.html?model={FINAL}&plot=scatter&map=model")
        wait_scatter(s.page, len(heads))
        # the defaults: induction against previous-token, each the mean over prompts; the map is hidden
        assert (s.page.input_value("#x"), s.page.input_value("#xsum")) == ("induction_head", "mean")
        assert (s.page.input_value("#y"), s.page.input_value("#ysum")) == ("previous_token_head", "mean")
        assert s.page.is_hidden("#map-canvas") and s.page.text_content("#scatter-note") == f"8 of {len(heads)} heads"
        label = s.page.get_attribute("#scatter-canvas", "aria-label")
        assert "x induction_head (mean over prompts)" in label and "y previous_token_head (mean over prompts)" in label
        box = canvas_box(s.page)
        xs, ys = [v[0] for v in values.values()], [v[1] for v in values.values()]
        assert box["x"][0] < min(xs) <= max(xs) < box["x"][1] and box["y"][0] < min(ys) <= max(ys) < box["y"][1]
        at = {lh: position(box, *v) for lh, v in values.items()}
        checked = [lh for lh in heads if apart(at, lh)]
        assert len(checked) >= 4, "the demo's heads lie too close together to hover one by one"
        for l, h in checked:
            shown = hover(s.page, at[(l, h)])
            assert (shown["plot"], shown["model"], shown["head"]) == ("scatter", FINAL, f"L{l}H{h}")
            assert (float(shown["x"]), float(shown["y"])) == pytest.approx(values[(l, h)], rel=1e-12)
            kinds = kinds_of(demo_site, FINAL, l, h)
            assert shown["text"].startswith(f"{FINAL} L{l}H{h}: {kinds} \u00b7 x: induction_head mean ")
        right = max(heads, key=lambda lh: values[lh][0])  # the highest x is drawn rightmost
        assert at[right][0] == max(xy[0] for xy in at.values())
        screenshot(s, f"heads-scatter-{'dark' if dark else 'light'}")
        s.page.locator("#scatter-canvas").click(position={"x": at[right][0], "y": at[right][1]})
        s.page.wait_for_url("**/head.html*")
        assert query(s.page.url) == {"model": FINAL, "head": f"L{right[0]}H{right[1]}"}
        assert not s.errors
        assert_only_local(s)


def test_scatter_colours_by_a_third_statistic(demo_site):
    tables = {m: stats_json(demo_site, m) for m in MODELS}  # "heads of its checkpoints": every demo_step<N>
    colour = [summary(st, "entropy", "0.95", l, h) for st in tables.values()
              for l in range(st["n_layers"]) for h in range(st["n_heads"])]
    with browser_session(demo_site) as s:
        s.page.goto(f"{s.url}heads.html?model={FINAL}&plot=scatter&colour=stat&cstat=entropy&csum=0.95")
        wait_scatter(s.page, len(colour))
        legend = s.page.eval_on_selector(".value-legend", "l => ({...l.dataset, text: l.textContent})")
        assert (float(legend["lo"]), float(legend["hi"])) == pytest.approx((min(colour), max(colour)), rel=1e-12)
        assert legend["text"] == f"colour: entropy (95% quantile){min(colour):.3f}{max(colour):.3f}"
        assert s.page.is_visible("#cstat") and s.page.input_value("#csum") == "0.95"
        box = canvas_box(s.page)
        at = {(m, l, h): position(box, summary(st, "induction_head", "mean", l, h),
                                  summary(st, "previous_token_head", "mean", l, h))
              for m, st in tables.items() for l in range(st["n_layers"]) for h in range(st["n_heads"])}
        m, l, h = next(k for k in at if k[0] == FINAL and apart(at, k))
        shown = hover(s.page, at[(m, l, h)])
        assert shown["model"] == FINAL and shown["head"] == f"L{l}H{h}"
        assert shown["text"].endswith(f" \u00b7 colour: entropy 95% {summary(tables[m], 'entropy', '0.95', l, h):.3f}")
        assert not s.errors


def test_scatter_choices_live_in_the_url(demo_site):
    stats = stats_json(demo_site, FINAL)
    with browser_session(demo_site) as s:
        s.page.goto(f"{s.url}heads.html?model={FINAL}&map=model")
        s.page.wait_for_selector("body[data-ready='1'] #map-canvas[data-points='8']")
        assert s.page.is_hidden("#scatter-box")  # the map alone, as before the scatter
        s.page.select_option("#plot", "both")
        wait_scatter(s.page, 8)
        chosen = {"x": "entropy", "xsum": "0.5", "y": "bos", "ysum": "max", "colour": "layer"}
        for select, value in chosen.items():
            s.page.select_option(f"#{select}", value)
        s.page.check("#ylog")
        s.page.wait_for_function("() => new URLSearchParams(location.search).get('ylog') === '1'")
        chosen |= {"model": FINAL, "map": "model", "plot": "both", "ylog": "1"}
        assert {k: v for k, v in query(s.page.url).items() if k in chosen} == chosen
        s.page.goto(s.page.url)  # the URL alone brings the same view back
        wait_scatter(s.page, 8)
        for select in ["plot", "map", "x", "xsum", "y", "ysum", "colour"]:
            assert s.page.input_value(f"#{select}") == chosen[select], select
        assert s.page.is_checked("#ylog") and not s.page.is_checked("#xlog")
        assert s.page.get_attribute("#map-canvas", "data-points") == "8"  # the map is drawn beside it
        assert s.page.eval_on_selector_all(".map-key", "ks => ks.map(k => k.dataset.key)") == ["layer 0", "layer 1"]
        label = s.page.get_attribute("#scatter-canvas", "aria-label")
        assert "x entropy (median) from" in label and "y bos (max over prompts) (log) from" in label
        l, h = max(((l, h) for l in range(2) for h in range(4)), key=lambda lh: summary(stats, "bos", "max", *lh))
        x, y = summary(stats, "entropy", "0.5", l, h), summary(stats, "bos", "max", l, h)
        shown = hover(s.page, position(canvas_box(s.page), x, y, ylog=True))  # the top point, on a log axis
        assert shown["head"] == f"L{l}H{h}" and float(shown["y"]) == pytest.approx(y, rel=1e-12)
        assert not s.errors


def test_scatter_leaves_out_missing_values_and_centres_a_constant_axis(demo_site):
    path = datadir.stats_path(demo_site, FINAL)
    stats = json.loads(path.read_text())
    for l, h in [(0, 0), (0, 3), (1, 1)]:  # heads without a value (as stats.json writes a statistic undefined there)
        stats["stats"]["induction_head"]["mean"][l][h] = None
    stats["stats"]["diagonal"]["mean"][1][2] = 0.0
    path.write_text(json.dumps(stats))
    tokens = {summary(stats, "tokens", "mean", l, h) for l in range(2) for h in range(4)}
    assert len(tokens) == 1, "the tests' `tokens` statistic is the same for every head"
    with browser_session(demo_site) as s:
        s.page.goto(f"{s.url}heads.html?model={FINAL}&map=model&plot=scatter&y=tokens")
        wait_scatter(s.page, 5)
        assert s.page.text_content("#scatter-note") == "5 of 8 heads; 3 without a value of x or y, left out"
        box = canvas_box(s.page)
        (y0, y1), (value,) = box["y"], tokens
        assert y0 < value < y1 and (y0 + y1) / 2 == pytest.approx(value)  # all equal: in the middle, not on an edge
        s.page.goto(f"{s.url}heads.html?model={FINAL}&map=model&plot=scatter&x=entropy&y=diagonal&ylog=1")
        wait_scatter(s.page, 7)
        assert s.page.text_content("#scatter-note") == "7 of 8 heads; 1 with a value \u2264 0 on a log axis, left out"
        assert not s.errors
