"""``python -m finetune demo``: does transfer help with few labels? The experiment of ``docs/transfer.md``.

Source task: ``mnist5k`` digits 0-4 (the 2,000 training images). Target task: digits 5-9 with only ``k`` labelled
images per class (drawn from the 2,000 training images of those digits, per seed), evaluated on the 500 held-out
images of digits 5-9. For each network and seed: the network is pretrained on the source task
(:func:`kerasarch.training.train`), then three ways to learn the target are compared:

- **scratch**: the same architecture trained on the ``k`` x 5 target images from random weights;
- **linear probe**: logistic regression on the source network's penultimate tap (no fine-tuning);
- **fine-tune**: a new 5-way head on that tap, a head phase with the network frozen, then everything unfrozen at
  a lower learning rate (BatchNorm in inference mode).

Scratch and fine-tuning get the same number of epochs (40), optimizer (Adam, batch 16) and augmentation (small
random affine distortions); scratch at lr 1e-3, fine-tuning at 1e-2 for the head (15 epochs) then 3e-4 (25
epochs); these were chosen on one draw of digits 5-9 *training* images outside the labelled set, never on the
test images. The source networks use their paper recipe (LeNet-5: 20 epochs; ResNet-20: 15 epochs at batch 64,
with LeNet's distortions instead of CIFAR's flips). The result is a markdown table (mean ± standard deviation of
the target test accuracy over the seeds) in ``OUT/transfer.md`` and every number in ``OUT/results.json``; each
finished (network, seed, shots) row is kept in ``OUT/rows/``, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

from finetune.store import write_json

__all__ = ["CONFIGS", "register", "run", "run_demo"]

# Per network: its input for the 28x28 grey digits, how the source network is pretrained (overrides of its paper
# recipe), and the target-task schedule shared by scratch and fine-tuning.
_TARGET = {"batch_size": 16, "epochs_head": 15, "epochs_finetune": 25, "lr_scratch": 1e-3, "lr_head": 1e-2,
           "lr_finetune": 3e-4}
CONFIGS = {
    "lenet5": {"input_shape": (32, 32, 1), "source": {"epochs": 20}, **_TARGET},
    "resnet20": {"input_shape": (32, 32, 3), "source": {"epochs": 15, "batch_size": 64, "augment": "lenet"},
                 **_TARGET},
    "vgg11_bn": {"input_shape": (32, 32, 3), "source": {"epochs": 15, "batch_size": 64, "augment": "lenet"},
                 **_TARGET},
}


def _split_digits():
    """``(source_train, source_test, target_pool, target_test)`` sources of mnist5k."""
    from finetune.sources import ArraySource
    from kerasarch.data import load_arrays

    (xtr, ytr), (xte, yte) = load_arrays("mnist5k")
    lo, hi = [str(d) for d in range(5)], [str(d) for d in range(5, 10)]
    return (ArraySource("mnist5k:train[0-4]", xtr[ytr < 5], ytr[ytr < 5], lo),
            ArraySource("mnist5k:test[0-4]", xte[yte < 5], yte[yte < 5], lo),
            ArraySource("mnist5k:train[5-9]", xtr[ytr >= 5], ytr[ytr >= 5] - 5, hi),
            ArraySource("mnist5k:test[5-9]", xte[yte >= 5], yte[yte >= 5] - 5, hi))


def few_shot_index(labels, k, seed):
    """``k`` indices per class, drawn with ``seed``, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), k, replace=False)
                                   for c in np.unique(labels)]))


def _pretrain(model, cfg, source, source_test, seed, out_dir, precision):
    from kerasarch import training

    if os.path.exists(os.path.join(out_dir, "model.keras")):  # a finished run folder: reuse it
        with open(os.path.join(out_dir, "history.json")) as f:
            history = json.load(f)
        return os.path.join(out_dir, "model.keras"), history.get("val_accuracy", [None])[-1]
    channels = cfg["input_shape"][-1]
    result = training.train(model, source.to_dataset(channels), source_test.to_dataset(channels),
                            recipe=cfg["source"], classes=len(source.class_names), input_shape=cfg["input_shape"],
                            precision=precision, strategy=None, out_dir=out_dir, seed=seed, verbose=0)
    return os.path.join(out_dir, "model.keras"), result.history["val_accuracy"][-1]


