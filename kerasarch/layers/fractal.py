"""FractalNet's join with drop-path: Larsson et al., "FractalNet: Ultra-Deep Neural Networks without Residuals",
arXiv:1605.07648 §2–3.

A join averages its inputs element-wise. In training, drop-path removes some of them, one decision per
mini-batch: *local* drop-path drops each input of each join independently with a fixed probability and keeps at
least one; *global* drop-path picks one column for the whole network and every join keeps only that column's
input. :class:`GlobalDropPathSampler` draws the per-batch decision once for the whole network (the role of the
authors' Caffe ``GlobalDropTrigger``) and every :class:`FractalJoin` reads it. At inference nothing is dropped.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["GlobalDropPathSampler", "FractalJoin"]


@keras.saving.register_keras_serializable(package="kerasarch")
class GlobalDropPathSampler(keras.layers.Layer):
    """Draws, once per mini-batch, whether the batch uses global drop-path and which column it keeps.

    The output has shape ``(batch, columns)`` with identical rows: all zeros for a local drop-path batch (and
    always at inference), else the one-hot vector of the kept column (column ``c`` at position ``c - 1``).
    The input only supplies the batch size; connect it to the network input.

    Args:
        columns: C, the number of columns of the fractal.
        global_rate: the fraction of training batches that use global drop-path (0.5 in the paper: half
            the mini-batches local, half global).
        seed: seed of the layer's random generator (``None``: from Keras' global seed).
    """

    def __init__(self, columns, global_rate=0.5, seed=None, **kwargs):
        super().__init__(**kwargs)
        if int(columns) < 1:
            raise ValueError(f"`columns` must be >= 1. Received: columns={columns!r}")
        if not 0.0 <= float(global_rate) <= 1.0:
            raise ValueError(f"`global_rate` must be in [0, 1]. Received: global_rate={global_rate!r}")
        self.columns, self.global_rate, self.seed = int(columns), float(global_rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        batch = ops.shape(inputs)[0]
        if not training or self.global_rate == 0.0:
            return ops.zeros((batch, self.columns), dtype=self.compute_dtype)
        is_global = keras.random.uniform((), seed=self.seed_generator) < self.global_rate
        column = keras.random.randint((), 0, self.columns, seed=self.seed_generator)
        row = ops.one_hot(column, self.columns, dtype=self.compute_dtype) * ops.cast(is_global, self.compute_dtype)
        return ops.broadcast_to(row[None, :], (batch, self.columns))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.columns)

    def get_config(self):
        return {**super().get_config(), "columns": self.columns, "global_rate": self.global_rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="kerasarch")
class FractalJoin(keras.layers.Layer):
    """Element-wise mean of its inputs, with local and global drop-path in training (arXiv:1605.07648 §3).

    Local drop-path: each input is dropped with probability ``drop_rate``; if all are dropped, one chosen
    uniformly is kept (as the authors' Caffe ``FractalJoin``). Global drop-path (when the sampler's row is
    non-zero): only the input of the sampled column is kept; a join that column does not pass through returns
    the plain mean, which the rest of the network then ignores. The mean is taken over the inputs kept.

    Called on ``[x_1, ..., x_n]``, or on ``[x_1, ..., x_n, sampler_output]`` when ``columns`` is given.

    Args:
        columns: the column number (1-based, as in :class:`GlobalDropPathSampler`) of each input, in order;
            ``None`` for a join without global drop-path.
        drop_rate: local drop-path probability per input (0.15 in the paper).
        seed: seed of the layer's random generator (``None``: from Keras' global seed).
    """

    def __init__(self, columns=None, drop_rate=0.15, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ValueError(f"`drop_rate` must be in [0, 1). Received: drop_rate={drop_rate!r}")
        if columns is not None and (not columns or min(columns) < 1):
            raise ValueError(f"`columns` must be None or 1-based column numbers. Received: columns={columns!r}")
        self.columns = None if columns is None else tuple(int(c) for c in columns)
        self.drop_rate, self.seed = float(drop_rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _split(self, inputs):
        inputs = list(inputs)
        if self.columns is None:
            return inputs, None
        if len(inputs) != len(self.columns) + 1:
            raise ValueError(
                f"FractalJoin '{self.name}' expects {len(self.columns)} inputs and the sampler output. "
                f"Received: {len(inputs)} tensors."
            )
        return inputs[:-1], inputs[-1]

    def call(self, inputs, training=None):
        branches, selector = self._split(inputs)
        n = len(branches)
        if not training or n == 1:
            return ops.mean(ops.stack(branches, axis=0), axis=0) if n > 1 else branches[0]
        dtype = branches[0].dtype
        keep = ops.cast(keras.random.uniform((n,), seed=self.seed_generator) >= self.drop_rate, dtype)
        fallback = ops.one_hot(keras.random.randint((), 0, n, seed=self.seed_generator), n, dtype=dtype)
        mask = ops.where(ops.sum(keep) > 0, keep, fallback)
        if selector is not None:
            row = ops.cast(selector[0], dtype)
            own = ops.take(row, ops.convert_to_tensor([c - 1 for c in self.columns], dtype="int32"))
            kept_column = ops.where(ops.sum(own) > 0, own, ops.ones_like(own))
            mask = ops.where(ops.sum(row) > 0, kept_column, mask)
        weights = mask / ops.sum(mask)
        return sum(weights[i] * branches[i] for i in range(n))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {
            **super().get_config(),
            "columns": None if self.columns is None else list(self.columns),
            "drop_rate": self.drop_rate,
            "seed": self.seed,
        }
