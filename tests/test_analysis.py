"""kerasarch.analysis: multiply-adds against torchvision's published figures and numerical counts, the lecture's
facts computed from built layers, receptive fields, memory estimates, and the summary / compare / models-doc
commands."""

import functools
import json
import math
import os

import keras
import numpy as np
import pytest

import kerasarch
from kerasarch import analysis, registry
from kerasarch.cli import main
from kerasarch.layers.lenet import LENET5_C3_TABLE, ConnectionTableConv2D
from kerasarch.layers.lrn import LocalResponseNormalization

# torchvision weight metadata, "_ops" (GFLOPS, which torchvision counts as multiply-adds), 224×224 input.
TORCHVISION_GMACS = {
    "alexnet_owt": 0.714,
    "vgg16": 15.47,
    "googlenet_bn": 1.498,
    "resnet50": 4.089,
    "resnext50_32x4d": 4.23,
    "densenet121": 2.834,
    "squeezenet1_0": 0.819,
    "squeezenet1_1": 0.349,
}


@functools.lru_cache(maxsize=None)
def _profile_of(name):
    """One profile per registered model for the whole module (VGG16 takes seconds to build)."""
    return analysis.profile(name)


@pytest.mark.parametrize("name, gmacs", sorted(TORCHVISION_GMACS.items()))
def test_gmacs_match_torchvision(name, gmacs):
    p = _profile_of(name)
    assert p.input_shape == (224, 224, 3)
    assert p.gmacs == pytest.approx(gmacs, rel=0.005), f"{name}: {p.gmacs:.4f} GMACs, torchvision {gmacs}"
    assert not [r.name for r in p.rows if r.estimated], "every layer of a registered model has a counting rule"


def test_keras_applications_resnet50_and_mobilenet():
    # ResNet50 (stride in the 1×1 conv, conv biases): 3.858 GMACs (docs/references.md, ka). MobileNet v1 1.0-224:
    # 569 million mult-adds and 4.2M parameters (Howard et al. 2017, arXiv:1704.04861, Table 8) — depthwise.
    p = analysis.profile(keras.applications.ResNet50(weights=None))
    assert p.gmacs == pytest.approx(3.858, rel=0.005)
    assert p.total_params == 25_636_712
    keras.backend.clear_session()
    mobilenet = keras.applications.MobileNet(weights=None)
    p = analysis.profile(mobilenet)
    assert p.total_macs / 1e6 == pytest.approx(569, rel=0.005)
    assert {r.type for r in p.rows if r.macs} == {"Conv2D", "DepthwiseConv2D"}
    # The same network nested inside another model counts the same.
    inner = keras.applications.MobileNet(weights=None, include_top=False, input_shape=(None, None, 3))
    inputs = keras.Input((224, 224, 3))
    head = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1000)], name="head")
    nested = keras.Model(inputs, head(inner(inputs)))
    q = analysis.profile(nested)
    assert q.total_macs == pytest.approx(p.total_macs, rel=1e-3)  # same convs; the head differs slightly
    assert any(r.name.startswith(inner.name + "/conv_dw_1") for r in q.rows)
    assert q.total_params == nested.count_params()


# ----------------------------------------------------------------------------------------------------------------
# MACs of single layers against the number of products the layer's linear map really performs: its matrix,
# obtained by feeding the one-hot basis, has one non-zero entry per (input, weight) product ("valid" padding,
# random non-zero weights). Plus the closed formulas.


def _linear_map_nnz(layer, input_shape):
    n = int(np.prod(input_shape))
    basis = np.eye(n, dtype="float32").reshape((n, *input_shape))
    layer.build((None, *input_shape))
    if getattr(layer, "bias", None) is not None:
        layer.bias.assign(np.zeros(layer.bias.shape, "float32"))
    out = keras.ops.convert_to_numpy(layer(basis)).reshape(n, -1)
    return int(np.count_nonzero(np.abs(out) > 0))


def _single_layer_macs(layer, input_shape):
    inputs = keras.Input(input_shape)
    p = analysis.profile(keras.Model(inputs, layer(inputs)))
    return p.rows[-1].macs


