"""The fine-tuning model and its schedule: a new head on a tap of a pretrained network, a head phase with
the network frozen, then an unfrozen phase at a lower learning rate.

BatchNorm layers of the frozen part stay in inference mode: Keras 3 runs a BatchNormalization layer whose
``trainable`` is False with its moving statistics even when the model is called with ``training=True``, so
freezing a layer also freezes its statistics (the fine-tuning trap of keras-team/keras#9214, where frozen
BN layers kept normalising with the new data's batch statistics). By default BatchNorm layers stay frozen in
the unfrozen phase too, the advice of the Keras transfer-learning guide for small target sets
(``train_bn=True`` lets those above the freeze point adapt).
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np

from finetune.errors import FinetuneError

__all__ = ["HEAD_PREFIX", "build_transfer_model", "fine_tune", "frozen_layer_names", "load_arrays", "phase_recipe",
           "precision_scope", "set_phase"]

HEAD_PREFIX = "head_"


def build_transfer_model(backbone, classes, *, head_tap=None, head_width=0, dropout=0.0, name=None):
    """A new classifier for ``classes`` on the output of ``head_tap`` of ``backbone``.

    Args:
        backbone: a :class:`~finetune.backbone.Backbone`.
        classes: the target task's number of classes.
        head_tap: where the head reads (paper tap or layer name); default: the penultimate tap.
        head_width: units of a hidden ReLU layer in the head (0: a linear head).
        dropout: dropout rate before each Dense layer of the head.
        name: the model name (default ``<model>_transfer``).

    Returns:
        A Functional model sharing the backbone's layers; the head's layers are named ``head_*``.
    """
    import keras
    from keras import layers

    from kerasarch.builder import predictions_dense
    from kerasarch.features import penultimate_tap, resolve_taps

    spec = backbone.spec
    head_tap = head_tap or penultimate_tap(spec)
    try:
        layer = resolve_taps(backbone.model, [head_tap], spec)[head_tap]
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    x = backbone.model.get_layer(layer).output
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(x)
    elif len(x.shape) != 2:
        x = layers.Flatten(name=f"{HEAD_PREFIX}flatten")(x)
    if head_width:
        if dropout:
            x = layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout1")(x)
        x = layers.Dense(int(head_width), activation="relu", name=f"{HEAD_PREFIX}fc")(x)
    if dropout:
        x = layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    outputs = predictions_dense(classes, "softmax", name=f"{HEAD_PREFIX}predictions")(x)
    model = keras.Model(backbone.model.inputs, outputs, name=name or f"{spec.name}_transfer")
    model._finetune_head_tap = head_tap
    return model


def frozen_layer_names(backbone, freeze_to):
    """The backbone layers frozen in the unfrozen phase: everything the output of tap ``freeze_to`` depends on.

    ``freeze_to``: a tap or layer name; ``"none"`` (nothing frozen: the whole network is fine-tuned) or
    ``"all"`` (the backbone stays frozen: only the head trains).
    """
    import keras

    from kerasarch.features import resolve_taps

    model = backbone.model
    if freeze_to in (None, "none", ""):
        return set()
    if freeze_to == "all":
        return {layer.name for layer in model.layers}
    try:
        layer = resolve_taps(model, [freeze_to], backbone.spec)[freeze_to]
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    upto = keras.Model(model.inputs, model.get_layer(layer).output)
    return {lay.name for lay in upto.layers}


def set_phase(model, phase, frozen=(), *, train_bn=False):
    """Sets which layers of a transfer model train.

    ``phase="head"``: only the ``head_*`` layers; ``phase="finetune"``: every layer not in ``frozen``, with
    BatchNorm layers frozen (inference mode) unless ``train_bn``. The model must be compiled afterwards.
    """
    import keras

    if phase not in ("head", "finetune"):
        raise ValueError(f"phase must be 'head' or 'finetune'. Received: {phase!r}")
    frozen = set(frozen)
    for layer in model.layers:
        if layer.name.startswith(HEAD_PREFIX):
            layer.trainable = True
        elif phase == "head" or layer.name in frozen:
            layer.trainable = False
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = bool(train_bn)
        else:
            layer.trainable = True
    return model


def load_arrays(source, backbone, *, fit="auto", batch_size=256):
    """All images of ``source`` fitted to the backbone's input and preprocessed: ``(x, y)`` arrays (for
    inference; training goes through :func:`kerasarch.training.train`'s input pipeline)."""
    from finetune.backbone import prepare_batch

    xs, ys = [], []
    for start in range(0, len(source), batch_size):
        images, labels, _ = source.read(start, start + batch_size, channels=backbone.input_shape[-1])
        if len(labels):
            xs.append(prepare_batch(images, backbone.input_shape, backbone.preprocessing, fit=fit))
            ys.append(labels)
    if not xs:
        raise FinetuneError(f"No readable images in {source.name}.")
    return np.concatenate(xs), np.concatenate(ys)


