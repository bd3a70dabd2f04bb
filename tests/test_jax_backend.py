"""The backend-neutral half of kerasarch on JAX: every registered model, the custom layers, weight loading and
feature extraction, run under ``KERAS_BACKEND=jax`` (CPU).

Keras chooses its backend when it is first imported, so every check runs in a subprocess started with
``KERAS_BACKEND=jax``: one runs the suite's own backend-neutral tests (:data:`NEUTRAL_TESTS`, numpy references
and file round trips written once, in their own modules); four build every registered model (:data:`GROUPS`, the
heavy ``spec.slow`` ones included) at its smallest input size and compare its logits with TensorFlow's under the
same random weights (:func:`registry_logits`); one loads a ``.weights.h5`` saved under TensorFlow through
``build_model(weights=path)``. Part of the default run (marker ``jax``; ``-m "not jax"`` leaves them out).

Cost of the registry test, measured with ``pytest -p no:xdist -s tests/test_jax_backend.py -k registry`` on the
2-core development machine (load about 3 from other jobs): the four groups took 30 + 27 + 45 + 39 s = 141 s one
after the other, 2 min 55 s of CPU; the 56 models' build-and-forward times (:data:`SECONDS`, printed per model by
the test with ``-s``) add up to 97 s on TensorFlow and 121 s on JAX (a group's JAX subprocess runs while the
TensorFlow side computes). The two deepest models take a seventh (ResNet-1202: 9.0 s + 7.5 s; pre-activation
ResNet-1001: 8.8 s + 5.3 s); 31 take under 3 s. The seven-model version this replaces took 38 s; ``pytest -n 2``
spreads the groups over its two workers, so the whole registry adds about 1 min of wall time to the default run
(2 min while the machine was busier: the same four groups took 300 s in a row then). What makes it affordable:
variables left uninitialised and set from numpy (random initialisers cost JAX one compilation per weight shape:
23 s for DenseNet-121's build), the smallest input size, at most 10 classes, and the choice between one XLA
program and op by op (:data:`JIT_ABOVE_DISTINCT`). Architectures, widths and depths are the registered ones.

The TensorFlow-only parts (``train()`` and its ``tf.distribute`` strategies, export) refuse another backend with
one line; the last test checks that they do.
"""

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time

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

# The registry test: every registered model, built on each backend at its smallest input size
# (``spec.min_input_size``, batch of 2, at most 10 classes), with the same random weights, in groups of similar cost
# that `pytest -n 2` runs side by side (one JAX subprocess each). SECONDS (measured, see the module docstring) only
# balances the groups; a model registered later counts as the median and is tested all the same.
SECONDS = {
    "alexnet": 2.0,
    "alexnet_owt": 2.7,
    "densenet121": 5.6,
    "densenet161": 4.3,
    "densenet169": 6.3,
    "densenet201": 7.5,
    "densenet_bc_100_12": 2.4,
    "densenet_bc_190_40": 9.7,
    "fractalnet20": 4.4,
    "fractalnet40": 13.2,
    "googlenet": 1.5,
    "googlenet_bn": 5.2,
    "lenet5": 0.8,
    "lenet5_relu": 0.6,
    "nin": 1.8,
    "nin_cifar": 0.9,
    "preact_resnet1001": 14.1,
    "preact_resnet164": 1.9,
    "resnet101": 4.8,
    "resnet101_keras": 3.6,
    "resnet101v2": 6.6,
    "resnet110": 2.5,
    "resnet110_sd": 1.6,
    "resnet1202": 16.5,
    "resnet152": 5.5,
    "resnet152_keras": 7.9,
    "resnet152v2": 7.8,
    "resnet18": 1.5,
    "resnet20": 1.9,
    "resnet32": 1.6,
    "resnet34": 1.8,
    "resnet44": 0.8,
    "resnet50": 2.2,
    "resnet50_keras": 3.8,
    "resnet50v2": 3.2,
    "resnet56": 0.8,
    "resnext101_32x8d": 10.0,
    "resnext29_16x64d": 4.8,
    "resnext29_8x64d": 3.3,
    "resnext50_32x4d": 5.1,
    "squeezenet1_0": 0.9,
    "squeezenet1_1": 0.6,
    "vgg11": 1.7,
    "vgg11_bn": 2.1,
    "vgg13": 1.5,
    "vgg13_bn": 1.5,
    "vgg16": 1.8,
    "vgg16_bn": 2.7,
    "vgg19": 2.3,
    "vgg19_bn": 2.2,
    "wide_resnet101_2": 7.3,
    "wide_resnet50_2": 3.4,
    "wrn16_8": 1.5,
    "wrn28_10": 3.6,
    "zfnet": 1.3,
    "zfnet_large": 1.5,
}
N_GROUPS = 4
# |JAX - TF| <= RTOL * max(1, max |TF|): the largest seen here was 3.8e-6 (pre-activation ResNet-1001); LeNet-5 with
# its subsampling layer 0.1% off on JAX only gave 1.5e-4 (tried: the test fails).
RTOL = 3e-5
MAX_CLASSES = 10
# On JAX, a model whose layers are mostly distinct (more than this fraction of distinct layer type, input and
# output shapes: DenseNets, VGG, GoogLeNet, AlexNet ...) is compiled as one program (`jax.jit`); one made of
# repeated blocks (the ResNets, FractalNets) runs op by op, each distinct operation compiled once per process. XLA's
# compilation of one program grows faster than the graph: ResNet-1202's took 559 s here (busy machine), op by op 17 s.
JIT_ABOVE_DISTINCT = 0.5


