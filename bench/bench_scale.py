"""Benchmark the dataset axis: statistics of 100,000 short prompts at forward speed, then the site over them.

    python bench/bench_scale.py                          # 100,000 prompts through the demo model, CPU
    python bench/bench_scale.py --prompts 10000 --device cuda --batch-size 64

1. compute_activations with --patterns none (every built-in statistic on the device, the look-back and token
   totals, no pattern stored), timed whole (tokenizing, forward, statistics, writing the part), against the same
   tokenizing and TransformerLens forward stopped at the last pattern with hooks that keep nothing; then the
   examples pass (examples.py: the choice, and the chosen prompts run again) and the projections pass
   (projections.py: the sample, its prompts run again, every head's PCA). Target: >= 0.85x; each pass <= 10% of
   the statistics' time.
2. Bytes and files on disk per prompt.
3. build_index.py over them: the merged statistics tables, per-head summaries and top lists, the prompt index.
4. The site (headless chromium, served by serve.py): the grid's first page and a text search, the heads
   page with a head's panel, the head page of L1H2 (target: shown in < 1 s, < 1 MB fetched); the grid and heads
   page over a synthetic 1,000,000-prompt index (bench_site.py's).
5. compute_activations --top 5 for one statistic: how many prompts it stored, how long it took.
6. build_index.py again: a rerun with nothing new; one after 1,000 more prompts are computed (bytes read,
   files written); and the same data dir indexed from nothing, whose files must be the same bytes.
Run it alone on an idle machine (check `uptime`).
"""
import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import torch  # noqa: E402
from bench_activations import forward_seconds, padded_batches  # noqa: E402

from attention_lens import compute_activations as ca  # noqa: E402
from attention_lens import (
    examples,  # noqa: E402
    forward,  # noqa: E402
    projections,  # noqa: E402
)
from attention_lens.build_index import build_index  # noqa: E402
from attention_lens.compute_activations import top_prompts  # noqa: E402

WORDS = ("the of and to in is for that with as on by it be from this are was he she they we you not but "
         "cat sat mat dog ran river stone cloud north lamp seven house light water tree").split()


def short_texts(n: int, seed: int = 0) -> list[str]:
    """n distinct texts of 6-30 words; a third say their first half twice (so induction scores vary)."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 30))]
        if i % 3 == 0:
            words = words[:len(words) // 2] * 2
        texts.append(f"{i}. " + " ".join(words))
    return texts


def reference_seconds(model, texts: list[str], batch_size: int, device: str) -> float:
    """Tokenizing and the forward stopped at the last pattern, as compute_activations batches it, keeping nothing."""
    start = time.perf_counter()
    token_lists = [ca.tokenize(model.to_tokens, t) for t in texts]
    batches = padded_batches(token_lists, batch_size, model.tokenizer.pad_token_id or 0)
    tokenized = time.perf_counter() - start
    return tokenized + forward_seconds(model, [b.to(device) for b in batches], True)


def disk_use(path: Path) -> tuple[int, int, int]:
    """(files, bytes of their contents, bytes allocated on disk) under path."""
    files = [p for p in path.rglob("*") if p.is_file()]
    stats = [p.stat() for p in files]
    return len(files), sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def bench_compute(model, texts: list[str], data: Path, args) -> None:
    """The reference and compute_activations alternately, args.repeats times each (a shared machine's speed
    drifts); medians. The last run's data dir is kept for what follows."""
    ca.compute_activations(texts[:args.batch_size * 2], model, data.parent / "warm", model_name="demo",
                           batch_size=args.batch_size, patterns="none", progress=False)  # warm-up
    refs, ours = [], []
    for r in range(args.repeats):
        refs.append(reference_seconds(model, texts, args.batch_size, args.device))
        out = data if r == args.repeats - 1 else data.parent / f"run{r}"
        start = time.perf_counter()
        s = ca.compute_activations(texts, model, out, model_name="demo", batch_size=args.batch_size,
                                   patterns="none", progress=False)
        ours.append(time.perf_counter() - start)
        if out != data:
            shutil.rmtree(out)
    ref, mine, n = statistics.median(refs), statistics.median(ours), len(texts)
    print(f"compute, --patterns none: {n} prompts, {s['tokens']:,} tokens ({s['tokens'] / n:.1f} per prompt), "
          f"batch {args.batch_size}, device {args.device}, {torch.get_num_threads()} torch threads, "
          f"medians of {args.repeats} alternating runs")
    print(f"  tokenize + forward stopped at the last pattern, nothing kept (reference): {ref:.1f} s, "
          f"{n / ref:,.0f} prompts/s (runs: {', '.join(f'{x:.1f}' for x in refs)})")
    print(f"  compute_activations, {len(forward.DEVICE_STATISTICS)} statistics of every head on the device, look-back "
          f"and token totals, part written: {mine:.1f} s, "
          f"{n / mine:,.0f} prompts/s (runs: {', '.join(f'{x:.1f}' for x in ours)}) = {ref / mine:.2f}x the "
          f"reference's throughput (target >= 0.85x)")
    pairs = sorted(r / o for r, o in zip(refs, ours))
    print(f"  run by run (each reference next to the run after it): {', '.join(f'{x:.2f}x' for x in pairs)}")
    start = time.perf_counter()
    e = examples.compute_examples(model, data, "demo", examples.Sampling(), args.batch_size, progress=False)
    seconds = time.perf_counter() - start
    print(f"  examples (every head's 5 intervals, 22 examples each, sparse attention): {seconds:.1f} s, "
          f"{e['prompts']} prompts run again; with them, {ref / (mine + seconds):.2f}x the reference's throughput")
    start = time.perf_counter()
    pj = projections.compute_projections(model, data, "demo", projections.Sampling(), args.batch_size, progress=False)
    took = time.perf_counter() - start
    print(f"  projections (every head's query, key and output PCA at {pj['points']} positions): {took:.1f} s, "
          f"{pj['prompts']} prompts run again = {100 * took / mine:.1f}% of the statistics' time (target <= 10%)")


