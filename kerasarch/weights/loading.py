"""Loading weights into a built kerasarch model: ``"imagenet"`` (the weights table) or a file.

Every file format is first read into ``{layer name: [arrays in Keras order]}`` and then assigned by layer name, so
all formats share one set of rules:

* every layer of the model that has weights must find its counterpart with the same shapes, else the error names
  the first layer that does not fit and both shapes;
* the classifier is the exception: a *head* layer (a Dense or 1×1 Conv2D whose output reaches a model output
  through weight-free layers only, with as many units as that output — ``predictions``, SqueezeNet's ``conv10``,
  GoogLeNet's auxiliary classifiers) that is missing from the file or has another number of classes is left at its
  initialisation, with a warning. That is how ``include_top=True`` with another ``classes`` loads everything but
  the classifier;
* the first convolution of a model with another number of input channels (``input_shape=(H, W, 1)`` or
  ``(H, W, 4)``) takes an RGB kernel adapted by :func:`adapt_input_kernel`, and says so on stderr;
* layers in the file that the model does not have are ignored (a file with a top loads into ``include_top=False``).
"""

from __future__ import annotations

import io
import os
import sys
import warnings
import zipfile
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from keras import layers

from kerasarch.errors import KerasarchError
from kerasarch.keras_compat import inbound_nodes
from kerasarch.keras_compat import producer as producer_of
from kerasarch.weights.download import get_file
from kerasarch.weights.table import weights_for

if TYPE_CHECKING:
    import keras

    from kerasarch.card import Checkpoint

__all__ = [
    "load_weights",
    "read_layer_weights",
    "assign_layer_weights",
    "head_layers",
    "fetch_weights",
    "adapt_input_kernel",
    "WeightsMismatchError",
    "WeightsFileError",
]

_SUFFIXES = (".keras", ".weights.h5", ".h5", ".hdf5", ".pth", ".pt", ".safetensors")


class WeightsMismatchError(KerasarchError):
    """A weights file does not fit the model."""


class WeightsFileError(KerasarchError):
    """A weights file cannot be read: truncated, corrupt, or declaring more data than it holds."""


# An HDF5 dataset may declare at most this many times its stored bytes (compression) plus 1 MiB: a file that
# declares a 20,000×20,000×1,000 kernel held in a few bytes is refused before anything is allocated.
_MAX_H5_EXPANSION = 1100


