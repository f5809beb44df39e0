"""serve.py: what it serves, what it refuses, and how it starts and stops."""
import gzip
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from browser import served
from fake_data import fake_patterns

from attention_lens import serve, storage

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


def get(url: str, path: str, headers: dict | None = None, timeout: float = 5) -> tuple[int, dict, bytes]:
    """A raw GET (no client-side path normalisation, so `..` reaches the server as typed)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
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


PATTERNS = "/m/prompts/abc/patterns.bin"  # the fixture's 256 bytes 0..255


@pytest.mark.parametrize("range_, start, end", [
    ("bytes=10-19", 10, 20), ("bytes=250-", 250, 256), ("bytes=0-", 0, 256), ("bytes=-4", 252, 256),
    ("bytes=-1000", 0, 256), ("bytes=250-1000", 250, 256), ("bytes=255-255", 255, 256), ("Bytes=0-0", 0, 1),
])
def test_byte_ranges(root, range_, start, end):
    """Bounded, open-ended (`a-`) and suffix (`-n`) ranges: 206 with the slice and its Content-Range."""
    with served(root) as url:
        status, headers, body = get(url, PATTERNS, {"Range": range_})
    assert status == 206 and body == bytes(range(256))[start:end]
    assert headers["content-range"] == f"bytes {start}-{end - 1}/256"
    assert headers["content-length"] == str(end - start)


@pytest.mark.parametrize("range_", ["bytes=256-", "bytes=300-400", "bytes=-0", "bytes=256-300"])
def test_unsatisfiable_range_is_416(root, range_):
    with served(root) as url:
        status, headers, body = get(url, PATTERNS, {"Range": range_})
    assert status == 416 and headers["content-range"] == "bytes */256" and body == b""


@pytest.mark.parametrize("range_", ["bytes=5-2", "bytes=0-1,4-5", "items=0-1", "bytes=-", "bytes=a-b", "bytes=--5",
                                    "bytes=1_0-20", "bytes=" + "9" * 30 + "-"])
def test_malformed_or_multiple_ranges_get_the_whole_file(root, range_):
    """RFC 9110 lets a server ignore a Range it does not take: 200 and every byte."""
    with served(root) as url:
        status, headers, body = get(url, PATTERNS, {"Range": range_})
    assert status == 200 and body == bytes(range(256)) and "content-range" not in headers


def test_ranges_of_an_empty_file_are_416(root):
    (root / "empty.bin").write_bytes(b"")
    with served(root) as url:
        for range_ in ("bytes=0-", "bytes=-10", "bytes=0-0"):
            status, headers, _ = get(url, "/empty.bin", {"Range": range_})
            assert status == 416 and headers["content-range"] == "bytes */0"
        assert get(url, "/empty.bin")[0] == 200


def test_pattern_file_read_with_ranges_as_the_site_does(root):
    """Format 2: header (magic, footer offset), the footer (open-ended or suffix range), one stored head's chunk."""
    patterns = fake_patterns(2, 3, 9, np.random.default_rng(0))
    data = storage.encode_patterns(patterns, heads=[(0, 1), (1, 2)])
    (root / "m" / "prompts" / "abc" / "patterns.bin").write_bytes(data)
    with served(root) as url:
        _, _, head = get(url, PATTERNS, {"Range": "bytes=0-15"})
        assert head[:8] == b"ATTNPAT2"
        footer_at = struct.unpack("<Q", head[8:])[0]
        status, headers, footer = get(url, PATTERNS, {"Range": f"bytes={footer_at}-"})
        assert status == 206 and headers["content-range"] == f"bytes {footer_at}-{len(data) - 1}/{len(data)}"
        assert get(url, PATTERNS, {"Range": f"bytes=-{len(data) - footer_at}"})[2] == footer
        info = json.loads(footer)
        assert info["format"] == 2 and info["heads"] == [1, 5]
        start, size = info["chunks"][1]
        _, _, chunk = get(url, PATTERNS, {"Range": f"bytes={start}-{start + size - 1}"})
    assert chunk == data[start:start + size]
    assert len(zlib.decompress(chunk)) == 2 * 9 * 10 // 2  # uint16, lower triangle of 9 tokens


