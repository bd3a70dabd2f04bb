"""The model card: what a built model is, how its inputs must be prepared, where its weights came from.

Every model :func:`kerasarch.build_model` returns carries a :class:`ModelCard`; training and fine-tuning update it;
it is saved inside the ``.keras`` file and comes back with ``keras.models.load_model(path)`` (after
``import kerasarch``), so every later step — evaluation, feature extraction, fine-tuning, export — reads the card
instead of guessing from ``model.name``::

    import kerasarch

    model = kerasarch.build_model("resnet50", weights="imagenet", name="backbone")
    card = kerasarch.card_of(model)
    card.input.preprocessing, card.input.fit, card.input.resize_size   # 'torch', 'resize_crop', 256
    card.weights["checkpoint"], card.class_names[:2]

The card travels in the model's config (a registered Functional subclass, :class:`CardModel`), so the model stays
an ordinary Functional model: ``get_layer``, layer names and keras.applications weight files work as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Any, Callable, Mapping

import keras

__all__ = [
    "PREPROCESSING_MODES",
    "FIT_MODES",
    "CAFFE_MEAN_BGR",
    "TORCH_MEAN",
    "TORCH_STD",
    "LECUN_RANGE",
    "InputConfig",
    "Checkpoint",
    "ModelCard",
    "CardModel",
    "preprocessing_constants",
    "preprocessing_description",
    "card_of",
    "has_card",
    "with_card",
    "update_card",
    "tap_info",
    "read_card",
]

PREPROCESSING_MODES = ("caffe", "torch", "tf", "unit", "lecun", "none")
FIT_MODES = ("resize", "pad", "resize_crop", "auto")

# ImageNet channel statistics. Caffe-converted weights (keras.applications' "caffe" mode): BGR means on [0, 255].
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# torchvision's transforms.Normalize for every ImageNet checkpoint (RGB, on [0, 1]).
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
# LeCun et al. 1998 §II-A: background (white) -0.1, foreground (black) 1.175, so that the mean input is about 0 and
# the variance about 1. Pixel 0 (background in MNIST's inverted convention) maps to -0.1, 255 to 1.175.
LECUN_RANGE = (-0.1, 1.175)

_DESCRIPTIONS = {
    "caffe": "RGB->BGR, minus the ImageNet BGR mean (103.939, 116.779, 123.68); no scaling",
    "torch": "x/255, minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225)",
    "tf": "x/127.5 - 1 (range [-1, 1])",
    "unit": "x/255 (range [0, 1])",
    "lecun": "x·1.275/255 - 0.1 (background -0.1, ink 1.175; LeCun et al. 1998 §II-A)",
    "none": "no preprocessing: pixel values as given",
}


def preprocessing_constants(mode: str, channels: int = 3) -> tuple[float, tuple, tuple, bool]:
    """``(scale, mean, std, bgr)`` of preprocessing ``mode``: a ``[0, 255]`` pixel ``x`` becomes
    ``(x · scale − mean) / std`` per channel, after reversing RGB to BGR when ``bgr``. Images of one channel (or
    any count other than 3) use the mean of the three channel statistics.

    Args:
        mode: one of :data:`PREPROCESSING_MODES`.
        channels: the model's input channels.
    """
    _check_choice("preprocessing", mode, PREPROCESSING_MODES)
    if mode == "caffe":
        scale, mean, std, bgr = 1.0, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), True
    elif mode == "torch":
        scale, mean, std, bgr = 1.0 / 255.0, TORCH_MEAN, TORCH_STD, False
    elif mode == "tf":
        scale, mean, std, bgr = 1.0 / 127.5, (1.0,) * 3, (1.0,) * 3, False
    elif mode == "unit":
        scale, mean, std, bgr = 1.0 / 255.0, (0.0,) * 3, (1.0,) * 3, False
    elif mode == "lecun":
        scale = (LECUN_RANGE[1] - LECUN_RANGE[0]) / 255.0
        scale, mean, std, bgr = scale, (-LECUN_RANGE[0],) * 3, (1.0,) * 3, False
    else:
        scale, mean, std, bgr = 1.0, (0.0,) * 3, (1.0,) * 3, False
    if channels != 3:
        mean, std, bgr = (sum(mean) / 3,) * channels, (sum(std) / 3,) * channels, False
    return scale, tuple(mean), tuple(std), bgr


def preprocessing_description(mode: str) -> str:
    """One line saying what preprocessing ``mode`` does to ``[0, 255]`` pixels."""
    _check_choice("preprocessing", mode, PREPROCESSING_MODES)
    return _DESCRIPTIONS[mode]


def _check_choice(what, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{what}` must be one of {', '.join(repr(a) for a in allowed)}. Received: {what}={value!r}")


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """How an image of any size becomes this model's input.

    Attributes:
        preprocessing: the pixel convention, one of :data:`PREPROCESSING_MODES` (see :func:`preprocessing_constants`).
        size: ``(height, width)`` of the model's input; ``None`` (or ``None`` sides) when the model takes any size.
        channels: the model's input channels (1: grey, 3: RGB).
        fit: how an image is brought to ``size``: ``"resize"`` (both sides), ``"pad"`` (zero-pad centred, larger
            images centre-cropped), ``"resize_crop"`` (shorter side to ``resize_size``, then the centre ``size``
            crop: torchvision's evaluation transform) or ``"auto"`` (pad when the image is at most 25% smaller in
            both sides, as MNIST's 28×28 in LeNet's 32×32 field; resize otherwise).
        resize_size: the shorter side before the centre crop (``"resize_crop"`` only).
        interpolation: resize interpolation (``"bilinear"``, ``"bicubic"``, ``"nearest"`` ...).
        antialias: antialias when downsizing (torchvision's PIL pipeline does).
    """

    preprocessing: str = "none"
    size: tuple | None = None
    channels: int = 3
    fit: str = "auto"
    resize_size: int | None = None
    interpolation: str = "bilinear"
    antialias: bool = False

    def __post_init__(self):
        _check_choice("preprocessing", self.preprocessing, PREPROCESSING_MODES)
        _check_choice("fit", self.fit, FIT_MODES)
        if self.size is not None:
            size = tuple(None if s is None else int(s) for s in self.size)
            if len(size) != 2:
                raise ValueError(f"`size` is (height, width). Received: size={self.size!r}")
            object.__setattr__(self, "size", size)
        if not isinstance(self.channels, int) or self.channels < 1:
            raise ValueError(f"`channels` must be a positive integer. Received: channels={self.channels!r}")
        if self.fit == "resize_crop" and not self.resize_size:
            raise ValueError(
                f"fit='resize_crop' needs `resize_size` (the shorter side before the crop). "
                f"Received: resize_size={self.resize_size!r}"
            )

    @property
    def constants(self) -> tuple[float, tuple, tuple, bool]:
        """``(scale, mean, std, bgr)`` of :attr:`preprocessing` for :attr:`channels` channels."""
        return preprocessing_constants(self.preprocessing, self.channels)

    @property
    def mean(self) -> tuple:
        """Per-channel mean subtracted after scaling (model channel order)."""
        return self.constants[1]

    @property
    def std(self) -> tuple:
        """Per-channel divisor after the mean."""
        return self.constants[2]

    @property
    def description(self) -> str:
        """One line saying what :attr:`preprocessing` does."""
        return _DESCRIPTIONS[self.preprocessing]

    def replace(self, **changes: Any) -> InputConfig:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def for_size(self, size: tuple[int | None, int | None] | None, channels: int | None = None) -> InputConfig:
        """This convention on a model input of ``size`` (``resize_size`` scales with the input, 256/224)."""
        size = None if size is None else tuple(size)
        resize_size = self.resize_size
        if resize_size and size and self.size and size[0] and self.size[0] and size[0] != self.size[0]:
            resize_size = int(round(resize_size * size[0] / self.size[0]))
        return dataclasses.replace(self, size=size, channels=channels or self.channels, resize_size=resize_size)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size) if self.size is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "size" and v is not None else v) for k, v in d.items() if k in fields})


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One published weights file of a registered variant, with the evaluation transform it was published with.

    Attributes:
        model: the registry name it loads into.
        id: the publisher's name for it (``"IMAGENET1K_V1"``, ``"keras.applications"``).
        source: ``"keras"`` (keras.applications) or ``"torchvision"``; ``weights="imagenet:<source>"`` picks it.
        origin: download URL.
        file_name: name in the cache folder.
        format: ``"keras_h5"``, ``"torch_pth"`` or ``"safetensors"``.
        input: its evaluation transform and pixel convention.
        sha256: full SHA-256, or torchvision's 8-digit file-name prefix; ``None`` where unknown offline.
        md5: MD5 digest where that is what the publisher gives (keras.applications).
        class_names: label set of its classifier (``"imagenet1k"``: the 1,000 ILSVRC-2012 classes, sorted synsets).
        top1: published ImageNet top-1 (%).
        notop: the same weights without the classifier, where published separately.
        torch_mapping: the function mapping its torch ``state_dict`` keys to layer names (torch formats).
        notes: anything a user must know.
    """

    model: str
    id: str
    source: str
    origin: str
    file_name: str
    format: str
    input: InputConfig
    sha256: str | None = None
    md5: str | None = None
    class_names: str = "imagenet1k"
    top1: float | None = None
    notop: Checkpoint | None = None
    torch_mapping: Callable | None = None
    notes: str = ""

    @property
    def preprocessing(self) -> str:
        """The pixel convention of :attr:`input`."""
        return self.input.preprocessing

    @property
    def tag(self) -> str:
        """The ``weights=`` value that selects this checkpoint (``"imagenet:torchvision"``)."""
        return f"imagenet:{self.source}"

    @property
    def file_hash(self) -> str | None:
        """The hash :func:`kerasarch.weights.get_file` checks (``None``: recorded on first download)."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"md5:{self.md5}" if self.md5 else None


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a model is and how to feed it.

    Attributes:
        variant: registry name (``"resnet50"``), ``None`` for a model outside the registry.
        family: family key (``"resnet"``).
        paper: citation of the paper the variant follows.
        input: the :class:`InputConfig` the weights expect.
        class_names: the classifier's labels, where known.
        weights: provenance of the weights: ``{"source", "checkpoint", "file", "sha256"}``; ``None`` for a freshly
            initialised model.
        taps: ``{paper name: {"layer", "channels", "stride"}}`` (stride: input pixels per feature-map pixel; ``None``
            for vectors).
        recipe: the training recipe, for a trained or fine-tuned model.
        data: what it was trained on (``{"name", "classes", "examples", ...}``).
    """

    variant: str | None = None
    family: str | None = None
    paper: str = ""
    input: InputConfig = dataclasses.field(default_factory=InputConfig)
    class_names: tuple | None = None
    weights: Mapping[str, Any] | None = None
    taps: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    recipe: Mapping[str, Any] | None = None
    data: Mapping[str, Any] | None = None

    def __post_init__(self):
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if isinstance(self.input, Mapping):
            object.__setattr__(self, "input", InputConfig.from_dict(self.input))

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` (``input`` may be an :class:`InputConfig` or a dict of its fields to change)."""
        if isinstance(changes.get("input"), Mapping):
            changes["input"] = self.input.replace(**changes["input"])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (:meth:`from_dict` reads it back)."""
        return {
            "variant": self.variant,
            "family": self.family,
            "paper": self.paper,
            "input": self.input.to_dict(),
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "weights": _jsonable(self.weights),
            "taps": _jsonable(self.taps),
            "recipe": _jsonable(self.recipe),
            "data": _jsonable(self.data),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelCard:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"Unknown model card fields {unknown}; a card has {sorted(fields)}.")
        d = dict(d)
        if d.get("input") is not None:
            d["input"] = InputConfig.from_dict(d["input"])
        return cls(**d)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """A few human-readable lines (``kerasarch summary FILE.keras`` prints them)."""
        i = self.input
        lines = [
            f"variant: {self.variant or '(not a registered variant)'}" + (f" ({self.family})" if self.family else "")
        ]
        if self.paper:
            lines.append(f"paper: {self.paper}")
        size = "x".join("any" if s is None else str(s) for s in i.size) if i.size else "any"
        fit = i.fit + (f" (shorter side {i.resize_size}, centre crop)" if i.fit == "resize_crop" else "")
        lines.append(
            f"input: {size}x{i.channels}, fit {fit}, {i.interpolation}" + (", antialias" if i.antialias else "")
        )
        lines.append(f"preprocessing: {i.preprocessing} ({i.description})")
        if self.class_names is not None:
            shown = ", ".join(self.class_names[:5]) + (", ..." if len(self.class_names) > 5 else "")
            lines.append(f"classes: {len(self.class_names)} ({shown})")
        if self.weights:
            w = self.weights
            lines.append(
                "weights: " + ", ".join(f"{k} {w[k]}" for k in ("source", "checkpoint", "file", "sha256") if w.get(k))
            )
        if self.taps:
            lines.append(
                "taps: "
                + ", ".join(
                    f"{t} ({v['layer']}"
                    + (f", {v['channels']} ch" if v.get("channels") else "")
                    + (f", stride {v['stride']}" if v.get("stride") else "")
                    + ")"
                    for t, v in self.taps.items()
                )
            )
        if self.recipe:
            r = self.recipe
            lines.append(
                f"recipe: {r.get('name', '?')}, {r.get('epochs', '?')} epochs, "
                f"batch {r.get('batch_size', '?')}" + (f", augment {r['augment']}" if r.get("augment") else "")
            )
        if self.data:
            lines.append("data: " + ", ".join(f"{k} {v}" for k, v in self.data.items() if k != "class_names"))
        return "\n".join(lines)


def _jsonable(value):
    if value is None:
        return None
    return json.loads(json.dumps(value, default=str))


@keras.saving.register_keras_serializable(package="kerasarch")
class CardModel(keras.Model):
    """A Functional model that carries a :class:`ModelCard` in its config.

    Built like any Functional model, ``CardModel(inputs, outputs, name=..., card=...)``; ``get_config`` adds the
    card, ``from_config`` (hence ``keras.models.load_model``) restores it. Use :func:`card_of` and
    :func:`with_card` rather than the attribute.
    """

    def __init__(self, *args: Any, card: ModelCard | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(card, Mapping):
            card = ModelCard.from_dict(card)
        self._kerasarch_card = card

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        card = getattr(self, "_kerasarch_card", None)
        config["card"] = card.to_dict() if card is not None else None
        return config


def has_card(model: Any) -> bool:
    """Whether ``model`` carries a model card."""
    return getattr(model, "_kerasarch_card", None) is not None


def card_of(model: Any) -> ModelCard:
    """The :class:`ModelCard` of a model built by kerasarch (or loaded from a ``.keras`` file it saved).

    Raises:
        ValueError: the model has no card, with the ways to get one.
    """
    card = getattr(model, "_kerasarch_card", None)
    if card is None:
        what = f"model '{getattr(model, 'name', model)}' ({type(model).__name__})"
        raise ValueError(
            f"The {what} has no kerasarch model card. Build it with kerasarch.build_model(...), load a "
            f".keras file saved from such a model (after `import kerasarch`), or attach one with "
            f"kerasarch.with_card(model, kerasarch.ModelCard(input=kerasarch.InputConfig(...)))."
        )
    return card


def with_card(model: keras.Model, card: ModelCard) -> CardModel:
    """Returns ``model`` carrying ``card``: the same model when it is a :class:`CardModel`, else a
    :class:`CardModel` on the same layers and weights (a Functional ``keras.Model`` is required)."""
    if not isinstance(card, ModelCard):
        raise TypeError(f"`card` must be a kerasarch.ModelCard. Received: {type(card).__name__}")
    if isinstance(model, CardModel):
        model._kerasarch_card = card
        return model
    if not isinstance(model, keras.Model) or getattr(model, "inputs", None) is None or not hasattr(model, "outputs"):
        raise ValueError(f"A model card attaches to a Functional keras.Model. Received: {type(model).__name__}")
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    outputs = model.output if not isinstance(model.output, list) or len(model.outputs) != 1 else model.outputs[0]
    return CardModel(inputs, outputs, name=model.name, card=card)


def update_card(model: keras.Model, **changes: Any) -> CardModel:
    """Replaces fields of ``model``'s card (see :meth:`ModelCard.replace`) and returns the model (a
    :class:`CardModel`); a model without a card gets a new one made of ``changes``."""
    card = getattr(model, "_kerasarch_card", None) or ModelCard()
    return with_card(model, card.replace(**changes))


def _own_stride(layer):
    strides = getattr(layer, "strides", None)
    if strides is None and hasattr(layer, "pool_size") and not isinstance(layer, keras.layers.UpSampling2D):
        strides = layer.pool_size
    if strides is None:
        return (
            None
            if isinstance(
                layer,
                (
                    keras.layers.UpSampling2D,
                    getattr(keras.layers, "AdaptiveAveragePooling2D", keras.layers.UpSampling2D),
                ),
            )
            else 1
        )
    return int(strides[0] if isinstance(strides, (tuple, list)) else strides)


def _strides(model):
    """``{layer name: input pixels per output pixel}`` along the graph (``None`` past a layer that resamples by
    a factor it does not state)."""
    from kerasarch import keras_compat

    out = {}
    for layer in model.layers:
        own = _own_stride(layer)
        nodes = keras_compat.inbound_nodes(layer)
        inputs = [keras_compat.producer(t) for t in nodes[0].input_tensors] if nodes else []
        before = [out.get(p.name) for p in inputs if p is not None] or [1]
        out[layer.name] = None if own is None or None in before else own * max(before)
    return out


def tap_info(model: Any, taps: Mapping[str, str]) -> dict:
    """``{paper name: {"layer", "channels", "stride"}}`` for the ``taps`` (paper name → layer name) that ``model``
    has. Stride: input pixels per feature-map pixel, the product of the strides on the way (``None`` for vectors)."""
    names = {layer.name for layer in model.layers}
    strides = _strides(model)
    out = {}
    for tap, layer_name in taps.items():
        if layer_name not in names:
            continue
        out_shape = model.get_layer(layer_name).output.shape
        channels = int(out_shape[-1]) if out_shape[-1] is not None else None
        stride = strides.get(layer_name) if len(out_shape) == 4 else None
        out[tap] = {"layer": layer_name, "channels": channels, "stride": stride}
    return out


def read_card(path: str | os.PathLike) -> ModelCard | None:
    """The card stored in a ``.keras`` file, read from its config without loading the model; ``None`` when the
    file was saved from a model without one."""
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            config = json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as e:
        raise ValueError(f"{path!r} is not a readable .keras file: {e}") from e
    card = (config.get("config") or {}).get("card")
    return ModelCard.from_dict(card) if card else None
