"""``train()``: the papers' recipes with tf.data input, mixed precision, tf.distribute and crash-safe run folders.

One training loop serves every strategy: ``strategy.run`` around a step that calls the Keras model under a
``GradientTape`` and applies the Keras optimizer. (Keras 3's ``model.fit`` fails under
``MultiWorkerMirroredStrategy``, keras-team/keras#20585; using the same loop everywhere keeps one-device,
multi-device and multi-worker runs numerically comparable.) See :mod:`kerasarch.training.distribute` for the
batch, sharding and learning-rate conventions.

A run folder (``out_dir``) holds ``recipe.json`` (the resolved recipe and run settings), ``checkpoint.npz``
(model and optimizer variables, loop state; replaced atomically at every epoch end and every
``checkpoint_steps`` steps / ``checkpoint_minutes`` minutes), ``log.csv`` and ``history.json`` (per epoch),
``tensorboard/``, ``status.json`` and, at the end, ``model.keras``. Calling ``train`` again with the same folder
resumes where the last checkpoint left off — after a crash or a SIGKILL, mid-epoch included — and, with
``deterministic=True``, ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import signal
import threading
import time
import warnings
from typing import Any

import numpy as np

from kerasarch.errors import KerasarchError
from kerasarch.training import checkpoint as ckpt
from kerasarch.training.distribute import is_chief, make_strategy
from kerasarch.training.guard import check_recipe, guarded_train
from kerasarch.training.logs import ProgressReporter, TensorBoardWriter, write_csv
from kerasarch.training.precision import dtype_policy, resolve_precision
from kerasarch.training.recipes import PlateauState, get_recipe, lr_at

__all__ = ["train", "evaluate", "TrainResult"]


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (the last good weights when the run stopped on a NaN loss).
        history: per-epoch logs, ``{"epoch": [...], "loss": [...], "accuracy": [...], "val_loss": ...}``.
        recipe: the resolved recipe, with the run's settings.
        out_dir: the run folder, or ``None``.
        stop_reason: ``None`` (all epochs ran), ``"nan_loss"``, ``"stopped"`` (a callback set
            ``model.stop_training``) or ``"interrupted"`` (SIGTERM; the folder holds a checkpoint to resume from).
        precision: the dtype policy the model trained under.
        preprocessing: the input convention the model was trained with.
        augment: the augmentation preset (its evaluation transform applies to test data).
        optimizer: the optimizer (a ``LossScaleOptimizer`` around the recipe's under mixed float16).
    """

    model: Any
    history: dict
    recipe: dict
    out_dir: str | None
    stop_reason: str | None
    precision: str
    preprocessing: str
    augment: str
    optimizer: Any = None

    def evaluate(self, dataset, batch_size=None):
        """Loss and accuracy on ``dataset`` (unbatched ``(image, label)`` pairs go through the run's evaluation
        transform and preprocessing; batched ones are used as they are)."""
        return evaluate(
            self.model,
            dataset,
            batch_size=batch_size or self.recipe["batch_size"],
            preprocessing=self.preprocessing,
            augment=self.augment,
        )


def _spec_of(model):
    """The registered variant a run trains: the registry name given, or the variant the model's card names."""
    from kerasarch.card import card_of, has_card
    from kerasarch.registry import get_spec

    if isinstance(model, str):
        return get_spec(model)
    if has_card(model) and card_of(model).variant:
        return get_spec(card_of(model).variant)
    return None


def _run_preprocessing(model, recipe):
    """The pixel convention a run trains with: the recipe's when it sets one (a warning when the model's card says
    otherwise), else the card's, else ``"unit"``."""
    from kerasarch.card import card_of, has_card

    card_mode = card_of(model).input.preprocessing if has_card(model) else None
    mode = recipe["preprocessing"] or card_mode or "unit"
    if card_mode is not None and mode != card_mode:
        warnings.warn(
            f"The recipe preprocesses with {mode!r}, the model card of '{model.name}' says "
            f"{card_mode!r}; training with {mode!r} (the card is updated).",
            stacklevel=3,
        )
    return mode


