"""Render every stored attention pattern through every figure in figures/, and compute head statistics.

    python render_figures.py
    python render_figures.py --model gpt2 --figures 'raw,entropy*' --n-samples 50 --force --jobs 8
    python render_figures.py --shard 3/8            # one of 8 array jobs, split by prompt hash

Writes <model>/prompts/<hash>/L<l>/H<h>/<figure>.svg per head (or <figure>.error.txt when the
figure failed on that head), each prompt's statistics to prompts/<hash>/stats.json, the per-model
tables <model>/stats.json + <model>/stats/<name>.f32, colormaps.json, and then rebuilds the indexes.
Existing images and statistics are kept unless --force.
"""
import argparse
import fnmatch
import gzip
import inspect
import json
import math
import os
import sys
import time
import traceback
from contextlib import nullcontext
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

import lens

_FIGURES: list[lens.Figure] = []  # the selected figures and statistics, per process (see init_worker)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--save-path", type=Path, default=lens.DEFAULT_SAVE_PATH, help="data dir (default: %(default)s)")
    p.add_argument("--model", action="append",
                   help="model to render (name as given to compute_activations.py, or its dir name); "
                   "repeatable; default: all")
    p.add_argument("--figures", default="*",
                   help="comma-separated figure/statistic names or globs, e.g. 'raw,vs_*' (default: all)")
    p.add_argument("--n-samples", type=int, help="render only the first N prompts of each model (in hash order)")
    p.add_argument("--force", action="store_true", help="redo images and statistics that already exist")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--shard", metavar="K/N",
                   help="render only the prompts in shard K of N (by hash, as compute_activations.py --shard)")
    p.add_argument("--figures-dir", type=Path, default=lens.FIGURES_DIR, help="where figure plug-ins live")
    return p.parse_args()


def select_figures(figures: dict[str, lens.Figure], patterns: str) -> list[lens.Figure]:
    """The figures whose name matches one of the comma-separated names/globs; unknown names are an error."""
    chosen = set()
    for pat in filter(None, (p.strip() for p in patterns.split(","))):
        hits = fnmatch.filter(figures, pat)
        if not hits:
            raise lens.UserError(f"unknown figure {pat!r} (known: {', '.join(figures) or 'none'})")
        chosen.update(hits)
    return [f for name, f in figures.items() if name in chosen]


def find_models(save_path: Path, wanted: list[str] | None) -> list[str]:
    """Model dir names to render: the ones asked for, or every model dir holding a model_cfg.json."""
    if not save_path.is_dir():
        raise lens.UserError(f"{save_path}: no data dir; run compute_activations.py first (or pass --save-path)")
    found = lens.model_dirs(save_path)
    if not wanted:
        if not found:
            raise lens.UserError(f"{save_path}: no models; run compute_activations.py first")
        return found
    dirs = [lens.model_dir_name(m) for m in wanted]
    for name, d in zip(wanted, dirs):
        if d not in found:
            raise lens.UserError(f"{save_path}: no model {name!r} (found: {', '.join(found) or 'none'})")
    return dirs


def init_worker(figures_dir: Path, names: list[str]) -> None:
    """Load the selected figures in this process (workers import figures/ themselves, whatever the start method)."""
    figures, _ = lens.load_figures(figures_dir)
    _FIGURES[:] = [figures[n] for n in names]


def image_bytes(fig: lens.Figure, matrix) -> bytes:
    """Encode one output matrix in the figure's format."""
    opts = {k: fig.options[k] for k in ("cmap", "normalize", "diverging", "normalize_min")}
    if fig.format == "png":
        return lens.matrix_as_png(matrix, **opts)
    svg = lens.matrix_as_svg(matrix, **opts).encode()
    return gzip.compress(svg, 6, mtime=0) if fig.format == "svgz" else svg


def run_figure(fig: lens.Figure, attn: np.ndarray) -> dict[str, bytes]:
    """Call the figure on one head; {output name: image bytes}. Raises on any failure."""
    result = fig.func(attn)
    if fig.kind == "figure":
        return {fig.name: image_bytes(fig, result)}
    expected = [o.split(".", 1)[1] for o in fig.outputs]
    if not isinstance(result, dict) or sorted(result) != sorted(expected):
        got = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"multi-figure must return a dict with keys {expected}, got {got}")
    return {f"{fig.name}.{k}": image_bytes(fig, result[k]) for k in expected}


