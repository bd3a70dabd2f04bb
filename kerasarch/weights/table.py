"""The published checkpoints of every registered variant, as one table derived from the family files.

Each variant declares its checkpoints beside its architecture (``checkpoints=`` of its
:class:`~kerasarch.registry.ModelSpec`, made with :mod:`kerasarch.weights.published`); :data:`WEIGHTS` collects
them by registry name, the default (``weights="imagenet"``) first, and :func:`weights_for` picks one. Each entry is
a :class:`~kerasarch.card.Checkpoint` (``WeightsInfo`` is its older name) carrying its evaluation transform, so a
model built with it gets that transform on its card.
"""

from __future__ import annotations

from kerasarch.card import PREPROCESSING_MODES, Checkpoint, preprocessing_description
from kerasarch.weights.classes import imagenet_class_names

__all__ = ["WeightsInfo", "WEIGHTS", "weights_for", "imagenet_class_names", "PREPROCESSING"]

# What each preprocessing mode does to RGB pixel values in [0, 255].
PREPROCESSING = {mode: preprocessing_description(mode) for mode in PREPROCESSING_MODES}

WeightsInfo = Checkpoint


class _CheckpointTable(dict):
    """``{registry name: (Checkpoint, ...)}``, filled from the registered variants on first use."""

    _filled = False

    def _fill(self):
        if not self._filled:
            self._filled = True
            from kerasarch.registry import get_spec, list_models

            for name in list_models():
                checkpoints = get_spec(name).checkpoints
                if checkpoints and not dict.__contains__(self, name):
                    dict.__setitem__(self, name, tuple(checkpoints))

    def __getitem__(self, key):
        self._fill()
        return dict.__getitem__(self, key)

    def __contains__(self, key):
        self._fill()
        return dict.__contains__(self, key)

    def __iter__(self):
        self._fill()
        return dict.__iter__(self)

    def __len__(self):
        self._fill()
        return dict.__len__(self)

    def get(self, key, default=None):
        self._fill()
        return dict.get(self, key, default)

    def keys(self):
        self._fill()
        return dict.keys(self)

    def values(self):
        self._fill()
        return dict.values(self)

    def items(self):
        self._fill()
        return dict.items(self)


WEIGHTS: dict[str, tuple[Checkpoint, ...]] = _CheckpointTable()


def weights_for(model_name: str, source: str | None = None) -> Checkpoint:
    """The :class:`~kerasarch.card.Checkpoint` of ``model_name``: its first entry (the best published top-1 at the
    variant's input size; ``weights="imagenet"``), or the one ``source`` names: a publisher (``"keras"``,
    ``"torchvision"``, ``"timm"``: its first entry), a checkpoint id (``"IMAGENET1K_V1"``, ``"resnet50.a1_in1k"``) or
    both, ``"torchvision:IMAGENET1K_V1"`` (``weights="imagenet:<source>"``); case-insensitive."""
    entries = WEIGHTS.get(model_name)
    if not entries:
        raise ValueError(
            f"No ImageNet weights are published for '{model_name}'. Models with weights: "
            f"{', '.join(sorted(WEIGHTS))}. Received: model name {model_name!r}"
        )
    if source is None:
        return entries[0]
    want = str(source).lower()
    for info in entries:
        if want in (info.source.lower(), str(info.id).lower(), f"{info.source}:{info.id}".lower()):
            return info
    raise ValueError(
        f"'{model_name}' has no checkpoint {source!r}; available: "
        f"{', '.join(f'{i.source}:{i.id}' for i in entries)}. Received: source={source!r}"
    )
