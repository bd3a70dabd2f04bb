"""Image transforms on tf.data elements: fitting to a model's input, the input conventions of pretrained weights,
and the papers' augmentation presets.

Every image here is a float32 ``(H, W, C)`` tensor with pixel values in ``[0, 255]`` (the convention of
``keras.applications.*.preprocess_input``). Random transforms are *stateless*: they take a ``seed`` tensor of
shape ``(2,)``, so an input pipeline gives the same images for the same seed whatever the thread schedule, and a
resumed run sees exactly the images an uninterrupted one would have seen.
"""

from __future__ import annotations

import math

import tensorflow as tf

from kerasarch.card import PREPROCESSING_MODES, InputConfig
from kerasarch.preprocessing import convert_channels, fit_images
from kerasarch.preprocessing import preprocess as _preprocess

__all__ = [
    "PREPROCESSING_MODES",
    "FIT_METHODS",
    "AUGMENTATIONS",
    "preprocess",
    "fit_image",
    "augment",
    "eval_transform",
    "pca_lighting",
]

FIT_METHODS = ("auto", "pad", "resize", "resize_crop")

# Principal components of ImageNet RGB pixel values (0-255 scale): the eigen-decomposition AlexNet's colour
# augmentation (Krizhevsky et al. 2012 §4.1) samples along. The paper does not print them; these are the values
# fb.resnet.torch published and most ports use.
_PCA_EIGVAL = (55.46, 4.794, 1.148)
_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def preprocess(images: tf.Tensor, mode: str) -> tf.Tensor:
    """Maps ``[0, 255]`` pixels to the input convention ``mode`` of a model's weights (one of
    :data:`PREPROCESSING_MODES`): :func:`kerasarch.preprocessing.preprocess`, the one implementation every step
    uses. The modes of ``keras.applications.imagenet_utils.preprocess_input`` (``"caffe"``, ``"torch"``, ``"tf"``),
    plus ``"unit"`` ([0, 1]), ``"lecun"`` (LeCun et al. 1998 §II-A: background -0.1, ink 1.175) and ``"none"``.
    One-channel images use the mean of the three channel statistics.

    Args:
        images: float tensor ``(..., H, W, C)`` in ``[0, 255]``, C = 1 or 3.
        mode: one of :data:`PREPROCESSING_MODES`.

    Returns:
        A float32 tensor of the same shape.
    """
    return _preprocess(images, mode)


def _fix_channels(image, channels):
    return image if channels is None else convert_channels(image, channels)


def fit_image(
    image: tf.Tensor,
    size: tuple[int, int],
    channels: int | None = None,
    method: str = "auto",
    resize_size: int | None = None,
) -> tf.Tensor:
    """Fits one image to a model's input: channel conversion (grey↔RGB, RGBA→RGB) and spatial size, with
    :func:`kerasarch.preprocessing.fit_images` (see :class:`kerasarch.card.InputConfig` for the methods).

    Args:
        image: float ``(H, W, C)`` tensor.
        size: ``(height, width)`` of the model's input.
        channels: the model's channel count (``None``: keep).
        method: ``"pad"`` (zero-pad, centred — LeCun et al. 1998 put the 28×28 MNIST digits in a 32×32 field),
            ``"resize"`` (bilinear), ``"resize_crop"`` (shorter side to ``resize_size``, centre crop) or ``"auto"``:
            pad when the image is at most 25% smaller in both dimensions (28→32), resize otherwise (8×8 digits →
            32×32, photos → 224×224).
        resize_size: the shorter side before the crop (``"resize_crop"``).

    Returns:
        A float32 ``(height, width, channels)`` tensor.
    """
    if method not in FIT_METHODS:
        raise ValueError(f"`method` must be one of {FIT_METHODS}. Received: {method!r}")
    channels = channels or image.shape[-1] or 3
    config = InputConfig(size=(int(size[0]), int(size[1])), channels=int(channels), fit=method, resize_size=resize_size)
    return fit_images(image, config)


def _seeds(seed, n):
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n))