def render_head(fig: lens.Figure, attn: np.ndarray, head_dir: Path) -> int:
    """Write one figure's images for one head, or its .error.txt files; returns the number of failures."""
    try:
        images = run_figure(fig, attn)
    except Exception:  # a user's figure failing on one head must not stop the run
        where = f"{head_dir.parent.name}{head_dir.name} of prompt {head_dir.parent.parent.name}"
        message = f"{fig.source}: {fig.name} failed on {where}\n{traceback.format_exc()}"
        for out in fig.outputs:
            lens.write_atomic(head_dir / f"{out}.error.txt", message)
            (head_dir / f"{out}.{fig.format}").unlink(missing_ok=True)
        return 1
    for out, data in images.items():
        path = head_dir / f"{out}.{fig.format}"
        path.unlink(missing_ok=True)  # ext4 flushes a file renamed over another to disk: ~1 ms each
        lens.write_atomic(path, data)
        (head_dir / f"{out}.error.txt").unlink(missing_ok=True)
    return 0


def run_statistic(stat: lens.Figure, attn: np.ndarray, token_ids: list[int], head_dir: Path) -> float | None:
    """One statistic of one head (NaN means "not defined here"); None, and an .error.txt, when it fails."""
    try:
        return float(stat.func(attn, token_ids) if stat.options["needs_tokens"] else stat.func(attn))
    except Exception:  # same isolation as render_head: a statistic is a user's figure function too
        where = f"{head_dir.parent.name}{head_dir.name} of prompt {head_dir.parent.parent.name}"
        lens.write_atomic(head_dir / f"{stat.name}.error.txt",
                          f"{stat.source}: {stat.name} failed on {where}\n{traceback.format_exc()}")
        return None


def render_prompt(task: tuple[Path, str, str, bool]) -> dict:
    """Render all selected figures and statistics of one prompt; returns counts for the summary."""
    save_path, model, phash, force = task
    pdir = lens.prompt_dir(save_path, model, phash)
    patterns = lens.Patterns(pdir / lens.PATTERN_FILE)
    figs = [f for f in _FIGURES if f.kind != "statistic"]
    stats_path = pdir / "stats.json"
    old_stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    stats = [s for s in _FIGURES if s.kind == "statistic" and (force or s.name not in old_stats)]
    token_ids = json.loads((pdir / "prompt.json").read_text()).get("token_ids") if stats else None
    values = {s.name: np.full((patterns.n_layers, patterns.n_heads), np.nan) for s in stats}
    counts = {"images": 0, "skipped": 0, "failed": 0, "stat_failed": 0}
    for layer in range(patterns.n_layers):
        for head in range(patterns.n_heads):
            if not patterns.stored(layer, head):  # compute_activations.py --heads kept others: no image, null stats
                continue
            head_dir = pdir / f"L{layer}" / f"H{head}"
            todo = [f for f in figs if force or not all((head_dir / f"{o}.{f.format}").exists() for o in f.outputs)]
            counts["skipped"] += sum(len(f.outputs) for f in figs) - sum(len(f.outputs) for f in todo)
            if not todo and not stats:
                continue
            if todo:
                head_dir.mkdir(parents=True, exist_ok=True)
            attn = patterns.head(layer, head)
            for fig in todo:
                failed = render_head(fig, attn, head_dir)
                counts["failed"] += failed * len(fig.outputs)
                counts["images"] += (1 - failed) * len(fig.outputs)
            for stat in stats:
                value = run_statistic(stat, attn, token_ids, head_dir)
                counts["stat_failed"] += value is None
                values[stat.name][layer, head] = math.nan if value is None else value
    if stats:
        new = {name: [[x if math.isfinite(x) else None for x in row] for row in v.tolist()]
               for name, v in values.items()}
        lens.write_json(stats_path, {**old_stats, **new})
    return counts


