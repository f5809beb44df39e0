"""The rules both the Python scripts and site/data.js implement, checked on both sides against one table of
cases (tests/rules.json): the head-spec grammar, and the words and shards the prompt search uses."""
import json
import shutil
from pathlib import Path

import pytest
from browser import browser_session

import lens
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
  return out;
}"""


def test_the_browser_follows_the_same_table(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(SITE_DIR, site)
    (site / "blank.html").write_text("<!doctype html><title>rules</title>")
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
