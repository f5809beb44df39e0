"""Benchmark the grid view: all 144 heads of one GPT-2-small-shaped prompt, in headless chromium.

    python bench/bench_site.py                 # 12 layers x 12 heads, 141 tokens, 5 cold page loads
    python bench/bench_site.py --runs 10 --tokens 300

Serves a synthetic data dir (patterns from tests/fake_data.py, `raw` images drawn by
lens.matrix_as_svg like render_figures.py) with serve.py on localhost, opens
index.html?heads=L*H* in a fresh browser context per run and reports, from navigation
start: first image visible, every image in the window loaded, all 144 loaded (tall window).
"""
import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
import lens  # noqa: E402
from browser import CHROMIUM, CHROMIUM_ARGS, served, render_fake_images  # noqa: E402
from build_index import build_index  # noqa: E402
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


def make_site(save_path: Path, n_tokens: int) -> str:
    """One GPT-2-small-shaped prompt with every head's `raw` image; returns its hash."""
    text = " ".join(f"w{i % 97}" for i in range(n_tokens - 1))
    (phash,) = make_data(save_path, model="gpt2-shaped", n_layers=12, n_heads=12, texts=[text])
    render_fake_images(save_path)
    build_index(save_path)
    return phash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=141, help="prompt length incl. BOS (default: 141)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp())
    try:
        phash = make_site(tmp, args.tokens)
        size = sum(p.stat().st_size for p in tmp.glob("gpt2-shaped/prompts/*/L*/H*/raw.svg"))
        print(f"144 raw images, {size / 144 / 1024:.1f} KiB each; {args.runs} cold loads (new browser context each)")
        results = []
        with served(tmp) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for _ in range(args.runs):
                # 1280x800 shows the first rows; 1280x4000 lets every tile load at once
                for height in (800, 4000):
                    context = browser.new_context(viewport={"width": 1280, "height": height})
                    page = context.new_page()
                    t0 = time.perf_counter()
                    page.goto(f"{url}index.html?heads=L*H*&prompts={phash}&figures=raw&size=120")
                    first, viewport, full, n = page.evaluate(MEASURE, height > 1000)
                    assert n == 144, n
                    results.append((height, first, viewport, full, time.perf_counter() - t0))
                    context.close()
            browser.close()
        for height in (800, 4000):
            rows = [r for r in results if r[0] == height]
            med = [statistics.median(r[i] for r in rows) for i in (1, 2, 3)]
            print(f"window 1280x{height}: first image {med[0]:.0f} ms, images in the window {med[1]:.0f} ms"
                  + (f", all 144 {med[2]:.0f} ms" if height > 1000 else "") + " (medians from navigation start)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
