"""kerasarch.training: recipes, precision, the run folder, NaN handling, kill-and-resume, the CLI."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch import data, training
from kerasarch.classifier import strip_auxiliary
from kerasarch.training import recipes
from kerasarch.training.precision import cpu_flags, dtype_policy

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def mnist():
    return data.load_arrays("mnist5k")


def subset(arrays, step, size=None):
    x, y = arrays
    x, y = x[::step].astype("float32"), y[::step]
    if size is not None:
        x = np.stack([tf.image.resize(i, size).numpy() for i in x])
    return tf.data.Dataset.from_tensor_slices((x, y))


def tiny(dropout=0.0, poison=False):
    """A small convnet on 28×28×1 (its outputs are softmax probabilities, as kerasarch's classifiers)."""
    inputs = keras.Input((28, 28, 1))
    x = Poison(name="poison")(inputs) if poison else inputs
    x = keras.layers.Conv2D(6, 5, strides=2, activation="relu", name="conv")(x)
    x = keras.layers.Flatten()(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="tiny")


@keras.saving.register_keras_serializable(package="kerasarch_tests")
class Poison(keras.layers.Layer):
    """Passes its input through, or NaNs once ``flag`` is set: a NaN loss on demand."""

    def build(self, shape):
        self.flag = self.add_weight(shape=(), initializer="zeros", trainable=False, name="flag")

    def call(self, x):
        return tf.where(self.flag > 0, tf.fill(tf.shape(x), float("nan")), x)


# -- recipes ---------------------------------------------------------------------------------------------------


def test_every_registered_model_has_a_json_recipe():
    for name in kerasarch.list_models():
        spec = kerasarch.get_spec(name)
        r = training.get_recipe(spec)
        assert r["source"] and json.loads(json.dumps(r)) == r, name
        assert r["name"] != "generic", f"{name} ({spec.family}) falls back to the generic recipe"


# The papers' own training figures, quoted from the papers (docs/references.md lists them): optimizer settings,
# and the learning rate at a given epoch (0-based) or SGD iteration of the paper's schedule.
PAPER_RECIPES = [
    # He et al. 2015 (arXiv:1512.03385) §4.2: "weight decay of 0.0001 and momentum of 0.9 ... mini-batch size of
    # 128 ... start with a learning rate of 0.1, divide it by 10 at 32k and 48k iterations, and terminate training
    # at 64k iterations" (iterations of 391 steps per epoch: 50k images / 128).
    (
        "resnet20",
        {"lr": 0.1, "momentum": 0.9, "batch_size": 128, "weight_decay": 1e-4},
        {"iterations": 64_000, "steps": 391, "lr_at_iteration": {31_000: 0.1, 33_000: 0.01, 49_000: 0.001}},
    ),
    # He et al. 2015 (arXiv:1512.03385) §3.4 (ImageNet): "mini-batch size of 256. The learning rate starts from 0.1
    # and is divided by 10 when the error plateaus ... weight decay of 0.0001 and a momentum of 0.9. We do not use
    # dropout"; the plateaus at epochs 30 and 60 of 90 are torchvision's reference (references/classification:
    # --epochs 90 --lr 0.1 --lr-step-size 30 --lr-gamma 0.1).
    (
        "resnet50",
        {"lr": 0.1, "batch_size": 256, "weight_decay": 1e-4, "momentum": 0.9, "dropout": None, "epochs": 90},
        {"lr_at_epoch": {29: 0.1, 30: 0.01, 59: 0.01, 60: 0.001}},
    ),
    # Simonyan & Zisserman 2015 (arXiv:1409.1556) §3.1: "batch size was set to 256, momentum to 0.9 ... weight
    # decay ... 5·10^-4 ... dropout ratio set to 0.5 ... learning rate was initially set to 10^-2, and then
    # decreased by a factor of 10 when the validation set accuracy stopped improving ... decreased 3 times ...
    # stopped after 370K iterations (74 epochs)".
    (
        "vgg16",
        {"lr": 0.01, "momentum": 0.9, "batch_size": 256, "weight_decay": 5e-4, "dropout": 0.5, "epochs": 74},
        {"plateau": (0.1, 3)},
    ),
    # Krizhevsky et al. 2012 §5: "batch size of 128 examples, momentum of 0.9, and weight decay of 0.0005 ...
    # learning rate ... initialized at 0.01 ... divide the learning rate by 10 when the validation error rate
    # stopped improving ... reduced three times ... roughly 90 cycles"; §4.2: dropout "with probability 0.5".
    (
        "alexnet",
        {"lr": 0.01, "momentum": 0.9, "batch_size": 128, "weight_decay": 5e-4, "dropout": 0.5, "epochs": 90},
        {"plateau": (0.1, 3)},
    ),
    # Szegedy et al. 2015 (arXiv:1409.4842) §6: "0.9 momentum, fixed learning rate schedule (decreasing the
    # learning rate by 4% every 8 epochs)"; §5: auxiliary losses "weighted by 0.3"; "dropout layer with 40% ratio".
    (
        "googlenet",
        {"momentum": 0.9, "aux_loss_weight": 0.3, "dropout": 0.4},
        {"lr_ratio_at_epoch": {7: 1.0, 8: 0.96, 16: 0.96**2}},
    ),
    # Zagoruyko & Komodakis 2016 (arXiv:1605.07146) §3: "SGD with Nesterov momentum ... initial learning rate to
    # 0.1, weight decay to 0.0005, dampening to 0, momentum to 0.9 and minibatch size to 128 ... learning rate
    # dropped by 0.2 at 60, 120 and 160 epochs and we train for total 200 epochs".
    (
        "wrn28_10",
        {"lr": 0.1, "nesterov": True, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128, "epochs": 200},
        {"lr_at_epoch": {59: 0.1, 60: 0.02, 120: 0.004, 160: 0.0008}},
    ),
    # Huang et al. 2017 (arXiv:1608.06993) §4.2: "batch size 64 for 300 ... epochs ... initial learning rate is
    # set to 0.1, and is divided by 10 at 50% and 75% of the total number of training epochs ... weight decay of
    # 10^-4 and a Nesterov momentum of 0.9 without dampening".
    (
        "densenet_bc_100_12",
        {"lr": 0.1, "batch_size": 64, "epochs": 300, "weight_decay": 1e-4, "nesterov": True, "momentum": 0.9},
        {"lr_at_epoch": {149: 0.1, 150: 0.01, 225: 0.001}},
    ),
]


@pytest.mark.parametrize("name, figures, schedule", PAPER_RECIPES, ids=[r[0] for r in PAPER_RECIPES])
def test_paper_figures_in_recipes(name, figures, schedule):
    recipe = training.get_recipe(kerasarch.get_spec(name))
    assert {k: recipe[k] for k in figures} == pytest.approx(figures)
    lr0 = recipe["lr"]
    for epoch, lr in schedule.get("lr_at_epoch", {}).items():
        assert recipes.lr_at(recipe, epoch) == pytest.approx(lr), f"{name}: lr at epoch {epoch}"
    for epoch, ratio in schedule.get("lr_ratio_at_epoch", {}).items():
        assert recipes.lr_at(recipe, epoch) == pytest.approx(lr0 * ratio), f"{name}: lr at epoch {epoch}"
    if "iterations" in schedule:
        steps = schedule["steps"]
        assert recipe["epochs"] * steps == pytest.approx(schedule["iterations"], rel=0.01)
        for iteration, lr in schedule["lr_at_iteration"].items():
            assert recipes.lr_at(recipe, iteration // steps) == pytest.approx(lr), f"{name}: at iteration {iteration}"
    if "plateau" in schedule:
        factor, times = schedule["plateau"]
        s = recipe["schedule"]
        assert (s["type"], s["factor"], s["max_reductions"]) == ("plateau", factor, times)


def test_recipe_overrides_and_linear_lr_scaling(tmp_path):
    spec = kerasarch.get_spec("resnet50")
    assert training.get_recipe(spec, batch_size=512)["lr"] == pytest.approx(0.2)  # Goyal et al.: linear
    assert training.get_recipe(spec, {"batch_size": 512, "lr": 0.05})["lr"] == 0.05
    assert training.get_recipe(spec, {"batch_size": 512, "lr_scaling": None})["lr"] == 0.1
    assert training.get_recipe(spec, "resnet_cifar")["epochs"] == 164
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"base": "vgg", "epochs": 3}))
    r = training.get_recipe(None, str(path))
    assert (r["name"], r["epochs"], r["lr"]) == ("vgg", 3, 0.01)
    with pytest.raises(ValueError, match="Unknown recipe keys"):
        training.get_recipe(spec, {"learning_rate": 1})
    with pytest.raises(ValueError, match="Unknown recipe"):
        training.get_recipe(spec, "nonsense")


