"""Render every stored attention pattern through every figure in figures/, and compute head statistics.

    python render_figures.py
    python render_figures.py --model gpt2 --figures 'raw,entropy*' --n-samples 50 --force --jobs 8
    python render_figures.py --shard 3/8            # one of 8 array jobs, split by prompt hash
    python render_figures.py --export-svg gpt2/0123456789abcdef/L1H2/raw -o raw.svg   # one head, standalone

Writes one pack per prompt and figure output, <model>/prompts/<hash>/<output>.pack, holding every
head's PNG (storage.PackWriter; <output>.errors.json names the heads the figure failed on, with their
tracebacks), and each prompt's plug-in statistics that compute_activations.py did not compute to
prompts/<hash>/stats.json, records which --figures-dir it rendered with, and then rebuilds the indexes
and the per-model statistics tables (build_index.py). Existing packs and statistics are kept unless
--force. A prompt whose files cannot be read is a warning naming it; the others are rendered.
--export-svg MODEL/HASH/L<l>H<h>/OUTPUT writes one stored head's image as an SVG (the PNG inside, as
lens.matrix_as_svg draws it) to -o FILE, or to stdout; it renders nothing.

From a notebook: `from render_figures import render_figures; render_figures("attn_data", figures="raw")`.
"""
import fnmatch
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attention_lens import datadir, lens, storage

TIME_LIMIT = 60.0  # seconds one figure or statistic may take on one head
_FIGURES: list[lens.Figure] = []  # the selected figures and statistics, per process (see init_worker)


def parse_args():
    p = lens.script_parser(__doc__)
    p.add_argument("--save-path", type=lens.save_path_arg, default=lens.DEFAULT_SAVE_PATH,
                   help="data dir (default: %(default)s)")
    p.add_argument("--model", action="append",
                   help="model to render (name as given to compute_activations.py, or its dir name); "
                   "repeatable; default: all")
    p.add_argument("--figures", default="*",
                   help="comma-separated figure/statistic names or globs, e.g. 'raw,vs_*' (default: all)")
    p.add_argument("--n-samples", type=lens.positive_int,
                   help="render only the first N prompts of each model (in hash order)")
    p.add_argument("--force", action="store_true", help="redo images and statistics that already exist")
    p.add_argument("--jobs", type=lens.positive_int, default=len(os.sched_getaffinity(0)),
                   help="worker processes (default: the cores this process may use, e.g. a SLURM task's allocation)")
    p.add_argument("--shard", metavar="K/N",
                   help="render only the prompts in shard K of N (by hash, as compute_activations.py --shard)")
    p.add_argument("--figures-dir", type=Path, default=lens.FIGURES_DIR, help="where figure plug-ins live")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT, metavar="SECONDS",
                   help="a figure or statistic running longer on one head fails there (default: %(default)s; 0: none)")
    p.add_argument("--export-svg", metavar="MODEL/HASH/L<l>H<h>/OUTPUT",
                   help="write one rendered head's image as a standalone SVG instead of rendering")
    p.add_argument("-o", "--output", type=Path, help="file for --export-svg (default: stdout)")
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
    found = lens.model_dirs(lens.require_data_dir(save_path))
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
    """Encode one output matrix as PNG: packs hold the PNG, --export-svg wraps it in an SVG."""
    return lens.matrix_as_png(matrix, **{k: fig.options[k]
                                         for k in ("cmap", "normalize", "diverging", "normalize_min")})


@contextmanager
def time_limited(seconds: float | None, what: str):
    """Raise TimeoutError in the code inside after `seconds` (a plug-in that hangs). Only in a process's main
    thread, where a signal can reach it; elsewhere, and with None, no limit."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{what} took more than {seconds:g} s (--time-limit)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_figure(fig: lens.Figure, attn: np.ndarray, inputs: dict) -> dict[str, bytes]:
    """Call the figure on one head; {output name: image bytes}. Raises on any failure."""
    result = lens.call_plugin(fig, attn, inputs)
    if fig.kind == "figure":
        return {fig.name: image_bytes(fig, result)}
    expected = [o.split(".", 1)[1] for o in fig.outputs]
    if not isinstance(result, dict) or sorted(result) != sorted(expected):
        got = sorted(result) if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"multi-figure must return a dict with keys {expected}, got {got}")
    return {f"{fig.name}.{k}": image_bytes(fig, result[k]) for k in expected}


def render_head(fig: lens.Figure, attn: np.ndarray, inputs: dict, head: tuple,
                packs: dict[str, storage.PackWriter], errors: dict[str, dict], time_limit: float | None) -> int:
    """Add one figure's images of one head to their packs, or its traceback to errors; returns the number of failures.

    `head` is (save_path, model, hash, layer, head), as the lens path functions take it."""
    try:
        with time_limited(time_limit, f"{fig.name} on {where(head)}"):
            images = run_figure(fig, attn, inputs)
    except Exception:  # a user's figure failing on one head must not stop the run
        message = f"{fig.source}: {fig.name} failed on {where(head)}\n{traceback.format_exc()}"
        for out in fig.outputs:
            errors[out][head_key(head)] = message
        return 1
    for out, data in images.items():
        packs[out].add(*head[3:], data)
    return 0


def where(head: tuple) -> str:
    return f"{head_key(head)} of prompt {head[2]}"


def head_key(head: tuple) -> str:
    """A head's key in an errors file: L<l>H<h>."""
    return f"L{head[3]}H{head[4]}"


