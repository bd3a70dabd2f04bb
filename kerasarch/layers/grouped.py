"""Grouped 2-D convolution whose computation is chosen for the backend and device it runs on.

A grouped convolution (Krizhevsky et al. 2012's two GPU towers; ResNeXt's cardinality, Xie et al. 2017,
arXiv:1611.05431 §3.3) splits the input channels into ``groups`` equal sets and convolves each with its own
``filters / groups`` filters. ``keras.layers.Conv2D(groups=…)`` computes it correctly everywhere, but on the
TensorFlow backend it sends every grouped convolution through XLA, whose CPU kernel for grouped convolutions is
slow — two orders of magnitude in the backward pass (ResNeXt-50 trained 35× slower than torchvision on a CPU).
:class:`GroupedConv2D` keeps Conv2D's weights, arguments, layer name and checkpoint layout (kernel
``(kh, kw, C_in / groups, C_out)``, bias ``(C_out,)``) and changes only how the convolution is run; see
``bench/README.md`` for the measurements behind the choice.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
from keras import ops

__all__ = ["GroupedConv2D", "FORMULATIONS"]

# "keras": keras.ops.conv with groups, what keras.layers.Conv2D does (XLA on TensorFlow; cuDNN on GPUs).
# "grouped_op": one grouped convolution op outside XLA (TensorFlow only: oneDNN on CPUs, cuDNN on GPUs).
# "split": one convolution per group — split the input and the kernel, convolve, concatenate.
FORMULATIONS = ("auto", "keras", "grouped_op", "split")


@functools.lru_cache(maxsize=None)
def _tf_has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


@functools.lru_cache(maxsize=None)
def _tf_onednn_enabled():
    """Whether TensorFlow runs its CPU convolutions with oneDNN (which implements grouped convolutions); the
    plain Eigen kernel rejects them."""
    from kerasarch.keras_compat import tensorflow_onednn_enabled

    return tensorflow_onednn_enabled()


def _tf_in_xla():
    """Whether the convolution is being traced into an XLA cluster (``tf.function(jit_compile=True)``)."""
    from kerasarch.keras_compat import tensorflow_in_xla_context

    return tensorflow_in_xla_context()


def auto_formulation(data_format: str = "channels_last") -> str:
    """The formulation ``"auto"`` resolves to here and now (backend, device, inside XLA or not).

    * GPUs: ``"keras"`` — the native grouped convolution (cuDNN) is fast.
    * TensorFlow on a CPU, outside XLA, oneDNN on, channels-last: ``"grouped_op"`` — oneDNN's grouped
      convolution, forward and backward.
    * Every other CPU case (XLA-compiled TensorFlow, JAX, NCHW, no oneDNN): ``"split"`` — XLA's CPU kernel for
      grouped convolutions is slow (most of all its gradients) while ordinary convolutions are not.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        if _tf_has_gpu():
            return "keras"
        if data_format == "channels_last" and _tf_onednn_enabled() and not _tf_in_xla():
            return "grouped_op"
        return "split"
    if backend == "jax":
        import jax

        return "keras" if jax.default_backend() != "cpu" else "split"
    return "keras"  # torch (oneDNN or cuDNN grouped kernels) and anything else


@keras.saving.register_keras_serializable(package="kerasarch")
class GroupedConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D(groups=…)`` with the same weights, computed the way that runs fast where it runs.

    Same arguments, weights and outputs as ``keras.layers.Conv2D`` (an instance of it, so code that looks for
    Conv2D layers finds it), plus ``formulation``:

    * ``"auto"`` (default): chosen at trace time by :func:`auto_formulation` — the native op on GPUs, oneDNN's
      grouped convolution for TensorFlow on CPUs, per-group convolutions under XLA on CPUs (JAX, or TensorFlow
      with ``jit_compile``).
    * ``"keras"``: exactly Conv2D's computation (``keras.ops.conv`` with groups).
    * ``"grouped_op"``: TensorFlow's grouped ``tf.nn.convolution`` without Keras' XLA wrapper (TensorFlow only).
    * ``"split"``: split input and kernel into the groups, convolve each pair, concatenate (Krizhevsky et al.
      2012's towers, literally).

    All formulations agree to float32 round-off, forward and backward (``tests/test_grouped_conv.py``).
    """

    def __init__(
        self, filters: int, kernel_size: int | tuple[int, int], *, formulation: str = "auto", **kwargs: Any
    ) -> None:
        if formulation not in FORMULATIONS:
            raise ValueError(f"`formulation` must be one of {FORMULATIONS}. Received: formulation={formulation!r}")
        super().__init__(filters, kernel_size, **kwargs)
        self.formulation = formulation

    def resolved_formulation(self) -> str:
        """The formulation a call traced now would use."""
        if self.groups == 1:
            return "keras"
        if self.formulation == "auto":
            return auto_formulation(self.data_format)
        return self.formulation

    def convolution_op(self, inputs: Any, kernel: Any) -> Any:
        how = self.resolved_formulation()
        if how == "keras":
            return super().convolution_op(inputs, kernel)
        if how == "grouped_op":
            return self._grouped_op(inputs, kernel)
        return self._split(inputs, kernel)

    def _grouped_op(self, inputs, kernel):
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"formulation='grouped_op' needs the TensorFlow backend. Received: backend "
                f"{keras.backend.backend()!r}; use 'split' or 'keras'."
            )
        import tensorflow as tf

        kernel = tf.cast(kernel, inputs.dtype)
        return tf.nn.convolution(
            inputs,
            kernel,
            strides=list(self.strides),
            padding=self.padding.upper(),
            dilations=list(self.dilation_rate),
            data_format="NHWC" if self.data_format == "channels_last" else "NCHW",
        )

    def _split(self, inputs, kernel):
        axis = -1 if self.data_format == "channels_last" else 1
        xs = ops.split(inputs, self.groups, axis=axis)
        ks = ops.split(kernel, self.groups, axis=-1)
        ys = [
            ops.conv(
                x,
                k,
                strides=list(self.strides),
                padding=self.padding,
                dilation_rate=self.dilation_rate,
                data_format=self.data_format,
            )
            for x, k in zip(xs, ks)
        ]
        return ops.concatenate(ys, axis=axis)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "formulation": self.formulation}
