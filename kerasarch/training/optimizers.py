"""Optimizers: Keras' own, with their TensorFlow update run as one fused kernel per variable where one exists.

``keras.optimizers.SGD`` updates each variable with momentum through four element-wise operations
(``m = m·momentum − lr·g``, then ``w += m``), each a pass over the variable and its slot. On a CPU those passes are
not small: in an AlexNet step (61 M parameters, batch 16, float32) the update's ``Mul``, ``Sub`` and
``AssignAddVariableOp`` took about a fifth of the op time. TensorFlow's ``ResourceApplyKerasMomentum`` is the same
rule — Keras' sign convention, Nesterov included — as one kernel per variable (``bench/README.md``: an AlexNet
mixed-bfloat16 step 1.11× faster).
"""

from __future__ import annotations

from typing import Any

import keras

from kerasarch.keras_compat import optimizer_slot

__all__ = ["SGD"]


@keras.saving.register_keras_serializable(package="kerasarch")
class SGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` (same arguments, variables, config and results) whose momentum update is
    TensorFlow's fused ``ResourceApplyKerasMomentum`` on the TensorFlow backend.

    The fused op is used for dense gradients with ``momentum > 0`` outside a ``tf.distribute`` strategy; every
    other case (other backends, plain SGD, sparse gradients, distributed training) is Keras' own update. Weight
    decay, EMA, gradient clipping and accumulation stay Keras' (they run around ``update_step``).
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if not self.fused_update_applies(gradient):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        momentum = optimizer_slot(self, self.momentums, variable)
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=_handle(variable),
            accum=_handle(momentum),
            lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype),
            use_nesterov=bool(self.nesterov),
        )

    def fused_update_applies(self, gradient: Any) -> bool:
        """Whether ``update_step`` runs TensorFlow's fused kernel for this gradient."""
        if keras.backend.backend() != "tensorflow" or self.momentum == 0:
            return False
        import tensorflow as tf

        return not isinstance(gradient, tf.IndexedSlices) and not tf.distribute.has_strategy()


def _handle(variable):
    """The resource handle of a Keras variable or of the ``tf.Variable`` Keras' TensorFlow update step passes."""
    return variable.value.handle if isinstance(variable, keras.Variable) else variable.handle
