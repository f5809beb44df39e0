"""Attention with the BOS column removed: what a head reads once its attention sink is ignored."""
import numpy as np

from attention_lens import figure


@figure(cmap="viridis")
def no_bos(attn):
    """Attention without the BOS column, each row renormalised to sum to 1 (the first row, which only sees BOS,
    is dropped)."""
    rest = attn[1:, 1:]
    total = rest.sum(-1, keepdims=True)
    return np.divide(rest, total, out=np.zeros_like(rest), where=total > 0)
