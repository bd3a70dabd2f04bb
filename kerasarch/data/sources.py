"""The one grammar of a data-source argument, shared by ``kerasarch train --data`` and the ``finetune`` commands.

A source is a built-in offline data set (``mnist5k``, ``digits``), a TFDS data set written ``tfds:NAME``, or the
path of an image folder (one sub-folder per class).
"""

from __future__ import annotations

import dataclasses
import os

from kerasarch.data.builtin import BUILTIN
from kerasarch.errors import KerasarchError

__all__ = ["DataSource", "parse_data_source", "SOURCE_FORMS"]

SOURCE_FORMS = f"an image folder (one sub-folder per class), {', '.join(BUILTIN)} or tfds:NAME"


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A parsed data-source argument: ``kind`` is ``"builtin"``, ``"tfds"`` or ``"folder"``; ``name`` the built-in
    or TFDS data set's name, or the folder's path."""

    kind: str
    name: str


def parse_data_source(spec: str | os.PathLike) -> DataSource:
    """Parses a data-source argument (see the module docstring).

    Raises:
        KerasarchError: ``tfds:`` without a name, or a path that is not a folder.
    """
    spec = os.fspath(spec)
    if spec in BUILTIN:
        return DataSource("builtin", spec)
    if spec.startswith("tfds:"):
        if not spec[5:]:
            raise KerasarchError(f"A TFDS source is written tfds:NAME (e.g. tfds:cifar10). Received: {spec!r}")
        return DataSource("tfds", spec[5:])
    if os.path.isdir(spec):
        return DataSource("folder", spec)
    why = "a file, not a folder" if os.path.exists(spec) else "no such folder"
    raise KerasarchError(f"Data must be {SOURCE_FORMS}. Received: {spec!r} ({why})")
