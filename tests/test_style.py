"""The house rules a reviewer would otherwise check by eye: ruff's lint and the shared module's size."""
import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in requirements-dev.txt")
def test_ruff_finds_nothing():
    r = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_lens_holds_only_what_scripts_share():
    """lens.py is the small shared helper (at most 500 lines). Besides the data layout's paths (one scheme, as
    site/data.js has one) and the plug-in API (figure, statistic, matrix_as_svg), every function in it is used
    by two or more of the scripts (a function one script uses belongs in that script)."""
    lens_src = (ROOT / "lens.py").read_text()
    assert len(lens_src.splitlines()) <= 500
    users = [p for p in ROOT.glob("*.py") if p.name != "lens.py"]
    api = {"figure", "statistic", "matrix_as_svg"}
    texts = {p.name: p.read_text() for p in users}
    names = [n.name for n in ast.parse(lens_src).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
             and not n.name.startswith("_") and not n.name.endswith("_path") and n.name not in api]
    lonely = {}
    for name in names:
        using = [f for f, t in texts.items() if f"lens.{name}" in t or f"import {name}" in t
                 or f", {name}" in t.split("from lens import")[-1].split("\n")[0]]
        if len(using) < 2 and f"{name}(" not in lens_src.replace(f"def {name}(", ""):
            lonely[name] = using
    assert not lonely, f"used by fewer than two scripts: {lonely}"
    assert "import torch" not in lens_src


def test_text_files_follow_editorconfig():
    """.editorconfig's rules for every tracked text file: UTF-8, LF, a final newline, no trailing whitespace
    (Markdown excepted) and spaces, not tabs, for indentation."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    kinds = (".py", ".js", ".html", ".css", ".json", ".toml", ".md", ".txt", ".sh")
    bad = []
    for name in files:
        if not name.endswith(kinds) or name.startswith("demo/") or not (ROOT / name).is_file():
            continue
        text = (ROOT / name).read_bytes().decode("utf-8")
        lines = text.split("\n")
        if (text and not text.endswith("\n")) or "\r" in text or any(line.startswith("\t") for line in lines) \
                or (not name.endswith(".md") and any(line != line.rstrip() for line in lines)):
            bad.append(name)
    assert not bad
