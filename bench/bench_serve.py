"""Benchmark serve.py under load: many concurrent loopback clients fetching a grid's files.

    python bench/bench_serve.py                    # 3,000 GETs from 200 clients, a new connection each
    python bench/bench_serve.py --keep-alive       # each client reuses one connection
    python bench/bench_serve.py --requests 10000 --clients 500
    python bench/bench_serve.py --serve /tmp/old_serve.py   # git show COMMIT:serve.py > /tmp/old_serve.py

Writes a data dir shaped like one GPT-2-small prompt (144 head images of 5.5 KiB, a 1.8 MB
patterns file, the indexes), starts `serve.py` on a free port in its own process, and fires the
GETs from one asyncio client (standard library only). A request is an image, an index, or a byte
range of the patterns file (its footer, read with an open-ended or a suffix range, or one head's
chunk). Prints requests/s, p50/p90/p99/max latency (connect to last byte), CPU time per request
of the server and of the client, and the errors: a failed connection (or no answer within 60 s), a
wrong status or a body that differs from the file's bytes.
"""
import argparse
import asyncio
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "m/prompts/0123456789abcdef"


def make_data(root: Path, n_layers: int = 12, n_heads: int = 12, seed: int = 0) -> dict[str, bytes]:
    """Write the data dir; return {url path: file bytes}."""
    rng = random.Random(seed)
    files = {"index.html": b"<!doctype html><title>grid</title>\n" * 40,
             "models.jsonl": b'{"model_dir": "m", "n_layers": 12, "n_heads": 12}\n',
             "m/prompts.jsonl": b'{"hash": "0123456789abcdef", "n_tokens": 141}\n' * 30,
             f"{PROMPT}/patterns.bin": rng.randbytes(1_800_000)}
    for layer in range(n_layers):
        for head in range(n_heads):
            files[f"{PROMPT}/L{layer}/H{head}/raw.svg"] = rng.randbytes(5632)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def make_requests(files: dict[str, bytes], n: int, seed: int = 0) -> list[tuple[str, str | None, int, bytes]]:
    """n requests as (path, Range header or None, expected status, expected body), mostly images."""
    rng = random.Random(seed)
    patterns = files[f"{PROMPT}/patterns.bin"]
    size = len(patterns)
    kinds = [(rel, None, 200, data) for rel, data in files.items() if rel.endswith(".svg")]
    kinds += [(rel, None, 200, files[rel]) for rel in ("index.html", "models.jsonl", "m/prompts.jsonl")]
    kinds += [(f"{PROMPT}/patterns.bin", "bytes=-2048", 206, patterns[-2048:]),
              (f"{PROMPT}/patterns.bin", f"bytes={size - 4096}-", 206, patterns[size - 4096:]),
              (f"{PROMPT}/patterns.bin", "bytes=100000-112499", 206, patterns[100000:112500])]
    return [rng.choice(kinds) for _ in range(n)]


def start_server(serve_py: Path, root: Path) -> tuple[subprocess.Popen, int]:
    """Run serve.py on a free port; return the process and its port."""
    proc = subprocess.Popen([sys.executable, str(serve_py), "--path", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, int(line.split("http://127.0.0.1:")[1].split("/")[0])


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
    return status, await reader.readexactly(length)


async def client(port: int, queue: list, keep_alive: bool, latencies: list[float], errors: list[str]) -> None:
    """Take requests off the shared queue until it is empty; record each one's latency or error."""
    conn = None
    while queue:
        path, range_, status, body = queue.pop()
        headers = f"GET /{path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        headers += f"Range: {range_}\r\n" if range_ else ""
        headers += "" if keep_alive else "Connection: close\r\n"
        t0 = time.perf_counter()
        try:
            conn = conn or await asyncio.open_connection("127.0.0.1", port)
            conn[1].write((headers + "\r\n").encode())
            got_status, got_body = await asyncio.wait_for(read_response(conn[0]), 60)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            errors.append(f"{path}: {type(e).__name__}: {e}")
            conn = None
            continue
        latencies.append(time.perf_counter() - t0)
        if (got_status, got_body) != (status, body):
            errors.append(f"{path} {range_}: status {got_status}, {len(got_body)} bytes")
        if not keep_alive:
            conn[1].close()
            conn = None
    if conn:
        conn[1].close()


async def load(port: int, requests: list, n_clients: int, keep_alive: bool) -> tuple[float, list, list]:
    """Fire every request from n_clients concurrent clients; return wall seconds, latencies, errors."""
    queue, latencies, errors = list(requests), [], []
    t0 = time.perf_counter()
    await asyncio.gather(*(client(port, queue, keep_alive, latencies, errors) for _ in range(n_clients)))
    return time.perf_counter() - t0, latencies, errors


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--keep-alive", action="store_true", help="each client reuses one connection")
    parser.add_argument("--serve", type=Path, default=ROOT / "serve.py",
                        help="the serve.py to run (e.g. an older commit's, to compare)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        files = make_data(Path(tmp))
        requests = make_requests(files, args.requests)
        proc, port = start_server(args.serve, Path(tmp))
        client_cpu = time.process_time()
        try:
            wall, latencies, errors = asyncio.run(load(port, requests, args.clients, args.keep_alive))
        finally:
            client_cpu = time.process_time() - client_cpu
            proc.terminate()
            proc.wait()
    server = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = server.ru_utime + server.ru_stime
    ms = sorted(1000 * t for t in latencies)
    mode = "one keep-alive connection per client" if args.keep_alive else "a new connection per request"
    print(f"{args.requests} GETs, {args.clients} concurrent clients, {mode}: {args.requests / wall:,.0f} requests/s")
    if ms:
        print(f"latency ms: p50 {percentile(ms, 0.5):.1f}  p90 {percentile(ms, 0.9):.1f}  "
              f"p99 {percentile(ms, 0.99):.1f}  max {ms[-1]:.1f}")
    print(f"CPU per request: server {1e6 * server_cpu / args.requests:.0f} us (its start included), "
          f"client {1e6 * client_cpu / args.requests:.0f} us")
    print(f"errors: {len(errors)}")
    for line in errors[:10]:
        print("  " + line)


if __name__ == "__main__":
    main()
