"""Which bfloat16 training path is fastest on this CPU, and is it correct: ResNet-50 training steps under

* ``float32`` — the reference;
* ``mixed_bfloat16`` — Keras' dtype policy (bfloat16 compute, float32 variables), what ``--precision auto``
  picks on CPUs with AVX512-BF16/AMX;
* ``onednn_bf16_rewrite`` — a float32 model with TensorFlow's grappler rewrite
  ``auto_mixed_precision_onednn_bfloat16`` (``tf.config.optimizer.set_experimental_options``), which turns the
  graph's convolutions/matmuls to bfloat16 behind Keras' back;
* each of the first two with ``jit_compile=True`` (XLA);
* torchvision in float32 and with ``torch.autocast("cpu", torch.bfloat16)``.

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
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# variant: (Keras dtype policy, jit_compile, grappler bfloat16 rewrite)
KERAS_VARIANTS = {
    "float32": ("float32", False, False),
    "mixed_bfloat16": ("mixed_bfloat16", False, False),
    "onednn_bf16_rewrite": ("float32", False, True),
    "float32_jit": ("float32", True, False),
    "mixed_bfloat16_jit": ("mixed_bfloat16", True, False),
}
TORCH_VARIANTS = {"torch_float32": "float32", "torch_bfloat16": "mixed_bfloat16"}
DEFAULT = "float32,mixed_bfloat16,onednn_bf16_rewrite,mixed_bfloat16_jit,torch_float32,torch_bfloat16"


def keras_worker(variant, model_name, batch, grad_path):
    import keras
    import numpy as np
    import tensorflow as tf

    import kerasarch

    policy, jit, rewrite = KERAS_VARIANTS[variant]
    if rewrite:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = kerasarch.build_model(model_name, classifier_activation=None)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, (batch, *model.input_shape[1:])).astype("float32"))
    y = tf.constant(rng.integers(0, model.output_shape[-1], (batch,)).astype("int32"))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=jit)
    def gradients(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, tf.cast(model(x, training=True), "float32"))
        return loss, tape.gradient(loss, model.trainable_variables)

    @tf.function(jit_compile=jit)
    def step(x, y):
        loss, grads = gradients(x, y)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    loss, grads = gradients(x, y)  # at the initial weights, before any update
    np.save(grad_path, np.concatenate([tf.reshape(tf.cast(g, "float32"), [-1]).numpy() for g in grads]))
    print(json.dumps({"ready": True, "loss0": float(loss)}), flush=True)
    serve(lambda: step(x, y).numpy())


def torch_worker(precision, model_name, batch):
    from bench.train_throughput import SUBJECTS, torch_runner

    run = torch_runner(SUBJECTS.get(model_name, {}).get("torch", model_name), precision, batch, "train")
    print(json.dumps({"ready": True}), flush=True)
    serve(run)


def serve(run):
    for line in sys.stdin:
        job = json.loads(line)
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
    for v in variants:
        path = os.path.join(tmp, f"{v}.npy")
        if os.path.exists(path):
            os.remove(path)
    os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
