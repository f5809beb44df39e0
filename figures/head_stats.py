"""Head statistics: one number per head and prompt, used to rank heads (the site's heads page).

previous_token_head, duplicate_token_head and induction_head are TransformerLens's
`transformer_lens.head_detector.detect_head` scores with its defaults (error measure "mul", nothing
excluded): the share of the head's attention, sum(A * D) / sum(A), that falls on the (query, key)
pairs D marks. The test compares them with detect_head prompt by prompt. induction_score is Neuronpedia's
(hijohnnylin/neuronpedia, headvis/compute-head-metrics.py) on one prompt; `build_index.py --export-headvis` pools it
over the prompts as Neuronpedia does (docs/headvis.md).
"""
from functools import lru_cache

import numpy as np

from attention_lens import statistic


@statistic
def bos(attn):
    "Mean attention to the first (BOS) token, over queries after the first: high for attention-sink heads."
    n = len(attn)
    return float(attn[1:, 0].sum()) / (n - 1) if n > 1 else float("nan")


@statistic
def diagonal(attn):
    "Mean attention of a token to itself, over queries after the first."
    n = len(attn)
    return float(np.trace(attn) - attn[0, 0]) / (n - 1) if n > 1 else float("nan")


@statistic
def entropy(attn):
    "Mean entropy of a query's attention in bits: 0 when a head looks at one token, log2(n) when uniform."
    p = attn[1:]
    # sum of p log p over all rows, as one dot product; + 1e-30 makes 0 log 0 = 0
    return -float(np.vdot(p, np.log2(p + np.float32(1e-30)))) / len(p) if len(p) else float("nan")


@statistic
def previous_token_head(attn):
    "TransformerLens detect_head score: share of all attention on the previous token (a perfect head: (n-1)/n)."
    if len(attn) < 2:
        return float("nan")
    return float(np.trace(attn, -1) / attn.sum())


@statistic
def duplicate_token_head(attn, token_ids):
    "TransformerLens detect_head score: share of all attention on earlier copies of the query's own token (0 if none)."
    return detection_score(attn, repeat_pairs(tuple(token_ids))[0])


@statistic
def induction_head(attn, token_ids):
    "TransformerLens detect_head score: share of all attention on the token after an earlier copy of the query's token."
    return detection_score(attn, repeat_pairs(tuple(token_ids))[1])


@statistic
def max_attention(attn):
    """The head's largest attention weight, the first query and first key left out: how strongly it fires
    (its examples are sampled by it)."""
    return float(attn[1:, 1:].max()) if len(attn) > 1 else float("nan")


@statistic
def qk_distance(attn):
    """Look-back: the attention-weighted mean distance |q - k| from a query to its keys, over all queries
    (Neuronpedia's qk_distance, per prompt)."""
    n = len(attn)
    if n < 2:
        return float("nan")
    return float((attn * distances(n)).sum() / n)


@statistic
def qk_distance_variance(attn):
    """The attention-weighted variance of the distance |q - k|, over all queries and keys together (pooled, as
    Neuronpedia's qk_distance_variance)."""
    n = len(attn)
    if n < 2:
        return float("nan")
    d = distances(n)
    mean = float((attn * d).sum()) / n
    return float((attn * d * d).sum()) / n - mean * mean


@statistic
def induction_score(attn, token_ids):
    """Neuronpedia's induction score on one prompt: for each query whose token occurred earlier, the attention on the
    token after each earlier copy (weights under 0.01 dropped), summed, then averaged over those queries; NaN if
    no token repeats."""
    repeated = len(token_ids) - len(set(token_ids))  # queries whose token occurred earlier
    if len(attn) < 2 or not repeated:
        return float("nan")
    w = np.take(attn, repeat_pairs(tuple(token_ids))[1])
    return float(w[w >= 0.01].sum()) / repeated


def detection_score(attn: np.ndarray, pairs: np.ndarray) -> float:
    """detect_head's "mul" score for a 0/1 detection pattern given as the flat indices of its ones."""
    if len(attn) < 2:  # detect_head refuses one-token prompts
        return float("nan")
    return float(np.take(attn, pairs).sum() / attn.sum())


@lru_cache(maxsize=4)
def distances(n: int) -> np.ndarray:
    """|q - k| for every (query, key) of an n-token prompt, float64."""
    q = np.arange(n, dtype=np.float64)
    return np.abs(q[:, None] - q[None, :])


@lru_cache(maxsize=8)
def repeat_pairs(token_ids: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Flat [query, key] indices of detect_head's duplicate-token and induction patterns for these tokens.

    Cached because every head of a prompt asks for the same token ids."""
    ids = np.asarray(token_ids)
    n = len(ids)
    # duplicate: an earlier key with the query's token (BOS included, as detect_head does);
    # induction: the key right after it, which is at most the query itself
    queries, keys = np.nonzero((ids[:, None] == ids[None, :]) & np.tri(n, k=-1, dtype=bool))
    return queries * n + keys, queries * n + keys + 1
