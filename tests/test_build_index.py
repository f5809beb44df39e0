"""build_index.py: the indexes the site reads, the copied site, merging shards, which figures it indexes, user
errors."""
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_data import TEXTS, index_rows, make_data
from PIL import Image

from attention_lens import datadir, lens
from attention_lens.build_index import build_index, figure_records

ROOT = Path(__file__).resolve().parent.parent


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_indexes_match_what_is_on_disk(fake_data_dir):
    build_index(fake_data_dir)
    models = read_lines(fake_data_dir / "models.jsonl")
    cfg = json.loads((fake_data_dir / "fake-model" / "model_cfg.json").read_text())
    assert models == [{**cfg, "model_dir": "fake-model", "n_prompts": len(TEXTS)}]

    prompts = index_rows(fake_data_dir, "fake-model")
    assert [p["hash"] for p in prompts] == sorted(lens.prompt_hash(t) for t in TEXTS)
    for p in prompts:  # each row is that prompt's prompt.json without its token lists, and its dir's other files
        pdir = datadir.prompt_dir(fake_data_dir, "fake-model", p["hash"])
        stored = json.loads((pdir / "prompt.json").read_text())
        others = sorted(f.name for f in pdir.iterdir() if f.name not in ("prompt.json", "patterns.bin"))
        assert p == {**{k: v for k, v in stored.items() if k not in ("tokens", "token_ids")},
                     "truncated": False, "stored": True, "files": others}

    figures, _ = lens.load_figures()
    assert read_lines(fake_data_dir / "figures.jsonl") == json.loads(json.dumps(figure_records(figures)))
    assert {"raw", "bos"} <= {r["name"] for r in read_lines(fake_data_dir / "figures.jsonl")}


