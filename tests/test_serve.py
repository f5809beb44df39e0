"""serve.py: what it serves, what it refuses, and how it starts and stops."""
import gzip
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import served

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root(tmp_path) -> Path:
    """A data dir with one file of each served kind, a directory without index.html, and a secret outside."""
    data = tmp_path / "data"
    (data / "m" / "prompts" / "abc" / "L0" / "H0").mkdir(parents=True)
    (data / "index.html").write_text("<!doctype html><title>grid</title>")
    (data / "grid.js").write_text("export const x = 1;\n")
    (data / "style.css").write_text("body {}\n")
    (data / "models.jsonl").write_text('{"model_dir": "m"}\n')
    (data / "m" / "model_cfg.json").write_text('{"n_layers": 1}')
    head = data / "m" / "prompts" / "abc" / "L0" / "H0"
    (head / "raw.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>')
    (head / "big.svgz").write_bytes(gzip.compress(b'<svg xmlns="http://www.w3.org/2000/svg"/>'))
    (head / "raw.error.txt").write_text("ValueError: boom")
    (data / "m" / "prompts" / "abc" / "patterns.bin").write_bytes(bytes(range(256)))
    (tmp_path / "secret.txt").write_text("top secret")
    (data / "escape").symlink_to(tmp_path / "secret.txt")
    (data / "escape_dir").symlink_to(tmp_path)
    return data


def get(url: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A raw GET (no client-side path normalisation, so `..` reaches the server as typed)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


@pytest.mark.parametrize("path, content_type", [
    ("/index.html", "text/html; charset=utf-8"),
    ("/grid.js", "text/javascript; charset=utf-8"),
    ("/style.css", "text/css; charset=utf-8"),
    ("/models.jsonl", "application/x-ndjson; charset=utf-8"),
    ("/m/model_cfg.json", "application/json"),
    ("/m/prompts/abc/L0/H0/raw.svg", "image/svg+xml"),
    ("/m/prompts/abc/L0/H0/raw.error.txt", "text/plain; charset=utf-8"),
    ("/m/prompts/abc/patterns.bin", "application/octet-stream"),
])
def test_content_types(root, path, content_type):
    with served(root) as url:
        status, headers, body = get(url, path)
    assert status == 200
    assert headers["content-type"] == content_type
    assert body == (root / path.lstrip("/")).read_bytes()


def test_svgz_is_gzip_encoded_svg(root):
    with served(root) as url:
        status, headers, body = get(url, "/m/prompts/abc/L0/H0/big.svgz")
    assert status == 200
    assert headers["content-type"] == "image/svg+xml"
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(body).startswith(b"<svg")


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/m/../../secret.txt", "/%2e%2e/secret.txt", "/m/%2E%2E/%2e%2e/secret.txt",
    "/..%2fsecret.txt", "/escape", "/escape_dir/secret.txt", "//etc/passwd", "/%00", "/nope.json",
])
def test_nothing_outside_the_data_dir(root, path):
    with served(root) as url:
        status, _, body = get(url, path)
    assert status == 404
    assert b"top secret" not in body and b"root:" not in body


def test_no_directory_listing(root):
    with served(root) as url:
        status, _, body = get(url, "/m/prompts/")
        assert status == 404 and b"abc" not in body
        status, headers, _ = get(url, "/m")  # a directory without its slash: redirected, then refused
        assert status == 301 and headers["location"] == "/m/"
        status, _, body = get(url, "/")
        assert status == 200 and b"<title>grid</title>" in body


def test_byte_ranges(root):
    """The single view reads one head's chunk of patterns.bin with a Range request."""
    with served(root) as url:
        status, headers, body = get(url, "/m/prompts/abc/patterns.bin", {"Range": "bytes=10-19"})
        assert status == 206 and body == bytes(range(10, 20))
        assert headers["content-range"] == "bytes 10-19/256"
        status, _, body = get(url, "/m/prompts/abc/patterns.bin", {"Range": "bytes=250-"})
        assert status == 206 and body == bytes(range(250, 256))
        status, _, body = get(url, "/m/prompts/abc/patterns.bin", {"Range": "bytes=-4"})
        assert status == 206 and body == bytes(range(252, 256))
        status, headers, _ = get(url, "/m/prompts/abc/patterns.bin", {"Range": "bytes=300-400"})
        assert status == 416 and headers["content-range"] == "bytes */256"


def test_not_modified(root):
    with served(root) as url:
        _, headers, _ = get(url, "/grid.js")
        status, _, body = get(url, "/grid.js", {"If-Modified-Since": headers["last-modified"]})
    assert status == 304 and body == b""


def run_serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "serve.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_serves_localhost_and_stops_cleanly_on_ctrl_c(root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_serve("--path", str(root), "--port", str(port))
    line = proc.stdout.readline()
    assert f"http://127.0.0.1:{port}/" in line
    status, _, body = get(f"http://127.0.0.1:{port}/", "/index.html")
    assert status == 200 and b"grid" in body
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err


def test_cli_port_in_use_is_one_clear_line(root):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_serve("--path", str(root), "--port", str(port))
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert err.strip() == f"error: port {port} on 127.0.0.1 is already in use; pick another with --port"


def test_cli_missing_data_dir(tmp_path):
    proc = run_serve("--save-path", str(tmp_path / "nope"))
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1 and "does not exist" in err and "Traceback" not in err


def test_starts_without_numpy_or_torch():
    """serve.py is standard library only (fast start, nothing to install on a login node)."""
    code = "import sys, serve; assert not {'numpy', 'torch'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
