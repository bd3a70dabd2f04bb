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
import math
import os
import time

import numpy as np

from finetune.errors import FinetuneError

__all__ = [
    "HEAD_PREFIX",
    "balanced_split",
    "batch_stream",
    "build_transfer_model",
    "check_labels",
    "fine_tune",
    "fit_steps",
    "frozen_layer_names",
    "keras_augmenter",
    "layer_groups",
    "linear_head",
    "load_arrays",
    "phase_recipe",
    "precision_scope",
    "set_phase",
    "step_budget",
    "warmup_cosine",
]

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


def load_arrays(source, backbone, *, fit=None, batch_size=256):
    """All images of ``source`` fitted to the backbone's input and preprocessed: ``(x, y)`` arrays (for
    inference; training goes through :func:`kerasarch.training.train`'s input pipeline)."""
    from finetune.backbone import prepare_batch

    xs, ys = [], []
    for start in range(0, len(source), batch_size):
        images, labels, _ = source.read(start, start + batch_size, channels=backbone.input_shape[-1])
        if len(labels):
            xs.append(
                prepare_batch(
                    images, backbone.input_shape, backbone.preprocessing, input_config=backbone.input_for(fit)
                )
            )
            ys.append(labels)
    if not xs:
        raise FinetuneError(f"No readable images in {source.name}.")
    return np.concatenate(xs), np.concatenate(ys)


@contextlib.contextmanager
def precision_scope(precision="float32", strategy=None):
    """Builds models under the dtype policy of ``precision`` (``auto`` as :func:`kerasarch.training.train`
    decides it) and inside ``strategy``'s scope; yields ``(policy, strategy)``."""
    from kerasarch import training
    from kerasarch.training.precision import dtype_policy

    try:
        policy = training.resolve_precision(precision)
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    strategy = training.make_strategy(strategy)
    with dtype_policy(policy), strategy.scope():
        yield policy, strategy


def phase_recipe(lr, *, batch_size=32, optimizer="adam", augment="none", preprocessing="unit", weight_decay=0.0):
    """The :func:`kerasarch.training.get_recipe` overrides of one fine-tuning phase: a constant learning rate."""
    return {
        "base": "generic",
        "optimizer": optimizer,
        "lr": float(lr),
        "momentum": 0.9,
        "nesterov": False,
        "lr_scaling": None,
        "batch_size": int(batch_size),
        "schedule": {"type": "constant"},
        "augment": augment,
        "preprocessing": preprocessing,
        "weight_decay": float(weight_decay),
        "dropout": None,
    }


def fine_tune(
    model,
    train_ds,
    val_ds=None,
    *,
    frozen=(),
    train_bn=False,
    epochs_head=5,
    epochs_finetune=5,
    lr_head=1e-3,
    lr_finetune=1e-4,
    batch_size=32,
    optimizer="adam",
    augment="none",
    preprocessing="unit",
    weight_decay=0.0,
    strategy=None,
    callbacks=(),
    seed=0,
    verbose=0,
    out_dir=None,
    initial_epoch=0,
):
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
        recipe = phase_recipe(
            lr,
            batch_size=batch_size,
            optimizer=optimizer,
            augment=augment,
            preprocessing=preprocessing,
            weight_decay=weight_decay,
        )
        result = training.train(
            model,
            train_ds,
            val_ds,
            recipe=recipe,
            epochs=hi - lo,
            precision="auto",
            strategy=strategy,
            out_dir=os.path.join(out_dir, phase) if out_dir else None,
            seed=seed + (1 if phase == "finetune" else 0),
            callbacks=list(callbacks),
            verbose=verbose,
        )
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


# --------------------------------------------------------------------------------------------------------------
# LP-FT with schedules in optimizer steps (the default of ``finetune train``).

