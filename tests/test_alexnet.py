"""AlexNet (two towers, Caffe bvlc_alexnet), torchvision's single-tower AlexNet and ZFNet: stage shapes and
parameters layer by layer, grouped convolutions against a numpy two-tower reference, multiply-adds, the weight
layout for porting, and torchvision's adaptive pooling.

ZFNet has no published exact parameter count: the tables below derive it layer by layer from the paper's Fig. 3
(and Table 2 for the larger model); their totals are the ``params`` of the specs.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch.applications.alexnet import _adaptive_avg_pool_6x6
from kerasarch.layers.lrn import LocalResponseNormalization
from tests.helpers import random_images


def conv(k, c_in, c_out, groups=1):
    """Parameters of a k×k convolution with bias: each output map sees c_in / groups input maps."""
    return k * k * (c_in // groups) * c_out + c_out


def fc(n_in, n_out):
    return n_in * n_out + n_out


# (layer, output (H, W, C), parameters); feature extractor, then the top.
LAYERS = {
    # 227×227×3 input. conv1 (227 − 11) / 4 + 1 = 55: 11·11·3·96 = 34,848 weights + 96 biases = 34,944.
    "alexnet": [
        ("conv1", (55, 55, 96), conv(11, 3, 96)),  # 34,944
        ("norm1", (55, 55, 96), 0),
        ("pool1", (27, 27, 96), 0),  # (55 − 3) / 2 + 1 = 27
        ("conv2", (27, 27, 256), conv(5, 96, 256, groups=2)),  # 307,456 (two towers of 128 reading 48 maps each)
        ("norm2", (27, 27, 256), 0),
        ("pool2", (13, 13, 256), 0),
        ("conv3", (13, 13, 384), conv(3, 256, 384)),  # 885,120: reads both towers
        ("conv4", (13, 13, 384), conv(3, 384, 384, groups=2)),  # 663,936
        ("conv5", (13, 13, 256), conv(3, 384, 256, groups=2)),  # 442,624
        ("pool5", (6, 6, 256), 0),
        ("fc6", (4096,), fc(6 * 6 * 256, 4096)),  # 37,752,832
        ("fc7", (4096,), fc(4096, 4096)),  # 16,781,312
        ("predictions", (1000,), fc(4096, 1000)),  # 4,097,000
    ],
    # 224×224×3 input, conv1 padding 2: (224 + 4 − 11) // 4 + 1 = 55.
    "alexnet_owt": [
        ("conv1", (55, 55, 64), conv(11, 3, 64)),  # 23,296
        ("pool1", (27, 27, 64), 0),
        ("conv2", (27, 27, 192), conv(5, 64, 192)),  # 307,392
        ("pool2", (13, 13, 192), 0),
        ("conv3", (13, 13, 384), conv(3, 192, 384)),  # 663,936
        ("conv4", (13, 13, 256), conv(3, 384, 256)),  # 884,992
        ("conv5", (13, 13, 256), conv(3, 256, 256)),  # 590,080
        ("pool5", (6, 6, 256), 0),
        ("fc6", (4096,), fc(6 * 6 * 256, 4096)),
        ("fc7", (4096,), fc(4096, 4096)),
        ("predictions", (1000,), fc(4096, 1000)),
    ],
    # Zeiler & Fergus Fig. 3, 224×224×3 input:
    "zfnet": [
        ("conv1", (110, 110, 96), conv(7, 3, 96)),  # (224 + 2·1 − 7) // 2 + 1 = 110;          14,208
        ("pool1", (55, 55, 96), 0),  # ceil-mode 3×3/2: ⌈(110 − 3) / 2⌉ + 1 = 55
        ("norm1", (55, 55, 96), 0),  # contrast normalisation after the pool (Fig. 3)
        ("conv2", (26, 26, 256), conv(5, 96, 256)),  # (55 − 5) // 2 + 1 = 26; dense, not grouped:    614,656
        ("pool2", (13, 13, 256), 0),  # ⌈(26 − 3) / 2⌉ + 1 = 13
        ("norm2", (13, 13, 256), 0),
        ("conv3", (13, 13, 384), conv(3, 256, 384)),  # 885,120
        ("conv4", (13, 13, 384), conv(3, 384, 384)),  # 1,327,488
        ("conv5", (13, 13, 256), conv(3, 384, 256)),  # 884,992
        ("pool5", (6, 6, 256), 0),  # (13 − 3) / 2 + 1 = 6
        ("fc6", (4096,), fc(6 * 6 * 256, 4096)),  # 37,752,832
        ("fc7", (4096,), fc(4096, 4096)),  # 16,781,312
        ("predictions", (1000,), fc(4096, 1000)),  # 4,097,000
    ],  # total 62,357,608
    # The larger model of Table 2: layers 3, 4, 5 with 512, 1024, 512 maps.
    "zfnet_large": [
        ("conv1", (110, 110, 96), conv(7, 3, 96)),  # 14,208
        ("pool1", (55, 55, 96), 0),
        ("norm1", (55, 55, 96), 0),
        ("conv2", (26, 26, 256), conv(5, 96, 256)),  # 614,656
        ("pool2", (13, 13, 256), 0),
        ("norm2", (13, 13, 256), 0),
        ("conv3", (13, 13, 512), conv(3, 256, 512)),  # 1,180,160
        ("conv4", (13, 13, 1024), conv(3, 512, 1024)),  # 4,719,616
        ("conv5", (13, 13, 512), conv(3, 1024, 512)),  # 4,719,104
        ("pool5", (6, 6, 512), 0),
        ("fc6", (4096,), fc(6 * 6 * 512, 4096)),  # 75,501,568
        ("fc7", (4096,), fc(4096, 4096)),  # 16,781,312
        ("predictions", (1000,), fc(4096, 1000)),  # 4,097,000
    ],  # total 107,627,624
}
TOP = ("fc6", "fc7", "predictions")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_stage_shapes_and_parameters_layer_by_layer(name):
    spec = kerasarch.get_spec(name)
    table = LAYERS[name]
    assert sum(p for _, _, p in table) == spec.params  # the published figure, or for ZFNet the derivation
    model = kerasarch.build_model(name, include_top=False)  # the top is counted in tests/test_models.py
    for layer, shape, params in table:
        if layer in TOP:
            continue
        assert tuple(model.get_layer(layer).output.shape[1:]) == shape, layer
        assert model.get_layer(layer).count_params() == params, layer
    assert model.output_shape[1:] == table[-4][1]  # headless ends at pool5


def test_alexnet_conv1_is_the_lecture_figure():
    model = kerasarch.build_model("alexnet", include_top=False)
    layer = model.get_layer("conv1")
    assert tuple(layer.output.shape[1:]) == ((227 - 11) // 4 + 1,) * 2 + (96,) == (55, 55, 96)
    assert layer.kernel.shape == (11, 11, 3, 96) and layer.count_params() == 34_848 + 96
    assert tuple(model.get_layer("pool1").output.shape[1:]) == (27, 27, 96)


def np_conv_valid(x, k):
    patches = np.lib.stride_tricks.sliding_window_view(x, k.shape[:2], axis=(1, 2))  # N, H', W', C, kh, kw
    return np.einsum("nhwcij,ijco->nhwo", patches, k)


def test_grouped_conv_is_two_towers():
    model = kerasarch.build_model("alexnet", include_top=False, input_shape=(67, 67, 3))
    conv2 = model.get_layer("conv2")
    kernel, bias = conv2.get_weights()
    assert kernel.shape == (5, 5, 48, 256) and conv2.groups == 2
    assert conv2.count_params() == conv(5, 96, 256, groups=2) == conv(5, 96, 256) // 2 + 128
    x = np.random.default_rng(0).normal(size=(1, *conv2.input.shape[1:])).astype("float32")
    # Tower g: output maps [128g, 128g + 128) read input maps [48g, 48g + 48), as Caffe's `group: 2`.
    towers = [np_conv_valid(x[..., 48 * g : 48 * (g + 1)], kernel[..., 128 * g : 128 * (g + 1)]) for g in (0, 1)]
    np.testing.assert_allclose(np.asarray(conv2(x)), np.concatenate(towers, -1) + bias, rtol=1e-4, atol=1e-4)


def test_grouped_convs_train_on_cpu():
    """TensorFlow has no grouped-convolution kernel on CPU; Keras compiles it with XLA, forward and backward."""
    model = kerasarch.build_model("alexnet", include_top=False, input_shape=(67, 67, 3), pooling="avg")
    x = random_images((67, 67, 3), batch=2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True))
    kernels = [model.get_layer(layer).kernel for layer in ("conv2", "conv4", "conv5")]
    for kernel, grad in zip(kernels, tape.gradient(loss, kernels)):
        assert np.all(np.isfinite(grad)) and np.any(np.asarray(grad) != 0), kernel.path


def macs(model):
    """Multiply-adds of the convolutions and dense layers (torchvision's convention: no bias, pool or norm)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):  # GroupedConv2D (conv2, conv4, conv5) included
            kh, kw, c_in, c_out = layer.kernel.shape
            total += math.prod(layer.output.shape[1:3]) * c_out * kh * kw * c_in
        elif layer.__class__.__name__ == "Dense":
            total += math.prod(layer.kernel.shape)
    return total


@pytest.mark.parametrize("name", ["alexnet", "alexnet_owt"])
def test_multiply_adds(name):
    spec = kerasarch.get_spec(name)
    model = kerasarch.build_model(name, include_top=False)
    # The top: flatten(pool5) → 4096 → 4096 → 1000.
    top = math.prod(model.output_shape[1:]) * 4096 + 4096 * 4096 + 4096 * 1000
    assert round((macs(model) + top) / 1e9, 3) == spec.gmacs


def test_normalisation_placement():
    alex = [layer.name for layer in kerasarch.build_model("alexnet", include_top=False).layers]
    assert alex[1:9] == ["conv1", "relu1", "norm1", "pool1", "conv2_pad", "conv2", "relu2", "norm2"]
    zf = [layer.name for layer in kerasarch.build_model("zfnet", include_top=False).layers]
    assert zf[2:6] == ["conv1", "relu1", "pool1", "norm1"]
    norm = kerasarch.build_model("alexnet", include_top=False, input_shape=(67, 67, 3)).get_layer("norm1")
    assert isinstance(norm, LocalResponseNormalization)
    assert (norm.size, norm.alpha, norm.beta, norm.k) == (5, 1e-4, 0.75, 2.0)
    owt = kerasarch.build_model("alexnet_owt", include_top=False, input_shape=(63, 63, 3))
    assert not any(isinstance(layer, LocalResponseNormalization) for layer in owt.layers)


# Weight shapes of the reference implementations, in their order (PyTorch/Caffe: (out, in, kh, kw), (out, in)).
TORCHVISION_ALEXNET = [
    (64, 3, 11, 11),
    (64,),
    (192, 64, 5, 5),
    (192,),
    (384, 192, 3, 3),
    (384,),
    (256, 384, 3, 3),
    (256,),
    (256, 256, 3, 3),
    (256,),
    (4096, 9216),
    (4096,),
    (4096, 4096),
    (4096,),
    (1000, 4096),
    (1000,),
]
CAFFE_BVLC_ALEXNET = [
    (96, 3, 11, 11),
    (96,),
    (256, 48, 5, 5),
    (256,),
    (384, 256, 3, 3),
    (384,),
    (384, 192, 3, 3),
    (384,),
    (256, 192, 3, 3),
    (256,),
    (4096, 9216),
    (4096,),
    (4096, 4096),
    (4096,),
    (1000, 4096),
    (1000,),
]


@pytest.mark.parametrize("name, reference", [("alexnet_owt", TORCHVISION_ALEXNET), ("alexnet", CAFFE_BVLC_ALEXNET)])
def test_weights_line_up_with_the_reference_implementation(name, reference):
    model = kerasarch.build_model(name)
    ours = [tuple(w.shape) for w in model.weights]
    theirs = [s if len(s) == 1 else tuple(reversed(s)) if len(s) == 2 else (s[2], s[3], s[1], s[0]) for s in reference]
    assert ours == theirs
    names = [layer.name for layer in model.layers]
    if name == "alexnet_owt":  # torchvision: avgpool, flatten, Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear
        assert names[-7:] == ["avgpool", "flatten", "fc6_dropout", "fc6", "fc7_dropout", "fc7", "predictions"]
    else:  # Caffe: fc6, relu6, drop6, fc7, relu7, drop7, fc8
        assert names[-6:] == ["flatten", "fc6", "fc6_dropout", "fc7", "fc7_dropout", "predictions"]


def test_flatten_permutation_in_the_docstring():
    """The fc6 port of alexnet.py's docstring: a (C, H, W)-flattened weight becomes an (H, W, C)-flattened one."""
    rng = np.random.default_rng(1)
    c, out = 5, 7
    w = rng.normal(size=(out, c * 36))
    pool5_nchw = rng.normal(size=(c, 6, 6))
    w_keras = w.reshape(out, c, 6, 6).transpose(2, 3, 1, 0).reshape(36 * c, out)
    np.testing.assert_allclose(pool5_nchw.reshape(-1) @ w.T, pool5_nchw.transpose(1, 2, 0).reshape(-1) @ w_keras)


def torch_adaptive_avg_pool(x, out=6):
    """PyTorch's AdaptiveAvgPool2d on (H, W, C): bin i covers [floor(i·H/out), ceil((i+1)·H/out))."""
    h, w = x.shape[:2]
    y = np.empty((out, out, x.shape[2]))
    for i in range(out):
        for j in range(out):
            rows = slice(i * h // out, -(-(i + 1) * h // out))
            cols = slice(j * w // out, -(-(j + 1) * w // out))
            y[i, j] = x[rows, cols].mean(axis=(0, 1))
    return y


@pytest.mark.parametrize("side", [1, 2, 3, 6, 12])
def test_adaptive_pool_matches_torch(side):
    inputs = keras.Input((side, side, 4))
    model = keras.Model(inputs, _adaptive_avg_pool_6x6(inputs, "avgpool"))
    x = np.random.default_rng(side).normal(size=(1, side, side, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(model(x))[0], torch_adaptive_avg_pool(x[0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size, side", [(160, 4), (192, 5)])
def test_adaptive_pool_refuses_sizes_it_cannot_reproduce(size, side):
    # 160: conv1 (160 + 4 − 11) // 4 + 1 = 39, pool1 19, pool2 9, pool5 4; 192: 47, 23, 11, 5.
    with pytest.raises(ValueError, match=f"multiple or a divisor of 6.*Received: pool5 output {side}×{side}"):
        kerasarch.build_model("alexnet_owt", input_shape=(size, size, 3))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_min_input_size_is_tight(name):
    spec = kerasarch.get_spec(name)
    model = kerasarch.build_model(name, include_top=False, input_shape=(None, None, 3))
    n = spec.min_input_size
    assert model.compute_output_shape((1, n, n, 3))[1:3] == (1, 1)
    with pytest.raises(ValueError):
        model.compute_output_shape((1, n - 1, n - 1, 3))
