"""Network in Network against the authors' released CIFAR-10 and ImageNet configurations (arXiv:1312.4400)."""

import keras
import numpy as np
import pytest

import kerasarch
from kerasarch.blocks.mlpconv import apply_mlpconv
from tests.helpers import random_images, trainable_params

# Weights + biases, layer by layer: k·k·C_in·C_out + C_out.
CIFAR = {
    "mlpconv1": (5 * 5 * 3 * 192 + 192) + (192 * 160 + 160) + (160 * 96 + 96),  # 14,592 + 30,880 + 15,456
    "mlpconv2": (5 * 5 * 96 * 192 + 192) + 2 * (192 * 192 + 192),  # 460,992 + 2 · 37,056
    "mlpconv3": (3 * 3 * 192 * 192 + 192) + (192 * 192 + 192) + (192 * 10 + 10),  # 331,968 + 37,056 + 1,930
}
IMAGENET = {
    "mlpconv1": (11 * 11 * 3 * 96 + 96) + 2 * (96 * 96 + 96),  # 34,944 + 2 · 9,312
    "mlpconv2": (5 * 5 * 96 * 256 + 256) + 2 * (256 * 256 + 256),  # 614,656 + 2 · 65,792
    "mlpconv3": (3 * 3 * 256 * 384 + 384) + 2 * (384 * 384 + 384),  # 885,120 + 2 · 147,840
    "mlpconv4": (3 * 3 * 384 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 1000 + 1000),  # 3,539,968 + ...
}


def _block_params(model, block):
    return sum(
        int(np.prod(w.shape))
        for layer in model.layers
        if layer.name.startswith(f"{block}_")
        for w in layer.trainable_weights
    )


@pytest.mark.parametrize("name, blocks, total", [("nin_cifar", CIFAR, 966_986), ("nin", IMAGENET, 7_595_176)])
def test_nin_parameter_counts(name, blocks, total):
    """No exact count is published (the paper gives none; ≈7.6M for the ImageNet model is folklore): both are
    derived here from the released configurations."""
    model = kerasarch.build_model(name)
    assert {b: _block_params(model, b) for b in blocks} == blocks
    assert sum(blocks.values()) == trainable_params(model) == total == kerasarch.get_spec(name).params
    if name == "nin":
        assert round(total / 1e6, 1) == 7.6


def test_nin_cifar_layout():
    model = kerasarch.build_model("nin_cifar")
    shapes = {
        "mlpconv1_out": (32, 32, 96),
        "pool1": (16, 16, 96),
        "mlpconv2_out": (16, 16, 192),
        "pool2": (8, 8, 192),
        "mlpconv3_out": (8, 8, 10),
    }
    assert {k: tuple(model.get_layer(k).output.shape[1:]) for k in shapes} == shapes
    assert isinstance(model.get_layer("pool1"), keras.layers.MaxPooling2D)
    assert isinstance(model.get_layer("pool2"), keras.layers.AveragePooling2D)
    assert model.get_layer("drop1").rate == model.get_layer("drop2").rate == 0.5
    assert not any(isinstance(layer, keras.layers.Dense) for layer in model.layers)
    # Global average pooling over the (ReLU'd) class maps, then softmax.
    probe = keras.Model(model.input, [model.get_layer("mlpconv3_out").output, model.output])
    maps, probs = probe.predict(random_images((32, 32, 3)), verbose=0)
    logits = maps.mean(axis=(1, 2))
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


def test_nin_imagenet_layout_and_headless():
    model = kerasarch.build_model("nin", include_top=False, pooling="avg")
    # Caffe sizes: (224 − 11) / 4 + 1 = 54, then ceil-mode 3×3/2 pools 54 → 27 → 13 → 6.
    shapes = {
        "mlpconv1_out": (54, 54, 96),
        "pool1": (27, 27, 96),
        "pool2": (13, 13, 256),
        "pool3": (6, 6, 384),
        "mlpconv4_out": (6, 6, 1024),
    }
    assert {k: tuple(model.get_layer(k).output.shape[1:]) for k in shapes} == shapes
    assert [layer.name for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == ["drop3"]
    assert model.output_shape == (None, 1024)
    # Without the top the class-map conv is left out, so its weights are the only difference.
    assert trainable_params(model) == 7_595_176 - (1024 * 1000 + 1000)


def test_mlpconv_names_and_padding():
    inp = keras.Input((13, 13, 8))
    out = apply_mlpconv(inp, (16, 12, 4), 3, name="block")
    model = keras.Model(inp, out)
    assert model.output_shape == (None, 13, 13, 4)
    assert {layer.name for layer in model.layers if layer.weights} == {"block_conv", "block_cccp1", "block_cccp2"}
    assert model.layers[-1].name == "block_out"
    assert model.get_layer("block_cccp1").kernel.shape == (1, 1, 16, 12)
    with pytest.raises(ValueError, match="Received: filters=\\(\\)"):
        apply_mlpconv(inp, (), 3, name="empty")


@pytest.mark.parametrize("name, channels", [("nin_cifar", 192), ("nin", 1024)])
def test_smallest_input(name, channels):
    """At ``min_input_size`` (4 for CIFAR, 39 for ImageNet) the last mlpconv works on a 1×1 map."""
    size = kerasarch.get_spec(name).min_input_size
    model = kerasarch.build_model(name, include_top=False, input_shape=(size, size, 3))
    assert model.output_shape == (None, 1, 1, channels)
