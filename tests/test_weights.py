"""Weights: the download cache (file:// origins, checksums), the readers (.keras, .weights.h5, keras.applications
.h5, torch .pth without torch, .safetensors), the torch -> Keras conversion, and parity with the peers:
keras.applications models saved with random weights, and torchvision models where torch is installed
(`pip install -e .[torch]`; the torchvision tests skip otherwise). Nothing downloads.
"""

import collections
import hashlib
import io
import os
import pickle
import struct
import sys
import types
import warnings
import zipfile

import keras
import numpy as np
import pytest

import kerasarch
from kerasarch.weights import (
    WEIGHTS,
    WeightsDownloadError,
    WeightsInfo,
    get_file,
    imagenet_class_names,
    load_torch_state_dict,
    weights_for,
)
from kerasarch.weights.published import imagenet_eval
from kerasarch.weights.torch_names import MAPPERS, map_state_dict, torch_to_keras_arrays
from tests.helpers import random_images

# triton (torch's GPU compiler, pulled in by torchvision's imports) segfaults when loaded after TensorFlow (both
# bundle LLVM); these tests run on the CPU and never need it, so it is hidden before torch is imported.
sys.modules.setdefault("triton", None)
try:
    import torch
    import torchvision
except ImportError:  # the optional extra: pip install -e .[torch]
    torch = torchvision = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch/torchvision not installed: pip install -e .[torch]")
TOL = 1e-4  # max absolute difference of float32 outputs, the bound


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ----------------------------------------------------------------------------------------------- download cache


@pytest.fixture
def home(tmp_path, monkeypatch):
    root = tmp_path / "home"
    monkeypatch.setenv("KERASARCH_HOME", str(root))
    return root


def test_get_file_file_origin_checksum_and_cache_hit(tmp_path, home):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    digest = _sha256(src)
    path = get_file("w.bin", src.as_uri(), file_hash=digest)
    assert path == str(home / "weights" / "w.bin")
    assert open(path, "rb").read() == src.read_bytes()
    src.unlink()  # a second call must not touch the origin
    assert get_file("w.bin", src.as_uri(), file_hash=digest) == path
    assert get_file("w.bin", src.as_uri(), file_hash=digest[:8]) == path  # torchvision-style prefix
    assert get_file("w.bin", src.as_uri(), file_hash="md5:" + hashlib.md5(open(path, "rb").read()).hexdigest())


def test_wrong_checksum_raises_and_leaves_nothing_in_the_cache(tmp_path, home):
    src = tmp_path / "src.bin"
    src.write_bytes(b"not the weights you are looking for")
    with pytest.raises(ValueError, match="does not match its checksum.*expected sha256 deadbeef"):
        get_file("w.bin", src.as_uri(), file_hash="deadbeef")
    folder = home / "weights"
    assert not folder.exists() or os.listdir(folder) == []


def test_offline_error_names_the_file_and_the_folder(tmp_path, home):
    missing = (tmp_path / "nowhere" / "vgg16-397923af.pth").as_uri()
    with pytest.raises(WeightsDownloadError) as e:
        get_file("vgg16-397923af.pth", missing, file_hash="397923af")
    message = str(e.value)
    assert "vgg16-397923af.pth" in message and str(home / "weights") in message
    assert os.listdir(home / "weights") == []  # no partial file


def test_unknown_hash_is_recorded_and_a_corrupted_cache_file_is_replaced(tmp_path, home):
    src = tmp_path / "src.bin"
    src.write_bytes(b"A" * 100)
    path = get_file("w.bin", src.as_uri())
    recorded = open(path + ".sha256").read().split()[0]
    assert recorded == _sha256(src)
    with open(path, "ab") as f:  # the cached file changes behind our back
        f.write(b"corruption")
    assert open(get_file("w.bin", src.as_uri()), "rb").read() == b"A" * 100  # re-fetched
    with open(path, "ab") as f:
        f.write(b"corruption")
    src.unlink()
    with pytest.raises(WeightsDownloadError):
        get_file("w.bin", src.as_uri())
    assert not os.path.exists(path)  # the corrupt file is gone, not served


def test_malformed_hash_is_refused():
    with pytest.raises(ValueError, match="file_hash"):
        get_file("x", "file:///x", file_hash="xyz")


# ------------------------------------------------------------------------------------------------ weights table


