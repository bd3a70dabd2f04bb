"""Issue 11: hostile files, lost data, silent wrong results — one test (or more) per finding, each reproducing it
with a file, folder or process made here. (Export's findings are in ``tests/test_export.py``; the command-line
error convention is in ``tests/test_cli_errors.py``; the fuzz of every reader in ``tests/test_fuzz.py``.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import warnings
import zipfile
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
import kerasarch.data
from finetune import FinetuneError
from finetune.extract import extract
from kerasarch.data import ImageFileError, check_image_file, from_directory, read_image
from kerasarch.errors import KerasarchError, RunLockedError
from kerasarch.training import train
from kerasarch.training.checkpoint import atomic_write_text
from kerasarch.training.guard import RunFolderLock
from kerasarch.weights import load_weights
from kerasarch.weights.torch_format import load_torch_state_dict
from tests.helpers import torch_checkpoint_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": REPO}
WEIGHT = np.arange(24, dtype="<f4")


# ------------------------------------------------------------------ 1. the torch-free .pth reader's bounds


def test_pth_writer_makes_files_the_reader_loads_exactly(tmp_path):
    """The crafted files below differ from this valid one only in the fields under test."""
    tensors = {
        "conv.weight": ("0", 24, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
        "conv.bias": ("0", 24, 22, (2,), (1,)),
        "fc.weight": ("0", 24, 0, (4, 6), (1, 4)),
    }
    for legacy in (False, True):
        path = tmp_path / f"ok{int(legacy)}.pth"
        path.write_bytes(torch_checkpoint_bytes(tensors, {"0": WEIGHT.tobytes()}, legacy=legacy))
        sd = load_torch_state_dict(path)
        np.testing.assert_array_equal(sd["conv.weight"], WEIGHT.reshape(2, 3, 2, 2))
        np.testing.assert_array_equal(sd["conv.bias"], [22.0, 23.0])
        np.testing.assert_array_equal(sd["fc.weight"], WEIGHT.reshape(6, 4).T)  # a transposed view
    # A legacy storage view reaching the storage's last element (elements 20-23) is in bounds.
    path = tmp_path / "view.pth"
    path.write_bytes(
        torch_checkpoint_bytes({"w": ("0", 24, 0, (4,), (1,), ("v", 20, 4))}, {"0": WEIGHT.tobytes()}, True)
    )
    np.testing.assert_array_equal(load_torch_state_dict(path)["w"], [20.0, 21.0, 22.0, 23.0])


# name -> (tensors, storages, legacy, what the error must say). 24 float32 elements = 96 bytes of storage.
_HOSTILE = {
    "offset_past_the_end": ({"w": ("0", 24, 30, (2,), (1,))}, False, "out of bounds"),
    "size_past_the_end": ({"w": ("0", 24, 0, (5, 6), (6, 1))}, False, "out of bounds"),
    "negative_stride": ({"w": ("0", 24, 23, (2, 3, 2, 2), (12, -4, 2, 1))}, False, "negative strides are refused"),
    "huge_size": ({"w": ("0", 24, 0, (1 << 40,), (1,))}, False, "out of bounds"),
    "size_beyond_2_40": ({"w": ("0", 24, 0, (1 << 50,), (1,))}, False, "[0, 2**40]"),
    "numel_beyond_the_entry": ({"w": ("0", 1 << 30, 0, (1 << 28,), (1,))}, False, "declares 1073741824 elements"),
    "stride_zero_bomb": ({"w": ("0", 24, 0, (1 << 28,), (0,))}, False, "more than the file's size allows"),
    "legacy_offset_past_the_end": ({"w": ("0", 24, 24, (1,), (1,))}, True, "out of bounds"),
    "legacy_view_past_the_end": ({"w": ("0", 24, 0, (5,), (1,), ("v", 20, 5))}, True, "lies outside its storage"),
    "legacy_numel_beyond_the_data": ({"w": ("0", 1 << 40, 0, (2,), (1,))}, True, "truncated or inconsistent"),
}

_CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    from kerasarch.weights.torch_format import TorchFormatError, load_torch_state_dict
    out = {}
    for path in sys.argv[1:]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            sd = load_torch_state_dict(path)
            out[path] = {"loaded": {k: [list(v.shape), float(v.sum())] for k, v in sd.items()}}
        except TorchFormatError as e:
            out[path] = {"error": str(e)}
        except BaseException as e:
            out[path] = {"foreign": f"{type(e).__name__}: {e}"}
        out[path]["grew_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    import kerasarch.data
    out["MAX_IMAGE_PIXELS"] = kerasarch.data.MAX_IMAGE_PIXELS  # set by the environment variable, at import
    print("PTH " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    """One memory-limited child reads every crafted .pth file (one TensorFlow import for all of them)."""
    tmp = tmp_path_factory.mktemp("pth")
    paths = {}
    for name, (tensors, legacy, _) in _HOSTILE.items():
        paths[name] = tmp / f"{name}.pth"
        paths[name].write_bytes(torch_checkpoint_bytes(tensors, {"0": WEIGHT.tobytes()}, legacy=legacy))
    # A 128 MB storage entry (deflated to ~130 kB) of which a tensor needs 16 bytes.
    paths["big_storage"] = tmp / "big_storage.pth"
    body = torch_checkpoint_bytes({"w": ("0", 32 << 20, 4, (4,), (1,))}, {})  # the storage entry is added below
    with (
        zipfile.ZipFile(io.BytesIO(body)) as src,
        zipfile.ZipFile(paths["big_storage"], "w", zipfile.ZIP_DEFLATED) as zf,
    ):
        for item in src.infolist():
            zf.writestr(item.filename, src.read(item.filename))
        with zf.open("archive/data/0", "w", force_zip64=True) as f:
            first = np.zeros(1 << 18, dtype="<f4")  # 1 MiB blocks, mostly zeros
            first[:8] = np.arange(8)
            f.write(first.tobytes())
            for _ in range(127):
                f.write(bytes(1 << 20))
    assert os.path.getsize(paths["big_storage"]) < 8 << 20
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, paths.values())],
        capture_output=True,
        text=True,
        env={**ENV, "KERASARCH_MAX_IMAGE_PIXELS": "1000"},
        timeout=300,
    )
    assert proc.returncode == 0, f"the reader crashed (exit {proc.returncode}): {proc.stderr[-3000:]}"
    out = json.loads([x for x in proc.stdout.splitlines() if x.startswith("PTH ")][0][4:])
    return {name: out[str(path)] for name, path in paths.items()} | {"MAX_IMAGE_PIXELS": out["MAX_IMAGE_PIXELS"]}


def test_out_of_bounds_pth_tensors_are_refused_in_a_memory_limited_child(child):
    for name, (_, _, says) in _HOSTILE.items():
        r = child[name]
        assert "error" in r, (name, r)
        assert f"{name}.pth" in r["error"] and says in r["error"], (name, r["error"])
        if "numel" not in name and "view" not in name:  # storages and their views are checked as they are
            # unpickled, before any tensor
            assert "tensor 'w'" in r["error"], (name, r["error"])


def test_pth_reader_reads_only_the_bytes_a_tensor_spans(child):
    """A 128 MB storage entry of which the tensor needs 16 bytes: reading must not grow the process by anything near
    128 MB (the old reader read the whole entry)."""
    r = child["big_storage"]
    assert r["loaded"]["w"] == [[4], 4.0 + 5 + 6 + 7] and r["grew_mb"] < 48, r


# ------------------------------------------------------------------ weights files that are corrupt are named


def test_corrupt_weights_files_raise_the_library_error_naming_the_file(tmp_path):
    model = kerasarch.build_model("lenet5")
    good = tmp_path / "good.weights.h5"
    model.save_weights(good)
    cases = {
        "truncated.weights.h5": good.read_bytes()[: os.path.getsize(good) // 2],
        "garbage.safetensors": b"\xff" * 8 + b"{not a header",
        "notzip.keras": b"PK\x03\x04 not a zip",
        "text.pth": b"hello, not a checkpoint",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(KerasarchError) as e:
            load_weights(model, str(tmp_path / name))
        assert str(tmp_path / name) in str(e.value), (name, str(e.value))
    # An HDF5 dataset that declares 4 TB and stores nothing is refused before anything is allocated.
    import h5py

    bomb = tmp_path / "bomb.weights.h5"
    with h5py.File(good, "r") as src, h5py.File(bomb, "w") as dst:
        src.copy(src["layers"], dst, "layers")
        group = dst["layers"][next(iter(dst["layers"]))]["vars"]
        del group["0"]
        group.create_dataset("0", shape=(1 << 20, 1 << 20), dtype="float32")
    with pytest.raises(KerasarchError, match=r"declares shape \(1048576, 1048576\)"):
        load_weights(model, str(bomb))


# ------------------------------------------------------------------ 4. decompression bombs


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width, height, rows=1):
    """A PNG declaring ``width``×``height`` grey pixels whose data holds only ``rows`` rows (never decoded)."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(width) for _ in range(rows)), 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", raw)
        + _chunk(b"IEND", b"")
    )


