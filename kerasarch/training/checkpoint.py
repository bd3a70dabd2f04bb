"""Training checkpoints: the model's and the optimizer's variables, keyed by name, and the loop state, in one
``.npz`` file replaced atomically (:mod:`kerasarch.fileio`), so the run folder always holds a complete checkpoint.

Variables are keyed, not listed: a model variable by its layer and its name in that layer (``conv1/kernel``,
``bn1/moving_mean``, ``fc6_dropout/seed_generator_state``), an optimizer variable by its path under the optimizer
(``sgd/conv1_kernel_momentum``, the optimizer's name without the ``_1`` Keras appends to a second one in a
process). Restoring matches those keys and refuses, naming them, any variable missing from the checkpoint, any
the model does not have and any whose shape differs: a Keras release that orders ``model.variables`` differently,
or a model whose layers were renamed, fails loudly instead of receiving the wrong tensors. Checkpoints written
before keys were recorded (``model/00000`` ... only) are still read, by position, with a warning.

The atomic writers (``atomic_path``, ``atomic_write``, ``atomic_write_text``, ``atomic_save_model``) live in
:mod:`kerasarch.fileio` and are re-exported here for the run folder's other files.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from kerasarch.errors import KerasarchError
from kerasarch.fileio import atomic_path, atomic_save_model, atomic_write, atomic_write_text, current_umask

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_save_model",
    "atomic_write_text",
    "current_umask",
    "model_variables",
    "optimizer_variables",
    "snapshot",
    "save_checkpoint",
    "load_checkpoint",
    "restore_variables",
    "variable_values",
    "CHECKPOINT",
    "CheckpointError",
]

CHECKPOINT = "checkpoint.npz"
_STATE = "__state__"
_KEYS = "__keys__"  # {group: [key of array 0, key of array 1, ...]}; absent in checkpoints written before keys


class CheckpointError(KerasarchError):
    """A checkpoint that cannot be read (truncated, corrupt, not a kerasarch checkpoint) or that does not fit the
    model or optimizer it is restored into."""


def _add(keyed, key, variable):
    base, n = key, 1
    while key in keyed:  # two variables of one layer with the same name (e.g. two seed generators)
        key, n = f"{base}#{n}", n + 1
    keyed[key] = variable


def _path(variable):
    return getattr(variable, "path", None) or getattr(variable, "name", "?")


def model_variables(model: Any) -> dict[str, Any]:
    """``{key: variable}`` for every variable of ``model`` (in ``model.variables`` order), keyed by the layer that
    owns it and its name in that layer: ``"conv1/kernel"``, ``"drop/seed_generator_state"``; a nested model's
    variables under its name (``"backbone/conv1/kernel"``). Keras names a layer's seed generators from a
    process-wide counter (``seed_generator_3``), so they are keyed by their layer instead, and the key of a model
    does not depend on what else the process built."""
    keyed: dict[str, Any] = {}
    seen: set[int] = set()

    def walk(container, prefix):
        for layer in container.layers:
            if hasattr(layer, "layers") and layer.layers:  # a nested model
                walk(layer, f"{prefix}{layer.name}/")
                continue
            own = f"{layer.name}/"
            for v in layer.variables:
                if id(v) in seen:
                    continue
                seen.add(id(v))
                path = _path(v)
                _add(keyed, prefix + (path if path.startswith(own) else own + path.rsplit("/", 1)[-1]), v)

    walk(model, "")
    for v in model.variables:  # the model's own variables, outside any layer
        if id(v) not in seen:
            seen.add(id(v))
            _add(keyed, _path(v), v)
    order = {id(v): i for i, v in enumerate(model.variables)}
    return dict(sorted(keyed.items(), key=lambda kv: order.get(id(kv[1]), len(order))))


def optimizer_variables(optimizer: Any) -> dict[str, Any]:
    """``{key: variable}`` for every variable of ``optimizer``: its path with the optimizer's name stripped of the
    counter Keras appends to the second and later optimizers of a class in a process (``sgd_1/iteration`` ->
    ``sgd/iteration``; a ``LossScaleOptimizer``'s own variables stay apart from its inner optimizer's). Slot
    variables carry the path of the model variable they belong to (``sgd/conv1_kernel_momentum``)."""
    keyed: dict[str, Any] = {}
    for v in optimizer.variables:
        head, sep, rest = _path(v).partition("/")
        _add(keyed, re.sub(r"_\d+$", "", head) + sep + rest, v)
    return keyed


def variable_values(variables: Sequence[Any]) -> list[np.ndarray]:
    """NumPy copies of ``variables`` (Keras or TF variables, distributed ones included)."""
    return [np.array(v.numpy() if hasattr(v, "numpy") else v) for v in variables]


def snapshot(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """NumPy copies of keyed variables (:func:`model_variables`, :func:`optimizer_variables`), by the same keys."""
    return dict(zip(variables, variable_values(list(variables.values()))))


def save_checkpoint(path: str | os.PathLike, groups: Mapping[str, Mapping[str, Any]], state: dict) -> None:
    """Writes keyed arrays and the JSON-serialisable ``state`` into one ``.npz`` file, atomically.

    Args:
        path: the ``.npz`` file.
        groups: e.g. ``{"model": {key: array or variable}, "optimizer": {...}}`` (:func:`model_variables`,
            :func:`optimizer_variables` or their :func:`snapshot`).
        state: the loop state (epoch, step, history ...).
    """
    arrays = {_STATE: np.array(json.dumps(state))}
    keys = {}
    for group, keyed in groups.items():
        keys[group] = list(keyed)
        for i, v in enumerate(variable_values(list(keyed.values()))):
            arrays[f"{group}/{i:05d}"] = v
    arrays[_KEYS] = np.array(json.dumps(keys))
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray] | list[np.ndarray]], dict]:
    """Reads a checkpoint written by :func:`save_checkpoint`: ``({group: {key: array}}, state)``. A checkpoint
    written before keys were recorded gives ``{group: [arrays]}`` in saved order instead.

    Raises:
        CheckpointError: the file is truncated, corrupt or not a kerasarch checkpoint (the message names it).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            state = json.loads(str(z[_STATE]))
            keys = json.loads(str(z[_KEYS])) if _KEYS in z.files else None
            lists: dict[str, list] = {}
            for name in sorted(k for k in z.files if k not in (_STATE, _KEYS)):
                group, _ = name.rsplit("/", 1)
                lists.setdefault(group, []).append(z[name])
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, numpy and json raise many types for a damaged file
        raise CheckpointError(
            f"Checkpoint {os.fspath(path)!r} is not readable ({type(e).__name__}: {e}); move it "
            "away to start over (or pass --fresh)."
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"Checkpoint {os.fspath(path)!r} holds no loop state; it is not a kerasarch checkpoint.")
    if keys is None:
        return lists, state
    groups: dict[str, Any] = {}
    for group in set(keys) | set(lists):
        names, values = keys.get(group, []), lists.get(group, [])
        if len(names) != len(values):
            raise CheckpointError(
                f"Checkpoint {os.fspath(path)!r} is damaged: group {group!r} lists {len(names)} keys for "
                f"{len(values)} arrays; move it away to start over (or pass --fresh)."
            )
        groups[group] = dict(zip(names, values))
    return groups, state