def _record_training(model, recipe, run_info, train_ds, train_pipe):
    """Writes the recipe, the data and the input convention the model was trained with on its card."""
    from kerasarch.card import ModelCard, card_of, has_card, update_card
    from kerasarch.data.pipeline import input_config_of

    config = (
        train_pipe.input_config
        if train_pipe is not None
        else input_config_of(model, preprocessing=recipe["preprocessing"])
    )
    names = getattr(train_ds, "class_names", None)
    classes = model.outputs[0].shape[-1]
    data = {
        "classes": int(classes) if classes is not None else None,
        "examples": train_pipe.num_examples if train_pipe is not None else None,
    }
    card = card_of(model) if has_card(model) else ModelCard()
    changes = {
        "input": config.replace(preprocessing=recipe["preprocessing"]),
        "recipe": json.loads(json.dumps({**recipe, "run": run_info}, default=str)),
        "data": data,
    }
    if names and classes is not None and len(names) == int(classes):
        changes["class_names"] = list(names)
    elif card.class_names is not None and classes is not None and len(card.class_names) != int(classes):
        changes["class_names"] = None
    return update_card(model, **changes)


def _classes_of(dataset):
    names = getattr(dataset, "class_names", None)
    return len(names) if names else None


def _main_layer(model):
    try:
        return model.get_layer("predictions")
    except ValueError:
        return model.layers[-1]


def _outputs_probabilities(model):
    """Whether the model ends in a softmax (probabilities) rather than logits."""
    act = getattr(_main_layer(model), "activation", None)
    return getattr(act, "__name__", str(act)) == "softmax"


def _split_outputs(outputs):
    if isinstance(outputs, dict):
        key = "predictions" if "predictions" in outputs else next(iter(outputs))
        return outputs[key], [v for k, v in outputs.items() if k != key]
    if isinstance(outputs, (list, tuple)):
        return outputs[0], list(outputs[1:])
    return outputs, []


def _inference_model(model):
    """The model without auxiliary outputs (GoogLeNet's heads are discarded at inference)."""
    import keras

    from kerasarch.card import card_of, has_card, with_card

    if len(model.outputs) == 1:
        return model
    main = keras.Model(model.inputs, _main_layer(model).output, name=model.name)
    return with_card(main, card_of(model)) if has_card(model) else main


def _make_optimizer(recipe):
    import keras

    kind, lr = recipe["optimizer"], float(recipe["lr"])
    ema = {"use_ema": True, "ema_momentum": float(recipe["ema"])} if recipe.get("ema") else {}
    if kind == "sgd":
        return keras.optimizers.SGD(lr, momentum=recipe["momentum"], nesterov=bool(recipe["nesterov"]), **ema)
    if kind == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if kind == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=recipe["weight_decay"], **ema)
    return keras.optimizers.RMSprop(lr, momentum=recipe["momentum"], **ema)


def _build_model(model, spec, recipe, classes, input_shape, build_kwargs, policy):
    import keras

    if isinstance(model, keras.Model):
        return model
    with dtype_policy(policy):
        if isinstance(model, str):
            params = inspect.signature(spec.builder).parameters
            kw = {}
            if classes:
                kw["classes"] = classes
            if input_shape:
                kw["input_shape"] = tuple(input_shape)
            if recipe["dropout"] is not None and "dropout" in params:
                kw["dropout"] = recipe["dropout"]
            if recipe["aux_loss_weight"] and "aux_logits" in params:
                kw["aux_logits"] = True
            kw.update(build_kwargs or {})
            return spec.build(**kw)
        return model()


def _policy_of(model):
    policy = getattr(model, "dtype_policy", None)
    return getattr(policy, "name", None) or "float32"


def _is_distributed(variable):
    import tensorflow as tf

    value = getattr(variable, "value", variable)
    return isinstance(value, tf.distribute.DistributedValues)


