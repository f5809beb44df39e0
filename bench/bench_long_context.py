"""Statistics at any context length: peak memory and time of every head's statistics for one long prompt.

    python bench/bench_long_context.py                                # memory at 2k, 8k, 32k; speed at 512, 2k, 8k
    python bench/bench_long_context.py --memory 2048,8192 --speed 512,2048 --device cuda
    python bench/bench_long_context.py --speed 2048 --memory "" --profile      # and where a block's time goes

Builds offline a Llama-shaped random checkpoint with a 7B's heads (32 query heads, 8 key-value heads, grouped-query
attention), a small body (2 layers, hidden 512, head_dim 64) and a context of the longest prompt asked. Each
point runs in its own process, one prompt of random tokens, batch 1, after a short warm-up:

- blocks: the statistics-only path (forward.BlockStats through forward.block_attention); in the memory table the
  whole of compute_activations(patterns="none"), prompt to part, the look-back and token totals included;
- eager: today's statistics from whole patterns (forward.forward_patterns + forward.DeviceStats), only where its
  estimate (forward.eager_bytes) fits in free memory;
- sdpa: the Hugging Face model's plain forward with PyTorch's scaled_dot_product_attention and no hooks;
- blocks, no statistics: the same blocks with every statistic left out (the cost of computing attention a block of
  rows at a time).

Memory is the peak RSS (GPU: peak allocated) over the RSS after the warm-up, with glibc's mmap threshold fixed
(MALLOC_MMAP_THRESHOLD_=131072; --default-malloc leaves it, and its heap's fragments in); the fit over the blocks'
points is printed as memory = model + c + a * n, with the quadratic term a three-point fit leaves.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# glibc's malloc raises its mmap threshold as large blocks are freed, then keeps blocks up to 32 MB on a heap that
# fragments: a long prompt's peak RSS came out up to 2x higher, and different from run to run; a fixed threshold
# measures what the computation holds (--default-malloc measures without it)
ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
SHAPE = {"layers": 2, "hidden": 512, "heads": 32, "kv_heads": 8, "head_dim": 64}  # --layers sets the first


def make_checkpoint(path: Path, n_ctx: int) -> Path:
    import torch
    from tiny_model import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    tokenizer = train_tokenizer(512)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=SHAPE["hidden"], intermediate_size=2 * SHAPE["hidden"],
                         num_hidden_layers=SHAPE["layers"], num_attention_heads=SHAPE["heads"],
                         num_key_value_heads=SHAPE["kv_heads"], head_dim=SHAPE["head_dim"],
                         max_position_embeddings=n_ctx, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def rss() -> int:
    import resource
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(mode: str, n: int, ckpt: str, device: str, profile: bool) -> dict:
    """One point in this process: load, warm up on 16 tokens, then the pass of `mode` on n random tokens."""
    import numpy as np
    import torch

    from attention_lens import forward
    model = forward.load_model(ckpt, device, "float32")
    layers, heads = model.cfg.n_layers, model.cfg.n_heads
    tokens = np.random.default_rng(0).integers(1, model.cfg.d_vocab, (1, n))
    if mode == "sdpa":
        from transformers import AutoModelForCausalLM
        del model
        hf = AutoModelForCausalLM.from_pretrained(ckpt, attn_implementation="sdpa").to(device).eval()
        run = lambda t: hf.model(torch.from_numpy(t).to(device))  # noqa: E731  (the body: no unembedding)
    elif mode == "eager":
        def run(t):
            stats = forward.DeviceStats(np.array([t.shape[1]]), t, device, layers, heads)
            forward.forward_patterns(model, torch.from_numpy(t).to(device), stats.add_layer, layers - 1)
            return stats.values()
    elif mode == "run":
        from attention_lens.compute_activations import compute_activations
        text = model.tokenizer.decode(np.random.default_rng(0).integers(1, model.cfg.d_vocab, 2 * n).tolist())

        def run(t):
            out = Path(tempfile.mkdtemp())
            s = compute_activations([text], model, out, patterns="none", progress=False, max_tokens=t.shape[1])
            assert s["tokens"] == t.shape[1], s
    else:
        blocks = forward.block_attention_of(model)

        def run(t):
            stats = forward.BlockStats(np.array([t.shape[1]]), t, device, layers, heads)
            on_block = stats.add_block if mode == "blocks" else lambda *a: None
            assert blocks.run(torch.from_numpy(t).to(device), None, layers - 1, on_block), blocks.problem
            return stats.values()
    with torch.inference_mode():
        run(tokens[:, :16])
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gpu_before = torch.cuda.memory_allocated() if device == "cuda" else 0
    before, start = rss(), time.perf_counter()
    with torch.inference_mode():
        if profile:
            from torch.profiler import profile as profiler
            with profiler() as prof:
                run(tokens)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14), file=sys.stderr)
        else:
            run(tokens)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() - gpu_before if device == "cuda" else 0
    return {"mode": mode, "n": n, "seconds": seconds, "before": before, "peak": peak_rss(), "gpu": gpu}


def run_point(mode: str, n: int, ckpt: Path, device: str, profile: bool = False) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(n), str(ckpt), "--device", device]
                         + (["--profile"] if profile else []), capture_output=True, text=True, env=ENV)
    if out.returncode != 0:
        sys.exit(f"{mode} at {n} tokens failed:\n{out.stderr[-3000:]}")
    if profile:
        print(out.stderr[out.stderr.index("---"):])
    return json.loads(out.stdout.splitlines()[-1])


def grown(r: dict) -> float:
    """Bytes the pass took beyond what was there before it: host RSS, or on a GPU its allocations."""
    return r["gpu"] if r["gpu"] else r["peak"] - r["before"]


def eager_fits(n: int, device: str) -> bool:
    from attention_lens import forward
    free = forward.free_memory(device)
    return free is None or forward.eager_bytes(1, SHAPE["heads"], n) < 0.8 * free


def memory_table(lengths: list[int], ckpt: Path, device: str) -> None:
    import numpy as np
    print(f"\nmemory ({device}), grown over the RSS after loading and a warm-up (GPU: allocated): run is "
          "compute_activations(patterns='none'), sdpa the model's plain forward (its own activations), eager today's "
          "statistics from whole patterns")
    print(f"{'tokens':>7} {'model+torch':>12} {'run':>9} {'sdpa':>9} {'run-sdpa':>9} {'eager':>10} {'run s':>7} "
          f"{'eager s':>8}")
    points = []
    for n in lengths:
        r = {mode: run_point(mode, n, ckpt, device) for mode in ("run", "sdpa")}
        r["eager"] = run_point("eager", n, ckpt, device) if eager_fits(n, device) else None
        mib = {mode: grown(x) / 2**20 for mode, x in r.items() if x}
        eager = f"{mib['eager']:>6.0f} MiB" if r["eager"] else f"{'no fit':>10}"
        eager_s = f"{r['eager']['seconds']:>8.1f}" if r["eager"] else ""
        print(f"{n:>7} {r['run']['before'] / 2**20:>8.0f} MiB {mib['run']:>5.0f} MiB {mib['sdpa']:>5.0f} MiB "
              f"{mib['run'] - mib['sdpa']:>5.0f} MiB {eager} {r['run']['seconds']:>7.1f} {eager_s}", flush=True)
        points.append((n, grown(r["run"]), r["run"]["before"]))
    if len(points) >= 2:
        n, g, before = (np.array(x, float) for x in zip(*points))
        a, c = np.polyfit(n, g, 1)
        print(f"fit over the run's points: memory = model ({before.mean() / 2**20:.0f} MiB) + {c / 2**20:.0f} MiB "
              f"+ {a / 1024:.2f} KiB x n")
        if len(points) >= 3:
            q = np.polyfit(n, g, 2)
            print(f"a quadratic fit's n^2 term at {int(n.max()):,} tokens: {q[0] * n.max() ** 2 / 2**20:+.0f} MiB "
                  f"(eager attention's weights alone: {SHAPE['heads'] * 4 * n.max() ** 2 / 2**30:.0f} GiB a layer)")


def speed_table(lengths: list[int], ckpt: Path, device: str) -> None:
    print(f"\nspeed ({device}): seconds of one pass over every layer, batch 1")
    print(f"{'tokens':>7} {'sdpa':>8} {'blocks':>8} {'no stats':>9} {'eager':>8} {'blocks/sdpa':>12} "
          f"{'blocks/eager':>13}")
    for n in lengths:
        t = {mode: run_point(mode, n, ckpt, device)["seconds"] for mode in ("sdpa", "blocks", "nostats")}
        t["eager"] = run_point("eager", n, ckpt, device)["seconds"] if eager_fits(n, device) else float("nan")
        print(f"{n:>7} {t['sdpa']:>8.2f} {t['blocks']:>8.2f} {t['nostats']:>9.2f} {t['eager']:>8.2f} "
              f"{t['blocks'] / t['sdpa']:>11.2f}x {t['blocks'] / t['eager']:>12.2f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--memory", default="2048,8192,32768", help="prompt lengths of the memory table ('' for none)")
    p.add_argument("--speed", default="512,2048,8192", help="prompt lengths of the speed table ('' for none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=SHAPE["layers"], help="the model's layers (default: %(default)s)")
    p.add_argument("--profile", action="store_true", help="also print where the blocks' time goes (torch.profiler)")
    p.add_argument("--default-malloc", action="store_true", help="children without MALLOC_MMAP_THRESHOLD_")
    p.add_argument("--child", nargs=3, metavar=("MODE", "N", "CKPT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, n, ckpt = args.child
        print(json.dumps(child(mode, int(n), ckpt, args.device, args.profile)))
        return
    SHAPE["layers"] = args.layers
    if args.default_malloc:
        ENV.pop("MALLOC_MMAP_THRESHOLD_")
    print(f"children's MALLOC_MMAP_THRESHOLD_: {ENV.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    memory = [int(x) for x in args.memory.split(",") if x]
    speed = [int(x) for x in args.speed.split(",") if x]
    print(f"{SHAPE}; {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "llama", max(memory + speed))
        if speed:
            speed_table(speed, ckpt, args.device)
        if args.profile:
            run_point("blocks", max(speed or memory), ckpt, args.device, profile=True)
        if memory:
            memory_table(memory, ckpt, args.device)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
