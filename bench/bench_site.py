"""Benchmark the site in headless chromium: the grid's images, a large prompt index, a long prompt's single view.

    python bench/bench_site.py                 # all three, 5 cold loads each
    python bench/bench_site.py --runs 10 --tokens 300 --prompts 20000 --long 2000

1. Grid: all 144 heads of one GPT-2-small-shaped prompt (`raw` images by render_figures.py), from
   navigation start: first image visible, every image in a 1280x800 window, all 144 (1280x4000 window).
2. Index: a --prompts prompt index (122 tokens each): first table page shown, a search, selecting
   1,000 prompts for all 144 heads (a 144,000-tile grid), the next search.
3. Single view: one --long token prompt: page ready, next head drawn.
Each run is a fresh browser context on a synthetic data dir served by serve.py on localhost.
"""
import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import lens  # noqa: E402
from browser import CHROMIUM, CHROMIUM_ARGS, served  # noqa: E402
from fake_data import make_data  # noqa: E402

# ms since navigation start: first image loaded (grid.js marks it), then the viewport's images, then all
MEASURE = """async (waitAll) => {
  const imgs = () => [...document.querySelectorAll('.tile img')];
  const inView = (n) => n.getBoundingClientRect().top < innerHeight;
  const done = (list) => list.length && list.every((i) => i.complete);
  while (!performance.getEntriesByName('first-image').length) await new Promise((r) => setTimeout(r, 5));
  const first = performance.getEntriesByName('first-image')[0].startTime;
  while (!done(imgs().filter(inView))) await new Promise((r) => setTimeout(r, 5));
  const viewport = performance.now();
  while (waitAll && (imgs().length < 144 || !done(imgs()))) await new Promise((r) => setTimeout(r, 5));
  return [first, viewport, performance.now(), document.querySelectorAll('.tile').length];
}"""


def render_raw(save_path: Path) -> None:
    """The built-in `raw` figure of every head, by render_figures.py (which also runs build_index.py)."""
    subprocess.run([sys.executable, str(ROOT / "render_figures.py"), "--save-path", str(save_path),
                    "--figures", "raw", "--jobs", "2"], check=True, capture_output=True)


def bench_grid(browser, tmp: Path, runs: int, n_tokens: int) -> None:
    text = " ".join(f"w{i % 97}" for i in range(n_tokens - 1))
    (phash,) = make_data(tmp, model="gpt2-shaped", n_layers=12, n_heads=12, texts=[text])
    render_raw(tmp)
    size = sum(p.stat().st_size for p in tmp.glob("gpt2-shaped/prompts/*/L*/H*/raw.svg"))
    print(f"grid: 144 raw images of {n_tokens} tokens, {size / 144 / 1024:.1f} KiB each; {runs} cold loads")
    results = []
    with served(tmp) as url:
        for _ in range(runs):
            for height in (800, 4000):  # 1280x800 shows the first rows; 1280x4000 lets every tile load at once
                context = browser.new_context(viewport={"width": 1280, "height": height})
                page = context.new_page()
                page.goto(f"{url}index.html?heads=L*H*&prompts={phash}&figures=raw&size=120")
                first, viewport, full, n = page.evaluate(MEASURE, height > 1000)
                assert n == 144, n
                results.append((height, first, viewport, full))
                context.close()
    for height in (800, 4000):
        med = [statistics.median(r[i] for r in results if r[0] == height) for i in (1, 2, 3)]
        print(f"  window 1280x{height}: first image {med[0]:.0f} ms, images in the window {med[1]:.0f} ms"
              + (f", all 144 {med[2]:.0f} ms" if height > 1000 else "") + " (medians from navigation start)")


