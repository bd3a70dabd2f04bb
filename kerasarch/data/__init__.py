"""Input pipelines on tf.data: built-in offline data, image folders, TFDS, the papers' augmentation presets and the
input conventions of pretrained weights.

Sources (:func:`load`, :func:`from_directory`, :func:`from_tfds`) yield unbatched ``(image, label)`` pairs of
float32 ``[0, 255]`` images and int32 labels. :class:`InputPipeline` / :func:`prepare` turn them into the batches a
model trains on; :func:`kerasarch.training.train` does that itself from the model's spec and recipe::

    from kerasarch import data, training
    train_ds, test_ds = data.load("mnist5k")
    ds = data.from_directory("photos/", image_size=224)
    ds = data.from_tfds("cifar10", split="train", data_dir="~/tensorflow_datasets")
    batches = data.prepare(train_ds, "lenet5", batch_size=32, training=True, augment="lenet")
"""

from kerasarch.data.builtin import BUILTIN, load, load_arrays
from kerasarch.data.directory import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    ImageFileError,
    check_image_file,
    from_directory,
    image_dimensions,
    read_image,
)
from kerasarch.data.pipeline import InputPipeline, input_config_of, input_shape_of, is_batched, prepare
from kerasarch.data.tfds import from_tfds
from kerasarch.data.transforms import (
    AUGMENTATIONS,
    PREPROCESSING_MODES,
    augment,
    eval_transform,
    fit_image,
    pca_lighting,
    preprocess,
)

__all__ = [
    "BUILTIN",
    "load",
    "load_arrays",
    "from_directory",
    "check_image_file",
    "IMAGE_EXTENSIONS",
    "from_tfds",
    "MAX_IMAGE_PIXELS",
    "ImageFileError",
    "image_dimensions",
    "read_image",
    "InputPipeline",
    "prepare",
    "is_batched",
    "input_shape_of",
    "input_config_of",
    "AUGMENTATIONS",
    "PREPROCESSING_MODES",
    "augment",
    "eval_transform",
    "fit_image",
    "pca_lighting",
    "preprocess",
]
