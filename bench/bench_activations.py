"""Benchmark compute_activations on a GPT-2-small-shaped random model, built offline.

    python bench/bench_activations.py                 # 32 prompts of ~141 tokens, batch 8
    python bench/bench_activations.py --n-prompts 64 --device cuda

Prints prompts/s, tokens/s, the bare forward pass (a full forward of the same batches,
as the predecessor runs it) against our total (tokenizing, early-stopped forward,
encoding, writing), and bytes stored per prompt.
"""
import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

import compute_activations as ca  # noqa: E402
from tiny_model import CORPUS, make_checkpoint  # noqa: E402


def make_prompts(model, n_prompts: int, target_tokens: int, seed: int = 0) -> list[str]:
    """Texts of target_tokens tokens on average, spread +-20%, made of words from the tokenizer corpus."""
    rng = random.Random(seed)
    words = " ".join(CORPUS).split()
    texts = []
    for i in range(n_prompts):
        goal = round(target_tokens * (1 + 0.05 * (i % 9 - 4)))  # 0.8x to 1.2x, mean ~1x
        text = f"{i}."
        while len(ca.tokenize(model, text)) < goal:
            text += " " + rng.choice(words)
        texts.append(text)
    return texts


def forward_seconds(model, token_lists: list[list[int]], batch_size: int, early_stop: bool) -> float:
    """Forward passes of the same length-sorted batches: full (through the unembedding), or
    stopped at the last attention pattern as compute_activations does, without saving."""
    pad = model.tokenizer.pad_token_id
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in ca.make_batches(token_lists, [len(t) for t in token_lists], batch_size):
            tokens = torch.full((len(batch), max(map(len, batch))), pad)
            for i, ids in enumerate(batch):
                tokens[i, :len(ids)] = torch.tensor(ids)
            if early_stop:
                ca.batch_patterns(model, tokens.to(model.cfg.device))
            else:
                model(tokens.to(model.cfg.device))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=141, help="mean tokens per prompt (incl. BOS)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="best of N for each measurement")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "gpt2-small-shaped", n_layer=12, n_head=12, n_embd=768,
                               n_positions=1024, model_vocab_size=50257)
        model = ca.load_model(str(ckpt), args.device, "float32")
        texts = make_prompts(model, args.n_prompts, args.tokens)
        token_lists = [ca.tokenize(model, t) for t in texts]
        n_tokens = sum(map(len, token_lists))
        forward_seconds(model, token_lists[:args.batch_size], args.batch_size, False)  # warm-up
        forward = min(forward_seconds(model, token_lists, args.batch_size, False) for _ in range(args.repeats))
        stopped = min(forward_seconds(model, token_lists, args.batch_size, True) for _ in range(args.repeats))
        runs = []
        for r in range(args.repeats):
            runs.append(ca.compute_activations(texts, model, Path(tmp) / f"data{r}", model_name="gpt2-shaped",
                                               batch_size=args.batch_size, progress=False))
        best = min(runs, key=lambda s: s["seconds"])
    total = best["seconds"]
    print(f"model: 12 layers x 12 heads, d_model 768, vocab 50257 (random weights), device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"prompts: {args.n_prompts}, tokens: {n_tokens} ({n_tokens / args.n_prompts:.0f} per prompt), "
          f"batch {args.batch_size}")
    print(f"bare forward pass (full, as the predecessor): {forward:.2f} s")
    print(f"forward stopped at the last pattern:          {stopped:.2f} s  ({stopped / forward:.2f}x)")
    print(f"compute_activations total:                    {total:.2f} s  ({total / forward:.2f}x the bare forward)")
    print(f"saving overhead over the stopped forward:     {total - stopped:.2f} s")
    print(f"throughput: {args.n_prompts / total:.2f} prompts/s, {n_tokens / total:.0f} tokens/s")
    print(f"stored: {best['bytes'] / args.n_prompts / 1e6:.2f} MB per prompt "
          f"({best['bytes'] / 1e6:.1f} MB in all)")


if __name__ == "__main__":
    main()
