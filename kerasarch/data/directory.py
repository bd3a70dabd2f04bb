"""Images from a folder tree, one sub-folder per class, decoded in parallel with tf.data.

Bad files never stop an epoch. Before any decoding every file is checked cheaply (its first and last bytes:
a known image signature and an intact end — JPEG's EOI marker, PNG's IEND chunk, GIF's trailer, BMP's and WebP's
declared sizes): empty files, text files, unknown formats and truncated images are skipped, counted and named in
a warning. ``validate="full"`` decodes every file once up front instead (exact, one extra pass). Whatever gets
past the check and still fails to decode is dropped by ``ignore_errors`` at run time rather than raising.
"""

from __future__ import annotations

import concurrent.futures
import os
import struct
import warnings

__all__ = ["from_directory", "check_image_file", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_HEAD, _TAIL = 32, 4096


def check_image_file(path):
    """Returns ``None`` when ``path`` looks like a complete JPEG, PNG, GIF, BMP or WebP image, else the reason.

    Reads only the first 32 and the last 4,096 bytes.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(_HEAD)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if head.startswith(b"\xff\xd8\xff"):
        # Entropy-coded data never contains FF D9 (FF is stuffed with 00), so a missing EOI means truncation.
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail[-64:] else "truncated PNG (no IEND chunk)"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None if b";" in tail[-16:] else "truncated GIF (no trailer)"
    if head.startswith(b"BM") and len(head) >= 6:
        declared = struct.unpack("<I", head[2:6])[0]
        return None if declared <= size else f"truncated BMP ({size} of {declared} bytes)"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        declared = struct.unpack("<I", head[4:8])[0] + 8
        return None if declared <= size else f"truncated WebP ({size} of {declared} bytes)"
    return "not a JPEG, PNG, GIF, BMP or WebP image"


def _list_files(root, class_names, follow_links):
    paths, labels = [], []
    for label, cls in enumerate(class_names):
        folder = os.path.join(root, cls)
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=follow_links):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, labels


def _decode(contents, channels):
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=channels, expand_animations=False, dtype=tf.uint8)
    image.set_shape((None, None, channels))
    return image


def _decode_failures(paths, channels, num_parallel_calls):
    """Indices of the files TensorFlow cannot decode: one parallel decoding pass."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
    ds = ds.map(lambda i, p: (i, tf.shape(_decode(tf.io.read_file(p), channels))[0]),
                num_parallel_calls=num_parallel_calls, deterministic=False).ignore_errors()
    ok = {int(i) for i, _ in ds.as_numpy_iterator()}
    return [i for i in range(len(paths)) if i not in ok]


def from_directory(path, image_size=None, *, channels=3, class_names=None, validate="quick",
                   validation_split=None, subset=None, seed=0, crop_to_aspect_ratio=False, follow_links=False,
                   num_parallel_calls=None, max_workers=16):
    """Labelled images from ``path/<class>/**/<image>``, as an unbatched ``tf.data`` dataset.

    Elements are ``(image, label)``: float32 ``(H, W, channels)`` images in ``[0, 255]`` and int32 labels, the
    index of the class folder in sorted order. Greyscale, palette, RGBA and CMYK images become RGB (or grey with
    ``channels=1``). The dataset carries ``class_names``, ``file_paths`` and ``skipped`` (a list of
    ``(path, reason)``) as attributes, like ``keras.utils.image_dataset_from_directory``'s ``class_names``.

    Args:
        path: the root folder; each sub-folder is a class.
        image_size: an int or ``(height, width)`` every image is resized to (bilinear), or ``None`` to keep each
            image's size (the training pipeline then crops or fits them to the model's input).
        channels: 3 (RGB) or 1 (grey).
        class_names: the class folders to use, in label order (default: every sub-folder, sorted).
        validate: ``"quick"`` (signature and end-of-file check of every file, in parallel), ``"full"`` (decode
            every file once up front) or ``"none"``. In every mode, files that fail to decode later are dropped
            instead of stopping the epoch.
        validation_split: a fraction of the files (after a seeded shuffle) kept apart for validation.
        subset: with ``validation_split``: ``"training"``, ``"validation"`` or ``"both"`` (returns a pair).
        seed: seed of the split.
        crop_to_aspect_ratio: centre-crop to the target aspect ratio before resizing instead of distorting.
        follow_links: follow symbolic links to sub-folders.
        num_parallel_calls: decoding parallelism (default ``tf.data.AUTOTUNE``).
        max_workers: threads of the up-front file check.

    Returns:
        A ``tf.data.Dataset`` (or a ``(training, validation)`` pair with ``subset="both"``).

    Raises:
        ValueError: when the folder has no class sub-folders, or when a class folder holds no usable image —
            before any training starts.
    """
    import numpy as np
    import tensorflow as tf

    if validate not in ("quick", "full", "none"):
        raise ValueError(f"`validate` must be 'quick', 'full' or 'none'. Received: validate={validate!r}")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if not os.path.isdir(path):
        raise ValueError(f"Image folder not found: {path!r}")
    if class_names is None:
        class_names = sorted(d for d in os.listdir(path)
                             if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))
    if not class_names:
        raise ValueError(f"{path!r} has no class sub-folders: expected {path}/<class name>/<images>.")
    num_parallel_calls = num_parallel_calls or tf.data.AUTOTUNE

    paths, labels = _list_files(path, class_names, follow_links)
    skipped = []
    if validate == "quick" and paths:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
            reasons = list(pool.map(check_image_file, paths))
        bad = [i for i, r in enumerate(reasons) if r is not None]
        skipped = [(paths[i], reasons[i]) for i in bad]
    elif validate == "full" and paths:
        bad = _decode_failures(paths, channels, num_parallel_calls)
        skipped = [(paths[i], "cannot be decoded") for i in bad]
    else:
        bad = []
    if bad:
        drop = set(bad)
        paths = [p for i, p in enumerate(paths) if i not in drop]
        labels = [y for i, y in enumerate(labels) if i not in drop]
        shown = "; ".join(f"{os.path.relpath(p, path)}: {r}" for p, r in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        warnings.warn(f"from_directory({path!r}): skipped {len(skipped)} of {len(skipped) + len(paths)} files that "
                      f"are not usable images: {shown}{more}.", stacklevel=2)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = [c for c, n in zip(class_names, counts) if n == 0]
    if empty:
        raise ValueError(f"from_directory({path!r}): class folder(s) {empty} hold no usable image. Every class "
                         f"needs at least one image (remove the folder or pass `class_names`).")

    if validation_split:
        if subset not in ("training", "validation", "both"):
            raise ValueError("With `validation_split`, `subset` must be 'training', 'validation' or 'both'. "
                             f"Received: subset={subset!r}")
        order = np.random.default_rng(seed).permutation(len(paths))
        n_val = int(round(validation_split * len(paths)))
        parts = {"training": order[n_val:], "validation": order[:n_val]}
        made = {k: _make(path, [paths[i] for i in sorted(v)], [labels[i] for i in sorted(v)], class_names,
                         skipped, image_size, channels, crop_to_aspect_ratio, num_parallel_calls)
                for k, v in parts.items()}
        return (made["training"], made["validation"]) if subset == "both" else made[subset]
    return _make(path, paths, labels, class_names, skipped, image_size, channels, crop_to_aspect_ratio,
                 num_parallel_calls)


def _make(root, paths, labels, class_names, skipped, image_size, channels, crop_to_aspect_ratio, num_parallel_calls):
    import tensorflow as tf

    def load(p, label):
        image = tf.cast(_decode(tf.io.read_file(p), channels), tf.float32)
        if image_size is not None:
            if crop_to_aspect_ratio:
                h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
                target = image_size[1] / image_size[0]
                ch = tf.cast(tf.minimum(h, w / target), tf.int32)
                cw = tf.cast(tf.minimum(w, h * target), tf.int32)
                image = tf.image.crop_to_bounding_box(image, (tf.shape(image)[0] - ch) // 2,
                                                      (tf.shape(image)[1] - cw) // 2, ch, cw)
            image = tf.image.resize(image, image_size, method="bilinear")
            image.set_shape((*image_size, channels))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels, tf.int32)))
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    ds.class_names = list(class_names)
    ds.file_paths = list(paths)
    ds.skipped = list(skipped)
    return ds
