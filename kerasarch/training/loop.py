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

``train()`` puts four parts together: :func:`prepare_model` (the model and its optimizer in the strategy's scope),
:class:`TrainingData` (the input pipelines as the replicas receive them), :func:`make_train_step` /
:func:`make_eval_step` (the compiled steps), :class:`RunFolder` (resume, checkpoints, logs, the last good weights)
and :class:`EpochLoop` (the epochs, with callbacks, mid-epoch checkpoints and the stop conditions).
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
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from kerasarch.classifier import ends_in_softmax, split_outputs, strip_auxiliary
from kerasarch.errors import KerasarchError
from kerasarch.training import checkpoint as ckpt
from kerasarch.training.distribute import is_chief, make_strategy
from kerasarch.training.guard import check_recipe, guarded_train
from kerasarch.training.logs import ProgressReporter, TensorBoardWriter, write_csv
from kerasarch.training.precision import dtype_policy, resolve_precision
from kerasarch.training.recipes import PlateauState, get_recipe, lr_at

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

__all__ = [
    "train",
    "evaluate",
    "TrainResult",
    "build_model",
    "prepare_model",
    "TrainingData",
    "make_train_step",
    "make_eval_step",
    "RunFolder",
    "EpochLoop",
    "MODEL_FILE",
    "run_model_file",
]


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

    def evaluate(self, dataset: tf.data.Dataset, batch_size: int | None = None) -> dict[str, float]:
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


# -- The model and its optimizer ---------------------------------------------------------------------------------


def _make_optimizer(recipe):
    import keras

    kind, lr = recipe["optimizer"], float(recipe["lr"])
    ema = {"use_ema": True, "ema_momentum": float(recipe["ema"])} if recipe.get("ema") else {}
    if kind == "sgd":
        from kerasarch.training.optimizers import SGD  # Keras' SGD with TensorFlow's fused momentum update

        return SGD(lr, momentum=recipe["momentum"], nesterov=bool(recipe["nesterov"]), **ema)
    if kind == "adam":
        return keras.optimizers.Adam(lr, **ema)
    if kind == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=recipe["weight_decay"], **ema)
    return keras.optimizers.RMSprop(lr, momentum=recipe["momentum"], **ema)


def build_model(model, spec, recipe, classes, input_shape, build_kwargs, policy):
    """The model a run trains: ``model`` itself when it is a ``keras.Model``; else built under the dtype ``policy``
    — by the builder of registry name ``model`` (``spec``), with ``classes``, ``input_shape``, the recipe's dropout
    and, when the recipe weights auxiliary losses, GoogLeNet's auxiliary classifiers — or by calling ``model``."""
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


def prepare_model(model, spec, recipe, strategy, *, precision, classes, input_shape, build_kwargs):
    """The model (:func:`build_model`) and its built optimizer (a ``LossScaleOptimizer`` around the recipe's under
    mixed float16), both inside the strategy's scope. Returns ``(model, optimizer, dtype policy name)``.

    Raises:
        ValueError: a ``keras.Model`` built under another policy than ``precision``, or outside the scope of a
            strategy with several replicas.
    """
    import keras

    if isinstance(model, keras.Model):
        policy = _policy_of(model)
        if precision != "auto" and resolve_precision(precision) != policy:
            raise ValueError(
                f"precision={precision!r}, but the model given was built under the '{policy}' policy. "
                "Pass the model's name (or a function that builds it) to train under another policy."
            )
        if strategy.num_replicas_in_sync > 1 and not _is_distributed(model.trainable_variables[0]):
            raise ValueError(
                "The model was built outside the distribution strategy's scope. Build it inside "
                "`strategy.scope()`, or pass its registry name or a function that builds it."
            )
    else:
        policy = resolve_precision(precision)
    with strategy.scope():
        model = build_model(model, spec, recipe, classes, input_shape, build_kwargs, policy)
        optimizer = _make_optimizer(recipe)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return model, optimizer, policy


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
            stacklevel=4,
        )
        return False
    return bool(jit_compile)


