"""From ``(image, label)`` datasets to the batches a model trains on: fit, cache, shuffle, augment, preprocess,
batch, prefetch — reproducible for a seed, epoch by epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import tensorflow as tf

from kerasarch.card import InputConfig, card_of, has_card
from kerasarch.data.transforms import AUGMENTATIONS, PREPROCESSING_MODES, augment, crops_from_raw, preprocess
from kerasarch.preprocessing import fit_images

__all__ = ["InputPipeline", "prepare", "is_batched", "input_shape_of", "input_config_of"]

AUTOTUNE = tf.data.AUTOTUNE
if TYPE_CHECKING:
    import keras

#: What gives an input shape: a built model, a registry name or an ``(H, W, C)`` tuple.
ModelOrShape = Union["keras.Model", str, tuple]

_CACHE_BUDGET = 2 << 30  # bytes of fitted float32 images an "auto" cache may hold in memory


def is_batched(dataset: tf.data.Dataset) -> bool:
    """Whether ``dataset``'s elements are batches (images of rank 4) rather than single images (rank 3)."""
    spec = dataset.element_spec
    image = spec[0] if isinstance(spec, (tuple, list)) else spec
    return image.shape.rank == 4


def input_shape_of(model_or_shape: ModelOrShape) -> tuple:
    """``(H, W, C)`` of a ``keras.Model``, a registry name or a shape tuple."""
    if isinstance(model_or_shape, str):
        from kerasarch.registry import get_spec

        return tuple(get_spec(model_or_shape).input_shape)
    if hasattr(model_or_shape, "input_shape"):
        shape = model_or_shape.input_shape
        if isinstance(shape, list):
            shape = shape[0]
        return tuple(shape[1:])
    return tuple(model_or_shape)


def input_config_of(
    model_or_shape: ModelOrShape, *, preprocessing: str | None = None, fit: str | None = None, augment: str = "none"
) -> InputConfig:
    """The :class:`~kerasarch.card.InputConfig` images are prepared with: the model card's (a model with one, or a
    registry name's), else ``"none"`` preprocessing and ``"auto"`` fit (``"resize_crop"`` of 256/224 the input for
    the ImageNet augmentation presets) at the model's input shape; ``preprocessing`` / ``fit`` replace its fields."""
    h, w, c = input_shape_of(model_or_shape)
    config = None
    if has_card(model_or_shape):
        config = card_of(model_or_shape).input
    elif isinstance(model_or_shape, str):
        from kerasarch.registry import get_spec

        config = get_spec(model_or_shape).input_config
    if config is None:
        raw = crops_from_raw(augment) if augment in AUGMENTATIONS else False
        config = InputConfig(
            size=(h, w),
            channels=c or 3,
            fit="resize_crop" if raw and h else "auto",
            resize_size=int(round(min(h, w) * 256 / 224)) if raw and h and w else None,
        )
    config = config.for_size((h, w), c)
    changes = {k: v for k, v in (("preprocessing", preprocessing), ("fit", fit)) if v is not None}
    if changes.get("fit") == "resize_crop" and not config.resize_size:
        changes["resize_size"] = int(round(min(h, w) * 256 / 224))
    return config.replace(**changes) if changes else config


def _known_size(dataset):
    """``(size, exact)``: the cardinality, else a hint the sources attach (files listed, TFDS split size)."""
    n = int(dataset.cardinality())
    if n >= 0:
        return n, True
    for attr in ("num_examples", "file_paths"):
        value = getattr(dataset, attr, None)
        if value is not None:
            return (value if isinstance(value, int) else len(value)), False
    return None, False


