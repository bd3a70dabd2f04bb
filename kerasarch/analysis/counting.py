"""Per-operation counting rules: multiply-adds, other operations, stored activations and receptive fields.

The rules themselves are described in the docstring of :mod:`kerasarch.analysis` and in ``docs/analysis.md``;
this module implements them. Every function receives per-example shapes (no batch axis).
"""

from __future__ import annotations

import math

import keras
from keras import layers

__all__ = ["OpCount", "count_op", "receptive_field_step", "CUSTOM_COUNTERS", "OPTIMIZER_SLOTS"]

# Optimizer state per trainable parameter (slots), for the training-memory estimate.
OPTIMIZER_SLOTS = {
    "sgd": 0,
    "sgd_momentum": 1,
    "momentum": 1,
    "nesterov": 1,
    "rmsprop": 1,
    "rmsprop_momentum": 2,
    "adagrad": 1,
    "adadelta": 2,
    "adam": 2,
    "adamw": 2,
    "nadam": 2,
    "adamax": 2,
    "lion": 1,
    "ftrl": 2,
    "lamb": 2,
    "adafactor": 1,
}

_CONV = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
_DEPTHWISE = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_SEPARABLE = (layers.SeparableConv1D, layers.SeparableConv2D)
_TRANSPOSE = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
_POOL = (
    layers.MaxPooling1D,
    layers.MaxPooling2D,
    layers.MaxPooling3D,
    layers.AveragePooling1D,
    layers.AveragePooling2D,
    layers.AveragePooling3D,
)
_GLOBAL_POOL = (
    layers.GlobalAveragePooling1D,
    layers.GlobalAveragePooling2D,
    layers.GlobalAveragePooling3D,
    layers.GlobalMaxPooling1D,
    layers.GlobalMaxPooling2D,
    layers.GlobalMaxPooling3D,
)
# Element-wise layers with weights: their work is "other ops", never MACs.
_NORM_COST = {
    "BatchNormalization": 2,
    "LayerNormalization": 5,
    "GroupNormalization": 5,
    "UnitNormalization": 3,
    "RMSNormalization": 4,
    "Normalization": 2,
    "Rescaling": 2,
}
# Activation-like layers: computed in place (their output is not counted again as stored memory).
_INPLACE_COST = {"Activation": 1, "ReLU": 1, "LeakyReLU": 1, "ELU": 1, "Softmax": 3, "PReLU": 2, "ScaledTanh": 3}
# Views: the output shares its input's memory and costs nothing.
_VIEWS = {
    "Flatten",
    "Reshape",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    "InputLayer",
    "Masking",
    "StochasticDepth",
}
# Data movement that materialises a new tensor: one copy per output value.
_COPIES = {
    "Concatenate",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "Permute",
    "RepeatVector",
    "ZeroPadShortcut",
}
# Layers whose output steers other layers (no image content): no cost, no receptive field.
_CONTROL = {"GlobalDropPathSampler"}
_MERGE = {"Add": 0, "Subtract": 0, "Multiply": 0, "Maximum": 0, "Minimum": 0, "Average": 1}
_ACTIVATION_COST = {"softmax": 3, "linear": 0}


class OpCount:
    """What one call of an operation costs, per example."""

    __slots__ = ("macs", "other_ops", "stored", "estimated")

    def __init__(self, macs=0, other_ops=0, stored=True, estimated=False):
        self.macs, self.other_ops, self.stored, self.estimated = int(macs), int(other_ops), stored, estimated


def _size(shape):
    return int(math.prod(d for d in shape if d is not None))


def _positions(shape, data_format="channels_last"):
    """Number of spatial positions of a per-example ``(..., C)`` (or ``(C, ...)``) shape."""
    inner = shape[1:] if data_format == "channels_first" else shape[:-1]
    return _size(inner)


def _activation_ops(layer, out_elements):
    act = getattr(layer, "activation", None)
    if act is None:
        return 0
    name = getattr(act, "__name__", str(act))
    return _ACTIVATION_COST.get(name, 1) * out_elements


def _bias_ops(layer, out_elements):
    return out_elements if getattr(layer, "use_bias", False) else 0


def _kernel_size(weight):
    return int(math.prod(weight.shape))


def _lrn(layer, in_shapes, out_shapes):
    # square, (n - 1) adds over the window, scale and shift, power, divide.
    return OpCount(0, (int(getattr(layer, "size", 5)) + 3) * _size(out_shapes[0]))


