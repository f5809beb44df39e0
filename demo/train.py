"""Train the bundled demo model: a 2-layer Pythia-shaped model with a previous-token head and induction heads.

    python demo/train.py                  # ~4 minutes on 2 idle CPU cores; rewrites demo/model and demo/checkpoints

Half of each batch is text every Python install has offline (the standard library's docstrings and
pydoc's help topics), half random token sequences repeated to the end of the row: predicting the
repeats needs an induction circuit, which appears abruptly around step 1,500. No BOS, as Pythia (and
TransformerLens's default for GPT-NeoX models, so that compute_activations.py sees what training saw).
Deterministic (fixed seeds, deterministic kernels, 2 threads); the docstrings differ between Python
versions, so retraining on another one gives a similar model, not the same bytes.
Ends with a table of transformer_lens.head_detector.detect_head scores of every saved checkpoint.
"""
import argparse
import copy
import importlib
import inspect
import math
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

DEMO_DIR = Path(__file__).resolve().parent
SEED = 0
VOCAB_SIZE = 2000
N_CTX = 256
# (rows, tokens per row): short rows while the induction heads form (many rows per step make them form sooner),
# then rows of the whole context for attention over long distances
SHORT_BATCH, LONG_BATCH, LONG_FROM_STEP = (16, 96), (6, N_CTX), 2500
REPEAT_FRACTION = 0.5  # rows of repeated random tokens; the rest is docstring text
CHECKPOINT_STEPS = [0, 1000, 2000, 4000]  # untrained, before, just after and long after the induction heads form
# Standard-library modules written in Python with plenty of docstrings (a fixed list: same corpus on every run).
MODULES = [
    "abc", "argparse", "ast", "asyncio", "base64", "bdb", "bisect", "calendar", "cmd", "codecs", "collections",
    "colorsys", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "dis", "doctest", "email.message", "enum", "filecmp", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac", "html.parser", "http.client",
    "http.server", "imaplib", "importlib", "inspect", "io", "ipaddress", "json", "logging", "lzma", "mailbox",
    "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil",
    "platform", "plistlib", "poplib", "pprint", "pydoc", "queue", "quopri", "random", "re", "reprlib", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics",
    "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "traceback", "turtle", "types", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings",
    "wave", "weakref", "zipfile", "zipimport",
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEMO_DIR, help="writes OUT/model and OUT/checkpoints/step<N>")
    p.add_argument("--steps", type=int, default=CHECKPOINT_STEPS[-1], help="training steps (default: %(default)s)")
    p.add_argument("--checkpoints", type=lambda s: [int(x) for x in s.split(",")], default=CHECKPOINT_STEPS,
                   help="steps after which to save OUT/checkpoints/step<N>, comma-separated (default: %(default)s)")
    return p.parse_args(argv)


