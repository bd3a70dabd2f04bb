"""Exporting a classifier for serving: TensorFlow SavedModel, TFLite (float32 / float16 / int8) and ONNX.

Every export carries its input handling inside the graph — resize to the model's input size (SavedModel and ONNX;
TFLite takes the model's size), the preprocessing the weights expect (``caffe``, ``torch``, ``tf`` or ``none``, see
:data:`kerasarch.weights.PREPROCESSING`) and a softmax where the model ends in logits — so a client sends RGB pixels
and gets float32 probabilities back. The class names travel in ``labels.txt`` and ``kerasarch_export.json``
(SavedModel: ``assets.extra/``), and in the SavedModel's ``top5_classes`` output.

=========== ====================================================== ===============================================
format      input                                                  outputs
=========== ====================================================== ===============================================
saved_model ``images``: uint8 ``[batch, height, width, 3]``, any   ``probabilities`` float32 ``[batch, classes]``,
            size (``serving_default``; ``features`` for ``tap``)   ``top5_indices`` int32, ``top5_probabilities``,
                                                                   ``top5_classes`` string; ``features``: the tap
tflite      ``images``: uint8 ``[1, H, W, 3]`` at the model's size ``probabilities`` float32 ``[1, classes]``
onnx        ``images``: uint8 ``[batch, height, width, 3]``, any   ``probabilities``, ``top5_indices``
            size
=========== ====================================================== ===============================================

Writing is atomic: the export is built in a temporary directory beside ``out`` and renamed into place, so a
failure leaves nothing behind, and an existing ``out`` is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import numpy as np

__all__ = ["export_model", "prepare_model", "ExportError", "FORMATS", "QUANTIZATIONS", "preprocess_images",
           "representative_images"]

FORMATS = ("saved_model", "tflite", "onnx")
QUANTIZATIONS = (None, "float16", "int8")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


class ExportError(ValueError):
    """The export cannot be made as asked (the message says why, and what is allowed)."""


def preprocess_images(x, mode):
    """Applies preprocessing ``mode`` to float32 RGB pixels in [0, 255] (TensorFlow ops; numpy arrays work too)."""
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    if mode == "caffe":
        return x[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR, tf.float32)
    if mode == "torch":
        return (x / 255.0 - tf.constant(_TORCH_MEAN, tf.float32)) / tf.constant(_TORCH_STD, tf.float32)
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "none":
        return x
    raise ExportError(f"Unknown preprocessing {mode!r}: expected 'caffe', 'torch', 'tf' or 'none'.")


def _ends_in_softmax(model):
    """Whether the model's (single) output already is a softmax: found walking back through weight-free layers."""
    import keras

    tensor = model.outputs[0]
    while True:
        layer = tensor._keras_history.operation
        activation = getattr(layer, "activation", None)
        if activation is not None:
            return getattr(activation, "__name__", "") == "softmax" or activation is keras.activations.softmax
        if layer.weights or not layer._inbound_nodes or len(layer._inbound_nodes[0].input_tensors) != 1:
            return False
        tensor = layer._inbound_nodes[0].input_tensors[0]


def _resolve_tap(model, spec, tap):
    names = {layer.name for layer in model.layers}
    if spec is not None and tap in spec.taps:
        return spec.taps[tap]
    if tap in names:
        return tap
    known = sorted(spec.taps) if spec is not None else []
    raise ExportError(f"Unknown tap {tap!r} for {model.name}: use a paper tap name ({', '.join(known) or 'none'}) "
                      f"or a layer name. Received: tap={tap!r}")


def _spec_of(model):
    from kerasarch.registry import get_spec

    try:
        return get_spec(model.name)
    except ValueError:
        return None


