"""The pretrained network a fine-tuning command starts from: a registry model with what ``build_model``'s
``weights`` accepts (or a ``.keras`` file / training run folder), checked to fit before any work starts, and the
input convention its model card records.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile

import numpy as np

from finetune.errors import FinetuneError
from kerasarch.data import PREPROCESSING_MODES

__all__ = [
    "FIT_MODES",
    "Backbone",
    "default_preprocessing",
    "load_backbone",
    "parse_shape",
    "prepare_batch",
    "resolve_weights",
]

FIT_MODES = ("auto", "pad", "resize", "resize_crop")


class Backbone:
    """A built registry model with its weights, and what to record about it.

    Attributes:
        model: the full Functional model (with its top when the weights have one), carrying its model card.
        spec: its :class:`kerasarch.ModelSpec`.
        weights: what the weights came from (``"imagenet"``, a file path), or ``None`` (random initialisation from
            ``seed``).
        weights_sha256: the weights file's sha256, or ``None``.
        input_shape: ``(H, W, C)`` the model was built for.
        seed: the initialisation seed (random weights only).
        input_config: the :class:`kerasarch.InputConfig` images are prepared with (the card's, with an explicit
            preprocessing applied).
        preprocessing: ``input_config.preprocessing``.
    """

    def __init__(self, model, spec, weights, weights_sha256, input_shape, seed, preprocessing=None):
        from kerasarch.card import card_of

        self.model = model
        self.spec = spec
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.input_shape = tuple(input_shape)
        self.seed = seed
        config = card_of(model).input
        if preprocessing is not None and preprocessing != config.preprocessing:
            warnings.warn(
                f"--preprocessing {preprocessing} contradicts the model card of {spec.name} "
                f"({config.preprocessing}); using {preprocessing}.",
                stacklevel=3,
            )
            config = config.replace(preprocessing=preprocessing)
        self.input_config = config
        self.preprocessing = config.preprocessing

    def input_for(self, fit=None):
        """The backbone's :attr:`input_config`, with ``fit`` (a :data:`FIT_MODES` value) replacing the card's."""
        if fit is None or fit == self.input_config.fit:
            return self.input_config
        if fit not in FIT_MODES:
            raise FinetuneError(f"--fit must be one of {FIT_MODES}. Received: {fit!r}")
        h, w = self.input_shape[:2]
        resize = self.input_config.resize_size or int(round(min(h, w) * 256 / 224))
        return self.input_config.replace(fit=fit, resize_size=resize if fit == "resize_crop" else None)

    @property
    def card(self):
        """The backbone's :class:`kerasarch.ModelCard` (with the input convention in use)."""
        from kerasarch.card import card_of

        return card_of(self.model).replace(input=self.input_config)

    def card_for(self, net, class_names=None, recipe=None, data=None):
        """``net`` (a model built on this backbone, e.g. with a new head) carrying the backbone's card with the new
        ``class_names``, ``recipe`` and ``data``, so that a saved fine-tuned model knows its inputs and classes."""
        from kerasarch.card import tap_info, with_card

        card = self.card
        classes = int(net.outputs[0].shape[-1]) if len(net.outputs) == 1 else None
        names = list(class_names) if class_names is not None and len(class_names) == classes else None
        taps = tap_info(net, {t: v["layer"] for t, v in card.taps.items()})
        return with_card(net, card.replace(class_names=names, taps=taps, recipe=recipe, data=data))

    def describe(self):
        """A JSON-able description for metadata files (no absolute paths, so results move with their files)."""
        weights = self.weights
        if weights and os.path.exists(os.fspath(weights)):
            weights = os.path.basename(os.path.normpath(os.fspath(weights)))
        return {
            "model": self.spec.name,
            "weights": weights,
            "weights_sha256": self.weights_sha256,
            "seed": None if self.weights else self.seed,
            "input_shape": list(self.input_shape),
            "preprocessing": self.preprocessing,
            "fit": self.input_config.fit,
        }


def default_preprocessing(spec, weights=None):
    """The input convention a backbone of ``spec`` with ``weights`` gets: the card of the ``.keras`` file (or run
    folder) the weights are, else the published checkpoint's (``"imagenet"``), else the spec's (for a model without
    published weights, what its default recipe trains with)."""
    from kerasarch.card import read_card

    if isinstance(weights, str) and weights.split(":", 1)[0] == "imagenet":
        from kerasarch.weights import weights_for

        return weights_for(spec.name, weights.split(":", 1)[1] if ":" in weights else None).preprocessing
    if weights:
        path = resolve_weights(weights)
        if path.endswith(".keras"):
            card = read_card(path)
            if card is not None:
                return card.input.preprocessing
    return spec.preprocessing


def resolve_weights(weights):
    """``weights`` as ``build_model`` takes it: ``"imagenet"`` / ``"imagenet:<source>"`` unchanged, a training run
    folder as its ``model.keras``, a file path checked to exist with a loadable suffix."""
    if isinstance(weights, str) and weights.split(":", 1)[0] == "imagenet":
        return weights
    path = os.fspath(weights)
    if os.path.isdir(path):
        from kerasarch.errors import KerasarchError
        from kerasarch.training.loop import run_model_file

        try:
            return run_model_file(path)
        except KerasarchError as e:
            raise FinetuneError(
                f"{e} --weights takes 'imagenet', 'imagenet:keras', 'imagenet:torchvision', a weights file "
                "or a training run folder."
            ) from None
    if not os.path.isfile(path):
        raise FinetuneError(f"Weights file not found: {path!r}.")
    suffixes = (".keras", ".weights.h5", ".h5", ".hdf5", ".pth", ".pt", ".safetensors")
    if not path.lower().endswith(suffixes):
        raise FinetuneError(
            f"--weights takes 'imagenet', 'imagenet:keras', 'imagenet:torchvision', a "
            f"{' / '.join(suffixes)} file or a training run folder. Received: {path!r}"
        )
    return path


