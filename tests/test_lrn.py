import numpy as np
import pytest

from kerasarch.layers.lrn import LocalResponseNormalization


def caffe_lrn(a, n, alpha, beta, k):
    """Caffe's LRN (ACROSS_CHANNELS), written from its formula with explicit loops."""
    out = np.empty_like(a, dtype=np.float64)
    channels = a.shape[-1]
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels, c + n // 2 + 1)
        s = np.sum(a[..., lo:hi].astype(np.float64) ** 2, axis=-1)
        out[..., c] = a[..., c] / (k + alpha / n * s) ** beta
    return out


@pytest.mark.parametrize("n, k", [(5, 2.0), (5, 1.0), (3, 2.0)])
def test_lrn_matches_caffe_formula(n, k):
    a = np.random.default_rng(0).normal(0, 30, size=(2, 4, 4, 11)).astype("float32")
    got = np.asarray(LocalResponseNormalization(size=n, alpha=1e-4, beta=0.75, k=k)(a))
    np.testing.assert_allclose(got, caffe_lrn(a, n, 1e-4, 0.75, k), rtol=1e-5)


def test_lrn_divides_alpha_by_n_unlike_tensorflow():
    import tensorflow as tf

    a = np.random.default_rng(1).normal(0, 100, size=(1, 2, 2, 8)).astype("float32")
    ours = np.asarray(LocalResponseNormalization(size=5, alpha=1e-2, beta=0.75, k=2.0)(a))
    tf_same = tf.nn.local_response_normalization(a, depth_radius=2, bias=2.0, alpha=1e-2 / 5, beta=0.75).numpy()
    tf_naive = tf.nn.local_response_normalization(a, depth_radius=2, bias=2.0, alpha=1e-2, beta=0.75).numpy()
    np.testing.assert_allclose(ours, tf_same, rtol=1e-5)
    assert not np.allclose(ours, tf_naive, rtol=1e-3)


def test_lrn_rejects_even_window():
    with pytest.raises(ValueError, match="Received: size=4"):
        LocalResponseNormalization(size=4)
