"""Prompts from datasets (compute_activations.py --dataset): parquet, JSONL and CSV files, a folder of shards, a
save_to_disk dir and its splits, each row's other columns as meta; bad input is one error line. Local files
only: a Hugging Face name is streamed, which needs the hub, and is tested only for its offline error."""
import json

import pytest
from test_compute_stats import DEMO, TEXTS

from attention_lens import compute_activations as ca
from attention_lens import datadir, lens

MODEL = "model"


def part_rows(data) -> list[dict]:
    return [json.loads(line) for p in sorted(datadir.parts_dir(data, MODEL).glob("*.jsonl"))
            for line in p.read_text().splitlines()]


def run(*args):
    ca.main([str(DEMO), *map(str, args), "--no-examples", "--no-probe"])


def error_of(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        lens.run_main(lambda: run(*args), "")
    assert e.value.code not in (0, None)
    return f"{e.value.code} {capsys.readouterr().err}"


def test_parquet_shards_give_their_rows_with_meta(tmp_path, capsys):
    import pandas as pd
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        pd.DataFrame({"text": TEXTS[k * 4:k * 4 + 4] + [" "], "source": [f"s{k}"] * 5, "score": [0.5] * 5,
                      "meta": [{"pile_set_name": "Wiki"}] * 5}).to_parquet(shards / f"part-{k}.parquet")
    data = tmp_path / "data"
    run("--dataset", shards, "--save-path", data, "--patterns", "none", "--n-samples", "6")
    rows = part_rows(data)
    assert sorted(r["text"] for r in rows) == sorted(TEXTS[:6])  # the empty rows are skipped, not counted
    first = next(r for r in rows if r["text"] == TEXTS[0])
    assert first["meta"] == {"pile_set_name": "Wiki", "source": "s0", "score": 0.5, "row": 0}
    assert "1 row(s) with an empty 'text' skipped" in capsys.readouterr().err


def test_a_save_to_disk_dir_with_splits_and_another_text_field(tmp_path):
    import datasets
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": TEXTS[:3]}),
                               "test": datasets.Dataset.from_dict({"content": TEXTS[3:5]})})
    dd.save_to_disk(str(tmp_path / "ds"))
    data = tmp_path / "data"
    run("--dataset", tmp_path / "ds", "--split", "test", "--text-field", "content", "--save-path", data,
        "--patterns", "none", "--raw", "--min-chars", "5", "--max-chars", "1000")
    rows = part_rows(data)
    assert sorted(r["text"] for r in rows) == sorted(TEXTS[3:5])
    assert all(r["meta"]["chunk"] == 0 for r in rows)


def test_jsonl_and_csv_files_by_path(tmp_path):
    (tmp_path / "a.csv").write_text("body,label\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(TEXTS[:3])))
    data = tmp_path / "data"
    run("--dataset", tmp_path / "a.csv", "--text-field", "body", "--save-path", data, "--patterns", "none")
    assert sorted((r["text"], r["meta"]["label"]) for r in part_rows(data)) == sorted(
        (t, i) for i, t in enumerate(TEXTS[:3]))


@pytest.mark.parametrize("case", ["no-field", "not-text", "no-dir", "offline", "with-prompts", "mixed"])
def test_bad_datasets_are_one_error_line(case, tmp_path, capsys):
    import pandas as pd
    pd.DataFrame({"text": TEXTS[:2], "n": [1, 2]}).to_parquet(tmp_path / "a.parquet")
    args, words = {
        "no-field": (["--dataset", tmp_path / "a.parquet", "--text-field", "body"],
                     "--text-field body: " + str(tmp_path / "a.parquet") + " has no such column (it has: text, n)"),
        "not-text": (["--dataset", tmp_path / "a.parquet", "--text-field", "n"], "row 0 holds int, not text"),
        "no-dir": (["--dataset", tmp_path / "nothing"], "no parquet, JSONL, JSON or CSV file there"),
        "offline": (["--dataset", "someone/no-such-dataset"], "--dataset someone/no-such-dataset: cannot load it"),
        "with-prompts": (["p.jsonl", "--dataset", tmp_path / "a.parquet"], "not with PROMPTS"),
        "mixed": (["--dataset", tmp_path], "mixes"),
    }[case]
    if case == "mixed":
        (tmp_path / "b.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    err = error_of(capsys, *args, "--save-path", tmp_path / "data")
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "data" / MODEL / "parts").exists()