def _check_batch(recipe, replicas):
    """The global batch must split evenly over the replicas; weight averaging runs on one replica only."""
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


def _output_classes(model, classes):
    return model.output_shape[-1] if not isinstance(model.output_shape, (list, dict)) else classes


# -- Input pipelines ---------------------------------------------------------------------------------------------


class TrainingData:
    """The run's input: the training and validation sets as the strategy's replicas receive them.

    Unbatched ``(image, label)`` sets go through an :class:`~kerasarch.data.pipeline.InputPipeline` (fitted,
    augmented and preprocessed, reproducibly per epoch; sharded per input pipeline, so a resumed epoch skips
    exactly the batches already trained); batched sets are used as given (global batches, sharded by data).

    Attributes:
        steps: steps per epoch (``None`` when unknown: a batched set of unknown cardinality).
        train_pipe: the training ``InputPipeline``, or ``None`` for a batched set.
    """

    def __init__(self, train_ds, val_ds, model, recipe, strategy, *, seed, steps_per_epoch=None):
        from kerasarch.data.pipeline import InputPipeline, is_batched

        self.train_ds, self.val_ds, self.strategy = train_ds, val_ds, strategy
        self.replicas = strategy.num_replicas_in_sync
        self.global_batch = int(recipe["batch_size"])
        self.steps_per_epoch = steps_per_epoch
        self.train_pipe = self.val_pipe = None
        options = dict(batch_size=self.global_batch, augment=recipe["augment"], preprocessing=recipe["preprocessing"])
        if not is_batched(train_ds):
            self.train_pipe = InputPipeline(
                train_ds, model, training=True, seed=seed, drop_remainder=self.replicas > 1, **options
            )
        if val_ds is not None and not is_batched(val_ds):
            self.val_pipe = InputPipeline(val_ds, model, training=False, **options)
        self.steps = self._count_steps()

    def _count_steps(self):
        steps = None
        if self.train_pipe is not None:
            if self.replicas > 1:  # every replica must run the same number of full steps: count exactly
                steps = self.train_pipe.steps(exact=True)
                if steps == 0:
                    raise ValueError(
                        f"The training set holds fewer examples than one global batch ({self.global_batch})."
                    )
            elif self.train_pipe.num_examples is not None:
                steps = self.train_pipe.steps()
        elif int(self.train_ds.cardinality()) >= 0:
            steps = int(self.train_ds.cardinality())
        if self.steps_per_epoch:
            steps = min(steps, self.steps_per_epoch) if steps else int(self.steps_per_epoch)
        return steps

    def train_batches(self, epoch, skip=0):
        """Epoch ``epoch``'s batches, distributed over the replicas, without its first ``skip`` steps."""
        import tensorflow as tf

        strategy, steps = self.strategy, self.steps
        if self.train_pipe is None:
            ds = self.train_ds.skip(skip) if skip else self.train_ds
            if self.steps_per_epoch:
                ds = ds.take(steps - skip)
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            return strategy.experimental_distribute_dataset(ds.with_options(options))

        def fn(ctx):
            per_pipeline = self.replicas // ctx.num_input_pipelines
            exact = steps is not None and (self.replicas > 1 or self.steps_per_epoch)
            ds = self.train_pipe.dataset(
                epoch,
                num_shards=ctx.num_input_pipelines,
                shard_index=ctx.input_pipeline_id,
                batch_size=ctx.get_per_replica_batch_size(self.global_batch),
                skip=skip * per_pipeline,
                take=(steps - skip) * per_pipeline if exact else None,
            )
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return ds.with_options(options)

        return strategy.distribute_datasets_from_function(fn)

    def val_batches(self):
        """The validation batches, or ``None`` without a validation set."""
        if self.val_ds is None:
            return None
        return self.val_pipe.dataset() if self.val_pipe is not None else self.val_ds


