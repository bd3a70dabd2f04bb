"""Pretrained weights: the table of published ImageNet checkpoints, checksummed cached downloads, and loaders for
``.keras``, ``.weights.h5``, keras.applications ``.h5``, torchvision ``.pth`` (read without torch) and
``.safetensors`` files. See ``docs/weights.md``.

``kerasarch.build_model(name, weights=...)`` calls :func:`load_weights`; use the functions here directly to fetch a
file ahead of time (:func:`fetch_weights`), to check what a model's weights expect (:func:`weights_for`), or to
convert a checkpoint (:func:`read_layer_weights`).
"""

from kerasarch.weights.classes import imagenet_class_ids
from kerasarch.weights.download import WeightsDownloadError, get_file, kerasarch_home
from kerasarch.weights.loading import (
    WeightsMismatchError,
    assign_layer_weights,
    fetch_weights,
    head_layers,
    load_weights,
    read_layer_weights,
)
from kerasarch.weights.table import PREPROCESSING, WEIGHTS, WeightsInfo, imagenet_class_names, weights_for
from kerasarch.weights.torch_format import TorchFormatError, load_torch_state_dict

__all__ = [
    "WEIGHTS",
    "WeightsInfo",
    "PREPROCESSING",
    "weights_for",
    "imagenet_class_names",
    "imagenet_class_ids",
    "get_file",
    "kerasarch_home",
    "fetch_weights",
    "load_weights",
    "read_layer_weights",
    "assign_layer_weights",
    "head_layers",
    "load_torch_state_dict",
    "WeightsDownloadError",
    "WeightsMismatchError",
    "TorchFormatError",
]