def _strategy_name(strategy):
    import tensorflow as tf

    for cls, label in (
        (tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
        (tf.distribute.MirroredStrategy, "MirroredStrategy"),
        (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy"),
    ):
        if isinstance(strategy, cls):
            return label
    return "default" if strategy is tf.distribute.get_strategy() else type(strategy).__name__


def _resolve_jit(jit_compile, strategy):
    import tensorflow as tf

    default = strategy is tf.distribute.get_strategy() or strategy.num_replicas_in_sync == 1
    if jit_compile == "auto":
        return bool(default and tf.config.list_physical_devices("GPU"))
    if jit_compile and not default:
        warnings.warn(
            "jit_compile is not used under a distribution strategy (the step holds collectives); training without XLA.",
            stacklevel=3,
        )
        return False
    return bool(jit_compile)


def _per_example_loss(from_logits, label_smoothing, classes):
    import keras
    import tensorflow as tf

    def loss(y, p):
        p = tf.cast(p, tf.float32)
        if label_smoothing:
            onehot = tf.one_hot(y, classes or tf.shape(p)[-1])
            return keras.losses.categorical_crossentropy(
                onehot, p, from_logits=from_logits, label_smoothing=label_smoothing
            )
        return keras.losses.sparse_categorical_crossentropy(y, p, from_logits=from_logits)

    return loss


def _labels(y):
    import tensorflow as tf

    y = tf.cast(y, tf.int32)
    if y.shape.rank == 2 and y.shape[-1] == 1:
        y = tf.squeeze(y, -1)
    return y


def _make_steps(model, optimizer, strategy, recipe, jit, classes):
    import keras
    import tensorflow as tf

    lso = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    replicas = strategy.num_replicas_in_sync
    loss_fn = _per_example_loss(not _outputs_probabilities(model), recipe["label_smoothing"], classes)
    aux_weight = float(recipe["aux_loss_weight"] or 0.0)
    wd = 0.0 if recipe["optimizer"] == "adamw" else float(recipe["weight_decay"] or 0.0)
    decay_vars = [v for v in model.trainable_variables if len(v.shape) >= 2]

    def replica_step(x, y):
        y = _labels(y)
        with tf.GradientTape() as tape:
            main, aux = _split_outputs(model(x, training=True))
            per_example = loss_fn(y, main)
            for a in aux:
                per_example = per_example + aux_weight * loss_fn(y, a)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=tf.shape(y)[0] * replicas)
            extra = [tf.cast(term, tf.float32) for term in model.losses]
            if wd:
                extra.append(
                    0.5 * wd * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v.value, tf.float32))) for v in decay_vars])
                )
            if extra:
                loss = loss + tf.nn.scale_regularization_loss(tf.add_n(extra))
            scaled = optimizer.scale_loss(loss) if lso else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(main, -1, output_type=tf.int32), y), tf.float32))
        return loss, correct, tf.cast(tf.shape(y)[0], tf.float32)

    inner = tf.function(replica_step, jit_compile=True) if jit else replica_step

    @tf.function(reduce_retracing=True)
    def train_step(batch):
        x, y = batch[0], batch[1]
        loss, correct, count = strategy.run(inner, args=(x, y))
        return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in (loss, correct, count))

    return train_step


def _make_eval_step(model, classes):
    import tensorflow as tf

    loss_fn = _per_example_loss(not _outputs_probabilities(model), 0.0, classes)

    @tf.function(reduce_retracing=True)
    def eval_step(x, y):
        y = _labels(y)
        main, _ = _split_outputs(model(x, training=False))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(main, -1, output_type=tf.int32), y), tf.float32))
        return tf.reduce_sum(loss_fn(y, main)), correct, tf.cast(tf.shape(y)[0], tf.float32)

    return eval_step


def _run_eval(eval_step, batches):
    loss = correct = count = 0.0
    for batch in batches:
        batch_loss, c, n = eval_step(batch[0], batch[1])
        loss, correct, count = loss + float(batch_loss), correct + float(c), count + float(n)
    if not count:
        return {"loss": float("nan"), "accuracy": float("nan"), "examples": 0}
    return {"loss": loss / count, "accuracy": correct / count, "examples": int(count)}


def evaluate(model, dataset, *, batch_size=256, preprocessing=None, augment="none"):
    """Mean cross-entropy and top-1 accuracy of ``model`` on ``dataset``.

    Args:
        model: a ``keras.Model`` (its main output when it has auxiliary ones).
        dataset: unbatched ``(image, label)`` pairs of ``[0, 255]`` images (fitted to the model's input and
            preprocessed here) or batches ready for the model.
        batch_size: batch size for unbatched data.
        preprocessing: the input convention (default: the model card's, else ``"unit"``); the fit is the card's.
        augment: the training augmentation preset (for a model without a card: ImageNet presets centre-crop).

    Returns:
        ``{"loss": ..., "accuracy": ..., "examples": ...}``.
    """
    from kerasarch.data.pipeline import InputPipeline, is_batched

    if not is_batched(dataset):
        from kerasarch.card import has_card

        if preprocessing is None and not has_card(model):
            preprocessing = "unit"
        dataset = InputPipeline(
            dataset, model, batch_size=batch_size, training=False, augment=augment, preprocessing=preprocessing
        ).dataset()
    classes = model.output_shape[-1] if not isinstance(model.output_shape, (list, dict)) else None
    return _run_eval(_make_eval_step(model, classes), dataset)


