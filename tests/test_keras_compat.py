"""The Keras and keras-tuner internals behind kerasarch.keras_compat, checked against the installed releases.

A failure here means a Keras or keras-tuner release changed something kerasarch reads from its internals: adapt
``kerasarch/keras_compat.py`` (the only module that reads them) and the version pins in ``setup.cfg``.
"""

import inspect
import os

import keras
import numpy as np
import pytest

from kerasarch import keras_compat
from kerasarch.training.distribute import worker_count


def _version(module):
    return tuple(int(p) for p in module.__version__.split(".")[:2])


def _pin(package):
    """The ``<X.Y`` upper pin of ``package`` in setup.cfg."""
    path = os.path.join(os.path.dirname(__file__), os.pardir, "setup.cfg")
    for line in open(path).read().splitlines():
        name, _, spec = line.strip().partition(">=")
        if name == package and "<" in spec:
            return tuple(int(p) for p in spec.split("<")[1].split("."))
    raise AssertionError(f"setup.cfg pins no upper version of {package}")


def test_installed_releases_are_the_tested_ones():
    import keras_tuner

    assert _version(keras) == tuple(int(p) for p in keras_compat.TESTED_KERAS.split(".")), (
        f"Keras {keras.__version__} is not the release kerasarch.keras_compat was checked against "
        f"({keras_compat.TESTED_KERAS}): run this file, adapt keras_compat, then update TESTED_KERAS and setup.cfg"
    )
    assert _version(keras_tuner) == tuple(int(p) for p in keras_compat.TESTED_KERAS_TUNER.split("."))
    assert _version(keras) < _pin("keras")
    assert _version(keras_tuner) < _pin("keras-tuner")


def _graph():
    inputs = keras.Input((4,), name="x")
    shared = keras.layers.Dense(3, name="shared")
    a = shared(inputs)
    b = keras.layers.ReLU(name="relu")(a)
    c = shared(keras.layers.Dense(4, name="proj")(b))
    out = keras.layers.Add(name="add")([b, c])
    return keras.Model(inputs, out), inputs, shared, a, b, out


def test_producer_names_the_layer_that_made_a_tensor():
    model, inputs, shared, a, b, out = _graph()
    assert keras_compat.producer(out) is model.get_layer("add")
    assert keras_compat.producer(b) is model.get_layer("relu")
    assert keras_compat.producer(a) is shared
    assert isinstance(keras_compat.producer(inputs), keras.layers.InputLayer)
    assert keras_compat.producer(np.zeros(3)) is None


def test_inbound_nodes_record_each_call_with_its_inputs():
    model, inputs, shared, a, b, out = _graph()
    nodes = keras_compat.inbound_nodes(shared)
    assert len(nodes) == 2  # called twice
    assert nodes[0].input_tensors == [inputs] and nodes[0].outputs == [a]
    assert keras_compat.producer(nodes[1].input_tensors[0]) is model.get_layer("proj")
    add_nodes = keras_compat.inbound_nodes(model.get_layer("add"))
    assert [keras_compat.producer(t).name for t in add_nodes[0].input_tensors] == ["relu", "shared"]


def test_nodes_by_depth_orders_a_functional_graph_and_is_none_elsewhere():
    model, inputs, shared, a, b, out = _graph()
    by_depth = keras_compat.nodes_by_depth(model)
    assert isinstance(by_depth, dict) and 0 in by_depth
    assert [n.operation.name for n in by_depth[0]] == ["add"]  # depth 0: the output's node
    deepest = by_depth[max(by_depth)]
    assert all(n.is_input for n in deepest) and deepest[0].operation.name == "x"

    class Sub(keras.Model):
        def call(self, x):
            return x

    assert keras_compat.nodes_by_depth(Sub()) is None


def test_fill_in_arguments_substitutes_call_inputs():
    model, inputs, shared, a, b, out = _graph()
    node = keras_compat.inbound_nodes(model.get_layer("add"))[0]
    stand_ins = {id(t): f"t{i}" for i, t in enumerate(node.input_tensors)}
    args, kwargs = keras_compat.fill_in_arguments(node, stand_ins)
    assert args == (["t0", "t1"],) and kwargs == {}


def test_progbar_position_follows_updates():
    bar = keras.utils.Progbar(None, verbose=0)
    assert keras_compat.progbar_position(bar) == 0
    bar.update(7)
    assert keras_compat.progbar_position(bar) == 7


