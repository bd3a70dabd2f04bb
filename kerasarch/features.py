"""Feature extraction at the papers' tap points: ``feature_extractor`` and ``list_taps``.

Every :class:`~kerasarch.registry.ModelSpec` maps paper tap names to layer names (VGG's ``fc7`` is
keras.applications' ``fc2``), and every built model's card carries them (with their channels and stride), so a
model loaded from a ``.keras`` file keeps its paper taps whatever it is named. A feature extractor is a Functional
model on the same layers and weights as the full model, with one output per requested tap, returned as a dict keyed
by the name the caller used.
Raw layer names are accepted too, so any layer of any model can be tapped.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras

from kerasarch.card import card_of, has_card
from kerasarch.registry import ModelSpec, get_spec

__all__ = ["feature_extractor", "list_taps", "penultimate_tap", "resolve_taps", "spec_of"]

# Tap names that are the classifier itself, never "the penultimate" feature.
_OUTPUT_TAPS = ("predictions", "logits", "output")


def list_taps(name: str | ModelSpec | keras.Model) -> list[str]:
    """Returns the paper tap names of a registered model, in the order the spec declares them (input side
    first).

    Args:
        name: a registry name, a :class:`ModelSpec`, or a model with a card.

    Returns:
        A list of tap names, e.g. ``["conv1", ..., "pool5", "fc6", "fc7"]`` for VGG.
    """
    if not isinstance(name, (str, ModelSpec)) and has_card(name):
        return list(card_of(name).taps)
    spec = name if isinstance(name, ModelSpec) else spec_of(name)
    if spec is None:
        raise ValueError(
            f"{getattr(name, 'name', name)!r} has no model card, so it has no paper taps; pass layer names instead."
        )
    return list(spec.taps)


def penultimate_tap(name: str | ModelSpec | keras.Model) -> str:
    """The last declared tap before the classifier (VGG: ``fc7``; a CIFAR ResNet: ``avg_pool``): the feature
    a linear probe reads."""
    taps = [t for t in list_taps(name) if t not in _OUTPUT_TAPS]
    if not taps:
        raise ValueError(f"{name!r} declares no feature taps.")
    return taps[-1]


def spec_of(model_or_name: str | ModelSpec | keras.Model) -> ModelSpec | None:
    """The :class:`ModelSpec` of a registry name or of a model whose card names a registered variant; ``None``
    for a model without one."""
    if isinstance(model_or_name, ModelSpec):
        return model_or_name
    if isinstance(model_or_name, str):
        return get_spec(model_or_name)
    if has_card(model_or_name) and card_of(model_or_name).variant:
        return get_spec(card_of(model_or_name).variant)
    return None


def _paper_taps(model, spec):
    if spec is not None:
        return dict(spec.taps)
    if has_card(model):
        return {t: v["layer"] for t, v in card_of(model).taps.items()}
    return {}


def resolve_taps(model: keras.Model, taps: str | Sequence[str], spec: ModelSpec | None = None) -> dict[str, str]:
    """Maps each requested tap (paper name or layer name) to a layer name of ``model``.

    Args:
        model: a Functional ``keras.Model``.
        taps: a tap name or a list of them.
        spec: the :class:`ModelSpec` whose paper taps apply (``None``: the model card's).

    Returns:
        An ordered ``{tap: layer name}`` dict.

    Raises:
        ValueError: an unknown tap (the message lists the valid ones), a paper tap whose layer this model does
            not have (e.g. ``fc7`` on a model built with ``include_top=False``), an empty or repeated list.
    """
    if isinstance(taps, str):
        taps = [taps]
    taps = list(taps)
    if not taps:
        raise ValueError("At least one tap is needed. Received: taps=[]")
    if len(set(taps)) != len(taps):
        raise ValueError(f"Each tap can be requested once. Received: taps={taps!r}")
    paper = _paper_taps(model, spec)
    label = spec.name if spec is not None else (card_of(model).variant if has_card(model) else None)
    layer_names = {layer.name for layer in model.layers}
    resolved = {}
    for tap in taps:
        if not isinstance(tap, str):
            raise TypeError(f"Tap names are strings. Received: {tap!r}")
        if tap in paper:
            layer = paper[tap]
            if layer not in layer_names:
                raise ValueError(
                    f"Tap '{tap}' of {label or model.name} is layer '{layer}', which this model "
                    f"('{model.name}') does not have; was it built with include_top=False? "
                    f"Taps it has: {_valid_here(paper, layer_names)}."
                )
            resolved[tap] = layer
        elif tap in layer_names:
            resolved[tap] = tap
        else:
            where = f"{label}" if label else f"model '{model.name}'"
            valid = (
                (
                    f"paper taps: {', '.join(paper)}; or any layer name of the model, e.g. "
                    f"{', '.join(_example_layers(model))}"
                )
                if paper
                else f"layer names of the model, e.g. {', '.join(_example_layers(model))}"
            )
            raise ValueError(f"Unknown tap '{tap}' for {where}. Valid taps are the {valid}.")
    return resolved


def feature_extractor(
    model_or_name: str | keras.Model,
    taps: str | Sequence[str],
    *,
    spec: str | ModelSpec | None = None,
    **build_kwargs: Any,
) -> keras.Model:
    """A model that returns the activations at ``taps``, as a dict keyed by tap name.

    Args:
        model_or_name: a registry name (built with ``build_kwargs``) or a built Functional model (its layers
            and weights are shared, not copied).
        taps: a tap name or list of names: paper names from the spec (``"fc7"``, ``"pool5"``) or layer names
            (``"block5_conv3"``).
        spec: the :class:`ModelSpec` or registry name whose paper taps apply; ``None``: the model card's.
        **build_kwargs: arguments for :func:`kerasarch.build_model` when ``model_or_name`` is a name
            (``weights``, ``input_shape``, ``include_top`` ...).

    Returns:
        A Functional ``keras.Model`` named ``<model>_features`` with dict outputs ``{tap: tensor}``.
    """
    if isinstance(model_or_name, str):
        spec = get_spec(model_or_name) if spec is None else spec_of(spec)
        model = spec.build(**build_kwargs)
    else:
        if build_kwargs:
            raise ValueError(
                f"Build arguments apply to a registry name, not to a built model. Received: {sorted(build_kwargs)}"
            )
        model = model_or_name
        spec = spec_of(spec) if spec is not None else None
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
        raise ValueError(f"feature_extractor needs a Functional keras.Model. Received: {type(model).__name__}")
    resolved = resolve_taps(model, taps, spec)
    outputs = {tap: model.get_layer(layer).output for tap, layer in resolved.items()}
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def _valid_here(paper, layer_names):
    return ", ".join(t for t, layer in paper.items() if layer in layer_names) or "none"


def _example_layers(model, n=4):
    names = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return names[-n:] if len(names) > n else names