#: The default step budget: ``PASSES`` passes over the training set at batch ``REFERENCE_BATCH``, at least
#: ``MIN_STEPS`` optimizer updates; the batch size the user picks does not change the number of updates.
PASSES, REFERENCE_BATCH, MIN_STEPS = 30, 32, 300


def step_budget(num_train, *, passes=PASSES, min_steps=MIN_STEPS, reference_batch=REFERENCE_BATCH):
    """Optimizer updates for a training set of ``num_train`` images: ``max(min_steps, ceil(passes * num_train /
    reference_batch))``, a budget that grows with the data set and has a floor for tiny ones. It does not depend on
    the batch size actually used (a larger batch sees more images in the same number of updates)."""
    if num_train < 1:
        raise FinetuneError(f"The training set is empty. Received: {num_train} images.")
    return max(int(min_steps), math.ceil(passes * int(num_train) / int(reference_batch)))


def balanced_split(labels, fraction, seed, class_names=None):
    """Class-balanced validation split: ``round(fraction * n_c)`` images of each class ``c`` (at least one, so no
    class is left out of validation), chosen with ``seed``.

    Returns:
        Sorted ``(train, val)`` index arrays.

    Raises:
        FinetuneError: before any training, when a class has fewer than 2 labelled images, or when the split would
            leave a class without training images.
    """
    labels = np.asarray(labels)
    if not 0.0 < float(fraction) < 1.0:
        raise FinetuneError(f"--val-fraction must be between 0 and 1 (exclusive). Received: {fraction!r}")
    names = list(class_names) if class_names is not None else None

    def name(c):
        return names[c] if names is not None and 0 <= c < len(names) else int(c)

    counts = {int(c): int(np.sum(labels == c)) for c in (range(len(names)) if names else np.unique(labels))}
    few = {name(c): n for c, n in counts.items() if n < 2}
    if few:
        raise FinetuneError(
            f"Every class needs at least 2 labelled images (one to train, one to validate). "
            f"Received: {few} (class: images)."
        )
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in sorted(counts):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(fraction * len(idx))))
        if k >= len(idx):
            raise FinetuneError(
                f"A validation fraction of {fraction} takes all {len(idx)} images of class "
                f"{name(c)!r}, leaving none to train on; lower --val-fraction or give --val."
            )
        held += idx[:k].tolist()
        kept += idx[k:].tolist()
    return np.sort(np.asarray(kept, "int64")), np.sort(np.asarray(held, "int64"))


def check_labels(labels, classes, what, *, minimum=1):
    """Raises a :class:`FinetuneError` naming every class of ``range(len(classes))`` with fewer than ``minimum``
    images in ``labels``."""
    counts = np.bincount(np.asarray(labels, "int64"), minlength=len(classes))
    short = {str(classes[c]): int(counts[c]) for c in range(len(classes)) if counts[c] < minimum}
    if short:
        raise FinetuneError(
            f"{what} needs at least {minimum} image(s) of every class. Received: {short} (class: images)."
        )


def warmup_cosine(lr, steps, warmup=0.1):
    """A linear warm-up over ``warmup`` of ``steps`` (a fraction) from 0 to ``lr``, then cosine decay to 0
    (Loshchilov & Hutter 2017, arXiv:1608.03983; Goyal et al. 2017, arXiv:1706.02677):
    ``keras.optimizers.schedules.CosineDecay`` with ``warmup_target``."""
    import keras

    w = int(round(float(warmup) * steps)) if warmup < 1 else int(warmup)
    w = min(w, steps - 1)
    if w <= 0:
        return keras.optimizers.schedules.CosineDecay(float(lr), decay_steps=max(1, steps), alpha=0.0)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps - w), alpha=0.0, warmup_target=float(lr), warmup_steps=w
    )