# The publishers' own records, written here (never read back from kerasarch's table). torchvision 0.2x
# (torchvision/models/<family>.py, the `Weights` enums): file name (its SHA-256 prefix), resize (crop 224), acc@1.
TORCHVISION_PUBLISHED = {
    "alexnet_owt": [("IMAGENET1K_V1", "alexnet-owt-7be5be79.pth", 256, 56.522)],
    "vgg11": [("IMAGENET1K_V1", "vgg11-8a719046.pth", 256, 69.020)],
    "vgg13": [("IMAGENET1K_V1", "vgg13-19584684.pth", 256, 69.928)],
    "vgg16": [("IMAGENET1K_V1", "vgg16-397923af.pth", 256, 71.592)],
    "vgg19": [("IMAGENET1K_V1", "vgg19-dcbb9e9d.pth", 256, 72.376)],
    "vgg11_bn": [("IMAGENET1K_V1", "vgg11_bn-6002323d.pth", 256, 70.370)],
    "vgg13_bn": [("IMAGENET1K_V1", "vgg13_bn-abd245e5.pth", 256, 71.586)],
    "vgg16_bn": [("IMAGENET1K_V1", "vgg16_bn-6c64b313.pth", 256, 73.360)],
    "vgg19_bn": [("IMAGENET1K_V1", "vgg19_bn-c79401a0.pth", 256, 74.218)],
    "resnet18": [("IMAGENET1K_V1", "resnet18-f37072fd.pth", 256, 69.758)],
    "resnet34": [("IMAGENET1K_V1", "resnet34-b627a593.pth", 256, 73.314)],
    "resnet50": [
        ("IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 232, 80.858),
        ("IMAGENET1K_V1", "resnet50-0676ba61.pth", 256, 76.130),
    ],
    "resnet101": [
        ("IMAGENET1K_V2", "resnet101-cd907fc2.pth", 232, 81.886),
        ("IMAGENET1K_V1", "resnet101-63fe2227.pth", 256, 77.374),
    ],
    "resnet152": [
        ("IMAGENET1K_V2", "resnet152-f82ba261.pth", 232, 82.284),
        ("IMAGENET1K_V1", "resnet152-394f9c45.pth", 256, 78.312),
    ],
    "resnext50_32x4d": [
        ("IMAGENET1K_V2", "resnext50_32x4d-1a0047aa.pth", 232, 81.198),
        ("IMAGENET1K_V1", "resnext50_32x4d-7cdf4587.pth", 256, 77.618),
    ],
    "resnext101_32x8d": [
        ("IMAGENET1K_V2", "resnext101_32x8d-110c445d.pth", 232, 82.834),
        ("IMAGENET1K_V1", "resnext101_32x8d-8ba56ff5.pth", 256, 79.312),
    ],
    "wide_resnet50_2": [
        ("IMAGENET1K_V2", "wide_resnet50_2-9ba9bcbe.pth", 232, 81.602),
        ("IMAGENET1K_V1", "wide_resnet50_2-95faca4d.pth", 256, 78.468),
    ],
    "wide_resnet101_2": [
        ("IMAGENET1K_V2", "wide_resnet101_2-d733dc28.pth", 232, 82.510),
        ("IMAGENET1K_V1", "wide_resnet101_2-32ee1156.pth", 256, 78.848),
    ],
    "densenet121": [("IMAGENET1K_V1", "densenet121-a639ec97.pth", 256, 74.434)],
    "densenet161": [("IMAGENET1K_V1", "densenet161-8d451a50.pth", 256, 77.138)],
    "densenet169": [("IMAGENET1K_V1", "densenet169-b2777c0a.pth", 256, 75.600)],
    "densenet201": [("IMAGENET1K_V1", "densenet201-c1103571.pth", 256, 76.896)],
    "googlenet_bn": [("IMAGENET1K_V1", "googlenet-1378be20.pth", 256, 69.778)],
    "squeezenet1_0": [("IMAGENET1K_V1", "squeezenet1_0-b66bff10.pth", 256, 58.092)],
    "squeezenet1_1": [("IMAGENET1K_V1", "squeezenet1_1-b8a52dc0.pth", 256, 58.178)],
}
# torchvision's `num_params` of the same IMAGENET1K_V1 entries (GoogLeNet: without its auxiliary heads).
TORCHVISION_NUM_PARAMS = {
    "alexnet_owt": 61_100_840,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "googlenet_bn": 6_624_904,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
}
# keras.applications (keras/src/applications/{vgg16,vgg19,resnet,densenet}.py: folder, file stem, the MD5s it
# checks for the file with and without the top; top-1 from the table at keras.io/api/applications).
KERAS_PUBLISHED = {
    "vgg16": ("vgg16", "vgg16", "64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc", 71.3),
    "vgg19": ("vgg19", "vgg19", "cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6", 71.3),
    "resnet50_keras": (
        "resnet",
        "resnet50",
        "2cb95161c43110f7111970584f804107",
        "4d473c1dd8becc155b73f8504c6f6626",
        74.9,
    ),
    "resnet101_keras": (
        "resnet",
        "resnet101",
        "f1aeb4b969a6efcfb50fad2f0c20cfc5",
        "88cf7a10940856eca736dc7b7e228a21",
        76.4,
    ),
    "resnet152_keras": (
        "resnet",
        "resnet152",
        "100835be76be38e30d865e96f2aaae62",
        "ee4c566cf9a93f14d82f913c2dc6dd0c",
        76.6,
    ),
    "resnet50v2": (
        "resnet",
        "resnet50v2",
        "3ef43a0b657b3be2300d5770ece849e0",
        "fac2f116257151a9d068a22e544a4917",
        76.0,
    ),
    "resnet101v2": (
        "resnet",
        "resnet101v2",
        "6343647c601c52e1368623803854d971",
        "c0ed64b8031c3730f411d2eb4eea35b5",
        77.2,
    ),
    "resnet152v2": (
        "resnet",
        "resnet152v2",
        "a49b44d1979771252814e80f8ec446f9",
        "ed17cf2e0169df9d443503ef94b23b33",
        78.0,
    ),
    "densenet121": (
        "densenet",
        "densenet121",
        "9d60b8095a5708f2dcce2bca79d332c7",
        "30ee3e1110167f948a6b9946edeeb738",
        75.0,
    ),
    "densenet169": (
        "densenet",
        "densenet169",
        "d699b8f76981ab1b30698df4c175e90b",
        "b8c4d4c20dd625c148057b9ff1c1176b",
        76.2,
    ),
    "densenet201": (
        "densenet",
        "densenet201",
        "1ceb130c1ea1b78c3bf6114dbdfd8807",
        "c13680b51ded0fb44dff2d8f86ac8bb1",
        77.3,
    ),
}
# keras.applications' preprocess_input of each family: VGG and ResNet v1 "caffe", ResNet v2 "tf", DenseNet "torch".
KERAS_MODES = {"vgg": "caffe", "resnet": "caffe", "densenet": "torch"}
# timm's ResNet-strikes-back checkpoints (Wightman et al. 2021, arXiv:2110.00476; timm's results table at 288,
# bicubic, crop_pct 1.0; Hugging Face repository timm/<name>).
TIMM_PUBLISHED = {
    "resnet50": ("resnet50.a1_in1k", 81.22),
    "resnet101": ("resnet101.a1h_in1k", 82.8),
    "resnet152": ("resnet152.a1h_in1k", 83.46),
    "resnext50_32x4d": ("resnext50_32x4d.a1h_in1k", 82.03),
}


def _published_entries():
    """``{registry name: {(source, id): (origin, file_name, hash, top1, resize, crop, interpolation, mode)}}``."""
    out = collections.defaultdict(dict)
    for name, entries in TORCHVISION_PUBLISHED.items():
        for id_, file_name, resize, top1 in entries:
            prefix = file_name.rsplit("-", 1)[1].removesuffix(".pth")
            mode = "tf" if name == "googlenet_bn" else "torch"  # torchvision's GoogLeNet: transform_input=True
            out[name]["torchvision", id_] = (
                f"https://download.pytorch.org/models/{file_name}",
                file_name,
                f"sha256:{prefix}",
                top1,
                resize,
                224,
                "bilinear",
                mode,
            )
    for name, (folder, stem, md5, _, top1) in KERAS_PUBLISHED.items():
        file_name = f"{stem}_weights_tf_dim_ordering_tf_kernels.h5"
        mode = "tf" if stem.endswith("v2") else KERAS_MODES[folder.rstrip("0123456789")]
        out[name]["keras", "imagenet"] = (
            f"https://storage.googleapis.com/tensorflow/keras-applications/{folder}/{file_name}",
            file_name,
            f"md5:{md5}",
            top1,
            256,
            224,
            "bilinear",
            mode,
        )
    for name, (timm_name, top1) in TIMM_PUBLISHED.items():
        out[name]["timm", timm_name] = (
            f"https://huggingface.co/timm/{timm_name}/resolve/main/model.safetensors",
            f"{timm_name}.safetensors",
            None,
            top1,
            288,
            288,
            "bicubic",
            "torch",
        )
    return out


def test_table_entries_are_the_publishers():
    want = _published_entries()
    assert sorted(WEIGHTS) == sorted(want)
    registered = set(kerasarch.list_models())
    formats = {"keras": "keras_h5", "torchvision": "torch_pth", "timm": "safetensors"}
    for name, entries in WEIGHTS.items():
        assert name in registered and kerasarch.get_spec(name).classes == 1000
        got = {}
        for info in entries:
            assert info.model == name and info.format == formats[info.source]
            i = info.input
            got[info.source, info.id] = (
                info.origin,
                info.file_name,
                info.file_hash,
                info.top1,
                i.resize_size,
                i.size[0],
                i.interpolation,
                i.preprocessing,
            )
            assert i.size[0] == i.size[1] and i.fit == "resize_crop" and i.channels == 3
        assert got == want[name], name
        # weights="imagenet" takes the best published top-1 at the variant's 224; timm's 288 sets come after
        at_224 = [info.top1 for info in entries if info.input.size == (224, 224)]
        assert at_224 == sorted(at_224, reverse=True) and entries[0].top1 == max(at_224), name
    for name, (folder, stem, _, notop_md5, _) in KERAS_PUBLISHED.items():
        notop = weights_for(name, "keras").notop
        file_name = f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        assert (notop.file_name, notop.file_hash) == (file_name, f"md5:{notop_md5}"), name
        assert notop.origin == f"https://storage.googleapis.com/tensorflow/keras-applications/{folder}/{file_name}"
    assert weights_for("vgg16").source == "torchvision" and weights_for("vgg16").file_name.startswith("vgg16-")
    assert weights_for("resnet50", "torchvision:IMAGENET1K_V1").file_name == "resnet50-0676ba61.pth"
    # the parameter counts test_models checks every built model against are torchvision's
    assert {n: kerasarch.get_spec(n).params for n in TORCHVISION_NUM_PARAMS} == TORCHVISION_NUM_PARAMS
    with pytest.raises(ValueError, match="No ImageNet weights.*lenet5"):
        weights_for("lenet5")


@needs_torch
def test_torchvision_entries_are_the_installed_torchvisions():
    """The written torchvision records above against the installed torchvision's own `Weights` enums."""
    for name, entries in TORCHVISION_PUBLISHED.items():
        tv_name = {"alexnet_owt": "alexnet", "googlenet_bn": "googlenet"}.get(name, name)
        enum = torchvision.models.get_model_weights(tv_name)
        for id_, file_name, resize, top1 in entries:
            w = enum[id_]
            assert w.url == f"https://download.pytorch.org/models/{file_name}", name
            assert w.meta["_metrics"]["ImageNet-1K"]["acc@1"] == pytest.approx(top1), name
            assert list(w.transforms().resize_size) == [resize] and list(w.transforms().crop_size) == [224], name
            assert w.meta["num_params"] == TORCHVISION_NUM_PARAMS[name], name


def test_imagenet_class_names_offline():
    ids = imagenet_class_names("wnid")
    assert len(ids) == 1000 and ids == sorted(ids) and ids[0] == "n01440764"
    assert imagenet_class_names()[0] == "tench"  # human-readable by default (tests/test_transfer_checkpoints.py)


def _table_entry(monkeypatch, model, src, fmt="keras_h5", notop=None, sha256=None):
    info = WeightsInfo(
        model=model,
        id="test",
        source="keras",
        origin=src.as_uri(),
        file_name=src.name,
        format=fmt,
        input=imagenet_eval("torch"),
        sha256=sha256 or _sha256(src),
        notop=notop,
    )
    monkeypatch.setitem(WEIGHTS, model, (info,))
    return info


def _randomise(model, seed=0):
    """Random weights everywhere, including BatchNorm statistics and biases (initialised to 0/1 by default)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.weights:
            v = w.numpy()
            name = w.path.rsplit("/", 1)[-1]
            if name in ("gamma", "moving_variance"):
                v = rng.uniform(0.5, 1.5, v.shape)
            elif name in ("beta", "moving_mean", "bias"):
                v = rng.uniform(-0.2, 0.2, v.shape)
            new.append(v.astype("float32"))
        if new:
            layer.set_weights(new)
    return model


def test_build_model_weights_imagenet_downloads_checks_and_caches(tmp_path, home, monkeypatch):
    shape = (64, 64, 3)
    source = _randomise(kerasarch.build_model("squeezenet1_1", input_shape=shape))
    top = tmp_path / "sq_top.h5"
    source.save(top)
    notop_model = kerasarch.build_model("squeezenet1_1", input_shape=shape, include_top=False)
    notop_model.set_weights(source.get_weights()[: len(notop_model.get_weights())])
    notop = tmp_path / "sq_notop.weights.h5"
    notop_model.save_weights(notop)
    notop_info = WeightsInfo(
        model="squeezenet1_1",
        id="test",
        source="keras",
        origin=notop.as_uri(),
        file_name=notop.name,
        format="keras_h5",
        input=imagenet_eval("torch"),
        sha256=_sha256(notop),
    )
    _table_entry(monkeypatch, "squeezenet1_1", top, notop=notop_info)
    x = random_images(shape, batch=2)
    model = kerasarch.build_model("squeezenet1_1", input_shape=shape, weights="imagenet")
    np.testing.assert_allclose(model(x), source(x), atol=1e-6)
    assert sorted(os.listdir(home / "weights")) == ["sq_top.h5", "sq_top.h5.sha256"]
    headless = kerasarch.build_model("squeezenet1_1", input_shape=shape, include_top=False, weights="imagenet")
    assert "sq_notop.weights.h5" in os.listdir(home / "weights")  # the headless file, not the full one
    np.testing.assert_allclose(headless(x), notop_model(x), atol=1e-6)


def test_build_model_imagenet_offline_and_wrong_checksum(tmp_path, home, monkeypatch):
    src = tmp_path / "sq.h5"
    kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3)).save(src)
    _table_entry(monkeypatch, "squeezenet1_1", src, sha256="0" * 64)
    with pytest.raises(ValueError, match="does not match its checksum"):
        kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3), weights="imagenet")
    assert os.listdir(home / "weights") == []
    _table_entry(monkeypatch, "squeezenet1_1", tmp_path / "gone.h5", sha256="0" * 64)
    with pytest.raises(WeightsDownloadError, match=r"gone\.h5.*folder: .*weights"):
        kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3), weights="imagenet")


def test_imagenet_weights_are_found_from_the_card_not_the_name(tmp_path, home, monkeypatch):
    src = tmp_path / "sq.h5"
    source = _randomise(kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3)))
    source.save(src)
    _table_entry(monkeypatch, "squeezenet1_1", src)
    model = kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3), name="backbone", weights="imagenet")
    assert model.name == "backbone"
    x = random_images((64, 64, 3), batch=2)
    np.testing.assert_allclose(model(x), source(x), atol=1e-6)
    card = kerasarch.card_of(model)
    assert card.variant == "squeezenet1_1" and card.weights["file"] == "sq.h5"
    assert card.weights["sha256"] == _sha256(src) and card.weights["checkpoint"] == "keras:test"
    assert card.input.preprocessing == "torch" and len(card.class_names) == 1000


def test_imagenet_needs_a_model_card():
    from kerasarch.applications.squeezenet import squeezenet

    with pytest.raises(ValueError, match="card"):
        squeezenet("1_1", input_shape=(64, 64, 3), name="my_net", weights="imagenet")


# ------------------------------------------------------------------------------ keras.applications parity

# kerasarch name, keras.applications constructor, in the default run (each < 30 s at 64×64)
KA_PEERS = [
    ("vgg16", "VGG16", True),
    ("vgg19", "VGG19", False),
    ("resnet50_keras", "ResNet50", True),
    ("resnet101_keras", "ResNet101", False),
    ("resnet152_keras", "ResNet152", False),
    ("resnet50v2", "ResNet50V2", False),
    ("resnet101v2", "ResNet101V2", False),
    ("resnet152v2", "ResNet152V2", False),
    ("densenet121", "DenseNet121", True),
    ("densenet169", "DenseNet169", False),
    ("densenet201", "DenseNet201", False),
]


def _ka_params():
    out = []
    for name, peer, fast in KA_PEERS:
        out.append(pytest.param(name, peer, (64, 64, 3), id=f"{name}-64", marks=() if fast else pytest.mark.slow))
        out.append(pytest.param(name, peer, (224, 224, 3), id=f"{name}-224", marks=pytest.mark.slow))
    return out


def _compare(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(b).max() > 1e-2, f"{what}: degenerate reference outputs"
    diff = np.abs(a - b).max()
    assert diff <= TOL, f"{what}: max abs diff {diff:.3g} > {TOL}"
    np.testing.assert_array_equal(a.argmax(-1), b.argmax(-1), err_msg=f"{what}: top-1 differs")


@pytest.mark.parametrize("name, peer, shape", _ka_params())
def test_keras_applications_files_load_with_identical_outputs(name, peer, shape, tmp_path):
    ka = _randomise(getattr(keras.applications, peer)(weights=None, input_shape=shape, classifier_activation=None))
    x = random_images(shape, batch=2) * 255.0
    want = ka(x, training=False)
    for suffix in (".h5", ".weights.h5"):
        path = tmp_path / f"{peer}{suffix}"
        ka.save_weights(path) if suffix == ".weights.h5" else ka.save(path)
        model = kerasarch.build_model(name, input_shape=shape, weights=str(path), classifier_activation=None)
        _compare(model(x, training=False), want, f"{name} from {suffix}")
        del model
        keras.backend.clear_session()


def test_keras_file_and_headless_and_other_classes(tmp_path):
    shape = (64, 64, 3)
    ka = _randomise(keras.applications.VGG16(weights=None, input_shape=shape, classifier_activation=None))
    path = tmp_path / "vgg16.keras"
    ka.save(path)
    x = random_images(shape, batch=2) * 255.0
    full = kerasarch.build_model("vgg16", input_shape=shape, weights=str(path), classifier_activation=None)
    _compare(full(x), ka(x), "vgg16 from .keras")
    headless = kerasarch.build_model("vgg16", input_shape=shape, include_top=False, weights=str(path))
    features = keras.Model(ka.input, ka.get_layer("block5_pool").output)
    np.testing.assert_allclose(headless(x), features(x), atol=TOL)
    with pytest.warns(UserWarning, match="'predictions'.*expects shapes.*\\(4096, 10\\).*\\(4096, 1000\\)"):
        ten = kerasarch.build_model("vgg16", input_shape=shape, classes=10, weights=str(path))
    fc2 = keras.Model(ten.input, ten.get_layer("fc2").output)
    np.testing.assert_allclose(fc2(x), keras.Model(ka.input, ka.get_layer("fc2").output)(x), atol=TOL)


def test_a_file_that_does_not_fit_names_the_layer_and_both_shapes(tmp_path):
    path = tmp_path / "sq10.weights.h5"
    kerasarch.build_model("squeezenet1_0", input_shape=(64, 64, 3)).save_weights(path)
    with pytest.raises(ValueError, match=r"layer 'conv1'.*\[\(3, 3, 3, 64\), \(64,\)\].*\[\(7, 7, 3, 96\), \(96,\)\]"):
        kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3), weights=str(path))
    with pytest.raises(ValueError, match="block3_conv4.*no counterpart"):
        small = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), include_top=False)
        small.save(tmp_path / "v16.h5")
        kerasarch.build_model("vgg19", input_shape=(32, 32, 3), include_top=False, weights=str(tmp_path / "v16.h5"))
    with pytest.raises(ValueError, match="Unsupported weights file"):
        (tmp_path / "w.npz").write_bytes(b"")
        kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3), weights=str(tmp_path / "w.npz"))


# -------------------------------------------------------------- torch checkpoints written without torch


def _torch_stubs():
    """Stand-ins for the names torch pickles reference (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``),
    so the pickle below is byte-for-byte what torch writes for the same tensors, without torch."""
    fake_torch, fake_utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    fake_torch._utils = fake_utils
    storages = {}
    for dtype, name in ((np.float32, "FloatStorage"), (np.float16, "HalfStorage"), (np.int64, "LongStorage")):
        storages[np.dtype(dtype)] = type(name, (), {"__module__": "torch"})
        setattr(fake_torch, name, storages[np.dtype(dtype)])
    return {"torch": fake_torch, "torch._utils": fake_utils}, storages


class _Tensor:
    """A tensor to pickle: a view (offset, shape, strides in elements) of a shared flat storage."""

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride


def _tensors_for(state):
    """numpy arrays -> _Tensor views, each on its own storage, plus one transposed (non-contiguous) view and two
    views sharing a storage with an offset, as real checkpoints have."""
    out = collections.OrderedDict()
    for k, v in state.items():
        v = np.ascontiguousarray(v)
        out[k] = _Tensor(v.reshape(-1), 0, v.shape, tuple(s // v.itemsize for s in v.strides))
    return out


def _write_pth(path, tensors, legacy=False):
    stubs, storage_types = _torch_stubs()
    keys = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, np.ndarray) and obj.ndim == 1 and id(obj) in keys:
                pid = ("storage", storage_types[obj.dtype], keys[id(obj)], "cpu", obj.size)
                return pid + (None,) if legacy else pid
            return None

    def reduce_tensor(t):
        rebuild = stubs["torch._utils"]._rebuild_tensor_v2
        return rebuild, (t.storage, t.offset, t.shape, t.stride, False, collections.OrderedDict())

    storages = []
    for t in tensors.values():
        if id(t.storage) not in keys:
            keys[id(t.storage)] = str(len(storages))
            storages.append(t.storage)
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        buf = io.BytesIO()
        p = Pickler(buf, protocol=2)
        p.dispatch_table = {_Tensor: reduce_tensor}
        if legacy:
            for header in (
                0x1950A86A20F9469CFC6C,
                1001,
                {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
            ):
                pickle.dump(header, buf, protocol=2)
        p.dump(tensors)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    if legacy:
        pickle.dump(sorted(keys.values(), key=int), buf, protocol=2)
        for s in storages:
            buf.write(struct.pack("<q", s.size) + s.tobytes())
        path.write_bytes(buf.getvalue())
        return
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for s in storages:
            zf.writestr(f"archive/data/{keys[id(s)]}", s.tobytes())
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_reader_without_torch(tmp_path, legacy):
    rng = np.random.default_rng(0)
    base = rng.standard_normal(24).astype("float32")
    tensors = _tensors_for(
        {
            "a.weight": rng.standard_normal((4, 3, 2, 2)).astype("float32"),
            "a.bias": rng.standard_normal(4).astype("float16"),
            "bn.num_batches_tracked": np.array(7, dtype="int64"),
        }
    )
    tensors["t.weight"] = _Tensor(base, 0, (4, 6), (1, 4))  # a transposed view: strides (1, 4)
    tensors["shared.weight"] = _Tensor(base, 2, (5,), (1,))  # same storage, offset 2
    path = tmp_path / "ckpt.pth"
    _write_pth(path, tensors, legacy=legacy)
    sd = load_torch_state_dict(path)
    assert list(sd) == list(tensors)
    np.testing.assert_array_equal(sd["t.weight"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(sd["shared.weight"], base[2:7])
    assert sd["a.bias"].dtype == np.float16 and sd["bn.num_batches_tracked"] == 7


def test_pth_reader_refuses_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="Refusing to unpickle '(posix|os|nt).system'"):
        load_torch_state_dict(path)
    assert not marker.exists()


# ------------------------------------------------------------ torch -> Keras conversion against numpy


def _np_conv_nchw(x, w, b, groups=1):
    """Reference 3×3 'same' convolution in PyTorch's layout: x (N, C, H, W), w (O, C/groups, kh, kw)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    out = np.zeros((n, o, h, wd), np.float64)
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(h):
            for j in range(wd):
                patch = xp[:, g * cg : (g + 1) * cg, i : i + kh, j : j + kw]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3)) + b[oc]
    return out


