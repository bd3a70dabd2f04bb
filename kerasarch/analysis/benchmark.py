"""Measures a model on this machine: latency at batch 1, throughput at a larger batch, and peak memory.

Method (also in ``docs/analysis.md``):

- The model is built (random weights) and run through ``tf.function(model(x, training=False))`` (XLA off unless
  asked), on one fixed random batch. ``warmup`` calls (tracing, allocator warm-up) are discarded; the figure is
  the median of ``runs`` timed calls, each synchronised by copying the output to NumPy.
- Peak memory is the increase of the process's resident set size (RSS) over its value just before the model
  is built, up to the end of the last timed call: Linux's high-water mark ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``, or, where that is not possible, a 5 ms sampling thread. It includes the weights,
  their initialisers' temporaries, TensorFlow's kernels and caches and the activations of the largest batch. On a
  GPU, TensorFlow's ``get_memory_info(...)["peak"]`` is reported as well.
- ``measure_isolated`` runs each model in a fresh Python process, so that one model's allocator cache does not
  hide the next one's memory and the order of the models does not matter.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import keras
import numpy as np

from kerasarch.analysis.profile import dtype_itemsize, profile, resolve_model
from kerasarch.training.precision import dtype_policy as precision_policy

if keras.backend.backend() == "tensorflow":
    import tensorflow as tf

__all__ = ["machine_info", "measure", "measure_isolated", "PeakRSS"]

_EVENT = "@@kerasarch-bench "


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def _hwm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


class PeakRSS:
    """Context manager: ``peak - baseline`` of the process RSS in bytes while the block runs (see module doc)."""

    def __init__(self, interval=0.005):
        self.interval, self.method = interval, None
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.baseline = _rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            _hwm_bytes()
            self.method = "VmHWM"
        except OSError:
            self.method = "sampling"
            self.peak = self.baseline
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def current_delta(self):
        return max((_hwm_bytes() if self.method == "VmHWM" else self.peak) - self.baseline, 0)

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.peak = _hwm_bytes()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
        return False

    @property
    def delta(self):
        return max(self.peak - self.baseline, 0)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """What the measurements ran on: CPU, cores available, accelerators, library versions, load."""
    info = {
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "platform": platform.platform(),
    }
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    if keras.backend.backend() == "tensorflow":
        info["tensorflow"] = tf.__version__
        gpus = tf.config.list_physical_devices("GPU")
        info["gpus"] = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return info


def _runner(model, jit_compile):
    if keras.backend.backend() == "tensorflow":
        fn = tf.function(lambda x: model(x, training=False), jit_compile=jit_compile, reduce_retracing=True)

        def run(x):
            return [np.asarray(t) for t in keras.tree.flatten(fn(x))]

        return run, lambda a: tf.constant(a)
    return (lambda x: [np.asarray(t) for t in keras.tree.flatten(model.predict_on_batch(x))]), (lambda a: a)


def measure(
    model_name,
    *,
    input_shape=None,
    batch_sizes=(1, 32),
    runs=5,
    warmup=1,
    dtype_policy=None,
    jit_compile=False,
    progress=None,
):
    """Builds ``model_name`` (a registry name or ``.keras`` path) and measures it in this process.

    Args:
        model_name: registry name or ``.keras`` file.
        input_shape: per-example input shape; default: the spec's or the file's.
        batch_sizes: the batch sizes timed; the first gives the latency, the others throughputs.
        runs: timed calls per batch size (the median is reported).
        warmup: discarded calls per batch size before timing.
        dtype_policy: a Keras dtype policy to build under (``"mixed_bfloat16"`` ...); default float32.
        jit_compile: compile with XLA.
        progress: ``progress(stage, done, total)`` callback.

    Returns:
        A JSON-friendly dict: analytic counts (parameters, GMACs, activations) and the measurements.
    """
    total = 1 + len(batch_sizes) * (warmup + runs)
    done = 0

    def tick(stage):
        nonlocal done
        done += 1
        if progress is not None:
            progress(stage, done, total)

    with precision_policy(dtype_policy or "float32"):
        return _measure(model_name, input_shape, batch_sizes, runs, warmup, jit_compile, tick)


def _measure(model_name, input_shape, batch_sizes, runs, warmup, jit_compile, tick):
    gpu = keras.backend.backend() == "tensorflow" and bool(tf.config.list_logical_devices("GPU"))
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
    gc.collect()
    result = {
        "model": os.path.basename(str(model_name)),
        "dtype_policy": keras.config.dtype_policy().name,
        "runs": runs,
        "warmup": warmup,
        "jit_compile": bool(jit_compile),
    }
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        model, spec = resolve_model(model_name, input_shape)
        result["build_s"] = round(time.perf_counter() - t0, 3)
        p = profile(model)
        tick("built")
        run, to_tensor = _runner(model, jit_compile)
        rng = np.random.default_rng(0)
        shape = tuple(model.inputs[0].shape[1:])
        timings = {}
        for b in batch_sizes:
            x = to_tensor(
                rng.uniform(0, 1, size=(b, *shape)).astype(keras.backend.standardize_dtype(model.inputs[0].dtype))
            )
            for _ in range(warmup):
                run(x)
                tick(f"batch {b} warm-up")
            times = []
            for i in range(runs):
                t = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - t)
                tick(f"batch {b} run {i + 1}/{runs}")
            timings[b] = times
            del x
    at_spec_size = spec is not None and tuple(p.input_shape) == tuple(spec.input_shape)
    result.update(
        {
            "spec": spec is not None,
            "input_shape": list(p.input_shape),
            "params": p.total_params,
            "trainable_params": p.trainable_params,
            "macs": p.total_macs,
            "gmacs": p.gmacs,
            "other_gops": round(p.total_other_ops / 1e9, 4),
            "activations": p.total_activations,
            "activation_mb": round(p.activation_bytes(batch_size=1) / 1e6, 2),
            "working_set_mb": round(p.peak_activation_bytes(batch_size=1) / 1e6, 3),
            "param_mb": round(p.total_params * dtype_itemsize(p.variable_dtype) / 1e6, 2),
            # Published figures hold at the spec's input size only.
            "ref_gmacs": getattr(spec, "gmacs", None) if at_spec_size else None,
            "top1": getattr(spec, "top1", None) if at_spec_size else None,
            "family": getattr(spec, "family", None),
            "paper": getattr(spec, "paper", None),
            "batch_sizes": list(batch_sizes),
            "times_s": {str(b): [round(t, 6) for t in ts] for b, ts in timings.items()},
            "peak_rss_mb": round(mem.delta / 1e6, 1),
            "baseline_rss_mb": round(mem.baseline / 1e6, 1),
            "memory_method": mem.method,
        }
    )
    first = batch_sizes[0]
    result["latency_ms"] = round(statistics.median(timings[first]) * 1e3, 3)
    result["latency_batch"] = first
    for b in batch_sizes[1:]:
        result[f"throughput_b{b}"] = round(b / statistics.median(timings[b]), 2)
    if gpu:
        result["gpu_peak_mb"] = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 1e6, 1)
    del model
    keras.backend.clear_session(free_memory=True)
    return result


def measure_isolated(model_name, progress=None, **kwargs):
    """Runs :func:`measure` in a fresh Python process (see the module docstring); same arguments and result."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    payload = json.dumps({"model_name": os.fspath(model_name), **kwargs})
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kerasarch.analysis.benchmark", payload],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        result = None
        for line in proc.stdout:
            if not line.startswith(_EVENT):
                continue
            event = json.loads(line[len(_EVENT) :])
            if event["event"] == "progress" and progress is not None:
                progress(event["stage"], event["done"], event["total"])
            elif event["event"] == "result":
                result = event["result"]
        code = proc.wait()
        if code != 0 or result is None:
            err.seek(0)
            tail = err.read()[-3000:]
            raise RuntimeError(f"Measuring {model_name} failed (exit code {code}):\n{tail}")
    return result


def _child_main(argv):
    kwargs = json.loads(argv[0])
    if "batch_sizes" in kwargs:
        kwargs["batch_sizes"] = tuple(kwargs["batch_sizes"])
    if kwargs.get("input_shape") is not None:
        kwargs["input_shape"] = tuple(kwargs["input_shape"])

    def progress(stage, done, total):
        print(_EVENT + json.dumps({"event": "progress", "stage": stage, "done": done, "total": total}), flush=True)

    result = measure(kwargs.pop("model_name"), progress=progress, **kwargs)
    print(_EVENT + json.dumps({"event": "result", "result": result}), flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