def _scratch(model, cfg, few, test, seed, precision, augment):
    import keras

    from finetune.backbone import default_preprocessing
    from finetune.transfer import phase_recipe, precision_scope
    from kerasarch import get_spec, training

    spec = get_spec(model)
    channels = cfg["input_shape"][-1]
    with precision_scope(precision, None):
        keras.utils.set_random_seed(seed)
        net = spec.build(input_shape=cfg["input_shape"], classes=len(few.class_names))
    preprocessing = default_preprocessing(spec)
    recipe = phase_recipe(cfg["lr_scratch"], batch_size=cfg["batch_size"], augment=augment,
                          preprocessing=preprocessing)
    epochs = cfg["epochs_head"] + cfg["epochs_finetune"]
    training.train(net, few.to_dataset(channels), None, recipe=recipe, epochs=epochs, precision="auto", strategy=None,
                   seed=seed, verbose=0)
    return training.evaluate(net, test.to_dataset(channels), preprocessing=preprocessing)["accuracy"]


def _linear_probe(model, weights, few, test, seed):
    from finetune.backbone import load_backbone
    from finetune.linear import fit_linear
    from finetune.store import FeatureSet
    from finetune.transfer import load_arrays
    from kerasarch.features import feature_extractor, penultimate_tap

    backbone = load_backbone(model, weights, seed=seed)
    tap = penultimate_tap(backbone.spec)
    fx = feature_extractor(backbone.model, [tap], spec=backbone.spec)
    sets = []
    for source in (few, test):
        x, y = load_arrays(source, backbone)
        feats = fx.predict(x, batch_size=256, verbose=0)[tap]
        meta = {**backbone.describe(), "tap": tap, "class_names": list(source.class_names),
                "feature_shape": list(feats.shape[1:])}
        sets.append(FeatureSet("<memory>", meta, feats, y, np.arange(len(y))))
    _, result = fit_linear(sets[0], sets[1], seed=seed)
    return result["accuracy"], tap


def _fine_tune(model, cfg, weights, few, test, seed, precision, augment):
    from finetune.backbone import load_backbone
    from finetune.transfer import build_transfer_model, fine_tune, precision_scope
    from kerasarch import training

    channels = cfg["input_shape"][-1]
    with precision_scope(precision, None):
        backbone = load_backbone(model, weights, seed=seed)
        net = build_transfer_model(backbone, len(few.class_names))
    fine_tune(net, few.to_dataset(channels), None, frozen=(), epochs_head=cfg["epochs_head"],
              epochs_finetune=cfg["epochs_finetune"], lr_head=cfg["lr_head"], lr_finetune=cfg["lr_finetune"],
              batch_size=cfg["batch_size"], augment=augment, preprocessing=backbone.preprocessing, seed=seed)
    return training.evaluate(net, test.to_dataset(channels), preprocessing=backbone.preprocessing)["accuracy"]


