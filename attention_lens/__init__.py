"""attention-lens: every attention head's pattern, figures and statistics of a TransformerLens model, browsable offline.

The scripts (compute_activations, render_figures, build_index, serve, standalone, import_pattern_lens) run from a
clone as `python compute_activations.py ...` or as `python -m attention_lens.compute_activations ...`; in a notebook,
after `pip install -e .`:

    from attention_lens.notebook import attention_view
    from attention_lens import attn_frames as af
"""
from attention_lens.lens import figure, matrix_as_svg, statistic  # the plug-in API of figures/*.py

__all__ = ["figure", "matrix_as_svg", "statistic"]
