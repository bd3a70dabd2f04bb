"""AlexNet and ZFNet: five convolutions, three max-pools, three fully connected layers.

- ``alexnet``: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural
  Networks", NeurIPS 2012, as released in Caffe (``bvlc_alexnet``): the two GPU towers become grouped
  convolutions (groups=2 on conv2, conv4, conv5; conv3 reads both towers), LRN after the ReLU of conv1 and conv2,
  overlapping 3×3/2 max-pools, 227×227 input (the paper's figure says 224, which does not give 55×55).
- ``alexnet_owt``: torchvision's single tower, after Krizhevsky, "One weird trick for parallelizing
  convolutional neural networks", arXiv:1404.5997: 64/192/384/256/256 filters, no LRN, 224 input, padding 2 on
  conv1, ``avgpool`` to 6×6 before the classifier (torchvision's adaptive pooling, exact when pool5's side is a
  multiple or a divisor of 6: 6 at 224, 1 at the 63-pixel minimum), dropout *before* fc6 and fc7. The paper's
  footnote gives 384 filters for conv4; torchvision follows cuda-convnet2's one-GPU configuration (256), and so
  do its weights (pytorch/vision#463).
- ``zfnet``, ``zfnet_large``: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
  arXiv:1311.2901, Fig. 3 and Table 2: conv1 96@7×7/2, conv2 256@5×5/2, dense (ungrouped) conv3–5 of 384/384/256
  (512/1024/512 in the larger model), 224 input. Fig. 3's "contrast normalisation" across feature maps comes
  without constants: AlexNet's LRN (k=2, n=5, α=1e-4, β=0.75) is used, after pool1 and pool2 as in Fig. 3. Its
  sizes (110 → 55 after pool1, 26 → 13 after pool2) need Caffe's ceil-mode pooling, reproduced by "same" max-pools
  (padding bottom/right) at 224; conv1 has padding 1. The paper's rescaling of filters whose RMS exceeds 0.1 is
  a training rule, not part of the model.

Layer names follow the paper and Caffe: ``conv1``, ``relu1``, ``norm1``, ``pool1``, ... ``pool5``, ``flatten``,
``fc6``, ``fc7`` (ReLU fused, so ``fc6``/``fc7`` are the usual post-ReLU features), ``fc6_dropout``,
``fc7_dropout``, ``predictions`` (fc8). Grouped convolutions use ``Conv2D(groups=2)``: output maps
``[0, n/2)`` read input maps ``[0, c/2)``, as Caffe's ``group: 2``; TensorFlow runs them on CPU through XLA.

Porting weights: Caffe and PyTorch flatten pool5 in (C, H, W) order, Keras in (H, W, C). fc6's input rows must be
permuted: ``W_keras = W.reshape(4096, C, 6, 6).transpose(2, 3, 1, 0).reshape(36 * C, 4096)``; conv kernels go
from ``(out, in, kh, kw)`` to ``(kh, kw, in, out)``. bvlc_alexnet's prototxt leaves the LRN's k at Caffe's
default 1; the paper's k=2 is built here.
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.common import apply_conv_bn_act
from kerasarch.builder import apply_pooling, check_top_args, finish_model, make_inputs, predictions_dense
from kerasarch.layers.lrn import LocalResponseNormalization
from kerasarch.registry import ModelSpec, register_models
from kerasarch.weights.published import torchvision_checkpoint
from kerasarch.weights.torch_names import map_alexnet

_LRN_PLACES = (None, "before_pool", "after_pool")
_POOLED = (1, 2, 5)  # the stages that end in a 3×3/2 max-pool


def _lrn(x, name):
    # Krizhevsky et al. §3.3: k=2, n=5, alpha=1e-4, beta=0.75 (alpha divided by n, as in Caffe).
    return LocalResponseNormalization(size=5, alpha=1e-4, beta=0.75, k=2.0, name=name)(x)


def _adaptive_avg_pool_6x6(x, name):
    """torchvision's ``AdaptiveAvgPool2d((6, 6))`` where it is exact with a Keras layer: a side that is a multiple
    of 6 is average-pooled by ``side / 6`` (the default 224 input gives 6, so the layer is the identity), a side
    that divides 6 is repeated (what adaptive pooling does when its output is larger than its input)."""
    h, w = x.shape[1], x.shape[2]
    if h is not None and w is not None:
        if h % 6 == 0 and w % 6 == 0:
            return layers.AveragePooling2D((h // 6, w // 6), name=name)(x)
        if 6 % h == 0 and 6 % w == 0:
            return layers.UpSampling2D((6 // h, 6 // w), interpolation="nearest", name=name)(x)
    raise ValueError(
        f"alexnet_owt with include_top=True needs a pool5 side that is a multiple or a divisor of 6 "
        f"(input 224: 6×6; input 63: 1×1), to reproduce torchvision's adaptive pooling to 6×6. "
        f"Received: pool5 output {h}×{w}. Use include_top=False for other input sizes."
    )


def alexnet(
    *,
    filters=(96, 256, 384, 384, 256),
    conv1=(11, 4, 0),
    conv2=(5, 1, 2),
    groups=(1, 2, 1, 2, 2),
    lrn="before_pool",
    pool_padding=("valid", "valid", "valid"),
    adaptive_pool=False,
    dropout=0.5,
    dropout_before_fc=False,
    default_size=227,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="alexnet",
):
    """Builds AlexNet (two towers as grouped convolutions, torchvision's single tower) or ZFNet by configuration.

    Every convolution is followed by a ReLU; conv3–conv5 are 3×3 with padding 1; the max-pools are 3×3 stride 2.

    Args:
        filters: filters of conv1–conv5.
        conv1: ``(kernel, stride, padding)`` of conv1; padding is symmetric zero padding.
        conv2: ``(kernel, stride, padding)`` of conv2.
        groups: groups of conv1–conv5 (AlexNet's two towers: ``(1, 2, 1, 2, 2)``).
        lrn: where the local response normalisation of stages 1 and 2 goes: ``"before_pool"`` (AlexNet, after the
            ReLU), ``"after_pool"`` (ZFNet, Fig. 3) or None.
        pool_padding: ``"valid"`` or ``"same"`` for pool1, pool2, pool5. ZFNet's Fig. 3 sizes (110→55, 26→13) come
            from Caffe's ceil-mode pooling, which "same" (padding bottom/right) reproduces at the default size.
        adaptive_pool: average-pool pool5 to 6×6 before the classifier (torchvision's ``avgpool``).
        dropout: dropout rate on fc6 and fc7 (0.5 in the papers).
        dropout_before_fc: dropout on the inputs of fc6 and fc7 (torchvision) instead of their outputs (paper,
            Caffe).
        default_size: input side when ``input_shape`` is None (227 for AlexNet, 224 for the others).
        include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name: as in
            keras.applications. ``include_top=False`` ends at ``pool5``.

    Returns:
        A Functional ``keras.Model``.
    """
    if len(filters) != 5 or len(groups) != 5 or len(pool_padding) != 3:
        raise ValueError(
            f"`filters` and `groups` need 5 entries (conv1–conv5), `pool_padding` 3 (pool1, pool2, "
            f"pool5). Received: filters={filters!r}, groups={groups!r}, pool_padding={pool_padding!r}"
        )
    if lrn not in _LRN_PLACES:
        raise ValueError(f"`lrn` must be one of {_LRN_PLACES}. Received: lrn={lrn!r}")
    check_top_args(include_top, pooling, classes, classifier_activation)
    inputs, x = make_inputs(
        input_shape,
        input_tensor,
        default=(default_size, default_size, 3),
        min_size=_min_size(conv1, conv2, pool_padding),
        name=name,
    )

    convs = [conv1, conv2, (3, 1, 1), (3, 1, 1), (3, 1, 1)]
    for i, ((kernel, stride, pad), width, group) in enumerate(zip(convs, filters, groups), start=1):
        x = apply_conv_bn_act(
            x,
            width,
            kernel,
            name=f"conv{i}",
            conv_name=f"conv{i}",
            act_name=f"relu{i}",
            strides=stride,
            padding=pad,
            groups=group,
            use_bias=True,
            norm=False,
            kernel_initializer="glorot_uniform",
        )
        if i in (1, 2) and lrn == "before_pool":
            x = _lrn(x, f"norm{i}")
        if i in _POOLED:
            x = layers.MaxPooling2D(3, strides=2, padding=pool_padding[_POOLED.index(i)], name=f"pool{i}")(x)
        if i in (1, 2) and lrn == "after_pool":
            x = _lrn(x, f"norm{i}")

    if not include_top:
        return finish_model(inputs, apply_pooling(x, pooling), name, weights, input_tensor)
    if adaptive_pool:
        x = _adaptive_avg_pool_6x6(x, "avgpool")
    x = layers.Flatten(name="flatten")(x)
    for fc in ("fc6", "fc7"):
        if dropout and dropout_before_fc:
            x = layers.Dropout(dropout, name=f"{fc}_dropout")(x)
        x = layers.Dense(4096, activation="relu", name=fc)(x)
        if dropout and not dropout_before_fc:
            x = layers.Dropout(dropout, name=f"{fc}_dropout")(x)
    x = predictions_dense(classes, classifier_activation)(x)
    return finish_model(inputs, x, name, weights, input_tensor)


def _min_size(conv1, conv2, pool_padding):
    """The smallest input side for which pool5 is at least 1×1: walks the sizes back from pool5's input (3)."""

    def pool_in(out, padding):  # smallest input giving `out` after a 3×3/2 max-pool
        return 2 * out - 1 if padding == "same" else 2 * out + 1

    def conv_in(out, kernel, stride, pad):
        return (out - 1) * stride + kernel - 2 * pad

    side = 1 if pool_padding[2] == "same" else 3  # conv5 output; conv3–conv5 keep the size
    side = conv_in(pool_in(side, pool_padding[1]), *conv2)
    return conv_in(pool_in(side, pool_padding[0]), *conv1)


_ALEXNET_TAPS = {"pool5": "pool5", "fc6": "fc6", "fc7": "fc7"}
_ALEXNET = {
    "filters": (96, 256, 384, 384, 256),
    "conv1": (11, 4, 0),
    "conv2": (5, 1, 2),
    "groups": (1, 2, 1, 2, 2),
    "lrn": "before_pool",
    "pool_padding": ("valid",) * 3,
    "adaptive_pool": False,
    "dropout_before_fc": False,
    "default_size": 227,
}
_ZFNET = {
    **_ALEXNET,
    "conv1": (7, 2, 1),
    "conv2": (5, 2, 0),
    "groups": (1,) * 5,
    "lrn": "after_pool",
    "pool_padding": ("same", "same", "valid"),
    "default_size": 224,
}


def _variant(name, config, **fields):
    size = config["default_size"]
    if "checkpoints" not in fields:  # no published weights: the ImageNet single-crop evaluation of its recipe
        fields.update(fit="resize_crop", resize_size=int(round(size * 256 / 224)))
    return ModelSpec(
        name=name,
        family="alexnet",
        builder=alexnet,
        config=config,
        input_shape=(size, size, 3),
        min_input_size=_min_size(config["conv1"], config["conv2"], config["pool_padding"]),
        taps=_ALEXNET_TAPS,
        slow=True,
        **fields,
    )


# ZFNet has no published exact count: tests/test_alexnet.py derives it.
VARIANTS = (
    _variant(
        "alexnet",
        _ALEXNET,
        paper="Krizhevsky, Sutskever & Hinton 2012, NeurIPS (Caffe bvlc_alexnet)",
        params=60_965_224,
        params_source="Caffe bvlc_alexnet",
        gmacs=0.724,
        preprocessing="caffe",
        recipe="alexnet",
        notes="two towers as groups=2 on conv2/conv4/conv5; LRN k=2 (paper)",
    ),
    _variant(
        "alexnet_owt",
        {
            **_ALEXNET,
            "filters": (64, 192, 384, 256, 256),
            "conv1": (11, 4, 2),
            "groups": (1,) * 5,
            "lrn": None,
            "adaptive_pool": True,
            "dropout_before_fc": True,
            "default_size": 224,
        },
        paper="Krizhevsky 2014, arXiv:1404.5997 (torchvision's AlexNet)",
        params=61_100_840,
        params_source="torchvision weight metadata (num_params)",
        gmacs=0.714,
        top1=56.522,
        recipe="alexnet",
        checkpoints=(torchvision_checkpoint("alexnet_owt", "alexnet-owt-7be5be79.pth", map_alexnet, 56.522),),
        notes="torchvision layout: conv4 256 (the paper's footnote: 384), dropout before fc6/fc7, avgpool 6×6",
    ),
    _variant(
        "zfnet",
        _ZFNET,
        paper="Zeiler & Fergus 2013, arXiv:1311.2901",
        params=62_357_608,
        params_source="derived layer by layer (docs/references.md)",
        preprocessing="unit",
        recipe="zfnet",
        notes="contrast normalisation = AlexNet's LRN after pool1/pool2 (Fig. 3 order)",
    ),
    _variant(
        "zfnet_large",
        {**_ZFNET, "filters": (96, 256, 512, 1024, 512)},
        paper="Zeiler & Fergus 2013, arXiv:1311.2901 (Table 2: layers 3-5 of 512/1024/512)",
        params=107_627_624,
        params_source="derived layer by layer (docs/references.md)",
        preprocessing="unit",
        recipe="zfnet",
        notes="contrast normalisation = AlexNet's LRN after pool1/pool2 (Fig. 3 order)",
    ),
)
register_models(VARIANTS)
