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

Nothing in the file is trusted: every tensor's offset, sizes and strides are checked against its storage's length
before a view is made (negative strides and out-of-bounds views are refused), only the bytes a tensor spans are
read (never a whole storage), and the tensors read may total at most twice the file's size (a few shared views
are normal; a pickle that references one storage a million times is not). Every failure is a
:class:`TorchFormatError` naming the file and, where one is at fault, the tensor.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from kerasarch.errors import KerasarchError

__all__ = ["load_torch_state_dict", "TorchFormatError", "UnsafePickleError"]

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# The largest data.pkl we read (torchvision's biggest is ~100 kB) and the slack allowed on the total size of the
# tensors read (shared views read the same bytes twice).
_MAX_PICKLE_BYTES = 256 << 20
_READ_SLACK_BYTES = 16 << 20
_MAX_DIM = 1 << 40


class TorchFormatError(KerasarchError):
    """The file is not a PyTorch checkpoint we can read safely."""


class UnsafePickleError(TorchFormatError, pickle.UnpicklingError):
    """The checkpoint's pickle references something other than tensors and plain values (it could run code)."""


class _Frozen:
    """Objects the pickle builds; a ``BUILD`` opcode must not rewrite their attributes."""

    def __setstate__(self, state):
        raise UnsafePickleError(f"The checkpoint tries to set the state of a {type(self).__name__}.")


class _StorageType(_Frozen):
    def __init__(self, name):
        self.name = name
        dtype = _STORAGE_DTYPES[name]
        if dtype == "bfloat16":
            import ml_dtypes  # ships with TensorFlow

            dtype = ml_dtypes.bfloat16
        self.dtype = np.dtype(dtype)


class _Storage(_Frozen):
    """A storage of ``numel`` elements whose bytes are read on demand: ``read(first, count)`` returns elements
    ``first .. first + count - 1`` as bytes (``first`` and ``count`` already checked against ``numel``)."""

    def __init__(self, dtype, numel, read):
        self.dtype, self.numel, self._read = dtype, int(numel), read

    def read(self, first, count):
        want = count * self.dtype.itemsize
        data = self._read(first * self.dtype.itemsize, want)
        if len(data) != want:
            raise TorchFormatError(f"the storage holds fewer bytes than it declares ({len(data)} of {want} read)")
        return data

    def view(self, offset, numel):
        """Elements ``offset .. offset + numel - 1`` of this storage, as a storage (legacy storage views)."""
        offset, numel = _check_int(offset, "view offset"), _check_int(numel, "view size")
        if offset + numel > self.numel:
            raise TorchFormatError(
                f"a storage view [{offset}, {offset + numel}) lies outside its storage of {self.numel} elements"
            )
        base = offset * self.dtype.itemsize
        return _Storage(self.dtype, numel, lambda start, count: self._read(base + start, count))


def _check_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > _MAX_DIM:
        raise TorchFormatError(f"{what} must be an integer in [0, 2**40]; the file holds {value!r}")
    return value


