"""kerasarch's BatchNormalization (TensorFlow's FusedBatchNormV3 under Keras' layer) against a numpy reference of
Ioffe & Szegedy 2015's Algorithm 1 and its gradient, and against keras.layers.BatchNormalization itself."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasarch.layers.normalization import BatchNormalization

EPS, MOMENTUM = 1e-3, 0.9
SHAPE = (3, 5, 4, 6)  # n = 3 * 5 * 4 = 60 values per channel


def numpy_bn(x, gamma, beta, moving_mean, moving_var, dy, training):
    """``(y, dx, dgamma, dbeta, new_moving_mean, new_moving_var)`` in float64: batch statistics with the biased
    variance in training, Keras' ``moving * momentum + batch * (1 - momentum)`` update."""
    x, dy = x.astype("float64"), dy.astype("float64")
    axes = (0, 1, 2)
    if training:
        mean, var = x.mean(axes), x.var(axes)  # biased, 1/n
        new_mean = moving_mean * MOMENTUM + mean * (1 - MOMENTUM)
        new_var = moving_var * MOMENTUM + var * (1 - MOMENTUM)
    else:
        mean, var, new_mean, new_var = moving_mean, moving_var, moving_mean, moving_var
    inv = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean) * inv
    y = xhat * gamma + beta
    dgamma, dbeta = (dy * xhat).sum(axes), dy.sum(axes)
    if training:  # the mean and variance depend on x too
        dx = gamma * inv * (dy - dy.mean(axes) - xhat * (dy * xhat).mean(axes))
    else:
        dx = dy * gamma * inv
    return y, dx, dgamma, dbeta, new_mean, new_var


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, SHAPE).astype("float32")
    dy = rng.normal(0.0, 1.0, SHAPE).astype("float32")
    weights = [
        rng.uniform(0.5, 1.5, SHAPE[-1]).astype("float32"),  # gamma
        rng.normal(0.0, 0.5, SHAPE[-1]).astype("float32"),  # beta
        rng.normal(1.0, 0.5, SHAPE[-1]).astype("float32"),  # moving mean
        rng.uniform(2.0, 4.0, SHAPE[-1]).astype("float32"),  # moving variance
    ]
    return x, dy, weights


def run_layer(layer, x, dy, weights, training):
    layer.build(x.shape)
    layer.set_weights(weights)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, training=training)
        # sum(y * dy): its gradient with respect to y is dy
        loss = tf.reduce_sum(tf.cast(y, "float32") * dy)
    dx, dgamma, dbeta = tape.gradient(loss, [xt, layer.gamma.value, layer.beta.value])
    return (
        tf.cast(y, "float32").numpy(),
        dx.numpy(),
        dgamma.numpy(),
        dbeta.numpy(),
        layer.moving_mean.numpy(),
        layer.moving_variance.numpy(),
    )


