"""``python -m finetune tune``: a keras-tuner search over the fine-tuning of a pretrained network.

Searched: the head's hidden width and dropout, the learning rates of both phases, and how deep the network
is unfrozen in the second phase (``freeze_to``: ``all`` = head only, a tap, or ``none`` = everything).
Algorithms: ``hyperband`` (trials continue from their parent's checkpoint, epochs counted across both phases)
and ``bayesian``.

The tuner's known failure modes are handled: Keras state and memory are released between trials
(``keras.backend.clear_session``), only the best ``--keep-best`` trials' checkpoints are kept (plus, during a
Hyperband search, those a later round may continue from), and a search resumes where it stopped when the same
command is run again (``overwrite=False``; ``--overwrite`` starts afresh).

Distributed search (keras-tuner's chief/worker protocol over gRPC): run the same command once per process with

    KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 KERASTUNER_TUNER_ID=chief    python -m finetune tune ...
    KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 KERASTUNER_TUNER_ID=tuner0   python -m finetune tune ...
    KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 KERASTUNER_TUNER_ID=tuner1   python -m finetune tune ...

The chief holds the oracle and hands out trials; each worker (any ID without "chief") trains them. All
processes need the same ``--out`` directory (shared storage across machines). Workers give up when the chief
does not answer within ``--oracle-timeout`` seconds (keras-tuner's own default is an hour). The chief returns
when every worker has finished, then prunes the checkpoints and writes ``best.json``.
"""

from __future__ import annotations

import gc
import json
import os
import sys

from finetune.errors import FinetuneError
from finetune.store import write_json

__all__ = ["make_hypermodel", "register", "release_memory", "run", "tune"]

PROJECT = "search"


def _kt():
    try:
        import keras_tuner as kt
    except ImportError as e:  # pragma: no cover
        raise FinetuneError("keras-tuner is not installed (pip install keras-tuner).") from e
    return kt


def _default_freeze_choices(taps, head_tap):
    """``all`` (head only), the two taps below the head tap, and ``none`` (everything unfrozen)."""
    below = taps[: taps.index(head_tap)] if head_tap in taps else taps[:-1]
    return ["all", *below[::-1][:2], "none"]


def make_hypermodel(
    model,
    weights,
    classes,
    *,
    input_shape=None,
    source_classes=None,
    preprocessing=None,
    head_tap=None,
    freeze_choices=None,
    head_widths=(0, 64, 128, 256),
    epochs_head=2,
    seed=0,
    train_bn=False,
    batch_size=32,
    augment="none",
    policy="float32",
):
    """The keras-tuner HyperModel of fine-tuning registry model ``model`` with ``weights`` (checked up front:
    the weights fit, the taps exist), and the loaded :class:`~finetune.backbone.Backbone`."""
    from finetune.backbone import load_backbone
    from finetune.transfer import frozen_layer_names
    from kerasarch.features import list_taps, penultimate_tap
    from kerasarch.training.precision import dtype_policy

    kt = _kt()
    backbone = load_backbone(
        model, weights, input_shape=input_shape, classes=source_classes, seed=seed, preprocessing=preprocessing
    )
    head_tap = head_tap or penultimate_tap(backbone.spec)
    choices = list(freeze_choices or _default_freeze_choices(list_taps(backbone.spec), head_tap))
    for choice in choices:  # an unknown tap fails now, not in trial 7
        frozen_layer_names(backbone, choice)
    input_shape, convention = backbone.input_shape, backbone.preprocessing

    class FinetuneHyperModel(kt.HyperModel):
        """Builds a transfer model per trial and trains it with the two-phase schedule."""

        def build(self, hp):
            from finetune.transfer import build_transfer_model

            width = hp.Choice("head_width", list(head_widths))
            dropout = hp.Float("dropout", 0.0, 0.5, step=0.1)
            hp.Float("lr_head", 1e-4, 1e-2, sampling="log")
            hp.Float("lr_finetune", 1e-5, 1e-3, sampling="log")
            freeze_to = hp.Choice("freeze_to", choices)
            with dtype_policy(policy):  # set per trial: the tuner's clear_session() resets the global policy
                bb = load_backbone(
                    model, weights, input_shape=input_shape, classes=source_classes, seed=seed, preprocessing=convention
                )
                net = build_transfer_model(bb, classes, head_tap=head_tap, head_width=width, dropout=dropout)
            net._finetune_frozen = frozen_layer_names(bb, freeze_to)
            return net

        def fit(self, hp, net, train_ds, validation_data=None, epochs=4, initial_epoch=0, callbacks=(), **kwargs):
            from finetune.transfer import fine_tune

            head = min(epochs_head, epochs)
            with dtype_policy(policy):  # fine_tune scales the loss under the mixed_float16 policy
                history = fine_tune(
                    net,
                    train_ds,
                    validation_data,
                    frozen=net._finetune_frozen,
                    train_bn=train_bn,
                    epochs_head=head,
                    epochs_finetune=epochs - head,
                    lr_head=hp.get("lr_head"),
                    lr_finetune=hp.get("lr_finetune"),
                    batch_size=batch_size,
                    augment=augment,
                    preprocessing=convention,
                    callbacks=callbacks,
                    seed=seed,
                    initial_epoch=initial_epoch,
                )
            return {"val_accuracy": max(history["val_accuracy"]), "val_loss": min(history["val_loss"])}

    return FinetuneHyperModel(name=f"{model}_finetune"), backbone