def run_statistic(stat: lens.Figure, attn: np.ndarray, inputs: dict, head: tuple,
                  errors: dict[str, dict], time_limit: float | None) -> float | None:
    """One statistic of one head (NaN means "not defined here"); None, and its traceback in errors, when it fails."""
    try:
        with time_limited(time_limit, f"{stat.name} on {where(head)}"):
            return lens.statistic_value(lens.call_plugin(stat, attn, inputs))
    except Exception:  # same isolation as render_head: a statistic is a user's figure function too
        errors[stat.name][head_key(head)] = (f"{stat.source}: {stat.name} failed on {where(head)}\n"
                                             f"{traceback.format_exc()}")
        return None


def write_errors(path: Path, failures: dict[str, str]) -> None:
    """An errors file when some head failed; none (a stale one removed) when none did."""
    if failures:
        lens.write_json(path, failures)
    else:
        path.unlink(missing_ok=True)


def new_counts() -> dict:
    return {"images": 0, "skipped": 0, "failed": 0, "stat_failed": 0, "unreadable": 0, "no_input": 0, "warnings": []}


def render_prompt(task: tuple[Path, str, str, bool, float | None]) -> dict:
    """Render one prompt, or return a warning naming it when its files cannot be read; returns counts for the
    summary."""
    save_path, model, phash, force, time_limit = task
    counts = new_counts()
    try:
        render_prompt_heads(save_path, model, phash, force, counts, time_limit)
    except lens.UserError as e:  # one unreadable prompt must not stop the others
        counts["unreadable"] = 1
        counts["warnings"].append(f"warning: prompt {phash} of {model} not rendered: {e}")
    return counts


def render_prompt_heads(save_path: Path, model: str, phash: str, force: bool, counts: dict,
                        time_limit: float | None = None) -> None:
    """Render all selected figures and statistics of one prompt's stored heads, adding to counts."""
    info = lens.read_json(datadir.prompt_json_path(save_path, model, phash))
    patterns = storage.load_patterns(save_path, model, phash)
    shape = (patterns.n_layers, patterns.n_heads)
    figs = [f for f in _FIGURES if f.kind != "statistic"]
    old_stats, old_code = storage.read_prompt_stats(save_path, model, phash, shape)
    # a statistic whose code changed since it was computed here is computed again
    stats = [s for s in _FIGURES if s.kind == "statistic"
             and (force or s.name not in old_stats or old_code.get(s.name, lens.code_of(s)) != lens.code_of(s))]
    norms = None
    if any("value_norms" in f.options["inputs"] for f in figs + stats):
        norms = storage.read_value_norms(save_path, model, phash, shape + (patterns.n_tokens,))
    # Data computed before value norms were stored, or imported from pattern-lens (no token ids either):
    # what needs a missing input is not made, without an error per head; the summary counts it.
    missing = {name for name, value in [("token_ids", info.get("token_ids")), ("value_norms", norms)] if value is None}
    lacking = [f for f in figs + stats if missing & set(f.options["inputs"])]
    counts["no_input"] += len(patterns.heads) * sum(max(1, len(f.outputs)) for f in lacking)
    figs, stats = [f for f in figs if f not in lacking], [s for s in stats if s not in lacking]
    values = {s.name: np.full(shape, np.nan) for s in stats}
    prompt = (save_path, model, phash)
    todo = [f for f in figs if force or not all(done(prompt, o) for o in f.outputs)]
    counts["skipped"] += len(patterns.heads) * sum(len(f.outputs) for f in figs if f not in todo)
    if not todo and not stats:
        return
    packs = {o: storage.PackWriter(datadir.figure_pack_path(*prompt, o), *shape) for f in todo for o in f.outputs}
    errors = {name: {} for name in [*packs, *(s.name for s in stats)]}
    try:
        for layer, h in patterns.heads:  # compute_activations.py --heads may have kept only some: no image, null stats
            head = (*prompt, layer, h)
            attn = patterns.head(layer, h)
            inputs = {"token_ids": info.get("token_ids"), "value_norms": None if norms is None else norms[layer, h]}
            for fig in todo:
                failed = render_head(fig, attn, inputs, head, packs, errors, time_limit)
                counts["failed"] += failed * len(fig.outputs)
                counts["images"] += (1 - failed) * len(fig.outputs)
            for stat in stats:
                value = run_statistic(stat, attn, inputs, head, errors, time_limit)
                counts["stat_failed"] += value is None
                values[stat.name][layer, h] = math.nan if value is None else value
        for name, failures in errors.items():  # before the packs: a finished pack's errors file is its own
            write_errors(datadir.figure_errors_path(*prompt, name), failures)
        for pack in packs.values():
            pack.close()
    finally:  # an unreadable head, Ctrl-C: no half pack stays behind
        for pack in packs.values():
            pack.abort()
    if stats:
        write_prompt_stats(save_path, model, phash, {**old_stats, **values},
                           {**old_code, **{s.name: lens.code_of(s) for s in stats}})