def test_a_burst_of_connections_waits_in_the_listen_queue(root):
    """200 clients connecting before the server accepts any are all queued (a backlog of 5 drops SYNs), then served."""
    server = serve.make_server(root, port=0)  # listening, not accepting yet
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    socks = []
    try:
        for _ in range(200):
            socks.append(socket.create_connection(server.server_address, timeout=10))
        serving.start()
        for s in socks:
            s.sendall(b"GET /grid.js HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        for s in socks:
            resp = http.client.HTTPResponse(s)
            resp.begin()
            assert resp.status == 200 and resp.read() == b"export const x = 1;\n"
    finally:
        if serving.is_alive():
            server.shutdown()
        server.server_close()
        for s in socks:
            s.close()


def test_200_concurrent_clients_all_get_their_bytes(root):
    """A bounded load: 600 GETs from 200 clients at once, each answered right (timings: bench/bench_serve.py)."""
    data = (root / PATTERNS.lstrip("/")).read_bytes()
    wanted = [("/grid.js", {}, 200, (root / "grid.js").read_bytes()),
              ("/m/prompts/abc/L0/H0/raw.svg", {}, 200, (root / "m/prompts/abc/L0/H0/raw.svg").read_bytes()),
              (PATTERNS, {"Range": "bytes=-16"}, 206, data[-16:]),
              (PATTERNS, {"Range": "bytes=100-"}, 206, data[100:])]
    requests = [wanted[i % len(wanted)] for i in range(600)]

    def fetch(request) -> bool:
        path, headers, status, body = request
        got_status, _, got_body = get(url, path, headers, timeout=30)
        return (got_status, got_body) == (status, body)

    with served(root) as url, ThreadPoolExecutor(max_workers=200) as pool:
        answers = list(pool.map(fetch, requests, timeout=120))
    assert len(answers) == 600 and all(answers)


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


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_cli_bad_port_is_one_clear_line(root, port):
    proc = run_serve("--path", str(root), "--port", port)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert err.strip() == f"error: --port {port} is not a port number (0-65535; 0 picks a free one)"


def test_cli_port_not_a_number(root):
    proc = run_serve("--path", str(root), "--port", "http")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith("serve.py: error: argument --port")
    assert "Traceback" not in err


def test_cli_missing_data_dir(tmp_path):
    proc = run_serve("--save-path", str(tmp_path / "nope"))
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1 and "does not exist" in err and "Traceback" not in err


def test_starts_without_numpy_or_torch():
    """serve.py is standard library only (fast start, nothing to install on a login node)."""
    code = "import sys, serve; assert not {'numpy', 'torch'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_an_over_long_path_is_an_error_status_and_the_server_goes_on(root):
    with served(root) as url:
        status, _, _ = get(url, "/" + "a" * 300 + "/index.html")
        assert status == 404
        status, _, _ = get(url, "/" + "b" * 5000)
        assert status in (404, 414)
        assert get(url, "/index.html")[0] == 200


def test_idle_connections_are_closed_and_workers_are_bounded(root, monkeypatch):
    """A client that opens a connection and sends nothing is dropped after Handler.timeout; at most MAX_WORKERS
    threads serve, and a connection past them is served once a worker is free."""
    monkeypatch.setattr(serve.Handler, "timeout", 0.3)
    monkeypatch.setattr(serve.Server, "MAX_WORKERS", 3)
    server, url = serve.serve_in_thread(root)
    try:
        host, port = url.split("//")[1].rstrip("/").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(5)]
        for s in idle:  # each is closed by the server (recv returns b"", well before the client's 10 s)
            assert s.recv(1) == b""
            s.close()
        assert server.n_workers == 3
        assert get(url, "/index.html")[0] == 200  # served by a worker the idle ones freed
        assert server.n_workers == 3
    finally:
        server.shutdown()
        server.server_close()
