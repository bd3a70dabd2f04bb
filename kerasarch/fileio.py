"""Atomic output: every file kerasarch writes for a user (checkpoints, run-folder logs, trained models, downloaded
weights, feature shards, reports) goes through :func:`atomic_path`, so a kill at any moment leaves either the old
file or the complete new one under the final name, never half of one.

A file is written to a temporary file beside its target (or in ``tmp_dir``, a folder on the same file system),
flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX and Windows). Files written this
way get the permissions ``open()`` would give them (``0666`` less the umask), not the ``0600`` of a temporary file,
so a server running as another user can read an exported or trained model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Iterator

__all__ = ["atomic_path", "atomic_write", "atomic_write_text", "atomic_save_model", "current_umask", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", tmp_dir: str | os.PathLike | None = None) -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success the file written there replaces ``path`` in one rename
    (after an fsync), on error it is removed and ``path`` is untouched.

    Args:
        path: the final file.
        suffix: an extension some writers insist on (``.keras``), kept at the end of the temporary name.
        tmp_dir: where the temporary file goes instead (a folder on the same file system, so a crashed writer's
            leftovers can be found there by name: ``.<name>.<random>.tmp<suffix>``).

    The file ends with mode ``0666`` less the umask, as ``open()`` would make it.
    """
    path = os.fspath(path)
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
def atomic_write(
    path: str | os.PathLike, mode: str = "wb", suffix: str = "", tmp_dir: str | os.PathLike | None = None
) -> Iterator[IO[Any]]:
    """Opens a file that replaces ``path`` atomically when the block ends without error (see :func:`atomic_path`)."""
    with atomic_path(path, suffix, tmp_dir) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_save_model(model: Any, path: str | os.PathLike) -> None:
    """``model.save(path)`` (a ``.keras`` file) through a temporary file and a rename."""
    with atomic_path(path, ".keras") as tmp:
        model.save(tmp)