# -- The step ----------------------------------------------------------------------------------------------------


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


def make_train_step(model, optimizer, strategy, recipe, jit, classes):
    """The compiled training step: ``train_step(batch) -> (loss, correct, count)`` summed over the replicas.

    Each replica computes the cross-entropy of the main output (from logits or probabilities, as
    :func:`kerasarch.classifier.ends_in_softmax` says), adds the recipe's auxiliary losses (``aux_loss_weight``), the
    layers' regularisation losses and L2 weight decay (``weight_decay``, on kernels; AdamW decays in the optimizer),
    averages over the global batch, applies the gradients (scaled under a ``LossScaleOptimizer``), and counts the
    correct top-1 predictions. ``jit``: the replica step is XLA-compiled.
    """
    import keras
    import tensorflow as tf

    lso = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    replicas = strategy.num_replicas_in_sync
    loss_fn = _per_example_loss(not ends_in_softmax(model), recipe["label_smoothing"], classes)
    aux_weight = float(recipe["aux_loss_weight"] or 0.0)
    wd = 0.0 if recipe["optimizer"] == "adamw" else float(recipe["weight_decay"] or 0.0)
    decay_vars = [v for v in model.trainable_variables if len(v.shape) >= 2]

    def replica_step(x, y):
        y = _labels(y)
        with tf.GradientTape() as tape:
            main, aux = split_outputs(model(x, training=True))
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


def make_eval_step(model, classes):
    """The compiled evaluation step: ``eval_step(x, y) -> (summed loss, correct, count)`` of the main output."""
    import tensorflow as tf

    loss_fn = _per_example_loss(not ends_in_softmax(model), 0.0, classes)

    @tf.function(reduce_retracing=True)
    def eval_step(x, y):
        y = _labels(y)
        main, _ = split_outputs(model(x, training=False))
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


def evaluate(
    model: keras.Model,
    dataset: tf.data.Dataset,
    *,
    batch_size: int = 256,
    preprocessing: str | None = None,
    augment: str = "none",
) -> dict[str, float]:
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
    return _run_eval(make_eval_step(model, _output_classes(model, None)), dataset)


# -- The run folder ----------------------------------------------------------------------------------------------

MODEL_FILE = "model.keras"
"""The trained model :func:`train` writes into its run folder when training ends."""


def run_model_file(source: str | os.PathLike) -> str:
    """The ``.keras`` file ``source`` names: ``source`` itself, or a training run folder's :data:`MODEL_FILE`.

    Raises:
        KerasarchError: ``source`` is a folder without a ``model.keras`` (not a run folder, or its training has not
            finished).
    """
    source = os.fspath(source)
    if not os.path.isdir(source):
        return source
    path = os.path.join(source, MODEL_FILE)
    if not os.path.isfile(path):
        raise KerasarchError(
            f"{source!r} is a folder without a {MODEL_FILE} (a kerasarch training run folder holds one once "
            "training finished)."
        )
    return path


def _finite(arrays):
    return all(np.isfinite(a).all() for a in arrays if np.issubdtype(a.dtype, np.floating))