def layer_groups(model, spec, decay):
    """Layer-wise learning-rate multipliers (Howard & Ruder 2018, arXiv:1801.06146; Clark et al. 2020,
    arXiv:2003.10555): with ``n`` declared taps, the layers up to the first get ``decay ** (n - 1)``, those up to
    the next ``decay ** (n - 2)`` ..., those up to the last tap, after it and the head get 1.

    Returns:
        ``{layer name: multiplier}`` for every layer of ``model``.
    """
    import keras

    from kerasarch.features import list_taps, resolve_taps

    mult = {layer.name: 1.0 for layer in model.layers}
    if decay in (None, 1, 1.0):
        return mult
    taps = []
    for tap in list_taps(spec):
        try:
            taps.append(resolve_taps(model, [tap], spec)[tap])
        except ValueError:
            continue
    seen = set()
    depth = len(taps)
    for i, layer in enumerate(taps):
        upto = {lay.name for lay in keras.Model(model.inputs, model.get_layer(layer).output).layers}
        for name in upto - seen:
            if not name.startswith(HEAD_PREFIX):
                mult[name] = float(decay) ** (depth - 1 - i)
        seen |= upto
    return mult


def keras_augmenter(*, randaugment=0, random_erasing=0.0, mixup=0.0, cutmix=0.0, seed=0):
    """A batch transform ``(images 0-255, one-hot labels) -> (images, labels)`` made of Keras's own layers:
    ``keras.layers.RandAugment`` (Cubuk et al. 2020, arXiv:1909.13719; ``randaugment`` operations per image),
    ``RandomErasing`` (Zhong et al. 2020, arXiv:1708.04896; applied with probability ``random_erasing``),
    ``MixUp`` (Zhang et al. 2018, arXiv:1710.09412; Beta(``mixup``, ``mixup``)) and ``CutMix`` (Yun et al. 2019,
    arXiv:1905.04899; Beta(``cutmix``, ``cutmix``)); ``None`` when none is asked for."""
    import keras

    if not (randaugment or random_erasing or mixup or cutmix):
        return None
    ra = keras.layers.RandAugment(value_range=(0, 255), num_ops=int(randaugment), seed=seed) if randaugment else None
    er = (
        keras.layers.RandomErasing(factor=float(random_erasing), value_range=(0, 255), seed=seed + 1)
        if random_erasing
        else None
    )
    mx = keras.layers.MixUp(alpha=float(mixup), seed=seed + 2) if mixup else None
    cm = keras.layers.CutMix(factor=float(cutmix), seed=seed + 3) if cutmix else None

    def transform(images, labels):
        if ra is not None:
            images = ra(images, training=True)
        if er is not None:
            images = er(images, training=True)
        for layer in (mx, cm):
            if layer is not None:
                out = layer({"images": images, "labels": labels}, training=True)
                images, labels = out["images"], out["labels"]
        return images, labels

    return transform


