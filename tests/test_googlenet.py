"""GoogLeNet against Table 1 of arXiv:1409.4842, torchvision's variant, the auxiliary heads, the lecture's Inception
module example, and the ceil-mode pooling the Caffe-era models need."""

import math

import keras
import numpy as np
import pytest

import kerasarch
from kerasarch.applications.googlenet import AUX_LOSS_WEIGHT, AUX_LOSS_WEIGHTS, strip_auxiliary
from kerasarch.blocks.inception import slide_inception_module
from kerasarch.blocks.pooling import apply_ceil_pool, ceil_pool_size
from tests.helpers import random_images, trainable_params

ALEXNET_PARAMS = 60_965_224  # docs/references.md, Caffe bvlc_alexnet

# Table 1 of the paper, typed again from the paper: output size, depth, #1×1, #3×3 reduce, #3×3, #5×5 reduce,
# #5×5, pool proj.
TABLE1 = {
    "3a": (28, 256, (64, 96, 128, 16, 32, 32)),
    "3b": (28, 480, (128, 128, 192, 32, 96, 64)),
    "4a": (14, 512, (192, 96, 208, 16, 48, 64)),
    "4b": (14, 512, (160, 112, 224, 24, 64, 64)),
    "4c": (14, 512, (128, 128, 256, 24, 64, 64)),
    "4d": (14, 528, (112, 144, 288, 32, 64, 64)),
    "4e": (14, 832, (256, 160, 320, 32, 128, 128)),
    "5a": (7, 832, (256, 160, 320, 32, 128, 128)),
    "5b": (7, 1024, (384, 192, 384, 48, 128, 128)),
}


