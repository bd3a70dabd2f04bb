"""GoogLeNet (Inception v1): Szegedy et al., "Going Deeper with Convolutions", arXiv:1409.4842, Table 1 and §5,
as released in Caffe (bvlc_googlenet), and torchvision's batch-norm variant.

``googlenet`` follows the paper and the Caffe model: 7×7/2 stem, LRN (local_size 5, α 1e-4, β 0.75 and Caffe's
default k = 1; α is divided by the window as in Caffe), true 5×5 convolutions, conv biases, no BN, ceil-mode
pools, average pool, dropout 0.4, linear, softmax. ``googlenet_bn`` is torchvision's ``googlenet``: BN (eps 1e-3)
after every bias-free conv, no LRN, a 3×3 conv in the "5×5" branch (pytorch/vision#906), a 2×2/2 pool before 5a,
dropout 0.2.

The auxiliary classifiers (after 4a and 4d: 5×5/3 average pool, 1×1 conv 128, FC 1024, dropout 0.7, linear,
softmax) are built only with ``aux_logits=True``. The model then always returns the dict
``{"aux1", "aux2", "predictions"}``, in training and inference alike; the paper adds the auxiliary losses with
weight ``AUX_LOSS_WEIGHT`` = 0.3 during training (``AUX_LOSS_WEIGHTS`` is the matching ``loss_weights`` for
``compile``) and discards the heads at inference: :func:`strip_auxiliary`.
"""

from __future__ import annotations

from keras import layers

from kerasarch import classifier
from kerasarch.blocks.inception import apply_inception_conv, apply_inception_module
from kerasarch.blocks.pooling import apply_ceil_pool
from kerasarch.builder import apply_classifier, check_top_args, finish_model, make_inputs, predictions_dense
from kerasarch.layers.lrn import LocalResponseNormalization
from kerasarch.registry import ModelSpec, register_models
from kerasarch.weights.published import torchvision_checkpoint
from kerasarch.weights.torch_names import map_googlenet

__all__ = ["AUX_LOSS_WEIGHT", "AUX_LOSS_WEIGHTS", "INCEPTION_V1_FILTERS", "googlenet", "strip_auxiliary"]

# §5: "their loss gets added to the total loss of the network with a discount weight (... weighted by 0.3)".
AUX_LOSS_WEIGHT = 0.3
AUX_LOSS_WEIGHTS = {"aux1": AUX_LOSS_WEIGHT, "aux2": AUX_LOSS_WEIGHT, "predictions": 1.0}

# Table 1: #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj.
INCEPTION_V1_FILTERS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
_POOL_BEFORE = {"4a": "pool3", "5a": "pool4"}
_AUX_AFTER = {"4a": "aux1", "4d": "aux2"}
_AUX_POOLS = ("5x5/3", "adaptive")


def _lrn(name):
    # bvlc_googlenet: local_size 5, alpha 1e-4, beta 0.75, k left at Caffe's default of 1 (AlexNet's paper has 2).
    return LocalResponseNormalization(size=5, alpha=1e-4, beta=0.75, k=1.0, name=name)


def _aux_head(x, *, name, classes, classifier_activation, batch_norm, aux_pool, dropout):
    """Auxiliary classifier (§5): 5×5/3 average pool (4×4 at 224) → 1×1 conv 128 → FC 1024 → dropout → linear."""
    if aux_pool == "adaptive":  # torchvision: adaptive_avg_pool2d to 4×4, different windows from 5×5/3
        x = layers.AdaptiveAveragePooling2D(4, name=f"{name}_pool")(x)
    else:
        x = apply_ceil_pool(x, 5, 3, kind="avg", name=f"{name}_pool")
    x = apply_inception_conv(x, 128, 1, name=f"{name}_conv", batch_norm=batch_norm)
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return predictions_dense(classes, classifier_activation, name=name)(x)