def _tidy(tuner_cls):
    """A subclass of keras-tuner's ``tuner_cls`` that frees memory after each trial and deletes the checkpoints
    of trials that can no longer matter."""
    kt = _kt()

    class Tidy(tuner_cls):
        keep_best = 1

        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            # keras-tuner imports tensorboard on every trial, even without a TensorBoard callback; TensorFlow
            # no longer installs it, so every trial would fail on the import.
            if any(cb.__class__.__name__ == "TensorBoard" for cb in callbacks):
                super()._configure_tensorboard_dir(callbacks, trial, execution)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            release_memory()
            self.prune_checkpoints()

        def prune_checkpoints(self, final=False):
            """Deletes the checkpoints of finished trials outside the best ``keep_best``; during a Hyperband
            search also keeps those of unfinished brackets (a later round loads them). Returns the deleted ids."""
            from kerasarch.keras_compat import hyperband_brackets, tuner_has_chief_oracle

            oracle = self.oracle
            distributed = tuner_has_chief_oracle()
            hyperband = isinstance(oracle, kt.oracles.HyperbandOracle) or (
                distributed and not isinstance(oracle, kt.Oracle) and tuner_cls is kt.Hyperband
            )
            if hyperband and not final and (distributed or hyperband_brackets(oracle) is None):
                return []
            try:
                keep = {t.trial_id for t in oracle.get_best_trials(self.keep_best)}
            except Exception:  # noqa: BLE001 - the chief may be gone at the end of a distributed search
                return []
            if hyperband and not final:
                keep |= {
                    info[key]
                    for bracket in hyperband_brackets(oracle)
                    for rnd in bracket["rounds"]
                    for info in rnd
                    for key in ("id", "past_id")
                    if info.get(key)
                }
            deleted = []
            for entry in sorted(os.listdir(self.project_dir)):
                trial_id = entry[len("trial_") :]
                path = os.path.join(self.project_dir, entry)
                if not entry.startswith("trial_") or trial_id in keep:
                    continue
                try:
                    with open(os.path.join(path, "trial.json")) as f:
                        status = json.load(f).get("status")
                except (OSError, json.JSONDecodeError):
                    continue
                if status not in ("COMPLETED", "INVALID", "FAILED"):
                    continue
                for name in ("checkpoint.weights.h5", "checkpoint"):
                    ckpt = os.path.join(path, name)
                    if os.path.exists(ckpt):
                        os.remove(ckpt)
                        deleted.append(trial_id)
            return deleted

    Tidy.__name__ = f"Tidy{tuner_cls.__name__}"
    return Tidy