def balanced_groups(names, seconds, n):
    """``names`` in ``n`` groups of similar total cost (longest first, each to the least loaded group)."""
    default = float(np.median(list(seconds.values())))
    groups, load = [[] for _ in range(n)], [0.0] * n
    for name in sorted(names, key=lambda m: (-seconds.get(m, default), m)):
        i = load.index(min(load))
        groups[i].append(name)
        load[i] += seconds.get(name, default)
    return [sorted(g) for g in groups]


GROUPS = balanced_groups(kerasarch.list_models(), SECONDS, N_GROUPS)


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


def run_on_jax(code, timeout=600, background=False):
    """Runs ``code`` (Python source) in a JAX subprocess from the repository root; its stdout and stderr. With
    ``background=True`` it returns at once a function that waits for the subprocess and returns its output."""
    prologue = "import keras\nassert keras.backend.backend() == 'jax', keras.backend.backend()\n"
    process = subprocess.Popen(
        [sys.executable, "-c", prologue + textwrap.dedent(code)],
        cwd=ROOT,
        env=jax_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait():
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            raise AssertionError(f"the JAX subprocess ran past {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
        assert process.returncode == 0, (
            f"the JAX subprocess failed ({process.returncode}):\n{stdout[-3000:]}\n{stderr[-5000:]}"
        )
        return stdout

    if background:
        return wait
    try:
        return wait()
    finally:
        if process.poll() is None:
            process.kill()


def test_backend_neutral_tests_pass_on_jax():
    out = run_on_jax(f"""
        import sys, pytest
        sys.exit(pytest.main(["-q", "-p", "no:xdist", "-p", "no:randomly", "-rfEs", *{NEUTRAL_TESTS!r}]))
    """)
    summary = out.strip().splitlines()[-1]
    assert "passed" in summary and not any(w in summary for w in ("skipped", "deselected", "xfail")), out[-3000:]


def random_weights(variables, seed):
    """Values for ``variables``, drawn with numpy so that both backends get the same ones: kernels (two or more
    axes) ~ N(0, 1/fan_in); vectors (biases, BatchNorm's gamma, beta and moving statistics, LeNet's coefficients)
    ~ U(0.5, 1.5), positive so that every moving variance is valid; integer state (seed generators) zero. No branch
    is silenced by a zero initialiser (``zero_init_residual``)."""
    rng = np.random.default_rng(seed)
    values = []
    for v in variables:
        shape, dtype = tuple(v.shape), np.dtype(v.dtype)
        if not np.issubdtype(dtype, np.floating):
            values.append(np.zeros(shape, dtype))
        elif len(shape) >= 2:
            values.append(rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[:-1])), shape).astype(dtype))
        else:
            values.append(rng.uniform(0.5, 1.5, shape).astype(dtype))
    return values


def registry_logits(name, seed, max_classes, jit_above_distinct):
    """Builds ``name`` at its smallest input size and returns its logits for a seeded batch of 2 under
    :func:`random_weights`, the variables' paths and the seconds it took, on the running backend.

    The model is built in a ``keras.StatelessScope`` that leaves its variables uninitialised (the random
    initialisers would cost more than the check: on JAX they compile one program per weight shape, 23 s for
    DenseNet-121 here) and runs through ``model.stateless_call`` with the drawn values; on JAX under ``jax.jit``
    (one compilation) when more than ``jit_above_distinct`` of its layers are distinct, else op by op."""
    start = time.perf_counter()
    spec = kerasarch.get_spec(name)
    size = spec.min_input_size
    shape = (size, size, spec.input_shape[-1])
    with keras.StatelessScope(initialize_variables=False):
        model = kerasarch.build_model(
            name, input_shape=shape, classes=min(spec.classes, max_classes), classifier_activation=None
        )
        variables = model.trainable_variables + model.non_trainable_variables
        values = random_weights(variables, seed)
        n = len(model.trainable_variables)
        x = np.random.default_rng(seed).uniform(0, 1, size=(2, *shape)).astype("float32")

        def logits(trainable, non_trainable, x):
            outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return outputs["predictions"] if isinstance(outputs, dict) else outputs

        shapes = keras.tree.map_structure(
            lambda t: tuple(t.shape), [[layer.input, layer.output] for layer in model.layers]
        )
        distinct = len({(type(layer).__name__, repr(s)) for layer, s in zip(model.layers, shapes)}) / len(model.layers)
        compiled = keras.backend.backend() == "jax" and distinct > jit_above_distinct
        if compiled:
            import jax

            logits = jax.jit(logits)
        y = np.asarray(logits(values[:n], values[n:], x), dtype="float64")
    keras.backend.clear_session()
    return {
        "paths": [v.path for v in variables],
        "y": y.tolist(),
        "seconds": round(time.perf_counter() - start, 2),
        "layers": len(model.layers),
        "jit": compiled,
    }