def _jpeg_header(width, height):
    """A JPEG's start, an APP0 segment and a frame header declaring ``width``×``height``, then an end marker."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof + bytes(64) + b"\xff\xd9"


def test_decompression_bombs_are_skipped_and_counted_before_decoding(tmp_path, monkeypatch):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "ok.png").write_bytes(tf.io.encode_png(tf.zeros((8, 8, 1), tf.uint8)).numpy())
    bomb = tmp_path / "a" / "bomb.png"
    bomb.write_bytes(_png(20000, 20000, rows=50))  # 400 megapixels, a few kB on disk
    jpeg_bomb = tmp_path / "b" / "bomb.jpg"
    jpeg_bomb.write_bytes(_jpeg_header(60000, 60000))
    assert os.path.getsize(bomb) < 20000
    assert "20000×20000 pixels, more than the limit of 178,956,970" in check_image_file(bomb)
    assert "60000×60000 pixels" in check_image_file(jpeg_bomb)
    for channels in (1, 3):
        with pytest.warns(UserWarning, match="skipped 2 of 4"):
            ds = from_directory(str(tmp_path), image_size=8, channels=channels)
        assert sorted(os.path.basename(p) for p, _ in ds.skipped) == ["bomb.jpg", "bomb.png"]
        assert len(list(ds)) == 2
    with pytest.raises(ImageFileError, match="bomb.png.*more than the limit"):
        read_image(bomb)
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        (tmp_path / "b" / "bomb.jpg").unlink()
        from_directory(str(tmp_path), image_size=8, validate="full")  # the full check does not decode it either
    # The limit is Pillow's and can be raised (the module attribute, or the environment variable at import).
    monkeypatch.setattr(kerasarch.data, "MAX_IMAGE_PIXELS", 10**9)
    assert check_image_file(bomb) is None


def test_the_pixel_limit_follows_the_environment_variable(child):
    assert child["MAX_IMAGE_PIXELS"] == 1000  # KERASARCH_MAX_IMAGE_PIXELS=1000 in the child's environment


# ------------------------------------------------------------------ 3 & 8. finetune extract


def _bmp(pixels):
    """A 24-bit BMP of an (H, W, 3) uint8 array (rows bottom-up, BGR, padded to 4 bytes)."""
    h, w, _ = pixels.shape
    pad = (4 - (w * 3) % 4) % 4
    rows = b"".join(pixels[y, :, ::-1].tobytes() + bytes(pad) for y in range(h - 1, -1, -1))
    header = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(rows), 0, 0, 54) + header + rows


def _bmp_folder(root, seed=0):
    rng = np.random.default_rng(seed)
    images = {}
    for c in ("cat", "dog"):
        os.makedirs(root / c, exist_ok=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            (root / c / f"{i}.bmp").write_bytes(_bmp(pixels))
            images[f"{c}/{i}.bmp"] = pixels
    return images


def test_bmp_and_gif_images_decode_to_grey_for_one_channel_models(tmp_path):
    images = _bmp_folder(tmp_path)
    pixels = images["cat/0.bmp"]
    # ITU-R 601 luma, as Pillow's convert("L"): 0.299 R + 0.587 G + 0.114 B.
    luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    grey = read_image(tmp_path / "cat" / "0.bmp", channels=1)
    assert grey.shape == (12, 12, 1)
    assert np.abs(grey[..., 0].astype(int) - np.round(luma)).max() <= 1
    np.testing.assert_array_equal(read_image(tmp_path / "cat" / "0.bmp", channels=3), pixels)
    # GIF has the same gap in TensorFlow (its decoder gives RGB only); compare with its own RGB decoding.
    from PIL import Image

    Image.fromarray(pixels).save(tmp_path / "dog" / "9.gif")
    rgb = read_image(tmp_path / "dog" / "9.gif", channels=3).astype(np.float64)
    grey = read_image(tmp_path / "dog" / "9.gif", channels=1)
    assert np.abs(grey[..., 0].astype(int) - np.round(rgb @ np.array([0.299, 0.587, 0.114]))).max() <= 1
    ds = from_directory(str(tmp_path), image_size=12, channels=1)
    assert len(list(ds)) == 7  # none dropped


def test_extract_on_bmps_with_a_grey_model_and_a_content_fingerprint(tmp_path):
    data, out = tmp_path / "photos", tmp_path / "feats"
    _bmp_folder(data)
    meta = extract("lenet5", str(data), "C5", str(out), verbose=0)  # lenet5 takes 1-channel images
    assert meta["num_extracted"] == 6 and not meta["skipped"]
    # Same names, same sizes, other pixels: the old fingerprint (names and sizes) called this "already complete".
    before = os.path.getsize(data / "dog" / "2.bmp")
    (data / "dog" / "2.bmp").write_bytes(_bmp(np.full((12, 12, 3), 7, np.uint8)))
    assert os.path.getsize(data / "dog" / "2.bmp") == before
    with pytest.raises(FinetuneError, match="holds another extraction.*dataset"):
        extract("lenet5", str(data), "C5", str(out), verbose=0)
    redone = extract("lenet5", str(data), "C5", str(out), verbose=0, overwrite=True)
    assert redone["dataset"]["fingerprint"] != meta["dataset"]["fingerprint"]


def test_extract_that_reads_no_image_fails(tmp_path):
    data = tmp_path / "photos"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        # A JPEG frame header and end marker around garbage: passes the quick check, fails to decode.
        (data / c / "x.jpg").write_bytes(
            _jpeg_header(8, 8)[:-2] + os.urandom(200).replace(b"\xff", b"\x00") + b"\xff\xd9"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FinetuneError, match="No image of folder:photos could be read"):
            extract("lenet5", str(data), "C5", str(tmp_path / "feats"), verbose=0)


def test_extract_never_deletes_or_writes_among_user_files(tmp_path):
    data, out = tmp_path / "photos", tmp_path / "mine"
    _bmp_folder(data)
    out.mkdir()
    for name in ("notes.txt", "draft.tmp-1", "shard-notes.txt"):
        (out / name).write_text("mine")
    with pytest.raises(FinetuneError, match="is not empty .* not a features directory"):
        extract("lenet5", str(data), "C5", str(out), verbose=0)
    with pytest.raises(FinetuneError, match="is not empty"):
        extract("lenet5", str(data), "C5", str(out), verbose=0, overwrite=True)
    assert sorted(os.listdir(out)) == ["draft.tmp-1", "notes.txt", "shard-notes.txt"]
    # In a features directory: its own leftovers are removed by their exact names, nothing else is.
    feats = tmp_path / "feats"
    extract("lenet5", str(data), "C5", str(feats), verbose=0)
    (feats / "notes.tmp-2").write_text("mine")
    (feats / "shard-notes.txt").write_text("mine")
    (feats / ".extract-tmp").mkdir()
    (feats / ".extract-tmp" / ".shard-00000.npz.abcd1234.tmp").write_bytes(b"half a shard")
    (feats / ".extract-tmp" / "mine.tmp").write_text("mine")
    extract("lenet5", str(data), "C5", str(feats), verbose=0, seed=1, overwrite=True)
    assert (feats / "notes.tmp-2").read_text() == "mine" and (feats / "shard-notes.txt").read_text() == "mine"
    assert os.listdir(feats / ".extract-tmp") == ["mine.tmp"]


# ------------------------------------------------------------------ 5. one writer per run folder


def _tiny_data(n=8, classes=2, size=8):
    rng = np.random.default_rng(0)
    ds = tf.data.Dataset.from_tensor_slices(
        (rng.uniform(0, 255, (n, size, size, 1)).astype("float32"), (np.arange(n) % classes).astype("int32"))
    )
    ds.class_names = [str(i) for i in range(classes)]
    ds.num_examples = n
    return ds


def _tiny_model(size=8, classes=2):
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="predictions")(x))


def test_a_second_training_into_a_locked_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from kerasarch.training.guard import RunFolderLock
        lock = RunFolderLock({str(run)!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"in use by process {holder.pid}"):
            train(_tiny_model(), _tiny_data(), epochs=1, precision="float32", out_dir=str(run), verbose=0)
        assert not (run / "recipe.json").exists()  # refused before any work
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock
        holder.wait(timeout=60)
    result = train(_tiny_model(), _tiny_data(), epochs=1, precision="float32", out_dir=str(run), verbose=0)
    assert result.stop_reason is None and (run / "model.keras").exists()
    with RunFolderLock(run):  # released when train returned
        with pytest.raises(RunLockedError):
            RunFolderLock(run).acquire()


# ------------------------------------------------------------------ 6 & 7. degenerate input, NaN weights


def test_degenerate_training_input_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    cases = [
        (dict(lr=-0.5), "lr=-0.5"),
        (dict(lr=float("nan")), "lr=nan"),
        (dict(epochs=0), "epochs=0"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(train_ds=_tiny_data(classes=1)), "a classifier needs at least 2 classes"),
        (dict(train_ds=_tiny_data(n=0)), "The training set is empty"),
        (dict(recipe={"lr": -0.5}), "Received: lr=-0.5"),
    ]
    for kwargs, says in cases:
        args = {
            "train_ds": _tiny_data(),
            "epochs": 1,
            "precision": "float32",
            "out_dir": str(out),
            "verbose": 0,
            **kwargs,
        }
        with pytest.raises(KerasarchError, match=says.replace("(", r"\(").replace(".", r"\.")):
            train(_tiny_model(), args.pop("train_ds"), **args)
        assert not (out / "recipe.json").exists(), kwargs
    for c in ("a", "b"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "photos" / c / f"{i}.png").write_bytes(tf.io.encode_png(tf.zeros((4, 4, 1), tf.uint8)).numpy())
    with pytest.raises(KerasarchError, match="strictly between 0 and 1. Received: validation_split=1.5"):
        from_directory(str(tmp_path / "photos"), validation_split=1.5, subset="both")
    with pytest.raises(KerasarchError, match="Received: image_size=0"):
        from_directory(str(tmp_path / "photos"), image_size=0)
    with pytest.raises(KerasarchError, match="leaves 0 to train on"):
        from_directory(str(tmp_path / "photos"), validation_split=0.99, subset="both")


def test_nan_weights_are_never_kept_as_the_last_good_ones_without_a_run_folder():
    """One step per epoch and a learning rate that overflows the weights in the first update (1e38 × 1e5): the
    step's loss is finite (log 2, computed before the update), the weights after it are not. The old loop kept them
    as its in-memory 'last good' copy and returned them with stop_reason None or 'nan_loss'."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1e6)(keras.layers.Flatten()(inputs))  # gradients of ~1e5 per weight
    model = keras.Model(
        inputs, keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros", name="predictions")(x)
    )
    initial = [w.copy() for w in model.get_weights()]
    result = train(
        model,
        _tiny_data(n=8),
        epochs=3,
        batch_size=8,
        lr=1e38,
        precision="float32",
        verbose=0,
        recipe={"base": "generic", "optimizer": "sgd", "momentum": 0.0},
    )
    assert result.stop_reason == "nan_loss"
    weights = result.model.get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    for w, w0 in zip(weights, initial):
        np.testing.assert_array_equal(w, w0)


