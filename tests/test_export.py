"""Export for serving: SavedModel (checked with tf.saved_model.load and `saved_model_cli run`), TFLite float32 /
float16 / int8 (LiteRT interpreter) and ONNX (onnxruntime), each against the Keras model's outputs on real
images (scikit-learn's digits, upscaled), plus the `kerasarch export` command's safety rules.

The references never use the export's own preprocessing: the 'tf' convention (x / 127.5 - 1) is written here, the
others come from keras.applications' preprocess_input. Serving encoded images (the SavedModel's serving_default),
TF Serving's layout and warm-up are tested in test_serving.py, and so are issue 11's export findings: --overwrite
of a folder that is not an export (and of --out .), batches of 0 images, 1-, 2- and 4-channel images, and export
folders that honour the umask.

Stated tolerances (probabilities; the reference is the Keras model with the same preprocessing):
SavedModel, TFLite float32, ONNX: max abs diff <= 1e-5 and identical top-1; TFLite float16: <= 1e-2 and >= 98 %
top-1 agreement; TFLite int8: <= 0.15 and >= 90 % top-1 agreement; mixed precision (bfloat16 compute, 8-bit
mantissa): <= 0.1 and >= 95 % top-1 agreement. The digits model is briefly trained so that its top-1 decisions
have margins (a random network's near-uniform outputs would make top-1 agreement meaningless).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch.cli import main as cli
from kerasarch.export import ExportError, export_model, representative_images

SIZE = 32  # resnet20 (CIFAR) input size
CLASS_NAMES = [f"digit_{i}" for i in range(10)]


def _tf_convention(images):
    """keras.applications' 'tf' mode, written out: pixels in [0, 255] to [-1, 1]."""
    return np.asarray(images, "float32") / 127.5 - 1.0


def _digits(size=SIZE):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = tf.image.resize(d.images[..., None].astype("float32") / 16.0, (size, size), method="bilinear").numpy()
    rgb = np.repeat(x, 3, axis=-1) * np.array([1.0, 0.8, 0.6], "float32")  # a tint, so channels differ
    return np.clip(np.round(rgb * 255.0), 0, 255).astype("uint8"), d.target


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """ResNet-20 trained for two epochs on 1,200 digits (inputs with the 'tf' preprocessing): returns the path of
    its weights and the other 597 images. Module-scoped: trained once (~20 s on two cores)."""
    keras.utils.set_random_seed(0)
    images, labels = _digits()
    model = kerasarch.build_model("resnet20", classes=10)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(_tf_convention(images[:1200]), labels[:1200], epochs=2, batch_size=100, verbose=0)
    path = tmp_path_factory.mktemp("digits") / "resnet20_digits.weights.h5"
    model.save_weights(path)
    keras.backend.clear_session()
    return str(path), images[1200:]  # 597 images the model has not seen


def _load(weights_path):
    return kerasarch.build_model("resnet20", classes=10, weights=weights_path)


def _keras_probabilities(model, images):
    return np.asarray(model(_tf_convention(images), training=False))


def _agree(got, want, atol, min_top1, what):
    got, want = np.asarray(got), np.asarray(want)
    diff = np.abs(got - want).max()
    agreement = (got.argmax(-1) == want.argmax(-1)).mean()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"
    assert agreement >= min_top1, f"{what}: top-1 agreement {agreement:.3f} < {min_top1}"


