"""DenseNet blocks: Huang et al., "Densely Connected Convolutional Networks", arXiv:1608.06993.

Layer names follow keras.applications' DenseNet (``conv2_block1_1_conv``, ``conv2_block1_concat``,
``pool2_conv``, ``pool2_pool``), so its weight files load layer by layer.
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.common import BN_EPS_KERAS, apply_bn_act_conv

__all__ = ["apply_dense_layer", "apply_dense_block", "apply_transition"]


def apply_dense_layer(x, growth_rate, *, name, bottleneck=4, bn_epsilon=BN_EPS_KERAS):
    """One composite layer of a dense block (DenseNet-B, §3): BN-ReLU-conv 1×1 (``bottleneck·k`` maps)
    → BN-ReLU-conv 3×3 (``k`` maps), concatenated to its input.

    Args:
        x: input tensor (all earlier feature maps of the block, concatenated).
        growth_rate: k, the number of maps the layer adds.
        name: layer prefix, e.g. ``conv2_block1``.
        bottleneck: width of the 1×1 bottleneck in multiples of k (4 in the paper).
        bn_epsilon: BatchNorm epsilon.

    Returns:
        ``concat([x, new maps])`` with ``channels(x) + growth_rate`` channels.
    """
    y = apply_bn_act_conv(
        x, bottleneck * growth_rate, 1, name=f"{name}_0", conv_name=f"{name}_1_conv", bn_epsilon=bn_epsilon
    )
    y = apply_bn_act_conv(y, growth_rate, 3, name=f"{name}_1", conv_name=f"{name}_2_conv", bn_epsilon=bn_epsilon)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def apply_dense_block(x, num_layers, growth_rate, *, name, bottleneck=4, bn_epsilon=BN_EPS_KERAS):
    """A dense block: ``num_layers`` composite layers, each fed the concatenation of all earlier maps.

    Args:
        x: input tensor.
        num_layers: the number of composite layers.
        growth_rate: k.
        name: block prefix, e.g. ``conv2``; layer ``i`` is ``{name}_block{i}`` and the block ends in
            ``{name}_block{num_layers}_concat``.
        bottleneck: bottleneck width in multiples of k.
        bn_epsilon: BatchNorm epsilon.

    Returns:
        The block output, with ``channels(x) + num_layers * growth_rate`` channels.
    """
    for i in range(1, num_layers + 1):
        x = apply_dense_layer(x, growth_rate, name=f"{name}_block{i}", bottleneck=bottleneck, bn_epsilon=bn_epsilon)
    return x


def apply_transition(x, *, name, compression=0.5, bn_epsilon=BN_EPS_KERAS):
    """Transition layer between dense blocks (DenseNet-C, §3): BN-ReLU-conv 1×1 to ``floor(θ·m)`` maps, then
    2×2 average pooling with stride 2.

    Args:
        x: input tensor with ``m`` channels.
        name: prefix, e.g. ``pool2`` (``pool2_bn``, ``pool2_relu``, ``pool2_conv``, ``pool2_pool``).
        compression: θ, 0 < θ <= 1.
        bn_epsilon: BatchNorm epsilon.

    Returns:
        The pooled tensor with ``floor(θ·m)`` channels.
    """
    if not 0 < compression <= 1:
        raise ValueError(f"`compression` must be in (0, 1]. Received: compression={compression!r}")
    x = apply_bn_act_conv(x, int(x.shape[-1] * compression), 1, name=name, bn_epsilon=bn_epsilon)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(x)
