"""Transfer learning from published checkpoints, end to end (issue 10): ImageNet class names, RGB checkpoints on
grey / 4-channel inputs, ``kerasarch predict`` and ``kerasarch evaluate``, ``--weights`` in every command.

Checkpoints are made here with random weights: keras.applications-layout ``.h5`` / ``.weights.h5`` files and
torchvision-layout ``.pth`` files (written without torch, OIHW kernels and torchvision's module names). Expected
values come from the Keras model called on images prepared by hand in numpy with the constants written below, never
from the commands under test.
"""

import collections
import io
import json
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest
from PIL import Image

import kerasarch
from kerasarch.weights import imagenet_class_names
from kerasarch.weights.loading import adapt_input_kernel

# torchvision's ImageNet normalisation (transforms.Normalize in every ImageClassification preset).
TORCH_MEAN = np.array([0.485, 0.456, 0.406], "float32")
TORCH_STD = np.array([0.229, 0.224, 0.225], "float32")
# torchvision's ResNet18_Weights.IMAGENET1K_V1: resize 256, centre crop 224. A model built for 64x64 inputs scales
# both: shorter side round(64 * 256 / 224) = 73, then the centre 64 crop, offset round((73 - 64) / 2) = 4.
SIZE, RESIZED, OFFSET = 64, 73, 4


def _cli(argv, capsys):
    from kerasarch.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------------- class names


def test_imagenet_class_names_are_human_readable_in_the_standard_order():
    names, ids, clean = imagenet_class_names(), imagenet_class_names("wnid"), imagenet_class_names("clean")
    assert len(names) == len(ids) == len(clean) == 1000
    # keras.applications' imagenet_class_index.json / torchvision's _IMAGENET_CATEGORIES, written out.
    expected = {
        0: ("n01440764", "tench"),
        1: ("n01443537", "goldfish"),
        340: ("n02391049", "zebra"),
        385: ("n02504013", "Indian elephant"),
        386: ("n02504458", "African elephant"),
        948: ("n07742313", "Granny Smith"),
        999: ("n15075141", "toilet tissue"),
    }
    for index, (wnid, name) in expected.items():
        assert (ids[index], names[index]) == (wnid, name)
    assert clean[386] == "African bush elephant" and names[134] == names[517] == "crane"  # WordNet's own clash
    # The order is the sorted synsets, the same list tensorflow-datasets ships for imagenet2012.
    import tensorflow_datasets

    labels = os.path.join(os.path.dirname(tensorflow_datasets.__file__), "datasets", "imagenet2012", "labels.txt")
    with open(labels) as f:
        assert ids == [line.strip() for line in f if line.strip()]
    with pytest.raises(ValueError, match="style.*Received: style='names'"):
        imagenet_class_names("names")


# ------------------------------------------------------------------------------------------ other channel counts


def test_adapt_input_kernel_against_hand_computed_kernels():
    kernel = np.array([[1, 2], [3, 4], [5, 6]], "float32").reshape(1, 1, 3, 2)  # (kh, kw, RGB, out)
    np.testing.assert_array_equal(adapt_input_kernel(kernel, 1)[0, 0], [[9, 12]])  # R + G + B
    np.testing.assert_array_equal(
        adapt_input_kernel(kernel, 4)[0, 0], [[0.75, 1.5], [2.25, 3.0], [3.75, 4.5], [0.75, 1.5]]
    )  # R G B R, x 3/4
    np.testing.assert_array_equal(adapt_input_kernel(kernel, 2)[0, 0], [[1.5, 3.0], [4.5, 6.0]])  # R G, x 3/2
    np.testing.assert_array_equal(adapt_input_kernel(kernel, 3), kernel)
    with pytest.raises(ValueError, match="RGB"):
        adapt_input_kernel(np.zeros((1, 1, 4, 2)), 1)