@pytest.mark.parametrize(
    "make, shape, formula",
    [
        # grouped conv: out positions × C_out × k·k·C_in/groups
        (lambda: keras.layers.Conv2D(12, 3, groups=4), (9, 9, 8), 7 * 7 * 12 * 3 * 3 * 8 // 4),
        (lambda: keras.layers.Conv2D(6, (3, 5), strides=2), (11, 13, 3), 5 * 5 * 6 * 3 * 5 * 3),
        # depthwise: out positions × C_in × multiplier × k·k
        (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2, strides=2), (11, 11, 4), 5 * 5 * 4 * 2 * 9),
        # dense of rank 3: positions × C_in × units
        (lambda: keras.layers.Dense(7), (5, 6), 5 * 6 * 7),
        # transposed conv: input positions × k·k·C_in·C_out
        (lambda: keras.layers.Conv2DTranspose(3, 3, strides=2), (4, 4, 2), 4 * 4 * 3 * 3 * 2 * 3),
        # LeNet-5's C3 on S2's 14×14×6: only the 60 connections of the paper's table, 10×10 positions × 25 taps
        (lambda: ConnectionTableConv2D(LENET5_C3_TABLE, 5), (14, 14, 6), 10 * 10 * 25 * 60),
    ],
)
def test_layer_macs_equal_products_of_its_linear_map(make, shape, formula):
    keras.utils.set_random_seed(1)
    macs = _single_layer_macs(make(), shape)
    assert macs == formula
    assert _linear_map_nnz(make(), shape) == formula