def prepare_model(name, weights=None, *, preprocessing=None, class_names=None, input_size=None):
    """Builds registry model ``name`` with ``weights`` for export and works out what the weights expect.

    ``input_size`` (an int) builds the model for ``input_size`` × ``input_size`` inputs instead of its default.

    Returns:
        ``(model, preprocessing, class_names)``. Preprocessing: the argument, else the weights table's entry for
        ``"imagenet"`` or for a file named like a published checkpoint (``vgg16-397923af.pth``), else for another
        ``.pth``/``.safetensors`` file the model's torchvision entry, else the model's spec. Class names: the
        argument, else ImageNet's where the weights are a published 1,000-class checkpoint, else ``None``.
    """
    from kerasarch.registry import get_spec
    from kerasarch.weights import WEIGHTS, imagenet_class_names, weights_for

    spec = get_spec(name)
    info, labelled = None, False
    entries = WEIGHTS.get(spec.name, ())
    if isinstance(weights, str) and weights.split(":", 1)[0] == "imagenet":
        info, labelled = weights_for(spec.name, weights.split(":", 1)[1] if ":" in weights else None), True
    elif isinstance(weights, (str, os.PathLike)):
        base = os.path.basename(os.fspath(weights))
        named = [i for i in entries for j in (i, i.notop) if j is not None and j.file_name == base]
        torch_like = base.lower().endswith((".pth", ".pt", ".safetensors"))
        torch_entries = [i for i in entries if i.format == "torch_pth"] if torch_like else []
        info, labelled = (named[0], True) if named else ((torch_entries[0], False) if torch_entries else (None, False))
    kwargs = {"input_shape": (input_size, input_size, spec.input_shape[-1])} if input_size else {}
    model = spec.build(weights=weights, **kwargs)
    preprocessing = preprocessing or (info.preprocessing if info else spec.preprocessing)
    if class_names is None and labelled and info.class_names == "imagenet1k" and model.outputs[0].shape[-1] == 1000:
        class_names = imagenet_class_names()
    return model, preprocessing, class_names


def _single_output(model, spec):
    if len(model.outputs) == 1:
        return model
    if spec is not None and spec.family == "googlenet":
        from kerasarch.applications.googlenet import strip_auxiliary

        return strip_auxiliary(model)
    raise ExportError(f"{model.name} has {len(model.outputs)} outputs; export needs one classifier output.")


@contextlib.contextmanager
def _atomic_directory(out, overwrite):
    out = os.path.abspath(os.fspath(out))
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it.")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.lexists(out):
            old = tmp + ".old"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def representative_images(size, count=32, seed=0):
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


class _Serving:
    """The graph pieces shared by every format."""

    def __init__(self, model, preprocessing, class_names, tap_layer=None):
        import keras

        self.model = model
        self.size = tuple(int(s) for s in model.input_shape[1:3]) if None not in model.input_shape[1:3] else None
        self.channels = model.input_shape[-1]
        if self.channels not in (1, 3):
            raise ExportError(f"{model.name} takes {self.channels} channels; export serves RGB (3) or grey (1).")
        self.preprocessing = preprocessing
        self.softmax = not _ends_in_softmax(model)
        self.classes = int(model.outputs[0].shape[-1])
        self.class_names = list(class_names) if class_names is not None else None
        self.k = min(5, self.classes)
        self.tap_model = None
        if tap_layer is not None:
            self.tap_model = keras.Model(model.inputs, model.get_layer(tap_layer).output, name=f"{model.name}_tap")

    def inputs(self, images):
        import tensorflow as tf

        x = tf.cast(images, tf.float32)
        if self.size is not None:
            x = tf.image.resize(x, self.size, method="bilinear")
        if self.channels == 1:  # grey-scale models (LeNet) take RGB and convert
            x = tf.image.rgb_to_grayscale(x)
        return preprocess_images(x, self.preprocessing)

    def probabilities(self, images):
        import tensorflow as tf

        y = tf.cast(self.model(self.inputs(images), training=False), tf.float32)
        return tf.nn.softmax(y, axis=-1) if self.softmax else y

    def outputs(self, images, names=True):
        import tensorflow as tf

        p = self.probabilities(images)
        top = tf.math.top_k(p, k=self.k)
        out = {"probabilities": p, "top5_indices": top.indices, "top5_probabilities": top.values}
        if names:
            labels = self.class_names or [str(i) for i in range(self.classes)]
            out["top5_classes"] = tf.gather(tf.constant(labels), top.indices)
        return out

    def features(self, images):
        import tensorflow as tf

        return {"features": tf.cast(self.tap_model(self.inputs(images), training=False), tf.float32)}


