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
import os
import random
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import lens

BATCH_SIZE = 8


class StopForward(Exception):
    """Raised by the hook on the last layer's pattern: nothing after it is needed."""


def parse_args(argv=None) -> argparse.Namespace:
    p = lens.ArgumentParser(
        description="Compute attention patterns of TransformerLens models over prompts and save "
        "them per prompt (all layers and heads in one compact file).",
        epilog="Prompts longer than the model's context (n_ctx) are truncated to n_ctx tokens, "
        "with a warning naming them.")
    p.add_argument("models", help="model name(s) TransformerLens can load (e.g. gpt2), or a local "
                   "Hugging Face checkpoint directory; several separated by commas")
    p.add_argument("prompts", type=Path, help='JSONL file, one {"text": ..., "meta": {...}} per line')
    p.add_argument("--save-path", type=Path, default=lens.DEFAULT_SAVE_PATH,
                   help="data directory (default: %(default)s)")
    p.add_argument("--batch-size", type=lens.positive_int, default=BATCH_SIZE,
                   help="prompts per forward pass (default: %(default)s); lower it for long prompts")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model weights dtype (default: %(default)s)")
    p.add_argument("--n-samples", type=lens.positive_int, default=None, help="use only the first N prompts")
    p.add_argument("--shuffle", action="store_true", help="shuffle prompts (seeded) before --n-samples")
    p.add_argument("--seed", type=int, default=0, help="seed for --shuffle (default: %(default)s)")
    p.add_argument("--raw", action="store_true",
                   help="each line's text is a long document: split it into prompts of "
                   "--min-chars to --max-chars characters at whitespace")
    p.add_argument("--min-chars", type=int, default=100, help="with --raw (default: %(default)s)")
    p.add_argument("--max-chars", type=lens.positive_int, default=1000, help="with --raw (default: %(default)s)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="process only shard K of N (1-based), chosen by prompt hash, so N jobs "
                   "writing to one data dir never collide")
    p.add_argument("--force", action="store_true", help="recompute prompts already saved")
    p.add_argument("--heads", metavar="SPEC",
                   help="store only these heads, in the grid's syntax, e.g. 'L0-3H*,L5H1,L*H0' (default: all); "
                   "asking later for heads a prompt lacks recomputes it")
    p.add_argument("--max-tokens", type=lens.positive_int, metavar="N",
                   help="truncate prompts to N tokens, below the model's context (stored bytes grow with N squared)")
    p.add_argument("--revision", help="Hugging Face revision (branch, tag or commit) of the model to load")
    p.add_argument("--checkpoint", metavar="STEP[,STEP...]",
                   help="training checkpoints (Pythia-style, or the demo model's): each is stored as its own "
                   "model dir MODEL@stepSTEP, so the site shows them side by side")
    p.add_argument("--device-map", metavar="MAP",
                   help="place a model too big for one device across several, through accelerate "
                   "(e.g. 'auto'); not with --device")
    p.add_argument("--n-devices", type=lens.positive_int, metavar="N", help="split the model's layers over N devices")
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


DEMO_DIR = Path(__file__).resolve().parent / "demo"


def demo_path(checkpoint: int | None) -> Path:
    """The bundled demo model (trained by demo/train.py), or one of its training checkpoints."""
    if checkpoint is None:
        return DEMO_DIR / "model"
    path = DEMO_DIR / "checkpoints" / f"step{checkpoint}"
    if not path.is_dir():
        steps = sorted(int(p.name[4:]) for p in (DEMO_DIR / "checkpoints").glob("step*"))
        raise lens.UserError(f"--checkpoint {checkpoint}: the demo model has checkpoints at steps "
                             f"{', '.join(map(str, steps)) or 'none'}")
    return path


