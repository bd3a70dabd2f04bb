"""kerasarch.training.optimizers.SGD: the fused TensorFlow update follows SGD with momentum (Sutskever et al. 2013,
eq. 1–2, and Keras' sign convention) written in numpy, with and without Nesterov, weight decay and a distribution
strategy; the traced step holds the fused op; the optimizer serialises with the model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasarch.training.optimizers import SGD


def numpy_sgd(w, grads, lr, momentum, nesterov=False, weight_decay=0.0):
    """w ← w − lr·wd·w (Keras' decoupled decay), m ← momentum·m − lr·g, w ← w + m (Nesterov: w + momentum·m − lr·g)."""
    w, m = w.astype("float64"), np.zeros(w.shape)
    for g in grads:
        w = w - lr * weight_decay * w
        m = momentum * m - lr * g
        w = w + (momentum * m - lr * g if nesterov else m)
    return w


@pytest.mark.parametrize(
    "nesterov, weight_decay, strategy",
    [(False, 0.0, None), (True, 0.0, None), (False, 1e-2, None), (False, 0.0, "one_device")],
)
def test_update_matches_numpy(nesterov, weight_decay, strategy):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 7)).astype("float32")
    grads = [rng.normal(size=w0.shape).astype("float32") for _ in range(4)]
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0") if strategy else tf.distribute.get_strategy()
    with strategy.scope():
        w = keras.Variable(w0)
        opt = SGD(0.05, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay or None)
        opt.build([w])

        @tf.function
        def step(g):
            strategy.run(lambda g: opt.apply([g], [w]), args=(g,))

        for g in grads:
            step(tf.constant(g))
        ops = {op.type for op in step.get_concrete_function(tf.TensorSpec(w0.shape)).graph.get_operations()}
    np.testing.assert_allclose(w.numpy(), numpy_sgd(w0, grads, 0.05, 0.9, nesterov, weight_decay), rtol=1e-5, atol=1e-6)
    # the fused kernel, except inside a distribution strategy (Keras' own update there)
    assert ("ResourceApplyKerasMomentum" in ops) == (strategy is tf.distribute.get_strategy())


def test_plain_sgd_and_config_round_trip(tmp_path):
    w = keras.Variable(np.ones(3, "float32"))
    opt = SGD(0.5)  # momentum 0: Keras' update
    opt.apply([tf.constant([1.0, 2.0, 3.0])], [w])
    np.testing.assert_allclose(w.numpy(), [0.5, 0.0, -0.5])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
    model.compile(optimizer=SGD(0.1, momentum=0.9, nesterov=True), loss="mse")
    model.fit(np.ones((8, 4)), np.zeros((8, 2)), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    assert type(back.optimizer) is SGD and back.optimizer.nesterov and back.optimizer.momentum == 0.9
    for a, b in zip(back.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