def stdlib_docstrings() -> list[str]:
    """pydoc's help topics (the language reference) and the docstrings of MODULES and what they define."""
    from pydoc_data.topics import topics
    texts = [topics[k] for k in sorted(topics)]
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # e.g. turtle without tkinter
            continue
        texts.append(inspect.getdoc(module) or "")
        for _, obj in inspect.getmembers(module, lambda o: inspect.isclass(o) or inspect.isfunction(o)):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            texts.append(inspect.getdoc(obj) or "")
            if inspect.isclass(obj):
                texts += [inspect.getdoc(m) or "" for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
    return list(dict.fromkeys(t for t in texts if len(t) > 40))


def train_tokenizer(texts: list[str]):
    """A byte-level BPE of VOCAB_SIZE tokens with <|endoftext|> as BOS, EOS and pad (as GPT-2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")


def encode_corpus(tokenizer, texts: list[str]) -> torch.Tensor:
    """All texts as one stream of token ids, each text followed by <|endoftext|>."""
    eos = tokenizer.eos_token_id
    return torch.tensor([i for ids in tokenizer(texts)["input_ids"] for i in ids + [eos]])


def make_batch(gen: torch.Generator, corpus: torch.Tensor, eos: int, vocab_size: int,
               shape: tuple[int, int]) -> torch.Tensor:
    """Rows of a corpus slice, or of a random sequence repeated to fill the row; no BOS, as Pythia was trained."""
    n_rows, n = shape
    rows = []
    for _ in range(n_rows):
        if torch.rand(1, generator=gen).item() < REPEAT_FRACTION:
            length = int(torch.randint(8, n // 2 + 1, (1,), generator=gen))
            seq = torch.randint(0, vocab_size, (length,), generator=gen)
            seq[seq == eos] = 1
            rows.append(seq.repeat(n // length + 1)[:n])
        else:
            start = int(torch.randint(0, len(corpus) - n, (1,), generator=gen))
            rows.append(corpus[start:start + n])
    return torch.stack(rows)


def learning_rate(step: int, steps: int, peak: float = 1e-3, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def induction_score(model, gen: torch.Generator, vocab_size: int, length: int = N_CTX // 2) -> list[float]:
    """Attention of each layer-1 head from the second copy of a repeated random sequence to the induction target."""
    seq = torch.randint(1, vocab_size, (8, length), generator=gen)
    with torch.no_grad():
        attn = model(torch.cat([seq, seq], dim=1), output_attentions=True).attentions[-1]  # [batch, head, q, k]
    q = torch.arange(length, 2 * length)
    return attn[:, :, q, q - length + 1].mean(dim=(0, 2)).tolist()


def save_checkpoint(model, tokenizer, path: Path) -> None:
    """A Hugging Face checkpoint dir with float16 weights: half the bytes, and attention patterns barely move."""
    copy.deepcopy(model).half().save_pretrained(path)
    tokenizer.save_pretrained(path)


def train(tokenizer, corpus: torch.Tensor, steps: int, checkpoints: list[int], out: Path) -> None:
    """Train a fresh model for `steps` steps, saving a checkpoint at each of `checkpoints` and at the last step."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.manual_seed(SEED)
    # GPT-NeoX for its rotary positions: a previous-token head is then one rule at every position. A GPT-2 with
    # learned positions, trained the same way, grew one that worked only within the first ~60 positions.
    config = GPTNeoXConfig(vocab_size=len(tokenizer), max_position_embeddings=N_CTX, hidden_size=128,
                           num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                           tie_word_embeddings=True,  # half the bytes of a checkpoint
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config._attn_implementation = "eager"  # attention weights for induction_score
    model = GPTNeoXForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    gen, eval_gen = torch.Generator().manual_seed(SEED), torch.Generator().manual_seed(SEED + 1)
    eos, start, loss = tokenizer.eos_token_id, time.time(), torch.tensor(float("nan"))
    for step in range(steps + 1):
        if step in checkpoints or step == steps:
            save_checkpoint(model, tokenizer, out / "checkpoints" / f"step{step}")
        if step % 250 == 0 or step == steps:
            scores = " ".join(f"{s:.2f}" for s in induction_score(model, eval_gen, len(tokenizer)))
            print(f"step {step:5d}  loss {loss.item():.3f}  "
                  f"layer-1 induction attention {scores}  {time.time() - start:.0f} s", flush=True)
        if step == steps:
            break
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps)
        batch = make_batch(gen, corpus, eos, len(tokenizer), SHORT_BATCH if step < LONG_FROM_STEP else LONG_BATCH)
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    save_checkpoint(model, tokenizer, out / "model")


def head_table(dirs: list[Path], texts: list[str]) -> str:
    """detect_head scores of every head of each checkpoint dir, loaded as a user would (TransformerBridge, offline)."""
    from transformer_lens.head_detector import HEAD_NAMES, detect_head
    from transformer_lens.model_bridge import TransformerBridge

    lines = [f"{'checkpoint':<12} {'head':<6} " + " ".join(f"{n:>20}" for n in HEAD_NAMES)]
    for path in dirs:
        model = TransformerBridge.boot_transformers(str(path), device="cpu")
        model.enable_compatibility_mode()
        scores = {n: detect_head(model, texts, n) for n in HEAD_NAMES}
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):
                lines.append(f"{path.name:<12} L{layer}H{head}   "
                             + " ".join(f"{scores[n][layer, head].item():20.3f}" for n in HEAD_NAMES))
    return "\n".join(lines)


def repeated_word_texts(n: int = 8, length: int = 25) -> list[str]:
    """Texts of `length` random words, then the same words again (as the repeated-random prompts of prompts.jsonl)."""
    words = ("apple anchor bishop candle cloud copper dragon ember falcon glacier hammer harbor island jungle "
             "lamp meadow orbit pixel quartz river rocket saddle stone tiger tunnel velvet violin walnut window "
             "zebra").split()
    rng = random.Random(SEED)
    return [" ".join(seq + seq) for seq in ([rng.choice(words) for _ in range(length)] for _ in range(n))]


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    start = time.time()
    texts = stdlib_docstrings()
    tokenizer = train_tokenizer(texts)
    corpus = encode_corpus(tokenizer, texts)
    print(f"corpus: {len(texts):,} docstrings, {len(corpus):,} tokens, vocabulary {len(tokenizer):,}"
          f" ({time.time() - start:.0f} s)", flush=True)
    train(tokenizer, corpus, args.steps, args.checkpoints, args.out)
    dirs = sorted((args.out / "checkpoints").glob("step*"), key=lambda p: int(p.name[4:]))
    print(head_table(dirs, repeated_word_texts()))
    print(f"done in {time.time() - start:.0f} s -> {args.out / 'model'}")


if __name__ == "__main__":
    main()
