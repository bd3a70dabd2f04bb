"""``python -m finetune train``: fine-tune a pretrained network end to end on a data set.

A new head for the data set's classes reads a tap of the network (default: the penultimate one). Phase 1
trains the head with the whole network frozen; phase 2 unfreezes the layers after ``--freeze-to`` at a lower
learning rate. Frozen BatchNorm layers stay in inference mode (see :mod:`finetune.transfer`). Both phases run
on :func:`kerasarch.training.train` (its input pipeline, precision, distribution strategy and crash-safe
checkpoints: rerunning an interrupted command resumes it). The run directory gets ``model.keras`` (the final
model), ``history.json``, ``result.json`` and one kerasarch.training run folder per phase.
"""

from __future__ import annotations

import os
import sys

from finetune.errors import FinetuneError
from finetune.store import write_json

__all__ = ["add_schedule_args", "open_splits", "register", "run", "train"]


def open_splits(data, *, split="train", val=None, val_fraction=0.2, test=None, seed=0, data_dir=None):
    """``(train, val, test)`` :class:`~finetune.sources.ImageSource` objects (``val``/``test`` may be
    ``None``): ``val`` defaults to a stratified ``val_fraction`` of ``data``; all must name the same classes."""
    from finetune.sources import ImageSource, open_source, stratified_split

    def get(d, s):
        return d if isinstance(d, ImageSource) else open_source(d, split=s, data_dir=data_dir)

    source = get(data, split)
    val_source = get(val, "test") if val is not None else None
    test_source = get(test, "test") if test is not None else None
    for other in (val_source, test_source):
        if other is not None and list(other.class_names) != list(source.class_names):
            raise FinetuneError(f"{other.name} has the classes {other.class_names}, {source.name} has "
                                f"{source.class_names}; they must be the same.")
    if val_source is None and val_fraction:
        kept, held = stratified_split(source.labels, val_fraction, seed)
        source, val_source = source.subset(kept), source.subset(held)
    return source, val_source, test_source


def train(model, data, out, *, weights=None, split="train", val=None, val_fraction=0.2, test=None,
          head_tap=None, freeze_to="none", head_width=0, dropout=0.0, epochs_head=5, epochs_finetune=5,
          lr_head=1e-3, lr_finetune=1e-4, batch_size=32, optimizer="adam", augment="none", train_bn=False,
          input_shape=None, classes=None, preprocessing=None, seed=0, precision="auto", strategy="auto",
          data_dir=None, verbose=1):
    """Fine-tunes registry model ``model`` (with ``weights``) on ``data`` and writes the run to ``out``.

    Args:
        model: registry name.
        data: a folder (one sub-folder per class), ``mnist5k``, ``digits``, ``tfds:NAME``, or an
            :class:`~finetune.sources.ImageSource`.
        out: run directory (an interrupted run resumes from it).
        weights: ``.keras`` / ``.weights.h5`` of the pretrained network (``None``: random, i.e. from scratch).
        split: the split of ``data`` to train on.
        val: validation data (same forms as ``data``), or ``None``: ``val_fraction`` of each class of ``data``.
        test: optional test data, evaluated once at the end.
        head_tap: tap the new head reads (default: the penultimate tap).
        freeze_to: tap up to which the network stays frozen in phase 2; ``"none"``: fine-tune everything;
            ``"all"``: only the head ever trains.
        head_width, dropout: the head's hidden ReLU layer (0: none) and dropout rate.
        epochs_head, epochs_finetune, lr_head, lr_finetune: the two phases.
        batch_size, optimizer (``adam``, ``sgd``, ``adamw``, ``rmsprop``), augment: the training recipe
            (``augment``: a ``kerasarch.data.AUGMENTATIONS`` preset).
        train_bn: let BatchNorm layers above ``freeze_to`` update in phase 2.
        input_shape, classes, preprocessing: see :func:`finetune.backbone.load_backbone`.
        seed: initialisation, split and shuffling seed.
        precision, strategy: as in :func:`kerasarch.training.train` (``auto``: mixed precision where the hardware
            has it; several GPUs or ``TF_CONFIG`` workers).

    Returns:
        The result dict written to ``out/result.json``.
    """
    from finetune.backbone import load_backbone
    from finetune.transfer import build_transfer_model, fine_tune, frozen_layer_names, precision_scope
    from kerasarch.training import evaluate

    source, val_source, test_source = open_splits(data, split=split, val=val, val_fraction=val_fraction, test=test,
                                                  seed=seed, data_dir=data_dir)
    with precision_scope(precision, strategy) as (policy, strat):
        backbone = load_backbone(model, weights, input_shape=input_shape, classes=classes, seed=seed,
                                 preprocessing=preprocessing)
        frozen = frozen_layer_names(backbone, freeze_to)
        net = build_transfer_model(backbone, len(source.class_names), head_tap=head_tap, head_width=head_width,
                                   dropout=dropout)
    channels = backbone.input_shape[-1]
    train_ds = source.to_dataset(channels)
    val_ds = val_source.to_dataset(channels) if val_source is not None else None
    os.makedirs(out, exist_ok=True)
    history = fine_tune(net, train_ds, val_ds, frozen=frozen, train_bn=train_bn, epochs_head=epochs_head,
                        epochs_finetune=epochs_finetune, lr_head=lr_head, lr_finetune=lr_finetune,
                        batch_size=batch_size, optimizer=optimizer, augment=augment,
                        preprocessing=backbone.preprocessing, strategy=strat, seed=seed,
                        verbose=verbose if verbose else 0, out_dir=out)
    net.save(os.path.join(out, "model.keras"))
    result = {**backbone.describe(), "data": source.describe(), "class_names": list(source.class_names),
              "head_tap": net._finetune_head_tap, "freeze_to": freeze_to, "frozen_layers": len(frozen),
              "head_width": head_width, "dropout": dropout, "epochs_head": epochs_head,
              "epochs_finetune": epochs_finetune, "lr_head": lr_head, "lr_finetune": lr_finetune,
              "batch_size": batch_size, "optimizer": optimizer, "augment": augment, "train_bn": train_bn,
              "seed": seed, "precision": policy, "strategy": type(strat).__name__, "num_train": len(source),
              "train_accuracy": history.get("accuracy", [None])[-1], "seconds": round(history["seconds"], 1)}
    if val_ds is not None:
        result.update(num_val=len(val_source), val_accuracy=history.get("val_accuracy", [None])[-1])
    if test_source is not None:
        scores = evaluate(net, test_source.to_dataset(channels), preprocessing=backbone.preprocessing)
        result.update(num_test=len(test_source), test_accuracy=float(scores["accuracy"]))
    write_json(os.path.join(out, "result.json"), result)
    return result