def _connection_table_conv(layer, in_shapes, out_shapes):
    # LeNet-5's C3: the packed kernel holds only the connected (input map, output map) pairs.
    out = _size(out_shapes[0])
    return OpCount(_positions(out_shapes[0]) * _kernel_size(layer.kernel), _bias_ops(layer, out))


def _trainable_subsampling(layer, in_shapes, out_shapes):
    # LeNet-5's S2/S4: window sum (p² − 1 adds), one multiply by the map's coefficient, one bias add.
    out = _size(out_shapes[0])
    return OpCount(out, layer.pool_size**2 * out)


def _euclidean_rbf(layer, in_shapes, out_shapes):
    # One squared difference accumulated per (input, centre) pair, the analogue of a dense layer's MACs;
    # the subtractions are other ops.
    pairs = _positions(out_shapes[0]) * _kernel_size(layer.centres)
    return OpCount(pairs, pairs + _activation_ops(layer, _size(out_shapes[0])))


def _fractal_join(layer, in_shapes, out_shapes):
    # Mean of the branches (the sampler's selector input is not a branch): n − 1 adds and a divide per output.
    n = sum(1 for s in in_shapes if tuple(s) == tuple(out_shapes[0]))
    return OpCount(0, n * _size(out_shapes[0]) if n > 1 else 0, stored=n > 1)


# kerasarch custom layers, by class name: ``fn(layer, in_shapes, out_shapes) -> OpCount``. A layer may instead
# define ``macs(input_shape)`` (and optionally ``other_ops(input_shape)``), which takes precedence.
CUSTOM_COUNTERS = {
    "LocalResponseNormalization": _lrn,
    "ConnectionTableConv2D": _connection_table_conv,
    "TrainableSubsampling2D": _trainable_subsampling,
    "EuclideanRBF": _euclidean_rbf,
    "FractalJoin": _fractal_join,
    "GlobalDropPathSampler": lambda layer, i, o: OpCount(0, 0, stored=False),
}


def _non_bias_trainable(layer):
    """Trainable weights other than biases (the ones that multiply inputs)."""
    return [w for w in layer.trainable_weights if not w.path.split("/")[-1].startswith("bias")]


def count_op(op, in_shapes, out_shapes):
    """Returns the :class:`OpCount` of one call of ``op`` with per-example input/output shapes."""
    name = type(op).__name__
    out_elements = sum(_size(s) for s in out_shapes)
    if hasattr(op, "macs") and callable(op.macs):
        in_shape = (None, *in_shapes[0]) if in_shapes else None
        other = op.other_ops(in_shape) if hasattr(op, "other_ops") and callable(op.other_ops) else out_elements
        return OpCount(op.macs(in_shape), other)
    if name in CUSTOM_COUNTERS:
        return CUSTOM_COUNTERS[name](op, in_shapes, out_shapes)
    fmt = getattr(op, "data_format", "channels_last")
    extra = 0
    if isinstance(op, (_CONV, _DEPTHWISE, _SEPARABLE, layers.Dense, _TRANSPOSE)):
        extra = _bias_ops(op, out_elements) + _activation_ops(op, out_elements)
    if isinstance(op, _SEPARABLE):
        positions = _positions(out_shapes[0], fmt)
        macs = positions * (_kernel_size(op.depthwise_kernel) + _kernel_size(op.pointwise_kernel))
        return OpCount(macs, extra)
    if isinstance(op, _TRANSPOSE):
        # Every input position scatters the whole kernel onto the output.
        return OpCount(_positions(in_shapes[0], fmt) * _kernel_size(op.kernel), extra)
    if isinstance(op, (_CONV, _DEPTHWISE)):
        # Kernel (kh, kw, C_in/groups, C_out) or (kh, kw, C_in, multiplier) at every output position.
        return OpCount(_positions(out_shapes[0], fmt) * _kernel_size(op.kernel), extra)
    if isinstance(op, layers.Dense):
        return OpCount(_positions(out_shapes[0]) * _kernel_size(op.kernel), extra)
    if name in _INPLACE_COST:
        return OpCount(0, _INPLACE_COST[name] * out_elements, stored=False)
    if name in _NORM_COST:
        return OpCount(0, _NORM_COST[name] * out_elements)
    if isinstance(op, _POOL):
        return OpCount(0, math.prod(op.pool_size) * out_elements)
    if isinstance(op, _GLOBAL_POOL):
        return OpCount(0, _size(in_shapes[0]))
    if name in _VIEWS:
        return OpCount(0, 0, stored=False)
    if name in _COPIES:
        return OpCount(0, out_elements)
    if name in _MERGE and isinstance(op, keras.layers.Layer):
        return OpCount(0, (max(len(in_shapes) - 1, 1) + _MERGE[name]) * out_elements)
    if isinstance(op, keras.layers.Layer) and _non_bias_trainable(op):
        # Unknown layer with weights: each multiplying weight is used once per output position (exact for
        # convolutions and dense layers, an estimate otherwise).
        macs = sum(_kernel_size(w) for w in _non_bias_trainable(op)) * _positions(out_shapes[0])
        return OpCount(macs, out_elements, estimated=True)
    # Anything else without weights (keras.ops calls, Lambda, custom element-wise layers): one op per output.
    return OpCount(0, out_elements, estimated=name not in _MERGE)


