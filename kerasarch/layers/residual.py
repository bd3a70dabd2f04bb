"""Layers of the residual family: the option-A shortcut and stochastic depth."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["ZeroPadShortcut", "StochasticDepth"]


@keras.saving.register_keras_serializable(package="kerasarch")
class ZeroPadShortcut(keras.layers.Layer):
    """Parameter-free shortcut of option A: keep every ``strides``-th pixel, then append zero channels.

    He et al. 2015, arXiv:1512.03385 §3.3 option A ("the shortcut still performs identity mapping, with extra
    zero entries padded for increasing dimensions"; §4.2 uses it for every CIFAR ResNet). As in
    fb.resnet.torch, subsampling keeps the top-left pixel of each ``strides``×``strides`` cell (a 1×1 pool of
    stride 2, so an odd size ``H`` gives ``ceil(H / 2)`` like a stride-2 "same" convolution) and the new
    channels are zeros appended after the input's channels.

    Args:
        filters: output channels, at least the input's.
        strides: spatial subsampling factor.
    """

    def __init__(self, filters, strides=2, **kwargs):
        super().__init__(**kwargs)
        if int(filters) < 1 or int(strides) < 1:
            raise ValueError(
                f"ZeroPadShortcut needs filters >= 1 and strides >= 1. Received: filters={filters!r}, "
                f"strides={strides!r}"
            )
        self.filters, self.strides = int(filters), int(strides)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] > self.filters:
            raise ValueError(
                f"ZeroPadShortcut cannot reduce channels: input has {input_shape[-1]}, filters={self.filters}."
            )
        self.built = True

    def call(self, inputs):
        s = self.strides
        x = inputs[:, ::s, ::s, :] if s > 1 else inputs
        extra = self.filters - x.shape[-1]
        if extra:
            x = ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])
        return x

    def compute_output_shape(self, input_shape):
        def sub(d):
            return None if d is None else -(-d // self.strides)

        return (input_shape[0], sub(input_shape[1]), sub(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package="kerasarch")
class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch during training: Huang et al. 2016, "Deep Networks with Stochastic Depth",
    arXiv:1603.09382.

    Applied to the residual branch ``f(x)`` before the addition. In training the branch is kept with probability
    ``survival_prob`` and then divided by it (zero otherwise), so its expected value is ``f(x)``; at inference it
    is the identity. The paper instead keeps ``f(x)`` unscaled in training and multiplies it by ``p_l`` at test
    time (Eq. 5); the two differ only by a rescaling of the branch's weights, and this "inverted" form makes the
    trained network a plain ResNet at inference.

    Args:
        survival_prob: probability ``p_l`` that the branch is kept, in (0, 1].
        mode: ``"batch"``: one draw per call, the whole mini-batch keeps or drops the branch (the paper, §3);
            ``"sample"``: one draw per example (torchvision's ``"row"``, timm's ``drop_path``).
        seed: seed of the layer's random generator (``None``: from Keras' global seed).
    """

    def __init__(self, survival_prob, mode="batch", seed=None, **kwargs):
        super().__init__(**kwargs)
        survival_prob = float(survival_prob)
        if not 0.0 < survival_prob <= 1.0:
            raise ValueError(f"`survival_prob` must be in (0, 1]. Received: survival_prob={survival_prob!r}")
        if mode not in ("batch", "sample"):
            raise ValueError(f"`mode` must be 'batch' or 'sample'. Received: mode={mode!r}")
        self.survival_prob, self.mode, self.seed = survival_prob, mode, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.survival_prob == 1.0:
            return inputs
        shape = (
            (1,) * len(inputs.shape)
            if self.mode == "batch"
            else (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        )
        u = keras.random.uniform(shape, seed=self.seed_generator)
        keep = ops.cast(u < self.survival_prob, inputs.dtype)
        return inputs * keep / ops.cast(self.survival_prob, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "survival_prob": self.survival_prob, "mode": self.mode, "seed": self.seed}
