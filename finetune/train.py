"""``python -m finetune train``: fine-tune a pretrained network end to end on a data set.

Methods (``--method``):

- ``lp-ft`` (the default with ``--weights``): LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained
  Features and Underperform Out-of-Distribution", arXiv:2202.10054). Phase 1 fits the new linear head in closed
  form on the cached features of the head tap (the linear probe: L2 multinomial logistic regression to
  convergence); phase 2 fine-tunes the whole network from that head at a small learning rate, with a step
  budget that grows with the data set (:func:`finetune.transfer.step_budget`), warm-up and cosine decay,
  layer-wise learning-rate decay for deep networks, BatchNorm statistics frozen, and early stopping on the
  validation split that restores the best weights;
- ``scratch`` (the default without ``--weights``): the same schedule, every layer training from random weights;
- ``two-phase``: the previous default: ``--epochs-head`` epochs of the head with the network frozen, then
  ``--epochs-finetune`` epochs unfrozen after ``--freeze-to`` at ``--lr-finetune`` (constant rates), on
  :func:`kerasarch.training.train` (crash-safe checkpoints: rerunning an interrupted command resumes it).

``--auto`` fits a linear probe on every declared tap up to the penultimate one, picks the tap with the best
validation accuracy, runs LP-FT on it and keeps whichever of the probe and the fine-tuned network scores better on
validation, reporting both. The validation split is class-balanced and never leaves a class out; a class with
fewer than 2 labelled images is an error before anything trains. The run directory gets ``model.keras``,
``history.json`` and ``result.json``; rerunning a finished command with the same settings returns its result.
"""

from __future__ import annotations

import json
import os
import sys

from finetune.errors import FinetuneError
from finetune.store import write_json
from kerasarch.training.loop import MODEL_FILE

__all__ = ["METHODS", "add_schedule_args", "open_splits", "register", "run", "train"]

METHODS = ("lp-ft", "scratch", "two-phase")
#: Default peak learning rates of the step-budget methods (Adam, batch 32).
LR_DEFAULTS = {"lp-ft": 3e-4, "scratch": 1e-3}


def open_splits(data, *, split="train", val=None, val_fraction=0.2, test=None, seed=0, data_dir=None, with_all=False):
    """``(train, val, test)`` :class:`~finetune.sources.ImageSource` objects (``val``/``test`` may be
    ``None``): ``val`` defaults to a class-balanced ``val_fraction`` of ``data``
    (:func:`finetune.transfer.balanced_split`); all must name the same classes, and every class needs training and
    validation images. ``with_all=True`` appends every labelled image of ``data`` (training and validation
    split together) to the tuple.

    Raises:
        FinetuneError: different classes, a class with fewer than 2 labelled images when splitting, a split that
            would empty a class, a class missing from the training or the validation data.
    """
    from finetune.sources import ImageSource, open_source
    from finetune.transfer import balanced_split, check_labels

    def get(d, s):
        return d if isinstance(d, ImageSource) else open_source(d, split=s, data_dir=data_dir)

    source = labelled = get(data, split)
    val_source = get(val, "test") if val is not None else None
    test_source = get(test, "test") if test is not None else None
    for other in (val_source, test_source):
        if other is not None and list(other.class_names) != list(source.class_names):
            raise FinetuneError(
                f"{other.name} has the classes {other.class_names}, {source.name} has "
                f"{source.class_names}; they must be the same."
            )
    if val_source is None and val_fraction:
        kept, held = balanced_split(source.labels, val_fraction, seed, source.class_names)
        source, val_source = source.subset(kept), source.subset(held)
    check_labels(source.labels, source.class_names, f"The training data {source.name}")
    if val_source is not None:
        check_labels(val_source.labels, source.class_names, f"The validation data {val_source.name}")
    return (source, val_source, test_source, labelled) if with_all else (source, val_source, test_source)