def test_schedules():
    r = training.get_recipe(kerasarch.get_spec("resnet20"))  # 164 epochs, /10 at 50% and 75%
    assert [training.lr_at(r, e) for e in (0, 81, 82, 122, 123)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
    g = training.get_recipe(None, "googlenet")  # 4% less every 8 epochs
    assert training.lr_at(g, 7) == pytest.approx(0.01) and training.lr_at(g, 16) == pytest.approx(0.01 * 0.96**2)
    s = training.get_recipe(None, "squeezenet")  # linear decay to 0 over the run, per step
    assert training.lr_at(s, 34, 0, 10) == pytest.approx(0.02)
    w = training.get_recipe(None, {"base": "preact_cifar"})
    assert training.lr_at(w, 0, 5, 10) == 0.01 and training.lr_at(w, 1) == 0.1
    plateau = recipes.PlateauState(
        {"type": "plateau", "monitor": "val_accuracy", "factor": 0.1, "patience": 2, "max_reductions": 1}
    )
    reduced = [plateau.update({"val_accuracy": a}) for a in (0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6)]
    assert reduced == [False, False, False, True, False, False, False] and plateau.multiplier == pytest.approx(0.1)


@pytest.mark.parametrize("aux_weight, decay", [(0.3, 0.0), (0.0, 0.01)])
def test_auxiliary_losses_and_weight_decay_enter_the_objective(aux_weight, decay):
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Flatten()(inputs)
    aux = keras.layers.Dense(10, activation="softmax", name="aux1")(h)
    main = keras.layers.Dense(10, activation="softmax", name="predictions")(h)
    model = keras.Model(inputs, {"aux1": aux, "predictions": main}, name="two_heads")
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (8, 28, 28, 1)).astype("float32"), rng.integers(0, 10, 8).astype("int32")
    want = [
        keras.losses.sparse_categorical_crossentropy(y, model(x)[k]).numpy().mean() for k in ("predictions", "aux1")
    ]
    l2 = sum(float(np.sum(w.numpy() ** 2)) for w in model.trainable_weights if w.ndim >= 2)  # kernels only
    batches = tf.data.Dataset.from_tensors((x, y))  # one ready batch, used as given
    result = training.train(
        model,
        batches,
        recipe={
            "lr": 0.0,
            "schedule": {"type": "constant"},
            "epochs": 1,
            "aux_loss_weight": aux_weight,
            "batch_size": 8,
            "weight_decay": decay,
        },
        precision="float32",
        verbose=0,
    )
    expected = want[0] + aux_weight * want[1] + 0.5 * decay * l2
    assert result.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert strip_auxiliary(model).output_shape == (None, 10)  # heads discarded at inference


