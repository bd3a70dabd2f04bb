"""kerasarch: the classic CNN architectures of CS231n lecture 9, faithful to their papers, in Keras 3."""

__version__ = "0.1.0"

from kerasarch import layers  # noqa: F401,E402  (registers the serializable custom layers)
from kerasarch.card import (  # noqa: E402
    Checkpoint,
    InputConfig,
    ModelCard,
    card_of,
    update_card,
    with_card,
)
from kerasarch.registry import ModelSpec, build_model, get_spec, list_models, register_model  # noqa: E402

__all__ = [
    "ModelSpec",
    "build_model",
    "get_spec",
    "list_models",
    "register_model",
    "ModelCard",
    "InputConfig",
    "Checkpoint",
    "card_of",
    "with_card",
    "update_card",
    "__version__",
]