def check_checkpoint(name: str, step: int) -> None:
    """Fail early, naming the flag, when a model has no such training checkpoint."""
    from transformer_lens.tools.model_registry.checkpoints import get_checkpoint_labels
    try:
        labels, _ = get_checkpoint_labels(name)
    except (ValueError, OSError):
        raise lens.UserError(f"--checkpoint {step}: model {name!r} has no training checkpoints "
                             "(Pythia and stanford-crfm models have them; so does demo)") from None
    if step not in labels:
        raise lens.UserError(f"--checkpoint {step}: not a checkpoint of {name} (steps {labels[0]} to {labels[-1]}, "
                             f"e.g. {', '.join(map(str, labels[-4:]))})")


def load_model(name: str, device: str | None, dtype: str, revision: str | None = None,
               checkpoint: int | None = None, device_map: str | None = None, n_devices: int | None = None):
    """Load a model by TransformerLens name, local checkpoint dir or `demo` (TransformerBridge, or 3.x
    HookedTransformer); checkpoints, revisions and multi-device placement go to TransformerLens's loader."""
    import torch
    path = demo_path(checkpoint) if name == "demo" else Path(name).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise lens.UserError(f"{name}: directory is not a Hugging Face checkpoint (no config.json)")
    if not path.exists() and (name == "demo" or name.startswith((".", "/", "~"))):
        raise lens.UserError(f"{name}: no such model directory ({path})")
    local = path.is_dir()
    if checkpoint is not None and not local:
        check_checkpoint(name, checkpoint)
    elif checkpoint is not None and name != "demo":
        raise lens.UserError(f"--checkpoint {checkpoint}: {name} is a local directory; training checkpoints "
                             "come from a model hub (Pythia) or the demo model")
    placement = {"device_map": device_map} if device_map else {"device": device}
    if n_devices:
        placement["n_devices"] = n_devices
    hub = {} if local else {k: v for k, v in [("revision", revision), ("checkpoint_value", checkpoint)] if v is not None}
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # transformer-lens releases before the bridge
        from transformer_lens import HookedTransformer
        load = lambda: HookedTransformer.from_pretrained(str(path) if local else name, dtype=getattr(torch, dtype),
                                                         **placement, **hub)
    else:
        load = lambda: TransformerBridge.boot_transformers(str(path) if local else name, dtype=getattr(torch, dtype),
                                                           **placement, **hub)
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


def is_causal(model) -> bool:
    """Whether the model only attends backwards (decoders); encoders such as BERT attend both ways."""
    return getattr(model.cfg, "attention_dir", "causal") != "bidirectional"


def is_value_hook(name: str) -> bool:
    return name.endswith("attn.hook_v")


def forward_patterns(model, tokens, on_layer, last_layer: int, attention_mask=None, on_values=None) -> None:
    """Run the model on a right-padded batch, calling on_layer(layer, pattern [batch, heads, pos, pos])
    as each layer's pattern is made (and on_values(layer, v [batch, pos, kv_heads, d_head]) before it);
    the forward pass stops after `last_layer`'s pattern (the rest of the model, up to the
    unembedding, would be wasted work)."""
    import torch
    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}

    def hook(pattern, hook):
        layer = int(hook.name.split(".")[1])
        if layer <= last_layer:
            on_layer(layer, pattern.detach())
        if layer >= last_layer:
            raise StopForward

    def value_hook(v, hook):
        layer = int(hook.name.split(".")[1])
        if layer <= last_layer:
            on_values(layer, v.detach())

    hooks = [(is_pattern_hook, hook)] + ([(is_value_hook, value_hook)] if on_values else [])
    with torch.inference_mode():
        if hasattr(model, "run_with_hooks"):
            try:
                model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None, **kwargs)
            except StopForward:
                pass
            return
        # A wrapper without run_with_hooks (auto_circuit's PatchableModel): the cache holds every layer.
        names = (lambda n: is_pattern_hook(n) or is_value_hook(n)) if on_values else is_pattern_hook
        _, cache = model.run_with_cache(tokens, names_filter=names, return_type=None, **kwargs)
        for layer in range(last_layer + 1):
            if on_values:
                on_values(layer, cache[f"blocks.{layer}.attn.hook_v"])
            on_layer(layer, cache[f"blocks.{layer}.attn.hook_pattern"])


