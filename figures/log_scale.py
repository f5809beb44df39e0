"""Log-scale view: makes the faint structure under a few dominant weights visible."""
import numpy as np

from attention_lens import figure


@figure(cmap="magma", normalize=True, normalize_min=-4.0)
def log_scale(attn):
    "log10 of the attention weight, from 1e-4 (black) up to the largest weight of the head."
    return np.log10(np.maximum(attn, 1e-4))