def test_googlenet_is_built_with_its_auxiliary_classifiers():
    spec = kerasarch.get_spec("googlenet")
    recipe = training.get_recipe(spec)
    model = training.loop.build_model("googlenet", spec, recipe, 10, None, None, "float32")
    assert sorted(model.output_names if hasattr(model, "output_names") else model.output) == [
        "aux1",
        "aux2",
        "predictions",
    ]
    assert len(strip_auxiliary(model).outputs) == 1


# -- precision -------------------------------------------------------------------------------------------------


def test_precision_auto():
    rp = training.resolve_precision
    assert rp("auto", gpus=[(8, 0), (7, 0)]) == "mixed_float16"
    assert rp("auto", gpus=[(6, 1)]) == "float32"
    assert rp("auto", gpus=[(8, 0), (6, 1)]) == "float32"  # every GPU needs tensor cores, not just one
    assert rp("auto", gpus=[], tpu=True) == "mixed_bfloat16"
    assert rp("auto", gpus=[], tpu=False, cpu_flags_={"avx512f", "avx512_bf16"}) == "mixed_bfloat16"
    assert rp("auto", gpus=[], tpu=False, cpu_flags_={"amx_bf16", "amx_tile"}) == "mixed_bfloat16"
    assert rp("auto", gpus=[], tpu=False, cpu_flags_={"avx2", "avx512f"}) == "float32"
    assert rp("float32") == "float32"
    with pytest.raises(ValueError, match="precision"):
        rp("half")


# /proc/cpuinfo "flags" lines (abridged) of two Xeons; the flag names are those Linux prints
# (arch/x86/include/asm/cpufeatures.h: X86_FEATURE_AVX512_BF16 "avx512_bf16", X86_FEATURE_AMX_BF16 "amx_bf16").
SKYLAKE_SP = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl"
SAPPHIRE_RAPIDS = SKYLAKE_SP + " avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16"


