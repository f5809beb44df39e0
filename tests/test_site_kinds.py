"""The heads' kinds in the site (site/kinds.js) on the demo model's probe set, in a real offline chromium:
heads.json (kinds.py) is the oracle for what the summary, the map, the grid's tiles and the single view show."""
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from browser import assert_only_local, browser_session, screenshot

from attention_lens import datadir, kinds, lens

ROOT = Path(__file__).resolve().parent.parent
MAP_PAD = 14  # site/kinds.js drawMap's margin


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("site-kinds") / "data"
    for extra in [[], ["--checkpoint", "0,4000"]]:
        done = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), "demo", "--probe", *extra,
                               "--save-path", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    return data


def heads_json(data: Path, model: str) -> dict:
    return json.loads(datadir.heads_json_path(data, model).read_text())


def labelled(info: dict) -> dict[str, list[str]]:
    return {f"L{l}H{h}": [k["name"] for k in head["kinds"]] for l, row in enumerate(info["heads"])
            for h, head in enumerate(row) if head["kinds"]}


def test_heads_page_shows_the_kinds_summary(demo_data):
    info = heads_json(demo_data, "demo")
    with browser_session(demo_data) as s:
        s.page.goto(f"{s.url}heads.html?model=demo")
        s.page.wait_for_selector("body[data-ready='1'] .kinds-heads")
        shown = s.page.eval_on_selector_all(".kinds-heads tbody tr", "rs => rs.map(r => [r.dataset.head, "
                                            "[...r.querySelectorAll('.kind')].map(k => k.dataset.kind)])")
        assert dict(shown) == labelled(info)
        assert "induction" in dict(shown)["L1H2"] and "previous-token" in dict(shown)["L0H1"]
        counts = s.page.eval_on_selector_all(".kinds-counts tbody td[data-kind]", "cs => cs.map(c => "
                                             "[+c.closest('tr').dataset.layer, c.dataset.kind, c.textContent])")
        for layer, kind, text in counts:
            n = sum(any(k["name"] == kind for k in h["kinds"]) for h in info["heads"][layer])
            assert text == (str(n) if n else "")
        summary = s.page.text_content(".kinds-summary > p")
        assert summary.startswith("demo: 7 of 8 heads labelled. Measured on the probe set")
        assert summary.endswith("Copying and copy-suppression: from the weights.")
        definitions = s.page.text_content(".kinds-definitions")
        assert all(f"{k.name}: {k.feature} {k.op} {k.threshold:g}" in definitions and k.source in definitions
                   for k in kinds.KINDS)
        screenshot(s, "heads-kinds")
        assert not s.errors
        assert_only_local(s)


def test_first_screens_land_on_structure(demo_data):
    """With no URL parameters, at 1400 x 900: the grid opens on models.jsonl's start_prompt (a repeated probe
    sequence) with the kinds on its tiles, and the heads page on induction_head, its heatmap above the fold."""
    [model] = [m for _, m in lens.iter_jsonl(datadir.models_path(demo_data)) if m["model_dir"] == "demo"]
    info = heads_json(demo_data, "demo")
    with browser_session(demo_data, width=1400, height=900) as s:
        s.page.goto(f"{s.url}index.html")
        s.page.wait_for_selector("body[data-ready='1'] a.tile .kind")
        hrefs = s.page.eval_on_selector_all("a.tile", "ts => ts.map(t => t.getAttribute('href'))")
        assert {parse_qs(urlsplit(h).query)["prompt"][0] for h in hrefs} == {model["start_prompt"]}
        tiles = s.page.eval_on_selector_all("a.tile", "ts => ts.map(t => [...t.querySelectorAll('.kind')]"
                                            ".map(k => k.dataset.kind).join(','))")
        assert [bool(k) for k in tiles] == [bool(h["kinds"]) for row in info["heads"] for h in row]
        s.page.goto(f"{s.url}heads.html?model=demo")
        s.page.wait_for_selector("body[data-ready='1'] #heatmap .heatmap-grid")
        assert s.page.input_value("#stat") == "induction_head"
        box = s.page.locator("#heatmap .heatmap-grid").bounding_box()
        assert box["height"] > 100 and box["y"] + box["height"] <= 900
        screenshot(s, "first-screens-heads")
        assert not s.errors