def batch_stream(
    train_ds,
    input_shape,
    classes,
    *,
    batch_size,
    preprocessing,
    augment="none",
    seed=0,
    augmenter=None,
    memory_budget=1 << 30,
):
    """An endless iterator of training batches ``(images, one-hot labels)``: a seeded reshuffle every pass, the
    ``augment`` preset of :mod:`kerasarch.data` (a per-example seed), the Keras ``augmenter`` on images in
    ``[0, 255]``, then the input convention ``preprocessing``.

    Images fitted to the input are held in memory when they take under ``memory_budget`` bytes (one ``tf.data``
    pipeline for the whole run: small data sets pass many times); otherwise, and for the presets that crop raw
    images, epoch after epoch of :class:`kerasarch.data.pipeline.InputPipeline`.
    """
    import tensorflow as tf

    from kerasarch.data import preprocess
    from kerasarch.data.pipeline import InputPipeline
    from kerasarch.data.transforms import augment as augment_image
    from kerasarch.data.transforms import crops_from_raw

    @tf.autograph.experimental.do_not_convert
    def finish(x, y):
        y = tf.one_hot(tf.cast(tf.reshape(y, [-1]), tf.int32), classes)
        if augmenter is not None:
            x, y = augmenter(x, y)
        return preprocess(x, preprocessing), y

    h, w, c = input_shape
    n = getattr(train_ds, "num_examples", None) or int(train_ds.cardinality())
    if not crops_from_raw(augment) and 0 < n and n * h * w * c * 4 <= memory_budget:
        fitted = InputPipeline(train_ds, input_shape, batch_size=256, training=False, preprocessing="none")
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in fitted.dataset()])
        xs, ys = np.concatenate(xs), np.concatenate(ys).reshape(-1)
        key = tf.constant([int(seed), 7919], tf.int64)

        @tf.autograph.experimental.do_not_convert
        def train_map(index, example):
            x, y = example
            if augment != "none":
                x = augment_image(x, tf.random.experimental.stateless_fold_in(key, index), augment, (h, w), c)
            return x, y

        ds = (
            tf.data.Dataset.from_tensor_slices((xs, ys))
            .shuffle(len(ys), seed=int(seed), reshuffle_each_iteration=True)
            .repeat()
        )
        ds = ds.enumerate().map(train_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size).map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        yield from ds.prefetch(tf.data.AUTOTUNE)
        return
    pipe = InputPipeline(
        train_ds, input_shape, batch_size=batch_size, training=True, augment=augment, preprocessing="none", seed=seed
    )
    epoch = 0
    while True:
        yield from pipe.dataset(epoch).map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        epoch += 1


