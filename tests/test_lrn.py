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


def caffe_lrn_grad(a, u, n, alpha, beta, k):
    """dL/da of Caffe's LRN for upstream ``u``, from the chain rule in float64: with s_c = k + α/n Σ_{W(c)} a²,
    y_c = a_c s_c^−β, so dL/da_j = u_j s_j^−β − (2αβ/n) a_j Σ_{c: j ∈ W(c)} u_c a_c s_c^(−β−1)."""
    a, u = a.astype(np.float64), u.astype(np.float64)
    channels, r = a.shape[-1], n // 2
    s = np.empty_like(a)
    for c in range(channels):
        s[..., c] = k + alpha / n * np.sum(a[..., max(0, c - r) : c + r + 1] ** 2, axis=-1)
    t = u * a * s ** (-beta - 1)
    grad = u * s**-beta
    for j in range(channels):
        grad[..., j] -= 2 * alpha * beta / n * a[..., j] * np.sum(t[..., max(0, j - r) : j + r + 1], axis=-1)
    return grad


@pytest.mark.parametrize("n, beta", [(5, 0.75), (3, 0.5), (5, 0.6)])
def test_lrn_gradient_matches_the_chain_rule(n, beta):
    import tensorflow as tf

    rng = np.random.default_rng(2)
    a = rng.normal(0, 30, size=(2, 3, 3, 9)).astype("float32")
    u = rng.normal(size=a.shape).astype("float32")
    layer = LocalResponseNormalization(size=n, alpha=1e-3, beta=beta, k=2.0)
    x = tf.constant(a)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    np.testing.assert_allclose(y.numpy(), caffe_lrn(a, n, 1e-3, beta, 2.0), rtol=1e-5)
    np.testing.assert_allclose(
        tape.gradient(y, x, u).numpy(), caffe_lrn_grad(a, u, n, 1e-3, beta, 2.0), rtol=1e-4, atol=1e-6
    )