def write_index(save_path: Path, n: int) -> int:
    """A 12 x 12-head model's prompt index of n prompts (122 tokens each, every 1000th holding "needle").

    Only the indexes: the grid reads nothing else until a tile scrolls into view, and writing n prompt
    dirs for build_index.py would time the file system, not the page."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "north", "lamp"]
    rows = []
    for i in range(n):
        text = " ".join(rng.choice(words, 120)) + (" needle" if i % 1000 == 7 else "") + f" #{i}"
        tokens = ["<|endoftext|>"] + [" " + w for w in text.split()]
        rows.append({"text": text, "hash": lens.prompt_hash(text), "tokens": tokens,
                     "token_ids": list(range(len(tokens))), "n_tokens": len(tokens), "meta": {"i": i}})
    lens.write_jsonl(save_path / "big" / "prompts.jsonl", sorted(rows, key=lambda r: r["hash"]))
    lens.write_jsonl(save_path / "models.jsonl", [{"model_name": "big", "model_dir": "big", "n_layers": 12,
                                                   "n_heads": 12, "n_prompts": n}])
    figures, _ = lens.load_figures()
    lens.write_jsonl(save_path / "figures.jsonl", lens.figure_records(figures))
    shutil.copytree(ROOT / "site", save_path, dirs_exist_ok=True)
    return (save_path / "big" / "prompts.jsonl").stat().st_size


def bench_index(browser, tmp: Path, runs: int, n: int) -> None:
    size = write_index(tmp, n)
    n_needles = len(range(7, n, 1000))
    print(f"index: {n} prompts (prompts.jsonl {size / 1e6:.0f} MB); {runs} cold loads")
    times = []
    with served(tmp) as url:
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(url + "index.html")
            page.wait_for_function("document.querySelectorAll('#prompt-table tbody tr').length === 100")
            load = time.perf_counter() - t0
            t0 = time.perf_counter()
            page.fill("#search", "needle")
            page.wait_for_function(f"document.querySelectorAll('#prompt-table tbody tr').length === {n_needles}")
            search = time.perf_counter() - t0
            page.fill("#search", "")
            page.wait_for_function(f"document.querySelector('#prompt-count').textContent.endsWith('{n} of {n} match')")
            page.click("#clear-prompts")
            t0 = time.perf_counter()
            page.click("#select-matching")  # the cap: 1,000 prompts x 144 heads
            page.wait_for_function("document.querySelector('#summary').textContent === '144000 images'")
            big = time.perf_counter() - t0
            t0 = time.perf_counter()
            page.fill("#search", "needle")
            page.wait_for_function(f"document.querySelectorAll('#prompt-table tbody tr').length === {n_needles}")
            after = time.perf_counter() - t0
            times.append((load, search, big, after))
            context.close()
    med = [statistics.median(t[i] for t in times) for i in range(4)]
    print(f"  first page shown {med[0]:.2f} s, search {med[1]:.2f} s, 144,000-tile grid {med[2]:.2f} s, "
          f"next search {med[3]:.2f} s (medians)")


def bench_single(browser, tmp: Path, runs: int, n_tokens: int) -> None:
    (phash,) = make_data(tmp, n_layers=2, n_heads=2, texts=[" ".join(f"w{i}" for i in range(n_tokens - 1))])
    render_raw(tmp)
    print(f"single view: one {n_tokens}-token prompt; {runs} cold loads")
    times = []
    with served(tmp) as url:
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            t0 = time.perf_counter()
            page.goto(f"{url}single.html?model=fake-model&prompt={phash}&layer=1&head=1")
            page.wait_for_selector("body[data-ready='1']")
            ready = time.perf_counter() - t0
            t0 = time.perf_counter()
            page.keyboard.press("h")
            page.wait_for_function("() => document.querySelector('#title').textContent.endsWith('L0H0')")
            step = time.perf_counter() - t0
            times.append((ready, step))
            context.close()
    print(f"  ready {statistics.median(t[0] for t in times):.2f} s, next head "
          f"{statistics.median(t[1] for t in times):.2f} s (medians from navigation start / key press)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=141, help="grid prompt length incl. BOS (default: 141)")
    parser.add_argument("--prompts", type=int, default=10_000, help="prompts in the index (default: 10000)")
    parser.add_argument("--long", type=int, default=1000, help="single view prompt length (default: 1000)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for bench, size in [(bench_grid, args.tokens), (bench_index, args.prompts), (bench_single, args.long)]:
            tmp = Path(tempfile.mkdtemp())
            try:
                bench(browser, tmp, args.runs, size)
            finally:
                shutil.rmtree(tmp)
        browser.close()


if __name__ == "__main__":
    main()
