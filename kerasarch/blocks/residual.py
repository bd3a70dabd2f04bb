"""Residual blocks: basic and bottleneck, post- and pre-activation, grouped (ResNeXt) and wide, with the
shortcut options of He et al. 2015 and a stochastic-depth hook.

Layer names follow keras.applications' ``resnet.py`` / ``resnet_v2.py``: inside block ``name``, the shortcut is
``{name}_0_*``, the branch convolutions ``{name}_1_*``, ``{name}_2_*``, ``{name}_3_*``; post-activation blocks end
in ``{name}_add`` → ``{name}_out`` (ReLU), pre-activation blocks in the addition ``{name}_out``.
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.common import BN_EPS_TORCH, apply_bn_act, apply_conv
from kerasarch.layers.residual import StochasticDepth, ZeroPadShortcut

__all__ = [
    "HE_FAN_OUT",
    "apply_shortcut",
    "apply_residual_add",
    "apply_basic_block",
    "apply_bottleneck_block",
    "apply_preact_basic_block",
    "apply_preact_bottleneck_block",
    "bottleneck_width",
]

# He et al. 2015 initialisation, N(0, 2 / (k·k·out_channels)) as in fb.resnet.torch and torchvision; a config
# dict, so that every layer deserialises its own initializer.
HE_FAN_OUT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"},
}

SHORTCUTS = ("A", "B", "C")


def bottleneck_width(filters, groups=1, base_width=64):
    """Width of a bottleneck's 3×3 convolution, torchvision's rule ``int(filters · base_width / 64) · groups``:
    ``filters`` for ResNet, ``2·filters`` for WRN-50-2 (``base_width=128``), ``groups·d`` for ResNeXt ``C×d``
    (``base_width=d`` at ``filters=64``)."""
    return int(filters * (base_width / 64.0)) * groups


def _conv(x, filters, kernel_size, *, name, strides=1, groups=1, use_bias, kernel_initializer, explicit_pad=False):
    """Conv ``{name}_conv``. A strided k×k (or any k×k with ``explicit_pad``) gets symmetric zero padding
    ``{name}_pad`` first: TensorFlow's "same" pads only bottom/right at stride 2, which would shift every feature
    map against PyTorch/Caffe weights."""
    if kernel_size > 1 and (strides > 1 or explicit_pad):
        x = layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    return apply_conv(
        x,
        filters,
        kernel_size,
        name=f"{name}_conv",
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
    )


def _last_gamma(zero_init_residual):
    return "zeros" if zero_init_residual else "ones"


def apply_shortcut(
    x,
    filters,
    *,
    name,
    strides=1,
    shortcut="B",
    preact_input=None,
    norm=True,
    use_bias=False,
    bn_epsilon=BN_EPS_TORCH,
    bn_momentum=0.9,
    kernel_initializer=HE_FAN_OUT,
):
    """The shortcut of a residual block (He et al. 2015, arXiv:1512.03385 §3.3).

    Identity where the shapes match (and ``shortcut`` is not ``"C"``). Otherwise option ``"A"``: subsample and
    zero-pad the channels (``{name}_0_pad``, no parameters); ``"B"``: a 1×1 projection (``{name}_0_conv``, +
    ``{name}_0_bn`` when ``norm``) where the channels change, and a 1×1 max-pool subsampling (``{name}_0_pool``,
    keras.applications' ResNetV2) where only the resolution does; ``"C"``: a projection in every block.

    Args:
        x: the block input.
        filters: output channels of the block.
        name: block name.
        strides: the block's spatial stride.
        shortcut: ``"A"``, ``"B"`` or ``"C"``.
        preact_input: for pre-activation blocks, BN-ReLU(x), which a projection reads instead of ``x``.
        norm: BatchNorm after the projection (post-activation blocks).
        use_bias, bn_epsilon, bn_momentum, kernel_initializer: of the projection.

    Returns:
        The shortcut tensor, of the block output's shape.
    """
    if shortcut not in SHORTCUTS:
        raise ValueError(f"`shortcut` must be one of {SHORTCUTS}. Received: shortcut={shortcut!r}")
    same_channels = x.shape[-1] == filters
    if shortcut != "C" and same_channels and strides == 1:
        return x
    if shortcut == "A":
        return ZeroPadShortcut(filters, strides, name=f"{name}_0_pad")(x)
    if shortcut == "B" and same_channels:
        return layers.MaxPooling2D(1, strides=strides, name=f"{name}_0_pool")(x)
    source = x if preact_input is None else preact_input
    s = apply_conv(
        source,
        filters,
        1,
        strides=strides,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        name=f"{name}_0_conv",
    )
    if norm:
        s = apply_bn_act(s, name=f"{name}_0", activation=None, bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
    return s


def apply_residual_add(shortcut, residual, *, name, survival_prob=None, stochastic_depth_mode="batch", add_name=None):
    """``shortcut + residual``, the residual first passing a :class:`StochasticDepth` (``{name}_drop``) when
    ``survival_prob`` is below 1."""
    if survival_prob is not None and survival_prob < 1.0:
        residual = StochasticDepth(survival_prob, mode=stochastic_depth_mode, name=f"{name}_drop")(residual)
    return layers.Add(name=add_name or f"{name}_add")([shortcut, residual])


def apply_basic_block(
    x,
    filters,
    *,
    name,
    strides=1,
    shortcut="B",
    use_bias=False,
    bn_epsilon=BN_EPS_TORCH,
    bn_momentum=0.9,
    kernel_initializer=HE_FAN_OUT,
    dropout=0.0,
    survival_prob=None,
    stochastic_depth_mode="batch",
    zero_init_residual=False,
):
    """Post-activation basic block: 3×3 conv-BN-ReLU, 3×3 conv-BN, add the shortcut, ReLU (He et al. 2015,
    arXiv:1512.03385 Fig. 2; ResNet-18/34 and the CIFAR ResNets).

    Args:
        x: input tensor.
        filters: output channels (both convolutions).
        name: block name, e.g. ``conv3_block1``.
        strides: stride of the first 3×3 (and the shortcut).
        shortcut: ``"A"``, ``"B"`` or ``"C"``, see :func:`apply_shortcut`.
        use_bias: biases in every convolution (keras.applications) or none (torchvision).
        bn_epsilon, bn_momentum, kernel_initializer: of every conv / BN.
        dropout: dropout rate between the two convolutions (0: none).
        survival_prob: stochastic-depth survival probability of the branch (``None``: always kept).
        stochastic_depth_mode: ``"batch"`` or ``"sample"``, see :class:`StochasticDepth`.
        zero_init_residual: start the branch's last BN scale (post-activation) or last conv (pre-activation) at
            zero, so that the untrained block is the identity (Goyal et al. 2017, arXiv:1706.02677).

    Returns:
        The block output, ``{name}_out``.
    """
    conv = dict(use_bias=use_bias, kernel_initializer=kernel_initializer)
    bn = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
    s = apply_shortcut(x, filters, name=name, strides=strides, shortcut=shortcut, **conv, **bn)
    r = _conv(x, filters, 3, strides=strides, name=f"{name}_1", **conv)
    r = apply_bn_act(r, name=f"{name}_1", **bn)
    if dropout:
        r = layers.Dropout(dropout, name=f"{name}_dropout")(r)
    r = _conv(r, filters, 3, name=f"{name}_2", **conv)
    r = apply_bn_act(r, name=f"{name}_2", activation=None, gamma_initializer=_last_gamma(zero_init_residual), **bn)
    x = apply_residual_add(s, r, name=name, survival_prob=survival_prob, stochastic_depth_mode=stochastic_depth_mode)
    return layers.Activation("relu", name=f"{name}_out")(x)


def apply_bottleneck_block(
    x,
    filters,
    *,
    name,
    strides=1,
    expansion=4,
    groups=1,
    base_width=64,
    stride_in_1x1=False,
    shortcut="B",
    use_bias=False,
    bn_epsilon=BN_EPS_TORCH,
    bn_momentum=0.9,
    kernel_initializer=HE_FAN_OUT,
    survival_prob=None,
    stochastic_depth_mode="batch",
    zero_init_residual=False,
):
    """Post-activation bottleneck: 1×1 reduce, 3×3 (grouped for ResNeXt), 1×1 expand to ``expansion·filters``,
    add the shortcut, ReLU (He et al. 2015 Fig. 5; Xie et al. 2016, arXiv:1611.05431 Fig. 3c; Zagoruyko &
    Komodakis' WRN-50-2 through ``base_width``).

    Args:
        x: input tensor.
        filters: the stage's base width; the block outputs ``expansion · filters`` channels.
        name: block name, e.g. ``conv4_block6``.
        strides: the block's spatial stride.
        expansion: output / base width (4).
        groups: cardinality of the 3×3 convolution (ResNeXt's ``C``).
        base_width: width per group at ``filters=64`` (ResNeXt's ``d``; 64 for ResNet, 128 for WRN-50-2); the
            3×3 has :func:`bottleneck_width` channels.
        stride_in_1x1: stride on the first 1×1 (the paper, Caffe, keras.applications) instead of the 3×3
            (torchvision's "v1.5").
        shortcut: ``"A"``, ``"B"`` or ``"C"``, see :func:`apply_shortcut`.
        use_bias: biases in every convolution (keras.applications) or none (torchvision).
        bn_epsilon, bn_momentum, kernel_initializer: of every conv / BN.
        survival_prob, stochastic_depth_mode, zero_init_residual: see :func:`apply_basic_block`.

    Returns:
        The block output, ``{name}_out``.
    """
    conv = dict(use_bias=use_bias, kernel_initializer=kernel_initializer)
    bn = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
    width = bottleneck_width(filters, groups, base_width)
    s = apply_shortcut(x, filters * expansion, name=name, strides=strides, shortcut=shortcut, **conv, **bn)
    r = _conv(x, width, 1, strides=strides if stride_in_1x1 else 1, name=f"{name}_1", **conv)
    r = apply_bn_act(r, name=f"{name}_1", **bn)
    r = _conv(r, width, 3, strides=1 if stride_in_1x1 else strides, groups=groups, name=f"{name}_2", **conv)
    r = apply_bn_act(r, name=f"{name}_2", **bn)
    r = _conv(r, filters * expansion, 1, name=f"{name}_3", **conv)
    r = apply_bn_act(r, name=f"{name}_3", activation=None, gamma_initializer=_last_gamma(zero_init_residual), **bn)
    x = apply_residual_add(s, r, name=name, survival_prob=survival_prob, stochastic_depth_mode=stochastic_depth_mode)
    return layers.Activation("relu", name=f"{name}_out")(x)


def apply_preact_basic_block(
    x,
    filters,
    *,
    name,
    strides=1,
    shortcut="B",
    use_bias=False,
    bn_epsilon=BN_EPS_TORCH,
    bn_momentum=0.9,
    kernel_initializer=HE_FAN_OUT,
    dropout=0.0,
    survival_prob=None,
    stochastic_depth_mode="batch",
    zero_init_residual=False,
):
    """Pre-activation basic block: BN-ReLU, 3×3 conv, BN-ReLU, (dropout), 3×3 conv, add (He et al. 2016,
    arXiv:1603.05027 Fig. 4e; the Wide ResNet block B(3,3) of arXiv:1605.07146, dropout between the convs).

    A projection shortcut reads the pre-activated input, an identity / option-A shortcut the raw input.

    Args:
        x: input tensor.
        filters: output channels.
        name: block name.
        strides: stride of the first 3×3 (and the shortcut).
        shortcut: ``"A"``, ``"B"`` or ``"C"``, see :func:`apply_shortcut`.
        use_bias: biases in the convolutions not followed by BN (the second 3×3 and the projection).
        bn_epsilon, bn_momentum, kernel_initializer: of every conv / BN.
        dropout: dropout rate between the two convolutions (WRN; 0: none).
        survival_prob, stochastic_depth_mode, zero_init_residual: see :func:`apply_basic_block`.

    Returns:
        The block output, the addition ``{name}_out``.
    """
    bn = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
    p = apply_bn_act(x, name=f"{name}_preact", **bn)
    s = apply_shortcut(
        x,
        filters,
        name=name,
        strides=strides,
        shortcut=shortcut,
        preact_input=p,
        norm=False,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        **bn,
    )
    r = _conv(p, filters, 3, strides=strides, use_bias=False, kernel_initializer=kernel_initializer, name=f"{name}_1")
    r = apply_bn_act(r, name=f"{name}_1", **bn)
    if dropout:
        r = layers.Dropout(dropout, name=f"{name}_dropout")(r)
    r = _conv(
        r,
        filters,
        3,
        use_bias=use_bias,
        kernel_initializer="zeros" if zero_init_residual else kernel_initializer,
        name=f"{name}_2",
    )
    return apply_residual_add(
        s,
        r,
        name=name,
        survival_prob=survival_prob,
        stochastic_depth_mode=stochastic_depth_mode,
        add_name=f"{name}_out",
    )


def apply_preact_bottleneck_block(
    x,
    filters,
    *,
    name,
    strides=1,
    expansion=4,
    groups=1,
    base_width=64,
    shortcut="B",
    use_bias=False,
    bn_epsilon=BN_EPS_TORCH,
    bn_momentum=0.9,
    kernel_initializer=HE_FAN_OUT,
    survival_prob=None,
    stochastic_depth_mode="batch",
    zero_init_residual=False,
):
    """Pre-activation bottleneck: BN-ReLU, 1×1, BN-ReLU, 3×3 (stride, groups), BN-ReLU, 1×1 expand, add (He et
    al. 2016, arXiv:1603.05027; keras.applications' ResNetV2 block, whose layer names it keeps, ``{name}_2_pad``
    included).

    Args:
        x: input tensor.
        filters: base width; the block outputs ``expansion · filters`` channels.
        name: block name.
        strides: stride of the 3×3 (and the shortcut).
        expansion, groups, base_width: as in :func:`apply_bottleneck_block`.
        shortcut: ``"A"``, ``"B"`` or ``"C"``, see :func:`apply_shortcut`.
        use_bias: biases in the convolutions not followed by BN (the last 1×1 and the projection), as in
            keras.applications.
        bn_epsilon, bn_momentum, kernel_initializer: of every conv / BN.
        survival_prob, stochastic_depth_mode, zero_init_residual: see :func:`apply_basic_block`.

    Returns:
        The block output, the addition ``{name}_out``.
    """
    bn = dict(bn_epsilon=bn_epsilon, bn_momentum=bn_momentum)
    width = bottleneck_width(filters, groups, base_width)
    p = apply_bn_act(x, name=f"{name}_preact", **bn)
    s = apply_shortcut(
        x,
        filters * expansion,
        name=name,
        strides=strides,
        shortcut=shortcut,
        preact_input=p,
        norm=False,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        **bn,
    )
    r = _conv(p, width, 1, use_bias=False, kernel_initializer=kernel_initializer, name=f"{name}_1")
    r = apply_bn_act(r, name=f"{name}_1", **bn)
    r = _conv(
        r,
        width,
        3,
        strides=strides,
        groups=groups,
        use_bias=False,
        kernel_initializer=kernel_initializer,
        explicit_pad=True,
        name=f"{name}_2",
    )
    r = apply_bn_act(r, name=f"{name}_2", **bn)
    r = _conv(
        r,
        filters * expansion,
        1,
        use_bias=use_bias,
        kernel_initializer="zeros" if zero_init_residual else kernel_initializer,
        name=f"{name}_3",
    )
    return apply_residual_add(
        s,
        r,
        name=name,
        survival_prob=survival_prob,
        stochastic_depth_mode=stochastic_depth_mode,
        add_name=f"{name}_out",
    )