class RunFolder:
    """What a run keeps: the run folder ``out_dir`` (written by the chief only; ``None``: nothing on disk) and
    the last good weights.

    It resumes from the folder's checkpoint (:meth:`resume`), writes ``recipe.json``, checkpoints the model and
    optimizer with the loop state (:meth:`save`, which refuses non-finite weights), writes the per-epoch logs
    (``log.csv``, ``history.json``, ``tensorboard/``) and, at the end, ``model.keras`` and ``status.json``. The last
    good weights are the last checkpoint's; a process that writes no checkpoint keeps them in memory, updated at
    every epoch end (:meth:`keep_last_good`, :meth:`restore_last_good`).

    Attributes:
        state: the loop state to start from: ``epoch``, ``step`` (within the epoch), ``partial`` (the epoch's sums
            so far), ``history``, ``plateau``, ``elapsed`` (seconds of earlier sessions).
    """

    def __init__(self, out_dir, model, optimizer, *, chief, recipe, run_info):
        self.out_dir, self.model, self.optimizer = out_dir, model, optimizer
        self.recipe, self.run_info = recipe, run_info
        self.writes = bool(out_dir and chief)
        self.path = os.path.join(out_dir, ckpt.CHECKPOINT) if out_dir else None
        self.state = {"epoch": 0, "step": 0, "partial": None, "history": {}, "plateau": None, "elapsed": 0.0}
        self.tensorboard = None
        self._snapshot = None
        self._started = time.monotonic()
        if self.writes:
            os.makedirs(out_dir, exist_ok=True)

    def _variables(self):
        return ckpt.model_variables(self.model), ckpt.optimizer_variables(self.optimizer)

    def _restore(self, groups):
        model_vars, optimizer_vars = self._variables()
        ckpt.restore_variables(model_vars, groups.get("model", {}), "model")
        ckpt.restore_variables(optimizer_vars, groups.get("optimizer", {}), "optimizer")

    def resume(self, resume):
        """Restores the folder's checkpoint and loop state (``resume``: ``"auto"`` or ``True``; a warning when
        the recipe changed, or when ``resume=True`` finds no checkpoint)."""
        if self.path and resume and os.path.exists(self.path):
            groups, saved = ckpt.load_checkpoint(self.path)
            self._restore(groups)
            old = {k: v for k, v in saved.get("recipe", {}).items() if k != "epochs"}
            new = {k: v for k, v in json.loads(json.dumps(self.recipe)).items() if k != "epochs"}
            if old and old != new:
                changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                warnings.warn(f"Resuming {self.out_dir!r} with a different recipe (changed: {changed}).", stacklevel=4)
            self.state.update({k: saved[k] for k in self.state if k in saved})
        elif resume is True:
            warnings.warn(f"resume=True but {self.path!r} holds no checkpoint; starting a new run.", stacklevel=4)

    def begin(self):
        """Writes ``recipe.json``, opens the TensorBoard log, keeps the starting weights in memory when no
        checkpoint is written, and starts the clock."""
        if self.writes:
            ckpt.atomic_write_text(
                os.path.join(self.out_dir, "recipe.json"),
                json.dumps({**self.recipe, "run": self.run_info}, indent=2, default=str, ensure_ascii=False),
            )
            self.tensorboard = TensorBoardWriter(os.path.join(self.out_dir, "tensorboard"))
        self.keep_last_good()
        self._started = time.monotonic()

    def elapsed(self):
        """Seconds trained, earlier sessions of a resumed run included."""
        return self.state["elapsed"] + time.monotonic() - self._started

    def save(self, epoch, step, partial, status, *, history, plateau):
        """Checkpoints the model, the optimizer and the loop state (``status.json`` says ``status``). Returns
        ``False`` — writing nothing — when the model's weights are not finite."""
        model_vars, optimizer_vars = self._variables()
        values = ckpt.snapshot(model_vars)
        if not _finite(values.values()):  # checked with or without a run folder: the in-memory copy must stay good
            return False
        if not self.writes:
            return True
        state = {
            "epoch": epoch,
            "step": step,
            "partial": partial,
            "history": history,
            "plateau": plateau,
            "elapsed": self.elapsed(),
            "recipe": self.recipe,
            "run": self.run_info,
        }
        ckpt.save_checkpoint(self.path, {"model": values, "optimizer": optimizer_vars}, state)
        self._write_status({"state": status, "epoch": epoch, "step": step})
        return True

    def keep_last_good(self):
        """Copies the weights in memory as the last good ones (only when no checkpoint is written)."""
        if not (self.path and self.writes):
            self._snapshot = tuple(ckpt.snapshot(keyed) for keyed in self._variables())

    def restore_last_good(self):
        """Puts back the last good weights: the in-memory copy, else the last checkpoint."""
        if self._snapshot is not None:
            self._restore({"model": self._snapshot[0], "optimizer": self._snapshot[1]})
        elif os.path.exists(self.path):
            self._restore(ckpt.load_checkpoint(self.path)[0])

    def log_epoch(self, epoch, history, logs):
        """Writes the history so far (``log.csv``, ``history.json``) and epoch ``epoch``'s logs to TensorBoard."""
        if self.writes:
            write_csv(os.path.join(self.out_dir, "log.csv"), history)
            ckpt.atomic_write_text(os.path.join(self.out_dir, "history.json"), json.dumps(history, indent=1))
            self.tensorboard.write(epoch + 1, logs)

    def close_logs(self):
        """Closes the TensorBoard log."""
        if self.tensorboard is not None:
            self.tensorboard.close()

    def finish(self, model, stop_reason, epochs):
        """Writes the trained ``model`` (``model.keras``; not after an interruption) and the final status."""
        if not self.writes:
            return
        if stop_reason != "interrupted":
            ckpt.atomic_save_model(model, os.path.join(self.out_dir, MODEL_FILE))
        self._write_status({"state": stop_reason or "finished", "epochs": epochs, "seconds": round(self.elapsed(), 3)})

    def _write_status(self, status):
        ckpt.atomic_write_text(os.path.join(self.out_dir, "status.json"), json.dumps(status))