def done(prompt: tuple, output: str) -> bool:
    """Whether an output is rendered for a prompt: its pack is there and no head failed (a fixed figure is retried)."""
    return (datadir.figure_pack_path(*prompt, output).exists()
            and not datadir.figure_errors_path(*prompt, output).exists())


def render_model(save_path: Path, model: str, hashes: list[str], names: list[str], *, force: bool, jobs: int,
                 figures_dir: Path, progress: bool, time_limit: float | None) -> dict:
    """Render one model's prompts in parallel, with a progress bar in head-images/s; returns summed counts."""
    cfg = lens.read_model_cfg(save_path, model)
    per_prompt = cfg["n_layers"] * cfg["n_heads"] * sum(len(f.outputs) for f in _FIGURES)
    tasks = [(save_path, model, h, force, time_limit) for h in hashes]
    totals = new_counts()
    bar = tqdm(total=len(tasks) * per_prompt, desc=model, unit="img", smoothing=0.1,
               disable=None if progress else True)
    jobs = min(jobs, len(tasks))
    # --jobs 1 runs in this process: no workers, easier to debug and profile
    with Pool(jobs, init_worker, (figures_dir, names)) if jobs > 1 else nullcontext() as pool:
        for counts in pool.imap_unordered(render_prompt, tasks) if pool else map(render_prompt, tasks):
            for message in counts["warnings"]:
                bar.write(message, file=sys.stderr)
            add_counts(totals, counts)
            bar.update(counts["images"] + counts["skipped"] + counts["failed"])
    bar.close()
    return totals


def add_counts(totals: dict, counts: dict) -> None:
    for k in totals:
        totals[k] += counts[k]


def summary_line(totals: dict, seconds: float) -> str:
    return (f"{totals['images']} images in {seconds:.1f} s ({totals['images'] / seconds:.0f}/s), "
            f"{totals['skipped']} already there, {totals['failed']} failed"
            + (" (see the <output>.errors.json files)" if totals["failed"] else "")
            + (f", {totals['stat_failed']} statistic values failed" if totals["stat_failed"] else "")
            + (f", {totals['unreadable']} prompt(s) unreadable (see the warnings)" if totals["unreadable"] else "")
            + (f", {totals['no_input']} not made: their prompts have no value norms or token ids (computed before "
               "those were stored, or imported; recompute with compute_activations.py --force)"
               if totals["no_input"] else ""))


EXPORT_SPEC = re.compile(r"(.+)/([0-9a-f]+)/L(\d+)H(\d+)/([^/]+)")


