"""FractalNet: Larsson et al., "FractalNet: Ultra-Deep Neural Networks without Residuals", arXiv:1605.07648.

The CIFAR networks of §4: B=5 fractal blocks of C=3 columns (20 layers on the deepest path) or C=4 (40 layers),
3×3 convolutions of 64, 128, 256, 512, 512 channels, each followed by BatchNorm and ReLU, a 2×2 max-pool after
every block (32×32 → 1×1), joins that average, and a softmax layer. Regularisation as in the paper's best
CIFAR results: dropout after every convolution at (0, 0.1, 0.2, 0.3, 0.4) per block, and drop-path sampled per
mini-batch, half local (each join input dropped with probability 0.15, at least one kept) and half global (one
column for the whole network). At inference the whole network runs. Unit details follow the authors' Caffe
generator (github.com/gustavla/fractalnet): convolutions with bias, dropout before BatchNorm, BatchNorm without
learned scale and shift.

``extract_column(model, c)`` gives column ``c`` alone as a plain network on the same layers and weights
(Table 1's "deepest column alone" is ``c = C``).
"""

from __future__ import annotations

import re

import keras

from kerasarch.blocks.fractal import apply_fractal_block
from kerasarch.builder import apply_classifier, check_top_args, finish_model, make_inputs
from kerasarch.layers.fractal import GlobalDropPathSampler
from kerasarch.registry import ModelSpec, register_models

__all__ = ["fractalnet", "extract_column"]

FRACTAL_WIDTHS = (64, 128, 256, 512, 512)
FRACTAL_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4)


def fractalnet(
    columns=3,
    *,
    widths=FRACTAL_WIDTHS,
    dropout=FRACTAL_DROPOUT,
    drop_path=0.15,
    global_drop_path=0.5,
    seed=None,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=10,
    classifier_activation="softmax",
    name=None,
):
    """Builds a FractalNet of ``len(widths)`` blocks of ``columns`` columns.

    Args:
        columns: C; the deepest path has ``len(widths) * 2^(C-1)`` convolutions.
        widths: channels of each block's convolutions; one block per entry.
        dropout: dropout rate per block (a sequence as long as ``widths``), one rate for all blocks, or
            ``None``.
        drop_path: local drop-path probability of each join input (0 disables local drop-path).
        global_drop_path: the fraction of training batches that keep a single column (0 disables it).
        seed: seed of the drop-path random generators (``None``: from Keras' global seed).
        include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name: as in
            keras.applications.

    Returns:
        A Functional ``keras.Model``.
    """
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"`columns` must be an integer >= 1. Received: columns={columns!r}")
    widths = tuple(widths)
    if not widths:
        raise ValueError(f"`widths` must name at least one block. Received: widths={widths!r}")
    rates = _per_block(dropout, len(widths))
    name = name or f"fractalnet{len(widths) * 2 ** (columns - 1)}"
    check_top_args(include_top, pooling, classes, classifier_activation)
    inputs, x = make_inputs(input_shape, input_tensor, default=(32, 32, 3), min_size=2 ** len(widths), name=name)
    selector = None
    if global_drop_path:
        selector = GlobalDropPathSampler(columns, global_rate=global_drop_path, seed=seed, name="drop_path_sampler")(x)
    for b, (width, rate) in enumerate(zip(widths, rates), start=1):
        block_seed = None if seed is None else seed + b * 2**columns
        x = apply_fractal_block(
            x, width, columns, name=f"block{b}", dropout=rate, drop_rate=drop_path, selector=selector, seed=block_seed
        )
    x = apply_classifier(x, include_top, pooling, classes, classifier_activation)
    return finish_model(inputs, x, name, weights, input_tensor)


def _per_block(dropout, blocks):
    if dropout is None:
        return (0.0,) * blocks
    if isinstance(dropout, (int, float)):
        return (float(dropout),) * blocks
    rates = tuple(float(r) for r in dropout)
    if len(rates) != blocks or any(not 0.0 <= r < 1.0 for r in rates):
        raise ValueError(f"`dropout` must be None, one rate or {blocks} rates in [0, 1). Received: dropout={dropout!r}")
    return rates


_CONV = re.compile(r"^block(\d+)_col(\d+)_conv(\d+)$")


def extract_column(model, column, *, name=None):
    """Column ``column`` of a FractalNet alone: a plain network that calls the same layers, so it shares the
    weights (and training one trains the other).

    Args:
        model: a model built by :func:`fractalnet`.
        column: 1 (the shallowest: one convolution per block) to C (the deepest: ``2^(C-1)`` per block).
        name: the new model's name (default ``{model.name}_col{column}``).

    Returns:
        A Functional ``keras.Model`` with the same input and output shapes as ``model``.
    """
    by_name = {layer.name: layer for layer in model.layers}
    convs = {}
    for layer_name in by_name:
        match = _CONV.match(layer_name)
        if match:
            b, c, j = (int(g) for g in match.groups())
            convs.setdefault((b, c), []).append(j)
    if not convs:
        raise ValueError(f"'{model.name}' has no FractalNet columns (layers named block<b>_col<c>_conv<j>).")
    num_columns = max(c for _, c in convs)
    if not isinstance(column, int) or not 1 <= column <= num_columns:
        raise ValueError(
            f"`column` must be an integer from 1 to {num_columns} for '{model.name}'. Received: column={column!r}"
        )
    num_blocks = max(b for b, _ in convs)
    inputs = keras.Input(shape=model.input_shape[1:], name="input_layer")
    x = inputs
    for b in range(1, num_blocks + 1):
        for j in sorted(convs[(b, column)]):
            unit = f"block{b}_col{column}_conv{j}"
            for layer_name in (unit, f"{unit}_dropout", f"{unit}_bn", f"{unit}_relu"):
                if layer_name in by_name:
                    x = by_name[layer_name](x)
        x = by_name[f"block{b}_col{column}_pool"](x)
    # The head (avg_pool, predictions or the `pooling` layer) is the chain after the last block's join.
    last = [layer.name for layer in model.layers].index(f"block{num_blocks}_out")
    for layer in model.layers[last + 1 :]:
        x = layer(x)
    return keras.Model(inputs, x, name=name or f"{model.name}_col{column}")


_PAPER = "Larsson et al. 2016, arXiv:1605.07648"


def _variant(columns, params, paper_figure, error):
    depth = 5 * 2 ** (columns - 1)
    return ModelSpec(
        name=f"fractalnet{depth}",
        family="fractalnet",
        builder=fractalnet,
        config={"columns": columns},
        paper=_PAPER + f" (CIFAR, B=5, C={columns})",
        input_shape=(32, 32, 3),
        min_input_size=32,
        classes=10,
        params=params,
        params_source="derived from §4's configuration (docs/references.md); the paper's Table 1 prints "
        f"{paper_figure}, which this configuration does not give",
        top1=None if error is None else round(100 - error, 2),
        taps={f"block{b}": f"block{b}_out" for b in range(1, 6)},
        preprocessing="torch",
        fit="auto",
        recipe="fractalnet_cifar",
        slow=True,
        notes=f"Table 1 prints {paper_figure} parameters for the {depth}-layer network; the configuration of "
        "§4 has 33.7M (C=3) and 76.1M (C=4), so the printed figures fit neither network nor each other "
        "swapped. top1 is CIFAR-10+ accuracy with drop-path and dropout.",
    )


# Exact trainable counts derived in tests/test_fractalnet.py.
VARIANTS = (
    _variant(3, 33_714_314, "38.6M", 4.60),
    _variant(4, 76_084_554, "22.9M", None),
)
register_models(VARIANTS)
