"""The README's examples as written: the "Write a figure" block saved into a copy of figures/ passes ruff with the
repo's settings, computes and renders, and its statistics equal their definitions on the stored patterns."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_compute_stats import DEMO, TEXTS, run_main

from attention_lens import datadir, lens, storage
from attention_lens.render_figures import render_figures

ROOT = Path(__file__).resolve().parent.parent
MODEL = "model"


def readme_block(after: str) -> str:
    """The first ```python block after a README heading."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)


def test_the_figure_example_lints_computes_and_renders(tmp_path):
    figures = tmp_path / "figures"
    shutil.copytree(ROOT / "figures", figures, ignore=shutil.ignore_patterns("__pycache__"))
    (figures / "mine.py").write_text(readme_block("## Write a figure"))
    if shutil.which("ruff"):
        done = subprocess.run(["ruff", "check", "--no-cache", "--config", str(ROOT / "ruff.toml"),
                               str(figures / "mine.py")], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:4]))
    data = tmp_path / "data"
    run_main(DEMO, prompts, "--save-path", data, "--figures-dir", figures, "--no-examples")
    render_figures(data, figures="sharpened,halves", figures_dir=figures, progress=False)
    [part] = storage.read_parts(data, MODEL)
    assert {"last_look_back", "moved"} <= set(part.stats)
    for i, row in enumerate(part.rows):
        pack = datadir.figure_pack_path(data, MODEL, row["hash"], "sharpened")
        assert storage.read_pack_image(pack, 1, 2).startswith(storage.PNG_SIGNATURE)
        assert datadir.figure_pack_path(data, MODEL, row["hash"], "halves.early").is_file()
        patterns = storage.load_patterns(data, MODEL, row["hash"])
        s = part.stats.index("last_look_back")
        expected = [[len(a) - 1 - int(np.argmax(a[-1])) for a in (patterns.head(l, h) for h in range(4))]
                    for l in range(2)]
        assert part.values[i, s].tolist() == expected  # stored patterns are the exact ones to 2^-14: no tie here
        assert len(set(part.values[:, s].ravel().tolist())) > 1  # it tells heads and prompts apart


@pytest.mark.parametrize("heading", ["### As DataFrames"])
def test_the_dataframe_example_runs(heading, tmp_path, monkeypatch):
    """The block as written, with its data dir and model names pointed at a small computed one."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:6]))
    run_main(DEMO, prompts, "--save-path", tmp_path / "attn_data", "--no-examples")
    monkeypatch.chdir(tmp_path)
    code = readme_block(heading).replace('"gpt2"', '"model"')
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["top"]) == 6 and scope["top"]["text"].notna().all()
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "kinds.parquet", "prompts.parquet", "statistics.parquet", "summary.parquet"]
    assert lens.model_dir_name("model") == MODEL