# -- The epoch loop ----------------------------------------------------------------------------------------------


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


class EpochLoop:
    """The epochs of a run, from the run folder's state: steps at the recipe's learning rate (plateau-reduced),
    callbacks, progress, mid-epoch checkpoints every ``checkpoint_steps`` steps / ``checkpoint_minutes`` minutes
    and on SIGTERM, validation and a checkpoint at every epoch end.

    :meth:`run` returns ``(history, stop_reason)``: ``stop_reason`` is ``None`` (every epoch ran), ``"nan_loss"``
    (the last good weights are put back), ``"stopped"`` (a callback set ``model.stop_training``) or
    ``"interrupted"`` (SIGTERM, after a checkpoint).
    """

    def __init__(
        self,
        model,
        optimizer,
        data,
        folder,
        recipe,
        *,
        train_step,
        eval_step,
        callbacks=None,
        verbose="auto",
        chief=True,
        checkpoint_steps=None,
        checkpoint_minutes=None,
    ):
        import keras

        self.model, self.optimizer, self.data, self.folder, self.recipe = model, optimizer, data, folder, recipe
        self.train_step, self.eval_step = train_step, eval_step
        self.checkpoint_steps, self.checkpoint_minutes = checkpoint_steps, checkpoint_minutes
        self.plateau = PlateauState(recipe["schedule"], folder.state["plateau"])
        self.history = {k: list(v) for k, v in folder.state["history"].items()}
        self.reporter = ProgressReporter(verbose if chief else 0, recipe["epochs"])
        self.callbacks = keras.callbacks.CallbackList(callbacks, model=model, epochs=recipe["epochs"], steps=data.steps)
        self.stop_reason = None
        self._last_lr = None
        self._last_checkpoint = time.monotonic()
        model.stop_training = False

    def _save(self, epoch, step, partial, status):
        return self.folder.save(epoch, step, partial, status, history=self.history, plateau=self.plateau.state())

    def _stop_on_nan(self):
        self.stop_reason = "nan_loss"
        self.folder.restore_last_good()

    def run(self):
        """Trains from the run folder's state to the recipe's last epoch or a stop; ``(history, stop_reason)``."""
        start = self.folder.state
        if start["epoch"] == 0 and start["step"] == 0:
            self._save(0, 0, None, "running")
        self.callbacks.on_train_begin()
        self._last_checkpoint = time.monotonic()
        with _Sigterm() as sigterm:
            for epoch in range(start["epoch"], self.recipe["epochs"]):
                resumed = start["step"] if epoch == start["epoch"] else 0
                partial = (start["partial"] if resumed and start["partial"] else None) or {
                    "loss": 0.0,
                    "correct": 0.0,
                    "count": 0.0,
                }
                step, partial = self._train_epoch(epoch, resumed, partial, sigterm)
                if self.stop_reason or not self._end_epoch(epoch, step, partial):
                    break
        self.callbacks.on_train_end()
        self.folder.close_logs()
        return self.history, self.stop_reason

    def _train_epoch(self, epoch, step, partial, sigterm):
        """Runs epoch ``epoch`` from step ``step`` (a resumed epoch) with the sums ``partial`` so far; returns the
        step reached and the sums. Sets :attr:`stop_reason` on a NaN loss or SIGTERM."""
        recipe, steps, model = self.recipe, self.data.steps, self.model
        self.reporter.epoch_begin(epoch, steps)
        self.callbacks.on_epoch_begin(epoch)
        for batch in self.data.train_batches(epoch, step):
            rate = lr_at(recipe, epoch, step, steps, self.plateau.multiplier)
            if rate != self._last_lr:
                self.optimizer.learning_rate = rate
                self._last_lr = rate
            self.callbacks.on_train_batch_begin(step)
            loss, correct, count = (float(v) for v in self.train_step(batch))
            if not math.isfinite(loss):
                self.reporter.print(
                    f"Stopping: the loss is {loss} at epoch {epoch + 1}, step {step + 1}; keeping the "
                    "last good weights (the last checkpoint)."
                )
                self._stop_on_nan()
                break
            partial = {
                "loss": partial["loss"] + loss * count,
                "correct": partial["correct"] + correct,
                "count": partial["count"] + count,
            }
            step += 1
            logs = {"loss": partial["loss"] / partial["count"], "accuracy": partial["correct"] / partial["count"]}
            self.reporter.step(step, {**logs, "lr": rate})
            self.callbacks.on_train_batch_end(step - 1, logs)
            due = (self.checkpoint_steps and step % self.checkpoint_steps == 0) or (
                self.checkpoint_minutes and time.monotonic() - self._last_checkpoint >= 60 * self.checkpoint_minutes
            )
            if sigterm.flag or due:
                if not self._save(epoch, step, partial, "interrupted" if sigterm.flag else "running"):
                    self._stop_on_nan()
                    break
                self._last_checkpoint = time.monotonic()
            if sigterm.flag:
                self.stop_reason = "interrupted"
                break
            if model.stop_training:
                break
        return step, partial

    def _end_epoch(self, epoch, step, partial):
        """Validation, the epoch's logs, the epoch-end checkpoint. Returns whether to go on."""
        recipe, model = self.recipe, self.model
        if not partial["count"] and not model.stop_training:
            raise KerasarchError(
                f"The training data yielded no example in epoch {epoch + 1}: every image failed "
                "to decode, or the set is smaller than one global batch. Nothing was trained."
            )
        logs = {
            "loss": partial["loss"] / max(partial["count"], 1.0),
            "accuracy": partial["correct"] / max(partial["count"], 1.0),
        }
        batches = self.data.val_batches()
        if batches is not None:
            scores = _run_eval(self.eval_step, batches)
            logs.update({"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]})
        logs["lr"] = float(lr_at(recipe, epoch, max(step - 1, 0), self.data.steps, self.plateau.multiplier))
        if self.plateau.update(logs):
            self.reporter.print(f"Validation stopped improving: learning rate ×{recipe['schedule'].get('factor', 0.1)}")
        self.history.setdefault("epoch", []).append(epoch + 1)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))
        self.history.setdefault("seconds", []).append(round(self.folder.elapsed(), 3))
        self.reporter.epoch_end(epoch, logs)
        self.callbacks.on_epoch_end(epoch, logs)
        if not self._save(epoch + 1, 0, None, "running"):
            self.history = {k: v[:-1] for k, v in self.history.items()}
            self._stop_on_nan()
            return False
        self.folder.keep_last_good()
        self.folder.log_epoch(epoch, self.history, logs)
        if model.stop_training:
            self.stop_reason = "stopped"
            return False
        return True


