"""SqueezeNet's Fire module, with the paper's optional bypass.

Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
arXiv:1602.07360, §3.2 (Figure 1) and §6.1 (Figure 2, bypass).
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.common import apply_conv_bn_act

__all__ = ["BYPASS_KINDS", "apply_fire_module"]

BYPASS_KINDS = (None, "identity", "conv")


def _conv_relu(x, filters, kernel_size, name):
    return apply_conv_bn_act(
        x,
        filters,
        kernel_size,
        name=name,
        conv_name=name,
        act_name=f"{name}_relu",
        use_bias=True,
        norm=False,
        kernel_initializer="glorot_uniform",
    )


def apply_fire_module(x, squeeze, expand1x1, expand3x3, *, bypass=None, name):
    """A Fire module: a 1×1 "squeeze" conv (ReLU) feeding parallel 1×1 and 3×3 "expand" convs (ReLU), concatenated.

    Iandola et al. 2016, arXiv:1602.07360, §3.2; bypass from §6.1.

    Args:
        x: input tensor (channels last).
        squeeze: filters of the squeeze layer (s1x1).
        expand1x1: filters of the 1×1 expand layer (e1x1).
        expand3x3: filters of the 3×3 expand layer (e3x3, pad 1).
        bypass: ``None``; ``"identity"`` adds the input to the output (the paper's simple bypass, needs as many
            input as output channels); ``"conv"`` adds a 1×1 conv of the input (``{name}_bypass``, with bias and
            no activation; the paper's complex bypass, which does not specify those two details).
        name: layer prefix: ``{name}_squeeze1x1``, ``{name}_expand1x1``, ``{name}_expand3x3`` (each followed by
            ``..._relu``), then ``{name}_out``; with a bypass the concatenation is ``{name}_concat`` and the
            addition ``{name}_out``.

    Returns:
        The module's output tensor, ``expand1x1 + expand3x3`` channels.
    """
    if bypass not in BYPASS_KINDS:
        raise ValueError(f"`bypass` must be one of {BYPASS_KINDS}. Received: bypass={bypass!r}")
    out_channels = expand1x1 + expand3x3
    if bypass == "identity" and x.shape[-1] != out_channels:
        raise ValueError(
            f"{name}: an identity bypass needs as many input as output channels ({out_channels}). "
            f"Received: input with {x.shape[-1]} channels"
        )
    s = _conv_relu(x, squeeze, 1, f"{name}_squeeze1x1")
    e1 = _conv_relu(s, expand1x1, 1, f"{name}_expand1x1")
    e3 = _conv_relu(s, expand3x3, 3, f"{name}_expand3x3")
    y = layers.Concatenate(name=f"{name}_concat" if bypass else f"{name}_out")([e1, e3])
    if bypass is None:
        return y
    shortcut = x
    if bypass == "conv":
        shortcut = layers.Conv2D(out_channels, 1, name=f"{name}_bypass")(x)
    return layers.Add(name=f"{name}_out")([shortcut, y])
