"""The cost of the built-in statistics on the device, per batch, next to the softmax that made the patterns.

    python bench/bench_device_stats.py                  # CPU
    python bench/bench_device_stats.py --device cuda

compute_activations' DeviceStats on random causal patterns of a few batch shapes: building the token arrays
(padding, repeat pairs) once, then one layer's sums per layer, then the statistics. The reference is the
forward's own softmax over the same scores, once per layer: the statistics should cost a few softmaxes, not
a forward. Best of many runs (noise only adds time).
"""
import argparse
import functools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attention_lens import forward  # noqa: E402

SHAPES = [(32, 40, 2, 4), (8, 330, 12, 12), (4, 1024, 2, 12)]  # batch, longest prompt, layers, heads


def best_ms(fn, budget_s: float = 2.0) -> float:
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 500):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def statistics(lengths: np.ndarray, tokens: np.ndarray, device: str, n_layers: int, pattern) -> np.ndarray:
    """One batch's statistics as forward.forward_batch makes them, the same pattern at every layer."""
    s = forward.DeviceStats(lengths, tokens, device, n_layers, pattern.shape[1])
    for layer in range(n_layers):
        s.add_layer(layer, pattern)
    return s.values()


def softmaxes(scores, n_layers: int) -> None:
    for _ in range(n_layers):
        scores.softmax(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"device {args.device}, {torch.get_num_threads()} torch threads")
    for b, width, n_layers, n_heads in SHAPES:
        lengths = [width] + list(rng.integers(width // 2, width + 1, b - 1))
        tokens = np.array([list(rng.integers(0, 50, n)) + [0] * (width - n) for n in lengths])
        causal = torch.ones(width, width, dtype=torch.bool, device=args.device).triu(1)
        scores = torch.randn(b, n_heads, width, width, device=args.device).masked_fill(causal, float("-inf"))
        pattern = scores.softmax(-1)
        ours = best_ms(functools.partial(statistics, np.array(lengths), tokens, args.device, n_layers, pattern))
        softmax = best_ms(functools.partial(softmaxes, scores, n_layers))
        print(f"batch {b} x {width} tokens, {n_layers} layers x {n_heads} heads: statistics {ours:.2f} ms, "
              f"the softmaxes {softmax:.2f} ms ({ours / softmax:.1f}x)")


if __name__ == "__main__":
    main()