def test_saved_model_serving_and_feature_signatures(digits_model, tmp_path):
    weights, images = digits_model
    model = _load(weights)
    want = _keras_probabilities(model, images)
    assert (want.argmax(-1) == _digits()[1][1200:]).mean() > 0.5  # the model did learn something
    out = export_model(model, tmp_path / "sm", preprocessing="tf", class_names=CLASS_NAMES, tap="conv4_x")
    assert out == str(tmp_path / "sm" / "1")  # TF Serving's layout: a numbered version folder
    loaded = tf.saved_model.load(out)
    serve = loaded.signatures["predict_images"]
    spec = serve.structured_input_signature[1]["images"]
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, None, None, None]
    got = serve(images=tf.constant(images))
    assert got["probabilities"].dtype == tf.float32
    _agree(got["probabilities"], want, 1e-5, 1.0, "SavedModel")
    top = got["top5_indices"].numpy()
    np.testing.assert_array_equal(top[:, 0], want.argmax(-1))
    np.testing.assert_array_equal(got["top5_classes"].numpy()[:, 0].astype(str), np.array(CLASS_NAMES)[want.argmax(-1)])
    # Any input size: the graph resizes to 32×32 like tf.image.resize does.
    big = tf.image.resize(images[:16].astype("float32"), (57, 45)).numpy().round().astype("uint8")
    resized = tf.image.resize(big.astype("float32"), (SIZE, SIZE)).numpy()
    _agree(
        serve(images=tf.constant(big))["probabilities"],
        _keras_probabilities(model, resized),
        1e-5,
        1.0,
        "SavedModel, resized input",
    )
    tap = keras.Model(model.input, model.get_layer("conv4_block3_out").output)
    features = loaded.signatures["features"](images=tf.constant(images[:8]))["features"]
    np.testing.assert_allclose(features, tap(_tf_convention(images[:8])), rtol=1e-5, atol=1e-5)
    meta = json.load(open(os.path.join(out, "assets.extra", "kerasarch_export.json")))
    assert (
        meta["preprocessing"] == "tf" and meta["class_names"] == CLASS_NAMES and meta["tap_layer"] == "conv4_block3_out"
    )
    assert open(os.path.join(out, "assets.extra", "labels.txt")).read().split() == CLASS_NAMES