class _Tensor(_Frozen):
    """A deferred tensor: a view ``(offset, size, stride)`` of a storage, checked and read by :meth:`numpy`."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def check(self):
        """Validates the view against the storage; returns ``(first, span, shape, strides)`` in elements."""
        if not isinstance(self.storage, _Storage):
            raise TorchFormatError(f"the tensor's storage is a {type(self.storage).__name__}, not a storage")
        if not isinstance(self.size, (tuple, list)) or not isinstance(self.stride, (tuple, list)):
            raise TorchFormatError(f"size and stride must be tuples; the file holds {self.size!r}, {self.stride!r}")
        shape = tuple(_check_int(d, "every size") for d in self.size)
        strides = tuple(_check_int(d, "every stride (negative strides are refused)") for d in self.stride)
        if len(shape) != len(strides):
            raise TorchFormatError(f"size {shape} and stride {strides} have different lengths")
        first = _check_int(self.offset, "the storage offset")
        if any(d == 0 for d in shape):
            return first, 0, shape, strides
        span = 1 + sum((d - 1) * s for d, s in zip(shape, strides))
        if first + span > self.storage.numel:
            raise TorchFormatError(
                f"offset {first}, size {list(shape)} and stride {list(strides)} reach element {first + span - 1} "
                f"of a storage of {self.storage.numel} elements (out of bounds)"
            )
        return first, span, shape, strides

    def nbytes(self):
        shape = self.check()[2]
        return int(np.prod(shape, dtype=object)) * self.storage.dtype.itemsize

    def numpy(self, byteswap=False):
        first, span, shape, strides = self.check()
        dtype = self.storage.dtype
        if span == 0:
            return np.zeros(shape, dtype=dtype)
        flat = np.frombuffer(self.storage.read(first, span), dtype=dtype)
        if byteswap:
            flat = flat.byteswap()
        if not shape:
            return np.array(flat[0], dtype=dtype)
        # In bounds: the last element of the view is flat[span - 1], checked above.
        view = np.lib.stride_tricks.as_strided(
            flat, shape=shape, strides=[s * dtype.itemsize for s in strides], writeable=False
        )
        return np.array(view)  # a contiguous copy, detached from the bytes read


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
    **{("torch", name): name for name in _STORAGE_DTYPES},
    **{("torch.cuda", name): name for name in _STORAGE_DTYPES},  # saved from a GPU (old files)
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent_load

    def find_class(self, module, name):
        try:
            found = _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"Refusing to unpickle '{module}.{name}': a torch checkpoint holds only tensors, OrderedDicts and "
                f"plain Python values, and anything else could run code."
            ) from None
        return _StorageType(found) if isinstance(found, str) else found

    def persistent_load(self, pid):
        return self._persistent(pid)


class _BoundedFile:
    """A read-only file view that never hands out more than the bytes left in the file (a pickle opcode that
    declares a 2**60-byte string reads what is there and fails as truncated instead of allocating it)."""

    def __init__(self, f, size):
        self._f, self._size = f, size

    def read(self, n=-1):
        left = max(0, self._size - self._f.tell())
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit=-1):
        return self._f.readline(limit)

    def readinto(self, buf):
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def _storage_type(value):
    if isinstance(value, _StorageType):
        return value
    if isinstance(value, str) and value in _STORAGE_DTYPES:  # very old files name it as a string
        return _StorageType(value)
    raise TorchFormatError(f"unknown storage type {value!r}")


def _storage_pid(pid):
    """``(storage type, key, numel, view)`` of a persistent id ``("storage", type, key, location, numel[, view])``."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise TorchFormatError(f"unexpected persistent id {str(pid)[:100]}")
    view = pid[5] if len(pid) == 6 else None
    return _storage_type(pid[1]), str(pid[2]), _check_int(pid[4], "a storage's element count"), view


def _tensors(obj, prefix="", out=None):
    """``[(name, tensor)]`` of every deferred tensor in ``obj`` (dict keys joined by dots)."""
    out = [] if out is None else out
    stack = [(prefix, obj)]
    while stack:
        name, item = stack.pop()
        if isinstance(item, _Tensor):
            out.append((name or "<root>", item))
        elif isinstance(item, dict):
            stack.extend((f"{name}.{k}" if name else str(k), v) for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(item))
    return out


def _materialise(path, obj, byteswap, budget):
    """Checks every tensor in ``obj`` (bounds, and a total of at most ``budget`` bytes), then reads them."""
    found = _tensors(obj)
    total = 0
    for name, t in found:
        try:
            total += t.nbytes()
        except TorchFormatError as e:
            raise TorchFormatError(f"{path!r}: tensor {name!r}: {e}.") from None
        if total > budget:
            raise TorchFormatError(
                f"{path!r}: the tensors declare {total:,}+ bytes, more than the file's size "
                f"allows ({budget:,}); refusing to read them (tensor {name!r})."
            )
    values = {}
    for name, t in found:
        if id(t) not in values:
            try:
                values[id(t)] = t.numpy(byteswap)
            except TorchFormatError as e:
                raise TorchFormatError(f"{path!r}: tensor {name!r}: {e}.") from None

    def convert(item):
        if isinstance(item, _Tensor):
            return values[id(item)]
        if isinstance(item, dict):
            out = collections.OrderedDict() if isinstance(item, collections.OrderedDict) else {}
            for k, v in item.items():
                out[k] = convert(v)
            return out
        if isinstance(item, (list, tuple)):
            return [convert(v) for v in item]
        return item

    return convert(obj)  # a hostile nesting depth ends in RecursionError, reported as a TorchFormatError


def _load_zip(path, budget):
    with zipfile.ZipFile(path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl = [n for n in infos if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            raise TorchFormatError(f"{path!r} is a zip file without '<archive>/data.pkl': not a torch checkpoint.")
        root = pkl[0].split("/")[0]
        byteorder = "little"
        if f"{root}/byteorder" in infos and infos[f"{root}/byteorder"].file_size <= 16:
            byteorder = zf.read(f"{root}/byteorder").decode("ascii", "replace").strip()
        if infos[pkl[0]].file_size > _MAX_PICKLE_BYTES:
            raise TorchFormatError(
                f"{path!r}: '{pkl[0]}' declares {infos[pkl[0]].file_size:,} bytes; a "
                f"checkpoint's pickle is far smaller."
            )

        def load(pid):
            storage_type, key, numel, _ = _storage_pid(pid)
            entry = f"{root}/data/{key}"
            if entry not in infos:
                raise TorchFormatError(f"tensor data '{entry}' is missing from the archive")
            have = infos[entry].file_size // storage_type.dtype.itemsize
            if numel > have:
                raise TorchFormatError(f"storage '{entry}' declares {numel} elements but holds {have}")

            def read(start, count):
                with zf.open(entry) as f:
                    f.seek(start)
                    return f.read(count)

            return _Storage(storage_type.dtype, numel, read)

        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), load).load()
        return _materialise(path, obj, byteorder != "little", budget)


