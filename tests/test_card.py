"""The model card: what a model is and how its inputs are prepared, from build to serving.

References are independent of the implementation: keras.applications' ``preprocess_input`` (caffe / tf / torch),
torchvision's ImageNet mean and std and LeCun et al.'s input range written as numbers, the publishers' conventions
written per checkpoint, numpy for the geometry of the fits. The end-to-end tests train a model with the library,
export it with the command line in another process and serve it with ``tf.saved_model.load``; the served accuracy
must equal the one training reported.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch import data
from kerasarch.card import InputConfig, ModelCard, card_of, read_card, with_card
from kerasarch.preprocessing import fit_images, prepare_images, preprocess
from kerasarch.training import get_recipe, train

ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run(*args, check=True):
    out = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _card_in_fresh_process(path):
    code = (
        "import sys, keras, kerasarch; m = keras.models.load_model(sys.argv[1]); "
        "print('CARD' + kerasarch.card_of(m).to_json(indent=None))"
    )
    out = _run("-c", code, path).stdout
    return ModelCard.from_json(next(line[4:] for line in out.splitlines() if line.startswith("CARD")))


# ------------------------------------------------------------------------------------------ preprocessing


def test_preprocessing_equals_keras_applications_and_the_published_constants():
    from keras.applications.imagenet_utils import preprocess_input

    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype("float32")
    for mode in ("caffe", "tf", "torch"):
        np.testing.assert_allclose(preprocess(x, mode), preprocess_input(x.copy(), mode=mode), atol=1e-5)
    # torchvision's transforms.Normalize for its ImageNet weights.
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(preprocess(x, "torch"), (x / 255.0 - mean) / std, atol=1e-5)
    # A grey model (one channel) takes the mean of the three channel statistics (the card's documented rule).
    grey = x[..., :1]
    np.testing.assert_allclose(preprocess(grey, "torch"), (grey / 255.0 - mean.mean()) / std.mean(), atol=1e-5)
    np.testing.assert_allclose(preprocess(grey, "caffe"), grey - np.mean([103.939, 116.779, 123.68]), atol=1e-4)
    # Caffe: BGR minus the ImageNet BGR mean; LeCun et al. 1998 §II-A: background -0.1, ink 1.175.
    np.testing.assert_allclose(preprocess(x, "caffe"), x[..., ::-1] - np.array([103.939, 116.779, 123.68]), atol=1e-4)
    np.testing.assert_allclose(preprocess(np.array([0.0, 255.0])[:, None], "lecun")[:, 0], [-0.1, 1.175], atol=1e-6)
    np.testing.assert_allclose(preprocess(x, "unit"), x / 255.0, atol=1e-7)
    np.testing.assert_array_equal(preprocess(x, "none"), x)
    assert InputConfig("torch").mean == (0.485, 0.456, 0.406) and InputConfig("torch").std == (0.229, 0.224, 0.225)


def test_fits_have_the_geometry_they_promise():
    ones = np.ones((1, 28, 28, 1), "float32") * 255
    padded = np.asarray(fit_images(ones, InputConfig(size=(32, 32), channels=1, fit="pad")))[0, ..., 0]
    assert padded[2:30, 2:30].min() == 255 and padded.sum() == 255 * 28 * 28  # centred, zero border of 2
    auto = InputConfig(size=(32, 32), channels=1, fit="auto")
    assert np.asarray(fit_images(ones, auto))[0, 0, 0, 0] == 0  # 28 -> 32 pads (MNIST in LeNet's field)
    assert np.asarray(fit_images(np.ones((1, 8, 8, 1), "float32"), auto))[0, 0, 0, 0] == 1  # 8 -> 32 resizes
    # torchvision's eval transform: shorter side to 50 (100x200 -> 50x100), centre 50x50 crop (columns 25-74). A
    # white band at columns 100-159 lands at 50-79 after the resize: the crop's right half is all white (squashing
    # the whole image to 50x50 instead would put the band at 25-39).
    band = np.zeros((1, 100, 200, 3), "float32")
    band[:, :, 100:160] = 255
    crop = np.asarray(fit_images(band, InputConfig(size=(50, 50), fit="resize_crop", resize_size=50)))[0]
    assert crop.shape == (50, 50, 3)
    assert crop[:, :24].max() < 1 and crop[:, 26:].min() > 254  # the band starts at column 25 of the crop
    # Grey models take RGB images (luma) and colour models grey ones.
    rgb = np.zeros((1, 4, 4, 3), "float32") + np.array([255.0, 0.0, 0.0])
    grey = np.asarray(fit_images(rgb, InputConfig(size=(4, 4), channels=1)))
    np.testing.assert_allclose(grey, 0.299 * 255, rtol=1e-6)
    assert np.asarray(fit_images(np.ones((1, 4, 4, 1), "float32"), InputConfig(size=(4, 4)))).shape == (1, 4, 4, 3)


def test_one_implementation_eagerly_in_tf_function_and_in_tf_data():
    x = np.random.default_rng(1).uniform(0, 255, (2, 30, 40, 3)).astype("float32")
    for config in (
        InputConfig("caffe", (24, 24), 3, "resize_crop", 28),
        InputConfig("lecun", (32, 32), 1, "auto"),
        InputConfig("torch", (32, 32), 3, "pad"),
        InputConfig("tf", (16, 16), 3, "resize"),
    ):
        eager = np.asarray(prepare_images(x, config))
        graph = tf.function(
            lambda t, c=config: prepare_images(t, c), input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
        )
        np.testing.assert_allclose(graph(x).numpy(), eager, atol=1e-4)
        mapped = tf.data.Dataset.from_tensor_slices(x).map(lambda t, c=config: prepare_images(t, c))
        np.testing.assert_allclose(np.stack(list(mapped.as_numpy_iterator())), eager, atol=1e-4)


@pytest.mark.jax
def test_preprocessing_runs_on_jax():
    code = (
        "import numpy as np, keras; from kerasarch.card import InputConfig; "
        "from kerasarch.preprocessing import prepare_images; assert keras.backend.backend() == 'jax'; "
        "x = np.arange(2 * 30 * 40 * 3, dtype='float32').reshape(2, 30, 40, 3) % 255; "
        "y = prepare_images(x, InputConfig('caffe', (24, 24), 3, 'resize_crop', 28)); "
        "z = prepare_images(x, InputConfig('lecun', (32, 32), 1, 'auto')); "
        "print('OUT', type(y).__module__, float(np.asarray(y).sum()), float(np.asarray(z).sum()))"
    )
    env = {**ENV, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(v for v in out.stdout.splitlines() if v.startswith("OUT")).split()
    x = np.arange(2 * 30 * 40 * 3, dtype="float32").reshape(2, 30, 40, 3) % 255
    assert line[1].startswith("jax")
    ref_y = np.asarray(prepare_images(x, InputConfig("caffe", (24, 24), 3, "resize_crop", 28))).sum()
    ref_z = np.asarray(prepare_images(x, InputConfig("lecun", (32, 32), 1, "auto"))).sum()
    np.testing.assert_allclose([float(line[2]), float(line[3])], [ref_y, ref_z], rtol=1e-4)


def test_preprocessing_layer_round_trips(tmp_path):
    config = InputConfig("torch", (32, 32), 3, "auto")
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, kerasarch.layers.Preprocessing(config)(inputs))
    path = tmp_path / "p.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(2).uniform(0, 255, (1, 28, 28, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), prepare_images(x, config), atol=1e-6)


# ------------------------------------------------------------------------------------------ variants and checkpoints

# What each publisher's weights expect, written from their sources: torchvision normalises with the ImageNet mean and
# std ("torch") except GoogLeNet, whose transform_input turns it into (x/255 - 0.5)/0.5 ("tf"); keras.applications
# VGG and ResNet (v1) are Caffe conversions, ResNetV2 uses "tf", DenseNet "torch" (their preprocess_input modes).
PUBLISHED = {
    ("torchvision", "googlenet_bn"): "tf",
    ("torchvision", None): "torch",
    ("timm", None): "torch",
    ("keras", "vgg16"): "caffe",
    ("keras", "vgg19"): "caffe",
    ("keras", "resnet50_keras"): "caffe",
    ("keras", "resnet101_keras"): "caffe",
    ("keras", "resnet152_keras"): "caffe",
    ("keras", "resnet50v2"): "tf",
    ("keras", "resnet101v2"): "tf",
    ("keras", "resnet152v2"): "tf",
    ("keras", "densenet121"): "torch",
    ("keras", "densenet169"): "torch",
    ("keras", "densenet201"): "torch",
}


def test_every_variant_and_checkpoint_agrees_with_its_card():
    from kerasarch.weights import WEIGHTS

    names = kerasarch.list_models()
    assert len(names) > 50
    for name in names:
        spec = kerasarch.get_spec(name)
        card = spec.card()
        assert card.variant == name and card.input.size == tuple(spec.input_shape[:2])
        assert set(card.taps) == set(spec.taps)
        for checkpoint in spec.checkpoints:
            expected = PUBLISHED.get((checkpoint.source, name), PUBLISHED.get((checkpoint.source, None)))
            assert checkpoint.preprocessing == expected, (name, checkpoint.file_name)
            assert spec.card(checkpoint=checkpoint).input == checkpoint.input
            assert checkpoint.input.fit == "resize_crop"
            if checkpoint.source in ("keras", "torchvision"):  # torchvision: resize 256 (V1) or 232 (V2 recipe)
                assert checkpoint.input.resize_size == (232 if checkpoint.id == "IMAGENET1K_V2" else 256)
            assert WEIGHTS[name][spec.checkpoints.index(checkpoint)] is checkpoint
        if spec.checkpoints:  # a fresh model's card is its default checkpoint's
            assert card.input == spec.checkpoints[0].input and spec.preprocessing == spec.checkpoints[0].preprocessing
        else:  # no weights: the card says what its default recipe trains with
            recipe = get_recipe(spec)
            assert recipe["name"] == spec.recipe
            assert recipe["preprocessing"] in (None, spec.preprocessing), name
            assert spec.preprocessing != "none", name
    assert set(WEIGHTS) <= set(names)
    # The drift this card fixed: torchvision-only VGGs are "torch", googlenet_bn is "tf"; LeNet is LeCun's scaling.
    assert [kerasarch.get_spec(n).preprocessing for n in ("vgg11", "vgg13_bn", "vgg16_bn", "googlenet_bn")] == [
        "torch",
        "torch",
        "torch",
        "tf",
    ]
    assert kerasarch.get_spec("lenet5").input_config == InputConfig("lecun", (32, 32), 1, "auto")
    assert kerasarch.get_spec("resnet20").preprocessing == "torch"


def test_card_of_a_built_model_and_the_name_argument(tmp_path):
    model = kerasarch.build_model("resnet20", name="anything", classes=7)
    card = card_of(model)
    assert model.name == "anything" and card.variant == "resnet20" and card.family == "resnet"
    assert card.taps["conv4_x"] == {"layer": "conv4_block3_out", "channels": 64, "stride": 4}
    assert card.weights is None and card.class_names is None
    path = tmp_path / "m.keras"
    model.save(path)
    assert read_card(path) == card
    loaded = keras.models.load_model(path)
    assert card_of(loaded) == card and loaded.name == "anything"
    assert loaded.get_layer("conv1_conv") is not None
    assert _card_in_fresh_process(path) == card


# ------------------------------------------------------------------------------------------ train -> export -> serve


def _served(export_dir, images):
    """Probabilities of the exported SavedModel on uint8 ``images`` through its uint8 signature."""
    folder = export_dir
    versions = [d for d in os.listdir(export_dir) if d.isdigit()]
    if not os.path.exists(os.path.join(folder, "saved_model.pb")) and versions:
        folder = os.path.join(export_dir, max(versions, key=int))
    loaded = tf.saved_model.load(folder)
    signature = loaded.signatures["predict_images" if "predict_images" in loaded.signatures else "serving_default"]
    out = [
        signature(images=tf.constant(images[i : i + 250]))["probabilities"].numpy() for i in range(0, len(images), 250)
    ]
    return np.concatenate(out)


def _library_probabilities(model, test_ds):
    """The model evaluated the library's way: its evaluation pipeline (the card's fit and preprocessing) and a
    compiled forward pass, as ``kerasarch.training.evaluate`` runs it. (Eager execution is no reference here: on
    this CPU TensorFlow's oneDNN kernels differ between eager and graph execution, and a briefly trained network
    amplifies such 1e-7 differences to a few 1e-3 in its probabilities.)"""
    from kerasarch.data import InputPipeline

    batches = InputPipeline(test_ds, model, batch_size=250, training=False).dataset()
    shape = tuple(model.input_shape[1:])
    forward = tf.function(
        lambda x: model(x, training=False), input_signature=[tf.TensorSpec((None, *shape), tf.float32)]
    )
    return np.concatenate([forward(x).numpy() for x, _ in batches])


def _check_serving(export_dir, model, test_ds, images, labels, accuracy):
    served = _served(export_dir, images)
    library = _library_probabilities(model, test_ds)
    agree = np.mean(served.argmax(1) == library.argmax(1))
    assert agree >= 0.999, agree
    assert np.abs(served - library).max() <= 1e-3
    assert np.mean(served.argmax(1) == labels) == pytest.approx(accuracy, abs=1e-9)
    return served


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """LeNet-5 trained by the library for 2 epochs on mnist5k (the README's main job, shortened)."""
    out = tmp_path_factory.mktemp("lenet") / "run"
    train_ds, test_ds = data.load("mnist5k")
    result = train("lenet5", train_ds, test_ds, epochs=2, out_dir=str(out), verbose=0)
    return out, result, test_ds


def test_lenet_train_export_serve(lenet_run, tmp_path):
    out, result, test_ds = lenet_run
    accuracy = result.history["val_accuracy"][-1]
    assert accuracy > 0.8
    model = keras.models.load_model(out / "model.keras")
    card = card_of(model)
    assert card.variant == "lenet5" and card.input == InputConfig("lecun", (32, 32), 1, "auto")
    assert card.recipe["name"] == "lenet" and card.recipe["epochs"] == 2 and card.data["examples"] == 4000
    assert card.class_names == tuple(str(i) for i in range(10))
    assert result.evaluate(test_ds)["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    # `kerasarch export FILE` needs no architecture name (test_finetune_train_export_serve exports a run folder).
    exported = tmp_path / "exp"
    _run("-m", "kerasarch", "export", out / "model.keras", "--format", "saved_model", "--out", exported)
    (_, _), (images, labels) = data.load_arrays("mnist5k")
    served = _check_serving(str(exported), model, test_ds, images, labels, accuracy)
    # A grey model serves 1- and 3-channel images alike.
    rgb = _served(str(exported), np.repeat(images[:50], 3, axis=-1))
    np.testing.assert_allclose(rgb, served[:50], atol=1e-5)
    assert _card_in_fresh_process(out / "model.keras") == card


def test_finetune_train_export_serve(lenet_run, tmp_path):
    out, _, _ = lenet_run
    run = tmp_path / "ft"
    _run(
        "-m",
        "finetune",
        "train",
        "lenet5",
        "digits",
        "--out",
        run,
        "--weights",
        out,
        "--test",
        "digits",
        "--steps",
        "40",
        "--quiet",
    )
    result = json.loads((run / "result.json").read_text())
    model = keras.models.load_model(run / "model.keras")
    card = card_of(model)
    assert card.variant == "lenet5" and card.input.preprocessing == "lecun" and len(card.class_names) == 10
    assert card.weights["file"] == "model.keras"
    assert _card_in_fresh_process(run / "model.keras") == card
    exported = tmp_path / "exp"
    _run("-m", "kerasarch", "export", run, "--format", "saved_model", "--out", exported)
    _, test_ds = data.load("digits")
    (_, _), (images, labels) = data.load_arrays("digits")
    _check_serving(str(exported), model, test_ds, images, labels, result["test_accuracy"])


def test_kerasarch_train_saves_its_card(tmp_path):
    run = tmp_path / "run"
    out = _run("-m", "kerasarch", "train", "lenet5_relu", "--data", "digits", "--out", run, "--epochs", "1")
    assert "test accuracy" in out.stdout
    card = read_card(run / "model.keras")
    assert card.variant == "lenet5_relu" and card.recipe["epochs"] == 1 and card.input.preprocessing == "lecun"
    assert _card_in_fresh_process(run / "model.keras") == card


@pytest.mark.slow
def test_cifar_resnet20_train_export_serve(tmp_path):
    """ResNet-20 (CIFAR) trained a few epochs on the 8×8 digits, resized to 32×32 and made RGB by its card. (After a
    single epoch the network is so ill-conditioned that 1e-7 differences in its inputs, from graph rewrites, move
    its probabilities by 4e-3; trained a little longer it is not.)"""
    train_ds, test_ds = data.load("digits")
    result = train("resnet20", train_ds, test_ds, epochs=4, batch_size=32, out_dir=str(tmp_path / "run"), verbose=0)
    assert result.history["val_accuracy"][-1] > 0.5
    model = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert card_of(model).input == InputConfig("torch", (32, 32), 3, "auto")
    _run(
        "-m",
        "kerasarch",
        "export",
        tmp_path / "run" / "model.keras",
        "--format",
        "saved_model",
        "--out",
        tmp_path / "exp",
    )
    (_, _), (images, labels) = data.load_arrays("digits")
    _check_serving(str(tmp_path / "exp"), model, test_ds, images, labels, result.history["val_accuracy"][-1])


# ------------------------------------------------------------------------------------------ bad input


def test_model_without_a_card(tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    plain = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(x), name="mine")
    with pytest.raises(ValueError, match="has no kerasarch model card.*build_model"):
        card_of(plain)
    path = tmp_path / "plain.keras"
    plain.save(path)
    assert read_card(path) is None
    failed = _run("-m", "kerasarch", "export", path, "--format", "saved_model", "--out", tmp_path / "x", check=False)
    assert failed.returncode == 2 and "--preprocessing" in failed.stderr and not (tmp_path / "x").exists()
    _run(
        "-m",
        "kerasarch",
        "export",
        path,
        "--format",
        "saved_model",
        "--out",
        tmp_path / "ok",
        "--preprocessing",
        "unit",
        "--fit",
        "pad",
    )
    images = (np.arange(2 * 6 * 6) % 256).reshape(2, 6, 6, 1).astype("uint8")
    expected = plain(np.pad(images.astype("float32") / 255.0, ((0, 0), (1, 1), (1, 1), (0, 0))))
    np.testing.assert_allclose(_served(str(tmp_path / "ok"), images), expected, atol=1e-5)
    attached = with_card(plain, ModelCard(input=InputConfig("unit", (8, 8), 1, "pad")))
    assert card_of(attached).variant is None and attached.get_layer("predictions") is plain.get_layer("predictions")


def test_an_option_that_contradicts_the_card_warns_once_and_wins(tmp_path):
    from kerasarch.export import export_model, prepare_model

    path = tmp_path / "m.keras"
    kerasarch.build_model("lenet5").save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, preprocessing, _ = prepare_model(str(path), preprocessing="unit")
        export_model(model, tmp_path / "exp", preprocessing=preprocessing)
    said = [w for w in caught if "card says" in str(w.message)]
    assert len(said) == 1 and "preprocessing='unit'" in str(said[0].message)
    meta = json.loads(next((tmp_path / "exp").rglob("kerasarch_export.json")).read_text())
    assert meta["preprocessing"] == "unit"


def test_bad_card_values_say_what_is_allowed(tmp_path):
    with pytest.raises(ValueError, match="`fit` must be one of 'resize', 'pad', 'resize_crop', 'auto'. Received"):
        InputConfig(fit="stretch")
    with pytest.raises(ValueError, match="`preprocessing` must be one of .*'lecun'.*Received: preprocessing='bgr'"):
        InputConfig(preprocessing="bgr")
    with pytest.raises(ValueError, match="resize_size"):
        InputConfig(size=(224, 224), fit="resize_crop")
    with pytest.raises(ValueError, match="Unknown model card fields \\['colour'\\]"):
        ModelCard.from_dict({"colour": "red"})
    not_keras = tmp_path / "x.keras"
    not_keras.write_text("text")
    with pytest.raises(ValueError, match="not a readable .keras file"):
        read_card(not_keras)
    failed = _run(
        "-m", "kerasarch", "export", tmp_path, "--format", "saved_model", "--out", tmp_path / "o", check=False
    )
    assert failed.returncode == 2 and "model.keras" in failed.stderr


def test_summary_prints_the_card(tmp_path):
    path = tmp_path / "m.keras"
    kerasarch.build_model("lenet5").save(path)
    out = _run("-m", "kerasarch", "summary", path, "--card").stdout
    assert "variant: lenet5" in out and "preprocessing: lecun" in out and "C5 (c5_act, 120 ch, stride 4)" in out