@pytest.mark.parametrize("flags, bf16", [(SKYLAKE_SP, False), (SAPPHIRE_RAPIDS, True)], ids=["skylake", "spr"])
def test_cpu_flags_from_a_cpuinfo_file(tmp_path, flags, bf16):
    path = tmp_path / "cpuinfo"
    path.write_text(
        f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n\n"
        f"processor\t: 1\nflags\t\t: {flags}\n"
    )
    assert cpu_flags(str(path)) == set(flags.split())
    assert training.cpu_supports_bfloat16(cpu_flags(str(path))) is bf16
    assert training.resolve_precision("auto", gpus=[], tpu=False, cpu_flags_=cpu_flags(str(path))) == (
        "mixed_bfloat16" if bf16 else "float32"
    )
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_dtype_policy_context_sets_and_restores_the_global_policy():
    keras.config.set_dtype_policy("mixed_float16")
    with dtype_policy("mixed_bfloat16"):
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "mixed_float16"
    with pytest.raises(RuntimeError, match="inside"), dtype_policy("float32"):
        assert keras.config.dtype_policy().name == "float32"
        raise RuntimeError("inside")
    assert keras.config.dtype_policy().name == "mixed_float16"  # restored on an error too
    with dtype_policy(None):
        assert keras.config.dtype_policy().name == "mixed_float16"


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training(precision, mnist):
    (xtr, ytr), _ = mnist
    previous = keras.config.dtype_policy().name
    result = training.train(
        lambda: tiny(),
        subset((xtr, ytr), 20),
        recipe={"epochs": 2, "batch_size": 20, "lr": 0.1},
        precision=precision,
        verbose=0,
    )
    assert keras.config.dtype_policy().name == previous  # the global policy is restored
    conv = result.model.get_layer("conv")
    assert conv.compute_dtype == precision.split("_")[1] and conv.kernel.dtype == "float32"
    assert result.model.get_layer("predictions").compute_dtype == "float32"
    lso = isinstance(result.optimizer, keras.optimizers.LossScaleOptimizer)
    assert lso == (precision == "mixed_float16")  # float16 needs loss scaling, bfloat16 does not
    loss = result.history["loss"]
    assert np.isfinite(loss).all() and loss[1] < loss[0] and loss[1] < 2.0  # it learns


def test_xla_step(mnist):
    (xtr, ytr), _ = mnist
    result = training.train(
        lambda: tiny(),
        subset((xtr, ytr), 20),
        recipe={"epochs": 2, "batch_size": 20, "lr": 0.1},
        precision="float32",
        jit_compile=True,
        verbose=0,
    )
    assert result.recipe["run"]["jit_compile"] is True and result.history["loss"][1] < result.history["loss"][0]


def test_explicit_precision_must_match_a_given_model():
    with pytest.raises(ValueError, match="built under"):
        training.train(
            tiny(),
            tf.data.Dataset.from_tensor_slices((np.zeros((4, 28, 28, 1), "float32"), np.zeros(4, "int32"))),
            precision="mixed_bfloat16",
            verbose=0,
        )


# -- the run folder --------------------------------------------------------------------------------------------


def test_lenet5_run_folder(tmp_path, mnist, capsys):
    (xtr, ytr), (xte, yte) = mnist
    out = str(tmp_path / "run")
    result = training.train(
        "lenet5",
        subset((xtr, ytr), 8),
        subset((xte, yte), 4),
        epochs=2,
        out_dir=out,
        precision="float32",
        verbose="auto",
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split(" - ")[0] for line in printed] == ["epoch 1/2", "epoch 2/2"]  # not a terminal: a line each
    assert result.stop_reason is None and result.history["epoch"] == [1, 2]
    saved = json.load(open(os.path.join(out, "recipe.json")))
    assert saved["name"] == "lenet" and saved["epochs"] == 2 and saved["run"]["precision"] == "float32"
    assert saved["preprocessing"] == "lecun" and saved["run"]["global_batch_size"] == 16
    rows = list(csv.DictReader(open(os.path.join(out, "log.csv"))))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["val_accuracy"]) > 0.6
    assert json.load(open(os.path.join(out, "status.json")))["state"] == "finished"
    for sub in ("train", "validation"):
        events = glob.glob(os.path.join(out, "tensorboard", sub, "events.out.tfevents.*"))
        assert events
        tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
        assert {"epoch_loss", "epoch_accuracy"} <= tags
    assert not [f for f in os.listdir(out) if ".tmp" in f]  # no temporary file left behind
    reloaded = keras.saving.load_model(os.path.join(out, "model.keras"))
    x = data.preprocess(data.fit_image(xte[:4].astype("float32")[0], (32, 32), 1)[None], "lecun")
    np.testing.assert_allclose(reloaded(x).numpy(), result.model(x).numpy(), rtol=1e-6)
    # Evaluating through the run's transforms agrees with the last epoch's validation.
    assert result.evaluate(subset((xte, yte), 4))["accuracy"] == pytest.approx(result.history["val_accuracy"][-1])


