"""build_index.py: the indexes the site reads, the copied site, merging shards, user errors."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import lens
from build_index import SITE_DIR, build_index
from fake_data import TEXTS, make_data

ROOT = Path(__file__).resolve().parent.parent


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_indexes_match_what_is_on_disk(fake_data_dir):
    build_index(fake_data_dir)
    models = read_lines(fake_data_dir / "models.jsonl")
    cfg = json.loads((fake_data_dir / "fake-model" / "model_cfg.json").read_text())
    assert models == [{**cfg, "model_dir": "fake-model", "n_prompts": len(TEXTS)}]

    prompts = read_lines(fake_data_dir / "fake-model" / "prompts.jsonl")
    assert [p["hash"] for p in prompts] == sorted(lens.prompt_hash(t) for t in TEXTS)
    for p in prompts:  # each line is that prompt's prompt.json, unchanged
        stored = lens.prompt_dir(fake_data_dir, "fake-model", p["hash"]) / "prompt.json"
        assert p == json.loads(stored.read_text())

    figures, _ = lens.load_figures()
    assert read_lines(fake_data_dir / "figures.jsonl") == json.loads(json.dumps(lens.figure_records(figures)))
    assert {"raw", "bos"} <= {r["name"] for r in read_lines(fake_data_dir / "figures.jsonl")}


def test_copies_the_site(fake_data_dir):
    build_index(fake_data_dir)
    for name in ["index.html", "grid.js", "common.js", "style.css"]:
        assert (fake_data_dir / name).read_bytes() == (SITE_DIR / name).read_bytes()


def test_unfinished_prompts_are_left_out(fake_data_dir):
    """prompt.json is written last: a prompt dir without it is still being computed."""
    unfinished = fake_data_dir / "fake-model" / "prompts" / ("0" * 16)
    unfinished.mkdir()
    (unfinished / "patterns.bin").write_bytes(b"half")
    build_index(fake_data_dir)
    assert len(read_lines(fake_data_dir / "fake-model" / "prompts.jsonl")) == len(TEXTS)


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
    hashes = [p["hash"] for p in read_lines(merged / "fake-model" / "prompts.jsonl")]
    assert hashes == sorted(lens.prompt_hash(t) for t in TEXTS)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "build_index.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli(fake_data_dir):
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 0, proc.stderr
    assert "1 model(s), 4 prompt(s)" in proc.stdout
    assert (fake_data_dir / "index.html").is_file()


def test_cli_missing_data_dir(tmp_path):
    proc = run_cli("--save-path", str(tmp_path / "nope"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: data dir {tmp_path / 'nope'} does not exist (compute_activations.py writes it)"


def test_cli_data_dir_without_models(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("--save-path", str(tmp_path / "empty"))
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error:") and "no models" in proc.stderr
    assert list((tmp_path / "empty").iterdir()) == []


def test_cli_corrupt_prompt_json_names_the_file(fake_data_dir):
    bad = next(fake_data_dir.glob("fake-model/prompts/*/prompt.json"))
    bad.write_text('{"text": "cut off')
    proc = run_cli("--save-path", str(fake_data_dir))
    assert proc.returncode == 1
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_imports_neither_torch_nor_transformer_lens():
    code = "import sys, build_index; assert not {'torch', 'transformer_lens'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