def _listed(names, limit=6):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return f"{shown}, … ({len(names)} in all)" if len(names) > limit else shown


def restore_variables(
    variables: Mapping[str, Any], values: Mapping[str, np.ndarray] | Sequence[np.ndarray], what: str = "model"
) -> None:
    """Assigns saved ``values`` to keyed ``variables`` (:func:`model_variables`, :func:`optimizer_variables`), key
    by key, after checking that both hold the same keys with the same shapes; nothing is assigned otherwise.

    ``values`` may also be a list (a checkpoint written before keys were recorded): it is then assigned by
    position, after checking the count and the shapes, with a warning.

    Raises:
        CheckpointError: keys missing from the checkpoint, keys the checkpoint has and ``what`` has not, or shapes
            that differ; the message names them.
    """
    if not isinstance(values, Mapping):
        _restore_by_position(list(variables.values()), list(values), what)
        return
    missing = [k for k in variables if k not in values]
    extra = [k for k in values if k not in variables]
    shapes = [
        f"{k} {tuple(v.shape)} (checkpoint {tuple(np.shape(values[k]))})"
        for k, v in variables.items()
        if k in values and tuple(v.shape) != tuple(np.shape(values[k]))
    ]
    if missing or extra or shapes:
        problems = []
        if missing:
            problems.append(f"not in the checkpoint: {_listed(missing)}")
        if extra:
            problems.append(f"in the checkpoint but not in the {what}: {_listed(extra)}")
        if shapes:
            problems.append(f"shapes differ: {_listed(shapes)}")
        raise CheckpointError(
            f"The checkpoint does not fit the {what} ({len(values)} saved variables, {len(variables)} in the "
            f"{what}); {'; '.join(problems)}. Was the run folder made by another model, recipe or layer naming? "
            f"Nothing was restored."
        )
    for k, v in variables.items():
        v.assign(values[k])


def _restore_by_position(variables, values, what):
    if len(variables) != len(values):
        raise CheckpointError(
            f"The checkpoint does not fit the {what}: it holds {len(values)} variables, the {what} "
            f"has {len(variables)}. Was the run directory made by another model or recipe?"
        )
    for v, value in zip(variables, values):
        if tuple(v.shape) != tuple(value.shape):
            raise CheckpointError(
                f"The checkpoint does not fit the {what}: variable '{_path(v)}' has shape "
                f"{tuple(v.shape)}, the checkpoint {tuple(value.shape)}."
            )
    warnings.warn(
        f"The checkpoint records no variable names (written by an older kerasarch): the {what}'s variables are "
        "restored by position.",
        stacklevel=3,
    )
    for v, value in zip(variables, values):
        v.assign(value)
