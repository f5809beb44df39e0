"""Measure pattern-lens 0.6.0 and this project side by side, in one run, on one checkpoint and prompt set.

    python bench/bench_vs_pattern_lens.py                # first run builds .bench-venv/ (a few minutes)
    python bench/bench_vs_pattern_lens.py --repeats 5 --n-prompts 32

pattern-lens 0.6.0 runs with transformer-lens 3.9 in its own virtual environment, .bench-venv/ (created
once: the same torch as ours, then the two pinned packages). Both tools get the same GPT-2-small-shaped
random-weight checkpoint (12 layers x 12 heads, d_model 768, vocab 50257) and the same prompts (~140
tokens, made as bench/bench_activations.py makes them), batch 8; each side has one untimed forward
first. Each repeat, interleaved so that both see the same machine load:
  compute  pattern-lens's activations_main (its HookedTransformer.from_pretrained cannot open a local
           checkpoint, so it is handed the HookedTransformer built from it) vs our compute_activations(),
           model loading excluded from both; reference: Hugging Face eager GPT2Model on the same batches,
           stopped after the last layer's attention.
  render   `python -m pattern_lens.figures --figure-funcs raw` vs `render_figures.py --figures raw`, both
           CLIs on all cores, wall clock; reference: a loop encoding the same heads as 8-bit palette PNGs
           with Pillow, one core.
  bytes    stored patterns per prompt (activations.npz vs patterns.bin) and bytes per `raw` image.
Times are wall clock and CPU time (all threads and waited-for child processes; a CLI's includes its
start-up), which stays comparable when other jobs share the machine. Prints a Markdown table of
same-run ratios (ranges over the repeats).
"""
import argparse
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench-venv"
PATTERN_LENS = ["pattern-lens==0.6.0", "transformer-lens==3.9.0"]
MODEL_NAME = "gpt2-shaped"


class Clock:
    """Wall-clock and CPU seconds of a block: CPU of all this process's threads and of the child processes
    it waited for, which stays comparable when other jobs share the machine and wall clock does not."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ---- pattern-lens's side: runs inside .bench-venv ------------------------------------------

def pattern_lens_python() -> Path:
    """The virtual environment's python, built the first time; torch pinned to ours first, so pip takes
    the CPU wheel already on disk instead of pulling CUDA builds."""
    python, ready = VENV / "bin" / "python", VENV / ".ready"
    wanted = [f"torch=={version('torch').split('+')[0]}", *PATTERN_LENS]
    if ready.is_file() and ready.read_text().split() == wanted:
        return python
    print(f"building {VENV} ({', '.join(wanted)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    for requirement in wanted:
        timed([python, "-m", "pip", "install", "-q", requirement])
    ready.write_text("\n".join(wanted))
    return python


def hooked_transformer(ckpt: Path):
    """A transformer-lens 3.9 HookedTransformer of a local GPT-2 checkpoint, processed as from_pretrained does."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(ckpt)
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, act_fn=c.activation_function, eps=c.layer_norm_epsilon,
        normalization_type="LN", positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        model_name=MODEL_NAME, device="cpu", default_prepend_bos=True)
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(ckpt))
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=True, center_writing_weights=True,
                                      center_unembed=True, fold_value_biases=True)
    return model


def pattern_lens_compute(ckpt: Path, prompts: Path, save_path: Path, batch_size: int) -> None:
    """Time pattern-lens's activations step (the function its CLI calls); prints {"wall": s, "cpu": s}."""
    from unittest import mock

    from pattern_lens.activations import HookedTransformer, activations_main

    model = hooked_transformer(ckpt)
    model(model.to_tokens("warm up"), return_type=None)  # as each side gets one untimed forward first
    with mock.patch.object(HookedTransformer, "from_pretrained", return_value=model):
        with Clock() as clock:
            activations_main(model_name=MODEL_NAME, save_path=save_path, prompts_path=str(prompts),
                             raw_prompts=True, min_chars=1, max_chars=10**9, force=True, n_samples=None,
                             no_index_html=False, device="cpu", batch_size=batch_size)
    print(json.dumps({"wall": clock.wall, "cpu": clock.cpu}))


# ---- our side and the references: run in this project's environment ------------------------

