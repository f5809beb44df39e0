"""Compute every head's attention pattern of one or more models over a prompt file.

    python compute_activations.py gpt2 prompts.jsonl
    python compute_activations.py ./my-hf-checkpoint prompts.jsonl --device cuda
    python compute_activations.py gpt2,pythia-70m prompts.jsonl --n-samples 100 --batch-size 16
    python compute_activations.py gpt2 prompts.jsonl --shard 3/8        # one of 8 array jobs

From a notebook, with any model object that has the TransformerLens interface:

    from compute_activations import compute_activations
    compute_activations([{"text": "..."}], model, "attn_data", model_name="my-model")
"""
import argparse
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import lens

BATCH_SIZE = 8


class StopForward(Exception):
    """Raised by the hook on the last layer's pattern: nothing after it is needed."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compute attention patterns of TransformerLens models over prompts and save "
        "them per prompt (all layers and heads in one compact file).",
        epilog="Prompts longer than the model's context (n_ctx) are truncated to n_ctx tokens, "
        "with a warning naming them.")
    p.add_argument("models", help="model name(s) TransformerLens can load (e.g. gpt2), or a local "
                   "Hugging Face checkpoint directory; several separated by commas")
    p.add_argument("prompts", type=Path, help='JSONL file, one {"text": ..., "meta": {...}} per line')
    p.add_argument("--save-path", type=Path, default=lens.DEFAULT_SAVE_PATH,
                   help="data directory (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="prompts per forward pass (default: %(default)s); lower it for long prompts")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model weights dtype (default: %(default)s)")
    p.add_argument("--n-samples", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--shuffle", action="store_true", help="shuffle prompts (seeded) before --n-samples")
    p.add_argument("--seed", type=int, default=0, help="seed for --shuffle (default: %(default)s)")
    p.add_argument("--raw", action="store_true",
                   help="each line's text is a long document: split it into prompts of "
                   "--min-chars to --max-chars characters at whitespace")
    p.add_argument("--min-chars", type=int, default=100, help="with --raw (default: %(default)s)")
    p.add_argument("--max-chars", type=int, default=1000, help="with --raw (default: %(default)s)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="process only shard K of N (1-based), chosen by prompt hash, so N jobs "
                   "writing to one data dir never collide")
    p.add_argument("--force", action="store_true", help="recompute prompts already saved")
    return p.parse_args(argv)


def split_document(text: str, min_chars: int, max_chars: int) -> list[str]:
    """Cut a long text into pieces of at most max_chars at whitespace; drop pieces under min_chars."""
    pieces, start = [], 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            cut = max(text.rfind(c, start + min_chars, end) for c in " \n\t")
            end = cut if cut > start else end
        piece = text[start:end].strip()
        if len(piece) >= min_chars:
            pieces.append(piece)
        start = end
    return pieces


def load_prompts(path: Path, raw: bool = False, min_chars: int = 100, max_chars: int = 1000) -> list[dict]:
    """Read prompts from JSONL: every line needs a non-empty "text"; "meta" is passed through."""
    if not path.is_file():
        raise lens.UserError(f"{path}: no such prompts file")
    rows = list(lens.iter_jsonl(path))
    if not rows:
        raise lens.UserError(f"{path}: no prompts in file")
    prompts, seen = [], set()
    for lineno, row in rows:
        text, meta = row.get("text"), row.get("meta", {})
        if not isinstance(text, str) or not text.strip():
            raise lens.UserError(f'{path}:{lineno}: needs a non-empty string "text"')
        if not isinstance(meta, dict):
            raise lens.UserError(f'{path}:{lineno}: "meta" must be a JSON object')
        texts = split_document(text, min_chars, max_chars) if raw else [text]
        for i, t in enumerate(texts):
            if t not in seen:
                seen.add(t)
                prompts.append({"text": t, "meta": {**meta, "chunk": i} if raw else meta})
    if not prompts:
        raise lens.UserError(f"{path}: no prompt of at least --min-chars {min_chars} characters")
    return prompts


def select_prompts(prompts: list[dict], n_samples: int | None, shuffle: bool, seed: int,
                   shard: tuple[int, int] | None) -> list[dict]:
    if shuffle:
        prompts = prompts[:]
        random.Random(seed).shuffle(prompts)
    prompts = prompts[:n_samples] if n_samples is not None else prompts
    return [p for p in prompts if lens.in_shard(lens.prompt_hash(p["text"]), shard)]


def load_model(name: str, device: str, dtype: str):
    """Load a model by TransformerLens name or local checkpoint dir (TransformerBridge, or 3.x HookedTransformer)."""
    import torch
    path = Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise lens.UserError(f"{name}: directory is not a Hugging Face checkpoint (no config.json)")
    if not path.exists() and name.startswith((".", "/", "~")):
        raise lens.UserError(f"{name}: no such model directory")
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # transformer-lens releases before the bridge
        from transformer_lens import HookedTransformer
        load = lambda: HookedTransformer.from_pretrained(name, device=device, dtype=getattr(torch, dtype))
    else:
        load = lambda: TransformerBridge.boot_transformers(
            str(path) if path.is_dir() else name, device=device, dtype=getattr(torch, dtype))
    try:
        model = load()
    except (OSError, ValueError) as e:
        raise lens.UserError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    if hasattr(model, "enable_compatibility_mode"):
        model.enable_compatibility_mode()
    model.eval()
    return model


def model_config(model, model_name: str) -> dict:
    cfg = model.cfg
    out = {"model_name": model_name, "model_dir": lens.model_dir_name(model_name)}
    for key in ["n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab", "act_fn",
                "default_prepend_bos", "positional_embedding_type", "original_architecture"]:
        value = getattr(cfg, key, None)
        out[key] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return out


def is_pattern_hook(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


def batch_patterns(model, tokens) -> "torch.Tensor":
    """Patterns [n_layers, batch, n_heads, pos, pos] for a right-padded token batch.

    The forward pass stops at the last layer's pattern hook: the last MLP and the
    unembedding (~30% of GPT-2 small's FLOPs) would be wasted work.
    """
    import torch
    n_layers = model.cfg.n_layers
    found = {}

    def keep(pattern, hook):
        layer = int(hook.name.split(".")[1])
        found[layer] = pattern.detach()
        if layer == n_layers - 1:
            raise StopForward

    with torch.inference_mode():
        if hasattr(model, "run_with_hooks"):
            try:
                model.run_with_hooks(tokens, fwd_hooks=[(is_pattern_hook, keep)], return_type=None)
            except StopForward:
                pass
        else:
            _, cache = model.run_with_cache(tokens, names_filter=is_pattern_hook, return_type=None)
            found = {int(k.split(".")[1]): v for k, v in cache.items()}
    return torch.stack([found[layer] for layer in range(n_layers)])


def tokenize(model, text: str) -> list[int]:
    return model.to_tokens(text, truncate=False)[0].tolist()


def make_batches(items: list, lengths: list[int], batch_size: int) -> list[list]:
    """Group items of similar length (sorted by length) so batches waste little padding."""
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    return [[items[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def save_prompt(save_path: Path, model_dir: str, prompt: dict, ids: list[int], str_tokens: list[str],
                patterns: np.ndarray, truncated: bool) -> int:
    """Write patterns.bin then prompt.json (its presence marks the prompt as complete); return bytes."""
    phash = lens.prompt_hash(prompt["text"])
    d = lens.prompt_dir(save_path, model_dir, phash)
    data = lens.encode_patterns(patterns)
    lens.write_atomic(d / lens.PATTERN_FILE, data)
    lens.write_json(d / "prompt.json", {
        "text": prompt["text"], "hash": phash, "tokens": str_tokens, "token_ids": ids,
        "n_tokens": len(ids), "meta": prompt.get("meta", {}), "truncated": truncated,
    })
    return len(data)


def compute_activations(prompts: list[dict | str], model, save_path: Path | str = lens.DEFAULT_SAVE_PATH,
                        model_name: str | None = None, batch_size: int = BATCH_SIZE,
                        force: bool = False, progress: bool = True) -> dict:
    """Compute and save the attention patterns of `prompts` for `model`; return a summary dict.

    `model` is anything with the TransformerLens interface (HookedTransformer, TransformerBridge,
    a wrapper passing calls through). Prompts already saved are skipped unless `force`.
    """
    import torch
    from tqdm import tqdm

    save_path = Path(save_path)
    model_name = model_name or getattr(model.cfg, "model_name", None) or "model"
    model_dir = lens.model_dir_name(model_name)
    prompts = [{"text": p} if isinstance(p, str) else p for p in prompts]
    lens.write_json(save_path / model_dir / "model_cfg.json", model_config(model, model_name))
    todo = [p for p in prompts
            if force or not lens.is_finished(lens.prompt_dir(save_path, model_dir, lens.prompt_hash(p["text"])))]
    n_ctx, pad_id = model.cfg.n_ctx, getattr(model.tokenizer, "pad_token_id", None) or 0
    token_ids = [tokenize(model, p["text"]) for p in todo]
    truncated = [len(ids) > n_ctx for ids in token_ids]
    for p, t in zip(todo, truncated):
        if t:
            print(f"warning: prompt {lens.prompt_hash(p['text'])} ({p['text'][:40]!r}...) is longer "
                  f"than n_ctx={n_ctx} tokens: truncated", file=sys.stderr)
    token_ids = [ids[:n_ctx] for ids in token_ids]
    jobs = list(zip(todo, token_ids, truncated))
    start, n_bytes, n_tokens = time.perf_counter(), 0, 0
    device = next(model.parameters()).device if hasattr(model, "parameters") else "cpu"
    bar = tqdm(total=len(jobs), unit="prompt", desc=model_dir, disable=not progress)
    # Encoding and writing run in a thread (zlib releases the GIL) while the next batch computes.
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = []
        for batch in make_batches(jobs, [len(ids) for ids in token_ids], batch_size):
            width = max(len(ids) for _, ids, _ in batch)
            tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
            for i, (_, ids, _) in enumerate(batch):
                tokens[i, :len(ids)] = torch.tensor(ids)
            patterns = batch_patterns(model, tokens.to(device)).float().cpu().numpy()
            for i, (prompt, ids, trunc) in enumerate(batch):
                n = len(ids)
                pending.append(writer.submit(save_prompt, save_path, model_dir, prompt, ids,
                                             model.to_str_tokens(torch.tensor(ids)),
                                             np.ascontiguousarray(patterns[:, i, :, :n, :n]), trunc))
                n_tokens += n
            bar.update(len(batch))
        for f in pending:
            n_bytes += f.result()
    bar.close()
    return {"model": model_name, "model_dir": model_dir, "done": len(jobs),
            "skipped": len(prompts) - len(jobs), "tokens": n_tokens,
            "seconds": time.perf_counter() - start, "bytes": n_bytes}


def summary_line(s: dict, save_path: Path) -> str:
    return (f"{s['model']}: {s['done']} prompts computed, {s['skipped']} skipped (already saved), "
            f"{s['tokens']:,} tokens, {s['seconds']:.1f} s, {s['bytes'] / 1e6:.1f} MB written "
            f"-> {save_path / s['model_dir']}")


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        shard = lens.parse_shard(args.shard)
        if args.batch_size < 1:
            raise lens.UserError("--batch-size must be at least 1")
        if args.n_samples is not None and args.n_samples < 1:
            raise lens.UserError("--n-samples must be at least 1")
        prompts = load_prompts(args.prompts, args.raw, args.min_chars, args.max_chars)
        prompts = select_prompts(prompts, args.n_samples, args.shuffle, args.seed, shard)
        import torch
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            model = load_model(name, device, args.dtype)
            s = compute_activations(prompts, model, args.save_path, model_name=name,
                                    batch_size=args.batch_size, force=args.force)
            print(summary_line(s, args.save_path))
            del model
        from build_index import build_index
        build_index(args.save_path)
    except lens.UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished prompts are saved; run the same command again to resume")


if __name__ == "__main__":
    main()
