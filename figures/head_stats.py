"""Head statistics: one number per head and prompt, used to rank heads (the site's head grid)."""
from functools import lru_cache

import numpy as np

from lens import statistic


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
def prev_token(attn):
    "Mean attention to the previous token, over queries after the second (whose previous token is BOS)."
    n = len(attn)
    return float(np.trace(attn, -1) - attn[1, 0]) / (n - 2) if n > 2 else float("nan")


@statistic
def entropy(attn):
    "Mean entropy of a query's attention in bits: 0 when a head looks at one token, log2(n) when uniform."
    p = attn[1:]
    # sum of p log p over all rows, as one dot product; + 1e-30 makes 0 log 0 = 0
    return -float(np.vdot(p, np.log2(p + np.float32(1e-30)))) / len(p) if len(p) else float("nan")


@statistic
def induction(attn, token_ids):
    "Mean attention from a repeated token to the token right after its earlier occurrences (NaN if no token repeats)."
    queries, keys, rows = induction_targets(tuple(token_ids))
    if not len(queries):
        return float("nan")
    return float(np.bincount(rows, attn[queries, keys]).mean())


@lru_cache(maxsize=8)
def induction_targets(token_ids: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, key) pairs where key follows an earlier occurrence of the query's token, and each pair's query number.

    Cached because every head of a prompt asks for the same token ids."""
    ids = np.asarray(token_ids)
    earlier = (ids[:, None] == ids[None, :]) & np.tri(len(ids), k=-1, dtype=bool)
    earlier[:, 0] = False  # BOS is not part of a repeated sequence
    queries, positions = np.nonzero(earlier)
    return queries, positions + 1, np.unique(queries, return_inverse=True)[1]
