"""``profile()``: per-layer parameters, multiply-adds, other operations, activations and receptive fields."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import NamedTuple

import keras
import numpy as np

from kerasarch.analysis.counting import OPTIMIZER_SLOTS, OpCount, count_op, receptive_field_step
from kerasarch.analysis.graph import walk
from kerasarch.keras_compat import producer

__all__ = [
    "LayerRow",
    "Profile",
    "ReceptiveField",
    "profile",
    "receptive_field",
    "resolve_model",
    "dtype_itemsize",
    "format_shape",
    "format_receptive_field",
]


class ReceptiveField(NamedTuple):
    """Receptive field of one output unit in input pixels: ``size`` and ``jump`` (the distance in input pixels
    between neighbouring output units, i.e. the accumulated stride). Integers when the field is square, else one
    value per spatial axis."""

    size: int | tuple
    jump: int | float | tuple


@dataclasses.dataclass
class LayerRow:
    """One call of one layer, per example (no batch axis)."""

    name: str
    type: str
    output_shape: tuple | list
    params: int
    trainable_params: int
    macs: int
    other_ops: int
    activations: int
    stored: bool
    dtype: str
    receptive_field: ReceptiveField | None = None
    estimated: bool = False

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["output_shape"] = _jsonable_shape(self.output_shape)
        rf = self.receptive_field
        d["receptive_field"] = None if rf is None else {"size": _jsonable(rf.size), "jump": _jsonable(rf.jump)}
        return d


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _jsonable_shape(s):
    return [list(x) for x in s] if isinstance(s, list) else list(s)


def dtype_itemsize(dtype: str) -> int:
    """Bytes per element of ``dtype`` (a Keras or numpy dtype name; ``bfloat16``, which numpy lacks, is 2)."""
    dtype = keras.backend.standardize_dtype(dtype)
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def format_shape(s: tuple | list) -> str:
    """A shape as ``224×224×3`` (``?`` for an unknown dimension); a list of shapes joined with ``, ``."""
    if isinstance(s, list):
        return ", ".join(format_shape(x) for x in s)
    return "×".join("?" if d is None else str(d) for d in s)


def format_receptive_field(rf: ReceptiveField | None) -> str:
    """A receptive field as ``"<size> /<jump>"`` (``"-"`` for none), e.g. ``"11 /4"`` for AlexNet's conv1."""
    if rf is None:
        return "-"
    size = "×".join(map(str, rf.size)) if isinstance(rf.size, tuple) else str(rf.size)
    jump = "×".join(f"{j:g}" for j in rf.jump) if isinstance(rf.jump, tuple) else f"{rf.jump:g}"
    return f"{size} /{jump}"


