"""The fine-tuning module (``finetune/``): every command end to end on a folder of mnist5k PNG files, resumable
extraction byte for byte, the BatchNorm fine-tuning trap, a resumable tune search (local and with two workers on
127.0.0.1), and clear errors for bad input before any work is lost."""

import gc
import hashlib
import json
import os
import socket
import subprocess
import sys
import weakref

import keras
import numpy as np
import pytest

import kerasarch
from finetune import FinetuneError
from finetune.cli import extract_main, main
from finetune.extract import extract
from finetune.store import load_features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CLASS = 8


def _png_folder(root, images, labels, names=None):
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, str(names[label] if names else label))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(np.asarray(image)[..., 0]).save(os.path.join(folder, f"{i:04d}.png"))
    return str(root)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """``PER_CLASS`` mnist5k training digits of each class written as 28x28 grey PNG files, one folder per digit;
    returns ``(folder, images, labels)`` in the folder's sorted order."""
    from kerasarch.data import load_arrays

    (x, y), _ = load_arrays("mnist5k")
    idx = np.concatenate([np.flatnonzero(y == c)[:PER_CLASS] for c in range(10)])
    root = _png_folder(tmp_path_factory.mktemp("digits"), x[idx], y[idx])
    return root, x[idx], y[idx].astype("int64")


def _lecun_input(images):
    """Independent LeNet-5 input: 28x28 digits zero-padded to 32x32 (LeCun et al. 1998), background -0.1, ink 1.175."""
    x = np.pad(np.asarray(images, "float32"), ((0, 0), (2, 2), (2, 2), (0, 0)))
    return x * (1.275 / 255.0) - 0.1


def _tree_bytes(directory):
    return {f: open(os.path.join(directory, f), "rb").read() for f in sorted(os.listdir(directory))}


# --------------------------------------------------------------------------------------------------- extract


def test_extract_folder_writes_the_tapped_layers_output_with_metadata(digits, tmp_path):
    folder, images, labels = digits
    model = kerasarch.build_model("lenet5")
    model.get_layer("c1").set_weights([w * 1.5 for w in model.get_layer("c1").get_weights()])
    weights = str(tmp_path / "lenet5.keras")
    model.save(weights)
    out = str(tmp_path / "features")
    rc = main(
        [
            "extract",
            "lenet5",
            folder,
            "--tap",
            "F6",
            "--weights",
            weights,
            "--out",
            out,
            "--shard-size",
            "32",
            "--batch-size",
            "16",
            "--quiet",
        ]
    )
    assert rc == 0
    fs = load_features(out, model="lenet5", tap="F6")
    meta = fs.metadata
    assert meta["weights_sha256"] == hashlib.sha256(open(weights, "rb").read()).hexdigest()
    assert (meta["model"], meta["tap"], meta["tap_layer"]) == ("lenet5", "F6", "f6_act")
    assert meta["preprocessing"] == "lecun" and meta["input_shape"] == [32, 32, 1]
    assert meta["feature_shape"] == [84] and meta["class_names"] == [str(d) for d in range(10)]
    assert [s["count"] for s in meta["shards"]] == [32, 32, 16] and meta["complete"]
    np.testing.assert_array_equal(fs.labels, labels)
    reference = keras.Model(model.inputs, model.get_layer("f6_act").output).predict(_lecun_input(images), verbose=0)
    np.testing.assert_allclose(fs.features, reference, rtol=1e-5, atol=1e-5)


def test_interrupted_extract_resumes_to_byte_identical_files(digits, tmp_path):
    folder, _, _ = digits
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    args = dict(tap="C5", shard_size=24, batch_size=8, verbose=0)
    extract("lenet5", folder, out=whole, **args)

    def stop_after_two(i):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract("lenet5", folder, out=resumed, on_shard=stop_after_two, **args)
    assert not load_metadata_complete(resumed)
    assert sorted(f for f in os.listdir(resumed) if f.startswith("shard-")) == ["shard-00000.npz", "shard-00001.npz"]
    os.makedirs(os.path.join(resumed, ".extract-tmp"), exist_ok=True)  # killed while writing shard 2:
    open(os.path.join(resumed, ".extract-tmp", ".shard-00002.npz.k1ll3d_x.tmp"), "wb").write(b"half a shard")
    computed = []
    extract("lenet5", folder, out=resumed, on_shard=computed.append, **args)
    assert computed == [0, 1, 2, 3]
    assert _tree_bytes(resumed) == _tree_bytes(whole)
    # a finished directory is left alone
    before = os.path.getmtime(os.path.join(resumed, "metadata.json"))
    extract("lenet5", folder, out=resumed, **args)
    assert os.path.getmtime(os.path.join(resumed, "metadata.json")) == before


