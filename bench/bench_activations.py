"""Benchmark compute_activations on a GPT-2-small-shaped random model, built offline.

    python bench/bench_activations.py                 # 32 prompts of ~141 tokens, batch 8
    python bench/bench_activations.py --n-prompts 64 --device cuda

Prints, on the same length-sorted batches: the physical reference (Hugging Face's eager
forward with output_attentions, stopped right after the last layer's attention), the bare
TransformerLens forward, the forward stopped at the last pattern, and our total (tokenizing,
forward, quantising, compressing, writing); then prompts/s, bytes stored per prompt, and how
many prompts/s the encoder (zlib on every core) can absorb, so a reader sees whether a GPU
would ever wait on it. Target: total <= 1.2x the Hugging Face reference.
"""
import argparse
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from tiny_model import CORPUS, make_checkpoint  # noqa: E402

from attention_lens import compute_activations as ca  # noqa: E402
from attention_lens import (
    datadir,  # noqa: E402
    forward,  # noqa: E402
    storage,
)


def make_prompts(model, n_prompts: int, target_tokens: int, seed: int = 0) -> list[str]:
    """Texts of target_tokens tokens on average, spread +-20%, made of words from the tokenizer corpus."""
    rng = random.Random(seed)
    words = " ".join(CORPUS).split()
    texts = []
    for i in range(n_prompts):
        goal = round(target_tokens * (1 + 0.05 * (i % 9 - 4)))  # 0.8x to 1.2x, mean ~1x
        text = f"{i}."
        while len(model.tokenizer(text)["input_ids"]) + 1 < goal:  # + BOS
            text += " " + rng.choice(words)
        texts.append(text)
    return texts


def padded_batches(token_lists: list[list[int]], batch_size: int, pad: int) -> list["torch.Tensor"]:
    """The length-sorted, right-padded batches compute_activations makes."""
    out = []
    for batch in ca.make_batches(token_lists, [len(t) for t in token_lists], batch_size):
        tokens = torch.full((len(batch), max(map(len, batch))), pad)
        for i, ids in enumerate(batch):
            tokens[i, :len(ids)] = torch.tensor(ids)
        out.append(tokens)
    return out


def forward_seconds(model, batches, early_stop: bool) -> float:
    """TransformerLens forward passes of the batches: full (through the unembedding), or stopped
    at the last attention pattern as compute_activations does, without saving anything."""
    start = time.perf_counter()
    with torch.inference_mode():
        for tokens in batches:
            if early_stop:
                forward.forward_patterns(model, tokens, lambda layer, pattern: None, model.cfg.n_layers - 1)
            else:
                model(tokens, return_type=None)
    return time.perf_counter() - start


def hf_reference_seconds(hf, batches) -> float:
    """Hugging Face's eager forward with output_attentions, stopped right after the last layer's attention."""
    def stop(module, args, output):
        raise forward.StopForward
    handle = hf.transformer.h[-1].attn.register_forward_hook(stop)
    start = time.perf_counter()
    with torch.inference_mode():
        for tokens in batches:
            try:
                hf(tokens, output_attentions=True)
            except forward.StopForward:
                pass
    handle.remove()
    return time.perf_counter() - start


def encoder_prompts_per_second(data_dir: Path, n_workers: int) -> float:
    """Prompts/s that zlib on n_workers threads absorbs, fed the stored (already quantised) form."""
    files = sorted(data_dir.rglob(datadir.PATTERN_FILE))
    stored = []
    for f in files:
        p = storage.Patterns(f)
        keep = storage.tril_positions(p.n_tokens, p.layout)
        stored.append(storage.stored_form(p.all().reshape(len(p.heads), -1)[:, keep]))
    with ThreadPoolExecutor(n_workers) as pool:
        start = time.perf_counter()
        list(pool.map(lambda x: [storage.head_streams(x[i:i + 12]) for i in range(0, len(x), 12)], stored))
        return len(files) / (time.perf_counter() - start)


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
        model = forward.load_model(str(ckpt), args.device, "float32")
        from transformers import GPT2LMHeadModel
        hf = GPT2LMHeadModel.from_pretrained(ckpt, attn_implementation="eager").to(args.device).eval()
        texts = make_prompts(model, args.n_prompts, args.tokens)
        token_lists = [ca.tokenize(model.to_tokens, t) for t in texts]
        n_tokens = sum(map(len, token_lists))
        batches = [b.to(args.device)
                   for b in padded_batches(token_lists, args.batch_size, model.tokenizer.pad_token_id)]
        forward_seconds(model, batches[:1], False)  # warm-up
        hf_reference_seconds(hf, batches[:1])
        times = {"hf": [], "bare": [], "stopped": [], "total": []}
        runs = []
        for r in range(args.repeats):  # interleaved, so a busy moment does not favour one measurement
            times["hf"].append(hf_reference_seconds(hf, batches))
            times["bare"].append(forward_seconds(model, batches, False))
            times["stopped"].append(forward_seconds(model, batches, True))
            runs.append(ca.compute_activations(texts, model, Path(tmp) / f"data{r}", model_name="gpt2-shaped",
                                               batch_size=args.batch_size, progress=False))
            times["total"].append(runs[-1]["seconds"])
        cores = os.cpu_count() or 1
        encoder = encoder_prompts_per_second(Path(tmp) / "data0", cores)
        stored_bytes = runs[0]["bytes"]
    hf_s, bare, stopped, total = (min(times[k]) for k in ["hf", "bare", "stopped", "total"])
    print(f"model: 12 layers x 12 heads, d_model 768, vocab 50257 (random weights), device {args.device}, "
          f"{torch.get_num_threads()} torch threads, {cores} cores; best of {args.repeats}, interleaved")
    print(f"prompts: {args.n_prompts}, tokens: {n_tokens} ({n_tokens / args.n_prompts:.0f} per prompt), "
          f"batch {args.batch_size}")
    print(f"HF eager forward, output_attentions, stopped after the last attention (reference): {hf_s:.2f} s")
    print(f"TransformerLens forward, full (through the unembedding):                         {bare:.2f} s")
    print(f"TransformerLens forward stopped at the last pattern:                              {stopped:.2f} s")
    print(f"compute_activations total:  {total:.2f} s = {total / hf_s:.2f}x the HF reference "
          f"(target <= 1.2x), {total / bare:.2f}x the full TL forward")
    print(f"throughput: {args.n_prompts / total:.2f} prompts/s, {n_tokens / total:.0f} tokens/s")
    print(f"stored: {stored_bytes / args.n_prompts / 1e6:.2f} MB per prompt ({stored_bytes / 1e6:.1f} MB in all)")
    print(f"encoder alone (zlib, {cores} threads, fed uint16): {encoder:.0f} prompts/s "
          f"= {encoder / (args.n_prompts / stopped):.1f}x what this device's stopped forward produces")


if __name__ == "__main__":
    main()