@pytest.mark.parametrize("training", [True, False])
def test_fused_equals_numpy_reference(training):
    x, dy, weights = make_inputs()
    layer = BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    got = run_layer(layer, x, dy, weights, training)
    assert layer.uses_fused_op(x)
    want = numpy_bn(x, *weights, dy, training)
    for name, g, w in zip(["y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance"], got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("training", [True, False])
def test_fused_equals_keras_layer(training):
    x, dy, weights = make_inputs(1)
    config = dict(momentum=MOMENTUM, epsilon=EPS)
    got = run_layer(BatchNormalization(**config), x, dy, weights, training)
    want = run_layer(keras.layers.BatchNormalization(**config), x, dy, weights, training)
    for name, g, w in zip(["y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance"], got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


def test_runs_tensorflows_fused_op_in_training_and_inference():
    layer = BatchNormalization()
    layer.build(SHAPE)
    for training in (True, False):
        graph = tf.function(lambda x, t=training: layer(x, training=t)).get_concrete_function(
            tf.TensorSpec(SHAPE, "float32")
        )
        op_types = {op.type for op in graph.graph.get_operations()}
        assert "FusedBatchNormV3" in op_types, (training, sorted(op_types))
        assert "Rsqrt" not in op_types and "Mean" not in op_types


def test_mixed_bfloat16_runs_in_bfloat16_with_float32_statistics():
    x, dy, weights = make_inputs(2)
    layer = BatchNormalization(momentum=MOMENTUM, epsilon=EPS, dtype="mixed_bfloat16")
    got = run_layer(layer, x, dy, weights, True)
    assert layer.compute_dtype == "bfloat16" and layer.moving_mean.dtype == "float32"
    assert layer(tf.constant(x), training=False).dtype == tf.bfloat16
    # the reference on the bfloat16-rounded input the layer receives; bfloat16 keeps ~3 significant digits
    xb = tf.cast(tf.cast(x, "bfloat16"), "float32").numpy()
    want = numpy_bn(xb, *weights, dy, True)
    for name, g, w in zip(["y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance"], got, want):
        np.testing.assert_allclose(g, w, rtol=2e-2, atol=2e-2 * np.abs(w).max(), err_msg=name)


def test_without_scale_and_center():
    x, dy, weights = make_inputs(3)
    layer = BatchNormalization(momentum=MOMENTUM, epsilon=EPS, scale=False, center=False)
    layer.build(x.shape)
    layer.set_weights(weights[2:])
    y = layer(tf.constant(x), training=True).numpy()
    want = numpy_bn(x, np.ones(SHAPE[-1]), np.zeros(SHAPE[-1]), *weights[2:], dy, True)
    np.testing.assert_allclose(y, want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_variance.numpy(), want[5], rtol=1e-5)


def test_frozen_layer_uses_moving_statistics_and_keeps_them():
    x, dy, weights = make_inputs(4)
    layer = BatchNormalization(momentum=MOMENTUM, epsilon=EPS)
    layer.trainable = False
    got = run_layer(layer, x, dy, weights, True)
    want = numpy_bn(x, *weights, dy, False)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[4], weights[2])
    np.testing.assert_array_equal(got[5], weights[3])


def test_other_cases_fall_back_to_keras():
    x, dy, weights = make_inputs(5)
    layer = BatchNormalization(axis=1, momentum=MOMENTUM, epsilon=EPS)  # channels-first: Keras' computation
    xt = np.transpose(x, (0, 3, 1, 2))
    layer.build(xt.shape)
    layer.set_weights(weights)
    assert not layer.uses_fused_op(xt)
    y = layer(tf.constant(xt), training=True).numpy()
    want = numpy_bn(x, *weights, dy, True)
    np.testing.assert_allclose(np.transpose(y, (0, 2, 3, 1)), want[0], rtol=1e-4, atol=1e-4)
    assert not BatchNormalization().uses_fused_op(np.zeros((4, 6), "float32"))  # 2-D
    assert not BatchNormalization(fused=False).uses_fused_op(x)
    assert not BatchNormalization().uses_fused_op(x, mask=np.ones(SHAPE[:-1], bool))


def test_keras_weights_config_and_saved_model_round_trip(tmp_path):
    x, _, weights = make_inputs(6)
    reference = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPS, name="bn")
    reference.build(x.shape)
    reference.set_weights(weights)
    layer = BatchNormalization.from_config(reference.get_config())
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    assert [w.path for w in layer.weights] == [w.path for w in reference.weights]
    np.testing.assert_allclose(layer(x).numpy(), reference(x).numpy(), rtol=1e-5, atol=1e-5)

    inputs = keras.Input(SHAPE[1:])
    model = keras.Model(inputs, BatchNormalization(name="bn")(inputs))
    model.get_layer("bn").set_weights(weights)
    path = str(tmp_path / "bn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("bn")) is BatchNormalization
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("name", ["resnet20", "fractalnet20"])
def test_registry_models_normalise_with_the_fused_layer(name):
    """Every BN of a registry model is the fused layer (residual blocks go through ``apply_bn_act``, FractalNet's
    convolutions build their own BN without scale and centre)."""
    import kerasarch

    model = kerasarch.build_model(name, classes=10)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(type(layer) is BatchNormalization for layer in bns), {type(layer) for layer in bns}
    step = tf.function(lambda x: model(x, training=True)).get_concrete_function(
        tf.TensorSpec((2, *model.input_shape[1:]), "float32")
    )
    op_types = [op.type for op in step.graph.get_operations()]
    assert op_types.count("FusedBatchNormV3") == len(bns)
