"""Head statistics: one number per head and prompt, used to rank heads (the site's head grid)."""
import numpy as np

from lens import statistic


@statistic
def bos(attn):
    "Mean attention to the first (BOS) token, over queries after the first: high for attention-sink heads."
    return float(attn[1:, 0].mean()) if len(attn) > 1 else float("nan")


@statistic
def diagonal(attn):
    "Mean attention of a token to itself, over queries after the first."
    return float(np.diagonal(attn)[1:].mean()) if len(attn) > 1 else float("nan")


@statistic
def prev_token(attn):
    "Mean attention to the previous token, over queries after the second (whose previous token is BOS)."
    return float(np.diagonal(attn, -1)[1:].mean()) if len(attn) > 2 else float("nan")


@statistic
def entropy(attn):
    "Mean entropy of a query's attention in bits: 0 when a head looks at one token, log2(n) when uniform."
    p = attn[1:]
    return float(-(p * np.log2(np.where(p > 0, p, 1.0))).sum(-1).mean()) if len(attn) > 1 else float("nan")


@statistic
def induction(attn, token_ids):
    "Mean attention from a repeated token to the token right after its earlier occurrences (NaN if no token repeats)."
    ids = np.asarray(token_ids)
    same = (ids[:, None] == ids[None, :]) & np.tri(len(ids), k=-1, dtype=bool)  # earlier occurrence j of token i
    same[:, 0] = False  # BOS is not part of a repeated sequence
    queries, earlier = np.nonzero(same)
    if not len(queries):
        return float("nan")
    scores = np.zeros(len(ids))
    np.add.at(scores, queries, attn[queries, earlier + 1])
    return float(scores[np.unique(queries)].mean())
