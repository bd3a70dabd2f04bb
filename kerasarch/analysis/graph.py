"""Walks a Keras model's graph with symbolic shapes, visiting every leaf operation call (nested models included)."""

from __future__ import annotations

import keras

from kerasarch.keras_compat import fill_in_arguments, nodes_by_depth

__all__ = ["walk", "is_graph_model"]


def is_graph_model(op):
    """True for models whose layers can be walked: Functional models and Sequential models."""
    return isinstance(op, keras.Model) and (isinstance(op, keras.Sequential) or nodes_by_depth(op) is not None)


def _shape_tail(shape):
    return tuple(shape[1:])


def _fully_defined(shape):
    return all(d is not None for d in shape[1:])


def _call(op, inputs, args, kwargs, node, visit, path):
    if is_graph_model(op):
        return walk(op, inputs, visit, path=(*path, op.name))
    recorded = (
        node is not None
        and len(node.input_tensors) == len(inputs)
        and all(_shape_tail(a.shape) == _shape_tail(b.shape) for a, b in zip(inputs, node.input_tensors))
    )
    if recorded and all(_fully_defined(t.shape) for t in node.outputs):
        outputs = [keras.KerasTensor(t.shape, dtype=t.dtype) for t in node.outputs]
    else:
        try:
            outputs = keras.tree.flatten(op.compute_output_spec(*args, **kwargs))
        except Exception as e:  # noqa: BLE001  (re-raised with the layer's name)
            shapes = [tuple(t.shape) for t in inputs]
            raise ValueError(
                f"Cannot infer the output shape of layer '{op.name}' ({type(op).__name__}) for input "
                f"shapes {shapes}: {e}"
            ) from e
    visit(op, inputs, outputs, path)
    return outputs


def walk(model, inputs, visit, path=()):
    """Runs ``model``'s graph on the symbolic ``inputs`` (a list of ``keras.KerasTensor``).

    ``visit(op, inputs, outputs, path)`` is called once per leaf operation call, in topological order, with the
    symbolic input and output tensors of that call and ``path``, the names of the enclosing nested models.
    Returns the model's symbolic outputs (a list).
    """
    if isinstance(model, keras.Sequential):
        x = list(inputs)
        for layer in model.layers:
            x = _call(layer, x, tuple(x), {}, None, visit, path)
        return x
    by_depth = nodes_by_depth(model)
    if by_depth is None:
        raise TypeError(
            f"Only Functional and Sequential models can be analysed layer by layer; "
            f"{model.name} is a {type(model).__name__}."
        )
    tensors = {id(t): s for t, s in zip(model.inputs, inputs)}
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            if any(id(t) not in tensors for t in node.input_tensors):
                continue
            args, kwargs = fill_in_arguments(node, tensors)
            outputs = _call(
                node.operation, [tensors[id(t)] for t in node.input_tensors], args, kwargs, node, visit, path
            )
            for t, o in zip(node.outputs, outputs):
                tensors[id(t)] = o
    return [tensors[id(t)] for t in model.outputs]
