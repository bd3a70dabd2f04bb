"""``finetune train``'s defaults (issue 15): LP-FT whose phase-1 head is the linear probe's solution, step budgets
that do not depend on the batch size, early stopping that restores the best weights, bad labelled sets refused
before training, and the Keras options (MixUp, CutMix, RandAugment, RandomErasing, layer-wise decay, gradient
accumulation, EMA)."""

import json
import os

import keras
import numpy as np
import pytest

from finetune import FinetuneError
from finetune.cli import main
from finetune.sources import ArraySource

PER_CLASS = 6


@pytest.fixture(scope="module")
def digits():
    """``PER_CLASS`` mnist5k training digits of each of 3 classes (0, 1, 2) as an :class:`ArraySource`."""
    from kerasarch.data import load_arrays

    (x, y), _ = load_arrays("mnist5k")
    idx = np.concatenate([np.flatnonzero(y == c)[:PER_CLASS] for c in range(3)])
    return ArraySource("digits012", x[idx], y[idx], ["0", "1", "2"])


def _lecun_input(images):
    """Independent LeNet-5 input: 28x28 digits zero-padded to 32x32 (LeCun et al. 1998), background -0.1, ink 1.175."""
    x = np.pad(np.asarray(images, "float32"), ((0, 0), (2, 2), (2, 2), (0, 0)))
    return x * (1.275 / 255.0) - 0.1


# ------------------------------------------------------------------------------------------- the step budget


def test_step_budget_grows_with_the_data_and_has_a_floor():
    from finetune.transfer import step_budget

    assert step_budget(1) == 300 and step_budget(40) == 300 and step_budget(320) == 300  # 30 passes of 320 at 32
    assert step_budget(321) == 301 and step_budget(1000) == 938 and step_budget(50_000) == 46_875
    with pytest.raises(FinetuneError, match="Received: 0 images"):
        step_budget(0)


def test_a_step_budget_gives_the_same_number_of_updates_whatever_the_batch_size(digits, tmp_path):
    from finetune.train import train

    updates = {}
    for batch in (2, 8):
        result = train(
            "lenet5",
            digits,
            str(tmp_path / f"b{batch}"),
            steps=7,
            batch_size=batch,
            patience=100,
            refit=False,
            precision="float32",
            verbose=0,
        )
        updates[batch] = (result["steps"], result["updates"])
    assert updates == {2: (7, 7), 8: (7, 7)}


def test_gradient_accumulation_counts_updates_not_batches(digits):
    """``accumulation=3``: the optimizer (its ``gradient_accumulation_steps``) sums 3 batches per update; the
    budget counts updates (Keras's ``optimizer.iterations`` with accumulation)."""
    from finetune.transfer import fit_steps

    model = _tiny_model()
    before = [w.copy() for w in model.get_weights()]
    history = fit_steps(
        model, digits.to_dataset(1), None, steps=4, lr=0.1, batch_size=4, accumulation=3, preprocessing="unit"
    )
    assert history["updates"] == 4 and history["iterations"] == [4]
    assert not np.allclose(model.get_weights()[0], before[0])


# ------------------------------------------------------------------------------------------- early stopping


def _tiny_model(classes=3):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head_predictions")(x)
    return keras.Model(inputs, outputs)


def test_early_stopping_restores_the_best_weights(digits):
    """Validation labels are the training labels shifted by one class, and the model starts out predicting the
    validation labels: training makes validation worse, so the best evaluation is the first and its weights (the
    ones set here) must come back, although training moved them."""
    from finetune.transfer import fit_steps

    x = digits.images.reshape(len(digits), -1).astype("float32") / 255.0
    y = digits.labels
    shifted = (y + 1) % 3
    model = _tiny_model()
    # least squares onto the shifted one-hot labels: a start that predicts the validation labels
    kernel = np.linalg.lstsq(np.c_[x, np.ones(len(x))], np.eye(3)[shifted], rcond=None)[0].astype("float32")
    start = [kernel[:-1], kernel[-1]]
    model.get_layer("head_predictions").set_weights(start)
    val = ArraySource("shifted", digits.images, shifted, digits.class_names)
    np.testing.assert_array_equal(np.argmax(x @ start[0] + start[1], 1), shifted)  # val accuracy 1 at step 0
    history = fit_steps(
        model,
        digits.to_dataset(1),
        val.to_dataset(1),
        steps=60,
        lr=0.5,
        batch_size=18,
        optimizer="sgd",
        warmup=0.0,
        eval_every=1,
        patience=3,
        preprocessing="unit",
    )
    assert history["val_accuracy"][0] == 1.0 and history["val_accuracy"][-1] < 1.0, history["val_accuracy"]
    assert history["best_step"] == 0 and history["stopped_early"] and history["updates"] < 60
    for got, want in zip(model.get_layer("head_predictions").get_weights(), start):
        np.testing.assert_array_equal(got, want)


