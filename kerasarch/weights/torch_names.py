"""torchvision ``state_dict`` keys -> kerasarch layer names, one mapping function per family, and the tensor layout
conversion (PyTorch NCHW / OIHW / (out, in) -> Keras NHWC / HWIO / (in, out)).

A mapping function takes ``{module prefix: {parameter name: array}}`` (``"layer1.0.conv1"`` ->
``{"weight": ...}``) and the Keras model, and returns ``{module prefix: kerasarch layer name}``. Names the model does
not have (the classifier of a headless model, GoogLeNet's auxiliary heads when the model has none) are ignored by
the loader; a prefix the function does not recognise raises, so a checkpoint of another architecture fails loudly.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np
from keras import layers

from kerasarch import keras_compat

if TYPE_CHECKING:
    import keras

__all__ = ["MAPPERS", "detect_family", "group_modules", "map_state_dict", "torch_to_keras_arrays"]

_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def group_modules(state_dict: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """``{"a.b.weight": w, ...}`` -> ``{"a.b": {"weight": w, ...}}``, in checkpoint order."""
    modules = {}
    for key, value in state_dict.items():
        prefix, _, param = key.rpartition(".")
        if param not in _PARAMS:
            raise ValueError(
                f"Unexpected parameter '{key}' in the torch checkpoint (expected names ending in {', '.join(_PARAMS)})."
            )
        modules.setdefault(prefix, {})[param] = value
    return modules


def _unknown(prefix, family):
    return ValueError(
        f"The torch checkpoint has module '{prefix}', which the {family} mapping does not know: is it "
        f"a torchvision {family} checkpoint?"
    )


def _sequential(modules, model, family):
    """VGG / AlexNet: ``features.<i>`` convs (and BNs) in order, ``classifier.<i>`` linears in order."""

    def ordered(section):
        found = [(int(p.split(".")[1]), p) for p in modules if re.fullmatch(rf"{section}\.\d+", p)]
        return [p for _, p in sorted(found)]

    for p in modules:
        if not re.fullmatch(r"(features|classifier)\.\d+", p):
            raise _unknown(p, family)
    feats, head = ordered("features"), ordered("classifier")
    t_convs = [p for p in feats if np.ndim(modules[p]["weight"]) == 4]
    t_bns = [p for p in feats if "running_mean" in modules[p]]
    k_convs = [lay.name for lay in model.layers if isinstance(lay, layers.Conv2D)]
    k_bns = [lay.name for lay in model.layers if isinstance(lay, layers.BatchNormalization)]
    k_dense = [lay.name for lay in model.layers if isinstance(lay, layers.Dense)]
    for what, t, k in (("convolutions", t_convs, k_convs), ("batch norms", t_bns, k_bns)):
        if len(t) != len(k):
            raise ValueError(
                f"The torch checkpoint has {len(t)} {what} in `features`, model '{model.name}' has "
                f"{len(k)}: they are different architectures."
            )
    if k_dense and len(k_dense) != len(head):
        raise ValueError(
            f"The torch checkpoint has {len(head)} linear layers in `classifier`, model "
            f"'{model.name}' has {len(k_dense)} Dense layers: they are different architectures."
        )
    mapping = dict(zip(t_convs, k_convs))
    mapping.update(zip(t_bns, k_bns))
    mapping.update(zip(head, k_dense) if k_dense else ((p, f"<classifier {p}>") for p in head))
    return mapping


def map_vgg(modules: Mapping[str, Mapping[str, np.ndarray]], model: keras.Model) -> dict[str, str]:
    """torchvision VGG / VGG-BN (``features.N``, ``classifier.{0,3,6}``) -> ``block{b}_conv{c}[_bn]``, ``fc1``,
    ``fc2``, ``predictions``."""
    return _sequential(modules, model, "vgg")


def map_alexnet(modules: Mapping[str, Mapping[str, np.ndarray]], model: keras.Model) -> dict[str, str]:
    """torchvision AlexNet (``features.{0,3,6,8,10}``, ``classifier.{1,4,6}``) -> ``conv1``..``conv5``, ``fc6``,
    ``fc7``, ``predictions``."""
    return _sequential(modules, model, "alexnet")


def map_resnet(modules: Mapping[str, Mapping[str, np.ndarray]], model: keras.Model) -> dict[str, str]:
    """torchvision ResNet / ResNeXt / Wide ResNet -> keras.applications-style names:
    ``layer{L}.{i}.conv{j}`` -> ``conv{L+1}_block{i+1}_{j}_conv``, ``downsample.{0,1}`` -> ``..._0_conv/_0_bn``."""
    mapping = {}
    for p in modules:
        if p in ("conv1", "bn1"):
            mapping[p] = "conv1_conv" if p == "conv1" else "conv1_bn"
        elif p == "fc":
            mapping[p] = "predictions"
        elif m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)", p):
            stage, block, kind, j = int(m[1]) + 1, int(m[2]) + 1, m[3], m[4]
            mapping[p] = f"conv{stage}_block{block}_{j}_{kind}"
        elif m := re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])", p):
            stage, block = int(m[1]) + 1, int(m[2]) + 1
            mapping[p] = f"conv{stage}_block{block}_0_{'conv' if m[3] == '0' else 'bn'}"
        else:
            raise _unknown(p, "resnet")
    return mapping


def map_densenet(modules: Mapping[str, Mapping[str, np.ndarray]], model: keras.Model) -> dict[str, str]:
    """torchvision DenseNet -> keras.applications DenseNet names (``denseblock{b}.denselayer{l}.norm1`` ->
    ``conv{b+1}_block{l}_0_bn`` ...). The 2017 files write ``norm.1`` for ``norm1``; both are accepted."""
    mapping = {}
    for p in modules:
        q = re.sub(r"\.(norm|conv)\.([12])$", r".\1\2", p)
        if q == "features.conv0":
            mapping[p] = "conv1_conv"
        elif q == "features.norm0":
            mapping[p] = "conv1_bn"
        elif q == "features.norm5":
            mapping[p] = "bn"
        elif q == "classifier":
            mapping[p] = "predictions"
        elif m := re.fullmatch(r"features\.denseblock(\d)\.denselayer(\d+)\.(norm|conv)([12])", q):
            base = f"conv{int(m[1]) + 1}_block{m[2]}"
            mapping[p] = {
                ("norm", "1"): f"{base}_0_bn",
                ("conv", "1"): f"{base}_1_conv",
                ("norm", "2"): f"{base}_1_bn",
                ("conv", "2"): f"{base}_2_conv",
            }[(m[3], m[4])]
        elif m := re.fullmatch(r"features\.transition(\d)\.(norm|conv)", q):
            mapping[p] = f"pool{int(m[1]) + 1}_{'bn' if m[2] == 'norm' else 'conv'}"
        else:
            raise _unknown(p, "densenet")
    return mapping


def map_squeezenet(modules: Mapping[str, Mapping[str, np.ndarray]], model: keras.Model) -> dict[str, str]:
    """torchvision SqueezeNet 1.0 / 1.1: ``features.0`` -> ``conv1``, the Fire modules in ``features`` order ->
    ``fire2``..``fire9`` (``squeeze``/``expand1x1``/``expand3x3`` -> ``fire{n}_squeeze1x1`` ...),
    ``classifier.1`` -> ``conv10``."""
    fire_indices = sorted({int(m[1]) for p in modules if (m := re.fullmatch(r"features\.(\d+)\.\w+", p))})
    mapping = {}
    for p in modules:
        if p == "features.0":
            mapping[p] = "conv1"
        elif p == "classifier.1":
            mapping[p] = "conv10"
        elif m := re.fullmatch(r"features\.(\d+)\.(squeeze|expand1x1|expand3x3)", p):
            fire = fire_indices.index(int(m[1])) + 2
            mapping[p] = f"fire{fire}_{'squeeze1x1' if m[2] == 'squeeze' else m[2]}"
        else:
            raise _unknown(p, "squeezenet")
    return mapping


_GOOGLENET_BRANCHES = {
    "branch1": "1x1",
    "branch2.0": "3x3_reduce",
    "branch2.1": "3x3",
    "branch3.0": "5x5_reduce",
    "branch3.1": "5x5",
    "branch4.1": "pool_proj",
}


def map_googlenet(modules: Mapping[str, Mapping[str, np.ndarray]], model: keras.Model) -> dict[str, str]:
    """torchvision GoogLeNet (BN) -> Caffe-style names: ``conv1`` -> ``conv1_7x7_s2``, ``conv2``/``conv3`` ->
    ``conv2_3x3_reduce``/``conv2_3x3``, ``inception4a.branch2.1`` -> ``inception4a_3x3``, each ``.bn`` -> ``<name>_bn``;
    ``aux1.conv``/``fc1``/``fc2`` -> ``aux1_conv``/``aux1_fc``/``aux1``; ``fc`` -> ``predictions``."""
    stem = {"conv1": "conv1_7x7_s2", "conv2": "conv2_3x3_reduce", "conv3": "conv2_3x3"}
    mapping = {}
    for p in modules:
        if p == "fc":
            mapping[p] = "predictions"
            continue
        m = re.fullmatch(r"(.+)\.(conv|bn)", p)
        base = None
        if m and m[1] in stem:
            base = stem[m[1]]
        elif (
            m
            and (mi := re.fullmatch(r"inception(\d[a-e])\.(branch\d(?:\.\d)?)", m[1]))
            and mi[2] in _GOOGLENET_BRANCHES
        ):
            base = f"inception{mi[1]}_{_GOOGLENET_BRANCHES[mi[2]]}"
        elif m and (ma := re.fullmatch(r"(aux[12])\.conv", m[1])):
            base = f"{ma[1]}_conv"
        elif ma := re.fullmatch(r"(aux[12])\.fc([12])", p):
            mapping[p] = f"{ma[1]}_fc" if ma[2] == "1" else ma[1]
            continue
        if base is None:
            raise _unknown(p, "googlenet")
        mapping[p] = base if m[2] == "conv" else f"{base}_bn"
    return mapping


MAPPERS = {
    "vgg": map_vgg,
    "alexnet": map_alexnet,
    "resnet": map_resnet,
    "densenet": map_densenet,
    "squeezenet": map_squeezenet,
    "googlenet": map_googlenet,
}


def detect_family(keys: Iterable[str]) -> str:
    """The torchvision family of a state dict, from its key layout."""
    keys = list(keys)
    if any(k.startswith("features.denseblock") for k in keys):
        return "densenet"
    if any(k.startswith("inception3a.") for k in keys):
        return "googlenet"
    if any(k.startswith("layer1.") for k in keys) and "conv1.weight" in keys:
        return "resnet"
    if any(".squeeze." in k for k in keys):
        return "squeezenet"
    if any(k.startswith("features.") for k in keys):
        conv_weights = [k for k in keys if k.startswith("features.") and k.endswith(".weight")]
        return "alexnet" if len(conv_weights) == 5 else "vgg"
    raise ValueError(
        f"Unrecognised torch checkpoint layout (first keys: {keys[:5]}): expected a torchvision "
        f"AlexNet, VGG, GoogLeNet, ResNet/ResNeXt/Wide ResNet, SqueezeNet or DenseNet state dict."
    )


def _dense_input_hwc(model, layer):
    """``(H, W, C)`` when ``layer`` (a Dense) reads a Flatten of a 4-D tensor (through Dropouts), else ``None``."""
    try:
        producer = keras_compat.producer(keras_compat.inbound_nodes(layer)[0].input_tensors[0])
        while isinstance(producer, layers.Dropout):
            producer = keras_compat.producer(keras_compat.inbound_nodes(producer)[0].input_tensors[0])
    except (AttributeError, IndexError):
        return None
    if isinstance(producer, layers.Flatten):
        shape = producer.input.shape
        if len(shape) == 4 and None not in shape[1:]:
            return tuple(int(s) for s in shape[1:])
    return None


def torch_to_keras_arrays(
    params: Mapping[str, np.ndarray], layer: keras.layers.Layer, model: keras.Model
) -> list[np.ndarray]:
    """The Keras weight list of ``layer`` from one torch module's ``params`` (``weight``, ``bias``,
    ``running_mean``, ``running_var``; ``num_batches_tracked`` is ignored)."""
    w, b = params.get("weight"), params.get("bias")
    if isinstance(layer, layers.BatchNormalization):
        out = []
        if layer.scale:
            out.append(w)
        if layer.center:
            out.append(b)
        return out + [params["running_mean"], params["running_var"]]
    if isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.Conv2DTranspose):
        if w is None or np.ndim(w) != 4:
            raise ValueError(
                f"Layer '{layer.name}' is a Conv2D; the torch module mapped to it has no 4-D weight "
                f"(shapes {[np.shape(v) for v in params.values()]})."
            )
        kernel = np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO; grouped: (O, I/g, kh, kw) -> (kh, kw, I/g, O)
        return [kernel] + ([b] if b is not None else [])
    if isinstance(layer, layers.Dense):
        if w is None or np.ndim(w) != 2:
            raise ValueError(f"Layer '{layer.name}' is a Dense; the torch module mapped to it has no 2-D weight.")
        hwc = _dense_input_hwc(model, layer)
        if hwc is not None and hwc[0] * hwc[1] > 1 and w.shape[1] == int(np.prod(hwc)):
            h, wd, c = hwc
            # torch flattens (C, H, W), Keras flattens (H, W, C): reorder the input axis accordingly.
            kernel = w.reshape(w.shape[0], c, h, wd).transpose(2, 3, 1, 0).reshape(h * wd * c, w.shape[0])
        else:
            kernel = w.T
        return [kernel] + ([b] if b is not None else [])
    raise ValueError(f"No torch conversion for layer '{layer.name}' of type {type(layer).__name__}.")


def map_state_dict(
    state_dict: Mapping[str, np.ndarray], model: keras.Model, family: str | None = None
) -> dict[str, list[np.ndarray]]:
    """Converts a torchvision ``state_dict`` (numpy arrays) into ``{kerasarch layer name: [Keras arrays]}`` for
    the layers ``model`` has.

    Args:
        state_dict: ``{key: numpy array}``.
        model: the Keras model to load into (its layer types and flatten shapes drive the conversion).
        family: a key of :data:`MAPPERS`; ``None`` detects it from the keys.
    """
    family = family or detect_family(state_dict)
    if family not in MAPPERS:
        raise ValueError(f"No torch name mapping for family {family!r}; known: {', '.join(sorted(MAPPERS))}.")
    modules = group_modules(state_dict)
    mapping = MAPPERS[family](modules, model)
    by_name = {lay.name: lay for lay in model.layers}
    out = {}
    for prefix, name in mapping.items():
        if name in by_name:
            out[name] = [
                np.asarray(a, dtype=np.float32) for a in torch_to_keras_arrays(modules[prefix], by_name[name], model)
            ]
    return out