def _resize_shorter(image, shorter, at_least=None):
    """Rescales so that the shorter side is ``shorter`` (a scalar tensor or int), and both sides at least
    ``at_least`` = ``(height, width)`` (so that a crop of that size fits)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(shorter, tf.float32) / tf.reduce_min(shape)
    if at_least is not None:
        scale = tf.maximum(scale, tf.reduce_max(tf.constant(at_least, tf.float32) / shape))
    new = tf.cast(tf.math.ceil(shape * scale - 1e-3), tf.int32)
    return tf.image.resize(image, new, method="bilinear")


def _random_crop(image, size, seed):
    return tf.image.stateless_random_crop(image, (size[0], size[1], tf.shape(image)[2]), seed)


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, std: float = 0.1) -> tf.Tensor:
    """AlexNet's colour augmentation (Krizhevsky et al. 2012 §4.1): adds ``eigvec · (α · eigval)`` to every pixel,
    α ~ N(0, std²) per image, along the principal components of ImageNet's RGB values. Three-channel images only
    (others are returned unchanged)."""
    if image.shape[-1] != 3:
        return image
    alpha = tf.random.stateless_normal((3,), seed, stddev=std)
    delta = tf.linalg.matvec(tf.constant(_PCA_EIGVEC), alpha * tf.constant(_PCA_EIGVAL))
    return image + delta


def _photometric(image, seed):
    """GoogLeNet's photometric distortions (Szegedy et al. 2014 §6 cites Howard 2013): random brightness,
    saturation, hue and contrast; the ranges are the ones of TensorFlow's Inception preprocessing."""
    s = _seeds(seed, 4)
    x = tf.image.stateless_random_brightness(image / 255.0, 32.0 / 255.0, s[0])
    if image.shape[-1] == 3:
        x = tf.image.stateless_random_saturation(x, 0.5, 1.5, s[1])
        x = tf.image.stateless_random_hue(x, 0.2, s[2])
    x = tf.image.stateless_random_contrast(x, 0.5, 1.5, s[3])
    return x * 255.0