def test_worker_count_reads_the_public_cluster_resolver():
    """The public replacement of ``strategy.extended._num_workers``: the chief and workers of the cluster (the
    evaluator is no worker), as TF_CONFIG lists them."""
    import tensorflow as tf

    assert worker_count(tf.distribute.get_strategy()) == 1
    assert "cluster_resolver" in dir(tf.distribute.MultiWorkerMirroredStrategy)

    class Stub:
        cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"chief": ["a:1"], "worker": ["b:1", "c:1"], "evaluator": ["d:1"]}),
            task_type="worker",
            task_id=0,
        )

    assert worker_count(Stub()) == 3


def test_keras_tuner_distribution_state(monkeypatch):
    for var in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        monkeypatch.delenv(var, raising=False)
    assert not keras_compat.tuner_has_chief_oracle()
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    assert keras_compat.tuner_has_chief_oracle() and keras_compat.tuner_is_chief_oracle()
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    assert keras_compat.tuner_has_chief_oracle() and not keras_compat.tuner_is_chief_oracle()

    from keras_tuner.src.distribute import oracle_client

    before = oracle_client.TIMEOUT
    try:
        keras_compat.set_tuner_oracle_timeout(12)
        assert oracle_client.TIMEOUT == 12
    finally:
        oracle_client.TIMEOUT = before


def test_hyperband_brackets_and_the_tensorboard_hook():
    import keras_tuner as kt

    oracle = kt.oracles.HyperbandOracle(objective="val_loss", max_epochs=9, factor=3)
    brackets = keras_compat.hyperband_brackets(oracle)
    assert isinstance(brackets, list)
    assert keras_compat.hyperband_brackets(kt.oracles.RandomSearchOracle(objective="val_loss")) is None
    # finetune.tune overrides this method to skip keras-tuner's TensorBoard import.
    params = list(inspect.signature(kt.Tuner._configure_tensorboard_dir).parameters)
    assert params == ["self", "callbacks", "trial", "execution"]


def test_require_tensorflow_names_the_backend(monkeypatch):
    keras_compat.require_tensorflow("anything")  # this suite runs on TensorFlow
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match=r"kerasarch.training.train\(\) needs the TensorFlow backend.*'jax'"):
        keras_compat.require_tensorflow("kerasarch.training.train()")


def test_backend_module_computes_on_the_named_backend():
    import tensorflow as tf

    B = keras_compat.backend_module("tensorflow")
    y = B.numpy.add(B.core.convert_to_tensor(np.ones(3, "float32")), 1.0)
    assert tf.is_tensor(y) and np.asarray(y).tolist() == [2.0, 2.0, 2.0]
    j = keras_compat.backend_module("jax").numpy.multiply(np.arange(3.0, dtype="float32"), 2.0)
    assert not tf.is_tensor(j) and type(j).__module__.startswith("jax") and np.asarray(j).tolist() == [0, 2, 4]


def test_tensorflow_onednn_flag_is_read_from_tensorflow():
    from tensorflow.python.util import _pywrap_util_port

    assert callable(_pywrap_util_port.IsMklEnabled)  # the internal keras_compat reads
    assert keras_compat.tensorflow_onednn_enabled() is bool(_pywrap_util_port.IsMklEnabled())


def test_tensorflow_xla_context_is_seen_inside_jit_compiled_functions_only():
    import tensorflow as tf

    seen = {}

    def probe(key):
        seen[key] = keras_compat.tensorflow_in_xla_context()
        return tf.constant(0.0)

    tf.function(lambda: probe("xla"), jit_compile=True)()
    tf.function(lambda: probe("graph"))()
    probe("eager")
    assert seen == {"xla": True, "graph": False, "eager": False}


def test_optimizer_slot_finds_a_variables_momentum_from_the_keras_or_the_tensorflow_variable():
    a, b = keras.Variable(np.zeros(2, "float32"), name="a"), keras.Variable(np.zeros((3, 1), "float32"), name="b")
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    opt.build([a, b])
    for variable, shape in ((a, (2,)), (b, (3, 1)), (b.value, (3, 1))):  # .value: what Keras' TF update step passes
        slot = keras_compat.optimizer_slot(opt, opt.momentums, variable)
        assert tuple(slot.shape) == shape
