"""The built-in figures in figures/ on constructed patterns with known answers."""
import io

import numpy as np
from PIL import Image

from attention_lens import lens, render_figures

FIGURES, _ = lens.load_figures()


def uniform(n: int) -> np.ndarray:
    return np.tri(n, dtype=np.float32) / np.arange(1, n + 1, dtype=np.float32)[:, None]


def sink_then_previous(n: int) -> np.ndarray:
    """Half of every row on BOS, the other half on the previous token."""
    a = np.zeros((n, n), np.float32)
    a[0, 0] = 1
    a[1:, 0] = 0.5
    a[np.arange(1, n), np.arange(n - 1)] += 0.5
    return a


def stored_colours(name: str, attn) -> np.ndarray:
    """The first row of a figure's image as render_figures.py stores it, decoded by pillow to RGB."""
    fig = FIGURES[name]
    png = render_figures.image_bytes(fig, fig.func(np.array(attn, np.float32)))
    return np.array(Image.open(io.BytesIO(png)).convert("RGB"))[0]


def test_raw_is_the_pattern():
    a = uniform(5)
    np.testing.assert_array_equal(FIGURES["raw"].func(a), a)
    # drawn as stored, not normalised: 0 and 1 are viridis's ends whatever the head's own range
    viridis = lens.colormap_table("viridis")
    np.testing.assert_array_equal(stored_colours("raw", [[0.0, 0.5, 1.0]]), viridis[[0, 128, 255]])
    np.testing.assert_array_equal(stored_colours("raw", [[0.25, 0.5]]), viridis[[64, 128]])


def test_no_bos_drops_the_sink_and_renormalises():
    out = FIGURES["no_bos"].func(sink_then_previous(6))
    assert out.shape == (5, 5)
    # query 1's previous token is BOS, so nothing is left of its row
    np.testing.assert_array_equal(out[0], 0)
    expected = np.zeros((4, 5), np.float32)
    expected[np.arange(4), np.arange(4)] = 1  # query i+2 -> key i+1 after dropping BOS
    np.testing.assert_allclose(out[1:], expected)
    lens.matrix_as_png(out)  # stays in [0, 1]: renders without normalize


def test_log_scale_floors_at_1e_minus_4():
    out = FIGURES["log_scale"].func(uniform(4))
    assert out[0, 0] == 0 and out[0, 1] == -4
    np.testing.assert_allclose(out[3, :4], np.log10(0.25), rtol=1e-6)


def test_log_scale_image_runs_from_black_at_1e_minus_4_to_magmas_top_at_the_largest_weight():
    """Its image as render_figures.py stores it, decoded by pillow: magma, 1e-4 and below black (magma's first
    colour), the head's largest weight magma's last, 1e-2 half-way even when nothing in the head is below it."""
    magma = lens.colormap_table("magma")
    assert magma[0].max() < 10  # black
    np.testing.assert_array_equal(stored_colours("log_scale", [[1.0, 1e-4, 1e-6, 0.0]]), magma[[255, 0, 0, 0]])
    np.testing.assert_array_equal(stored_colours("log_scale", [[0.5, 0.5]]), magma[[255, 255]])
    half_way = stored_colours("log_scale", [[1.0, 1e-2]])[1]
    assert any((half_way == magma[i]).all() for i in (127, 128)), half_way


def test_vs_uniform_is_zero_for_uniform_attention():
    fig = FIGURES["vs_uniform"]
    assert fig.kind == "multi" and fig.outputs == ["vs_uniform.excess", "vs_uniform.log_ratio"]
    out = fig.func(uniform(7))
    np.testing.assert_allclose(out["excess"], 0, atol=1e-6)
    np.testing.assert_allclose(out["log_ratio"], 0, atol=1e-5)
    sharp = fig.func(sink_then_previous(7))
    assert sharp["excess"][6, 0] > 0 and sharp["excess"][6, 3] < 0
    assert sharp["log_ratio"][6, 3] == -8  # attention 0 is clipped at 1/256 of uniform