@pytest.mark.parametrize("group", range(N_GROUPS), ids=[f"part{i + 1}of{N_GROUPS}" for i in range(N_GROUPS)])
def test_registry_models_give_tensorflows_outputs_on_jax(group):
    """Every registered model, built on JAX with the weights TensorFlow used, gives TensorFlow's logits."""
    assert keras.backend.backend() == "tensorflow"
    names = GROUPS[group]
    assert sorted(n for g in GROUPS for n in g) == kerasarch.list_models()
    shared = "".join(textwrap.dedent(inspect.getsource(f)) + "\n\n" for f in (random_weights, registry_logits))
    job = run_on_jax(
        f"""
import json, time
import numpy as np, keras, kerasarch
{shared}
report = {{name: registry_logits(name, i, {MAX_CLASSES}, {JIT_ABOVE_DISTINCT}) for i, name in enumerate({names!r})}}
print("REPORT " + json.dumps(report))
""",
        background=True,
    )
    tf = {name: registry_logits(name, i, MAX_CLASSES, JIT_ABOVE_DISTINCT) for i, name in enumerate(names)}
    out = job()
    jax = json.loads(next(line for line in out.splitlines() if line.startswith("REPORT "))[7:])
    assert sorted(jax) == sorted(names)
    print(f"\n{'model':20} {'layers':>6} {'TF s':>6} {'JAX s':>6} {'rel diff':>8}  JAX")
    for name in names:
        ref, got = np.array(tf[name]["y"]), np.array(jax[name]["y"])
        diff = float(np.abs(got - ref).max() / max(1.0, np.abs(ref).max())) if got.shape == ref.shape else np.nan
        how = "jit" if jax[name]["jit"] else "op by op"
        seconds = f"{tf[name]['seconds']:6.2f} {jax[name]['seconds']:6.2f}"
        print(f"{name:20} {tf[name]['layers']:6d} {seconds} {diff:8.1e}  {how}")
    total = [sum(r["seconds"] for r in side.values()) for side in (tf, jax)]
    print(f"{'total':20} {'':6} {total[0]:6.1f} {total[1]:6.1f}")
    bad = {}
    for name in names:
        ref, got = np.array(tf[name]["y"]), np.array(jax[name]["y"])
        classes = min(kerasarch.get_spec(name).classes, MAX_CLASSES)
        scale = float(np.abs(ref).max())
        if jax[name]["paths"] != tf[name]["paths"]:
            bad[name] = "the variables differ between the backends"
        elif got.shape != (2, classes) or not np.isfinite(got).all() or not np.isfinite(ref).all():
            bad[name] = f"logits of shape {got.shape}, finite: {np.isfinite(got).all()}/{np.isfinite(ref).all()}"
        elif np.abs(got - ref).max() > RTOL * max(1.0, scale) or (got.argmax(-1) != ref.argmax(-1)).any():
            bad[name] = f"max |JAX - TF| = {np.abs(got - ref).max():.3g} at scale {scale:.3g}"
    assert not bad, f"JAX outputs differ from TensorFlow's on the same weights: {bad}"


def test_a_weights_file_saved_on_tensorflow_loads_on_jax(tmp_path):
    """The user's path across backends: a ``.weights.h5`` saved under TensorFlow, loaded by
    ``build_model(..., weights=path)`` (kerasarch's own loader) under JAX, gives TensorFlow's logits."""
    model = kerasarch.build_model("resnet20", classifier_activation=None)
    x = np.random.default_rng(0).uniform(0, 1, size=(2, 32, 32, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    model.save_weights(tmp_path / "resnet20.weights.h5")
    expected = np.asarray(model(x, training=False))
    run_on_jax(f"""
        import os, numpy as np, kerasarch
        folder = {str(tmp_path)!r}
        model = kerasarch.build_model(
            "resnet20", classifier_activation=None, weights=os.path.join(folder, "resnet20.weights.h5")
        )
        y = model.predict_on_batch(np.load(os.path.join(folder, "x.npy")))
        np.save(os.path.join(folder, "y.npy"), np.asarray(y))
    """)
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(expected).max())))
    assert (got.argmax(-1) == expected.argmax(-1)).all()


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
