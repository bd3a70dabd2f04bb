"""The residual family, one configurable builder (timm-style): ResNet (He et al. 2015, arXiv:1512.03385),
pre-activation ResNet (He et al. 2016, arXiv:1603.05027), Wide ResNet (Zagoruyko & Komodakis 2016,
arXiv:1605.07146), ResNeXt (Xie et al. 2016, arXiv:1611.05431) and stochastic depth (Huang et al. 2016,
arXiv:1603.09382), each a row of configuration.

Two ImageNet conventions (``convention``):

- ``"torchvision"`` ("v1.5"): the stride of a downsampling bottleneck on its 3×3 conv, no conv biases, BN
  epsilon 1e-5 and momentum 0.9 (PyTorch's 0.1). ``resnet18`` … ``resnet152``, ``wide_resnet*``, ``resnext*``
  and the CIFAR networks (fb.resnet.torch is the same convention).
- ``"keras"`` (the paper, Caffe, keras.applications): the stride on the first 1×1, biases in every conv, BN
  epsilon 1.001e-5 and momentum 0.99. ``resnet50_keras`` … and ``resnet50v2`` … have keras.applications'
  layer names and weight shapes, so its weight files load.

Layer names are keras.applications' everywhere: ``conv1_conv`` (stem), ``convN_blockM_{0,1,2,3}_{conv,bn,relu}``,
stage outputs ``convN_blockM_out``, ``post_bn``/``post_relu`` (pre-activation), ``avg_pool``, ``predictions``.
CIFAR networks have a 3×3 stem ``conv1_conv`` and stages ``conv2``–``conv4``.
"""

from __future__ import annotations

from keras import layers

from kerasarch.blocks.common import BN_EPS_KERAS, BN_EPS_TORCH, apply_bn_act, apply_conv
from kerasarch.blocks.residual import (
    HE_FAN_OUT,
    SHORTCUTS,
    apply_basic_block,
    apply_bottleneck_block,
    apply_preact_basic_block,
    apply_preact_bottleneck_block,
)
from kerasarch.builder import apply_classifier, check_top_args, finish_model, make_inputs
from kerasarch.registry import ModelSpec, register_models
from kerasarch.weights.published import keras_checkpoint, timm_checkpoint, torchvision_checkpoint
from kerasarch.weights.torch_names import map_resnet

__all__ = ["resnet", "survival_probabilities", "CONVENTIONS"]

# stride_in_1x1, conv bias, BN epsilon, BN momentum.
CONVENTIONS = {
    "torchvision": {"stride_in_1x1": False, "use_bias": False, "bn_epsilon": BN_EPS_TORCH, "bn_momentum": 0.9},
    "keras": {"stride_in_1x1": True, "use_bias": True, "bn_epsilon": BN_EPS_KERAS, "bn_momentum": 0.99},
}
_STEMS = {"imagenet": 32, "cifar": 8}  # stem -> smallest input size


def survival_probabilities(num_blocks, final_survival):
    """The linear decay rule, Huang et al. 2016 Eq. 4: ``p_l = 1 − (l / L)(1 − p_L)`` for blocks ``l = 1 … L``.

    ``p_0 = 1`` belongs to the input (the stem is never dropped), so the first block survives with
    ``1 − (1 − p_L) / L`` and the last with ``p_L``.
    """
    return [1.0 - (i / num_blocks) * (1.0 - final_survival) for i in range(1, num_blocks + 1)]