def _auto_taps(backbone, source, val_source, *, C, seed):
    """Linear probes on every declared tap up to the penultimate one: ``{tap: validation accuracy}``."""
    import numpy as np

    from finetune.linear import pool_features, solve_linear
    from finetune.transfer import load_arrays
    from kerasarch.features import feature_extractor, list_taps, penultimate_tap

    taps = list_taps(backbone.spec)
    last = penultimate_tap(backbone.spec)
    taps = taps[: taps.index(last) + 1]
    fx = feature_extractor(backbone.model, taps, spec=backbone.spec)
    pooled = []
    for src in (source, val_source):
        x, y = load_arrays(src, backbone)
        parts = {t: [] for t in taps}
        for start in range(0, len(x), 128):
            out = fx([x[start : start + 128]], training=False)
            for t in taps:
                parts[t].append(pool_features(out[t].numpy() if hasattr(out[t], "numpy") else out[t]))
        pooled.append(({t: np.concatenate(v) for t, v in parts.items()}, y))
    (ftr, ytr), (fva, yva) = pooled
    scores = {}
    for t in taps:
        kernel, bias, mean, std = solve_linear(ftr[t], ytr, len(source.class_names), C=C, seed=seed)
        pred = (((fva[t] - mean) / std) @ kernel + bias).argmax(1)
        scores[t] = float((pred == yva).mean())
    return scores