# -- train() -----------------------------------------------------------------------------------------------------


@guarded_train
def train(
    model: str | Callable[[], keras.Model] | keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None = None,
    *,
    recipe: str | os.PathLike | dict = "paper",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    augment: str | None = None,
    precision: str = "auto",
    strategy: str | tf.distribute.Strategy | None = "auto",
    jit_compile: bool | str = "auto",
    out_dir: str | os.PathLike | None = None,
    resume: bool | str = "auto",
    seed: int = 0,
    deterministic: bool = False,
    classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    build_kwargs: dict[str, Any] | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
    steps_per_epoch: int | None = None,
    checkpoint_steps: int | None = None,
    checkpoint_minutes: float | None = 10.0,
) -> TrainResult:
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

    from kerasarch.keras_compat import require_tensorflow

    require_tensorflow("kerasarch.training.train()")
    strategy = make_strategy(strategy)
    spec = _spec_of(model)
    recipe = get_recipe(spec, recipe, epochs=epochs, batch_size=batch_size, lr=lr, augment=augment)
    check_recipe(recipe)
    _check_batch(recipe, strategy.num_replicas_in_sync)
    chief = is_chief(strategy)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    classes = classes or _classes_of(train_ds)
    model, optimizer, policy = prepare_model(
        model,
        spec,
        recipe,
        strategy,
        precision=precision,
        classes=classes,
        input_shape=input_shape,
        build_kwargs=build_kwargs,
    )
    model_classes = _output_classes(model, classes)
    preprocessing = _run_preprocessing(model, recipe)
    jit = _resolve_jit(jit_compile, strategy)
    run_info = _run_info(model, strategy, recipe, policy, preprocessing, seed, deterministic, jit)
    recipe = {**recipe, "preprocessing": preprocessing}

    data = TrainingData(train_ds, val_ds, model, recipe, strategy, seed=seed, steps_per_epoch=steps_per_epoch)
    folder = RunFolder(out_dir, model, optimizer, chief=chief, recipe=recipe, run_info=run_info)
    folder.resume(resume)
    folder.begin()
    loop = EpochLoop(
        model,
        optimizer,
        data,
        folder,
        recipe,
        train_step=make_train_step(model, optimizer, strategy, recipe, jit, model_classes),
        eval_step=make_eval_step(model, model_classes),
        callbacks=callbacks,
        verbose=verbose,
        chief=chief,
        checkpoint_steps=checkpoint_steps,
        checkpoint_minutes=checkpoint_minutes,
    )
    history, stop_reason = loop.run()
    if recipe.get("ema") and stop_reason != "interrupted":
        optimizer.finalize_variable_values(model.trainable_variables)  # the averaged weights become the model's
    model = _record_training(model, recipe, run_info, train_ds, data.train_pipe)
    folder.finish(strip_auxiliary(model), stop_reason, len(history.get("epoch", [])))
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


def _run_info(model, strategy, recipe, policy, preprocessing, seed, deterministic, jit):
    """The run's settings recorded beside the recipe (``recipe.json``, the checkpoint, the model card)."""
    import keras
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    return {
        "model": getattr(model, "name", str(model)),
        "precision": policy,
        "preprocessing": preprocessing,
        "strategy": _strategy_name(strategy),
        "replicas": replicas,
        "global_batch_size": int(recipe["batch_size"]),
        "per_replica_batch_size": int(recipe["batch_size"]) // replicas,
        "seed": seed,
        "deterministic": deterministic,
        "jit_compile": jit,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
