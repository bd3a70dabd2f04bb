"""Shared test utilities."""

import numpy as np


def trainable_params(model):
    """Trainable parameter count: torchvision's convention (no BatchNorm moving statistics)."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def weight_shapes(model):
    """``{layer name: [weight shapes]}`` for every layer with weights."""
    return {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers if layer.weights}


def random_images(shape, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(batch, *shape)).astype("float32")


def torch_checkpoint_bytes(tensors, storages, legacy=False):
    """The bytes of a ``torch.save``-d state dict, written opcode by opcode (no torch, nothing trusted), so a test
    can declare any offset, size and stride — hostile ones included.

    Args:
        tensors: ``{name: (storage key, declared storage numel, offset, size, stride[, view])}`` (elements,
            float32); ``view``, legacy layout only: ``(view key, offset, numel)``, a view of the storage.
        storages: ``{storage key: bytes}`` (the zip entry, or the legacy record's bytes).
        legacy: the pre-1.6 stream layout instead of the zip layout.
    """
    import io
    import pickle
    import struct
    import zipfile

    def long1(v):
        n = (v.bit_length() + 8) // 8 if v else 0
        return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)

    def text(s):
        return b"X" + struct.pack("<I", len(s.encode())) + s.encode()

    def ints(seq):
        return b"(" + b"".join(long1(v) for v in seq) + b"t"

    body = b"\x80\x02ccollections\nOrderedDict\n)R("  # OrderedDict(), then SETITEMS of name -> tensor
    for name, (key, numel, offset, size, stride, *view) in tensors.items():
        pid = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text(key) + text("cpu") + long1(numel)
        if view:  # (view key, offset, numel)
            pid += b"(" + text(view[0][0]) + long1(view[0][1]) + long1(view[0][2]) + b"t"
        elif legacy:
            pid += b"N"
        pid += b"tQ"  # BINPERSID of ("storage", FloatStorage, key, "cpu", numel[, view or None])
        body += text(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + long1(offset) + ints(size)
        body += ints(stride) + b"\x89ccollections\nOrderedDict\n)RtR"
    body += b"u."
    if legacy:
        header = b"".join(
            pickle.dumps(v, protocol=2)
            for v in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})
        )
        records = b"".join(struct.pack("<q", len(data) // 4) + data for data in storages.values())
        return header + body + pickle.dumps(list(storages), protocol=2) + records
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", body)
        zf.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data)
    return buf.getvalue()
