"""Exporting a classifier for serving: TensorFlow SavedModel (in TensorFlow Serving's layout), TFLite (float32 /
float16 / int8) and ONNX.

Every export carries its input handling inside the graph — fitting to the model's input size (SavedModel and ONNX;
TFLite takes the model's size), the preprocessing the weights expect (``caffe``, ``torch``, ``tf`` or ``none``, see
:data:`kerasarch.weights.PREPROCESSING`) and a softmax where the model ends in logits — so a client sends images
and gets float32 probabilities back. The class names travel in ``labels.txt`` and ``kerasarch_export.json``
(SavedModel: ``assets.extra/``), and in the SavedModel's ``top5_classes`` output.

=========== ========================================================== ===========================================
format      input                                                      outputs
=========== ========================================================== ===========================================
saved_model ``serving_default``: ``image_bytes``, string ``[batch]``:  ``probabilities`` float32 ``[batch,
            encoded JPEG, PNG, GIF or BMP files of any sizes;          classes]``, ``top5_indices`` int32,
            ``predict_images``: ``images``, uint8 ``[batch, height,    ``top5_probabilities``, ``top5_classes``
            width, channels]``, 1-4 channels, any size; ``features``   string; ``features``: the tap
            (with ``tap``): as ``predict_images``
tflite      ``images``: uint8 ``[1, H, W, 3]`` at the model's size     ``probabilities`` float32 ``[1, classes]``
onnx        ``images``: uint8 ``[batch, height, width, 3]``, any size  ``probabilities``, ``top5_indices``
=========== ========================================================== ===========================================

A SavedModel is written as the version folder ``out/<version>/`` of model base ``out`` (TensorFlow Serving loads
the highest version and picks up new ones live), with TF Serving's warm-up requests in
``assets.extra/tf_serving_warmup_requests``; ``docs/serving.md`` shows how to serve it. Writing is atomic: the
export is built in a temporary folder beside its target and renamed into place, so a failure leaves nothing
behind; existing versions are never touched, and ``overwrite=True`` replaces only an earlier export (see
:func:`export_target`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Sequence

import numpy as np

from kerasarch.errors import KerasarchError

if TYPE_CHECKING:
    import keras

    from kerasarch.card import InputConfig

__all__ = [
    "export_model",
    "export_target",
    "prepare_model",
    "load_for_export",
    "serving_input",
    "ExportError",
    "FORMATS",
    "QUANTIZATIONS",
    "PRECISIONS",
    "SIGNATURES",
    "representative_images",
    "warmup_images",
]

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = (None, "float16", "int8")
PRECISIONS = ("float32", "bfloat16")
"""The SavedModel's compute precision: ``bfloat16`` runs the model in bfloat16 (bfloat16 kernels and activations;
batch-norm statistics and the classifier float32), for CPUs with AVX512-BF16 or AMX and GPUs/TPUs that have it."""


class ExportError(KerasarchError):
    """The export cannot be made as asked (the message says why, and what is allowed)."""


def _resolve_tap(model, tap):
    from kerasarch.card import card_of, has_card

    taps = {t: v["layer"] for t, v in card_of(model).taps.items()} if has_card(model) else {}
    names = {layer.name for layer in model.layers}
    if tap in taps:
        return taps[tap]
    if tap in names:
        return tap
    raise ExportError(
        f"Unknown tap {tap!r} for {model.name}: use a paper tap name ({', '.join(taps) or 'none'}) "
        f"or a layer name. Received: tap={tap!r}"
    )


def _run_file(source):
    """The ``.keras`` file a source names: the file itself, or ``model.keras`` in a training run folder."""
    from kerasarch.training.loop import run_model_file

    try:
        return run_model_file(source)
    except KerasarchError as e:
        raise ExportError(f"{e} Received: {os.fspath(source)!r}") from None


def load_for_export(
    source: str | os.PathLike, weights: str | os.PathLike | None = None, *, input_size: int | None = None
) -> keras.Model:
    """The model to export: a registry name built with ``weights`` (``input_size`` × ``input_size`` inputs when
    given), or a ``.keras`` file / training run folder loaded as saved, with its card."""
    import keras

    from kerasarch.registry import get_spec

    source = os.fspath(source)
    if source.lower().endswith(".keras") or os.path.isdir(source):
        path = _run_file(source)
        if weights is not None or input_size is not None:
            raise ExportError(
                f"--weights and --input-size apply to a registry name; {source!r} is a saved model. "
                f"Received: weights={weights!r}, input_size={input_size!r}"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Model file not found: {path!r}.")
        return keras.models.load_model(path, compile=False)
    spec = get_spec(source)
    kwargs = {"input_shape": (input_size, input_size, spec.input_shape[-1])} if input_size else {}
    return spec.build(weights=weights, **kwargs)


def serving_input(
    model: keras.Model,
    *,
    preprocessing: str | None = None,
    fit: str | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[InputConfig, Sequence[str] | None]:
    """``(InputConfig, class names)`` a served model applies: its card's, with each explicit option replacing
    the card's value (a warning names every option that contradicts the card). A model without a card (a
    ``.keras`` made outside kerasarch) needs ``preprocessing``; its fit is then ``fit`` or ``"resize"``."""
    import warnings

    from kerasarch.card import InputConfig, card_of, has_card

    shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    if not has_card(model):
        if preprocessing is None:
            raise ExportError(
                f"Model '{model.name}' has no kerasarch model card, so how its inputs are prepared is "
                f"unknown: state it with --preprocessing (preprocessing=) one of caffe, torch, tf, unit, "
                f"lecun, none, and optionally --fit (fit=) resize, pad, resize_crop or auto."
            )
        size = tuple(shape[1:3]) if None not in shape[1:3] else None
        resize = int(round(min(size) * 256 / 224)) if fit == "resize_crop" and size else None
        return InputConfig(
            preprocessing=preprocessing, size=size, channels=shape[-1], fit=fit or "resize", resize_size=resize
        ), class_names
    card = card_of(model)
    config = card.input.for_size(shape[1:3], shape[-1])
    names = card.class_names if class_names is None else class_names
    changes = {k: v for k, v in (("preprocessing", preprocessing), ("fit", fit)) if v is not None}
    clashes = [
        f"{k}={v!r} (the card says {getattr(config, k)!r})" for k, v in changes.items() if v != getattr(config, k)
    ]
    if class_names is not None and card.class_names is not None and list(class_names) != list(card.class_names):
        clashes.append("class_names (the card lists others)")
    if clashes:
        warnings.warn(f"Exporting '{model.name}' with {', '.join(clashes)}: the explicit options win.", stacklevel=3)
    if changes.get("fit") == "resize_crop" and not config.resize_size and config.size and None not in config.size:
        changes["resize_size"] = int(round(min(config.size) * 256 / 224))
    return config.replace(**changes), (list(names) if names is not None else None)


def prepare_model(
    name: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    *,
    preprocessing: str | None = None,
    class_names: Sequence[str] | None = None,
    input_size: int | None = None,
    fit: str | None = None,
) -> tuple[keras.Model, str, Sequence[str] | None]:
    """The model to export and what its inputs need: a registry name built with ``weights``, or a ``.keras`` file
    or training run folder as saved (see :func:`load_for_export`).

    Returns:
        ``(model, preprocessing, class_names)``, from the model's card (which records the weights' convention and
        classes); explicit ``preprocessing`` / ``fit`` / ``class_names`` win, with a warning when they contradict
        it, and are written on the returned model's card.
    """
    from kerasarch.card import ModelCard, card_of, has_card, with_card

    model = load_for_export(name, weights, input_size=input_size)
    config, names = serving_input(model, preprocessing=preprocessing, fit=fit, class_names=class_names)
    card = card_of(model) if has_card(model) else ModelCard()
    model = with_card(model, card.replace(input=config, class_names=names))
    return model, config.preprocessing, names


def _single_output(model):
    """The model without auxiliary heads (GoogLeNet's are discarded at inference); several outputs and no
    ``predictions`` among them cannot be served."""
    from kerasarch.classifier import MAIN_OUTPUT, strip_auxiliary

    if len(model.outputs) > 1 and MAIN_OUTPUT not in {layer.name for layer in model.layers}:
        raise ExportError(f"{model.name} has {len(model.outputs)} outputs; export needs one classifier output.")
    return strip_auxiliary(model)


# What an export folder may hold: a TFLite/ONNX export (marked by its metadata file) or a SavedModel.
_MARKER = "kerasarch_export.json"
_EXPORT_ENTRIES = frozenset({_MARKER, "labels.txt", "model.tflite", "model.onnx"})
_SAVED_MODEL_ENTRIES = frozenset(
    {
        "saved_model.pb",
        "saved_model.pbtxt",
        "variables",
        "assets",
        "assets.extra",
        "fingerprint.pb",
        "keras_metadata.pb",
    }
)
_TMP = ".kerasarch-tmp-"  # prefix of this module's temporary folders (TF Serving ignores non-numeric names)


def _is_export(path):
    """Whether folder ``path`` is recognisably an earlier export: a TFLite/ONNX export (its marker file and nothing
    but what export writes), a SavedModel (``saved_model.pb`` and nothing but SavedModel entries), or a model base
    whose entries are all numbered versions that are themselves exports."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    entries = set(os.listdir(path))
    if _MARKER in entries and entries <= _EXPORT_ENTRIES:
        return True
    if "saved_model.pb" in entries and entries <= _SAVED_MODEL_ENTRIES:
        return True
    return bool(entries) and all(e.isdigit() and _is_export(os.path.join(path, e)) for e in entries)


def _versions(base):
    """The numbered version folders under model base ``base`` (TF Serving's layout: ``base/<int>/``)."""
    return sorted(int(e) for e in os.listdir(base) if e.isdigit() and os.path.isdir(os.path.join(base, e)))


def _refuse_current_folder(out):
    cwd = os.path.realpath(os.getcwd())
    real = os.path.realpath(out)
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise ExportError(
            f"Refusing to replace {out}: it is the current folder or contains it. Choose another "
            f"--out. Received: out={out!r}"
        )


def export_target(
    out: str | os.PathLike, *, format: str = "saved_model", version: int | None = None, overwrite: bool = False
) -> str:
    """Where :func:`export_model` will write, after checking that nothing but an earlier export gets replaced.

    SavedModel: the version folder ``out/<version>/`` (TensorFlow Serving's layout; ``out`` is the model base
    path), ``version`` defaulting to one more than the highest present. An existing version is replaced only
    with ``overwrite`` and only if it is an export. ``out`` may be new, empty, or a model base (numbered folders
    only); an export in the flat layout (``saved_model.pb`` at the top) is replaced by the new layout with
    ``overwrite``. TFLite and ONNX: ``out`` itself, replaced only with ``overwrite`` and only if it is an export.

    Raises:
        FileExistsError: the target exists and ``overwrite`` is false.
        ExportError: the target holds something that is not an earlier export, or ``version`` is not a positive
            integer.
    """
    out = os.path.abspath(os.fspath(out))
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1):
        raise ExportError(
            f"`version` must be a positive integer (TF Serving's version folder). Received: version={version!r}"
        )
    if version is not None and format != "saved_model":
        raise ExportError(
            f"`version` applies to SavedModel exports only. Received: format={format!r}, version={version!r}"
        )
    if os.path.lexists(out) and not os.path.isdir(out):
        raise ExportError(f"{out} exists and is not a folder; choose another --out. Received: out={out!r}")
    if format != "saved_model":
        if os.path.lexists(out):
            if not overwrite:
                raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace an earlier export.")
            _refuse_current_folder(out)
            if not _is_export(out):
                raise ExportError(
                    f"{out} is not an earlier export (no {_MARKER} or SavedModel layout); --overwrite "
                    f"replaces only exports. Nothing was changed; choose another --out."
                )
        return out
    if not os.path.lexists(out):
        return os.path.join(out, str(int(version or 1)))
    entries = [e for e in os.listdir(out) if not e.startswith(_TMP)]
    if "saved_model.pb" in entries:  # an export in the flat layout (before version folders)
        if overwrite and not _is_export(out):
            raise ExportError(
                f"{out} holds saved_model.pb beside other files, so it is not recognisably an earlier "
                f"export; --overwrite replaces only exports. Nothing was changed; choose another --out."
            )
        if not overwrite:
            raise FileExistsError(
                f"{out} holds a SavedModel at its top (the flat layout); TF Serving needs "
                f"numbered version folders. Pass overwrite=True (--overwrite) to replace it with "
                f"{os.path.join(out, str(int(version or 1)))}, or choose another --out."
            )
        _refuse_current_folder(out)
        return os.path.join(out, str(int(version or 1)))
    other = sorted(e for e in entries if not (e.isdigit() and os.path.isdir(os.path.join(out, e))))
    if other:
        raise ExportError(
            f"{out} is not a model base folder: besides numbered version folders it holds "
            f"{', '.join(other[:5])}{', …' if len(other) > 5 else ''}. Choose a new or empty --out."
        )
    present = _versions(out)
    version = int(version) if version is not None else (present[-1] + 1 if present else 1)
    target = os.path.join(out, str(version))
    if version in present:
        if not overwrite:
            raise FileExistsError(
                f"{target} exists; pass overwrite=True (--overwrite) to replace it, or leave "
                f"--version out to write version {present[-1] + 1}."
            )
        if not _is_export(target):
            raise ExportError(
                f"{target} is not an earlier export (no SavedModel layout); --overwrite replaces only "
                f"exports. Nothing was changed."
            )
    return target