def _load_legacy(path, budget):
    size = os.path.getsize(path)
    with open(path, "rb") as raw:
        f = _BoundedFile(raw, size)

        def plain():
            return _RestrictedUnpickler(
                f, lambda pid: (_ for _ in ()).throw(TorchFormatError("unexpected persistent id in a header record"))
            ).load()

        if plain() != _MAGIC:
            raise TorchFormatError(f"{path!r} is neither a zip nor a legacy torch checkpoint (no magic number).")
        protocol = plain()
        if protocol != 1001:
            raise TorchFormatError(f"{path!r}: unsupported legacy torch protocol {protocol!r}.")
        info = plain()
        little = bool(info.get("little_endian", True)) if isinstance(info, dict) else True
        roots, views, where = {}, {}, {}

        def load(pid):
            storage_type, key, numel, view = _storage_pid(pid)
            if key not in roots:
                # The storage's bytes come after the pickles; ``where[key]`` is set once their position is known.
                def read(start, count, key=key):
                    if key not in where:
                        raise TorchFormatError(f"storage {key!r} has no data")
                    raw.seek(where[key] + start)
                    return raw.read(count)

                roots[key] = _Storage(storage_type.dtype, numel, read)
            if view is None:
                return roots[key]
            if not (isinstance(view, tuple) and len(view) == 3):
                raise TorchFormatError(f"unexpected storage view {str(view)[:100]}")
            view_key, offset, numel = view
            if view_key not in views:
                views[view_key] = roots[key].view(offset, numel)
            return views[view_key]

        obj = _RestrictedUnpickler(f, load).load()
        keys = plain()
        if not isinstance(keys, (list, tuple)):
            raise TorchFormatError(f"{path!r}: the storage key list is a {type(keys).__name__}.")
        for key in keys:
            key = str(key)
            if key not in roots:
                raise TorchFormatError(f"{path!r}: storage {key!r} is listed but never used.")
            storage = roots[key]
            header = raw.read(8)
            if len(header) != 8:
                raise TorchFormatError(f"{path!r} is truncated (storage {key!r}).")
            (numel,) = struct.unpack("<q" if little else ">q", header)
            nbytes = numel * storage.dtype.itemsize
            if numel < storage.numel or raw.tell() + nbytes > size:
                raise TorchFormatError(
                    f"{path!r} is truncated or inconsistent: storage {key!r} declares {numel} "
                    f"elements ({storage.numel} used), {size - raw.tell()} bytes are left."
                )
            where[key] = raw.tell()
            raw.seek(nbytes, os.SEEK_CUR)
        missing = [k for k in roots if k not in where]
        if missing:
            raise TorchFormatError(f"{path!r}: storages {missing} have no data.")
        return _materialise(path, obj, not little, budget)


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``torch.save``-d checkpoint and returns ``{key: numpy array}`` (its ``state_dict``).

    A checkpoint that wraps the state dict (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped. Only
    tensors, OrderedDicts and plain Python values are accepted; anything else raises :class:`UnsafePickleError`
    (a ``pickle.UnpicklingError``). A file that is truncated, inconsistent or hostile raises
    :class:`TorchFormatError` (a :class:`kerasarch.errors.KerasarchError`) naming the file and the tensor.
    """
    path = os.fspath(path)
    try:
        budget = 2 * os.path.getsize(path) + _READ_SLACK_BYTES
        obj = _load_zip(path, budget) if zipfile.is_zipfile(path) else _load_legacy(path, budget)
    except TorchFormatError as e:
        if path in str(e):
            raise
        raise type(e)(f"{path!r}: {e}") from None
    except FileNotFoundError:
        raise
    except MemoryError as e:
        raise TorchFormatError(f"{path!r} declares more data than fits in memory; not a usable checkpoint.") from e
    except (Exception, RecursionError) as e:  # noqa: BLE001 - anything a hostile pickle provokes
        raise TorchFormatError(
            f"{path!r} is not a readable torch checkpoint ({type(e).__name__}: {str(e)[:200]})."
        ) from e
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
