"""The residual family: keras.applications parity, parameter counts derived from the papers' layer tables,
multiply-adds against torchvision/keras.applications, the option-A shortcut against numpy, grouped convolutions,
and stochastic depth (identity at inference, drop rate in training)."""

import keras
import numpy as np
import pytest

import kerasarch
from kerasarch.applications.resnet import resnet, survival_probabilities
from kerasarch.layers.residual import StochasticDepth, ZeroPadShortcut
from tests.helpers import random_images, trainable_params, weight_shapes

# --- keras.applications parity ------------------------------------------------------------------------------------

_KERAS_APPS = [
    ("resnet50_keras", "ResNet50", False),
    ("resnet101_keras", "ResNet101", True),
    ("resnet152_keras", "ResNet152", True),
    ("resnet50v2", "ResNet50V2", False),
    ("resnet101v2", "ResNet101V2", True),
    ("resnet152v2", "ResNet152V2", True),
]


def _auto_named(layer_name):
    # keras.applications' ResNetV2 leaves its 1×1 subsampling max-pools unnamed; ours are `{block}_0_pool`.
    return layer_name.startswith("max_pooling2d")


@pytest.mark.parametrize(
    "name, app, slow", [pytest.param(n, a, s, marks=[pytest.mark.slow] if s else []) for n, a, s in _KERAS_APPS]
)
def test_layer_names_and_weight_shapes_equal_keras_applications(name, app, slow):
    ours = kerasarch.build_model(name)
    ref = getattr(keras.applications, app)(weights=None)
    assert ours.count_params() == ref.count_params()
    assert list(weight_shapes(ours).items()) == list(weight_shapes(ref).items())  # same order, names, shapes
    ref_names = [layer.name for layer in ref.layers if not _auto_named(layer.name)]
    assert [layer.name for layer in ours.layers if not layer.name.endswith("_0_pool")] == ref_names