def train(
    model,
    data,
    out,
    *,
    weights=None,
    method=None,
    auto=False,
    split="train",
    val=None,
    val_fraction=0.2,
    test=None,
    head_tap=None,
    freeze_to="none",
    head_width=0,
    dropout=0.0,
    steps=None,
    lr=None,
    warmup=0.1,
    patience=None,
    refit="auto",
    layer_decay="auto",
    probe_c=1.0,
    weight_decay=0.0,
    mixup=0.0,
    cutmix=0.0,
    randaugment=0,
    random_erasing=0.0,
    accumulation=1,
    ema=None,
    epochs_head=5,
    epochs_finetune=5,
    lr_head=1e-3,
    lr_finetune=1e-4,
    batch_size=32,
    optimizer="adam",
    augment="none",
    train_bn=False,
    input_shape=None,
    classes=None,
    preprocessing=None,
    seed=0,
    precision="auto",
    strategy="auto",
    data_dir=None,
    verbose=1,
):
    """Fine-tunes registry model ``model`` (with ``weights``) on ``data`` and writes the run to ``out``.

    Args:
        model: registry name.
        data: a folder (one sub-folder per class), ``mnist5k``, ``digits``, ``tfds:NAME``, or an
            :class:`~finetune.sources.ImageSource`.
        out: run directory.
        weights: ``.keras`` / ``.weights.h5`` of the pretrained network (``None``: random, i.e. from scratch).
        method: ``"lp-ft"`` (default with weights), ``"scratch"`` (default without) or ``"two-phase"``.
        auto: choose the head tap by linear probes on the validation split, and the linear probe or LP-FT.
        split: the split of ``data`` to train on.
        val: validation data (same forms as ``data``), or ``None``: a class-balanced ``val_fraction`` of ``data``.
        test: optional test data, evaluated once at the end.
        head_tap: tap the new head reads (default: the penultimate tap).
        freeze_to: tap up to which the network stays frozen while fine-tuning; ``"none"``: fine-tune everything;
            ``"all"``: only the head ever trains.
        head_width, dropout: the head's hidden ReLU layer (0: none; LP-FT needs a linear head) and dropout rate.
        steps: optimizer updates of the step-budget methods (default: :func:`finetune.transfer.step_budget`).
        lr: their peak learning rate (default: 3e-4 for LP-FT, 1e-3 from scratch); ``warmup``: the warm-up fraction.
        patience: evaluations without improvement before early stopping (default: a third of them).
        refit: after early stopping on a validation split of ``data``, train again on all of ``data`` (training and
            validation images) for the chosen number of updates; ``"auto"``: when fewer than 1,000 images train
            (a few labels are too precious to leave out of the final model).
        layer_decay: layer-wise learning-rate decay per declared tap (``"auto"``: 0.7 for networks with 10 or
            more weighted layers, else none).
        probe_c: inverse L2 strength of the phase-1 linear probe.
        weight_decay: decoupled weight decay (AdamW) when ``optimizer="adamw"``.
        mixup, cutmix, randaugment, random_erasing: Keras augmentation layers (see
            :func:`finetune.transfer.keras_augmenter`).
        accumulation: batches whose gradients are summed per optimizer update.
        ema: momentum of an exponential moving average of the weights, evaluated and kept (``None``: off).
        epochs_head, epochs_finetune, lr_head, lr_finetune: the ``two-phase`` schedule.
        batch_size, optimizer (``adam``, ``sgd``, ``adamw``, ``rmsprop``), augment: the training recipe
            (``augment``: a ``kerasarch.data.AUGMENTATIONS`` preset).
        train_bn: let BatchNorm layers above ``freeze_to`` update while fine-tuning.
        input_shape, classes, preprocessing: see :func:`finetune.backbone.load_backbone`.
        seed: initialisation, split and shuffling seed.
        precision, strategy: as in :func:`kerasarch.training.train` (the step-budget methods run on one device).

    Returns:
        The result dict written to ``out/result.json``.
    """
    method = method or ("lp-ft" if weights is not None or auto else "scratch")
    if method not in METHODS:
        raise FinetuneError(f"--method must be one of {', '.join(METHODS)}. Received: {method!r}")
    if method == "scratch" and auto:
        raise FinetuneError(
            "--auto chooses between a linear probe and LP-FT of pretrained weights; it does not "
            "apply to --method scratch."
        )
    if method == "lp-ft" and head_width:
        raise FinetuneError(
            f"LP-FT fits a linear head (phase 1 is the linear probe); --head-width must be 0 with "
            f"--method lp-ft. Received: {head_width}"
        )
    source, val_source, test_source, labelled = open_splits(
        data, split=split, val=val, val_fraction=val_fraction, test=test, seed=seed, data_dir=data_dir, with_all=True
    )
    if refit == "auto":
        refit = val is None and val_source is not None and len(source) < 1000
    config = {
        "model": model,
        "weights": os.path.abspath(weights) if weights else None,
        "method": method,
        "auto": auto,
        "data": source.describe(),
        "head_tap": head_tap,
        "freeze_to": freeze_to,
        "head_width": head_width,
        "dropout": dropout,
        "steps": steps,
        "lr": lr,
        "warmup": warmup,
        "patience": patience,
        "refit": bool(refit),
        "layer_decay": layer_decay,
        "probe_c": probe_c,
        "weight_decay": weight_decay,
        "mixup": mixup,
        "cutmix": cutmix,
        "randaugment": randaugment,
        "random_erasing": random_erasing,
        "accumulation": accumulation,
        "ema": ema,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "augment": augment,
        "train_bn": train_bn,
        "seed": seed,
        "precision": precision,
        "val": val_source.describe() if val_source is not None else None,
    }
    # What both methods take: the network, its head, the recipe and the run's settings.
    common = {
        "weights": weights,
        "head_tap": head_tap,
        "freeze_to": freeze_to,
        "head_width": head_width,
        "dropout": dropout,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "augment": augment,
        "train_bn": train_bn,
        "input_shape": input_shape,
        "classes": classes,
        "preprocessing": preprocessing,
        "seed": seed,
        "precision": precision,
        "strategy": strategy,
        "verbose": verbose,
    }
    if method == "two-phase":
        return _two_phase(
            model,
            out,
            source,
            val_source,
            test_source,
            config,
            epochs_head=epochs_head,
            epochs_finetune=epochs_finetune,
            lr_head=lr_head,
            lr_finetune=lr_finetune,
            **common,
        )
    done = os.path.join(out, "result.json")
    if os.path.exists(done) and os.path.exists(os.path.join(out, MODEL_FILE)):
        with open(done) as f:
            previous = json.load(f)
        if previous.get("config") == json.loads(json.dumps(config)):
            return previous  # a finished run with the same settings
    return _step_budget_run(
        model,
        out,
        source,
        val_source,
        test_source,
        config,
        method=method,
        labelled=labelled if refit else None,
        auto=auto,
        steps=steps,
        lr=lr,
        warmup=warmup,
        patience=patience,
        layer_decay=layer_decay,
        probe_c=probe_c,
        weight_decay=weight_decay,
        mixup=mixup,
        cutmix=cutmix,
        randaugment=randaugment,
        random_erasing=random_erasing,
        accumulation=accumulation,
        ema=ema,
        **common,
    )