# --------------------------------------------------------------------------------------------------------------
# Receptive fields. A field is a tuple with one ``(size, jump)`` pair per spatial axis of the model's input, or
# ``None`` for inputs without spatial axes.


def _pairs(value, n):
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    return value if len(value) == n else (value[0],) * n


def _merge_fields(fields):
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    n = min(len(f) for f in fields)
    return tuple((max(f[a][0] for f in fields), max(f[a][1] for f in fields)) for a in range(n))


def _spatial(shape, fmt="channels_last"):
    return tuple(shape[1:] if fmt == "channels_first" else shape[:-1])


def receptive_field_step(op, in_fields, in_shapes, out_shapes):
    """Propagates receptive fields through one call of ``op`` (max over the inputs of a merge)."""
    if type(op).__name__ in _CONTROL:
        return None
    # A merge takes the maximum over the inputs of the output's rank (a side input such as a selector is ignored).
    same_rank = [f for f, s in zip(in_fields, in_shapes) if out_shapes and len(s) == len(out_shapes[0])]
    field = _merge_fields(same_rank or in_fields)
    if field is None:
        return None
    n = len(field)
    fmt = getattr(op, "data_format", "channels_last")
    if isinstance(op, _TRANSPOSE):
        k, s = _pairs(op.kernel_size, n), _pairs(op.strides, n)
        out = []
        for (r, j), ka, sa in zip(field, k, s):
            j = j / sa
            out.append((r + (ka - 1) * j, j))
        return tuple(out)
    if isinstance(op, (layers.UpSampling1D, layers.UpSampling2D, layers.UpSampling3D)):
        return tuple((r, j / f) for (r, j), f in zip(field, _pairs(op.size, n)))
    kernel = getattr(op, "kernel_size", None) or getattr(op, "pool_size", None)
    if kernel is not None and not isinstance(op, _GLOBAL_POOL):
        k = _pairs(kernel, n)
        s = _pairs(getattr(op, "strides", None) or kernel, n)
        d = _pairs(getattr(op, "dilation_rate", 1), n)
        return tuple((r + da * (ka - 1) * j, j * sa) for (r, j), ka, sa, da in zip(field, k, s, d))
    if getattr(op, "strides", None) is not None:
        # Strided subsampling without a window (e.g. the option-A shortcut): a 1×1 kernel.
        return tuple((r, j * sa) for (r, j), sa in zip(field, _pairs(op.strides, n)))
    in_spatial = _spatial(in_shapes[0], fmt) if in_shapes else ()
    out_spatial = _spatial(out_shapes[0], fmt) if out_shapes else ()
    if len(in_spatial) == n and len(out_spatial) < n:
        # Global pooling, Flatten: every output sees the whole input map.
        return tuple((r + (size - 1) * j, j * size) for (r, j), size in zip(field, in_spatial))
    if (
        len(in_spatial) == n == len(out_spatial)
        and all(i and o for i, o in zip(in_spatial, out_spatial))
        and any(o <= i // 2 for i, o in zip(in_spatial, out_spatial))
        and not isinstance(op, (layers.Cropping1D, layers.Cropping2D, layers.Cropping3D))
    ):
        # An unknown layer that shrinks the map by a whole factor: treated as pooling with that window.
        f = tuple(max(i // o, 1) for i, o in zip(in_spatial, out_spatial))
        return tuple((r + (fa - 1) * j, j * fa) for (r, j), fa in zip(field, f))
    return field
