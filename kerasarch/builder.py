"""What every family builder shares: input resolution, the classifier top, and the final model.

A family builder looks like::

    def vgg(depth, *, include_top=True, weights=None, input_tensor=None, input_shape=None,
            pooling=None, classes=1000, classifier_activation="softmax", name="vgg16"):
        check_top_args(include_top, pooling, classes, classifier_activation)
        inputs, x = make_inputs(input_shape, input_tensor, default=(224, 224, 3), min_size=32, name=name)
        ...  # the feature extractor, with deterministic layer names
        x = apply_classifier(x, include_top, pooling, classes, classifier_activation)
        return finish_model(inputs, x, name, weights, input_tensor)
"""

from __future__ import annotations

import operator

import keras
from keras import layers

__all__ = [
    "apply_classifier",
    "apply_pooling",
    "check_top_args",
    "finish_model",
    "load_weights_file",
    "make_inputs",
    "output_dtype",
    "predictions_activation",
    "predictions_dense",
]

_POOLINGS = (None, "avg", "max")


def as_python_int(value):
    """``value`` as a Python ``int`` when it is an integer of any kind (``np.int64(10)`` included, ``True`` not);
    anything else is returned unchanged, for the caller's check to refuse."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return value
    try:
        return operator.index(value)
    except TypeError:
        return value


def as_python_shape(shape):
    """A shape tuple with NumPy integers turned into Python ints (``None`` entries kept); other values unchanged."""
    if isinstance(shape, (tuple, list)):
        return tuple(None if d is None else as_python_int(d) for d in shape)
    return shape


def check_top_args(include_top, pooling, classes, classifier_activation):
    """Fails fast on arguments that cannot make a model, saying what was received and what is allowed."""
    if not isinstance(include_top, bool):
        raise ValueError(f"`include_top` must be True or False. Received: include_top={include_top!r}")
    if pooling not in _POOLINGS:
        raise ValueError(f"`pooling` must be one of None, 'avg', 'max'. Received: pooling={pooling!r}")
    classes = as_python_int(classes)
    if include_top and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        raise ValueError(f"`classes` must be an integer >= 1 when include_top=True. Received: classes={classes!r}")
    if classifier_activation is not None and not callable(classifier_activation):
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"`classifier_activation` must be None, a callable or a Keras activation name. "
                f"Received: classifier_activation={classifier_activation!r}"
            ) from e


def make_inputs(input_shape, input_tensor, *, default, min_size, name="model", channels=None):
    """Returns ``(inputs, x)``: the model's input tensor and the tensor the network starts from.

    Args:
        input_shape: the user's ``(H, W, C)`` or ``None`` for ``default``; ``H``/``W`` may be ``None``.
        input_tensor: an existing Keras tensor to build on, or ``None``.
        default: the default ``(H, W, C)``.
        min_size: the smallest spatial size the network accepts (after all strides, at least 1×1).
        name: the model name, for error messages.
        channels: the required channel count, if the architecture fixes it (``None``: anything >= 1).
    """
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            "kerasarch builds channels_last models only. Received: "
            f"keras.config.image_data_format()={keras.config.image_data_format()!r}"
        )
    if input_tensor is not None and input_shape is None:
        input_shape = tuple(input_tensor.shape[1:])
    shape = as_python_shape(tuple(default if input_shape is None else input_shape))
    if len(shape) != 3:
        raise ValueError(f"{name}: `input_shape` must be (height, width, channels). Received: input_shape={shape!r}")
    h, w, c = shape
    for dim, label in ((h, "height"), (w, "width"), (c, "channels")):
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
            raise ValueError(
                f"{name}: input {label} must be an integer{'' if label == 'channels' else ' or None'}. "
                f"Received: input_shape={shape!r}"
            )
    for dim, label in ((h, "height"), (w, "width")):
        if dim is not None and dim < min_size:
            raise ValueError(
                f"{name}: input {label} must be at least {min_size} pixels. Received: input_shape={shape!r}"
            )
    if c is None or c < 1 or (channels is not None and c != channels):
        allowed = f"exactly {channels}" if channels is not None else "at least 1"
        raise ValueError(f"{name}: input channels must be {allowed}. Received: input_shape={shape!r}")
    if input_tensor is None:
        inputs = layers.Input(shape=shape, name="input_layer")
        return inputs, inputs
    if not keras.backend.is_keras_tensor(input_tensor):
        inputs = layers.Input(tensor=input_tensor, shape=shape)
        return inputs, inputs
    return input_tensor, input_tensor


def apply_pooling(x, pooling, *, prefix=""):
    """The ``pooling`` argument of a headless model: None, global average (``avg_pool``) or max (``max_pool``)."""
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name=f"{prefix}avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name=f"{prefix}max_pool")(x)
    return x


def output_dtype():
    """The dtype of a model's output layer: float32 under a mixed precision policy, so that logits and softmax
    keep float32 range (the Keras mixed-precision guide's advice); ``None`` (the policy's) otherwise."""
    policy = keras.config.dtype_policy()
    return "float32" if policy.compute_dtype != policy.variable_dtype else None


def predictions_dense(classes, classifier_activation, name="predictions", **kwargs):
    """The final classifier layer, computing in float32 under mixed precision (see :func:`output_dtype`)."""
    return layers.Dense(
        as_python_int(classes), activation=classifier_activation, name=name, dtype=output_dtype(), **kwargs
    )


def predictions_activation(classifier_activation, name="predictions"):
    """The output layer of a convolutional classifier (NiN, SqueezeNet: class maps averaged, then softmax):
    an Activation in float32 under mixed precision (see :func:`output_dtype`)."""
    return layers.Activation(classifier_activation or "linear", name=name, dtype=output_dtype())


def apply_classifier(x, include_top, pooling, classes, classifier_activation, *, dropout=None, pool_name="avg_pool"):
    """The usual global-average-pool head: ``avg_pool`` → (dropout) → ``predictions``; without the top, the
    ``pooling`` argument."""
    if not include_top:
        return apply_pooling(x, pooling)
    x = layers.GlobalAveragePooling2D(name=pool_name)(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return predictions_dense(classes, classifier_activation)(x)


def finish_model(inputs, outputs, name, weights=None, input_tensor=None):
    """Makes the Functional model (a :class:`~kerasarch.card.CardModel`, whose card the registry fills in) and
    loads ``weights`` (None or a file path; ``"imagenet"`` needs the card, so :func:`kerasarch.build_model` loads
    it after attaching the card)."""
    from kerasarch.card import CardModel

    if input_tensor is not None and keras.backend.is_keras_tensor(input_tensor):
        inputs = keras.utils.get_source_inputs(input_tensor)
    model = CardModel(inputs, outputs, name=name)
    if weights is not None:
        load_weights_file(model, weights)
    return model


def load_weights_file(model, weights):
    """Loads ``weights`` into ``model``: ``"imagenet"`` / ``"imagenet:<source>"`` (the published checkpoint of the
    variant its card names, downloaded and checksummed) or the path of a ``.keras``, ``.weights.h5``,
    keras.applications ``.h5``, torchvision ``.pth`` or ``.safetensors`` file; see :mod:`kerasarch.weights`."""
    from kerasarch.weights.loading import load_weights

    return load_weights(model, weights)
