"""Shared test utilities."""

import numpy as np


def trainable_params(model):
    """Trainable parameter count: torchvision's convention (no BatchNorm moving statistics)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def weight_shapes(model):
    """``{layer name: [weight shapes]}`` for every layer with weights."""
    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers if layer.weights}


def random_images(shape, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(batch, *shape)).astype("float32")
