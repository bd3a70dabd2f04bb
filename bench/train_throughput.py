"""Training throughput (images/s) of kerasarch models against keras.applications and torchvision.

Every framework runs the same work per step: forward, cross-entropy, backward and an SGD-with-momentum update, on
synthetic 224×224 images already in memory, at the same batch size, in float32 and in mixed bfloat16. kerasarch
models train through ``kerasarch.training``'s own step (the one ``train()`` uses); keras.applications models
(where Keras has the architecture) through the very same step; torchvision models (when torch is importable)
through a plain PyTorch loop, with ``torch.autocast("cpu", torch.bfloat16)`` for the mixed run and channels-last
memory format, in a child process (TensorFlow and PyTorch do not share a process well: importing torch after
TensorFlow can crash, and their thread pools would compete). Ratios are printed as kerasarch / keras.applications
and kerasarch / torchvision.

    python bench/train_throughput.py                                   # the full table (minutes per model)
    python bench/train_throughput.py --models resnet50 --steps 2 --warmup 1 --precisions float32   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = ("resnet50", "vgg16", "googlenet", "densenet121", "resnext50_32x4d")
KERAS_APPS = {"resnet50": "ResNet50", "vgg16": "VGG16", "densenet121": "DenseNet121"}
TORCHVISION = {"resnet50": "resnet50", "vgg16": "vgg16", "googlenet": "googlenet", "densenet121": "densenet121",
               "resnext50_32x4d": "resnext50_32x4d"}


def _keras_step(model, batch, classes):
    """``kerasarch.training``'s replica step under the default strategy, and a synthetic batch."""
    import keras
    import tensorflow as tf

    from kerasarch.training.loop import _make_steps
    from kerasarch.training.recipes import get_recipe

    recipe = get_recipe(None, {"base": "resnet_imagenet", "batch_size": batch, "weight_decay": 0.0})
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if keras.config.dtype_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    step = _make_steps(model, optimizer, tf.distribute.get_strategy(), recipe, jit=False, classes=classes)
    x = tf.random.uniform((batch, *model.input_shape[1:]), -1, 1)
    y = tf.random.uniform((batch,), 0, classes, dtype=tf.int32)
    return lambda: step((x, y))


def _time(step, warmup, steps):
    for _ in range(warmup):
        out = step()
    _sync(out)
    start = time.perf_counter()
    for _ in range(steps):
        out = step()
    _sync(out)
    return time.perf_counter() - start


def _sync(out):
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "numpy"):
        out.numpy()
    elif hasattr(out, "item"):
        out.item()


def bench_keras(build, precision, batch, warmup, steps):
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = build()
    finally:
        keras.config.set_dtype_policy(previous)
    classes = model.output_shape[-1]
    seconds = _time(_keras_step(model, batch, classes), warmup, steps)
    del model
    keras.backend.clear_session(free_memory=True)
    return batch * steps / seconds


def bench_torch(name, precision, batch, warmup, steps):
    import torch
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, TORCHVISION[name])(weights=None, **kwargs)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,))
    bf16 = precision == "mixed_bfloat16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return batch * steps / _time(step, warmup, steps)


def _torch_available():
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))


def torch_in_child(name, precision, batch, warmup, steps):
    """:func:`bench_torch` in a fresh process; ``None`` when it fails."""
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--torch-child", name, precision, str(batch), str(warmup),
           str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"# torchvision {name} {precision} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--torch-child"]:
        name, precision, batch, warmup, steps = argv[1:6]
        print(bench_torch(name, precision, int(batch), int(warmup), int(steps)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    p.add_argument("--precisions", default="float32,mixed_bfloat16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (tracing, allocation)")
    p.add_argument("--no-keras", action="store_true", help="skip keras.applications")
    p.add_argument("--no-torch", action="store_true", help="skip torchvision even if installed")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    import kerasarch

    torch_ok = not args.no_torch and _torch_available()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}, "
          f"Keras {keras.__version__}, torch {'yes' if torch_ok else 'not installed'}; batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps", flush=True)
    header = f"{'model':18s} {'precision':15s} {'kerasarch':>10s} {'keras.app':>10s} {'ratio':>6s} " \
             f"{'torchvision':>11s} {'ratio':>6s}"
    print(header, flush=True)
    rows = []
    for name in args.models.split(","):
        for precision in args.precisions.split(","):
            row = {"model": name, "precision": precision}
            row["kerasarch"] = bench_keras(lambda: kerasarch.build_model(name), precision, args.batch,
                                           args.warmup, args.steps)
            if not args.no_keras and name in KERAS_APPS:
                app = getattr(keras.applications, KERAS_APPS[name])
                row["keras_applications"] = bench_keras(lambda: app(weights=None), precision, args.batch,
                                                        args.warmup, args.steps)
            if torch_ok and name in TORCHVISION:
                row["torchvision"] = torch_in_child(name, precision, args.batch, args.warmup, args.steps)
            ka, tv = row.get("keras_applications"), row.get("torchvision")
            row["ratio_keras"] = row["kerasarch"] / ka if ka else None
            row["ratio_torch"] = row["kerasarch"] / tv if tv else None
            rows.append(row)
            fmt = lambda v, w, d=1: f"{v:>{w}.{d}f}" if v else f"{'-':>{w}s}"  # noqa: E731
            print(f"{name:18s} {precision:15s} {fmt(row['kerasarch'], 10)} {fmt(ka, 10)} "
                  f"{fmt(row['ratio_keras'], 6, 2)} {fmt(tv, 11)} {fmt(row['ratio_torch'], 6, 2)}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
