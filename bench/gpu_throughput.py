"""Training throughput on a GPU: kerasarch models (Keras 3) against keras.applications and torchvision.

The GPU machines this project is lent have PyTorch and JAX but no TensorFlow, so this benchmark runs Keras on
its JAX backend (``KERAS_BACKEND=jax``; every step is XLA-compiled) — the model definitions are
backend-agnostic Keras, only the tf.data/tf.distribute pipeline needs TensorFlow. One training step = forward,
softmax cross-entropy, backward, SGD with momentum 0.9, on synthetic 224×224 images, in float32 and mixed float16
(Keras wraps the optimizer in a LossScaleOptimizer; torch uses autocast + GradScaler, channels-last).

    KERAS_BACKEND=jax python bench/gpu_throughput.py --framework keras --json out.json
    python bench/gpu_throughput.py --framework torch --json out_torch.json
    python bench/gpu_throughput.py --report out.json out_torch.json   # the table with ratios
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

MODELS = ["resnet50", "resnet50_keras", "vgg16", "googlenet", "densenet121", "resnext50_32x4d"]
# kerasarch name -> keras.applications constructor name (same architecture and layer names)
KERAS_PEERS = {"resnet50_keras": "ResNet50", "vgg16": "VGG16", "densenet121": "DenseNet121"}
# kerasarch name -> torchvision constructor (same architecture)
TORCH_PEERS = {
    "resnet50": "resnet50",
    "vgg16": "vgg16",
    "googlenet": None,
    "densenet121": "densenet121",
    "resnext50_32x4d": "resnext50_32x4d",
    "googlenet_bn": "googlenet",
}


def _time_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def bench_keras(name, precision, batch, warmup, steps, peer=False):
    import keras
    import numpy as np

    keras.config.set_dtype_policy(precision)
    if peer:
        model = getattr(keras.applications, KERAS_PEERS[name])(weights=None)
    else:
        import kerasarch

        model = kerasarch.build_model(name)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        jit_compile=True,
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, 224, 224, 3)).astype("float32")
    y = rng.integers(0, 1000, (batch,))
    seconds = _time_steps(lambda: model.train_on_batch(x, y), warmup, steps)  # returns host numbers: synced
    keras.backend.clear_session()
    return batch * steps / seconds


def bench_torch(name, precision, batch, warmup, steps):
    import torch
    import torchvision

    torch.backends.cudnn.benchmark = True
    model = getattr(torchvision.models, name)(num_classes=1000)
    if name == "googlenet":
        model = torchvision.models.googlenet(num_classes=1000, aux_logits=False, init_weights=True)
    model = model.cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "mixed_float16")
    x = torch.rand(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=precision == "mixed_float16"):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def report(paths):
    rows = {}
    for path in paths:
        for r in json.load(open(path)):
            rows.setdefault((r["model"], r["precision"]), {})[r["impl"]] = r["images_per_s"]
    lines = [
        "| model | precision | kerasarch img/s | keras.applications img/s | ratio | torchvision img/s | ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for (model, precision), d in rows.items():
        k, ka, tv = d.get("kerasarch"), d.get("keras.applications"), d.get("torchvision")
        f = lambda v: f"{v:,.0f}" if v else "—"  # noqa: E731
        r = lambda a, b: f"{a / b:.2f}" if a and b else "—"  # noqa: E731
        lines.append(f"| {model} | {precision} | {f(k)} | {f(ka)} | {r(k, ka)} | {f(tv)} | {r(k, tv)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=["keras", "torch"], default="keras")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--precisions", default="float32,mixed_float16")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default=None)
    p.add_argument("--report", nargs="+", default=None, help="print the table of saved JSON files and exit")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    results = []
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            jobs = []
            if args.framework == "keras":
                jobs.append(("kerasarch", lambda: bench_keras(name, precision, args.batch, args.warmup, args.steps)))
                if name in KERAS_PEERS:
                    jobs.append(
                        (
                            "keras.applications",
                            lambda: bench_keras(name, precision, args.batch, args.warmup, args.steps, peer=True),
                        )
                    )
            elif TORCH_PEERS.get(name):
                jobs.append(
                    (
                        "torchvision",
                        lambda: bench_torch(TORCH_PEERS[name], precision, args.batch, args.warmup, args.steps),
                    )
                )
            for impl, job in jobs:
                t0 = time.perf_counter()
                try:
                    ips = job()
                except Exception as e:  # report and go on: one failing model must not lose the others' figures
                    print(f"{name:18s} {precision:14s} {impl:20s} FAILED: {type(e).__name__}: {e}", flush=True)
                    continue
                print(
                    f"{name:18s} {precision:14s} {impl:20s} {ips:10.1f} img/s  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
                results.append(
                    {
                        "model": name,
                        "precision": precision,
                        "impl": impl,
                        "images_per_s": ips,
                        "batch": args.batch,
                        "backend": os.environ.get("KERAS_BACKEND", "tensorflow")
                        if args.framework == "keras"
                        else "torch",
                    }
                )
                if args.json:
                    json.dump(results, open(args.json, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