@contextlib.contextmanager
def precision_scope(precision="float32", strategy=None):
    """Builds models under the dtype policy of ``precision`` (``auto`` as :func:`kerasarch.training.train`
    decides it) and inside ``strategy``'s scope; yields ``(policy, strategy)``."""
    import keras

    from kerasarch import training

    try:
        policy = training.resolve_precision(precision)
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    strategy = training.make_strategy(strategy)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        with strategy.scope():
            yield policy, strategy
    finally:
        keras.config.set_dtype_policy(previous)


def phase_recipe(lr, *, batch_size=32, optimizer="adam", augment="none", preprocessing="unit", weight_decay=0.0):
    """The :func:`kerasarch.training.get_recipe` overrides of one fine-tuning phase: a constant learning rate."""
    return {"base": "generic", "optimizer": optimizer, "lr": float(lr), "momentum": 0.9, "nesterov": False,
            "lr_scaling": None, "batch_size": int(batch_size), "schedule": {"type": "constant"},
            "augment": augment, "preprocessing": preprocessing, "weight_decay": float(weight_decay), "dropout": None}


def fine_tune(model, train_ds, val_ds=None, *, frozen=(), train_bn=False, epochs_head=5, epochs_finetune=5,
              lr_head=1e-3, lr_finetune=1e-4, batch_size=32, optimizer="adam", augment="none", preprocessing="unit",
              weight_decay=0.0, strategy=None, callbacks=(), seed=0, verbose=0, out_dir=None, initial_epoch=0):
    """Trains a transfer model in two phases with :func:`kerasarch.training.train`: ``epochs_head`` epochs of
    the head alone at ``lr_head``, then ``epochs_finetune`` epochs with the layers outside ``frozen`` unfrozen at
    ``lr_finetune`` (constant rates, the optimizer restarted between phases).

    Args:
        model: a transfer model (:func:`build_transfer_model`), built under the strategy's scope.
        train_ds, val_ds: unbatched ``(image, label)`` datasets of ``[0, 255]`` images (the training pipeline
            fits, augments, preprocesses and batches them).
        preprocessing: the backbone's input convention.
        strategy: the ``tf.distribute`` strategy the model was built under (``None``: the default).
        out_dir: the run folder; each phase checkpoints in ``out_dir/head`` and ``out_dir/finetune``, so a
            rerun after an interruption resumes the phase it was in.
        initial_epoch: epochs of the schedule already done (keras-tuner's Hyperband continues trials this way);
            the epochs are numbered across both phases.

    Returns:
        The merged history dict (lists over the epochs run, with ``phase``).
    """
    from kerasarch import training

    history = {}
    total = epochs_head + epochs_finetune
    started = time.perf_counter()
    for phase, lo, hi, lr in (("head", 0, epochs_head, lr_head), ("finetune", epochs_head, total, lr_finetune)):
        lo = max(lo, initial_epoch)
        if hi <= lo:
            continue
        set_phase(model, phase, frozen, train_bn=train_bn)
        recipe = phase_recipe(lr, batch_size=batch_size, optimizer=optimizer, augment=augment,
                              preprocessing=preprocessing, weight_decay=weight_decay)
        result = training.train(model, train_ds, val_ds, recipe=recipe, epochs=hi - lo, precision="auto",
                                strategy=strategy, out_dir=os.path.join(out_dir, phase) if out_dir else None,
                                seed=seed + (1 if phase == "finetune" else 0), callbacks=list(callbacks),
                                verbose=verbose)
        if result.stop_reason in ("nan_loss", "interrupted"):
            raise FinetuneError(f"The {phase} phase stopped: {result.stop_reason}.")
        for k, v in result.history.items():
            if k not in ("epoch", "seconds", "lr"):
                history.setdefault(k, []).extend(float(a) for a in v)
        history.setdefault("lr", []).extend([float(lr)] * (hi - lo))
        history.setdefault("phase", []).extend([phase] * (hi - lo))
    history["seconds"] = time.perf_counter() - started
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "history.json"), "w") as f:
            json.dump(history, f, indent=2)
    return history
