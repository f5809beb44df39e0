"""The house rules a reviewer would otherwise check by eye: ruff's lint, the shape of the code (scripts and modules,
the import graph, where torch loads, what the shared helper holds) and .editorconfig."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in requirements-dev.txt")
def test_ruff_finds_nothing():
    r = subprocess.run(["ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


PACKAGE = ROOT / "attention_lens"
SOURCES = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
NAMES = {p.stem for p in SOURCES}


def imports(path: Path, top_level_only: bool = True) -> set[str]:
    """The modules a file imports, the package's own by their name in it (`from attention_lens import lens` is
    "lens"): at its top level, or anywhere (lazy imports inside functions too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "attention_lens":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            found.add(parts[1] if parts[0] == "attention_lens" and len(parts) > 1 else parts[0])
    return found


def top_level_imports(path: Path) -> set[str]:
    """The package modules a file imports at its top level."""
    return imports(path) & NAMES


def is_script(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def test_scripts_have_a_main_and_modules_do_not():
    """A script (it runs as `python -m attention_lens.X`) has a main(); a module is imported and has neither."""
    for path in SOURCES:
        body = ast.parse(path.read_text()).body
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in body) == is_script(path), path.name


def test_the_clone_runs_each_script_by_its_old_name():
    """Every script of the package has a file of its name in the clone's root (`python compute_activations.py`),
    and those files only run it: the package is the one home of the code."""
    scripts = {p.stem for p in SOURCES if is_script(p)}
    assert {p.stem for p in ROOT.glob("*.py")} == scripts
    for name in scripts:
        body = ast.parse((ROOT / f"{name}.py").read_text()).body
        assert len(body) == 3 and f'runpy.run_module("attention_lens.{name}", run_name="__main__", alter_sys=True)' in \
            (ROOT / f"{name}.py").read_text(), name


def test_the_import_graph_has_no_circle():
    """Top-level imports between the package's files form no cycle (an alias imports its script lazily)."""
    graph = {p.stem: top_level_imports(p) - {p.stem} for p in SOURCES}
    state = {}

    def visit(name: str, path: list[str]) -> None:
        assert state.get(name) != "open", " -> ".join(path + [name])
        if state.get(name) is None:
            state[name] = "open"
            for dep in sorted(graph[name]):
                visit(dep, path + [name])
            state[name] = "done"
    for name in sorted(graph):
        visit(name, [])


def test_the_modules_scripts_import_import_no_script():
    """The modules sit below the scripts: one a script imports imports only modules. (notebook.py, which no script
    imports, is the notebook's face of standalone.py and builds on it.)"""
    scripts = {p.stem for p in SOURCES if is_script(p)}
    below = set().union(*(top_level_imports(p) for p in SOURCES if p.stem in scripts)) - scripts
    for path in SOURCES:
        if path.stem in below:
            assert not top_level_imports(path) & scripts, path.name


def test_only_the_forward_module_imports_torch():
    """torch and transformer_lens load in forward.py alone, so the other scripts start fast without them."""
    for path in [*SOURCES, *ROOT.glob("*.py")]:
        if path.name != "forward.py":
            assert not imports(path, top_level_only=False) & {"torch", "transformer_lens"}, path.name


def test_no_module_of_the_package_shadows_a_common_one():
    """With the clone on sys.path (as tests and `sys.path.append(repo)` put it), no helper's name resolves to a file
    of ours: `import notebook` finds Jupyter's or nothing, and ours is attention_lens.notebook."""
    import importlib.util
    assert str(ROOT) in sys.path
    for name in NAMES:
        spec = importlib.util.find_spec(name) if name not in {p.stem for p in ROOT.glob("*.py")} else None
        assert spec is None or not str(spec.origin).startswith(str(ROOT)), name
    assert importlib.util.find_spec("attention_lens.notebook").origin == str(PACKAGE / "notebook.py")


def test_lens_holds_only_what_two_files_share():
    """lens.py is the shared helper: besides the plug-in API (figure, statistic, matrix_as_svg), every function and
    class in it is used by two or more other files of the repo (one that serves one file belongs in that file)."""
    lens_src = (PACKAGE / "lens.py").read_text()
    texts = {p.name: p.read_text() for p in SOURCES if p.name != "lens.py"}
    api = {"figure", "statistic", "matrix_as_svg"}
    names = [n.name for n in ast.parse(lens_src).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
             and not n.name.startswith("_") and n.name not in api]
    lonely = {}
    for name in names:
        using = [f for f, t in texts.items() if f"lens.{name}" in t or f"import {name}" in t
                 or f", {name}" in t.split("from attention_lens.lens import")[-1].split("\n")[0]]
        if len(using) < 2 and f"{name}(" not in lens_src.replace(f"def {name}(", ""):
            lonely[name] = using
    assert not lonely, f"used by fewer than two files: {lonely}"


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
