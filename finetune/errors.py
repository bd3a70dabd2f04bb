"""The one exception type the fine-tuning commands raise for bad input."""

from __future__ import annotations

from kerasarch.errors import KerasarchError

__all__ = ["FinetuneError"]


class FinetuneError(KerasarchError):
    """Bad input to a fine-tuning command (no images, an unknown tap, weights that do not fit the model, a
    features directory from another model ...). The command line prints its message without a traceback
    and exits with status 2. A :class:`kerasarch.errors.KerasarchError` (so also a ``ValueError``)."""
