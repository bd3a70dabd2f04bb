"""VGG: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
arXiv:1409.1556 (configurations A, B, D, E = VGG11, 13, 16, 19), and torchvision's batch-norm variants.

Only 3×3 convolutions (stride 1, pad 1) and 2×2 max-pools (stride 2). Layer names follow keras.applications
(``block5_conv3``, ``block5_pool``, ``flatten``, ``fc1``, ``fc2``, ``predictions``), so its weight files load and
its ``get_layer`` code works; the paper's feature taps map onto them (``fc7`` is ``fc2``).
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.common import BN_EPS_TORCH, apply_conv_bn_act
from kerasarch.builder import apply_pooling, check_top_args, finish_model, make_inputs, predictions_dense
from kerasarch.registry import ModelSpec, register_models
from kerasarch.weights.published import keras_checkpoint, torchvision_checkpoint
from kerasarch.weights.torch_names import map_vgg

# Convolutions per block, paper Table 1.
VGG_BLOCKS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)


def vgg(
    depth=16,
    *,
    batch_norm=False,
    dropout=0.5,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
):
    """Builds VGG-``depth`` (11, 13, 16 or 19), optionally with BatchNorm after every conv (torchvision's
    ``vgg16_bn``; no biases are dropped, as there).

    Args:
        depth: 11, 13, 16 or 19 weight layers.
        batch_norm: BN after every convolution (not in the paper).
        dropout: dropout rate after fc1 and fc2 (0.5 in the paper).
        include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name: as in
            keras.applications.

    Returns:
        A Functional ``keras.Model``.
    """
    if depth not in VGG_BLOCKS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_BLOCKS)}. Received: depth={depth!r}")
    name = name or f"vgg{depth}{'_bn' if batch_norm else ''}"
    check_top_args(include_top, pooling, classes, classifier_activation)
    inputs, x = make_inputs(input_shape, input_tensor, default=(224, 224, 3), min_size=32, name=name)
    for b, (convs, width) in enumerate(zip(VGG_BLOCKS[depth], VGG_WIDTHS), start=1):
        for c in range(1, convs + 1):
            layer = f"block{b}_conv{c}"
            x = apply_conv_bn_act(
                x,
                width,
                3,
                name=layer,
                conv_name=layer,
                bn_name=f"{layer}_bn",
                act_name=f"{layer}_relu",
                use_bias=True,
                norm=batch_norm,
                bn_epsilon=BN_EPS_TORCH,
                bn_momentum=0.9,
                kernel_initializer="glorot_uniform",
            )
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        for i in (1, 2):
            x = layers.Dense(4096, activation="relu", name=f"fc{i}")(x)
            if dropout:
                x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)
        x = predictions_dense(classes, classifier_activation)(x)
    else:
        x = apply_pooling(x, pooling)
    return finish_model(inputs, x, name, weights, input_tensor)


_TV_PARAMS = {11: 132_863_336, 13: 133_047_848, 16: 138_357_544, 19: 143_667_240}
_TV_BN_PARAMS = {11: 132_868_840, 13: 133_053_736, 16: 138_365_992, 19: 143_678_248}
_TV_GMACS = {11: 7.609, 13: 11.308, 16: 15.47, 19: 19.632}
_TV_TOP1 = {11: 69.02, 13: 69.928, 16: 71.592, 19: 72.376}
_VGG_TAPS = {**{f"conv{b}": f"block{b}_pool" for b in range(1, 6)}, "pool5": "block5_pool", "fc6": "fc1", "fc7": "fc2"}

# Published weights: keras.applications (Caffe-converted, MD5s from keras/src/applications/vgg*.py) for VGG16/19,
# torchvision IMAGENET1K_V1 (file names and top-1 from torchvision/models/vgg.py) for every depth.
_KERAS = {
    16: keras_checkpoint(
        "vgg16",
        "vgg16",
        "vgg16_weights_tf_dim_ordering_tf_kernels",
        "64373286793e3c8b2b4e3219cbf3544b",
        "6d6bbae143d832006294945121d1f1fc",
        "caffe",
        71.3,
    ),
    19: keras_checkpoint(
        "vgg19",
        "vgg19",
        "vgg19_weights_tf_dim_ordering_tf_kernels",
        "cbe5617147190e668d6c5d5026f83318",
        "253f8cb515780f3b799900260a226db6",
        "caffe",
        71.3,
    ),
}
_TORCHVISION = {
    "vgg11": ("vgg11-8a719046.pth", 69.02),
    "vgg13": ("vgg13-19584684.pth", 69.928),
    "vgg16": ("vgg16-397923af.pth", 71.592),
    "vgg19": ("vgg19-dcbb9e9d.pth", 72.376),
    "vgg11_bn": ("vgg11_bn-6002323d.pth", 70.37),
    "vgg13_bn": ("vgg13_bn-abd245e5.pth", 71.586),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth", 73.36),
    "vgg19_bn": ("vgg19_bn-c79401a0.pth", 74.218),
}


def _variant(depth, bn):
    name = f"vgg{depth}{'_bn' if bn else ''}"
    keras_weights = () if bn or depth not in _KERAS else (_KERAS[depth],)
    return ModelSpec(
        name=name,
        family="vgg",
        builder=vgg,
        config={"depth": depth, "batch_norm": bn},
        paper="Simonyan & Zisserman 2014, arXiv:1409.1556" + (" (+BN, torchvision)" if bn else ""),
        input_shape=(224, 224, 3),
        min_input_size=32,
        params=(_TV_BN_PARAMS if bn else _TV_PARAMS)[depth],
        params_source="torchvision weight metadata (num_params)",
        total_params=None if bn else _TV_PARAMS[depth],
        gmacs=_TV_GMACS[depth],
        top1=None if bn else _TV_TOP1[depth],
        taps=_VGG_TAPS,
        recipe="vgg",
        # weights="imagenet" loads the best published top-1 first: torchvision's (71.592 / 72.376) over
        # keras.applications' (71.3 / 71.3).
        checkpoints=(
            torchvision_checkpoint(name, *_TORCHVISION[name][:1], map_vgg, _TORCHVISION[name][1]),
            *keras_weights,
        ),
        slow=True,
    )


VARIANTS = tuple(_variant(depth, bn) for depth in VGG_BLOCKS for bn in (False, True))
register_models(VARIANTS)
