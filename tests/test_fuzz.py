"""Issue 11: a seeded fuzz of every file reader — torch ``.pth`` (zip and legacy layouts), ``.safetensors``, Keras
``.weights.h5`` / legacy ``.h5`` / ``.keras`` and image files — with a few hundred mutated files: truncations,
flipped bytes, and huge sizes written over the fields that declare sizes. Each read must either load or raise the
library's own error type (:class:`kerasarch.errors.KerasarchError`); a crash, a hang (10 s per file) or any other
exception fails.

The loop runs in a child interpreter under a 4 GiB address-space limit (``RLIMIT_AS``), so a reader that
allocates what a file declares runs out of memory there, and a segmentation fault fails this test instead of
killing pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MUTANTS_PER_SEED = 30  # 11 seed files -> 330 reads, plus the targeted size fields

_FUZZER = textwrap.dedent(r'''
    import io, json, os, resource, signal, struct, sys, zipfile
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    import numpy as np
    import h5py
    from PIL import Image
    from safetensors.numpy import save_file
    from kerasarch.errors import KerasarchError
    from kerasarch.data import read_image
    from kerasarch.weights.loading import read_layer_weights
    from kerasarch.weights.torch_format import load_torch_state_dict

    folder, per_seed, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)

    # ---- seed files, all small and valid
    from tests.helpers import torch_checkpoint_bytes

    weight = np.arange(24, dtype="<f4")
    tensors = {"conv.weight": ("0", 24, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
               "conv.bias": ("0", 24, 22, (2,), (1,)), "fc.weight": ("0", 24, 0, (4, 6), (1, 4))}
    seeds = {"zip.pth": torch_checkpoint_bytes(tensors, {"0": weight.tobytes()}),
             "legacy.pth": torch_checkpoint_bytes(tensors, {"0": weight.tobytes()}, legacy=True)}
    path = os.path.join(folder, "seed.safetensors")
    save_file({"features.0.weight": weight.reshape(2, 3, 2, 2), "features.0.bias": weight[:2].copy()}, path)
    seeds["w.safetensors"] = open(path, "rb").read()

    def h5_bytes(legacy_layout):
        b = io.BytesIO()
        with h5py.File(b, "w") as f:
            if legacy_layout:
                f.attrs["layer_names"] = [b"dense"]
                g = f.create_group("dense")
                g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
                g.create_dataset("dense/kernel:0", data=weight.reshape(4, 6))
                g.create_dataset("dense/bias:0", data=weight[:6])
            else:
                v = f.create_group("layers/dense/vars")
                v.attrs["name"] = "dense"
                v.create_dataset("0", data=weight.reshape(4, 6))
                v.create_dataset("1", data=weight[:6])
        return b.getvalue()

    seeds["w.weights.h5"] = h5_bytes(False)
    seeds["legacy.h5"] = h5_bytes(True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", seeds["w.weights.h5"])
    seeds["m.keras"] = buf.getvalue()
    pixels = (np.arange(12 * 10 * 3) % 251).astype("uint8").reshape(12, 10, 3)
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif"), ("WEBP", "webp")):
        b = io.BytesIO()
        Image.fromarray(pixels).save(b, format=fmt)
        seeds[f"image.{ext}"] = b.getvalue()

    # ---- mutations
    HUGE = (b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\xff" * 8, b"\x00\x00\x00\x80", b"\x7f\xff\xff\xff" * 2)

    def mutate(data, kind):
        data = bytearray(data)
        if kind == 0:
            return bytes(data[:int(rng.integers(0, len(data)))])
        if kind == 1:
            for _ in range(int(rng.integers(1, 9))):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
            return bytes(data)
        value = HUGE[int(rng.integers(0, len(HUGE)))]
        at = int(rng.integers(0, max(1, len(data) - len(value))))
        data[at:at + len(value)] = value
        return bytes(data)

    def long1(v):
        n = (v.bit_length() + 8) // 8 if v else 0
        return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)

    def ints(seq):
        return b"(" + b"".join(long1(v) for v in seq) + b"t"

    def targeted(name, data):
        """Huge values over the fields that declare sizes."""
        out = []
        if name.endswith(".pth"):
            for old, new in ((long1(24), long1(1 << 40)), (long1(22), long1(1 << 33)), (ints((2,)), ints((1 << 38,))),
                             (ints((12, 4, 2, 1)), ints((12, -4, 2, 1))), (ints((1, 4)), ints((0, 0)))):
                if old in data:
                    out.append(data.replace(old, new, 1))
        if name.endswith(".safetensors"):
            out += [struct.pack("<Q", 1 << 62) + data[8:], struct.pack("<Q", len(data)) + data[8:],
                    data.replace(b"[0,96]", b"[0,960000000]"), data.replace(b"[2,3,2,2]", b"[2000,3000,2000,2000]")]
        if name.endswith(".png"):
            out.append(data[:16] + struct.pack(">II", 20000, 20000) + data[24:])
        if name.endswith(".bmp"):
            out.append(data[:18] + struct.pack("<ii", 30000, -30000) + data[26:])
        if name.endswith(".gif"):
            out.append(data[:6] + struct.pack("<HH", 65535, 65535) + data[10:])
        return out

    def read(path):
        if path.endswith(".pth"):
            return load_torch_state_dict(path)
        if path.endswith((".h5", ".keras")):
            return read_layer_weights(path)
        if path.endswith(".safetensors"):
            try:
                return read_layer_weights(path)
            except KerasarchError as e:  # read fine; mapping torch names needs a model
                if "needs the target model" in str(e):
                    return None
                raise
        return read_image(path, channels=1 if rng.random() < 0.5 else 3)

    def on_alarm(signum, frame):
        raise TimeoutError("hang")

    signal.signal(signal.SIGALRM, on_alarm)
    outcomes = {"ok": 0, "library_error": 0, "foreign": [], "hang": []}
    cases = []
    for name, data in seeds.items():
        cases.append((name, data))
        cases += [(name, d) for d in targeted(name, data)]
        cases += [(name, mutate(data, i % 3)) for i in range(per_seed)]
    for i, (name, data) in enumerate(cases):
        path = os.path.join(folder, f"case{i:04d}_{name}")
        with open(path, "wb") as f:
            f.write(data)
        signal.alarm(10)
        try:
            read(path)
            outcomes["ok"] += 1
        except KerasarchError:
            outcomes["library_error"] += 1
        except TimeoutError:
            outcomes["hang"].append(path)
        except BaseException as e:  # noqa: BLE001
            outcomes["foreign"].append(f"{os.path.basename(path)}: {type(e).__name__}: {str(e)[:200]}")
        finally:
            signal.alarm(0)
        os.remove(path)
    outcomes["cases"] = len(cases)
    outcomes["seeds"] = len(seeds)
    print("FUZZ " + json.dumps(outcomes))
''')


def test_readers_load_or_raise_the_library_error_on_mutated_files(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": REPO}
    proc = subprocess.run(
        [sys.executable, "-c", _FUZZER, str(tmp_path), str(MUTANTS_PER_SEED), "20261202"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, f"the fuzzed readers crashed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    line = [x for x in proc.stdout.splitlines() if x.startswith("FUZZ ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(line[0][5:])
    assert result["cases"] >= 300
    assert not result["hang"], result["hang"]
    assert not result["foreign"], "\n".join(result["foreign"])
    # The seed files themselves load, and most mutants are refused with the library's error.
    assert result["ok"] >= result["seeds"] and result["library_error"] >= result["cases"] // 3, result
