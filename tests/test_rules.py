"""The rules both the Python scripts and the site implement, checked on both sides against one table of cases
(tests/rules.json): the head-spec grammar, the words and shards the prompt search uses, the stored-value quantum."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from browser import browser_session

import lens
import storage
from build_index import SITE_DIR, search_words, shard_name
from lens import format_heads, parse_heads

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


JS_CHECK = """async (rules) => {
  const d = await import("./data.js");
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
  return out;
}"""


def test_the_browser_follows_the_same_table(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(SITE_DIR, site)
    (site / "blank.html").write_text("<!doctype html><title>rules</title>")
    (site / "quantum.bin").write_bytes(storage.encode_patterns(quantum_matrix()[None, None]))
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
