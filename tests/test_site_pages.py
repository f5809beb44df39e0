"""What every page must do whatever the data dir holds: ask only for files that exist (no 404)."""
import os
from pathlib import Path

import pytest
from browser import browser_session

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"{i}. the cat sat on the mat and the cat sat on the mat again, said {w}"
         for i, w in enumerate(["north", "river", "stone", "cloud", "lamp", "seven"])]


@pytest.fixture(scope="module")
def half_done(tmp_path_factory) -> Path:
    """The demo model's statistics of six prompts, the patterns of two, no figure rendered: a data dir just
    after `compute_activations.py --patterns 2`."""
    import compute_activations as ca
    data = tmp_path_factory.mktemp("half") / "data"
    import forward
    model = forward.load_model(str(ROOT / "demo" / "model"), "cpu", "float32")
    ca.compute_activations(TEXTS, model, data, model_name="demo", patterns=2, progress=False)
    from build_index import build_index
    build_index(data)
    return data


def visit(session, page: str) -> None:
    session.page.goto(session.url + page)
    session.page.wait_for_function("document.body.dataset.ready === '1'")
    session.page.wait_for_load_state("networkidle")


@pytest.mark.parametrize("data_dir", ["half_done", "rendered_data_dir"])
def test_no_page_asks_for_a_file_that_is_not_there(data_dir, request):
    """The grid, the single view (its figures, value-weighted) and the heads page (a head's panel), and a search
    for words no prompt has: every request is answered, none with 404, and no page shows an error."""
    data = request.getfixturevalue(data_dir)
    with browser_session(data) as s:
        for page in ["index.html", "index.html?figures=raw,no_bos", "single.html", "single.html?figure=no_bos",
                     "single.html?vw=raw", "heads.html", "heads.html?panel=L1H0"]:
            visit(s, page)
        visit(s, "index.html")
        s.page.fill("#search", "qqqzzz xyzzy")
        s.page.wait_for_function("document.querySelector('#prompt-count').textContent.includes(' 0 of ')")
        s.page.wait_for_load_state("networkidle")
        assert len(s.requests) > 20
        assert not s.missing, s.missing
        assert not s.errors, s.errors
