"""Reads PyTorch checkpoints (``torch.save`` of a ``state_dict``) into numpy arrays, without torch and without
unpickling arbitrary objects.

Two layouts exist. The zip layout (torch >= 1.6): ``<archive>/data.pkl`` is a pickle whose tensors are
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` calls, each storage a *persistent id*
``("storage", <torch.XStorage>, key, location, numel)`` whose bytes are the zip entry ``<archive>/data/<key>``.
The legacy layout (torchvision's 2017–2019 files such as ``vgg16-397923af.pth``): a stream of pickles — magic
number, protocol version, system info, the object (same persistent ids, plus an optional view), the list of storage
keys — followed by each storage as an int64 element count and its raw bytes.

The unpickler resolves only the names below (the tensor/parameter rebuild functions, the storage type names and
``collections.OrderedDict``); any other global — which is how a malicious pickle runs code — raises
``pickle.UnpicklingError`` before anything is called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

__all__ = ["load_torch_state_dict", "TorchFormatError"]

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchFormatError(ValueError):
    """The file is not a PyTorch checkpoint we can read safely."""


class _StorageType:
    def __init__(self, name):
        self.name = name
        dtype = _STORAGE_DTYPES[name]
        if dtype == "bfloat16":
            import ml_dtypes  # ships with TensorFlow

            dtype = ml_dtypes.bfloat16
        self.dtype = np.dtype(dtype)


class _Storage:
    """A storage whose bytes are read on demand (``source()`` returns them)."""

    def __init__(self, dtype, source, offset=0, numel=None):
        self.dtype, self._source, self.offset, self.numel = dtype, source, offset, numel

    def array(self):
        flat = np.frombuffer(self._source(), dtype=self.dtype)
        end = None if self.numel is None else self.offset + self.numel
        return flat[self.offset:end]


class _Tensor:
    """A deferred tensor: materialised once every storage can be read."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def numpy(self, byteswap=False):
        flat = self.storage.array()
        if byteswap:
            flat = flat.byteswap()
        if not self.size:
            return np.array(flat[self.offset], dtype=flat.dtype)
        n = int(np.prod(self.size))
        if n == 0:
            return np.zeros(self.size, dtype=flat.dtype)
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                               strides=[s * item for s in self.stride], writeable=False)
        return np.array(view)  # a contiguous copy, detached from the file buffer


def _rebuild_tensor(storage, storage_offset, size, stride, *args, **kwargs):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    return data


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *args):
    return _Tensor(storage, storage_offset, size, stride)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch.cuda", name): _StorageType(name) for name in _STORAGE_DTYPES},  # saved from a GPU (old files)
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to unpickle '{module}.{name}': a torch checkpoint holds only tensors, OrderedDicts and "
                f"plain Python values, and anything else could run code.") from None

    def persistent_load(self, pid):
        return self._persistent(pid)


def _storage_type(value):
    if isinstance(value, _StorageType):
        return value
    if isinstance(value, str) and value in _STORAGE_DTYPES:  # very old files name it as a string
        return _StorageType(value)
    raise pickle.UnpicklingError(f"Unknown storage type {value!r} in the checkpoint.")


def _materialise(obj, byteswap):
    if isinstance(obj, _Tensor):
        return obj.numpy(byteswap)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, byteswap)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, byteswap) for v in obj)
    return obj


def _load_zip(path):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise TorchFormatError(f"{path!r} is a zip file without '<archive>/data.pkl': not a torch checkpoint.")
        root = pkl[0].split("/")[0]
        byteorder = "little"
        if f"{root}/byteorder" in names:
            byteorder = zf.read(f"{root}/byteorder").decode().strip()
        cache = {}

        def load(pid):
            if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                raise pickle.UnpicklingError(f"Unexpected persistent id {pid!r} in the checkpoint.")
            storage_type, key = _storage_type(pid[1]), str(pid[2])
            entry = f"{root}/data/{key}"
            if entry not in names:
                raise TorchFormatError(f"{path!r}: tensor data '{entry}' is missing from the archive.")
            if key not in cache:
                cache[key] = zf.read(entry)
            return _Storage(storage_type.dtype, lambda: cache[key])

        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), load).load()
        return _materialise(obj, byteswap=(byteorder != "little"))


def _load_legacy(path):
    with open(path, "rb") as f:
        def plain():
            return _RestrictedUnpickler(f, lambda pid: (_ for _ in ()).throw(
                pickle.UnpicklingError("Unexpected persistent id in a header record."))).load()

        if plain() != _MAGIC:
            raise TorchFormatError(f"{path!r} is neither a zip nor a legacy torch checkpoint (no magic number).")
        protocol = plain()
        if protocol != 1001:
            raise TorchFormatError(f"{path!r}: unsupported legacy torch protocol {protocol!r}.")
        info = plain()
        little = info.get("little_endian", True) if isinstance(info, dict) else True
        roots, views = {}, {}

        def load(pid):
            if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                raise pickle.UnpicklingError(f"Unexpected persistent id {pid!r} in the checkpoint.")
            _, storage_type, key, _location, _numel, *rest = pid
            storage_type = _storage_type(storage_type)
            if key not in roots:
                roots[key] = [storage_type.dtype, None]
            view = rest[0] if rest else None
            if view is None:
                return _Storage(storage_type.dtype, lambda: roots[key][1])
            view_key, offset, size = view
            if view_key not in views:
                views[view_key] = _Storage(storage_type.dtype, lambda: roots[key][1], offset, size)
            return views[view_key]

        obj = _RestrictedUnpickler(f, load).load()
        keys = plain()
        for key in keys:
            if key not in roots:
                raise TorchFormatError(f"{path!r}: storage {key!r} is listed but never used.")
            dtype = roots[key][0]
            (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
            data = f.read(numel * dtype.itemsize)
            if len(data) != numel * dtype.itemsize:
                raise TorchFormatError(f"{path!r} is truncated (storage {key!r}).")
            roots[key][1] = data
        missing = [k for k, v in roots.items() if v[1] is None]
        if missing:
            raise TorchFormatError(f"{path!r}: storages {missing} have no data.")
        return _materialise(obj, byteswap=not little)


def load_torch_state_dict(path):
    """Reads a ``torch.save``-d checkpoint and returns ``{key: numpy array}`` (its ``state_dict``).

    A checkpoint that wraps the state dict (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped. Only
    tensors, OrderedDicts and plain Python values are accepted; anything else raises ``pickle.UnpicklingError``.
    """
    path = os.fspath(path)
    try:
        obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except (pickle.UnpicklingError, TorchFormatError):
        raise
    except (EOFError, struct.error, zipfile.BadZipFile, pickle.PickleError) as e:
        raise TorchFormatError(f"{path!r} is not a readable torch checkpoint: {e}") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise TorchFormatError(f"{path!r} holds a {type(obj).__name__}, not a state dict.")
    out = collections.OrderedDict()
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[k] = v
    return out