def test_of_equal_validation_accuracies_the_latest_weights_are_kept(digits):
    """The mirror case: validation = training labels, so validation accuracy climbs to 1 and stays; the kept
    weights are those of the last evaluation (equal to the model after all updates)."""
    from finetune.transfer import fit_steps

    model = _tiny_model()
    history = fit_steps(
        model,
        digits.to_dataset(1),
        digits.to_dataset(1),
        steps=30,
        lr=0.05,
        batch_size=18,
        optimizer="sgd",
        warmup=0.0,
        eval_every=5,
        patience=100,
        preprocessing="unit",
    )
    assert history["val_accuracy"][-1] == 1.0 and history["best_step"] == 30 and history["updates"] == 30
    x = digits.images.reshape(len(digits), -1).astype("float32") / 255.0
    kernel, bias = model.get_layer("head_predictions").get_weights()
    np.testing.assert_array_equal(np.argmax(x @ kernel + bias, 1), digits.labels)


# ------------------------------------------------------------------------------------------- LP-FT phase 1


def _softmax_regression(z, y, classes, C):
    """Independent solve of sklearn's objective with scipy's L-BFGS on the exact gradient:
    sum_i CE(softmax(z_i W + b), y_i) + ||W||^2 / (2 C)."""
    from scipy.optimize import minimize

    n, d = z.shape
    onehot = np.eye(classes)[y]

    def f(theta):
        w, b = theta[: d * classes].reshape(d, classes), theta[d * classes :]
        s = z @ w + b
        s = s - s.max(1, keepdims=True)
        p = np.exp(s) / np.exp(s).sum(1, keepdims=True)
        loss = -np.sum(onehot * np.log(p + 1e-300)) + np.sum(w * w) / (2 * C)
        g = p - onehot
        return loss, np.concatenate([(z.T @ g + w / C).ravel(), g.sum(0)])

    theta = minimize(
        f,
        np.zeros(d * classes + classes),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "gtol": 1e-10, "ftol": 1e-14},
    ).x
    return theta[: d * classes].reshape(d, classes), theta[d * classes :]


def test_lp_ft_phase_one_head_is_the_linear_probe_solution(digits):
    from finetune.backbone import load_backbone
    from finetune.transfer import build_transfer_model, linear_head

    backbone = load_backbone("lenet5", seed=3)
    net = build_transfer_model(backbone, 3)
    linear_head(net, digits.to_dataset(1), preprocessing="lecun", C=0.5)
    # independent features: F6 (f6_act) of the zero-padded, LeCun-scaled digits
    f6 = keras.Model(backbone.model.inputs, backbone.model.get_layer("f6_act").output)
    feats = f6.predict(_lecun_input(digits.images), verbose=0).astype("float64")
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    w, b = _softmax_regression((feats - mean) / std, digits.labels, 3, C=0.5)
    kernel, bias = net.get_layer("head_predictions").get_weights()
    # the head reads raw features: the standardisation is folded into it
    np.testing.assert_allclose(kernel * std[:, None], w, atol=2e-3, rtol=2e-3)
    folded = bias + mean @ kernel  # = b - (mean / std) @ w + mean @ (w / std) = b
    np.testing.assert_allclose(folded - folded.mean(), b - b.mean(), atol=2e-3)  # softmax: b up to a constant


def test_default_train_is_lp_ft_and_saves_a_model_that_reloads(digits, tmp_path):
    from finetune.train import train

    source = str(tmp_path / "source.keras")
    keras.utils.set_random_seed(0)
    import kerasarch

    kerasarch.build_model("lenet5").save(source)
    out = str(tmp_path / "run")
    result = train("lenet5", digits, out, weights=source, steps=6, precision="float32", verbose=0)
    assert result["method"] == "lp-ft" and result["head_tap"] == "F6" and result["refit_updates"] is not None
    assert result["num_train"] == 15 and result["num_val"] == 3  # round(0.2 * 6) = 1 of each class held out
    tuned = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert tuned.output_shape == (None, 3)
    again = train("lenet5", digits, out, weights=source, steps=6, precision="float32", verbose=0)
    assert again == json.load(open(os.path.join(out, "result.json")))  # a finished run is not trained again


