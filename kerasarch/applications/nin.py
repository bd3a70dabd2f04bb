"""Network in Network: Lin, Chen & Yan, "Network In Network", arXiv:1312.4400, in the configurations the authors
released: CIFAR-10 (three mlpconv layers, the cuda-convnet / Caffe model zoo "NIN CIFAR10" model) and ImageNet
(four mlpconv layers, Caffe model zoo ``nin_imagenet``).

Each mlpconv layer is a conv followed by two 1×1 convs (``cccp``), all with ReLU. The last 1×1 conv of the last
mlpconv outputs one map per class, and global average pooling over those maps plus a softmax replace the fully
connected classifier (§3.2). Pools are Caffe's (ceil mode); dropout 0.5 follows the pools as in the released models.
There is no published exact parameter count: the counts below are derived, layer by layer, in tests/test_nin.py.
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.mlpconv import apply_mlpconv
from kerasarch.blocks.pooling import apply_ceil_pool
from kerasarch.builder import apply_pooling, check_top_args, finish_model, make_inputs, predictions_activation
from kerasarch.registry import ModelSpec, register_models

__all__ = ["NIN_CONFIGS", "nin"]

# Per configuration: the mlpconv layers as (filters, kernel, strides, padding, pool after, dropout after); the last
# layer's class-map conv (``classes`` filters) is appended by the builder.
NIN_CONFIGS = {
    "cifar": {
        "default": (32, 32, 3),
        "classes": 10,
        "min_size": 4,
        "blocks": (
            ((192, 160, 96), 5, 1, "same", "max", True),
            ((192, 192, 192), 5, 1, "same", "avg", True),
            ((192, 192), 3, 1, "same", None, False),
        ),
    },
    "imagenet": {
        "default": (224, 224, 3),
        "classes": 1000,
        "min_size": 39,
        "blocks": (
            ((96, 96, 96), 11, 4, "valid", "max", False),
            ((256, 256, 256), 5, 1, "same", "max", False),
            ((384, 384, 384), 3, 1, "same", "max", True),
            ((1024, 1024), 3, 1, "same", None, False),
        ),
    },
}


def nin(
    config="imagenet",
    *,
    dropout=0.5,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=None,
    classifier_activation="softmax",
    name=None,
):
    """Builds Network in Network, Lin et al. 2013, arXiv:1312.4400.

    Args:
        config: "cifar" (32×32 input; mlpconv 192-160-96 5×5, 192-192-192 5×5, 192-192-classes 3×3; max-pool,
            dropout, average pool, dropout between) or "imagenet" (224×224; 96-96-96 11×11/4, 256-256-256 5×5,
            384-384-384 3×3, 1024-1024-classes 3×3; 3×3/2 max-pools between, dropout before the last).
        dropout: the dropout rate (0.5).
        classes: number of classes; ``None``: the configuration's (10 or 1000).
        include_top, weights, input_tensor, input_shape, pooling, classifier_activation, name: as in
            keras.applications. The top is the class-map conv of the last mlpconv (``mlpconv<n>_out`` is then
            the ReLU'd class maps), ``avg_pool`` and ``predictions``; without it the last mlpconv stops before its
            class-map conv.

    Returns:
        A Functional ``keras.Model``.
    """
    if config not in NIN_CONFIGS:
        raise ValueError(f"NiN config must be one of {sorted(NIN_CONFIGS)}. Received: config={config!r}")
    cfg = NIN_CONFIGS[config]
    name = name or ("nin_cifar" if config == "cifar" else "nin")
    classes = cfg["classes"] if classes is None else classes
    check_top_args(include_top, pooling, classes, classifier_activation)
    inputs, x = make_inputs(input_shape, input_tensor, default=cfg["default"], min_size=cfg["min_size"], name=name)
    blocks = cfg["blocks"]
    for i, (filters, kernel, strides, padding, pool, drop) in enumerate(blocks, start=1):
        if i == len(blocks) and include_top:
            filters = (*filters, classes)
        x = apply_mlpconv(x, filters, kernel, strides=strides, padding=padding, name=f"mlpconv{i}")
        if pool:
            x = apply_ceil_pool(x, 3, 2, kind=pool, name=f"pool{i}")
        if drop and dropout:
            x = layers.Dropout(dropout, name=f"drop{i}")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = predictions_activation(classifier_activation)(x)
    else:
        x = apply_pooling(x, pooling)
    return finish_model(inputs, x, name, weights, input_tensor)


_TAPS = {
    "cifar": {**{f"mlpconv{i}": f"mlpconv{i}_out" for i in (1, 2, 3)}, "pool1": "pool1", "pool2": "pool2"},
    "imagenet": {
        **{f"mlpconv{i}": f"mlpconv{i}_out" for i in (1, 2, 3, 4)},
        **{f"pool{i}": f"pool{i}" for i in (1, 2, 3)},
    },
}

VARIANTS = (
    ModelSpec(
        name="nin_cifar",
        family="nin",
        builder=nin,
        config={"config": "cifar"},
        paper="Lin et al. 2013, arXiv:1312.4400 (CIFAR-10 model released by the authors)",
        input_shape=(32, 32, 3),
        min_input_size=4,
        classes=10,
        params=966_986,
        params_source="derived layer by layer (docs/references.md)",
        top1=89.59,
        taps=_TAPS["cifar"],
        preprocessing="torch",
        fit="auto",
        recipe="nin_cifar",
        notes="Trained on global-contrast-normalised, ZCA-whitened CIFAR-10; top1 = 100 - 10.41% test error without "
        "augmentation (8.81% with).",
    ),
    ModelSpec(
        name="nin",
        family="nin",
        builder=nin,
        config={"config": "imagenet"},
        paper="Lin et al. 2013, arXiv:1312.4400 (ImageNet model of the authors' Caffe model zoo)",
        input_shape=(224, 224, 3),
        min_input_size=39,
        params=7_595_176,
        params_source="derived layer by layer (docs/references.md)",
        taps=_TAPS["imagenet"],
        preprocessing="caffe",
        fit="resize_crop",
        resize_size=256,
        recipe="nin_imagenet",
        notes="≈7.6M parameters; Caffe model zoo nin_imagenet: conv1 11×11/4 unpadded, ceil-mode max-pools, dropout "
        "only before mlpconv4.",
    ),
)
register_models(VARIANTS)