def export_svg(save_path: Path, spec: str, out: Path | None) -> None:
    """--export-svg: one head's image from its pack as a standalone SVG, to `out` or stdout."""
    m = EXPORT_SPEC.fullmatch(spec)
    if not m:
        raise lens.UserError(f"--export-svg {spec}: expected MODEL/HASH/L<layer>H<head>/OUTPUT, "
                             f"e.g. gpt2/{'0' * 16}/L1H2/raw")
    model, phash, layer, head, output = lens.model_dir_name(m[1]), m[2], int(m[3]), int(m[4]), m[5]
    path = datadir.figure_pack_path(lens.require_data_dir(save_path), model, phash, output)
    if not path.is_file():
        raise lens.UserError(f"{path}: no such pack; render it first (python render_figures.py --save-path {save_path} "
                             f"--figures {output.split('.')[0]})")
    try:
        image = storage.read_pack_image(path, layer, head)
    except IndexError as e:
        raise lens.UserError(str(e)) from None
    if image is None:
        errors = datadir.figure_errors_path(save_path, model, phash, output)
        failed = errors.is_file() and f"L{layer}H{head}" in lens.read_json(errors)
        raise lens.UserError(f"{path}: no image of L{layer}H{head} "
                             + (f"({output} failed on it: see {errors})" if failed else "(the head is not stored)"))
    if not image.startswith(storage.PNG_SIGNATURE):
        raise lens.UserError(f"{path}: the image of L{layer}H{head} is not a PNG; packs hold PNG only (render it "
                             "again with --force)")
    svg = lens.png_as_svg(image)
    if out is None:
        sys.stdout.write(svg)
        return
    if Path(out).is_dir():
        raise lens.UserError(f"-o {out}: a directory; name the file to write, e.g. {Path(out) / 'head.svg'}")
    try:
        lens.write_atomic(out, svg)
    except OSError as e:
        raise lens.UserError(f"-o {out}: cannot write it ({e.strerror})") from None


def write_prompt_stats(save_path: Path, model: str, phash: str, stats: dict[str, np.ndarray],
                       code: dict[str, str]) -> None:
    lens.write_json(datadir.prompt_stats_path(save_path, model, phash),
                    {**{name: storage.nan_as_null(v) for name, v in stats.items()}, storage.CODE_KEY: code})




def render_figures(save_path: Path | str = lens.DEFAULT_SAVE_PATH, models: list[str] | None = None,
                   figures: str = "*", *, n_samples: int | None = None, force: bool = False, jobs: int = 1,
                   shard: tuple[int, int] | None = None, figures_dir: Path = lens.FIGURES_DIR,
                   progress: bool = True, time_limit: float | None = TIME_LIMIT) -> dict:
    """Render the chosen figures (names or globs, comma separated) and statistics for every finished prompt of
    `models` (default: all), then record the figures dir for build_index.py; returns the summed counts (printed
    as one line when `progress`)."""
    start = time.perf_counter()
    save_path, figures_dir = Path(save_path), Path(figures_dir)
    models = find_models(save_path, models)
    selected = select_figures(lens.load_figures_or_warn(figures_dir), figures)
    names = [f.name for f in selected]
    _FIGURES[:] = selected
    totals, n_tasks = new_counts(), 0
    for model in models:
        hashes = lens.finished_prompts(save_path, model)
        if not hashes:
            raise lens.UserError(f"{save_path}: model {model} has no patterns yet; "
                                 "run compute_activations.py for it first")
        hashes = [h for h in hashes[:n_samples] if lens.in_shard(h, shard)]
        n_tasks += len(hashes)
        if hashes:
            add_counts(totals, render_model(save_path, model, hashes, names, force=force, jobs=jobs,
                                            figures_dir=figures_dir, progress=progress, time_limit=time_limit))
    if progress:
        print(summary_line(totals, time.perf_counter() - start))
    if n_tasks and totals["unreadable"] == n_tasks:
        raise lens.UserError(f"none of the {n_tasks} prompt(s) could be read (see the warnings)")
    lens.write_json(datadir.render_record_path(save_path), {"figures_dir": str(figures_dir.resolve())})
    return totals


def main() -> None:
    args = parse_args()
    if args.export_svg:
        export_svg(args.save_path, args.export_svg, args.output)
        return
    if args.output:
        raise lens.UserError("-o/--output is the file of --export-svg; rendering writes into --save-path")
    if not args.time_limit >= 0:
        raise lens.UserError(f"--time-limit {args.time_limit:g}: expected seconds, 0 or more (0: no limit)")
    render_figures(args.save_path, args.model, args.figures, n_samples=args.n_samples, force=args.force,
                   jobs=args.jobs, shard=lens.parse_shard(args.shard), figures_dir=args.figures_dir,
                   time_limit=args.time_limit or None)
    from attention_lens.build_index import build_index
    build_index(args.save_path)


if __name__ == "__main__":
    lens.run_main(main, "finished images are kept (each is written whole or not at all); run again to go on")
