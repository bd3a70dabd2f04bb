"""The one implementation of input preparation: fit an image to the model's input, then apply its pixel convention.

Everything that feeds a model — the training and evaluation pipelines, feature extraction, fine-tuning and the
exported serving graphs — calls these functions with the model card's :class:`~kerasarch.card.InputConfig`, so an
image is prepared the same way at every step. They are written with Keras backend ops: they run eagerly on any
backend, and inside ``tf.function`` / ``tf.data`` graphs (with TensorFlow ops there, whatever the Keras backend,
as Keras' own preprocessing layers do), where image sizes may be unknown until run time.

Pixel values are ``[0, 255]`` (any dtype); outputs are float32.
"""

from __future__ import annotations

import sys
from typing import Any

import keras

from kerasarch.card import InputConfig, preprocessing_constants

__all__ = ["preprocess", "convert_channels", "fit_images", "prepare_images"]

# ITU-R BT.601 luma weights (PIL's convert("L"); they sum to 1, so a grey image sent as RGB stays the same).
_LUMA = (0.299, 0.587, 0.114)


def _backend(x):
    """The backend modules to compute on: TensorFlow's for TensorFlow tensors (tf.data, tf.function, export
    graphs), else the Keras backend's. Keras has no public switch for this (see :mod:`kerasarch.keras_compat`)."""
    from kerasarch.keras_compat import backend_module

    if keras.backend.backend() != "tensorflow" and "tensorflow" in sys.modules:
        import tensorflow as tf

        if tf.is_tensor(x):
            return backend_module("tensorflow")
    return backend_module(keras.backend.backend())


def _float(x, B):
    return B.core.cast(B.core.convert_to_tensor(x), "float32")


def preprocess(images: Any, mode: str, channels: int | None = None) -> Any:
    """Maps ``[0, 255]`` pixels to the pixel convention ``mode`` (:data:`kerasarch.card.PREPROCESSING_MODES`):
    ``(x · scale − mean) / std`` per channel, RGB→BGR first for ``"caffe"`` (see
    :func:`kerasarch.card.preprocessing_constants`).

    Args:
        images: ``(..., H, W, C)`` pixels.
        mode: the convention.
        channels: the channel count (default: the images' last dimension).
    """
    B = _backend(images)
    x = _float(images, B)
    channels = channels or x.shape[-1] or 3
    scale, mean, std, bgr = preprocessing_constants(mode, int(channels))
    if bgr:
        x = B.numpy.flip(x, axis=-1)
    # One multiply-add, x · (scale / std) − mean / std, with the constants folded in float64: graph optimisers have
    # nothing left to reorder, so eager code, tf.data and a serving graph give bit-identical inputs.
    gain = [scale / d for d in std]
    offset = [-m / d for m, d in zip(mean, std)]
    if any(g != 1.0 for g in gain):
        x = x * B.core.convert_to_tensor(gain, "float32")
    if any(o != 0.0 for o in offset):
        x = x + B.core.convert_to_tensor(offset, "float32")
    return x


def convert_channels(images: Any, channels: int) -> Any:
    """``(..., H, W, C)`` images with ``channels`` channels: RGBA drops alpha, RGB→grey by luma, grey→RGB by
    repetition. A channel count unknown until run time (a serving graph taking grey or colour images) is decided
    in the graph."""
    B = _backend(images)
    x = _float(images, B)
    have = x.shape[-1]

    def to(x, have):
        if have == channels:
            return x
        if have == 4:
            return to(x[..., :3], 3)
        if have == 3 and channels == 1:
            return B.numpy.sum(x * B.core.convert_to_tensor(_LUMA, "float32"), axis=-1, keepdims=True)
        if have == 1 and channels == 3:
            return B.numpy.concatenate([x, x, x], axis=-1)
        raise ValueError(
            f"Cannot convert images with {have} channels to {channels}; images have 1 (grey), "
            f"3 (RGB) or 4 (RGBA) channels. Received: images of shape {tuple(x.shape)}"
        )

    if have is not None:
        return to(x, have)
    c = B.core.shape(x)[-1]
    grey = to(x[..., :1], 1)
    colour = to(x[..., :3], 3)
    return B.core.cond(B.numpy.equal(c, 1), lambda: grey, lambda: colour)


def _dims(x, B):
    shape = B.core.shape(x)
    h, w = x.shape[1], x.shape[2]
    return (h if h is not None else shape[1]), (w if w is not None else shape[2])


def _static(*values):
    return all(isinstance(v, int) for v in values)


def _max0(v, B):
    return max(v, 0) if isinstance(v, int) else B.numpy.maximum(v, 0)


