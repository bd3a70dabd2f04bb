"""The Keras and keras-tuner internals kerasarch relies on, gathered in one place.

Keras has no public API for walking a built model's graph backwards (which operation produced a tensor, which
calls an operation received, the nodes of a Functional model by depth), for a progress bar's position or for
computing with a backend other than the running one; TensorFlow has none saying whether it uses oneDNN or
traces into XLA; keras-tuner has none for its distributed-search state. kerasarch needs each of these and reads
them here only, so that a release that renames one breaks one module and one test
(``tests/test_keras_compat.py``) instead of the call sites spread over the package.

Tested against Keras 3.15 and keras-tuner 1.4; ``setup.cfg`` pins ``keras<3.16`` and ``keras-tuner<1.5``, the
first releases not yet tested. To support a newer release, run ``pytest tests/test_keras_compat.py`` under it,
adapt the functions below if it fails, and raise the pins.

This module also holds :func:`require_tensorflow`, the guard at the entry of the TensorFlow-only parts of
kerasarch (the ``tf.data`` pipeline, ``tf.distribute`` training, SavedModel/TFLite/ONNX export).
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = [
    "TESTED_KERAS",
    "TESTED_KERAS_TUNER",
    "producer",
    "inbound_nodes",
    "nodes_by_depth",
    "fill_in_arguments",
    "progbar_position",
    "backend_module",
    "tensorflow_onednn_enabled",
    "tensorflow_in_xla_context",
    "optimizer_slot",
    "tuner_has_chief_oracle",
    "tuner_is_chief_oracle",
    "set_tuner_oracle_timeout",
    "hyperband_brackets",
    "require_tensorflow",
]

TESTED_KERAS = "3.15"
TESTED_KERAS_TUNER = "1.4"


# --- Keras: the graph of a built model -------------------------------------------------------------------------


def producer(tensor: Any) -> Any:
    """The operation (layer) whose call produced the symbolic ``tensor``; ``None`` for a model input that was not
    made by an ``Input`` layer, or for a tensor without history."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def inbound_nodes(operation: Any) -> list:
    """The call records (``Node`` objects, each with ``input_tensors`` and ``outputs``) of ``operation``, one per
    time it was called on symbolic tensors, in call order."""
    return list(operation._inbound_nodes)


def nodes_by_depth(model: Any) -> dict[int, list] | None:
    """``{depth: [Node]}`` of a Functional model (depth 0 holds the output nodes); ``None`` for models that do
    not record a graph (subclassed models; Sequential models before they are built)."""
    return getattr(model, "_nodes_by_depth", None)


def fill_in_arguments(node: Any, tensors: dict[int, Any]) -> tuple[tuple, dict]:
    """The ``(args, kwargs)`` of ``node``'s call with each symbolic input replaced by ``tensors[id(input)]``."""
    return node.arguments.fill_in(tensors)


# --- Keras: training utilities ---------------------------------------------------------------------------------


def progbar_position(bar: keras.utils.Progbar) -> int:
    """The step a ``keras.utils.Progbar`` was last updated to."""
    return bar._seen_so_far


def backend_module(name: str) -> Any:
    """The operations of Keras backend ``name`` (``"tensorflow"``, ``"jax"``, ``"torch"``, ``"numpy"``) as a module
    with ``core``, ``numpy``, ``image`` … submodules, whichever backend Keras itself runs on."""
    from keras.src.utils.backend_utils import DynamicBackend

    return DynamicBackend(name)


def tensorflow_onednn_enabled() -> bool:
    """Whether TensorFlow runs its CPU kernels with oneDNN (TensorFlow's internal ``IsMklEnabled``); where that
    cannot be read, TensorFlow's documented default: on for x86-64 unless ``TF_ENABLE_ONEDNN_OPTS`` is 0."""
    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        import os
        import platform

        flag = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower()
        return platform.machine().lower() in ("x86_64", "amd64") and flag not in ("0", "false")


def tensorflow_in_xla_context() -> bool:
    """Whether TensorFlow is tracing into an XLA cluster (``tf.function(jit_compile=True)``) right now (TensorFlow's
    internal ``control_flow_util.GraphOrParentsInXlaContext``); ``False`` eagerly or where it cannot be read."""
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util

        return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))
    except (ImportError, AttributeError):
        return False


# --- Keras: optimizers ----------------------------------------------------------------------------------------


def optimizer_slot(optimizer: keras.optimizers.Optimizer, slots: list, variable: Any) -> Any:
    """The entry of an optimizer's per-variable slot list (``SGD.momentums``, ``Adam.momentums``…) that belongs to
    ``variable`` — a Keras variable or, inside Keras' TensorFlow update step, its ``tf.Variable`` (Keras'
    ``Optimizer._get_variable_index``)."""
    return slots[optimizer._get_variable_index(variable)]


# --- keras-tuner: distributed search ---------------------------------------------------------------------------


def tuner_has_chief_oracle() -> bool:
    """Whether this process takes part in a distributed keras-tuner search (``KERASTUNER_ORACLE_*`` is set)."""
    from keras_tuner.src.distribute import utils

    return bool(utils.has_chief_oracle())


def tuner_is_chief_oracle() -> bool:
    """Whether this process is the chief (the oracle server) of a distributed keras-tuner search."""
    from keras_tuner.src.distribute import utils

    return bool(utils.is_chief_oracle())


def set_tuner_oracle_timeout(seconds: float) -> None:
    """How long a distributed keras-tuner worker waits for the chief's answer (keras-tuner's default: an hour)."""
    from keras_tuner.src.distribute import oracle_client

    oracle_client.TIMEOUT = seconds


def hyperband_brackets(oracle: Any) -> list[dict] | None:
    """A Hyperband oracle's brackets (``[{"bracket_num", "rounds": [[{"past_id", "id"}, …], …]}]``); ``None``
    when ``oracle`` keeps none (another algorithm, or a distributed worker's client)."""
    return getattr(oracle, "_brackets", None)


# --- TensorFlow-only parts -------------------------------------------------------------------------------------


def require_tensorflow(what: str) -> None:
    """Raises a ``RuntimeError`` naming ``what`` unless Keras runs on the TensorFlow backend.

    The model code (registry, layers, blocks, weight loading, feature extraction) runs on any Keras backend;
    ``what`` is one of the parts built on TensorFlow itself (``tf.data``, ``tf.distribute``, SavedModel).
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"{what} needs the TensorFlow backend of Keras (it is built on TensorFlow itself). "
            f"Received: KERAS_BACKEND={backend!r}; set KERAS_BACKEND=tensorflow before importing "
            f"keras, or use only the backend-neutral parts (models, layers, weights, features)."
        )
