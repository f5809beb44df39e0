"""The attention pattern itself."""
from attention_lens import figure


@figure(cmap="viridis")
def raw(attn):
    "The attention pattern: row = query token, column = key token, colour = attention weight (0 to 1)."
    return attn
