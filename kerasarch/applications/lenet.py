"""LeNet-5: LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document Recognition",
Proc. IEEE 86(11), 1998, §II-B; and the common modern variant (full C3, ReLU, max-pool, dense output).

32×32×1 input; C1 6@5×5 → 28×28, S2 subsampling → 14×14, C3 16@5×5 → 10×10, S4 → 5×5, C5 120@5×5 → 1×1,
F6 84, output 10. Layers are named after the paper (``c1``, ``s2``, ``c3``, ``s4``, ``c5``, ``f6``), each followed
by ``<layer>_act``; the output layer is ``predictions``. Without the top the model ends at C5 (a convolution in
the paper), like keras.applications without its fully connected layers.
"""

from __future__ import annotations

from keras import layers

from kerasarch.builder import apply_pooling, check_top_args, finish_model, make_inputs, output_dtype, predictions_dense
from kerasarch.layers.lenet import (
    LENET5_C3_TABLE,
    ConnectionTableConv2D,
    EuclideanRBF,
    ScaledTanh,
    TrainableSubsampling2D,
)
from kerasarch.registry import ModelSpec, register_models

_SUBSAMPLINGS = ("trainable", "max")
_OUTPUTS = ("dense", "rbf")
_RBF_CENTRES = ("fixed", "trainable")


def _activation(x, activation, name):
    if activation == "scaled_tanh":
        return ScaledTanh(name=name)(x)
    return layers.Activation(activation, name=name)(x)


def _subsample(x, subsampling, activation, name):
    if subsampling == "max":
        return layers.MaxPooling2D(2, strides=2, name=name)(x)
    return _activation(TrainableSubsampling2D(2, name=name)(x), activation, f"{name}_act")


def lenet5(
    *,
    connection_table=True,
    activation="scaled_tanh",
    subsampling="trainable",
    output="dense",
    rbf_centres="fixed",
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=10,
    classifier_activation="softmax",
    name="lenet5",
):
    """Builds LeNet-5 (LeCun et al. 1998) or its modern variant.

    The paper's network (the defaults): C3 follows the connection table of Table I, S2/S4 are trainable
    subsamplings (sum of 2×2, times a coefficient, plus a bias, per map) followed by the squashing function, which
    is ``1.7159·tanh(2a/3)`` everywhere. The modern variant (``lenet5_relu``): ``connection_table=False``,
    ``activation="relu"``, ``subsampling="max"``.

    Args:
        connection_table: C3 reads S2 through the paper's Table I (False: every C3 map reads all 6 maps).
        activation: ``"scaled_tanh"`` (the paper) or a Keras activation name.
        subsampling: ``"trainable"`` (the paper) or ``"max"`` (2×2 max-pool, no parameters, no activation).
        output: ``"dense"``: a Dense layer (the usual substitute); ``"rbf"``: the paper's Euclidean RBF units,
            which output the negated squared distances to the class centres as logits (see
            :class:`~kerasarch.layers.lenet.EuclideanRBF`); ``classifier_activation`` applies to either.
        rbf_centres: with ``output="rbf"``: ``"fixed"`` ±1 codes (the paper; no trainable parameters) or
            ``"trainable"`` centres.
        include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation, name: as in
            keras.applications. ``include_top=False`` ends at C5.

    Returns:
        A Functional ``keras.Model``.
    """
    if subsampling not in _SUBSAMPLINGS:
        raise ValueError(f"`subsampling` must be one of {_SUBSAMPLINGS}. Received: subsampling={subsampling!r}")
    if output not in _OUTPUTS:
        raise ValueError(f"`output` must be one of {_OUTPUTS}. Received: output={output!r}")
    if rbf_centres not in _RBF_CENTRES:
        raise ValueError(f"`rbf_centres` must be one of {_RBF_CENTRES}. Received: rbf_centres={rbf_centres!r}")
    check_top_args(include_top, pooling, classes, classifier_activation)
    inputs, x = make_inputs(input_shape, input_tensor, default=(32, 32, 1), min_size=32, name=name)

    x = _activation(layers.Conv2D(6, 5, name="c1")(x), activation, "c1_act")
    x = _subsample(x, subsampling, activation, "s2")
    if connection_table:
        x = ConnectionTableConv2D(LENET5_C3_TABLE, 5, name="c3")(x)
    else:
        x = layers.Conv2D(16, 5, name="c3")(x)
    x = _activation(x, activation, "c3_act")
    x = _subsample(x, subsampling, activation, "s4")
    x = _activation(layers.Conv2D(120, 5, name="c5")(x), activation, "c5_act")

    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = _activation(layers.Dense(84, name="f6")(x), activation, "f6_act")
        if output == "rbf":
            x = EuclideanRBF(
                classes,
                trainable_centres=rbf_centres == "trainable",
                activation=classifier_activation,
                name="predictions",
                dtype=output_dtype(),
            )(x)
        else:
            x = predictions_dense(classes, classifier_activation)(x)
    else:
        x = apply_pooling(x, pooling)
    return finish_model(inputs, x, name, weights, input_tensor)


def _taps(subsampling):
    s = "" if subsampling == "max" else "_act"
    return {"C1": "c1_act", "S2": f"s2{s}", "C3": "c3_act", "S4": f"s4{s}", "C5": "c5_act", "F6": "f6_act"}


_PAPER = "LeCun, Bottou, Bengio & Haffner 1998, Proc. IEEE 86(11)"
# No published weights: the card says what the default recipe ('lenet') trains with: LeCun's scaling (§II-A) and the
# 28×28 digits centred in the 32×32 field ('auto' pads a 28×28 image and resizes an 8×8 one).
_INPUT = dict(input_shape=(32, 32, 1), min_input_size=32, classes=10, preprocessing="lecun", fit="auto", recipe="lenet")

VARIANTS = (
    ModelSpec(
        name="lenet5",
        family="lenet",
        builder=lenet5,
        config={},
        paper=_PAPER,
        params=60_850,
        params_source="LeCun et al. 1998 §II-B: 60,000 without the output layer, + 850 for the 10-way dense output",
        taps=_taps("trainable"),
        notes="paper output layer (Euclidean RBF) via output='rbf'",
        **_INPUT,
    ),
    ModelSpec(
        name="lenet5_relu",
        family="lenet",
        builder=lenet5,
        config={"connection_table": False, "activation": "relu", "subsampling": "max"},
        paper=_PAPER + " (modern variant)",
        params=61_706,
        params_source="computed (docs/references.md): 156 + 2,416 + 48,120 + 10,164 + 850",
        taps=_taps("max"),
        notes="full C3, ReLU, 2×2 max-pool, dense output",
        **_INPUT,
    ),
)
register_models(VARIANTS)
