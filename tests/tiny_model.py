"""Build small GPT-2-style checkpoints offline: random weights plus a BPE tokenizer trained in code."""
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "def add(a, b):\n    return a + b\n",
    "Attention patterns show which earlier tokens each token reads from.",
    "In 1905 Einstein published four papers that changed physics.",
    "import numpy as np\nx = np.arange(10)\nprint(x.sum())\n",
]


def train_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )


def make_checkpoint(path: Path, n_layer: int = 2, n_head: int = 4, n_embd: int = 32,
                    n_positions: int = 128, vocab_size: int = 512, model_vocab_size: int | None = None,
                    seed: int = 0) -> Path:
    """Save a random-weight GPT2LMHeadModel and its tokenizer to `path` (a Hugging Face checkpoint dir).

    model_vocab_size > vocab_size pads the embedding to a real model's size (GPT-2: 50257) for benchmarks.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(vocab_size)
    config = GPT2Config(
        vocab_size=max(len(tokenizer), model_vocab_size or 0), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    path = Path(path)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
