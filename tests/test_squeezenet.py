"""SqueezeNet against Table 1 of arXiv:1602.07360 and torchvision's figures, plus the Fire module and the bypasses."""

import keras
import numpy as np
import pytest

import kerasarch
from kerasarch.blocks.fire import apply_fire_module
from tests.helpers import random_images, trainable_params
from tests.test_googlenet import ALEXNET_PARAMS, conv_dense_macs

# Table 1 of the paper, "# parameter before pruning" per layer (SqueezeNet 1.0).
TABLE1_PARAMS = {
    "conv1": 14_208,
    "fire2_": 11_920,
    "fire3_": 12_432,
    "fire4_": 45_344,
    "fire5_": 49_440,
    "fire6_": 104_880,
    "fire7_": 111_024,
    "fire8_": 188_992,
    "fire9_": 197_184,
    "conv10": 513_000,
}


def _params(model, key):
    """Trainable parameters of the layer ``key``, or of every layer whose name starts with ``key`` ending in "_"."""
    return sum(
        int(np.prod(w.shape))
        for layer in model.layers
        if layer.name == key or (key.endswith("_") and layer.name.startswith(key))
        for w in layer.trainable_weights
    )


def test_squeezenet1_0_matches_table1_and_torchvision():
    model = kerasarch.build_model("squeezenet1_0")
    assert {key: _params(model, key) for key in TABLE1_PARAMS} == TABLE1_PARAMS
    assert sum(TABLE1_PARAMS.values()) == trainable_params(model) == 1_248_424
    # Table 1's output sizes, from ceil-mode pools (floor or TensorFlow's "same" give 54 / 55 and 26 / 27 ...).
    sizes = {"conv1": 109, "pool1": 54, "fire4_out": 54, "pool4": 27, "fire8_out": 27, "pool8": 13, "conv10": 13}
    assert {k: model.get_layer(k).output.shape[1] for k in sizes} == sizes
    assert model.get_layer("fire9_out").output.shape[-1] == 512
    assert round(conv_dense_macs(model) / 1e9, 3) == kerasarch.get_spec("squeezenet1_0").gmacs == 0.819
    # "AlexNet-level accuracy with 50x fewer parameters": 60,965,224 / 1,248,424 = 48.8.
    assert round(ALEXNET_PARAMS / trainable_params(model), -1) == 50


def test_squeezenet1_1_sizes_and_cost():
    model = kerasarch.build_model("squeezenet1_1")
    sizes = {"conv1": 111, "pool1": 55, "fire3_out": 55, "pool3": 27, "fire5_out": 27, "pool5": 13, "conv10": 13}
    assert {k: model.get_layer(k).output.shape[1] for k in sizes} == sizes
    assert model.get_layer("conv1").kernel.shape == (3, 3, 3, 64)
    assert round(conv_dense_macs(model) / 1e9, 3) == kerasarch.get_spec("squeezenet1_1").gmacs == 0.349
    assert round(ALEXNET_PARAMS / trainable_params(model), -1) == 50  # 49.3


def test_classifier_is_a_conv_then_global_average():
    """No fully connected layer: softmax(mean over positions of ReLU(conv10)), dropout 0.5 before conv10."""
    model = kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3))
    assert not any(isinstance(layer, keras.layers.Dense) for layer in model.layers)
    assert model.get_layer("drop9").rate == 0.5
    probe = keras.Model(model.input, [model.get_layer("conv10_relu").output, model.output])
    maps, probs = probe.predict(random_images((64, 64, 3)), verbose=0)
    logits = maps.mean(axis=(1, 2))
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)
    headless = kerasarch.build_model("squeezenet1_1", include_top=False, input_shape=(64, 64, 3))
    assert headless.output_shape == (None, 3, 3, 512) and headless.layers[-1].name == "fire9_out"


def _names(model, cls):
    return {layer.name for layer in model.layers if isinstance(layer, cls)}


@pytest.mark.parametrize(
    "version, conv_bypass_params",
    [
        # 1×1 convs with bias around fire2 (conv1 → 128), fire4 (128 → 256), fire6 (256 → 384), fire8 (384 → 512).
        ("1_0", (96 + 1) * 128 + (128 + 1) * 256 + (256 + 1) * 384 + (384 + 1) * 512),  # 341,248
        ("1_1", (64 + 1) * 128 + (128 + 1) * 256 + (256 + 1) * 384 + (384 + 1) * 512),  # 337,152
    ],
)
def test_bypass_variants(version, conv_bypass_params):
    """Figure 2: simple bypass around fire3, 5, 7, 9 (no parameters); complex bypass adds 1×1 convs around the
    modules whose depth changes."""
    plain = trainable_params(kerasarch.build_model(f"squeezenet{version}", include_top=False))
    simple = kerasarch.build_model(f"squeezenet{version}", bypass="simple", include_top=False)
    complex_ = kerasarch.build_model(f"squeezenet{version}", bypass="complex", include_top=False)
    assert _names(simple, keras.layers.Add) == {"fire3_out", "fire5_out", "fire7_out", "fire9_out"}
    assert _names(complex_, keras.layers.Add) == {f"fire{i}_out" for i in range(2, 10)}
    assert {n for n in _names(complex_, keras.layers.Conv2D) if n.endswith("_bypass")} == {
        "fire2_bypass",
        "fire4_bypass",
        "fire6_bypass",
        "fire8_bypass",
    }
    assert trainable_params(simple) == plain
    assert trainable_params(complex_) - plain == conv_bypass_params


def test_fire_module_concatenates_expands_and_adds_the_bypass():
    inp = keras.Input((9, 9, 128))
    out = apply_fire_module(inp, 16, 64, 64, bypass="identity", name="fire3")
    model = keras.Model(inp, out)
    # squeeze 128→16, expand 16→64 (1×1) and 16→64 (3×3): Table 1's 12,432 for fire3.
    assert trainable_params(model) == 129 * 16 + 17 * 64 + (9 * 16 + 1) * 64 == 12_432
    parts = [model.get_layer(n).output for n in ("fire3_expand1x1_relu", "fire3_expand3x3_relu")]
    x = random_images((9, 9, 128), batch=1)
    y, e1, e3 = keras.Model(inp, [out, *parts]).predict(x, verbose=0)
    np.testing.assert_allclose(y, x + np.concatenate([e1, e3], axis=-1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="identity bypass.*Received: input with 96 channels"):
        apply_fire_module(keras.Input((9, 9, 96)), 16, 64, 64, bypass="identity", name="fire2")
    with pytest.raises(ValueError, match="Received: bypass='simple'"):
        apply_fire_module(inp, 16, 64, 64, bypass="simple", name="fire3")
    with pytest.raises(ValueError, match="Received: bypass='residual'"):
        kerasarch.build_model("squeezenet1_0", bypass="residual")


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_smallest_input(name):
    """At ``min_input_size`` (21 for 1.0, 17 for 1.1) fire9 works on a 1×1 map."""
    size = kerasarch.get_spec(name).min_input_size
    model = kerasarch.build_model(name, include_top=False, input_shape=(size, size, 3))
    assert model.output_shape == (None, 1, 1, 512)