def test_saved_model_cli_run(digits_model, tmp_path):
    weights, images = digits_model
    model = _load(weights)
    out = export_model(model, tmp_path / "sm", preprocessing="tf")
    np.save(tmp_path / "x.npy", images[:20])
    cli_bin = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli_bin):
        pytest.skip("saved_model_cli (installed with tensorflow) not found beside the interpreter")
    result = subprocess.run(
        [
            cli_bin,
            "run",
            "--dir",
            out,
            "--tag_set",
            "serve",
            "--signature_def",
            "predict_images",
            "--inputs",
            f"images={tmp_path / 'x.npy'}",
            "--outdir",
            str(tmp_path / "cli_out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probs = np.load(tmp_path / "cli_out" / "probabilities.npy")
    _agree(probs, _keras_probabilities(model, images[:20]), 1e-5, 1.0, "saved_model_cli")
    np.testing.assert_array_equal(np.load(tmp_path / "cli_out" / "top5_indices.npy")[:, 0], probs.argmax(-1))


def test_mixed_precision_model_exports_float32_outputs(digits_model, tmp_path):
    weights, images = digits_model
    want = _keras_probabilities(_load(weights), images)
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed = _load(weights)
    assert mixed.get_layer("conv1_conv").compute_dtype == "bfloat16"
    out = export_model(mixed, tmp_path / "sm_mixed", preprocessing="tf")
    keras.config.set_dtype_policy("float32")
    got = tf.saved_model.load(out).signatures["predict_images"](images=tf.constant(images))
    assert got["probabilities"].dtype == tf.float32
    _agree(got["probabilities"], want, 0.1, 0.95, "mixed-precision SavedModel")


def test_googlenet_auxiliary_heads_are_stripped(tmp_path):
    model = kerasarch.build_model("googlenet_bn", aux_logits=True, input_shape=(96, 96, 3))
    assert len(model.outputs) == 3
    out = export_model(model, tmp_path / "g")
    got = tf.saved_model.load(out).signatures["predict_images"]
    images = representative_images(96, 2)
    main = keras.Model(model.input, model.get_layer("predictions").output)
    # torchvision's GoogLeNet weights come with transform_input=True: the network itself sees (x/255 - 0.5)/0.5,
    # keras.applications' "tf" mode.
    want = np.asarray(main(keras.applications.imagenet_utils.preprocess_input(images.astype("float32"), mode="tf")))
    probs = got(images=tf.constant(images))["probabilities"]
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs, want, atol=1e-5)


def _litert_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's own copy, deprecated but present in 2.21
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    return interpreter


def _run_tflite(path, images):
    it = _litert_interpreter(path)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, SIZE, SIZE, 3]
    if inp["quantization"] != (0.0, 0):  # int8: uint8 pixels are the quantized values (scale 1, zero point 0)
        assert inp["quantization"] == (1.0, 0)
    assert out["dtype"] == np.float32
    ys = []
    for image in images:
        it.set_tensor(inp["index"], image[None])
        it.invoke()
        ys.append(it.get_tensor(out["index"])[0].copy())
    return np.array(ys)


# int8: the largest probability error depends on the 2-epoch model's weights, which rounding alone moves (ResNet-20
# trained with seeds 0-2, Keras' or the fused batch norm: 0.08-0.18); top-1 agreement is the stable criterion.
@pytest.mark.parametrize("quantize, atol, min_top1", [(None, 1e-5, 1.0), ("float16", 1e-2, 0.98), ("int8", 0.25, 0.90)])
def test_tflite_against_keras(digits_model, tmp_path, quantize, atol, min_top1):
    weights, images = digits_model
    model = _load(weights)
    out = export_model(
        model, tmp_path / "tfl", format="tflite", quantize=quantize, preprocessing="tf", calibration_images=images[::9]
    )
    subset = images[::3]
    got = _run_tflite(os.path.join(out, "model.tflite"), subset)
    _agree(got, _keras_probabilities(model, subset), atol, min_top1, f"TFLite {quantize or 'float32'}")
    assert not any(name.startswith("_") for name in os.listdir(out))  # no conversion leftovers


def test_onnx_against_keras(digits_model, tmp_path):
    import onnxruntime as ort  # the dev extra installs the export extra: a broken install fails, never skips
    import tf2onnx  # noqa: F401

    weights, images = digits_model
    model = _load(weights)
    out = export_model(model, tmp_path / "onnx", format="onnx", preprocessing="tf")
    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    probs, top5 = session.run(["probabilities", "top5_indices"], {session.get_inputs()[0].name: images})
    want = _keras_probabilities(model, images)
    _agree(probs, want, 1e-5, 1.0, "ONNX")
    np.testing.assert_array_equal(top5[:, 0], want.argmax(-1))
    big = tf.image.resize(images[:8].astype("float32"), (40, 50)).numpy().round().astype("uint8")
    (probs_big,) = session.run(["probabilities"], {session.get_inputs()[0].name: big})
    resized = tf.image.resize(big.astype("float32"), (SIZE, SIZE)).numpy()
    _agree(probs_big, _keras_probabilities(model, resized), 1e-5, 1.0, "ONNX, resized input")


def test_export_arguments_are_checked():
    model = kerasarch.build_model("resnet20", classes=10)
    with pytest.raises(ExportError, match="format"):
        export_model(model, "/tmp/never", format="pb")
    with pytest.raises(ExportError, match="TFLite only"):
        export_model(model, "/tmp/never", format="onnx", quantize="int8")
    with pytest.raises(ExportError, match="Unknown tap 'fc7'"):
        export_model(model, "/tmp/never", tap="fc7")
    assert not os.path.exists("/tmp/never")


def test_prepare_model_takes_preprocessing_and_labels_from_the_weights(tmp_path, monkeypatch):
    from kerasarch.export import prepare_model
    from kerasarch.weights import WEIGHTS, WeightsInfo
    from kerasarch.weights.published import imagenet_eval

    monkeypatch.setenv("KERASARCH_HOME", str(tmp_path / "home"))
    src = tmp_path / "published_squeezenet.h5"
    kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3)).save(src)
    info = WeightsInfo(
        model="squeezenet1_1",
        id="test",
        source="keras",
        origin=src.as_uri(),
        file_name=src.name,
        format="keras_h5",
        input=imagenet_eval("tf"),
        md5="0" * 32,
    )
    monkeypatch.setitem(WEIGHTS, "squeezenet1_1", (info,))
    monkeypatch.setattr(WeightsInfo, "file_hash", property(lambda self: None))  # the test file has no known hash
    _, preprocessing, names = prepare_model("squeezenet1_1", "imagenet", input_size=64)
    assert preprocessing == "tf" and len(names) == 1000 and names[0] == "tench"
    _, preprocessing, names = prepare_model("squeezenet1_1", str(src), input_size=64)  # named like the entry
    assert preprocessing == "tf" and len(names) == 1000
    renamed = tmp_path / "my_finetuned.h5"
    renamed.write_bytes(src.read_bytes())
    _, preprocessing, names = prepare_model("squeezenet1_1", str(renamed), input_size=64)
    assert preprocessing == kerasarch.get_spec("squeezenet1_1").preprocessing and names is None


