"""A Keras layer that prepares raw images the way a model card says, for users who want it inside their graph."""

from __future__ import annotations

import keras

from kerasarch.card import InputConfig
from kerasarch.preprocessing import prepare_images


@keras.saving.register_keras_serializable(package="kerasarch")
class Preprocessing(keras.layers.Layer):
    """Fits ``[0, 255]`` images to a model's input and applies its pixel convention: the layer form of
    :func:`kerasarch.preprocessing.prepare_images`, the implementation every kerasarch step uses.

    ``Preprocessing(kerasarch.card_of(model).input)`` in front of ``model`` makes a model that takes raw pixels
    (grey or RGB, uint8 or float)::

        inputs = keras.Input((None, None, 3), dtype="uint8")
        outputs = model(kerasarch.layers.Preprocessing(kerasarch.card_of(model).input)(inputs))
        raw_model = keras.Model(inputs, outputs)

    Args:
        config: an :class:`~kerasarch.card.InputConfig` (or its dict).
    """

    def __init__(self, config, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.config = InputConfig.from_dict(config) if isinstance(config, dict) else config
        if not isinstance(self.config, InputConfig):
            raise TypeError(f"`config` must be a kerasarch.InputConfig. Received: {type(config).__name__}")

    def call(self, images):
        return prepare_images(images, self.config)

    def compute_output_shape(self, input_shape):
        size = self.config.size
        h, w = size if size is not None else input_shape[-3:-1]
        return (*input_shape[:-3], h, w, self.config.channels)

    def get_config(self):
        return {**super().get_config(), "config": self.config.to_dict()}