def _pad_or_crop(x, size, B):
    """Centre ``x`` (a batch) in a ``size`` field: zero-padded where smaller, centre-cropped where larger."""
    th, tw = size
    h, w = _dims(x, B)
    top, left = _max0(h - th, B) // 2, _max0(w - tw, B) // 2
    if not (_static(h, w) and h <= th and w <= tw):
        ch = th if _static(h) and h >= th else (B.numpy.minimum(h, th) if not _static(h) else h)
        cw = tw if _static(w) and w >= tw else (B.numpy.minimum(w, tw) if not _static(w) else w)
        x = x[:, top : top + ch, left : left + cw, :]
        h, w = ch, cw
    ph, pw = _max0(th - h, B), _max0(tw - w, B)
    if _static(ph, pw) and ph == 0 and pw == 0:
        return x
    return B.numpy.pad(x, [[0, 0], [ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]])


def _round_half_even(v, B):
    if isinstance(v, (int, float)):
        return int(round(v))
    return B.core.cast(B.numpy.round(v), "int32")


def _resize_crop(x, config, B):
    """torchvision's evaluation transform: the shorter side to ``resize_size`` (the longer one truncated, as
    ``transforms.Resize(int)``), then the centre crop (offsets rounded as ``transforms.CenterCrop``)."""
    th, tw = config.size
    short = int(config.resize_size)
    h, w = _dims(x, B)
    if _static(h, w):
        nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    else:
        hf, wf = B.core.cast(h, "float32"), B.core.cast(w, "float32")
        portrait = B.numpy.less_equal(h, w)
        nh = B.numpy.where(portrait, short, B.core.cast(short * hf / wf, "int32"))
        nw = B.numpy.where(portrait, B.core.cast(short * wf / hf, "int32"), short)
    x = B.image.resize(x, (nh, nw), interpolation=config.interpolation, antialias=config.antialias)
    if _static(nh, nw):
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    else:
        top = _round_half_even(B.core.cast(nh - th, "float32") / 2.0, B)
        left = _round_half_even(B.core.cast(nw - tw, "float32") / 2.0, B)
    return x[:, top : top + th, left : left + tw, :]


def _small_enough_to_pad(h, w, size, B):
    th, tw = size
    if _static(h, w):
        return h <= th and w <= tw and 4 * th <= 5 * h and 4 * tw <= 5 * w
    n = B.numpy
    return n.logical_and(
        n.logical_and(n.less_equal(h, th), n.less_equal(w, tw)),
        n.logical_and(n.less_equal(4 * th, 5 * h), n.less_equal(4 * tw, 5 * w)),
    )


def fit_images(images: Any, config: InputConfig) -> Any:
    """Fits images to the model's input: channels (:func:`convert_channels`), then the spatial ``config.fit``.

    Args:
        images: one ``(H, W, C)`` image or a ``(N, H, W, C)`` batch (one size per batch), ``[0, 255]``.
        config: the model card's :class:`~kerasarch.card.InputConfig`; ``config.size`` ``None`` keeps the size.

    Returns:
        float32 images of ``config.size`` and ``config.channels``, with the input's rank.
    """
    B = _backend(images)
    x = _float(images, B)
    single = len(x.shape) == 3
    if single:
        x = B.numpy.expand_dims(x, 0)
    if len(x.shape) != 4:
        raise ValueError(f"Images are (H, W, C) or (N, H, W, C). Received: shape {tuple(x.shape)}")
    x = convert_channels(x, config.channels)
    size = config.size
    if size is not None and None not in size:
        h, w = _dims(x, B)
        same = _static(h, w) and (h, w) == tuple(size)
        if not same:
            interp = dict(interpolation=config.interpolation, antialias=config.antialias)
            if config.fit == "resize":
                x = B.image.resize(x, size, **interp)
            elif config.fit == "pad":
                x = _pad_or_crop(x, size, B)
            elif config.fit == "resize_crop":
                x = _resize_crop(x, config, B)
            else:
                small = _small_enough_to_pad(h, w, size, B)
                if isinstance(small, bool):
                    x = _pad_or_crop(x, size, B) if small else B.image.resize(x, size, **interp)
                else:
                    x = B.core.cond(small, lambda: _pad_or_crop(x, size, B), lambda: B.image.resize(x, size, **interp))
            if x.shape[1] != size[0] or x.shape[2] != size[1]:
                x = B.numpy.reshape(x, (-1, size[0], size[1], config.channels))
    return x[0] if single else x


def prepare_images(images: Any, config: InputConfig) -> Any:
    """:func:`fit_images` then :func:`preprocess`: ``[0, 255]`` images of any size → the model's input."""
    return preprocess(fit_images(images, config), config.preprocessing, config.channels)
