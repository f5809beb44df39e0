"""The built-in figures in figures/ on constructed patterns with known answers."""
import numpy as np

import lens

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


def test_raw_is_the_pattern():
    a = uniform(5)
    np.testing.assert_array_equal(FIGURES["raw"].func(a), a)
    assert FIGURES["raw"].options["cmap"] == "viridis" and not FIGURES["raw"].options["normalize"]


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
    assert FIGURES["log_scale"].options["normalize_min"] == -4.0


def test_vs_uniform_is_zero_for_uniform_attention():
    fig = FIGURES["vs_uniform"]
    assert fig.kind == "multi" and fig.outputs == ["vs_uniform.excess", "vs_uniform.log_ratio"]
    out = fig.func(uniform(7))
    np.testing.assert_allclose(out["excess"], 0, atol=1e-6)
    np.testing.assert_allclose(out["log_ratio"], 0, atol=1e-5)
    sharp = fig.func(sink_then_previous(7))
    assert sharp["excess"][6, 0] > 0 and sharp["excess"][6, 3] < 0
    assert sharp["log_ratio"][6, 3] == -8  # attention 0 is clipped at 1/256 of uniform