def _randomise(model, seed=0):
    """Random weights everywhere, BatchNorm statistics included (they start at 0 / 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            leaf = w.path.rsplit("/", 1)[-1]
            if leaf in ("gamma", "moving_variance"):
                values.append(rng.uniform(0.5, 1.5, w.shape))
            elif leaf in ("beta", "moving_mean", "bias"):
                values.append(rng.uniform(-0.2, 0.2, w.shape))
            else:
                values.append(rng.normal(0, np.sqrt(2.0 / np.prod(w.shape[:-1])), w.shape))
        if values:
            layer.set_weights([v.astype("float32") for v in values])
    return model


@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory):
    """A 3-channel resnet18 checkpoint (random weights, 1,000 classes) in the Keras layout."""
    folder = tmp_path_factory.mktemp("ckpt")
    model = _randomise(kerasarch.build_model("resnet18", input_shape=(SIZE, SIZE, 3)))
    head = model.get_layer("predictions")  # a gentle classifier: no probability underflows to a tie at 0
    head.set_weights([head.kernel.numpy() * 1e-3, head.bias.numpy()])
    path = folder / "resnet18_rgb.weights.h5"
    model.save_weights(path)
    return path, model


def test_grey_and_four_channel_models_load_an_rgb_checkpoint(rgb_checkpoint, capsys):
    path, rgb = rgb_checkpoint
    kernel = rgb.get_layer("conv1_conv").kernel.numpy()
    grey = kerasarch.build_model("resnet18", input_shape=(SIZE, SIZE, 1), weights=str(path))
    np.testing.assert_allclose(
        grey.get_layer("conv1_conv").kernel.numpy(),
        kernel[:, :, 0:1] + kernel[:, :, 1:2] + kernel[:, :, 2:3],
        rtol=1e-6,
    )
    assert "summed over the RGB channels" in capsys.readouterr().err
    # Everything after conv1 is the RGB network's: a grey image g gives what the RGB model gives for (g, g, g).
    g = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 1)).astype("float32")
    np.testing.assert_allclose(grey(g, training=False), rgb(np.repeat(g, 3, axis=-1), training=False), atol=2e-5)
    four = kerasarch.build_model("resnet18", input_shape=(SIZE, SIZE, 4), weights=str(path))
    np.testing.assert_allclose(
        four.get_layer("conv1_conv").kernel.numpy(),
        np.concatenate([kernel, kernel[:, :, :1]], axis=2) * 0.75,
        rtol=1e-6,
    )


def test_a_grey_dataset_fine_tunes_a_three_channel_checkpoint(rgb_checkpoint, tmp_path, capsys):
    from kerasarch import training
    from kerasarch.data import from_directory

    path, rgb = rgb_checkpoint
    folder = _image_folder(tmp_path / "grey", {"a": 3, "b": 3}, size=SIZE, mode="L")
    ds = from_directory(str(folder), channels=1)
    result = training.train(
        "resnet18",
        ds,
        None,
        epochs=1,
        batch_size=6,
        lr=1e-9,
        input_shape=(SIZE, SIZE, 1),
        build_kwargs={"weights": str(path)},
        verbose=0,
    )
    kernel = rgb.get_layer("conv1_conv").kernel.numpy()
    np.testing.assert_allclose(
        result.model.get_layer("conv1_conv").kernel.numpy(), kernel.sum(2, keepdims=True), rtol=1e-4, atol=1e-5
    )  # lr 1e-9: the adapted kernel is still the checkpoint's
    assert result.model.output_shape[-1] == 2 and np.isfinite(result.history["loss"][-1])  # a new two-class head


# ------------------------------------------------------------------------------------------------- image folders


def _image_folder(root, counts, *, size=RESIZED, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{i}.png")
    return root


def _reference_probabilities(model, paths):
    """The Keras model on the checkpoint's evaluation transform done by hand: the centre 64 crop of a 73x73 image
    (already at the resize size), torchvision's normalisation."""
    batch = []
    for p in paths:
        x = np.asarray(Image.open(p).convert("RGB"), "float32")
        assert x.shape[:2] == (RESIZED, RESIZED)
        x = x[OFFSET : OFFSET + SIZE, OFFSET : OFFSET + SIZE]
        batch.append((x / 255.0 - TORCH_MEAN) / TORCH_STD)
    return np.asarray(model(np.stack(batch), training=False))


