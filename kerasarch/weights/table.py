"""Where each model's ImageNet weights come from, how to verify them, and what the weights expect.

Two sources:

* keras.applications (``source="keras"``): legacy ``.h5`` files whose layer names are the ones kerasarch uses, one
  with the classifier and one without (``notop``). Their hashes are the MD5 digests keras.applications itself checks
  (copied from its source); no SHA-256 is published, so ``sha256`` is ``None``.
* torchvision (``source="torchvision"``): ``.pth`` state dicts, converted on load. torchvision names each file
  ``<name>-<first 8 hex digits of its SHA-256>.pth`` and checks that prefix; so do we (``sha256`` holds the prefix).
  The full SHA-256 cannot be known offline; the first download records it (see :mod:`kerasarch.weights.download`).

``build_model(name, weights="imagenet")`` uses the first entry of a model (the source whose preprocessing matches the
model's spec); ``weights="imagenet:torchvision"`` or ``"imagenet:keras"`` picks one.
"""

from __future__ import annotations

import dataclasses

from kerasarch.weights.classes import imagenet_class_names

__all__ = ["WeightsInfo", "WEIGHTS", "weights_for", "imagenet_class_names", "PREPROCESSING"]

# What each preprocessing mode does to RGB pixel values in [0, 255] (the keras.applications modes).
PREPROCESSING = {
    "caffe": "RGB->BGR, minus the ImageNet BGR mean (103.939, 116.779, 123.68); no scaling",
    "torch": "x/255, minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225)",
    "tf": "x/127.5 - 1 (range [-1, 1])",
    "none": "no preprocessing: pixel values as given",
}

