"""Benchmark render_figures.py on GPT-2-small-shaped synthetic patterns (no torch needed).

    python bench/bench_render.py                # 32 prompts x 141 tokens x 12 layers x 12 heads
    python bench/bench_render.py --prompts 8 --repeats 1

Prints head-images/s and bytes per image for the `raw` figure, the same numbers for an
emulation of the predecessor's encoding (colormap -> RGB PNG at PIL's default level -> base64
SVG) on the same heads, and the time the head statistics add.
"""
import argparse
import base64
import io
import itertools
import math
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from fake_data import make_data  # noqa: E402

from attention_lens import (
    lens,  # noqa: E402
    render_figures,  # noqa: E402
    storage,
)

RUNS = itertools.count()


def make_texts(n_prompts: int, n_words: int, seed: int = 0) -> list[str]:
    """Distinct texts of n_words words (fake_data makes one token per word, plus BOS)."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(500)]
    return [" ".join(rng.choice(vocab, n_words)) for _ in range(n_prompts)]


def time_render(source: Path, names: list[str], jobs: int) -> tuple[float, float, dict]:
    """Wall and CPU seconds (CPU: this process only, so use jobs=1) to render the named
    figures/statistics of every prompt into a fresh copy of the data dir, as a first run does.
    Fresh copies, not deleted images: on this VM's disk, deleting thousands of files slows
    the file creation of the next run."""
    save_path = source.parent / f"run{next(RUNS)}"
    shutil.copytree(source, save_path)
    registry, _ = lens.load_figures()
    render_figures._FIGURES[:] = [registry[n] for n in names]
    args = argparse.Namespace(force=False, jobs=jobs, figures_dir=lens.FIGURES_DIR)
    hashes = lens.finished_prompts(save_path, "bench-model")
    start, cpu = time.perf_counter(), time.process_time()
    counts = render_figures.render_model(save_path, "bench-model", hashes, names, args)
    return time.perf_counter() - start, time.process_time() - cpu, counts


def predecessor_svg(attn: np.ndarray) -> str:
    """What pattern-lens writes for `raw`: colormap -> RGB PNG (PIL default level 6) -> base64 in an SVG."""
    buf = io.BytesIO()
    Image.fromarray(lens.colormap_table("viridis")[lens.quantize(attn)], "RGB").save(buf, format="PNG")
    n = attn.shape[0]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{n}" height="{n}"><image href="data:image/png;base64,'
            f'{base64.b64encode(buf.getvalue()).decode()}" width="{n}" height="{n}"/></svg>')


def pack_images(path: Path) -> list[bytes]:
    """Every head's image in a figure pack (what one per-head file would hold)."""
    with open(path, "rb") as f:
        n_layers, n_heads = struct.unpack("<II", f.read(storage.PACK_HEADER)[8:])
    images = [storage.read_pack_image(path, l, h) for l in range(n_layers) for h in range(n_heads)]
    return [image for image in images if image]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=141, help="tokens per prompt, BOS included")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="best of twice this many runs, in alternating order")
    p.add_argument("--dir", help="where to write the data (default: a temp dir; try /dev/shm to leave the disk out)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        save_path = Path(tmp) / "source"
        make_data(save_path, "bench-model", 12, 12, make_texts(args.prompts, args.tokens - 1))
        n_heads = args.prompts * 144
        registry, _ = lens.load_figures()
        stats = [n for n, f in registry.items() if f.kind == "statistic"]
        # Interleaved in alternating order: the disk slows down as runs churn through files,
        # and a burst of load elsewhere should hit both alike. CPU time: one process (--jobs 1).
        best = {}
        for i in range(2 * args.repeats):
            for names in [["raw"], ["raw"] + stats][:: 1 if i % 2 == 0 else -1]:
                wall, _, _ = time_render(save_path, names, args.jobs)
                _, cpu, _ = time_render(save_path, names, 1)
                key = "both" if len(names) > 1 else "raw"
                best[key] = min(best.get(key, math.inf), wall)
                best[key + "_cpu"] = min(best.get(key + "_cpu", math.inf), cpu)
        raw_s, both_s, raw_cpu, both_cpu = best["raw"], best["both"], best["raw_cpu"], best["both_cpu"]
        sizes = [len(image) for f in Path(tmp).glob("run0/bench-model/prompts/*/raw.pack")
                 for image in pack_images(f)]
        all_s, _, counts = time_render(save_path, list(registry), args.jobs)

        heads = [storage.Patterns(f).head(l, h) for f in list(save_path.glob("bench-model/prompts/*/patterns.bin"))[:4]
                 for l in range(12) for h in range(12)]
        start = time.perf_counter()
        old_sizes = [len(predecessor_svg(a)) for a in heads]
        old_rate = len(heads) / (time.perf_counter() - start)

    print(f"{args.prompts} prompts x {args.tokens} tokens x 144 heads = {n_heads} head images, --jobs {args.jobs}, "
          f"in {args.dir or tempfile.gettempdir()}")
    print(f"raw:                 {raw_s:.2f} s  {n_heads / raw_s:,.0f} head-images/s  "
          f"{np.mean(sizes) / 1024:.2f} KiB per image")
    print(f"raw + {len(stats)} statistics: {both_s:.2f} s  "
          f"(statistics add {100 * (both_s / raw_s - 1):.0f}% wall time)")
    print(f"CPU time in one process: raw {raw_cpu:.2f} s, raw + statistics {both_cpu:.2f} s "
          f"(statistics add {100 * (both_cpu / raw_cpu - 1):.0f}%, "
          f"{1e6 * (both_cpu - raw_cpu) / n_heads:.0f} us per head)")
    print(f"all {len(registry)} figures+stats: {all_s:.2f} s  {counts['images'] / all_s:,.0f} images/s, "
          f"{counts['failed']} failed")
    print(f"predecessor encoding, 1 process: {old_rate:,.0f} head-images/s  "
          f"{np.mean(old_sizes) / 1024:.2f} KiB per image "
          f"(ours: {100 * np.mean(sizes) / np.mean(old_sizes):.0f}% of its size)")


if __name__ == "__main__":
    main()
