"""Which bfloat16 training path is fastest on this CPU, and is it correct: ResNet-50 training steps under

* ``float32`` — the reference;
* ``mixed_bfloat16`` — Keras' dtype policy (bfloat16 compute, float32 variables), what ``--precision auto``
  picks on CPUs with AVX512-BF16/AMX;
* ``*_keras_bn`` — the same with Keras' own BatchNormalization computation (moments + element-wise ops, in
  float32 under the mixed policy) instead of kerasarch's, which runs TensorFlow's ``FusedBatchNormV3``
  (``kerasarch.layers.normalization``);
* ``onednn_bf16_rewrite`` — a float32 model with TensorFlow's grappler rewrite
  ``auto_mixed_precision_onednn_bfloat16`` (``tf.config.optimizer.set_experimental_options``), which turns the
  graph's convolutions/matmuls to bfloat16 behind Keras' back;
* ``*_jit`` — ``jit_compile=True`` (XLA); ``mixed_bfloat16_threads_2_1`` — 2 intra-op threads, 1 inter-op;
  ``mixed_bfloat16_raw_sgd`` — the momentum update as TensorFlow's one-op ``ResourceApplyKerasMomentum``;
* torchvision in float32 and with ``torch.autocast("cpu", torch.bfloat16)``.

``--profile`` traces two steps of each Keras variant with TensorFlow's profiler and prints its top op types.

Each variant lives in its own long-lived process (the grappler option is process-wide; TensorFlow and PyTorch
do not share a process well), built from the same seed, and the rounds are interleaved. Correctness: each Keras
variant's gradient at the same initial weights on the same batch, compared with float32's by cosine similarity
(float32 under XLA gives ~1.0; bfloat16 keeps ~3 significant digits, and at random initialisation and a small
batch its gradient drifts further: ResNet-18, batch 2 gave 0.91 for Keras' policy — compare the bfloat16 paths
with each other). Writes ``OUT.json``.

    python bench/precision.py --out bench/results/cpu_precision_resnet50
    python bench/precision.py --variants float32,mixed_bfloat16 --steps 1 --rounds 1 --model resnet18   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# variant: (Keras dtype policy, jit_compile, grappler bfloat16 rewrite, BatchNormalization computation, threads,
# optimizer update).
# BatchNormalization: "fused" — kerasarch's layer on TensorFlow's FusedBatchNormV3 (what kerasarch models use);
# "keras" — Keras' own computation (moments + element-wise ops), the same layer with ``fused=False``.
# threads: None — TensorFlow's defaults; (intra, inter) — ``tf.config.threading``'s pools.
# optimizer update: "keras" — ``keras.optimizers.SGD(momentum=0.9).apply`` (a few element-wise ops per variable);
# "raw" — TensorFlow's one-op ``ResourceApplyKerasMomentum`` per variable (the same update rule).
KERAS_VARIANTS = {
    "float32": ("float32", False, False, "fused", None, "keras"),
    "mixed_bfloat16": ("mixed_bfloat16", False, False, "fused", None, "keras"),
    "float32_keras_bn": ("float32", False, False, "keras", None, "keras"),
    "mixed_bfloat16_keras_bn": ("mixed_bfloat16", False, False, "keras", None, "keras"),
    "onednn_bf16_rewrite": ("float32", False, True, "fused", None, "keras"),
    "onednn_bf16_rewrite_keras_bn": ("float32", False, True, "keras", None, "keras"),
    "float32_jit": ("float32", True, False, "fused", None, "keras"),
    "mixed_bfloat16_jit": ("mixed_bfloat16", True, False, "fused", None, "keras"),
    "mixed_bfloat16_threads_2_1": ("mixed_bfloat16", False, False, "fused", (2, 1), "keras"),
    "mixed_bfloat16_raw_sgd": ("mixed_bfloat16", False, False, "fused", None, "raw"),
}
TORCH_VARIANTS = {"torch_float32": "float32", "torch_bfloat16": "mixed_bfloat16"}
DEFAULT = (
    "float32,mixed_bfloat16,float32_keras_bn,mixed_bfloat16_keras_bn,onednn_bf16_rewrite,torch_float32,torch_bfloat16"
)


def keras_worker(variant, model_name, batch, grad_path):
    import keras
    import numpy as np
    import tensorflow as tf

    import kerasarch
    from kerasarch.layers.normalization import BatchNormalization

    policy, jit, rewrite, bn, threads, update = KERAS_VARIANTS[variant]
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    if rewrite:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = kerasarch.build_model(model_name, classifier_activation=None)
    for layer in model.layers:  # traced below, so the switch takes effect
        if isinstance(layer, BatchNormalization):
            layer.fused = bn == "fused"
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, (batch, *model.input_shape[1:])).astype("float32"))
    y = tf.constant(rng.integers(0, model.output_shape[-1], (batch,)).astype("int32"))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)  # Keras' own; "raw": the fused kernel of kerasarch's SGD
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit)
    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, tf.cast(model(x, training=True), "float32"))
        return loss, tape.gradient(loss, model.trainable_variables)

    accumulators = [tf.Variable(tf.zeros_like(v.value)) for v in model.trainable_variables] if update == "raw" else []

    def apply_raw(grads):  # accum = 0.9 * accum - lr * grad; var += accum: Keras' SGD rule in one op
        for grad, var, accum in zip(grads, model.trainable_variables, accumulators):
            tf.raw_ops.ResourceApplyKerasMomentum(
                var=var.value.handle, accum=accum.handle, lr=0.01, grad=grad, momentum=0.9, use_nesterov=False
            )

    @tf.function(jit_compile=jit)
    def step(x, y):
        loss, grads = gradients(x, y)
        if update == "raw":
            apply_raw(grads)
        else:
            optimizer.apply(grads, model.trainable_variables)
        return loss

    loss, grads = gradients(x, y)  # at the initial weights, before any update
    np.save(grad_path, np.concatenate([tf.reshape(tf.cast(g, "float32"), [-1]).numpy() for g in grads]))
    print(json.dumps({"ready": True, "loss0": float(loss)}), flush=True)
    serve(lambda: step(x, y).numpy())


def profile_ops(run, logdir, steps=2, top=20):
    """Runs ``steps`` steps under TensorFlow's profiler (trace written to ``logdir``) and returns the ``top`` op
    types by their summed time per step: ``[(op type, ms per step, share of all op time, ops per step)]``. Op
    times are summed over TensorFlow's executor threads, so with inter-op parallelism they add up to more than
    the wall time."""
    import collections
    import glob

    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        run()
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1], "rb") as f:
        space.ParseFromString(f.read())
    ms, count = collections.Counter(), collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the executor threads; one event per op run
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                op_type = name.rsplit(":", 1)[-1]
                if ":" not in name or op_type == "Process":  # the executor's wrappers around ops, not ops
                    continue
                ms[op_type] += event.duration_ps / 1e9 / steps
                count[op_type] += 1 / steps
    total = sum(ms.values())
    return [(t, round(v, 2), round(v / total, 4), round(count[t])) for t, v in ms.most_common(top)]


def torch_worker(precision, model_name, batch):
    from bench.train_throughput import SUBJECTS, torch_runner

    run = torch_runner(SUBJECTS.get(model_name, {}).get("torch", model_name), precision, batch, "train")
    print(json.dumps({"ready": True}), flush=True)
    serve(run)


def serve(run):
    for line in sys.stdin:
        job = json.loads(line)
        if "profile" in job:
            print(json.dumps({"ops": profile_ops(run, job["profile"])}), flush=True)
            continue
        for _ in range(job["warmup"]):
            run()
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(job["steps"]):
            run()
        print(
            json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu}),
            flush=True,
        )


class Worker:
    def __init__(self, variant, args, grad_path):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            variant,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--grad-path",
            grad_path,
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        self.info = json.loads(line) if line else {"error": "worker exited"}

    def measure(self, warmup, steps):
        self.proc.stdin.write(json.dumps({"warmup": warmup, "steps": steps}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def profile(self, logdir):
        self.proc.stdin.write(json.dumps({"profile": logdir}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        return json.loads(line)["ops"] if line else None

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:  # a slow interpreter exit on a crowded machine
            self.proc.kill()


def cosine(a, b):
    import numpy as np

    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--variants", default=DEFAULT, help=f"comma-separated: {', '.join([*KERAS_VARIANTS, *TORCH_VARIANTS])}"
    )
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write OUT.json")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timed rounds, trace 2 steps of each Keras variant with TensorFlow's profiler and print "
        "its top op types (kept in OUT.json)",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--grad-path", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker in KERAS_VARIANTS:
        keras_worker(args.worker, args.model, args.batch, args.grad_path)
        return 0
    if args.worker in TORCH_VARIANTS:
        torch_worker(TORCH_VARIANTS[args.worker], args.model, args.batch)
        return 0
    import numpy as np

    variants = args.variants.split(",")
    bad = [v for v in variants if v not in KERAS_VARIANTS and v not in TORCH_VARIANTS]
    if bad:
        p.error(f"unknown variants {bad}; allowed: {[*KERAS_VARIANTS, *TORCH_VARIANTS]}")
    tmp = tempfile.mkdtemp(prefix="kerasarch_precision_")
    workers = {}
    for v in variants:  # started one after another: building and tracing in parallel would crowd the CPUs
        workers[v] = Worker(v, args, os.path.join(tmp, f"{v}.npy"))
        print(f"# {v}: {workers[v].info}", flush=True)
    times = {v: [] for v in variants if "error" not in workers[v].info}
    for r in range(args.rounds):
        for v in list(times) if r % 2 == 0 else list(times)[::-1]:
            load = os.getloadavg()[0]
            got = workers[v].measure(args.warmup, args.steps)
            if got is None:
                continue
            got.update(
                images_per_s=args.batch * args.steps / got["seconds"],
                images_per_cpu_s=args.batch * args.steps / got["cpu_seconds"],
                load=load,
            )
            times[v].append(got)
            print(
                f"round {r + 1} {v:22s} {got['images_per_s']:7.2f} img/s {got['images_per_cpu_s']:7.2f} img/CPU-s "
                f"(load {load:.1f})",
                flush=True,
            )
    profiles = {}
    if args.profile:
        for v in times:
            if v in KERAS_VARIANTS:
                profiles[v] = workers[v].profile(os.path.join(tmp, f"trace_{v}"))
                load = os.getloadavg()[0]
                print(f"\n{v}: top op types, ms per step summed over executor threads (load {load:.1f})")
                for op_type, ms, share, n in profiles[v]:
                    print(f"  {op_type:36s} {ms:9.1f} {100 * share:5.1f}%  x{n}")
    reference = os.path.join(tmp, "float32.npy")
    rows = []
    for v, ts in times.items():
        if not ts:
            continue
        row = {
            "variant": v,
            "images_per_s": statistics.median(t["images_per_s"] for t in ts),
            "images_per_cpu_s": statistics.median(t["images_per_cpu_s"] for t in ts),
            "rounds": ts,
            "loss0": workers[v].info.get("loss0"),
        }
        if v in profiles:
            row["top_ops"] = profiles[v]
        grad = os.path.join(tmp, f"{v}.npy")
        if v in KERAS_VARIANTS and os.path.exists(reference) and os.path.exists(grad):
            row["grad_cosine_vs_float32"] = cosine(np.load(grad), np.load(reference))
        rows.append(row)
    base = next((r for r in rows if r["variant"] == "float32"), None)
    torch_bf16 = next((r for r in rows if r["variant"] == "torch_bfloat16"), None)
    torch_fp32 = next((r for r in rows if r["variant"] == "torch_float32"), None)
    print(f"\n{args.model}, batch {args.batch}, median of {args.rounds} interleaved rounds")
    print(
        f"{'variant':22s} {'img/s':>7s} {'img/CPU-s':>9s} {'vs fp32':>7s} {'vs torch bf16':>13s} "
        f"{'vs torch fp32':>13s} {'grad cos':>8s} {'loss0':>7s}"
    )
    for r in rows:

        def ratio(other, key="images_per_s"):
            return f"{r[key] / other[key]:.2f}" if other else "-"

        cos = r.get("grad_cosine_vs_float32")
        print(
            f"{r['variant']:22s} {r['images_per_s']:7.2f} {r['images_per_cpu_s']:9.2f} {ratio(base):>7s} "
            f"{ratio(torch_bf16):>13s} {ratio(torch_fp32):>13s} {'-' if cos is None else f'{cos:.4f}':>8s} "
            f"{'-' if r['loss0'] is None else format(r['loss0'], '.4f'):>7s}"
        )
    if args.out:
        import tensorflow as tf

        with open(args.out + ".json", "w") as f:
            json.dump(
                {
                    "command": "python bench/precision.py " + " ".join(argv),
                    "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__,
                    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "model": args.model,
                    "batch": args.batch,
                    "rows": rows,
                },
                f,
                indent=1,
            )
        print(f"# wrote {args.out}.json")
    for w in workers.values():
        w.close()
    shutil.rmtree(tmp, ignore_errors=True)  # the gradients and traces written above
    return 0


if __name__ == "__main__":
    sys.exit(main())