def googlenet(
    *,
    batch_norm=False,
    lrn=True,
    branch5_kernel=5,
    pool4_size=3,
    dropout=0.4,
    aux_logits=False,
    aux_pool="5x5/3",
    aux_dropout=0.7,
    naive=False,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="googlenet",
):
    """Builds GoogLeNet (Inception v1), Szegedy et al. 2014, arXiv:1409.4842, Table 1.

    Args:
        batch_norm: BN after every conv, convs without bias (torchvision).
        lrn: the two LRN layers of the stem (paper, Caffe).
        branch5_kernel: kernel of the "5×5" branch: 5 in the paper, 3 in torchvision.
        pool4_size: window of the stride-2 max-pool before 5a: 3 in the paper, 2 in torchvision.
        dropout: dropout before the classifier (0.4 in the paper).
        aux_logits: build the two auxiliary classifiers; the model then returns
            ``{"aux1": ..., "aux2": ..., "predictions": ...}`` in every mode. Needs ``include_top``.
        aux_pool: ``"5x5/3"`` (paper, Caffe; needs an input whose 4a map the 5×5/3 ceil-mode pool tiles, e.g.
            224) or ``"adaptive"`` (torchvision's 4×4 adaptive average pool).
        aux_dropout: dropout in the auxiliary heads (0.7).
        naive: use the naive Inception module (Figure 2a, no 1×1 reductions, unprojected pool branch) everywhere,
            to show its cost; the depth grows module after module to 4,944 channels.
        include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name: as in
            keras.applications. The top is ``pool5`` (global average: the paper's 7×7/1 at 224) → ``dropout`` →
            ``predictions``.

    Returns:
        A Functional ``keras.Model``.
    """
    check_top_args(include_top, pooling, classes, classifier_activation)
    if aux_logits and not include_top:
        raise ValueError(
            "`aux_logits=True` needs `include_top=True` (the auxiliary heads are classifiers). "
            f"Received: aux_logits={aux_logits!r}, include_top={include_top!r}"
        )
    if aux_pool not in _AUX_POOLS:
        raise ValueError(f"`aux_pool` must be one of {_AUX_POOLS}. Received: aux_pool={aux_pool!r}")
    min_size = 15 if pool4_size == 2 else 31  # the input whose ceil-mode pool4 output is 1×1
    inputs, x = make_inputs(input_shape, input_tensor, default=(224, 224, 3), min_size=min_size, name=name)

    def conv(t, filters, kernel_size, layer, **kwargs):
        return apply_inception_conv(t, filters, kernel_size, name=layer, batch_norm=batch_norm, **kwargs)

    x = conv(x, 64, 7, "conv1_7x7_s2", strides=2, padding=3)
    x = apply_ceil_pool(x, 3, 2, name="pool1")
    if lrn:
        x = _lrn("norm1")(x)
    x = conv(x, 64, 1, "conv2_3x3_reduce")
    x = conv(x, 192, 3, "conv2_3x3")
    if lrn:
        x = _lrn("norm2")(x)
    x = apply_ceil_pool(x, 3, 2, name="pool2")
    aux = {}
    for stage, filters in INCEPTION_V1_FILTERS.items():
        if stage in _POOL_BEFORE:
            x = apply_ceil_pool(x, pool4_size if stage == "5a" else 3, 2, name=_POOL_BEFORE[stage])
        x = apply_inception_module(
            x, filters, naive=naive, batch_norm=batch_norm, name=f"inception{stage}", branch5_kernel=branch5_kernel
        )
        if aux_logits and stage in _AUX_AFTER:
            head = _AUX_AFTER[stage]
            aux[head] = _aux_head(
                x,
                name=head,
                classes=classes,
                classifier_activation=classifier_activation,
                batch_norm=batch_norm,
                aux_pool=aux_pool,
                dropout=aux_dropout,
            )
    x = apply_classifier(x, include_top, pooling, classes, classifier_activation, dropout=dropout, pool_name="pool5")
    outputs = {**aux, "predictions": x} if aux_logits else x
    return finish_model(inputs, outputs, name, weights, input_tensor)


