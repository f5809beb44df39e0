"""The README's and docs' examples as written: the "Write a figure" block saved into a copy of figures/ passes ruff
with the repo's settings, computes and renders, and its statistics equal their definitions on the stored patterns;
the Python blocks run; every command line they show parses with its script's own parser."""
import argparse
import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
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


# ---- every example of README.md and docs/*.md --------------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_VALUES = {'"${SLURM_ARRAY_TASK_ID}/8"': "1/8", '"${SLURM_ARRAY_TASK_ID}/4"': "1/4",
                '"${STEPS[$SLURM_ARRAY_TASK_ID]}"': "1000"}  # what docs/clusters.md's job arrays expand to


def code_blocks(path: Path, language: str | None = None) -> list[tuple[int, str]]:
    """(line, body) of each fenced block of a Markdown file, of one language ("" for unmarked ones) or all."""
    text = path.read_text()
    return [(text[:m.start()].count("\n") + 1, m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)
            if language is None or m.group(1) == language]


def command_lines() -> list[tuple[str, str]]:
    """("file:line", command) of every `python <script>.py ...` the docs show, line continuations joined, each
    part of an `a && b` on its own, shell variables as a job array expands them; usage synopses ([--flag X])
    and the benchmarks' and the docs' own scripts are left out."""
    scripts = {p.name for p in ROOT.glob("*.py")}
    found = []
    for path in DOCS:
        for line, body in code_blocks(path):
            for command in body.replace("\\\n", " ").splitlines():
                command = re.sub(r"(^|\s)#.*$", "", command).strip()
                for key, value in SHELL_VALUES.items():
                    command = command.replace(key, value)
                for part in command.split("&&"):
                    words = shlex.split(part) if part.strip().startswith("python ") else []
                    if len(words) >= 2 and words[1] in scripts and "[" not in part:
                        found.append((f"{path.relative_to(ROOT)}:{line}", part.strip()))
    return found


class Parsed(Exception):
    """Raised once a script's parser accepted its command line: the test stops there, before any work."""


@pytest.mark.parametrize("where,command", command_lines(), ids=[w for w, _ in command_lines()])
def test_every_command_line_in_the_docs_parses(where, command, monkeypatch):
    """Each shown command's flags and values are ones its script's parser accepts (models from a hub and cluster
    paths cannot run here; the demo's commands run in test_demo, test_kinds and test_standalone)."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(parser, args=None, namespace=None):  # lens.ArgumentParser's errors are UserErrors: they fail
        raise Parsed(original(parser, args, namespace))

    words = shlex.split(command)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", words[1:])
    module = importlib.import_module(f"attention_lens.{words[1].removesuffix('.py')}")
    with pytest.raises(Parsed):
        module.main()


def test_the_docs_show_the_commands_of_every_script():
    """The parse test sees what it should: commands of each script, and enough of them."""
    shown = {shlex.split(c)[1] for _, c in command_lines()}
    assert shown == {p.name for p in ROOT.glob("*.py")} and len(command_lines()) >= 40


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    """A 10-layer random GPT-2, deep enough for the examples' L5H1 and L9H*."""
    from tiny_model import make_checkpoint

    from attention_lens import forward
    return forward.load_model(str(make_checkpoint(tmp_path_factory.mktemp("deep") / "ckpt", n_layer=10)), "cpu",
                              "float32")


@pytest.mark.parametrize("path,heading", [("README.md", "### compute_activations.py"),
                                          ("docs/scripts.md", "## compute_activations.py")])
def test_the_compute_examples_run_as_written(path, heading, deep_model, tmp_path, monkeypatch):
    """The python block under `heading`, run as written with `model` a TransformerLens model: the head it reads is
    the stored L5H1, and only the heads it names were stored."""
    text = (ROOT / path).read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {"model": deep_model}
    exec(compile(code, path, "exec"), scope)
    attn = scope.get("attn")
    assert attn.shape[0] == attn.shape[1] > 5 and np.allclose(attn.sum(1), 1, atol=2e-3)
    [phash] = lens.finished_prompts(tmp_path / "attn_data", "my-model")
    patterns = storage.load_patterns(tmp_path / "attn_data", "my-model", phash)
    assert patterns.heads == [(5, 1), *[(9, h) for h in range(4)]]


def test_the_notebook_and_one_file_examples_run_as_written(tmp_path, monkeypatch):
    """README's "In a notebook" block and its standalone.py line, on the demo's prompts in ./attn_data: each view
    holds the prompts it names (the repeated-random ones), and the file opens on its own."""
    from attention_lens import forward
    from attention_lens.notebook import AttentionView

    run_main("demo", ROOT / "prompts.jsonl", "--save-path", tmp_path / "attn_data", "--no-examples")
    monkeypatch.chdir(tmp_path)
    scope = {"model": forward.load_model("demo", "cpu", "float32")}
    code = readme_block("### In a notebook").splitlines()
    exec(compile("\n".join(f"view_{i} = {line}" if line.startswith("attention_view(") else line
                           for i, line in enumerate(code)), "README.md", "exec"), scope)
    views = [v for k, v in scope.items() if k.startswith("view_")]
    assert len(views) == 2 and all(isinstance(v, AttentionView) for v in views)
    repeated = [json.loads(line)["text"] for line in (ROOT / "prompts.jsonl").read_text().splitlines()
                if json.loads(line).get("meta", {}).get("kind") == "repeated-random"]
    everything = [json.loads(line)["text"] for line in (ROOT / "prompts.jsonl").read_text().splitlines()]
    assert all(lens.prompt_hash(t) in views[1].document for t in repeated)
    assert not any(lens.prompt_hash(t) in views[1].document for t in everything if t not in repeated)
    [command] = [c for w, c in command_lines() if c.startswith("python standalone.py view.html")
                 and w.startswith("README.md")]
    done = subprocess.run([sys.executable, str(ROOT / "standalone.py"), *shlex.split(command)[2:], "--save-path",
                           "attn_data"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    document = (tmp_path / "view.html").read_text()
    assert all(lens.prompt_hash(t) in document for t in repeated)