def make_texts(tokenizer, n_prompts: int, target_tokens: int, seed: int = 0) -> list[str]:
    """bench_activations.py's prompts: words of the tokenizer corpus, target_tokens (with BOS) +-20%."""
    from tiny_model import CORPUS
    rng = random.Random(seed)
    words = " ".join(CORPUS).split()
    texts = []
    for i in range(n_prompts):
        goal = round(target_tokens * (1 + 0.05 * (i % 9 - 4)))
        text = f"{i}."
        while len(tokenizer(text)["input_ids"]) + 1 < goal:
            text += " " + rng.choice(words)
        texts.append(text)
    return texts


def length_sorted_batches(token_lists: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    ordered = sorted(token_lists, key=len, reverse=True)
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


class StopForward(Exception):
    """Raised by a hook after the last layer's attention: the rest of the model is never run."""


def hf_reference(hf_model, batches, pad_id: int) -> Clock:
    """Hugging Face eager forward (attention weights materialised) of the same batches, stopped after the
    last layer's attention: the least work any tool must do to get every pattern."""
    import torch

    def stop(module, args, output):
        raise StopForward

    hook = hf_model.h[-1].attn.register_forward_hook(stop)
    with Clock() as clock, torch.inference_mode():
        for batch in batches:
            tokens = torch.full((len(batch), len(batch[0])), pad_id)
            for i, ids in enumerate(batch):
                tokens[i, :len(ids)] = torch.tensor(ids)
            try:
                hf_model(tokens, output_attentions=True)
            except StopForward:
                pass
    hook.remove()
    return clock


def png_reference(data: Path, n_images: int) -> tuple[Clock, float]:
    """The time (one core) and mean bytes of encoding n_images stored heads as 8-bit palette PNGs with Pillow."""
    import io

    import numpy as np
    from PIL import Image

    from attention_lens import lens, storage
    matrices = []
    for h in lens.finished_prompts(data, MODEL_NAME):
        patterns = storage.load_patterns(data, MODEL_NAME, h)
        matrices += [patterns.head(l, k) for l, k in patterns.heads]
        if len(matrices) >= n_images:
            break
    palette = lens.colormap_table("viridis").tobytes()
    sizes = []
    with Clock() as clock:
        for m in matrices[:n_images]:
            image = Image.fromarray(np.round(m * 255).astype(np.uint8), "P")
            image.putpalette(palette)
            buf = io.BytesIO()
            image.save(buf, "PNG")
            sizes.append(buf.tell())
    return clock, sum(sizes) / len(sizes)


def timed(cmd: list, **kwargs) -> Clock:
    """Run a command, timed; its output is shown only if it fails."""
    with Clock() as clock:
        r = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if r.returncode:
        sys.exit(f"error: {' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}{r.stderr[-4000:]}")
    return clock


def pack_images(path: Path) -> list[bytes]:
    """Every head's image in one of our figure packs (what pattern-lens writes as one file per head)."""
    from attention_lens import storage
    with open(path, "rb") as f:
        n_layers, n_heads = struct.unpack("<II", f.read(storage.PACK_HEADER)[8:])
    images = [storage.read_pack_image(path, l, h) for l in range(n_layers) for h in range(n_heads)]
    return [image for image in images if image]


def sizes(data: Path, pattern: str) -> list[int]:
    return [p.stat().st_size for p in (data / MODEL_NAME / "prompts").glob(pattern)]


def one_repeat(r: int, ctx: dict, tmp: Path) -> dict:
    """Every measurement once, both tools and the references, on fresh data dirs."""
    from attention_lens import compute_activations as ca
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ours, theirs = tmp / f"ours{r}", tmp / f"pattern-lens{r}"
    reference = hf_reference(ctx["hf_model"], ctx["batches"], ctx["pad_id"])
    with Clock() as compute:
        ca.compute_activations(ctx["texts"], ctx["model"], ours, model_name=MODEL_NAME,
                               batch_size=ctx["batch_size"], progress=False)
    out = subprocess.run([str(ctx["python"]), __file__, "--pattern-lens-compute", str(ctx["ckpt"]),
                          str(ctx["prompts"]), str(theirs), "--batch-size", str(ctx["batch_size"])],
                         capture_output=True, text=True, env=env, cwd=tmp)
    if out.returncode:
        sys.exit(f"error: pattern-lens's activations step failed:\n{out.stderr[-4000:]}")
    their_compute = json.loads(out.stdout.strip().splitlines()[-1])
    their_render = timed([ctx["python"], "-m", "pattern_lens.figures", "--model", MODEL_NAME,
                          "--save-path", theirs, "--figure-funcs", "raw"], env=env, cwd=tmp)
    our_render = timed([sys.executable, ROOT / "render_figures.py", "--save-path", ours, "--figures", "raw"],
                       env=env, cwd=tmp)
    png, png_bytes = png_reference(ours, ctx["n_images"])
    m = {"reference_s": reference.wall, "reference_cpu": reference.cpu, "ours_s": compute.wall,
         "ours_cpu": compute.cpu, "theirs_s": their_compute["wall"], "theirs_cpu": their_compute["cpu"],
         "ours_render_s": our_render.wall, "ours_render_cpu": our_render.cpu, "theirs_render_s": their_render.wall,
         "theirs_render_cpu": their_render.cpu, "png_s": png.wall, "png_cpu": png.cpu, "ref_png_bytes": png_bytes}
    m["ours_bytes"], m["theirs_bytes"] = sum(sizes(ours, "*/patterns.bin")), sum(sizes(theirs, "*/activations.npz"))
    ours_images = [len(image) for pack in (ours / MODEL_NAME / "prompts").glob("*/raw.pack")
                   for image in pack_images(pack)]
    their_images = sizes(theirs, "*/L*/H*/raw.png")
    assert len(ours_images) == len(their_images) == ctx["n_images"], (len(ours_images), len(their_images))
    m["ours_image"], m["theirs_image"] = sum(ours_images) / len(ours_images), sum(their_images) / len(their_images)
    print(f"repeat {r + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()), flush=True)
    return m


def setup(args, tmp: Path) -> dict:
    """The checkpoint, prompts, our model, the reference model and the token batches shared by every repeat."""
    from tiny_model import make_checkpoint
    from transformers import AutoTokenizer, GPT2Model

    from attention_lens import compute_activations as ca

    ckpt = make_checkpoint(tmp / MODEL_NAME, n_layer=12, n_head=12, n_embd=768, n_positions=1024,
                           model_vocab_size=50257)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    texts = make_texts(tokenizer, args.n_prompts, args.tokens)
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    token_lists = [[tokenizer.bos_token_id] + tokenizer(t)["input_ids"] for t in texts]
    hf_model = GPT2Model.from_pretrained(ckpt, attn_implementation="eager").eval()
    from attention_lens import forward
    model = forward.load_model(str(ckpt), "cpu", "float32")
    batches = length_sorted_batches(token_lists, args.batch_size)
    hf_reference(hf_model, batches[:1], tokenizer.pad_token_id)  # warm-ups, untimed
    ca.compute_activations(texts[:1], model, tmp / "warm-up", model_name=MODEL_NAME, progress=False)
    return {"ckpt": ckpt, "texts": texts, "prompts": prompts, "batch_size": args.batch_size,
            "model": model, "hf_model": hf_model, "pad_id": tokenizer.pad_token_id,
            "batches": batches, "python": pattern_lens_python(),
            "n_tokens": sum(map(len, token_lists)), "n_images": args.n_prompts * 12 * 12}


def span(values: list[float], fmt: str = "{:.2f}") -> str:
    """A range over the repeats, "lo-hi" (one number when they print alike)."""
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def per_run(runs: list[dict], ctx: dict) -> dict[str, list[float]]:
    """Each reported quantity as its list over the repeats, ratios taken within each repeat."""
    n, n_images = len(ctx["texts"]), ctx["n_images"]
    q = {k: [r[k] for r in runs] for k in runs[0]}
    for who in ("ours", "theirs", "png"):
        render = "png" if who == "png" else f"{who}_render"
        q[f"{who}_rate"] = [n_images / s for s in q[f"{render}_s"]]
        q[f"{who}_ms"] = [1e3 * s / n_images for s in q[f"{render}_cpu"]]  # CPU ms per image
    for key in ("ours_bytes", "theirs_bytes"):
        q[key] = [b / n / 1e6 for b in q[key]]  # MB per prompt
    for key in ("ours_image", "theirs_image", "ref_png_bytes"):
        q[key] = [b / 1e3 for b in q[key]]  # KB per image
    for a, b in [("theirs_s", "ours_s"), ("ours_s", "reference_s"), ("theirs_s", "reference_s"),
                 ("theirs_cpu", "ours_cpu"), ("ours_cpu", "reference_cpu"), ("theirs_cpu", "reference_cpu"),
                 ("ours_rate", "theirs_rate"), ("theirs_ms", "ours_ms"), ("ours_ms", "png_ms"),
                 ("theirs_ms", "png_ms"), ("ours_bytes", "theirs_bytes"), ("ours_image", "theirs_image")]:
        q[f"{a}/{b}"] = [x / y for x, y in zip(q[a], q[b])]
    return q


def table(q: dict[str, list[float]], ctx: dict) -> str:
    """The Markdown table: each tool's range over the repeats, same-run ratios, the references."""
    n_float32 = 4 * 12 * 12 * sum(len(t) ** 2 for b in ctx["batches"] for t in b) / len(ctx["texts"]) / 1e6
    rows = [
        ("compute patterns, wall clock", "{} s ({}x the reference)", "theirs_s", "ours_s", "s",
         "HF eager forward stopped after the last attention: {} s", "reference_s"),
        ("compute patterns, CPU time", "{} s ({}x the reference)", "theirs_cpu", "ours_cpu", "cpu",
         "the same forward: {} s", "reference_cpu"),
    ]
    lines = [f"| {len(ctx['texts'])} prompts, {ctx['n_tokens']:,} tokens, batch {ctx['batch_size']} "
             "| pattern-lens 0.6.0 (TL 3.9) | this project | same-run ratio | physical reference (same run) |",
             "|---|---|---|---|---|"]
    for label, cell, theirs, ours, _unit, ref_text, ref in rows:
        lines.append(f"| {label} | {cell.format(span(q[theirs]), span(q[f'{theirs}/{ref}']))} "
                     f"| {cell.format(span(q[ours]), span(q[f'{ours}/{ref}']))} "
                     f"| {span(q[f'{theirs}/{ours}'])}x (their time / ours) | {ref_text.format(span(q[ref]))} |")
    rate = lambda key: span(q[key], "{:,.0f}")  # noqa: E731
    lines += [
        f"| render `raw` ({ctx['n_images']:,} images, all cores), wall clock | {rate('theirs_rate')} images/s "
        f"| {rate('ours_rate')} images/s | {span(q['ours_rate/theirs_rate'], '{:.1f}')}x (our rate / theirs) "
        f"| palette PNG encode loop, one core: {rate('png_rate')} images/s |",
        f"| render `raw`, CPU time per image | {span(q['theirs_ms'])} ms ({span(q['theirs_ms/png_ms'], '{:.1f}')}x "
        f"the reference) | {span(q['ours_ms'])} ms ({span(q['ours_ms/png_ms'], '{:.1f}')}x) "
        f"| {span(q['theirs_ms/ours_ms'], '{:.1f}')}x (their time / ours) | the same loop: {span(q['png_ms'])} ms |",
        f"| stored patterns per prompt | {span(q['theirs_bytes'])} MB | {span(q['ours_bytes'])} MB "
        f"| {span(q['ours_bytes/theirs_bytes'], '{:.0%}')} (ours / theirs) | float32 matrices: {n_float32:.2f} MB |",
        f"| bytes per `raw` image | {span(q['theirs_image'])} KB | {span(q['ours_image'])} KB "
        f"| {span(q['ours_image/theirs_image'], '{:.0%}')} (ours / theirs) "
        f"| Pillow palette PNG: {span(q['ref_png_bytes'])} KB |",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=141, help="mean tokens per prompt, BOS included")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pattern-lens-compute", nargs=3, metavar=("CKPT", "PROMPTS", "SAVE_PATH"),
                   help=argparse.SUPPRESS)  # the step run inside .bench-venv
    args = p.parse_args()
    if args.pattern_lens_compute:
        ckpt, prompts, save_path = map(Path, args.pattern_lens_compute)
        return pattern_lens_compute(ckpt, prompts, save_path, args.batch_size)

    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        ctx = setup(args, Path(tmp))
        load = os.getloadavg()[0]
        runs = [one_repeat(r, ctx, Path(tmp)) for r in range(args.repeats)]
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; {args.repeats} repeats\n")
    print(table(per_run(runs, ctx), ctx))


if __name__ == "__main__":
    main()