def _weighted_layers(model):
    return sum(1 for layer in model.layers if any(len(w.shape) >= 2 for w in layer.weights))


def _finish(net, backbone, out, source, val_source, test_source, result):
    """Saves the model (with its card, when kerasarch has model cards), evaluates the test data, writes
    ``result.json``."""
    from kerasarch.fileio import atomic_save_model
    from kerasarch.training import evaluate

    os.makedirs(out, exist_ok=True)
    net = backbone.card_for(
        net, source.class_names, recipe=result.get("config"), data={**source.describe(), "examples": len(source)}
    )
    atomic_save_model(net, os.path.join(out, MODEL_FILE))
    result.update(
        {
            **backbone.describe(),
            "data": source.describe(),
            "class_names": list(source.class_names),
            "num_train": len(source),
        }
    )
    if val_source is not None:
        result["num_val"] = len(val_source)
    if test_source is not None:
        scores = evaluate(net, test_source.to_dataset(backbone.input_shape[-1]), preprocessing=backbone.preprocessing)
        result.update(num_test=len(test_source), test_accuracy=float(scores["accuracy"]))
    write_json(os.path.join(out, "result.json"), result)
    return result


def _step_budget_run(
    model,
    out,
    source,
    val_source,
    test_source,
    config,
    *,
    weights,
    method,
    labelled,
    auto,
    head_tap,
    freeze_to,
    head_width,
    dropout,
    steps,
    lr,
    warmup,
    patience,
    layer_decay,
    probe_c,
    weight_decay,
    mixup,
    cutmix,
    randaugment,
    random_erasing,
    accumulation,
    ema,
    batch_size,
    optimizer,
    augment,
    train_bn,
    input_shape,
    classes,
    preprocessing,
    seed,
    precision,
    strategy,
    verbose,
):
    import time

    from finetune.backbone import load_backbone
    from finetune.transfer import (
        build_transfer_model,
        fit_steps,
        frozen_layer_names,
        keras_augmenter,
        linear_head,
        precision_scope,
        set_phase,
        step_budget,
    )

    started = time.perf_counter()

    def log(text):
        if verbose:
            print(f"[train {time.perf_counter() - started:5.0f}s] {text}", file=sys.stderr, flush=True)

    with precision_scope(precision, strategy) as (policy, strat):
        if strat.num_replicas_in_sync > 1:
            raise FinetuneError(
                f"--method {method} trains on one device; use --method two-phase to train on "
                f"{strat.num_replicas_in_sync} replicas."
            )
        backbone = load_backbone(
            model, weights, input_shape=input_shape, classes=classes, seed=seed, preprocessing=preprocessing
        )
        channels = backbone.input_shape[-1]
        report = {}
        if auto:
            if val_source is None:
                raise FinetuneError("--auto picks on validation data: give --val or a --val-fraction above 0.")
            scores = _auto_taps(backbone, source, val_source, C=probe_c, seed=seed)
            head_tap = max(scores, key=lambda t: (scores[t], list(scores).index(t)))
            report["probe_val_accuracy"] = scores
            log("linear probes (val accuracy): " + ", ".join(f"{t} {100 * a:.1f}%" for t, a in scores.items()))
        frozen = frozen_layer_names(backbone, freeze_to)
        net = build_transfer_model(
            backbone, len(source.class_names), head_tap=head_tap, head_width=head_width, dropout=dropout
        )
    train_ds = source.to_dataset(channels)
    val_ds = val_source.to_dataset(channels) if val_source is not None else None
    budget = int(steps or step_budget(len(source)))
    decay = layer_decay
    if decay == "auto":
        decay = 0.7 if method == "lp-ft" and _weighted_layers(backbone.model) >= 10 else None
    decay = float(decay) if decay not in (None, "none", 0) else None
    rate = float(lr or LR_DEFAULTS[method])
    if method == "lp-ft":
        feats, _, _ = linear_head(net, train_ds, preprocessing=backbone.preprocessing, C=probe_c, seed=seed)
        log(f"phase 1: linear head on {net._finetune_head_tap} ({feats.shape[1]} features, {len(feats)} images)")
        set_phase(net, "finetune", frozen, train_bn=train_bn)
    else:  # scratch: everything trains, BatchNorm included
        set_phase(net, "finetune", (), train_bn=True)
    augmenter = keras_augmenter(
        randaugment=randaugment, random_erasing=random_erasing, mixup=mixup, cutmix=cutmix, seed=seed
    )
    schedule = dict(
        steps=budget,
        lr=rate,
        batch_size=batch_size,
        optimizer=optimizer,
        weight_decay=weight_decay,
        warmup=warmup,
        layer_decay=decay,
        augment=augment,
        augmenter=augmenter,
        accumulation=accumulation,
        ema=ema,
        seed=seed,
    )
    history = fit_steps(
        net,
        train_ds,
        val_ds,
        spec=backbone.spec,
        preprocessing=backbone.preprocessing,
        patience=patience,
        log=log if verbose else None,
        **schedule,
    )
    chosen = method
    if auto:
        report.update(
            head_tap=net._finetune_head_tap,
            linear_probe_val_accuracy=history["val_accuracy"][0],
            lp_ft_val_accuracy=max(history["val_accuracy"]),
        )
        chosen = "linear" if history["best_step"] == 0 else "lp-ft"  # step 0 is the probe itself
        report["chosen"] = chosen
        log(
            f"auto: linear probe on {report['head_tap']} {100 * report['linear_probe_val_accuracy']:.1f}% vs LP-FT "
            f"{100 * report['lp_ft_val_accuracy']:.1f}% on validation: keeping the "
            f"{'linear probe' if chosen == 'linear' else 'fine-tuned network'}"
        )
    refit_updates = None
    if labelled is not None:  # the same schedule again on every labelled image, stopped where validation chose
        refit_updates = history["best_step"]
        log(f"refit on all {len(labelled)} labelled images for {refit_updates} of {budget} updates")
        with precision_scope(precision, strategy):
            backbone = load_backbone(
                model, weights, input_shape=input_shape, classes=classes, seed=seed, preprocessing=preprocessing
            )
            net = build_transfer_model(
                backbone,
                len(source.class_names),
                head_tap=net._finetune_head_tap,
                head_width=head_width,
                dropout=dropout,
            )
        all_ds = labelled.to_dataset(channels)
        if method == "lp-ft":
            linear_head(net, all_ds, preprocessing=backbone.preprocessing, C=probe_c, seed=seed)
            set_phase(net, "finetune", frozen, train_bn=train_bn)
        else:
            set_phase(net, "finetune", (), train_bn=True)
        if refit_updates:
            fit_steps(
                net,
                all_ds,
                None,
                stop_after=refit_updates,
                spec=backbone.spec,
                preprocessing=backbone.preprocessing,
                **schedule,
            )
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "history.json"), history)
    result = {
        "refit_updates": refit_updates,
        "config": json.loads(json.dumps(config)),
        "method": method,
        "chosen": chosen,
        "head_tap": net._finetune_head_tap,
        "freeze_to": freeze_to,
        "frozen_layers": len(frozen),
        "steps": budget,
        "updates": history["updates"],
        "best_step": history["best_step"],
        "stopped_early": history["stopped_early"],
        "lr": rate,
        "layer_decay": decay,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "precision": policy,
        "seed": seed,
        "seconds": round(history["seconds"], 1),
        "val_accuracy": (
            history["val_accuracy"][history["step"].index(history["best_step"])] if history["val_accuracy"] else None
        ),
        **report,
    }
    return _finish(net, backbone, out, source, val_source, test_source, result)