def test_progress_bar_on_a_terminal(mnist, capsys):
    from kerasarch.training.logs import ProgressReporter

    class Terminal:
        def isatty(self):
            return True

    assert ProgressReporter("auto", 1, stream=Terminal()).verbose == 1
    (xtr, ytr), _ = mnist
    training.train(
        lambda: tiny(), subset((xtr, ytr), 40), recipe={"epochs": 1, "batch_size": 20}, precision="float32", verbose=1
    )
    text = capsys.readouterr().out
    assert "Epoch 1/1" in text and "5/5" in text and "loss" in text


def test_finished_run_is_not_trained_again(tmp_path, mnist):
    (xtr, ytr), _ = mnist
    out = str(tmp_path / "run")
    first = training.train(
        lambda: tiny(),
        subset((xtr, ytr), 40),
        recipe={"epochs": 1, "batch_size": 20},
        out_dir=out,
        precision="float32",
        verbose=0,
    )
    again = training.train(
        lambda: tiny(),
        subset((xtr, ytr), 40),
        recipe={"epochs": 1, "batch_size": 20},
        out_dir=out,
        precision="float32",
        verbose=0,
        seed=5,
    )
    for a, b in zip(first.model.weights, again.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert again.history == first.history


@pytest.mark.parametrize("with_folder", [True, False])
def test_nan_loss_stops_and_keeps_last_good_weights(tmp_path, mnist, with_folder):
    (xtr, ytr), _ = mnist
    seen = {}

    def on_epoch_end(epoch, logs):
        seen[epoch] = [w.numpy().copy() for w in model_ref[0].weights]

    def on_batch_begin(batch, logs=None):
        if len(seen) == 1 and batch == 3:
            model_ref[0].get_layer("poison").flag.assign(1.0)

    model_ref = []

    def build():
        model_ref.append(tiny(poison=True))
        return model_ref[0]

    cb = keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end, on_train_batch_begin=on_batch_begin)
    out = str(tmp_path / "run") if with_folder else None
    result = training.train(
        build,
        subset((xtr, ytr), 20),
        recipe={"epochs": 4, "batch_size": 25},
        out_dir=out,
        precision="float32",
        callbacks=[cb],
        verbose=0,
    )
    assert result.stop_reason == "nan_loss" and result.history["epoch"] == [1]
    for w, good in zip(result.model.weights, seen[0]):  # the weights at the end of epoch 1 (poison flag off)
        np.testing.assert_array_equal(w.numpy(), good)
    assert all(np.isfinite(w.numpy()).all() for w in result.model.weights)
    if with_folder:
        assert json.load(open(os.path.join(out, "status.json")))["state"] == "nan_loss"
        reloaded = keras.saving.load_model(os.path.join(out, "model.keras"))
        np.testing.assert_array_equal(reloaded.get_layer("conv").kernel.numpy(), seen[0][1])


def test_sigterm_checkpoints_and_resumes(tmp_path, mnist):
    (xtr, ytr), _ = mnist
    out = str(tmp_path / "run")

    def on_batch_end(batch, logs=None):
        if batch == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = training.train(
        lambda: tiny(),
        subset((xtr, ytr), 10),
        recipe={"epochs": 2, "batch_size": 50},
        out_dir=out,
        precision="float32",
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=on_batch_end)],
    )
    assert stopped.stop_reason == "interrupted"
    status = json.load(open(os.path.join(out, "status.json")))
    assert status["state"] == "interrupted"
    _, state = training.checkpoint.load_checkpoint(os.path.join(out, "checkpoint.npz"))
    assert (state["epoch"], state["step"]) == (0, 5)
    done = training.train(
        lambda: tiny(),
        subset((xtr, ytr), 10),
        recipe={"epochs": 2, "batch_size": 50},
        out_dir=out,
        precision="float32",
        verbose=0,
    )
    assert done.stop_reason is None and done.history["epoch"] == [1, 2]


