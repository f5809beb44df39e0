"""Benchmark head kinds (kinds.py): their cost against the compute run, the nearest-head search at scale, and
the false-positive rate of previous-token and induction labels on random-weight models.

    python bench/bench_kinds.py                     # 32 x 32 heads, 100 prompts timed (extrapolated to 1,000)
    python bench/bench_kinds.py --prompts 1000      # the whole run (slow on a CPU)

1. A random-weight GPT-2 of 32 layers x 32 heads (narrow, d_model 512: its forward is cheap, so the ratio is
   pessimistic for real 32 x 32 models, which are far wider) computes the probe set (patterns stored) and
   --prompts prompts (statistics only), as `compute_activations.py MODEL PROMPTS --probe --patterns none`.
   Then kinds.write_heads alone: features from the statistics and the probe's stored patterns, fingerprints,
   nearest heads, heads.json. Target: at most 5% of the compute run for 1,000 prompts.
2. heads_records over 20 checkpoints x 1,024 heads of synthetic features: standardising, the search, the PCA.
3. Random-weight models (4 x 8 heads, --seeds seeds at three initialisation scales): how many heads get
   the previous-token or induction label.
Run it alone on an idle machine (check `uptime`).
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

import numpy as np  # noqa: E402

from attention_lens import (
    build_index,  # noqa: E402
    datadir,  # noqa: E402
    forward,  # noqa: E402
    kinds,  # noqa: E402
    lens,  # noqa: E402
    prompt_index,  # noqa: E402
)
from attention_lens import compute_activations as ca  # noqa: E402


def random_checkpoint(path: Path, n_layer: int, n_head: int, n_embd: int, init: float, seed: int) -> Path:
    """A random-weight GPT-2 with the tests' BPE tokenizer, initialised with standard deviation `init`."""
    import torch
    from tiny_model import train_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(512)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        initializer_range=init, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def user_prompts(n: int) -> list[dict]:
    """n distinct prompts of about 100 tokens (the tests' tokenizer), words drawn at random."""
    rng = random.Random(0)
    return [{"text": f"{i}. " + " ".join(rng.choice(kinds.PROBE_WORDS) for _ in range(40))} for i in range(n)]


def compute_cost(tmp: Path, n_prompts: int, batch_size: int) -> dict:
    """Section 1: the compute run (probe + prompts) and kinds.write_heads on its data dir, in seconds."""
    ckpt = random_checkpoint(tmp / "wide", 32, 32, 512, 0.02, 0)
    model = forward.load_model(str(ckpt), "cpu", "float32")
    data = tmp / "data"
    start = time.perf_counter()
    probe = ca.compute_activations(kinds.probe_prompts(), model, data, "wide", batch_size, progress=False)
    rest = ca.compute_activations(user_prompts(n_prompts), model, data, "wide", batch_size, progress=False,
                                  patterns="none")
    compute = time.perf_counter() - start
    build_index.build_index(data)  # writes heads.json too; time it alone below
    records = {m: prompt_index.prompt_index_records(data, m) for m in lens.model_dirs(data)}
    start = time.perf_counter()
    kinds.write_heads(data, records)
    heads = time.perf_counter() - start
    per_prompt = rest["seconds"] / n_prompts
    return {"compute": compute, "probe": probe["seconds"], "per_prompt": per_prompt, "kinds": heads,
            "compute_1000": probe["seconds"] + 1000 * per_prompt,
            "heads_json_bytes": datadir.heads_json_path(data, "wide").stat().st_size}


def search_cost(n_models: int = 20, shape: tuple[int, int] = (32, 32)) -> dict:
    """Section 2: heads_records over n_models synthetic models of `shape` heads, in seconds, and its JSON size."""
    import json
    rng = np.random.default_rng(0)
    measured = [(rng.normal(size=(*shape, len(kinds.FEATURES))), {"source": "probe"}) for _ in range(n_models)]
    start = time.perf_counter()
    records = kinds.heads_records([f"m{i}" for i in range(n_models)], measured)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    size = len(json.dumps(records[0], separators=(",", ":")))
    return {"seconds": seconds, "json_seconds": (time.perf_counter() - start) * n_models, "bytes_per_model": size}


def false_positives(tmp: Path, seeds: int) -> dict:
    """Section 3: {init: (heads labelled previous-token or induction, heads)} over random-weight models."""
    out = {}
    for init in (0.02, 0.2, 1.0):
        labelled = total = 0
        for seed in range(seeds):
            name = f"random-{init}-{seed}"
            model = forward.load_model(str(random_checkpoint(tmp / name, 4, 8, 64, init, seed)), "cpu", "float32")
            ca.compute_activations(kinds.probe_prompts(), model, tmp / "fp", name, progress=False)
        build_index.build_index(tmp / "fp")
        for seed in range(seeds):
            info = lens.read_json(datadir.heads_json_path(tmp / "fp", f"random-{init}-{seed}"))
            for row in info["heads"]:
                total += len(row)
                labelled += sum(any(k["name"] in ("previous-token", "induction") for k in h["kinds"]) for h in row)
        out[init] = (labelled, total)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=100, help="prompts of the compute run timed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5, help="random models per initialisation scale (default: %(default)s)")
    p.add_argument("--sections", default="1,2,3", help="which sections to run (default: %(default)s)")
    args = p.parse_args()
    sections = set(args.sections.split(","))
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if "1" in sections:
            c = compute_cost(Path(tmp), args.prompts, args.batch_size)
            print(f"1. 32 x 32 heads: compute run {c['compute']:.1f} s (probe {c['probe']:.1f} s, "
                  f"{args.prompts} prompts "
                  f"at {c['per_prompt']:.3f} s each); kinds.write_heads {c['kinds']:.2f} s; heads.json "
                  f"{c['heads_json_bytes']:,} bytes\n   against 1,000 prompts ({c['compute_1000']:.0f} s): "
                  f"{100 * c['kinds'] / c['compute_1000']:.2f}% (target <= 5%); against this run: "
                  f"{100 * c['kinds'] / c['compute']:.2f}%", flush=True)
        if "2" in sections:
            s = search_cost()
            print(f"2. 20 models x 1,024 heads: fingerprints, nearest heads and PCA {s['seconds']:.2f} s; "
                  f"JSON encoding {s['json_seconds']:.2f} s; {s['bytes_per_model']:,} bytes per heads.json", flush=True)
        if "3" in sections:
            for init, (labelled, total) in false_positives(Path(tmp), args.seeds).items():
                print(f"3. random weights, init std {init}: {labelled} of {total} heads labelled previous-token or "
                      f"induction ({args.seeds} models)", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
