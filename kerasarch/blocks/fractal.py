"""FractalNet's block: Larsson et al., "FractalNet: Ultra-Deep Neural Networks without Residuals",
arXiv:1605.07648.

The expansion rule ``f_1(z) = conv(z)``, ``f_{C+1}(z) = join(f_C(f_C(z)), conv(z))`` gives C columns; column ``c``
(1 = shallowest, C = deepest) holds ``2^(c-1)`` convolutions. Nested joins that meet at the same depth are one
join over all the columns that end there (the paper's Fig. 1), so counting depth in units of the deepest
column's layers, a join follows every even position ``p`` and merges the columns whose convolutions span a
divisor of ``p`` (``2^(C-c)`` positions each).
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.common import BN_EPS_TORCH, apply_conv
from kerasarch.layers.fractal import FractalJoin
from kerasarch.layers.normalization import BatchNormalization

__all__ = ["apply_fractal_unit", "apply_fractal_block"]


def apply_fractal_unit(x, filters, *, name, dropout=0.0, bn_epsilon=BN_EPS_TORCH):
    """One convolution of a column as in the authors' Caffe generator: conv 3×3 (with bias) → dropout → BatchNorm
    (normalisation only: their ``BatchNorm`` has no ``Scale`` layer after it) → ReLU.

    Args:
        x: input tensor.
        filters: output channels.
        name: the conv layer's name; the others are ``{name}_dropout``, ``{name}_bn``, ``{name}_relu``.
        dropout: dropout rate (no layer when 0).
        bn_epsilon: BatchNorm epsilon.

    Returns:
        The activated tensor.
    """
    x = apply_conv(x, filters, 3, name=name, use_bias=True, kernel_initializer="glorot_uniform")
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    x = BatchNormalization(epsilon=bn_epsilon, center=False, scale=False, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def apply_fractal_block(
    x, filters, columns, *, name, dropout=0.0, drop_rate=0.15, selector=None, seed=None, bn_epsilon=BN_EPS_TORCH
):
    """A fractal block ``f_C`` followed by 2×2 max-pooling.

    As in the paper's implementation (§4, "for convenience"), the pooling is applied to each column before the
    block's last join rather than once after it.

    Args:
        x: input tensor.
        filters: channels of every convolution in the block.
        columns: C >= 1.
        name: block prefix, e.g. ``block1``: the ``j``-th conv of column ``c`` is ``{name}_col{c}_conv{j}``, its
            pooling ``{name}_col{c}_pool``, the join after position ``p`` ``{name}_join{p}`` and the last join
            ``{name}_out``.
        dropout: dropout rate after every convolution of the block.
        drop_rate: local drop-path probability of every join.
        selector: the output of a :class:`~kerasarch.layers.fractal.GlobalDropPathSampler` for global
            drop-path, or ``None``.
        seed: base seed of the joins' random generators (join ``i`` of the block gets ``seed + i``).
        bn_epsilon: BatchNorm epsilon.

    Returns:
        The block output, at half the input's resolution, with ``filters`` channels.
    """
    if int(columns) < 1:
        raise ValueError(f"`columns` must be >= 1. Received: columns={columns!r}")
    depth = 2 ** (columns - 1)
    span = {c: 2 ** (columns - c) for c in range(1, columns + 1)}
    current = {c: x for c in span}  # the input of each column's next convolution
    count = dict.fromkeys(span, 0)
    joins = 0
    for p in range(1, depth + 1):
        ending = [c for c in span if p % span[c] == 0]
        outs = []
        for c in ending:
            count[c] += 1
            y = apply_fractal_unit(
                current[c], filters, name=f"{name}_col{c}_conv{count[c]}", dropout=dropout, bn_epsilon=bn_epsilon
            )
            if p == depth:
                y = layers.MaxPooling2D(2, strides=2, name=f"{name}_col{c}_pool")(y)
            outs.append(y)
        if len(ending) == 1 and p < depth:
            current[ending[0]] = outs[0]
            continue
        join = FractalJoin(
            columns=None if selector is None else ending,
            drop_rate=drop_rate,
            seed=None if seed is None else seed + joins,
            name=f"{name}_out" if p == depth else f"{name}_join{p}",
        )
        y = join(outs + ([selector] if selector is not None else []))
        joins += 1
        for c in ending:
            current[c] = y
    return y
