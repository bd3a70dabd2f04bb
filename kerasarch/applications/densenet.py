"""DenseNet: Huang et al., "Densely Connected Convolutional Networks", arXiv:1608.06993.

DenseNet-BC throughout: BN-ReLU-conv ordering, a 1×1 bottleneck of 4k maps before every 3×3 conv, transitions
that compress to ``floor(0.5·m)`` maps and average-pool. The ImageNet networks (121/169/201, k=32; 161, k=48 with
96 initial maps) have the ResNet-like stem; the CIFAR networks (L=100, k=12; L=190, k=40) three dense blocks
after a 3×3 conv to 2k maps. Layer names equal keras.applications' DenseNet (``conv1_conv``, ``pool1``,
``conv2_block1_1_conv``, ``pool2_conv``, ``conv5_block16_concat``, ``bn``, ``relu``, ``avg_pool``,
``predictions``), so its weight files load; only the two weightless zero-padding layers are named
(``conv1_conv_pad``, ``pool1_pad``) where keras.applications leaves them auto-named.
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.common import apply_bn_act, apply_conv, apply_conv_bn_act
from kerasarch.blocks.dense import apply_dense_block, apply_transition
from kerasarch.builder import apply_classifier, check_top_args, finish_model, make_inputs
from kerasarch.registry import ModelSpec, register_models
from kerasarch.weights.published import keras_checkpoint, torchvision_checkpoint
from kerasarch.weights.torch_names import map_densenet

_STEMS = ("imagenet", "cifar")


def densenet(
    blocks=(6, 12, 24, 16),
    *,
    growth_rate=32,
    init_features=None,
    stem="imagenet",
    compression=0.5,
    bottleneck=4,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
):
    """Builds a DenseNet-BC.

    Args:
        blocks: composite layers per dense block; block ``i`` is named ``conv{i+1}``, the transition after it
            ``pool{i+1}``.
        growth_rate: k, the maps each composite layer adds.
        init_features: maps of the first convolution (default 2k, as in the paper; 64 for k=32, 96 for k=48).
        stem: ``"imagenet"`` (7×7/2 conv-BN-ReLU, 3×3/2 max-pool; 224×224 input) or ``"cifar"`` (one 3×3
            conv; 32×32 input).
        compression: θ of the transitions (0.5: DenseNet-C).
        bottleneck: the 1×1 bottleneck width in multiples of k (4: DenseNet-B).
        include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name: as in
            keras.applications.

    Returns:
        A Functional ``keras.Model``.
    """
    if stem not in _STEMS:
        raise ValueError(f"`stem` must be one of {_STEMS}. Received: stem={stem!r}")
    if not blocks or any(not isinstance(n, int) or n < 1 for n in blocks):
        raise ValueError(f"`blocks` must be a non-empty sequence of positive integers. Received: blocks={blocks!r}")
    init_features = init_features or 2 * growth_rate
    name = name or f"densenet_{stem}"
    check_top_args(include_top, pooling, classes, classifier_activation)
    if stem == "imagenet":
        inputs, x = make_inputs(input_shape, input_tensor, default=(224, 224, 3), min_size=32, name=name)
        x = apply_conv_bn_act(x, init_features, 7, name="conv1", strides=2, padding=3)
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    else:
        # No stride before the first block; one 2×2 pool per transition.
        inputs, x = make_inputs(
            input_shape, input_tensor, default=(32, 32, 3), min_size=2 ** (len(blocks) - 1), name=name
        )
        x = apply_conv(x, init_features, 3, name="conv1_conv", use_bias=False, kernel_initializer="he_normal")
    for i, num_layers in enumerate(blocks, start=2):
        x = apply_dense_block(x, num_layers, growth_rate, name=f"conv{i}", bottleneck=bottleneck)
        if i <= len(blocks):
            x = apply_transition(x, name=f"pool{i}", compression=compression)
    x = apply_bn_act(x, name="", bn_name="bn", act_name="relu")
    x = apply_classifier(x, include_top, pooling, classes, classifier_activation)
    return finish_model(inputs, x, name, weights, input_tensor)


def _block_taps(blocks):
    return {f"block{i}": f"conv{i + 1}_block{n}_concat" for i, n in enumerate(blocks, start=1)}


_PAPER = "Huang et al. 2016, arXiv:1608.06993"
_TV = "torchvision weight metadata (num_params)"

# Published weights: keras.applications (MD5s from keras/src/applications/densenet.py; 'torch' convention) first,
# then torchvision IMAGENET1K_V1 (torchvision/models/densenet.py).
_KERAS = {
    "densenet121": ("9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738", 75.0),
    "densenet169": ("d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b", 76.2),
    "densenet201": ("1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1", 77.3),
}
_TORCHVISION = {
    "densenet121": ("densenet121-a639ec97.pth", 74.434),
    "densenet161": ("densenet161-8d451a50.pth", 77.138),
    "densenet169": ("densenet169-b2777c0a.pth", 75.6),
    "densenet201": ("densenet201-c1103571.pth", 76.896),
}


def _checkpoints(name):
    out = []
    if name in _KERAS:
        top_md5, notop_md5, top1 = _KERAS[name]
        out.append(
            keras_checkpoint(
                name, "densenet", f"{name}_weights_tf_dim_ordering_tf_kernels", top_md5, notop_md5, "torch", top1
            )
        )
    file_name, top1 = _TORCHVISION[name]
    out.append(torchvision_checkpoint(name, file_name, map_densenet, top1))
    return tuple(out)


def _imagenet(name, blocks, k, init, params, total, gmacs, top1, slow):
    return ModelSpec(
        name=name,
        family="densenet",
        builder=densenet,
        config={"blocks": blocks, "growth_rate": k, "init_features": init, "stem": "imagenet"},
        paper=_PAPER,
        input_shape=(224, 224, 3),
        min_input_size=32,
        classes=1000,
        params=params,
        params_source=_TV,
        total_params=total,
        gmacs=gmacs,
        top1=top1,
        taps=_block_taps(blocks),
        recipe="densenet_imagenet",
        checkpoints=_checkpoints(name),
        slow=slow,
        notes="Layer names and weight shapes equal keras.applications' DenseNet121/169/201"
        + ("; top-1 of keras.applications' weights." if top1 else "."),
    )


# DenseNet-BC for CIFAR-10: L = 3 blocks × n composite layers × 2 convs + first conv + 2 transitions + classifier,
# so n = (L - 4) / 6. Paper Table 2 gives 0.8M and 25.6M; C10+ test error 4.51% and 3.46%.
def _cifar(name, depth, k, approx, top1, slow):
    blocks = ((depth - 4) // 6,) * 3
    return ModelSpec(
        name=name,
        family="densenet",
        builder=densenet,
        config={"blocks": blocks, "growth_rate": k, "init_features": 2 * k, "stem": "cifar"},
        paper=_PAPER + f" (DenseNet-BC, L={depth}, k={k})",
        input_shape=(32, 32, 3),
        min_input_size=4,
        classes=10,
        params_approx=approx,
        params_source="1608.06993 Table 2",
        top1=round(top1, 2),
        taps=_block_taps(blocks),
        preprocessing="torch",
        fit="auto",
        recipe="densenet_cifar",
        slow=slow,
        notes="top1 is CIFAR-10 accuracy with standard augmentation (C10+).",
    )


# ImageNet: (blocks, growth rate, init features, trainable params, total count_params, GMACs, top-1, slow).
VARIANTS = (
    _imagenet("densenet121", (6, 12, 24, 16), 32, 64, 7_978_856, 8_062_504, 2.834, 75.0, False),
    _imagenet("densenet169", (6, 12, 32, 32), 32, 64, 14_149_480, None, 3.36, None, False),
    _imagenet("densenet201", (6, 12, 48, 32), 32, 64, 20_013_928, None, 4.291, None, True),
    _imagenet("densenet161", (6, 12, 36, 24), 48, 96, 28_681_000, None, 7.728, None, True),
    _cifar("densenet_bc_100_12", 100, 12, (0.8, "M", 1), 100 - 4.51, False),
    _cifar("densenet_bc_190_40", 190, 40, (25.6, "M", 1), 100 - 3.46, True),
)
register_models(VARIANTS)
