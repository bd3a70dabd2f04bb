"""Images from a folder tree, one sub-folder per class, decoded in parallel with tf.data.

Bad files never stop an epoch. Before any decoding every file is checked cheaply (its first and last bytes:
a known image signature and an intact end — JPEG's EOI marker, PNG's IEND chunk, GIF's trailer, BMP's and WebP's
declared sizes): empty files, text files, unknown formats and truncated images are skipped, counted and named in
a warning. ``validate="full"`` decodes every file once up front instead (exact, one extra pass). Whatever gets
past the check and still fails to decode is dropped by ``ignore_errors`` at run time rather than raising.

Decompression bombs (a 1 MB PNG that declares 20,000×20,000 pixels) are refused the same way: the width and height
declared in the file's header are read before decoding and an image of more than :data:`MAX_IMAGE_PIXELS` pixels is
skipped and counted like a corrupt file. The limit follows Pillow's ``Image.MAX_IMAGE_PIXELS`` (and its error
threshold, 2 × 89,478,485 pixels ≈ a 13,400×13,400 image); raise it with ``kerasarch.data.MAX_IMAGE_PIXELS = n``
or the ``KERASARCH_MAX_IMAGE_PIXELS`` environment variable (read at import), ``None`` / ``0`` to turn it off.

BMP and GIF files decode to grey for one-channel models too (TensorFlow's BMP and GIF decoders have no grey mode:
they are decoded as RGB and converted with the ITU-R 601 luma weights, as Pillow's ``convert("L")`` does).
"""

from __future__ import annotations

import concurrent.futures
import numbers
import os
import struct
import sys
import warnings
from typing import TYPE_CHECKING

from kerasarch.errors import KerasarchError

if TYPE_CHECKING:
    import numpy as np
    import tensorflow as tf