def parse_shape(text):
    """``"32,32,3"`` or ``"32x32x3"`` -> ``(32, 32, 3)``; ``None`` stays ``None``
    (:func:`kerasarch.commands.parse_input_shape`, raising :class:`FinetuneError`)."""
    from kerasarch.commands import parse_input_shape
    from kerasarch.errors import KerasarchError

    try:
        return parse_input_shape(text)
    except KerasarchError as e:
        raise FinetuneError(str(e)) from None


def _peek_keras_file(path):
    """Input shape and class count stored in a ``.keras`` file's config, read without loading its weights."""
    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise FinetuneError(f"{path!r} is not a readable .keras file: {e}") from e
    layers = config.get("config", {}).get("layers", [])
    shape, classes = None, None
    for layer in layers:
        cfg = layer.get("config", {})
        if layer.get("class_name") == "InputLayer" and shape is None:
            batch_shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            if batch_shape:
                shape = tuple(batch_shape[1:])
        if cfg.get("name") == "predictions" and "units" in cfg:
            classes = int(cfg["units"])
    return config.get("config", {}).get("name"), shape, classes


def load_backbone(name, weights=None, *, input_shape=None, classes=None, seed=0, preprocessing=None, include_top=True):
    """Builds registry model ``name`` and loads ``weights`` into it, failing clearly when they do not fit.

    Args:
        name: a registry name; ``None`` takes the variant the card of a ``.keras`` ``weights`` names.
        weights: ``None`` (random initialisation from ``seed``) or anything ``kerasarch.build_model``'s ``weights``
            takes: ``"imagenet"``, ``"imagenet:torchvision"``, ``"imagenet:keras"``, a keras.applications ``.h5``,
            a torchvision ``.pth``, a ``.safetensors``, a ``.keras`` / ``.weights.h5`` file, or a training run
            folder (its ``model.keras``). A ``.keras`` file also gives the input shape and class count the network
            was trained with, and its card the input convention and class names.
        input_shape: ``(H, W, C)``; default: the weights file's, else the spec's.
        classes: the classifier width (a ``.weights.h5`` file does not record it); default: the ``.keras`` file's,
            else the spec's. With published weights and another count, the classifier starts fresh.
        seed: initialisation seed for random weights.
        preprocessing: the input convention, overriding the card's (with a warning when they differ).
        include_top: build the classifier top too (taps such as VGG's fc7 live there).

    Returns:
        A :class:`Backbone`.

    Raises:
        FinetuneError: an unknown model, a missing weights file, or weights of another network.
    """
    import keras

    from kerasarch.card import read_card
    from kerasarch.registry import get_spec

    saved_name = None
    if weights is not None:
        weights = resolve_weights(weights)
        if weights.endswith(".keras"):
            saved_name, saved_shape, saved_classes = _peek_keras_file(weights)
            input_shape = input_shape or saved_shape
            classes = classes or saved_classes
            card = read_card(weights)
            if name is None and card is not None and card.variant:
                name = card.variant
    if name is None:
        raise FinetuneError(
            "Name the model (a registry name), or give --weights a .keras file whose model card names its variant."
        )
    try:
        spec = get_spec(name)
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
        raise FinetuneError(f"Unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSING_MODES}.")
    input_shape = tuple(input_shape or spec.input_shape)
    keras.utils.set_random_seed(seed)
    try:
        model = spec.build(input_shape=input_shape, classes=classes or spec.classes, include_top=include_top)
    except ValueError as e:
        raise FinetuneError(f"Cannot build {name} for input {input_shape}: {e}") from e
    sha256 = None
    if weights is not None:
        from kerasarch.card import card_of
        from kerasarch.weights import load_weights

        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Classifier layers left at their initialisation")
                load_weights(model, weights)
        except (ValueError, KeyError, OSError) as e:
            held = f" (the file holds a model named '{saved_name}')" if saved_name else ""
            raise FinetuneError(f"The weights {weights!r} do not fit {name}{held}: {e}") from e
        sha256 = (card_of(model).weights or {}).get("sha256")
    return Backbone(model, spec, weights, sha256, input_shape, seed, preprocessing)


def prepare_batch(images, input_shape, preprocessing, *, fit="auto", input_config=None):
    """Images (an (N, h, w, c) array or a list of images of any sizes, values 0-255) fitted to the model's
    ``input_shape`` and put in its input convention with :func:`kerasarch.preprocessing.prepare_images`, the
    implementation the training pipeline and the serving graphs use. ``input_config`` (a backbone's) replaces
    ``input_shape`` / ``preprocessing`` / ``fit``. Returns one float32 array."""
    from kerasarch.card import InputConfig
    from kerasarch.preprocessing import prepare_images

    h, w, c = input_shape
    if input_config is None:
        if fit not in FIT_MODES:
            raise FinetuneError(f"--fit must be one of {FIT_MODES}. Received: {fit!r}")
        if preprocessing not in PREPROCESSING_MODES:
            raise FinetuneError(f"Unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSING_MODES}.")
        input_config = InputConfig(
            preprocessing=preprocessing,
            size=(h, w),
            channels=c,
            fit=fit,
            resize_size=int(round(min(h, w) * 256 / 224)) if fit == "resize_crop" else None,
        )
    if len(images) == 0:
        return np.zeros((0, h, w, c), "float32")
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[..., None]
    if isinstance(images, np.ndarray) or len({np.shape(im) for im in images}) == 1:
        return np.asarray(prepare_images(np.asarray(images, "float32"), input_config))
    return np.stack([np.asarray(prepare_images(np.asarray(im, "float32"), input_config)) for im in images])
