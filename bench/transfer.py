"""Transfer benchmark: does ``finetune train`` with its defaults beat training from scratch and the linear probe?

Three offline source -> target pairs, each with 10 and 50 labelled target images per class and five seeds:

- ``lenet5 0-4->5-9``: LeNet-5 pretrained on mnist5k digits 0-4 (2,000 images); target: digits 5-9, labelled
  images drawn from the 2,000 training images of those digits, tested on their 500 held-out images.
- ``lenet5 mnist->sklearn``: LeNet-5 pretrained on all of mnist5k (4,000 28x28 scans); target: scikit-learn's
  ``load_digits`` (8x8 digits of another scanner and rendering, bilinearly upscaled to 20x20 and centred in 28x28
  as MNIST's digits are), labelled images drawn from its 1,437 training images, tested on its 360 test images.
- ``resnet20 0-4->5-9``: ResNet-20 (He et al. 2016, 0.27M parameters, BatchNorm) at 32x32 (grey replicated to 3
  channels), pretrained on digits 0-4; the same target as the first pair.

Each pair's source network is pretrained once (seed 0) with :func:`kerasarch.training.train` (LeNet-5: its paper
recipe, 20 epochs; ResNet-20: its CIFAR recipe for 15 epochs at batch 64 with LeNet's affine distortions) and kept
in ``OUT/sources``. For every (pair, labels per class, seed) the labelled images are drawn with the seed and four
methods learn the target, each through the public API a user calls:

- ``scratch``: ``finetune train MODEL DATA`` without ``--weights`` (the same architecture from random weights,
  the default step-budget schedule);
- ``linear``: the linear probe of ``finetune linear`` (L2 logistic regression, C=1) on the penultimate tap,
  fitted on all the labelled images;
- ``two-phase``: ``finetune train --weights W --method two-phase`` with the previous defaults (5 + 5 epochs,
  Adam 1e-3 then 1e-4, 20% of the labels held out for validation);
- ``default``: ``finetune train --weights W`` with today's defaults (LP-FT, step budget, early stopping).

No augmentation anywhere (the defaults), float32, test images never used for any choice. Every finished cell is
kept in ``OUT/cells/`` (an interrupted or parallel run continues from them: ``--seed-list`` splits the work between
processes), and the results go to ``bench/results/transfer.json`` (``seconds``: this invocation's wall time;
``method_seconds``: the methods' own times summed over the cells) with the table (mean ± std over the seeds, ddof 0)
and a chart ``docs/img/transfer.png``.

    python bench/transfer.py                                         # the full benchmark (see docs/transfer.md)
    python bench/transfer.py --pairs lenet5-digits --seeds 1 --shots 10 --out /tmp/t   # one cell
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("scratch", "linear", "two-phase", "default")
LABELS = {
    "scratch": "scratch",
    "linear": "linear probe",
    "two-phase": "two-phase (old defaults)",
    "default": "default (LP-FT)",
}
PAIRS = {
    "lenet5-digits": {
        "model": "lenet5",
        "source": "mnist5k 0-4",
        "target": "mnist5k 5-9",
        "input_shape": (32, 32, 1),
        "pretrain": {"epochs": 20},
    },
    "lenet5-sklearn": {
        "model": "lenet5",
        "source": "mnist5k 0-9",
        "target": "sklearn digits",
        "input_shape": (32, 32, 1),
        "pretrain": {"epochs": 20},
    },
    "resnet20-digits": {
        "model": "resnet20",
        "source": "mnist5k 0-4",
        "target": "mnist5k 5-9",
        "input_shape": (32, 32, 3),
        "pretrain": {"epochs": 15, "batch_size": 64, "augment": "lenet"},
    },
}


def _sklearn_digits_as_mnist():
    """scikit-learn's 8x8 digits (0-255) upscaled to 20x20 and centred in 28x28: ``(train, test)`` arrays."""
    import tensorflow as tf

    from kerasarch.data import load_arrays

    def render(x):
        big = tf.image.resize(tf.cast(x, tf.float32), (20, 20), method="bilinear")
        return np.clip(np.round(np.pad(big.numpy(), ((0, 0), (4, 4), (4, 4), (0, 0)))), 0, 255).astype("uint8")

    (xtr, ytr), (xte, yte) = load_arrays("digits")
    return (render(xtr), ytr), (render(xte), yte)


