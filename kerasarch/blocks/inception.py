"""The Inception module of GoogLeNet (naive and with 1×1 bottlenecks) and its conv unit.

Szegedy et al., "Going Deeper with Convolutions", arXiv:1409.4842, §4 and Figure 2.
"""

from __future__ import annotations

import keras
from keras import layers

from kerasarch.blocks.common import apply_conv_bn_act

__all__ = [
    "GOOGLENET_BN_EPS",
    "SLIDE_FILTERS",
    "SLIDE_INPUT_SHAPE",
    "apply_inception_conv",
    "apply_inception_module",
    "slide_inception_module",
]

# torchvision's GoogLeNet BasicConv2d: BatchNorm2d(eps=0.001).
GOOGLENET_BN_EPS = 1e-3

# The lecture's example module: 28×28×256 input, 128 1×1, 192 3×3, 96 5×5, and 64-channel reductions / pool
# projection in the bottleneck version. Order as Table 1 of the paper: #1×1, #3×3 reduce, #3×3, #5×5 reduce,
# #5×5, pool proj.
SLIDE_INPUT_SHAPE = (28, 28, 256)
SLIDE_FILTERS = (128, 64, 192, 64, 96, 64)


def apply_inception_conv(x, filters, kernel_size, *, name, batch_norm=False, strides=1, padding="same"):
    """GoogLeNet's conv unit: conv ``name`` (with bias) → ReLU ``{name}_relu``; with ``batch_norm`` (torchvision's
    BasicConv2d): conv without bias → BN ``{name}_bn`` (eps 1e-3) → ReLU."""
    return apply_conv_bn_act(
        x,
        filters,
        kernel_size,
        name=name,
        conv_name=name,
        bn_name=f"{name}_bn",
        act_name=f"{name}_relu",
        strides=strides,
        padding=padding,
        use_bias=not batch_norm,
        norm=batch_norm,
        bn_epsilon=GOOGLENET_BN_EPS,
        bn_momentum=0.9,
        kernel_initializer="glorot_uniform",
    )


def apply_inception_module(x, filters, *, naive=False, batch_norm=False, name, branch5_kernel=5):
    """An Inception module: 1×1, 3×3 and 5×5 convolutions and a 3×3/1 max-pool side by side on the same input,
    concatenated along depth (``{name}_out``).

    Szegedy et al. 2014, arXiv:1409.4842, Figure 2 (a) naive and (b) with dimension reductions.

    Args:
        x: input tensor (channels last).
        filters: ``(#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj)``, the columns of Table 1. The naive
            module ignores the reductions and the pool projection (they may be ``None``).
        naive: Figure 2(a): no 1×1 reductions, and the pool branch passes its input's channels through
            unprojected, so the output depth is ``#1×1 + #3×3 + #5×5 + input channels``.
        batch_norm: BN after every conv, convs without bias (torchvision's variant).
        name: layer prefix: ``{name}_1x1``, ``{name}_3x3_reduce``, ``{name}_3x3``, ``{name}_5x5_reduce``,
            ``{name}_5x5``, ``{name}_pool``, ``{name}_pool_proj``, ``{name}_out``.
        branch5_kernel: kernel of the "5×5" branch; torchvision uses 3 there (pytorch/vision#906) and keeps the
            name.

    Returns:
        The concatenated output tensor.
    """
    n1x1, r3x3, n3x3, r5x5, n5x5, pool_proj = filters

    def conv(t, f, k, label):
        return apply_inception_conv(t, f, k, name=f"{name}_{label}", batch_norm=batch_norm)

    b1 = conv(x, n1x1, 1, "1x1")
    b3 = conv(x if naive else conv(x, r3x3, 1, "3x3_reduce"), n3x3, 3, "3x3")
    b5 = conv(x if naive else conv(x, r5x5, 1, "5x5_reduce"), n5x5, branch5_kernel, "5x5")
    # 3×3/1 pool with pad 1 keeps the size; TensorFlow's "same" max-pool ignores the padding like Caffe.
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    if not naive:
        bp = conv(bp, pool_proj, 1, "pool_proj")
    return layers.Concatenate(name=f"{name}_out")([b1, b3, b5, bp])


def slide_inception_module(*, naive=False, name=None):
    """The lecture's example Inception module on a 28×28×256 input (128 1×1, 192 3×3, 96 5×5, 3×3 pool; 64-channel
    reductions and pool projection unless ``naive``) as a standalone ``keras.Model``, to show its cost."""
    name = name or f"inception_{'naive' if naive else 'bottleneck'}"
    inputs = keras.Input(SLIDE_INPUT_SHAPE, name="input_layer")
    outputs = apply_inception_module(inputs, SLIDE_FILTERS, naive=naive, name="inception")
    return keras.Model(inputs, outputs, name=name)
