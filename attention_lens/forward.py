"""The model and its forward pass: loading a model, the hooks that catch each layer's pattern, and all the work
done on the model's device inside the forward pass (the built-in statistics, quantising patterns to their stored
form, value norms) plus the threads that stream the stored patterns to disk meanwhile. The one module that
imports torch; compute_activations.py plans a run and drives it through here."""
import functools
import inspect
import math
import sys
import threading
import time
import types
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from attention_lens import datadir, lens, storage

# ---- loading a model ----

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"


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


def pick_device(device: str | None, device_map: str | None) -> str | None:
    """--device, else cuda when there is one (None: --device-map places the model itself)."""
    device = device or (None if device_map else "cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device or "cpu")
    except RuntimeError as e:
        raise lens.UserError(f"--device {device}: {str(e).splitlines()[0]}") from None
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        raise lens.UserError(f"--device {device}: this machine has no CUDA device (try --device cpu)")
    return device


def model_device(model) -> torch.device:
    """Where the model's first parameters live: batches go there."""
    return next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")


def model_config(model, model_name: str) -> dict:
    """model_cfg.json: the model's names and lens.MODEL_CFG_KEYS of its TransformerLens config."""
    cfg = model.cfg
    out = {"model_name": model_name, "model_dir": lens.model_dir_name(model_name)}
    for key in lens.MODEL_CFG_KEYS:
        value = getattr(cfg, key, None)
        out[key] = value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
    return out


def tokenizer_functions(model):
    """(to_tokens, to_str_tokens) of a model; auto_circuit's PatchableModel returns them from zero-argument methods."""
    fns = [model.to_tokens, model.to_str_tokens]
    return [f() if not inspect.signature(f).parameters else f for f in fns]


def token_strings(model):
    """ids -> the model's token strings, as prompt.json keeps them."""
    to_str_tokens = tokenizer_functions(model)[1]
    return lambda ids: to_str_tokens(torch.tensor(ids))


def is_causal(model) -> bool:
    """Whether the model only attends backwards (decoders); encoders such as BERT attend both ways."""
    return getattr(model.cfg, "attention_dir", "causal") != "bidirectional"


# ---- hooks: each layer's pattern (and value vectors) as the forward pass makes them ----

class StopForward(Exception):
    """Raised by the hook on the last layer's pattern: nothing after it is needed."""


def is_pattern_hook(name: str) -> bool:
    return name.endswith("attn.hook_pattern")


def is_value_hook(name: str) -> bool:
    return name.endswith("attn.hook_v")


def forward_patterns(model, tokens, on_layer, last_layer: int, attention_mask=None, on_values=None) -> None:
    """Run the model on a right-padded batch, calling on_layer(layer, pattern [batch, heads, pos, pos])
    as each layer's pattern is made (and on_values(layer, v [batch, pos, kv_heads, d_head]) before it);
    the forward pass stops after `last_layer`'s pattern (the rest of the model, up to the
    unembedding, would be wasted work)."""
    kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}

    def pattern_hook(pattern, hook):
        layer = hook.layer()
        if layer <= last_layer:
            on_layer(layer, pattern.detach())
        if layer >= last_layer:
            raise StopForward

    def value_hook(v, hook):
        layer = hook.layer()
        if layer <= last_layer:
            on_values(layer, v.detach())

    hooks = [(is_pattern_hook, pattern_hook)] + ([(is_value_hook, value_hook)] if on_values else [])
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


def output_grams(model, needed: bool) -> list | None:
    """W_O W_O^T per layer, from which value norms come; None when nothing needs them or the model hides W_O."""
    w_o = output_weights(model) if needed else None
    with torch.inference_mode():
        return [w @ w.transpose(1, 2) for w in w_o] if w_o else None


def value_norms(v, gram) -> torch.Tensor:
    """||v_j W_O^h|| for every head and position: [batch, heads, pos] from v [batch, pos, kv_heads, d_head].

    With grouped-query attention, query head h reads key-value head h // (heads / kv_heads), as
    Hugging Face's repeat_kv. The norm comes from the Gram matrix W_O W_O^T [heads, d_head, d_head]:
    d_head / d_model of the work of multiplying by W_O."""
    v = v.float().repeat_interleave(gram.shape[0] // v.shape[2], dim=2)
    return torch.einsum("bphd,hde,bphe->bhp", v, gram, v).clamp_min_(0).sqrt_()


# ---- one batch: the prompts' jobs, the stream of stored patterns, the statistics on the device ----

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

    def part_row(self) -> dict:
        """Its line in the run's statistics part (storage.StatsPart); n_repeated weighs its induction_score in a
        pooled one (headvis.py)."""
        return {"hash": self.hash, "text": self.prompt["text"], "n_tokens": self.n_tokens,
                "meta": self.prompt.get("meta", {}), "truncated": self.truncated, "n_repeated": n_repeated(self.ids)}


def n_repeated(ids) -> int:
    """How many positions hold a token seen earlier in the prompt: Neuronpedia's induction score's denominator."""
    return len(ids) - len(set(ids))


def runs_plugins(job: PromptJob, plugins: list) -> bool:
    """Whether the host's plug-in statistics run on a prompt (they read each head's whole pattern)."""
    return bool(plugins) and job.needs_stats


def needs_patterns(job: PromptJob, plugins: list) -> bool:
    """Whether a prompt needs its whole patterns (heads to store, plug-ins to run): eager attention, n^2 per head."""
    return bool(job.heads) or runs_plugins(job, plugins)


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

    def __init__(self, n_workers: int, plugins: list[lens.Figure], *, save_path: Path, model_dir: str,
                 shape: tuple[int, int], causal: bool, device, with_norms: bool, time_limit: float | None = None):
        self.save_path, self.model_dir, self.shape = save_path, model_dir, shape
        self.time_limit, self.timed_out = time_limit, set()  # seconds a plug-in may take on a head; those over it
        self.causal, self.device, self.with_norms = causal, device, with_norms
        self.compress = ThreadPoolExecutor(n_workers, thread_name_prefix="compress")
        self.write = ThreadPoolExecutor(1, thread_name_prefix="write")
        self.pending, self.queue = 0, deque()
        self.lock = threading.Lock()
        self.plugins = plugins
        self.plugin_errors: dict[str, list] = {}  # statistic -> [the first failure's message, how many failed]
        self.writers: list[storage.PatternWriter] = []  # files opened; those closed since are dropped at each open

    def open(self, job: PromptJob) -> OpenPrompt:
        """Make what a prompt's forward pass fills in: its pattern file (if it stores any heads), its
        value norms and host statistics (if something needs them)."""
        n, layout = job.n_tokens, "tril" if self.causal else "full"
        layer_heads = {}
        for l, h in job.heads:
            layer_heads.setdefault(l, []).append(h)
        plugin_values = (np.full((len(self.plugins), *self.shape), np.nan, np.float32)
                         if runs_plugins(job, self.plugins) else None)
        keep = (torch.from_numpy(storage.tril_positions(n, "tril")).to(self.device)  # what reaches the host is cut
                if self.causal and (job.heads or plugin_values is not None) else None)  # to the lower triangle
        norms = np.full((*self.shape, n), np.nan, np.float32) if self.with_norms else None
        writer = None
        if job.heads:
            datadir.prompt_json_path(self.save_path, self.model_dir, job.hash).unlink(missing_ok=True)  # unfinished
            writer = storage.PatternWriter(datadir.patterns_path(self.save_path, self.model_dir, job.hash),
                                           *self.shape, n, layout, job.heads)
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
        """A user's statistic on one head; NaN, counted, when it fails. It runs in a worker thread, which nothing
        can interrupt: a call over the time limit fails once it returns, and the statistic is skipped from then on
        (render_figures.py's limit interrupts the call itself)."""
        where = f"L{layer}H{head} of prompt {job.hash}"
        if fig.name in self.timed_out:
            return self._failed(fig, where, f"skipped after taking more than {self.time_limit:g} s on a head")
        start = time.perf_counter()
        try:
            value = lens.statistic_value(lens.call_plugin(fig, attn, inputs))
        except Exception as e:  # a user's statistic failing on one head must not stop the run
            return self._failed(fig, where, f"{type(e).__name__}: {e}")
        took = time.perf_counter() - start
        if self.time_limit and took > self.time_limit:
            self.timed_out.add(fig.name)
            return self._failed(fig, where, f"took {took:.1f} s, more than --time-limit {self.time_limit:g} s; "
                                "skipped for the rest of the run")
        return value

    def _failed(self, fig: lens.Figure, where: str, why: str) -> float:
        with self.lock:
            self.plugin_errors.setdefault(fig.name, [f"{fig.source}: {fig.name} failed on {where}: {why}", 0])[1] += 1
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


def quantize_on_device(attn, keep) -> torch.Tensor:
    """[heads, n, n] probabilities -> [heads, 2, m] uint8 in the stored form (see storage.stored_form).

    Cut to the stored layout first, then work in place: each pass over the data costs as much as
    a softmax of the forward pass."""
    if keep is not None and keep.device != attn.device:  # a layer on another device of a split model
        keep = keep.to(attn.device)
    x = torch.index_select(attn.flatten(1), 1, keep) if keep is not None else attn.flatten(1).clone()
    q = x.float().mul_(storage.PATTERN_SCALE).round_().clamp_(0, storage.PATTERN_SCALE).to(torch.int16)
    return q.view(torch.uint8).view(len(q), -1, 2).transpose(1, 2).contiguous()  # little-endian: low byte first


DEVICE_STATISTICS = ("bos", "diagonal", "entropy", "previous_token_head", "duplicate_token_head", "induction_head",
                     "max_attention", "qk_distance", "qk_distance_variance", "induction_score")
INDUCTION_THRESHOLD = 0.01  # induction_score drops the weights under it (Neuronpedia's; figures/head_stats.py)
LOOKBACK_EDGES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)  # bin i: [edge i, edge i+1); last: 4096+


