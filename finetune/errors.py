"""The one exception type the fine-tuning commands raise for bad input."""

from __future__ import annotations

__all__ = ["FinetuneError"]


class FinetuneError(ValueError):
    """Bad input to a fine-tuning command (no images, an unknown tap, weights that do not fit the model, a
    features directory from another model ...). The command line prints its message without a traceback
    and exits with status 2."""
