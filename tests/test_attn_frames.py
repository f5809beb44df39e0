"""attn_frames: the data dir as DataFrames, against the files build_index.py wrote (read here as raw float32 and
JSON), and the parquet export read back by pyarrow."""
import json

import numpy as np
import pytest
from fake_data import index_rows, read_stats
from test_compute_stats import DEMO, TEXTS, run_main

from attention_lens import attn_frames as af
from attention_lens import datadir, lens

MODEL = "model"
LONG = "a long prompt: " + " ".join(["the cat sat on the mat"] * 20)  # more than the index keeps of a text


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frames")
    prompts = tmp / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t, "meta": {"i": i, "kind": "odd" if i % 2 else "even"}}) + "\n"
                               for i, t in enumerate(TEXTS)) + json.dumps({"text": LONG}) + "\n")
    run_main(DEMO, prompts, "--save-path", tmp / "data", "--patterns", "3", "--probe", "--no-examples")
    return tmp / "data"


def test_statistics_long_form_equals_the_tables(data):
    summary, tables = read_stats(data, MODEL)
    hashes = [r["hash"] for r in index_rows(data, MODEL)]
    stats = af.statistics(data, MODEL)
    assert len(stats) == len(hashes) * 8 and list(stats.columns[:5]) == ["model", "hash", "row", "layer", "head"]
    assert list(stats.columns[5:]) == list(summary["stats"])
    for name, table in tables.items():
        got = stats.pivot_table(index="row", columns=["layer", "head"], values=name, dropna=False).to_numpy()
        np.testing.assert_array_equal(got.reshape(table.shape), table)
    assert (stats.groupby("row")["hash"].first().to_numpy() == np.array(hashes)).all()
    one = af.statistics(data, MODEL, heads="L1H2", stats=["induction_head"])
    assert list(one.columns) == ["model", "hash", "row", "layer", "head", "induction_head"] and len(one) == len(hashes)
    np.testing.assert_array_equal(one["induction_head"].to_numpy(), tables["induction_head"][:, 1, 2])
    # the README's one-liner: the 20 prompts where L1H2's induction score is highest
    top = one.nlargest(20, "induction_head").merge(af.prompts(data, MODEL), on=["hash", "row"])
    order = np.argsort(-np.nan_to_num(tables["induction_head"][:, 1, 2], nan=-np.inf), kind="stable")[:20]
    assert set(top["hash"]) == {hashes[r] for r in order} and top["text"].str.len().min() > 0


def test_prompts_have_their_whole_text_meta_and_stored_state(data):
    prompts = af.prompts(data, MODEL)
    rows = index_rows(data, MODEL)
    assert list(prompts["hash"]) == [r["hash"] for r in rows] and list(prompts["row"]) == list(range(len(rows)))
    by_text = {t: i for i, t in enumerate(TEXTS)}
    mine = prompts[prompts["text"].isin(by_text)]
    assert len(mine) == len(TEXTS) and all(m["i"] == by_text[t] for t, m in zip(mine["text"], mine["meta"]))
    assert list(mine["meta_kind"]) == ["odd" if by_text[t] % 2 else "even" for t in mine["text"]]
    stored = set(lens.finished_prompts(data, MODEL))
    assert set(prompts.loc[prompts["stored"], "hash"]) == stored
    kept = {r["hash"]: r["text"] for r in rows}[lens.prompt_hash(LONG)]
    assert len(kept) < len(LONG) and LONG in set(prompts["text"])  # whole, where the index keeps the start


def test_kinds_and_summary_equal_heads_json_and_stats_json(data):
    info = json.loads(datadir.heads_json_path(data, MODEL).read_text())
    kinds = af.kinds(data, MODEL)
    expected = [(l, h, k["name"], k["score"]) for l, row in enumerate(info["heads"]) for h, head in enumerate(row)
                for k in head["kinds"]]
    assert list(kinds[["layer", "head", "kind", "score"]].itertuples(index=False, name=None)) == expected
    assert len(expected) and kinds["threshold"].notna().all()
    summary = af.summary(data, MODEL)
    stats = json.loads(datadir.stats_path(data, MODEL).read_text())
    row = summary[(summary["stat"] == "bos") & (summary["layer"] == 1) & (summary["head"] == 3)].iloc[0]
    bos = stats["stats"]["bos"]
    assert row["mean"] == bos["mean"][1][3] and row["q0.95"] == bos["quantiles"]["0.95"][1][3]
    assert len(summary) == len(stats["stats"]) * 8


def test_parquet_export_reads_back(data, tmp_path):
    import pyarrow.parquet as pq
    written = af.to_parquet(data, MODEL, tmp_path / "tables")
    assert sorted(p.name for p in written) == ["kinds.parquet", "prompts.parquet", "statistics.parquet",
                                                "summary.parquet"]
    table = pq.read_table(tmp_path / "tables" / "statistics.parquet").to_pandas()
    assert table.equals(af.statistics(data, MODEL))
    prompts = pq.read_table(tmp_path / "tables" / "prompts.parquet").to_pandas()
    assert [json.loads(m) for m in prompts["meta"]] == list(af.prompts(data, MODEL)["meta"])


def test_a_missing_model_or_statistic_is_one_clear_error(data):
    with pytest.raises(lens.UserError, match=r"no model gpt2 \(it has: model"):
        af.statistics(data, "gpt2")
    with pytest.raises(lens.UserError, match=r"no statistic 'nope' \(computed: bos"):
        af.statistics(data, MODEL, stats=["nope"])
