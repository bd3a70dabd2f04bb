"""Distribution: two logical CPU devices give the one-device update; two worker processes on 127.0.0.1 finish an
epoch with identical weights. Both need fresh processes (device configuration and collectives are fixed at
TensorFlow's start-up), so they run as subprocesses with bounded timeouts."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COMMON = r"""
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

def model_fn():
    import keras
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(6, 5, strides=2, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(32, activation="relu", name="hidden")(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="predictions")(h), name="small")

def mnist_subset():
    import tensorflow as tf
    from kerasarch import data
    (x, y), _ = data.load_arrays("mnist5k")
    return tf.data.Dataset.from_tensor_slices((x[::10].astype("float32"), y[::10]))  # 400 images

RECIPE = {"epochs": 1, "batch_size": 40, "lr": 0.05, "augment": "lenet", "weight_decay": 1e-4}
"""

_MIRRORED = (
    _COMMON
    + r"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from kerasarch import training

results = {}
for name, strategy in (("one", None), ("two", "mirrored")):
    res = training.train(model_fn, mnist_subset(), recipe=RECIPE, strategy=strategy, precision="float32", seed=3,
                         verbose=0)
    results[name] = [w.numpy() for w in res.model.weights]
    results[name + "_replicas"] = res.recipe["run"]["replicas"]
    results[name + "_loss"] = res.history["loss"][0]
np.savez(sys.argv[1], *results["one"], *results["two"])
print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}))
"""
)

_WORKER = (
    _COMMON
    + r"""
index, ports, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                      "task": {"type": "worker", "index": index}})
from kerasarch import training
strategy = training.make_strategy("auto")  # multi-worker from TF_CONFIG, before any other TensorFlow op
import numpy as np
res = training.train(model_fn, mnist_subset(), recipe=RECIPE, strategy=strategy, precision="float32", seed=3,
                     out_dir=os.path.join(out, "run"), verbose=0)
np.savez(os.path.join(out, f"worker{index}.npz"), *[w.numpy() for w in res.model.weights])
print(json.dumps({"replicas": res.recipe["run"]["replicas"], "strategy": res.recipe["run"]["strategy"],
                  "chief": training.is_chief(strategy), "loss": res.history["loss"][0]}))
"""
)

_SINGLE = (
    _COMMON
    + r"""
import numpy as np
from kerasarch import training
res = training.train(model_fn, mnist_subset(), recipe=RECIPE, strategy=None, precision="float32", seed=3, verbose=0)
np.savez(sys.argv[1], *[w.numpy() for w in res.model.weights])
"""
)


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _weights(path):
    z = np.load(path)
    return [z[f"arr_{i}"] for i in range(len(z.files))]


def test_two_logical_cpus_give_the_one_device_update(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(textwrap.dedent(_MIRRORED))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "w.npz")], env=_env(), timeout=400, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["one_replicas"] == 1 and info["two_replicas"] == 2
    weights = _weights(tmp_path / "w.npz")
    one, two = weights[: len(weights) // 2], weights[len(weights) // 2 :]
    # Ten steps of SGD with momentum moved the weights well away from their (identical) start ...
    assert max(np.abs(a).max() for a in one) > 0
    # ... to the same place: each replica's loss is divided by the global batch and the gradients summed.
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert info["one_loss"] == pytest.approx(info["two_loss"], rel=1e-4)


def _free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_finish_an_epoch_with_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    single = tmp_path / "single.py"
    single.write_text(textwrap.dedent(_SINGLE))
    ports = ",".join(map(str, _free_ports(2)))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), ports, str(tmp_path)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=500) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    infos = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [i["replicas"] for i in infos] == [2, 2] and [i["chief"] for i in infos] == [True, False]
    assert infos[0]["strategy"] == "MultiWorkerMirroredStrategy" and infos[0]["loss"] == infos[1]["loss"]
    w0, w1 = _weights(tmp_path / "worker0.npz"), _weights(tmp_path / "worker1.npz")
    for a, b in zip(w0, w1):
        np.testing.assert_array_equal(a, b)
    # Only the chief wrote the run folder; and the two-worker epoch is the one-process epoch.
    assert os.path.exists(tmp_path / "run" / "model.keras")
    done = subprocess.run(
        [sys.executable, str(single), str(tmp_path / "single.npz")],
        env=_env(),
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for a, b in zip(w0, _weights(tmp_path / "single.npz")):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