def tasks(pair):
    """``(source_train, source_test, target_pool, target_test)`` :class:`~finetune.sources.ArraySource` objects."""
    from finetune.sources import ArraySource
    from kerasarch.data import load_arrays

    (xtr, ytr), (xte, yte) = load_arrays("mnist5k")
    if PAIRS[pair]["target"] == "sklearn digits":
        names = [str(d) for d in range(10)]
        (dtr, dyr), (dte, dye) = _sklearn_digits_as_mnist()
        return (
            ArraySource("mnist5k:train", xtr, ytr, names),
            ArraySource("mnist5k:test", xte, yte, names),
            ArraySource("digits:train@28", dtr, dyr, names),
            ArraySource("digits:test@28", dte, dye, names),
        )
    lo, hi = [str(d) for d in range(5)], [str(d) for d in range(5, 10)]
    return (
        ArraySource("mnist5k:train[0-4]", xtr[ytr < 5], ytr[ytr < 5], lo),
        ArraySource("mnist5k:test[0-4]", xte[yte < 5], yte[yte < 5], lo),
        ArraySource("mnist5k:train[5-9]", xtr[ytr >= 5], ytr[ytr >= 5] - 5, hi),
        ArraySource("mnist5k:test[5-9]", xte[yte >= 5], yte[yte >= 5] - 5, hi),
    )


def few_shot_index(labels, k, seed):
    """``k`` indices per class, drawn with ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False) for c in np.unique(labels)])
    )


def pretrain(pair, source, source_test, out):
    """The pair's source network (``OUT/sources/PAIR/model.keras``, reused when there) and its test accuracy."""
    from kerasarch import training

    cfg = PAIRS[pair]
    folder = os.path.join(out, "sources", pair)
    done = os.path.join(folder, "model.keras")
    if not os.path.exists(done):
        channels = cfg["input_shape"][-1]
        training.train(
            cfg["model"],
            source.to_dataset(channels),
            source_test.to_dataset(channels),
            recipe=cfg["pretrain"],
            classes=len(source.class_names),
            input_shape=cfg["input_shape"],
            precision="float32",
            strategy=None,
            out_dir=folder,
            seed=0,
            verbose=0,
        )
    with open(os.path.join(folder, "history.json")) as f:
        return done, json.load(f)["val_accuracy"][-1]


def linear_probe(model, weights, few, test):
    """Test accuracy of ``finetune linear`` on the penultimate tap, fitted on all of ``few``."""
    from finetune.backbone import load_backbone
    from finetune.linear import fit_linear
    from finetune.store import FeatureSet
    from finetune.transfer import load_arrays
    from kerasarch.features import feature_extractor, penultimate_tap

    backbone = load_backbone(model, weights)
    tap = penultimate_tap(backbone.spec)
    fx = feature_extractor(backbone.model, [tap], spec=backbone.spec)
    sets = []
    for source in (few, test):
        x, y = load_arrays(source, backbone)
        feats = fx.predict(x, batch_size=256, verbose=0)[tap]
        meta = {
            **backbone.describe(),
            "tap": tap,
            "class_names": list(source.class_names),
            "feature_shape": list(feats.shape[1:]),
        }
        sets.append(FeatureSet("<memory>", meta, feats, y, np.arange(len(y))))
    return fit_linear(sets[0], sets[1])[1]["accuracy"], tap


def run_cell(pair, k, seed, out, methods=METHODS):
    """One (pair, labels per class, seed): every method's target test accuracy, kept in ``OUT/cells``."""
    import keras

    from finetune.train import train

    path = os.path.join(out, "cells", f"{pair}-k{k}-seed{seed}.json")
    cell = {}
    if os.path.exists(path):
        with open(path) as f:
            cell = json.load(f)
        if all(m in cell.get("accuracy", {}) for m in methods):
            return cell
    cfg = PAIRS[pair]
    source, source_test, pool, test = tasks(pair)
    weights, source_accuracy = pretrain(pair, source, source_test, out)
    few = pool.subset(few_shot_index(pool.labels, k, seed=1000 * seed + k))
    cell.update(pair=pair, model=cfg["model"], shots=k, seed=seed, source_accuracy=source_accuracy, num_test=len(test))
    acc, extra = cell.setdefault("accuracy", {}), cell.setdefault("details", {})
    common = dict(test=test, input_shape=cfg["input_shape"], precision="float32", seed=seed, verbose=0)
    runs = os.path.join(out, "runs", f"{pair}-k{k}-seed{seed}")
    for method in methods:
        if method in acc:
            continue
        keras.backend.clear_session(free_memory=True)
        started = time.perf_counter()
        if method == "linear":
            acc[method], cell["tap"] = linear_probe(cfg["model"], weights, few, test)
            extra[method] = {}
        else:
            kw = {
                "scratch": {},
                "two-phase": {"weights": weights, "method": "two-phase"},
                "default": {"weights": weights},
            }[method]
            result = train(cfg["model"], few, os.path.join(runs, method), **kw, **common)
            acc[method] = result["test_accuracy"]
            extra[method] = {
                k2: result.get(k2)
                for k2 in (
                    "steps",
                    "updates",
                    "best_step",
                    "val_accuracy",
                    "layer_decay",
                    "lr",
                    "head_tap",
                    "num_train",
                    "num_val",
                )
            }
        extra[method]["seconds"] = round(time.perf_counter() - started, 1)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        from finetune.store import write_json

        write_json(path, cell)
    return cell


