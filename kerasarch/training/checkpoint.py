"""Checkpoints that survive a kill at any moment: written to a temporary file beside the target, flushed to disk,
then renamed over it (``os.replace`` is atomic), so the run directory always holds a complete checkpoint.

Files written this way get the permissions ``open()`` would give them (``0666`` less the umask), not the ``0600``
of a temporary file, so a server running as another user can read an exported or trained model.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np

from kerasarch.errors import KerasarchError

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_save_model",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "restore_variables",
    "variable_values",
    "current_umask",
    "CHECKPOINT",
    "CheckpointError",
]

CHECKPOINT = "checkpoint.npz"


class CheckpointError(KerasarchError):
    """A checkpoint file that cannot be read (truncated, corrupt, or not a kerasarch checkpoint)."""


def current_umask() -> int:
    """The process's umask (read from ``/proc`` where possible: setting it to read it back is not thread-safe)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


TMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path, suffix="", tmp_dir=None):
    """Yields a temporary path beside ``path``; on success the file written there replaces ``path`` in one rename
    (after an fsync), on error it is removed and ``path`` is untouched. ``suffix`` keeps an extension some writers
    insist on (``.keras``). ``tmp_dir``: where the temporary file goes instead (a folder on the same file system,
    so a crashed writer's leftovers can be found there by name: ``.<name>.<random>.tmp<suffix>``). The file ends
    with mode ``0666`` less the umask, as ``open()`` would make it."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    where = folder if tmp_dir is None else os.fspath(tmp_dir)
    os.makedirs(where, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f"{TMP_SUFFIX}{suffix}", dir=where)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path, mode="wb", suffix="", tmp_dir=None):
    """Opens a file that replaces ``path`` atomically when the block ends without error (see :func:`atomic_path`)."""
    with atomic_path(path, suffix, tmp_dir) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_text(path, text):
    """Writes ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_save_model(model, path):
    """``model.save(path)`` (a ``.keras`` file) through a temporary file and a rename."""
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp)


def variable_values(variables):
    """NumPy copies of ``variables`` (Keras or TF variables, distributed ones included)."""
    return [np.array(v.numpy() if hasattr(v, "numpy") else v) for v in variables]


def save_checkpoint(path, groups, state):
    """Writes ``{group: [arrays]}`` and the JSON-serialisable ``state`` into one ``.npz`` file, atomically.

    Args:
        path: the ``.npz`` file.
        groups: e.g. ``{"model": [...], "optimizer": [...]}``; each list of NumPy arrays (or variables).
        state: the loop state (epoch, step, history ...).
    """
    arrays = {"__state__": np.array(json.dumps(state))}
    for group, values in groups.items():
        for i, v in enumerate(variable_values(values)):
            arrays[f"{group}/{i:05d}"] = v
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path):
    """Reads a checkpoint written by :func:`save_checkpoint`: ``({group: [arrays]}, state)``.

    Raises:
        CheckpointError: the file is truncated, corrupt or not a kerasarch checkpoint (the message names it).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            state = json.loads(str(z["__state__"]))
            groups = {}
            for key in sorted(k for k in z.files if k != "__state__"):
                group, _ = key.rsplit("/", 1)
                groups.setdefault(group, []).append(z[key])
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, numpy and json raise many types for a damaged file
        raise CheckpointError(
            f"Checkpoint {os.fspath(path)!r} is not readable ({type(e).__name__}: {e}); move it "
            "away to start over (or pass --fresh)."
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {os.fspath(path)!r} holds no loop state; it is not a kerasarch checkpoint.")
    return groups, state


def restore_variables(variables, values, what="model"):
    """Assigns ``values`` to ``variables`` one by one, after checking that count and shapes agree."""
    variables = list(variables)
    if len(variables) != len(values):
        raise CheckpointError(
            f"The checkpoint does not fit the {what}: it holds {len(values)} variables, the {what} "
            f"has {len(variables)}. Was the run directory made by another model or recipe?"
        )
    for v, value in zip(variables, values):
        if tuple(v.shape) != tuple(value.shape):
            name = getattr(v, "path", getattr(v, "name", "?"))
            raise CheckpointError(
                f"The checkpoint does not fit the {what}: variable '{name}' has shape "
                f"{tuple(v.shape)}, the checkpoint {tuple(value.shape)}."
            )
    for v, value in zip(variables, values):
        v.assign(value)
