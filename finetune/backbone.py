"""The pretrained network a fine-tuning command starts from: a registry model with a weights file, checked
to fit before any work starts, and the input conventions it expects.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from finetune.errors import FinetuneError
from finetune.store import file_sha256
from kerasarch.data import PREPROCESSING_MODES

__all__ = ["FIT_MODES", "Backbone", "default_preprocessing", "load_backbone", "parse_shape", "prepare_batch"]

FIT_MODES = ("auto", "pad", "resize")


class Backbone:
    """A built registry model with its weights, and what to record about it.

    Attributes:
        model: the full Functional model (with its top when the weights have one).
        spec: its :class:`kerasarch.ModelSpec`.
        weights: the weights path, or ``None`` (random initialisation from ``seed``).
        weights_sha256: the file's sha256, or ``None``.
        input_shape: ``(H, W, C)`` the model was built for.
        seed: the initialisation seed (random weights only).
        preprocessing: the input convention (``kerasarch.data.PREPROCESSING_MODES``; default:
            :func:`default_preprocessing`).
    """

    def __init__(self, model, spec, weights, weights_sha256, input_shape, seed, preprocessing=None):
        self.model = model
        self.spec = spec
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.input_shape = tuple(input_shape)
        self.seed = seed
        self.preprocessing = preprocessing or default_preprocessing(spec, weights)

    def describe(self):
        """A JSON-able description for metadata files (no absolute paths, so results move with their files)."""
        return {"model": self.spec.name, "weights": os.path.basename(self.weights) if self.weights else None,
                "weights_sha256": self.weights_sha256, "seed": None if self.weights else self.seed,
                "input_shape": list(self.input_shape), "preprocessing": self.preprocessing}


def default_preprocessing(spec, weights=None):
    """The input convention weights expect: the one recorded in the ``recipe.json`` of the kerasarch.training
    run folder the weights file sits in, else the one ``kerasarch.training.train`` uses for the model by
    default (its paper recipe's, else the spec's, ``"unit"`` for models without pretrained-weight conventions)."""
    if weights:
        recipe = os.path.join(os.path.dirname(os.path.abspath(weights)), "recipe.json")
        if os.path.exists(recipe):
            try:
                with open(recipe) as f:
                    mode = json.load(f).get("preprocessing")
                if mode in PREPROCESSING_MODES:
                    return mode
            except (OSError, ValueError):
                pass
    from kerasarch.training import get_recipe

    mode = get_recipe(spec)["preprocessing"]
    return mode or (spec.preprocessing if spec.preprocessing != "none" else "unit")


def parse_shape(text):
    """``"32,32,3"`` or ``"32x32x3"`` -> ``(32, 32, 3)``; ``None`` stays ``None``."""
    if text is None or isinstance(text, (tuple, list)):
        return None if text is None else tuple(int(v) for v in text)
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise FinetuneError(f"An input shape is H,W,C (e.g. 32,32,3). Received: {text!r}")
    return shape


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


def load_backbone(name, weights=None, *, input_shape=None, classes=None, seed=0, preprocessing=None,
                  include_top=True):
    """Builds registry model ``name`` and loads ``weights`` into it, failing clearly when they do not fit.

    Args:
        name: a registry name.
        weights: ``None`` (random initialisation from ``seed``) or a ``.keras`` / ``.weights.h5`` file. A
            ``.keras`` file also gives the input shape and class count the network was trained with.
        input_shape: ``(H, W, C)``; default: the weights file's, else the spec's.
        classes: the classifier width of the weights (a ``.weights.h5`` file does not record it); default: the
            ``.keras`` file's, else the spec's.
        seed: initialisation seed for random weights.
        preprocessing: the input convention, overriding :func:`default_preprocessing`.
        include_top: build the classifier top too (taps such as VGG's fc7 live there).

    Returns:
        A :class:`Backbone`.

    Raises:
        FinetuneError: an unknown model, a missing weights file, or weights of another network.
    """
    import keras

    from kerasarch.registry import get_spec

    try:
        spec = get_spec(name)
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    saved_name = None
    if weights is not None:
        weights = os.fspath(weights)
        if not os.path.isfile(weights) and weights.split(":", 1)[0] == "imagenet":
            raise FinetuneError(f"--weights {weights!r} names published weights, and fine-tuning starts from a file "
                                f"here: pass a .keras or .weights.h5 file. Received: {weights!r}")
        if not os.path.isfile(weights):
            raise FinetuneError(f"Weights file not found: {weights!r}.")
        if not weights.endswith((".keras", ".weights.h5")):
            raise FinetuneError(f"Weights must be a '.keras' or '.weights.h5' file. Received: {weights!r}")
        if weights.endswith(".keras"):
            saved_name, saved_shape, saved_classes = _peek_keras_file(weights)
            input_shape = input_shape or saved_shape
            classes = classes or saved_classes
    input_shape = tuple(input_shape or spec.input_shape)
    keras.utils.set_random_seed(seed)
    try:
        model = spec.build(input_shape=input_shape, classes=classes or spec.classes, include_top=include_top)
    except ValueError as e:
        raise FinetuneError(f"Cannot build {name} for input {input_shape}: {e}") from e
    if weights is not None:
        from kerasarch.builder import load_weights_file

        try:
            load_weights_file(model, weights)
        except (ValueError, KeyError, OSError) as e:
            held = f" (the file holds a model named '{saved_name}')" if saved_name else ""
            raise FinetuneError(f"The weights {weights!r} do not fit {name}{held}: {e}") from e
    if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
        raise FinetuneError(f"Unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSING_MODES}.")
    return Backbone(model, spec, weights, file_sha256(weights) if weights else None, input_shape, seed,
                    preprocessing)


def prepare_batch(images, input_shape, preprocessing, *, fit="auto"):
    """Images (an (N, h, w, c) array or a list of images of any sizes, values 0-255) fitted to the model's
    ``input_shape`` and put in its input convention, exactly as the training pipeline does
    (:func:`kerasarch.data.fit_image`, :func:`kerasarch.data.preprocess`). Returns one float32 array."""
    import tensorflow as tf

    from kerasarch.data import fit_image, preprocess

    h, w, c = input_shape
    if fit not in FIT_MODES:
        raise FinetuneError(f"--fit must be one of {FIT_MODES}. Received: {fit!r}")
    if preprocessing not in PREPROCESSING_MODES:
        raise FinetuneError(f"Unknown preprocessing {preprocessing!r}; expected one of {PREPROCESSING_MODES}.")
    if len(images) == 0:
        return np.zeros((0, h, w, c), "float32")
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[..., None]
    if isinstance(images, np.ndarray) or len({np.shape(im) for im in images}) == 1:
        batch = tf.convert_to_tensor(np.asarray(images), tf.float32)
        out = _fit_uniform(batch, (h, w), c, fit)
    else:
        out = tf.stack([fit_image(tf.convert_to_tensor(im, tf.float32), (h, w), c, fit) for im in images])
    return preprocess(out, preprocessing).numpy()


def _fit_uniform(batch, size, channels, fit):
    import tensorflow as tf

    from kerasarch.data import fit_image

    key = (tuple(batch.shape[1:]), size, channels, fit)
    if key not in _FITTERS:
        _FITTERS[key] = tf.function(lambda b: tf.map_fn(lambda im: fit_image(im, size, channels, fit), b,
                                                        fn_output_signature=tf.float32), reduce_retracing=True)
    return _FITTERS[key](batch)


_FITTERS = {}