def release_memory():
    """Drops the finished trial's Keras graph, layer names and Python garbage."""
    import keras

    keras.backend.clear_session(free_memory=True)
    gc.collect()


def tune(
    model,
    data,
    out,
    *,
    weights=None,
    split="train",
    val=None,
    val_fraction=0.2,
    algorithm="hyperband",
    max_trials=10,
    max_epochs=6,
    epochs=4,
    factor=3,
    epochs_head=2,
    head_tap=None,
    freeze_choices=None,
    head_widths=(0, 64, 128, 256),
    keep_best=1,
    batch_size=32,
    augment="none",
    train_bn=False,
    input_shape=None,
    classes=None,
    preprocessing=None,
    precision="float32",
    seed=0,
    overwrite=False,
    oracle_timeout=600,
    data_dir=None,
    verbose=1,
):
    """Runs (or resumes) a keras-tuner search over the fine-tuning of ``model`` on ``data`` in ``out``.

    Args:
        model, data, weights, split, val, val_fraction, head_tap, batch_size, augment, train_bn, input_shape,
            classes, preprocessing, seed, data_dir: as in :func:`finetune.train.train`.
        algorithm: ``"hyperband"`` (``max_epochs``, ``factor``) or ``"bayesian"`` (``max_trials`` trials of
            ``epochs`` epochs).
        epochs_head: epochs of the head phase in each trial; the rest of a trial's epochs are the unfrozen phase.
        freeze_choices: the ``freeze_to`` values to search (default: all, two taps below the head, none).
        head_widths: the head's hidden widths to search (0: a linear head).
        keep_best: how many trials keep their checkpoints.
        precision: the dtype policy of every trial (``auto`` as kerasarch.training decides).
        overwrite: start the search afresh instead of resuming it.
        oracle_timeout: seconds a distributed worker waits for the chief.

    Returns:
        The ``best.json`` dict (best hyperparameters and score) in the chief or a local search; ``None`` in a
        distributed worker.
    """
    kt = _kt()
    from finetune.train import open_splits
    from kerasarch.keras_compat import set_tuner_oracle_timeout, tuner_has_chief_oracle, tuner_is_chief_oracle
    from kerasarch.training import resolve_precision

    set_tuner_oracle_timeout(oracle_timeout)  # keras-tuner waits an hour for an absent chief otherwise
    if algorithm not in ("hyperband", "bayesian"):
        raise FinetuneError(f"--algorithm must be hyperband or bayesian. Received: {algorithm!r}")
    try:
        policy = resolve_precision(precision)
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    chief = tuner_is_chief_oracle()
    source, val_source, _ = open_splits(
        data, split=split, val=val, val_fraction=val_fraction, seed=seed, data_dir=data_dir
    )
    if val_source is None:
        raise FinetuneError("A search needs validation data: give --val or a --val-fraction above 0.")
    hypermodel, backbone = make_hypermodel(
        model,
        weights,
        len(source.class_names),
        input_shape=input_shape,
        source_classes=classes,
        preprocessing=preprocessing,
        head_tap=head_tap,
        freeze_choices=freeze_choices,
        head_widths=head_widths,
        epochs_head=epochs_head,
        seed=seed,
        train_bn=train_bn,
        batch_size=batch_size,
        augment=augment,
        policy=policy,
    )
    common = {
        "objective": "val_accuracy",
        "directory": out,
        "project_name": PROJECT,
        "overwrite": overwrite,
        "seed": seed,
    }
    if algorithm == "hyperband":
        tuner = _tidy(kt.Hyperband)(hypermodel, max_epochs=max_epochs, factor=factor, **common)
    else:
        tuner = _tidy(kt.BayesianOptimization)(hypermodel, max_trials=max_trials, **common)
    tuner.keep_best = keep_best
    channels = backbone.input_shape[-1]
    del backbone
    release_memory()
    if chief:  # the chief only hands out trials
        train_ds = val_ds = None
    else:
        train_ds, val_ds = source.to_dataset(channels), val_source.to_dataset(channels)
    fit_kwargs = {"validation_data": val_ds, "verbose": 1 if verbose else 0}
    if algorithm == "bayesian":
        fit_kwargs["epochs"] = epochs
    tuner.search(train_ds, **fit_kwargs)
    if tuner_has_chief_oracle() and not chief:
        return None
    tuner.prune_checkpoints(final=True)
    best = tuner.oracle.get_best_trials(1)
    trials = tuner.oracle.trials
    summary = {
        "model": model,
        "algorithm": algorithm,
        "num_trials": len(trials),
        "completed": sum(t.status == "COMPLETED" for t in trials.values()),
        "best_trial": best[0].trial_id if best else None,
        "best_score": best[0].score if best else None,
        "best_hyperparameters": dict(best[0].hyperparameters.values) if best else None,
        "checkpoints_kept": sorted(
            t for t in trials if os.path.exists(os.path.join(tuner.project_dir, f"trial_{t}", "checkpoint.weights.h5"))
        ),
    }
    write_json(os.path.join(out, "best.json"), summary)
    if verbose:
        print(
            f"[tune] {summary['completed']}/{summary['num_trials']} trials completed; best {summary['best_trial']}: "
            f"val_accuracy {summary['best_score']} with {summary['best_hyperparameters']}",
            file=sys.stderr,
        )
    return summary