class DeviceStats:
    """The built-in statistics (figures/head_stats.py's definitions) of every head of a batch, computed on
    the model's device from the exact patterns as each layer's hook fires: no pattern needs to reach the host.

    Each layer costs a gather, two reductions and three small matmuls; their sums are kept per layer and
    turned into the statistics once per batch (`values`). What depends only on the tokens (padding, the
    (query, key) pairs where a token repeats) is found on the host with numpy and sent over once.
    The look-back statistics come from the attention mass at each exact distance q - k, summed over the real
    queries (a copy that skews each row so that its distances line up, then one matmul); `sums`, when
    given, also takes that mass and each token's query- and key-side mass for the model-wide totals."""

    GROUP_BYTES = 64 * 2**20  # float32 bytes of one entropy pass

    def __init__(self, n: np.ndarray, tokens: np.ndarray, device, n_layers: int, n_heads: int,
                 causal: bool = True, sums: "HeadSums | None" = None, fresh: np.ndarray | None = None):
        """`tokens`: the batch [batch, width], right-padded, on the host; `n`: each prompt's length; `fresh`: the
        prompts whose statistics are new (only those go into `sums`)."""
        b, width = tokens.shape
        q = np.arange(width)
        valid, after_first, per_query = self.allocate(n, tokens, device, n_layers, n_heads, causal, sums, fresh)
        # The six linear scores are sums of pattern entries with weights: gather each prompt's entries (first
        # key, diagonal, previous token, its repeat pairs, the keys after them) and one matmul weighs them.
        idx, weight = repeat_pairs(tokens, n)
        first = np.broadcast_to(q * width, (b, width))
        # a real pair's key is before its query, so the key after it is in the pattern; the padding slots
        # (weight 0) are kept in range for a batch of one-token prompts; the keys after the pairs come twice, the
        # second copy for induction_score, whose weights under INDUCTION_THRESHOLD add_layer drops
        after = np.minimum(idx + 1, width * width - 1)
        idx = np.concatenate([first, first + q, first + np.maximum(q - 1, 0), idx, after, after], 1)
        weights = np.zeros((b, idx.shape[1], 6), np.float32)
        at = np.cumsum([0, width, width, width] + [weight.shape[1]] * 3)
        for s, w in enumerate([after_first / per_query, after_first / per_query, after_first, weight, weight,
                               weight / np.maximum(self.repeated, 1)[:, None]]):
            weights[:, at[s]:at[s + 1], s] = w
        self.thresholded = int(at[5])
        rows = np.stack([valid, -after_first / (per_query * math.log(2))], 2)  # weights of sum(A) and entropy
        self.idx = self.put(idx, torch.long)[:, None].expand(-1, n_heads, -1)
        self.weights, self.rows = self.put(weights, torch.float32), self.put(rows, torch.float32)

    def allocate(self, n: np.ndarray, tokens: np.ndarray, device, n_layers: int, n_heads: int, causal: bool,
                 sums: "HeadSums | None", fresh: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sums (zero) and each query's weights, as DeviceStats and BlockStats share them; returns the host's
        (real query [batch, pos], real query after the first [batch, pos], queries after the first [batch, 1])."""
        b, width = tokens.shape
        q = np.arange(width)
        valid = (q[None] < n[:, None]).astype(np.float32)  # [batch, pos]: a real query
        after_first = valid * (q[None] >= 1)
        per_query = np.maximum(n - 1, 1).astype(np.float32)[:, None]
        self.device = device
        self.repeated = np.array([n_repeated(t[:m].tolist()) for t, m in zip(tokens, n)])
        self.valid, self.after_first = self.put(valid, torch.float32), self.put(after_first, torch.float32)
        self.n, self.causal, self.sums = n, causal, sums
        self.defined = n >= 2  # detect_head refuses one-token prompts; the means need two
        # per layer: the six linear sums; sum(A) over the real queries (detect_head's denominator) and the
        # mean entropy of those after the first, each read from a product with both row weights
        self.linear = torch.zeros((n_layers, b, n_heads, 6), device=device)
        self.total = torch.zeros((n_layers, b, n_heads, 2), device=device)
        self.entropy = torch.zeros((n_layers, b, n_heads, 2), device=device)
        self.peak = torch.zeros((n_layers, b, n_heads), device=device)
        self.by_distance = torch.zeros((n_layers, b, n_heads, width), device=device)  # mass at q - k = d
        self.tokens = sums is not None and sums.tokens
        if self.tokens:  # each layer's token masses, added to the totals once per batch (values)
            use = after_first * (np.ones(b) if fresh is None else fresh)[:, None]
            self.token_ids = self.put(tokens, torch.long).flatten()
            self.token_use = self.put(use, torch.float32)
            self.query_mass = torch.zeros((n_layers, n_heads, b, width), device=device)
            self.key_mass = torch.zeros((n_layers, n_heads, b, width), device=device)
            self.counted = (tokens, use)  # counted into `sums` with the masses, once the pass is done
        return valid, after_first, per_query

    def put(self, a: np.ndarray, dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=self.device, dtype=dtype)

    def add_layer(self, layer: int, pattern) -> None:
        """One layer's sums from its pattern [batch, heads, pos, pos]."""
        here = pattern.device == self.linear.device  # else a model split over devices: the small sums come back
        idx, weights, rows = (x if here else x.to(pattern.device) for x in (self.idx, self.weights, self.rows))
        picked = torch.gather(pattern.reshape(*pattern.shape[:2], -1), 2, idx).float()
        induction = picked[..., self.thresholded:]
        induction.masked_fill_(induction < INDUCTION_THRESHOLD, 0)
        row_sums = pattern.sum(-1, dtype=torch.float32)
        for out, x, w in [(self.linear, picked, weights), (self.total, row_sums, rows),
                          (self.entropy, self.bits(pattern), rows)]:
            if here:
                torch.bmm(x, w, out=out[layer])
            else:
                out[layer].copy_(torch.bmm(x, w))
        after_first = self.after_first if here else self.after_first.to(pattern.device)
        if pattern.shape[-1] > 1:  # the largest weight of the rows after the first, keys after the first
            rows_peak = pattern[..., 1:].amax(-1).float().mul_(after_first[:, None])
            self.peak[layer].copy_(rows_peak.amax(-1))
        self.by_distance[layer].copy_(self.distance_mass(pattern))
        if self.tokens:
            use = (self.token_use if here else self.token_use.to(pattern.device))[:, None]
            # to the keys after the first, from the queries after the first
            self.query_mass[layer].copy_((row_sums - pattern[..., 0]).mul_(use).transpose(0, 1))
            key_mass = torch.matmul(use[:, :, None], pattern if pattern.dtype == torch.float32 else pattern.float())
            self.key_mass[layer].copy_(key_mass.squeeze(2).mul_(use).transpose(0, 1))

    def distance_mass(self, pattern) -> torch.Tensor:
        """[batch, heads, d]: the attention mass at distance |q - k| = d over each prompt's real queries.

        Each row is skewed so that its distances line up: padded with p zeros on the left, the rows of a
        [p, 2p] matrix read with a stride of 2p + 1 put key q - d at column p - 1 - d (the padding where there is
        no such key); an encoder's keys after the query come the same way from zeros on the right. One copy and
        one matmul with the real queries per group of heads."""
        b, h, p, _ = pattern.shape
        group = max(1, self.GROUP_BYTES // (8 * b * p * p))
        valid = (self.valid if self.valid.device == pattern.device else self.valid.to(pattern.device))[:, None, None]
        out = torch.empty((b, h, p), device=pattern.device)
        for g in range(0, h, group):
            x = pattern[:, g:g + group]
            x = x if x.dtype == torch.float32 else x.float()
            n = x.shape[1]
            strides = (n * 2 * p * p, 2 * p * p, 2 * p + 1, 1)
            back = torch.nn.functional.pad(x, (p, 0)).as_strided((b, n, p, p), strides, 1)
            out[:, g:g + group] = torch.matmul(valid, back).squeeze(2).flip(-1)
            if not self.causal:
                ahead = torch.nn.functional.pad(x, (0, p)).as_strided((b, n, p, p), strides)
                mass = torch.matmul(valid, ahead).squeeze(2)
                out[:, g:g + group, 1:] += mass[..., 1:]
        return out

    def bits(self, pattern) -> torch.Tensor:
        """sum_k x log x of every query row [batch, heads, pos], a group of heads at a time (bounded memory)."""
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

    def values(self, fresh: np.ndarray | None = None) -> np.ndarray:
        """[batch, statistics (DEVICE_STATISTICS' order), layers, heads]: NaN for one-token prompts. The look-back
        statistics are taken from the mass by distance in float64 (the variance about the mean, which keeps a
        constant look-back's variance at 0); the fresh prompts' mass goes into `sums`."""
        linear, total, entropy = (x.cpu().numpy().transpose(1, 0, 2, 3) for x in (self.linear, self.total,
                                                                                 self.entropy))
        mass = self.by_distance.cpu().numpy().astype(np.float64).transpose(1, 0, 2, 3)  # [batch, layer, head, d]
        d = np.arange(mass.shape[-1], dtype=np.float64)
        n = np.maximum(self.n, 1).astype(np.float64)[:, None, None]
        mean = mass @ d / n
        variance = np.einsum("blhd,blhd->blh", mass, (d - mean[..., None]) ** 2) / n
        with np.errstate(invalid="ignore", divide="ignore"):
            v = np.stack([linear[..., 0], linear[..., 1], entropy[..., 1],
                          *(linear[..., k] / total[..., 0] for k in (2, 3, 4)),
                          self.peak.cpu().numpy().transpose(1, 0, 2), mean, variance, linear[..., 5]], 1)
        v[~self.defined] = np.nan
        v[self.repeated == 0, DEVICE_STATISTICS.index("induction_score")] = np.nan  # no query to average over
        if self.sums is not None:
            keep = self.defined if fresh is None else self.defined & fresh
            self.sums.add_lookback(mass[keep].sum(0))
            if self.tokens:
                self.sums.count_tokens(*self.counted)
                self.sums.add_tokens(self.token_ids, self.query_mass, self.key_mass)
        return v


EAGER_BYTES = 18  # bytes per attention weight (head, query, key) of a layer an eager pass holds at its peak


def eager_bytes(batch: int, n_heads: int, n_tokens: int) -> int:
    """Peak memory of a forward pass through eager attention beyond the model: a layer's [batch, heads, n, n]
    weights, about four float32 copies of them at once (measured: bench/bench_long_context.py)."""
    return EAGER_BYTES * batch * n_heads * n_tokens ** 2


def free_memory(device) -> int | None:
    """Bytes `device` can still give: the GPU's free memory (and what torch holds unused), the host's MemAvailable;
    None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - \
            torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


@lru_cache(maxsize=64)
def lookback_bins(width: int) -> np.ndarray:
    """[width, bins] 0/1: which LOOKBACK_EDGES bin each distance 0 .. width - 1 falls in."""
    return np.eye(len(LOOKBACK_EDGES))[np.searchsorted(LOOKBACK_EDGES, np.arange(width), side="right") - 1]


class HeadSums:
    """Model-wide totals of a run, over its fresh prompts: each head's attention mass by look-back distance
    (binned by LOOKBACK_EDGES) and by token, query side (the weight a query after the first gives the keys after
    the first) and key side (the weight a key after the first receives from the queries after the first), with
    each token's count at those positions. The token sums build up on the device in float32 and are moved to
    float64 on the host at each `snapshot`: heads x vocabulary x 8 bytes on the device, 16 on the host, so
    past MAX_TOKEN_ENTRIES (Llama-3-8B's 1,024 heads x 128,256 tokens fit) only the look-back is kept."""

    MAX_TOKEN_ENTRIES = 2**27

    def __init__(self, n_layers: int, n_heads: int, n_vocab: int, device):
        self.shape, self.n_vocab, self.device = (n_layers, n_heads), n_vocab, device
        self.tokens = n_layers * n_heads * n_vocab <= self.MAX_TOKEN_ENTRIES
        width = n_vocab if self.tokens else 0
        self.lookback = np.zeros((n_layers, n_heads, len(LOOKBACK_EDGES)))
        self.counts = np.zeros(width, np.int64)
        self.query = np.zeros((n_layers, n_heads, width))
        self.key = np.zeros((n_layers, n_heads, width))
        self._query = torch.zeros((n_layers, n_heads, width), device=device)
        self._key = torch.zeros((n_layers, n_heads, width), device=device)

    def count_tokens(self, tokens: np.ndarray, use: np.ndarray) -> None:
        seen = np.bincount(tokens[use > 0])
        self.counts[:len(seen)] += seen

    def add_tokens(self, ids, query_mass, key_mass) -> None:
        """A batch's [layers, heads, batch, pos] masses into the token sums (`ids`: the batch's tokens, flat)."""
        for out, mass in ((self._query, query_mass), (self._key, key_mass)):
            mass = mass.reshape(*mass.shape[:2], -1).to(out.device)
            out.index_add_(2, ids.to(out.device), mass)

    def add_lookback(self, mass: np.ndarray) -> None:
        """[layers, heads, d] mass by exact distance, binned."""
        self.lookback += mass @ lookback_bins(mass.shape[-1])

    def snapshot(self) -> dict:
        """The totals so far as host arrays (token sums only for the tokens seen)."""
        for host, dev in ((self.query, self._query), (self.key, self._key)):
            host += dev.cpu().numpy()
            dev.zero_()
        seen = np.flatnonzero(self.counts)
        return {"edges": np.array(LOOKBACK_EDGES), "lookback": self.lookback.copy(), "tokens": np.bool_(self.tokens),
                "ids": seen,
                "counts": self.counts[seen], "query": self.query[..., seen].astype("<f4"),
                "key": self.key[..., seen].astype("<f4")}


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


# ---- statistics at any length: attention a block of query rows at a time, its weights reduced and dropped ----

class BlockStats(DeviceStats):
    """DeviceStats' sums filled a block of query rows at a time by block_attention, never from a whole pattern:
    every buffer is linear in the prompt length. The repeat pairs are found per block from the tokens (a whole
    prompt's list can be quadratic: one token repeated n times makes n^2 / 2 pairs)."""

    def __init__(self, n: np.ndarray, tokens: np.ndarray, device, n_layers: int, n_heads: int,
                 causal: bool = True, sums: "HeadSums | None" = None, fresh: np.ndarray | None = None):
        _, after_first, per_query = self.allocate(n, tokens, device, n_layers, n_heads, causal, sums, fresh)
        # per query: the weight of its bos and diagonal entries, of its previous-token entry, of its sum x log x
        weights = np.stack([after_first / per_query, after_first, -after_first / (per_query * math.log(2))])
        self.host = {"valid": self.valid, "query": self.put(weights, torch.float32),
                     "tokens": self.put(tokens, torch.long),
                     "per_repeat": self.put(1 / np.maximum(self.repeated, 1), torch.float32),
                     "use": self.token_use if self.tokens else None}
        self.copies = {self.linear.device: self.host}  # those tensors on each device of a model split over several
        self.host_tokens = tokens
        self.skewed = None  # distance_mass's zeroed buffer, kept across blocks

    def on(self, device) -> dict:
        """The per-query tensors on `device` (a layer of a model split over devices has its own copy)."""
        if device not in self.copies:
            self.copies[device] = {k: None if v is None else v.to(device) for k, v in self.host.items()}
        return self.copies[device]

    def add_block(self, layer: int, q0: int, k0: int, p, s) -> None:
        """Rows q0 .. q0 + r - 1 of a layer's weights p [batch, heads, r, w] over keys k0 .. k0 + w - 1, and the scores
        s they come from (every key outside has weight 0: block_attention leaves out the keys the mask rules out for
        the whole block)."""
        b, h, r, w = p.shape
        t, rows, home = self.on(p.device), slice(q0, q0 + r), self.linear.device
        valid, (w_mean, w_sum, w_bits) = t["valid"][:, rows], t["query"][:, :, rows]
        qi = torch.arange(q0, q0 + r, device=p.device)
        first = p[..., 0] if k0 == 0 else p.new_zeros((b, h, r))
        row_sums = p.sum(-1)
        per_head = lambda x, weight: torch.einsum("bhr,br->bh", x, weight)  # noqa: E731
        linear = torch.stack([per_head(first, w_mean), per_head(column(p, qi - k0), w_mean),
                              per_head(column(p, qi - 1 - k0), w_sum), *self.repeats(p, q0, k0, t)], -1)
        self.linear[layer] += linear.to(home)
        self.total[layer, ..., 0] += per_head(row_sums, valid).to(home)
        peak, largest, at = self.largest(p, first, k0)
        xlogx = bits(p, s, largest, s.gather(-1, at[..., None])[..., 0])
        self.entropy[layer, ..., 1] += per_head(xlogx, w_bits).to(home)
        torch.maximum(self.peak[layer], (peak * w_sum[:, None]).amax(-1).to(home), out=self.peak[layer])
        self.by_distance[layer, ..., :w] += self.distance_mass(p, q0 - k0, valid).to(home)
        if self.tokens:  # to the keys after the first, from the queries after the first
            use = t["use"]
            self.query_mass[layer, :, :, rows] = ((row_sums - first) * use[:, None, rows]).transpose(0, 1).to(home)
            key_mass = torch.matmul(use[:, None, None, rows], p).squeeze(2) * use[:, None, k0:k0 + w]
            self.key_mass[layer, ..., k0:k0 + w] += key_mass.transpose(0, 1).to(home)

    @staticmethod
    def largest(p, first, k0: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's largest weight over the keys after the first (max_attention's), over all keys, and the
        column of the latter [batch, heads, rows]: one pass."""
        later = p[..., 1:] if k0 == 0 else p
        if not later.shape[-1]:
            return first, first, torch.zeros(first.shape, dtype=torch.long, device=p.device)
        peak, at = later.max(-1)
        if k0 > 0:
            return peak, peak, at
        return peak, torch.maximum(peak, first), torch.where(first > peak, 0, at + 1)

    def repeats(self, p, q0: int, k0: int, t: dict) -> list:
        """[batch, heads] sums over the block's repeat pairs (query q, an earlier key k holding q's token): of p[q, k]
        (duplicate), of p[q, k + 1] (induction), of those at least INDUCTION_THRESHOLD per repeat (induction_score)."""
        b, h, r, w = p.shape
        out = p.new_zeros((3, b, h))
        for j in range(b):  # a flat index_select per prompt (advanced indexing and index_add_ are ~100x slower)
            at = self.pairs(j, q0, r, k0, w, p.device)
            if len(at):
                flat = p[j].reshape(h, r * w)
                induction = flat.index_select(1, at + 1)
                out[0, j] = flat.index_select(1, at).sum(1)
                out[1, j] = induction.sum(1)
                out[2, j] = induction.masked_fill_(induction < INDUCTION_THRESHOLD, 0).sum(1)
        if k0 > 0:  # a pair whose key k0 - 1 is left out has its induction key k0 in the block
            tokens, qi = t["tokens"], torch.arange(q0, q0 + r, device=p.device)
            before = ((tokens[:, q0:q0 + r] == tokens[:, k0 - 1, None]) & (qi > k0 - 1)).float()
            before *= t["valid"][:, q0:q0 + r]
            x = p[..., 0]
            out[1] += torch.einsum("bhr,br->bh", x, before)
            out[2] += torch.einsum("bhr,br->bh", x.masked_fill(x < INDUCTION_THRESHOLD, 0), before)
        out[2] *= t["per_repeat"][:, None]
        return list(out)

    def pairs(self, j: int, q0: int, r: int, k0: int, w: int, device) -> torch.Tensor:
        """Flat indices row * w + key of prompt j's repeat pairs in a block: query q0 + row, an earlier key k0 + key
        holding its token (the key after it is then in the same row). On a CPU from the host's tokens with numpy
        (torch's CPU nonzero is ~100x slower), elsewhere on the device."""
        rows = max(0, min(r, int(self.n[j]) - q0))
        if device.type == "cpu":
            tokens = self.host_tokens[j]
            return torch.from_numpy(np.flatnonzero(np.tril(tokens[q0:q0 + rows, None] == tokens[None, k0:k0 + w],
                                                           q0 - k0 - 1)))
        tokens = self.on(device)["tokens"][j]
        return (tokens[q0:q0 + rows, None] == tokens[None, k0:k0 + w]).tril_(q0 - k0 - 1).flatten().nonzero()[:, 0]

    def distance_mass(self, p, q0: int, valid) -> torch.Tensor:
        """[batch, heads, w]: the block's mass at distance |q - k| over its real queries (row i is query q0 + i,
        counted from the block's first key): DeviceStats.distance_mass's skew, through a zeroed buffer of twice
        the prompt's width kept across blocks (a fresh padded copy per block costs a fill more; a strided view of
        the block itself, read with a stride of w + 1, makes the matmul copy it anyway, and slower)."""
        b, h, r, w = p.shape
        width = self.by_distance.shape[-1]
        if self.skewed is None or self.skewed.shape[:2] != (b, h) or self.skewed.shape[2] < r \
                or self.skewed.device != p.device:
            self.skewed = torch.zeros((b, h, r, 2 * width), device=p.device)
        buf, rows = self.skewed, self.skewed.shape[2]
        buf[:, :, :r, width:width + w] = p  # key k of row i at column width + k; the columns before stay 0
        strides = (h * rows * 2 * width, rows * 2 * width, 2 * width + 1, 1)
        back = buf.as_strided((b, h, r, w), strides, q0 + 1 + width - w)  # row i: keys q + 1 - w .. q
        weights = valid[:, None, None, :]
        out = torch.matmul(weights, back).squeeze(2).flip(-1)
        if not self.causal:  # an encoder's keys after the query: zeros on the right
            padded = torch.nn.functional.pad(p, (0, w))
            ahead = padded.as_strided((b, h, r, w), (h * r * 2 * w, r * 2 * w, 2 * w + 1, 1), q0)
            out[..., 1:] += torch.matmul(weights, ahead).squeeze(2)[..., 1:]
        return out


def column(p, cols) -> torch.Tensor:
    """p[..., i, cols[i]] for every row i [batch, heads, rows]: 0 where cols[i] < 0 (a key left out of the block)."""
    b, h, r, _ = p.shape
    picked = p.gather(-1, cols.clamp_min(0).view(1, 1, r, 1).expand(b, h, r, 1)).squeeze(-1)
    return picked * (cols >= 0)


def bits(p, s, largest, s_largest) -> torch.Tensor:
    """sum_k p log p of every row [batch, heads, rows] from softmax weights p, their scores s, each row's largest
    weight and its score: log p_k = log p_j + s_k - s_j for any key j, taken where p_j is largest (never 0), so
    there is no logarithm over the block (rows that no key may attend, which nothing reads, come out finite)."""
    return torch.einsum("bhrk,bhrk->bhr", p, s).sub_(s_largest).add_(largest.log()).clamp_min_(-1e30)


BLOCK_ATTENTION = "attention_lens_blocks"  # the name transformers dispatches block_attention by
BLOCK_BYTES = {"cpu": 32 * 2**20, "cuda": 512 * 2**20}  # float32 bytes of a block's weights [batch, heads, rows, keys]
HARMLESS_KWARGS = {"position_ids", "use_cache", "cache_position", "sliding_window", "encoder_hidden_states",
                   "output_attentions", "is_causal", "past_key_values", "head_mask"}


class BlockUnsupported(Exception):
    """Raised inside a forward pass when block_attention meets what it cannot reproduce exactly."""


@dataclass
class BlockPass:
    """One forward pass through block_attention: who takes each block of weights, and the layers that called."""
    layer_of: dict  # id(attention module or a part of it) -> layer
    last_layer: int
    on_block: object  # on_block(layer, q0, k0, p, s): a block's weights and scores, rows q0.., keys k0..
    block_bytes: int
    called: set = field(default_factory=set)
    buffers: dict = field(default_factory=dict)  # name -> a flat float32 buffer the blocks' scores and weights reuse

    def scratch(self, name: str, shape: tuple, device) -> torch.Tensor:
        """A contiguous float32 [shape] view of the buffer `name`, the same memory block after block and layer after
        layer (fresh tensors of every size, one block after another, fragment the host's heap: at 32,768 tokens its
        peak came out twice as high, and different from run to run)."""
        size = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < size or buf.device != device:
            buf = self.buffers[name] = torch.empty(size, device=device)
        return buf[:size].view(shape)


ACTIVE: list[BlockPass] = []  # the pass under way (block_attention is called by transformers, with no room for it)


@dataclass
class RowMask:
    """The mask a model asks for, made a block of query rows at a time (the whole [batch, 1, n, n] mask is
    quadratic): sdpa_mask's arguments, kept, and each block's split (rows_of) for the layers after the first."""
    batch_size: int
    kv_length: int
    q_offset: int
    kv_offset: int
    mask_function: object
    attention_mask: object
    use_vmap: bool
    device: object
    blocks: dict = field(default_factory=dict)

    def rows(self, q0: int, q1: int) -> "RowsMask":
        """Queries q0 .. q1 - 1's keys (every layer with this mask asks for the same blocks)."""
        if (q0, q1) not in self.blocks:
            from transformers.masking_utils import sdpa_mask
            allowed = sdpa_mask(self.batch_size, q1 - q0, self.kv_length, self.q_offset + q0, self.kv_offset,
                                self.mask_function, self.attention_mask, allow_is_causal_skip=False,
                                allow_is_bidirectional_skip=False, use_vmap=self.use_vmap, device=self.device)
            self.blocks[(q0, q1)] = rows_of(allowed, q0, q1)
        return self.blocks[(q0, q1)]


class RowsMask(NamedTuple):
    """A block of query rows' mask: the keys [k0, k1) some row may attend, and inside them the columns c0 .. where
    some row may not (`allowed`, bool [batch or 1, 1, rows, columns]; None: none), or an additive float mask."""
    k0: int
    k1: int
    c0: int = 0
    allowed: torch.Tensor | None = None
    additive: torch.Tensor | None = None


def rows_of(allowed, q0: int, q1: int) -> RowsMask:
    """Split a block's bool mask [batch or 1, 1, rows, keys]: all keys unless the keys any row may attend hold the
    block's own positions (the causal future and what lies outside a sliding window are left out)."""
    n_k = allowed.shape[-1]
    columns = allowed.reshape(-1, n_k)
    inside = columns.any(0).nonzero()
    k0, k1 = (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (0, n_k)
    k0, k1 = (k0, k1) if k0 <= q0 and q1 <= k1 else (0, n_k)
    partial = (~columns[:, k0:k1].all(0)).nonzero()
    if not len(partial):
        return RowsMask(k0, k1)
    c0, c1 = int(partial[0]), int(partial[-1]) + 1
    return RowsMask(k0, k1, c0, allowed[..., k0 + c0:k0 + c1].clone())  # a copy: the cache must not keep all keys


def row_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
             mask_function=None, attention_mask=None, use_vmap: bool = False, device="cpu", **_) -> RowMask:
    """transformers' mask interface for block_attention: every mask (causal, sliding window, padding, an encoder's)
    kept as its function, so the model's own rules reach block_attention without an [n, n] tensor."""
    from transformers.masking_utils import causal_mask_function
    return RowMask(batch_size, kv_length, q_offset, kv_offset, mask_function or causal_mask_function,
                   attention_mask, use_vmap, device)


def rows_mask(mask, module, q0: int, q1: int, n_q: int, n_k: int, device) -> RowsMask:
    """The mask of query rows q0 .. q1 - 1, whatever form the model passed it in."""
    if isinstance(mask, RowMask):
        return mask.rows(q0, q1)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:  # a prepared 4D mask
        return rows_of(mask[:, :, q0:q1, :n_k], q0, q1)
    if isinstance(mask, torch.Tensor):
        return RowsMask(0, n_k, additive=mask[:, :, q0:q1, :n_k])
    if getattr(module, "is_causal", True) and n_q > 1:  # none given: causal unless the module says not, as SDPA
        q = torch.arange(q0, q1, device=device) + n_k - n_q
        return rows_of(torch.arange(n_k, device=device) <= q[:, None], q0, q1)
    return RowsMask(0, n_k)


def checked_layer(run: BlockPass, module, dropout: float, kwargs: dict) -> int:
    """The layer calling block_attention; BlockUnsupported if it asks for what the function does not do."""
    layer = run.layer_of.get(id(module))
    strange = sorted(k for k, v in kwargs.items() if k not in HARMLESS_KWARGS and v is not None)
    if strange:
        raise BlockUnsupported(f"{type(module).__name__} passes {', '.join(strange)}")
    if layer is None:
        raise BlockUnsupported(f"{type(module).__name__} is not a layer's attention")
    if module.training and dropout:
        raise BlockUnsupported("the model is in training mode (dropout)")
    run.called.add(layer)
    return layer


def block_attention(module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0,
                    softcap: float | None = None, **kwargs):
    """transformers' attention interface: a layer's output from post-rotary query [batch, heads, n, d] and key,
    value [batch, kv_heads, n_k, d], a block of query rows at a time. Each block's exact weights (eager's float32
    softmax, softcap and mask) go to the pass's on_block, which must not keep them (the next block reuses their
    memory); nothing [n, n] is ever made."""
    run = ACTIVE[-1]
    layer = checked_layer(run, module, dropout, kwargs)
    b, n_heads, n, d = query.shape
    kv_heads, n_k = key.shape[1], key.shape[2]
    keys_t, values = key.float().transpose(-1, -2), value.float()
    out = torch.empty((b, n, n_heads, value.shape[-1]), dtype=value.dtype, device=query.device)
    rows = max(1, min(n, run.block_bytes // (4 * b * n_heads * n_k)))
    for q0 in range(0, n, rows):
        q1 = min(n, q0 + rows)
        mask = rows_mask(attention_mask, module, q0, q1, n, n_k, query.device)
        q = query[:, :, q0:q1].float() * (scaling if scaling is not None else d ** -0.5)
        s, p = block_weights(run, q, keys_t, mask, softcap)
        o = torch.matmul(p.view(b, kv_heads, -1, mask.k1 - mask.k0), values[:, :, mask.k0:mask.k1])
        out[:, q0:q1] = o.view(b, n_heads, q1 - q0, -1).transpose(1, 2)
        if layer <= run.last_layer:
            run.on_block(layer, q0, mask.k0, p, s)
    if layer >= run.last_layer:
        raise StopForward
    return out, None


def block_weights(run: BlockPass, q, keys_t, mask: RowsMask, softcap: float | None) -> tuple[torch.Tensor, ...]:
    """The scores and exact weights [batch, heads, rows, k1 - k0] of query rows q [batch, heads, rows, d] (scaled),
    in the pass's two scratch buffers.

    Grouped-query attention: query head h reads kv head h // group (repeat_kv), so the group's heads are read as
    more rows of their kv head instead of copying keys and values."""
    b, n_heads, r, d = q.shape
    kv_heads, w = keys_t.shape[1], mask.k1 - mask.k0
    s = run.scratch("scores", (b, kv_heads, n_heads // kv_heads * r, w), q.device)
    torch.matmul(q.reshape(b, kv_heads, -1, d), keys_t[..., mask.k0:mask.k1], out=s)
    s = s.view(b, n_heads, r, w)
    if softcap is not None:  # before the mask, as eager
        s.div_(softcap).tanh_().mul_(softcap)
    if mask.allowed is not None:
        s[..., mask.c0:mask.c0 + mask.allowed.shape[-1]].masked_fill_(~mask.allowed, torch.finfo(s.dtype).min)
    if mask.additive is not None:
        s.add_(mask.additive)
    return s, torch.softmax(s, -1, out=run.scratch("weights", s.shape, s.device))


@lru_cache(maxsize=1)
def register_block_attention() -> None:
    """Register block_attention and its mask with transformers (both under one name, or the model passes no mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(BLOCK_ATTENTION, block_attention)
    AttentionMaskInterface.register(BLOCK_ATTENTION, row_mask)


def block_attention_problem(model) -> str | None:
    """Why the model's attention cannot go through block_attention (None: it can): it must be a TransformerBridge
    whose Hugging Face model dispatches attention by name, with attention components the block path was checked on."""
    hf, blocks = getattr(model, "original_model", None), getattr(model, "blocks", None)
    if hf is None or blocks is None:
        return f"{type(model).__name__} is not a TransformerLens 4 TransformerBridge"
    try:
        from transformer_lens.model_bridge import generalized_components as tl
        from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
    except ImportError as e:
        return f"this transformers or transformer-lens lacks {e.name}"
    can_switch = getattr(hf, "_can_set_attn_implementation", None)
    if can_switch is None:
        return "this transformers cannot switch a model's attention at run time"
    if not can_switch():
        return f"{type(hf).__name__} computes its attention itself (ALiBi models such as BLOOM and MPT do)"
    known = (tl.AttentionBridge, tl.JointQKVAttentionBridge, tl.PositionEmbeddingsAttentionBridge,
             tl.JointQKVPositionEmbeddingsAttentionBridge)
    odd = {type(block.attn).__name__ for block in blocks if type(block.attn) not in known}
    return f"its attention component {', '.join(sorted(odd))} is not one the block path is checked on" if odd else None


class BlockAttention:
    """A model's forward passes through block_attention, one pass at a time (eager outside it): the Hugging Face
    model switched to it by name, and each TransformerLens attention component pointed back at the generic
    AttentionBridge.forward (most re-implement eager attention rather than call the Hugging Face module)."""

    def __init__(self, model):
        self.model, self.problem, self.said = model, block_attention_problem(model), False
        self.layer_of, self.fused = {}, {}
        if self.problem is None:
            attns = [block.attn for block in model.blocks]
            self.layer_of = {id(m): i for i, attn in enumerate(attns) for m in attn.original_component.modules()}
            self.fused = {i: fused_order(attn) for i, attn in enumerate(attns) if is_fused(attn)}
            odd = [i for i, order in self.fused.items() if order is None]
            self.problem = f"layer {odd[0]}'s fused q, k, v projection is not its split's rows" if odd else None
        self.block_bytes = BLOCK_BYTES["cuda" if model_device(model).type == "cuda" else "cpu"]

    def usable(self) -> bool:
        """Whether the next pass can go through block_attention; the first time not, one line says why."""
        if self.problem and not self.said:
            name = getattr(self.model.cfg, "model_name", "the model")
            print(f"note: {name}: statistics come from eager attention, whose memory grows with tokens squared: "
                  f"{self.problem}", file=sys.stderr)
            self.said = True
        return self.problem is None

    def run(self, tokens, attention_mask, last_layer: int, on_block) -> bool:
        """One forward pass handing each block of layers 0 .. last_layer to on_block(layer, q0, k0, weights, scores);
        False (then eager from now on, said once) if a layer's attention did not come through block_attention."""
        run = BlockPass(self.layer_of, last_layer, on_block, self.block_bytes)
        kwargs = {"attention_mask": attention_mask} if attention_mask is not None else {}
        ACTIVE.append(run)
        try:
            with self.switched(), torch.inference_mode():
                self.model(tokens, return_type=None, **kwargs)
        except StopForward:
            pass
        except BlockUnsupported as e:
            self.problem = str(e)
        finally:
            ACTIVE.pop()
        missing = sorted(set(range(last_layer + 1)) - run.called)
        if missing and not self.problem:
            self.problem = f"layers {missing} did not call it"
        return self.usable()

    @contextmanager
    def switched(self):
        """Within: attention through block_attention; the fused q, k, v projections remade from the component's
        split ones (which hold the processed weights: compatibility mode folds the norms into those alone)."""
        from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
        register_block_attention()
        hf, blocks = self.model.original_model, self.model.blocks
        before = hf.config._attn_implementation
        # not `attn.forward = ...`: a component's __setattr__ hands names the Hugging Face module has to that module
        patched = [block.attn for block in blocks if type(block.attn).forward is not AttentionBridge.forward]
        for attn in patched:
            attn.__dict__["forward"] = types.MethodType(AttentionBridge.forward, attn)
        hooks = []
        for i, order in self.fused.items():
            hook = functools.partial(remade, blocks[i].attn, order)
            hooks.append(fused_projection(blocks[i].attn).register_forward_hook(hook))
        try:
            try:
                hf.set_attn_implementation(BLOCK_ATTENTION)
            except ValueError as e:
                raise BlockUnsupported(f"transformers refuses it: {str(e).splitlines()[0]}") from None
            yield
        finally:
            hf.set_attn_implementation(before)
            for hook in hooks:
                hook.remove()
            for attn in patched:
                attn.__dict__.pop("forward", None)


def is_fused(attn) -> bool:
    """Whether a TransformerLens attention component split a fused q, k, v projection into three (GPT-2, NeoX)."""
    from transformer_lens.model_bridge.generalized_components import JointQKVAttentionBridge
    return isinstance(attn, JointQKVAttentionBridge)


def fused_projection(attn):
    return getattr(attn.original_component, attn.submodules["qkv"].name)


def fused_order(attn) -> torch.Tensor | None:
    """Where each output of the component's split q, k, v (in turn) sits in the fused projection's output, found by
    splitting the fused weights as the component does and matching rows exactly; None if they do not all match."""
    fused = fused_projection(attn)
    fused = getattr(fused, "original_component", None) or fused
    parts = attn.split_qkv_matrix(attn.original_component)
    with_bias = lambda w, b: torch.cat([w, b[:, None] if b is not None else w[:, :0]], 1)  # noqa: E731
    split = torch.cat([with_bias(p.weight, p.bias) for p in parts]).detach().float().cpu().numpy()
    weight = fused.weight.detach()
    weight = weight if weight.shape == (len(split), parts[0].weight.shape[1]) else weight.T  # Conv1D: [in, out]
    rows = with_bias(weight, fused.bias.detach() if fused.bias is not None else None).float().cpu().numpy()
    index = {row.tobytes(): i for i, row in enumerate(rows)}
    order = [index.get(row.tobytes()) for row in split]
    return None if rows.shape != split.shape or None in order else torch.tensor(order)


def remade(attn, order: torch.Tensor, module, args, output):
    """Forward hook on a fused q, k, v projection: its output remade from the component's split projections."""
    split = torch.cat([x.flatten(-2) if x.ndim == 4 else x for x in (attn.q(args[0]), attn.k(args[0]),
                                                                     attn.v(args[0]))], -1)
    out = torch.empty_like(split)
    out[..., order.to(split.device)] = split
    return out


BLOCKS = weakref.WeakKeyDictionary()  # model -> its BlockAttention: checked, and a fall back said, once a model


def block_attention_of(model) -> BlockAttention:
    if model not in BLOCKS:
        BLOCKS[model] = BlockAttention(model)
    return BLOCKS[model]


def sparse_attention(model, prompts: list[list[int]], heads: list[list[tuple[int, int]]], keys_per_row: int,
                     threshold: float, batch_size: int, progress: bool = True) -> list[dict]:
    """For each prompt (token ids) and each of its `heads`, that head's attention kept sparsely: the
    `keys_per_row` largest weights of every query row that are at least `threshold` (and above 0), as
    {(layer, head): (q, k, w)} arrays in (q, k) order. The top-k is taken on the device, from blocks of rows
    (block_attention: memory linear in n) where the model allows; only the kept entries reach the host."""
    from tqdm import tqdm

    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    out = [{} for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # like lengths together: little padding
    bar = tqdm(total=len(prompts), unit="prompt", desc="examples", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in batch)
        tokens = np.array([prompts[i] + [pad_id] * (width - len(prompts[i])) for i in batch], np.int64)
        kept = sparse_batch(model, tokens, [len(prompts[i]) for i in batch], [heads[i] for i in batch],
                            keys_per_row, threshold)
        for j, i in enumerate(batch):
            out[i] = kept[j]
        bar.update(len(batch))
    bar.close()
    return out


def sparse_batch(model, tokens: np.ndarray, lengths: list[int], heads: list[list[tuple[int, int]]],
                 keys_per_row: int, threshold: float) -> list[dict]:
    """sparse_attention of one right-padded batch [batch, width]: blockwise where the model allows, else eager."""
    causal, device, blocks = is_causal(model), model_device(model), block_attention_of(model)
    last = max((l for hs in heads for l, _ in hs), default=-1)
    wanted = [{layer: [h for l, h in hs if l == layer] for layer in range(last + 1)} for hs in heads]
    n = np.array(lengths)
    mask = None if causal else torch.from_numpy(np.arange(tokens.shape[1])[None] < n[:, None]).long().to(device)
    parts = {}  # (prompt, layer, head) -> the kept entries of each block of rows

    def on_block(layer, q0, k0, p, s=None):
        for j, mine in enumerate(wanted):
            rows, keys = min(p.shape[2], lengths[j] - q0), min(p.shape[3], lengths[j] - k0)
            if mine[layer] and rows > 0:
                found = top_keys(p[j, mine[layer], :rows, :keys], q0, k0, keys_per_row, threshold)
                for h, entries in zip(mine[layer], found):
                    parts.setdefault((j, layer, h), []).append(entries)
    ids = torch.from_numpy(tokens).to(device)
    if last >= 0 and not (blocks.usable() and blocks.run(ids, mask, last, on_block)):
        parts.clear()
        forward_patterns(model, ids, lambda layer, pattern: on_block(layer, 0, 0, pattern), last, mask)
    kept = [{} for _ in lengths]
    for (j, layer, h), found in parts.items():
        kept[j][(layer, h)] = tuple(np.concatenate(x) for x in zip(*found))
    return kept


def top_keys(attn, q0: int, k0: int, keys_per_row: int, threshold: float) -> list[tuple]:
    """Each head's (q, k, w) arrays, in (q, k) order, of the `keys_per_row` largest weights of each row of attn
    [heads, rows, keys] that are at least `threshold` and above 0; rows count from q0, keys from k0."""
    w, k = torch.topk(attn.float(), min(keys_per_row, attn.shape[-1]), dim=-1)
    k, by_key = torch.sort(k, dim=-1)  # each row's kept keys in key order
    w, k = torch.gather(w, -1, by_key).cpu().numpy(), k.cpu().numpy()
    keep = (w >= threshold) & (w > 0)
    found = []
    for c in range(len(w)):
        q, slot = np.nonzero(keep[c])  # row-major: by query, then key
        found.append((q + q0, k[c][q, slot] + k0, w[c][q, slot]))
    return found


def forward_batch(model, batch: list[PromptJob], stream: PatternStream, grams: list | None,
                  sums: HeadSums | None = None) -> tuple[list[OpenPrompt], np.ndarray]:
    """One forward pass over a batch: every head's built-in statistics [batch, DEVICE_STATISTICS, layers, heads]
    computed on the device, and the patterns of the prompts that store them streamed to disk by `stream`;
    the prompts whose statistics are new add to `sums`. A batch that needs no whole pattern (nothing stored, no
    host plug-in) goes through block_attention where the model allows: memory linear in the prompt length."""
    n = np.array([job.n_tokens for job in batch])
    width, device = int(n.max()), stream.device
    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    tokens = np.array([job.ids + [pad_id] * (width - job.n_tokens) for job in batch], np.int64)
    opened = [stream.open(job) for job in batch]
    # Right padding is harmless under a causal mask; an encoder must be told which keys are padding.
    mask = None if stream.causal else torch.from_numpy(np.arange(width)[None] < n[:, None]).long().to(device)
    fresh = np.array([job.needs_stats for job in batch])
    blocks = block_attention_of(model)
    if not any(needs_patterns(job, stream.plugins) for job in batch) and blocks.usable():
        stats = BlockStats(n, tokens, device, *stream.shape, causal=stream.causal, sums=sums, fresh=fresh)
        if blocks.run(torch.from_numpy(tokens).to(device), mask, stream.shape[0] - 1, stats.add_block):
            return opened, stats.values(fresh)
    stats = DeviceStats(n, tokens, device, *stream.shape, causal=stream.causal, sums=sums, fresh=fresh)

    def on_layer(layer, pattern):
        stats.add_layer(layer, pattern)
        stream.submit_layer(opened, layer, pattern)

    forward_patterns(model, torch.from_numpy(tokens).to(device), on_layer, stream.shape[0] - 1, mask,
                     (lambda layer, v: stream.submit_values(opened, layer, v, grams[layer])) if grams else None)
    return opened, stats.values(fresh)


# ---- weight-based scores: each head's full OV circuit, from the weights alone ----

def unembed_embed(model, chunk: int = 8192) -> torch.Tensor:
    """W_U W_E [d_model, d_model], float64 on W_E's device: the vocab-sized part every head's full OV circuit
    shares, summed over vocab chunks (float32 products) so no float64 copy of a large vocabulary is made."""
    w_e, w_u = model.W_E.detach(), model.W_U.detach()
    g = torch.zeros(w_e.shape[1], w_e.shape[1], dtype=torch.float64, device=w_e.device)
    for s in range(0, w_e.shape[0], chunk):
        g += (w_u[:, s:s + chunk].to(w_e.device, torch.float32) @ w_e[s:s + chunk].float()).double()
    return g


def eigenvalue_shares(eigenvalues: torch.Tensor) -> torch.Tensor:
    """(sum max(Re e, 0), sum max(-Re e, 0)) / sum |e| over the eigenvalues e of the last axis: [..., 2] (NaN for an
    all-zero circuit); their difference is Elhage et al.'s sum e / sum |e|, and what is left of 1 is imaginary."""
    re, mass = eigenvalues.real, eigenvalues.abs().sum(-1, keepdim=True)
    return torch.stack([re.clamp_min(0).sum(-1), (-re).clamp_min(0).sum(-1)], -1) / mass


def copying_scores(model) -> np.ndarray | None:
    """Each head's (copying, copy suppression) [layers, heads, 2] from its full OV circuit W_E W_V W_O W_U's nonzero
    eigenvalues, those of (W_V W_O)(W_U W_E) in d_head dimensions; None if a weight is unreadable or vocabs differ."""
    from transformer_lens import FactoredMatrix
    try:
        if model.W_E.shape[0] != model.W_U.shape[1]:
            return None
        with torch.inference_mode():
            g = unembed_embed(model)
            scores = []
            for block in model.blocks:
                w_v, w_o = block.attn.W_V.detach(), block.attn.W_O.detach()
                # grouped-query attention: query head h reads kv head h // group (Hugging Face's repeat_kv)
                w_v = w_v.repeat_interleave(w_o.shape[0] // w_v.shape[0], 0)
                ov = FactoredMatrix(w_v.to(g), w_o.to(g)) @ g  # stays factored: eigenvalues of W_O (W_U W_E) W_V
                scores.append(eigenvalue_shares(ov.eigenvalues).cpu())
    except (AttributeError, TypeError, NotImplementedError):
        return None
    return torch.stack(scores).numpy()


# ---- each head's vectors at chosen query positions (projections.py) ----

VECTOR_HOOKS = ("hook_q", "hook_rot_q", "hook_k", "hook_rot_k", "hook_pattern", "hook_z")  # in the order they fire


@dataclass
class HeadVectors:
    """Every head's vectors at the chosen query positions, one row per point (prompt by prompt, each prompt's
    positions in the order given), float32 on the host: its query, the key of the position it attends to most (with
    grouped-query attention, its kv head's), z (its attention-weighted values, before W_O), that largest weight and
    the key's position. `query_hook` and `key_hook` name the hooks read: hook_rot_q / hook_rot_k (rotated, as the
    scores use them) where the model has them, else hook_q / hook_k."""
    q: np.ndarray  # [points, layers, heads, d_head]
    k: np.ndarray  # [points, layers, heads, d_head]
    z: np.ndarray  # [points, layers, heads, d_head]
    weight: np.ndarray  # [points, layers, heads]
    key: np.ndarray  # [points, layers, heads], int64
    query_hook: str = "hook_q"
    key_hook: str = "hook_k"


def head_vectors(model, prompts: list[list[int]], positions: list[list[int]], batch_size: int,
                 progress: bool = True) -> HeadVectors:
    """Run the prompts (token ids) in batches of like length and keep every head's vectors at each prompt's
    `positions` (HeadVectors); only those rows leave the device."""
    from tqdm import tqdm

    cfg, device = model.cfg, model_device(model)
    n_points, shape = sum(map(len, positions)), (cfg.n_layers, cfg.n_heads)
    out = HeadVectors(*(np.zeros((n_points, *shape, cfg.d_head), np.float32) for _ in range(3)),
                      np.zeros((n_points, *shape), np.float32), np.zeros((n_points, *shape), np.int64))
    starts = np.cumsum([0] + [len(p) for p in positions])
    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    bar = tqdm(total=len(prompts), unit="prompt", desc="projections", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = [i for i in order[start:start + batch_size] if positions[i]]
        if batch:
            n = np.array([len(prompts[i]) for i in batch])
            tokens = np.array([prompts[i] + [pad_id] * (int(n.max()) - len(prompts[i])) for i in batch], np.int64)
            mask = None if is_causal(model) else torch.from_numpy(np.arange(n.max())[None] < n[:, None]).long()
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in batch])
            at = (np.repeat(np.arange(len(batch)), [len(positions[i]) for i in batch]),
                  np.concatenate([positions[i] for i in batch]))
            batch_vectors(model, torch.from_numpy(tokens).to(device), mask, at, out, rows)
        bar.update(min(batch_size, len(order) - start))
    bar.close()
    return out


def batch_vectors(model, tokens, mask, at: tuple[np.ndarray, np.ndarray], out: HeadVectors, rows: np.ndarray) -> None:
    """One forward pass, stopped after the last layer's z: at the points `at` (prompt in the batch, position), each
    layer's vectors into `out`'s `rows`. A model that does not fire the hooks read is a lens.UserError."""
    caught, fired, last = {}, set(), model.cfg.n_layers - 1

    def on_vector(x, name: str) -> None:
        layer, kind = int(name.split(".")[1]), name.rsplit(".", 1)[-1]
        b, p = (torch.from_numpy(a).to(x.device) for a in at)
        fired.add(kind.replace("rot_", ""))
        if kind in ("hook_q", "hook_rot_q", "hook_k", "hook_rot_k"):  # a rotated one fires later and replaces it
            caught[kind[-1]] = x
            if layer == 0:
                setattr(out, "query_hook" if kind[-1] == "q" else "key_hook", kind)
        elif kind == "hook_pattern":
            check_vector_hooks(fired, {"hook_q", "hook_k"}, name)
            weight, key = x[b, :, p, :].float().max(-1)  # [points, heads]: the largest weight, its first key
            kv = caught["k"]  # [batch, pos, kv heads, d_head]: query head h reads kv head h // group (repeat_kv)
            group = torch.arange(x.shape[1], device=kv.device) // (x.shape[1] // kv.shape[2])
            out.q[rows, layer] = caught["q"][b, p].float().cpu().numpy()
            out.k[rows, layer] = kv[b[:, None].to(kv.device), key.to(kv.device), group].float().cpu().numpy()
            out.weight[rows, layer], out.key[rows, layer] = weight.cpu().numpy(), key.cpu().numpy()
        elif kind == "hook_z":
            check_vector_hooks(fired, {"hook_pattern"}, name)
            out.z[rows, layer] = x[b, p].float().cpu().numpy()
            if layer >= last:
                raise StopForward

    is_vector_hook = lambda name: ".attn." in name and name.rsplit(".", 1)[-1] in VECTOR_HOOKS  # noqa: E731
    kwargs = {"attention_mask": mask.to(tokens.device)} if mask is not None else {}
    with torch.inference_mode():
        try:
            if hasattr(model, "run_with_hooks"):
                model.run_with_hooks(tokens, fwd_hooks=[(is_vector_hook, lambda x, hook: on_vector(x, hook.name))],
                                     return_type=None, **kwargs)
            else:  # a wrapper without run_with_hooks (auto_circuit's PatchableModel): the cache, in the order they fire
                _, cache = model.run_with_cache(tokens, names_filter=is_vector_hook, return_type=None, **kwargs)
                for name in sorted(cache.keys(), key=lambda n: (int(n.split(".")[1]),
                                                                VECTOR_HOOKS.index(n.rsplit(".", 1)[-1]))):
                    on_vector(cache[name], name)
        except StopForward:
            pass
    check_vector_hooks(fired, {"hook_q", "hook_k", "hook_pattern", "hook_z"}, "the forward pass's end")


def check_vector_hooks(fired: set[str], needed: set[str], where: str) -> None:
    """A lens.UserError naming the hooks head_vectors reads that have not fired by `where`."""
    missing = needed - fired
    if missing:
        raise lens.UserError(f"{where}: no {', '.join(sorted(missing))} fired before it: no projections (they read "
                             "TransformerLens's hook_q or hook_rot_q, hook_k or hook_rot_k, hook_pattern and hook_z)")


def layer_output_weights(model, layer: int) -> np.ndarray | None:
    """One layer's W_O [n_heads, d_head, d_model] as float32 on the host (projections.py: z W_O per head), None when
    the model does not expose it."""
    w_o = output_weights(model)
    return None if w_o is None else w_o[layer].float().cpu().numpy()
