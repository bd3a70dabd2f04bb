"""Model registry: ``build_model``, ``list_models``, ``get_spec``.

Every architecture declares its variants once, beside its builder, as a module-level tuple ``VARIANTS`` of
:class:`ModelSpec` (what the model is, the figures it must reproduce, its taps, its default recipe and its published
checkpoints) passed to :func:`register_models`. Families register themselves when ``kerasarch.applications`` is
imported; the registry imports that package lazily so that ``import kerasarch`` stays cheap.

:func:`build_model` attaches the variant's :class:`~kerasarch.card.ModelCard` to the model it returns, and loads
``weights`` through that card, so nothing later needs the model's name.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Iterable, Mapping

import keras

from kerasarch.card import Checkpoint, InputConfig, ModelCard, tap_info, with_card
from kerasarch.errors import KerasarchError

__all__ = ["ModelSpec", "register_model", "register_models", "build_model", "list_models", "get_spec"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a registered model is.

    Attributes:
        name: registry key, e.g. ``"vgg16"``.
        family: family key, e.g. ``"vgg"``; one file in ``kerasarch/applications`` per family.
        builder: the family's builder, called as ``builder(**{**config, **user_kwargs})``.
        config: the family options that make this variant (``depth=16`` ...).
        paper: citation of the paper the variant follows, with arXiv id where there is one.
        input_shape: default input shape ``(H, W, C)``.
        min_input_size: the smallest spatial size (H = W) the feature extractor accepts.
        classes: default number of classes.
        params: reference count of *trainable* parameters with the default top (the torchvision convention),
            exact, or ``None`` where only a rounded paper figure exists.
        params_approx: ``(value, unit, decimals)`` of a rounded paper figure, e.g. ``(0.27, "M", 2)``.
        params_source: where the reference figure comes from.
        total_params: reference ``count_params()`` including BatchNorm statistics (keras.applications),
            where one is published.
        gmacs: reference multiply-adds (G) at the default input size, where published.
        top1: ImageNet (or the paper's dataset) top-1 accuracy in %, where published, for charts.
        taps: paper feature-tap name -> layer name in the built model.
        preprocessing: the pixel convention the card of a freshly built model applies (see
            :data:`kerasarch.card.PREPROCESSING_MODES`): its default checkpoint's when it has ``checkpoints`` (left
            ``None``, it is taken from there), else the one its default recipe trains with.
        fit: how images are fitted to the input (:data:`kerasarch.card.FIT_MODES`); from the default checkpoint
            when there is one.
        resize_size: the shorter side before the centre crop when ``fit="resize_crop"``.
        recipe: the name of its default training recipe (:data:`kerasarch.training.RECIPES`).
        checkpoints: its published weights, the default (``weights="imagenet"``) first.
        slow: heavy to build or save; excluded from the default test run's round trip.
        notes: free text (deviations from the paper, conventions).
    """

    name: str
    family: str
    builder: Callable[..., Any]
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    paper: str = ""
    input_shape: tuple = (224, 224, 3)
    min_input_size: int = 32
    classes: int = 1000
    params: int | None = None
    params_approx: tuple | None = None
    params_source: str = ""
    total_params: int | None = None
    gmacs: float | None = None
    top1: float | None = None
    taps: Mapping[str, str] = dataclasses.field(default_factory=dict)
    preprocessing: str | None = None
    fit: str | None = None
    resize_size: int | None = None
    recipe: str = "generic"
    checkpoints: tuple[Checkpoint, ...] = ()
    slow: bool = False
    notes: str = ""

    def __post_init__(self):
        default = self.checkpoints[0].input if self.checkpoints else None
        if self.preprocessing is None:
            if default is None:
                raise ValueError(
                    f"ModelSpec '{self.name}': a variant without checkpoints declares the "
                    f"`preprocessing` its default recipe trains with."
                )
            object.__setattr__(self, "preprocessing", default.preprocessing)
        if self.fit is None:
            object.__setattr__(self, "fit", default.fit if default is not None else "auto")
            if default is not None and self.resize_size is None:
                object.__setattr__(self, "resize_size", default.resize_size)
        for checkpoint in self.checkpoints:
            if checkpoint.model != self.name:
                raise ValueError(f"ModelSpec '{self.name}' lists a checkpoint of '{checkpoint.model}'.")

    @property
    def input_config(self) -> InputConfig:
        """The :class:`~kerasarch.card.InputConfig` of a freshly built model at the default input size."""
        if self.checkpoints:
            return self.checkpoints[0].input.for_size(self.input_shape[:2], self.input_shape[-1])
        return InputConfig(
            preprocessing=self.preprocessing,
            size=tuple(self.input_shape[:2]),
            channels=self.input_shape[-1],
            fit=self.fit,
            resize_size=self.resize_size,
        )

    def card(self, model: keras.Model | None = None, checkpoint: Checkpoint | None = None) -> ModelCard:
        """The card of this variant: built as ``model`` (its input size and taps), with ``checkpoint``'s input
        convention when given."""
        config = checkpoint.input if checkpoint is not None else self.input_config
        taps = {t: {"layer": layer, "channels": None, "stride": None} for t, layer in self.taps.items()}
        if model is not None:
            shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
            config = config.for_size(shape[1:3], shape[-1])
            taps = tap_info(model, self.taps)
        return ModelCard(variant=self.name, family=self.family, paper=self.paper, input=config, taps=taps)

    def build(self, **kwargs: Any) -> keras.Model:
        """Builds the model with this spec's configuration, overridden by ``kwargs``, attaches its card and loads
        ``weights`` (see :func:`kerasarch.weights.load_weights`)."""
        weights = kwargs.pop("weights", None)
        kwargs = {**self.config, **kwargs}
        kwargs.setdefault("name", self.name)
        kwargs.setdefault("input_shape", None)
        kwargs.setdefault("classes", self.classes)
        from kerasarch.builder import as_python_int, as_python_shape  # np.int64(10) is an integer too

        kwargs["classes"] = as_python_int(kwargs["classes"])
        kwargs["input_shape"] = as_python_shape(kwargs["input_shape"])
        model = self.builder(**kwargs)
        model = with_card(model, self.card(model))
        if weights is not None:
            from kerasarch.weights.loading import load_weights

            model = load_weights(model, weights)
        return model


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register_model(spec: ModelSpec) -> ModelSpec:
    """Adds ``spec`` to the registry; a name can be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"A model named '{spec.name}' is already registered (family '{_REGISTRY[spec.name].family}').")
    _REGISTRY[spec.name] = spec
    return spec


def register_models(specs: Iterable[ModelSpec]) -> tuple[ModelSpec, ...]:
    """Registers every :class:`ModelSpec` of a family's ``VARIANTS`` tuple."""
    return tuple(register_model(spec) for spec in specs)


