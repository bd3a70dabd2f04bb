"""What :func:`kerasarch.training.train` checks before any work, and the lock that keeps one writer per run folder.

* :func:`check_training_inputs` refuses degenerate input before a model is built: a learning rate that is not a
  finite number >= 0 (0 evaluates the objective without moving the weights), fewer than one epoch or a batch of
  fewer than one image, an empty training set, data with a single class (a classifier of one class is 100%
  accurate and has learnt nothing).
* :class:`RunFolderLock` holds an exclusive ``flock`` on ``<run folder>/.lock`` for the life of a training: a
  second ``train`` into the same folder is refused with :class:`~kerasarch.errors.RunLockedError` naming the
  process that holds it. The kernel drops the lock when its holder exits, normally or not, so the lock of a
  crashed run is never stale.
* :func:`guarded_train` wraps ``train`` with both.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import numbers
import os
import socket
import time

from kerasarch.errors import KerasarchError, RunLockedError

__all__ = ["check_training_inputs", "check_recipe", "RunFolderLock", "guarded_train", "LOCK_FILE"]

LOCK_FILE = ".lock"


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_recipe(recipe: dict) -> None:
    """Refuses a resolved recipe whose learning rate, epochs or batch size cannot train."""
    lr, epochs, batch = recipe.get("lr"), recipe.get("epochs"), recipe.get("batch_size")
    if not _is_number(lr) or not math.isfinite(lr) or lr < 0:
        raise KerasarchError(
            f"The learning rate must be a finite number >= 0 (a negative one climbs the loss; 0 "
            f"only evaluates the objective). Received: lr={lr!r}"
        )
    if not isinstance(epochs, numbers.Integral) or isinstance(epochs, bool) or epochs < 1:
        raise KerasarchError(f"`epochs` must be an integer >= 1. Received: epochs={epochs!r}")
    if not isinstance(batch, numbers.Integral) or isinstance(batch, bool) or batch < 1:
        raise KerasarchError(f"`batch_size` must be an integer >= 1. Received: batch_size={batch!r}")


def _example_count(dataset):
    """The number of examples of ``dataset`` when it is known without reading it, else ``None``."""
    for attr in ("file_paths", "num_examples"):
        value = getattr(dataset, attr, None)
        if isinstance(value, (list, tuple)):
            return len(value)
        if isinstance(value, numbers.Integral):
            return int(value)
    cardinality = getattr(dataset, "cardinality", None)
    if callable(cardinality):
        with contextlib.suppress(Exception):
            n = int(cardinality())
            return n if n >= 0 else None
    return None


def check_training_inputs(train_ds, val_ds=None, *, lr=None, epochs=None, batch_size=None, classes=None) -> None:
    """Refuses degenerate training input before any work, saying what was received and what is allowed.

    Args:
        train_ds, val_ds: the datasets given to ``train``.
        lr, epochs, batch_size: the overrides given to ``train`` (``None``: the recipe's, checked later by
            :func:`check_recipe`).
        classes: the class count given to ``train``.
    """
    if lr is not None and (not _is_number(lr) or not math.isfinite(lr) or lr < 0):
        raise KerasarchError(f"`lr` must be a finite number >= 0 (a negative one climbs the loss). Received: lr={lr!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value is not None and (not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1):
            raise KerasarchError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
    if classes is not None and (not isinstance(classes, numbers.Integral) or classes < 2):
        raise KerasarchError(
            f"`classes` must be an integer >= 2: a classifier needs two classes to tell apart. "
            f"Received: classes={classes!r}"
        )
    if train_ds is None:
        raise KerasarchError("The training set is None; pass a tf.data dataset of (image, label) pairs.")
    n = _example_count(train_ds)
    if n == 0:
        raise KerasarchError(
            "The training set is empty (0 examples): nothing to train on. Check the data folder, "
            "the split and the image size."
        )
    if val_ds is not None and _example_count(val_ds) == 0:
        raise KerasarchError(
            "The validation/test set is empty (0 examples); pass None to train without one, or choose another split."
        )
    names = getattr(train_ds, "class_names", None)
    if names is not None and len(names) < 2:
        raise KerasarchError(
            f"The training data has {len(names)} class ({list(names)}); a classifier needs at "
            f"least 2 classes (one sub-folder per class)."
        )


class RunFolderLock:
    """An exclusive lock on a run folder, held until :meth:`release` (or the process's exit)."""

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._fd = None

    def acquire(self):
        import fcntl

        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise KerasarchError(f"The run folder {self.folder!r} exists and is not a folder; choose another --out.")
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 1024).decode("utf8", "replace").strip()
            os.close(fd)
            try:
                who = json.loads(holder)
                detail = f"process {who.get('pid')} on {who.get('host')} since {who.get('started')}"
            except (ValueError, AttributeError):
                detail = "another process"
            raise RunLockedError(
                f"The run folder {self.folder!r} is in use by {detail}: two trainings into one "
                f"folder would overwrite each other's checkpoints. Wait for it to finish or "
                f"choose another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            ).encode(),
        )
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _is_non_chief_worker():
    """Whether TF_CONFIG names this process a multi-worker task other than the chief (it writes no run folder)."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        config = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
        task = config.get("task", {})
        cluster = config.get("cluster", {})
        if task.get("type") == "chief":
            return False
        if task.get("type") == "worker":
            return "chief" in cluster or int(task.get("index", 0)) > 0
        return bool(task)
    return False


def guarded_train(train):
    """Decorates ``train``: :func:`check_training_inputs` first, then the run folder's lock around the call."""
    signature = inspect.signature(train)

    @functools.wraps(train)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        check_training_inputs(
            a.get("train_ds"),
            a.get("val_ds"),
            lr=a.get("lr"),
            epochs=a.get("epochs"),
            batch_size=a.get("batch_size"),
            classes=a.get("classes"),
        )
        out_dir = a.get("out_dir")
        if not out_dir or _is_non_chief_worker():
            return train(*args, **kwargs)
        with RunFolderLock(out_dir):
            return train(*args, **kwargs)

    return wrapper