def resnet(
    layers_per_stage=(2, 2, 2, 2),
    *,
    block="basic",
    preact=False,
    stem="imagenet",
    stem_width=64,
    widths=(64, 128, 256, 512),
    strides=(1, 2, 2, 2),
    downsample_at="first",
    expansion=4,
    groups=1,
    base_width=64,
    shortcut="B",
    convention="torchvision",
    stride_in_1x1=None,
    use_bias=None,
    bn_epsilon=None,
    bn_momentum=None,
    dropout=0.0,
    stochastic_depth=None,
    stochastic_depth_mode="batch",
    zero_init_residual=False,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="resnet",
):
    """Builds a residual network: ResNet, pre-activation ResNet, Wide ResNet, ResNeXt, with optional stochastic
    depth.

    Args:
        layers_per_stage: residual blocks per stage, e.g. ``(3, 4, 6, 3)``.
        block: ``"basic"`` (two 3×3) or ``"bottleneck"`` (1×1, 3×3, 1×1).
        preact: pre-activation blocks (BN-ReLU-conv, He et al. 2016) and a final ``post_bn``/``post_relu``.
        stem: ``"imagenet"`` (7×7/2 conv + 3×3/2 max-pool) or ``"cifar"`` (one 3×3 conv).
        stem_width: filters of the stem conv.
        widths: each stage's base width (basic: output channels; bottleneck: output / ``expansion``; WRN-d-k:
            ``16k, 32k, 64k``).
        strides: each stage's stride.
        downsample_at: which block of a stage carries its stride: ``"first"`` (the papers, torchvision) or
            ``"last"`` (keras.applications' ResNetV2, with ``strides=(2, 2, 2, 1)``).
        expansion: bottleneck output / base width.
        groups: ResNeXt cardinality of the bottleneck 3×3.
        base_width: bottleneck width per group at base width 64 (64: ResNet; 128: WRN-50-2; ResNeXt ``d``).
        shortcut: ``"A"`` (zero-padding, parameter-free; CIFAR ResNets), ``"B"`` (projection where the channels
            change) or ``"C"`` (projection in every block), He et al. 2015 §3.3.
        convention: ``"torchvision"`` or ``"keras"`` (see the module docstring): the defaults of
            ``stride_in_1x1``, ``use_bias``, ``bn_epsilon`` and ``bn_momentum``.
        stride_in_1x1: override; post-activation bottleneck stride on the first 1×1 instead of the 3×3.
        use_bias: override; conv biases (pre-activation blocks: only in the convs not followed by BN).
        bn_epsilon, bn_momentum: override; of every BatchNorm.
        dropout: dropout between the two convs of basic blocks (WRN; 0.3 in the paper's "+dropout" rows).
        stochastic_depth: final survival probability ``p_L`` (the paper uses 0.5), ``None`` = off. Block ``l`` of
            ``L`` keeps its residual branch with ``p_l = 1 − (l/L)(1 − p_L)`` in training and scales it by
            ``1/p_l`` when kept, so inference uses every block unscaled (the paper's test-time scaling by ``p_l``,
            reparametrised). See :class:`kerasarch.layers.residual.StochasticDepth`.
        stochastic_depth_mode: ``"batch"``: the whole mini-batch drops a block together, as in the paper;
            ``"sample"``: each example independently (timm's drop-path).
        zero_init_residual: start each branch's last BN scale (post-activation) or last conv (pre-activation) at
            zero (Goyal et al. 2017, arXiv:1706.02677; torchvision's option of the same name). With BN's initial
            moving statistics (0, 1) an untrained network in inference mode adds a branch of about the input's
            variance in every block, so past ~250 blocks float32 overflows; the 600- and 333-block CIFAR rows set
            it. Training starts from identity blocks instead of the papers' He-initialised ones.
        include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name: as in
            keras.applications.

    Returns:
        A Functional ``keras.Model``.
    """
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"`block` must be 'basic' or 'bottleneck'. Received: block={block!r}")
    if stem not in _STEMS:
        raise ValueError(f"`stem` must be one of {sorted(_STEMS)}. Received: stem={stem!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"`convention` must be one of {sorted(CONVENTIONS)}. Received: convention={convention!r}")
    if downsample_at not in ("first", "last"):
        raise ValueError(f"`downsample_at` must be 'first' or 'last'. Received: downsample_at={downsample_at!r}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"`shortcut` must be one of {SHORTCUTS}. Received: shortcut={shortcut!r}")
    layers_per_stage, widths, strides = tuple(layers_per_stage), tuple(widths), tuple(strides)
    if (
        not layers_per_stage
        or len(widths) != len(layers_per_stage)
        or len(strides) != len(layers_per_stage)
        or any(not isinstance(n, int) or n < 1 for n in layers_per_stage)
    ):
        raise ValueError(
            "`layers_per_stage`, `widths` and `strides` need one entry per stage, at least one block "
            f"each. Received: layers_per_stage={layers_per_stage!r}, widths={widths!r}, "
            f"strides={strides!r}"
        )
    if groups > 1 and block != "bottleneck":
        raise ValueError(
            f"Grouped convolutions (ResNeXt) need block='bottleneck'. Received: groups={groups!r}, block={block!r}"
        )
    if dropout and block != "basic":
        raise ValueError(
            f"`dropout` between the convs is a basic-block (WRN) option. Received: dropout={dropout!r}, block={block!r}"
        )
    if stochastic_depth is not None and not 0.0 < stochastic_depth <= 1.0:
        raise ValueError(
            f"`stochastic_depth` is the final survival probability p_L in (0, 1], or None. "
            f"Received: stochastic_depth={stochastic_depth!r}"
        )
    if stochastic_depth_mode not in ("batch", "sample"):
        raise ValueError(
            f"`stochastic_depth_mode` must be 'batch' or 'sample'. "
            f"Received: stochastic_depth_mode={stochastic_depth_mode!r}"
        )
    defaults = CONVENTIONS[convention]
    stride_in_1x1 = defaults["stride_in_1x1"] if stride_in_1x1 is None else stride_in_1x1
    use_bias = defaults["use_bias"] if use_bias is None else use_bias
    bn = dict(
        bn_epsilon=defaults["bn_epsilon"] if bn_epsilon is None else bn_epsilon,
        bn_momentum=defaults["bn_momentum"] if bn_momentum is None else bn_momentum,
    )

    check_top_args(include_top, pooling, classes, classifier_activation)
    default_shape = (224, 224, 3) if stem == "imagenet" else (32, 32, 3)
    inputs, x = make_inputs(input_shape, input_tensor, default=default_shape, min_size=_STEMS[stem], name=name)

    if stem == "imagenet":
        x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = apply_conv(
            x,
            stem_width,
            7,
            strides=2,
            padding="valid",
            use_bias=use_bias,
            kernel_initializer=HE_FAN_OUT,
            name="conv1_conv",
        )
    else:
        x = apply_conv(
            x, stem_width, 3, padding="same", use_bias=use_bias, kernel_initializer=HE_FAN_OUT, name="conv1_conv"
        )
    if not preact:
        x = apply_bn_act(x, name="conv1", **bn)
    if stem == "imagenet":
        # Zero padding before the pool equals PyTorch's -inf padding here: the input is post-ReLU, or (pre-act)
        # kept for keras.applications' ResNetV2 graph.
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    total = sum(layers_per_stage)
    survival = survival_probabilities(total, stochastic_depth) if stochastic_depth is not None else [None] * total
    common = dict(
        shortcut=shortcut,
        use_bias=use_bias,
        kernel_initializer=HE_FAN_OUT,
        stochastic_depth_mode=stochastic_depth_mode,
        zero_init_residual=zero_init_residual,
        **bn,
    )
    if block == "bottleneck":
        common.update(expansion=expansion, groups=groups, base_width=base_width)
        if not preact:
            common.update(stride_in_1x1=stride_in_1x1)
    else:
        common.update(dropout=dropout)
    apply_block = {
        ("basic", False): apply_basic_block,
        ("basic", True): apply_preact_basic_block,
        ("bottleneck", False): apply_bottleneck_block,
        ("bottleneck", True): apply_preact_bottleneck_block,
    }[(block, bool(preact))]
    index = 0
    for stage, (blocks, width, stride) in enumerate(zip(layers_per_stage, widths, strides), start=2):
        for b in range(1, blocks + 1):
            strided = b == (1 if downsample_at == "first" else blocks)
            x = apply_block(
                x,
                width,
                strides=stride if strided else 1,
                survival_prob=survival[index],
                name=f"conv{stage}_block{b}",
                **common,
            )
            index += 1
    if preact:
        x = apply_bn_act(x, name="post", **bn)
    x = apply_classifier(x, include_top, pooling, classes, classifier_activation)
    return finish_model(inputs, x, name, weights, input_tensor)


# ---------------------------------------------------------------------------------------------------------------
# Variants. Each row: registry name, config, and the reference figures of docs/references.md.

_IMAGENET = (224, 224, 3)
_CIFAR = (32, 32, 3)
_IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_HE2015 = "He et al. 2015, arXiv:1512.03385"
_HE2016 = "He et al. 2016, arXiv:1603.05027"
_WRN = "Zagoruyko & Komodakis 2016, arXiv:1605.07146"
_RESNEXT = "Xie et al. 2016, arXiv:1611.05431"
_SD = "Huang et al. 2016, arXiv:1603.09382"
_TV = "torchvision weight metadata (num_params)"
_KA = "keras.applications (count_params, weights=None)"


def _cifar_resnet(depth):
    n = (depth - 2) // 6
    return {
        "layers_per_stage": (n, n, n),
        "block": "basic",
        "stem": "cifar",
        "stem_width": 16,
        "widths": (16, 32, 64),
        "strides": (1, 2, 2),
        "shortcut": "A",
    }


def _preact_cifar(depth):
    n = (depth - 2) // 9
    return {
        "layers_per_stage": (n, n, n),
        "block": "bottleneck",
        "preact": True,
        "stem": "cifar",
        "stem_width": 16,
        "widths": (16, 32, 64),
        "strides": (1, 2, 2),
    }


def _wrn(depth, k):
    n = (depth - 4) // 6
    return {
        "layers_per_stage": (n, n, n),
        "block": "basic",
        "preact": True,
        "stem": "cifar",
        "stem_width": 16,
        "widths": (16 * k, 32 * k, 64 * k),
        "strides": (1, 2, 2),
    }


def _resnext29(cardinality, d):
    return {
        "layers_per_stage": (3, 3, 3),
        "block": "bottleneck",
        "stem": "cifar",
        "stem_width": 64,
        "widths": (64, 128, 256),
        "strides": (1, 2, 2),
        "groups": cardinality,
        "base_width": d,
    }


def _imagenet(depth, **extra):
    return {"layers_per_stage": _IMAGENET_BLOCKS[depth], "block": "basic" if depth < 50 else "bottleneck", **extra}


_ZERO_INIT = (
    " zero_init_residual=True: the last BN scale / conv of each branch starts at zero (not the paper's He "
    "init), else the untrained network overflows float32 in inference mode."
)
_KERAS_V2 = {"preact": True, "convention": "keras", "downsample_at": "last", "strides": (2, 2, 2, 1)}

# name, config, paper, params (exact) or params_approx, total_params, gmacs, top1, slow, notes
_ROWS = [
    *[
        (
            f"resnet{d}",
            _imagenet(d),
            _HE2015 + " (torchvision v1.5)",
            {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}[d],
            None,
            {18: 1.814, 34: 3.664, 50: 4.089, 101: 7.801, 152: 11.514}[d],
            {18: 69.758, 34: 73.314, 50: 76.13, 101: 77.374, 152: 78.312}[d],
            d >= 101,
            "torchvision convention: stride on the 3×3, no conv bias, BN eps 1e-5.",
        )
        for d in _IMAGENET_BLOCKS
    ],
    *[
        (
            f"resnet{d}_keras",
            _imagenet(d, convention="keras"),
            _HE2015 + " (keras.applications)",
            {50: 25_583_592, 101: 44_601_832, 152: 60_268_520}[d],
            {50: 25_636_712, 101: 44_707_176, 152: 60_419_944}[d],
            {50: 3.858, 101: 7.570, 152: 11.282}[d],
            {50: 74.9, 101: 76.4, 152: 76.6}[d],
            d >= 101,
            "keras.applications convention (paper/Caffe): stride on the first 1×1, conv biases, BN eps 1.001e-5; "
            "keras.applications layer names and weight shapes.",
        )
        for d in (50, 101, 152)
    ],
    *[
        (
            f"resnet{d}",
            {**_cifar_resnet(d), **({"zero_init_residual": True} if d > 1000 else {})},
            _HE2015 + " §4.2 (CIFAR-10)",
            {
                20: (0.27, "M", 2),
                32: (0.46, "M", 2),
                44: (0.66, "M", 2),
                56: (0.85, "M", 2),
                110: (1.7, "M", 1),
                1202: (19.4, "M", 1),
            }[d],
            None,
            None,
            {20: 91.25, 32: 92.49, 44: 92.83, 56: 93.03, 110: 93.57, 1202: 92.07}[d],
            d >= 1202,
            "Option-A shortcuts (subsample + zero channels), no conv bias." + (_ZERO_INIT if d > 1000 else ""),
        )
        for d in (20, 32, 44, 56, 110, 1202)
    ],
    (
        "resnet110_sd",
        {**_cifar_resnet(110), "stochastic_depth": 0.5},
        _SD + " (CIFAR-10 ResNet-110)",
        (1.7, "M", 1),
        None,
        None,
        94.75,
        False,
        "Stochastic depth p_L = 0.5, linear decay; the whole mini-batch drops a block together, as in the paper.",
    ),
    *[
        (
            f"resnet{d}v2",
            _imagenet(d, **_KERAS_V2),
            _HE2016 + " (keras.applications ResNetV2)",
            {50: 25_568_360, 101: 44_577_896, 152: 60_236_904}[d],
            {50: 25_613_800, 101: 44_675_560, 152: 60_380_648}[d],
            {50: 3.482, 101: None, 152: None}[d],
            {50: 76.0, 101: 77.2, 152: 78.0}[d],
            d >= 101,
            "keras.applications' ResNetV2: pre-activation bottlenecks, stride on the last block of a stage, biases "
            "only in convs not followed by BN.",
        )
        for d in (50, 101, 152)
    ],
    (
        "preact_resnet164",
        _preact_cifar(164),
        _HE2016 + " (CIFAR-10)",
        (1.7, "M", 1),
        None,
        None,
        94.54,
        False,
        "Pre-activation bottlenecks of widths 16·4, 32·4, 64·4; projection shortcuts where the channels change.",
    ),
    (
        "preact_resnet1001",
        {**_preact_cifar(1001), "zero_init_residual": True},
        _HE2016 + " (CIFAR-10)",
        (10.2, "M", 1),
        None,
        None,
        95.08,
        True,
        "Pre-activation bottlenecks of widths 16·4, 32·4, 64·4; projection shortcuts where the channels change."
        + _ZERO_INIT,
    ),
    (
        "wrn16_8",
        _wrn(16, 8),
        _WRN + " (CIFAR)",
        (11.0, "M", 1),
        None,
        None,
        None,
        False,
        "Pre-activation basic blocks B(3,3); `dropout` (0 by default, 0.3 in the paper's +dropout rows).",
    ),
    (
        "wrn28_10",
        _wrn(28, 10),
        _WRN + " (CIFAR)",
        (36.5, "M", 1),
        None,
        None,
        96.00,
        True,
        "Pre-activation basic blocks B(3,3); `dropout` (0 by default, 0.3 in the paper's +dropout rows).",
    ),
    (
        "wide_resnet50_2",
        _imagenet(50, base_width=128),
        _WRN + " (torchvision WRN-50-2)",
        68_883_240,
        None,
        11.398,
        78.468,
        True,
        "torchvision convention; bottleneck 3×3 width doubled.",
    ),
    (
        "wide_resnet101_2",
        _imagenet(101, base_width=128),
        _WRN + " (torchvision WRN-101-2)",
        126_886_696,
        None,
        22.753,
        78.848,
        True,
        "torchvision convention; bottleneck 3×3 width doubled.",
    ),
    (
        "resnext50_32x4d",
        _imagenet(50, groups=32, base_width=4),
        _RESNEXT + " (torchvision)",
        25_028_904,
        None,
        4.23,
        77.618,
        False,
        "torchvision convention; grouped 3×3 (cardinality 32, width 4 per group).",
    ),
    (
        "resnext101_32x8d",
        _imagenet(101, groups=32, base_width=8),
        _RESNEXT + " (torchvision)",
        88_791_336,
        None,
        16.41,
        79.312,
        True,
        "torchvision convention; grouped 3×3 (cardinality 32, width 8 per group).",
    ),
    (
        "resnext29_8x64d",
        _resnext29(8, 64),
        _RESNEXT + " §5.2 (CIFAR)",
        (34.4, "M", 1),
        None,
        None,
        96.35,
        True,
        "3 stages of 3 bottlenecks, 3×3 stem of 64, output widths 256/512/1024.",
    ),
    (
        "resnext29_16x64d",
        _resnext29(16, 64),
        _RESNEXT + " §5.2 (CIFAR)",
        (68.1, "M", 1),
        None,
        None,
        96.42,
        True,
        "3 stages of 3 bottlenecks, 3×3 stem of 64, output widths 256/512/1024.",
    ),
]


def _taps(config):
    stages = config["layers_per_stage"]
    taps = {f"conv{s}_x": f"conv{s}_block{n}_out" for s, n in enumerate(stages, start=2)}
    if config.get("preact"):
        taps["features"] = "post_relu"
    taps["avg_pool"] = "avg_pool"  # the pooled features the classifier reads (with the top)
    return taps


# Two printed figures round the conv and FC weights but not the trainable count (the BN scales and offsets push it
# past the rounding: 10.33M, 68.16M); for these the spec holds the exact count derived in tests/test_resnet.py
# from the paper's layer table.
_DERIVED = {"preact_resnet1001": 10_327_706, "resnext29_16x64d": 68_155_210}

# Published weights. keras.applications: MD5s from keras/src/applications/resnet.py and resnet_v2.py; torchvision
# IMAGENET1K_V1: file names and top-1 from torchvision/models/resnet.py.
_KERAS = {
    "resnet50_keras": ("resnet50", "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626", 74.9),
    "resnet101_keras": ("resnet101", "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21", 76.4),
    "resnet152_keras": ("resnet152", "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c", 76.6),
    "resnet50v2": ("resnet50v2", "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917", 76.0),
    "resnet101v2": ("resnet101v2", "6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5", 77.2),
    "resnet152v2": ("resnet152v2", "a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33", 78.0),
}
_TORCHVISION = {
    "resnet18": ("resnet18-f37072fd.pth", 69.758),
    "resnet34": ("resnet34-b627a593.pth", 73.314),
    "resnet50": ("resnet50-0676ba61.pth", 76.13),
    "resnet101": ("resnet101-63fe2227.pth", 77.374),
    "resnet152": ("resnet152-394f9c45.pth", 78.312),
    "resnext50_32x4d": ("resnext50_32x4d-7cdf4587.pth", 77.618),
    "resnext101_32x8d": ("resnext101_32x8d-8ba56ff5.pth", 79.312),
    "wide_resnet50_2": ("wide_resnet50_2-95faca4d.pth", 78.468),
    "wide_resnet101_2": ("wide_resnet101_2-32ee1156.pth", 78.848),
}


# torchvision IMAGENET1K_V2 ("new training recipe", pytorch/vision#3995): file names, the evaluation resize (232,
# crop 224) and top-1 from torchvision/models/resnet.py (ResNet50_Weights ... Wide_ResNet101_2_Weights).
_TORCHVISION_V2 = {
    "resnet50": ("resnet50-11ad3fa6.pth", 80.858),
    "resnet101": ("resnet101-cd907fc2.pth", 81.886),
    "resnet152": ("resnet152-f82ba261.pth", 82.284),
    "resnext50_32x4d": ("resnext50_32x4d-1a0047aa.pth", 81.198),
    "resnext101_32x8d": ("resnext101_32x8d-110c445d.pth", 82.834),
    "wide_resnet50_2": ("wide_resnet50_2-9ba9bcbe.pth", 81.602),
    "wide_resnet101_2": ("wide_resnet101_2-d733dc28.pth", 82.51),
}
# timm's "ResNet strikes back" checkpoints (Wightman et al. 2021, arXiv:2110.00476), whose keys are torchvision's:
# names and test configuration (288x288, crop_pct 1.0, bicubic: `_rcfg` in timm/models/resnet.py); top-1 at 288 from
# timm's results table (the "Model Comparison" of the timm model cards). Evaluated at 288, so they come after the
# torchvision sets, which are published at the variants' 224.
_TIMM = {
    "resnet50": ("resnet50.a1_in1k", 81.22),
    "resnet101": ("resnet101.a1h_in1k", 82.8),
    "resnet152": ("resnet152.a1h_in1k", 83.46),
    "resnext50_32x4d": ("resnext50_32x4d.a1h_in1k", 82.03),
}


def _checkpoints(name):
    """The variant's published checkpoints, the one ``weights="imagenet"`` picks first: the best published top-1
    among those evaluated at the variant's input size (224)."""
    if name in _KERAS:
        stem, top_md5, notop_md5, top1 = _KERAS[name]
        mode = "tf" if name.endswith("v2") else "caffe"
        return (
            keras_checkpoint(
                name, "resnet", f"{stem}_weights_tf_dim_ordering_tf_kernels", top_md5, notop_md5, mode, top1
            ),
        )
    if name in _TORCHVISION:
        v1 = torchvision_checkpoint(name, _TORCHVISION[name][0], map_resnet, _TORCHVISION[name][1])
        v2 = (
            (
                torchvision_checkpoint(
                    name,
                    _TORCHVISION_V2[name][0],
                    map_resnet,
                    _TORCHVISION_V2[name][1],
                    id="IMAGENET1K_V2",
                    resize_size=232,
                ),
            )
            if name in _TORCHVISION_V2
            else ()
        )
        timm = (timm_checkpoint(name, _TIMM[name][0], map_resnet, _TIMM[name][1]),) if name in _TIMM else ()
        return (*v2, v1, *timm)
    return ()


def _recipe(name, cifar):
    for prefix, recipe in (
        ("resnet110_sd", "stochastic_depth_cifar"),
        ("wrn", "wrn_cifar"),
        ("resnext29", "resnext_cifar"),
        ("preact_resnet", "preact_cifar"),
    ):
        if name.startswith(prefix):
            return recipe
    return "resnet_cifar" if cifar else "resnet_imagenet"


def _variant(name, config, paper, params, total, gmacs, top1, slow, notes):
    cifar = config.get("stem") == "cifar"
    exact = params if isinstance(params, int) else _DERIVED.get(name)
    if isinstance(params, int):
        source = _TV if "torchvision" in paper else _KA
    elif exact:
        source = (
            f"derived (docs/references.md: conv + FC weights + BN scale/offset); {paper} prints "
            f"{params[0]}{params[1]}, the conv and FC weights alone"
        )
    else:
        source = paper
    # CIFAR networks have no published weights: their card holds what their recipe trains with.
    inputs = dict(preprocessing="torch", fit="auto") if cifar else {}
    return ModelSpec(
        name=name,
        family="resnet",
        builder=resnet,
        config=config,
        paper=paper,
        input_shape=_CIFAR if cifar else _IMAGENET,
        min_input_size=_STEMS["cifar" if cifar else "imagenet"],
        classes=10 if cifar else 1000,
        params=exact,
        params_approx=None if isinstance(params, int) else params,
        params_source=source,
        total_params=total,
        gmacs=gmacs,
        top1=top1,
        taps=_taps(config),
        recipe=_recipe(name, cifar),
        checkpoints=_checkpoints(name),
        slow=slow,
        notes=notes,
        **inputs,
    )


VARIANTS = tuple(_variant(*row) for row in _ROWS)
register_models(VARIANTS)
