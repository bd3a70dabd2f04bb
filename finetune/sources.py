"""Where images come from: a folder with one sub-folder per class, a built-in data set (``mnist5k``,
``digits``) or a TFDS data set, all read in a fixed order and addressable by index, so that an extraction can
stop and resume at any shard and a fine-tuning split is the same on every run.
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np

from finetune.errors import FinetuneError
from kerasarch.data import BUILTIN, IMAGE_EXTENSIONS
from kerasarch.data.sources import parse_data_source
from kerasarch.errors import KerasarchError

__all__ = [
    "BUILTIN",
    "IMAGE_EXTENSIONS",
    "ArraySource",
    "FolderSource",
    "ImageSource",
    "open_source",
    "stratified_split",
]


class ImageSource:
    """A fixed sequence of labelled images.

    Attributes:
        name: what it is, e.g. ``"folder:photos"`` or ``"mnist5k:train"``.
        class_names: the class names, label ``i`` is ``class_names[i]``.
        labels: int64 labels of every image, in order.
        fingerprint: sha256 of what identifies the content (the file names and a hash of every file's bytes, or
            the arrays).
    """

    name: str
    class_names: list
    labels: np.ndarray
    fingerprint: str

    def __len__(self):
        return len(self.labels)

    def read(self, start, stop, channels=None):
        """Images ``start:stop`` as ``(images, labels, index)``; ``images`` is a list of uint8 HWC arrays or
        one array. Unreadable images are left out (``index`` says which were read) with a warning. ``channels``
        is the decoding hint of image files (1 or 3); arrays come as they are."""
        raise NotImplementedError

    def describe(self):
        return {"name": self.name, "fingerprint": self.fingerprint, "num_images": len(self)}

    def subset(self, index):
        """The images at ``index`` (in that order), as a new source."""
        return _Subset(self, np.asarray(index, dtype="int64"))

    def to_dataset(self, channels=None, chunk=256):
        """The images as an unbatched ``tf.data`` dataset of ``(float32 image in [0, 255], int32 label)``, in
        order, the form :func:`kerasarch.training.train` and :class:`kerasarch.data.InputPipeline` take; it
        carries ``class_names`` and ``num_examples`` (so the pipeline can cache it after one pass)."""
        import tensorflow as tf

        def generate():
            for start in range(0, len(self), chunk):
                images, labels, _ = self.read(start, start + chunk, channels)
                for image, label in zip(images, labels):
                    image = np.asarray(image, "float32")
                    yield (image[..., None] if image.ndim == 2 else image), np.int32(label)

        first = np.asarray(self.read(0, 1, channels)[0][0])
        c = 1 if first.ndim == 2 else first.shape[-1]
        ds = tf.data.Dataset.from_generator(
            generate, output_signature=(tf.TensorSpec((None, None, c), tf.float32), tf.TensorSpec((), tf.int32))
        )
        ds.class_names = list(self.class_names)
        ds.num_examples = len(self)
        return ds


class ArraySource(ImageSource):
    """Images held in memory: (N, H, W[, C]) values 0-255, with integer labels."""

    def __init__(self, name, images, labels, class_names):
        self.name = name
        self.images = np.asarray(images)
        self.labels = np.asarray(labels, dtype="int64")
        self.class_names = [str(c) for c in class_names]
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.tobytes())
        self.fingerprint = h.hexdigest()

    def read(self, start, stop, channels=None):
        return self.images[start:stop], self.labels[start:stop], np.arange(start, min(stop, len(self)))


class _Subset(ImageSource):
    def __init__(self, parent, index):
        self.parent = parent
        self.index = index
        self.name = f"{parent.name}[{len(index)} images]"
        self.class_names = parent.class_names
        self.labels = parent.labels[index]
        h = hashlib.sha256(parent.fingerprint.encode())
        h.update(index.tobytes())
        self.fingerprint = h.hexdigest()

    def read(self, start, stop, channels=None):
        images, labels, index = [], [], []
        for pos in range(start, min(stop, len(self))):
            i = int(self.index[pos])
            im, lab, idx = self.parent.read(i, i + 1, channels)
            if len(idx):
                images.append(im[0])
                labels.append(int(lab[0]))
                index.append(pos)
        return images, np.asarray(labels, "int64"), np.asarray(index, "int64")


class FolderSource(ImageSource):
    """A folder with one sub-folder per class, listed and checked by :func:`kerasarch.data.from_directory`
    (sorted classes, sorted files, unusable files skipped with a warning, an empty class an error), read in that
    order."""

    def __init__(self, root):
        from kerasarch.data import from_directory

        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FinetuneError(f"Image folder not found: {root!r}.")
        try:
            listing = from_directory(root, channels=3, validate="quick")
        except ValueError as e:
            loose = [f for f in os.listdir(root) if f.lower().endswith(IMAGE_EXTENSIONS)]
            hint = (
                f" It holds {len(loose)} image files directly; put them in one sub-folder per class." if loose else ""
            )
            raise FinetuneError(f"No usable images in {root!r}: {e}{hint}") from e
        self.root = root
        self.name = f"folder:{os.path.basename(os.path.abspath(root))}"
        self.class_names = list(listing.class_names)
        self.files = [os.path.relpath(p, root) for p in listing.file_paths]
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = np.asarray([index[f.split(os.sep)[0]] for f in self.files], "int64")
        self.skipped = [(os.path.relpath(p, root), reason) for p, reason in listing.skipped]
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{f}\0{_content_hash(os.path.join(root, f))}\n".encode())
        self.fingerprint = h.hexdigest()

    def read(self, start, stop, channels=3):
        from kerasarch.data import ImageFileError, read_image

        images, labels, index = [], [], []
        for i in range(start, min(stop, len(self))):
            path = os.path.join(self.root, self.files[i])
            try:
                image = read_image(path, channels=channels or 3)
            except ImageFileError as e:
                warnings.warn(f"Skipping {e}", stacklevel=2)
                continue
            images.append(image)
            labels.append(int(self.labels[i]))
            index.append(i)
        return images, np.asarray(labels, "int64"), np.asarray(index, "int64")


def _content_hash(path, chunk=1 << 20):
    """A fast hash (BLAKE2b, 128 bits) of a file's bytes: a changed image changes the fingerprint even when its name
    and size do not."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def stratified_split(labels, fraction, seed):
    """Sorted ``(kept, held_out)`` index arrays: ``fraction`` of each class (at least one image, never all)
    held out, chosen with ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            raise FinetuneError(
                f"Class {c} has {len(idx)} image(s): at least 2 are needed to hold one out; "
                f"give a separate held-out data set instead."
            )
        k = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held += idx[:k].tolist()
        kept += idx[k:].tolist()
    return np.sort(np.asarray(kept, "int64")), np.sort(np.asarray(held, "int64"))


def _builtin_arrays(name, split):
    """``(images, labels, class_names)`` of a built-in data set split, from kerasarch.data."""
    from kerasarch.data import load_arrays

    (x_train, y_train), (x_test, y_test) = load_arrays(name)
    classes = [str(i) for i in range(int(max(y_train.max(), y_test.max())) + 1)]
    if split == "train":
        return x_train, y_train, classes
    if split == "test":
        return x_test, y_test, classes
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]), classes


def open_source(spec, *, split="train", data_dir=None):
    """Opens ``spec``: a folder path, ``mnist5k``, ``digits`` or ``tfds:NAME``, and the ``split``
    (``train``, ``test`` or ``all`` for the built-in sets; any TFDS split name).

    Raises:
        FinetuneError: a missing folder, a folder without images, an unknown data set.
    """
    try:
        parsed = parse_data_source(spec)
    except KerasarchError as e:
        raise FinetuneError(str(e)) from None
    if parsed.kind == "builtin":
        if split not in ("train", "test", "all"):
            raise FinetuneError(f"Built-in data sets have the splits train, test, all. Received: {split!r}")
        images, labels, classes = _builtin_arrays(parsed.name, split)
        return ArraySource(f"{parsed.name}:{split}", images, labels, classes)
    if parsed.kind == "tfds":
        return _tfds_source(parsed.name, split, data_dir)
    return FolderSource(parsed.name)


def _tfds_source(name, split, data_dir):
    """A TFDS split (:func:`kerasarch.data.from_tfds`, prepared data, files in stored order) read into memory."""
    from kerasarch.data import from_tfds

    try:
        ds = from_tfds(name, split=split, data_dir=data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise FinetuneError(str(e)) from e
    images, labels = [], []
    for im, lab in ds.as_numpy_iterator():
        images.append(im.astype("uint8") if im.max(initial=0) <= 255 else im)
        labels.append(int(lab))
    if not images:
        raise FinetuneError(f"TFDS data set {name!r} split {split!r} is empty.")
    classes = ds.class_names or [str(i) for i in range(max(labels) + 1)]
    if len({im.shape for im in images}) == 1:
        return ArraySource(f"tfds:{name}:{split}", np.stack(images), labels, classes)
    return _ListSource(f"tfds:{name}:{split}", images, labels, classes)


class _ListSource(ImageSource):
    """Images of different sizes held in memory."""

    def __init__(self, name, images, labels, class_names):
        self.name, self.images = name, images
        self.labels = np.asarray(labels, "int64")
        self.class_names = class_names
        h = hashlib.sha256()
        for im in images:
            h.update(str(im.shape).encode())
            h.update(np.ascontiguousarray(im).tobytes())
        h.update(self.labels.tobytes())
        self.fingerprint = h.hexdigest()

    def read(self, start, stop, channels=None):
        return self.images[start:stop], self.labels[start:stop], np.arange(start, min(stop, len(self)))
