"""Peak memory and time of compute_activations.py on a big model shape with long prompts.

    python bench/bench_memory.py                     # ~1.4k, 2k and 4k tokens, one prompt each
    python bench/bench_memory.py --tokens 1400 --device cuda

Builds offline a Llama-shaped random checkpoint with 32 layers x 32 heads (hidden size 256, so
the forward pass is cheap and the patterns dominate), then runs the real script once per prompt
length, each in a fresh process with --batch-size 1, and prints its peak RSS (and peak device
memory on a GPU), seconds and bytes written. Targets on a 2-core CPU: <= 3 GB and <= 25 s at
~1.4k tokens; the 4k-token prompt completes in <= 8 GB.
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

from tiny_model import CORPUS, train_tokenizer  # noqa: E402

# Runs the script in this child process, then reports its own peak RSS (ru_maxrss is in KiB on Linux).
CHILD = """
import json, resource, runpy, sys
sys.argv = {argv!r}
sys.path.insert(0, {root!r})
try:
    runpy.run_path({script!r}, run_name="__main__")
finally:
    import torch
    peak_gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    print("BENCH " + json.dumps({{"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                  "gpu": peak_gpu}}))
"""


def make_checkpoint(path: Path, n_ctx: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    tokenizer = train_tokenizer(512)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=n_ctx,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prompt_of(tokenizer, n_tokens: int) -> str:
    """A text of n_tokens tokens (with BOS) made of the tokenizer corpus's words."""
    words, text, i = " ".join(CORPUS).split(), "", 0
    while len(tokenizer(text)["input_ids"]) + 1 < n_tokens:
        text += " " + words[i % len(words)]
        i += 1
    return text.strip()


def run_one(ckpt: Path, n_tokens: int, device: str, work: Path) -> dict:
    from transformers import AutoTokenizer
    prompts = work / f"p{n_tokens}.jsonl"
    prompts.write_text(json.dumps({"text": prompt_of(AutoTokenizer.from_pretrained(ckpt), n_tokens)}) + "\n")
    save = work / f"data{n_tokens}"
    argv = ["compute_activations.py", str(ckpt), str(prompts), "--save-path", str(save), "--batch-size", "1",
            "--device", device]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c",
                          CHILD.format(argv=argv, root=str(ROOT), script=str(ROOT / "compute_activations.py"))],
                         capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"run failed:\n{out.stderr[-3000:]}")
    peak = json.loads(out.stdout.split("BENCH ", 1)[1])
    summary = next(line for line in out.stdout.splitlines() if "prompts computed" in line)
    seconds = float(summary.split(" s, ")[0].rsplit(" ", 1)[1])
    written = sum(p.stat().st_size for p in save.rglob("patterns.bin"))
    info = json.loads(next(save.rglob("prompt.json")).read_text())
    return {"tokens": info["n_tokens"], "rss": peak["rss"], "gpu": peak["gpu"], "seconds": seconds,
            "wall": wall, "bytes": written}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="1400,2048,4096", help="prompt lengths, comma separated")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    lengths = [int(t) for t in args.tokens.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = make_checkpoint(work / "llama-32x32", max(lengths) + 8)
        print(f"Llama-shaped random checkpoint: 32 layers x 32 heads, hidden 256; device {args.device}; "
              f"{os.cpu_count()} cores")
        print(f"{'tokens':>7} {'peak RSS':>9} {'peak GPU':>9} {'compute s':>10} {'wall s':>7} {'written':>9} "
              f"{'float32 patterns':>17}")
        for n in lengths:
            r = run_one(ckpt, n, args.device, work)
            f32 = 32 * 32 * r["tokens"] ** 2 * 4
            print(f"{r['tokens']:>7} {r['rss'] / 1e9:>7.2f} GB {r['gpu'] / 1e9:>6.2f} GB {r['seconds']:>10.1f} "
                  f"{r['wall']:>7.1f} {r['bytes'] / 1e6:>6.0f} MB {f32 / 1e9:>14.2f} GB")


if __name__ == "__main__":
    main()
