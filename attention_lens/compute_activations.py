"""Compute every head's attention pattern of one or more models over a prompt file.

    python compute_activations.py gpt2 prompts.jsonl
    python compute_activations.py ./my-hf-checkpoint prompts.jsonl --device cuda
    python compute_activations.py gpt2,pythia-70m prompts.jsonl --n-samples 100 --batch-size 16
    python compute_activations.py gpt2 prompts.jsonl --shard 3/8        # one of 8 array jobs
    python compute_activations.py gpt2 pile.jsonl --patterns none       # statistics of every head only
    python compute_activations.py gpt2 --top 5 --stat induction_head    # then the patterns of the extremes
    python compute_activations.py gpt2 --probe       # the probe set alone (every PROMPTS run adds it: --no-probe)

Every head's statistics are computed on the model's device for every prompt; the patterns of those
--patterns chooses are stored per prompt (all heads in one compact file). Prompts longer than the
model's context (n_ctx) are truncated to n_ctx tokens, with a warning naming them. A batch that stores no
pattern computes its statistics from attention a block of query rows at a time, in memory linear in the
prompts' length (docs/scale.md); one that would not fit eager attention's memory stops before it starts.

From a notebook, with any model object that has the TransformerLens interface:

    from attention_lens.compute_activations import compute_activations
    compute_activations([{"text": "..."}], model, "attn_data", model_name="my-model")
"""
import argparse
import contextlib
import functools
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attention_lens import (
    aggregate,
    datadir,
    examples,
    forward,
    kinds,
    lens,
    projections,
    prompt_index,
    prompt_sources,
    storage,
)

BATCH_SIZE = 8
TIME_LIMIT = 60.0  # seconds a plug-in statistic may take on one head
SUMS_SECONDS = 60.0  # how often a run saves its look-back and token totals (a killed run keeps those)