def test_conversion_matches_a_pytorch_layout_reference():
    """Grouped conv (OIHW -> HWIO), BatchNorm, the flatten reorder NCHW -> NHWC, and (out, in) -> (in, out),
    against a numpy forward pass written in PyTorch's layout."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((4, 5, 4))
    y = keras.layers.Conv2D(6, 3, padding="same", groups=2, name="conv")(inputs)
    y = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")(y)
    y = keras.layers.Flatten(name="flatten")(y)
    y = keras.layers.Dropout(0.5, name="drop")(y)
    y = keras.layers.Dense(7, name="fc")(y)
    model = keras.Model(inputs, y)
    w, b = rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6)
    gamma, beta, mean, var = (
        rng.uniform(0.5, 1.5, 6),
        rng.standard_normal(6),
        rng.standard_normal(6),
        rng.uniform(0.5, 1.5, 6),
    )
    fw, fb = rng.standard_normal((7, 6 * 4 * 5)), rng.standard_normal(7)
    layer = {lay.name: lay for lay in model.layers}
    layer["conv"].set_weights(torch_to_keras_arrays({"weight": w, "bias": b}, layer["conv"], model))
    layer["bn"].set_weights(
        torch_to_keras_arrays(
            {"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var, "num_batches_tracked": 3},
            layer["bn"],
            model,
        )
    )
    layer["fc"].set_weights(torch_to_keras_arrays({"weight": fw, "bias": fb}, layer["fc"], model))
    x = rng.standard_normal((2, 4, 5, 4)).astype("float32")
    ref = _np_conv_nchw(x.transpose(0, 3, 1, 2).astype(np.float64), w, b, groups=2)
    ref = (ref - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * gamma[:, None, None] + beta[:, None, None]
    ref = ref.reshape(2, -1) @ fw.T + fb  # torch.flatten of (N, C, H, W)
    np.testing.assert_allclose(model(x, training=False), ref, atol=1e-4)


def test_name_mappings_follow_torchvision_module_names():
    """A few keys of each torchvision family -> the kerasarch layer they must land in (torchvision's module tree:
    resnet.py, densenet.py, squeezenet.py, googlenet.py)."""

    def names(family, keys, model=None):
        return MAPPERS[family]({k: {"weight": np.zeros((1, 1, 1, 1))} for k in keys}, model)

    assert names(
        "resnet",
        ["conv1", "bn1", "layer1.0.conv3", "layer3.5.bn2", "layer2.0.downsample.0", "layer2.0.downsample.1", "fc"],
    ) == {
        "conv1": "conv1_conv",
        "bn1": "conv1_bn",
        "layer1.0.conv3": "conv2_block1_3_conv",
        "layer3.5.bn2": "conv4_block6_2_bn",
        "layer2.0.downsample.0": "conv3_block1_0_conv",
        "layer2.0.downsample.1": "conv3_block1_0_bn",
        "fc": "predictions",
    }
    assert names(
        "densenet",
        [
            "features.conv0",
            "features.denseblock2.denselayer12.norm.1",
            "features.denseblock2.denselayer12.conv2",
            "features.transition3.conv",
            "features.norm5",
            "classifier",
        ],
    ) == {
        "features.conv0": "conv1_conv",
        "features.denseblock2.denselayer12.norm.1": "conv3_block12_0_bn",
        "features.denseblock2.denselayer12.conv2": "conv3_block12_2_conv",
        "features.transition3.conv": "pool4_conv",
        "features.norm5": "bn",
        "classifier": "predictions",
    }
    sq11 = [
        "features.0",
        "features.3.squeeze",
        "features.4.expand1x1",
        "features.6.expand3x3",
        "features.12.squeeze",
        "classifier.1",
    ]
    assert names("squeezenet", sq11) == {
        "features.0": "conv1",
        "features.3.squeeze": "fire2_squeeze1x1",
        "features.4.expand1x1": "fire3_expand1x1",
        "features.6.expand3x3": "fire4_expand3x3",
        "features.12.squeeze": "fire5_squeeze1x1",
        "classifier.1": "conv10",
    }
    assert names(
        "googlenet",
        [
            "conv1.conv",
            "conv3.bn",
            "inception4e.branch3.1.conv",
            "inception5b.branch4.1.bn",
            "aux2.conv.bn",
            "aux2.fc1",
            "aux2.fc2",
            "fc",
        ],
    ) == {
        "conv1.conv": "conv1_7x7_s2",
        "conv3.bn": "conv2_3x3_bn",
        "inception4e.branch3.1.conv": "inception4e_5x5",
        "inception5b.branch4.1.bn": "inception5b_pool_proj_bn",
        "aux2.conv.bn": "aux2_conv_bn",
        "aux2.fc1": "aux2_fc",
        "aux2.fc2": "aux2",
        "fc": "predictions",
    }
    with pytest.raises(ValueError, match="'layer1.0.se.fc'.*resnet"):
        names("resnet", ["layer1.0.se.fc"])


def _keras_to_torch_vgg_bn(model):
    """Test-side inverse for a VGG-BN: torchvision's ``features.N`` numbering (conv, bn, relu per layer, a pool
    after each block) and ``classifier.{0,3,6}``, HWIO -> OIHW and the NHWC -> NCHW flatten order."""
    sd, i = collections.OrderedDict(), 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k, b = layer.get_weights()
            sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = k.transpose(3, 2, 0, 1), b
        elif isinstance(layer, keras.layers.BatchNormalization):
            i += 1
            g, be, m, v = layer.get_weights()
            sd.update(
                {
                    f"features.{i}.weight": g,
                    f"features.{i}.bias": be,
                    f"features.{i}.running_mean": m,
                    f"features.{i}.running_var": v,
                    f"features.{i}.num_batches_tracked": np.array(5),
                }
            )
            i += 2  # relu
        elif isinstance(layer, keras.layers.MaxPooling2D):
            i += 1
    h, w, c = model.get_layer("flatten").input.shape[1:]
    for index, name in zip((0, 3, 6), ("fc1", "fc2", "predictions")):
        k, b = model.get_layer(name).get_weights()
        if name == "fc1":
            k = k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
        sd[f"classifier.{index}.weight"], sd[f"classifier.{index}.bias"] = k.T, b
    return sd


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vgg_bn_torch_checkpoint_round_trip_without_torch(tmp_path, suffix):
    shape = (64, 64, 3)  # a 2×2×512 flatten: the NCHW reorder matters
    source = _randomise(kerasarch.build_model("vgg11_bn", input_shape=shape, classifier_activation=None))
    sd = _keras_to_torch_vgg_bn(source)
    path = tmp_path / f"vgg11_bn{suffix}"
    if suffix == ".pth":
        _write_pth(path, _tensors_for(sd))
    else:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    model = kerasarch.build_model("vgg11_bn", input_shape=shape, weights=str(path), classifier_activation=None)
    x = random_images(shape, batch=2)
    _compare(model(x, training=False), source(x, training=False), f"vgg11_bn from {suffix}")


# ------------------------------------------------------------------------------ torchvision parity (optional)

# kerasarch name, torchvision builder, input size, in the default run
TV_PEERS = [
    ("alexnet_owt", "alexnet", 224, False),
    *[(f"vgg{d}{bn}", f"vgg{d}{bn}", 224, False) for d in (11, 13, 16, 19) for bn in ("", "_bn")],
    ("googlenet_bn", "googlenet", 224, False),
    ("resnet18", "resnet18", 64, True),
    ("resnet34", "resnet34", 64, False),
    ("resnet50", "resnet50", 64, False),
    ("resnet101", "resnet101", 64, False),
    ("resnet152", "resnet152", 64, False),
    ("resnext50_32x4d", "resnext50_32x4d", 64, True),
    ("resnext101_32x8d", "resnext101_32x8d", 64, False),
    ("wide_resnet50_2", "wide_resnet50_2", 64, False),
    ("wide_resnet101_2", "wide_resnet101_2", 64, False),
    ("squeezenet1_0", "squeezenet1_0", 64, True),
    ("squeezenet1_1", "squeezenet1_1", 64, True),
    ("densenet121", "densenet121", 64, True),
    ("densenet161", "densenet161", 64, False),
    ("densenet169", "densenet169", 64, False),
    ("densenet201", "densenet201", 64, False),
]


def _torchvision_model(builder, x, seed=0):
    """A torchvision model with random weights, BatchNorm statistics included, its logits on ``x`` (NHWC) scaled
    to a standard deviation of 3 (random classifiers give logits of arbitrary scale; an absolute bound and top-1
    agreement only mean something at a fixed scale)."""
    torch.manual_seed(seed)
    kwargs = {}
    if builder == "googlenet":  # the kerasarch model takes already-normalised input: no transform_input
        kwargs = {"aux_logits": True, "init_weights": True, "transform_input": False}
    model = getattr(torchvision.models, builder)(weights=None, **kwargs).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
        scale = 3.0 / float(model(torch.from_numpy(x.transpose(0, 3, 1, 2))).std())
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return model


@needs_torch
@pytest.mark.parametrize(
    "name, builder, size",
    [pytest.param(n, b, s, marks=() if fast else pytest.mark.slow, id=n) for n, b, s, fast in TV_PEERS],
)
def test_torchvision_checkpoints_load_with_identical_outputs(name, builder, size, tmp_path):
    x = random_images((size, size, 3), batch=2, seed=1) * 2.0 - 1.0
    tv = _torchvision_model(builder, x)
    path = tmp_path / f"{builder}.pth"
    torch.save(tv.state_dict(), path)
    kwargs = {"aux_logits": True} if builder == "googlenet" else {}
    model = kerasarch.build_model(
        name, input_shape=(size, size, 3), weights=str(path), classifier_activation=None, **kwargs
    )
    with torch.no_grad():
        want = tv(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    if builder == "googlenet":  # torchvision returns the main logits in eval mode; kerasarch lists all outputs
        outputs = model(x, training=False)
        if not isinstance(outputs, dict):
            outputs = dict(zip(model.output_names, outputs))
        got = outputs["predictions"]
    else:
        got = model(x, training=False)
    _compare(got, want.numpy(), f"{name} from torchvision")


@needs_torch
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_save_files_read_exactly(tmp_path, legacy):
    tv = _torchvision_model("densenet121", random_images((64, 64, 3), batch=1))
    path = tmp_path / "d.pth"
    torch.save(tv.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    sd = load_torch_state_dict(path)
    want = tv.state_dict()
    assert list(sd) == list(want)
    for k, v in want.items():
        np.testing.assert_array_equal(sd[k], v.numpy(), err_msg=k)


@needs_torch
def test_safetensors_from_torchvision_and_headless_and_other_classes(tmp_path):
    from safetensors.numpy import save_file

    shape = (64, 64, 3)
    x = random_images(shape, batch=2, seed=2) * 2.0 - 1.0
    tv = _torchvision_model("resnet18", x)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.numpy() for k, v in tv.state_dict().items()}, str(path))
    model = kerasarch.build_model("resnet18", input_shape=shape, weights=str(path), classifier_activation=None)
    with torch.no_grad():
        want = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        tv.fc = torch.nn.Identity()
        pooled = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    _compare(model(x), want, "resnet18 from .safetensors")
    headless = kerasarch.build_model("resnet18", input_shape=shape, include_top=False, pooling="avg", weights=str(path))
    np.testing.assert_allclose(headless(x), pooled, atol=TOL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kerasarch.build_model("resnet18", input_shape=shape, classes=5, weights=str(path))
    assert any("predictions" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match=r"conv1_conv.*\[\(7, 7, 3, 64\), \(64,\)\].*\[\(7, 7, 3, 64\)\]"):
        kerasarch.build_model("resnet50_keras", input_shape=shape, weights=str(path))


def test_an_unknown_checkpoint_layout_is_refused():
    model = kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="Unrecognised torch checkpoint layout"):
        map_state_dict({"encoder.weight": np.zeros((1, 1))}, model)
