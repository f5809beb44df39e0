"""Compute every head's attention pattern of one or more models over a prompt file.

    python compute_activations.py gpt2 prompts.jsonl
    python compute_activations.py ./my-hf-checkpoint prompts.jsonl --device cuda
    python compute_activations.py gpt2,pythia-70m prompts.jsonl --n-samples 100 --batch-size 16
    python compute_activations.py gpt2 prompts.jsonl --shard 3/8        # one of 8 array jobs
    python compute_activations.py gpt2 pile.jsonl --patterns none       # statistics of every head only
    python compute_activations.py gpt2 --top 5 --stat induction_head    # then the patterns of the extremes
    python compute_activations.py gpt2 --probe       # the probe set the heads' kinds are measured on

Every head's statistics are computed on the model's device for every prompt; the patterns of those
--patterns chooses are stored per prompt (all heads in one compact file). Prompts longer than the
model's context (n_ctx) are truncated to n_ctx tokens, with a warning naming them.

From a notebook, with any model object that has the TransformerLens interface:

    from compute_activations import compute_activations
    compute_activations([{"text": "..."}], model, "attn_data", model_name="my-model")
"""
import argparse
import inspect
import math
import os
import random
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import kinds
import lens
import storage

BATCH_SIZE = 8


class StopForward(Exception):
    """Raised by the hook on the last layer's pattern: nothing after it is needed."""


def parse_args(argv=None) -> argparse.Namespace:
    p = lens.script_parser(__doc__)
    p.add_argument("models", help="model name(s) TransformerLens can load (e.g. gpt2), or a local "
                   "Hugging Face checkpoint directory; several separated by commas")
    p.add_argument("prompts", type=Path, nargs="?",
                   help='JSONL file, one {"text": ..., "meta": {...}} per line (not needed with --top)')
    p.add_argument("--patterns", type=patterns_arg, default="all", metavar="all|none|N",
                   help="whose attention patterns to store: every prompt's (default), none, or a seeded sample of "
                   "N prompts (--seed); head statistics are computed and stored for every prompt either way")
    p.add_argument("--top", type=lens.positive_int, metavar="K",
                   help="store the patterns of each head's K highest and K lowest prompts by the statistics "
                   "already computed (see --stat), and nothing else; the prompts come from the data dir")
    p.add_argument("--stat", metavar="NAME[,NAME...]", help="with --top: these statistics only (default: all)")
    p.add_argument("--probe", action="store_true",
                   help="also compute the shipped probe set (probe.jsonl: repeated random words and a little prose), "
                   "its patterns stored, on which the heads' kinds are measured (docs/kinds.md); no PROMPTS needed")
    p.add_argument("--figures-dir", type=Path, default=lens.FIGURES_DIR,
                   help="where the @statistic plug-ins computed for every prompt live (default: figures/)")
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


