"""render_figures.py and the lens helpers it brings: colormaps, matrix_as_svg, figure plug-ins."""
import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_data import read_stats
from PIL import Image

from attention_lens import build_index, datadir, lens, storage

ROOT = Path(__file__).resolve().parent.parent


def run_render(*args, ok: bool = True) -> subprocess.CompletedProcess:
    """Run render_figures.py as a user would; assert on its exit status."""
    r = subprocess.run([sys.executable, str(ROOT / "render_figures.py"), *map(str, args)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r


def svg_png(svg: str) -> tuple[tuple[int, int], np.ndarray]:
    """(width, height) of an <svg> and its embedded PNG decoded to RGB."""
    width, height = (int(re.search(rf'<svg[^>]* {a}="(\d+)"', svg).group(1)) for a in ("width", "height"))
    png = base64.b64decode(re.search(r'href="data:image/png;base64,([^"]+)"', svg).group(1))
    return (width, height), np.array(Image.open(io.BytesIO(png)).convert("RGB"))


def pack_png(pdir: Path, output: str, layer: int, head: int) -> tuple[tuple[int, int], np.ndarray]:
    """(width, height) of one head's image in a prompt dir's pack and its pixels, decoded by pillow to RGB."""
    image = Image.open(io.BytesIO(storage.read_pack_image(pdir / f"{output}.pack", layer, head)))
    assert image.format == "PNG"
    return image.size, np.array(image.convert("RGB"))


def pack_heads(pdir: Path, output: str, n_layers: int = 2, n_heads: int = 3) -> set[tuple[int, int]]:
    """The heads with an image in a prompt dir's pack."""
    return {(l, h) for l in range(n_layers) for h in range(n_heads)
            if storage.read_pack_image(pdir / f"{output}.pack", l, h) is not None}


def errors(pdir: Path, output: str) -> dict[str, str]:
    path = pdir / f"{output}.errors.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_figure_file(figures_dir: Path, name: str, code: str) -> None:
    figures_dir.mkdir(exist_ok=True)
    (figures_dir / name).write_text(code)


# ---- colormaps and images ----

@pytest.mark.parametrize("cmap, at, hex_colour", [
    ("viridis", 0.0, "440154"), ("viridis", 0.5, "21918c"), ("viridis", 1.0, "fde725"),
    ("magma", 0.0, "000004"), ("magma", 0.5, "b73779"), ("magma", 1.0, "fcfdbf"),
    ("Blues", 0.0, "f7fbff"), ("Blues", 1.0, "08306b"),
    ("Greys", 0.0, "ffffff"), ("Greys", 1.0, "000000"),
    ("RdBu", 0.0, "67001f"), ("RdBu", 0.5, "f7f7f7"), ("RdBu", 1.0, "053061"),
    ("viridis_r", 0.0, "fde725"),
])
def test_colormap_anchor_colours(cmap, at, hex_colour):
    table = lens.colormap_table(cmap)
    assert table.shape == (256, 3) and table.dtype == np.uint8
    got = table[int(round(at * 255))].astype(int)
    assert np.abs(got - np.frombuffer(bytes.fromhex(hex_colour), np.uint8)).max() <= 2, (cmap, at, got)


def test_colormaps_are_smooth_and_unknown_names_fail():
    for name in lens.COLORMAPS:
        steps = np.abs(np.diff(lens.colormap_table(name).astype(int), axis=0)).max()
        assert steps <= 8, name
    with pytest.raises(lens.UserError, match="unknown colormap 'jet'"):
        lens.colormap_table("jet")


def test_matrix_as_svg_round_trip():
    rng = np.random.default_rng(0)
    m = np.tril(rng.random((13, 9))).astype(np.float32)
    svg = lens.matrix_as_svg(m, cmap="magma")
    (width, height), rgb = svg_png(svg)
    assert (width, height) == (9, 13) and rgb.shape == (13, 9, 3)
    assert "pixelated" in svg
    expected = lens.colormap_table("magma")[np.round(m * 255).astype(int)]
    np.testing.assert_array_equal(rgb, expected)


def test_matrix_value_ranges():
    table = lens.colormap_table("viridis")
    _, rgb = svg_png(lens.matrix_as_svg(np.array([[0.0, 1.0]])))
    np.testing.assert_array_equal(rgb[0], table[[0, 255]])
    _, rgb = svg_png(lens.matrix_as_svg(np.array([[2.0, 3.0, 4.0]]), normalize=True))
    np.testing.assert_array_equal(rgb[0], table[[0, 128, 255]])
    _, rgb = svg_png(lens.matrix_as_svg(np.array([[2.0, 4.0]]), normalize=True, normalize_min=0.0))
    np.testing.assert_array_equal(rgb[0], table[[128, 255]])
    rdbu = lens.colormap_table("RdBu")
    _, rgb = svg_png(lens.matrix_as_svg(np.array([[-0.5, 0.0, 0.5]]), cmap="RdBu", diverging=True, normalize=True))
    np.testing.assert_array_equal(rgb[0], rdbu[[0, 128, 255]])
    with pytest.raises(ValueError, match="use normalize=True"):
        lens.matrix_as_svg(np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match="NaN"):
        lens.matrix_as_svg(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        lens.matrix_as_svg(np.zeros(4))


def test_palette_png_is_small():
    """A causal 141-token pattern as palette PNG: far below RGB PNG's ~7 KiB."""
    rng = np.random.default_rng(1)
    logits = np.where(np.tri(141, dtype=bool), rng.normal(0, 2, (141, 141)), -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    png = lens.matrix_as_png(p / p.sum(-1, keepdims=True))
    buf = io.BytesIO()
    Image.fromarray(lens.colormap_table("viridis")[lens.quantize(p / p.sum(-1, keepdims=True))]).save(buf, "PNG")
    assert len(png) < 0.7 * len(buf.getvalue())


# ---- plug-in discovery ----

GOOD = '''
from attention_lens import figure, statistic

@figure(cmap="Blues", normalize=True)
def doubled(attn):
    "twice the pattern"
    return attn * 2

@figure(outputs=["upper", "lower"])
def halves(attn):
    "the two triangles"
    import numpy as np
    return {"upper": np.triu(attn), "lower": np.tril(attn)}

@statistic
def first_key(attn):
    "attention to key 0"
    return float(attn[:, 0].mean())
'''


def test_load_figures_reports_broken_files_and_keeps_the_rest(tmp_path):
    d = tmp_path / "figs"
    write_figure_file(d, "good.py", GOOD)
    write_figure_file(d, "syntax.py", "def broken(:\n")
    write_figure_file(d, "imports.py", "import no_such_module_xyz\n")
    figures, errors = lens.load_figures(d)
    assert list(figures) == ["doubled", "halves", "first_key"]
    assert len(errors) == 2
    assert any("syntax.py" in e and "SyntaxError" in e for e in errors)
    assert any("imports.py" in e and "no_such_module_xyz" in e for e in errors)
    records = {r["name"]: r for r in build_index.figure_records(figures)}
    assert records["doubled"] == {
        "name": "doubled", "kind": "figure", "outputs": ["doubled"], "doc": "twice the pattern",
        "source": "figs/good.py", "code": records["doubled"]["code"],
        "options": {"cmap": "Blues", "normalize": True, "diverging": False, "normalize_min": None,
                    "inputs": []}}
    assert records["doubled"]["code"].startswith('@figure(cmap="Blues", normalize=True)\ndef doubled(attn):')
    assert records["halves"]["kind"] == "multi" and records["halves"]["outputs"] == ["halves.upper", "halves.lower"]
    assert records["first_key"]["kind"] == "statistic" and records["first_key"]["outputs"] == []


def test_duplicate_names_are_an_error(tmp_path):
    d = tmp_path / "figs"
    write_figure_file(d, "a.py", "from attention_lens import figure\n@figure\ndef same(attn):\n    return attn\n")
    write_figure_file(d, "b.py", "from attention_lens import statistic\n@statistic\ndef same(attn):\n    return 0.0\n")
    with pytest.raises(lens.UserError, match=r"'same' is defined twice: in figs/a.py and in figs/b.py"):
        lens.load_figures(d)


def test_bad_decorator_options_are_reported_as_that_files_error(tmp_path):
    d = tmp_path / "figs"
    write_figure_file(d, "a.py", "from attention_lens import figure\n@figure(cmap='nope')\n"
                                 "def f(attn):\n    return attn\n")
    write_figure_file(d, "b.py", "from attention_lens import figure\n@figure(colour='red')\n"
                                 "def g(attn):\n    return attn\n")
    figures, errors = lens.load_figures(d)
    assert figures == {}
    assert "a.py" in errors[0] and "unknown colormap 'nope'" in errors[0]
    assert "b.py" in errors[1] and "unexpected keyword argument 'colour'" in errors[1]


def test_builtin_figures_load_cleanly():
    figures, errors = lens.load_figures()
    assert errors == []
    assert {"raw", "no_bos", "log_scale", "vs_uniform", "bos", "previous_token_head", "duplicate_token_head",
            "induction_head"} <= set(figures)
    assert all(r["source"].startswith("figures/") and r["doc"] for r in build_index.figure_records(figures))


# ---- the script ----

def prompt_dirs(data: Path) -> list[Path]:
    return sorted((data / "fake-model" / "prompts").iterdir())


def test_render_writes_every_head_and_the_indexes(fake_data_dir):
    r = run_render("--save-path", fake_data_dir, "--jobs", "2")
    figures = lens.load_figures()[0].values()  # whatever figures/ holds today
    n_outputs = sum(len(f.outputs) for f in figures if "value_norms" not in f.options["inputs"])
    assert f"{4 * 2 * 3 * n_outputs} images" in r.stdout and "0 failed" in r.stdout  # prompts x layers x heads
    n_needing_norms = sum(len(f.outputs) for f in figures if "value_norms" in f.options["inputs"])
    if n_needing_norms:  # synthetic patterns come without value norms: those figures are skipped, and said so
        assert f"{4 * 2 * 3 * n_needing_norms} not made: their prompts have no value norms" in r.stdout
    for pdir in prompt_dirs(fake_data_dir):
        patterns = storage.Patterns(pdir / datadir.PATTERN_FILE)
        for layer, head in patterns.heads:
            attn = patterns.head(layer, head)
            (w, h), rgb = pack_png(pdir, "raw", layer, head)
            assert (w, h) == attn.shape[::-1]
            np.testing.assert_array_equal(rgb, lens.colormap_table("viridis")[lens.quantize(attn)])
        assert pack_heads(pdir, "vs_uniform.excess") == pack_heads(pdir, "vs_uniform.log_ratio") == set(patterns.heads)
        assert not [p for p in pdir.rglob("*") if p.is_dir()]  # no per-head folders
        assert len(list(pdir.iterdir())) <= 16  # every figure, patterns and statistics, whatever the head count
        for pack in pdir.glob("*.pack"):
            pngs = [storage.read_pack_image(pack, l, h) or b"" for l in range(2) for h in range(3)]
            assert pack.stat().st_size <= 1.1 * sum(map(len, pngs))  # a pack is its PNGs plus a small index
    colormaps = json.loads((fake_data_dir / "colormaps.json").read_text())
    assert colormaps["viridis"][0] == "#440154" and len(colormaps["RdBu"]) == 256
    names = [json.loads(line)["name"] for line in (fake_data_dir / "figures.jsonl").read_text().splitlines()]
    assert "raw" in names and "bos" in names


def test_one_head_exports_as_a_standalone_svg(fake_data_dir, tmp_path):
    run_render("--save-path", fake_data_dir, "--figures", "raw", "--jobs", "1")
    pdir = prompt_dirs(fake_data_dir)[1]
    spec = f"fake-model/{pdir.name}/L1H2/raw"
    run_render("--save-path", fake_data_dir, "--export-svg", spec, "-o", tmp_path / "head.svg")
    svg = (tmp_path / "head.svg").read_text()
    attn = storage.Patterns(pdir / datadir.PATTERN_FILE).head(1, 2)
    size, rgb = svg_png(svg)  # pillow decodes the PNG inside
    assert size == attn.shape[::-1] and svg.startswith("<svg")
    np.testing.assert_array_equal(rgb, lens.colormap_table("viridis")[lens.quantize(attn)])
    assert run_render("--save-path", fake_data_dir, "--export-svg", spec).stdout == svg  # no -o: to stdout
    for bad, message in [(f"fake-model/{pdir.name}/L9H0/raw", "no head L9H0 (the pack has 2 x 3)"),
                         (f"fake-model/{pdir.name}/L1H2/nope", "nope.pack: no such pack; render it first"),
                         ("fake-model/L1H2", "expected MODEL/HASH/L<layer>H<head>/OUTPUT")]:
        r = run_render("--save-path", fake_data_dir, "--export-svg", bad, "-o", tmp_path / "bad.svg", ok=False)
        assert r.stderr.strip().startswith("error:") and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.svg").exists()
    r = run_render("--save-path", fake_data_dir, "--export-svg", spec, "-o", tmp_path, ok=False)  # a dir
    assert r.stderr == f"error: -o {tmp_path}: a directory; name the file to write, e.g. {tmp_path / 'head.svg'}\n"
    (tmp_path / "file").write_text("")
    r = run_render("--save-path", fake_data_dir, "--export-svg", spec, "-o", tmp_path / "file" / "x.svg", ok=False)
    assert r.stderr.startswith(f"error: -o {tmp_path / 'file' / 'x.svg'}: cannot write it (")  # under a file


def test_statistics_tables_hold_each_prompts_values(fake_data_dir, tmp_path):
    """read_stats gives what render_figures.py computed: one value per prompt and head, and their mean."""
    write_figure_file(tmp_path / "figs", "good.py", GOOD)
    run_render("--save-path", fake_data_dir, "--figures-dir", tmp_path / "figs", "--figures", "first_key",
               "--jobs", "2")
    index, tables = read_stats(fake_data_dir, "fake-model")
    hashes = lens.finished_prompts(fake_data_dir, "fake-model")  # the tables' rows
    assert index["n_prompts"] == len(hashes) and list(tables) == ["first_key"]
    assert index["stats"]["first_key"]["doc"] == "attention to key 0"
    for i, phash in enumerate(hashes):
        patterns = storage.load_patterns(fake_data_dir, "fake-model", phash)
        for layer, head in patterns.heads:
            expected = patterns.head(layer, head)[:, 0].mean()
            assert tables["first_key"][i, layer, head] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(index["stats"]["first_key"]["mean"], tables["first_key"].mean(0), atol=1e-6)


def test_skip_existing_unless_force(fake_data_dir):
    run_render("--save-path", fake_data_dir, "--figures", "raw", "--jobs", "1")
    pack = prompt_dirs(fake_data_dir)[0] / "raw.pack"
    pack.write_text("kept")
    r = run_render("--save-path", fake_data_dir, "--figures", "raw", "--jobs", "1")
    assert "0 images" in r.stdout and "24 already there" in r.stdout and pack.read_text() == "kept"
    pack.unlink()
    r = run_render("--save-path", fake_data_dir, "--figures", "raw", "--jobs", "1")
    assert "6 images" in r.stdout and "18 already there" in r.stdout and pack_heads(pack.parent, "raw") == {
        (l, h) for l in range(2) for h in range(3)}
    r = run_render("--save-path", fake_data_dir, "--figures", "raw", "--force", "--jobs", "2")
    assert "24 images" in r.stdout


def test_a_killed_run_resumes(fake_data_dir):
    """A run killed while writing a pack leaves its temp file, never a pack: the next run renders that output
    and clears the temp file; the packs it finished are kept."""
    first, second, *_ = prompt_dirs(fake_data_dir)
    run_render("--save-path", fake_data_dir, "--figures", "raw", "--jobs", "1")
    (second / "raw.pack").unlink()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name in (f".raw.pack.tmp.{lens.HOST}.{gone.stdout.strip()}.0a1b", f".raw.pack.tmp{gone.stdout.strip()}"):
        (second / name).write_bytes(storage.PACK_MAGIC + b"half a pack")  # this scheme's and the former one's
    kept = (first / "raw.pack").stat().st_mtime_ns
    r = run_render("--save-path", fake_data_dir, "--figures", "raw", "--jobs", "1")
    assert "6 images" in r.stdout and "18 already there" in r.stdout
    assert (first / "raw.pack").stat().st_mtime_ns == kept
    assert pack_heads(second, "raw") == {(l, h) for l in range(2) for h in range(3)}
    assert not list(fake_data_dir.rglob(".*.tmp*"))


def test_figure_selection_by_glob_and_n_samples(fake_data_dir, tmp_path):
    write_figure_file(tmp_path / "figs", "good.py", GOOD)
    r = run_render("--save-path", fake_data_dir, "--figures-dir", tmp_path / "figs", "--figures", "h*,doubled",
                   "--n-samples", "2", "--jobs", "1")
    assert f"{2 * 6 * 3} images" in r.stdout  # prompts x heads x (doubled, halves.upper, halves.lower)
    done = [p for p in prompt_dirs(fake_data_dir) if list(p.glob("*.pack"))]
    assert len(done) == 2
    files = {f.name for f in done[0].glob("*.pack")}
    assert files == {"doubled.pack", "halves.upper.pack", "halves.lower.pack"}
    assert pack_heads(done[0], "halves.lower") == {(l, h) for l in range(2) for h in range(3)}


def test_shards_split_the_prompts(fake_data_dir):
    for k in (1, 2):
        run_render("--save-path", fake_data_dir, "--figures", "raw,bos", "--shard", f"{k}/2", "--jobs", "1")
        hashes = [p.name for p in prompt_dirs(fake_data_dir)]
        done = {h for h in hashes if datadir.figure_pack_path(fake_data_dir, "fake-model", h, "raw").exists()}
        assert done == {h for h in hashes if int(h, 16) % 2 < k}  # shard 1/2 holds the even hashes
    stats = json.loads((fake_data_dir / "fake-model" / "stats.json").read_text())
    assert all(v is not None for row in stats["stats"]["bos"]["mean"] for v in row)
    r = run_render("--save-path", fake_data_dir, "--shard", "3/2", ok=False)
    assert "--shard 3/2" in r.stderr and "Traceback" not in r.stderr


FAILING = '''
import numpy as np
from attention_lens import figure

@figure
def fine(attn):
    "works"
    return attn

@figure
def boom(attn):
    "raises on sharp heads only"
    if attn[1:, :].max() > 0.9:
        raise RuntimeError("too sharp")
    return attn

@figure
def flat(attn):
    return attn.sum(-1)

@figure
def nan(attn):
    return attn * np.nan

@figure(outputs=["a", "b"])
def wrong_keys(attn):
    return {"a": attn}

@figure(cmap="Greys")
def plain_png(attn):
    return attn
'''


def test_failing_figures_write_error_files_and_the_run_goes_on(fake_data_dir, tmp_path):
    write_figure_file(tmp_path / "figs", "mixed.py", FAILING)
    write_figure_file(tmp_path / "figs", "broken.py", "def broken(:\n")
    r = run_render("--save-path", fake_data_dir, "--figures-dir", tmp_path / "figs", "--jobs", "2")
    assert "broken.py" in r.stderr and "SyntaxError" in r.stderr
    every = {(l, h) for l in range(2) for h in range(3)}
    n_sharp, retried = 0, 0
    for pdir in prompt_dirs(fake_data_dir):
        sharp = {tuple(map(int, key[1:].split("H"))) for key in errors(pdir, "boom")}
        assert pack_heads(pdir, "boom") == every - sharp  # an image or an error, never both
        n_sharp += len(sharp)
        retried += 6 if sharp else 0
        for key, error in errors(pdir, "boom").items():
            assert "too sharp" in error and f"{key} of prompt {pdir.name}" in error
        assert pack_heads(pdir, "fine") == every and not (pdir / "fine.errors.json").exists()
        for output, message in [("flat", "2-D"), ("nan", "NaN"), ("wrong_keys.a", "keys"), ("wrong_keys.b", "keys")]:
            assert pack_heads(pdir, output) == set() and len(errors(pdir, output)) == 6
            assert all(message in e for e in errors(pdir, output).values())
        assert pack_png(pdir, "plain_png", 1, 2)[0] == pack_png(pdir, "fine", 1, 2)[0]  # PNG, another colormap
    assert 0 < n_sharp < 24
    n_failed = n_sharp + 2 * 24 + 2 * 24  # boom, flat, nan, wrong_keys (2 outputs)
    assert f"{n_failed} failed" in r.stdout
    r = run_render("--save-path", fake_data_dir, "--figures-dir", tmp_path / "figs", "--figures", "fine,boom",
                   "--jobs", "1")
    assert f"{retried - n_sharp} images" in r.stdout and f"{48 - retried} already there" in r.stdout  # failed: retried
    indexed = [json.loads(line)["name"] for line in (fake_data_dir / "figures.jsonl").read_text().splitlines()]
    assert sorted(indexed) == ["boom", "fine", "flat", "nan", "plain_png", "wrong_keys"]


def test_bad_input_is_one_clear_error(tmp_path, fake_data_dir):
    (tmp_path / "file").write_text("mine")
    lens.write_json(datadir.model_cfg_path(fake_data_dir, "empty-model"), {"n_layers": 1, "n_heads": 1})
    for args, message in [
        (["--save-path", tmp_path / "nowhere"], "no data dir"),
        (["--save-path", tmp_path / "file"], f"--save-path {tmp_path / 'file'}: a file, not a data dir"),
        (["--n-samples", "0"], "argument --n-samples: expected a positive integer, got '0'"),
        (["--jobs", "0"], "argument --jobs: expected a positive integer, got '0'"),
        (["--jobs", "two"], "argument --jobs: expected a positive integer, got 'two'"),
        (["--figures", "rawx"], "unknown figure 'rawx'"),
        (["--model", "gpt2"], "no model 'gpt2'"),
        (["--model", "empty-model"], "model empty-model has no patterns yet"),
    ]:
        r = run_render("--save-path", fake_data_dir, *args, ok=False)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and message in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "file").read_text() == "mine"
    assert not list(fake_data_dir.rglob("*.pack")) and not datadir.models_path(fake_data_dir).exists()


def damage_patterns(path: Path) -> None:
    """A copy cut short, as an interrupted rsync leaves it."""
    path.write_bytes(path.read_bytes()[:100])


def damage_stream(path: Path) -> None:
    """One head's stream overwritten in place: the file's index is fine, that head is not."""
    start, size = storage.Patterns(path).chunks[4]
    data = bytearray(path.read_bytes())
    data[start:start + size] = bytes(size)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("file, damage, message", [
    ("patterns.bin", damage_patterns, "truncated or corrupt pattern file"),
    ("patterns.bin", damage_stream, "head L1H1 is corrupt"),
    ("prompt.json", lambda p: p.write_text('{"text": "cut'), "not valid JSON"),
    ("stats.json", lambda p: p.write_text("{"), "not valid JSON"),
    ("stats.json", lambda p: p.write_text('{"bos": [[1, 2]]}'), "bos is not a 2 x 3 table of numbers"),
])
def test_an_unreadable_prompt_is_a_warning_and_the_others_are_rendered(fake_data_dir, file, damage, message):
    first, bad, *rest = prompt_dirs(fake_data_dir)
    if file == "stats.json":
        run_render("--save-path", fake_data_dir, "--figures", "bos", "--jobs", "1")
    damage(bad / file)
    damaged = (bad / file).read_bytes()
    r = run_render("--save-path", fake_data_dir, "--figures", "raw,bos", "--force", "--jobs", "2")
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings[0].startswith(f"warning: prompt {bad.name} of fake-model not rendered: {bad / file}")
    assert message in warnings[0] and "Traceback" not in r.stderr
    assert "1 prompt(s) unreadable (see the warnings)" in r.stdout
    for pdir in [first, *rest]:
        assert pack_heads(pdir, "raw") == {(l, h) for l in range(2) for h in range(3)}
        assert "bos" in json.loads((pdir / "stats.json").read_text())
    assert (bad / file).read_bytes() == damaged
    if file != "stats.json":
        assert not (bad / "stats.json").exists()  # no statistics from half a prompt
    assert not list(bad.glob("*.pack")) and not list(bad.glob(".*"))  # no pack, not even half of one
    assert datadir.models_path(fake_data_dir).is_file()  # the indexes are rebuilt all the same


def test_nothing_readable_is_an_error(fake_data_dir):
    for pdir in prompt_dirs(fake_data_dir):
        damage_patterns(pdir / datadir.PATTERN_FILE)
    r = run_render("--save-path", fake_data_dir, "--jobs", "1", ok=False)
    assert r.stderr.count("warning: prompt") == 4
    assert r.stderr.strip().splitlines()[-1] == "error: none of the 4 prompt(s) could be read (see the warnings)"


def test_a_model_given_as_a_relative_path_is_found_from_any_directory(tiny_checkpoint, tmp_path):
    """compute_activations.py ./ckpt in one directory, render_figures.py --model ./ckpt in another."""
    import shutil
    shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    (tmp_path / "p.jsonl").write_text(json.dumps({"text": "The cat sat on the mat."}) + "\n")
    (tmp_path / "elsewhere").mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "compute_activations.py"), "./ckpt", "p.jsonl",
                        "--no-probe", "--save-path", "data"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert lens.model_dirs(tmp_path / "data") == ["ckpt"]
    for cwd in (tmp_path, tmp_path / "elsewhere"):
        r = subprocess.run([sys.executable, str(ROOT / "render_figures.py"), "--model", "./ckpt", "--figures", "raw",
                            "--save-path", tmp_path / "data", "--jobs", "1"], capture_output=True, text=True, cwd=cwd,
                           timeout=120)
        assert r.returncode == 0, r.stderr


def test_model_dir_names_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    for cwd in (tmp_path, tmp_path / "ckpt"):
        monkeypatch.chdir(cwd)
        assert [lens.model_dir_name(m) for m in ["./ckpt", "./ckpt/", "../x/ckpt", str(tmp_path / "ckpt"),
                                                 "gpt2", "EleutherAI/pythia-70m", "demo@step100"]] == \
            ["ckpt", "ckpt", "ckpt", "ckpt", "gpt2", "EleutherAI__pythia-70m", "demo_step100"]


UNRULY = '''
import sys
import time

import numpy as np

from attention_lens import figure, statistic

@figure
def a_exits(attn):
    sys.exit(3)

@figure
def b_edits(attn):
    attn[:] = 0
    return attn

@figure(cmap="Greys")
def c_after(attn):
    return attn

@figure
def d_sleeps(attn):
    time.sleep(30)
    return attn

@statistic
def e_exits(attn):
    raise SystemExit("no")
'''


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_plugins_that_exit_edit_their_input_or_hang_fail_on_their_heads_only(fake_data_dir, tmp_path, jobs):
    figs = tmp_path / "figs"
    write_figure_file(figs, "unruly.py", UNRULY)
    write_figure_file(figs, "exits_at_import.py", "import sys\nsys.exit(2)\n")
    write_figure_file(figs, "escapes.py", "from attention_lens import figure\ndef f(attn):\n    return attn\n"
                                          "f.__name__ = '../../../escaped'\nfigure(f)\n")
    r = run_render("--save-path", fake_data_dir, "--figures-dir", figs, "--jobs", jobs, "--time-limit", "0.2")
    assert "exits_at_import.py: SystemExit: 2" in r.stderr and "escapes.py" in r.stderr  # skipped, named
    assert "plug-in name '../../../escaped'" in r.stderr
    assert not list(tmp_path.rglob("escaped*")) and not list(fake_data_dir.parent.rglob("escaped*"))
    for pdir in sorted((fake_data_dir / "fake-model" / "prompts").iterdir()):
        every = pack_heads(pdir, "c_after") | set(errors(pdir, "c_after"))
        assert len(every) == 6 and not errors(pdir, "c_after")  # the figure after the one that edited its input
        patterns = storage.load_patterns(fake_data_dir, "fake-model", pdir.name)
        size, pixels = pack_png(pdir, "c_after", 1, 2)
        expect = np.array(Image.open(io.BytesIO(lens.matrix_as_png(patterns.head(1, 2), cmap="Greys"))).convert("RGB"))
        np.testing.assert_array_equal(pixels, expect)  # drawn from the pattern as stored, not zeros
        for name, message in [("a_exits", "called sys.exit(3)"), ("b_edits", "read-only"),
                              ("e_exits", "sys.exit('no')"), ("d_sleeps", "took more than 0.2 s (--time-limit)")]:
            failures = errors(pdir, name)
            assert len(failures) == 6 and all(message in e for e in failures.values()), (name, failures)