def parse_args(argv=None) -> argparse.Namespace:
    p = lens.script_parser(__doc__)
    p.add_argument("models", help="model name(s) TransformerLens can load (e.g. gpt2), or a local "
                   "Hugging Face checkpoint directory; several separated by commas")
    p.add_argument("prompts", type=Path, nargs="?",
                   help='JSONL file, one {"text": ..., "meta": {...}} per line (not needed with --top)')
    p.add_argument("--patterns", type=patterns_arg, default="all", metavar="all|none|N",
                   help="whose attention patterns to store: every prompt's (default), none, or a seeded sample of "
                   "N prompts (--seed); head statistics are computed and stored for every prompt either way")
    p.add_argument("--dataset", metavar="NAME_OR_PATH",
                   help="prompts from a dataset instead of PROMPTS: a Hugging Face dataset by name (streamed: only "
                   "--n-samples rows are read), a local save_to_disk dir, or parquet, JSONL or CSV files (a file or "
                   "a folder of them)")
    p.add_argument("--split", default="train", help="with --dataset: the split (default: %(default)s)")
    p.add_argument("--dataset-config", metavar="NAME", help="with --dataset: the dataset's configuration")
    p.add_argument("--text-field", default="text", metavar="FIELD",
                   help="with --dataset: the column holding the text (default: %(default)s); other short columns "
                   "become the prompt's meta")
    p.add_argument("--top", type=lens.positive_int, metavar="K",
                   help="store the patterns of each head's K highest and K lowest prompts by the statistics "
                   "already computed (see --stat), and nothing else; the prompts come from the data dir")
    p.add_argument("--stat", metavar="NAME[,NAME...]", help="with --top: these statistics only (default: all)")
    p.add_argument("--probe", action="store_true",
                   help="compute the shipped probe set (probe.jsonl: 20 prompts of repeated random words and a little "
                   "prose, patterns stored), on which the heads' kinds are measured (docs/kinds.md), with no PROMPTS; "
                   "a run with PROMPTS or --dataset adds it anyway unless --no-probe")
    p.add_argument("--no-probe", action="store_true",
                   help="compute only your prompts: the kinds are then measured on them (docs/kinds.md)")
    p.add_argument("--examples", action="store_true",
                   help="only choose each head's examples from the statistics already computed (every part in the "
                   "data dir: run it once shards are together) and fetch their attention; no PROMPTS needed")
    p.add_argument("--no-examples", action="store_true", help="do not choose examples at the end of the run")
    p.add_argument("--examples-patterns", action="store_true",
                   help="also store every example prompt's full patterns (each example then opens in the single "
                   "view); with --examples, or at the end of a run")
    d = examples.Sampling()
    p.add_argument("--examples-intervals", type=lens.positive_int, default=d.intervals, metavar="Q",
                   help="quantile intervals of each head's activation, sampled apart (default: %(default)s)")
    p.add_argument("--examples-per-interval", type=lens.positive_int, default=d.per_interval, metavar="K",
                   help="seeded examples kept from each interval but the highest (default: %(default)s)")
    p.add_argument("--examples-top", type=lens.positive_int, default=d.top, metavar="K",
                   help="the highest interval keeps its K highest prompts (default: %(default)s)")
    p.add_argument("--examples-keys", type=lens.positive_int, default=d.keys_per_row, metavar="K",
                   help="an example keeps the K largest weights of each query row (default: %(default)s)")
    p.add_argument("--examples-threshold", type=float, default=d.threshold, metavar="W",
                   help="... of those, the ones at least W (default: %(default)s)")
    p.add_argument("--examples-seed", type=int, default=d.seed, help="the examples' sampling seed (default: 0)")
    p.add_argument("--examples-by", default=d.statistic, metavar="STAT",
                   help="the per-prompt statistic whose range the examples cover (default: %(default)s, "
                   "Neuronpedia's activation; e.g. induction_head)")
    p.add_argument("--projections", action="store_true",
                   help="only compute each head's query, key and output projections over the prompts already "
                   "computed (every part in the data dir: run it once shards are together); no PROMPTS needed")
    p.add_argument("--no-projections", action="store_true",
                   help="do not compute the projections at the end of the run")
    dp = projections.Sampling()
    p.add_argument("--projections-size", type=lens.positive_int, default=dp.size, metavar="N",
                   help="query positions sampled over all prompts, the same for every head (default: %(default)s)")
    p.add_argument("--projections-per-prompt", type=lens.positive_int, default=dp.per_prompt, metavar="K",
                   help="... at most K of them from one prompt (default: %(default)s)")
    p.add_argument("--projections-seed", type=int, default=dp.seed, help="their sampling seed (default: 0)")
    p.add_argument("--figures-dir", type=Path, default=lens.FIGURES_DIR,
                   help="where the @statistic plug-ins computed for every prompt live (default: figures/)")
    p.add_argument("--time-limit", type=float, default=TIME_LIMIT, metavar="SECONDS",
                   help="a plug-in statistic taking longer on one head fails there and is skipped for the rest of "
                   "the run (default: %(default)s; 0: no limit)")
    p.add_argument("--save-path", type=lens.save_path_arg, default=lens.DEFAULT_SAVE_PATH,
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
                   help="truncate prompts to N tokens, up to the model's context (statistics alone take memory linear "
                   "in N, docs/scale.md; stored patterns bytes that grow with N squared)")
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


def tokenize(to_tokens, text: str) -> list[int]:
    return to_tokens(text, truncate=False)[0].tolist()


