"""Serve a data dir (patterns, figures and the site) over HTTP on this machine only.

    python serve.py                        # http://127.0.0.1:8000/ for attn_data/
    python serve.py --path runs/gpt2 --port 8080
    python serve.py --host 0.0.0.0         # expose to the network, deliberately

Standard library only. Never serves a file outside the data dir (no `..`, no symlinks
pointing out), never lists a directory, answers single byte ranges (`a-b`, `a-`, `-n`: the
site reads a pattern file's footer, then one head's chunk) and serves .svgz as gzip-encoded SVG.
Keeps up with hundreds of concurrent clients (bench/bench_serve.py).
"""
import argparse
import email.utils
import errno
import http.server
import os
import queue
import re
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_SAVE_PATH = Path("attn_data")  # same as lens.DEFAULT_SAVE_PATH; serve.py stays stdlib-only

RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})", re.ASCII | re.IGNORECASE)  # longer numbers: ignored

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".svgz": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".bin": "application/octet-stream",
    ".f32": "application/octet-stream",
}


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from `self.directory`, confined to it; quiet except for errors."""

    protocol_version = "HTTP/1.1"  # keep-alive: a grid of images reuses a few connections
    # Headers and body leave in one send (handle_one_request flushes) with no Nagle wait: without
    # these two, each response on a kept-alive connection stalls ~40 ms on the client's delayed ACK.
    wbufsize = 65536
    disable_nagle_algorithm = True
    timeout = 60  # seconds a kept-alive connection may sit idle (or a client stall) before it is closed
    remaining = 0  # bytes of the open file still to send

    def resolve(self, url_path: str) -> Path | None:
        """The real file or directory a URL path names, or None when missing or outside the root."""
        root = Path(self.directory)  # already resolved by make_server
        rel = unquote(url_path)
        if "\x00" in rel:
            return None
        try:
            path = (root / rel.lstrip("/")).resolve()
            return path if path.is_relative_to(root) and path.exists() else None
        except OSError:  # a name too long for the file system, say: nothing is there
            return None

    def send_head(self):
        url_path = urlsplit(self.path).path
        path = self.resolve(url_path)
        if path is not None and path.is_dir():
            if not url_path.endswith("/"):  # redirect so the page's relative URLs work
                self.send_response(301)
                self.send_header("Location", url_path + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            path = path / "index.html"
        if path is None or not path.is_file():
            self.send_error(404, "File not found")
            return None
        f = open(path, "rb")
        size = os.fstat(f.fileno()).st_size
        requested = self.byte_range(size)
        start, end = requested or (0, size)
        if requested and start >= end:
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        mtime = os.fstat(f.fileno()).st_mtime
        if requested is None and self.not_modified(mtime):
            f.close()
            self.send_response(304)
            self.end_headers()
            return None
        self.send_response(206 if requested else 200)
        self.send_header("Content-Type", CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"))
        if path.suffix.lower() == ".svgz":
            self.send_header("Content-Encoding", "gzip")
        if requested:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(mtime))
        self.send_header("Cache-Control", "no-cache")  # revalidate: re-rendered figures show up at once
        self.end_headers()
        f.seek(start)
        self.remaining = end - start
        return f

    def copyfile(self, source, outputfile):
        """Copy only the requested range of the file (send_head set `remaining`)."""
        remaining = self.remaining
        while remaining > 0 and (chunk := source.read(min(65536, remaining))):
            outputfile.write(chunk)
            remaining -= len(chunk)

    def byte_range(self, size: int) -> tuple[int, int] | None:
        """[start, end) that a single `Range: bytes=a-b`, `a-` or `-n` asks for; None: send the whole file.

        An unsatisfiable range comes back empty (start >= end: 416). Several ranges or a malformed
        header are ignored, as RFC 9110 allows.
        """
        match = RANGE.fullmatch(self.headers.get("Range", "").strip())
        if match is None or match.groups() == ("", ""):
            return None
        first, last = (int(g) if g else None for g in match.groups())
        if first is None:  # the last n bytes: how the site reads a pattern file's footer
            return (max(0, size - last) if last else size), size
        if last is None:
            return first, size
        return (first, min(size, last + 1)) if first <= last else None

    def not_modified(self, mtime: float) -> bool:
        since = self.headers.get("If-Modified-Since")
        if not since:
            return False
        try:
            return int(mtime) <= email.utils.parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError):
            return False

    def list_directory(self, path):
        self.send_error(404, "File not found")
        return None

    def log_message(self, format, *args):
        pass

    def log_error(self, format, *args):
        if args and args[0] == 404 or format.startswith("Request timed out"):  # missing images, idle clients
            return
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


class Server(http.server.HTTPServer):
    """One worker thread per open connection, reused (a new thread per connection cost about a third of
    the CPU under load), at most MAX_WORKERS of them: past that, a connection waits for a worker, which an
    idle one frees within Handler.timeout. Daemons, so Ctrl-C does not wait for idle keep-alive connections."""

    MAX_WORKERS = 128

    # The default backlog of 5 drops the SYNs of a burst of connections (a grid page opening, 200
    # clients): each dropped one waits 1 s, 3 s, ... for its retry. The kernel caps it at somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, *args, **kwargs):
        self.connections = queue.SimpleQueue()  # accepted, waiting for a worker; None stops one
        self.idle_workers = threading.Semaphore(0)
        self.n_workers = 0
        super().__init__(*args, **kwargs)  # last: it calls server_close when the port is taken

    def process_request(self, request, client_address):
        self.connections.put((request, client_address))
        if not self.idle_workers.acquire(blocking=False) and self.n_workers < self.MAX_WORKERS:  # all busy
            self.n_workers += 1  # (each kept-alive connection holds one)
            threading.Thread(target=self.work, daemon=True).start()

    def work(self) -> None:
        """Serve connections one after another until server_close; an unexpected error ends the worker."""
        while (item := self.connections.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except ConnectionError:
                pass  # the browser dropped the connection (page left, image scrolled away): not an error
            except Exception as e:  # one bad request must not take its worker with it
                sys.stderr.write(f"{client_address[0]} request failed: {type(e).__name__}: {e}\n")
            finally:
                self.shutdown_request(request)
            self.idle_workers.release()

    def server_close(self):
        super().server_close()
        for _ in range(self.n_workers):
            self.connections.put(None)


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8000) -> Server:
    """A threaded server for `root`, not yet serving; port 0 picks a free port."""
    directory = str(Path(root).resolve())
    return Server((host, port), lambda *a, **kw: Handler(*a, directory=directory, **kw))


def serve_in_thread(root: Path, host: str = "127.0.0.1", port: int = 0) -> tuple[Server, str]:
    """Start a server in a background thread (tests, benchmarks); returns it and its base URL."""
    server = make_server(root, host, port)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save-path", "--path", dest="path", type=Path, default=DEFAULT_SAVE_PATH,
                        help="data dir to serve (default: attn_data)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes it)")
    args = parser.parse_args()

    if not 0 <= args.port <= 65535:
        sys.exit(f"error: --port {args.port} is not a port number (0-65535; 0 picks a free one)")
    if not args.path.is_dir():
        sys.exit(f"error: data dir {args.path} does not exist (compute_activations.py writes it)")
    if not (args.path / "index.html").is_file():
        print(f"serve.py: warning: {args.path}/index.html missing; run `python build_index.py --save-path {args.path}`",
              file=sys.stderr)
    try:
        server = make_server(args.path, args.host, args.port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            sys.exit(f"error: port {args.port} on {args.host} is already in use; pick another with --port")
        sys.exit(f"error: cannot listen on {args.host}:{args.port}: {e.strerror}")
    host = "127.0.0.1" if args.host in ("", "0.0.0.0") else args.host
    print(f"Serving {args.path.resolve()} at http://{host}:{server.server_address[1]}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
