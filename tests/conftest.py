import os
import sys
from pathlib import Path

import pytest

from attention_lens import datadir

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight 2-layer, 4-head GPT-2 checkpoint dir with a trained BPE tokenizer."""
    from tiny_model import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")


@pytest.fixture
def fake_data_dir(tmp_path) -> Path:
    """A data dir with synthetic patterns for model 'fake-model' (2 layers x 3 heads, 4 prompts)."""
    from fake_data import make_data
    make_data(tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def _rendered_site(tmp_path_factory) -> Path:
    """fake_data_dir's data rendered once by render_figures.py with the site tests' figures (tests/browser.py)."""
    from browser import render
    from fake_data import make_data
    data = tmp_path_factory.mktemp("rendered") / "data"
    make_data(data)
    render(data)
    return data


@pytest.fixture
def rendered_data_dir(_rendered_site, tmp_path) -> Path:
    """A fresh copy of fake_data_dir's data after render_figures.py and build_index.py: images, statistics, the site."""
    import shutil
    return Path(shutil.copytree(_rendered_site, tmp_path / "data"))


@pytest.fixture
def partial_heads_data_dir(tmp_path) -> Path:
    """fake_data_dir's data where one prompt stores only L0H0 and L1H* (as compute_activations.py --heads
    writes it: a pattern file holding those heads, "heads" in prompt.json), rendered and indexed."""
    import json

    from browser import render
    from fake_data import TEXTS, make_data

    from attention_lens import lens, storage
    data = tmp_path / "data"
    make_data(data)
    pdir = datadir.prompt_dir(data, "fake-model", lens.prompt_hash(TEXTS[1]))
    heads = [(0, 0), (1, 0), (1, 1), (1, 2)]
    lens.write_atomic(pdir / datadir.PATTERN_FILE,
                      storage.encode_patterns(storage.Patterns(pdir / datadir.PATTERN_FILE).all(), heads=heads))
    record = json.loads((pdir / "prompt.json").read_text())
    lens.write_json(pdir / "prompt.json", {**record, "heads": lens.format_heads(heads, 2, 3)})
    render(data)
    return data


STEPS = sorted(int(p.name[4:]) for p in (ROOT / "demo" / "checkpoints").glob("step*"))
MODELS = [f"demo_step{s}" for s in STEPS]  # compute_activations.py --checkpoint's model dirs (demo@step<N>)
FINAL = MODELS[-1]


@pytest.fixture(scope="session")
def _demo_site(tmp_path_factory) -> Path:
    """compute_activations.py demo --checkpoint <every step> on 4 prompts, then render_figures.py."""
    import subprocess

    from browser import render
    assert len(STEPS) >= 2, "demo/checkpoints holds fewer than two checkpoints"
    tmp = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), "demo", str(ROOT / "prompts.jsonl"),
                           "--checkpoint", ",".join(map(str, STEPS)), "--n-samples", "4", "--no-probe",
                           "--save-path", "data"],
                          cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    render(tmp / "data")
    return tmp / "data"


@pytest.fixture
def demo_site(_demo_site, tmp_path) -> Path:
    """A fresh copy of the demo model's data at every training checkpoint (demo_step<N>), rendered and indexed."""
    import shutil
    return Path(shutil.copytree(_demo_site, tmp_path / "data"))