def strip_auxiliary(model):
    """Returns the single-output inference model of a GoogLeNet built with ``aux_logits=True``: the same layers,
    hence the same weights, from the input to ``predictions``, without the auxiliary heads (§5: "at inference
    time, these auxiliary networks are discarded"). :func:`kerasarch.classifier.strip_auxiliary`, which training
    and export use, after checking that ``model`` has its classifier.

    Args:
        model: a GoogLeNet with its top (with or without auxiliary heads).

    Returns:
        A Functional ``keras.Model`` with one output, named like ``model``, with its model card.
    """
    if classifier.MAIN_OUTPUT not in {layer.name for layer in model.layers}:
        raise ValueError(
            f"strip_auxiliary needs a model with its classifier (a '{classifier.MAIN_OUTPUT}' layer). "
            f"Received: model {model.name!r} without one"
        )
    return classifier.strip_auxiliary(model)


_VARIANTS = {
    "googlenet": {
        "batch_norm": False,
        "lrn": True,
        "branch5_kernel": 5,
        "pool4_size": 3,
        "dropout": 0.4,
        "aux_pool": "5x5/3",
    },
    "googlenet_bn": {
        "batch_norm": True,
        "lrn": False,
        "branch5_kernel": 3,
        "pool4_size": 2,
        "dropout": 0.2,
        "aux_pool": "adaptive",
    },
}
_TAPS = {
    "conv1": "conv1_7x7_s2_relu",
    "pool1": "pool1",
    "conv2": "conv2_3x3_relu",
    "pool2": "pool2",
    "pool3": "pool3",
    "pool4": "pool4",
    "pool5": "pool5",
    **{f"inception_{s}": f"inception{s}_out" for s in INCEPTION_V1_FILTERS},
}

VARIANTS = (
    ModelSpec(
        name="googlenet",
        family="googlenet",
        builder=googlenet,
        config=_VARIANTS["googlenet"],
        paper="Szegedy et al. 2014, arXiv:1409.4842 (Table 1; Caffe bvlc_googlenet)",
        input_shape=(224, 224, 3),
        min_input_size=31,
        params=6_998_552,
        params_source="derived from Table 1's filter columns + biases + the 1024→1000 classifier "
        "(docs/references.md; the paper rounds to ≈6.8M, weights only)",
        gmacs=1.583,
        taps=_TAPS,
        preprocessing="caffe",
        fit="resize_crop",
        resize_size=256,
        recipe="googlenet",
        notes="gmacs counted from Table 1's layers; the paper's '1.5 billion multiply-adds' "
        "(its ops column sums to 1,502M) takes conv1 as 34M where a 7×7×3×64 conv on 112×112 is 118M. Counts "
        "without the auxiliary heads; aux_logits=True adds 6,379,728 parameters.",
    ),
    ModelSpec(
        name="googlenet_bn",
        family="googlenet",
        builder=googlenet,
        config=_VARIANTS["googlenet_bn"],
        paper="Szegedy et al. 2014, arXiv:1409.4842 (+BN, 3×3 in the 5×5 branch: torchvision)",
        input_shape=(224, 224, 3),
        min_input_size=15,
        params=6_624_904,
        params_source="torchvision weight metadata (num_params), without aux heads",
        gmacs=1.498,
        top1=69.778,
        taps=_TAPS,
        recipe="googlenet",
        checkpoints=(
            torchvision_checkpoint(
                "googlenet_bn",
                "googlenet-1378be20.pth",
                map_googlenet,
                69.778,
                preprocessing="tf",
                notes="torchvision builds this GoogLeNet with transform_input=True, which turns its torch-normalised "
                "input into (x/255 - 0.5)/0.5 before the first conv; without that step the network sees exactly "
                "the 'tf' convention, so that is the preprocessing recorded here.",
            ),
        ),
        notes="torchvision's googlenet: BN eps 1e-3, no conv bias, no LRN, 3×3 in the '5×5' branch "
        "(pytorch/vision#906), ceil-mode pools, 2×2/2 pool before 5a, dropout 0.2, adaptive 4×4 pool in the "
        "aux heads.",
    ),
)
register_models(VARIANTS)