def _h5_array(obj):
    """``np.asarray`` of an HDF5 dataset, after checking that it is a numeric dataset whose declared size its
    storage can hold."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise WeightsFileError(f"'{obj.name}' is a {type(obj).__name__}, not a weights array")
    if obj.dtype.kind not in "biufcV":
        raise WeightsFileError(f"'{obj.name}' holds {obj.dtype} values, not numbers")
    declared = int(np.prod(obj.shape, dtype=object)) * obj.dtype.itemsize
    stored = obj.id.get_storage_size()
    if declared > _MAX_H5_EXPANSION * stored + (1 << 20):
        raise WeightsFileError(
            f"'{obj.name}' declares shape {obj.shape} ({declared:,} bytes) but stores {stored:,} bytes"
        )
    return np.asarray(obj)


def _decode(values):
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_legacy_h5(f):
    """keras.applications / Keras 2 / ``model.save("x.h5")``: groups per layer with a ``weight_names`` list."""
    root = f["model_weights"] if "model_weights" in f else f
    if "layer_names" not in root.attrs:
        raise ValueError("not a Keras HDF5 weights file (no 'layer_names' attribute)")
    out = {}
    for name in _decode(root.attrs["layer_names"]):
        group = root[name]
        names = _decode(group.attrs.get("weight_names", []))
        if names:
            out[name] = [_h5_array(group[n]) for n in names]
    return out


def _collect_vars(group):
    arrays = []
    if "vars" in group:
        v = group["vars"]
        arrays += [_h5_array(v[k]) for k in sorted(v.keys(), key=int)]
    for key in sorted(k for k in group.keys() if k != "vars"):
        if hasattr(group[key], "keys"):
            arrays += _collect_vars(group[key])
    return arrays


def _read_keras3_h5(f):
    """Keras 3 ``.weights.h5`` (also inside ``.keras``): ``layers/<key>/vars/<i>``, the layer name in the
    ``name`` attribute of ``vars`` (older Keras 3 files key the group by the layer name itself)."""
    if "layers" not in f:
        raise ValueError("not a Keras 3 weights file (no 'layers' group)")
    out = {}
    for key in f["layers"].keys():
        group = f["layers"][key]
        name = key
        if "vars" in group and "name" in group["vars"].attrs:
            name = _decode([group["vars"].attrs["name"]])[0]
        arrays = _collect_vars(group)
        if arrays:
            out[name] = arrays
    return out


def _torch_modules_to_layers(state_dict, model, family, path=None):
    from kerasarch.weights.torch_names import map_state_dict

    if model is None:
        raise KerasarchError(
            f"Reading torch weights {path!r} needs the target model (`model=`): its layer types "
            "and flatten shapes drive the conversion."
        )
    try:
        return map_state_dict(state_dict, model, family)
    except KerasarchError:
        raise
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise WeightsMismatchError(f"Weights file {path!r} does not fit {model.name}: {e}") from e


def read_layer_weights(
    path: str | os.PathLike, model: keras.Model | None = None, family: str | None = None
) -> dict[str, list[np.ndarray]]:
    """Reads a weights file into ``{layer name: [numpy arrays in Keras order]}``.

    Args:
        path: ``.keras``, ``.weights.h5``, a legacy Keras ``.h5`` (keras.applications), a torchvision ``.pth`` or a
            ``.safetensors`` holding a torchvision state dict.
        model: the target model; needed for torch formats (layer types and flatten shapes drive the conversion).
        family: the torchvision family for torch formats (``None``: detected from the keys).

    Raises:
        WeightsFileError: the file is truncated, corrupt or declares more data than it holds (the message names
            the file); a ``.pth`` file's :class:`~kerasarch.weights.torch_format.TorchFormatError`.
        FileNotFoundError: there is no such file.
    """
    path = os.fspath(path)
    lower = path.lower()
    if not lower.endswith(_SUFFIXES):
        raise WeightsFileError(f"Unsupported weights file {path!r}: expected one of {', '.join(_SUFFIXES)}.")
    if lower.endswith((".pth", ".pt")):
        from kerasarch.weights.torch_format import load_torch_state_dict

        return _torch_modules_to_layers(load_torch_state_dict(path), model, family, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "Weights file not found", path)
    try:
        arrays = _read_keras_or_safetensors(path, lower)
    except KerasarchError as e:
        raise WeightsFileError(f"Cannot read weights file {path!r}: {e}.") from None
    except MemoryError as e:
        raise WeightsFileError(f"Cannot read weights file {path!r}: it declares more data than fits in memory.") from e
    except Exception as e:  # noqa: BLE001 - h5py, zipfile and safetensors raise many types for corrupt files
        raise WeightsFileError(
            f"Cannot read weights file {path!r} (truncated or corrupt): {type(e).__name__}: "
            f"{' '.join(str(e).split())[:300]}"
        ) from e
    if lower.endswith(".safetensors"):
        return _torch_modules_to_layers(arrays, model, family, path)
    return arrays


def _read_keras_or_safetensors(path, lower):
    import h5py

    if lower.endswith(".keras"):
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("model.weights.h5")
            if info.file_size > _MAX_H5_EXPANSION * info.compress_size + (1 << 20):
                raise WeightsFileError(
                    f"'model.weights.h5' declares {info.file_size:,} bytes compressed into {info.compress_size:,}"
                )
            data = zf.read(info)
        with h5py.File(io.BytesIO(data), "r") as f:
            return _read_keras3_h5(f)
    if lower.endswith((".h5", ".hdf5")):
        with h5py.File(path, "r") as f:
            if "layers" in f and "layer_names" not in f.attrs and "model_weights" not in f:
                return _read_keras3_h5(f)
            return _read_legacy_h5(f)
    from safetensors.numpy import load_file

    return load_file(path)


def head_layers(model: keras.Model) -> set[str]:
    """Names of the model's classifier layers: Dense or 1×1 Conv2D layers whose output reaches a model output
    through weight-free layers only, with as many units as that output."""
    heads = set()
    for output in model.outputs:
        units = output.shape[-1]
        stack, seen = [producer_of(output)], set()
        while stack:
            layer = stack.pop()
            if layer is None or id(layer) in seen:
                continue
            seen.add(id(layer))
            if layer.weights:
                is_head = isinstance(layer, layers.Dense) or (
                    isinstance(layer, layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)
                )
                if is_head and getattr(layer, "units", getattr(layer, "filters", None)) == units:
                    heads.add(layer.name)
                continue
            for node in inbound_nodes(layer):
                stack.extend(producer_of(t) for t in node.input_tensors)
    return heads


def assign_layer_weights(
    model: keras.Model, weights: Mapping[str, Sequence[np.ndarray]], source: str = "the weights file"
) -> tuple[list[str], list[str]]:
    """Sets ``model``'s weights from ``{layer name: [arrays]}`` by layer name (the rules in the module docstring).

    Returns:
        ``(loaded, skipped)``: layer names set, and head layers left at their initialisation.
    """
    heads = head_layers(model)
    pending, skipped, adapted = [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        want = [tuple(w.shape) for w in layer.weights]
        if layer.name not in weights:
            if layer.name in heads:
                skipped.append((layer.name, f"not in {source}"))
                continue
            raise WeightsMismatchError(
                f"Weights file does not fit: layer '{layer.name}' of {model.name} (shapes {want}) has no counterpart "
                f"in {source}."
            )
        got = [tuple(np.shape(a)) for a in weights[layer.name]]
        if got != want and _input_channels_differ(layer, got, want):
            arrays = [adapt_input_kernel(weights[layer.name][0], want[0][2]), *weights[layer.name][1:]]
            adapted.append((layer.name, got[0][2], want[0][2]))
            pending.append((layer, arrays))
            continue
        if got != want:
            if layer.name in heads and len(got) == len(want):
                skipped.append((layer.name, f"the model expects shapes {want}, {source} holds {got}"))
                continue
            raise WeightsMismatchError(
                f"Weights file does not fit at layer '{layer.name}': the model expects shapes {want}, {source} "
                f"holds {got}."
            )
        pending.append((layer, weights[layer.name]))
    for layer, arrays in pending:
        layer.set_weights(arrays)
    for name, had, has in adapted:
        how = "summed over the RGB channels" if has == 1 else f"repeated and scaled by 3/{has}"
        print(
            f"kerasarch: '{name}' takes {has} input channel(s); the {had}-channel kernel of {source} was {how}.",
            file=sys.stderr,
            flush=True,
        )
    if skipped:
        details = "; ".join(f"'{n}' ({why})" for n, why in skipped)
        warnings.warn(f"Classifier layers left at their initialisation: {details}.", stacklevel=3)
    return [layer.name for layer, _ in pending], [n for n, _ in skipped]


def adapt_input_kernel(kernel: np.ndarray, channels: int) -> np.ndarray:
    """A pretrained RGB kernel ``(kh, kw, 3, out)`` for an input of ``channels`` channels.

    Grey (1 channel): the sum over R, G and B, so a grey image ``g`` gives the response the RGB kernel gives to
    ``(g, g, g)``. Other counts: the RGB kernel repeated along the input axis and cut to ``channels``, scaled by
    ``3 / channels`` so the response to a constant image keeps its size — timm's ``adapt_input_conv`` rule.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise WeightsMismatchError(
            f"Only an RGB (3-channel) first convolution can be adapted to another channel "
            f"count. Received: a kernel of shape {kernel.shape}"
        )
    if channels < 1:
        raise ValueError(f"`channels` must be >= 1. Received: channels={channels!r}")
    if channels == 3:
        return kernel
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeats = -(-channels // 3)
    return np.tile(kernel, (1, 1, repeats, 1))[:, :, :channels] * (3.0 / channels)


def _reads_model_input(layer):
    """Whether ``layer`` reads a model input through weight-free layers only (it is a first convolution)."""
    stack, seen = [node_input for node in inbound_nodes(layer) for node_input in node.input_tensors], set()
    while stack:
        producer = producer_of(stack.pop())
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        if isinstance(producer, layers.InputLayer):
            return True
        if producer.weights:
            continue
        for node in inbound_nodes(producer):
            stack.extend(node.input_tensors)
    return False


def _input_channels_differ(layer, got, want):
    """A first Conv2D whose kernel differs from the file's only in its input channels, the file's being RGB."""
    if not isinstance(layer, layers.Conv2D) or len(got) != len(want) or len(want[0]) != 4:
        return False
    (gh, gw, gc, go), (wh, ww, wc, wo) = got[0], want[0]
    return (
        (gh, gw, go) == (wh, ww, wo)
        and gc == 3
        and wc != 3
        and got[1:] == want[1:]
        and getattr(layer, "groups", 1) == 1
        and _reads_model_input(layer)
    )


def _has_top(model):
    return bool(head_layers(model))


def fetch_weights(
    model_name: str,
    *,
    source: str | None = None,
    include_top: bool = True,
    file_hash: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[str, Checkpoint]:
    """Downloads (or finds in the cache) the ImageNet weights of ``model_name``.

    Args:
        model_name: a registry name with an entry in :data:`kerasarch.weights.WEIGHTS`.
        source: ``"keras"`` or ``"torchvision"``; ``None`` for the model's default.
        include_top: ``False`` picks the smaller headless file where one is published.
        file_hash: a hash to check instead of the table's (e.g. the full SHA-256 you trust).
        cache_dir: cache root (default ``$KERASARCH_HOME`` or ``~/.kerasarch``).

    Returns:
        ``(path, info)``: the local file and its :class:`~kerasarch.weights.WeightsInfo`.
    """
    info = weights_for(model_name, source)
    if not include_top and info.notop is not None:
        info = info.notop
    path = get_file(info.file_name, info.origin, file_hash=file_hash or info.file_hash, cache_dir=cache_dir)
    return path, info


def _card_variant(model, weights):
    from kerasarch.card import card_of, has_card

    variant = card_of(model).variant if has_card(model) else None
    if variant is None:
        raise ValueError(
            f"weights={weights!r} finds the checkpoint through the model's card, and model "
            f"'{model.name}' has none naming a registered variant. Build it with "
            f"kerasarch.build_model(<variant>, weights={weights!r}), or pass weights=<path>."
        )
    return variant


def _torch_family(info):
    """The key of :data:`~kerasarch.weights.torch_names.MAPPERS` of a checkpoint's key mapping (None: detect)."""
    if info is None or info.torch_mapping is None:
        return None
    from kerasarch.weights.torch_names import MAPPERS

    return next((key for key, fn in MAPPERS.items() if fn is info.torch_mapping), None)


def _published_match(model, path):
    """``(checkpoint, exact)``: the card variant's published checkpoint whose file name ``path`` has (exact), else
    for a torch file its torchvision checkpoint (its key mapping and input convention apply), else ``(None, _)``."""
    from kerasarch.card import card_of, has_card
    from kerasarch.weights.table import WEIGHTS

    if not has_card(model) or card_of(model).variant is None:
        return None, False
    entries = WEIGHTS.get(card_of(model).variant, ())
    base = os.path.basename(path)
    for info in entries:
        if base in (info.file_name, info.notop.file_name if info.notop else None):
            return info, True
    if base.lower().endswith((".pth", ".pt", ".safetensors")):
        torch_entries = [i for i in entries if i.torch_mapping is not None]
        if torch_entries:
            return torch_entries[0], False
    return None, False


def _record_weights(model, path, info, exact):
    """Writes the weights' provenance on the model's card; a published checkpoint (or a ``.keras`` file with a card)
    also gives its input convention and class names."""
    from kerasarch.card import card_of, has_card, read_card, with_card
    from kerasarch.weights.download import file_digest

    if not has_card(model):
        return
    card = card_of(model)
    shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    classes = int(model.outputs[0].shape[-1]) if len(model.outputs) == 1 else None
    changes = {
        "weights": {
            "source": info.source if exact else "file",
            "checkpoint": f"{info.source}:{info.id}" if exact else None,
            "file": os.path.basename(path),
            "sha256": file_digest(path, "sha256"),
        }
    }
    saved = read_card(path) if path.lower().endswith(".keras") else None
    if info is not None:
        changes["input"] = info.input.for_size(shape[1:3], shape[-1])
        if exact and info.class_names == "imagenet1k" and classes == 1000:
            from kerasarch.weights.classes import imagenet_class_names

            changes["class_names"] = imagenet_class_names()
    elif saved is not None:
        changes["input"] = saved.input.for_size(shape[1:3], shape[-1])
        if saved.class_names is not None and len(saved.class_names) == classes:
            changes["class_names"] = saved.class_names
    with_card(model, card.replace(**changes))


def load_weights(model: keras.Model, weights: str | os.PathLike, *, file_hash: str | None = None) -> keras.Model:
    """Loads ``weights`` into ``model`` and returns the model, recording where they came from on its card.

    Args:
        model: a built kerasarch model (``"imagenet"`` needs its card, which names the variant).
        weights: ``"imagenet"`` (the variant's default published weights), ``"imagenet:keras"`` /
            ``"imagenet:torchvision"`` (a given source), or the path of a ``.keras``, ``.weights.h5``,
            keras.applications ``.h5``, torchvision ``.pth`` or ``.safetensors`` file.
        file_hash: for ``"imagenet"``, a hash to check instead of the table's.
    """
    if isinstance(weights, str) and weights.split(":", 1)[0] == "imagenet":
        source = weights.split(":", 1)[1] if ":" in weights else None
        name = _card_variant(model, weights)
        path, info = fetch_weights(name, source=source, include_top=_has_top(model), file_hash=file_hash)
        _load_path(model, path, _torch_family(info))
        _record_weights(model, path, info, True)
        print(f"kerasarch: {name} weights={weights!r}: {_describe_checkpoint(info)}", file=sys.stderr, flush=True)
        return model
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(
            f"`weights` must be None, 'imagenet' or the path to a weights file. Received: weights={weights!r}"
        )
    path = os.fspath(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Weights file not found: {path!r}. `weights` must be None, 'imagenet' or an existing "
            f"{' / '.join(_SUFFIXES)} file."
        )
    info, exact = _published_match(model, path)
    _load_path(model, path, _torch_family(info))
    _record_weights(model, path, info, exact)
    return model


def _describe_checkpoint(info):
    """One line saying which published checkpoint was loaded and how it is evaluated."""
    c = info.input
    fit = f"resize {c.resize_size}, centre crop {c.size[0]}" if c.fit == "resize_crop" and c.size else c.fit
    top1 = f", published top-1 {info.top1}%" if info.top1 is not None else ""
    return f"{info.source} {info.id} ({info.file_name}{top1}; {fit}, {c.interpolation}, {c.preprocessing})"


def _load_path(model, path, family=None):
    if not path.lower().endswith(_SUFFIXES):
        raise WeightsFileError(f"Unsupported weights file {path!r}: expected one of {', '.join(_SUFFIXES)}.")
    arrays = read_layer_weights(path, model, family)
    assign_layer_weights(model, arrays, source=f"'{os.path.basename(path)}'")
