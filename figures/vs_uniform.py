"""Attention compared with uniform causal attention (1 / number of visible tokens)."""
import numpy as np

from attention_lens import figure


@figure(diverging=True, normalize=True, outputs=["excess", "log_ratio"])
def vs_uniform(attn):
    "Where a head attends more (blue) or less (red) than uniform attention: the difference, and log2 of the ratio."
    n = attn.shape[0]
    visible = np.tril(np.ones((n, n), bool))
    uniform = np.where(visible, 1.0 / np.arange(1, n + 1)[:, None], 0.0)
    ratio = np.log2(np.maximum(attn, 1e-6) / np.where(visible, uniform, 1.0))
    return {"excess": attn - uniform, "log_ratio": np.where(visible, np.clip(ratio, -8, 8), 0.0)}