def output_weights(model) -> list | None:
    """Each layer's W_O [n_heads, d_head, d_model], or None when the model does not expose them."""
    blocks = getattr(model, "blocks", None)
    try:
        return [block.attn.W_O.detach() for block in blocks]
    except (AttributeError, TypeError):
        return None


def value_norms(v, gram) -> "torch.Tensor":
    """||v_j W_O^h|| for every head and position: [batch, heads, pos] from v [batch, pos, kv_heads, d_head].

    With grouped-query attention, query head h reads key-value head h // (heads / kv_heads), as
    Hugging Face's repeat_kv. The norm comes from the Gram matrix W_O W_O^T [heads, d_head, d_head]:
    d_head / d_model of the work of multiplying by W_O."""
    import torch
    v = v.float().repeat_interleave(gram.shape[0] // v.shape[2], dim=2)
    return torch.einsum("bphd,hde,bphe->bhp", v, gram, v).clamp_min_(0).sqrt_()


def tokenizer_functions(model):
    """(to_tokens, to_str_tokens) of a model; auto_circuit's PatchableModel returns them from zero-argument methods."""
    import inspect
    fns = [model.to_tokens, model.to_str_tokens]
    return [f() if not inspect.signature(f).parameters else f for f in fns]


def tokenize(to_tokens, text: str) -> list[int]:
    return to_tokens(text, truncate=False)[0].tolist()


def make_batches(items: list, lengths: list[int], batch_size: int) -> list[list]:
    """Group items of similar length (sorted by length) so batches waste little padding."""
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    return [[items[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


class PatternStream:
    """Takes each layer's patterns as its hook fires and streams them into the batch's pattern files.

    On the model's device, each prompt's heads are trimmed to its length, cut to the lower
    triangle and quantised to the stored uint16 form (a quarter of float32's bytes); only that
    is copied to the host, where a pool of threads compresses it (zlib releases the GIL) while
    the forward pass goes on, and one writer thread appends the streams to each file in order.
    At most MAX_PENDING bytes wait for compression: memory follows one layer, not the model."""

    MAX_PENDING = 256 * 2**20
    GROUP_BYTES = 64 * 2**20  # float32 bytes of heads quantised at once on the device

    def __init__(self, n_workers: int):
        import threading
        self.compress = ThreadPoolExecutor(n_workers, thread_name_prefix="compress")
        self.write = ThreadPoolExecutor(1, thread_name_prefix="write")
        self.pending, self.queue = 0, deque()
        self.lock = threading.Lock()

    def submit_values(self, jobs: list["PromptJob"], layer: int, v, gram) -> None:
        norms = value_norms(v, gram).cpu().numpy()
        for i, job in enumerate(jobs):
            heads = job.layer_heads.get(layer)
            if heads and job.norms is not None:
                job.norms[layer, heads] = norms[i, heads, :job.n_tokens]

    def submit_layer(self, jobs: list["PromptJob"], layer: int, pattern) -> None:
        for i, job in enumerate(jobs):
            heads = job.layer_heads.get(layer)
            if not heads:
                continue
            n = job.n_tokens
            group = max(1, self.GROUP_BYTES // (4 * n * n))
            for g in range(0, len(heads), group):
                idx = heads[g:g + group]
                stored = quantize_on_device(pattern[i, idx, :n, :n], job.keep).cpu().numpy()
                self._submit(job.writer, stored)

    def _submit(self, writer: lens.PatternWriter, stored: np.ndarray) -> None:
        while self.pending > self.MAX_PENDING and self.queue:
            self.queue.popleft().result()
        streams = self.compress.submit(lens.head_streams, stored)
        with self.lock:
            self.pending += stored.nbytes
        self.queue.append(self.write.submit(self._append, writer, streams, stored.nbytes))

    def _append(self, writer: lens.PatternWriter, streams, nbytes: int) -> None:
        try:
            writer.add(streams.result())
        finally:
            with self.lock:
                self.pending -= nbytes

    def finish(self, fn, *args):
        """Run fn(*args) on the writer thread after every stream submitted so far is written."""
        future = self.write.submit(fn, *args)
        self.queue.append(future)
        return future

    def drain(self) -> None:
        while self.queue:
            self.queue.popleft().result()

    def close(self) -> None:
        self.compress.shutdown(cancel_futures=True)
        self.write.shutdown(cancel_futures=True)


def quantize_on_device(attn, keep) -> "torch.Tensor":
    """[heads, n, n] probabilities -> [heads, 2, m] uint8 in the stored form (see lens.stored_form).

    Cut to the stored layout first, then work in place: each pass over the data costs as much as
    a softmax of the forward pass."""
    import torch
    x = torch.index_select(attn.flatten(1), 1, keep) if keep is not None else attn.flatten(1).clone()
    q = x.float().mul_(lens.PATTERN_SCALE).round_().clamp_(0, lens.PATTERN_SCALE).to(torch.int16)
    return q.view(torch.uint8).view(len(q), -1, 2).transpose(1, 2).contiguous()  # little-endian: low byte first


@dataclass
class PromptJob:
    """One prompt of a batch: its tokens, the heads to store per layer, and its open pattern file."""
    prompt: dict
    ids: list[int]
    truncated: bool
    heads: list[tuple[int, int]]
    layer_heads: dict = None
    keep: object = None  # flat positions of the stored layout, on the model's device (None: all)
    writer: lens.PatternWriter = None
    norms: np.ndarray = None  # value norms [n_layers, n_heads, n_tokens], NaN where not stored

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


def stored_heads(pdir: Path) -> set[tuple[int, int]] | None:
    """The heads a finished prompt holds; None when it is not finished (or its file is unreadable)."""
    if not lens.is_finished(pdir):
        return None
    try:
        return set(lens.Patterns(pdir / lens.PATTERN_FILE).heads)
    except (lens.UserError, ValueError, OSError, KeyError):
        return None


def finish_prompt(job: PromptJob, save_path: Path, model_dir: str, str_tokens: list[str], n_layers: int,
                  n_heads: int) -> int:
    """Close the prompt's pattern file, then write prompt.json (its presence marks the prompt done)."""
    size = job.writer.close()
    phash = lens.prompt_hash(job.prompt["text"])
    if job.norms is not None:
        lens.write_atomic(lens.value_norms_path(save_path, model_dir, phash), job.norms.astype("<f4").tobytes())
        size += job.norms.nbytes
    info = {"text": job.prompt["text"], "hash": phash, "tokens": str_tokens, "token_ids": job.ids,
            "n_tokens": len(job.ids), "meta": job.prompt.get("meta", {}), "truncated": job.truncated}
    if len(job.heads) < n_layers * n_heads:
        info["heads"] = lens.format_heads(job.heads, n_layers, n_heads)
    lens.write_json(lens.prompt_json_path(save_path, model_dir, phash), info)
    return size


def estimate_bytes(lengths: list[int], n_heads_stored: int, causal: bool) -> int:
    """Uncompressed bytes of the stored form: 2 bytes per kept value."""
    return sum(2 * n_heads_stored * (n * (n + 1) // 2 if causal else n * n) for n in lengths)


def compute_activations(prompts: list[dict | str], model, save_path: Path | str = lens.DEFAULT_SAVE_PATH,
                        model_name: str | None = None, batch_size: int = BATCH_SIZE, force: bool = False,
                        progress: bool = True, heads: str | None = None, max_tokens: int | None = None,
                        n_workers: int | None = None) -> dict:
    """Compute and save the attention patterns of `prompts` for `model`; return a summary dict.

    `model` is anything with the TransformerLens interface (HookedTransformer, TransformerBridge,
    a wrapper passing calls through). Prompts already saved are skipped unless `force`; `heads`
    (a spec such as `L0-3H*,L5H1`) stores only those heads; `max_tokens` truncates below n_ctx.
    """
    import torch
    from tqdm import tqdm

    save_path = Path(save_path)
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    wanted = lens.parse_heads(heads, n_layers, n_heads) if heads else [(l, h) for l in range(n_layers)
                                                                        for h in range(n_heads)]
    model_name = model_name or getattr(cfg, "model_name", None) or "model"
    model_dir = lens.model_dir_name(model_name)
    prompts = [{"text": p} if isinstance(p, str) else p for p in prompts]
    lens.write_json(lens.model_cfg_path(save_path, model_dir), model_config(model, model_name))
    todo = []
    for p in prompts:
        have = stored_heads(lens.prompt_dir(save_path, model_dir, lens.prompt_hash(p["text"])))
        if force or have is None or not have.issuperset(wanted):
            # asking for heads a prompt lacks recomputes it, keeping the heads it had
            todo.append((p, sorted(set(wanted) | (have or set())) if not force else wanted))
    to_tokens, to_str_tokens = tokenizer_functions(model)
    limit = min(cfg.n_ctx, max_tokens or cfg.n_ctx)
    jobs = []
    for p, job_heads in todo:
        ids = tokenize(to_tokens, p["text"])
        if len(ids) > limit:
            print(f"warning: prompt {lens.prompt_hash(p['text'])} ({p['text'][:40]!r}...) has {len(ids)} tokens, "
                  f"more than {'--max-tokens' if limit < cfg.n_ctx else 'n_ctx'}={limit}: truncated",
                  file=sys.stderr)
        jobs.append(PromptJob(p, ids[:limit], len(ids) > limit, job_heads))
    causal = is_causal(model)
    if jobs and progress:
        print(size_estimate_line(model_dir, [j.n_tokens for j in jobs], len(wanted), n_layers * n_heads,
                                 causal, limit < cfg.n_ctx), file=sys.stderr)
    start, n_bytes, n_tokens = time.perf_counter(), 0, 0
    device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    bar = tqdm(total=len(jobs), unit="prompt", desc=model_dir, disable=not progress)
    stream = PatternStream(n_workers or os.cpu_count() or 1)
    w_o = output_weights(model)
    with torch.inference_mode():
        grams = [w @ w.transpose(1, 2) for w in w_o] if w_o else None
    results = []
    try:
        for batch in make_batches(jobs, [j.n_tokens for j in jobs], batch_size):
            width = max(j.n_tokens for j in batch)
            tokens = torch.full((len(batch), width), pad_id, dtype=torch.long)
            for i, job in enumerate(batch):
                tokens[i, :job.n_tokens] = torch.tensor(job.ids)
                start_prompt(job, save_path, model_dir, n_layers, n_heads, causal, device, grams is not None)
            # Right padding is harmless under a causal mask; an encoder must be told which keys are padding.
            mask = None if causal else (torch.arange(width) < torch.tensor([[j.n_tokens] for j in batch])).long()
            last = max(l for j in batch for l, _ in j.heads)
            forward_patterns(model, tokens.to(device), lambda layer, pattern: stream.submit_layer(batch, layer, pattern),
                             last, None if mask is None else mask.to(device),
                             (lambda layer, v: stream.submit_values(batch, layer, v, grams[layer])) if grams else None)
            for job in batch:
                results.append(stream.finish(finish_prompt, job, save_path, model_dir,
                                             to_str_tokens(torch.tensor(job.ids)), n_layers, n_heads))
                n_tokens += job.n_tokens
            bar.update(len(batch))
        stream.drain()
        n_bytes = sum(f.result() for f in results)
    except BaseException:
        stream.close()
        for job in jobs:
            if job.writer is not None and not job.writer.file.closed:
                job.writer.abort()
        raise
    stream.close()
    bar.close()
    return {"model": model_name, "model_dir": model_dir, "done": len(jobs),
            "skipped": len(prompts) - len(jobs), "tokens": n_tokens,
            "seconds": time.perf_counter() - start, "bytes": n_bytes}


def start_prompt(job: PromptJob, save_path: Path, model_dir: str, n_layers: int, n_heads: int, causal: bool,
                 device, with_norms: bool) -> None:
    """Open the prompt's pattern file and index its heads by layer, before the forward pass."""
    import torch
    n = job.n_tokens
    job.layer_heads = {}
    for l, h in job.heads:
        job.layer_heads.setdefault(l, []).append(h)
    job.keep = torch.from_numpy(lens.tril_positions(n, "tril")).to(device) if causal else None
    phash = lens.prompt_hash(job.prompt["text"])
    lens.prompt_json_path(save_path, model_dir, phash).unlink(missing_ok=True)  # unfinished until rewritten
    job.writer = lens.PatternWriter(lens.patterns_path(save_path, model_dir, phash), n_layers, n_heads, n,
                                    "tril" if causal else "full", job.heads)
    job.norms = np.full((n_layers, n_heads, n), np.nan, np.float32) if with_norms else None


def size_estimate_line(model_dir: str, lengths: list[int], n_stored: int, n_total: int, causal: bool,
                       capped: bool) -> str:
    raw = estimate_bytes(lengths, n_stored, causal)
    hints = []
    if n_stored == n_total:
        hints.append("--heads SPEC stores only some heads")
    if not capped:
        hints.append("--max-tokens N truncates long prompts (bytes grow with tokens squared)")
    return (f"{model_dir}: {len(lengths)} prompts, {sum(lengths):,} tokens, {n_stored} heads each: "
            f"at most {human_bytes(raw)} to write (uint16 before compression; typically 20-60% of that)"
            + (f"; to shrink it: {'; '.join(hints)}" if hints else ""))


def human_bytes(n: float) -> str:
    for unit in ["B", "KB", "MB", "GB"]:
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def summary_line(s: dict, save_path: Path) -> str:
    return (f"{s['model']}: {s['done']} prompts computed, {s['skipped']} skipped (already saved), "
            f"{s['tokens']:,} tokens, {s['seconds']:.1f} s, {s['bytes'] / 1e6:.1f} MB written "
            f"-> {save_path / s['model_dir']}")


def parse_steps(spec: str | None) -> list[int | None]:
    if spec is None:
        return [None]
    try:
        steps = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise lens.UserError(f"--checkpoint {spec}: expected training steps, e.g. 1000 or 0,1000,143000") from None
    if not steps or min(steps) < 0:
        raise lens.UserError(f"--checkpoint {spec}: expected training steps, e.g. 1000 or 0,1000,143000")
    return steps


def check_flags(args) -> None:
    """What argparse's types cannot check alone (counts are checked by lens.positive_int)."""
    if args.device_map and args.device:
        raise lens.UserError("--device-map and --device are exclusive: --device-map places the model itself")


def main(argv=None) -> None:
    args = parse_args(argv)
    shard = lens.parse_shard(args.shard)
    check_flags(args)
    steps = parse_steps(args.checkpoint)
    prompts = load_prompts(args.prompts, args.raw, args.min_chars, args.max_chars)
    prompts = select_prompts(prompts, args.n_samples, args.shuffle, args.seed, shard)
    lens.check_writable_dir(args.save_path)
    import torch
    device = args.device or (None if args.device_map else "cuda" if torch.cuda.is_available() else "cpu")
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise lens.UserError(f"--device {device}: this machine has no CUDA device (try --device cpu)")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for step in steps:
            model = load_model(name, device, args.dtype, args.revision, step, args.device_map, args.n_devices)
            s = compute_activations(prompts, model, args.save_path,
                                    model_name=name if step is None else f"{name}@step{step}",
                                    batch_size=args.batch_size, force=args.force, heads=args.heads,
                                    max_tokens=args.max_tokens)
            print(summary_line(s, args.save_path))
            del model
    from build_index import build_index
    build_index(args.save_path)


if __name__ == "__main__":
    lens.run_main(main, "finished prompts are saved; run the same command again to resume")