class _Sigterm:
    """Turns SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self):
        self.flag = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _finite(arrays):
    return all(np.isfinite(a).all() for a in arrays if np.issubdtype(a.dtype, np.floating))


@guarded_train
def train(
    model,
    train_ds,
    val_ds=None,
    *,
    recipe="paper",
    epochs=None,
    batch_size=None,
    lr=None,
    augment=None,
    precision="auto",
    strategy="auto",
    jit_compile="auto",
    out_dir=None,
    resume="auto",
    seed=0,
    deterministic=False,
    classes=None,
    input_shape=None,
    build_kwargs=None,
    callbacks=None,
    verbose="auto",
    steps_per_epoch=None,
    checkpoint_steps=None,
    checkpoint_minutes=10.0,
):
    """Trains a model with its paper's recipe.

    Args:
        model: a registry name (built here under the precision policy and the strategy's scope, with the recipe's
            dropout and, for GoogLeNet, the auxiliary classifiers), a zero-argument callable returning a
            ``keras.Model`` (called the same way), or a ``keras.Model`` (under a distribution strategy it must have
            been built inside ``strategy.scope()``; its own dtype policy is used).
        train_ds: unbatched ``(image, label)`` pairs of ``[0, 255]`` images — fitted, augmented, preprocessed and
            batched here, reproducibly per epoch — or a dataset of ready batches (global batches, used as given).
        val_ds: the same kinds, evaluated after every epoch (``val_loss``, ``val_accuracy``), or ``None``.
        recipe: ``"paper"``, a recipe name, a JSON file or a dict of overrides (:func:`get_recipe`).
        epochs, batch_size, lr, augment: shortcuts for recipe overrides (``batch_size`` is the global batch; changing
            it without ``lr`` scales the learning rate linearly).
        precision: ``"auto"``, ``"float32"``, ``"mixed_float16"`` (with loss scaling) or ``"mixed_bfloat16"``.
        strategy: ``"auto"``, ``"mirrored"``, ``"multi_worker"``, ``None`` or a ``tf.distribute.Strategy``.
        jit_compile: XLA for the step; ``"auto"``: on for a single GPU, off on CPUs (slower there) and under
            distribution strategies.
        out_dir: the run folder (checkpoints, logs, recipe, final model); ``None`` keeps nothing on disk.
        resume: ``"auto"`` (continue from ``out_dir``'s checkpoint when there is one), ``True`` or ``False``
            (start over).
        seed: seeds weights, shuffling, augmentation and dropout.
        deterministic: also make TensorFlow's ops deterministic (``enable_op_determinism``, process-wide), so
            that a run and its resumed twin end bit-identical.
        classes: the number of classes (default: the dataset's ``class_names``, else the spec's).
        input_shape: the model's input shape when building by name (default: the spec's).
        build_kwargs: more builder options when building by name.
        callbacks: Keras callbacks (``on_epoch_*``, ``on_train_batch_*``, ``model.stop_training`` are honoured).
        verbose: ``"auto"`` (a progress bar on a terminal, one line per epoch otherwise), 0, 1 or 2.
        steps_per_epoch: at most this many steps per epoch.
        checkpoint_steps, checkpoint_minutes: also checkpoint mid-epoch every so many steps / minutes.

    Returns:
        A :class:`TrainResult`.

    TensorFlow backend only (``tf.data``, ``tf.distribute``, ``tf.GradientTape``): raises a ``RuntimeError`` under
    another ``KERAS_BACKEND``.
    """
    import keras
    import tensorflow as tf

    from kerasarch.data.pipeline import InputPipeline, is_batched
    from kerasarch.keras_compat import require_tensorflow

    require_tensorflow("kerasarch.training.train()")
    strategy = make_strategy(strategy)
    spec = _spec_of(model)
    overrides = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "augment": augment}
    recipe = get_recipe(spec, recipe, **overrides)
    check_recipe(recipe)
    replicas = strategy.num_replicas_in_sync
    global_batch = int(recipe["batch_size"])
    if global_batch % replicas:
        raise ValueError(
            f"The global batch size {global_batch} does not split over {replicas} replicas; choose a "
            f"multiple of {replicas}."
        )
    if recipe.get("ema") and replicas > 1:
        raise ValueError(
            "The recipe's weight averaging (`ema`) runs on one replica only; set it to None to train "
            f"on {replicas} replicas."
        )
    chief = is_chief(strategy)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    classes = classes or _classes_of(train_ds)

    # The model and its optimizer, inside the strategy's scope.
    if isinstance(model, keras.Model):
        policy = _policy_of(model)
        if precision != "auto" and resolve_precision(precision) != policy:
            raise ValueError(
                f"precision={precision!r}, but the model given was built under the '{policy}' policy. "
                "Pass the model's name (or a function that builds it) to train under another policy."
            )
        if replicas > 1 and not _is_distributed(model.trainable_variables[0]):
            raise ValueError(
                "The model was built outside the distribution strategy's scope. Build it inside "
                "`strategy.scope()`, or pass its registry name or a function that builds it."
            )
    else:
        policy = resolve_precision(precision)
    with strategy.scope():
        model = _build_model(model, spec, recipe, classes, input_shape, build_kwargs, policy)
        optimizer = _make_optimizer(recipe)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    model_classes = model.output_shape[-1] if not isinstance(model.output_shape, (list, dict)) else classes
    preprocessing = _run_preprocessing(model, recipe)
    jit = _resolve_jit(jit_compile, strategy)
    run_info = {
        "model": getattr(model, "name", str(model)),
        "precision": policy,
        "preprocessing": preprocessing,
        "strategy": _strategy_name(strategy),
        "replicas": replicas,
        "global_batch_size": global_batch,
        "per_replica_batch_size": global_batch // replicas,
        "seed": seed,
        "deterministic": deterministic,
        "jit_compile": jit,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    recipe = {**recipe, "preprocessing": preprocessing}

    # Input pipelines.
    train_pipe = val_pipe = None
    if not is_batched(train_ds):
        train_pipe = InputPipeline(
            train_ds,
            model,
            batch_size=global_batch,
            training=True,
            augment=recipe["augment"],
            preprocessing=preprocessing,
            seed=seed,
            drop_remainder=replicas > 1,
        )
    if val_ds is not None and not is_batched(val_ds):
        val_pipe = InputPipeline(
            val_ds,
            model,
            batch_size=global_batch,
            training=False,
            augment=recipe["augment"],
            preprocessing=preprocessing,
        )
    steps = None
    if train_pipe is not None:
        if replicas > 1:  # every replica must run the same number of full steps: count exactly
            steps = train_pipe.steps(exact=True)
            if steps == 0:
                raise ValueError(f"The training set holds fewer examples than one global batch ({global_batch}).")
        elif train_pipe.num_examples is not None:
            steps = train_pipe.steps()
    elif int(train_ds.cardinality()) >= 0:
        steps = int(train_ds.cardinality())
    if steps_per_epoch:
        steps = min(steps, steps_per_epoch) if steps else int(steps_per_epoch)

    def distributed(epoch, skip):
        if train_pipe is None:
            ds = train_ds.skip(skip) if skip else train_ds
            if steps_per_epoch:
                ds = ds.take(steps - skip)
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            return strategy.experimental_distribute_dataset(ds.with_options(options))

        def fn(ctx):
            per_pipeline = replicas // ctx.num_input_pipelines
            take = None if steps is None or (replicas == 1 and not steps_per_epoch) else (steps - skip) * per_pipeline
            ds = train_pipe.dataset(
                epoch,
                num_shards=ctx.num_input_pipelines,
                shard_index=ctx.input_pipeline_id,
                batch_size=ctx.get_per_replica_batch_size(global_batch),
                skip=skip * per_pipeline,
                take=take,
            )
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return ds.with_options(options)

        return strategy.distribute_datasets_from_function(fn)

    def val_batches():
        if val_ds is None:
            return None
        return val_pipe.dataset() if val_pipe is not None else val_ds

    # The run folder and what it already holds.
    state = {"epoch": 0, "step": 0, "partial": None, "history": {}, "plateau": None, "elapsed": 0.0}
    path = os.path.join(out_dir, ckpt.CHECKPOINT) if out_dir else None
    if out_dir and chief:
        os.makedirs(out_dir, exist_ok=True)
    if path and resume and os.path.exists(path):
        groups, saved = ckpt.load_checkpoint(path)
        ckpt.restore_variables(model.variables, groups.get("model", []), "model")
        ckpt.restore_variables(optimizer.variables, groups.get("optimizer", []), "optimizer")
        old = {k: v for k, v in saved.get("recipe", {}).items() if k != "epochs"}
        new = {k: v for k, v in json.loads(json.dumps(recipe)).items() if k != "epochs"}
        if old and old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            warnings.warn(f"Resuming {out_dir!r} with a different recipe (changed: {changed}).", stacklevel=2)
        state.update({k: saved[k] for k in state if k in saved})
    elif resume is True:
        warnings.warn(f"resume=True but {path!r} holds no checkpoint; starting a new run.", stacklevel=2)
    if out_dir and chief:
        ckpt.atomic_write_text(
            os.path.join(out_dir, "recipe.json"),
            json.dumps({**recipe, "run": run_info}, indent=2, default=str, ensure_ascii=False),
        )
    plateau = PlateauState(recipe["schedule"], state["plateau"])
    history = {k: list(v) for k, v in state["history"].items()}
    reporter = ProgressReporter(verbose if chief else 0, recipe["epochs"])
    tensorboard = TensorBoardWriter(os.path.join(out_dir, "tensorboard")) if out_dir and chief else None
    cbs = keras.callbacks.CallbackList(callbacks, model=model, epochs=recipe["epochs"], steps=steps)
    model.stop_training = False
    train_step = _make_steps(model, optimizer, strategy, recipe, jit, model_classes)
    eval_step = _make_eval_step(model, model_classes)
    snapshot = (
        None if (path and chief) else (ckpt.variable_values(model.variables), ckpt.variable_values(optimizer.variables))
    )

    def save(epoch, step, partial, status):
        values = ckpt.variable_values(model.variables)
        if not _finite(values):  # checked with or without a run folder: the in-memory snapshot must stay good
            return False
        if not (path and chief):
            return True
        st = {
            "epoch": epoch,
            "step": step,
            "partial": partial,
            "history": history,
            "plateau": plateau.state(),
            "elapsed": elapsed(),
            "recipe": recipe,
            "run": run_info,
        }
        ckpt.save_checkpoint(path, {"model": values, "optimizer": optimizer.variables}, st)
        ckpt.atomic_write_text(
            os.path.join(out_dir, "status.json"), json.dumps({"state": status, "epoch": epoch, "step": step})
        )
        return True

    started = time.monotonic()

    def elapsed():
        return state["elapsed"] + time.monotonic() - started

    def restore_last_good():
        if snapshot is not None:
            ckpt.restore_variables(model.variables, snapshot[0])
            ckpt.restore_variables(optimizer.variables, snapshot[1])
        elif os.path.exists(path):
            groups, _ = ckpt.load_checkpoint(path)
            ckpt.restore_variables(model.variables, groups["model"])
            ckpt.restore_variables(optimizer.variables, groups["optimizer"])

    stop_reason = None
    if state["epoch"] == 0 and state["step"] == 0:
        save(0, 0, None, "running")
    cbs.on_train_begin()
    last_ckpt_time, last_lr = time.monotonic(), None
    with _Sigterm() as sigterm:
        for epoch in range(state["epoch"], recipe["epochs"]):
            resumed = state["step"] if epoch == state["epoch"] else 0
            partial = (state["partial"] if resumed and state["partial"] else None) or {
                "loss": 0.0,
                "correct": 0.0,
                "count": 0.0,
            }
            reporter.epoch_begin(epoch, steps)
            cbs.on_epoch_begin(epoch)
            step = resumed
            for batch in distributed(epoch, resumed):
                rate = lr_at(recipe, epoch, step, steps, plateau.multiplier)
                if rate != last_lr:
                    optimizer.learning_rate = rate
                    last_lr = rate
                cbs.on_train_batch_begin(step)
                loss, correct, count = (float(v) for v in train_step(batch))
                if not math.isfinite(loss):
                    stop_reason = "nan_loss"
                    reporter.print(
                        f"Stopping: the loss is {loss} at epoch {epoch + 1}, step {step + 1}; keeping the "
                        "last good weights (the last checkpoint)."
                    )
                    restore_last_good()
                    break
                partial = {
                    "loss": partial["loss"] + loss * count,
                    "correct": partial["correct"] + correct,
                    "count": partial["count"] + count,
                }
                step += 1
                logs = {"loss": partial["loss"] / partial["count"], "accuracy": partial["correct"] / partial["count"]}
                reporter.step(step, {**logs, "lr": rate})
                cbs.on_train_batch_end(step - 1, logs)
                due = (checkpoint_steps and step % checkpoint_steps == 0) or (
                    checkpoint_minutes and time.monotonic() - last_ckpt_time >= 60 * checkpoint_minutes
                )
                if sigterm.flag or due:
                    if not save(epoch, step, partial, "interrupted" if sigterm.flag else "running"):
                        stop_reason = "nan_loss"
                        restore_last_good()
                        break
                    last_ckpt_time = time.monotonic()
                if sigterm.flag:
                    stop_reason = "interrupted"
                    break
                if model.stop_training:
                    break
            if stop_reason:
                break
            if not partial["count"] and not model.stop_training:
                raise KerasarchError(
                    f"The training data yielded no example in epoch {epoch + 1}: every image failed "
                    "to decode, or the set is smaller than one global batch. Nothing was trained."
                )
            epoch_logs = {
                "loss": partial["loss"] / max(partial["count"], 1.0),
                "accuracy": partial["correct"] / max(partial["count"], 1.0),
            }
            batches = val_batches()
            if batches is not None:
                scores = _run_eval(eval_step, batches)
                epoch_logs.update({"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]})
            epoch_logs["lr"] = float(lr_at(recipe, epoch, max(step - 1, 0), steps, plateau.multiplier))
            if plateau.update(epoch_logs):
                reporter.print(f"Validation stopped improving: learning rate ×{recipe['schedule'].get('factor', 0.1)}")
            history.setdefault("epoch", []).append(epoch + 1)
            for k, v in epoch_logs.items():
                history.setdefault(k, []).append(float(v))
            history.setdefault("seconds", []).append(round(elapsed(), 3))
            reporter.epoch_end(epoch, epoch_logs)
            cbs.on_epoch_end(epoch, epoch_logs)
            if not save(epoch + 1, 0, None, "running"):
                stop_reason = "nan_loss"
                history = {k: v[:-1] for k, v in history.items()}
                restore_last_good()
                break
            if snapshot is not None:
                snapshot = (ckpt.variable_values(model.variables), ckpt.variable_values(optimizer.variables))
            if out_dir and chief:
                write_csv(os.path.join(out_dir, "log.csv"), history)
                ckpt.atomic_write_text(os.path.join(out_dir, "history.json"), json.dumps(history, indent=1))
                tensorboard.write(epoch + 1, epoch_logs)
            if model.stop_training:
                stop_reason = "stopped"
                break
    cbs.on_train_end()
    if recipe.get("ema") and stop_reason != "interrupted":
        optimizer.finalize_variable_values(model.trainable_variables)  # the averaged weights become the model's
    if tensorboard is not None:
        tensorboard.close()
    model = _record_training(model, recipe, run_info, train_ds, train_pipe)
    final = _inference_model(model)
    if out_dir and chief:
        if stop_reason != "interrupted":
            ckpt.atomic_save_model(final, os.path.join(out_dir, "model.keras"))
        ckpt.atomic_write_text(
            os.path.join(out_dir, "status.json"),
            json.dumps(
                {
                    "state": stop_reason or "finished",
                    "epochs": len(history.get("epoch", [])),
                    "seconds": round(elapsed(), 3),
                }
            ),
        )
    return TrainResult(
        model=model,
        history=history,
        recipe={**recipe, "run": run_info},
        out_dir=out_dir,
        stop_reason=stop_reason,
        precision=policy,
        preprocessing=preprocessing,
        augment=recipe["augment"],
        optimizer=optimizer,
    )
