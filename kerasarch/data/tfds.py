"""TensorFlow Datasets as ``(image, label)`` pipelines, from a prepared ``data_dir`` (offline) or downloaded."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["from_tfds"]


def from_tfds(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    *,
    image_key: str = "image",
    label_key: str = "label",
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    shuffle_files: bool = False,
    seed: int = 0,
) -> tf.data.Dataset:
    """A TFDS split as an unbatched ``tf.data`` dataset of ``(image, label)``.

    A ``data_dir`` that holds the prepared data set (``<data_dir>/<name>/<config>/<version>/``, as written by
    ``tfds build`` or ``builder.download_and_prepare()``) is read offline; builders that are not registered in this
    process (for example a data set prepared from a custom builder elsewhere) are read from their files.

    Args:
        name: a TFDS name, optionally with config and version (``"cifar10"``, ``"imagenet2012:5.1.0"``).
        split: a TFDS split expression (``"train"``, ``"test"``, ``"train[:90%]"``).
        data_dir: where the prepared data lives (default: TFDS's, ``~/tensorflow_datasets``).
        download: download and prepare the data set when it is not prepared yet (needs the internet; manual
            data sets such as ImageNet need their archives in ``<data_dir>/downloads/manual``).
        image_key, label_key: feature names of the image and the label.
        image_size: an int or ``(height, width)`` to resize to (``None``: keep).
        channels: 1 or 3 to convert to (``None``: keep).
        shuffle_files: read the record files in a seeded random order.
        seed: the file-order seed.

    Returns:
        ``tf.data.Dataset`` of float32 ``(H, W, C)`` images in ``[0, 255]`` and int32 labels; it carries
        ``class_names`` (when the label is a ``ClassLabel``) and ``num_examples`` as attributes.

    Raises:
        FileNotFoundError: the data set is not prepared in ``data_dir`` and ``download`` is False.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from kerasarch.data.transforms import fit_image
    from kerasarch.preprocessing import convert_channels

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown names and unreadable folders: say where we looked
        raise FileNotFoundError(
            f"TFDS data set {name!r} is neither registered nor prepared in data_dir="
            f"{data_dir!r} ({type(e).__name__}: {e})"
        ) from e
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(
                f"TFDS data set {name!r} is not prepared in {builder.data_dir!r}. Prepare it where the internet is "
                f"reachable (`tfds build {name} --data_dir DIR`) and pass that `data_dir`, or pass download=True."
            )
        try:
            builder.download_and_prepare()
        except Exception as e:  # offline, a server error, a manual data set without its archives ...
            from kerasarch.errors import KerasarchError

            message = " ".join(str(e).split())[:300]
            raise KerasarchError(
                f"Could not download and prepare TFDS data set {name!r} into {builder.data_dir!r} "
                f"({type(e).__name__}: {message}). Prepare it where the internet is reachable "
                f"(`tfds build {name} --data_dir DIR`) and pass that data_dir."
            ) from e
    read_config = tfds.ReadConfig(shuffle_seed=seed if shuffle_files else None)
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)

    def convert(features):
        image = tf.cast(features[image_key], tf.float32)
        if image.shape.rank == 2:
            image = image[..., None]
        if image_size is not None:
            image = fit_image(image, image_size, channels, method="resize")
        elif channels is not None:
            image = convert_channels(image, channels)
        return image, tf.cast(features[label_key], tf.int32)

    out = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    label = builder.info.features[label_key] if label_key in builder.info.features else None
    out.class_names = list(label.names) if hasattr(label, "names") else None
    try:
        out.num_examples = int(builder.info.splits[split].num_examples)
    except Exception:  # split expressions the info cannot count
        out.num_examples = None
    return out
