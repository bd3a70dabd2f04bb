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
from kerasarch.registry import ModelSpec, register_model

# Convolutions per block, paper Table 1.
VGG_BLOCKS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)


def vgg(depth=16, *, batch_norm=False, dropout=0.5, include_top=True, weights=None, input_tensor=None,
        input_shape=None, pooling=None, classes=1000, classifier_activation="softmax", name=None):
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
            x = apply_conv_bn_act(x, width, 3, name=layer, conv_name=layer, bn_name=f"{layer}_bn",
                                  act_name=f"{layer}_relu", use_bias=True, norm=batch_norm,
                                  bn_epsilon=BN_EPS_TORCH, bn_momentum=0.9, kernel_initializer="glorot_uniform")
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
_VGG_TAPS = {**{f"conv{b}": f"block{b}_pool" for b in range(1, 6)}, "pool5": "block5_pool", "fc6": "fc1",
             "fc7": "fc2"}

for _depth in VGG_BLOCKS:
    for _bn in (False, True):
        register_model(ModelSpec(
            name=f"vgg{_depth}{'_bn' if _bn else ''}", family="vgg", builder=vgg,
            config={"depth": _depth, "batch_norm": _bn},
            paper="Simonyan & Zisserman 2014, arXiv:1409.1556" + (" (+BN, torchvision)" if _bn else ""),
            input_shape=(224, 224, 3), min_input_size=32,
            params=(_TV_BN_PARAMS if _bn else _TV_PARAMS)[_depth],
            params_source="torchvision weight metadata (num_params)",
            total_params=None if _bn else _TV_PARAMS[_depth],
            gmacs=_TV_GMACS[_depth], top1=None if _bn else _TV_TOP1[_depth], taps=_VGG_TAPS,
            preprocessing="caffe", slow=True))