def run_demo(out, *, models=("lenet5", "resnet20"), seeds=(0, 1, 2), shots=(10, 50), precision="float32",
             augment="lenet", epochs_scale=1.0, verbose=1):
    """Runs the transfer experiment and writes ``OUT/results.json`` and ``OUT/transfer.md``.

    Args:
        out: output directory (source networks are kept under ``OUT/sources`` and reused by a rerun).
        models: networks from :data:`CONFIGS`.
        seeds: one pretraining and one draw of the labelled target images per seed.
        shots: labelled target images per class.
        precision: dtype policy of all training (``float32`` for comparable numbers).
        augment: augmentation preset for scratch and fine-tuning on the target (the probe sees plain images).
        epochs_scale: multiplies every epoch count (tests use a small value).

    Returns:
        The results dict.
    """
    import keras
    import tensorflow as tf

    if precision == "float32":  # no TensorFloat-32 matrix products on GPUs that have them: plain float32 numbers
        tf.config.experimental.enable_tensor_float_32_execution(False)
    os.makedirs(out, exist_ok=True)
    source, source_test, pool, test = _split_digits()
    rows = []
    started = time.perf_counter()

    def log(text):
        if verbose:
            print(f"[demo {time.perf_counter() - started:6.0f}s] {text}", file=sys.stderr, flush=True)

    for model in models:
        cfg = json.loads(json.dumps(CONFIGS[model]))
        for key in ("epochs_head", "epochs_finetune"):
            cfg[key] = max(1, round(cfg[key] * epochs_scale))
        cfg["source"]["epochs"] = max(1, round(cfg["source"]["epochs"] * epochs_scale))
        for seed in seeds:
            weights, source_acc = _pretrain(model, cfg, source, source_test, seed,
                                            os.path.join(out, "sources", f"{model}-seed{seed}"), precision)
            log(f"{model} seed {seed}: source network (digits 0-4) test accuracy {100 * source_acc:.1f}%")
            for k in shots:
                cached = os.path.join(out, "rows", f"{model}-seed{seed}-k{k}.json")
                if os.path.exists(cached):
                    with open(cached) as f:
                        rows.append(json.load(f))
                    continue
                few = pool.subset(few_shot_index(pool.labels, k, seed=1000 * seed + k))
                row = {"model": model, "seed": seed, "shots": k, "source_accuracy": source_acc}
                keras.backend.clear_session(free_memory=True)
                row["scratch"] = _scratch(model, cfg, few, test, seed, precision, augment)
                keras.backend.clear_session(free_memory=True)
                row["linear"], row["tap"] = _linear_probe(model, weights, few, test, seed)
                keras.backend.clear_session(free_memory=True)
                row["finetune"] = _fine_tune(model, cfg, weights, few, test, seed, precision, augment)
                row["machine"] = _machine()
                os.makedirs(os.path.dirname(cached), exist_ok=True)
                write_json(cached, row)
                rows.append(row)
                log(f"{model} seed {seed} k={k}: scratch {100 * row['scratch']:.1f}%, linear "
                    f"{100 * row['linear']:.1f}%, fine-tune {100 * row['finetune']:.1f}%")
    results = {"command": "python -m finetune demo " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None,
               "models": list(models), "seeds": list(seeds), "shots": list(shots), "precision": precision,
               "augment": augment, "epochs_scale": epochs_scale, "configs": {m: CONFIGS[m] for m in models},
               "machine": _machine(), "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    write_json(os.path.join(out, "results.json"), results)
    table = markdown_table(results)
    with open(os.path.join(out, "transfer.md"), "w") as f:
        f.write(table)
    if verbose:
        print(table)
    return results


def _machine():
    import tensorflow as tf

    gpus = [tf.config.experimental.get_device_details(g).get("device_name", "GPU")
            for g in tf.config.list_physical_devices("GPU")]
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "gpus": gpus,
            "tensorflow": tf.__version__}


def markdown_table(results):
    """The results as a markdown table: one row per network and shots, mean ± std over the seeds."""
    lines = ["| network (tap) | labels/class | source acc. (0-4) | scratch | linear probe | fine-tune |",
             "|---|---:|---:|---:|---:|---:|"]
    rows = results["rows"]
    for model in results["models"]:
        for k in results["shots"]:
            sel = [r for r in rows if r["model"] == model and r["shots"] == k]
            if not sel:
                continue

            cells = [_mean_std([r[key] for r in sel]) for key in ("source_accuracy", "scratch", "linear", "finetune")]
            lines.append(f"| {model} ({sel[0]['tap']}) | {k} | " + " | ".join(cells) + " |")
    n = len(results["seeds"])
    lines.append("")
    lines.append(f"Target test accuracy (%) on the 500 held-out images of digits 5-9, mean ± std over {n} seed"
                 f"{'s' if n != 1 else ''}; precision {results['precision']}; machine: {_describe(results['rows'])}.")
    return "\n".join(lines) + "\n"


def _describe(rows):
    machines = {json.dumps(r.get("machine"), sort_keys=True) for r in rows}
    out = []
    for m in sorted(machines):
        m = json.loads(m) or {}
        gpu = f", {', '.join(m['gpus'])}" if m.get("gpus") else ", no GPU"
        out.append(f"{m.get('cpu_count', '?')} CPU cores{gpu}, TensorFlow {m.get('tensorflow', '?')}")
    return "; ".join(out) or "unknown"


def _mean_std(values):
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def register(sub):
    p = sub.add_parser("demo", help="the transfer experiment: mnist5k digits 0-4 -> 5-9 with 10 and 50 labels",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--models", default="lenet5,resnet20", help=f"comma-separated, from {sorted(CONFIGS)}")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    p.add_argument("--shots", default="10,50", help="labelled target images per class")
    p.add_argument("--precision", default="float32")
    p.add_argument("--augment", default="lenet", help="augmentation of scratch and fine-tuning on the target")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiplies every epoch count")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args):
    from finetune.errors import FinetuneError

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in CONFIGS]
    if unknown:
        raise FinetuneError(f"The demo knows {sorted(CONFIGS)}. Received: {unknown}")
    run_demo(args.out, models=models, seeds=tuple(range(args.seeds)),
             shots=tuple(int(k) for k in args.shots.split(",")), precision=args.precision, augment=args.augment,
             epochs_scale=args.epochs_scale, verbose=0 if args.quiet else 1)
    return 0