@dataclasses.dataclass
class Profile:
    """The analysis of one model at one input shape. Every count is per example; ``batch`` is only the default
    batch size of the memory figures.

    Attributes:
        model_name: the model's name.
        input_shape: per-example input shape (a list of shapes for several inputs).
        batch: default batch size for :meth:`activation_bytes` and :meth:`training_memory_bytes`.
        compute_dtype, variable_dtype: the model's dtype policy.
        rows: one :class:`LayerRow` per layer call, in topological order; nested models' layers are named
            ``outer/inner``.
        total_params, trainable_params: over the model's unique variables (``count_params()`` and the
            trainable subset, torchvision's convention).
    """

    model_name: str
    input_shape: tuple | list
    batch: int
    compute_dtype: str
    variable_dtype: str
    rows: list
    total_params: int
    trainable_params: int
    # (first row, last row that reads it, values per example, dtype) of every activation buffer, for the
    # inference working set; views and in-place layers share their input's buffer.
    buffers: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def non_trainable_params(self):
        return self.total_params - self.trainable_params

    @property
    def total_macs(self):
        """Multiply-adds per example (convolutions, dense layers and other layers with weights)."""
        return sum(r.macs for r in self.rows)

    @property
    def gmacs(self):
        return self.total_macs / 1e9

    @property
    def total_other_ops(self):
        """Element-wise operations per example (BN, activations, pooling, LRN, merges, copies, biases)."""
        return sum(r.other_ops for r in self.rows)

    def activation_count(self, every_output=False):
        """Activation values per example: the input and every layer output, with activation layers counted as
        in place and views (Flatten, Reshape, Dropout) as sharing their input (``every_output=True`` counts
        every layer's output once, as an unfused Keras graph materialises them)."""
        return sum(r.activations for r in self.rows if every_output or r.stored)

    @property
    def total_activations(self):
        return self.activation_count()

    def activation_bytes(self, dtype=None, batch_size=None, every_output=False):
        """Forward activation memory in bytes for ``batch_size`` examples (default ``self.batch``).

        ``dtype=None`` takes each layer's output dtype (its compute dtype: bfloat16 under ``mixed_bfloat16``,
        except layers kept in float32 such as the input and a float32 classifier); else all at ``dtype``.
        """
        batch_size = self.batch if batch_size is None else batch_size
        rows = [r for r in self.rows if every_output or r.stored]
        if dtype is not None:
            return sum(r.activations for r in rows) * dtype_itemsize(dtype) * batch_size
        return sum(r.activations * dtype_itemsize(r.dtype) for r in rows) * batch_size

    def peak_activation_count(self):
        """Inference working set per example: the largest number of activation values alive at once when the
        layers run one after the other in topological order, each tensor freed after its last reader (views and
        activation layers share their input's memory; the model's outputs live to the end)."""
        return self._peak(lambda size, dtype: size)

    def peak_activation_bytes(self, dtype=None, batch_size=None):
        """:meth:`peak_activation_count` in bytes for ``batch_size`` examples (default ``self.batch``), at each
        tensor's dtype or at ``dtype``."""
        batch_size = self.batch if batch_size is None else batch_size
        return self._peak(lambda size, d: size * dtype_itemsize(dtype or d)) * batch_size

    def _peak(self, weigh):
        events = {}
        for first, last, size, dtype in self.buffers:
            events.setdefault(first, []).append(weigh(size, dtype))
            events.setdefault(last, []).append(-weigh(size, dtype))
        live = peak = 0
        for i in sorted(events):
            # Allocations of step i happen while its inputs are still alive; frees come after.
            live += sum(v for v in events[i] if v > 0)
            peak = max(peak, live)
            live += sum(v for v in events[i] if v < 0)
        return peak

    def training_memory_breakdown(self, batch_size=None, optimizer="sgd_momentum"):
        """The parts of :meth:`training_memory_bytes`: ``activations``, ``params``, ``grads``, ``optimizer``
        (bytes) and ``total``.

        An estimate: the forward activations kept for the backward pass (:meth:`activation_bytes`, each layer's
        output at its dtype, activation layers in place), all parameters (incl. BN statistics) at the variable
        dtype, one gradient per trainable parameter, and the optimizer's slots per trainable parameter
        (``OPTIMIZER_SLOTS``: sgd 0, sgd_momentum 1, rmsprop 1, adam/adamw 2 ...; or an int). Not included:
        activation gradients in flight during the backward pass (transient, at most a few layers' worth at
        once), kernel workspaces, the framework's own overhead and the input pipeline.
        """
        batch_size = self.batch if batch_size is None else batch_size
        if isinstance(optimizer, int):
            slots = optimizer
        else:
            key = str(optimizer).lower()
            if key not in OPTIMIZER_SLOTS:
                raise ValueError(
                    f"Unknown optimizer {optimizer!r}: pass one of {sorted(OPTIMIZER_SLOTS)} or a "
                    f"number of slots per parameter. Received: optimizer={optimizer!r}"
                )
            slots = OPTIMIZER_SLOTS[key]
        var = dtype_itemsize(self.variable_dtype)
        parts = {
            "activations": self.activation_bytes(batch_size=batch_size),
            "params": self.total_params * var,
            "grads": self.trainable_params * var,
            "optimizer": slots * self.trainable_params * var,
        }
        parts["total"] = sum(parts.values())
        return parts

    def training_memory_bytes(self, batch_size=None, optimizer="sgd_momentum"):
        """Estimated training memory in bytes; see :meth:`training_memory_breakdown` for what it includes."""
        return self.training_memory_breakdown(batch_size, optimizer)["total"]

    def row(self, name):
        """The first row named ``name`` (or ending in ``/name`` for a layer of a nested model)."""
        for r in self.rows:
            if r.name == name:
                return r
        for r in self.rows:
            if r.name.split("/")[-1] == name:
                return r
        close = [r.name for r in self.rows if name in r.name][:5]
        raise ValueError(
            f"No layer named '{name}' in {self.model_name}." + (f" Did you mean: {', '.join(close)}?" if close else "")
        )

    def summary(self):
        """The totals as a dict (JSON-friendly)."""
        return {
            "model": self.model_name,
            "input_shape": _jsonable_shape(self.input_shape),
            "batch": self.batch,
            "compute_dtype": self.compute_dtype,
            "variable_dtype": self.variable_dtype,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_macs": self.total_macs,
            "gmacs": round(self.gmacs, 6),
            "total_other_ops": self.total_other_ops,
            "activations": self.total_activations,
            "activations_every_output": self.activation_count(True),
            "activation_bytes": self.activation_bytes(),
            "peak_activations": self.peak_activation_count(),
            "peak_activation_bytes": self.peak_activation_bytes(),
            "training_memory_bytes_sgd_momentum": self.training_memory_bytes(optimizer="sgd_momentum"),
            "training_memory_bytes_adam": self.training_memory_bytes(optimizer="adam"),
        }

    def to_dict(self):
        return {**self.summary(), "rows": [r.to_dict() for r in self.rows]}

    def to_json(self, path=None):
        """Writes (or returns, with ``path=None``) the totals and rows as JSON."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is None:
            return text
        with open(os.fspath(path), "w") as f:
            f.write(text + "\n")
        return path

    _CSV_FIELDS = (
        "name",
        "type",
        "output_shape",
        "params",
        "trainable_params",
        "macs",
        "other_ops",
        "activations",
        "stored",
        "dtype",
        "rf_size",
        "rf_jump",
        "estimated",
    )

    def to_csv(self, path=None):
        """Writes (or returns, with ``path=None``) one CSV line per row."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self._CSV_FIELDS)
        for r in self.rows:
            rf = r.receptive_field
            w.writerow(
                [
                    r.name,
                    r.type,
                    format_shape(r.output_shape),
                    r.params,
                    r.trainable_params,
                    r.macs,
                    r.other_ops,
                    r.activations,
                    int(r.stored),
                    r.dtype,
                    "" if rf is None else format_receptive_field(rf).split(" /")[0],
                    "" if rf is None else format_receptive_field(rf).split(" /")[1],
                    int(r.estimated),
                ]
            )
        if path is None:
            return buf.getvalue()
        with open(os.fspath(path), "w", newline="") as f:
            f.write(buf.getvalue())
        return path

    def totals_lines(self):
        """Human-readable totals, one ``(label, value)`` pair per line."""
        mb = 1e6
        tm_sgd = self.training_memory_bytes(optimizer="sgd_momentum")
        tm_adam = self.training_memory_bytes(optimizer="adam")
        return [
            ("input", format_shape(self.input_shape)),
            ("dtype policy", f"compute {self.compute_dtype}, variables {self.variable_dtype}"),
            ("parameters", f"{self.total_params:,} ({self.trainable_params:,} trainable)"),
            ("multiply-adds", f"{self.total_macs:,} ({self.gmacs:.3f} GMACs)"),
            ("other ops", f"{self.total_other_ops:,} ({self.total_other_ops / 1e9:.3f} G)"),
            (
                "activations / example",
                f"{self.total_activations:,} values, "
                f"{self.activation_bytes(batch_size=1) / mb:.1f} MB "
                f"(every layer output: {self.activation_count(True):,}); inference "
                f"working set {self.peak_activation_count():,} values, "
                f"{self.peak_activation_bytes(batch_size=1) / mb:.1f} MB",
            ),
            (
                f"training memory, batch {self.batch}",
                f"{tm_sgd / mb:,.0f} MB with SGD+momentum, {tm_adam / mb:,.0f} MB with Adam (estimate)",
            ),
        ]

    def to_markdown(self, max_rows=None):
        """The per-layer table and the totals as Markdown."""
        lines = [f"### {self.model_name}", ""]
        lines += [f"- {k}: {v}" for k, v in self.totals_lines()]
        lines += [
            "",
            "| layer | type | output | params | MACs | other ops | activations | receptive field |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        rows = self.rows if max_rows is None else self.rows[:max_rows]
        for r in rows:
            act = f"{r.activations:,}" if r.stored else f"({r.activations:,})"
            mark = "*" if r.estimated else ""
            lines.append(
                f"| {r.name} | {r.type} | {format_shape(r.output_shape)} | {r.params:,} | "
                f"{r.macs:,}{mark} | {r.other_ops:,} | {act} | {format_receptive_field(r.receptive_field)} |"
            )
        if max_rows is not None and len(self.rows) > max_rows:
            lines.append(f"| … {len(self.rows) - max_rows} more rows | | | | | | | |")
        lines.append(
            f"| **total** | | | **{self.total_params:,}** | **{self.total_macs:,}** | "
            f"**{self.total_other_ops:,}** | **{self.total_activations:,}** | |"
        )
        lines += [
            "",
            "Activations in parentheses are computed in place or are views and are not counted again; "
            "`*` marks an estimated count (a layer without a known rule).",
        ]
        return "\n".join(lines) + "\n"


def resolve_model(model_or_name, input_shape=None, **build_kwargs):
    """Returns ``(model, spec_or_None)`` from a ``keras.Model``, a registry name or a ``.keras`` file path.

    A registry name is built at ``input_shape`` (default: the spec's); a model or file is used as it is.
    """
    if isinstance(model_or_name, keras.Model):
        return model_or_name, None
    name = os.fspath(model_or_name)
    if name.endswith(".keras") and os.path.exists(name):
        return keras.saving.load_model(name, compile=False), None
    from kerasarch.registry import get_spec

    spec = get_spec(name)
    shape = tuple(input_shape) if input_shape is not None else tuple(spec.input_shape)
    return spec.build(input_shape=shape, **build_kwargs), spec


def _input_specs(model, input_shape):
    if input_shape is None:
        shapes = [tuple(t.shape[1:]) for t in model.inputs]
        for s in shapes:
            if any(d is None for d in s):
                raise ValueError(
                    f"{model.name} has an input of unknown size {s}: pass `input_shape`. Received: input_shape=None"
                )
    else:
        shapes = list(input_shape) if isinstance(input_shape, list) else [tuple(input_shape)]
        if len(shapes) != len(model.inputs):
            raise ValueError(
                f"{model.name} has {len(model.inputs)} inputs; give one shape per input. "
                f"Received: input_shape={input_shape!r}"
            )
    return [keras.KerasTensor((None, *s), dtype=t.dtype) for s, t in zip(shapes, model.inputs)], shapes


def profile(model_or_name, input_shape=None, batch=1, **build_kwargs):
    """Counts parameters, multiply-adds, other operations, activations and receptive fields layer by layer.

    Args:
        model_or_name: a Functional or Sequential ``keras.Model`` (nested models are walked too), a registry name
            (built with ``build_kwargs`` at ``input_shape``) or a ``.keras`` file path.
        input_shape: per-example input shape ``(H, W, C)`` (a list for several inputs); default: the spec's, or
            the model's own input shape.
        batch: default batch size for the memory figures.
        **build_kwargs: passed to the builder of a registry name (``include_top=False`` ...).

    Returns:
        A :class:`Profile`.
    """
    model, spec = resolve_model(model_or_name, input_shape, **build_kwargs)
    # A registry model is built at input_shape; a given model is walked at input_shape.
    specs, shapes = _input_specs(model, None if spec is not None else input_shape)
    rows, fields, seen = [], {}, set()
    names = {}
    buffers, buffer_of, alive = [], {}, []  # alive: keeps the symbolic tensors (and so their ids) alive

    def track(inputs, outputs, stored, dtype):
        step = len(rows)
        for t in inputs:
            if id(t) in buffer_of:
                buffers[buffer_of[id(t)]][1] = step
        for t in outputs:
            alive.append(t)
            if not stored and inputs and id(inputs[0]) in buffer_of:
                buffer_of[id(t)] = buffer_of[id(inputs[0])]
            else:
                buffer_of[id(t)] = len(buffers)
                buffers.append([step, step, int(math.prod(t.shape[1:])), dtype])

    def add_row(name, type_name, outputs, params, trainable, count, dtype, field):
        key = name
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            key = f"{name}@{names[name] - 1}"
        out_shapes = [tuple(t.shape[1:]) for t in outputs]
        rows.append(
            LayerRow(
                name=key,
                type=type_name,
                output_shape=out_shapes[0] if len(out_shapes) == 1 else out_shapes,
                params=params,
                trainable_params=trainable,
                macs=count.macs,
                other_ops=count.other_ops,
                activations=sum(int(math.prod(s)) for s in out_shapes),
                stored=count.stored,
                dtype=dtype,
                receptive_field=_as_rf(field),
                estimated=count.estimated,
            )
        )

    for t, spec_t in zip(model.inputs, specs):
        rank = len(spec_t.shape) - 2
        field = tuple((1, 1) for _ in range(rank)) if rank >= 1 else None
        fields[id(spec_t)] = field
        layer = producer(t)
        track([], [spec_t], True, keras.backend.standardize_dtype(spec_t.dtype))
        add_row(
            layer.name if layer is not None else "input",
            "InputLayer",
            [spec_t],
            0,
            0,
            OpCount(0, 0),
            keras.backend.standardize_dtype(spec_t.dtype),
            field,
        )

    def visit(op, inputs, outputs, path):
        in_shapes = [tuple(t.shape[1:]) for t in inputs]
        out_shapes = [tuple(t.shape[1:]) for t in outputs]
        count = count_op(op, in_shapes, out_shapes)
        field = receptive_field_step(op, [fields.get(id(t)) for t in inputs], in_shapes, out_shapes)
        for t in outputs:
            fields[id(t)] = field
        params = trainable = 0
        if id(op) not in seen:
            seen.add(id(op))
            params = sum(int(math.prod(w.shape)) for w in getattr(op, "weights", []))
            trainable = sum(int(math.prod(w.shape)) for w in getattr(op, "trainable_weights", []))
        dtype = keras.backend.standardize_dtype(outputs[0].dtype) if outputs else "float32"
        track(inputs, outputs, count.stored, dtype)
        add_row("/".join((*path, op.name)), type(op).__name__, outputs, params, trainable, count, dtype, field)

    for t in walk(model, specs, visit):
        buffers[buffer_of[id(t)]][1] = len(rows)  # the outputs live to the end
    policy = getattr(model, "dtype_policy", None)
    return Profile(
        model_name=model.name,
        input_shape=shapes[0] if len(shapes) == 1 else shapes,
        batch=int(batch),
        compute_dtype=getattr(policy, "compute_dtype", "float32"),
        variable_dtype=getattr(policy, "variable_dtype", "float32"),
        rows=rows,
        total_params=int(sum(math.prod(w.shape) for w in _unique(model.weights))),
        trainable_params=int(sum(math.prod(w.shape) for w in _unique(model.trainable_weights))),
        buffers=[tuple(b) for b in buffers],
    )


def _unique(weights):
    seen, out = set(), []
    for w in weights:
        if id(w) not in seen:
            seen.add(id(w))
            out.append(w)
    return out


def _as_rf(field):
    if field is None:
        return None
    sizes = tuple(_clean(r) for r, _ in field)
    jumps = tuple(_clean(j) for _, j in field)
    if len(set(sizes)) == 1 and len(set(jumps)) == 1:
        return ReceptiveField(sizes[0], jumps[0])
    return ReceptiveField(sizes, jumps)


def _clean(v):
    return int(v) if float(v).is_integer() else float(v)


def receptive_field(model_or_name, layer_name, input_shape=None, **build_kwargs):
    """The receptive field of one unit of ``layer_name``'s output, in input pixels.

    Computed along the graph: ``size += dilation·(kernel − 1)·jump`` and ``jump *= stride`` for convolutions and
    pools, unchanged through padding, normalisation and element-wise layers, and the maximum over the branches
    that meet at a merge (Add, Concatenate). After global pooling or Flatten the field spans the whole map.

    Args:
        model_or_name: a model, registry name or ``.keras`` path (as for :func:`profile`).
        layer_name: the layer (``outer/inner`` or just ``inner`` for a layer of a nested model).
        input_shape, build_kwargs: as for :func:`profile`.

    Returns:
        ``ReceptiveField(size, jump)``: ints for square fields, else a tuple per spatial axis.
    """
    rf = profile(model_or_name, input_shape=input_shape, **build_kwargs).row(layer_name).receptive_field
    if rf is None:
        raise ValueError(f"Layer '{layer_name}' has no spatial receptive field (the model input has no spatial axes).")
    return rf
