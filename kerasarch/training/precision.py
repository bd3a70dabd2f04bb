"""Choosing the numeric precision of a run: float32, mixed float16 or mixed bfloat16.

Under a mixed policy the layers compute in 16 bits and keep float32 variables; kerasarch's classifiers
(``builder.predictions_dense``) keep logits and softmax in float32. Float16 needs loss scaling (a Keras
``LossScaleOptimizer``); bfloat16 has float32's exponent range and does not.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, Sequence

__all__ = [
    "PRECISIONS",
    "resolve_precision",
    "cpu_flags",
    "cpu_supports_bfloat16",
    "gpu_compute_capabilities",
    "dtype_policy",
]

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags listed in ``/proc/cpuinfo`` (an empty set where it cannot be read)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bfloat16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU computes bfloat16 natively: AVX512-BF16 or AMX-BF16 (oneDNN then runs bfloat16 convolutions
    and matrix products faster than float32)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def gpu_compute_capabilities() -> list[tuple[int, ...]]:
    """``[(major, minor), ...]`` of the visible GPUs."""
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        caps.append(tuple(details.get("compute_capability") or (0, 0)))
    return caps


def _has_tpu():
    import tensorflow as tf

    try:
        return bool(tf.config.list_logical_devices("TPU"))
    except Exception:  # no TPU runtime
        return False


def resolve_precision(
    precision: str = "auto",
    *,
    gpus: Iterable[Sequence[int]] | None = None,
    tpu: bool | None = None,
    cpu_flags_: Iterable[str] | None = None,
) -> str:
    """The Keras dtype policy name for ``precision``.

    ``"auto"``: ``"mixed_float16"`` when every visible GPU has compute capability ≥ 7.0 (tensor cores),
    ``"mixed_bfloat16"`` on a TPU or on a CPU with AVX512-BF16/AMX (``/proc/cpuinfo``), ``"float32"`` otherwise.
    On the 2-core AVX512-BF16/AMX development CPU, ResNet-50 training at batch 8 ran faster under the
    ``mixed_bfloat16`` policy than in float32 (1.2× near idle; 2.3× in a loaded run, where it was also ahead of
    TensorFlow's oneDNN bfloat16 grappler rewrite, 2.0×, and of the policy with ``jit_compile``, 0.7×):
    ``bench/precision.py``, ``bench/README.md``. With batch norm on TensorFlow's fused kernel
    (``kerasarch.layers.normalization``) the policy's gain is 1.66× per CPU-second, and the grappler rewrite, 2/1
    thread pools and a one-op momentum update add nothing measurable on top of it.

    Args:
        precision: one of :data:`PRECISIONS`.
        gpus, tpu, cpu_flags_: the hardware to decide for (default: this machine's), for tests.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}. Received: precision={precision!r}")
    if precision != "auto":
        return precision
    gpus = gpu_compute_capabilities() if gpus is None else list(gpus)
    if gpus:
        return "mixed_float16" if all(tuple(c) >= (7, 0) for c in gpus) else "float32"
    if _has_tpu() if tpu is None else tpu:
        return "mixed_bfloat16"
    return "mixed_bfloat16" if cpu_supports_bfloat16(cpu_flags_) else "float32"


@contextlib.contextmanager
def dtype_policy(policy: str | None) -> Iterator[None]:
    """Sets Keras' global dtype policy to ``policy`` (a policy name; ``None`` leaves it as it is) for the ``with``
    block — layers created inside it compute in that precision — and restores the previous one on the way out,
    errors included."""
    import keras

    previous = keras.config.dtype_policy()
    if policy is not None:
        keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
