"""The layers of LeNet-5 that Keras lacks (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-Based Learning
Applied to Document Recognition", Proc. IEEE 86(11), §II-B): the scaled tanh squashing function, trainable
subsampling, the partially connected C3 convolution and the Euclidean RBF output units."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = ["LENET5_C3_TABLE", "ConnectionTableConv2D", "EuclideanRBF", "ScaledTanh", "TrainableSubsampling2D"]


def _lenet5_c3_table():
    """Table I of the paper, one row per C3 map listing the S2 maps it reads."""
    three = [tuple((j + d) % 6 for d in range(3)) for j in range(6)]  # every contiguous (cyclic) triple
    four = [tuple((j + d) % 6 for d in range(4)) for j in range(6)]  # every contiguous (cyclic) quadruple
    skipping = [(0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5)]  # three discontinuous quadruples
    return tuple(tuple(sorted(row)) for row in three + four + skipping + [tuple(range(6))])


# C3 map j reads the S2 maps LENET5_C3_TABLE[j]: 6 maps see 3 maps, 9 see 4, 1 sees all 6.
LENET5_C3_TABLE = _lenet5_c3_table()


@keras.saving.register_keras_serializable(package="kerasarch")
class ScaledTanh(keras.layers.Layer):
    """``f(a) = A · tanh(S · a)``, LeNet-5's squashing function (paper §II-B and Appendix A).

    With ``A = 1.7159`` and ``S = 2/3``, ``f(±1) = ±1`` and the second derivative of ``f`` is largest at ±1.

    Args:
        amplitude: ``A``.
        slope: ``S``.
    """

    def __init__(self, amplitude=1.7159, slope=2.0 / 3.0, **kwargs):
        super().__init__(**kwargs)
        self.amplitude, self.slope = float(amplitude), float(slope)

    def call(self, inputs):
        return self.amplitude * ops.tanh(self.slope * inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "amplitude": self.amplitude, "slope": self.slope}


@keras.saving.register_keras_serializable(package="kerasarch")
class TrainableSubsampling2D(keras.layers.Layer):
    """LeNet-5's S2/S4 subsampling: the ``pool_size × pool_size`` inputs of a unit are added, multiplied by a
    trainable coefficient and shifted by a trainable bias, one of each per feature map (paper §II-B).

    Non-overlapping windows (stride = ``pool_size``). The squashing function that follows in the paper is a
    separate layer. The coefficient starts at ``1 / pool_size²`` by default, so an untrained layer is an average
    pool.

    Args:
        pool_size: window side (2 in LeNet-5).
        coefficient_initializer: initializer of the per-map coefficient (default ``1 / pool_size²``).
        bias_initializer: initializer of the per-map bias.
    """

    def __init__(self, pool_size=2, coefficient_initializer=None, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        if coefficient_initializer is None:
            coefficient_initializer = keras.initializers.Constant(1.0 / self.pool_size**2)
        self.coefficient_initializer = keras.initializers.get(coefficient_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        channels = input_shape[-1]
        self.coefficient = self.add_weight(
            shape=(channels,), initializer=self.coefficient_initializer, name="coefficient"
        )
        self.bias = self.add_weight(shape=(channels,), initializer=self.bias_initializer, name="bias")

    def call(self, inputs):
        p = self.pool_size
        window_sum = ops.average_pool(inputs, p, strides=p, padding="valid") * float(p * p)
        return window_sum * self.coefficient + self.bias

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        p = self.pool_size
        return (n, None if h is None else h // p, None if w is None else w // p, c)

    def get_config(self):
        return {
            **super().get_config(),
            "pool_size": self.pool_size,
            "coefficient_initializer": keras.initializers.serialize(self.coefficient_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(package="kerasarch")
class ConnectionTableConv2D(keras.layers.Layer):
    """A convolution whose output map ``j`` reads only the input maps ``connections[j]`` (LeNet-5's C3, paper
    Table I: "to keep the number of connections within reasonable bounds" and to break symmetry).

    Only the connected kernels are variables, so the trainable count is that of the paper (C3: 1,516).
    ``kernel`` has shape ``(kh, kw, n_connections)``, ordered by output map and, within a map, by ascending
    input map; the full ``(kh, kw, in, out)`` kernel, zero off the table, is assembled in
    ``call``. The connected kernels are initialised as the corresponding entries of a full Conv2D kernel.

    Args:
        connections: one sequence of input-map indices per output map.
        kernel_size: int or pair.
        strides: int or pair.
        padding: ``"valid"`` (LeNet-5) or ``"same"``.
        use_bias: one bias per output map.
        kernel_initializer, bias_initializer: as in Conv2D.
    """

    def __init__(
        self,
        connections,
        kernel_size=5,
        strides=1,
        padding="valid",
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.connections = [sorted({int(i) for i in row}) for row in connections]
        if not self.connections or any(not row or min(row) < 0 for row in self.connections):
            raise ValueError(
                "`connections` must list, for every output map, at least one input map index >= 0. "
                f"Received: connections={connections!r}"
            )
        self.kernel_size = tuple(kernel_size) if isinstance(kernel_size, (list, tuple)) else (kernel_size,) * 2
        self.strides = tuple(strides) if isinstance(strides, (list, tuple)) else (strides,) * 2
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    @property
    def filters(self):
        return len(self.connections)

    def connection_mask(self, in_channels):
        """``(in_channels, filters)`` boolean table: True where output map j reads input map i."""
        mask = np.zeros((in_channels, self.filters), dtype=bool)
        for j, row in enumerate(self.connections):
            mask[row, j] = True
        return mask

    def build(self, input_shape):
        in_channels = input_shape[-1]
        needed = max(max(row) for row in self.connections) + 1
        if in_channels is None or in_channels < needed:
            raise ValueError(
                f"{self.name}: the connection table reads input map {needed - 1}, so the input needs "
                f"at least {needed} channels. Received: input_shape={tuple(input_shape)}"
            )
        # Flat (in, out) positions of the packed kernel entries, in packing order (output map, then input map).
        flat = np.array([i * self.filters + j for j, row in enumerate(self.connections) for i in row])
        # For every position of the full kernel, its packed index, or n_connections (an appended zero).
        gather = np.full(in_channels * self.filters, len(flat), dtype="int32")
        gather[flat] = np.arange(len(flat))
        self._gather = gather
        self._in_channels = in_channels
        kh, kw = self.kernel_size

        def packed_init(shape, dtype=None):
            full = self.kernel_initializer((kh, kw, in_channels, self.filters), dtype=dtype)
            return ops.take(ops.reshape(full, (kh, kw, -1)), flat, axis=-1)

        self.kernel = self.add_weight(shape=(kh, kw, len(flat)), initializer=packed_init, name="kernel")
        self.bias = (
            self.add_weight(shape=(self.filters,), initializer=self.bias_initializer, name="bias")
            if self.use_bias
            else None
        )

    def full_kernel(self):
        """The equivalent dense ``(kh, kw, in, out)`` kernel: the packed weights on the table, zeros off it."""
        kh, kw = self.kernel_size
        kernel = ops.convert_to_tensor(self.kernel)
        padded = ops.concatenate([kernel, ops.zeros((kh, kw, 1), dtype=kernel.dtype)], axis=-1)
        full = ops.take(padded, self._gather, axis=-1)
        return ops.reshape(full, (kh, kw, self._in_channels, self.filters))

    def call(self, inputs):
        kernel = ops.cast(self.full_kernel(), inputs.dtype)
        y = ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)
        if self.use_bias:
            y = y + ops.cast(self.bias, y.dtype)
        return y

    def get_config(self):
        return {
            **super().get_config(),
            "connections": [list(row) for row in self.connections],
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(package="kerasarch")
class EuclideanRBF(keras.layers.Layer):
    """LeNet-5's output layer: one Euclidean radial basis function unit per class (paper §II-B, eq. 7).

    Unit ``i`` computes the penalty ``y_i = Σ_j (x_j − w_ij)²``, the squared distance between the input (F6)
    and the class's centre. The paper fixes the centres to ±1 codes (stylised 7×12 bitmaps of the characters,
    not published as numbers; it notes that random ±1 codes would also do). Here the centres start as random
    ±1 codes drawn from ``seed`` and are either frozen (``trainable_centres=False``, the paper) or learned.

    The layer returns ``activation(−y)``: the negated penalties are logits (the nearer the centre, the likelier
    the class), so that softmax + cross-entropy is the paper's discriminative criterion (eq. 9) without its
    "rubbish class" term, and the layer is a drop-in replacement for a Dense classifier. With
    ``activation=None`` the output is ``−y``.

    Args:
        units: number of classes.
        trainable_centres: learn the centres (False: fixed, as in the paper).
        activation: applied to the logits ``−y``; None for the logits themselves.
        seed: seed of the initial ±1 codes.
    """

    def __init__(self, units, trainable_centres=False, activation=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.trainable_centres = bool(trainable_centres)
        self.activation = keras.activations.get(activation)
        self.seed = int(seed)

    def build(self, input_shape):
        codes = np.random.default_rng(self.seed).choice([-1.0, 1.0], size=(input_shape[-1], self.units))
        self.centres = self.add_weight(
            shape=codes.shape,
            initializer=keras.initializers.Constant(codes),
            trainable=self.trainable_centres,
            name="centres",
        )

    def call(self, inputs):
        c = ops.cast(self.centres, inputs.dtype)
        penalties = ops.sum(ops.square(ops.expand_dims(inputs, -1) - c), axis=-2)
        return self.activation(-penalties)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "trainable_centres": self.trainable_centres,
            "activation": keras.activations.serialize(self.activation),
            "seed": self.seed,
        }
