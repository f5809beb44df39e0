"""Browser tests' helper: serve a data dir with serve.py, drive Debian's chromium headless, offline.

    with browser_session(data_dir) as s:
        s.page.goto(s.url + "index.html")
        ...
        assert_only_local(s)

Every request the page makes is recorded; requests to any other host are aborted (the
network is off) and make `assert_only_local` fail. Page errors and console errors (other than
failed loads) are kept. `render(data_dir)` runs render_figures.py with the tests' own figure
plug-in (TEST_FIGURES), so the tests never depend on which figures are built in.
"""
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from attention_lens import serve, storage

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "screenshots"


@dataclass
class Session:
    page: object  # playwright Page
    url: str  # the server's base URL, ending in "/"
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # uncaught page errors and console.error lines
    missing: list[str] = field(default_factory=list)  # requests answered 404


@contextmanager
def served(data_dir: Path):
    """Serve `data_dir` on a free localhost port in a thread; yields the base URL."""
    server, url = serve.serve_in_thread(Path(data_dir))
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def browser_session(data_dir: Path, dark: bool = False, width: int = 1280, height: int = 900):
    """A served data dir and a fresh chromium page on it, with every request recorded. A file instead of a dir (a
    self-contained view, standalone.py) is opened from disk with no server: only the file itself may load."""
    from playwright.sync_api import sync_playwright

    own_file = nullcontext(Path(data_dir).resolve().as_uri()) if Path(data_dir).is_file() else served(data_dir)
    with own_file as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(color_scheme="dark" if dark else "light",
                                      viewport={"width": width, "height": height})
        page = context.new_page()
        session = Session(page=page, url=url)
        context.on("request", lambda r: session.requests.append(r.url))
        context.on("response", lambda r: r.status == 404 and session.missing.append(r.url))
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                      else route.abort("internetdisconnected"))
        page.on("pageerror", lambda e: session.errors.append(f"pageerror: {e}"))
        # a 404 is expected (missing images, optional stats files): only real errors count
        page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                and session.errors.append(f"console: {m.text}"))
        try:
            yield session
        finally:
            context.close()
            browser.close()


def assert_only_local(session: Session) -> None:
    """Every request went to our server (zero requests to any other host) and some were made."""
    assert session.requests, "the page made no requests at all"
    foreign = [u for u in session.requests if not u.startswith(session.url) and not u.startswith(("data:", "blob:"))]
    assert not foreign, f"requests to other hosts: {foreign[:5]}"


def screenshot(session: Session, name: str, full_page: bool = False) -> Path:
    """Save a screenshot into screenshots/ (gitignored; the README points there)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    session.page.screenshot(path=str(path), full_page=full_page)
    return path


# The site tests' own figures and statistics, a plug-in file as a user writes one: the tests do not
# depend on which figures are built in, and their oracles compute the same values from storage.Patterns.
TEST_FIGURES = '''"""Figures and statistics for the site's tests."""
from attention_lens import figure, statistic


@figure
def raw(attn):
    "the pattern"
    return attn


@figure(cmap="magma", normalize=True)
def sharp(attn):
    "attention squared, row-normalised"
    x = attn ** 2
    return x / x.sum(-1, keepdims=True)


@statistic
def bos(attn):
    "mean attention to the first token"
    return float(attn[:, 0].mean())


@statistic
def long_only(attn):
    "the last query's largest weight, on prompts of more than 10 tokens (undefined on shorter ones)"
    return float(attn[-1].max()) if len(attn) > 10 else float("nan")


@statistic
def tokens(attn):
    "the prompt's length: the same for every head, so all heads tie"
    return float(len(attn))
'''


def render(save_path: Path, figures: str = "*") -> None:
    """Run render_figures.py (which runs build_index.py) on a data dir with the tests' figures, as a user would."""
    figures_dir = Path(save_path).parent / "site_test_figures"
    figures_dir.mkdir(exist_ok=True)
    (figures_dir / "site_test.py").write_text(TEST_FIGURES)
    proc = subprocess.run([sys.executable, str(ROOT / "render_figures.py"), "--save-path", str(save_path),
                           "--figures-dir", str(figures_dir), "--figures", figures, "--jobs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def bos(patterns: "storage.Patterns", layer: int, head: int) -> float:
    """The tests' `bos` statistic computed from the stored pattern: the oracle for what the pages show."""
    return float(patterns.head(layer, head)[:, 0].mean())