@pytest.mark.parametrize("name, app", [("resnet50_keras", "ResNet50"), ("resnet50v2", "ResNet50V2")])
def test_same_outputs_as_keras_applications_on_the_same_weights(name, app):
    shape = (64, 64, 3)
    ref = getattr(keras.applications, app)(weights=None, input_shape=shape, classifier_activation=None)
    rng = np.random.default_rng(0)
    for layer in ref.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # non-trivial statistics
            g, b, m, v = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, g.shape),
                    rng.normal(0, 0.1, b.shape),
                    rng.normal(0, 0.1, m.shape),
                    rng.uniform(0.5, 1.5, v.shape),
                ]
            )
    ours = kerasarch.build_model(name, input_shape=shape, classifier_activation=None)
    for layer in ref.layers:
        if layer.weights:
            ours.get_layer(layer.name).set_weights(layer.get_weights())
    x = random_images(shape, batch=2) * 255 - 128
    np.testing.assert_allclose(ours.predict(x, verbose=0), ref.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


def test_the_two_imagenet_conventions():
    tv = kerasarch.build_model("resnet50", include_top=False)
    ka = kerasarch.build_model("resnet50_keras", include_top=False)
    # torchvision v1.5: stride on the 3×3 (symmetrically padded), no conv bias, BN eps 1e-5.
    assert tv.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert tv.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert tv.get_layer("conv3_block1_2_pad").padding == ((1, 1), (1, 1))
    assert not any(getattr(layer, "use_bias", False) for layer in tv.layers if isinstance(layer, keras.layers.Conv2D))
    assert tv.get_layer("conv3_block1_1_bn").epsilon == 1e-5
    # keras.applications / the paper: stride on the first 1×1, biases, BN eps 1.001e-5.
    assert ka.get_layer("conv3_block1_1_conv").strides == (2, 2)
    assert ka.get_layer("conv3_block1_2_conv").strides == (1, 1)
    assert all(layer.use_bias for layer in ka.layers if isinstance(layer, keras.layers.Conv2D))
    assert ka.get_layer("conv3_block1_1_bn").epsilon == 1.001e-5
    # Same stage outputs in both.
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        assert (
            tv.get_layer(f"conv{stage}_block{blocks}_out").output.shape
            == ka.get_layer(f"conv{stage}_block{blocks}_out").output.shape
        )


# --- parameter counts derived from the papers --------------------------------------------------------------------
# Each formula follows the paper's layer table: conv weights k·k·c_in·c_out (/groups), no conv biases; `bn`
# adds BatchNorm's γ and β (2 per channel); FC c·10 + 10. The printed figures round the trainable count (with BN),
# except two that only the conv and FC weights round to: ResNet-1001 (10.33M with BN, printed 10.2M) and
# ResNeXt-29 16×64d (68.16M, printed 68.1M). ResNet-1202's 19.4M, conversely, needs the BN parameters (19.33M
# without), so no single counting rule fits all twelve rows.
_PRINTED_WITHOUT_BN = {"preact_resnet1001", "resnext29_16x64d"}


def cifar_resnet_params(depth, bn=True):
    """He et al. 2015 §4.2: 3×3 stem of 16 (+BN), 3 stages of n = (depth-2)/6 basic blocks of 16, 32, 64
    filters, option-A shortcuts (no parameters), FC 64→10."""
    n, b = (depth - 2) // 6, 2 if bn else 0
    total, c_in = 27 * 16 + b * 16, 16
    for c in (16, 32, 64):
        # the first conv of the stage reads c_in; 2n-1 more 3×3 convs c→c; 2n BNs of c channels
        total += 9 * c_in * c + (2 * n - 1) * 9 * c * c + 2 * n * b * c
        c_in = c
    return total + 64 * 10 + 10


def preact_resnet_params(depth, bn=True):
    """He et al. 2016: 3×3 stem of 16 (no BN: the first block pre-activates), 3 stages of n = (depth-2)/9
    pre-activation bottlenecks (16, 32, 64)·4, projection where the channels change, final BN, FC 256→10."""
    n, b = (depth - 2) // 9, 2 if bn else 0
    total, c_in = 27 * 16, 16
    for w in (16, 32, 64):
        out = 4 * w
        for i in range(n):
            cin = c_in if i == 0 else out
            total += b * cin + cin * w + b * w + 9 * w * w + b * w + w * out + (cin * out if cin != out else 0)
        c_in = out
    return total + b * 256 + 256 * 10 + 10


def wrn_params(depth, k, bn=True):
    """Zagoruyko & Komodakis 2016 Table 1: 3×3 stem of 16, 3 stages of n = (depth-4)/6 pre-activation B(3,3)
    blocks of 16k, 32k, 64k, 1×1 projection where the channels change, final BN, FC 64k→10."""
    n, b = (depth - 4) // 6, 2 if bn else 0
    total, c_in = 27 * 16, 16
    for w in (16 * k, 32 * k, 64 * k):
        for i in range(n):
            cin = c_in if i == 0 else w
            total += b * cin + 9 * cin * w + b * w + 9 * w * w + (cin * w if cin != w else 0)
        c_in = w
    return total + b * 64 * k + 64 * k * 10 + 10


def resnext29_params(cardinality, d, bn=True):
    """Xie et al. 2016 §5.2: 3×3 stem of 64 (+BN), 3 stages of 3 bottlenecks with outputs 256, 512, 1024 and
    grouped 3×3 of cardinality·d·(1, 2, 4) channels, projection (+BN) where the channels change, FC 1024→10."""
    b = 2 if bn else 0
    total, c_in = 27 * 64 + b * 64, 64
    for p in (64, 128, 256):
        width, out = cardinality * d * p // 64, 4 * p
        for i in range(3):
            cin = c_in if i == 0 else out
            total += cin * width + b * width + 9 * width * width // cardinality + b * width + width * out + b * out
            if cin != out:
                total += cin * out + b * out
        c_in = out
    return total + 1024 * 10 + 10


# registry name: (formula, printed figure in M, decimals), from docs/references.md.
_CIFAR_COUNTS = {
    **{
        f"resnet{d}": (lambda bn, d=d: cifar_resnet_params(d, bn), fig, dec)
        for d, fig, dec in ((20, 0.27, 2), (32, 0.46, 2), (44, 0.66, 2), (56, 0.85, 2), (110, 1.7, 1), (1202, 19.4, 1))
    },
    "resnet110_sd": (lambda bn: cifar_resnet_params(110, bn), 1.7, 1),
    "preact_resnet164": (lambda bn: preact_resnet_params(164, bn), 1.7, 1),
    "preact_resnet1001": (lambda bn: preact_resnet_params(1001, bn), 10.2, 1),
    "wrn16_8": (lambda bn: wrn_params(16, 8, bn), 11.0, 1),
    "wrn28_10": (lambda bn: wrn_params(28, 10, bn), 36.5, 1),
    "resnext29_8x64d": (lambda bn: resnext29_params(8, 64, bn), 34.4, 1),
    "resnext29_16x64d": (lambda bn: resnext29_params(16, 64, bn), 68.1, 1),
}


@pytest.mark.parametrize("name", sorted(_CIFAR_COUNTS))
def test_cifar_formula_reproduces_the_printed_figure_and_the_spec(name):
    formula, figure, decimals = _CIFAR_COUNTS[name]
    assert round(formula(name not in _PRINTED_WITHOUT_BN) / 1e6, decimals) == figure
    spec = kerasarch.get_spec(name)
    if spec.params is not None:  # the rows whose BN parameters push the count past the printed rounding
        assert spec.params == formula(True)
    else:
        assert spec.params_approx == (figure, "M", decimals)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[pytest.mark.slow] if kerasarch.get_spec(n).slow else []) for n in sorted(_CIFAR_COUNTS)],
)
def test_cifar_model_has_the_formula_count(name):
    formula, _, _ = _CIFAR_COUNTS[name]
    model = kerasarch.build_model(name)
    assert trainable_params(model) == formula(True)
    conv_fc = sum(
        int(np.prod(w.shape))
        for layer in model.layers
        if not isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.trainable_weights
    )
    assert conv_fc == formula(False)