def test_copies_the_site_as_the_repo_holds_it(fake_data_dir):
    tracked = subprocess.run(["git", "ls-files", "site"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    build_index(fake_data_dir)
    assert {"site/index.html", "site/single.html", "site/heads.html", "site/data.js"} <= set(tracked)
    for name in tracked:  # every file of site/ the repo holds, byte for byte, at the data dir's top
        assert (fake_data_dir / Path(name).relative_to("site")).read_bytes() == (ROOT / name).read_bytes(), name


def test_the_legend_colours_are_the_colours_of_the_images(fake_data_dir):
    """colormaps.json (what the site's legends draw) against pixels pillow decodes from rendered images: a matrix
    holding k / 255 at pixel k is drawn in the legend's colour k, for every colormap and its reverse."""
    build_index(fake_data_dir)
    colormaps = json.loads(datadir.colormaps_path(fake_data_dir).read_text())
    assert set(colormaps) == set(lens.COLORMAPS)
    ramp = (np.arange(256, dtype=np.float32) / 255).reshape(16, 16)
    for name, legend in colormaps.items():
        pixels = np.array(Image.open(io.BytesIO(lens.matrix_as_png(ramp, cmap=name))).convert("RGB")).reshape(256, 3)
        assert ["#" + bytes(p).hex() for p in pixels] == legend, name
        if name.endswith("_r"):
            assert legend == colormaps[name[:-2]][::-1]
    # matplotlib's viridis and magma begin and end so, and the ColorBrewer ramps run from white or to black
    assert (colormaps["viridis"][0], colormaps["viridis"][-1]) == ("#440154", "#fde725")
    assert (colormaps["magma"][0], colormaps["magma"][-1]) == ("#000004", "#fcfdbf")
    assert (colormaps["Greys"][0], colormaps["Greys"][-1], colormaps["Blues"][0]) == ("#ffffff", "#000000", "#f7fbff")


def test_unfinished_prompts_are_left_out(fake_data_dir):
    """prompt.json is written last: a prompt dir without it is still being computed."""
    unfinished = fake_data_dir / "fake-model" / "prompts" / ("0" * 16)
    unfinished.mkdir()
    (unfinished / "patterns.bin").write_bytes(b"half")
    build_index(fake_data_dir)
    assert len(index_rows(fake_data_dir, "fake-model")) == len(TEXTS)


def test_idempotent(fake_data_dir):
    build_index(fake_data_dir)
    files = sorted(p for p in fake_data_dir.rglob("*") if p.is_file())
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    build_index(fake_data_dir)
    assert sorted(p for p in fake_data_dir.rglob("*") if p.is_file()) == files
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before


def test_merges_shards_and_models(tmp_path):
    """Two machines each computed half the prompts (and one a second model); copied together, all are indexed."""
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    make_data(a, texts=TEXTS[:2])
    build_index(a)
    make_data(b, texts=TEXTS[2:], seed=1)
    make_data(b, model="other-model", n_layers=1, n_heads=2, texts=TEXTS[:1])
    build_index(b)
    shutil.copytree(a, merged)
    shutil.copytree(b, merged, dirs_exist_ok=True)
    build_index(merged)
    models = read_lines(merged / "models.jsonl")
    assert [(m["model_dir"], m["n_prompts"]) for m in models] == [("fake-model", 4), ("other-model", 1)]
    hashes = [p["hash"] for p in index_rows(merged, "fake-model")]
    assert sorted(hashes) == sorted(lens.prompt_hash(t) for t in TEXTS)  # each once


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "build_index.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def run_script(script: str, *args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run one of the scripts as a user would; it must succeed."""
    r = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_cli(fake_data_dir):
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 0, proc.stderr
    assert "1 model(s), 4 prompt(s)" in proc.stdout
    assert (fake_data_dir / "index.html").is_file()


def test_cli_missing_data_dir(tmp_path):
    proc = run_cli("--save-path", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: {tmp_path / 'nope'}: no data dir; run compute_activations.py first "
                                   "(or pass --save-path)")


def test_cli_save_path_naming_a_file(tmp_path):
    (tmp_path / "file").write_text("mine")
    proc = run_cli("--save-path", str(tmp_path / "file"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: --save-path {tmp_path / 'file'}: a file, not a data dir"
    assert (tmp_path / "file").read_text() == "mine"


def test_cli_data_dir_without_models(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("--save-path", str(tmp_path / "empty"))
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and "no models" in proc.stderr
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("content, message", [
    (b'{"text": "cut off', "not valid JSON"),
    (b'{"text": "caf\xe9"}', "1: not UTF-8 text"),
    (b'["a list"]', "expected a JSON object"),
])
def test_cli_unreadable_prompt_is_a_warning_and_the_rest_are_indexed(fake_data_dir, content, message):
    bad = sorted(fake_data_dir.rglob("prompt.json"))[1]
    bad.write_bytes(content)
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"build_index.py: warning: {bad}") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "3 prompt(s)" in proc.stdout and "1 unreadable prompt(s) left out" in proc.stdout
    hashes = [p["hash"] for p in index_rows(fake_data_dir, "fake-model")]
    assert hashes == sorted(lens.prompt_hash(t) for t in TEXTS if lens.prompt_hash(t) != bad.parent.name)


def test_cli_corrupt_model_cfg_is_one_error_line(fake_data_dir):
    cfg = datadir.model_cfg_path(fake_data_dir, "fake-model")
    cfg.write_text("")
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {cfg}: not valid JSON (Expecting value); delete it and re-run its script"
    assert not datadir.models_path(fake_data_dir).exists()


def test_cli_model_cfg_without_its_shape_is_one_error_line(fake_data_dir):
    cfg = datadir.model_cfg_path(fake_data_dir, "fake-model")
    cfg.write_text("{}")
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: {cfg}: no n_layers and n_heads")
    assert proc.stderr.count("\n") == 1 and not datadir.models_path(fake_data_dir).exists()


def test_a_damaged_index_is_rebuilt_by_the_next_run(fake_data_dir):
    build_index(fake_data_dir)
    want = index_rows(fake_data_dir, "fake-model")
    meta = datadir.prompt_index_path(fake_data_dir, "fake-model")
    meta.write_text('{"count": ')  # a disk that filled up under another tool, a hand edit
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(meta.read_text())["count"] == len(want) and index_rows(fake_data_dir, "fake-model") == want
    chunk = datadir.index_rows_path(fake_data_dir, "fake-model", 0)
    chunk.write_text("garbage\n")  # a chunk cut short, read by the next rerun (it keeps the rows' meta)
    make_data(fake_data_dir, texts=["one more prompt after the damage"])
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 0 and "indexing fake-model anew" in proc.stderr, proc.stderr
    fresh = fake_data_dir.parent / "fresh"
    shutil.copytree(fake_data_dir, fresh, ignore=shutil.ignore_patterns("index"))
    build_index(fresh)
    assert index_rows(fake_data_dir, "fake-model") == index_rows(fresh, "fake-model")
    assert len(index_rows(fresh, "fake-model")) == len(want) + 1


def test_cli_usage_mistakes_are_one_line(fake_data_dir):
    proc = run_cli("--save-path", str(fake_data_dir), "--no-such-flag")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: unrecognized arguments: --no-such-flag (see build_index.py --help)"


def test_imports_neither_torch_nor_transformer_lens():
    code = "import sys, build_index; assert not {'torch', 'transformer_lens'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


MINE = '''
from attention_lens import figure, statistic

@figure(cmap="Greys")
def mine(attn):
    "my own figure"
    return attn

@statistic
def my_sink(attn):
    "attention to the first token"
    return float(attn[:, 0].mean())
'''


def figure_names(save_path: Path) -> list[str]:
    return [r["name"] for r in read_lines(save_path / "figures.jsonl")]


def test_custom_figures_stay_indexed_after_a_later_compute_run(tiny_checkpoint, tmp_path):
    """render_figures.py --figures-dir mine, then compute_activations.py on more prompts: the grid still lists mine."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.py").write_text(MINE)
    for name, texts in [("first.jsonl", TEXTS[:2]), ("more.jsonl", TEXTS[2:3])]:
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = tmp_path / "data"
    run_script("compute_activations.py", tiny_checkpoint, tmp_path / "first.jsonl", "--no-probe", "--save-path", data)
    run_script("render_figures.py", "--save-path", data, "--figures-dir", tmp_path / "mine", "--jobs", "1")
    assert figure_names(data) == ["mine", "my_sink"]
    run_script("compute_activations.py", tiny_checkpoint, tmp_path / "more.jsonl", "--no-probe", "--save-path", data)
    assert figure_names(data) == ["mine", "my_sink"]
    assert [m["n_prompts"] for m in read_lines(data / "models.jsonl")] == [3]


def test_figures_dir_flag_and_a_vanished_figures_dir(fake_data_dir, tmp_path):
    """--figures-dir chooses what to index; a recorded figures dir that is gone falls back to figures/, saying so."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.py").write_text(MINE)
    build_index(fake_data_dir, tmp_path / "mine")
    assert figure_names(fake_data_dir) == ["mine", "my_sink"]
    lens.write_json(datadir.render_record_path(fake_data_dir), {"figures_dir": str(tmp_path / "gone")})
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 0 and f"{tmp_path / 'gone'} (rendered with" in proc.stderr
    assert figure_names(fake_data_dir) == list(lens.load_figures()[0])


@pytest.fixture
def read_only(rendered_data_dir, tmp_path):
    """rendered_data_dir seen through a read-only bind mount (skipped where this user cannot mount)."""
    view = tmp_path / "read-only"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(rendered_data_dir), str(view)], capture_output=True)
    if mounted.returncode or subprocess.run(["mount", "-o", "remount,bind,ro", str(view)],
                                            capture_output=True).returncode:
        subprocess.run(["umount", str(view)], capture_output=True)
        pytest.skip("no bind mounts here")
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_a_read_only_data_dir_indexes_when_nothing_changed_and_is_one_error_line_otherwise(read_only):
    before = sorted((p.relative_to(read_only), p.stat().st_mtime_ns) for p in read_only.rglob("*") if p.is_file())
    proc = run_cli("--save-path", str(read_only))
    assert proc.returncode == 0, proc.stderr
    r = subprocess.run([sys.executable, str(ROOT / "render_figures.py"), "--save-path", str(read_only), "--force",
                        "--figures", "raw", "--jobs", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: ") and "Read-only file system" in r.stderr
    after = sorted((p.relative_to(read_only), p.stat().st_mtime_ns) for p in read_only.rglob("*") if p.is_file())
    assert after == before