class InputPipeline:
    """A reproducible input pipeline over an unbatched ``(image, label)`` dataset of ``[0, 255]`` images.

    Training: fit each image to the model's input (or keep it raw for the ImageNet crop presets), cache, then per
    epoch: a seeded shuffle, per-worker sharding, the augmentation preset with a per-example seed derived from
    ``(seed, epoch, example index)``, the model's preprocessing, batching and prefetching. Epoch ``e`` is the same
    sequence of batches whenever it is built, which is what lets an interrupted run resume exactly.

    Evaluation: the model's fit (its card's; the single centre crop for ImageNet models), preprocessing, cache,
    batch, prefetch. Fitting and preprocessing are :mod:`kerasarch.preprocessing`, as in every other step.

    Args:
        dataset: unbatched ``tf.data.Dataset`` of ``(image, label)``.
        input_shape: the model (its card gives the input convention), a registry name, or its ``(H, W, C)``.
        batch_size: the (global) batch size.
        training: training pipeline (shuffle, augment) or evaluation pipeline.
        augment: an augmentation preset (:data:`kerasarch.data.AUGMENTATIONS`).
        preprocessing: the input convention (:data:`kerasarch.data.PREPROCESSING_MODES`); default: the card's.
        seed: the seed of shuffling and augmentation.
        cache: ``True`` (memory), ``False``, a file name prefix, or ``"auto"``: memory when the fitted images are
            known to take under 2 GiB.
        shuffle_buffer: default: the whole data set when its size is known and ≤ 100,000, else 10,000.
        drop_remainder: drop the last partial batch (always done for several replicas, whose steps must match).
        fit: how images are fitted to the input (:data:`kerasarch.card.FIT_MODES`); default: the card's.
        input_config: the whole :class:`~kerasarch.card.InputConfig` (default: :func:`input_config_of`).
    """

    def __init__(
        self,
        dataset: tf.data.Dataset,
        input_shape: ModelOrShape,
        *,
        batch_size: int,
        training: bool,
        augment: str = "none",
        preprocessing: str | None = None,
        seed: int = 0,
        cache: bool | str = "auto",
        shuffle_buffer: int | None = None,
        drop_remainder: bool = False,
        fit: str | None = None,
        input_config: InputConfig | None = None,
    ) -> None:
        if is_batched(dataset):
            raise ValueError(
                "InputPipeline takes an unbatched dataset of (image, label); this one yields batches. "
                "Call .unbatch() first, or pass the batched dataset to training.train() as it is."
            )
        if augment not in AUGMENTATIONS:
            raise ValueError(f"Unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}.")
        if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
            raise ValueError(f"Unknown preprocessing {preprocessing!r}; choose one of {PREPROCESSING_MODES}.")
        h, w, c = input_shape_of(input_shape)
        if h is None or w is None:
            raise ValueError(f"The model's input needs a fixed size to build batches. Received: {input_shape!r}")
        if input_config is None:
            input_config = input_config_of(input_shape, preprocessing=preprocessing, fit=fit, augment=augment)
        elif preprocessing is not None or fit is not None:
            input_config = input_config.replace(
                **{k: v for k, v in (("preprocessing", preprocessing), ("fit", fit)) if v is not None}
            )
        self.input_config = config = input_config
        preprocessing = config.preprocessing
        self.size, self.channels = (int(h), int(w)), c
        self.batch_size, self.training, self.augment = int(batch_size), training, augment
        self.preprocessing, self.seed, self.drop_remainder = preprocessing, int(seed), drop_remainder
        self.num_examples, self._exact = _known_size(dataset)
        raw = crops_from_raw(augment)
        size, channels = self.size, self.channels
        if training:
            base = (
                dataset
                if raw
                else dataset.map(
                    lambda x, y: (fit_images(x, config), y), num_parallel_calls=AUTOTUNE, deterministic=True
                )
            )
        else:

            def finish(x, y):
                return preprocess(fit_images(x, config), preprocessing), y

            base = dataset.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True)
        fixed = training is False or not raw
        per_image = size[0] * size[1] * (channels or 3) * 4
        if cache == "auto":
            cache = bool(fixed and self.num_examples is not None and self.num_examples * per_image <= _CACHE_BUDGET)
        if cache:
            base = base.cache(cache if isinstance(cache, str) else "")
        self._base = base
        if shuffle_buffer is None:
            n = self.num_examples
            shuffle_buffer = n if n is not None and 0 < n <= 100_000 else 10_000
        self.shuffle_buffer = int(shuffle_buffer)

    def count(self, exact: bool = False) -> int:
        """The number of examples: known, estimated from the source (``exact=False``), or counted in one pass over
        the data (fills the cache)."""
        if self.num_examples is None or (exact and not self._exact):
            self.num_examples = int(self._base.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
            self._exact = True
        return self.num_examples

    def steps(self, global_batch: int | None = None, drop_remainder: bool | None = None, exact: bool = False) -> int:
        """Batches per epoch for ``global_batch`` (default: the batch size)."""
        b = global_batch or self.batch_size
        drop = self.drop_remainder if drop_remainder is None else drop_remainder
        n = self.count(exact)
        return n // b if drop else -(-n // b)

    def dataset(
        self,
        epoch: int = 0,
        *,
        num_shards: int = 1,
        shard_index: int = 0,
        batch_size: int | None = None,
        skip: int = 0,
        take: int | None = None,
    ) -> tf.data.Dataset:
        """The batches of epoch ``epoch``.

        Args:
            epoch: the epoch (training pipelines shuffle and augment differently, reproducibly, per epoch).
            num_shards, shard_index: examples are split across input pipelines (workers) after the shuffle,
                which every worker does identically.
            batch_size: the batch size of this pipeline (a per-replica batch under a distribution strategy);
                default: the global batch size.
            skip: batches to skip (a run resumed mid-epoch).
            take: at most this many batches.
        """
        batch = int(batch_size or self.batch_size)
        if not self.training:
            ds = self._base
            if num_shards > 1:
                ds = ds.shard(num_shards, shard_index)
            ds = ds.batch(batch, drop_remainder=self.drop_remainder)
        else:
            ds = self._base.enumerate()
            if self.shuffle_buffer > 1:
                ds = ds.shuffle(self.shuffle_buffer, seed=self._mix(epoch), reshuffle_each_iteration=False)
            if num_shards > 1:
                ds = ds.shard(num_shards, shard_index)
            key = tf.constant([self.seed, int(epoch)], tf.int64)
            size, channels, name, mode = self.size, self.channels, self.augment, self.preprocessing

            def train_map(index, example):
                x, y = example
                x = augment(x, tf.random.experimental.stateless_fold_in(key, index), name, size, channels)
                return preprocess(x, mode), y

            ds = ds.map(train_map, num_parallel_calls=AUTOTUNE, deterministic=True)
            ds = ds.batch(batch, drop_remainder=self.drop_remainder)
        if skip:
            ds = ds.skip(int(skip))
        if take is not None:
            ds = ds.take(int(take))
        return ds.prefetch(AUTOTUNE)

    def _mix(self, epoch):
        return (self.seed * 1_000_003 + int(epoch) * 7_919 + 17) % (2**31 - 1)


def prepare(
    dataset: tf.data.Dataset,
    model: ModelOrShape,
    *,
    batch_size: int,
    training: bool,
    augment: str = "none",
    preprocessing: str | None = None,
    seed: int = 0,
    epoch: int = 0,
    cache: bool | str = "auto",
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A batched, prefetched dataset for ``model`` (a ``keras.Model``, a registry name or an input shape).

    ``preprocessing`` defaults to the model card's (``"none"`` for a shape or a model without a card). See
    :class:`InputPipeline`.
    """
    pipeline = InputPipeline(
        dataset,
        model,
        batch_size=batch_size,
        training=training,
        augment=augment,
        preprocessing=preprocessing,
        seed=seed,
        cache=cache,
        drop_remainder=drop_remainder,
    )
    return pipeline.dataset(epoch)