_KILL_SCRIPT = r"""
import os, signal, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np, tensorflow as tf
from kerasarch import data, training

out, result, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
(x, y), _ = data.load_arrays("mnist5k")
ds = tf.data.Dataset.from_tensor_slices((x[::8].astype("float32"), y[::8]))  # 500 images, all classes

def build():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(8, 5, strides=2, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.3, name="drop")(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="predictions")(h), name="small")

seen = {"epoch": 0}
def on_epoch_begin(epoch, logs=None):
    seen["epoch"] = epoch
def on_batch_end(batch, logs=None):
    if seen["epoch"] * 100 + batch == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind

cb = keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_train_batch_end=on_batch_end)
res = training.train(build, ds, recipe={"epochs": 3, "batch_size": 25, "augment": "lenet"}, out_dir=out,
                     precision="float32", deterministic=True, seed=7, checkpoint_steps=6, callbacks=[cb], verbose=0)
np.savez(result, *[w.numpy() for w in res.model.weights])
"""


def _run(args, timeout=300):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    return subprocess.run([sys.executable, *args], env=env, timeout=timeout, capture_output=True, text=True)


def test_resume_after_sigkill_reaches_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(_KILL_SCRIPT))
    # Uninterrupted run and a run killed mid-epoch 2 (after step 16 of 20), side by side.
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / name), str(tmp_path / f"{name}.npz"), str(kill)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, kill in (("plain", -1), ("killed", 115))
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert procs[0].returncode == 0, outs[0][1][-3000:]
    assert procs[1].returncode == -signal.SIGKILL, outs[1][1][-3000:]
    _, state = training.checkpoint.load_checkpoint(str(tmp_path / "killed" / "checkpoint.npz"))
    assert (state["epoch"], state["step"]) == (1, 12)  # the last checkpoint: 12 of 20 steps into epoch 2
    resumed = _run([str(script), str(tmp_path / "killed"), str(tmp_path / "killed.npz"), "-1"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    plain, killed = np.load(tmp_path / "plain.npz"), np.load(tmp_path / "killed.npz")
    assert len(plain.files) == len(killed.files) > 0
    for k in plain.files:  # bit-identical, BatchNorm statistics and dropout RNG state included
        np.testing.assert_array_equal(plain[k], killed[k])
    rows = list(csv.DictReader(open(tmp_path / "killed" / "log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


# -- training from a folder of images --------------------------------------------------------------------------


def test_train_from_image_folder_with_bad_files(tmp_path, mnist):
    from test_data import add_bad_files, write_mnist_folder

    (xtr, ytr), (xte, yte) = mnist
    write_mnist_folder(str(tmp_path / "train"), xtr, ytr, per_class=30)
    write_mnist_folder(str(tmp_path / "test"), xte, yte, per_class=10)
    add_bad_files(str(tmp_path / "train"))
    with pytest.warns(UserWarning, match="skipped 3 of 303"):
        train_ds = data.from_directory(str(tmp_path / "train"), channels=1)
    test_ds = data.from_directory(str(tmp_path / "test"), channels=1)
    result = training.train("lenet5", train_ds, test_ds, epochs=4, precision="float32", verbose=0)
    assert result.model.output_shape == (None, 10)
    assert result.history["val_accuracy"][-1] > 0.5  # 300 digits, 4 epochs; chance is 0.1


# -- the command line ------------------------------------------------------------------------------------------


def test_cli_train_prints_test_accuracy(tmp_path, capsys):
    from kerasarch.cli import main

    out = str(tmp_path / "cli")
    assert (
        main(["train", "lenet5_relu", "--data", "digits", "--epochs", "2", "--out", out, "--precision", "float32"]) == 0
    )
    text = capsys.readouterr().out
    line = [row for row in text.splitlines() if row.startswith("test accuracy")][0]
    acc = float(line.split()[2].rstrip("%")) / 100
    assert 0.5 < acc <= 1.0
    assert os.path.exists(os.path.join(out, "model.keras"))
    result = json.load(open(os.path.join(out, "result.json")))
    _, (_, y_test) = data.load_arrays("digits")
    assert result["test_accuracy"] == pytest.approx(acc, abs=1e-4) and result["test_examples"] == len(y_test)


def test_atomic_writes_leave_the_target_whole_on_failure(tmp_path):
    from kerasarch.training.checkpoint import atomic_save_model, atomic_write, atomic_write_text

    target = tmp_path / "sub" / "state.txt"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "first"
    assert os.listdir(target.parent) == ["state.txt"]  # no temporary file left behind

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    atomic_save_model(model, tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded.get_layer("d").get_weights()[0], model.get_layer("d").get_weights()[0])