__all__ = [
    "from_directory",
    "check_image_file",
    "image_dimensions",
    "read_image",
    "decode_image",
    "max_image_pixels",
    "ImageFileError",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
_HEAD, _TAIL = 32, 4096
_DEFAULT_MAX_PIXELS = 2 * 89_478_485  # Pillow's DecompressionBombError threshold


def _pixels_from_env():
    text = os.environ.get("KERASARCH_MAX_IMAGE_PIXELS")
    if text is None or not text.strip():
        return _DEFAULT_MAX_PIXELS
    if text.strip().lower() in ("none", "0", "off"):
        return None
    try:
        return int(float(text))
    except ValueError:
        warnings.warn(
            f"KERASARCH_MAX_IMAGE_PIXELS must be a number of pixels or 'none'. Received: {text!r}; "
            f"using {_DEFAULT_MAX_PIXELS}.",
            stacklevel=2,
        )
        return _DEFAULT_MAX_PIXELS


#: Images declaring more pixels than this (width × height, from the header) are not decoded; ``None``: no limit.
#: Re-exported as ``kerasarch.data.MAX_IMAGE_PIXELS``; setting either one works.
MAX_IMAGE_PIXELS = _pixels_from_env()


class ImageFileError(KerasarchError):
    """An image file that cannot be used: unreadable, truncated, of an unknown format, or too large to decode."""


def max_image_pixels():
    """The pixel limit in force: ``kerasarch.data.MAX_IMAGE_PIXELS`` if set there, else this module's."""
    package = sys.modules.get("kerasarch.data")
    value = getattr(package, "MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS) if package is not None else MAX_IMAGE_PIXELS
    if value is not MAX_IMAGE_PIXELS:
        return value or None
    return MAX_IMAGE_PIXELS or None


def _jpeg_dimensions(f, size):
    """``(width, height)`` from a JPEG's SOF segment, walking the segment headers (never the image data)."""
    f.seek(2)
    while f.tell() < size:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        while marker[1] == 0xFF:  # fill bytes
            b = f.read(1)
            if not b:
                return None
            marker = b"\xff" + b
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:  # markers without a length
            continue
        if kind == 0xD9:  # end of image before any frame
            return None
        length = f.read(2)
        if len(length) < 2:
            return None
        (n,) = struct.unpack(">H", length)
        if n < 2:
            return None
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            data = f.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return width, height
        f.seek(n - 2, os.SEEK_CUR)
    return None


def image_dimensions(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(width, height)`` declared in the header of a JPEG, PNG, GIF, BMP or WebP file, or ``None`` when the header
    does not say (reads a few bytes; a JPEG's segment headers up to its frame header)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEAD)
            if head.startswith(b"\xff\xd8\xff"):
                return _jpeg_dimensions(f, size)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if head.startswith(b"BM") and len(head) >= 26:
        header_size = struct.unpack("<I", head[14:18])[0]
        if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack("<HH", head[18:22])
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)  # a negative height is a top-down bitmap
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":
            return (int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1)
        if chunk == b"VP8L" and head[20] == 0x2F:
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
    return None


def check_image_file(path: str | os.PathLike) -> str | None:
    """Returns ``None`` when ``path`` looks like a complete JPEG, PNG, GIF, BMP or WebP image of at most
    :data:`MAX_IMAGE_PIXELS` pixels, else the reason.

    Reads only the first 32 and the last 4,096 bytes (and a JPEG's segment headers).
    """
    reason = _check_ends(path)
    if reason is not None:
        return reason
    limit = max_image_pixels()
    if limit:
        dims = image_dimensions(path)
        if dims is None:
            return "no image dimensions in the header"
        if dims[0] * dims[1] > limit:
            return (
                f"{dims[0]}×{dims[1]} pixels, more than the limit of {limit:,} (a decompression bomb? raise "
                "kerasarch.data.MAX_IMAGE_PIXELS or KERASARCH_MAX_IMAGE_PIXELS to allow it)"
            )
        if dims[0] == 0 or dims[1] == 0:
            return f"an image of {dims[0]}×{dims[1]} pixels"
    return None


def _check_ends(path):
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


def decode_image(contents: tf.Tensor, channels: int) -> tf.Tensor:
    """One encoded image (JPEG, PNG, GIF: its first frame, BMP), a string tensor, as a uint8 ``[H, W, channels]``
    tensor: RGB (grey and palette images expanded, alpha dropped) or grey, which TensorFlow's JPEG and PNG decoders
    convert to themselves; BMP and GIF, which they cannot give in one channel, are decoded as RGB and converted by
    luma (rounded). The one decoder of the library's image files (:func:`read_image`, :func:`from_directory`) and
    of the exported models' ``image_bytes`` requests, so both see the same pixels."""
    import tensorflow as tf

    if channels != 1:
        image = tf.io.decode_image(contents, channels=channels, expand_animations=False, dtype=tf.uint8)
    else:  # TensorFlow's BMP and GIF decoders cannot give one channel: decode those as RGB and convert
        head = tf.strings.substr(contents, 0, 3)
        rgb_only = tf.logical_or(tf.equal(tf.strings.substr(head, 0, 2), b"BM"), tf.equal(head, b"GIF"))
        image = tf.cond(
            rgb_only,
            lambda: tf.cast(
                tf.round(
                    tf.image.rgb_to_grayscale(
                        tf.cast(
                            tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8),
                            tf.float32,
                        )
                    )
                ),
                tf.uint8,
            ),
            lambda: tf.io.decode_image(contents, channels=1, expand_animations=False, dtype=tf.uint8),
        )
    image.set_shape((None, None, channels))
    return image


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Decodes one image file into a uint8 ``(H, W, channels)`` array, after :func:`check_image_file`.

    Raises:
        ImageFileError: the file is unreadable, truncated, of an unknown format, or declares more than
            :data:`MAX_IMAGE_PIXELS` pixels (the message names the file and the reason).
    """
    import tensorflow as tf

    if channels not in (1, 3):
        raise ImageFileError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    path = os.fspath(path)
    reason = check_image_file(path)
    if reason is not None:
        raise ImageFileError(f"Image {path!r} is not usable: {reason}.")
    try:
        return decode_image(tf.io.read_file(path), channels).numpy()
    except (tf.errors.OpError, ValueError) as e:
        message = " ".join(str(getattr(e, "message", e)).split())[:200]
        raise ImageFileError(f"Image {path!r} cannot be decoded: {message}") from e


def _decode_failures(paths, channels, num_parallel_calls):
    """Indices of the files TensorFlow cannot decode: one parallel decoding pass."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(paths).enumerate()
    ds = ds.map(
        lambda i, p: (i, tf.shape(decode_image(tf.io.read_file(p), channels))[0]),
        num_parallel_calls=num_parallel_calls,
        deterministic=False,
    ).ignore_errors()
    ok = {int(i) for i, _ in ds.as_numpy_iterator()}
    return [i for i in range(len(paths)) if i not in ok]


def from_directory(
    path: str | os.PathLike,
    image_size: int | tuple[int, int] | None = None,
    *,
    channels: int = 3,
    class_names: list[str] | None = None,
    validate: str = "quick",
    validation_split: float | None = None,
    subset: str | None = None,
    seed: int = 0,
    crop_to_aspect_ratio: bool = False,
    follow_links: bool = False,
    num_parallel_calls: int | None = None,
    max_workers: int = 16,
) -> tf.data.Dataset | tuple[tf.data.Dataset, tf.data.Dataset]:
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
        KerasarchError: (a ``ValueError``) bad arguments; a folder without class sub-folders, or a class folder
            without a usable image — before any training starts.
    """
    import numpy as np
    import tensorflow as tf

    if validate not in ("quick", "full", "none"):
        raise KerasarchError(f"`validate` must be 'quick', 'full' or 'none'. Received: validate={validate!r}")
    if channels not in (1, 3):
        raise KerasarchError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    received = image_size
    if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
        image_size = (int(image_size), int(image_size))
    if image_size is not None and (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in image_size)
    ):
        raise KerasarchError(
            f"`image_size` must be None, an integer >= 1 or a (height, width) pair of them. "
            f"Received: image_size={received!r}"
        )
    if image_size is not None:
        image_size = (int(image_size[0]), int(image_size[1]))
    if validation_split is not None and not (isinstance(validation_split, numbers.Real) and 0 < validation_split < 1):
        raise KerasarchError(
            f"`validation_split` must be a fraction strictly between 0 and 1. "
            f"Received: validation_split={validation_split!r}"
        )
    if not os.path.isdir(path):
        raise KerasarchError(f"Image folder not found: {path!r}")
    if class_names is None:
        class_names = sorted(
            d for d in os.listdir(path) if not d.startswith(".") and os.path.isdir(os.path.join(path, d))
        )
    if not class_names:
        raise KerasarchError(f"{path!r} has no class sub-folders: expected {path}/<class name>/<images>.")
    num_parallel_calls = num_parallel_calls or tf.data.AUTOTUNE

    paths, labels = _list_files(path, class_names, follow_links)
    skipped = []
    if validate == "quick" and paths:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers) as pool:
            reasons = list(pool.map(check_image_file, paths))
        bad = [i for i, r in enumerate(reasons) if r is not None]
        skipped = [(paths[i], reasons[i]) for i in bad]
    elif validate == "full" and paths:
        limit = max_image_pixels()
        too_big = {}
        if limit:
            for i, p in enumerate(paths):
                dims = image_dimensions(p)
                if dims is not None and dims[0] * dims[1] > limit:
                    too_big[i] = f"{dims[0]}×{dims[1]} pixels, more than the limit of {limit:,}"
        rest = [i for i in range(len(paths)) if i not in too_big]
        failed = _decode_failures([paths[i] for i in rest], channels, num_parallel_calls)
        reasons = {**too_big, **{rest[j]: "cannot be decoded" for j in failed}}
        bad = sorted(reasons)
        skipped = [(paths[i], reasons[i]) for i in bad]
    else:
        bad = []
    if bad:
        drop = set(bad)
        paths = [p for i, p in enumerate(paths) if i not in drop]
        labels = [y for i, y in enumerate(labels) if i not in drop]
        shown = "; ".join(f"{os.path.relpath(p, path)}: {r}" for p, r in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        warnings.warn(
            f"from_directory({path!r}): skipped {len(skipped)} of {len(skipped) + len(paths)} files that "
            f"are not usable images: {shown}{more}.",
            stacklevel=2,
        )
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = [c for c, n in zip(class_names, counts) if n == 0]
    if empty:
        raise KerasarchError(
            f"from_directory({path!r}): class folder(s) {empty} hold no usable image. Every class "
            f"needs at least one image (remove the folder or pass `class_names`)."
        )

    if validation_split:
        if subset not in ("training", "validation", "both"):
            raise KerasarchError(
                "With `validation_split`, `subset` must be 'training', 'validation' or 'both'. "
                f"Received: subset={subset!r}"
            )
        order = np.random.default_rng(seed).permutation(len(paths))
        n_val = int(round(validation_split * len(paths)))
        if n_val == 0 or n_val == len(paths):
            raise KerasarchError(
                f"from_directory({path!r}): validation_split={validation_split} of {len(paths)} "
                f"images leaves {len(paths) - n_val} to train on and {n_val} to validate; both need "
                "at least one image (use more images or another fraction)."
            )
        parts = {"training": order[n_val:], "validation": order[:n_val]}
        made = {
            k: _make(
                path,
                [paths[i] for i in sorted(v)],
                [labels[i] for i in sorted(v)],
                class_names,
                skipped,
                image_size,
                channels,
                crop_to_aspect_ratio,
                num_parallel_calls,
            )
            for k, v in parts.items()
        }
        return (made["training"], made["validation"]) if subset == "both" else made[subset]
    return _make(
        path, paths, labels, class_names, skipped, image_size, channels, crop_to_aspect_ratio, num_parallel_calls
    )


def _make(root, paths, labels, class_names, skipped, image_size, channels, crop_to_aspect_ratio, num_parallel_calls):
    import tensorflow as tf

    def load(p, label):
        image = tf.cast(decode_image(tf.io.read_file(p), channels), tf.float32)
        if image_size is not None:
            if crop_to_aspect_ratio:
                h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
                target = image_size[1] / image_size[0]
                ch = tf.cast(tf.minimum(h, w / target), tf.int32)
                cw = tf.cast(tf.minimum(w, h * target), tf.int32)
                image = tf.image.crop_to_bounding_box(
                    image, (tf.shape(image)[0] - ch) // 2, (tf.shape(image)[1] - cw) // 2, ch, cw
                )
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
