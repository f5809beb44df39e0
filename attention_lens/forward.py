"""The model and its forward pass: loading a model, the hooks that catch each layer's pattern, and all the work
done on the model's device inside the forward pass (the built-in statistics, quantising patterns to their stored
form, value norms) plus the threads that stream the stored patterns to disk meanwhile. The one module that
imports torch; compute_activations.py plans a run and drives it through here."""
import inspect
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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
                         if self.plugins and job.needs_stats else None)
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
        valid = (q[None] < n[:, None]).astype(np.float32)  # [batch, pos]: a real query
        after_first = valid * (q[None] >= 1)
        per_query = np.maximum(n - 1, 1).astype(np.float32)[:, None]
        # The six linear scores are sums of pattern entries with weights: gather each prompt's entries (first
        # key, diagonal, previous token, its repeat pairs, the keys after them) and one matmul weighs them.
        idx, weight = repeat_pairs(tokens, n)
        first = np.broadcast_to(q * width, (b, width))
        # a real pair's key is before its query, so the key after it is in the pattern; the padding slots
        # (weight 0) are kept in range for a batch of one-token prompts; the keys after the pairs come twice, the
        # second copy for induction_score, whose weights under INDUCTION_THRESHOLD add_layer drops
        after = np.minimum(idx + 1, width * width - 1)
        idx = np.concatenate([first, first + q, first + np.maximum(q - 1, 0), idx, after, after], 1)
        self.repeated = np.array([n_repeated(t[:m].tolist()) for t, m in zip(tokens, n)])
        weights = np.zeros((b, idx.shape[1], 6), np.float32)
        at = np.cumsum([0, width, width, width] + [weight.shape[1]] * 3)
        for s, w in enumerate([after_first / per_query, after_first / per_query, after_first, weight, weight,
                               weight / np.maximum(self.repeated, 1)[:, None]]):
            weights[:, at[s]:at[s + 1], s] = w
        self.thresholded = int(at[5])
        rows = np.stack([valid, -after_first / (per_query * math.log(2))], 2)  # weights of sum(A) and entropy

        def put(a, dtype):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)
        self.idx = put(idx, torch.long)[:, None].expand(-1, n_heads, -1)
        self.weights, self.rows = put(weights, torch.float32), put(rows, torch.float32)
        self.valid, self.after_first = put(valid, torch.float32), put(after_first, torch.float32)
        self.n, self.causal, self.sums = n, causal, sums
        self.defined = n >= 2  # detect_head refuses one-token prompts; the means need two
        # per layer: the six linear sums; sum(A) over the real queries (detect_head's denominator) and the
        # mean entropy of those after the first, each read from a product with both row weights
        self.linear = torch.empty((n_layers, b, n_heads, 6), device=device)
        self.total = torch.empty((n_layers, b, n_heads, 2), device=device)
        self.entropy = torch.empty((n_layers, b, n_heads, 2), device=device)
        self.peak = torch.zeros((n_layers, b, n_heads), device=device)
        self.by_distance = torch.empty((n_layers, b, n_heads, width), device=device)  # mass at q - k = d
        self.tokens = sums is not None and sums.tokens
        if self.tokens:  # each layer's token masses, added to the totals once per batch (values)
            use = after_first * (np.ones(b) if fresh is None else fresh)[:, None]
            self.token_ids = put(tokens, torch.long).flatten()
            self.token_use = put(use, torch.float32)
            self.query_mass = torch.empty((n_layers, n_heads, b, width), device=device)
            self.key_mass = torch.empty((n_layers, n_heads, b, width), device=device)
            sums.count_tokens(tokens, use)

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
                self.sums.add_tokens(self.token_ids, self.query_mass, self.key_mass)
        return v


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


def sparse_attention(model, prompts: list[list[int]], heads: list[list[tuple[int, int]]], keys_per_row: int,
                     threshold: float, batch_size: int, progress: bool = True) -> list[dict]:
    """For each prompt (token ids) and each of its `heads`, that head's attention kept sparsely: the
    `keys_per_row` largest weights of every query row that are at least `threshold`, as {(layer, head): (q, k, w)}
    arrays in (q, k) order. The top-k is taken on the device; only the kept entries reach the host."""
    from tqdm import tqdm

    causal, device = is_causal(model), model_device(model)
    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    out = [{} for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # like lengths together: little padding
    last = max((l for hs in heads for l, _ in hs), default=-1)
    bar = tqdm(total=len(prompts), unit="prompt", desc="examples", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        n = np.array([len(prompts[i]) for i in batch])
        width = int(n.max())
        tokens = np.array([prompts[i] + [pad_id] * (width - len(prompts[i])) for i in batch], np.int64)
        mask = None if causal else torch.from_numpy(np.arange(width)[None] < n[:, None]).long().to(device)

        def on_layer(layer, pattern, batch=batch, n=n):
            for j, i in enumerate(batch):
                mine = [h for l, h in heads[i] if l == layer]
                if not mine:
                    continue
                m = int(n[j])
                w, k = torch.topk(pattern[j, mine, :m, :m].float(), min(keys_per_row, m), dim=-1)
                k, by_key = torch.sort(k, dim=-1)  # each row's kept keys in key order
                w, k = torch.gather(w, -1, by_key).cpu().numpy(), k.cpu().numpy()
                keep = w >= threshold
                for c, h in enumerate(mine):
                    q, slot = np.nonzero(keep[c])  # row-major: by query, then key
                    out[i][(layer, h)] = (q, k[c][q, slot], w[c][q, slot])
        if last >= 0:
            forward_patterns(model, torch.from_numpy(tokens).to(device), on_layer, last, mask)
        bar.update(len(batch))
    bar.close()
    return out


def forward_batch(model, batch: list[PromptJob], stream: PatternStream, grams: list | None,
                  sums: HeadSums | None = None) -> tuple[list[OpenPrompt], np.ndarray]:
    """One forward pass over a batch: every head's built-in statistics [batch, DEVICE_STATISTICS, layers, heads]
    computed on the device, and the patterns of the prompts that store them streamed to disk by `stream`;
    the prompts whose statistics are new add to `sums`."""
    n = np.array([job.n_tokens for job in batch])
    width, device = int(n.max()), stream.device
    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    tokens = np.array([job.ids + [pad_id] * (width - job.n_tokens) for job in batch], np.int64)
    opened = [stream.open(job) for job in batch]
    # Right padding is harmless under a causal mask; an encoder must be told which keys are padding.
    mask = None if stream.causal else torch.from_numpy(np.arange(width)[None] < n[:, None]).long().to(device)
    fresh = np.array([job.needs_stats for job in batch])
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