def _ensure_loaded():
    global _LOADED
    if not _LOADED:
        _LOADED = True
        import kerasarch.applications  # noqa: F401  (registers every family)


def list_models(pattern: str | None = None, family: str | None = None, pretrained: bool = False) -> list[str]:
    """Returns the sorted registry names, optionally filtered by a glob ``pattern``, a ``family`` and, with
    ``pretrained=True``, to the variants with published checkpoints (``weights="imagenet"`` works for them)."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]
    if family:
        names = [n for n in names if _REGISTRY[n].family == family]
    if pretrained:
        names = [n for n in names if _REGISTRY[n].checkpoints]
    return names


def get_spec(name: str) -> ModelSpec:
    """Returns the :class:`ModelSpec` of ``name``.

    Raises:
        KerasarchError: (a ``ValueError``) for an unknown name, naming the name received and the closest
            registered names.
    """
    _ensure_loaded()
    key = str(name).lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KerasarchError(
            f"Unknown model name '{name}'.{hint} Call kerasarch.list_models() for the "
            f"{len(_REGISTRY)} registered names."
        )
    return _REGISTRY[key]


def build_model(model_name: str, /, **kwargs: Any) -> keras.Model:
    """Builds the registered model ``model_name``.

    Args:
        model_name: a registry name (see :func:`list_models`); ``name=`` in ``kwargs`` names the model.
        **kwargs: the keras.applications arguments (``include_top``, ``weights``, ``input_tensor``,
            ``input_shape``, ``pooling``, ``classes``, ``classifier_activation``, ``name``) and the family's
            own options.

    Returns:
        A Functional ``keras.Model``.
    """
    return get_spec(model_name).build(**kwargs)