def summarise(cells, pairs, shots):
    """``{pair: {k: {method: (mean, std)}}}`` in percent over the seeds."""
    table = {}
    for pair in pairs:
        for k in shots:
            sel = [c for c in cells if c["pair"] == pair and c["shots"] == k]
            if not sel:
                continue
            row = table.setdefault(pair, {}).setdefault(str(k), {})
            for m in ("source_accuracy", *METHODS):
                v = 100 * np.asarray(
                    [
                        c["source_accuracy"] if m == "source_accuracy" else c["accuracy"][m]
                        for c in sel
                        if m == "source_accuracy" or m in c["accuracy"]
                    ],
                    float,
                )
                if len(v):
                    row[m] = [round(float(v.mean()), 2), round(float(v.std()), 2), len(v)]
    return table


def markdown(results):
    lines = [
        "| pair (network, tap) | labels/class | source acc. | scratch | linear probe | two-phase (old) | "
        "default (LP-FT) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pair, rows in results["table"].items():
        cfg = PAIRS[pair]
        tap = next((c.get("tap") for c in results["cells"] if c["pair"] == pair and c.get("tap")), "?")
        for k, row in rows.items():
            one = {m for m in ("source_accuracy",) if m in row and not row[m][1]}  # one source network: no spread
            cells = [
                ("" if m not in row else f"{row[m][0]:.1f}" if m in one else f"{row[m][0]:.1f} ± {row[m][1]:.1f}")
                for m in ("source_accuracy", *METHODS)
            ]
            best = max((row[m][0], m) for m in METHODS if m in row)[1]
            cells = [f"**{c}**" if m == best else c for m, c in zip(("source_accuracy", *METHODS), cells)]
            lines.append(
                f"| {cfg['source']} → {cfg['target']} ({cfg['model']}, {tap}) | {k} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(pair, k) for pair, rows in results["table"].items() for k in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups)), 4.2))
    width = 0.8 / len(METHODS)
    colours = {"scratch": "#999999", "linear": "#4c72b0", "two-phase": "#dd8452", "default": "#55a868"}
    for j, m in enumerate(METHODS):
        means = [results["table"][p][k].get(m, [np.nan, 0])[0] for p, k in groups]
        stds = [results["table"][p][k].get(m, [np.nan, 0])[1] for p, k in groups]
        xs = np.arange(len(groups)) + (j - (len(METHODS) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=LABELS[m], color=colours[m])
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels(
        [f"{PAIRS[p]['model']}\n{PAIRS[p]['source']}→{PAIRS[p]['target']}\n{k}/class" for p, k in groups], fontsize=7
    )
    ax.set_ylabel("target test accuracy (%)")
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=7, loc="upper center", ncol=len(METHODS), frameon=False)
    ax.set_title(f"Transfer with few labels (mean ± std over {results['seeds']} seeds)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine():
    import keras
    import tensorflow as tf

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "gpus": [g.name for g in tf.config.list_physical_devices("GPU")],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def main(argv=None, prog=None):
    from kerasarch.cli import OneLineErrorParser  # bad arguments: one `error:` line, exit status 2

    p = OneLineErrorParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, from {list(PAIRS)}")
    p.add_argument("--shots", default="10,50", help="labelled target images per class")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    p.add_argument("--seed-list", default=None, help="comma-separated seeds instead (e.g. 4,3 to run in parallel)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default=os.path.join("runs", "transfer"), help="work folder (resumable)")
    p.add_argument("--results", default=os.path.join(REPO, "bench", "results", "transfer.json"))
    p.add_argument("--chart", default=os.path.join(REPO, "docs", "img", "transfer.png"))
    args = p.parse_args(argv)
    pairs = [s for s in args.pairs.split(",") if s]
    unknown = [s for s in pairs if s not in PAIRS]
    if unknown:
        p.error(f"unknown pairs {unknown}; choose from {list(PAIRS)}")
    shots = [int(k) for k in args.shots.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(v) for v in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
    started = time.perf_counter()
    cells = []
    for pair in pairs:
        for k in shots:
            for seed in seeds:
                cell = run_cell(pair, k, seed, args.out, methods)
                cells.append(cell)
                print(
                    f"[transfer {time.perf_counter() - started:6.0f}s] {pair} k={k} seed={seed}: "
                    + ", ".join(f"{m} {100 * cell['accuracy'][m]:.1f}" for m in methods if m in cell["accuracy"]),
                    flush=True,
                )
    results = {
        "command": "python bench/transfer.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "pairs": {p: {k: list(v) if isinstance(v, tuple) else v for k, v in PAIRS[p].items()} for p in pairs},
        "shots": shots,
        "seeds": len(seeds),
        "methods": methods,
        "precision": "float32",
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "cells": cells,
    }
    results["method_seconds"] = round(sum(d.get("seconds", 0) for c in cells for d in c["details"].values()), 1)
    results["table"] = summarise(cells, pairs, shots)
    results["markdown"] = markdown(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    from finetune.store import write_json

    write_json(args.results, results)
    if args.chart:
        chart(results, args.chart)
    print(results["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