def _write_metadata(folder, serving, fmt, quantize, tap, tap_layer, extra=None):
    os.makedirs(folder, exist_ok=True)
    meta = {"model": serving.model.name, "format": fmt, "quantize": quantize, "preprocessing": serving.preprocessing,
            "input_size": list(serving.size) if serving.size else None, "classes": serving.classes,
            "softmax_added": serving.softmax, "tap": tap, "tap_layer": tap_layer,
            "class_names": serving.class_names, **(extra or {})}
    with open(os.path.join(folder, "kerasarch_export.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        labels = serving.class_names or [str(i) for i in range(serving.classes)]
        f.write("\n".join(labels) + "\n")


def _export_saved_model(serving, folder):
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(serving.model)
    spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    archive.add_endpoint(name="serving_default", fn=serving.outputs, input_signature=spec)
    if serving.tap_model is not None:
        archive.add_endpoint(name="features", fn=serving.features, input_signature=spec)
    archive.write_out(folder, verbose=False)


def _fixed_size(serving):
    if serving.size is None:
        raise ExportError(f"{serving.model.name} has no fixed input size; build it with input_shape=(H, W, 3) "
                          f"to export TFLite.")
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
    archive.add_endpoint(name="serving_default", fn=fn,
                         input_signature=[tf.TensorSpec([1, h, w, 3], dtype, name="images")])
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


def _export_onnx(serving, folder, opset=17):
    try:
        import tf2onnx
    except ImportError as e:
        raise ExportError("ONNX export needs tf2onnx: pip install -e .[export]") from e
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def fn(images):
        out = serving.outputs(images, names=False)
        return {"probabilities": out["probabilities"], "top5_indices": out["top5_indices"]}

    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset,
                                  output_path=os.path.join(folder, "model.onnx"))


def export_model(model, out, *, format="saved_model", tap=None, overwrite=False, quantize=None,
                 preprocessing=None, class_names=None, calibration_images=None):
    """Exports a classifier for serving (see the module docstring for each format's inputs and outputs).

    Args:
        model: a kerasarch ``keras.Model`` (GoogLeNet auxiliary heads are stripped; mixed-precision models are fine,
            outputs are cast to float32).
        out: the export directory (created; replaced only with ``overwrite``).
        format: ``"saved_model"``, ``"tflite"`` or ``"onnx"``.
        tap: a feature tap (paper name such as ``"fc7"``, or a layer name) exported as the SavedModel signature
            ``features``.
        overwrite: replace an existing ``out``.
        quantize: TFLite only: ``None`` (float32), ``"float16"`` or ``"int8"`` (full-integer, calibrated on
            ``calibration_images``, default :func:`representative_images`).
        preprocessing: the input convention (default: the model's spec).
        class_names: labels of the classifier's outputs (default: indices).
        calibration_images: uint8 ``[N, H, W, 3]`` images for int8 calibration.

    Returns:
        The absolute path of the export directory.
    """
    if format not in FORMATS:
        raise ExportError(f"`format` must be one of {', '.join(FORMATS)}. Received: format={format!r}")
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"`quantize` must be None, 'float16' or 'int8'. Received: quantize={quantize!r}")
    if quantize is not None and format != "tflite":
        raise ExportError(f"`quantize` applies to TFLite only. Received: format={format!r}, quantize={quantize!r}")
    if tap is not None and format != "saved_model":
        raise ExportError(f"`tap` adds a SavedModel signature; it does not apply to {format}. Received: tap={tap!r}")
    out = os.path.abspath(os.fspath(out))
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it.")
    spec = _spec_of(model)
    model = _single_output(model, spec)
    preprocessing = preprocessing or (spec.preprocessing if spec is not None else "none")
    preprocess_images(np.zeros((1, 1, 1, 3), "float32"), preprocessing)  # validates the mode early
    tap_layer = _resolve_tap(model, spec, tap) if tap is not None else None
    if class_names is not None and len(class_names) != int(model.outputs[0].shape[-1]):
        raise ExportError(f"{len(class_names)} class names for {model.outputs[0].shape[-1]} outputs.")
    serving = _Serving(model, preprocessing, class_names, tap_layer)
    with _atomic_directory(out, overwrite) as tmp:
        if format == "saved_model":
            _export_saved_model(serving, tmp)
            _write_metadata(os.path.join(tmp, "assets.extra"), serving, format, quantize, tap, tap_layer,
                            {"signatures": ["serving_default"] + (["features"] if tap else [])})
        elif format == "tflite":
            _export_tflite(serving, tmp, quantize, calibration_images)
            _write_metadata(tmp, serving, format, quantize, tap, tap_layer)
        else:
            _export_onnx(serving, tmp)
            _write_metadata(tmp, serving, format, quantize, tap, tap_layer)
    return out
