"""Network in Network's mlpconv layer: a convolution followed by 1×1 convolutions, a small MLP slid over the image.

Lin, Chen & Yan, "Network In Network", arXiv:1312.4400, §3.1–3.2 (Figure 2).
"""

from __future__ import annotations

from kerasarch.blocks.common import apply_conv_bn_act

__all__ = ["apply_mlpconv"]


def apply_mlpconv(x, filters, kernel_size, *, strides=1, padding="same", name):
    """An mlpconv layer: a ``kernel_size`` conv then one 1×1 conv per further entry of ``filters``, each with ReLU.

    Lin et al. 2013, arXiv:1312.4400, §3.2: the 1×1 convs are the paper's "cascaded cross channel parametric
    pooling" (``cccp`` in the authors' Caffe models).

    Args:
        x: input tensor (channels last).
        filters: ``(conv, cccp1, cccp2, ...)`` output channels; at least one.
        kernel_size: kernel of the first conv.
        strides: stride of the first conv.
        padding: padding of the first conv (``"same"``, ``"valid"`` or explicit pixels, as ``apply_conv``).
        name: layer prefix: ``{name}_conv``, ``{name}_cccp1``, ... each followed by ``..._relu``, except that the
            last activation is ``{name}_out``.

    Returns:
        The output tensor, ``filters[-1]`` channels.
    """
    if not filters:
        raise ValueError(f"{name}: `filters` needs at least one entry. Received: filters={filters!r}")
    for i, f in enumerate(filters):
        label = f"{name}_conv" if i == 0 else f"{name}_cccp{i}"
        last = i == len(filters) - 1
        x = apply_conv_bn_act(
            x,
            f,
            kernel_size if i == 0 else 1,
            name=label,
            conv_name=label,
            act_name=f"{name}_out" if last else f"{label}_relu",
            strides=strides if i == 0 else 1,
            padding=padding if i == 0 else "valid",
            use_bias=True,
            norm=False,
            kernel_initializer="glorot_uniform",
        )
    return x