def add_schedule_args(p):
    """The arguments shared by ``train`` and ``tune``."""
    p.add_argument("--weights", default=None, help="pretrained .keras / .weights.h5 (default: random init)")
    p.add_argument("--split", default="train", help="split of DATA to train on (built-in and TFDS data)")
    p.add_argument("--val", default=None, help="validation data (default: --val-fraction of DATA)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--input-shape", default=None, help="H,W,C (default: the weights file's, else the model's)")
    p.add_argument("--classes", type=int, default=None, help="classifier width of a .weights.h5 file")
    p.add_argument("--preprocessing", default=None,
                   help="input convention of the weights if not the recorded/default one (caffe, torch, tf, unit, "
                        "lecun, none)")
    p.add_argument("--head-tap", default=None, help="tap the new head reads (default: the penultimate tap)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=("adam", "sgd", "adamw", "rmsprop"), default="adam")
    p.add_argument("--augment", default="none", help="augmentation preset of kerasarch.data (default: none)")
    p.add_argument("--train-bn", action="store_true", help="let BatchNorm layers above --freeze-to adapt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="TFDS data directory")


def register(sub):
    p = sub.add_parser("train", help="fine-tune a network end to end: head phase, then unfrozen phase",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="registry name")
    p.add_argument("data", help="a folder with one sub-folder per class, mnist5k, digits, or tfds:NAME")
    p.add_argument("--out", required=True, help="run directory")
    add_schedule_args(p)
    p.add_argument("--test", default=None, help="test data evaluated once at the end")
    p.add_argument("--freeze-to", default="none",
                   help="tap up to which the network stays frozen in phase 2 ('none': all trains, 'all': head only)")
    p.add_argument("--head-width", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--epochs-head", type=int, default=5)
    p.add_argument("--epochs-finetune", type=int, default=5)
    p.add_argument("--lr-head", type=float, default=1e-3)
    p.add_argument("--lr-finetune", type=float, default=1e-4)
    p.add_argument("--precision", default="auto", help="auto, float32, mixed_float16, mixed_bfloat16")
    p.add_argument("--strategy", default="auto", help="auto, mirrored, multi_worker, default")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args):
    from finetune.backbone import parse_shape

    result = train(args.model, args.data, args.out, weights=args.weights, split=args.split, val=args.val,
                   val_fraction=args.val_fraction, test=args.test, head_tap=args.head_tap, freeze_to=args.freeze_to,
                   head_width=args.head_width, dropout=args.dropout, epochs_head=args.epochs_head,
                   epochs_finetune=args.epochs_finetune, lr_head=args.lr_head, lr_finetune=args.lr_finetune,
                   batch_size=args.batch_size, optimizer=args.optimizer, augment=args.augment,
                   train_bn=args.train_bn, input_shape=parse_shape(args.input_shape), classes=args.classes,
                   preprocessing=args.preprocessing, seed=args.seed, precision=args.precision,
                   strategy=None if args.strategy == "default" else args.strategy, data_dir=args.data_dir,
                   verbose=0 if args.quiet else "auto")
    line = f"fine-tuned {result['model']} on {result['num_train']} images: train {100 * result['train_accuracy']:.1f}%"
    if "val_accuracy" in result:
        line += f", val {100 * result['val_accuracy']:.1f}% ({result['num_val']} images)"
    if "test_accuracy" in result:
        line += f", test {100 * result['test_accuracy']:.1f}% ({result['num_test']} images)"
    print(line + f" -> {args.out}", file=sys.stdout)
    return 0