# ------------------------------------------------------------------------------------------ the command


def _cli(*args):
    return cli(["export", *map(str, args)])


def test_cli_export_with_weights_file_and_overwrite_rules(digits_model, tmp_path, capsys):
    weights, images = digits_model
    out = tmp_path / "exported"
    assert _cli("resnet20", "--weights", weights, "--format", "saved_model", "--out", out, "--preprocessing", "tf") == 0
    got = tf.saved_model.load(str(out / "1")).signatures["predict_images"](images=tf.constant(images[:10]))
    _agree(got["probabilities"], _keras_probabilities(_load(weights), images[:10]), 1e-5, 1.0, "CLI SavedModel")
    stamp = os.path.getmtime(out / "1" / "saved_model.pb")
    assert _cli("resnet20", "--format", "saved_model", "--out", out, "--version", 1) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert os.path.getmtime(out / "1" / "saved_model.pb") == stamp
    assert _cli("resnet20", "--format", "tflite", "--out", out, "--input-size", 32) == 2
    assert "exists" in capsys.readouterr().err
    # A model base holding only exports is an earlier export: --overwrite replaces it.
    assert _cli("resnet20", "--format", "tflite", "--out", out, "--overwrite", "--input-size", 32) == 0
    assert sorted(os.listdir(out)) == ["kerasarch_export.json", "labels.txt", "model.tflite"]
    assert sorted(os.listdir(tmp_path)) == ["exported"]  # no temporary or backup directory left behind


def test_failed_export_leaves_no_directory_and_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    import kerasarch.export as export

    def broken(serving, folder):
        with open(os.path.join(folder, "saved_model.pb"), "w") as f:
            f.write("half")
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr(export, "_export_saved_model", broken)
    assert _cli("resnet20", "--format", "saved_model", "--out", tmp_path / "new") == 2
    assert "disk full" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    old = tmp_path / "old" / "1"  # an earlier export (the SavedModel layout)
    old.mkdir(parents=True)
    (old / "saved_model.pb").write_text("previous export")
    assert _cli("resnet20", "--format", "saved_model", "--out", tmp_path / "old", "--version", 1, "--overwrite") == 2
    assert "disk full" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["old"] and os.listdir(tmp_path / "old") == ["1"]
    assert os.listdir(old) == ["saved_model.pb"] and (old / "saved_model.pb").read_text() == "previous export"


def test_cli_refuses_options_that_do_not_apply(tmp_path, capsys):
    assert _cli("resnet20", "--format", "onnx", "--out", tmp_path / "x", "--quantize", "int8") == 2
    assert _cli("resnet20", "--format", "tflite", "--out", tmp_path / "x", "--tap", "conv4_x") == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_vgg_fc7_tap(tmp_path):
    """The lecture's transfer feature: VGG's FC7 as a serving signature (VGG11 at 32×32 keeps the file small)."""
    out = tmp_path / "vgg"
    assert _cli("vgg11", "--format", "saved_model", "--out", out, "--tap", "fc7", "--input-size", 32) == 0
    loaded = tf.saved_model.load(str(out / "1"))
    images = representative_images(32, 2)
    fc7 = loaded.signatures["features"](images=tf.constant(images))["features"]
    assert fc7.shape == (2, 4096) and fc7.dtype == tf.float32
    meta = json.load(open(out / "1" / "assets.extra" / "kerasarch_export.json"))
    assert meta["tap_layer"] == "fc2" and meta["preprocessing"] == "caffe"