def fit_steps(
    model,
    train_ds,
    val_ds=None,
    *,
    steps,
    lr,
    batch_size=32,
    optimizer="adamw",
    weight_decay=1e-4,
    warmup=0.1,
    layer_decay=None,
    spec=None,
    preprocessing="unit",
    augment="none",
    augmenter=None,
    accumulation=1,
    ema=None,
    eval_every=None,
    patience=None,
    stop_after=None,
    seed=0,
    verbose=0,
    log=None,
):
    """Trains the trainable layers of ``model`` for ``steps`` optimizer updates, with early stopping on
    validation that restores the best weights.

    The learning rate warms up linearly over ``warmup`` of the updates, then decays to zero on a cosine
    (:func:`warmup_cosine`); with ``layer_decay`` each layer's rate is scaled by :func:`layer_groups` (one Keras
    optimizer per depth). ``accumulation`` > 1 sums the gradients of that many batches per update (the optimizer's
    own ``gradient_accumulation_steps``); ``ema`` (a momentum, e.g. 0.999) keeps an exponential moving average of
    the weights (the optimizer's ``use_ema``) and evaluates and keeps those averaged weights.

    The model is evaluated on ``val_ds`` before the first update and every ``eval_every`` updates (default: 20
    evaluations over the budget); training stops when ``patience`` evaluations in a row (default: a third of
    them) score below the best validation accuracy, and the best evaluated weights are restored (of equal
    accuracies the latest: with few validation images accuracy plateaus while the loss, which also measures
    confidence, drifts up; the more trained weights were the better choice in our runs, see docs/transfer.md).
    ``stop_after`` ends the run after that many updates of the ``steps``-long schedule (a refit replaying the
    chosen length).

    Args:
        model: a built Keras model whose ``trainable`` flags say what trains (:func:`set_phase`), ending in softmax.
        train_ds, val_ds: unbatched ``(image, label)`` datasets of ``[0, 255]`` images.
        steps: optimizer updates (each from ``accumulation`` batches of ``batch_size``).

    Returns:
        A history dict: ``step`` (updates done at each evaluation), ``val_loss``, ``val_accuracy``, ``lr``, ``loss``
        (mean training loss since the previous evaluation), ``best_step``, ``updates`` (optimizer updates run),
        ``stopped_early``, ``seconds``.
    """
    import keras
    import tensorflow as tf

    from kerasarch.data.pipeline import InputPipeline

    steps, accumulation = int(steps), max(1, int(accumulation or 1))
    if steps < 1:
        raise FinetuneError(f"The step budget must be at least 1 update. Received: {steps}")
    classes = int(model.output_shape[-1])
    input_shape = tuple(model.input_shape[1:])
    keras.utils.set_random_seed(seed)
    variables = list(model.trainable_variables)
    if not variables:
        raise FinetuneError("Nothing to train: every layer of the model is frozen.")
    mult = layer_groups(model, spec, layer_decay) if layer_decay and spec is not None else {}
    owner = {id(v): layer.name for layer in model.layers for v in layer.trainable_weights}
    groups = {}
    for i, v in enumerate(variables):
        groups.setdefault(mult.get(owner.get(id(v)), 1.0), []).append(i)
    policy = keras.config.dtype_policy().name if hasattr(keras.config.dtype_policy(), "name") else "float32"
    mixed16 = any(getattr(v, "dtype", None) == "float16" for v in model.weights) or policy == "mixed_float16"
    if mixed16 and len(groups) > 1:
        groups = {1.0: list(range(len(variables)))}  # one loss-scale optimizer: no layer-wise rates in float16
    optimizers = []
    for m, idx in sorted(groups.items()):
        schedule = warmup_cosine(lr * m, steps * accumulation, warmup)
        kw = {
            "gradient_accumulation_steps": accumulation if accumulation > 1 else None,
            "use_ema": bool(ema),
            "ema_momentum": float(ema or 0.99),
        }
        if optimizer == "adamw":
            opt = keras.optimizers.AdamW(schedule, weight_decay=weight_decay, **kw)
        elif optimizer == "adam":
            opt = keras.optimizers.Adam(schedule, **kw)
        elif optimizer == "sgd":
            from kerasarch.training.optimizers import SGD  # Keras' SGD with TensorFlow's fused momentum update

            opt = SGD(schedule, momentum=0.9, **kw)
        elif optimizer == "rmsprop":
            opt = keras.optimizers.RMSprop(schedule, momentum=0.9, **kw)
        else:
            raise FinetuneError(f"--optimizer must be adamw, adam, sgd or rmsprop. Received: {optimizer!r}")
        if mixed16:
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build([variables[i] for i in idx])
        optimizers.append((m, opt, idx))

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            p = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(keras.losses.categorical_crossentropy(y, p))
            if model.losses:
                loss = loss + tf.add_n([tf.cast(t, tf.float32) for t in model.losses])
            scaled = optimizers[0][1].scale_loss(loss) if mixed16 else loss
        grads = tape.gradient(scaled, variables)
        for _, opt, idx in optimizers:
            opt.apply([grads[i] for i in idx], [variables[i] for i in idx])
        return loss

    val_pipe = None
    if val_ds is not None:
        val_pipe = InputPipeline(
            val_ds,
            input_shape,
            batch_size=max(64, batch_size),
            training=False,
            augment=augment,
            preprocessing=preprocessing,
        )

    @tf.function(reduce_retracing=True)
    def eval_step(x, y):
        p = tf.cast(model(x, training=False), tf.float32)
        y = tf.cast(tf.reshape(y, [-1]), tf.int32)
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y, p))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(p, -1, output_type=tf.int32), y), tf.float32))
        return loss, correct

    def evaluate_now():
        backup = None
        if ema:  # evaluate (and keep) the averaged weights
            backup = [v.numpy() for v in variables]
            for _, opt, idx in optimizers:
                if opt.iterations.numpy() > 0:
                    opt.finalize_variable_values([variables[i] for i in idx])
        loss = correct = count = 0.0
        for x, y in val_pipe.dataset():
            batch_loss, c = eval_step(x, y)
            loss, correct, count = loss + float(batch_loss), correct + float(c), count + int(np.shape(y)[0])
        weights = model.get_weights()
        if backup is not None:
            for v, value in zip(variables, backup):
                v.assign(value)
        return loss / count, correct / count, weights

    evals = max(1, min(20, steps))
    eval_every = int(eval_every or max(1, math.ceil(steps / evals)))
    patience = int(patience if patience is not None else max(3, math.ceil(evals / 3)))
    stream = batch_stream(
        train_ds,
        input_shape,
        classes,
        batch_size=batch_size,
        preprocessing=preprocessing,
        augment=augment,
        seed=seed,
        augmenter=augmenter,
    )
    history = {"step": [], "loss": [], "val_loss": [], "val_accuracy": [], "lr": []}
    best, best_weights, best_step, bad = None, None, 0, 0
    started = time.perf_counter()
    running, seen, update, stopped = 0.0, 0, 0, False

    def record(step_done):
        nonlocal best, best_weights, best_step, bad
        history["step"].append(step_done)
        history["loss"].append(running / seen if seen else float("nan"))
        history["lr"].append(float(optimizers[-1][1].learning_rate))
        if val_pipe is None:
            return False
        loss, acc, weights = evaluate_now()
        history["val_loss"].append(loss)
        history["val_accuracy"].append(acc)
        if best is None or acc >= best[0]:
            best, best_weights, best_step, bad = (acc, loss), weights, step_done, 0
        else:
            bad += 1
        if log:
            trained = f"loss {history['loss'][-1]:.4f}, " if seen else ""
            log(f"update {step_done}/{steps}: {trained}val_loss {loss:.4f}, val_accuracy {acc:.4f}")
        return bad >= patience

    record(0)
    last = min(steps, int(stop_after)) if stop_after is not None else steps
    while update < last:
        for _ in range(accumulation):
            x, y = next(stream)
            loss = float(train_step(x, y))
            if not math.isfinite(loss):
                raise FinetuneError(f"The loss became {loss} at update {update + 1}; lower the learning rate.")
            running, seen = running + loss, seen + 1
        update += 1
        if update % eval_every == 0 or update == last:
            if record(update):
                stopped = update < last
                break
            running, seen = 0.0, 0
    if best_weights is not None:
        model.set_weights(best_weights)
    elif ema:
        for _, opt, idx in optimizers:
            opt.finalize_variable_values([variables[i] for i in idx])
    history.update(
        best_step=best_step,
        updates=update,
        stopped_early=stopped,
        iterations=[int(opt.iterations.numpy()) for _, opt, _ in optimizers],
        seconds=time.perf_counter() - started,
    )
    return history