def test_separable_conv_and_custom_macs_method():
    # depthwise 3×3 on 8 channels + pointwise 8→16, at 6×6 output positions
    assert _single_layer_macs(keras.layers.SeparableConv2D(16, 3), (8, 8, 8)) == 36 * (9 * 8 + 8 * 16)

    class Counted(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

        def macs(self, input_shape):
            assert input_shape[0] is None
            return 123 * int(np.prod(input_shape[1:]))

    assert _single_layer_macs(Counted(), (2, 3)) == 123 * 6


def test_element_wise_work_is_not_macs():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.BatchNormalization()(inputs)
    x = keras.layers.ReLU()(x)
    a = keras.layers.MaxPooling2D(2)(x)
    b = LocalResponseNormalization(5)(a)
    y = keras.layers.Concatenate()([keras.layers.Add()([a, b]), a])
    p = analysis.profile(keras.Model(inputs, y))
    assert p.total_macs == 0
    ops = {r.type: r.other_ops for r in p.rows}
    assert ops == {
        "InputLayer": 0,
        "BatchNormalization": 2 * 256,
        "ReLU": 256,
        "MaxPooling2D": 4 * 64,
        "LocalResponseNormalization": (5 + 3) * 64,
        "Add": 64,
        "Concatenate": 128,
    }


# ----------------------------------------------------------------------------------------------------------------
# The lecture's facts, from built layers.


def test_alexnet_conv1_and_pool1():
    p = _profile_of("alexnet")
    conv1, pool1 = p.row("conv1"), p.row("pool1")
    assert conv1.output_shape == (55, 55, 96)  # (227 − 11) / 4 + 1 = 55
    assert conv1.params == 34_944  # 11·11·3·96 weights + 96 biases
    assert conv1.macs == 55 * 55 * 96 * 11 * 11 * 3
    assert pool1.output_shape == (27, 27, 96) and pool1.params == 0  # (55 − 3) / 2 + 1 = 27
    assert analysis.receptive_field("alexnet", "conv1") == (11, 4)


def _inception(filters, naive, input_shape=(28, 28, 256)):
    from kerasarch.blocks.inception import apply_inception_module

    inputs = keras.Input(input_shape)
    return keras.Model(inputs, apply_inception_module(inputs, filters, naive=naive, name="m"))


def test_inception_module_costs_of_the_slides():
    """The lecture's module on 28×28×256 (128 1×1, 192 3×3, 96 5×5, 3×3 max-pool).

    Naive: 28·28·256·(128 + 9·192 + 25·96) = 854M MACs, output 28×28×(128+192+96+256) = 672 channels.
    Bottleneck (64-channel 3×3 and 5×5 reductions, 64 pool projection): the slide's own terms add up to 271M;
    its total of 358M only comes out if the 3×3 conv reads 128 channels instead of the 64 of its reduction
    (28·28·192·3·3·128 = 173M instead of 87M).
    """
    naive = analysis.profile(_inception((128, None, 192, None, 96, None), naive=True))
    assert naive.rows[-1].output_shape == (28, 28, 672)
    assert naive.total_macs == 854_196_224
    assert round(naive.total_macs / 1e6) == 854
    bottleneck = analysis.profile(_inception((128, 64, 192, 64, 96, 64), naive=False))
    assert bottleneck.rows[-1].output_shape == (28, 28, 480)
    assert bottleneck.total_macs == 271_351_808
    terms = {r.name: r.macs for r in bottleneck.rows if r.macs}
    assert terms == {
        "m_1x1": 25_690_112,
        "m_3x3_reduce": 12_845_056,
        "m_3x3": 86_704_128,
        "m_5x5_reduce": 12_845_056,
        "m_5x5": 120_422_400,
        "m_pool_proj": 12_845_056,
    }
    inputs = keras.Input((28, 28, 128))
    wide3x3 = analysis.profile(keras.Model(inputs, keras.layers.Conv2D(192, 3, padding="same")(inputs))).total_macs
    assert round((bottleneck.total_macs - terms["m_3x3"] + wide3x3) / 1e6) == 358


# The lecture's VGG16 table, memory column (values per image), as printed: INPUT, conv/pool rows, FC rows.
_LECTURE_VGG16_TABLE = [
    150e3,
    3.2e6,
    3.2e6,
    800e3,
    1.6e6,
    1.6e6,
    400e3,
    800e3,
    800e3,
    800e3,
    200e3,
    400e3,
    400e3,
    400e3,
    100e3,
    100e3,
    100e3,
    100e3,
    25e3,
    4096,
    4096,
    1000,
]


def test_vgg16_forward_activations_against_the_lecture():
    """The lecture says "24M activations × 4 bytes ≈ 93 MB / image (forward only)". Its own per-layer table adds
    up to 15.2M values, and so does the built network: 15,237,608 values = 61 MB in float32 (58 MiB). The 24M
    figure matches neither that sum nor counting every conv output before and after its ReLU separately
    (28.8M)."""
    p = _profile_of("vgg16")
    exact = (
        224 * 224 * 3
        + sum(n * s * s * c for n, s, c in ((2, 224, 64), (2, 112, 128), (3, 56, 256), (3, 28, 512), (3, 14, 512)))
        + sum((s // 2) ** 2 * c for s, c in ((224, 64), (112, 128), (56, 256), (28, 512), (14, 512)))
        + 4096
        + 4096
        + 1000
    )
    assert exact == 15_237_608
    assert p.total_activations == exact
    assert sum(_LECTURE_VGG16_TABLE) == pytest.approx(exact, rel=0.005)  # the table is right ...
    assert p.activation_bytes(dtype="float32") == exact * 4 == 60_950_432  # ... 61 MB, not 93–96 MB
    assert 24e6 / p.total_activations > 1.5
    assert p.activation_count(every_output=True) == 28_818_408  # + ReLU outputs, Flatten, Dropout
    # At inference only block1_conv1's output and block1_conv2's, alive together, have to fit: 2·224·224·64.
    assert p.peak_activation_count() == 2 * 224 * 224 * 64
    # "~2× for backward": activations kept plus their gradients, still ≈ 122 MB, not 186.
    assert 2 * p.activation_bytes(dtype="float32") / 1e6 == pytest.approx(121.9, abs=0.1)


def test_training_memory_breakdown():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    y = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    p = analysis.profile(keras.Model(inputs, y), batch=16)
    acts = 8 * 8 * 3 + 8 * 8 * 4 + 8 * 8 * 4 + 4 + 2  # input, conv, BN, (ReLU in place), pool, dense
    assert p.total_activations == acts
    params = (3 * 3 * 3 * 4 + 4) + 4 * 4 + (4 * 2 + 2)
    trainable = params - 8  # BN moving mean and variance
    parts = p.training_memory_breakdown(optimizer="adam")
    assert parts == {
        "activations": 16 * acts * 4,
        "params": params * 4,
        "grads": trainable * 4,
        "optimizer": 2 * trainable * 4,
        "total": (16 * acts + params + 3 * trainable) * 4,
    }
    assert p.training_memory_bytes(optimizer="sgd") == (16 * acts + params + trainable) * 4
    with pytest.raises(ValueError, match="Received: optimizer='adamx'"):
        p.training_memory_bytes(optimizer="adamx")


def test_inference_working_set():
    inputs = keras.Input((8, 8, 3))  # 192 values
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 256, read by both branches
    x = keras.layers.ReLU()(x)  # in place
    a = keras.layers.Conv2D(2, 1)(x)  # 128
    b = keras.layers.Conv2D(2, 1)(x)  # 128: x, a and b alive together
    y = keras.layers.Concatenate()([a, b])  # 256 with a and b
    p = analysis.profile(keras.Model(inputs, y), batch=4)
    assert p.peak_activation_count() == 512
    assert p.peak_activation_bytes() == 4 * 512 * 4
    assert p.total_activations == 192 + 256 + 128 + 128 + 256


def test_mixed_precision_halves_activation_bytes():
    keras.config.set_dtype_policy("mixed_bfloat16")
    inputs = keras.Input((16, 16, 3))
    y = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    p = analysis.profile(keras.Model(inputs, y))
    assert p.compute_dtype == "bfloat16" and p.variable_dtype == "float32"
    assert p.activation_bytes() == 16 * 16 * 3 * 4 + 16 * 16 * 8 * 2  # float32 input, bfloat16 conv output
    assert p.activation_bytes(dtype="float32") == (16 * 16 * 3 + 16 * 16 * 8) * 4


# ----------------------------------------------------------------------------------------------------------------
# Receptive fields.


def test_three_stacked_3x3_convs_see_7x7():
    inputs = keras.Input((32, 32, 16))
    x = inputs
    for i in range(3):
        x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name=f"c{i}")(x)
    stacked = keras.Model(inputs, x)
    assert analysis.receptive_field(stacked, "c2") == (7, 1)
    single = keras.Model(inputs, keras.layers.Conv2D(16, 7, padding="same", use_bias=False, name="c7")(inputs))
    assert analysis.receptive_field(single, "c7") == (7, 1)
    # 3·(3²C²) = 27C² weights instead of 49C² (C = 16).
    assert stacked.count_params() == 27 * 16**2 and single.count_params() == 49 * 16**2


def test_receptive_fields_along_the_graph():
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.ZeroPadding2D(1)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, name="a")(x)  # 3, jump 2
    b1 = keras.layers.Conv2D(4, 1, name="b1")(x)
    b5 = keras.layers.Conv2D(4, 5, padding="same", name="b5")(x)  # 3 + 4·2 = 11
    y = keras.layers.Concatenate(name="cat")([b1, b5])  # max over branches
    y = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="d")(y)  # 11 + 2·2·2 = 19
    y = keras.layers.MaxPooling2D(2, name="p")(y)  # 19 + 1·2 = 21, jump 4
    m = keras.Model(inputs, y)
    p = analysis.profile(m)
    got = {n: tuple(p.row(n).receptive_field) for n in ("a", "b1", "b5", "cat", "d", "p")}
    assert got == {"a": (3, 2), "b1": (3, 2), "b5": (11, 2), "cat": (11, 2), "d": (19, 2), "p": (21, 4)}
    rect = keras.Model(inputs, keras.layers.Conv2D(2, (3, 5), strides=(1, 2), name="r")(inputs))
    assert analysis.receptive_field(rect, "r") == ((3, 5), (1, 2))


