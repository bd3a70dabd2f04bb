"""1×1 convolution computed as a matrix product where that is faster.

A 1×1 convolution (Lin et al. 2014's "network in network" mlpconv, arXiv:1312.4400 §3.1; the bottleneck
reduce/expand layers of He et al. 2016, arXiv:1512.03385 §4.1, Fig. 5; GoogLeNet's reductions) is a matrix
product of the ``(N·H·W, C_in)`` activation with the ``(C_in, C_out)`` kernel. TensorFlow's CPU build runs
``Conv2D`` and its two gradients through oneDNN's convolution primitives, whose filter gradient for 1×1 kernels
is 2–3× slower in bfloat16 than oneDNN's matrix product on the same numbers (and the input gradient of the wide
56×56 reductions 1.4× slower in float32) — ``bench/README.md`` has the per-layer figures. A ResNet-50 has 36 of
them (more than half its MACs), so the formulation decides its bfloat16 training speed on CPUs.

:class:`PointwiseConv2D` keeps ``keras.layers.Conv2D``'s arguments, weights, layer names and checkpoint layout
(kernel ``(1, 1, C_in, C_out)``, bias ``(C_out,)``) and changes only how the product is run.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["PointwiseConv2D", "POINTWISE_FORMULATIONS", "auto_pointwise_formulation"]

# "keras": keras.ops.conv, what keras.layers.Conv2D does. "matmul": subsample by the stride, then one matrix
# product of the (N·H·W, C_in) activation with the (C_in, C_out) kernel.
POINTWISE_FORMULATIONS = ("auto", "keras", "matmul")


def auto_pointwise_formulation(data_format: str = "channels_last", training: bool = True) -> str:
    """The formulation ``"auto"`` resolves to here and now, for a training (``training=True``) or inference call.

    ``"matmul"`` for training steps with TensorFlow on a CPU with oneDNN, outside XLA, channels-last (measured
    faster in bfloat16 and no slower in float32, forward and backward). ``"keras"`` for inference — TensorFlow's
    graph optimiser fuses a convolution with the batch norm and ReLU after it (``_FusedConv2D``), which it does
    not do for a matrix product, and the fused convolution runs a ResNet-50's inference 12–13% faster in float32 — and
    everywhere else (cuDNN on GPUs, XLA, JAX, PyTorch, NCHW), where the native convolution is not known to be
    slower.
    """
    if not training or keras.backend.backend() != "tensorflow" or data_format != "channels_last":
        return "keras"
    # One decision for every fast path on TensorFlow CPUs: the grouped convolution's rule (GPU, oneDNN, XLA).
    from kerasarch.layers.grouped import auto_formulation

    return "matmul" if auto_formulation(data_format) == "grouped_op" else "keras"


@keras.saving.register_keras_serializable(package="kerasarch")
class PointwiseConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with a 1×1 kernel, computed as a matrix product where that runs faster.

    Same arguments, weights and outputs as ``keras.layers.Conv2D(filters, 1, …)`` (an instance of it, so code
    that looks for Conv2D layers finds it), plus ``formulation``:

    * ``"auto"`` (default): chosen at trace time by :func:`auto_pointwise_formulation` — the product for
      training steps on TensorFlow CPUs, the convolution (which TensorFlow fuses with BN and ReLU) for inference.
    * ``"keras"``: exactly Conv2D's computation.
    * ``"matmul"``: take every ``strides``-th pixel (a 1×1 max pool), then one matrix product with the
      ``(C_in, C_out)`` kernel (channels-last only). For a 1×1 kernel ``"same"`` and ``"valid"`` padding pad
      nothing and give the same ``ceil(H / stride)`` outputs, and dilation has no effect.

    Both agree to float32 round-off, forward and backward (``tests/test_pointwise_conv.py``).
    """

    def __init__(
        self, filters: int, kernel_size: int | tuple[int, int] = 1, *, formulation: str = "auto", **kwargs: Any
    ) -> None:
        if formulation not in POINTWISE_FORMULATIONS:
            raise ValueError(
                f"`formulation` must be one of {POINTWISE_FORMULATIONS}. Received: formulation={formulation!r}"
            )
        super().__init__(filters, kernel_size, **kwargs)
        if tuple(self.kernel_size) != (1, 1) or self.groups != 1:
            raise ValueError(
                f"PointwiseConv2D is a 1×1 convolution with groups=1. Received: kernel_size={self.kernel_size}, "
                f"groups={self.groups}; use keras.layers.Conv2D or kerasarch.layers.grouped.GroupedConv2D."
            )
        self.formulation = formulation

    def resolved_formulation(self, training: bool | None = None) -> str:
        """The formulation a call traced now with this ``training`` flag would use."""
        if self.formulation == "auto":
            return auto_pointwise_formulation(self.data_format, training=bool(training))
        return self.formulation

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if self.resolved_formulation(training) == "keras":
            return super().call(inputs)
        # Conv2D.call with the product in place of the convolution: bias over the channels, then the activation.
        outputs = self.matmul_op(inputs, self.kernel)
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def matmul_op(self, inputs: Any, kernel: Any) -> Any:
        """The 1×1 convolution of channels-last ``inputs`` with ``kernel`` as one matrix product."""
        if self.data_format != "channels_last":
            raise ValueError(
                f"formulation='matmul' needs channels-last inputs. Received: data_format={self.data_format!r}; "
                "use 'keras'."
            )
        if tuple(self.strides) != (1, 1):
            # Every stride-th pixel, as a 1×1 max pool: its gradient (a scatter) is oneDNN's pooling gradient,
            # 2× faster than a strided slice's on a ResNet-50 shortcut in bfloat16, and exact.
            inputs = ops.max_pool(inputs, pool_size=1, strides=self.strides, padding="valid")
        cin, cout = kernel.shape[-2], kernel.shape[-1]
        kernel = ops.cast(ops.reshape(kernel, (cin, cout)), inputs.dtype)
        y = ops.matmul(ops.reshape(inputs, (-1, cin)), kernel)
        return ops.reshape(y, (*ops.shape(inputs)[:-1], cout))  # static sizes where known, tensors where not

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "formulation": self.formulation}
