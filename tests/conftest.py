import os
import sys
from pathlib import Path

import pytest

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
