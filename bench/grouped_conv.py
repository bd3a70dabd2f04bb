"""Grouped convolution on this machine: each formulation of ``kerasarch.layers.grouped.GroupedConv2D`` timed on
the grouped layers of ResNeXt-50 32×4d and AlexNet, forward and forward + backward (input and kernel gradients),
in TensorFlow graphs (``tf.function``), XLA-compiled TensorFlow (``jit_compile=True``) and JAX (a child process).

The figures behind ``auto_formulation``'s rule. Each layer's ungrouped twin (``Conv2D(groups=1)``, ``groups``
times the multiply-adds) is timed beside it, so the cost per multiply-add of a grouped layer can be compared with
an ordinary convolution's. Rounds are interleaved and the median kept (the machine may be shared).

    python bench/grouped_conv.py --out bench/results/cpu_grouped_conv
    python bench/grouped_conv.py --layers resnext_s3 --engines tf --reps 1 --rounds 1     # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (batch, input size, C_in, C_out, kernel, stride, groups) — ResNeXt-50 32×4d's 3×3 convolutions per stage
# (the stride-2 one opens stages 2–4, torchvision's v1.5 placement) at batch 8; AlexNet's grouped conv2/conv4/conv5.
LAYERS = {
    "resnext_s1": (8, 56, 128, 128, 3, 1, 32),
    "resnext_s2_stride2": (8, 56, 256, 256, 3, 2, 32),
    "resnext_s2": (8, 28, 256, 256, 3, 1, 32),
    "resnext_s3": (8, 14, 512, 512, 3, 1, 32),
    "resnext_s4": (8, 7, 1024, 1024, 3, 1, 32),
    "alexnet_conv2": (8, 27, 96, 256, 5, 1, 2),
    "alexnet_conv4": (8, 13, 384, 384, 3, 1, 2),
    "alexnet_conv5": (8, 13, 384, 256, 3, 1, 2),
}
FORMULATIONS = {
    "tf": ("keras", "grouped_op", "split", "ungrouped"),
    "xla": ("keras", "split", "ungrouped"),
    "jax": ("keras", "split", "ungrouped"),
}


def _layer(spec, how):
    from kerasarch.layers.grouped import GroupedConv2D

    batch, size, cin, cout, k, s, g = spec
    if how == "ungrouped":
        import keras

        layer = keras.layers.Conv2D(cout, k, strides=s, padding="same", use_bias=False)
    else:
        layer = GroupedConv2D(cout, k, strides=s, padding="same", groups=g, use_bias=False, formulation=how)
    layer.build((None, size, size, cin))
    return layer


def _macs(spec, how):
    batch, size, cin, cout, k, s, g = spec
    out = -(-size // s)
    return batch * out * out * k * k * cout * (cin if how == "ungrouped" else cin // g)


def tf_runners(spec, how, jit):
    import numpy as np
    import tensorflow as tf

    layer = _layer(spec, how)
    x = tf.constant(np.random.default_rng(0).standard_normal((spec[0], spec[1], spec[1], spec[2])), tf.float32)

    @tf.function(jit_compile=jit)
    def forward(x):
        return layer(x)

    @tf.function(jit_compile=jit)
    def backward(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, layer.kernel])

    return {"fwd": lambda: forward(x).numpy(), "fwd+bwd": lambda: [t.numpy() for t in backward(x)]}


def jax_runners(spec, how):
    import jax
    import numpy as np

    layer = _layer(spec, how)
    x = jax.numpy.asarray(np.random.default_rng(0).standard_normal((spec[0], spec[1], spec[1], spec[2])), "float32")
    kernel = layer.kernel.value
    forward = jax.jit(lambda x, k: layer.convolution_op(x, k))
    backward = jax.jit(jax.grad(lambda x, k: (layer.convolution_op(x, k) ** 2).sum(), argnums=(0, 1)))
    return {
        "fwd": lambda: jax.block_until_ready(forward(x, kernel)),
        "fwd+bwd": lambda: jax.block_until_ready(backward(x, kernel)),
    }


def measure(engine, names, formulations, reps, rounds):
    """``[{layer, engine, formulation, pass, ms, gmac_per_s}]``, median over interleaved rounds."""
    runners = {}
    for name in names:
        for how in formulations:
            made = jax_runners(LAYERS[name], how) if engine == "jax" else tf_runners(LAYERS[name], how, engine == "xla")
            for pass_, run in made.items():
                run()  # trace, compile, allocate
                runners[(name, how, pass_)] = run
    times = {key: [] for key in runners}
    for r in range(rounds):
        for key, run in runners.items():
            slow = engine != "tf" and key[1] == "keras"  # XLA's grouped kernel on a CPU: once is enough
            if slow and r > 0:
                continue
            n = 1 if slow else reps
            start = time.perf_counter()
            for _ in range(n):
                run()
            times[key].append((time.perf_counter() - start) / n)
    rows = []
    for (name, how, pass_), ts in times.items():
        seconds = statistics.median(ts)
        rows.append(
            {
                "layer": name,
                "shape": LAYERS[name],
                "engine": engine,
                "formulation": how,
                "pass": pass_,
                "ms": seconds * 1e3,
                "gmac_per_s": _macs(LAYERS[name], how) * (1 if pass_ == "fwd" else 3) / seconds / 1e9,
            }
        )
        print(
            f"{engine:4s} {name:20s} {how:11s} {pass_:8s} {seconds * 1e3:9.1f} ms  "
            f"{rows[-1]['gmac_per_s']:7.1f} GMAC/s",
            flush=True,
        )
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated: {', '.join(LAYERS)}")
    p.add_argument("--engines", default="tf,xla,jax", help="tf (graph), xla (TF jit_compile), jax")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--formulations", default=None, help="comma-separated subset of keras, grouped_op, split, ungrouped")
    p.add_argument(
        "--skip-slow",
        action="store_true",
        help="leave out 'keras' under XLA and JAX (tens of seconds per backward pass on a CPU)",
    )
    p.add_argument("--precision", default="float32", help="Keras dtype policy of the layers: float32, mixed_bfloat16")
    p.add_argument("--out", default=None, help="write OUT.json")
    p.add_argument("--engine-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = args.layers.split(",")
    import keras

    keras.config.set_dtype_policy(args.precision)
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        p.error(f"unknown layers {unknown}; allowed: {list(LAYERS)}")

    def formulations(engine):
        chosen = FORMULATIONS[engine] if args.formulations is None else args.formulations.split(",")
        slow = args.skip_slow and engine != "tf"
        return [f for f in FORMULATIONS[engine] if f in chosen and not (slow and f == "keras")]

    if args.engine_child:
        print(json.dumps(measure(args.engine_child, names, formulations(args.engine_child), args.reps, args.rounds)))
        return 0
    rows = []
    for engine in args.engines.split(","):
        if engine == "jax":  # its own process: Keras picks its backend once
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--engine-child",
                "jax",
                "--layers",
                args.layers,
                "--reps",
                str(args.reps),
                "--rounds",
                str(args.rounds),
                "--precision",
                args.precision,
            ] + (["--skip-slow"] if args.skip_slow else [])
            env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            if done.returncode != 0 or not lines:
                print(f"# jax failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            print("\n".join(lines[:-1]), flush=True)
            rows += json.loads(lines[-1])
        else:
            rows += measure(engine, names, formulations(engine), args.reps, args.rounds)
    if args.out:
        import tensorflow as tf

        with open(args.out + ".json", "w") as f:
            json.dump(
                {
                    "command": "python bench/grouped_conv.py " + " ".join(argv),
                    "cpus": os.cpu_count(),
                    "tensorflow": tf.__version__,
                    "precision": args.precision,
                    "load_after": os.getloadavg(),
                    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    "rows": rows,
                },
                f,
                indent=1,
            )
        print(f"# wrote {args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