def _two_phase(
    model,
    out,
    source,
    val_source,
    test_source,
    config,
    *,
    weights,
    head_tap,
    freeze_to,
    head_width,
    dropout,
    epochs_head,
    epochs_finetune,
    lr_head,
    lr_finetune,
    batch_size,
    optimizer,
    augment,
    train_bn,
    input_shape,
    classes,
    preprocessing,
    seed,
    precision,
    strategy,
    verbose,
):
    """The previous default: a head phase with the network frozen, then the unfrozen phase (epochs, constant
    rates), on :func:`kerasarch.training.train`."""
    from finetune.backbone import load_backbone
    from finetune.transfer import build_transfer_model, fine_tune, frozen_layer_names, precision_scope

    with precision_scope(precision, strategy) as (policy, strat):
        backbone = load_backbone(
            model, weights, input_shape=input_shape, classes=classes, seed=seed, preprocessing=preprocessing
        )
        frozen = frozen_layer_names(backbone, freeze_to)
        net = build_transfer_model(
            backbone, len(source.class_names), head_tap=head_tap, head_width=head_width, dropout=dropout
        )
    channels = backbone.input_shape[-1]
    train_ds = source.to_dataset(channels)
    val_ds = val_source.to_dataset(channels) if val_source is not None else None
    os.makedirs(out, exist_ok=True)
    history = fine_tune(
        net,
        train_ds,
        val_ds,
        frozen=frozen,
        train_bn=train_bn,
        epochs_head=epochs_head,
        epochs_finetune=epochs_finetune,
        lr_head=lr_head,
        lr_finetune=lr_finetune,
        batch_size=batch_size,
        optimizer=optimizer,
        augment=augment,
        preprocessing=backbone.preprocessing,
        strategy=strat,
        seed=seed,
        verbose=verbose if verbose else 0,
        out_dir=out,
    )
    result = {
        "config": json.loads(json.dumps(config)),
        "method": "two-phase",
        "chosen": "two-phase",
        "head_tap": net._finetune_head_tap,
        "freeze_to": freeze_to,
        "frozen_layers": len(frozen),
        "head_width": head_width,
        "dropout": dropout,
        "epochs_head": epochs_head,
        "epochs_finetune": epochs_finetune,
        "lr_head": lr_head,
        "lr_finetune": lr_finetune,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "augment": augment,
        "train_bn": train_bn,
        "seed": seed,
        "precision": policy,
        "strategy": type(strat).__name__,
        "train_accuracy": history.get("accuracy", [None])[-1],
        "seconds": round(history["seconds"], 1),
    }
    if val_ds is not None:
        result["val_accuracy"] = history.get("val_accuracy", [None])[-1]
    return _finish(net, backbone, out, source, val_source, test_source, result)