def conv_dense_macs(model):
    """Multiply-adds of the Conv2D and Dense layers of ``model`` (per example), from their static shapes."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            total += h * w * c_out * math.prod(layer.kernel_size) * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def _module_params(c, filters, k5=5):
    """Weights + biases of an Inception module with ``c`` input channels (Figure 2b)."""
    n1, r3, n3, r5, n5, pp = filters
    return (c + 1) * (n1 + r3 + r5 + pp) + (9 * r3 + 1) * n3 + (k5 * k5 * r5 + 1) * n5


def _module_macs(size, c, filters, k5=5):
    n1, r3, n3, r5, n5, pp = filters
    return size * size * (c * (n1 + r3 + r5 + pp) + 9 * r3 * n3 + k5 * k5 * r5 * n5)


def _layer_params(model, key):
    """Trainable parameters of the layer ``key``, or of every layer whose name starts with ``key`` ending in "_"."""
    return sum(
        int(np.prod(w.shape))
        for layer in model.layers
        if layer.name == key or (key.endswith("_") and layer.name.startswith(key))
        for w in layer.trainable_weights
    )


def test_googlenet_parameter_count_from_table1():
    """The exact count is Table 1's rows with biases: stem conv1 7×7×3×64 (9,472), conv2 reduce 1×1×64×64 (4,160),
    conv2 3×3×64×192 (110,784), the nine modules from their filter columns, and the 1024→1000 linear layer
    (1,025,000): 6,998,552 ≈ 7.0M. The paper's own params column sums to 6,797.7K ≈ 6.8M; it does not follow
    from its filter columns (conv1 is listed as 2.7K, 3a as 159K where 192→64/96→128/16→32/32 gives 163K
    weights), hence the "≈6.8M–7.0M" of docs/references.md."""
    model = kerasarch.build_model("googlenet")
    expected = {"conv1_7x7_s2": 9_472, "conv2_3x3_reduce": 4_160, "conv2_3x3": 110_784, "predictions": 1_025_000}
    c = 192
    for stage, (_, depth, filters) in TABLE1.items():
        expected[f"inception{stage}_"] = _module_params(c, filters)
        c = depth
    got = {prefix: _layer_params(model, prefix) for prefix in expected}
    assert got == expected
    total = sum(expected.values())
    assert total == trainable_params(model) == kerasarch.get_spec("googlenet").params == 6_998_552
    assert 6.8e6 <= total <= 7.05e6 and round(total / 1e6, 1) == 7.0
    # Output sizes and depths of Table 1 (ceil-mode pools: 112 → 56 → 28 → 14 → 7).
    assert model.get_layer("conv1_7x7_s2").output.shape[1:] == (112, 112, 64)
    assert model.get_layer("pool1").output.shape[1:] == (56, 56, 64)
    assert model.get_layer("conv2_3x3").output.shape[1:] == (56, 56, 192)
    assert model.get_layer("pool2").output.shape[1:] == (28, 28, 192)
    assert model.get_layer("pool3").output.shape[1:] == (14, 14, 480)
    assert model.get_layer("pool4").output.shape[1:] == (7, 7, 832)
    for stage, (size, depth, _) in TABLE1.items():
        assert model.get_layer(f"inception{stage}_out").output.shape[1:] == (size, size, depth), stage
    assert model.get_layer("pool5").output.shape[1:] == (1024,)
    assert model.get_layer("dropout").rate == 0.4
    # No BN, biases everywhere, true 5×5 convs, Caffe's LRN (k = 1).
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert model.get_layer("inception3a_5x5").kernel.shape == (5, 5, 16, 32)
    assert model.get_layer("inception3a_5x5").use_bias
    norm = model.get_layer("norm1")
    assert (norm.size, norm.alpha, norm.beta, norm.k) == (5, 1e-4, 0.75, 1.0)
    # Multiply-adds: Table 1's rows at their output sizes. The paper says ≈1.5G ("1.5 billion multiply-adds", and
    # the ops column sums to 1,502M) because its conv1 row counts 34M; a 7×7×3×64 conv on 112×112 is 118M.
    macs = 112 * 112 * 64 * 7 * 7 * 3 + 56 * 56 * 64 * 64 + 56 * 56 * 192 * 3 * 3 * 64 + 1024 * 1000
    c = 192
    for size, depth, filters in TABLE1.values():
        macs += _module_macs(size, c, filters)
        c = depth
    assert conv_dense_macs(model) == macs == 1_582_671_872
    assert round(macs / 1e9, 3) == kerasarch.get_spec("googlenet").gmacs
    # The lecture's "≈12× fewer parameters than AlexNet" takes GoogLeNet as 5M; with the real 7.0M it is 8.7×.
    assert round(ALEXNET_PARAMS / total, 1) == 8.7


def test_googlenet_bn_is_torchvisions_variant():
    model = kerasarch.build_model("googlenet_bn")
    assert model.get_layer("inception3a_5x5").kernel.shape == (3, 3, 16, 32)  # pytorch/vision#906
    assert not model.get_layer("inception3a_5x5").use_bias
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(bns) == len(convs) == 57 and all(bn.epsilon == 1e-3 for bn in bns)
    assert not any(type(layer).__name__ == "LocalResponseNormalization" for layer in model.layers)
    assert model.get_layer("pool4").pool_size == (2, 2)
    assert model.get_layer("pool4").output.shape[1:] == (7, 7, 832)
    assert model.get_layer("dropout").rate == 0.2
    assert round(conv_dense_macs(model) / 1e9, 3) == kerasarch.get_spec("googlenet_bn").gmacs == 1.498


def test_auxiliary_heads_outputs_strip_and_loss_weights():
    model = kerasarch.build_model("googlenet", aux_logits=True)
    # Each head: 5×5/3 pool (14 → 4), 1×1 conv 128 (on 512 or 528 channels), FC 4·4·128 → 1024, linear → 1000.
    aux1 = (512 * 128 + 128) + (4 * 4 * 128 * 1024 + 1024) + (1024 * 1000 + 1000)  # 3,188,840
    aux2 = (528 * 128 + 128) + (4 * 4 * 128 * 1024 + 1024) + (1024 * 1000 + 1000)  # 3,190,888
    assert trainable_params(model) == 6_998_552 + aux1 + aux2 == 6_998_552 + 6_379_728
    assert model.get_layer("aux1_pool").output.shape[1:] == (4, 4, 512)
    assert model.get_layer("aux2_conv").input.shape[1:] == (4, 4, 528)
    assert model.get_layer("aux1_dropout").rate == 0.7
    x = random_images((224, 224, 3), batch=1)
    train, infer = model(x, training=True), model(x, training=False)
    assert isinstance(train, dict) and isinstance(infer, dict)
    assert sorted(train) == sorted(infer) == ["aux1", "aux2", "predictions"]
    assert (
        {k: tuple(v.shape) for k, v in train.items()}
        == {k: tuple(v.shape) for k, v in infer.items()}
        == {"aux1": (1, 1000), "aux2": (1, 1000), "predictions": (1, 1000)}
    )

    inference = strip_auxiliary(model)
    assert len(inference.outputs) == 1 and inference.name == "googlenet"
    assert not any(layer.name.startswith("aux") for layer in inference.layers)
    assert inference.get_layer("inception5b_1x1") is model.get_layer("inception5b_1x1")
    assert trainable_params(inference) == 6_998_552
    np.testing.assert_allclose(
        np.asarray(inference(x, training=False)), np.asarray(infer["predictions"]), rtol=1e-5, atol=1e-7
    )

    # The documented 0.3 weighting, as compile() applies it to the named outputs.
    assert AUX_LOSS_WEIGHT == 0.3 and AUX_LOSS_WEIGHTS == {"aux1": 0.3, "aux2": 0.3, "predictions": 1.0}
    model.compile(
        optimizer="sgd",
        loss={k: "sparse_categorical_crossentropy" for k in AUX_LOSS_WEIGHTS},
        loss_weights=AUX_LOSS_WEIGHTS,
    )
    y = np.array([3])
    logs = model.train_on_batch(x, {"aux1": y, "aux2": y, "predictions": y}, return_dict=True)
    np.testing.assert_allclose(
        logs["loss"], logs["predictions_loss"] + 0.3 * (logs["aux1_loss"] + logs["aux2_loss"]), rtol=1e-5
    )


def test_auxiliary_outputs_survive_a_keras_round_trip(tmp_path):
    """torchvision's heads (adaptive 4×4 pool) at a small input; the reloaded model still returns the dict."""
    model = kerasarch.build_model("googlenet_bn", aux_logits=True, input_shape=(64, 64, 3), classes=7)
    assert model.get_layer("aux2_pool").output.shape[1:] == (4, 4, 528)
    x = random_images((64, 64, 3))
    y = model.predict(x, verbose=0)
    model.save(tmp_path / "g.keras")
    loaded = keras.saving.load_model(tmp_path / "g.keras", safe_mode=True)
    z = loaded.predict(x, verbose=0)
    assert isinstance(y, dict) and isinstance(z, dict) and sorted(z) == ["aux1", "aux2", "predictions"]
    for key in y:
        assert y[key].shape == (2, 7)
        np.testing.assert_allclose(z[key], y[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["googlenet", "googlenet_bn"])
def test_smallest_input(name):
    """At ``min_input_size`` (31 with the 3×3/2 pool4, 15 with torchvision's 2×2/2) the last map is 1×1."""
    size = kerasarch.get_spec(name).min_input_size
    model = kerasarch.build_model(name, include_top=False, input_shape=(size, size, 3))
    assert model.output_shape == (None, 1, 1, 1024)


def test_auxiliary_heads_need_the_top_and_a_known_pool():
    with pytest.raises(ValueError, match="aux_logits=True.*include_top=False"):
        kerasarch.build_model("googlenet", aux_logits=True, include_top=False)
    with pytest.raises(ValueError, match="Received: aux_pool='max'"):
        kerasarch.build_model("googlenet", aux_pool="max")
    with pytest.raises(ValueError, match="aux1_pool.*Received: feature map of spatial size \\(7, 7\\)"):
        kerasarch.build_model("googlenet", aux_logits=True, input_shape=(112, 112, 3))


def test_strip_auxiliary_needs_a_classifier():
    model = kerasarch.build_model("googlenet_bn", include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="'predictions' layer"):
        strip_auxiliary(model)


def test_slide_inception_modules_naive_and_bottleneck():
    """Lecture example, 28×28×256 input. Naive: 128 1×1 + 192 3×3 + 96 5×5 + 256 pooled = 672 channels,
    28·28·(128·256 + 192·9·256 + 96·25·256) = 854M multiply-adds. Bottleneck (64-channel reductions, pool
    projection 64): 128 + 192 + 96 + 64 = 480 channels; its terms add up to 271M, not the slide's 358M (358M only
    if the 3×3 conv read 128 channels: 271,351,808 + 28·28·192·9·64 = 358,055,936)."""
    naive = slide_inception_module(naive=True)
    assert naive.output_shape == (None, 28, 28, 672)
    assert conv_dense_macs(naive) == 28 * 28 * (128 * 256 + 192 * 9 * 256 + 96 * 25 * 256) == 854_196_224
    assert trainable_params(naive) == 257 * 128 + (9 * 256 + 1) * 192 + (25 * 256 + 1) * 96 == 1_089_952

    bottleneck = slide_inception_module(naive=False)
    assert bottleneck.output_shape == (None, 28, 28, 480)
    # 1×1 128 on 256: 32,896; 3×3 reduce 64: 16,448; 3×3 192 on 64: 110,784; 5×5 reduce 64: 16,448;
    # 5×5 96 on 64: 153,696; pool projection 64: 16,448.
    assert trainable_params(bottleneck) == 32_896 + 16_448 + 110_784 + 16_448 + 153_696 + 16_448 == 346_720
    assert conv_dense_macs(bottleneck) == 271_351_808
    assert {layer.name for layer in bottleneck.layers if isinstance(layer, keras.layers.Conv2D)} == {
        "inception_1x1",
        "inception_3x3_reduce",
        "inception_3x3",
        "inception_5x5_reduce",
        "inception_5x5",
        "inception_pool_proj",
    }
    # Concatenated in Caffe's order: 1×1, 3×3, 5×5, pool projection.
    parts = [bottleneck.get_layer(f"inception_{b}_relu").output for b in ("1x1", "3x3", "5x5", "pool_proj")]
    probe = keras.Model(bottleneck.input, [bottleneck.output, *parts])
    out, *branches = probe.predict(random_images((28, 28, 256), batch=1), verbose=0)
    np.testing.assert_array_equal(out, np.concatenate(branches, axis=-1))


@pytest.mark.slow
def test_naive_googlenet_grows_to_4944_channels():
    """Naive modules everywhere: each module adds its 1×1 + 3×3 + 5×5 filters to its input depth (192 → 416 → 832
    → ... → 4,944), about 14× the parameters of the real network."""
    model = kerasarch.build_model("googlenet", naive=True, include_top=False, input_shape=(64, 64, 3))
    c, params = 192, 9_472 + 4_160 + 110_784
    for stage, (_, _, (n1, _, n3, _, n5, _)) in TABLE1.items():
        params += (c + 1) * n1 + (9 * c + 1) * n3 + (25 * c + 1) * n5
        c += n1 + n3 + n5
        assert model.get_layer(f"inception{stage}_out").output.shape[-1] == c
    assert c == 4_944 and trainable_params(model) == params == 92_581_008


def caffe_pool(a, k, s, kind):
    """Caffe's pooling (ceil mode, no padding; the mean covers the cells inside the input), with loops."""
    n, h, w, c = a.shape
    oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    out = np.empty((n, oh, ow, c), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            win = a[:, i * s : min(i * s + k, h), j * s : min(j * s + k, w), :]
            out[:, i, j, :] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return out


@pytest.mark.parametrize(
    "shape, k, s, kind, signed",
    [
        ((8, 8), 3, 2, "max", True),
        ((7, 7), 3, 2, "max", True),
        ((109, 109), 3, 2, "max", True),
        ((2, 2), 3, 2, "max", True),
        ((14, 14), 2, 2, "max", True),
        ((7, 7), 2, 2, "max", True),
        ((7, 8), 3, 2, "max", False),
        ((6, 6), 5, 3, "max", False),  # zero-padded fallback, post-ReLU inputs
        ((14, 14), 5, 3, "avg", True),
        ((16, 16), 3, 2, "avg", True),
        ((15, 15), 3, 2, "avg", True),
    ],
)
def test_ceil_pool_matches_caffe(shape, k, s, kind, signed):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, *shape, 3)).astype("float32")
    a = a if signed else np.abs(a)
    inp = keras.Input((*shape, 3))
    model = keras.Model(inp, apply_ceil_pool(inp, k, s, kind=kind, name="pool"))
    expected = caffe_pool(a, k, s, kind)
    assert model.output_shape[1:3] == (ceil_pool_size(shape[0], k, s), ceil_pool_size(shape[1], k, s))
    np.testing.assert_allclose(model.predict(a, verbose=0), expected, rtol=1e-6, atol=1e-6)