def bench_build_index(data: Path, n: int) -> None:
    start = time.perf_counter()
    build_index(data)
    seconds = time.perf_counter() - start
    files, size, allocated = disk_use(data / "demo")
    print(f"build_index.py: {seconds:.1f} s for {n} prompts (target <= 60 s)")
    print(f"disk: {files} files for {n} prompts ({files / n:.4f} per prompt), {size / n:,.0f} bytes per prompt "
          f"({allocated / n:,.0f} allocated), statistics included")


def read_bytes() -> int:
    """Bytes this process has read through read calls (memory-mapped tables are not counted)."""
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("rchar"))
               .split()[1])


def index_files(data: Path) -> dict[str, tuple[bytes, int]]:
    """What build_index.py wrote for the model (its own state files aside): {path: (bytes, mtime)}."""
    skip = {"state.json", "prompt_json_cache.jsonl"}
    return {str(p.relative_to(data)): (p.read_bytes(), p.stat().st_mtime_ns) for p in (data / "demo").rglob("*")
            if p.is_file() and p.name not in skip and not {"parts", "prompts"} & set(p.relative_to(data).parts)}


def timed_build(data: Path) -> tuple[float, int]:
    start, read = time.perf_counter(), read_bytes()
    build_index(data)
    return time.perf_counter() - start, read_bytes() - read


def bench_rerun(model, data: Path, args) -> None:
    seconds, read = timed_build(data)
    print(f"build_index.py rerun, nothing new: {seconds:.2f} s, {read / 1e6:.1f} MB read")
    before = index_files(data)
    added = short_texts(args.added, seed=1)
    ca.compute_activations(added, model, data, model_name="demo", batch_size=args.batch_size, patterns="none",
                           progress=False)
    seconds, read = timed_build(data)
    after = index_files(data)
    changed = [p for p in after if before.get(p) != after[p]]
    print(f"build_index.py rerun after {args.added} more prompts: {seconds:.2f} s, {read / 1e6:.1f} MB read, "
          f"{len(changed)} of {len(after)} files written ({sum(len(after[p][0]) for p in changed) / 1e6:.1f} MB)")
    for private in (data / "demo" / "index" / "state.json", data / "demo" / "index" / "prompt_json_cache.jsonl"):
        private.unlink(missing_ok=True)
    seconds, read = timed_build(data)
    same = {p: b for p, (b, _) in index_files(data).items()} == {p: b for p, (b, _) in after.items()}
    print(f"build_index.py from nothing over the same {args.prompts + args.added} prompts: {seconds:.2f} s, "
          f"{read / 1e6:.1f} MB read; its files are {'the same bytes' if same else 'DIFFERENT'} as the rerun's")


def bench_top(model, data: Path, args) -> None:
    start = time.perf_counter()
    prompts, _ = top_prompts(data, "demo", 5, "induction_head")
    s = ca.compute_activations(prompts, model, data, model_name="demo", batch_size=args.batch_size, progress=False)
    build_index(data)
    seconds = time.perf_counter() - start
    print(f"--top 5 --stat induction_head: {s['stored']} prompts stored (each head's 5 highest and 5 lowest of "
          f"{args.prompts}), {seconds:.1f} s with build_index.py")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of the reference and ours (default: 3)")
    p.add_argument("--added", type=int, default=1000, help="prompts added before the rerun (default: 1000)")
    p.add_argument("--no-site", action="store_true", help="skip the browser measurements (4)")
    p.add_argument("--million", type=int, default=1_000_000, help="size of the synthetic index (default: 1000000)")
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    model = forward.load_model(str(ROOT / "demo" / "model"), args.device, "float32")
    print(f"model: demo ({model.cfg.n_layers} layers x {model.cfg.n_heads} heads, d_model {model.cfg.d_model})")
    texts = short_texts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        bench_compute(model, texts, data, args)
        bench_build_index(data, args.prompts)
        if not args.no_site:
            from bench_site import bench_scale_site
            bench_scale_site(data, "demo", Path(tmp) / "million", args.million)
        bench_top(model, data, args)
        bench_rerun(model, data, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