def test_the_default_schedule_is_a_warmup_then_cosine_decay_at_3e_4(digits, tmp_path):
    """``finetune train``'s documented defaults (its --help: peak learning rate 3e-4 for LP-FT, --warmup 0.1): a
    linear warm-up over round(0.1 * 20) = 2 updates, then cosine decay to 0 over the other 18 (Loshchilov & Hutter
    2017, arXiv:1608.03983), written out here in numpy against the learning rate the run recorded."""
    import kerasarch
    from finetune.train import train

    source = str(tmp_path / "source.keras")
    kerasarch.build_model("lenet5").save(source)
    out = str(tmp_path / "run")
    result = train("lenet5", digits, out, weights=source, steps=20, precision="float32", verbose=0)
    assert result["method"] == "lp-ft"
    history = json.load(open(os.path.join(out, "history.json")))
    t = np.asarray(history["step"], "float64")
    assert t[0] == 0 and t[-1] == 20
    warm, peak = 2, 3e-4
    want = np.where(t < warm, peak * t / warm, peak * 0.5 * (1 + np.cos(np.pi * (t - warm) / (20 - warm))))
    np.testing.assert_allclose(history["lr"], want, rtol=1e-5, atol=1e-10)


# ------------------------------------------------------------------------------------------- bad input


def test_a_class_with_fewer_than_two_labelled_images_is_an_error_before_training(digits, tmp_path):
    from finetune.train import train

    keep = np.r_[np.flatnonzero(digits.labels != 2), np.flatnonzero(digits.labels == 2)[:1]]
    one = digits.subset(keep)
    out = tmp_path / "run"
    with pytest.raises(FinetuneError, match=r"at least 2 labelled images .* Received: \{'2': 1\}"):
        train("lenet5", one, str(out), verbose=0)
    assert not out.exists()


def test_a_validation_split_that_would_empty_a_class_is_an_error_before_training(digits, tmp_path, capsys):
    from finetune.sources import open_source
    from finetune.train import train

    keep = np.r_[np.flatnonzero(digits.labels != 1), np.flatnonzero(digits.labels == 1)[:2]]
    out = tmp_path / "run"
    with pytest.raises(FinetuneError, match=r"takes all 2 images of class '1', leaving none to train on"):
        train("lenet5", digits.subset(keep), str(out), val_fraction=0.8, verbose=0)
    assert not out.exists()
    # the command line: one error line, nothing written
    rc = main(["train", "lenet5", "digits", "--val-fraction", "1.0", "--out", str(out)])
    assert rc == 2 and "--val-fraction must be between 0 and 1" in capsys.readouterr().err and not out.exists()
    # a separate validation set missing a class
    val = open_source("digits", split="test")
    val = val.subset(np.flatnonzero(val.labels != 7))
    with pytest.raises(
        FinetuneError,
        match=r"validation data .* needs at least 1 image\(s\) of every class. "
        r"Received: \{'7': 0\}",
    ):
        train("lenet5", "digits", str(out), val=val, verbose=0)
    assert not out.exists()


def test_balanced_split_holds_out_every_class():
    from finetune.transfer import balanced_split

    labels = np.array([0] * 10 + [1] * 3 + [2] * 2)
    train_idx, val_idx = balanced_split(labels, 0.2, seed=0)
    assert sorted(np.bincount(labels[val_idx]).tolist()) == [1, 1, 2]  # round(0.2 * n), at least one each
    assert np.bincount(labels[train_idx]).tolist() == [8, 2, 1]
    assert not set(train_idx) & set(val_idx)


# ------------------------------------------------------------------------------------------- --auto


def test_auto_reports_the_probes_and_picks_on_validation(digits, tmp_path):
    from finetune.train import train

    result = train("lenet5", digits, str(tmp_path / "auto"), auto=True, steps=4, precision="float32", verbose=0)
    scores = result["probe_val_accuracy"]
    assert list(scores) == ["C1", "S2", "C3", "S4", "C5", "F6"]
    assert result["head_tap"] in scores and scores[result["head_tap"]] == max(scores.values())
    assert result["chosen"] in ("linear", "lp-ft")
    assert result["lp_ft_val_accuracy"] >= result["linear_probe_val_accuracy"]