def load_metadata_complete(directory):
    with open(os.path.join(directory, "metadata.json")) as f:
        return json.load(f)["complete"]


@pytest.mark.slow
def test_sigkilled_extract_resumes_to_byte_identical_files(tmp_path):
    """A real SIGKILL mid-run (a subprocess, 5,000 images in shards of 32), then the same command again."""
    import signal
    import time

    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    cmd = [
        sys.executable,
        "-m",
        "finetune",
        "extract",
        "lenet5",
        "mnist5k",
        "--split",
        "all",
        "--tap",
        "C5",
        "--shard-size",
        "32",
        "--batch-size",
        "32",
        "--quiet",
    ]
    subprocess.run([*cmd, "--out", whole], check=True, cwd=REPO, timeout=600)
    proc = subprocess.Popen([*cmd, "--out", resumed], cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(os.path.join(resumed, "shard-00001.npz")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not load_metadata_complete(resumed)
    subprocess.run([*cmd, "--out", resumed], check=True, cwd=REPO, timeout=600)
    assert _tree_bytes(resumed) == _tree_bytes(whole)


def test_extract_refuses_a_directory_holding_another_extraction(digits, tmp_path):
    folder, _, _ = digits
    out = str(tmp_path / "f")
    extract("lenet5", folder, "F6", out, shard_size=100, verbose=0)
    with pytest.raises(FinetuneError, match=r"holds another extraction \(lenet5/F6; differs in tap"):
        extract("lenet5", folder, "C5", out, shard_size=100, verbose=0)
    meta = extract("lenet5", folder, "C5", out, shard_size=100, verbose=0, overwrite=True)
    assert meta["tap"] == "C5" and load_features(out).features.shape == (10 * PER_CLASS, 1, 1, 120)


# --------------------------------------------------------------------------------------------------- bad input


def _run_cli(args, capsys):
    rc = main(args)
    return rc, capsys.readouterr().err


def test_a_folder_without_images_is_an_error_before_any_work(tmp_path, capsys):
    empty = tmp_path / "photos"
    (empty / "cats").mkdir(parents=True)
    (empty / "cats" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    rc, err = _run_cli(["extract", "lenet5", str(empty), "--tap", "F6", "--out", str(out)], capsys)
    assert rc == 2 and "No usable images in" in err and "cats" in err
    assert not out.exists()
    (tmp_path / "flat").mkdir()
    rc, err = _run_cli(["train", "lenet5", str(tmp_path / "flat"), "--out", str(out)], capsys)
    assert rc == 2 and "has no class sub-folders" in err and not out.exists()


def test_an_unknown_tap_is_an_error_naming_the_valid_ones(digits, tmp_path, capsys):
    folder, _, _ = digits
    out = tmp_path / "out"
    rc, err = _run_cli(["extract", "lenet5", folder, "--tap", "F9", "--out", str(out)], capsys)
    assert rc == 2 and "Unknown tap 'F9' for lenet5" in err and "C1, S2, C3, S4, C5, F6" in err
    assert not out.exists()
    rc, err = _run_cli(["train", "lenet5", folder, "--out", str(out), "--freeze-to", "C9"], capsys)
    assert rc == 2 and "Unknown tap 'C9'" in err and not out.exists()


def test_weights_of_another_network_are_an_error_before_any_work(digits, tmp_path, capsys):
    folder, _, _ = digits
    other = str(tmp_path / "relu.keras")
    kerasarch.build_model("lenet5_relu").save(other)  # full C3 instead of the connection table
    out = tmp_path / "out"
    rc, err = _run_cli(["extract", "lenet5", folder, "--tap", "F6", "--weights", other, "--out", str(out)], capsys)
    assert rc == 2 and "do not fit lenet5" in err and "lenet5_relu" in err and "no counterpart" in err
    assert not out.exists()
    rc, err = _run_cli(
        ["extract", "lenet5", folder, "--tap", "F6", "--weights", str(tmp_path / "nope.keras"), "--out", str(out)],
        capsys,
    )
    assert rc == 2 and "Weights file not found" in err


def test_features_of_another_model_or_tap_are_refused(digits, tmp_path, capsys):
    folder, _, _ = digits
    f6, c5 = str(tmp_path / "f6"), str(tmp_path / "c5")
    extract("lenet5", folder, "F6", f6, verbose=0)
    extract("lenet5", folder, "C5", c5, verbose=0)
    rc, err = _run_cli(["linear", f6, "--test", c5], capsys)
    assert rc == 2 and "come from different extractions" in err and "tap: 'F6' vs 'C5'" in err
    rc, err = _run_cli(["linear", f6, "--model", "resnet20"], capsys)
    assert rc == 2 and "holds features of lenet5/F6, not of resnet20/F6" in err
    seeded = str(tmp_path / "seed1")
    extract("lenet5", folder, "F6", seeded, seed=1, verbose=0)  # other random weights
    rc, err = _run_cli(["linear", f6, "--test", seeded], capsys)
    assert rc == 2 and "seed: 0 vs 1" in err
    meta = json.load(open(os.path.join(c5, "metadata.json")))
    meta["complete"] = False
    json.dump(meta, open(os.path.join(c5, "metadata.json"), "w"))
    rc, err = _run_cli(["linear", c5], capsys)
    assert rc == 2 and "is not finished" in err


# --------------------------------------------------------------------------------------------------- linear


def test_linear_probe_end_to_end_on_held_out_images(digits, tmp_path, capsys):
    folder, _, _ = digits
    train_dir, test_dir = str(tmp_path / "train"), str(tmp_path / "test")
    assert extract_main(["lenet5", folder, "--tap", "F6", "--out", train_dir, "--quiet"]) == 0
    assert main(["extract", "lenet5", "mnist5k", "--split", "test", "--tap", "F6", "--out", test_dir, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["linear", train_dir, "--test", test_dir, "--out", str(tmp_path / "probe")]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    result = json.load(open(tmp_path / "probe" / "result.json"))
    assert result["num_test"] == 1000 and result["num_train"] == 10 * PER_CLASS
    # random LeNet-5 features are still far better than chance (10%) for a linear classifier
    assert result["accuracy"] > 0.4, result
    from finetune.linear import fit_linear

    _, keras_result = fit_linear(train_dir, test_dir, backend="keras")
    assert abs(keras_result["accuracy"] - result["accuracy"]) < 0.1
    probe = np.load(tmp_path / "probe" / "classifier.npz")
    assert probe["kernel"].shape == (84, 10)


# --------------------------------------------------------------------------------------------------- train


def test_frozen_batchnorm_stays_in_inference_mode_through_both_phases():
    """keras#9214: frozen BN layers must use their moving statistics and keep them, while the unfrozen part and
    the head train."""
    from finetune.backbone import load_backbone
    from finetune.sources import ArraySource
    from finetune.transfer import build_transfer_model, fine_tune, frozen_layer_names

    backbone = load_backbone("resnet20", seed=0)
    frozen = frozen_layer_names(backbone, "conv3_x")
    assert "conv3_block3_out" in frozen and "conv4_block1_1_conv" not in frozen
    net = build_transfer_model(backbone, 3, head_width=8)
    rng = np.random.default_rng(0)
    data = ArraySource("noise", rng.uniform(0, 255, (24, 32, 32, 3)).astype("uint8"), np.arange(24) % 3, "abc")
    # give the BN layers non-trivial statistics, so that batch statistics would differ from them
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            mean, var = layer.moving_mean, layer.moving_variance
            layer.moving_mean.assign(rng.normal(0, 0.5, mean.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, var.shape).astype("float32"))
    before = {w.path: w.numpy().copy() for w in net.weights}
    probe = keras.Model(net.inputs, net.get_layer("conv3_block3_out").output)
    x = rng.uniform(0, 1, (4, 32, 32, 3)).astype("float32")

    fine_tune(
        net,
        data.to_dataset(3),
        None,
        frozen=frozen,
        epochs_head=1,
        epochs_finetune=0,
        lr_head=0.1,
        batch_size=8,
        preprocessing="unit",
    )
    after_head = {w.path: w.numpy().copy() for w in net.weights}
    changed = {p for p in before if not np.array_equal(before[p], after_head[p])}
    assert changed and all(p.startswith("head_") for p in changed), sorted(changed)[:5]

    fine_tune(
        net,
        data.to_dataset(3),
        None,
        frozen=frozen,
        epochs_head=0,
        epochs_finetune=1,
        lr_finetune=0.1,
        batch_size=8,
        preprocessing="unit",
    )
    after = {w.path: w.numpy() for w in net.weights}
    changed = {p for p in before if not np.array_equal(after_head[p], after[p])}
    layer_of = {w.path: layer.name for layer in net.layers for w in layer.weights}
    assert not {layer_of[p] for p in changed} & frozen  # nothing up to conv3_x moved
    assert any(layer_of[p] == "conv4_block1_1_conv" for p in changed)  # the unfrozen convolutions trained
    assert not any("moving_" in p for p in changed)  # no BN statistics moved, above the freeze point included
    # and the frozen part computes the same thing in training mode as in inference mode
    np.testing.assert_allclose(probe(x, training=True), probe(x, training=False), rtol=1e-6, atol=1e-6)


def test_train_end_to_end_on_a_folder_and_resumes(digits, tmp_path, capsys):
    folder, _, _ = digits
    source = str(tmp_path / "source.keras")
    kerasarch.build_model("lenet5").save(source)
    out = str(tmp_path / "run")
    args = [
        "train",
        "lenet5",
        folder,
        "--weights",
        source,
        "--out",
        out,
        "--freeze-to",
        "C3",
        "--method",
        "two-phase",
        "--epochs-head",
        "1",
        "--epochs-finetune",
        "1",
        "--batch-size",
        "16",
        "--precision",
        "float32",
        "--quiet",
    ]
    assert main(args) == 0
    assert "fine-tuned lenet5 (two-phase) on 60 images" in capsys.readouterr().out
    result = json.load(open(os.path.join(out, "result.json")))
    assert result["num_val"] == 20 and result["head_tap"] == "F6" and result["preprocessing"] == "lecun"
    assert result["frozen_layers"] == 7  # input, c1, c1_act, s2, s2_act, c3, c3_act
    tuned = keras.saving.load_model(os.path.join(out, "model.keras"))
    assert tuned.output_shape == (None, 10)
    # the frozen layers kept the source weights, the head is new
    src = keras.saving.load_model(source)
    for name in ("c1", "c3"):
        for a, b in zip(tuned.get_layer(name).get_weights(), src.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # rerunning the finished command resumes from the phases' checkpoints instead of training again
    assert main(args) == 0
    again = keras.saving.load_model(os.path.join(out, "model.keras"))
    for a, b in zip(again.get_weights(), tuned.get_weights()):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------- tune


def test_tiny_tune_search_completes_resumes_and_keeps_only_the_best_checkpoint(digits, tmp_path, monkeypatch):
    import finetune.transfer
    from finetune.tune import tune

    folder, _, _ = digits
    out = str(tmp_path / "search")
    kwargs = dict(
        algorithm="bayesian",
        max_trials=2,
        epochs=2,
        epochs_head=1,
        batch_size=16,
        head_widths=(0, 8),
        freeze_choices=("all", "none"),
        keep_best=1,
        verbose=0,
    )
    built = []
    real_build = finetune.transfer.build_transfer_model

    def tracking_build(*args, **kw):
        net = real_build(*args, **kw)
        built.append(weakref.ref(net))
        return net

    monkeypatch.setattr(finetune.transfer, "build_transfer_model", tracking_build)
    real_fit = finetune.transfer.fine_tune
    calls = []

    def interrupted_fit(*args, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second trial is killed
            raise KeyboardInterrupt
        return real_fit(*args, **kw)

    monkeypatch.setattr(finetune.transfer, "fine_tune", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        tune("lenet5", folder, out, **kwargs)
    monkeypatch.setattr(finetune.transfer, "fine_tune", real_fit)
    del built[:]
    summary = tune("lenet5", folder, out, **kwargs)  # resumes: the interrupted trial runs again, nothing else
    assert summary["num_trials"] == 2 and summary["completed"] == 2, summary
    assert set(summary["best_hyperparameters"]) == {"head_width", "dropout", "lr_head", "lr_finetune", "freeze_to"}
    assert summary["checkpoints_kept"] == [summary["best_trial"]], summary
    gc.collect()
    assert built and not [ref for ref in built if ref() is not None]  # the trials' models were released
    summary = tune("lenet5", folder, out, **{**kwargs, "max_trials": 3})  # a larger budget adds one trial
    assert summary["num_trials"] == 3 and summary["completed"] == 3, summary
    assert len(summary["checkpoints_kept"]) == 1, summary


@pytest.mark.slow
def test_hyperband_continues_trials_from_their_parents_checkpoints(digits, tmp_path):
    from finetune.tune import tune

    folder, _, _ = digits
    out = str(tmp_path / "search")
    summary = tune(
        "lenet5",
        folder,
        out,
        algorithm="hyperband",
        max_epochs=3,
        factor=3,
        epochs_head=1,
        batch_size=16,
        head_widths=(0, 8),
        freeze_choices=("all", "none"),
        verbose=0,
    )
    assert summary["completed"] == summary["num_trials"] == 6
    trials = [
        json.load(open(os.path.join(out, "search", d, "trial.json")))
        for d in sorted(os.listdir(os.path.join(out, "search")))
        if d.startswith("trial_")
    ]
    continued = [t for t in trials if "tuner/trial_id" in t["hyperparameters"]["values"]]
    assert continued and all(t["status"] == "COMPLETED" for t in continued)
    assert summary["checkpoints_kept"] == [summary["best_trial"]]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_tune_with_a_chief_and_two_workers_on_localhost(digits, tmp_path):
    folder, _, _ = digits
    out = str(tmp_path / "search")
    port = str(_free_port())
    cmd = [
        sys.executable,
        "-m",
        "finetune",
        "tune",
        "lenet5",
        folder,
        "--out",
        out,
        "--algorithm",
        "bayesian",
        "--max-trials",
        "3",
        "--epochs",
        "2",
        "--epochs-head",
        "1",
        "--batch-size",
        "16",
        "--head-widths",
        "0,8",
        "--freeze-choices",
        "all,none",
        "--oracle-timeout",
        "120",
        "--quiet",
    ]
    procs = {}
    for tuner_id in ("chief", "tuner0", "tuner1"):
        env = {
            **os.environ,
            "KERASTUNER_TUNER_ID": tuner_id,
            "KERASTUNER_ORACLE_IP": "127.0.0.1",
            "KERASTUNER_ORACLE_PORT": port,
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        procs[tuner_id] = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    outputs = {}
    try:
        for tuner_id, proc in procs.items():
            outputs[tuner_id] = proc.communicate(timeout=600)[0]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for tuner_id, proc in procs.items():
        assert proc.returncode == 0, f"{tuner_id}:\n{outputs.get(tuner_id, '')[-3000:]}"
    best = json.load(open(os.path.join(out, "best.json")))
    assert best["completed"] == 3 and best["best_hyperparameters"] is not None
    project = os.path.join(out, "search")
    assert os.path.exists(os.path.join(project, "tuner0.json"))  # both workers finished trials
    assert os.path.exists(os.path.join(project, "tuner1.json"))
    assert best["checkpoints_kept"] == [best["best_trial"]]


# --------------------------------------------------------------------------------------------------- cli, demo


def test_command_line_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "finetune", "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0
    for command in ("extract", "linear", "train", "tune", "demo"):
        assert command in out.stdout


@pytest.mark.slow
def test_demo_runs_the_transfer_benchmark(tmp_path):
    """``finetune demo`` is bench/transfer.py: one pair, one seed, 5 labels per class."""
    rc = main(
        [
            "demo",
            "--",
            "--pairs",
            "lenet5-digits",
            "--seeds",
            "1",
            "--shots",
            "5",
            "--out",
            str(tmp_path),
            "--results",
            str(tmp_path / "transfer.json"),
            "--chart",
            str(tmp_path / "transfer.png"),
        ]
    )
    assert rc == 0
    results = json.load(open(tmp_path / "transfer.json"))
    assert "| mnist5k 0-4 → mnist5k 5-9 (lenet5, F6) | 5 |" in results["markdown"]
    cell = results["cells"][0]
    assert set(cell["accuracy"]) == {"scratch", "linear", "two-phase", "default"}
    assert all(0.0 <= v <= 1.0 for v in cell["accuracy"].values()) and os.path.getsize(tmp_path / "transfer.png")
