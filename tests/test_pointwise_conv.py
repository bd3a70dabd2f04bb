"""PointwiseConv2D: each formulation equals a numpy 1×1 convolution and keras.layers.Conv2D, forward and gradients,
in float32 (strides, both paddings, odd sizes, unknown spatial size); bfloat16 stays close; same weights layout;
serialisable; the families' 1×1 convolutions use it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch.layers.pointwise import POINTWISE_FORMULATIONS, PointwiseConv2D, auto_pointwise_formulation

# (C_in, C_out, strides, padding, H, W)
CASES = [
    (6, 8, 1, "same", 11, 10),
    (8, 12, 2, "same", 11, 10),  # odd height: ceil(11 / 2) = 6 rows, the last input row kept
    (8, 4, 2, "valid", 7, 7),
    (5, 7, (2, 3), "valid", 9, 10),
    (4, 6, 1, "valid", 1, 1),
]


def np_pointwise(x, kernel, bias, strides, upstream=None):
    """A 1×1 convolution in float64 numpy: every stride-th pixel times the (C_in, C_out) matrix; with ``upstream``
    also dL/dx (scattered back to the sampled pixels, zero elsewhere) and dL/dkernel."""
    sh, sw = (strides, strides) if isinstance(strides, int) else strides
    k = kernel.astype("float64")[0, 0]
    xs = x.astype("float64")[:, ::sh, ::sw, :]
    y = np.einsum("nhwi,io->nhwo", xs, k) + bias
    if upstream is None:
        return y
    u = upstream.astype("float64")
    dx = np.zeros(x.shape)
    dx[:, ::sh, ::sw, :] = np.einsum("nhwo,io->nhwi", u, k)
    dk = np.einsum("nhwi,nhwo->io", xs, u)[None, None]
    return y, dx, dk


def _case(case, seed=0):
    cin, cout, strides, _, h, w = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w, cin)).astype("float32")
    kernel = rng.standard_normal((1, 1, cin, cout)).astype("float32")
    bias = rng.standard_normal((cout,)).astype("float32")
    upstream = rng.standard_normal(np_pointwise(x, kernel, bias, strides).shape).astype("float32")
    return x, kernel, bias, upstream


def _layer(cls, case, kernel, bias, **kw):
    cin, cout, strides, padding, _, _ = case
    layer = cls(cout, 1, strides=strides, padding=padding, **kw)
    layer.build((None, None, None, cin))
    layer.set_weights([kernel, bias])
    return layer


def _forward_and_grads(layer, x, upstream, spatial_known=True):
    xv = tf.constant(x)
    shape = x.shape if spatial_known else (None, None, None, x.shape[-1])

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32)])
    def run(xv):
        with tf.GradientTape() as tape:
            tape.watch(xv)
            y = layer(xv, training=True)
            loss = tf.reduce_sum(y * upstream)
        dx, dk = tape.gradient(loss, [xv, layer.kernel])
        return y, dx, dk

    return [t.numpy() for t in run(xv)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "{}to{}_s{}_{}_{}x{}".format(*c))
def test_formulations_match_numpy_and_keras_conv2d(case):
    x, kernel, bias, upstream = _case(case)
    y_np, dx_np, dk_np = np_pointwise(x, kernel, bias, case[2], upstream)
    y_ref, dx_ref, dk_ref = _forward_and_grads(_layer(keras.layers.Conv2D, case, kernel, bias), x, upstream)
    np.testing.assert_allclose(y_ref, y_np, rtol=1e-4, atol=1e-4)  # the reference agrees with numpy
    for how in POINTWISE_FORMULATIONS:
        for spatial_known in (True, False):
            layer = _layer(PointwiseConv2D, case, kernel, bias, formulation=how)
            y, dx, dk = _forward_and_grads(layer, x, upstream, spatial_known)
            for got, np_ref, keras_ref, what in (
                (y, y_np, y_ref, "y"),
                (dx, dx_np, dx_ref, "dL/dx"),
                (dk, dk_np, dk_ref, "dL/dkernel"),
            ):
                msg = f"{how} {what} (spatial size known: {spatial_known})"
                np.testing.assert_allclose(got, np_ref, rtol=1e-4, atol=1e-4, err_msg=f"{msg} vs numpy")
                np.testing.assert_allclose(got, keras_ref, rtol=1e-5, atol=1e-4, err_msg=f"{msg} vs Conv2D")


def _op_types(layer, x, training, jit=False):
    """The op types of the graph a call of ``layer`` on ``x`` traces (and the formulation it resolved)."""
    seen = []

    @tf.function(jit_compile=jit)
    def traced(v):
        seen.append(layer.resolved_formulation(training))
        return layer(v, training=training)

    concrete = traced.get_concrete_function(tf.TensorSpec(x.shape, tf.float32))
    return seen[0], {op.type for op in concrete.graph.get_operations()}, traced(tf.constant(x)).numpy()


def test_auto_is_matmul_for_training_on_tensorflow_cpus_and_the_convolution_otherwise():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("CPU rule")
    assert auto_pointwise_formulation() == "matmul"  # oneDNN is on in TensorFlow's x86-64 builds
    assert auto_pointwise_formulation(training=False) == "keras"
    assert auto_pointwise_formulation("channels_first") == "keras"
    case = CASES[1]
    x, kernel, bias, _ = _case(case, seed=1)
    y_np = np_pointwise(x, kernel, bias, 2)
    layer = _layer(PointwiseConv2D, case, kernel, bias)
    for training, jit, how, op, not_op in (
        (True, False, "matmul", "MatMul", "Conv2D"),  # a training step: the product
        (False, False, "keras", "Conv2D", "MatMul"),  # inference (and serving exports): the fusable convolution
        (None, False, "keras", "Conv2D", "MatMul"),
        (True, True, "keras", "Conv2D", "MatMul"),  # inside XLA: the native op
    ):
        resolved, ops_seen, y = _op_types(layer, x, training, jit)
        assert resolved == how and op in ops_seen and not_op not in ops_seen, (training, jit, sorted(ops_seen))
        np.testing.assert_allclose(y, y_np, rtol=1e-4, atol=1e-4)


def test_mixed_bfloat16_runs_in_bfloat16_and_stays_close():
    case = CASES[1]
    x, kernel, bias, _ = _case(case, seed=2)
    y_np = np_pointwise(x, kernel, bias, case[2])
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        for how in ("matmul", "keras"):
            y = _layer(PointwiseConv2D, case, kernel, bias, formulation=how)(x, training=True)
            assert y.dtype == tf.bfloat16
            # bfloat16 keeps 8 significant bits: ~0.4% relative error per operand, summed over 8 products
            np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), y_np, rtol=0.05, atol=0.1)
    finally:
        keras.config.set_dtype_policy("float32")


def test_same_weights_layout_and_serialisation(tmp_path):
    case = CASES[0]
    x, kernel, bias, _ = _case(case, seed=3)
    layer = _layer(PointwiseConv2D, case, kernel, bias, name="conv2_block1_1_conv")
    plain = _layer(keras.layers.Conv2D, case, kernel, bias)
    assert isinstance(layer, keras.layers.Conv2D)
    assert [tuple(w.shape) for w in layer.weights] == [tuple(w.shape) for w in plain.weights] == [(1, 1, 6, 8), (8,)]
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"]
    inputs = keras.Input((None, None, case[0]))
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "p.keras")
    model.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    assert type(back.get_layer("conv2_block1_1_conv")) is PointwiseConv2D
    assert back.get_layer("conv2_block1_1_conv").formulation == "auto"
    np.testing.assert_allclose(back(x).numpy(), np_pointwise(x, kernel, bias, 1), rtol=1e-4, atol=1e-4)


def test_bad_arguments_are_one_clear_line():
    with pytest.raises(ValueError, match=r"one of \('auto', .*Received: formulation='fast'"):
        PointwiseConv2D(8, formulation="fast")
    with pytest.raises(ValueError, match=r"1×1 convolution with groups=1\. Received: kernel_size=\(3, 3\)"):
        PointwiseConv2D(8, 3)


def test_resnet50_uses_it_for_every_1x1_convolution():
    model = kerasarch.build_model("resnet50", weights=None)
    pointwise = [layer for layer in model.layers if isinstance(layer, PointwiseConv2D)]
    # He et al. 2016, Table 1: 16 bottleneck blocks × (1×1 reduce + 1×1 expand) + 4 projection shortcuts
    assert len(pointwise) == 36
    assert not [
        layer.name
        for layer in model.layers
        if type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1) and layer.groups == 1
    ]


def test_activation_and_no_bias_follow_conv2d():
    case = CASES[1]
    x, kernel, bias, _ = _case(case, seed=5)
    with_relu = _layer(PointwiseConv2D, case, kernel, bias, formulation="matmul", activation="relu")
    np.testing.assert_allclose(
        with_relu(x, training=True).numpy(), np.maximum(np_pointwise(x, kernel, bias, 2), 0), atol=1e-4
    )
    cin, cout, strides, padding, _, _ = case
    no_bias = PointwiseConv2D(cout, strides=strides, padding=padding, use_bias=False, formulation="matmul")
    no_bias.build((None, None, None, cin))
    no_bias.set_weights([kernel])
    np.testing.assert_allclose(no_bias(x, training=True).numpy(), np_pointwise(x, kernel, 0.0, 2), atol=1e-4)