def register(sub):
    from finetune.train import add_schedule_args

    p = sub.add_parser(
        "tune",
        help="keras-tuner search over head, dropout, learning rates, unfreeze depth",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("model", help="registry name")
    p.add_argument("data", help="a folder with one sub-folder per class, mnist5k, digits, or tfds:NAME")
    p.add_argument("--out", required=True, help="search directory (resumed when it exists)")
    add_schedule_args(p)
    p.add_argument("--algorithm", choices=("hyperband", "bayesian"), default="hyperband")
    p.add_argument("--max-trials", type=int, default=10, help="bayesian: number of trials")
    p.add_argument("--epochs", type=int, default=4, help="bayesian: epochs per trial (both phases)")
    p.add_argument("--max-epochs", type=int, default=6, help="hyperband: most epochs a trial gets")
    p.add_argument("--factor", type=int, default=3, help="hyperband: reduction factor")
    p.add_argument("--epochs-head", type=int, default=2, help="epochs of the head phase in each trial")
    p.add_argument(
        "--freeze-choices",
        default=None,
        help="comma-separated freeze_to values to search (default: all, two taps below the head, none)",
    )
    p.add_argument("--head-widths", default="0,64,128,256")
    p.add_argument("--keep-best", type=int, default=1, help="trials whose checkpoints are kept")
    p.add_argument("--oracle-timeout", type=float, default=600, help="distributed: seconds to wait for the chief")
    p.add_argument("--precision", default="float32", help="float32, mixed_float16, mixed_bfloat16, auto")
    p.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args):
    from finetune.backbone import parse_shape

    summary = tune(
        args.model,
        args.data,
        args.out,
        weights=args.weights,
        split=args.split,
        val=args.val,
        val_fraction=args.val_fraction,
        algorithm=args.algorithm,
        max_trials=args.max_trials,
        max_epochs=args.max_epochs,
        epochs=args.epochs,
        factor=args.factor,
        epochs_head=args.epochs_head,
        head_tap=args.head_tap,
        freeze_choices=args.freeze_choices.split(",") if args.freeze_choices else None,
        head_widths=tuple(int(w) for w in args.head_widths.split(",")),
        keep_best=args.keep_best,
        batch_size=args.batch_size,
        augment=args.augment,
        train_bn=args.train_bn,
        input_shape=parse_shape(args.input_shape),
        classes=args.classes,
        preprocessing=args.preprocessing,
        precision=args.precision,
        seed=args.seed,
        overwrite=args.overwrite,
        oracle_timeout=args.oracle_timeout,
        data_dir=args.data_dir,
        verbose=0 if args.quiet else 1,
    )
    if summary is not None:
        print(json.dumps(summary, indent=2))
    else:
        print("[tune] worker finished: the chief holds the results.")
    return 0
