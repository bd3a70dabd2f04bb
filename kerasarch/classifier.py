"""The classifier end of a model: which output is the classifier's when a model has auxiliary ones (GoogLeNet's
heads), the model without those heads, and whether the classifier outputs probabilities or logits.

One answer to each question for training (which loss: ``from_logits``), evaluation and export (whether the served
graph adds a softmax). The main output is the one named ``predictions`` (the keras.applications name every
kerasarch classifier uses), else the first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAIN_OUTPUT", "split_outputs", "strip_auxiliary", "ends_in_softmax"]

MAIN_OUTPUT = "predictions"


def split_outputs(outputs: Any) -> tuple[Any, list]:
    """``(main, [auxiliary ...])`` of a model's outputs, symbolic or computed: a dict's ``"predictions"`` entry
    (else its first), a list's first entry, or the single output itself."""
    if isinstance(outputs, dict):
        key = MAIN_OUTPUT if MAIN_OUTPUT in outputs else next(iter(outputs))
        return outputs[key], [v for k, v in outputs.items() if k != key]
    if isinstance(outputs, (list, tuple)):
        return outputs[0], list(outputs[1:])
    return outputs, []


def strip_auxiliary(model: Any) -> Any:
    """The single-output inference model of ``model``: the same layers (hence the same weights) from its inputs to
    its main output (:func:`split_outputs`), without auxiliary heads — GoogLeNet's are discarded at inference
    (Szegedy et al., arXiv:1409.4842, §5). A model with one output is returned as it is.

    Returns:
        A Functional ``keras.Model`` named like ``model``, with its model card.
    """
    import keras

    from kerasarch.card import card_of, has_card, with_card

    main, aux = split_outputs(model.output)
    if not aux:
        return model
    stripped = keras.Model(model.input, main, name=model.name)
    return with_card(stripped, card_of(model)) if has_card(model) else stripped


def _is_softmax(activation) -> bool:
    import keras

    return activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax"


def _is_identity(activation) -> bool:
    import keras

    return activation is keras.activations.linear or getattr(activation, "__name__", "") == "linear"


def ends_in_softmax(model: Any) -> bool:
    """Whether the main output of ``model`` (:func:`split_outputs`) is a softmax (probabilities) rather than logits.

    Walks back from that output through layers without weights (``Activation("linear")`` casts to float32 under
    mixed precision, ``Dropout``, ``Flatten`` ...) to the first layer that has an activation or is a ``Softmax``
    layer: ``Dense(n, activation="softmax")``, ``Dense(n)`` followed by ``Activation("softmax")`` and a
    ``Softmax`` layer give probabilities; a layer with weights and a linear activation gives logits. A model
    without a graph (subclassed) is judged by its ``predictions`` layer, else its last layer.
    """
    import keras

    from kerasarch.keras_compat import inbound_nodes, producer

    try:
        tensor, _ = split_outputs(model.output)
    except (AttributeError, ValueError):  # a subclassed model records no graph
        names = {layer.name for layer in model.layers}
        layer = model.get_layer(MAIN_OUTPUT) if MAIN_OUTPUT in names else model.layers[-1]
        return isinstance(layer, keras.layers.Softmax) or _is_softmax(getattr(layer, "activation", None))
    while True:
        layer = producer(tensor)
        if layer is None:
            return False
        if isinstance(layer, keras.layers.Softmax):
            return True
        activation = getattr(layer, "activation", None)
        if activation is not None and not _is_identity(activation):
            return _is_softmax(activation)
        nodes = inbound_nodes(layer)
        if layer.weights or not nodes or len(nodes[0].input_tensors) != 1:
            return False
        tensor = nodes[0].input_tensors[0]