def add_schedule_args(p):
    """The arguments shared by ``train`` and ``tune``."""
    p.add_argument(
        "--weights",
        default=None,
        help="imagenet, imagenet:<source or checkpoint>, a .h5/.pth/.safetensors/.keras/.weights.h5 file or a run "
        "folder (default: random init)",
    )
    p.add_argument("--split", default="train", help="split of DATA to train on (built-in and TFDS data)")
    p.add_argument("--val", default=None, help="validation data (default: --val-fraction of DATA)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--input-shape", default=None, help="H,W,C (default: the weights file's, else the model's)")
    p.add_argument("--classes", type=int, default=None, help="classifier width of a .weights.h5 file")
    p.add_argument(
        "--preprocessing",
        default=None,
        help="input convention of the weights if not the recorded/default one (caffe, torch, tf, unit, lecun, none)",
    )
    p.add_argument("--head-tap", default=None, help="tap the new head reads (default: the penultimate tap)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=("adam", "sgd", "adamw", "rmsprop"), default="adam")
    p.add_argument("--augment", default="none", help="augmentation preset of kerasarch.data (default: none)")
    p.add_argument("--train-bn", action="store_true", help="let BatchNorm layers above --freeze-to adapt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="TFDS data directory")


def register(sub):
    p = sub.add_parser(
        "train", help="fine-tune a network end to end (LP-FT by default)", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("model", help="registry name")
    p.add_argument("data", help="a folder with one sub-folder per class, mnist5k, digits, or tfds:NAME")
    p.add_argument("--out", required=True, help="run directory")
    add_schedule_args(p)
    p.add_argument("--test", default=None, help="test data evaluated once at the end")
    p.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="lp-ft (default with --weights), scratch (default without), two-phase (the old schedule)",
    )
    p.add_argument(
        "--auto",
        action="store_true",
        help="pick the head tap by linear probes on validation, then the probe or LP-FT, and report it",
    )
    p.add_argument(
        "--freeze-to",
        default="none",
        help="tap up to which the network stays frozen while fine-tuning ('none': all trains, 'all': head only)",
    )
    p.add_argument("--head-width", type=int, default=0, help="two-phase: hidden units of the head (0: linear)")
    p.add_argument("--dropout", type=float, default=0.0)
    g = p.add_argument_group("lp-ft and scratch (schedules in optimizer updates)")
    g.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimizer updates (default: max(300, 30 passes over the training set at batch 32))",
    )
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 3e-4 lp-ft, 1e-3 scratch)")
    g.add_argument("--warmup", type=float, default=0.1, help="linear warm-up, fraction of the updates")
    g.add_argument(
        "--patience",
        type=int,
        default=None,
        help="validations without improvement before stopping (default: a third of the 20)",
    )
    g.add_argument(
        "--layer-decay",
        default="auto",
        help="learning-rate factor per tap towards the input ('auto': 0.7 for deep networks, 'none')",
    )
    g.add_argument("--probe-c", type=float, default=1.0, help="inverse L2 strength of the phase-1 linear probe")
    g.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay with --optimizer adamw")
    g.add_argument("--mixup", type=float, default=0.0, help="keras.layers.MixUp alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="keras.layers.CutMix factor (0: off)")
    g.add_argument("--randaugment", type=int, default=0, help="keras.layers.RandAugment operations per image (0: off)")
    g.add_argument("--random-erasing", type=float, default=0.0, help="keras.layers.RandomErasing probability (0: off)")
    g.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="batches per optimizer update (the optimizer's gradient_accumulation_steps)",
    )
    g.add_argument(
        "--ema",
        type=float,
        default=None,
        help="momentum of weight averaging (the optimizer's use_ema), evaluated and kept (e.g. 0.99)",
    )
    g = p.add_argument_group("two-phase")
    g.add_argument("--epochs-head", type=int, default=5)
    g.add_argument("--epochs-finetune", type=int, default=5)
    g.add_argument("--lr-head", type=float, default=1e-3)
    g.add_argument("--lr-finetune", type=float, default=1e-4)
    p.add_argument("--precision", default="auto", help="auto, float32, mixed_float16, mixed_bfloat16")
    p.add_argument("--strategy", default="auto", help="auto, mirrored, multi_worker, default")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args):
    from finetune.backbone import parse_shape

    decay = args.layer_decay
    if decay not in ("auto", "none"):
        try:
            decay = float(decay)
        except ValueError:
            raise FinetuneError(f"--layer-decay must be auto, none or a number. Received: {decay!r}") from None
    result = train(
        args.model,
        args.data,
        args.out,
        weights=args.weights,
        method=args.method,
        auto=args.auto,
        split=args.split,
        val=args.val,
        val_fraction=args.val_fraction,
        test=args.test,
        head_tap=args.head_tap,
        freeze_to=args.freeze_to,
        head_width=args.head_width,
        dropout=args.dropout,
        steps=args.steps,
        lr=args.lr,
        warmup=args.warmup,
        patience=args.patience,
        layer_decay=decay,
        probe_c=args.probe_c,
        weight_decay=args.weight_decay,
        mixup=args.mixup,
        cutmix=args.cutmix,
        randaugment=args.randaugment,
        random_erasing=args.random_erasing,
        accumulation=args.grad_accum,
        ema=args.ema,
        epochs_head=args.epochs_head,
        epochs_finetune=args.epochs_finetune,
        lr_head=args.lr_head,
        lr_finetune=args.lr_finetune,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        augment=args.augment,
        train_bn=args.train_bn,
        input_shape=parse_shape(args.input_shape),
        classes=args.classes,
        preprocessing=args.preprocessing,
        seed=args.seed,
        precision=args.precision,
        strategy=None if args.strategy == "default" else args.strategy,
        data_dir=args.data_dir,
        verbose=0 if args.quiet else "auto",
    )
    line = f"fine-tuned {result['model']} ({result['method']}) on {result['num_train']} images"
    if args.auto:
        line += f" (auto: {'linear probe' if result['chosen'] == 'linear' else 'LP-FT'} on {result['head_tap']})"
    if result.get("val_accuracy") is not None:
        line += f": val {100 * result['val_accuracy']:.1f}% ({result['num_val']} images)"
    if "test_accuracy" in result:
        line += f", test {100 * result['test_accuracy']:.1f}% ({result['num_test']} images)"
    print(line + f" -> {args.out}", file=sys.stdout)
    return 0
