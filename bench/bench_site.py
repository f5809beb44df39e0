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
import fake_data  # noqa: E402
from browser import CHROMIUM, CHROMIUM_ARGS, served  # noqa: E402
from fake_data import make_data  # noqa: E402

from attention_lens import (
    build_index,  # noqa: E402
    datadir,  # noqa: E402
    lens,  # noqa: E402
)

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
    size = datadir.figure_pack_path(tmp, "gpt2-shaped", phash, "raw").stat().st_size
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


def synthetic_records(n: int) -> list[dict]:
    """n prompts' index records in hash order (122 tokens each, every 1000th holding "needle")."""
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "north", "lamp"])
    picks = rng.integers(0, len(words), (n, 120))
    records = []
    for i in range(n):
        text = " ".join(words[picks[i]]) + (" needle" if i % 1000 == 7 else "") + f" #{i}"
        records.append({"hash": lens.prompt_hash(text), "text": text, "n_tokens": 122 + (i % 1000 == 7),
                        "meta": {"i": i}, "truncated": False, "stored": False})
    return sorted(records, key=lambda r: r["hash"])


def write_index(save_path: Path, n: int, model: str = "big", shape: tuple[int, int] = (12, 12),
                stats: bool = False) -> int:
    """A model's prompt index of n synthetic prompts, written by build_index.py's writer; with `stats`, a
    `bos` statistic of random values for every prompt and head, aggregated as build_index.py does. Returns
    the index's bytes.

    No prompt dirs: the pages read nothing else until a tile or a prompt is opened, and writing n prompt
    dirs would time the file system, not the page."""
    records = synthetic_records(n)
    fake_data.write_prompt_index(save_path, model, records)
    if stats:
        table = np.random.default_rng(1).random((n, *shape), np.float32)
        fake_data.write_stat_aggregates(save_path, model, [r["hash"] for r in records], {"bos": table},
                                        {"bos": "Random values (bench)."}, {r["hash"]: r for r in records})
    lens.write_json(datadir.model_cfg_path(save_path, model), {"model_name": model, "n_layers": shape[0],
                                                               "n_heads": shape[1]})
    lens.write_atomic(datadir.models_path(save_path), lens.jsonl_bytes([
        {"model_name": model, "model_dir": model, "n_layers": shape[0], "n_heads": shape[1], "n_prompts": n}]))
    figures, _ = lens.load_figures()
    lens.write_atomic(datadir.figures_path(save_path), lens.jsonl_bytes(build_index.figure_records(figures)))
    lens.write_atomic(datadir.colormaps_path(save_path), build_index.colormaps_json())
    build_index.copy_site(save_path)
    return sum(p.stat().st_size for p in datadir.prompt_index_dir(save_path, model).rglob("*") if p.is_file())