_KA = "https://storage.googleapis.com/tensorflow/keras-applications/"
_TV = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """One downloadable weights file.

    Attributes:
        model: the kerasarch registry name it loads into.
        source: ``"keras"`` (keras.applications) or ``"torchvision"``.
        origin: download URL.
        file_name: name in the cache folder.
        format: ``"keras_h5"`` or ``"torch_pth"``.
        sha256: full SHA-256 or a prefix (torchvision's 8-digit file-name hash); ``None`` where not known offline.
        md5: MD5 digest where that is what the publisher gives (keras.applications).
        preprocessing: the input convention the weights were trained with (see :data:`PREPROCESSING`).
        class_names: label set of the classifier (``"imagenet1k"``: the 1,000 ILSVRC-2012 synsets in sorted order).
        top1: published ImageNet top-1 (%) of these weights, for reference.
        notop: the same weights without the classifier, where published separately (keras.applications).
        notes: anything a user must know (e.g. GoogLeNet's ``transform_input``).
    """

    model: str
    source: str
    origin: str
    file_name: str
    format: str
    sha256: str | None = None
    md5: str | None = None
    preprocessing: str = "torch"
    class_names: str = "imagenet1k"
    top1: float | None = None
    notop: "WeightsInfo | None" = None
    notes: str = ""

    @property
    def file_hash(self):
        """The hash :func:`kerasarch.weights.download.get_file` checks (``None``: recorded on first download)."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"md5:{self.md5}" if self.md5 else None


def _keras(model, folder, stem, top_md5, notop_md5, preprocessing, top1=None):
    def info(suffix, md5, notop=None):
        return WeightsInfo(model=model, source="keras", origin=f"{_KA}{folder}/{stem}{suffix}.h5",
                           file_name=f"{stem}{suffix}.h5", format="keras_h5", md5=md5, preprocessing=preprocessing,
                           top1=top1, notop=notop)
    return info("", top_md5, notop=info("_notop", notop_md5))


def _torch(model, file_name, preprocessing="torch", top1=None, notes=""):
    prefix = file_name.rsplit("-", 1)[-1].split(".")[0]
    return WeightsInfo(model=model, source="torchvision", origin=f"{_TV}{file_name}", file_name=file_name,
                       format="torch_pth", sha256=prefix, preprocessing=preprocessing, top1=top1, notes=notes)


_ENTRIES = [
    # keras.applications (MD5s from keras/src/applications/*.py).
    _keras("vgg16", "vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels", "64373286793e3c8b2b4e3219cbf3544b",
           "6d6bbae143d832006294945121d1f1fc", "caffe", 71.3),
    _keras("vgg19", "vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels", "cbe5617147190e668d6c5d5026f83318",
           "253f8cb515780f3b799900260a226db6", "caffe", 71.3),
    _keras("resnet50_keras", "resnet", "resnet50_weights_tf_dim_ordering_tf_kernels",
           "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626", "caffe", 74.9),
    _keras("resnet101_keras", "resnet", "resnet101_weights_tf_dim_ordering_tf_kernels",
           "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21", "caffe", 76.4),
    _keras("resnet152_keras", "resnet", "resnet152_weights_tf_dim_ordering_tf_kernels",
           "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c", "caffe", 76.6),
    _keras("resnet50v2", "resnet", "resnet50v2_weights_tf_dim_ordering_tf_kernels",
           "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917", "tf", 76.0),
    _keras("resnet101v2", "resnet", "resnet101v2_weights_tf_dim_ordering_tf_kernels",
           "6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5", "tf", 77.2),
    _keras("resnet152v2", "resnet", "resnet152v2_weights_tf_dim_ordering_tf_kernels",
           "a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33", "tf", 78.0),
    _keras("densenet121", "densenet", "densenet121_weights_tf_dim_ordering_tf_kernels",
           "9d60b8095a5708f2dcce2bca79d332c7", "30ee3e1110167f948a6b9946edeeb738", "torch", 75.0),
    _keras("densenet169", "densenet", "densenet169_weights_tf_dim_ordering_tf_kernels",
           "d699b8f76981ab1b30698df4c175e90b", "b8c4d4c20dd625c148057b9ff1c1176b", "torch", 76.2),
    _keras("densenet201", "densenet", "densenet201_weights_tf_dim_ordering_tf_kernels",
           "1ceb130c1ea1b78c3bf6114dbdfd8807", "c13680b51ded0fb44dff2d8f86ac8bb1", "torch", 77.3),
    # torchvision IMAGENET1K_V1 weights (file names and top-1 from torchvision/models/*.py).
    _torch("alexnet_owt", "alexnet-owt-7be5be79.pth", top1=56.522),
    _torch("vgg11", "vgg11-8a719046.pth", top1=69.02),
    _torch("vgg13", "vgg13-19584684.pth", top1=69.928),
    _torch("vgg16", "vgg16-397923af.pth", top1=71.592),
    _torch("vgg19", "vgg19-dcbb9e9d.pth", top1=72.376),
    _torch("vgg11_bn", "vgg11_bn-6002323d.pth", top1=70.37),
    _torch("vgg13_bn", "vgg13_bn-abd245e5.pth", top1=71.586),
    _torch("vgg16_bn", "vgg16_bn-6c64b313.pth", top1=73.36),
    _torch("vgg19_bn", "vgg19_bn-c79401a0.pth", top1=74.218),
    _torch("googlenet_bn", "googlenet-1378be20.pth", preprocessing="tf", top1=69.778,
           notes="torchvision builds this GoogLeNet with transform_input=True, which turns its torch-normalised "
                 "input into (x/255 - 0.5)/0.5 before the first conv; without that step the network sees exactly "
                 "the 'tf' convention, so that is the preprocessing recorded here."),
    _torch("resnet18", "resnet18-f37072fd.pth", top1=69.758),
    _torch("resnet34", "resnet34-b627a593.pth", top1=73.314),
    _torch("resnet50", "resnet50-0676ba61.pth", top1=76.13),
    _torch("resnet101", "resnet101-63fe2227.pth", top1=77.374),
    _torch("resnet152", "resnet152-394f9c45.pth", top1=78.312),
    _torch("resnext50_32x4d", "resnext50_32x4d-7cdf4587.pth", top1=77.618),
    _torch("resnext101_32x8d", "resnext101_32x8d-8ba56ff5.pth", top1=79.312),
    _torch("wide_resnet50_2", "wide_resnet50_2-95faca4d.pth", top1=78.468),
    _torch("wide_resnet101_2", "wide_resnet101_2-32ee1156.pth", top1=78.848),
    _torch("squeezenet1_0", "squeezenet1_0-b66bff10.pth", top1=58.092),
    _torch("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth", top1=58.178),
    _torch("densenet121", "densenet121-a639ec97.pth", top1=74.434),
    _torch("densenet161", "densenet161-8d451a50.pth", top1=77.138),
    _torch("densenet169", "densenet169-b2777c0a.pth", top1=75.6),
    _torch("densenet201", "densenet201-c1103571.pth", top1=76.896),
]

WEIGHTS: dict[str, tuple[WeightsInfo, ...]] = {}
for _info in _ENTRIES:
    WEIGHTS[_info.model] = WEIGHTS.get(_info.model, ()) + (_info,)


def weights_for(model_name: str, source: str | None = None) -> WeightsInfo:
    """The :class:`WeightsInfo` of ``model_name`` (its first entry, or the one from ``source``)."""
    entries = WEIGHTS.get(model_name)
    if not entries:
        raise ValueError(f"No ImageNet weights are published for '{model_name}'. Models with weights: "
                         f"{', '.join(sorted(WEIGHTS))}. Received: model name {model_name!r}")
    if source is None:
        return entries[0]
    for info in entries:
        if info.source == source:
            return info
    raise ValueError(f"'{model_name}' has no weights from source {source!r}; available: "
                     f"{', '.join(i.source for i in entries)}. Received: source={source!r}")