def test_receptive_fields_of_known_networks():
    # Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural Networks", Distill 2019, Table 1:
    # vgg_16 212, mobilenet_v1 315, inception_v3 1311 pixels (final feature maps, stride 32).
    assert tuple(_profile_of("vgg16").row("block5_pool").receptive_field) == (212, 32)
    assert analysis.receptive_field(keras.applications.MobileNet(weights=None), "conv_pw_13_relu") == (315, 32)
    keras.backend.clear_session()
    assert analysis.receptive_field(keras.applications.InceptionV3(weights=None), "mixed10") == (1311, 32)


# ----------------------------------------------------------------------------------------------------------------
# Exports and commands.


def test_exports(tmp_path):
    p = analysis.profile("vgg11", input_shape=(32, 32, 3))
    p.to_json(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert (
        data["total_macs"] == p.total_macs and data["total_params"] == 132_863_336 - (25088 - 512) * 4096
    )  # fc1 reads 1×1×512 at 32×32
    assert len(data["rows"]) == len(p.rows) and data["rows"][1]["name"] == "block1_conv1"
    p.to_csv(tmp_path / "p.csv")
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert len(lines) == len(p.rows) + 1 and lines[0].startswith("name,type,output_shape,params,")
    md = p.to_markdown()
    assert "| block5_pool | MaxPooling2D | 1×1×512 |" in md and f"**{p.total_macs:,}**" in md


def test_summary_command(tmp_path, capsys):
    assert main(["summary", "vgg11", "--input-shape", "32,32,3"]) == 0
    out = capsys.readouterr().out
    assert "block1_conv1" in out and "0.176 GMACs" in out
    path = tmp_path / "s.md"
    assert main(["summary", "vgg11", "--input-shape", "32x32x3", "--format", "markdown", "--out", str(path)]) == 0
    assert path.read_text().startswith("### vgg11")


def _tiny(name, width, top1, **kwargs):
    def build(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=10,
        classifier_activation="softmax",
        name=name,
    ):
        inputs = keras.Input(input_shape or (32, 32, 3))
        x = keras.layers.Conv2D(width, 3, strides=2, activation="relu", name="conv")(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return keras.Model(inputs, keras.layers.Dense(classes, name="predictions")(x), name=name)

    return registry.ModelSpec(
        name=name,
        family="tiny",
        builder=build,
        input_shape=(32, 32, 3),
        classes=10,
        params=1,
        top1=top1,
        preprocessing="unit",
        **kwargs,
    )


@pytest.fixture
def tiny_models(monkeypatch):
    """Two tiny models in the registry for the duration of one test."""
    registry._ensure_loaded()
    for spec in (_tiny("tiny_a", 8, 50.0), _tiny("tiny_b", 16, 60.0)):
        monkeypatch.setitem(registry._REGISTRY, spec.name, spec)
    return ["tiny_a", "tiny_b"]


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 5000


def test_compare_command_on_two_tiny_models(tiny_models, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", *tiny_models, "--out", str(out), "--runs", "2", "--batch", "4", "--in-process"]) == 0
    md = (out / "compare.md").read_text()
    assert "| tiny_a | 32×32×3 |" in md and "| tiny_b | 32×32×3 |" in md
    for png in ("accuracy_vs_gmacs.png", "latency_throughput.png", "memory.png"):
        assert _is_png(out / png), png
    results = json.loads((out / "compare.json").read_text())["results"]
    a = results[0]
    assert a["macs"] == 15 * 15 * 8 * 27 + 8 * 10
    assert a["latency_ms"] > 0 and a["throughput_b4"] > 0 and len(a["times_s"]["4"]) == 2
    assert a["top1"] == 50.0


def test_compare_isolated_process_on_a_keras_file(tmp_path):
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)), name="flat")
    path = tmp_path / "flat.keras"
    model.save(path)
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--out", str(out), "--runs", "1", "--warmup", "0", "--batch", "2"]) == 0
    r = json.loads((out / "compare.json").read_text())["results"][0]
    assert r["model"] == "flat.keras" and r["params"] == 16 * 16 * 3 * 3 + 3 and r["top1"] is None
    assert r["peak_rss_mb"] >= 0 and r["memory_method"] in ("VmHWM", "sampling")