def tab_megabytes(page) -> float:
    """The tab's JavaScript heap in use (Chrome DevTools Protocol), MB."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics["JSHeapUsedSize"] / 1e6


def time_grid_page(page, url: str, n: int, search: str, n_found: int) -> tuple[float, float, float]:
    """(first table page shown, a search shown, JS heap MB) for an index of n prompts, from navigation start."""
    t0 = time.perf_counter()
    page.goto(url + "index.html")
    page.wait_for_function("document.querySelectorAll('#prompt-table tbody tr').length === 100", timeout=120_000)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    page.fill("#search", search)
    page.wait_for_function(f"document.querySelector('#prompt-count').textContent.endsWith(' {n_found} of {n} match')",
                           timeout=120_000)
    found = time.perf_counter() - t0
    return first, found, tab_megabytes(page)


def time_heads_page(page, url: str, model: str, stat: str) -> tuple[float, float, int]:
    """(heatmap shown, a head's panel with its histogram and top prompts shown, bytes the page fetched)."""
    fetched = []
    page.on("response", lambda r: fetched.append(int(r.headers.get("content-length", 0))))
    t0 = time.perf_counter()
    page.goto(f"{url}heads.html?model={model}&stat={stat}")
    page.wait_for_selector("body[data-ready='1'] .heatmap-grid", timeout=120_000)
    heatmap = time.perf_counter() - t0
    t0 = time.perf_counter()
    page.click(".heatmap-grid .heat[data-layer='1'][data-head='1']")
    page.wait_for_selector("#head-panel .head-hist", timeout=120_000)
    page.wait_for_selector("#head-panel [data-list='highest'] li", timeout=120_000)
    return heatmap, time.perf_counter() - t0, sum(fetched)


def time_head_page(page, url: str, model: str, head: str) -> tuple[float, int]:
    """(the head page with its statistics, examples, tokens and look-back shown, bytes the page fetched)."""
    fetched = []
    page.on("response", lambda r: fetched.append(int(r.headers.get("content-length", 0))))
    t0 = time.perf_counter()
    page.goto(f"{url}head.html?model={model}&head={head}")
    page.wait_for_selector("body[data-ready='1'] #examples .example .tok", timeout=120_000)
    page.wait_for_selector("body[data-ready='1'] .head-stats", timeout=120_000)
    return time.perf_counter() - t0, sum(fetched)


def bench_pages(browser, url: str, model: str, n: int, search: str, n_found: int, stat: str, runs: int,
                head_page: bool = False) -> None:
    times = []
    for _ in range(runs):
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        grid = time_grid_page(page, url, n, search, n_found)
        page.close()
        page = context.new_page()
        times.append((*grid, *time_heads_page(page, url, model, stat)))
        if head_page:
            page.close()
            page = context.new_page()
            times[-1] += time_head_page(page, url, model, "L1H2")
        context.close()
    if head_page:
        shown, fetched = (statistics.median(t[i] for t in times) for i in (6, 7))
        print(f"  head page (L1H2): statistics, examples, tokens and look-back shown in {shown:.2f} s (target < 1 s), "
              f"{fetched / 1e3:.0f} kB fetched (target < 1 MB; medians of {runs} cold loads)")
    med = [statistics.median(t[i] for t in times) for i in range(6)]
    print(f"  grid: first page {med[0]:.2f} s (target <= 1 s at 100k, <= 2 s at 1M), search {search!r} "
          f"({n_found} found) {med[1]:.2f} s (target <= 1 s), tab JS heap {med[2]:.0f} MB (target < 300 MB)")
    print(f"  heads page: heatmap {med[3]:.2f} s, a head's histogram and top prompts {med[4]:.2f} s, "
          f"{med[5] / 1e3:.0f} kB fetched (medians of {runs} cold loads)")


def bench_scale_site(data: Path, model: str, million_dir: Path, million: int, runs: int = 3) -> None:
    """The pages over a real data dir (bench_scale.py's, one statistic per prompt and head, prompts "<i>. ...")
    and over a synthetic index of `million` prompts."""
    from playwright.sync_api import sync_playwright
    n = lens.read_json(datadir.prompt_index_path(data, model))["count"]
    index_bytes = sum(p.stat().st_size for p in datadir.prompt_index_dir(data, model).rglob("*") if p.is_file())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        print(f"site over {n} prompts (index {index_bytes / 1e6:.1f} MB in {index_files(data, model)} files):")
        with served(data) as url:
            bench_pages(browser, url, model, n, str(n // 2), 1, "induction_head", runs,  # text "<n // 2>. ..."
                        head_page=datadir.examples_index_path(data, model).is_file())
        start = time.perf_counter()
        size = write_index(million_dir, million, model="synthetic", shape=(2, 4), stats=True)
        print(f"site over a synthetic {million}-prompt index ({size / 1e6:.0f} MB, written in "
              f"{time.perf_counter() - start:.0f} s):")
        with served(million_dir) as url:
            bench_pages(browser, url, "synthetic", million, "needle", len(range(7, million, 1000)), "bos", runs)
        browser.close()


def index_files(data: Path, model: str) -> int:
    return sum(1 for p in datadir.prompt_index_dir(data, model).rglob("*") if p.is_file())


def bench_index(browser, tmp: Path, runs: int, n: int) -> None:
    size = write_index(tmp, n)
    n_needles = len(range(7, n, 1000))
    print(f"index: {n} prompts (index/ {size / 1e6:.0f} MB); {runs} cold loads")
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
