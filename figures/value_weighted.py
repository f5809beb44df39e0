import numpy as np

from attention_lens import figure


@figure(cmap="viridis", normalize=True, normalize_min=0.0)
def value_weighted(attn: np.ndarray, value_norms: np.ndarray) -> np.ndarray:
    """Attention weight times the norm of what the key token writes, alpha_ij * ||v_j W_O||
    (Kobayashi et al. 2020): a head attending to tokens whose values are tiny moves little."""
    return attn * value_norms[None, :]
