"""How the publishers kerasarch loads from name, check and evaluate their ImageNet checkpoints.

The family files under ``kerasarch/applications/`` declare each variant's checkpoints with these constructors,
beside the architecture (see :class:`kerasarch.card.Checkpoint`):

* keras.applications (``source="keras"``): legacy ``.h5`` files whose layer names are the ones kerasarch uses, one
  with the classifier and one without (``notop``). Their hashes are the MD5 digests keras.applications itself checks
  (copied from its source); no SHA-256 is published.
* torchvision (``source="torchvision"``): ``.pth`` state dicts, converted on load by the family's key mapping.
  torchvision names each file ``<name>-<first 8 hex digits of its SHA-256>.pth`` and checks that prefix; so do we.
* timm (``source="timm"``): ``model.safetensors`` files of the ResNet-family checkpoints whose keys are
  torchvision's (:func:`timm_checkpoint`), evaluated with timm's test configuration.

keras.applications and torchvision checkpoints are evaluated with torchvision's ImageNet transform
(:func:`imagenet_eval`): the shorter side resized to 256 (232 for torchvision's IMAGENET1K_V2 sets; bilinear,
antialiased), the centre 224×224 crop.
"""

from __future__ import annotations

from typing import Callable

from kerasarch.card import Checkpoint, InputConfig

__all__ = [
    "KERAS_ORIGIN",
    "TORCHVISION_ORIGIN",
    "TIMM_ORIGIN",
    "imagenet_eval",
    "keras_checkpoint",
    "torchvision_checkpoint",
    "timm_checkpoint",
]

KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/"
TORCHVISION_ORIGIN = "https://download.pytorch.org/models/"
TIMM_ORIGIN = "https://huggingface.co/timm/"


def imagenet_eval(preprocessing: str, size: int = 224, resize_size: int = 256) -> InputConfig:
    """The single-crop ImageNet evaluation transform (torchvision's ``ImageClassification`` preset, the papers'
    "single 224×224 centre crop of the image rescaled to 256")."""
    return InputConfig(
        preprocessing=preprocessing,
        size=(size, size),
        channels=3,
        fit="resize_crop",
        resize_size=resize_size,
        interpolation="bilinear",
        antialias=True,
    )


def keras_checkpoint(
    model: str,
    folder: str,
    stem: str,
    top_md5: str,
    notop_md5: str,
    preprocessing: str,
    top1: float | None = None,
    notes: str = "",
) -> Checkpoint:
    """A keras.applications checkpoint (``<stem>.h5`` with the top, ``<stem>_notop.h5`` without)."""

    def entry(suffix, md5, notop=None):
        return Checkpoint(
            model=model,
            id="imagenet",
            source="keras",
            origin=f"{KERAS_ORIGIN}{folder}/{stem}{suffix}.h5",
            file_name=f"{stem}{suffix}.h5",
            format="keras_h5",
            input=imagenet_eval(preprocessing),
            md5=md5,
            top1=top1,
            notop=notop,
            notes=notes,
        )

    return entry("", top_md5, notop=entry("_notop", notop_md5))


def torchvision_checkpoint(
    model: str,
    file_name: str,
    mapping: Callable,
    top1: float | None = None,
    *,
    preprocessing: str = "torch",
    id: str = "IMAGENET1K_V1",
    resize_size: int = 256,
    notes: str = "",
) -> Checkpoint:
    """A torchvision ``.pth`` checkpoint; ``mapping`` is the family's state-dict key mapping
    (:data:`kerasarch.weights.torch_names.MAPPERS`)."""
    prefix = file_name.rsplit("-", 1)[-1].split(".")[0]
    return Checkpoint(
        model=model,
        id=id,
        source="torchvision",
        origin=f"{TORCHVISION_ORIGIN}{file_name}",
        file_name=file_name,
        format="torch_pth",
        input=imagenet_eval(preprocessing, resize_size=resize_size),
        sha256=prefix,
        top1=top1,
        torch_mapping=mapping,
        notes=notes,
    )


def timm_checkpoint(
    model: str,
    timm_name: str,
    mapping: Callable,
    top1: float | None = None,
    *,
    size: int = 288,
    crop_pct: float = 1.0,
    interpolation: str = "bicubic",
    notes: str = "",
) -> Checkpoint:
    """A timm checkpoint whose state-dict keys are torchvision's (timm's plain ResNet / ResNeXt / Wide ResNet:
    ``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{j}``, ``downsample``, ``fc``): the ``model.safetensors`` of the
    Hugging Face repository ``timm/<timm_name>``. timm publishes no hash in its source, so the SHA-256 of the first
    download is recorded and checked afterwards (:mod:`kerasarch.weights.download`).

    The evaluation transform is timm's test configuration: the shorter side resized to ``size / crop_pct`` (timm's
    ``int(math.floor(size / crop_pct))``), the centre ``size`` crop, ``interpolation``, ImageNet mean/std.
    """
    resize_size = int(size // crop_pct) if crop_pct != 1.0 else size
    config = InputConfig(
        preprocessing="torch",
        size=(size, size),
        channels=3,
        fit="resize_crop",
        resize_size=resize_size,
        interpolation=interpolation,
        antialias=True,
    )
    return Checkpoint(
        model=model,
        id=timm_name,
        source="timm",
        origin=f"{TIMM_ORIGIN}{timm_name}/resolve/main/model.safetensors",
        file_name=f"{timm_name}.safetensors",
        format="safetensors",
        input=config,
        top1=top1,
        torch_mapping=mapping,
        notes=notes,
    )