@contextlib.contextmanager
def _atomic_directory(target, replace_parent=None):
    """Yields a temporary folder that becomes ``target`` on success (renamed into place; an earlier export there
    is replaced only after the new one is complete) and is removed on failure. Folders get the umask's mode
    (``mkdtemp`` alone would make them 0700, unreadable to a serving container under another user).

    ``replace_parent``: a flat-layout export at ``target``'s parent, replaced by a model base holding ``target``.
    """
    from kerasarch.fileio import current_umask

    swap = replace_parent or target
    parent = os.path.dirname(swap)
    created = not os.path.lexists(parent)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_TMP, dir=parent)
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        if replace_parent:
            build = os.path.join(tmp, os.path.basename(target))
            os.mkdir(build)
        else:
            build = tmp
        yield build
        old = None
        if os.path.lexists(swap):
            old = tmp + ".old"
            os.rename(swap, old)
        os.rename(tmp, swap)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:  # the model base folder made for this export, left empty
            with contextlib.suppress(OSError):
                os.rmdir(parent)
        raise


def representative_images(size: int, count: int = 32, seed: int = 0) -> np.ndarray:
    """``count`` real uint8 RGB images of ``size`` × ``size``: scikit-learn's 8×8 digits, upscaled and tinted per
    channel (offline calibration data for int8; real deployments should calibrate on their own images)."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits().images.astype("float32")  # 0..16
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(digits), size=count, replace=False)
    x = tf.image.resize(digits[idx][..., None] / 16.0, (size, size), method="bilinear").numpy()
    tint = rng.uniform(0.3, 1.0, size=(count, 1, 1, 3)).astype("float32")
    background = rng.uniform(0.0, 0.4, size=(count, 1, 1, 3)).astype("float32")
    rgb = background + (1.0 - background) * x * tint
    return np.clip(np.round(rgb * 255.0), 0, 255).astype("uint8")


def _bfloat16_model(model):
    """A copy of ``model`` on the same weights computing in bfloat16, with the layers from its classifier on kept
    float32 (as kerasarch builds models under mixed precision). Convolution and dense weights are stored in
    bfloat16 (Keras' ``bfloat16`` policy): under ``mixed_bfloat16`` every request would cast all float32 kernels,
    which halves the gain at batch 1 (ResNet-50 on a 2-core AMX CPU: 21 against 14 images per CPU-second, float32
    12). Batch normalisation keeps its statistics in float32 (``mixed_bfloat16``)."""
    import keras

    last = max(i for i, layer in enumerate(model.layers) if layer.weights)
    keep = {layer.name for layer in model.layers[last:]}

    def clone(layer):
        config = layer.get_config()
        if layer.name not in keep and not isinstance(layer, keras.layers.InputLayer):
            normalization = isinstance(layer, keras.layers.BatchNormalization)
            config["dtype"] = "mixed_bfloat16" if normalization else "bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


class _Serving:
    """The graph pieces shared by every format."""

    def __init__(self, model, config, class_names, tap_layer=None):
        import keras

        from kerasarch.classifier import ends_in_softmax

        self.model = model
        self.config = config  # the kerasarch.card.InputConfig the served images are fitted and preprocessed with
        self.size = tuple(int(s) for s in model.input_shape[1:3]) if None not in model.input_shape[1:3] else None
        self.channels = model.input_shape[-1]
        if self.channels not in (1, 3):
            raise ExportError(f"{model.name} takes {self.channels} channels; export serves RGB (3) or grey (1).")
        self.preprocessing = config.preprocessing
        self.softmax = not ends_in_softmax(model)
        self.classes = int(model.outputs[0].shape[-1])
        self.class_names = list(class_names) if class_names is not None else None
        self.k = min(5, self.classes)
        self.tap_model = None
        if tap_layer is not None:
            self.tap_model = keras.Model(model.inputs, model.get_layer(tap_layer).output, name=f"{model.name}_tap")

    def inputs(self, images):
        """Images of any size, grey or RGB → the model's input, exactly as the library prepares them
        (:func:`kerasarch.preprocessing.prepare_images` with the card's input convention)."""
        from kerasarch.preprocessing import prepare_images

        return prepare_images(images, self.config)

    def checked(self, images):
        """A batch of uint8 pixels with 1 (grey), 2 (grey + alpha: alpha dropped), 3 (RGB) or 4 (RGBA) channels,
        checked: a clear InvalidArgument error for a batch of 0 images, an image of 0 pixels or another channel
        count. :meth:`inputs` converts the channels to the model's."""
        import tensorflow as tf

        shape = tf.shape(images)
        checks = [
            tf.debugging.Assert(shape[0] > 0, ["The request holds no images (a batch of 0); send at least one."]),
            tf.debugging.Assert(
                shape[1] * shape[2] > 0,
                [tf.strings.format("Images must have at least one pixel. Received: images of shape {}", shape)],
            ),
            tf.debugging.Assert(
                (shape[3] >= 1) & (shape[3] <= 4),
                [
                    tf.strings.format(
                        "Images must have 1, 2, 3 or 4 channels (grey, grey + alpha, RGB, RGBA). Received: {} channels",
                        shape[3],
                    )
                ],
            ),
        ]
        with tf.control_dependencies(checks):
            images = tf.identity(images)
        return tf.cond(tf.equal(shape[3], 2), lambda: images[..., :1], lambda: images)

    def decode(self, image_bytes):
        """A batch of encoded images (JPEG, PNG, GIF or BMP, any sizes) → the model's input batch: each image
        decoded with the model's channels as the library reads image files, fitted and preprocessed by
        :meth:`inputs` on its own, then stacked. Images that cannot be decoded give one InvalidArgument error
        naming them (their positions in the request and their sizes in bytes)."""
        import tensorflow as tf

        from kerasarch.data.directory import decode_image

        n = tf.size(image_bytes)
        tf.debugging.Assert(n > 0, ["The request holds no images (a batch of 0); send at least one."])

        def which_decode():
            # A tf.data pass that drops failures (a graph cannot catch an error otherwise): ~10 ms a request.
            decoded = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes))
            decoded = decoded.map(lambda i, s: (i, tf.shape(decode_image(s, self.channels))[0])).ignore_errors()
            return decoded.reduce(
                tf.zeros([n], tf.bool), lambda ok, element: tf.tensor_scatter_nd_update(ok, [[element[0]]], [True])
            )

        # Requests of whole JPEG/PNG/GIF files (header and end marker in place) skip that pass; anything else (BMP,
        # truncated files, files with bytes after their end marker, non-images) is checked image by image.
        ok = tf.cond(tf.reduce_all(_looks_whole(image_bytes)), lambda: tf.ones([n], tf.bool), which_decode)
        bad = tf.where(~ok)[:, 0]
        sizes = tf.strings.length(tf.gather(image_bytes, bad))
        check = tf.debugging.Assert(
            tf.reduce_all(ok),
            [
                tf.strings.format(
                    "Could not decode image(s) {} of the request (positions from 0; sizes in bytes {}): "
                    "expected JPEG, PNG, GIF or BMP files (over REST, base64-encoded in a b64 object).",
                    (bad, sizes),
                )
            ],
        )
        with tf.control_dependencies([check]):
            image_bytes = tf.identity(image_bytes)
        shape = (*self.size, self.channels) if self.size is not None else (None, None, self.channels)
        return tf.map_fn(
            lambda s: self.inputs(decode_image(s, self.channels)[None])[0],
            image_bytes,
            fn_output_signature=tf.TensorSpec(shape, tf.float32),
        )

    def predict(self, x):
        """Probabilities (float32) for a batch of model inputs."""
        import tensorflow as tf

        y = tf.cast(self.model(x, training=False), tf.float32)
        return tf.nn.softmax(y, axis=-1) if self.softmax else y

    def probabilities(self, images):
        return self.predict(self.inputs(images))

    def report(self, p, names=True):
        """The outputs of a classification signature, from probabilities ``p``."""
        import tensorflow as tf

        top = tf.math.top_k(p, k=self.k)
        out = {"probabilities": p, "top5_indices": top.indices, "top5_probabilities": top.values}
        if names:
            labels = self.class_names or [str(i) for i in range(self.classes)]
            out["top5_classes"] = tf.gather(tf.constant(labels), top.indices)
        return out

    def outputs(self, images, names=True):
        return self.report(self.probabilities(images), names)

    def serve_encoded(self, image_bytes):
        return self.report(self.predict(self.decode(image_bytes)))

    def serve_images(self, images):
        return self.outputs(self.checked(images))

    def features(self, images):
        import tensorflow as tf

        x = self.inputs(self.checked(images))
        return {"features": tf.cast(self.tap_model(x, training=False), tf.float32)}