def test_ceil_pool_with_unknown_size_and_impossible_cases():
    inp = keras.Input((None, None, 2))
    model = keras.Model(inp, apply_ceil_pool(inp, 3, 2, name="pool"))
    for size in (7, 8, 9):
        a = np.abs(np.random.default_rng(size).normal(size=(1, size, size, 2))).astype("float32")
        np.testing.assert_allclose(model.predict(a, verbose=0), caffe_pool(a, 3, 2, "max"), rtol=1e-6)
    with pytest.raises(ValueError, match="average pooling.*Received: feature map of spatial size \\(7, 7\\)"):
        apply_ceil_pool(keras.Input((7, 7, 2)), 5, 3, kind="avg", name="p")
    with pytest.raises(ValueError, match="needs a larger input.*\\(1, 1\\)"):
        apply_ceil_pool(keras.Input((1, 1, 2)), 3, 2, name="p")


def test_auxiliary_loss_weight_is_the_papers_in_the_recipe_and_the_constant():
    """Szegedy et al. 2014 §5: "the losses of the auxiliary classifiers were weighted by 0.3". The training recipe
    is what ``train()`` uses; the module constant is what a user's own ``compile(loss_weights=...)`` uses."""
    from kerasarch.training import get_recipe

    recipe = get_recipe(kerasarch.get_spec("googlenet"))
    assert recipe["aux_loss_weight"] == 0.3
    assert AUX_LOSS_WEIGHT == 0.3
    assert AUX_LOSS_WEIGHTS == {"aux1": 0.3, "aux2": 0.3, "predictions": 1.0}
