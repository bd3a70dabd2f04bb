"""Model registry: ``build_model``, ``list_models``, ``get_spec``.

Every architecture registers a :class:`ModelSpec` (what the model is, where it comes from, the figures it
must reproduce) together with its builder. Families register themselves when ``kerasarch.applications`` is
imported; the registry imports that package lazily so that ``import kerasarch`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Mapping

__all__ = ["ModelSpec", "register_model", "build_model", "list_models", "get_spec"]


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
        preprocessing: the input convention the model's weights expect ("caffe", "torch", "tf", "none").
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
    preprocessing: str = "none"
    slow: bool = False
    notes: str = ""

    def build(self, **kwargs):
        """Builds the model with this spec's configuration, overridden by ``kwargs``."""
        kwargs = {**self.config, **kwargs}
        kwargs.setdefault("name", self.name)
        kwargs.setdefault("input_shape", None)
        kwargs.setdefault("classes", self.classes)
        return self.builder(**kwargs)


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register_model(spec: ModelSpec) -> ModelSpec:
    """Adds ``spec`` to the registry; a name can be registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"A model named '{spec.name}' is already registered (family "
                         f"'{_REGISTRY[spec.name].family}').")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded():
    global _LOADED
    if not _LOADED:
        _LOADED = True
        import kerasarch.applications  # noqa: F401  (registers every family)


def list_models(pattern: str | None = None, family: str | None = None) -> list[str]:
    """Returns the sorted registry names, optionally filtered by a glob ``pattern`` and a ``family``."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern.lower())]
    if family:
        names = [n for n in names if _REGISTRY[n].family == family]
    return names


def get_spec(name: str) -> ModelSpec:
    """Returns the :class:`ModelSpec` of ``name``; unknown names raise with the closest matches."""
    _ensure_loaded()
    key = str(name).lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model name '{name}'.{hint} Call kerasarch.list_models() for the "
                         f"{len(_REGISTRY)} registered names.")
    return _REGISTRY[key]


def build_model(model_name: str, /, **kwargs):
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
