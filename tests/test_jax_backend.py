"""The backend-neutral half of kerasarch on JAX: the registry's models, the custom layers, weight loading and
feature extraction, run under ``KERAS_BACKEND=jax`` (CPU).

Keras chooses its backend when it is first imported, so every check runs in a subprocess started with
``KERAS_BACKEND=jax``: one runs the suite's own backend-neutral tests (:data:`NEUTRAL_TESTS`, numpy references
and file round trips written once, in their own modules), two build registered models (one per building block;
every other default-sized one with ``-m slow``) and compare their outputs with TensorFlow's on the same weights,
saved here by the TensorFlow backend to a ``.weights.h5`` file. Part of the default run (marker ``jax``;
``-m "not jax"`` leaves them out).

The TensorFlow-only parts (``train()`` and its ``tf.distribute`` strategies, export) refuse another backend with
one line; the last test checks that they do.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import kerasarch

pytestmark = pytest.mark.jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The suite's tests that hold on any backend: numpy references of the custom layers, weight files written by the
# test (keras and torch layouts) and feature extraction. A renamed test fails the run here ("not found").
NEUTRAL_TESTS = [
    "tests/test_lrn.py::test_lrn_matches_caffe_formula",
    "tests/test_lenet.py::test_c3_masks_weights_and_matches_numpy",
    "tests/test_lenet.py::test_subsampling_matches_numpy",
    "tests/test_lenet.py::test_untrained_subsampling_is_an_average_pool",
    "tests/test_lenet.py::test_scaled_tanh",
    "tests/test_lenet.py::test_rbf_is_squared_distance_to_the_centres",
    "tests/test_fractalnet.py::test_join_is_the_mean_at_inference",
    "tests/test_fractalnet.py::test_global_selection_at_one_join",
    "tests/test_resnet.py::test_zero_pad_shortcut_against_numpy",
    "tests/test_resnet.py::test_stochastic_depth_layer_per_sample_rate_and_scale",
    "tests/test_resnet.py::test_stochastic_depth_layer_per_batch_drops_the_whole_batch",
    "tests/test_weights.py::test_pth_reader_without_torch",
    "tests/test_weights.py::test_vgg_bn_torch_checkpoint_round_trip_without_torch[.pth]",
    "tests/test_features.py::test_every_paper_tap_equals_the_layer_output_of_the_full_model[lenet5-shape0]",
    "tests/test_features.py::test_resnet_stage_taps_continue_into_the_full_models_output",
    "tests/test_features.py::test_extractor_shares_the_models_weights",
]

# The default run compares one model per building block (LeNet-5's C3 table, subsampling and RBF; mlpconv;
# fire modules; option-A shortcuts; basic residual blocks; dense blocks; inception modules with LRN), in two
# groups of similar cost that `pytest -n 2` runs side by side; `-m slow` compares every other default-sized
# registered model (the heavy ones, ``spec.slow``, are left to the TensorFlow suite).
GROUPS = {
    "inception_lenet_nin": ["googlenet", "lenet5", "nin_cifar"],
    "residual_dense_fire": ["densenet_bc_100_12", "resnet18", "resnet20", "squeezenet1_1"],
}
OTHERS = [
    n for n in kerasarch.list_models() if not kerasarch.get_spec(n).slow and all(n not in g for g in GROUPS.values())
]
GROUPS_AND_OTHERS = [*GROUPS, pytest.param("others", marks=pytest.mark.slow)]
GROUPS["others"] = OTHERS


def jax_env():
    """The environment of a JAX subprocess: CPU only, and XLA's cheapest compilation (eager JAX compiles every
    operation for each new shape; the checks are numerical, not timed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "KERAS_BACKEND"))}
    env.update(
        {
            "KERAS_BACKEND": "jax",
            "JAX_PLATFORMS": "cpu",
            "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        }
    )
    return env


def run_on_jax(code, timeout=600):
    """Runs ``code`` (Python source) in a JAX subprocess from the repository root; its stdout and stderr."""
    prologue = "import keras\nassert keras.backend.backend() == 'jax', keras.backend.backend()\n"
    done = subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        cwd=ROOT,
        env=jax_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"the JAX subprocess failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done.stdout


def test_backend_neutral_tests_pass_on_jax():
    out = run_on_jax(f"""
        import sys, pytest
        sys.exit(pytest.main(["-q", "-p", "no:xdist", "-p", "no:randomly", "-rfEs", *{NEUTRAL_TESTS!r}]))
    """)
    summary = out.strip().splitlines()[-1]
    assert "passed" in summary and not any(w in summary for w in ("skipped", "deselected", "xfail")), out[-3000:]


def _small_input_shape(spec):
    size = max(spec.min_input_size, 32)
    return (size, size, spec.input_shape[-1])


@pytest.mark.parametrize("group", GROUPS_AND_OTHERS)
def test_registry_models_give_tensorflows_outputs_on_jax(group, tmp_path):
    """Each model built on JAX, with the weights the TensorFlow backend saved, gives TensorFlow's logits."""
    assert keras.backend.backend() == "tensorflow"
    names = GROUPS[group]
    for i, name in enumerate(names):
        spec = kerasarch.get_spec(name)
        shape = _small_input_shape(spec)
        model = kerasarch.build_model(name, input_shape=shape, classifier_activation=None)
        x = np.random.default_rng(i).uniform(0, 1, size=(2, *shape)).astype("float32")
        outputs = model(x, training=False)
        y = outputs["predictions"] if isinstance(outputs, dict) else outputs
        model.save_weights(tmp_path / f"{name}.weights.h5")
        np.savez(tmp_path / f"{name}.npz", x=x, y=np.asarray(y))
        keras.backend.clear_session()
    out = run_on_jax(f"""
        import json, numpy as np, keras, kerasarch
        report = {{}}
        for name in {names!r}:
            ref = np.load(f"{tmp_path}/{{name}}.npz")
            spec = kerasarch.get_spec(name)
            model = kerasarch.build_model(name, input_shape=ref["x"].shape[1:], classifier_activation=None)
            model.load_weights(f"{tmp_path}/{{name}}.weights.h5")
            outputs = model.predict_on_batch(ref["x"])  # one XLA compilation, not one per operation
            y = np.asarray(outputs["predictions"] if isinstance(outputs, dict) else outputs)
            same_top1 = bool((y.argmax(-1) == ref["y"].argmax(-1)).all())
            report[name] = {{"shape": list(y.shape), "diff": float(np.abs(y - ref["y"]).max()),
                            "scale": float(np.abs(ref["y"]).max()), "top1": same_top1}}
            keras.backend.clear_session()
        print("REPORT " + json.dumps(report))
    """)
    report = json.loads(next(line for line in out.splitlines() if line.startswith("REPORT "))[7:])
    assert sorted(report) == sorted(names)
    bad = {
        n: r
        for n, r in report.items()
        if r["shape"] != [2, kerasarch.get_spec(n).classes] or r["diff"] > 1e-4 * max(1.0, r["scale"]) or not r["top1"]
    }
    assert not bad, f"JAX outputs differ from TensorFlow's on the same weights: {bad}"


def test_tensorflow_only_parts_refuse_jax_with_one_clear_line():
    out = run_on_jax("""
        import numpy as np
        import tensorflow as tf
        import kerasarch
        from kerasarch import training
        from kerasarch.export import export_model

        model = kerasarch.build_model("lenet5")
        images = tf.data.Dataset.from_tensor_slices((np.zeros((8, 32, 32, 1), "float32"), np.arange(8) % 2))
        for what, call in [("train", lambda: training.train(model, images, epochs=1, batch_size=4)),
                           ("strategy", lambda: training.make_strategy("auto")),
                           ("export", lambda: export_model(model, "/nonexistent/out"))]:
            try:
                call()
            except RuntimeError as e:
                print(what, "|", e)
            else:
                print(what, "| no error")
    """)
    lines = dict(line.split(" | ", 1) for line in out.splitlines() if " | " in line)
    assert set(lines) == {"train", "strategy", "export"}, out
    for what, message in lines.items():
        assert "needs the TensorFlow backend" in message and "KERAS_BACKEND='jax'" in message, (what, message)