def _looks_whole(image_bytes):
    """Per encoded image: whether it has a JPEG, PNG or GIF signature and that format's end marker (JPEG's EOI,
    PNG's IEND chunk, GIF's trailer) as its last bytes, i.e. it is not truncated."""
    import tensorflow as tf

    length = tf.strings.length(image_bytes)

    def between(heads, tail):
        start = tf.strings.substr(image_bytes, 0, len(heads[0]))
        end = tf.strings.substr(image_bytes, tf.maximum(length - len(tail), 0), tf.fill(tf.shape(length), len(tail)))
        head = tf.reduce_any(tf.stack([tf.equal(start, h) for h in heads]), axis=0)
        return head & tf.equal(end, tail) & (length > len(heads[0]) + len(tail))

    jpeg = between([b"\xff\xd8\xff"], b"\xff\xd9")
    png = between([b"\x89PNG\r\n\x1a\n"], b"IEND\xaeB`\x82")
    gif = between([b"GIF87a", b"GIF89a"], b";")
    return jpeg | png | gif


def _write_metadata(folder, serving, fmt, quantize, tap, tap_layer, extra=None):
    os.makedirs(folder, exist_ok=True)
    meta = {
        "model": serving.model.name,
        "format": fmt,
        "quantize": quantize,
        "preprocessing": serving.preprocessing,
        "input_size": list(serving.size) if serving.size else None,
        "classes": serving.classes,
        "softmax_added": serving.softmax,
        "tap": tap,
        "tap_layer": tap_layer,
        "class_names": serving.class_names,
        **(extra or {}),
    }
    with open(os.path.join(folder, "kerasarch_export.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        labels = serving.class_names or [str(i) for i in range(serving.classes)]
        f.write("\n".join(labels) + "\n")


SIGNATURES = {"serving_default": "image_bytes", "predict_images": "images", "features": "images"}
"""Each SavedModel signature and its input: ``serving_default`` takes encoded images, ``predict_images`` and the
optional ``features`` (a feature tap) take uint8 pixels."""
_WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")


def _export_saved_model(serving, folder):
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(serving.model)
    encoded = [tf.TensorSpec([None], tf.string, name=SIGNATURES["serving_default"])]
    pixels = [tf.TensorSpec([None, None, None, None], tf.uint8, name=SIGNATURES["predict_images"])]
    archive.add_endpoint(name="serving_default", fn=serving.serve_encoded, input_signature=encoded)
    archive.add_endpoint(name="predict_images", fn=serving.serve_images, input_signature=pixels)
    if serving.tap_model is not None:
        archive.add_endpoint(name="features", fn=serving.features, input_signature=pixels)
    archive.write_out(folder, verbose=False)


def warmup_images(size: int | None = None) -> list[bytes]:
    """A few real images, encoded as a client sends them: a photograph (scikit-learn's sample ``china.jpg``,
    scaled to 240 pixels high) as JPEG, and two of scikit-learn's 8×8 digits (upscaled and tinted by
    :func:`representative_images`) as PNG, grey and RGB. Returns a list of ``bytes``."""
    import tensorflow as tf
    from sklearn.datasets import load_sample_images

    photo = load_sample_images().images[0]
    photo = tf.cast(tf.round(tf.image.resize(photo, (240, 359), antialias=True)), tf.uint8)
    digits = representative_images(size or 64, 2)
    grey = tf.image.rgb_to_grayscale(digits[1])
    return [
        tf.io.encode_jpeg(photo, quality=90).numpy(),
        tf.io.encode_png(digits[0]).numpy(),
        tf.io.encode_png(grey).numpy(),
    ]


def _write_warmup(folder, serving):
    """TensorFlow Serving's warm-up file (``assets.extra/tf_serving_warmup_requests``): a TFRecord of
    ``PredictionLog`` messages that the server replays when it loads the version, so that the first client
    request does not pay for graph initialisation. Each signature gets requests of one and of several images."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    encoded = warmup_images(max(serving.size) if serving.size else None)
    pixels = representative_images(serving.size[0] if serving.size else 64, 2)
    if serving.size is not None and serving.size[0] != serving.size[1]:
        pixels = tf.cast(tf.round(tf.image.resize(pixels, serving.size)), tf.uint8).numpy()
    requests = [
        ("serving_default", encoded[:1]),
        ("serving_default", encoded),
        ("predict_images", pixels[:1]),
        ("predict_images", pixels),
    ]
    if serving.tap_model is not None:
        requests.append(("features", pixels[:1]))
    os.makedirs(os.path.join(folder, "assets.extra"), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(folder, _WARMUP)) as writer:
        for signature, value in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            request.inputs[SIGNATURES[signature]].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def _fixed_size(serving):
    if serving.size is None:
        raise ExportError(
            f"{serving.model.name} has no fixed input size; build it with input_shape=(H, W, 3) to export TFLite."
        )
    return serving.size


def _export_tflite(serving, folder, quantize, calibration=None):
    import keras
    import tensorflow as tf

    h, w = _fixed_size(serving)
    if quantize == "int8":
        # The int8 graph reads float pixels and the converter makes its input uint8: calibrated on [0, 255]
        # (see below), its input scale is 1 and zero point 0, so it takes the same uint8 pixels as the float graphs.
        dtype = tf.float32
    else:
        dtype = tf.uint8

    def fn(images):
        return {"probabilities": serving.probabilities(images)}

    # Converting from a SavedModel freezes the variables into the flatbuffer (a concrete function with a tracked
    # model keeps them as resource variables with no values).
    source = os.path.join(folder, "_saved_model_for_tflite")
    archive = keras.export.ExportArchive()
    archive.track(serving.model)
    archive.add_endpoint(
        name="serving_default", fn=fn, input_signature=[tf.TensorSpec([1, h, w, 3], dtype, name="images")]
    )
    archive.write_out(source, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(source, signature_keys=["serving_default"])
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        images = calibration if calibration is not None else representative_images(h)
        images = tf.image.resize(tf.cast(images, tf.float32), (h, w)).numpy()
        # One black and one white image pin the input range to exactly [0, 255]: uint8 input == pixel values.
        images = np.concatenate([images, np.zeros((1, h, w, 3), "float32"), np.full((1, h, w, 3), 255.0, "float32")])

        def dataset():
            for img in images:
                yield [img[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
    flatbuffer = converter.convert()
    shutil.rmtree(source)
    with open(os.path.join(folder, "model.tflite"), "wb") as f:
        f.write(flatbuffer)


_ONNX_ANTIALIAS_MODES = {"triangle": {"mode": "linear"}, "keyscubic": {"mode": "cubic", "cubic_coeff_a": -0.5}}


def _onnx_antialiased_resize(ctx, node, name, args):
    """tf2onnx handler: TensorFlow's antialiased resize (``ScaleAndTranslate``, which tf2onnx does not convert)
    as ONNX ``Resize`` (opset 18) with ``antialias=1`` on the height and width axes. ``exclude_outside=1``
    renormalises the filter at the borders as TensorFlow does (measured equal within 0.01 of 255, up and down)."""
    from onnx import TensorProto

    kernel = node.get_attr_value("kernel_type")
    kernel = kernel.decode() if isinstance(kernel, bytes) else kernel
    if kernel not in _ONNX_ANTIALIAS_MODES:
        raise ExportError(
            f"ONNX has no antialiased {kernel!r} resize; export with interpolation bilinear or bicubic. "
            f"Received: kernel_type={kernel!r}"
        )
    sizes = ctx.make_node("Cast", [node.input[1]], attr={"to": TensorProto.INT64}).output[0]
    for key in list(node.attr):
        del node.attr[key]
    ctx.replace_inputs(node, [node.input[0], "", "", sizes])
    node.type = "Resize"
    attrs = {"antialias": 1, "exclude_outside": 1, "coordinate_transformation_mode": "half_pixel", "axes": [1, 2]}
    for key, value in {**attrs, **_ONNX_ANTIALIAS_MODES[kernel]}.items():
        node.set_attr(key, value)


def _export_onnx(serving, folder, opset=18):
    try:
        import tf2onnx
    except ImportError as e:
        raise ExportError("ONNX export needs tf2onnx: pip install -e .[export]") from e
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def fn(images):
        out = serving.outputs(images, names=False)
        return {"probabilities": out["probabilities"], "top5_indices": out["top5_indices"]}

    tf2onnx.convert.from_function(
        fn,
        input_signature=fn.input_signature,
        opset=opset,
        custom_op_handlers={"ScaleAndTranslate": (_onnx_antialiased_resize, [])},
        output_path=os.path.join(folder, "model.onnx"),
    )


def export_model(
    model: keras.Model,
    out: str | os.PathLike,
    *,
    format: str = "saved_model",
    tap: str | None = None,
    overwrite: bool = False,
    quantize: str | None = None,
    preprocessing: str | None = None,
    class_names: Sequence[str] | None = None,
    calibration_images: np.ndarray | None = None,
    version: int | None = None,
    warmup: bool = True,
    fit: str | None = None,
    precision: str = "float32",
) -> str:
    """Exports a classifier for serving (see the module docstring for each format's inputs and outputs).

    Args:
        model: a kerasarch ``keras.Model`` (GoogLeNet auxiliary heads are stripped; mixed-precision models are fine,
            outputs are cast to float32).
        out: SavedModel: the model base folder, which receives the version folder ``out/<version>/`` (TensorFlow
            Serving's layout); TFLite and ONNX: the export folder. See :func:`export_target` for what may be
            replaced.
        format: ``"saved_model"``, ``"tflite"`` or ``"onnx"``.
        tap: a feature tap (paper name such as ``"fc7"``, or a layer name) exported as the SavedModel signature
            ``features``.
        overwrite: replace an earlier export at the target (never anything else).
        quantize: TFLite only: ``None`` (float32), ``"float16"`` or ``"int8"`` (full-integer, calibrated on
            ``calibration_images``, default :func:`representative_images`).
        preprocessing: the pixel convention (default: the model card's; required for a model without a card).
        class_names: labels of the classifier's outputs (default: the card's, else indices).
        calibration_images: uint8 ``[N, H, W, 3]`` images for int8 calibration.
        version: SavedModel only: the version folder's number (default: one more than the highest present).
        warmup: SavedModel only: write TF Serving's warm-up requests (``assets.extra/tf_serving_warmup_requests``).
        fit: how images are fitted to the input (default: the card's; see :class:`kerasarch.card.InputConfig`).
            An explicit ``preprocessing``, ``fit`` or ``class_names`` that contradicts the card warns and wins.
        precision: SavedModel only: ``"float32"`` or ``"bfloat16"`` (the model's convolutions compute and store
            their weights in bfloat16; fitting, preprocessing, batch-norm statistics and the classifier stay float32).
            On a CPU with AVX512-BF16/AMX it serves faster; check its top-1 against float32 on your own images.

    Returns:
        The absolute path of the export folder (for a SavedModel, the version folder).

    TensorFlow backend only (every format is converted from a TensorFlow graph): raises a ``RuntimeError`` under
    another ``KERAS_BACKEND``.
    """
    from kerasarch.keras_compat import require_tensorflow

    require_tensorflow("kerasarch.export.export_model()")
    if format not in FORMATS:
        raise ExportError(f"`format` must be one of {', '.join(FORMATS)}. Received: format={format!r}")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"`quantize` must be None, 'float16' or 'int8'. Received: quantize={quantize!r}")
    if quantize is not None and format != "tflite":
        raise ExportError(f"`quantize` applies to TFLite only. Received: format={format!r}, quantize={quantize!r}")
    if precision not in PRECISIONS:
        raise ExportError(f"`precision` must be one of {', '.join(PRECISIONS)}. Received: precision={precision!r}")
    if precision != "float32" and format != "saved_model":
        raise ExportError(
            f"`precision` applies to SavedModel only (TFLite: see `quantize`). Received: format={format!r}, "
            f"precision={precision!r}"
        )
    if tap is not None and format != "saved_model":
        raise ExportError(f"`tap` adds a SavedModel signature; it does not apply to {format}. Received: tap={tap!r}")
    out = os.path.abspath(os.fspath(out))
    target = export_target(out, format=format, version=version, overwrite=overwrite)
    flat = os.path.dirname(target) if target != out and os.path.lexists(os.path.join(out, "saved_model.pb")) else None
    model = _single_output(model)
    config, class_names = serving_input(model, preprocessing=preprocessing, fit=fit, class_names=class_names)
    tap_layer = _resolve_tap(model, tap) if tap is not None else None
    if class_names is not None and len(class_names) != int(model.outputs[0].shape[-1]):
        raise ExportError(f"{len(class_names)} class names for {model.outputs[0].shape[-1]} outputs.")
    serving = _Serving(_bfloat16_model(model) if precision == "bfloat16" else model, config, class_names, tap_layer)
    with _atomic_directory(target, replace_parent=flat) as tmp:
        if format == "saved_model":
            _export_saved_model(serving, tmp)
            signatures = {
                name: SIGNATURES[name]
                for name in ("serving_default", "predict_images") + (("features",) if tap else ())
            }
            _write_metadata(
                os.path.join(tmp, "assets.extra"),
                serving,
                format,
                quantize,
                tap,
                tap_layer,
                {
                    "signatures": signatures,
                    "version": int(os.path.basename(target)),
                    "warmup": warmup,
                    "precision": precision,
                },
            )
            if warmup:
                _write_warmup(tmp, serving)
        elif format == "tflite":
            _export_tflite(serving, tmp, quantize, calibration_images)
            _write_metadata(tmp, serving, format, quantize, tap, tap_layer)
        else:
            _export_onnx(serving, tmp)
            _write_metadata(tmp, serving, format, quantize, tap, tap_layer)
    return target