def map_position(points: list[tuple[float, float]], xy: tuple[float, float], width: float, height: float):
    """Where site/kinds.js drawMap draws a point: the points' range stretched to the canvas, less its margin."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x = MAP_PAD + (xy[0] - min(xs)) / (max(xs) - min(xs)) * (width - 2 * MAP_PAD)
    y = height - MAP_PAD - (xy[1] - min(ys)) / (max(ys) - min(ys)) * (height - 2 * MAP_PAD)
    return x, y


def test_map_shows_every_head_of_the_checkpoints_and_opens_one(demo_data):
    models = lens.model_dirs(demo_data)  # demo and its checkpoints: the map's "its checkpoints"
    infos = {m: heads_json(demo_data, m) for m in models}
    points = [tuple(h["xy"]) for m in models for row in infos[m]["heads"] for h in row]
    with browser_session(demo_data) as s:
        s.page.goto(f"{s.url}heads.html?model=demo")
        s.page.wait_for_selector("body[data-ready='1'] #map-canvas[data-points]")
        assert s.page.get_attribute("#map-canvas", "data-points") == str(len(points)) == "24"
        legend = s.page.eval_on_selector_all(".map-key", "ks => ks.map(k => k.dataset.key)")
        assert set(legend) == {(labelled(i).get(f"L{l}H{h}") or ["no kind"])[0] for i in infos.values()
                               for l in range(2) for h in range(4)}
        box = s.page.eval_on_selector("#map-canvas", "c => [c.clientWidth, c.clientHeight]")
        x, y = map_position(points, infos["demo"]["heads"][0][1]["xy"], *box)
        s.page.locator("#map-canvas").hover(position={"x": x, "y": y})  # offsetX, offsetY: the padding box
        assert s.page.text_content("#map-hover") == "demo L0H1: previous-token, local, sparse, copying"
        s.page.locator("#map-canvas").click(position={"x": x, "y": y})
        s.page.wait_for_url("**/single.html*")
        q = {k: v[0] for k, v in parse_qs(urlsplit(s.page.url).query).items()}
        assert (q["model"], q.get("layer", "0"), q.get("head")) == ("demo", "0", "1")  # 0 is the default, left out
        s.page.goto(f"{s.url}heads.html?model=demo&map=model&colour=layer")
        s.page.wait_for_selector("body[data-ready='1'] #map-canvas[data-points='8']")
        assert s.page.eval_on_selector_all(".map-key", "ks => ks.map(k => k.dataset.key)") == ["layer 0", "layer 1"]
        assert not s.errors


def test_single_view_lists_kinds_and_similar_heads(demo_data):
    info = heads_json(demo_data, "demo_step4000")
    with browser_session(demo_data) as s:
        s.page.goto(f"{s.url}single.html?model=demo_step4000&layer=1&head=2")
        s.page.wait_for_selector("body[data-ready='1'] #head-kinds[data-head='L1H2'] .similar-heads")
        assert s.page.eval_on_selector_all("#head-kinds .kind", "ks => ks.map(k => k.dataset.kind)") == ["induction"]
        links = s.page.eval_on_selector_all(".similar-heads li", "ls => ls.map(l => [l.dataset.model, l.dataset.head, "
                                            "l.querySelector('a').getAttribute('href')])")
        assert [(m, h) for m, h, _ in links] == [(n[0], f"L{n[1]}H{n[2]}") for n in info["heads"][1][2]["nearest"]]
        first = links[0][2]
        s.page.click(".similar-heads li a")
        s.page.wait_for_selector(f"body[data-ready='1'] #head-kinds[data-head='{links[0][1]}']")
        assert s.page.url.endswith(first)
        assert not s.errors


def test_grid_tiles_show_their_heads_kinds(demo_data):
    info = heads_json(demo_data, "demo")
    with browser_session(demo_data) as s:
        s.page.goto(f"{s.url}index.html?models=demo&heads=L*H*")
        s.page.wait_for_selector("body[data-ready='1'] .tile .kind")
        s.page.wait_for_function("() => document.querySelectorAll('.tile .kind').length >= 8")
        tiles = s.page.eval_on_selector_all(".tile", "ts => ts.map(t => [`L${t.dataset.layer}H${t.dataset.head}`, "
                                            "[...t.querySelectorAll('.kind')].map(k => k.dataset.kind)])")
        assert {k: v for k, v in tiles if v} == labelled(info)
        assert not s.errors


def test_no_heads_json_hides_the_summary(rendered_data_dir):
    datadir.heads_json_path(rendered_data_dir, "fake-model").unlink()
    with browser_session(rendered_data_dir) as s:
        s.page.goto(f"{s.url}heads.html?model=fake-model")
        s.page.wait_for_selector("body[data-ready='1'] .heatmap-grid")
        assert s.page.is_hidden("#kinds-view") and not s.errors