# ------------------------------------------------------------------------------------------- Keras options


def test_keras_augmentation_layers_mix_images_and_labels():
    import tensorflow as tf

    from finetune.transfer import keras_augmenter

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (8, 16, 16, 1)).astype("float32"))
    y = tf.one_hot(np.arange(8) % 4, 4)
    for kw, mixes in (
        (dict(mixup=0.4), True),
        (dict(cutmix=1.0), True),
        (dict(randaugment=2), False),
        (dict(random_erasing=1.0), False),
    ):
        images, labels = keras_augmenter(seed=1, **kw)(x, y)
        images, labels = np.asarray(images), np.asarray(labels)
        assert images.shape == x.shape and 0 <= images.min() and images.max() <= 255, kw
        assert not np.allclose(images, np.asarray(x)), kw
        np.testing.assert_allclose(labels.sum(1), 1.0, rtol=1e-5)
        assert (not np.array_equal(labels, np.asarray(y))) == mixes, kw
    assert keras_augmenter() is None


def test_training_with_every_keras_option_on(digits, tmp_path):
    from finetune.train import train

    result = train(
        "lenet5",
        digits,
        str(tmp_path / "all"),
        steps=4,
        batch_size=4,
        mixup=0.2,
        cutmix=1.0,
        randaugment=1,
        random_erasing=0.5,
        accumulation=2,
        ema=0.9,
        layer_decay=0.5,
        refit=False,
        precision="float32",
        verbose=0,
    )
    assert result["updates"] == 4 and result["layer_decay"] == 0.5


def test_layer_wise_decay_follows_the_declared_taps():
    from finetune.backbone import load_backbone
    from finetune.transfer import build_transfer_model, layer_groups

    backbone = load_backbone("resnet20", seed=0)
    net = build_transfer_model(backbone, 3)
    mult = layer_groups(net, backbone.spec, 0.5)
    # taps conv2_x, conv3_x, conv4_x, avg_pool: the stem and stage 2 at 0.5^3, stage 3 at 0.5^2, stage 4 at 0.5
    assert mult["conv1_conv"] == mult["conv2_block1_1_conv"] == 0.125
    assert mult["conv3_block1_1_conv"] == 0.25 and mult["conv4_block3_2_conv"] == 0.5
    assert mult["head_predictions"] == 1.0


def test_ema_weights_are_evaluated_and_kept(digits):
    """Keras's EMA starts from the weights after the first update, then moves by ``1 - momentum`` per update: with a
    momentum near 1 the averaged weights stay at that first update while the raw weights move on. The model left
    behind, and every validation score after the start, is the average's."""
    from finetune.transfer import fit_steps

    def run(steps, ema):
        model = _tiny_model()
        model.set_weights(start)
        val = digits.to_dataset(1) if ema else None
        history = fit_steps(
            model,
            digits.to_dataset(1),
            val,
            steps=steps,
            lr=0.5,
            batch_size=18,
            optimizer="sgd",
            warmup=0.0,
            eval_every=5,
            patience=100,
            ema=ema,
            preprocessing="unit",
        )
        return model.get_weights(), history

    start = [w.copy() for w in _tiny_model().get_weights()]
    first, _ = run(1, None)  # full batch: the first update does not depend on the schedule's length or the shuffle
    raw, _ = run(10, None)
    averaged, history = run(10, 0.999999)
    assert not np.allclose(raw[0], first[0], atol=1e-3)
    for got, want in zip(averaged, first):
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert len(set(history["val_accuracy"][1:])) == 1  # the averaged model's predictions never changed


def test_the_fine_tuned_model_keeps_a_card_with_its_classes(digits, tmp_path):
    """A fine-tuned model saved by ``finetune train`` reloads in a fresh process with its card: input convention,
    the target's class names and the recipe that made it."""
    import subprocess
    import sys

    from finetune.train import train

    out = str(tmp_path / "run")
    train("lenet5", digits, out, steps=2, refit=False, precision="float32", verbose=0)
    code = (
        "import kerasarch, keras, json; from kerasarch.card import card_of; "
        f"c = card_of(keras.saving.load_model({os.path.join(out, 'model.keras')!r})); "
        "print(json.dumps([c.input.preprocessing, list(c.class_names), c.recipe['method'], c.data['examples']]))"
    )
    printed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert json.loads(printed.stdout.strip().splitlines()[-1]) == ["lecun", ["0", "1", "2"], "scratch", 15]