def test_predict_end_to_end_with_class_names_and_corrupt_files_skipped(rgb_checkpoint, tmp_path, capsys):
    path, rgb = rgb_checkpoint
    folder = _image_folder(tmp_path / "photos", {"x": 3})
    good = sorted(str(p) for p in (folder / "x").iterdir())
    (folder / "x" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "x" / "cut.png").write_bytes((folder / "x" / "0.png").read_bytes()[:100])
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "predictions.json"
    code, _, err = _cli(
        [
            "predict",
            "resnet18",
            str(folder),
            "--weights",
            str(path),
            "--input-size",
            str(SIZE),
            "--top",
            "3",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    assert "broken.jpg" in err and "cut.png" in err and "skipped" in err
    report = json.loads(out.read_text())
    assert sorted(s["file"] for s in report["skipped"]) == sorted(
        str(folder / "x" / n) for n in ("broken.jpg", "cut.png")
    )
    expected = _reference_probabilities(rgb, good)
    names = imagenet_class_names()
    assert [r["file"] for r in report["predictions"]] == good
    for row, probs in zip(report["predictions"], expected):
        top = np.argsort(-probs)[:3]
        assert [t["index"] for t in row["top"]] == list(top)
        assert [t["class"] for t in row["top"]] == [names[i] for i in top]
        np.testing.assert_allclose([t["probability"] for t in row["top"]], probs[top], rtol=1e-4, atol=1e-6)
    # Without --out on a pipe: CSV on stdout, one line per usable image.
    code, stdout, _ = _cli(["predict", "resnet18", good[0], "--weights", str(path), "--input-size", str(SIZE)], capsys)
    lines = stdout.strip().splitlines()
    assert code == 0 and lines[0].startswith("file,top1_index,top1_class") and len(lines) == 2
    assert lines[1].split(",")[2] == names[int(np.argmax(expected[0]))]


def test_evaluate_end_to_end_top1_top5_and_confusion_matrix(rgb_checkpoint, tmp_path, capsys):
    path, rgb = rgb_checkpoint
    # Class folders named as ImageNet names, a WordNet id and a curated name all match the model's classes.
    folder = _image_folder(tmp_path / "val", {"tench": 2, "n01443537": 2, "great white shark": 1})
    paths = [str(p) for c in ("great white shark", "n01443537", "tench") for p in sorted((folder / c).iterdir())]
    truth = np.array([2, 1, 1, 0, 0])  # ImageNet indices: great white shark 2, goldfish 1, tench 0
    probs = _reference_probabilities(rgb, paths)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    want1, want5 = float(np.mean(top5[:, 0] == truth)), float(np.mean((top5 == truth[:, None]).any(1)))
    out = tmp_path / "eval"
    code, stdout, err = _cli(
        [
            "evaluate",
            "resnet18",
            "--data",
            str(folder),
            "--weights",
            str(path),
            "--input-size",
            str(SIZE),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["examples"] == 5
    assert metrics["top1"] == pytest.approx(want1) and metrics["top5"] == pytest.approx(want5)
    assert f"top-1 {want1:.2%}" in stdout and f"top-5 {want5:.2%}" in stdout
    confusion = np.array(metrics["confusion"])
    assert confusion.shape == (3, 4) and confusion.sum() == 5 and list(confusion.sum(1)) == [1, 2, 2]
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_refuses_class_folders_the_model_does_not_have_before_reading_images(
    rgb_checkpoint, tmp_path, capsys, monkeypatch
):
    from kerasarch.commands import evaluate

    path, _ = rgb_checkpoint
    folder = _image_folder(tmp_path / "val", {"tench": 1, "my_cats": 1, "my_dogs": 1})

    def never(*args, **kwargs):
        raise AssertionError("images were read before the class folders were checked")

    monkeypatch.setattr(evaluate, "evaluate_dataset", never)
    code, _, err = _cli(
        ["evaluate", "resnet18", "--data", str(folder), "--weights", str(path), "--input-size", str(SIZE)], capsys
    )
    assert code == 2
    assert "do not match the model's classes" in err and "'my_cats'" in err and "'my_dogs'" in err


# ------------------------------------------------------------------------------- torchvision-layout .pth files


class _Tensor:
    def __init__(self, array):
        self.array = np.ascontiguousarray(array, dtype=np.float32)


def _write_pth(path, state):
    """A torch.save zip archive of ``state`` ({key: float32 array}) written without torch: the pickle references
    torch._utils._rebuild_tensor_v2 and torch.FloatStorage, each tensor on its own storage file."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    tensors = collections.OrderedDict((k, _Tensor(v)) for k, v in state.items())
    storages = {id(t): (str(i), t.array) for i, t in enumerate(tensors.values())}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__storage__":
                key, array = storages[obj[1]]
                return "storage", torch_mod.FloatStorage, key, "cpu", array.size
            return None

    def reduce(t):
        strides = tuple(s // 4 for s in t.array.strides)
        return (
            _rebuild_tensor_v2,
            (("__storage__", id(t)), 0, t.array.shape, strides, False, collections.OrderedDict()),
        )

    saved = {n: sys.modules.get(n) for n in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch_mod, "torch._utils": utils_mod})
    try:
        buf = io.BytesIO()
        pickler = Pickler(buf, protocol=2)
        pickler.dispatch_table = {_Tensor: reduce}
        pickler.dump(tensors)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for key, array in storages.values():
            zf.writestr(f"archive/data/{key}", array.tobytes())
        zf.writestr("archive/version", "3\n")


def _torchvision_resnet_state(model):
    """The torchvision ResNet ``state_dict`` of a kerasarch resnet with keras.applications layer names: torchvision's
    module names (conv1, bn1, layer{1-4}.{i}.conv{j}/bn{j}, downsample.0/1, fc) and layouts (OIHW, (out, in))."""
    import re

    state = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        name = layer.name
        if name in ("conv1_conv", "conv1_bn"):
            module = "conv1" if name.endswith("conv") else "bn1"
        elif name == "predictions":
            module = "fc"
        else:
            m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
            base = f"layer{int(m[1]) - 1}.{int(m[2]) - 1}"
            module = f"{base}.downsample.{0 if m[4] == 'conv' else 1}" if m[3] == "0" else f"{base}.{m[4]}{m[3]}"
        w = [v.numpy() for v in layer.weights]
        if name == "predictions":
            state[f"{module}.weight"], state[f"{module}.bias"] = w[0].T, w[1]
        elif len(w) == 1:
            state[f"{module}.weight"] = w[0].transpose(3, 2, 0, 1)
        else:
            for key, value in zip(("weight", "bias", "running_mean", "running_var"), w):
                state[f"{module}.{key}"] = value
    return state


def test_checkpoint_to_served_model_train_evaluate_export_serve(rgb_checkpoint, tmp_path, capsys):
    """The whole path: a torchvision .pth -> ``kerasarch train --weights`` -> ``kerasarch evaluate`` on the run
    folder -> ``kerasarch export`` -> the SavedModel serves the test images with the evaluated accuracy."""
    import keras
    import tensorflow as tf

    _, rgb = rgb_checkpoint
    pth = tmp_path / "resnet18-random.pth"
    _write_pth(pth, _torchvision_resnet_state(rgb))
    data = tmp_path / "data"
    _image_folder(data / "train", {"a": 4, "b": 4}, size=SIZE)
    _image_folder(data / "test", {"a": 3, "b": 3}, size=SIZE, seed=1)
    run = tmp_path / "run"
    code, stdout, err = _cli(
        [
            "train",
            "resnet18",
            "--data",
            str(data),
            "--weights",
            str(pth),
            "--epochs",
            "1",
            "--lr",
            "1e-9",
            "--batch-size",
            "4",
            "--out",
            str(run),
            "--verbose",
            "0",
        ],
        capsys,
    )
    assert code == 0, err
    trained_line = stdout
    trained = keras.models.load_model(run / "model.keras", compile=False)
    for name in ("conv1_conv", "conv3_block1_0_conv", "conv5_block2_2_conv"):  # lr 1e-9: still the checkpoint's
        np.testing.assert_allclose(
            trained.get_layer(name).kernel.numpy(), rgb.get_layer(name).kernel.numpy(), atol=1e-5
        )
    assert trained.output_shape[-1] == 2

    code, stdout, err = _cli(
        ["evaluate", str(run), "--data", str(data / "test"), "--out", str(tmp_path / "eval")], capsys
    )
    assert code == 0, err
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["examples"] == 6
    n_right = int(round(evaluated["top1"] * 6))
    assert f"({n_right}/6 images" in trained_line  # what `kerasarch train` printed for the same test folder

    code, _, err = _cli(["export", str(run), "--format", "saved_model", "--out", str(tmp_path / "served")], capsys)
    assert code == 0, err
    versions = sorted((tmp_path / "served").iterdir())
    predict = tf.saved_model.load(str(versions[-1])).signatures["predict_images"]
    right = 0
    for label, cls in enumerate(("a", "b")):
        for p in sorted((data / "test" / cls).iterdir()):
            pixels = np.asarray(Image.open(p).convert("RGB"))[None]
            right += int(np.argmax(predict(images=tf.constant(pixels))["probabilities"].numpy()[0]) == label)
    assert right == n_right


def test_weights_of_another_architecture_name_the_layer_that_does_not_fit(tmp_path, capsys):
    other = tmp_path / "squeezenet.weights.h5"
    kerasarch.build_model("squeezenet1_1", input_shape=(SIZE, SIZE, 3)).save_weights(other)
    folder = _image_folder(tmp_path / "photos", {"x": 2, "y": 2})
    code, _, err = _cli(
        ["predict", "resnet18", str(folder), "--weights", str(other), "--input-size", str(SIZE)], capsys
    )
    assert code == 2 and "conv1_conv" in err and "squeezenet.weights.h5" in err
    # The same one line from the commands that train from weights, before any training starts.
    common = ["--weights", str(other), "--input-shape", f"{SIZE},{SIZE},3"]
    for run, argv in (
        (_finetune, ["train", "resnet18", str(folder), *common, "--out", str(tmp_path / "f")]),
        (_finetune, ["extract", "resnet18", str(folder), *common, "--tap", "avg_pool", "--out", str(tmp_path / "e")]),
        (
            _cli,
            [
                "train",
                "resnet18",
                "--data",
                str(folder),
                "--weights",
                str(other),
                "--val-split",
                "0.5",
                "--out",
                str(tmp_path / "k"),
            ],
        ),
    ):
        code, _, err = run(argv, capsys)
        assert code == 2 and "conv1_conv" in err and "squeezenet.weights.h5" in err, (argv[0], err)
        assert "does not fit" in err and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------ weights="imagenet" behind a file:// origin

# keras.applications' "caffe" convention (imagenet_utils.preprocess_input): RGB -> BGR, minus the BGR mean.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], "float32")
# 32x32 inputs: the 256/224 evaluation resize gives a shorter side of round(32 * 256 / 224) = 37, crop offset 2.
SMALL, SMALL_RESIZED, SMALL_OFFSET = 32, 37, 2


@pytest.fixture
def home(tmp_path, monkeypatch):
    root = tmp_path / "kerasarch_home"
    monkeypatch.setenv("KERASARCH_HOME", str(root))
    return root


def _publish(monkeypatch, model_name, path, source):
    """Points ``model_name``'s published ``source`` checkpoint at ``file://path`` (checked by its SHA-256), the only
    entry of the table, as a mirror of the publisher would serve it."""
    import dataclasses
    import hashlib

    from kerasarch.weights import WEIGHTS, weights_for

    entry = weights_for(model_name, source)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    published = dataclasses.replace(
        entry, origin=path.as_uri(), file_name=path.name, sha256=digest, md5=None, notop=None
    )
    monkeypatch.setitem(WEIGHTS, model_name, (published,))
    return published


def _finetune(argv, capsys):
    from finetune.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_finetune_extract_vgg16_fc7_from_the_published_keras_checkpoint(tmp_path, home, monkeypatch, capsys):
    import keras

    from finetune.store import load_features

    peer = keras.applications.VGG16(weights=None, include_top=True, input_shape=(SMALL, SMALL, 3))
    _randomise(peer)
    h5 = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    peer.save(h5)  # the legacy HDF5 layout keras.applications publishes
    _publish(monkeypatch, "vgg16", h5, "keras")
    data = _image_folder(tmp_path / "data", {"a": 2, "b": 2}, size=SMALL_RESIZED)
    out = tmp_path / "fc7"
    code, _, err = _finetune(
        [
            "extract",
            "vgg16",
            str(data),
            "--weights",
            "imagenet",
            "--tap",
            "fc7",
            "--out",
            str(out),
            "--input-shape",
            f"{SMALL},{SMALL},3",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert (home / "weights" / h5.name).exists()  # fetched through the cache
    features = load_features(out)
    paths = [str(p) for c in ("a", "b") for p in sorted((data / c).iterdir())]
    crops = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB"), "float32")[
                SMALL_OFFSET : SMALL_OFFSET + SMALL, SMALL_OFFSET : SMALL_OFFSET + SMALL
            ]
            for p in paths
        ]
    )
    fc2 = keras.Model(peer.input, peer.get_layer("fc2").output)
    expected = np.asarray(fc2(crops[..., ::-1] - CAFFE_MEAN_BGR, training=False))
    order = np.argsort(features.index)
    np.testing.assert_allclose(features.features[order], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, frozen",
    [
        ("resnet18", ("conv1_conv", "conv4_block2_2_conv", "conv5_block2_2_bn")),
        pytest.param("resnet50", ("conv1_conv", "conv4_block6_3_conv", "conv5_block3_3_bn"), marks=pytest.mark.slow),
    ],
)
def test_finetune_train_from_the_published_torchvision_checkpoint(name, frozen, tmp_path, home, monkeypatch, capsys):
    import keras

    source = _randomise(kerasarch.build_model(name, input_shape=(SMALL, SMALL, 3)))
    pth = tmp_path / f"{name}-random.pth"
    _write_pth(pth, _torchvision_resnet_state(source))
    _publish(monkeypatch, name, pth, "IMAGENET1K_V1")
    data = _image_folder(tmp_path / "data", {"a": 4, "b": 4}, size=SMALL_RESIZED)
    out = tmp_path / "run"
    code, _, err = _finetune(
        [
            "train",
            name,
            str(data),
            "--weights",
            "imagenet",
            "--out",
            str(out),
            "--input-shape",
            f"{SMALL},{SMALL},3",
            "--freeze-to",
            "all",
            "--epochs-head",
            "1",
            "--epochs-finetune",
            "0",
            "--batch-size",
            "4",
        ],
        capsys,
    )
    assert code == 0, err
    tuned = keras.models.load_model(out / "model.keras", compile=False)
    for layer in frozen:  # frozen: the checkpoint's weights
        for got, want in zip(tuned.get_layer(layer).get_weights(), source.get_layer(layer).get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-6)
    assert tuned.output_shape[-1] == 2


# ----------------------------------------------------------------------------------------- the checkpoint table

# torchvision/models/resnet.py, *_Weights.IMAGENET1K_V2: file (sha256 prefix in the name), resize_size, acc@1.
TORCHVISION_V2 = {
    "resnet50": ("resnet50-11ad3fa6.pth", 80.858),
    "resnet101": ("resnet101-cd907fc2.pth", 81.886),
    "resnet152": ("resnet152-f82ba261.pth", 82.284),
    "resnext50_32x4d": ("resnext50_32x4d-1a0047aa.pth", 81.198),
    "resnext101_32x8d": ("resnext101_32x8d-110c445d.pth", 82.834),
    "wide_resnet50_2": ("wide_resnet50_2-9ba9bcbe.pth", 81.602),
    "wide_resnet101_2": ("wide_resnet101_2-d733dc28.pth", 82.51),
}
# timm/models/resnet.py (_rcfg: test 288x288, crop_pct 1.0, bicubic) and timm's results table (top-1 at 288).
TIMM = {
    "resnet50": ("resnet50.a1_in1k", 81.22),
    "resnet101": ("resnet101.a1h_in1k", 82.8),
    "resnet152": ("resnet152.a1h_in1k", 83.46),
    "resnext50_32x4d": ("resnext50_32x4d.a1h_in1k", 82.03),
}


def test_torchvision_v2_and_timm_checkpoints_with_their_eval_transforms():
    from kerasarch.weights import weights_for

    for name, (file_name, top1) in TORCHVISION_V2.items():
        v2 = weights_for(name, "IMAGENET1K_V2")
        assert (v2.source, v2.file_name, v2.sha256, v2.top1) == ("torchvision", file_name, file_name[-12:-4], top1)
        assert (v2.input.resize_size, v2.input.size, v2.input.interpolation) == (232, (224, 224), "bilinear")
        v1 = weights_for(name, "torchvision:IMAGENET1K_V1")
        assert v1.input.resize_size == 256 and v1.top1 < top1
    for name, (timm_name, top1) in TIMM.items():
        c = weights_for(name, "timm")
        assert (c.id, c.top1, c.format, c.file_name) == (timm_name, top1, "safetensors", f"{timm_name}.safetensors")
        assert c.origin == f"https://huggingface.co/timm/{timm_name}/resolve/main/model.safetensors"
        assert (c.input.size, c.input.resize_size, c.input.interpolation) == ((288, 288), 288, "bicubic")
        assert weights_for(name, timm_name) is c
    with pytest.raises(ValueError, match="no checkpoint 'IMAGENET1K_V9'.*torchvision:IMAGENET1K_V2"):
        weights_for("resnet50", "IMAGENET1K_V9")


def test_imagenet_picks_the_best_checkpoint_at_the_variant_input_size():
    for name in kerasarch.list_models(pretrained=True):
        spec = kerasarch.get_spec(name)
        same_size = [c.top1 for c in spec.checkpoints if c.top1 is not None and c.input.size == spec.input_shape[:2]]
        assert spec.checkpoints[0].top1 == max(same_size), name
    assert kerasarch.get_spec("resnet50").checkpoints[0].id == "IMAGENET1K_V2"
    pretrained = kerasarch.list_models(pretrained=True)
    assert {"resnet50", "vgg16", "alexnet_owt", "densenet121"} <= set(pretrained)
    assert not {"lenet5", "resnet20", "wrn28_10"} & set(pretrained)


def test_kerasarch_list_pretrained_shows_every_checkpoint(capsys):
    code, stdout, _ = _cli(["list", "resnet50", "--pretrained"], capsys)
    assert code == 0
    assert "imagenet = torchvision:IMAGENET1K_V2" in stdout and "80.86%" in stdout and "resize 232 crop 224" in stdout
    assert "imagenet:torchvision:IMAGENET1K_V1" in stdout and "imagenet:timm:resnet50.a1_in1k" in stdout


def test_imagenet_weights_say_which_checkpoint_and_timm_safetensors_load(
    rgb_checkpoint, tmp_path, home, monkeypatch, capsys
):
    from safetensors.numpy import save_file

    _, rgb = rgb_checkpoint
    pth = tmp_path / "resnet18-f37072fd.pth"
    _write_pth(pth, _torchvision_resnet_state(rgb))
    _publish(monkeypatch, "resnet18", pth, "torchvision")
    model = kerasarch.build_model("resnet18", input_shape=(SIZE, SIZE, 3), weights="imagenet")
    err = capsys.readouterr().err
    assert (
        "resnet18 weights='imagenet': torchvision IMAGENET1K_V1 (resnet18-f37072fd.pth, published top-1 "
        "69.758%; resize 256, centre crop 224, bilinear, torch)" in err
    )
    x = np.random.default_rng(2).normal(0, 1, (2, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(model(x, training=False), rgb(x, training=False), atol=1e-5)
    # timm's ResNet keys are torchvision's: its model.safetensors loads the same way.
    st = tmp_path / "resnet18.a1_in1k.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in _torchvision_resnet_state(rgb).items()}, str(st))
    timm = kerasarch.build_model("resnet18", input_shape=(SIZE, SIZE, 3), weights=str(st))
    np.testing.assert_allclose(timm(x, training=False), rgb(x, training=False), atol=1e-5)


def test_checkpoints_chart_plots_v1_and_v2_of_a_network(tmp_path):
    from kerasarch.analysis.charts import checkpoints_chart, published_top1

    points = {p["model"]: p for p in published_top1(count_missing=False)}  # no model built
    # Every variant with weights is a point; the two without a reference GMACs figure are counted when asked.
    assert set(kerasarch.list_models(pretrained=True)) - set(points) == {"resnet101v2", "resnet152v2"}
    assert not any(p["gmacs_counted"] for p in points.values())
    assert sorted(t for _, t in points["resnet50"]["checkpoints"]) == [76.13, 80.858, 81.22]
    assert points["alexnet_owt"]["checkpoints"] == [("torchvision:IMAGENET1K_V1", 56.522)]
    assert points["googlenet_bn"]["checkpoints"] == [("torchvision:IMAGENET1K_V1", 69.778)]
    path = checkpoints_chart(list(points.values()), tmp_path / "chart.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # With measured costs (bench/checkpoints_chart.py): the forward-time and memory panels; a variant without costs
    # stays on the multiply-adds panel only.
    costs = {
        "resnet50": {"latency_ms": 120.0, "memory_mb": 130.0},
        "alexnet_owt": {"latency_ms": 40.0, "memory_mb": 250},
    }
    path = checkpoints_chart(list(points.values()), tmp_path / "costs.png", costs=costs, machine="a test")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_predict_a_keras_file_made_outside_kerasarch_needs_the_preprocessing(tmp_path, capsys):
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(keras.layers.GlobalAveragePooling2D()(x))
    plain = keras.Model(inputs, outputs)
    path = tmp_path / "plain.keras"
    plain.save(path)
    folder = _image_folder(tmp_path / "photos", {"x": 2}, size=16)
    code, _, err = _cli(["predict", str(path), str(folder)], capsys)
    assert code == 2 and "--preprocessing" in err and "plain.keras" in err
    code, stdout, err = _cli(["predict", str(path), str(folder), "--preprocessing", "unit", "--top", "1"], capsys)
    assert code == 0, err
    rows = [line.split(",") for line in stdout.strip().splitlines()[1:]]
    images = np.stack([np.asarray(Image.open(p), "float32") for p in sorted((folder / "x").iterdir())])
    probs = np.asarray(plain(images / 255.0))  # "unit": x / 255; 16x16 images need no fitting
    assert [r[2] for r in rows] == [f"class_{i}" for i in probs.argmax(1)]
    np.testing.assert_allclose([float(r[3]) for r in rows], probs.max(1), rtol=1e-4)


_TFDS_BUILDER = '''
import sys
import numpy as np
import tensorflow_datasets as tfds

class KerasarchTinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Five 73x73 images of three ImageNet classes, prepared offline."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(73, 73, 3)),
            "label": tfds.features.ClassLabel(names=["tench", "goldfish", "great white shark"])}))

    def _split_generators(self, dl_manager):
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(5)
        for i, label in enumerate([0, 1, 2, 2, 0]):
            yield i, {"image": rng.integers(0, 256, (73, 73, 3), dtype=np.uint8), "label": label}

KerasarchTinyImagenet(data_dir=sys.argv[1]).download_and_prepare()
'''


@pytest.mark.slow  # preparing even five examples takes TFDS 40 s to several minutes on an offline machine
def test_evaluate_a_tfds_split_offline(rgb_checkpoint, tmp_path, capsys):
    import subprocess

    path, rgb = rgb_checkpoint
    script = tmp_path / "prepare.py"
    script.write_text(_TFDS_BUILDER)
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "tfds")],
        check=True,
        timeout=900,
        capture_output=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    rng = np.random.default_rng(5)  # the builder's images, drawn again
    images = [rng.integers(0, 256, (RESIZED, RESIZED, 3), dtype=np.uint8) for _ in range(5)]
    truth = np.array([0, 1, 2, 2, 0])  # tench 0, goldfish 1, great white shark 2 in ImageNet's order
    crops = np.stack([im[OFFSET : OFFSET + SIZE, OFFSET : OFFSET + SIZE].astype("float32") for im in images])
    probs = np.asarray(rgb((crops / 255.0 - TORCH_MEAN) / TORCH_STD, training=False))
    top5 = np.argsort(-probs, axis=1)[:, :5]
    want1, want5 = float(np.mean(top5[:, 0] == truth)), float(np.mean((top5 == truth[:, None]).any(1)))
    code, stdout, err = _cli(
        [
            "evaluate",
            "resnet18",
            "--weights",
            str(path),
            "--input-size",
            str(SIZE),
            "--data",
            "tfds:kerasarch_tiny_imagenet",
            "--data-dir",
            str(tmp_path / "tfds"),
            "--out",
            str(tmp_path / "eval"),
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["examples"] == 5 and metrics["class_names"] == ["tench", "goldfish", "great white shark"]
    assert metrics["top1"] == pytest.approx(want1) and metrics["top5"] == pytest.approx(want5)
    confusion = np.array(metrics["confusion"])  # rows: true class; the last column: another ImageNet class
    assert list(confusion.sum(1)) == [2, 1, 2]
    assert confusion[:, 3].sum() == int(np.sum(~np.isin(top5[:, 0], [0, 1, 2])))


# ------------------------------------------------------------- the whole path: checkpoint -> finetune -> serving


def _noise_folder(root, counts, *, size, seed):
    """Class folders of noisy images whose mean colour leans towards the class (red / green / blue), so a head on
    random-weight features learns something, and the noise keeps every image's scores close enough to the boundary
    that a wrong crop or pixel convention changes them."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.normal(128, 60, (size, size, 3))
            pixels[..., c % 3] += 40
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{name}_{i}.png")
    return root


def _torch_crops(paths):
    """The checkpoint's evaluation transform for a 32x32 model, done by hand: the images are already at the resize
    size 37, so it is the centre 32 crop (offset 2) and torchvision's normalisation."""
    crops = []
    for p in paths:
        x = np.asarray(Image.open(p).convert("RGB"), "float32")
        assert x.shape[:2] == (SMALL_RESIZED, SMALL_RESIZED)
        crops.append(
            (x[SMALL_OFFSET : SMALL_OFFSET + SMALL, SMALL_OFFSET : SMALL_OFFSET + SMALL] / 255.0 - TORCH_MEAN)
            / TORCH_STD
        )
    return np.stack(crops)


@pytest.fixture(scope="module")
def small_pth(tmp_path_factory):
    """A torchvision-layout resnet18 checkpoint (random weights, 32x32 inputs) named as torchvision names it, and
    the Keras model it was written from."""
    source = _randomise(kerasarch.build_model("resnet18", input_shape=(SMALL, SMALL, 3)), seed=3)
    pth = tmp_path_factory.mktemp("published") / "resnet18-f37072fd.pth"
    _write_pth(pth, _torchvision_resnet_state(source))
    return pth, source


def test_checkpoint_to_served_model_finetune_train_evaluate_export_serve(
    small_pth, tmp_path, home, monkeypatch, capsys
):
    """The user's whole path in five commands: a published checkpoint (torchvision's resnet18 layout behind a
    file:// origin) -> ``finetune train --weights imagenet`` on an image folder -> ``kerasarch evaluate`` and
    ``kerasarch predict`` on a held-out folder -> ``kerasarch export`` -> the SavedModel's two signatures on the
    same files. Every image's top-1 agrees with the fine-tuned Keras model on hand-prepared crops, and the served
    accuracy and confusion counts are the evaluated ones."""
    import keras
    import tensorflow as tf

    pth, _ = small_pth
    _publish(monkeypatch, "resnet18", pth, "torchvision")
    classes = ("cat", "dog", "fox")
    train_dir = _noise_folder(tmp_path / "train", dict.fromkeys(classes, 6), size=SMALL_RESIZED, seed=0)
    test_dir = _noise_folder(tmp_path / "test", dict.fromkeys(classes, 4), size=SMALL_RESIZED, seed=1)
    run = tmp_path / "run"

    # 1. fine-tune (LP-FT: the linear probe as the head, then a few updates of everything), float32
    code, _, err = _finetune(
        [
            "train", "resnet18", str(train_dir), "--weights", "imagenet", "--input-shape", f"{SMALL},{SMALL},3",
            "--steps", "4", "--batch-size", "6", "--val-fraction", "0.34", "--precision", "float32",
            "--out", str(run), "--quiet",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "resnet18 weights='imagenet': torchvision IMAGENET1K_V1 (resnet18-f37072fd.pth" in err
    assert (home / "weights" / pth.name).exists()

    # The reference: the fine-tuned network itself on the checkpoint's transform done by hand.
    tuned = keras.models.load_model(run / "model.keras", compile=False)
    paths = [str(p) for c in classes for p in sorted((test_dir / c).iterdir())]
    truth = np.repeat(np.arange(3), 4)
    reference = np.asarray(tuned(_torch_crops(paths), training=False))
    want = reference.argmax(1)
    want_confusion = np.zeros((3, 4), int)
    np.add.at(want_confusion, (truth, want), 1)

    # 2. evaluate the run folder on the held-out folder
    code, stdout, err = _cli(["evaluate", str(run), "--data", str(test_dir), "--out", str(tmp_path / "eval")], capsys)
    assert code == 0, err
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["examples"] == 12 and evaluated["class_names"] == list(classes) and evaluated["weights"] is None
    assert evaluated["top1"] == pytest.approx(np.mean(want == truth))
    np.testing.assert_array_equal(evaluated["confusion"], want_confusion)

    code, _, err = _cli(["evaluate", str(run), "--data", str(test_dir), "--weights", "imagenet"], capsys)
    assert code == 2 and "--weights applies to a registry name" in err and "Received: --weights imagenet" in err

    # 3. predict: per file, the class name and probability the network gives
    code, _, err = _cli(["predict", str(run), str(test_dir), "--top", "1", "--out", str(tmp_path / "p.json")], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [r["file"] for r in rows] == sorted(paths)
    by_file = {r["file"]: r["top"][0] for r in rows}
    assert [by_file[p]["class"] for p in paths] == [classes[i] for i in want]
    np.testing.assert_allclose([by_file[p]["probability"] for p in paths], reference.max(1), rtol=1e-4, atol=1e-6)

    # 4. export the run folder; 5. serve the same files through both signatures
    code, _, err = _cli(["export", str(run), "--format", "saved_model", "--out", str(tmp_path / "served")], capsys)
    assert code == 0, err
    served = tf.saved_model.load(str(tmp_path / "served" / "1"))
    encoded = served.signatures["serving_default"](image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    raw = served.signatures["predict_images"](images=tf.constant(pixels))
    for out in (encoded, raw):
        probabilities = out["probabilities"].numpy()
        np.testing.assert_allclose(probabilities, reference, atol=1e-5)
        np.testing.assert_array_equal(probabilities.argmax(1), want)  # per image
        assert [c.decode() for c in out["top5_classes"].numpy()[:, 0]] == [classes[i] for i in want]
        got_confusion = np.zeros((3, 4), int)
        np.add.at(got_confusion, (truth, probabilities.argmax(1)), 1)
        np.testing.assert_array_equal(got_confusion, evaluated["confusion"])
        assert np.mean(probabilities.argmax(1) == truth) == pytest.approx(evaluated["top1"])


def test_finetune_extract_then_linear_from_the_published_checkpoint(small_pth, tmp_path, home, monkeypatch, capsys):
    """``finetune extract --weights imagenet`` on a training and a held-out folder, then ``finetune linear``: the
    features are the checkpoint network's, and the probe predicts what scikit-learn's logistic regression (the
    objective ``finetune linear`` documents) fitted on those reference features predicts."""
    import hashlib

    import keras
    from sklearn.linear_model import LogisticRegression

    pth, source = small_pth
    _publish(monkeypatch, "resnet18", pth, "torchvision")
    classes = ("cat", "dog", "fox")
    folders = {
        "train": _noise_folder(tmp_path / "train", dict.fromkeys(classes, 5), size=SMALL_RESIZED, seed=0),
        "test": _noise_folder(tmp_path / "test", dict.fromkeys(classes, 3), size=SMALL_RESIZED, seed=1),
    }
    for split, folder in folders.items():
        argv = ["extract", "resnet18", str(folder), "--weights", "imagenet", "--tap", "avg_pool"]
        code, _, err = _finetune(
            [*argv, "--input-shape", f"{SMALL},{SMALL},3", "--out", str(tmp_path / f"z_{split}")], capsys
        )
        assert code == 0, err
        assert "torchvision IMAGENET1K_V1 (resnet18-f37072fd.pth" in err
    code, stdout, err = _finetune(
        ["linear", str(tmp_path / "z_train"), "--test", str(tmp_path / "z_test"), "--out", str(tmp_path / "probe")],
        capsys,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "probe" / "result.json").read_text())
    assert result["weights_sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert (result["model"], result["tap"], result["num_train"], result["num_test"]) == ("resnet18", "avg_pool", 15, 9)

    pooled = keras.Model(source.input, source.get_layer("avg_pool").output)
    reference = {}
    for split, folder in folders.items():
        paths = [str(p) for c in classes for p in sorted((folder / c).iterdir())]
        reference[split] = np.asarray(pooled(_torch_crops(paths), training=False))
    labels = {"train": np.repeat(np.arange(3), 5), "test": np.repeat(np.arange(3), 3)}
    from finetune.store import load_features

    features = load_features(tmp_path / "z_test")
    order = np.argsort(features.index)
    np.testing.assert_allclose(features.features[order], reference["test"], rtol=1e-4, atol=1e-4)
    mean, std = reference["train"].mean(0), reference["train"].std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=5000, tol=1e-6).fit((reference["train"] - mean) / std, labels["train"])
    want = clf.predict((reference["test"] - mean) / std)
    probe = np.load(tmp_path / "probe" / "classifier.npz")
    got = (((reference["test"] - probe["mean"]) / probe["std"]) @ probe["kernel"] + probe["bias"]).argmax(1)
    np.testing.assert_array_equal(got, want)
    assert result["accuracy"] == pytest.approx(np.mean(want == labels["test"]))
    assert f"held-out accuracy {100 * np.mean(want == labels['test']):.2f}% on 9 images" in stdout


def test_finetune_tune_one_trial_from_the_published_checkpoint(small_pth, tmp_path, home, monkeypatch, capsys):
    """``finetune tune --weights imagenet``, one Bayesian trial of one head-only epoch: the trial's checkpoint holds
    the published network's weights under a new three-class head."""
    import h5py

    pth, source = small_pth
    _publish(monkeypatch, "resnet18", pth, "torchvision")
    data = _noise_folder(tmp_path / "data", dict.fromkeys(("cat", "dog", "fox"), 4), size=SMALL_RESIZED, seed=0)
    out = tmp_path / "search"
    code, stdout, err = _finetune(
        [
            "tune", "resnet18", str(data), "--weights", "imagenet", "--input-shape", f"{SMALL},{SMALL},3",
            "--out", str(out), "--algorithm", "bayesian", "--max-trials", "1", "--epochs", "1", "--epochs-head", "1",
            "--freeze-choices", "all", "--head-widths", "0", "--batch-size", "4", "--val-fraction", "0.34", "--quiet",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "resnet18 weights='imagenet': torchvision IMAGENET1K_V1 (resnet18-f37072fd.pth" in err
    best = json.loads((out / "best.json").read_text())
    assert (best["num_trials"], best["completed"], best["best_hyperparameters"]["freeze_to"]) == (1, 1, "all")
    checkpoint = out / "search" / f"trial_{best['best_trial']}" / "checkpoint.weights.h5"
    stored = collections.defaultdict(list)  # the checkpoint's arrays by shape (Keras names its groups by class)
    with h5py.File(checkpoint, "r") as f:
        f.visititems(lambda _, obj: stored[obj.shape].append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    assert sorted(s for s in stored if len(s) == 2) == [(512, 3)]  # one new head: 512 pooled features -> 3 classes
    for layer in source.layers:  # frozen: every backbone array is the checkpoint's own
        if layer.weights and layer.name != "predictions":
            for w in layer.get_weights():
                assert any(np.array_equal(w, v) for v in stored[w.shape]), layer.name


def test_predict_with_a_published_checkpoint_made_by_torchvision(tmp_path, home, monkeypatch, capsys):
    """Where torch is installed: torchvision's own resnet18 (random weights and BatchNorm statistics) saved with
    torch.save, published behind a file:// origin; ``kerasarch predict --weights imagenet`` gives the probabilities
    torchvision's model gives for the same centre crops, normalised by hand."""
    sys.modules.setdefault("triton", None)  # torchvision imports triton, which crashes when loaded after TensorFlow
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")

    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        net.fc.weight.mul_(1e-2)  # no probability underflows to a tie at 0
    net.eval()
    pth = tmp_path / "resnet18-f37072fd.pth"
    torch.save(net.state_dict(), pth)
    _publish(monkeypatch, "resnet18", pth, "torchvision")
    folder = _image_folder(tmp_path / "photos", {"x": 3})
    paths = sorted(str(p) for p in (folder / "x").iterdir())
    out = tmp_path / "p.json"
    argv = ["predict", "resnet18", str(folder), "--weights", "imagenet", "--input-size", str(SIZE), "--top", "5"]
    code, _, err = _cli([*argv, "--out", str(out)], capsys)
    assert code == 0, err
    crops = []
    for p in paths:
        x = np.asarray(Image.open(p).convert("RGB"), "float32")[OFFSET : OFFSET + SIZE, OFFSET : OFFSET + SIZE]
        crops.append(((x / 255.0 - TORCH_MEAN) / TORCH_STD).transpose(2, 0, 1))  # NCHW, as torchvision takes it
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(np.stack(crops))), dim=1).numpy()
    rows = json.loads(out.read_text())["predictions"]
    names = imagenet_class_names()
    for row, probs in zip(rows, want):
        top = np.argsort(-probs)[:5]
        assert [t["index"] for t in row["top"]] == list(top) and row["top"][0]["class"] == names[top[0]]
        np.testing.assert_allclose([t["probability"] for t in row["top"]], probs[top], rtol=1e-3, atol=1e-5)
