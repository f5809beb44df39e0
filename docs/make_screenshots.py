"""Make docs/screenshot.png, the README's picture: the demo's grid page beside its heads page.

    python docs/make_screenshots.py                  # writes docs/screenshot.png (about a minute on 2 cores)
    python docs/make_screenshots.py --keep /tmp/shot # also keep the data dir and the two page screenshots there

Runs the README's first run on the demo model (compute_activations.py, render_figures.py) into a temporary
data dir, serves it with serve.py, opens index.html and heads.html in headless chromium (light theme, the
tests' flags) and puts the two screenshots side by side with pillow. Needs playwright, Debian's chromium
and pillow (requirements-dev.txt); no network.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attention_lens import lens, serve  # noqa: E402  (after the path: this script lives in docs/)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
OUT = ROOT / "docs" / "screenshot.png"
VIEWPORT = {"width": 960, "height": 680}
GAP = 16  # px between the two pages
SCALE = 0.8  # of the composite: small enough for a README, large enough to read the labels


def run_script(script: str, *args: str) -> None:
    """Run one of the project's scripts as a user would, offline; its output is shown only when it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {script} failed:\n{done.stderr}")


def prompts_of_kind(kind: str) -> list[str]:
    """Hashes of the demo prompts (prompts.jsonl) whose meta kind is `kind`, in file order."""
    rows = [json.loads(line) for line in (ROOT / "prompts.jsonl").read_text().splitlines() if line.strip()]
    return [lens.prompt_hash(r["text"]) for r in rows if r.get("meta", {}).get("kind") == kind]


def make_data(data: Path) -> None:
    run_script("compute_activations.py", "demo", "prompts.jsonl", "--save-path", str(data))
    run_script("render_figures.py", "--save-path", str(data), "--jobs", "2")


def screenshot_pages(data: Path, out_dir: Path) -> list[Path]:
    """The grid (every head on a prompt that repeats itself) and the heads page (induction scores, one head's panel)."""
    from playwright.sync_api import sync_playwright

    model = lens.model_dir_name("demo")
    prompt = prompts_of_kind("repeated-random")[0]
    pages = {
        "grid": f"index.html?models={model}&prompts={prompt}&cols=4&controls=hide",
        "heads": f"heads.html?model={model}&stat=induction_head&panel=L1H2",
    }
    server, url = serve.serve_in_thread(data)
    shots = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(color_scheme="light", viewport=VIEWPORT)
            page = context.new_page()
            for name, path in pages.items():
                page.goto(url + path)
                page.wait_for_selector("body[data-ready='1']")
                if name == "grid":  # every tile's image decoded, not just requested
                    page.wait_for_function("""() => [...document.querySelectorAll('.tile img')].length > 0
                        && [...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth > 0)""")
                else:
                    page.wait_for_selector("#head-panel [data-list='highest'] li")
                page.wait_for_timeout(300)  # canvases drawn after the images load
                shots.append(out_dir / f"{name}.png")
                page.screenshot(path=str(shots[-1]))
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return shots


def compose(shots: list[Path], out: Path) -> None:
    """The pages side by side on white with a thin border each, scaled down, as an 8-bit palette PNG."""
    images = [Image.open(s).convert("RGB") for s in shots]
    width = sum(i.width for i in images) + GAP * (len(images) + 1)
    height = max(i.height for i in images) + 2 * GAP
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = GAP
    for image in images:
        canvas.paste(image, (x, GAP))
        draw.rectangle([x - 1, GAP - 1, x + image.width, GAP + image.height], outline=(190, 190, 190))
        x += image.width + GAP
    small = canvas.resize((round(width * SCALE), round(height * SCALE)), Image.LANCZOS)
    small.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="keep the data dir and the page screenshots in this folder")
    parser.add_argument("-o", "--output", type=Path, default=OUT, help=f"default: {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        make_data(work / "attn_data")
        compose(screenshot_pages(work / "attn_data", work), args.output)
    print(f"{args.output}: {args.output.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
