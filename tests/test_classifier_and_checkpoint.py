"""The classifier end of a model (kerasarch.classifier: main output, auxiliary heads, softmax or logits) and the
training checkpoint's variables keyed by layer and name (kerasarch.training.checkpoint), through train()."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasarch.classifier import ends_in_softmax, split_outputs, strip_auxiliary
from kerasarch.training import checkpoint as ckpt
from kerasarch.training import train
from kerasarch.training.loop import make_eval_step
from kerasarch.training.precision import dtype_policy

# -- does the model end in softmax -------------------------------------------------------------------------------


def _head(kind):
    """A small classifier whose last layers are ``kind``; returns the model and whether its outputs are
    probabilities (written here from what each Keras layer computes, not from the function under test)."""
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    if kind == "dense_softmax":
        out, probs = keras.layers.Dense(3, activation="softmax", name="predictions")(h), True
    elif kind == "dense_then_activation_softmax":
        h = keras.layers.Dense(3, name="logits")(h)
        out, probs = keras.layers.Activation("softmax", name="predictions")(h), True
    elif kind == "dense_logits":
        out, probs = keras.layers.Dense(3, name="predictions")(h), False
    elif kind == "softmax_layer":
        out, probs = keras.layers.Softmax(name="predictions")(keras.layers.Dense(3, name="logits")(h)), True
    elif kind == "mixed_float16_float32_softmax":  # Keras' mixed-precision guide: logits, then a float32 softmax
        with dtype_policy("mixed_float16"):
            h = keras.layers.Dense(3, name="logits")(h)
        out, probs = keras.layers.Activation("softmax", dtype="float32", name="predictions")(h), True
    elif kind == "softmax_then_float32_cast":  # a linear float32 Activation only casts the probabilities
        with dtype_policy("mixed_float16"):
            h = keras.layers.Dense(3, activation="softmax", name="probs")(h)
        out, probs = keras.layers.Activation("linear", dtype="float32", name="predictions")(h), True
    elif kind == "logits_then_float32_cast":
        with dtype_policy("mixed_float16"):
            h = keras.layers.Dense(3, name="logits")(h)
        out, probs = keras.layers.Activation("linear", dtype="float32", name="predictions")(h), False
    elif kind == "softmax_then_dropout":
        h = keras.layers.Dense(3, activation="softmax", name="probs")(h)
        out, probs = keras.layers.Dropout(0.5, name="predictions")(h), True
    else:
        raise AssertionError(kind)
    return keras.Model(inputs, out, name=kind), probs


KINDS = [
    "dense_softmax",
    "dense_then_activation_softmax",
    "dense_logits",
    "softmax_layer",
    "mixed_float16_float32_softmax",
    "softmax_then_float32_cast",
    "logits_then_float32_cast",
    "softmax_then_dropout",
]


@pytest.mark.parametrize("kind", KINDS)
def test_ends_in_softmax(kind):
    model, probs = _head(kind)
    assert ends_in_softmax(model) is probs
    # The outputs themselves agree: rows of probabilities are non-negative and sum to 1, logits' do not.
    y = np.asarray(model(np.random.default_rng(0).normal(size=(4, 5)).astype("float32"), training=False), "float64")
    sums_to_one = bool(np.allclose(y.sum(-1), 1.0, atol=1e-3) and (y >= 0).all())
    assert sums_to_one is probs


@pytest.mark.parametrize("main_softmax", [True, False])
def test_the_main_output_decides_not_the_auxiliary_ones(main_softmax):
    inputs = keras.Input((5,))
    aux = keras.layers.Dense(3, activation=None if main_softmax else "softmax", name="aux1")(inputs)
    main = keras.layers.Dense(3, activation="softmax" if main_softmax else None, name="predictions")(inputs)
    model = keras.Model(inputs, {"aux1": aux, "predictions": main})
    assert ends_in_softmax(model) is main_softmax


@pytest.mark.parametrize("kind", ["softmax_layer", "softmax_then_float32_cast", "dense_logits"])
def test_the_training_loss_follows_the_output_kind(kind):
    """The eval step's loss is the cross-entropy (numpy) of the model's probabilities, or of the softmax of its
    logits. (Keras itself sees through a softmax op that directly produces the output; not through a cast after it.)"""
    model, probs = _head(kind)
    x = np.random.default_rng(1).normal(size=(6, 5)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2])
    out = np.asarray(model(x, training=False), "float64")
    p = out if probs else np.exp(out) / np.exp(out).sum(-1, keepdims=True)
    want = -np.log(p[np.arange(6), y]).sum()
    loss, correct, count = make_eval_step(model, 3)(tf.constant(x), tf.constant(y))
    assert float(loss) == pytest.approx(want, rel=1e-3)
    assert float(correct) == (p.argmax(-1) == y).sum() and float(count) == 6


# -- the main output and auxiliary heads -------------------------------------------------------------------------


def _with_aux(as_dict=True):
    inputs = keras.Input((5,))
    h = keras.layers.Dense(8, name="hidden")(inputs)
    aux = keras.layers.Dense(3, activation="softmax", name="aux1")(h)
    main = keras.layers.Dense(3, activation="softmax", name="predictions")(h)
    outputs = {"aux1": aux, "predictions": main} if as_dict else [main, aux]
    return keras.Model(inputs, outputs, name="two_heads")


@pytest.mark.parametrize("as_dict", [True, False])
def test_strip_auxiliary_keeps_the_main_output_on_the_same_weights(as_dict):
    model = _with_aux(as_dict)
    x = np.random.default_rng(2).normal(size=(2, 5)).astype("float32")
    main, aux = split_outputs(model(x, training=False))
    assert len(aux) == 1
    stripped = strip_auxiliary(model)
    assert len(stripped.outputs) == 1 and stripped.name == "two_heads"
    assert "aux1" not in {layer.name for layer in stripped.layers}
    assert stripped.get_layer("predictions") is model.get_layer("predictions")
    np.testing.assert_allclose(np.asarray(stripped(x, training=False)), np.asarray(main), rtol=1e-6)
    one, _ = _head("dense_softmax")
    assert strip_auxiliary(one) is one


# -- checkpoints keyed by layer and name -------------------------------------------------------------------------


def _branches(first, *, renamed=None, classes=3):
    """Two parallel Dense layers ``a`` and ``b`` of the same shape summed: ``first`` decides which comes first in
    ``model.variables`` (the order Keras walks the graph in), not what the model computes."""
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Flatten(name="flatten")(inputs)
    a = keras.layers.Dense(4, name=renamed or "a")(x)
    b = keras.layers.Dense(4, name="b")(x)
    h = keras.layers.Add(name="sum")([a, b] if first == "a" else [b, a])
    h = keras.layers.Dropout(0.2, name="drop")(h)
    return keras.Model(
        inputs, keras.layers.Dense(classes, activation="softmax", name="predictions")(h), name="branches"
    )


def _trained(model, steps=2):
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    x = np.random.default_rng(3).normal(size=(8, 4, 4, 1)).astype("float32")
    y = np.arange(8) % 3
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    return optimizer


def _fresh_optimizer(model):
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    return optimizer


def test_variables_are_restored_by_key_when_keras_orders_them_differently(tmp_path):
    saved = _branches("a")
    optimizer = _trained(saved)
    path = tmp_path / "checkpoint.npz"
    ckpt.save_checkpoint(
        path, {"model": ckpt.model_variables(saved), "optimizer": ckpt.optimizer_variables(optimizer)}, {"epoch": 1}
    )

    restored = _branches("b")  # same layers and names; model.variables lists b before a
    assert [v.path for v in restored.variables][:2] == ["b/kernel", "b/bias"]
    new_optimizer = _fresh_optimizer(restored)  # a second SGD in this process: Keras names it sgd_1
    groups, state = ckpt.load_checkpoint(path)
    assert state == {"epoch": 1}
    ckpt.restore_variables(ckpt.model_variables(restored), groups["model"], "model")
    ckpt.restore_variables(ckpt.optimizer_variables(new_optimizer), groups["optimizer"], "optimizer")
    for name in ("a", "b", "predictions"):
        for got, want in zip(restored.get_layer(name).weights, saved.get_layer(name).weights):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not np.array_equal(np.asarray(saved.get_layer("a").kernel), np.asarray(saved.get_layer("b").kernel))
    momentum = {v.path.split("/", 1)[1]: np.asarray(v) for v in new_optimizer.variables}
    want = {v.path.split("/", 1)[1]: np.asarray(v) for v in optimizer.variables}
    for key in ("a_kernel_momentum", "b_kernel_momentum", "iteration"):
        np.testing.assert_array_equal(momentum[key], want[key])
    # The dropout's seed generator is keyed by its layer, not by Keras' process-wide counter.
    assert "drop/seed_generator_state" in ckpt.model_variables(restored)


def test_a_renamed_or_reshaped_variable_is_refused_by_name(tmp_path):
    saved = _branches("a")
    path = tmp_path / "checkpoint.npz"
    ckpt.save_checkpoint(path, {"model": ckpt.model_variables(saved)}, {})
    groups, _ = ckpt.load_checkpoint(path)

    renamed = _branches("a", renamed="a2")
    before = [np.asarray(v).copy() for v in renamed.variables]
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.restore_variables(ckpt.model_variables(renamed), groups["model"], "model")
    message = str(e.value)
    assert "not in the checkpoint: a2/bias, a2/kernel" in message
    assert "in the checkpoint but not in the model: a/bias, a/kernel" in message
    for v, b in zip(renamed.variables, before):  # nothing was restored
        np.testing.assert_array_equal(np.asarray(v), b)

    wider = _branches("a", classes=5)
    with pytest.raises(ckpt.CheckpointError, match=r"shapes differ: predictions/bias \(5,\) \(checkpoint \(3,\)\)"):
        ckpt.restore_variables(ckpt.model_variables(wider), groups["model"], "model")


def test_checkpoints_without_keys_are_still_read_by_position(tmp_path):
    """A checkpoint written before keys were recorded: ``model/00000`` ... and the state, nothing else."""
    model = _branches("a")
    values = ckpt.variable_values(model.variables)
    path = tmp_path / "old.npz"
    np.savez(path, __state__=np.array(json.dumps({"epoch": 2})), **{f"model/{i:05d}": v for i, v in enumerate(values)})
    groups, state = ckpt.load_checkpoint(path)
    assert state == {"epoch": 2} and isinstance(groups["model"], list)
    twin = _branches("a")
    with pytest.warns(UserWarning, match="restored by position"):
        ckpt.restore_variables(ckpt.model_variables(twin), groups["model"], "model")
    for got, want in zip(twin.variables, values):
        np.testing.assert_array_equal(np.asarray(got), want)


def _batches():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 1, (16, 4, 4, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, np.arange(16) % 3)).batch(8)


def test_train_resumes_a_run_folder_by_key_and_refuses_a_renamed_layer(tmp_path):
    """The user's path: a run folder trained, then resumed with a model whose variables Keras lists in another
    order (restored by name: the same weights), or with a renamed layer (one line naming the layers)."""
    out = str(tmp_path / "run")
    kw = {"recipe": {"schedule": {"type": "constant"}, "batch_size": 8, "lr": 0.1}, "precision": "float32"}
    first = train(_branches("a"), _batches(), epochs=1, out_dir=out, verbose=0, **kw)
    resumed = train(_branches("b"), _batches(), epochs=1, out_dir=out, verbose=0, **kw)  # nothing left to train
    for name in ("a", "b", "predictions"):
        for got, want in zip(resumed.model.get_layer(name).weights, first.model.get_layer(name).weights):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    with pytest.raises(ckpt.CheckpointError, match="not in the checkpoint: a2/bias, a2/kernel"):
        train(_branches("a", renamed="a2"), _batches(), epochs=2, out_dir=out, verbose=0, **kw)


# -- the global dtype policy is set for a block and put back -----------------------------------------------------


def test_commands_put_the_global_dtype_policy_back(capsys):
    """``kerasarch summary --dtype-policy`` and the models page build under a policy of their own and leave the
    caller's as it was (one implementation: kerasarch.training.precision.dtype_policy)."""
    from kerasarch.cli import main
    from kerasarch.commands.models_doc import model_rows

    with dtype_policy("mixed_bfloat16"):
        assert main(["summary", "lenet5", "--dtype-policy", "float32", "--format", "json"]) == 0
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        (row,) = model_rows(["lenet5"], progress=False)
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"
    summary = json.loads(capsys.readouterr().out)
    assert summary["compute_dtype"] == "float32"  # built under the command's policy, not the caller's
    # LeNet-5 (LeCun et al. 1998, §II-B): 60,000 trainable parameters without the output layer, + 10 × (84 + 1).
    assert row["trainable"] == summary["trainable_params"] == 60_000 + 850
    assert row["activation_mb"] == pytest.approx(4 * row["activations"] / 1e6)  # float32: 4 bytes a value


# -- a training run folder's model file --------------------------------------------------------------------------


def test_a_run_folder_names_its_model_file_in_one_place(tmp_path):
    """train() writes model.keras into its run folder; export and finetune --weights read a run folder through
    the same function, and a folder without one is refused in each with the folder named."""
    from finetune.backbone import resolve_weights
    from finetune.errors import FinetuneError
    from kerasarch.export import ExportError, load_for_export
    from kerasarch.training.loop import run_model_file

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"")
    assert run_model_file(run) == str(run / "model.keras")
    assert resolve_weights(str(run)) == str(run / "model.keras")
    assert run_model_file(str(tmp_path / "m.keras")) == str(tmp_path / "m.keras")
    empty = tmp_path / "unfinished"
    empty.mkdir()
    with pytest.raises(ExportError, match="unfinished' is a folder without a model.keras"):
        load_for_export(str(empty))
    with pytest.raises(FinetuneError, match="unfinished' is a folder without a model.keras.*--weights takes"):
        resolve_weights(str(empty))
