"""Pooling with Caffe / PyTorch ``ceil_mode`` output sizes, which TensorFlow lacks (GoogLeNet, SqueezeNet, NiN)."""

from __future__ import annotations

from keras import layers

__all__ = ["apply_ceil_pool", "ceil_pool_size"]


def ceil_pool_size(size, pool_size, strides):
    """Output size of a pooling with ``ceil_mode`` (Caffe's only mode, PyTorch's ``ceil_mode=True``), no padding:
    ``ceil((size - pool_size) / strides) + 1``; ``None`` stays ``None``."""
    if size is None:
        return None
    return -(-(size - pool_size) // strides) + 1


def _padding_mode(size, pool_size, strides):
    """The Keras padding that gives the ceil-mode windows on ``size``, or ``None`` where neither does.

    "valid" fits when the windows tile exactly; "same" fits when it adds at most one row, at the bottom (TensorFlow
    puts the odd row of "same" padding at the bottom, and its pools ignore padded cells, as Caffe does)."""
    out = ceil_pool_size(size, pool_size, strides)
    if (size - pool_size) % strides == 0:
        return "valid"
    same_out = -(-size // strides)
    if same_out == out and (same_out - 1) * strides + pool_size - size <= 1:
        return "same"
    return None


def apply_ceil_pool(x, pool_size, strides, *, name, kind="max"):
    """Max or average pooling with ceil-mode output size (Caffe, PyTorch ``ceil_mode=True``): the windows start at
    the top-left corner and the last one may hang over the bottom/right edge, covering only real cells.

    TensorFlow has no ceil mode. Where "valid" or "same" padding gives the same windows (every case in the
    registered models at their default sizes), that is used. Otherwise a max-pool pads the bottom/right with
    zeros (``{name}_pad``), which is exact on the non-negative, post-ReLU inputs it is used on; an average pool
    raises, since Caffe and PyTorch leave the overhanging cells out of the mean.

    Args:
        x: input tensor (channels last).
        pool_size: window size (square).
        strides: stride.
        name: layer name; the zero padding, if any, is ``{name}_pad``.
        kind: ``"max"`` or ``"avg"``.

    Returns:
        The pooled tensor.
    """
    if kind not in ("max", "avg"):
        raise ValueError(f"`kind` must be 'max' or 'avg'. Received: kind={kind!r}")
    sizes = tuple(x.shape[1:3])
    for size in sizes:
        if size is not None and ceil_pool_size(size, pool_size, strides) < 1:
            raise ValueError(
                f"{name}: a {pool_size}×{pool_size}/{strides} pooling needs a larger input. "
                f"Received: feature map of spatial size {sizes}"
            )
    pool = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    modes = {None if size is None else _padding_mode(size, pool_size, strides) for size in sizes}
    if len(modes) == 1 and None not in modes:
        return pool(pool_size, strides=strides, padding=modes.pop(), name=name)(x)
    if kind == "avg":
        raise ValueError(
            f"{name}: ceil-mode average pooling {pool_size}×{pool_size}/{strides} cannot be reproduced "
            f"in TensorFlow on this feature map (its mean leaves out the overhanging cells). Received: "
            f"feature map of spatial size {sizes}"
        )
    # Padding strides - 1 rows is enough for the last window whatever the size (and harmless when unknown).
    pads = [
        strides - 1 if size is None else (ceil_pool_size(size, pool_size, strides) - 1) * strides + pool_size - size
        for size in sizes
    ]
    x = layers.ZeroPadding2D(((0, max(pads[0], 0)), (0, max(pads[1], 0))), name=f"{name}_pad")(x)
    return pool(pool_size, strides=strides, padding="valid", name=name)(x)