# ------------------------------------------------------------------ 9. NumPy integers are integers


def test_numpy_integers_are_accepted_where_python_integers_are():
    model = kerasarch.build_model("lenet5", classes=np.int64(7), input_shape=(np.int64(32), np.int32(32), np.int64(1)))
    assert model.output_shape == (None, 7)
    with pytest.raises(ValueError, match="input height must be an integer or None. Received"):
        kerasarch.build_model("lenet5", input_shape=(32.5, 32, 1))


# ------------------------------------------------------------------ 10. permissions, and writing only where asked


def test_atomic_writes_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600
    finally:
        os.umask(old)


def test_commands_write_only_where_asked_and_keep_user_files(tmp_path, capsys):
    """train --out, compare --out, models-doc and finetune extract --out, each with a user's file where it writes;
    models-doc without --out must not rewrite the package's docs/models.md."""
    from finetune.cli import main as finetune_main
    from kerasarch.cli import main as kerasarch_main

    photos = tmp_path / "photos"
    _bmp_folder(photos)
    folders = {name: tmp_path / name for name in ("run", "cmp", "doc", "feats")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "mine.txt").write_text("mine")
    docs = os.path.join(REPO, "docs", "models.md")
    docs_before = open(docs, "rb").read(), os.path.getmtime(docs)

    assert (
        kerasarch_main(
            [
                "train",
                "lenet5",
                "--data",
                str(photos),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--precision",
                "float32",
                "--out",
                str(folders["run"]),
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    assert (folders["run"] / "model.keras").exists()
    assert (
        kerasarch_main(
            [
                "compare",
                "lenet5",
                "--out",
                str(folders["cmp"]),
                "--in-process",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--batch",
                "2",
            ]
        )
        == 0
    )
    assert (folders["cmp"] / "compare.md").exists()
    capsys.readouterr()
    assert kerasarch_main(["models-doc", "lenet5"]) == 0
    assert "| `lenet5` |" in capsys.readouterr().out
    assert kerasarch_main(["models-doc", "lenet5", "--out", str(folders["doc"] / "models.md")]) == 0
    assert (
        finetune_main(["extract", "lenet5", str(photos), "--tap", "C5", "--out", str(folders["feats"]), "--quiet"]) == 2
    )
    for folder in folders.values():
        assert (folder / "mine.txt").read_text() == "mine", folder
    assert (open(docs, "rb").read(), os.path.getmtime(docs)) == docs_before
