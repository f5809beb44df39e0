"""`pip install -e .` from a clone: the package imports from any folder, shadows nothing, and runs its scripts."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_an_editable_install_imports_from_anywhere_and_shadows_nothing(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    r = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    probe = ("import importlib.util as u, attention_lens.notebook as n\n"
             "print(n.__file__)\n"
             "print(*[str(getattr(u.find_spec(m), 'origin', None)) for m in "
             "('notebook', 'lens', 'storage', 'serve', 'compute_activations')])\n")
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env, check=True)
    ours, others = out.stdout.splitlines()
    assert ours == str(ROOT / "attention_lens" / "notebook.py")
    assert str(ROOT) not in others  # `import notebook` is Jupyter's (or nothing), never ours
    r = subprocess.run([python, "-m", "attention_lens.build_index", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0 and r.stdout.startswith("usage: build_index.py"), r.stdout + r.stderr