def patterns_arg(text: str) -> str | int:
    """argparse type of --patterns: all, none or a count (0 stores none)."""
    if text in ("all", "none"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected all, none or a number of prompts, got {text!r}")
    return int(text)


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
    hub = {} if local else {k: v for k, v in [("revision", revision), ("checkpoint_value", checkpoint)]
                            if v is not None}
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


def value_norms(v, gram) -> "torch.Tensor":  # noqa: F821 (torch is imported where it runs)
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


@dataclass(frozen=True)
class PromptJob:
    """One prompt as the plan decided it: its tokens, the heads to store (none: statistics only) and
    whether its statistics are still to be written."""
    prompt: dict
    hash: str  # lens.prompt_hash of its text
    ids: list[int]
    truncated: bool
    heads: list[tuple[int, int]]
    needs_stats: bool

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


@dataclass
class OpenPrompt:
    """A prompt during its forward pass (PatternStream.open): the files and arrays its hooks fill in."""
    job: PromptJob
    layout: str  # "tril" (causal) or "full"
    layer_heads: dict[int, list[int]]  # the heads to store, by layer
    keep: object  # flat positions of the stored layout on the model's device (None: all)
    writer: storage.PatternWriter | None  # None: nothing stored
    norms: np.ndarray | None  # value norms [n_layers, n_heads, n_tokens]
    plugin_values: np.ndarray | None  # host statistics [n_plugins, n_layers, n_heads]


class PatternStream:
    """Takes each layer's patterns as its hook fires and streams them into the batch's pattern files.

    On the model's device, each prompt's heads are trimmed to its length, cut to the lower
    triangle and quantised to the stored uint16 form (a quarter of float32's bytes); only that
    is copied to the host, where a pool of threads compresses it (zlib releases the GIL) and runs
    the user's host statistics on it while the forward pass goes on, and one writer thread appends
    the streams to each file in order. At most MAX_PENDING bytes wait: memory follows one layer."""

    MAX_PENDING = 256 * 2**20
    GROUP_BYTES = 64 * 2**20  # float32 bytes of heads quantised at once on the device

    def __init__(self, n_workers: int, plugins: list[lens.Figure]):
        import threading
        self.compress = ThreadPoolExecutor(n_workers, thread_name_prefix="compress")
        self.write = ThreadPoolExecutor(1, thread_name_prefix="write")
        self.pending, self.queue = 0, deque()
        self.lock = threading.Lock()
        self.plugins = plugins
        self.plugin_errors: dict[str, str] = {}  # statistic -> the first failure's message
        self.writers: list[storage.PatternWriter] = []  # files opened; those closed since are dropped at each open

    def open(self, job: PromptJob, plan: "RunPlan") -> OpenPrompt:
        """Make what a prompt's forward pass fills in: its pattern file (if it stores any heads), its
        value norms and host statistics (if something needs them)."""
        import torch
        n, layout = job.n_tokens, "tril" if plan.causal else "full"
        layer_heads = {}
        for l, h in job.heads:
            layer_heads.setdefault(l, []).append(h)
        plugin_values = (np.full((len(plan.plugins), plan.n_layers, plan.n_heads), np.nan, np.float32)
                         if plan.plugins and job.needs_stats else None)
        keep = (torch.from_numpy(storage.tril_positions(n, "tril")).to(plan.device)  # what reaches the host is cut
                if plan.causal and (job.heads or plugin_values is not None) else None)  # to the lower triangle
        norms = np.full((plan.n_layers, plan.n_heads, n), np.nan, np.float32) if plan.grams is not None else None
        writer = None
        if job.heads:
            lens.prompt_json_path(plan.save_path, plan.model_dir, job.hash).unlink(missing_ok=True)  # unfinished
            writer = storage.PatternWriter(lens.patterns_path(plan.save_path, plan.model_dir, job.hash),
                                           plan.n_layers, plan.n_heads, n, layout, job.heads)
            # only the files still open are kept: a 100,000-prompt run does not hold every finished writer
            self.writers = [w for w in self.writers if not w.file.closed] + [writer]
        return OpenPrompt(job, layout, layer_heads, keep, writer, norms, plugin_values)

    def submit_values(self, batch: list[OpenPrompt], layer: int, v, gram) -> None:
        norms = value_norms(v, gram).cpu().numpy()
        for i, o in enumerate(batch):
            if o.norms is not None:
                o.norms[layer] = norms[i, :, :o.job.n_tokens]

    def submit_layer(self, batch: list[OpenPrompt], layer: int, pattern) -> None:
        for i, o in enumerate(batch):
            heads = list(range(pattern.shape[1])) if o.plugin_values is not None else o.layer_heads.get(layer)
            if not heads:
                continue
            n = o.job.n_tokens
            group = max(1, self.GROUP_BYTES // (4 * n * n))
            for g in range(0, len(heads), group):
                idx = heads[g:g + group]
                stored = quantize_on_device(pattern[i, idx, :n, :n], o.keep).cpu().numpy()
                self._submit(o, layer, idx, stored)

    def _submit(self, o: OpenPrompt, layer: int, idx: list[int], stored: np.ndarray) -> None:
        while self.pending > self.MAX_PENDING and self.queue:
            self.queue.popleft().result()
        streams = self.compress.submit(self._encode, o, layer, idx, stored)
        with self.lock:
            self.pending += stored.nbytes
        self.queue.append(self.write.submit(self._append, o.writer, streams, stored.nbytes))

    def _encode(self, o: OpenPrompt, layer: int, idx: list[int], stored: np.ndarray) -> list[bytes]:
        """In a worker: the host statistics of every head given, and the streams of those to store."""
        if o.plugin_values is not None:
            for k, h in enumerate(idx):
                attn = storage.decode_stored(stored[k], o.job.n_tokens, o.layout)
                inputs = {"token_ids": o.job.ids, "value_norms": None if o.norms is None else o.norms[layer, h]}
                for s, fig in enumerate(self.plugins):
                    o.plugin_values[s, layer, h] = self._run_plugin(fig, attn, inputs, o.job, layer, h)
        keep = set(o.layer_heads.get(layer, ()))
        return storage.head_streams(stored[[k for k, h in enumerate(idx) if h in keep]]) if keep else []

    def _run_plugin(self, fig: lens.Figure, attn: np.ndarray, inputs: dict, job, layer: int, head: int) -> float:
        try:
            return float(lens.call_plugin(fig, attn, inputs))
        except Exception as e:  # a user's statistic failing on one head must not stop the run
            self.plugin_errors.setdefault(fig.name, f"{fig.source}: {fig.name} failed on L{layer}H{head} of prompt "
                                          f"{job.hash}: {type(e).__name__}: {e}")
            return math.nan

    def _append(self, writer: storage.PatternWriter | None, streams, nbytes: int) -> None:
        try:
            if writer is not None:
                writer.add(streams.result())
            else:
                streams.result()
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

    def settle(self) -> None:
        """After an interruption: let what the device already computed reach the disk (its failures are moot)."""
        while self.queue:
            try:
                self.queue.popleft().result()
            except Exception:
                pass

    def close(self) -> None:
        """Stop the threads and drop every pattern file not finished (none after a whole run)."""
        self.compress.shutdown(cancel_futures=True)
        self.write.shutdown(cancel_futures=True)
        for writer in self.writers:
            if not writer.file.closed:
                writer.abort()


DEVICE_STATISTICS = ("bos", "diagonal", "entropy", "previous_token_head", "duplicate_token_head", "induction_head")


class DeviceStats:
    """The built-in statistics (figures/head_stats.py's definitions) of every head of a batch, computed on
    the model's device from the exact patterns as each layer's hook fires: no pattern needs to reach the host.

    Each layer costs a gather, two reductions and three small matmuls; their sums are kept per layer and
    turned into the statistics once per batch (`values`). What depends only on the tokens (padding, the
    (query, key) pairs where a token repeats) is found on the host with numpy and sent over once."""

    GROUP_BYTES = 64 * 2**20  # float32 bytes of one entropy pass

    def __init__(self, jobs: list["PromptJob"], tokens: np.ndarray, device, n_layers: int, n_heads: int):
        """`tokens`: the batch [batch, width], right-padded, on the host."""
        import torch
        b, width = tokens.shape
        n = np.array([j.n_tokens for j in jobs])
        q = np.arange(width)
        valid = (q[None] < n[:, None]).astype(np.float32)  # [batch, pos]: a real query
        after_first = valid * (q[None] >= 1)
        per_query = np.maximum(n - 1, 1).astype(np.float32)[:, None]
        # The five linear scores are sums of pattern entries with weights: gather each prompt's entries (first
        # key, diagonal, previous token, its repeat pairs, the keys after them) and one matmul weighs them.
        idx, weight = repeat_pairs(tokens, n)
        first = np.broadcast_to(q * width, (b, width))
        # a real pair's key is before its query, so the key after it is in the pattern; the padding slots
        # (weight 0) are kept in range for a batch of one-token prompts
        idx = np.concatenate([first, first + q, first + np.maximum(q - 1, 0), idx,
                              np.minimum(idx + 1, width * width - 1)], 1)
        weights = np.zeros((b, idx.shape[1], 5), np.float32)
        at = np.cumsum([0, width, width, width, weight.shape[1], weight.shape[1]])
        for s, w in enumerate([after_first / per_query, after_first / per_query, after_first, weight, weight]):
            weights[:, at[s]:at[s + 1], s] = w
        rows = np.stack([valid, -after_first / (per_query * math.log(2))], 2)  # weights of sum(A) and entropy

        def put(a, dtype):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)
        self.idx = put(idx, torch.long)[:, None].expand(-1, n_heads, -1)
        self.weights, self.rows = put(weights, torch.float32), put(rows, torch.float32)
        self.defined = n >= 2  # detect_head refuses one-token prompts; the means need two
        # per layer: the five linear sums; sum(A) over the real queries (detect_head's denominator) and the
        # mean entropy of those after the first, each read from a product with both row weights
        self.linear = torch.empty((n_layers, b, n_heads, 5), device=device)
        self.total = torch.empty((n_layers, b, n_heads, 2), device=device)
        self.entropy = torch.empty((n_layers, b, n_heads, 2), device=device)

    def add_layer(self, layer: int, pattern) -> None:
        """One layer's sums from its pattern [batch, heads, pos, pos]."""
        import torch
        here = pattern.device == self.linear.device  # else a model split over devices: the small sums come back
        idx, weights, rows = (x if here else x.to(pattern.device) for x in (self.idx, self.weights, self.rows))
        picked = torch.gather(pattern.reshape(*pattern.shape[:2], -1), 2, idx).float()
        for out, x, w in [(self.linear, picked, weights), (self.total, pattern.sum(-1, dtype=torch.float32), rows),
                          (self.entropy, self.bits(pattern), rows)]:
            if here:
                torch.bmm(x, w, out=out[layer])
            else:
                out[layer].copy_(torch.bmm(x, w))

    def bits(self, pattern) -> "torch.Tensor":  # noqa: F821 (torch is imported where it runs)
        """sum_k x log x of every query row [batch, heads, pos], a group of heads at a time (bounded memory)."""
        import torch
        b, h, p, _ = pattern.shape
        group = max(1, self.GROUP_BYTES // (4 * b * p * p))
        out = torch.empty((b, h, p), device=pattern.device)
        for g in range(0, h, group):
            x = pattern[:, g:g + group]
            # x log x, 0 where x < 1e-30 (those add less than 1e-28 bits): the clamp keeps denormal probabilities,
            # which softmax makes plenty of and a CPU takes ~10x longer over, out of the log
            y = x.clamp_min(1e-30) if x.dtype == torch.float32 else x.float().clamp_min_(1e-30)
            torch.sum(y.log_().mul_(x), -1, out=out[:, g:g + group])
        return out

    def values(self) -> np.ndarray:
        """[batch, statistics (DEVICE_STATISTICS' order), layers, heads]: NaN for one-token prompts."""
        linear, total, entropy = (x.cpu().numpy().transpose(1, 0, 2, 3) for x in (self.linear, self.total,
                                                                                 self.entropy))
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.stack([linear[..., 0], linear[..., 1], entropy[..., 1],
                          *(linear[..., k] / total[..., 0] for k in (2, 3, 4))], 1)
        v[~self.defined] = np.nan
        return v


def repeat_pairs(tokens: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat pattern indices (query * width + key) of every query whose token appeared at an earlier key,
    per prompt of the batch [batch, width] padded to the longest list, and 0/1 weights marking the real
    ones: detect_head's duplicate-token pattern; its induction pattern is the key after each (index + 1)."""
    b, width = tokens.shape
    valid = np.arange(width)[None] < n[:, None]
    same = (tokens[:, :, None] == tokens[:, None, :]) & np.tri(width, width, -1, bool) & valid[:, :, None]
    flat = np.flatnonzero(same)  # row * width^2 + query * width + key
    row, pair = np.divmod(flat, width * width)
    counts = np.bincount(row, minlength=b)
    size = max(1, int(counts.max())) if len(row) else 1
    slot = np.arange(len(row)) - (np.cumsum(counts) - counts)[row]
    idx = np.zeros((b, size), np.int64)
    weight = np.zeros((b, size), np.float32)
    idx[row, slot], weight[row, slot] = pair, 1
    return idx, weight


def quantize_on_device(attn, keep) -> "torch.Tensor":  # noqa: F821 (torch is imported where it runs)
    """[heads, n, n] probabilities -> [heads, 2, m] uint8 in the stored form (see storage.stored_form).

    Cut to the stored layout first, then work in place: each pass over the data costs as much as
    a softmax of the forward pass."""
    import torch
    if keep is not None and keep.device != attn.device:  # a layer on another device of a split model
        keep = keep.to(attn.device)
    x = torch.index_select(attn.flatten(1), 1, keep) if keep is not None else attn.flatten(1).clone()
    q = x.float().mul_(storage.PATTERN_SCALE).round_().clamp_(0, storage.PATTERN_SCALE).to(torch.int16)
    return q.view(torch.uint8).view(len(q), -1, 2).transpose(1, 2).contiguous()  # little-endian: low byte first


def stored_heads(pdir: Path) -> set[tuple[int, int]] | None:
    """The heads a finished prompt holds; None when it is not finished (or its file is unreadable)."""
    if not lens.is_finished(pdir):
        return None
    try:
        return set(storage.Patterns(pdir / lens.PATTERN_FILE).heads)
    except (lens.UserError, ValueError, OSError, KeyError):
        return None


def finish_prompt(o: OpenPrompt, plan: "RunPlan", str_tokens: list[str]) -> int:
    """Close the prompt's pattern file, then write prompt.json (its presence marks the prompt done)."""
    job, n_layers, n_heads = o.job, plan.n_layers, plan.n_heads
    size = o.writer.close()
    if o.norms is not None:
        norms = np.full_like(o.norms, np.nan)  # NaN where a head is not stored
        for l, h in job.heads:
            norms[l, h] = o.norms[l, h]
        lens.write_atomic(lens.value_norms_path(plan.save_path, plan.model_dir, job.hash),
                          norms.astype("<f4").tobytes())
        size += norms.nbytes
    info = {"text": job.prompt["text"], "hash": job.hash, "tokens": str_tokens, "token_ids": job.ids,
            "n_tokens": len(job.ids), "meta": job.prompt.get("meta", {}), "truncated": job.truncated}
    if len(job.heads) < n_layers * n_heads:
        info["heads"] = lens.format_heads(job.heads, n_layers, n_heads)
    lens.write_json(lens.prompt_json_path(plan.save_path, plan.model_dir, job.hash), info)
    return size


class StatsPart:
    """This run's statistics part (storage.read_parts reads it): created on first use, appended batch by batch."""

    def __init__(self, save_path: Path, model_dir: str, stats: list[lens.Figure], n_layers: int, n_heads: int):
        now = time.time_ns()  # names sort as the runs started (the index's row order): to the nanosecond
        run = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}-{os.getpid()}-" \
              f"{os.urandom(3).hex()}"  # shards never collide
        self.header = storage.parts_dir(save_path, model_dir) / f"{run}.json"
        # the docs travel with the values: the site shows them whichever figures dir build_index.py reads
        self.meta = {"stats": [f.name for f in stats], "docs": {f.name: inspect.getdoc(f.func) or "" for f in stats},
                     "n_layers": n_layers, "n_heads": n_heads}
        self.rows = 0

    def append(self, jobs: list[PromptJob], values: np.ndarray) -> None:
        """Values [prompts, stats, layers, heads] first, then one line per prompt: a line means its values are whole."""
        if not self.rows:
            lens.write_json(self.header, self.meta)
        with open(self.header.with_suffix(".f32"), "ab") as f:
            f.write(values.astype("<f4").tobytes())
        lines = [{"hash": j.hash, "text": j.prompt["text"], "n_tokens": j.n_tokens,
                  "meta": j.prompt.get("meta", {}), "truncated": j.truncated} for j in jobs]
        with open(self.header.with_suffix(".jsonl"), "ab") as f:
            f.write(lens.jsonl_bytes(lines))
        self.rows += len(jobs)


def estimate_bytes(lengths: list[int], n_heads_stored: int, causal: bool) -> int:
    """Uncompressed bytes of the stored form: 2 bytes per kept value."""
    return sum(2 * n_heads_stored * (n * (n + 1) // 2 if causal else n * n) for n in lengths)


def sample_hashes(prompts: list[dict], n: int, seed: int) -> set[str]:
    """A seeded sample of n prompts, the same whichever shard asks: ranked by a hash of (seed, prompt hash)."""
    import hashlib
    hashes = sorted({lens.prompt_hash(p["text"]) for p in prompts})
    return set(sorted(hashes, key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).digest())[:n])


@dataclass
class RunPlan:
    """What one compute run does for one model, decided before the first forward pass."""
    save_path: Path
    model_name: str
    model_dir: str
    n_layers: int
    n_heads: int
    causal: bool
    jobs: list[PromptJob]
    n_skipped: int
    wanted: list[tuple[int, int]]
    plugins: list[lens.Figure]
    part: StatsPart
    limit: int
    device: object  # where the model's first parameters live: batches go there
    grams: list | None  # see output_grams


def plan_run(prompts: list[dict], model, *, save_path: Path, model_name: str, force: bool, heads: str | None,
             max_tokens: int | None, patterns, figures_dir: Path) -> RunPlan:
    """Which prompts need patterns (the heads asked for) or statistics, tokenised, with this run's part."""
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    wanted = lens.parse_heads(heads, n_layers, n_heads) if heads else [(l, h) for l in range(n_layers)
                                                                        for h in range(n_heads)]
    model_dir = lens.model_dir_name(model_name)
    registry, errors = lens.load_figures(figures_dir)
    for error in errors:
        print(f"warning: skipping a figure file that failed to import: {error}", file=sys.stderr)
    statistics = [f for f in registry.values() if f.kind == "statistic"]
    device_names = [name for name in DEVICE_STATISTICS if name in registry]
    plugins = [f for f in statistics if f.name not in DEVICE_STATISTICS]
    store = (set() if patterns == "none" else None if patterns == "all"
             else sample_hashes(prompts, patterns, 0) if isinstance(patterns, int) else set(patterns))
    have_stats = set() if force else part_hashes(save_path, model_dir)
    to_tokens, _ = tokenizer_functions(model)
    limit = min(cfg.n_ctx, max_tokens or cfg.n_ctx)
    jobs = []
    for p in prompts:
        phash = lens.prompt_hash(p["text"])
        job_heads = []
        if store is None or phash in store:
            have = None if force else stored_heads(lens.prompt_dir(save_path, model_dir, phash))
            if have is None or not have.issuperset(wanted):  # asking for heads a prompt lacks recomputes it,
                job_heads = sorted(set(wanted) | (have or set()))  # keeping the heads it had
        if not job_heads and phash in have_stats:
            continue
        ids = tokenize(to_tokens, p["text"])
        if len(ids) > limit:
            print(f"warning: prompt {phash} ({p['text'][:40]!r}...) has {len(ids)} tokens, "
                  f"more than {'--max-tokens' if limit < cfg.n_ctx else 'n_ctx'}={limit}: truncated",
                  file=sys.stderr)
        jobs.append(PromptJob(p, phash, ids[:limit], len(ids) > limit, job_heads, phash not in have_stats))
    import torch
    part = StatsPart(save_path, model_dir, [registry[n] for n in device_names] + plugins, n_layers, n_heads)
    device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
    needs_norms = any(j.heads for j in jobs) or any("value_norms" in f.options["inputs"] for f in plugins)
    return RunPlan(save_path, model_name, model_dir, n_layers, n_heads, is_causal(model), jobs,
                   len(prompts) - len(jobs), wanted, plugins, part, limit, device, output_grams(model, needs_norms))


def compute_activations(prompts: list[dict | str], model, save_path: Path | str = lens.DEFAULT_SAVE_PATH,
                        model_name: str | None = None, batch_size: int = BATCH_SIZE, force: bool = False,
                        progress: bool = True, heads: str | None = None, max_tokens: int | None = None,
                        n_workers: int | None = None, patterns: str | int | set = "all",
                        figures_dir: Path = lens.FIGURES_DIR) -> dict:
    """Compute the head statistics of `prompts` for `model`, and save the attention patterns of those
    `patterns` names ("all", "none", a number of prompts to sample, or a set of prompt hashes); return a summary.

    `model` is anything with the TransformerLens interface (HookedTransformer, TransformerBridge,
    a wrapper passing calls through). Prompts already saved are skipped unless `force`; `heads`
    (a spec such as `L0-3H*,L5H1`) stores only those heads; `max_tokens` truncates below n_ctx.
    """
    from tqdm import tqdm

    save_path = Path(save_path)
    model_name = model_name or getattr(model.cfg, "model_name", None) or "model"
    prompts = [{"text": p} if isinstance(p, str) else p for p in prompts]
    plan = plan_run(prompts, model, save_path=save_path, model_name=model_name, force=force, heads=heads,
                    max_tokens=max_tokens, patterns=patterns, figures_dir=Path(figures_dir))
    lens.write_json(lens.model_cfg_path(save_path, plan.model_dir), model_config(model, model_name))
    stored = [j for j in plan.jobs if j.heads]
    if stored and progress:
        print(size_estimate_line(plan.model_dir, [j.n_tokens for j in stored], len(plan.wanted),
                                 plan.n_layers * plan.n_heads, plan.causal, plan.limit < model.cfg.n_ctx),
              file=sys.stderr)
    start = time.perf_counter()
    bar = tqdm(total=len(plan.jobs), unit="prompt", desc=plan.model_dir, disable=not progress)
    stream = PatternStream(n_workers or os.cpu_count() or 1, plan.plugins)
    try:
        results = []
        for batch in make_batches(plan.jobs, [j.n_tokens for j in plan.jobs], batch_size):
            results += run_batch(model, batch, plan, stream)
            bar.update(len(batch))
        stream.drain()
        n_bytes = sum(f.result() for f in results)
    except BaseException:
        stream.settle()  # the batches before the interruption are kept; a second Ctrl-C stops this too
        raise
    finally:
        stream.close()  # drops the pattern files left unfinished
        bar.close()
    for message in stream.plugin_errors.values():
        print(f"warning: {message} (its value is missing there)", file=sys.stderr)
    return {"model": model_name, "model_dir": plan.model_dir, "done": len(plan.jobs), "skipped": plan.n_skipped,
            "stored": len(stored), "tokens": sum(j.n_tokens for j in plan.jobs),
            "seconds": time.perf_counter() - start, "bytes": n_bytes}


def run_batch(model, batch: list[PromptJob], plan: RunPlan, stream: PatternStream) -> list:
    """One forward pass: statistics on the device for every head, patterns streamed to disk for the
    prompts that store them; the part and prompt.json files are written on the writer thread, in order."""
    import torch
    device, grams = plan.device, plan.grams
    width = max(j.n_tokens for j in batch)
    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    tokens = torch.tensor([job.ids + [pad_id] * (width - job.n_tokens) for job in batch])
    opened = [stream.open(job, plan) for job in batch]
    # Right padding is harmless under a causal mask; an encoder must be told which keys are padding.
    mask = None if plan.causal else (torch.arange(width) < torch.tensor([[j.n_tokens] for j in batch])).long()
    stats = DeviceStats(batch, tokens.numpy(), device, plan.n_layers, plan.n_heads)
    tokens = tokens.to(device)

    def on_layer(layer, pattern):
        stats.add_layer(layer, pattern)
        stream.submit_layer(opened, layer, pattern)

    forward_patterns(model, tokens, on_layer, plan.n_layers - 1, None if mask is None else mask.to(device),
                     (lambda layer, v: stream.submit_values(opened, layer, v, grams[layer])) if grams else None)
    values = stats.values()[:, [DEVICE_STATISTICS.index(n) for n in plan.part.meta["stats"] if n in DEVICE_STATISTICS]]
    to_str_tokens = tokenizer_functions(model)[1] if any(o.job.heads for o in opened) else None
    results = [stream.finish(finish_prompt, o, plan, to_str_tokens(torch.tensor(o.job.ids)))
               for o in opened if o.job.heads]
    fresh = [i for i, job in enumerate(batch) if job.needs_stats]
    if fresh:
        stream.finish(lambda: plan.part.append([batch[i] for i in fresh], np.concatenate(
            [values[fresh], *([np.stack([opened[i].plugin_values for i in fresh])] if plan.plugins else [])], 1)))
    return results


def output_grams(model, needed: bool) -> list | None:
    """W_O W_O^T per layer, from which value norms come; None when nothing needs them or the model hides W_O."""
    import torch
    w_o = output_weights(model) if needed else None
    with torch.inference_mode():
        return [w @ w.transpose(1, 2) for w in w_o] if w_o else None


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
            f"{s['stored']} of them with patterns stored, "
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


def check_writable_dir(save_path: Path) -> None:
    """Fail before any work when the data dir to write is a file or cannot be created."""
    save_path = Path(save_path)
    if save_path.exists() and not save_path.is_dir():
        raise lens.UserError(f"--save-path {save_path}: a file, not a directory")
    existing = next(p for p in [save_path.absolute(), *save_path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise lens.UserError(f"--save-path {save_path}: cannot be created ({existing} is a file)")
    created = [p for p in [save_path.absolute(), *save_path.absolute().parents] if not p.exists()]
    try:  # try it: os.access says yes to root, even where nothing can be created (/proc, a read-only mount)
        save_path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=save_path).close()
    except OSError as e:
        raise lens.UserError(f"--save-path {save_path}: cannot be created or written ({e.strerror})") from None
    finally:
        for p in created:  # nothing is left behind by the check itself
            if p.is_dir():
                p.rmdir()


def part_hashes(save_path: Path, model: str) -> set[str]:
    """The prompts whose statistics some part holds."""
    return {row["hash"] for part in storage.read_parts(save_path, model) for row in part.rows}


def main(argv=None) -> None:
    args = parse_args(argv)
    shard = lens.parse_shard(args.shard)
    check_flags(args)
    steps = parse_steps(args.checkpoint)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    runs = [(name, step, name if step is None else f"{name}@step{step}") for name in names for step in steps]
    if args.top:
        from build_index import top_prompts
        work = {model_name: top_prompts(args.save_path, model_name, args.top, args.stat) for _, _, model_name in runs}
    else:
        if args.prompts is None and not args.probe:
            raise lens.UserError("PROMPTS: a prompts file is needed (or --top K, to store the top prompts "
                                 "of statistics already computed, or --probe, the probe set alone)")
        prompts = load_prompts(args.prompts, args.raw, args.min_chars, args.max_chars) if args.prompts else []
        prompts = select_prompts(prompts, args.n_samples, args.shuffle, args.seed, None)
        # the sample is drawn from every prompt, so shards together store the same N as one run
        store = sample_hashes(prompts, args.patterns, args.seed) if isinstance(args.patterns, int) else args.patterns
        if args.probe:  # the kinds are measured on its stored patterns, whatever --patterns says of the others
            texts = {p["text"] for p in prompts}
            probe = [p for p in kinds.probe_prompts() if p["text"] not in texts]
            prompts += probe
            if store != "all":
                store = (set() if store == "none" else set(store)) | {lens.prompt_hash(p["text"]) for p in probe}
        prompts = [p for p in prompts if lens.in_shard(lens.prompt_hash(p["text"]), shard)]
        work = {model_name: (prompts, store) for _, _, model_name in runs}
    check_writable_dir(args.save_path)
    import torch
    device = args.device or (None if args.device_map else "cuda" if torch.cuda.is_available() else "cpu")
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise lens.UserError(f"--device {device}: this machine has no CUDA device (try --device cpu)")
    for name, step, model_name in runs:
        prompts, store = work[model_name]
        model = load_model(name, device, args.dtype, args.revision, step, args.device_map, args.n_devices)
        s = compute_activations(prompts, model, args.save_path, model_name=model_name, batch_size=args.batch_size,
                                force=args.force, heads=args.heads, max_tokens=args.max_tokens, patterns=store,
                                figures_dir=args.figures_dir)
        print(summary_line(s, args.save_path))
        del model
    from build_index import build_index
    build_index(args.save_path)


if __name__ == "__main__":
    lens.run_main(main, "finished prompts are saved; run the same command again to resume")