def aggregate_stats(save_path: Path, model: str, registry: dict[str, lens.Figure]) -> list[str]:
    """Collect every prompt's stats.json into <model>/stats.json + stats/<name>.f32; returns the names."""
    cfg = json.loads((save_path / model / "model_cfg.json").read_text())
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    hashes = lens.finished_prompts(save_path, model)
    per_prompt = {}
    for h in hashes:
        path = lens.prompt_dir(save_path, model, h) / "stats.json"
        per_prompt[h] = json.loads(path.read_text()) if path.exists() else {}
    seen = {name for s in per_prompt.values() for name in s}
    names = [n for n, f in registry.items() if f.kind == "statistic" and n in seen] + sorted(seen - set(registry))
    if not names:
        return []
    out = {"prompts": hashes, "n_layers": n_layers, "n_heads": n_heads, "stats": {}}
    for name in names:
        table = np.full((len(hashes), n_layers, n_heads), np.nan, np.float32)
        for i, h in enumerate(hashes):
            if name in per_prompt[h]:
                table[i] = np.array(per_prompt[h][name], dtype=np.float64)  # JSON null -> NaN
        lens.write_atomic(save_path / model / "stats" / f"{name}.f32", table.astype("<f4").tobytes())
        finite = np.isfinite(table)
        count = finite.sum(0)
        mean = np.where(finite, table, 0).sum(0) / np.maximum(count, 1)
        doc = (inspect.getdoc(registry[name].func) or "") if name in registry else ""
        out["stats"][name] = {"doc": doc, "mean": [[float(m) if c else None for m, c in zip(mr, cr)]
                                                   for mr, cr in zip(mean.tolist(), count.tolist())]}
    lens.write_json(save_path / model / "stats.json", out)
    return names


def write_colormaps(save_path: Path) -> None:
    """colormaps.json for the site's legends: {name: ["#rrggbb" x 256]}, the same tables the images use."""
    lens.write_json(save_path / "colormaps.json", {
        name: ["#" + bytes(rgb).hex() for rgb in lens.colormap_table(name)] for name in lens.COLORMAPS})


def render_model(save_path: Path, model: str, hashes: list[str], names: list[str], args) -> dict:
    """Render one model's prompts in parallel, with a progress bar in head-images/s; returns summed counts."""
    cfg = json.loads((save_path / model / "model_cfg.json").read_text())
    per_prompt = cfg["n_layers"] * cfg["n_heads"] * sum(len(f.outputs) for f in _FIGURES)
    tasks = [(save_path, model, h, args.force) for h in hashes]
    totals = {"images": 0, "skipped": 0, "failed": 0, "stat_failed": 0}
    bar = tqdm(total=len(tasks) * per_prompt, desc=model, unit="img", smoothing=0.1, disable=None)
    jobs = max(1, min(args.jobs, len(tasks)))
    # --jobs 1 runs in this process: no workers, easier to debug and profile
    with Pool(jobs, init_worker, (args.figures_dir, names)) if jobs > 1 else nullcontext() as pool:
        for counts in pool.imap_unordered(render_prompt, tasks) if pool else map(render_prompt, tasks):
            for k in totals:
                totals[k] += counts[k]
            bar.update(counts["images"] + counts["skipped"] + counts["failed"])
    bar.close()
    return totals


def main() -> None:
    args = parse_args()
    save_path = args.save_path
    shard = lens.parse_shard(args.shard)
    if args.n_samples is not None and args.n_samples < 1:
        raise lens.UserError(f"--n-samples {args.n_samples}: expected a positive number of prompts")
    models = find_models(save_path, args.model)
    registry, import_errors = lens.load_figures(args.figures_dir)
    for err in import_errors:
        print(f"skipping a figure file that failed to import: {err}", file=sys.stderr)
    selected = select_figures(registry, args.figures)
    names = [f.name for f in selected]
    _FIGURES[:] = selected
    start = time.perf_counter()
    totals = {"images": 0, "skipped": 0, "failed": 0, "stat_failed": 0}
    for model in models:
        hashes = lens.finished_prompts(save_path, model)
        if not hashes:
            raise lens.UserError(f"{save_path / model}: no patterns yet; run compute_activations.py for this model first")
        hashes = [h for h in hashes[:args.n_samples] if lens.in_shard(h, shard)]
        counts = render_model(save_path, model, hashes, names, args) if hashes else dict.fromkeys(totals, 0)
        for k in totals:
            totals[k] += counts[k]
        stat_names = aggregate_stats(save_path, model, registry)
        if stat_names:
            print(f"{model}: statistics {', '.join(stat_names)} -> {save_path / model / 'stats.json'}")
    seconds = time.perf_counter() - start
    print(f"{totals['images']} images in {seconds:.1f} s ({totals['images'] / seconds:.0f}/s), "
          f"{totals['skipped']} already there, {totals['failed']} failed"
          + (" (see the .error.txt files)" if totals["failed"] else "")
          + (f", {totals['stat_failed']} statistic values failed" if totals["stat_failed"] else ""))
    write_colormaps(save_path)
    from build_index import build_index
    build_index(save_path, args.figures_dir)


if __name__ == "__main__":
    try:
        main()
    except lens.UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished images are kept (each is written whole or not at all); run again to go on")
