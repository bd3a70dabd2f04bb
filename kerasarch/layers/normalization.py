"""Batch normalization computed by TensorFlow's fused kernel where it applies.

Batch normalization (Ioffe & Szegedy 2015, arXiv:1502.03167, Algorithm 1) normalises each channel by the
statistics of the mini-batch in training and by moving averages of them at inference. Keras 3's
``BatchNormalization`` computes it on every backend from generic operations: the moments, then
``x * rsqrt(var + eps) * gamma + beta`` — about ten element-wise and reduction kernels forward and again
backward, each a pass over the activation, and under ``mixed_bfloat16`` a cast of the activation to float32 and
back around them. On a CPU these passes cost more than the convolutions in a ResNet-50 bfloat16 training step
(``bench/README.md``). TensorFlow's ``FusedBatchNormV3`` does the same in one pass each way, natively in
bfloat16 and float16 (statistics accumulated in float32), on oneDNN, Eigen, cuDNN and XLA.

:class:`BatchNormalization` is ``keras.layers.BatchNormalization`` — the same arguments, config, weights
(``gamma``, ``beta``, ``moving_mean``, ``moving_variance``, in that order), layer names and so every checkpoint
and keras.applications weight file — whose TensorFlow computation on 4-D channels-last inputs is the fused op,
with Keras' conventions kept exactly: the moving averages are updated as
``moving = moving * momentum + batch * (1 - momentum)`` with the biased (``1/n``) batch variance that Keras uses
(``FusedBatchNormV3`` returns the unbiased one, which is corrected back). Everything else — other backends
(JAX, PyTorch), other ranks, ``axis`` other than the last, masks, ``renorm``, ``synchronized`` — is Keras'
own computation.
"""

from __future__ import annotations

import functools
from typing import Any

import keras

__all__ = ["BatchNormalization", "FUSED_DTYPES"]

# The activation dtypes FusedBatchNormV3 takes (its scale, offset and statistics stay float32).
FUSED_DTYPES = ("float32", "bfloat16", "float16")


@keras.saving.register_keras_serializable(package="kerasarch")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's ``FusedBatchNormV3`` where it applies.

    Same arguments, weights and results as the Keras layer (Ioffe & Szegedy 2015); see the module docstring for
    when the fused op is used. ``fused=False`` always uses Keras' own computation.

    Args:
        fused: use the fused op where it applies (default ``True``).
        **kwargs: ``keras.layers.BatchNormalization``'s arguments.
    """

    def __init__(self, *, fused: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def uses_fused_op(self, inputs: Any, mask: Any = None) -> bool:
        """Whether a call on ``inputs`` (with ``mask``) runs TensorFlow's fused op rather than Keras' code."""
        return (
            self.fused
            and keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in FUSED_DTYPES
        )

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if not self.uses_fused_op(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma.value, "float32") if self.scale else tf.ones([channels], "float32")
        beta = tf.cast(self.beta.value, "float32") if self.center else tf.zeros([channels], "float32")
        moving_mean = tf.cast(self.moving_mean.value, "float32")
        moving_variance = tf.cast(self.moving_variance.value, "float32")
        fused = functools.partial(
            tf.raw_ops.FusedBatchNormV3, x=inputs, scale=gamma, offset=beta, epsilon=self.epsilon, data_format="NHWC"
        )
        if training and self.trainable:
            empty = tf.constant([], "float32")
            y, mean, unbiased_variance = fused(
                mean=empty, variance=empty, exponential_avg_factor=1.0, is_training=True
            )[:3]
            # FusedBatchNormV3 normalises with the biased variance but returns the unbiased one, n / max(n - 1, 1)
            # times larger (n values per channel); Keras' moving variance averages the biased one.
            n = tf.cast(tf.reduce_prod(tf.shape(inputs, out_type="int64")[:-1]), "float32")
            variance = unbiased_variance * (tf.maximum(n - 1.0, 1.0) / n)
            momentum = self.momentum
            self.moving_mean.assign(tf.cast(moving_mean * momentum + mean * (1.0 - momentum), self.moving_mean.dtype))
            self.moving_variance.assign(
                tf.cast(moving_variance * momentum + variance * (1.0 - momentum), self.moving_variance.dtype)
            )
        else:
            y = fused(mean=moving_mean, variance=moving_variance, is_training=False)[0]
        return tf.cast(y, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "fused": self.fused}