@pytest.mark.slow
def test_compare_the_lecture_models(tmp_path):
    names = ["alexnet", "vgg16", "googlenet", "resnet50", "squeezenet1_0"]
    out = tmp_path / "cmp"
    assert main(["compare", *names, "--out", str(out), "--runs", "3"]) == 0
    results = {r["model"]: r for r in json.loads((out / "compare.json").read_text())["results"]}
    for n in names:
        ref = kerasarch.get_spec(n).gmacs
        if ref is not None:
            assert results[n]["gmacs"] == pytest.approx(ref, rel=0.005)
    # The lecture's complexity comparison: VGG most operations and parameters; SqueezeNet ≈ 50× fewer parameters
    # than AlexNet. Its "GoogLeNet ≈ 12× fewer" takes GoogLeNet as 5M; the built network (paper Table 1) has
    # 7.0M, 8.7× fewer than the two-tower AlexNet.
    assert max(results, key=lambda n: results[n]["gmacs"]) == "vgg16"
    assert max(results, key=lambda n: results[n]["params"]) == "vgg16"
    assert results["alexnet"]["params"] / results["squeezenet1_0"]["params"] == pytest.approx(50, rel=0.05)
    assert results["alexnet"]["params"] / results["googlenet"]["params"] == pytest.approx(8.7, rel=0.02)
    for png in ("accuracy_vs_gmacs.png", "latency_throughput.png", "memory.png"):
        assert _is_png(out / png)


def test_models_doc_lists_every_registered_model():
    """docs/models.md is generated by `python -m kerasarch models-doc`; re-run it when a model is added."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "models.md")
    text = open(path).read()
    missing = [n for n in kerasarch.list_models() if f"| `{n}` |" not in text]
    assert not missing, f"docs/models.md lacks {missing}: run `python -m kerasarch models-doc`"


def test_models_doc_generation():
    from kerasarch.commands.models_doc import model_rows, render

    text = render(model_rows(["vgg11"], progress=False))
    assert "| `vgg11` | 224×224×3 | 132,863,336 | 132,863,336 | 7.609 | 7.609 | +0.00% |" in text
    assert math.isclose(float(text.split("| 7.609 | +0.00% | ")[1].split(" |")[0]), 9.12, abs_tol=0.01)


def test_input_shape_of_a_size_agnostic_model():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same", name="c")(inputs))
    with pytest.raises(ValueError, match="pass `input_shape`"):
        analysis.profile(model)
    p = analysis.profile(model, input_shape=(10, 12, 3))
    assert p.row("c").output_shape == (10, 12, 4) and p.total_macs == 10 * 12 * 4 * 27
