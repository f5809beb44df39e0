"""Benchmark a self-contained file (standalone.py) in headless chromium opened from disk: a long prompt's
single view, next to the same view served by serve.py.

    python bench/bench_standalone.py                 # a 1,000-token prompt, 5 cold loads each
    python bench/bench_standalone.py --runs 10 --long 2000

Two synthetic data dirs (tests/fake_data.py, `raw` images by render_figures.py): 2 layers x 2 heads (the shape
bench_site.py times the served single view on), and 12 x 12 heads (GPT-2 small) embedding only layer 5
(--heads L5H*). Times are from navigation start to the single view ready (body[data-ready], pattern drawn),
then to the next head drawn after `h`; the file's time includes reading and decoding its embedded data.
"""
import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from browser import CHROMIUM, CHROMIUM_ARGS, served  # noqa: E402
from fake_data import make_data  # noqa: E402

# the single view's frame inside the file: ready, and its title once it shows `suffix`
SINGLE_FRAME = "() => [...document.querySelectorAll('iframe')].find(f => f.title === 'single.html')?.contentDocument"
READY = f"() => ({SINGLE_FRAME})()?.body.dataset.ready === '1'"
TITLE = f"(suffix) => ({SINGLE_FRAME})()?.querySelector('#title').textContent.endsWith(suffix)"


def make_file(tmp: Path, n_tokens: int, shape: tuple[int, int], heads: str) -> tuple[Path, Path, str]:
    data = tmp / "data"
    (phash,) = make_data(data, n_layers=shape[0], n_heads=shape[1],
                         texts=[" ".join(f"w{i}" for i in range(n_tokens - 1))])
    subprocess.run([sys.executable, str(ROOT / "render_figures.py"), "--save-path", str(data), "--figures", "raw",
                    "--jobs", "2"], check=True, capture_output=True)
    out = tmp / "view.html"
    subprocess.run([sys.executable, str(ROOT / "standalone.py"), str(out), "--save-path", str(data),
                    "--heads", heads], check=True, capture_output=True)
    return data, out, phash


def time_file(browser, out: Path, address: str, layer: int, head: int) -> tuple[float, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route("**/*", lambda route: route.continue_() if route.request.url == out.as_uri()
                  else route.abort("internetdisconnected"))
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(f"{out.as_uri()}#{address}")
    page.wait_for_function(READY, timeout=60_000)
    ready = time.perf_counter() - t0
    frame = [f for f in page.frames if f.parent_frame and f.frame_element().get_attribute("title") == "single.html"][0]
    frame.focus("#matrix")
    t0 = time.perf_counter()
    page.keyboard.press("h")
    page.wait_for_function(TITLE, arg=f"L{layer}H{head + 1}")
    step = time.perf_counter() - t0
    context.close()
    return ready, step


def time_served(browser, url: str, address: str, layer: int, head: int) -> tuple[float, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(url + address)
    page.wait_for_selector("body[data-ready='1']")
    ready = time.perf_counter() - t0
    t0 = time.perf_counter()
    page.keyboard.press("h")
    page.wait_for_function(f"() => document.querySelector('#title').textContent.endsWith('L{layer}H{head + 1}')")
    step = time.perf_counter() - t0
    context.close()
    return ready, step


def median_line(times: list[tuple[float, float]]) -> str:
    return (f"ready {statistics.median(t[0] for t in times):.2f} s, next head "
            f"{statistics.median(t[1] for t in times):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--long", type=int, default=1000, help="prompt length (default: 1000)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for shape, heads, layer in [((2, 2), "L*H*", 1), ((12, 12), "L5H*", 5)]:
            tmp = Path(tempfile.mkdtemp())
            try:
                data, out, phash = make_file(tmp, args.long, shape, heads)
                address = f"single.html?model=fake-model&prompt={phash}&layer={layer}&head=0"
                print(f"{args.long} tokens, {shape[0]} x {shape[1]} heads, --heads {heads}: "
                      f"{out.stat().st_size / 1e6:.1f} MB file; {args.runs} cold loads each")
                files = [time_file(browser, out, address, layer, 0) for _ in range(args.runs)]
                with served(data) as url:
                    served_times = [time_served(browser, url, address, layer, 0) for _ in range(args.runs)]
                print(f"  file from disk: {median_line(files)}; served: {median_line(served_times)} "
                      "(medians from navigation start / key press)")
            finally:
                shutil.rmtree(tmp)
        browser.close()


if __name__ == "__main__":
    main()