def linear_head(model, train_ds, *, preprocessing, C=1.0, backend="sklearn", seed=0, batch_size=256):
    """Phase 1 of LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
    Out-of-Distribution", arXiv:2202.10054): the transfer model's linear head set to the linear probe's solution
    on the features it reads (:func:`finetune.linear.solve_linear`: L2 multinomial logistic regression to
    convergence on standardised features, the standardisation folded into the Dense layer).

    Returns:
        ``(features, labels, (kernel, bias, mean, std))``: the cached features and the probe's solution.
    """
    import keras

    from finetune.linear import folded_head, solve_linear
    from kerasarch.data.pipeline import InputPipeline

    dense = model.get_layer(f"{HEAD_PREFIX}predictions")
    reader = keras.Model(model.inputs, dense.input)
    pipe = InputPipeline(
        train_ds, tuple(model.input_shape[1:]), batch_size=batch_size, training=False, preprocessing=preprocessing
    )
    feats, labels = [], []
    for x, y in pipe.dataset():
        feats.append(np.asarray(reader(x, training=False), "float32"))
        labels.append(np.asarray(y).reshape(-1))
    feats, labels = np.concatenate(feats), np.concatenate(labels).astype("int64")
    solution = solve_linear(feats, labels, int(dense.units), C=C, backend=backend, seed=seed)
    dense.set_weights(list(folded_head(*solution)))
    return feats, labels, solution
