"""Benchmark what the head pages cost on disk and in time at 512 tokens, for two shapes of random-weight models:
GPT-2-small's (12 x 12 heads, d_model 768, its 50,257-token vocabulary) and 32 x 32 heads (d_model 256).

    python bench/bench_head_pages.py                       # 48 then 144 prompts of 512 tokens each, CPU
    python bench/bench_head_pages.py --prompts 200,2000 --device cuda

For each shape and each prompt count: compute_activations --patterns none (statistics, look-back and token
totals), the examples pass, then build_index.py. Printed: the bytes per head of examples.bin, head_pages.bin
and the runs' totals (parts/*.sums.npz), which must not grow with the prompts; a head block's size (what the
head page fetches for it); and the seconds of each step. Random weights spread attention over many keys:
their examples hold more entries per row than a trained model's sharper heads. Run it alone (check `uptime`).
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny_model import CORPUS, train_tokenizer  # noqa: E402

from attention_lens import compute_activations as ca  # noqa: E402
from attention_lens import (
    datadir,  # noqa: E402
    examples,  # noqa: E402
    forward,  # noqa: E402
    lens,  # noqa: E402
)
from attention_lens.build_index import build_index  # noqa: E402

SHAPES = {"gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, vocab=50257),
          "32x32": dict(n_layer=32, n_head=32, n_embd=256, vocab=512)}


def make_checkpoint(path: Path, n_layer: int, n_head: int, n_embd: int, vocab: int) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    tokenizer = train_tokenizer(512)
    config = GPT2Config(vocab_size=max(vocab, len(tokenizer)), n_positions=512, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def texts_of(model, n: int, tokens: int, seed: int) -> list[str]:
    """n distinct texts of `tokens` tokens or a little less, of the tokenizer corpus's words."""
    rng, words, out = random.Random(seed), " ".join(CORPUS).split(), []
    for i in range(n):
        text = f"{seed}.{i}."
        while len(model.tokenizer(text)["input_ids"]) < tokens - 8:
            text += " " + " ".join(rng.choice(words) for _ in range(8))
        out.append(text)
    return out


def sizes(data: Path, model: str, n_heads: int) -> dict:
    index = lens.read_json(datadir.examples_index_path(data, model))
    blocks = [h[1] + h[3] for h in index["heads"] if h]  # a head's JSON and its data
    sums = sum(p.stat().st_size for p in datadir.parts_dir(data, model).glob("*.sums.npz"))
    pages = lens.read_json(datadir.head_pages_index_path(data, model))["heads"]
    return {"examples": datadir.examples_path(data, model).stat().st_size / n_heads,
            "pages": datadir.head_pages_path(data, model).stat().st_size / n_heads, "sums": sums / n_heads,
            "block": max(blocks), "page_block": max(length for _, length in pages),
            "prompts_rerun": len(index["prompts"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", default="48,144", help="prompt counts, comma-separated (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--shapes", default=",".join(SHAPES))
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            ckpt = make_checkpoint(Path(tmp) / shape, **SHAPES[shape])
            model = forward.load_model(str(ckpt), args.device, "float32")
            n_heads = model.cfg.n_layers * model.cfg.n_heads
            print(f"{shape}: {model.cfg.n_layers} x {model.cfg.n_heads} heads, vocabulary {model.cfg.d_vocab}, "
                  f"prompts of about {args.tokens} tokens")
            for n in (int(x) for x in args.prompts.split(",")):
                data = Path(tmp) / f"{shape}-{n}"
                texts = texts_of(model, n, args.tokens, n)
                t0 = time.perf_counter()
                s = ca.compute_activations(texts, model, data, model_name=shape, batch_size=args.batch_size,
                                           patterns="none", progress=False)
                t1 = time.perf_counter()
                examples.compute_examples(model, data, shape, examples.Sampling(), args.batch_size, progress=False)
                t2 = time.perf_counter()
                build_index(data)
                t3 = time.perf_counter()
                z = sizes(data, lens.model_dir_name(shape), n_heads)
                print(f"  {n} prompts ({s['tokens'] / n:.0f} tokens each): compute {t1 - t0:.1f} s, examples "
                      f"{t2 - t1:.1f} s ({z['prompts_rerun']} prompts run again), build_index {t3 - t2:.1f} s")
                print(f"    bytes per head: examples {z['examples'] / 1e3:,.1f} kB, head pages "
                      f"{z['pages'] / 1e3:,.1f} kB, run totals {z['sums'] / 1e3:,.1f} kB; largest head block: "
                      f"examples {z['block'] / 1e3:,.0f} kB, head page {z['page_block'] / 1e3:,.0f} kB")
                print(json.dumps({"shape": shape, "prompts": n, **z}))
            del model
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
