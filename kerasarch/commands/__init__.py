"""Sub-commands of the ``kerasarch`` command line, one module each (see ``kerasarch.cli``), and the argument
parsing they share with the ``finetune`` commands."""

from __future__ import annotations

from kerasarch.errors import KerasarchError

__all__ = ["parse_input_shape"]


def parse_input_shape(text: str | tuple | list | None, flag: str = "--input-shape") -> tuple[int, int, int] | None:
    """An ``H,W,C`` argument as a shape: ``"224,224,3"``, ``"224x224x3"`` or ``"224×224×3"`` -> ``(224, 224, 3)``;
    a tuple or list is checked the same way; ``None`` stays ``None``.

    Raises:
        KerasarchError: anything but three integers >= 1, naming ``flag`` and what was received.
    """
    if text is None:
        return None
    # (No ``list`` here: in this package the name is the ``kerasarch list`` sub-command's module.)
    try:
        if isinstance(text, str):
            shape = tuple(int(v) for v in text.replace("×", ",").replace("x", ",").split(","))
        else:
            shape = tuple(int(v) for v in text)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        shown = text if isinstance(text, str) else repr(text)
        raise KerasarchError(
            f"{flag} must look like 224,224,3 (height, width, channels: three integers >= 1). Received: {flag} {shown}"
        )
    return shape
