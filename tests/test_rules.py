"""The rules both the Python scripts and the site implement, checked on both sides against one table of cases
(tests/rules.json): the head-spec grammar, the words and shards the prompt search uses, the stored-value quantum,
the data dir's paths, what a search term finds, checkpoint names, and the pattern computations of site/matrix.js."""
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser import browser_session

from attention_lens import datadir, lens, standalone, storage
from attention_lens.build_index import colormaps_json
from attention_lens.lens import SITE_DIR, format_heads, parse_heads, search_words
from attention_lens.prompt_index import shard_name

RULES = json.loads((Path(__file__).parent / "rules.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", RULES["heads"], ids=lambda c: repr(c["spec"]))
def test_python_head_specs_follow_the_table(case):
    if "error" in case:
        with pytest.raises(lens.UserError, match=case["error"]):
            parse_heads(case["spec"], case["n_layers"], case["n_heads"])
        return
    heads = parse_heads(case["spec"], case["n_layers"], case["n_heads"])
    assert [list(h) for h in heads] == case["heads"]
    assert format_heads(heads, case["n_layers"], case["n_heads"]) == case["shortest"]


def quantum_matrix() -> np.ndarray:
    """The quantum cases as one head's [n, n] lower triangle, row by row (the stored order)."""
    values = [v for v, _ in RULES["quantum"]["cases"]]
    n = next(n for n in range(1, 10) if n * (n + 1) // 2 >= len(values))
    matrix = np.zeros((n, n), np.float32)
    matrix[np.tril_indices(n)] = values + [0.0] * (n * (n + 1) // 2 - len(values))
    return matrix


def test_python_stores_attention_values_as_the_table_says():
    scale, cases = RULES["quantum"]["scale"], RULES["quantum"]["cases"]
    assert scale == storage.PATTERN_SCALE
    stored = storage.stored_form(np.array([[v for v, _ in cases]], np.float32))
    q = stored[0, 0].astype(np.uint16) | (stored[0, 1].astype(np.uint16) << 8)
    assert q.tolist() == [c for _, c in cases]
    matrix = quantum_matrix()
    tril = np.tril_indices(len(matrix))
    back = storage.decode_stored(storage.stored_form(matrix[tril][None])[0], len(matrix), "tril")
    assert back[tril][:len(cases)].tolist() == [np.float32(c / scale) for _, c in cases]


@pytest.mark.parametrize("case", RULES["words"], ids=lambda c: c["text"])
def test_python_search_words_follow_the_table(case):
    words = sorted(search_words({"text": case["text"], "meta": {}}))
    assert words == case["words"]
    assert [shard_name(w) for w in words] == case["shards"]


@pytest.mark.parametrize("case", RULES["paths"], ids=lambda c: c["py"])
def test_python_paths_follow_the_table(case):
    save_path = Path("data")
    assert getattr(datadir, case["py"])(save_path, *case["args"]).relative_to(save_path).as_posix() == case["path"]


def test_every_python_path_is_in_the_table():
    functions = {name for name, f in inspect.getmembers(datadir, inspect.isfunction)
                 if f.__module__ == datadir.__name__}
    assert functions == {c["py"] for c in RULES["paths"]}


@pytest.mark.parametrize("case", RULES["search"], ids=lambda c: f"{c['text']}:{c['term']}")
def test_python_search_finds_as_the_table_says(case):
    record = {"text": case["text"], "hash": case["hash"], "meta": {}}
    assert standalone.finds(record, case["term"]) == case["finds"]


@pytest.mark.parametrize("case", RULES["checkpoints"], ids=lambda c: c["model_name"])
def test_python_names_checkpoints_as_the_table_says(case):
    """compute_activations.py --checkpoint N runs NAME as NAME@stepN; lens.model_dir_name makes its dir, whose base
    is the dir of NAME."""
    assert lens.model_dir_name(case["model_name"]) == case["model_dir"]
    if case["step"] is None:
        assert case["base"] == case["model_dir"]
    else:
        name = case["model_name"].removesuffix(f"@step{case['step']}")
        assert name != case["model_name"] and lens.model_dir_name(name) == case["base"]


@pytest.mark.parametrize("case", RULES["matrix"]["value_weighted"], ids=lambda c: f"rows={c['rows']}")
def test_value_weighted_table_against_the_figure(case):
    """figures/value_weighted.py is the Python definition; rows summing to 1 divide by the row's sum where it is > 0."""
    figures, _ = lens.load_figures()
    raw = figures["value_weighted"].func(np.array(case["attention"], np.float32), np.array(case["norms"], np.float32))
    if case["rows"]:
        sums = raw.sum(-1, keepdims=True)
        raw = np.divide(raw, sums, out=np.zeros_like(raw), where=sums > 0)
    np.testing.assert_allclose(raw, case["values"], atol=1e-6)


@pytest.mark.parametrize("case", RULES["matrix"]["difference"], ids=lambda c: f"{c['a_layout']}-{c['b_layout']}")
def test_difference_table_against_numpy(case):
    np.testing.assert_allclose(np.subtract(case["a"], case["b"]), case["values"], atol=1e-7)
    assert case["layout"] == ("tril" if case["a_layout"] == case["b_layout"] == "tril" else "full")


def colour_index_oracle(case: dict) -> list[int]:
    """The colormap index of each value: lens.quantize (how the figure images are coloured) for the linear scales,
    numpy for sqrt (attention over 0-1 unless not `unit`, else over 0 to the largest |value|)."""
    v = np.array(case["values"], np.float64)
    scale, unit, diverging = case["scale"], case["unit"], case["diverging"]
    if scale == "sqrt":
        top = 1.0 if unit else (np.abs(v).max() or 1.0)
        t = np.sqrt(np.minimum(np.abs(v) / top, 1.0))
        position = 0.5 + 0.5 * np.sign(v) * t if diverging else np.where(v > 0, t, 0.0)
        return np.floor(position * 255 + 0.5).astype(int).tolist()
    unit_range = scale == "linear" and unit
    if diverging:
        q = lens.quantize(v[None], normalize=not unit_range, diverging=True)
    elif scale == "range":
        q = lens.quantize(v[None], normalize=True)
    else:
        q = lens.quantize(v[None]) if unit_range else lens.quantize(v[None], normalize=True, normalize_min=0.0)
    return q[0].astype(int).tolist()


@pytest.mark.parametrize("case", RULES["matrix"]["colour_scales"],
                         ids=lambda c: f"{c['scale']}-unit={c['unit']}-diverging={c['diverging']}")
def test_colour_scale_table_against_quantize_and_the_colormaps(case):
    assert colour_index_oracle(case) == case["index"]
    assert lens.colormap_table(case["colormap"])[case["index"]].tolist() == case["rgb"]


JS_CHECK = """async (rules) => {
  const d = await import("./data.js");
  const mx = await import("./matrix.js");
  const out = { heads: [], words: [] };
  for (const c of rules.heads) {
    const r = { spec: c.spec };
    try {
      const heads = d.parseHeads(c.spec, c.n_layers, c.n_heads);
      r.heads = heads;
      r.shortest = d.formatHeads(heads, c.n_layers, c.n_heads);
    } catch (e) {
      r.error = e.message;
    }
    try {
      r.lenient = d.parseHeads(c.spec, c.n_layers, c.n_heads, false);
    } catch (e) {
      r.lenientError = e.message;
    }
    out.heads.push(r);
  }
  for (const c of rules.words) {
    const words = d.searchTerms(c.text).sort();
    out.words.push({ text: c.text, words, shards: words.map(d.shardName) });
  }
  const { n, values } = await (await import("./patterns.js")).loadHead("quantum.bin", 0, 0);
  out.quantum = [];
  for (let q = 0; q < n; q++) for (let k = 0; k <= q; k++) out.quantum.push(values[q * n + k]);

  out.pathExports = Object.keys(d).filter((name) => /(Url|URL)$/.test(name) || name === "promptDir").sort();
  const path = (c) => (typeof d[c.js] === "function" ? d[c.js](...c.args) : d[c.js]);  // a constant takes none
  out.paths = rules.paths.filter((c) => c.js).map(path);
  out.search = rules.search.map((c) => d.termFinds(d.searchTerms(c.text), c.hash, c.term));
  out.checkpoints = rules.checkpoints.map((c) => d.checkpointOf(c.model_dir));

  const pattern = (m, layout) => ({ n: m.length, values: Float32Array.from(m.flat()), header: { layout } });
  out.valueWeighted = rules.matrix.value_weighted.map((c) => Array.from(
    mx.valueWeighted(pattern(c.attention, "tril"), Float32Array.from(c.norms), c.rows).values));
  out.difference = rules.matrix.difference.map((c) => {
    const diff = mx.difference(pattern(c.a, c.a_layout), pattern(c.b, c.b_layout));
    return { values: Array.from(diff.values), layout: diff.header.layout };
  });
  const colormaps = {};
  for (const c of rules.matrix.colour_scales) colormaps[c.colormap] ??= await d.loadColormap(c.colormap);
  out.colours = rules.matrix.colour_scales.map((c) => {
    const scale = mx.colourScale([c.values], c.scale, { unit: c.unit, diverging: c.diverging });
    const index = c.values.map(scale.index);
    return { index, rgb: index.map((i) => colormaps[c.colormap][i]) };
  });
  return out;
}"""


def test_the_browser_follows_the_same_table(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(SITE_DIR, site)
    (site / "blank.html").write_text("<!doctype html><title>rules</title>")
    (site / "quantum.bin").write_bytes(storage.encode_patterns(quantum_matrix()[None, None]))
    (site / datadir.colormaps_path(Path()).as_posix()).write_bytes(colormaps_json())
    with browser_session(site) as s:
        s.page.goto(s.url + "blank.html")
        got = s.page.evaluate(JS_CHECK, RULES)
    for case, js in zip(RULES["heads"], got["heads"]):
        if "error" in case:
            assert case["error"] in js.get("error", ""), (case, js)
        else:
            assert js.get("heads") == case["heads"] and js["shortest"] == case["shortest"], (case, js)
        lenient = case.get("lenient", case.get("heads"))
        if lenient is not None:
            assert js.get("lenient") == lenient, (case, js)
        else:  # bad syntax is an error however lenient
            assert "lenientError" in js, (case, js)
    # JS sorts by UTF-16 code units, Python by code points: equal for these texts (no astral characters)
    assert got["words"] == [{k: c[k] for k in ("text", "words", "shards")} for c in RULES["words"]]
    scale, cases = RULES["quantum"]["scale"], RULES["quantum"]["cases"]
    assert got["quantum"][:len(cases)] == [c / scale for _, c in cases]  # float32 of q / 2**14 is exact

    js_paths = [c for c in RULES["paths"] if c["js"]]
    assert got["pathExports"] == sorted(c["js"] for c in js_paths)  # every path the site builds is in the table
    for case, js in zip(js_paths, got["paths"]):
        assert js == case["path"] + ("/" if case["py"].endswith("_dir") else ""), (case, js)  # a JS dir ends in /
    assert got["search"] == [c["finds"] for c in RULES["search"]]
    assert got["checkpoints"] == [{"base": c["base"], "step": c["step"]} for c in RULES["checkpoints"]]
    for case, js in zip(RULES["matrix"]["value_weighted"], got["valueWeighted"]):
        np.testing.assert_allclose(js, np.ravel(case["values"]), atol=1e-6)
    for case, js in zip(RULES["matrix"]["difference"], got["difference"]):
        np.testing.assert_allclose(js["values"], np.ravel(case["values"]), atol=1e-7)
        assert js["layout"] == case["layout"]
    assert got["colours"] == [{"index": c["index"], "rgb": c["rgb"]} for c in RULES["matrix"]["colour_scales"]]