def _random_affine(image, seed, size, max_shift=2.0, scale=(0.9, 1.1), max_rotate=10.0, max_shear=0.1):
    """Small random affine distortions (LeCun et al. 1998 §III-C trained on "distorted" digits: translations,
    scaling, squeezing and shearing), zero fill."""
    s = _seeds(seed, 5)
    h, w = float(size[0]), float(size[1])
    zoom = tf.random.stateless_uniform((), s[0], scale[0], scale[1])
    angle = tf.random.stateless_uniform((), s[1], -max_rotate, max_rotate) * (math.pi / 180.0)
    shear = tf.random.stateless_uniform((), s[2], -max_shear, max_shear)
    shift = tf.random.stateless_uniform((2,), s[3], -max_shift, max_shift)
    squeeze = tf.random.stateless_uniform((), s[4], 0.95, 1.05)
    # Output→input mapping: x_in = A · (x_out − c) + c + shift, A = (R · Sh · Sc)⁻¹.
    cos, sin = tf.cos(angle), tf.sin(angle)
    sx, sy = zoom * squeeze, zoom / squeeze
    fwd = tf.reshape(tf.stack([cos * sx, (cos * shear - sin) * sy, sin * sx, (sin * shear + cos) * sy]), (2, 2))
    inv = tf.linalg.inv(fwd)
    c = tf.constant([(w - 1) / 2, (h - 1) / 2])
    offset = c - tf.linalg.matvec(inv, c) + shift
    transform = tf.stack([inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1], 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=tf.constant([int(h), int(w)]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    return out[0]


def _scale_crop_flip(image, seed, size, shorter_range, colour):
    s = _seeds(seed, 4)
    lo, hi = shorter_range
    shorter = lo if lo == hi else tf.random.stateless_uniform((), s[0], lo, hi + 1, dtype=tf.int32)
    x = _resize_shorter(image, shorter, size)
    x = _random_crop(x, size, s[1])
    x = tf.image.stateless_random_flip_left_right(x, s[2])
    if colour:
        x = pca_lighting(x, s[3])
    return x


def _relative(size, pixels_at_224):
    return int(round(min(size) * pixels_at_224 / 224))


def _alexnet(image, seed, size):
    # §4.1: random 224 crops (227 for the network as built) of the 256-rescaled image, flips, PCA colour.
    side = _relative(size, 256)
    return _scale_crop_flip(image, seed, size, (side, side), colour=True)


def _vgg(image, seed, size):
    # §3.1: scale jittering, the training scale S sampled from [256, 512]; crops, flips, RGB colour shift.
    return _scale_crop_flip(image, seed, size, (_relative(size, 256), _relative(size, 512)), colour=True)


def _resnet(image, seed, size):
    # §3.4: shorter side sampled in [256, 480], 224 crops, flips, the standard colour augmentation of AlexNet.
    return _scale_crop_flip(image, seed, size, (_relative(size, 256), _relative(size, 480)), colour=True)


def _googlenet(image, seed, size):
    # §6: crops of 8%–100% of the image area with aspect ratio in [3/4, 4/3], resized; photometric distortions.
    s = _seeds(seed, 3)
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=s[0],
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    x = tf.slice(image, begin, extent)
    x = tf.image.resize(x, size, method="bilinear")
    x = tf.image.stateless_random_flip_left_right(x, s[1])
    return _photometric(x, s[2])


def _cifar(image, seed, size):
    # He et al. 2015 §4.2: pad 4 pixels on each side, random 32×32 crop, horizontal flip.
    s = _seeds(seed, 2)
    pad = max(1, int(round(4 * min(size) / 32)))
    x = tf.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    x = _random_crop(x, size, s[0])
    return tf.image.stateless_random_flip_left_right(x, s[1])


def _lenet(image, seed, size):
    return _random_affine(image, seed, size)


# name: (train transform, needs the raw image (crops at its own resolution) rather than one fitted to the input)
_PRESETS = {
    "alexnet": (_alexnet, True),
    "vgg": (_vgg, True),
    "googlenet": (_googlenet, True),
    "resnet": (_resnet, True),
    "cifar": (_cifar, False),
    "lenet": (_lenet, False),
    "none": (None, False),
}
AUGMENTATIONS = tuple(_PRESETS)


def _check_preset(name):
    if name not in _PRESETS:
        raise ValueError(f"Unknown augmentation {name!r}; choose one of {AUGMENTATIONS}.")


def crops_from_raw(name: str) -> bool:
    """Whether augmentation preset ``name`` crops at the image's own resolution (ImageNet-style presets)."""
    _check_preset(name)
    return _PRESETS[name][1]


def augment(
    image: tf.Tensor, seed: tf.Tensor, name: str, size: tuple[int, int], channels: int | None = None
) -> tf.Tensor:
    """The training-time transform of augmentation preset ``name``.

    Presets: ``"alexnet"`` (crops of the 256-rescaled image, flips, PCA colour), ``"vgg"`` (scale jittering
    S ∈ [256, 512], crops, flips, colour), ``"googlenet"`` (random-size crops, 8–100% of the area, aspect 3/4–4/3,
    flips, photometric distortions), ``"resnet"`` (S ∈ [256, 480], crops, flips, colour), ``"cifar"`` (pad 4, crop,
    flip), ``"lenet"`` (small random affine distortions, no flips: digits are not symmetric), ``"none"``.
    The 224-pixel sizes of the papers scale with the model's input size.

    Args:
        image: float ``(H, W, C)`` tensor in ``[0, 255]``; any size for the ImageNet presets, the model's input
            size for the others.
        seed: int tensor of shape ``(2,)``.
        name: preset name.
        size: ``(height, width)`` of the output.
        channels: the model's channel count.

    Returns:
        A float32 ``(height, width, channels)`` tensor in ``[0, 255]``.
    """
    _check_preset(name)
    fn, raw = _PRESETS[name]
    size = (int(size[0]), int(size[1]))
    if not raw or fn is None:
        image = fit_image(image, size, channels)
    else:
        image = _fix_channels(tf.cast(image, tf.float32), channels)
    if fn is not None:
        image = fn(image, seed, size)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape((size[0], size[1], channels or image.shape[-1]))
    return image


def eval_transform(image: tf.Tensor, name: str, size: tuple[int, int], channels: int | None = None) -> tf.Tensor:
    """The evaluation-time counterpart of preset ``name``: for the ImageNet presets the shorter side is rescaled to
    256/224 of the input size and the centre cropped (the papers' single-crop evaluation, ``fit="resize_crop"``);
    otherwise the image is fitted to the input (:func:`fit_image`)."""
    _check_preset(name)
    size = (int(size[0]), int(size[1]))
    if not _PRESETS[name][1]:
        return fit_image(image, size, channels)
    return fit_image(image, size, channels, "resize_crop", resize_size=_relative(size, 256))
