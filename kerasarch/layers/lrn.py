"""Local response normalisation across channels, with Caffe's semantics (AlexNet, ZFNet, GoogLeNet)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="kerasarch")
class LocalResponseNormalization(keras.layers.Layer):
    """``b_c = a_c / (k + (alpha / n) * sum_{c' in window(c)} a_c'^2) ** beta`` over ``n`` neighbouring channels.

    Krizhevsky et al. 2012 §3.3 with Caffe's convention: alpha is divided by the window size ``n``
    (Caffe's ``LRN`` layer, and so the released AlexNet/GoogLeNet weights). TensorFlow's
    ``tf.nn.local_response_normalization`` does not divide, a classic porting bug: its ``alpha`` must be
    ``alpha / n`` and its ``depth_radius`` ``(n - 1) / 2``. The sum is computed in float32 whatever the compute
    dtype, since squared activations overflow float16.

    Args:
        size: window size ``n`` (odd), centred on the channel.
        alpha: scale, divided by ``size`` as in Caffe.
        beta: exponent.
        k: bias.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, **kwargs):
        super().__init__(**kwargs)
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LRN window `size` must be a positive odd integer. Received: size={size!r}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        # The window sums as one product with the (C, C) band matrix of ones |c − c'| ≤ n // 2 (zero-padded at the
        # ends, as in Caffe): a matrix product forward and backward, 7× faster to train through on a CPU than
        # summing n shifted slices, whose gradients each scatter a whole padded copy (bench/README.md).
        index = np.arange(channels)
        band = ops.convert_to_tensor((np.abs(index[:, None] - index[None, :]) <= self.size // 2).astype("float32"))
        window = ops.reshape(ops.matmul(ops.reshape(ops.square(x), (-1, channels)), band), ops.shape(x))
        y = x * self._inverse_power(self.k + (self.alpha / self.size) * window)
        return ops.cast(y, self.compute_dtype)

    def _inverse_power(self, s):
        """``s ** -beta``; the published networks' beta = 0.75 as rsqrt(s) · sqrt(rsqrt(s)), which avoids the
        exp/log of a general power (2.5× faster with its gradient)."""
        if self.beta == 0.75:
            r = ops.rsqrt(s)
            return r * ops.sqrt(r)
        if self.beta == 0.5:
            return ops.rsqrt(s)
        return ops.power(s, -self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}