def make_batches(items: list, lengths: list[int], batch_size: int) -> list[list]:
    """Group items of similar length (sorted by length) so batches waste little padding."""
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    return [[items[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def plan_batches(plan: "RunPlan", batch_size: int) -> list[list[forward.PromptJob]]:
    """The run's batches: the prompts that need whole patterns (stored, or read by plug-ins: eager attention) apart
    from the others (attention in blocks: memory linear in their length), each of like lengths."""
    eager = [j for j in plan.jobs if forward.needs_patterns(j, plan.plugins)]
    blocks = [j for j in plan.jobs if not forward.needs_patterns(j, plan.plugins)]
    return [b for jobs in (eager, blocks) for b in make_batches(jobs, [j.n_tokens for j in jobs], batch_size)]


def stored_heads(pdir: Path) -> set[tuple[int, int]] | None:
    """The heads a finished prompt holds; None when it is not finished (or its file is unreadable)."""
    if not lens.is_finished(pdir):
        return None
    try:
        return set(storage.Patterns(pdir / datadir.PATTERN_FILE).heads)
    except (lens.UserError, ValueError, OSError, KeyError):
        return None


def finish_prompt(o: forward.OpenPrompt, plan: "RunPlan", str_tokens: list[str]) -> int:
    """Close the prompt's pattern file, then write prompt.json (its presence marks the prompt done)."""
    job, n_layers, n_heads = o.job, plan.n_layers, plan.n_heads
    size = o.writer.close()
    if o.norms is not None:
        norms = np.full_like(o.norms, np.nan)  # NaN where a head is not stored
        for l, h in job.heads:
            norms[l, h] = o.norms[l, h]
        lens.write_atomic(datadir.value_norms_path(plan.save_path, plan.model_dir, job.hash),
                          norms.astype("<f4").tobytes())
        size += norms.nbytes
    info = {"text": job.prompt["text"], "hash": job.hash, "tokens": str_tokens, "token_ids": job.ids,
            "n_tokens": len(job.ids), "meta": job.prompt.get("meta", {}), "truncated": job.truncated}
    if len(job.heads) < n_layers * n_heads:
        info["heads"] = lens.format_heads(job.heads, n_layers, n_heads)
    lens.write_json(datadir.prompt_json_path(plan.save_path, plan.model_dir, job.hash), info)
    return size


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
    jobs: list[forward.PromptJob]
    n_skipped: int
    wanted: list[tuple[int, int]]
    plugins: list[lens.Figure]
    part: storage.StatsPart
    limit: int
    device: object  # where the model's first parameters live: batches go there
    grams: list | None  # see output_grams
    sums: forward.HeadSums | None = None  # this run's look-back and token totals (None: no prompt is fresh)


def plan_run(prompts: list[dict], model, *, save_path: Path, model_name: str, force: bool, heads: str | None,
             max_tokens: int | None, patterns, figures_dir: Path) -> RunPlan:
    """Which prompts need patterns (the heads asked for) or statistics, tokenised, with this run's part."""
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    wanted = lens.parse_heads(heads, n_layers, n_heads) if heads else [(l, h) for l in range(n_layers)
                                                                        for h in range(n_heads)]
    model_dir = lens.model_dir_name(model_name)
    registry = lens.load_figures_or_warn(figures_dir)
    statistics = [f for f in registry.values() if f.kind == "statistic"]
    # the device computes a built-in statistic only where the figures dir defines it as figures/ does: a plug-in of
    # the same name with other code is the user's definition, run on the host like any other
    builtin = builtin_statistics()
    device_names = [name for name in forward.DEVICE_STATISTICS
                    if name in registry and lens.code_of(registry[name]) == builtin.get(name)]
    plugins = [f for f in statistics if f.name not in device_names]
    store = (set() if patterns == "none" else None if patterns == "all"
             else sample_hashes(prompts, patterns, 0) if isinstance(patterns, int) else set(patterns))
    have_stats = {} if force else computed_rows(save_path, model_dir)
    to_tokens, _ = forward.tokenizer_functions(model)
    limit = min(cfg.n_ctx, max_tokens or cfg.n_ctx)
    jobs = []
    for p in prompts:
        phash = lens.prompt_hash(p["text"])
        stale = phash in have_stats and is_stale(have_stats[phash], p, limit)
        wants = store is None or phash in store
        have = None if force or not (wants or stale) else stored_heads(datadir.prompt_dir(save_path, model_dir, phash))
        job_heads = []
        # asking for heads a prompt lacks recomputes it, keeping the heads it had; a stale one is stored anew
        if (wants and (have is None or not have.issuperset(wanted))) or (stale and have is not None):
            job_heads = sorted((set(wanted) if wants else set()) | (have or set()))
        if not job_heads and phash in have_stats and not stale:
            continue
        ids = tokenize(to_tokens, p["text"])
        if len(ids) > limit:
            print(f"warning: prompt {phash} ({p['text'][:40]!r}...) has {len(ids)} tokens, "
                  f"more than {'--max-tokens' if limit < cfg.n_ctx else 'n_ctx'}={limit}: truncated",
                  file=sys.stderr)
        jobs.append(forward.PromptJob(p, phash, ids[:limit], len(ids) > limit, job_heads,
                                      phash not in have_stats or stale))
    part = storage.StatsPart(save_path, model_dir, [registry[n] for n in device_names] + plugins, n_layers, n_heads)
    needs_norms = any(j.heads for j in jobs) or any("value_norms" in f.options["inputs"] for f in plugins)
    sums = (forward.HeadSums(n_layers, n_heads, cfg.d_vocab, forward.model_device(model))
            if any(j.needs_stats for j in jobs) else None)
    if sums is not None and not sums.tokens:
        print(f"note: {model_dir}: {n_layers * n_heads} heads x {cfg.d_vocab} tokens is past the token totals' "
              f"limit ({forward.HeadSums.MAX_TOKEN_ENTRIES:,} entries): the head pages get no top tokens, only "
              "the look-back", file=sys.stderr)
    return RunPlan(save_path, model_name, model_dir, n_layers, n_heads, forward.is_causal(model), jobs,
                   len(prompts) - len(jobs), wanted, plugins, part, limit, forward.model_device(model),
                   forward.output_grams(model, needs_norms), sums)


def compute_activations(prompts: list[dict | str], model, save_path: Path | str = lens.DEFAULT_SAVE_PATH,
                        model_name: str | None = None, batch_size: int = BATCH_SIZE, force: bool = False,
                        progress: bool = True, heads: str | None = None, max_tokens: int | None = None,
                        n_workers: int | None = None, patterns: str | int | set = "all",
                        figures_dir: Path = lens.FIGURES_DIR, time_limit: float | None = TIME_LIMIT) -> dict:
    """Compute the head statistics of `prompts` for `model`, and save the attention patterns of those
    `patterns` names ("all", "none", a number of prompts to sample, or a set of prompt hashes); return a summary.
    The heads' copying scores, from the weights alone, are computed once per model (write_weight_scores).

    `model` is anything with the TransformerLens interface (HookedTransformer, TransformerBridge,
    a wrapper passing calls through). Prompts already saved are skipped unless `force`; `heads`
    (a spec such as `L0-3H*,L5H1`) stores only those heads; `max_tokens` truncates below n_ctx; a plug-in
    statistic taking over `time_limit` seconds on a head fails there and is skipped from then on.
    """
    from tqdm import tqdm

    save_path = Path(save_path)
    model_name = model_name or getattr(model.cfg, "model_name", None) or "model"
    prompts = checked_prompts(prompts)
    for name, value in [("batch_size", batch_size), ("max_tokens", max_tokens), ("n_workers", n_workers)]:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise lens.UserError(f"{name}={value!r}: expected a positive integer")
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit >= 0):
        raise lens.UserError(f"time_limit={time_limit!r}: expected seconds, 0 or more (None: no limit)")
    if not (patterns in ("all", "none") or isinstance(patterns, (set, frozenset, list, tuple))
            or (isinstance(patterns, int) and not isinstance(patterns, bool) and patterns >= 0)):
        raise lens.UserError(f"patterns={patterns!r}: expected 'all', 'none', a number of prompts or prompt hashes")
    plan = plan_run(prompts, model, save_path=save_path, model_name=model_name, force=force, heads=heads,
                    max_tokens=max_tokens, patterns=patterns, figures_dir=Path(figures_dir))
    batches = plan_batches(plan, batch_size)
    check_memory(model, plan, batches)
    lens.write_json(datadir.model_cfg_path(save_path, plan.model_dir), forward.model_config(model, model_name))
    write_weight_scores(model, save_path, plan.model_dir, force)
    stored = [j for j in plan.jobs if j.heads]
    if stored and progress:
        print(size_estimate_line(plan.model_dir, [j.n_tokens for j in stored], len(plan.wanted),
                                 plan.n_layers * plan.n_heads, plan.causal, plan.limit < model.cfg.n_ctx),
              file=sys.stderr)
    start = time.perf_counter()
    bar = tqdm(total=len(plan.jobs), unit="prompt", desc=plan.model_dir, disable=not progress)
    stream = forward.PatternStream(n_workers or os.cpu_count() or 1, plan.plugins, save_path=save_path,
                                   model_dir=plan.model_dir, shape=(plan.n_layers, plan.n_heads), causal=plan.causal,
                                   device=plan.device, with_norms=plan.grams is not None, time_limit=time_limit)
    try:
        results, flushed = [], time.monotonic()
        for batch in batches:
            results += run_batch(model, batch, plan, stream)
            bar.update(len(batch))
            if plan.sums is not None and time.monotonic() - flushed > SUMS_SECONDS:
                stream.finish(plan.part.write_sums, plan.sums.snapshot())  # after the rows it covers
                flushed = time.monotonic()
        if plan.sums is not None:
            stream.finish(plan.part.write_sums, plan.sums.snapshot())
        stream.drain()
        n_bytes = sum(f.result() for f in results)
    except BaseException:
        stream.settle()  # the batches before the interruption are kept; a second Ctrl-C stops this too
        raise
    finally:
        stream.close()  # drops the pattern files left unfinished
        bar.close()
    if plan.sums is not None:
        save_token_strings(save_path, plan.model_dir, plan.sums.counts, forward.token_strings(model))
    for message, count in stream.plugin_errors.values():
        print(f"warning: {message} (its value is missing there; {count} value(s) of it failed in all)", file=sys.stderr)
    return {"model": model_name, "model_dir": plan.model_dir, "done": len(plan.jobs), "skipped": plan.n_skipped,
            "stored": len(stored), "tokens": sum(j.n_tokens for j in plan.jobs),
            "seconds": time.perf_counter() - start, "bytes": n_bytes,
            "failed": sum(count for _, count in stream.plugin_errors.values())}


def check_memory(model, plan: RunPlan, batches: list[list[forward.PromptJob]]) -> None:
    """Stop before the first batch, in one line naming what fits, when a batch's eager attention would need more
    memory than the device has free (else the allocator fails, or the machine swaps, mid-run)."""
    blockwise = forward.block_attention_of(model).problem is None
    eager = [b for b in batches if not blockwise or any(forward.needs_patterns(j, plan.plugins) for j in b)]
    need = lambda b: forward.eager_bytes(len(b), plan.n_heads, max(j.n_tokens for j in b))  # noqa: E731
    worst = max(eager, key=need, default=None)
    free = forward.free_memory(plan.device) if worst else None
    if free is None or need(worst) <= free:
        return
    n, fits = max(j.n_tokens for j in worst), []
    if blockwise:
        fits.append("--patterns none (statistics in memory linear in the tokens" +
                    (f"; without the plug-in statistics {', '.join(f.name for f in plan.plugins)}, which read whole "
                     "patterns)" if plan.plugins else ")"))
    one = forward.eager_bytes(1, plan.n_heads, n)
    if len(worst) > 1 and one <= free:
        fits.append(f"--batch-size {free // one}")
    else:
        longest = math.isqrt(free // (forward.EAGER_BYTES * plan.n_heads))
        fits.append(("--batch-size 1 " if len(worst) > 1 else "") + f"--max-tokens {longest}")
    raise lens.UserError(f"{plan.model_dir}: eager attention over {len(worst)} prompt(s) of {n:,} tokens needs about "
                         f"{human_bytes(need(worst))}, more than the {human_bytes(free)} free on {plan.device}; "
                         f"what fits: {' or '.join(fits)}")


def write_weight_scores(model, save_path: Path, model_dir: str, force: bool) -> None:
    """<model>/weight_scores.json: each head's copying and copy suppression from its weights alone (docs/kinds.md),
    once per model and checkpoint (`force` recomputes them)."""
    path = datadir.weight_scores_path(save_path, model_dir)
    if path.is_file() and not force:
        return
    scores = forward.copying_scores(model)
    if scores is None:
        print(f"note: {model_dir}: no copying scores: the model does not expose readable W_E, W_U and per-head "
              "W_V, W_O of one vocabulary", file=sys.stderr)
        return
    table = lambda a: [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in a]
    lens.write_json(path, {"copying": table(scores[..., 0]), "copy_suppression": table(scores[..., 1])})


def save_token_strings(save_path: Path, model_dir: str, counts: np.ndarray, to_str) -> None:
    """Add the strings of the tokens a run saw to the model's tokens.json (the head pages name tokens by them)."""
    from attention_lens.build_index import data_dir_lock

    path = datadir.token_strings_path(save_path, model_dir)
    ids = np.flatnonzero(counts).tolist()
    with data_dir_lock(save_path, "compute_activations.py"):
        try:
            known = lens.read_json(path)
        except (lens.UserError, OSError):
            known = {}
        new = [i for i in ids if str(i) not in known]
        if new:
            known.update(zip(map(str, new), to_str(new)))
            lens.write_json(path, known)


def checked_prompts(prompts) -> list[dict]:
    """compute_activations()'s prompts as dicts, each with a non-empty text; a UserError naming the first bad one."""
    if isinstance(prompts, (str, dict)):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        p = {"text": p} if isinstance(p, str) else p
        if not isinstance(p, dict) or not isinstance(p.get("text"), str) or not p["text"].strip():
            raise lens.UserError(f'prompts[{i}]: expected a non-empty string or a dict with a non-empty "text", '
                                 f"got {p!r:.60}")
        if not isinstance(p.get("meta", {}), dict):
            raise lens.UserError(f'prompts[{i}]: "meta" must be a dict')
        out.append(p)
    return out


def run_batch(model, batch: list[forward.PromptJob], plan: RunPlan, stream: forward.PatternStream) -> list:
    """One forward pass, then this batch's part rows and prompt.json files, written on the writer thread in order."""
    opened, values = forward.forward_batch(model, batch, stream, plan.grams, plan.sums)
    names, stats = forward.DEVICE_STATISTICS, plan.part.meta["stats"]  # the device's statistics, then the plug-ins
    values = values[:, [names.index(n) for n in stats[:len(stats) - len(plan.plugins)]]]
    to_str_tokens = forward.token_strings(model) if any(o.job.heads for o in opened) else None
    results = [stream.finish(finish_prompt, o, plan, to_str_tokens(o.job.ids)) for o in opened if o.job.heads]
    fresh = [i for i, job in enumerate(batch) if job.needs_stats]
    if fresh:
        stream.finish(lambda: plan.part.append([batch[i].part_row() for i in fresh], np.concatenate(
            [values[fresh], *([np.stack([opened[i].plugin_values for i in fresh])] if plan.plugins else [])], 1)))
    return results


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
            f"-> {save_path / s['model_dir']}"
            + (f"; {s['failed']} statistic value(s) failed, stored as missing (see the warnings)"
               if s["failed"] else ""))


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
    if args.dataset and (args.prompts or args.top or args.examples or args.projections):
        raise lens.UserError("--dataset is where the prompts come from: not with PROMPTS, --top, --examples or "
                             "--projections")
    for flag, what in (("examples", "chooses"), ("projections", "samples")):
        if getattr(args, flag) and (args.top or args.probe or args.prompts):
            raise lens.UserError(f"--{flag} {what} from what is computed: no PROMPTS, --top or --probe with it")
        if getattr(args, flag) and getattr(args, f"no_{flag}"):
            raise lens.UserError(f"--{flag} and --no-{flag} contradict each other")
    if args.examples_patterns and (args.no_examples or args.shard):
        raise lens.UserError("--examples-patterns stores the examples' patterns: not with --no-examples or --shard")
    if args.probe and args.no_probe:
        raise lens.UserError("--probe and --no-probe contradict each other")
    if not args.time_limit >= 0:
        raise lens.UserError(f"--time-limit {args.time_limit:g}: expected seconds, 0 or more (0: no limit)")


def is_data_dir(path: Path) -> bool:
    """Whether a dir is one of ours: it has a models.jsonl or a <model>/model_cfg.json."""
    return datadir.models_path(path).is_file() or bool(lens.model_dirs(path))


def check_writable_dir(save_path: Path) -> None:
    """Fail before any work when the data dir to write is a file, a dir holding other things (its index.html,
    say, would be overwritten) or cannot be created."""
    save_path = Path(save_path)
    if save_path.exists() and not save_path.is_dir():
        raise lens.UserError(f"--save-path {save_path}: a file, not a directory")
    # files of its own at its top, and no sign of ours (dirs alone may be another task's data dir, half made)
    if save_path.is_dir() and not is_data_dir(save_path) and any(p.is_file() and not p.name.startswith(".")
                                                                        for p in save_path.iterdir()):
        raise lens.UserError(f"--save-path {save_path}: holds files and is not a data dir (no models.jsonl, no "
                             "<model>/model_cfg.json); name a new or empty dir, or a data dir")
    existing = next(p for p in [save_path.absolute(), *save_path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise lens.UserError(f"--save-path {save_path}: cannot be created ({existing} is a file)")
    created = [p for p in [save_path.absolute(), *save_path.absolute().parents] if not p.exists()]
    try:  # try it: os.access says yes to root, even where nothing can be created (/proc, a read-only mount)
        save_path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=save_path).close()
    except OSError as e:
        for p in created:  # a failed check leaves nothing behind (a dir the run would write into stays: another
            with contextlib.suppress(OSError):  # task of an array may be writing there already)
                p.rmdir()
        raise lens.UserError(f"--save-path {save_path}: cannot be created or written ({e.strerror})") from None


@functools.cache
def builtin_statistics() -> dict[str, str]:
    """{name: lens.code_of} of the statistics figures/ defines (those DeviceStats computes follow their code)."""
    return {name: lens.code_of(f) for name, f in lens.load_figures(lens.FIGURES_DIR)[0].items()
            if f.kind == "statistic"}


def computed_rows(save_path: Path, model: str) -> dict[str, dict]:
    """{hash: its row in the latest part that holds it} of the prompts whose statistics are computed."""
    return {row["hash"]: row for part in storage.read_parts(save_path, model) for row in part.rows}


def is_stale(row: dict, prompt: dict, limit: int) -> bool:
    """Whether a prompt computed before is to be computed again: its meta changed, or the token limit would cut
    it elsewhere (shorter than it was stored, or longer where it was cut)."""
    n, cut = row["n_tokens"], row.get("truncated", False)
    return row.get("meta", {}) != prompt.get("meta", {}) or n > limit or (cut and n < limit)


def top_prompts(save_path: Path, model_name: str, k: int, stat_spec: str | None) -> tuple[list[dict], str]:
    """compute_activations.py --top K: the prompts among each head's K highest and K lowest by the statistics
    computed so far (the lists heads.json shows), as prompts to store the patterns of."""
    model = lens.model_dir_name(model_name)
    cfg_path = datadir.model_cfg_path(save_path, model)
    parts = storage.read_parts(save_path, model) if cfg_path.is_file() else []
    if not parts:
        raise lens.UserError(f"--top {k}: no statistics of {model_name} in {save_path} yet; compute them first: "
                             f"python compute_activations.py {model_name} PROMPTS --patterns none")
    cfg = lens.read_model_cfg(save_path, model)
    shape = (cfg["n_layers"], cfg["n_heads"])
    stored = prompt_index.StoredPrompts.read(save_path, model)
    update = prompt_index.plan_update(save_path, model, shape, stored, None, parts)
    rows = update.rows
    tables = {n: np.full((len(rows.hashes), *shape), np.nan, np.float32) for n in rows.stats}
    aggregate.fill_tables(tables, update)
    names = [n.strip() for n in (stat_spec or ",".join(tables)).split(",") if n.strip()]
    unknown = [n for n in names if n not in tables]
    if unknown or not names:
        raise lens.UserError(f"--stat {stat_spec}: no statistic {unknown[0] if unknown else ''!r} "
                             f"(computed: {', '.join(tables)})")
    chosen, ranks = set(), aggregate.hash_ranks(rows.hashes)
    for name in names:
        table = tables[name]
        for layer in range(table.shape[1]):
            for head in range(table.shape[2]):
                column = table[:, layer, head]
                finite_rows = np.flatnonzero(np.isfinite(column))
                for highest in (True, False):
                    chosen.update(r for r, _ in aggregate.extremes(finite_rows, column[finite_rows], k, highest, ranks))
    records = [prompt_index.row_record(c.base, c.stored) for _, c in sorted(update.changes.items())]
    return [{"text": records[r]["text"], "meta": records[r]["meta"]} for r in sorted(chosen)], "all"


def finish_model(model, args, name: str, model_name: str, sampling: examples.Sampling) -> None:
    """What a model's run ends with, over every prompt computed: the examples, then the projections (--examples,
    --projections: only those; a --shard: neither, and what to run once the shards are together)."""
    only, model_dir = args.examples or args.projections, lens.model_dir_name(model_name)
    if args.examples or not (only or args.shard or args.no_examples):
        examples.compute_examples(model, args.save_path, model_dir, sampling, args.batch_size, required=args.examples)
        if args.examples_patterns:
            chosen = examples.example_prompts(args.save_path, model_dir)
            s = compute_activations(chosen, model, args.save_path, model_name=model_name,
                                    batch_size=args.batch_size, heads=args.heads, patterns="all",
                                    figures_dir=args.figures_dir, time_limit=args.time_limit or None)
            print(f"{model_name}: the patterns of {len(chosen)} example prompts stored ({s['done']} computed)")
    if args.projections or not (only or args.shard or args.no_projections):
        chosen = projections.Sampling(args.projections_size, args.projections_per_prompt, args.projections_seed)
        projections.compute_projections(model, args.save_path, model_dir, chosen, args.batch_size,
                                        required=args.projections)
    if args.shard and not (only or args.no_examples and args.no_projections):
        print(f"{model_name}: examples and projections are chosen over every prompt: once the shards are together, "
              f"run `python compute_activations.py {name} --examples --projections --save-path {args.save_path}`",
              file=sys.stderr)


def main(argv=None) -> None:
    args = parse_args(argv)
    shard = lens.parse_shard(args.shard)
    check_flags(args)
    steps = parse_steps(args.checkpoint)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    runs = [(name, step, name if step is None else f"{name}@step{step}") for name in names for step in steps]
    sampling = examples.Sampling(args.examples_intervals, args.examples_per_interval, args.examples_top,
                                 args.examples_keys, args.examples_threshold, args.examples_seed, args.examples_by)
    sampling.check()
    if args.examples or args.projections:
        for *_, model_name in runs:
            if not datadir.parts_dir(args.save_path, lens.model_dir_name(model_name)).is_dir():
                raise lens.UserError(f"--{'examples' if args.examples else 'projections'}: {model_name} has no "
                                     f"statistics in {args.save_path}; compute its prompts first")
        work = {model_name: ([], "none") for _, _, model_name in runs}
    elif args.top:
        work = {model_name: top_prompts(args.save_path, model_name, args.top, args.stat) for _, _, model_name in runs}
    else:
        if args.prompts is None and not args.probe and not args.dataset:
            raise lens.UserError("PROMPTS: a prompts file is needed (or --dataset, or --top K, to store the top "
                                 "prompts of statistics already computed, or --probe, the probe set alone)")
        if args.dataset:
            rows = prompt_sources.dataset_rows(args.dataset, args.split, args.text_field, args.dataset_config,
                                               args.n_samples, args.shuffle, args.seed)
            prompts = prompt_sources.prompts_from_rows(rows, args.dataset, args.raw, args.min_chars, args.max_chars,
                                                       args.text_field)
        elif args.prompts:
            prompts = prompt_sources.load_prompts(args.prompts, args.raw, args.min_chars, args.max_chars)
        else:
            prompts = []
        prompts = prompt_sources.select_prompts(prompts, args.n_samples, args.shuffle, args.seed, None)
        # the sample is drawn from every prompt, so shards together store the same N as one run
        store = sample_hashes(prompts, args.patterns, args.seed) if isinstance(args.patterns, int) else args.patterns
        if not args.no_probe:  # the kinds are measured on its stored patterns, whatever --patterns says of the others
            texts = {p["text"] for p in prompts}
            probe = [p for p in kinds.probe_prompts() if p["text"] not in texts]
            prompts += probe
            if store != "all":
                store = (set() if store == "none" else set(store)) | {lens.prompt_hash(p["text"]) for p in probe}
        prompts = [p for p in prompts if lens.in_shard(lens.prompt_hash(p["text"]), shard)]
        work = {model_name: (prompts, store) for _, _, model_name in runs}
    check_writable_dir(args.save_path)
    device = forward.pick_device(args.device, args.device_map)
    for name, step, model_name in runs:
        prompts, store = work[model_name]
        model = forward.load_model(name, device, args.dtype, args.revision, step, args.device_map, args.n_devices)
        if not (args.examples or args.projections):
            s = compute_activations(prompts, model, args.save_path, model_name=model_name, batch_size=args.batch_size,
                                    force=args.force, heads=args.heads, max_tokens=args.max_tokens, patterns=store,
                                    figures_dir=args.figures_dir, time_limit=args.time_limit or None)
            print(summary_line(s, args.save_path))
        finish_model(model, args, name, model_name, sampling)
        del model
    from attention_lens.build_index import build_index
    build_index(args.save_path)


if __name__ == "__main__":
    lens.run_main(main, "finished prompts are saved; run the same command again to resume")
