"""Check attention_view's cell output in a real JupyterLab (not run by CI: the project installs no Jupyter): a
notebook executed by nbconvert is untrusted, so its output shows the static picture and its line; trusted
(`jupyter trust`, or JupyterLab's Trust Notebook command) it shows the live view; nbconvert's HTML export holds the
picture.

    python -m venv --system-site-packages /tmp/jvenv
    /tmp/jvenv/bin/pip install -q jupyterlab nbconvert ipykernel && /tmp/jvenv/bin/pip install -q --no-deps -e .
    /tmp/jvenv/bin/python bench/check_jupyterlab.py          # screenshots in /tmp/jlab_shots/

It runs the demo model offline, JupyterLab on a free localhost port with a token, and Debian's chromium through
playwright; Jupyter's config, data (the trust database) and runtime dirs are temporary. It prints what it saw, one
line a check, and exits 1 if a check failed.
"""
import argparse
import base64
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

BIN = Path(sys.executable).parent  # the venv's jupyter, jupyter-lab, jupyter-nbconvert, jupyter-trust
TEXT = "The old lighthouse keeper climbed the stairs. The old lighthouse keeper climbed the stairs."
CELL = f'from attention_lens.notebook import attention_view\nview = attention_view("demo", {TEXT!r})\nview'
OUTPUT = ".jp-OutputArea-output"
results: list[tuple[str, bool]] = []


def check(what: str, ok: bool) -> bool:
    results.append((what, ok))
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    return ok


def jupyter(env: dict, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "jupyter"), *args], env=env, capture_output=True, text=True, timeout=600, **kw)


