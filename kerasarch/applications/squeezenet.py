"""SqueezeNet: Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
arXiv:1602.07360, versions 1.0 (Table 1) and 1.1 (the authors' release, 2.4× less computation), as in torchvision,
with the paper's simple and complex bypass (§6.1, Figure 2).

A 7×7/2 (1.0) or 3×3/2 (1.1) conv, eight Fire modules with ceil-mode 3×3/2 max-pools between them, dropout 0.5,
then the classifier is a 1×1 conv to ``classes`` (``conv10``, ReLU) and a global average pool (``pool10``) with
the softmax on top: no fully connected layer. Layer names follow the authors' Caffe models (``fire2_squeeze1x1``,
``pool4``, ``drop9``, ``conv10``, ``pool10``) and every Fire module ends in ``fire<n>_out``.
"""

from __future__ import annotations

import keras
from keras import layers

from kerasarch.blocks.common import apply_conv_bn_act
from kerasarch.blocks.fire import apply_fire_module
from kerasarch.blocks.pooling import apply_ceil_pool
from kerasarch.builder import apply_pooling, check_top_args, finish_model, make_inputs, predictions_activation
from kerasarch.registry import ModelSpec, register_models
from kerasarch.weights.published import torchvision_checkpoint
from kerasarch.weights.torch_names import map_squeezenet

__all__ = ["BYPASSES", "SQUEEZENET_FIRES", "SQUEEZENET_VERSIONS", "squeezenet"]

# Fire modules 2..9 as (squeeze, expand1x1, expand3x3): Table 1 of the paper, the same in both versions.
SQUEEZENET_FIRES = (
    (16, 64, 64),
    (16, 64, 64),
    (32, 128, 128),
    (32, 128, 128),
    (48, 192, 192),
    (48, 192, 192),
    (64, 256, 256),
    (64, 256, 256),
)
# Per version: conv1 (filters, kernel) and the layers followed by a 3×3/2 max-pool.
SQUEEZENET_VERSIONS = {
    "1_0": {"conv1": (96, 7), "pools_after": (1, 4, 8)},
    "1_1": {"conv1": (64, 3), "pools_after": (1, 3, 5)},
}
BYPASSES = (None, "simple", "complex")
_MIN_SIZE = {"1_0": 21, "1_1": 17}


def squeezenet(
    version="1_0",
    *,
    bypass=None,
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
    """Builds SqueezeNet ``version`` ("1_0" or "1_1"), Iandola et al. 2016, arXiv:1602.07360.

    Args:
        version: "1_0" (the paper's Table 1) or "1_1" (3×3 conv1 with 64 filters, pools moved earlier).
        bypass: ``None``; ``"simple"``: identity bypass around the Fire modules whose input and output depths
            match (fire3, 5, 7, 9); ``"complex"``: in addition a 1×1 conv bypass around the others (fire2, 4, 6, 8).
        dropout: dropout before ``conv10`` (0.5).
        include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name: as in
            keras.applications. Without the top the model ends at ``fire9_out``.

    Returns:
        A Functional ``keras.Model``.
    """
    if version not in SQUEEZENET_VERSIONS:
        raise ValueError(
            f"SqueezeNet version must be one of {sorted(SQUEEZENET_VERSIONS)}. Received: version={version!r}"
        )
    if bypass not in BYPASSES:
        raise ValueError(f"`bypass` must be one of {BYPASSES}. Received: bypass={bypass!r}")
    cfg = SQUEEZENET_VERSIONS[version]
    name = name or f"squeezenet{version}" + (f"_{bypass}_bypass" if bypass else "")
    check_top_args(include_top, pooling, classes, classifier_activation)
    inputs, x = make_inputs(input_shape, input_tensor, default=(224, 224, 3), min_size=_MIN_SIZE[version], name=name)
    filters, kernel = cfg["conv1"]
    x = apply_conv_bn_act(
        x,
        filters,
        kernel,
        name="conv1",
        conv_name="conv1",
        act_name="conv1_relu",
        strides=2,
        padding="valid",
        use_bias=True,
        norm=False,
        kernel_initializer="glorot_uniform",
    )
    x = apply_ceil_pool(x, 3, 2, name="pool1")
    for index, (squeeze, e1, e3) in enumerate(SQUEEZENET_FIRES, start=2):
        same_depth = x.shape[-1] == e1 + e3
        kind = None
        if bypass and same_depth:
            kind = "identity"
        elif bypass == "complex":
            kind = "conv"
        x = apply_fire_module(x, squeeze, e1, e3, bypass=kind, name=f"fire{index}")
        if index in cfg["pools_after"]:
            x = apply_ceil_pool(x, 3, 2, name=f"pool{index}")
    if include_top:
        if dropout:
            x = layers.Dropout(dropout, name="drop9")(x)
        # Caffe and torchvision initialise the final conv from N(0, 0.01), the others uniformly.
        x = apply_conv_bn_act(
            x,
            classes,
            1,
            name="conv10",
            conv_name="conv10",
            act_name="conv10_relu",
            use_bias=True,
            norm=False,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        )
        x = layers.GlobalAveragePooling2D(name="pool10")(x)
        x = predictions_activation(classifier_activation)(x)
    else:
        x = apply_pooling(x, pooling)
    return finish_model(inputs, x, name, weights, input_tensor)


_TAPS = {"conv1": "conv1_relu", **{f"fire{i}": f"fire{i}_out" for i in range(2, 10)}, "conv10": "conv10_relu"}


def _variant(version, params, gmacs, top1, file_name):
    name = f"squeezenet{version}"
    return ModelSpec(
        name=name,
        family="squeezenet",
        builder=squeezenet,
        config={"version": version},
        paper="Iandola et al. 2016, arXiv:1602.07360"
        + (" (v1.1: authors' release, torchvision)" if version == "1_1" else ""),
        input_shape=(224, 224, 3),
        min_input_size=_MIN_SIZE[version],
        params=params,
        params_source="torchvision weight metadata (num_params)",
        gmacs=gmacs,
        top1=top1,
        taps=_TAPS,
        recipe="squeezenet",
        checkpoints=(torchvision_checkpoint(name, file_name, map_squeezenet, top1),),
        notes="ceil-mode max-pools as in Caffe/torchvision; 'conv10' taps the post-ReLU class maps "
        "(Caffe's in-place relu_conv10).",
    )


# torchvision weight metadata and IMAGENET1K_V1 files (torchvision/models/squeezenet.py).
VARIANTS = (
    _variant("1_0", 1_248_424, 0.819, 58.092, "squeezenet1_0-b66bff10.pth"),
    _variant("1_1", 1_235_496, 0.349, 58.178, "squeezenet1_1-b8a52dc0.pth"),
)
register_models(VARIANTS)
