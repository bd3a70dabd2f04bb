"""How the two publishers kerasarch loads from name, check and evaluate their ImageNet checkpoints.

The family files under ``kerasarch/applications/`` declare each variant's checkpoints with these two constructors,
beside the architecture (see :class:`kerasarch.card.Checkpoint`):

* keras.applications (``source="keras"``): legacy ``.h5`` files whose layer names are the ones kerasarch uses, one
  with the classifier and one without (``notop``). Their hashes are the MD5 digests keras.applications itself checks
  (copied from its source); no SHA-256 is published.
* torchvision (``source="torchvision"``): ``.pth`` state dicts, converted on load by the family's key mapping.
  torchvision names each file ``<name>-<first 8 hex digits of its SHA-256>.pth`` and checks that prefix; so do we.

Both are evaluated with torchvision's ImageNet transform (:func:`imagenet_eval`): the shorter side resized to 256
(bilinear, antialiased), the centre 224×224 crop.
"""

from __future__ import annotations

from typing import Callable

from kerasarch.card import Checkpoint, InputConfig

__all__ = ["KERAS_ORIGIN", "TORCHVISION_ORIGIN", "imagenet_eval", "keras_checkpoint", "torchvision_checkpoint"]

KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/"
TORCHVISION_ORIGIN = "https://download.pytorch.org/models/"


def imagenet_eval(preprocessing: str, size: int = 224, resize_size: int = 256) -> InputConfig:
    """The single-crop ImageNet evaluation transform (torchvision's ``ImageClassification`` preset, the papers'
    "single 224×224 centre crop of the image rescaled to 256")."""
    return InputConfig(preprocessing=preprocessing, size=(size, size), channels=3, fit="resize_crop",
                       resize_size=resize_size, interpolation="bilinear", antialias=True)


def keras_checkpoint(model: str, folder: str, stem: str, top_md5: str, notop_md5: str, preprocessing: str,
                     top1: float | None = None, notes: str = "") -> Checkpoint:
    """A keras.applications checkpoint (``<stem>.h5`` with the top, ``<stem>_notop.h5`` without)."""
    def entry(suffix, md5, notop=None):
        return Checkpoint(model=model, id="imagenet", source="keras",
                          origin=f"{KERAS_ORIGIN}{folder}/{stem}{suffix}.h5", file_name=f"{stem}{suffix}.h5",
                          format="keras_h5", input=imagenet_eval(preprocessing), md5=md5, top1=top1, notop=notop,
                          notes=notes)
    return entry("", top_md5, notop=entry("_notop", notop_md5))


def torchvision_checkpoint(model: str, file_name: str, mapping: Callable, top1: float | None = None, *,
                           preprocessing: str = "torch", id: str = "IMAGENET1K_V1", resize_size: int = 256,
                           notes: str = "") -> Checkpoint:
    """A torchvision ``.pth`` checkpoint; ``mapping`` is the family's state-dict key mapping
    (:data:`kerasarch.weights.torch_names.MAPPERS`)."""
    prefix = file_name.rsplit("-", 1)[-1].split(".")[0]
    return Checkpoint(model=model, id=id, source="torchvision", origin=f"{TORCHVISION_ORIGIN}{file_name}",
                      file_name=file_name, format="torch_pth",
                      input=imagenet_eval(preprocessing, resize_size=resize_size), sha256=prefix, top1=top1,
                      torch_mapping=mapping, notes=notes)