def write_notebook(path: Path) -> None:
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_lab(env: dict, root: Path, log: Path):
    """`jupyter lab` on a free port with a token, serving `root`; yields its base URL and token."""
    port, token = free_port(), secrets.token_hex(16)
    with open(log, "w") as out:
        server = subprocess.Popen([str(BIN / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                                   f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                                   "--allow-root", "--LabApp.extension_manager=readonly"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit(f"jupyter lab did not start:\n{log.read_text()[-2000:]}")
        yield url, token
    finally:
        server.terminate()
        server.wait(timeout=30)


def open_notebook(page, url: str, token: str, name: str) -> None:
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")  # reset: only this notebook open
    page.wait_for_selector(f"{OUTPUT} img, {OUTPUT} iframe", timeout=120_000)
    page.wait_for_timeout(1500)


def static_shows(page) -> dict:
    """What the output shows: its iframe (if any), and whether the picture and its line are on screen and on top."""
    return page.evaluate("""(sel) => {
        const out = document.querySelector(sel), img = out.querySelector('img'), frame = out.querySelector('iframe');
        const r = img?.getBoundingClientRect();
        const atCentre = r && document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
        return {iframe: !!frame, imgSize: r ? [Math.round(r.width), Math.round(r.height)] : null,
                natural: img ? [img.naturalWidth, img.naturalHeight] : null,
                imgOnTop: atCentre === img, frameOnTop: !!frame && atCentre === frame,
                line: out.querySelector('p')?.innerText ?? '', text: out.innerText.slice(0, 400)}; }""", OUTPUT)


def live_grid_tiles(page) -> int:
    """The live view's grid tiles, once its panes have drawn (0: no live view)."""
    try:
        page.wait_for_function("""(sel) => { const f = document.querySelector(sel + ' iframe');
            const g = f && [...f.contentDocument.querySelectorAll('iframe')].find(x => x.title === 'index.html');
            return g && g.contentDocument.querySelectorAll('.tile img, .tile canvas').length > 0; }""",
                               arg=OUTPUT, timeout=60_000)
    except Exception:  # playwright's TimeoutError: the live view never drew
        return 0
    return page.evaluate("""(sel) => [...document.querySelector(sel + ' iframe').contentDocument
        .querySelectorAll('iframe')].find(x => x.title === 'index.html').contentDocument
        .querySelectorAll('.tile').length""", OUTPUT)


def untrusted(page, shots: Path) -> None:
    seen = static_shows(page)
    page.locator(OUTPUT).first.screenshot(path=str(shots / "untrusted-output.png"))
    page.screenshot(path=str(shots / "untrusted-page.png"))
    check("untrusted: the sanitizer removed the iframe", not seen["iframe"])
    check(f"untrusted: the picture is on screen at its size {seen['imgSize']} (PNG {seen['natural']})",
          seen["imgOnTop"] and seen["imgSize"] == seen["natural"])
    check(f"untrusted: the line says how to see it live: {seen['line'][:90]!r}...",
          "static picture" in seen["line"] and "jupyter trust" in seen["line"])


def trusted(page, shots: Path, how: str) -> None:
    tiles = live_grid_tiles(page)
    seen = static_shows(page)
    page.locator(OUTPUT).first.screenshot(path=str(shots / f"trusted-{how}-output.png"))
    page.screenshot(path=str(shots / f"trusted-{how}-page.png"))
    check(f"trusted ({how}): the live view drew its grid ({tiles} tiles)", tiles == 8)
    check(f"trusted ({how}): the live view covers the picture", seen["frameOnTop"])


def trust_by_command(page) -> None:
    """JupyterLab's Trust Notebook command, from the command palette, and its dialog's Trust button."""
    page.locator(".jp-InputArea-prompt").first.click()
    page.keyboard.press("Control+Shift+C")
    page.keyboard.type("Trust Notebook")
    page.keyboard.press("Enter")
    page.locator(".jp-Dialog button", has_text=re.compile("^Trust$")).click()
    page.wait_for_selector(f"{OUTPUT} iframe", timeout=60_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=Path, default=Path("/tmp/jlab_shots"),
                        help="where the screenshots go (default: %(default)s)")
    args = parser.parse_args()
    if not (BIN / "jupyter-lab").exists() or not (BIN / "jupyter-nbconvert").exists():
        raise SystemExit(f"error: no jupyter-lab or jupyter-nbconvert next to {sys.executable}; run this script "
                         "with the venv's python (see its docstring)")
    from playwright.sync_api import sync_playwright
    args.shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(tmp / "config"),
               "JUPYTER_DATA_DIR": str(tmp / "data"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
               "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "ws")}
        print(jupyter(env, "--version").stdout.strip().replace("\n", "; "))
        write_notebook(tmp / "view.ipynb")
        proc = jupyter(env, "nbconvert", "--to", "notebook", "--execute", "view.ipynb", "--output", "executed.ipynb",
                       cwd=tmp)
        if not check("nbconvert --execute ran the cell", proc.returncode == 0):
            raise SystemExit(proc.stderr)
        outputs = json.loads((tmp / "executed.ipynb").read_text())["cells"][0]["outputs"]
        streams = [o.get("text", "") for o in outputs if o["output_type"] == "stream"]
        check(f"the cell printed nothing above the view ({len(streams)} streams: {''.join(streams)[:200]!r})",
              not streams)
        data = next(o["data"] for o in outputs if o["output_type"] == "execute_result")
        check(f"the output bundle holds {sorted(data)}", {"text/html", "image/png", "text/plain"} <= set(data))
        copy = json.loads((tmp / "executed.ipynb").read_text())
        copy["metadata"]["copy"] = "by-command"  # trust is by content: jupyter trust would trust a same copy too
        (tmp / "by-command.ipynb").write_text(json.dumps(copy))
        proc = jupyter(env, "nbconvert", "--to", "html", "executed.ipynb", cwd=tmp)
        exported = (tmp / "executed.html").read_text() if proc.returncode == 0 else ""
        picture = "".join(data["image/png"]) if isinstance(data["image/png"], list) else data["image/png"]
        check("nbconvert --to html: the export holds the picture (and the iframe over it)",
              f"data:image/png;base64,{picture.strip()}" in exported and "<iframe srcdoc=" in exported)
        (args.shots / "picture.png").write_bytes(base64.b64decode(picture))
        with jupyter_lab(env, tmp, tmp / "lab.log") as (url, token), sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            open_notebook(page, url, token, "executed.ipynb")
            untrusted(page, args.shots)
            proc = jupyter(env, "trust", "executed.ipynb", cwd=tmp)
            check(f"jupyter trust: {proc.stdout.strip() or proc.stderr.strip()}", proc.returncode == 0)
            open_notebook(page, url, token, "executed.ipynb")
            trusted(page, args.shots, "jupyter-trust")
            open_notebook(page, url, token, "by-command.ipynb")
            check("another untrusted copy: the picture", not static_shows(page)["iframe"])
            trust_by_command(page)
            trusted(page, args.shots, "command")
            page.goto((tmp / "executed.html").as_uri())
            tiles = live_grid_tiles(page)
            page.screenshot(path=str(args.shots / "exported-html.png"))
            check(f"nbconvert's HTML opened from disk: the live view drew its grid ({tiles} tiles)", tiles == 8)
            browser.close()
    failed = [what for what, ok in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed; screenshots in {args.shots}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