# --- multiply-adds ------------------------------------------------------------------------------------------------


def conv_fc_macs(model):
    """Multiply-adds of the Conv2D and Dense layers (torchvision's and keras.applications' GFLOPS figures)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w, _ = layer.output.shape[1:]
            total += h * w * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


_WITH_GMACS = [n for n in kerasarch.list_models(family="resnet") if kerasarch.get_spec(n).gmacs]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if kerasarch.get_spec(n).slow else []) for n in _WITH_GMACS]
)
def test_multiply_adds_match_the_reference(name):
    gmacs = kerasarch.get_spec(name).gmacs
    decimals = len(repr(gmacs).split(".")[1])
    assert round(conv_fc_macs(kerasarch.build_model(name)) / 1e9, decimals) == gmacs


# --- option-A shortcut and grouped convolutions ------------------------------------------------------------------


@pytest.mark.parametrize("shape, filters, strides", [((7, 9, 16), 32, 2), ((8, 8, 16), 16, 2), ((5, 5, 4), 12, 1)])
def test_zero_pad_shortcut_against_numpy(shape, filters, strides):
    x = np.random.default_rng(1).normal(size=(3, *shape)).astype("float32")
    sub = x[:, ::strides, ::strides, :]
    want = np.concatenate([sub, np.zeros((*sub.shape[:3], filters - shape[-1]), "float32")], axis=-1)
    layer = ZeroPadShortcut(filters, strides)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), want)
    assert layer.compute_output_shape((None, *shape)) == (None, *want.shape[1:])
    assert not layer.weights
    with pytest.raises(ValueError, match="cannot reduce channels"):
        ZeroPadShortcut(shape[-1] // 2, strides)(x)


def test_cifar_resnet_uses_parameter_free_option_a():
    model = kerasarch.build_model("resnet20")
    for stage, channels in ((3, 32), (4, 64)):
        layer = model.get_layer(f"conv{stage}_block1_0_pad")
        assert isinstance(layer, ZeroPadShortcut) and layer.filters == channels and layer.strides == 2
    assert not [layer for layer in model.layers if layer.name.endswith("_0_conv")]


def test_grouped_convolution_runs_compiled_on_cpu_and_equals_per_group_convolutions():
    # ResNeXt's grouped 3×3: TensorFlow has no CPU kernel for it, Keras compiles it with XLA.
    groups, width = 32, 128
    inp = keras.Input((8, 8, width))
    conv = keras.layers.Conv2D(width, 3, padding="same", groups=groups, use_bias=False)
    model = keras.Model(inp, conv(inp))
    x = np.random.default_rng(2).normal(size=(2, 8, 8, width)).astype("float32")
    got = model.predict(x, verbose=0)
    kernel = keras.ops.convert_to_numpy(conv.kernel)  # (3, 3, width / groups, width)
    per = width // groups
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros_like(got)
    for g in range(groups):
        cols = slice(g * per, (g + 1) * per)
        for i in range(3):
            for j in range(3):
                want[..., cols] += np.einsum("nhwc,cd->nhwd", xp[:, i : i + 8, j : j + 8, cols], kernel[i, j, :, cols])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    resnext = kerasarch.build_model("resnext50_32x4d", include_top=False)
    assert resnext.get_layer("conv2_block1_2_conv").kernel.shape == (3, 3, 4, 128)
    assert resnext.get_layer("conv5_block3_2_conv").kernel.shape == (3, 3, 32, 1024)


def test_wide_resnet_dropout_sits_between_the_convs():
    model = resnet(
        (1, 1, 1),
        block="basic",
        preact=True,
        stem="cifar",
        stem_width=16,
        widths=(32, 64, 128),
        strides=(1, 2, 2),
        dropout=0.3,
        classes=10,
        name="wrn10_2",
    )
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert [layer.name for layer in drops] == ["conv2_block1_dropout", "conv3_block1_dropout", "conv4_block1_dropout"]
    assert drops[0].rate == 0.3
    assert drops[0].input is model.get_layer("conv2_block1_1_relu").output


# --- stochastic depth --------------------------------------------------------------------------------------------


def test_survival_probability_decays_linearly_to_p_L():
    p = survival_probabilities(54, 0.5)
    assert p[-1] == 0.5 and p[0] == pytest.approx(1 - 0.5 / 54)
    np.testing.assert_allclose(np.diff(p), -0.5 / 54)
    model = kerasarch.build_model("resnet110_sd")
    drops = [layer for layer in model.layers if isinstance(layer, StochasticDepth)]
    assert len(drops) == 54
    np.testing.assert_allclose([layer.survival_prob for layer in drops], p)
    assert drops[0].name == "conv2_block1_drop" and drops[-1].name == "conv4_block18_drop"
    assert all(layer.mode == "batch" for layer in drops)


_SD_CONFIGS = {
    "post-basic": dict(
        layers_per_stage=(2, 2, 2),
        block="basic",
        stem="cifar",
        stem_width=16,
        widths=(16, 32, 64),
        strides=(1, 2, 2),
        shortcut="A",
    ),
    "post-bottleneck-grouped": dict(
        layers_per_stage=(2, 2),
        block="bottleneck",
        stem="cifar",
        stem_width=16,
        widths=(16, 32),
        strides=(1, 2),
        groups=4,
        base_width=8,
    ),
    "preact-bottleneck-keras": dict(
        layers_per_stage=(2, 2),
        block="bottleneck",
        preact=True,
        stem="cifar",
        stem_width=16,
        widths=(16, 32),
        strides=(2, 1),
        downsample_at="last",
        convention="keras",
    ),
    "preact-basic-wide": dict(
        layers_per_stage=(2, 2),
        block="basic",
        preact=True,
        stem="cifar",
        stem_width=16,
        widths=(32, 64),
        strides=(1, 2),
        dropout=0.2,
    ),
}


@pytest.mark.parametrize("kind", sorted(_SD_CONFIGS))
def test_stochastic_depth_is_the_identity_at_inference(kind):
    keras.utils.set_random_seed(3)
    plain = resnet(**_SD_CONFIGS[kind], input_shape=(16, 16, 3), classes=10, classifier_activation=None)
    sd = resnet(
        **_SD_CONFIGS[kind], input_shape=(16, 16, 3), classes=10, classifier_activation=None, stochastic_depth=0.5
    )
    assert len([layer for layer in sd.layers if isinstance(layer, StochasticDepth)]) == sum(
        _SD_CONFIGS[kind]["layers_per_stage"]
    )
    rng = np.random.default_rng(4)
    for layer in plain.layers:
        weights = [
            w + rng.normal(0, 0.1, w.shape).astype(w.dtype) if "moving" not in v.path else w
            for w, v in zip(layer.get_weights(), layer.weights)
        ]
        layer.set_weights(weights)
        sd.get_layer(layer.name).set_weights(weights)
    x = random_images((16, 16, 3), batch=4)
    np.testing.assert_array_equal(sd.predict(x, verbose=0), plain.predict(x, verbose=0))
    # In training mode the dropped branches change the output (the comparison above can fail).
    keras.utils.set_random_seed(5)
    outs = [keras.ops.convert_to_numpy(sd(x, training=True)) for _ in range(3)]
    ref = keras.ops.convert_to_numpy(plain(x, training=True))
    assert any(not np.allclose(o, ref, atol=1e-5) for o in outs)


def _tolerance(n, p):
    # 4.5 binomial standard deviations: a false alarm about once in 150,000 runs per check.
    return 4.5 * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.5, 0.8, 0.95])
def test_stochastic_depth_layer_per_sample_rate_and_scale(p):
    keras.utils.set_random_seed(6)
    n = 20_000
    y = keras.ops.convert_to_numpy(
        StochasticDepth(p, mode="sample", seed=11)(np.ones((n, 2, 2, 3), "float32"), training=True)
    )
    dropped = np.all(y == 0, axis=(1, 2, 3))
    assert abs(dropped.mean() - (1 - p)) < _tolerance(n, p)
    np.testing.assert_allclose(y[~dropped], 1 / p, rtol=1e-6)  # kept branches are scaled by 1/p_l


@pytest.mark.parametrize("p", [0.5, 0.8])
def test_stochastic_depth_layer_per_batch_drops_the_whole_batch(p):
    layer = StochasticDepth(p, mode="batch", seed=12)
    calls = 800
    fn = keras.ops.convert_to_numpy
    outs = np.stack([fn(layer(np.ones((4, 1, 1, 2), "float32"), training=True)) for _ in range(calls)])
    per_call = outs.reshape(calls, -1)
    assert np.all(per_call == per_call[:, :1])  # the whole mini-batch together
    dropped = per_call[:, 0] == 0
    assert abs(dropped.mean() - (1 - p)) < _tolerance(calls, p)
    np.testing.assert_allclose(per_call[~dropped], 1 / p, rtol=1e-6)
    np.testing.assert_array_equal(fn(layer(np.ones((4, 1, 1, 2), "float32"), training=False)), 1.0)


def test_stochastic_depth_drops_each_block_of_a_model_at_its_rate():
    keras.utils.set_random_seed(7)
    model = resnet(
        **_SD_CONFIGS["post-basic"],
        input_shape=(8, 8, 3),
        classes=10,
        stochastic_depth=0.5,
        stochastic_depth_mode="sample",
    )
    drops = [layer for layer in model.layers if isinstance(layer, StochasticDepth)]
    branches = keras.Model(model.input, [layer.output for layer in drops])
    n = 2_000
    outs = branches(random_images((8, 8, 3), batch=n, seed=8), training=True)
    for layer, out, p in zip(drops, outs, survival_probabilities(len(drops), 0.5)):
        dropped = np.all(keras.ops.convert_to_numpy(out) == 0, axis=(1, 2, 3))
        assert layer.survival_prob == pytest.approx(p)
        assert abs(dropped.mean() - (1 - p)) < _tolerance(n, p), layer.name


def test_stochastic_depth_trains_in_a_compiled_step():
    # Per-sample masks need the dynamic batch size inside a traced function.
    model = resnet(
        **_SD_CONFIGS["post-basic"],
        input_shape=(8, 8, 3),
        classes=10,
        stochastic_depth=0.5,
        stochastic_depth_mode="sample",
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(random_images((8, 8, 3), batch=6), np.arange(6) % 10, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# --- argument checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"convention": "caffe"}, "convention.*Received: convention='caffe'"),
        ({"stochastic_depth": 1.5}, "Received: stochastic_depth=1.5"),
        ({"shortcut": "D"}, "Received: shortcut='D'"),
        ({"groups": 32}, "Received: groups=32"),
        ({"layers_per_stage": (2, 2), "widths": (64,)}, "one entry per stage"),
    ],
)
def test_impossible_configurations_raise_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resnet(**kwargs)


def test_zero_init_residual_makes_untrained_blocks_the_identity():
    for kind in ("post-basic", "preact-bottleneck-keras"):
        model = resnet(**_SD_CONFIGS[kind], input_shape=(16, 16, 3), classes=10, zero_init_residual=True)
        probe = keras.Model(
            model.input, [model.get_layer("conv2_block1_out").output, model.get_layer("conv2_block2_out").output]
        )
        a, b = probe.predict(random_images((16, 16, 3), batch=2), verbose=0)
        s = a.shape[1] // b.shape[1]  # keras' ResNetV2 layout subsamples in the last block of a stage
        np.testing.assert_array_equal(a[:, ::s, ::s], b)  # block 2: identity shortcut + zero branch
    for name in ("resnet1202", "preact_resnet1001"):
        assert kerasarch.get_spec(name).config["zero_init_residual"] is True
