"""DenseNet (arXiv:1608.06993): keras.applications parity on the same weights, the published counts and
multiply-adds, and the CIFAR DenseNet-BC counts derived from the paper's description."""

import keras
import numpy as np
import pytest

import kerasarch
from tests.helpers import random_images, trainable_params, weight_shapes


def _conv_dense_gmacs(model):
    """Multiply-adds of the convolutions and dense layers (what torchvision's figures count), in G."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            total += int(np.prod(layer.output.shape[1:3])) * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total / 1e9


def _without_padding(model):
    """Layer names minus the weightless zero-padding layers, which keras.applications leaves auto-named."""
    return [
        layer.name
        for layer in model.layers
        if not isinstance(layer, (keras.layers.ZeroPadding2D, keras.layers.InputLayer))
    ]


def _check_against_keras_applications(name, reference):
    """Same layer names, same weight shapes layer by layer, same count_params, the same outputs once the
    reference's (random) weights are copied over by name, and torchvision's multiply-adds."""
    spec = kerasarch.get_spec(name)
    ref = reference(weights=None, classifier_activation=None)
    ours = kerasarch.build_model(name, classifier_activation=None)
    assert _without_padding(ours) == _without_padding(ref)
    assert weight_shapes(ours) == weight_shapes(ref)
    assert ours.count_params() == ref.count_params()
    assert trainable_params(ours) == spec.params
    assert round(_conv_dense_gmacs(ours), 3) == pytest.approx(spec.gmacs, abs=1e-3)
    rng = np.random.default_rng(0)
    for layer in ref.layers:
        # Non-trivial BN statistics, so that a wrong epsilon or ordering shows in the outputs.
        layer.set_weights(
            [
                rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path else rng.normal(0, 0.05, w.shape)
                for w in layer.weights
            ]
        )
    for layer in ours.layers:
        if layer.weights:
            layer.set_weights(ref.get_layer(layer.name).get_weights())
    x = random_images((224, 224, 3), batch=1)
    expected = np.asarray(ref(x, training=False))  # eager: tracing predict() costs more than the forward pass
    assert np.abs(expected).max() > 1e-2
    np.testing.assert_allclose(np.asarray(ours(x, training=False)), expected, rtol=1e-4, atol=1e-5)
    return ours


def test_densenet121_equals_keras_applications():
    model = _check_against_keras_applications("densenet121", keras.applications.DenseNet121)
    assert model.count_params() == 8_062_504
    # The declared taps: each dense block's last concatenation, at strides 4, 8, 16, 32.
    spec = kerasarch.get_spec("densenet121")
    shapes = [model.get_layer(spec.taps[f"block{i}"]).output.shape[1:] for i in range(1, 5)]
    assert shapes == [(56, 56, 256), (28, 28, 512), (14, 14, 1024), (7, 7, 1024)]
    assert spec.taps["block4"] == "conv5_block16_concat"


@pytest.mark.slow
@pytest.mark.parametrize("name, reference", [("densenet169", "DenseNet169"), ("densenet201", "DenseNet201")])
def test_densenet169_201_equal_keras_applications(name, reference):
    _check_against_keras_applications(name, getattr(keras.applications, reference))


@pytest.mark.slow
def test_densenet161_figures():
    model = kerasarch.build_model("densenet161")
    assert trainable_params(model) == 28_681_000
    assert round(_conv_dense_gmacs(model), 3) == pytest.approx(7.728, abs=1e-3)
    assert model.get_layer("conv1_conv").filters == 96
    assert model.get_layer("conv2_block1_1_conv").filters == 4 * 48


def _derived_bc_params(depth, k, classes=10, theta=0.5):
    """Trainable parameters of CIFAR DenseNet-BC (§3-4 and Table 2 of the paper), written out.

    Depth L counts weight layers: a 3×3 conv to 2k maps, three dense blocks of n composite layers with two
    convs each (BN-ReLU-conv 1×1 to 4k, BN-ReLU-conv 3×3 to k), two transitions (BN-ReLU-conv 1×1 to
    floor(θm), 2×2 average pool), and the classifier: L = 6n + 4. Convolutions have no bias (the authors' Torch
    code removes them); every BN has a scale and a shift (2 per channel); the final BN-ReLU feeds global
    average pooling and the linear classifier.
    """
    n = (depth - 4) // 6
    assert 6 * n + 4 == depth
    m = 2 * k
    total = 3 * 3 * 3 * m
    for block in range(3):
        for _ in range(n):
            total += 2 * m + m * 4 * k + 2 * 4 * k + 9 * 4 * k * k
            m += k
        if block < 2:
            out = int(theta * m)
            total += 2 * m + m * out
            m = out
    return total + 2 * m + m * classes + classes


@pytest.mark.parametrize(
    "name, depth, k, exact, paper",
    [
        ("densenet_bc_100_12", 100, 12, 769_162, 0.8),
        ("densenet_bc_190_40", 190, 40, 25_624_430, 25.6),
    ],
)
def test_cifar_densenet_bc_counts(name, depth, k, exact, paper):
    assert _derived_bc_params(depth, k) == exact
    assert round(exact / 1e6, 1) == paper  # the paper's Table 2 figure
    model = kerasarch.build_model(name)
    assert trainable_params(model) == exact
    assert model.get_layer("conv1_conv").filters == 2 * k
    assert model.get_layer("conv1_conv").kernel.shape[:2] == (3, 3)
    assert model.get_layer(kerasarch.get_spec(name).taps["block3"]).output.shape[1:3] == (8, 8)
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stem": "mnist"}, "stem.*Received: stem='mnist'"),
        ({"compression": 0.0}, "compression.*Received: compression=0.0"),
        ({"blocks": ()}, "blocks.*Received: blocks=\\(\\)"),
    ],
)
def test_impossible_arguments_raise_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kerasarch.build_model("densenet_bc_100_12", **kwargs)
