"""Serving-ready SavedModel exports (issue 14, and issue 11's export items): TensorFlow Serving's version layout,
the encoded-image signature fed real files, `saved_model_cli`, the warm-up file, bad requests, overwrite safety,
permissions, and every request example of docs/serving.md run against an exported model.

The references never come from the export's own code: image files are read by the library
(kerasarch.data.read_image), fitted by its evaluation fit with the model's card (kerasarch.preprocessing.fit_images)
and preprocessed with the constants written here (torchvision's Normalize mean/std; LeCun et al. 1998's -0.1..1.175),
then run through the Keras model. Tolerance (float32): probabilities within 1e-4, identical top-1.

TF Serving's REST API is emulated by `_rest_predict`, which parses the JSON payload as the REST API documents it
(tensorflow/serving g3doc/api_rest.md: "instances" row format, "inputs" columnar format, {"b64": ...} for binary
strings; "predictions" / "outputs" answers; {"error": ...} with HTTP 400) and calls the named signature.
"""

import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch.cli import main as cli
from kerasarch.data import read_image
from kerasarch.export import ExportError, export_model, export_target
from kerasarch.preprocessing import fit_images

SIZE = 32  # resnet20 (CIFAR) input size
CLASS_NAMES = [f"class_{i}" for i in range(10)]
DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "serving.md")


def _convention(mode, x):
    """Pixels in [0, 255] to the model's convention, with the published constants written out."""
    x = np.asarray(x, "float32")
    if mode == "torch":  # torchvision's transforms.Normalize for ImageNet
        return (x / 255.0 - np.array([0.485, 0.456, 0.406], "float32")) / np.array([0.229, 0.224, 0.225], "float32")
    if mode == "lecun":  # LeCun et al. 1998 §II-A: background -0.1, ink 1.175
        return x * (1.275 / 255.0) - 0.1
    raise AssertionError(f"no reference written for {mode!r}")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A ResNet-20 trained for one short epoch on 500 tinted digits in its card's convention (so that its top-1
    differs from image to image; a random network answers one class for everything), exported once with what its
    card says: ``(model, base folder, version folder)``."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(1)
    digits = load_digits()
    x = tf.image.resize(digits.images[:500, ..., None].astype("float32") * (255.0 / 16.0), (SIZE, SIZE)).numpy()
    x = np.repeat(x, 3, -1) * np.array([1.0, 0.8, 0.6], "float32")
    model = kerasarch.build_model("resnet20", classes=10)
    assert kerasarch.card_of(model).input.preprocessing == "torch"
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(_convention("torch", x), digits.target[:500], epochs=1, batch_size=100, verbose=0)
    base = tmp_path_factory.mktemp("serving") / "resnet20"
    return model, base, export_model(model, base, class_names=CLASS_NAMES)


@pytest.fixture(scope="module")
def served(exported):
    """The exported version folder, loaded once as a server would."""
    return tf.saved_model.load(exported[2])


def _encode(array, fmt):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Real image files of different sizes and formats: scikit-learn's digits (upscaled, grey and tinted RGB) as
    PNG, JPEG, BMP, GIF and RGBA PNG, and its sample photograph (``china.jpg``, 427 × 640) as shipped."""
    from sklearn.datasets import load_digits, load_sample_images

    folder = tmp_path_factory.mktemp("images")
    digits = load_digits().images.astype("float32") * (255.0 / 16.0)

    def digit(i, size, tint=None):
        x = tf.image.resize(digits[i][..., None], size, method="bilinear").numpy()
        if tint is not None:
            x = x * np.array(tint, "float32") + 30.0
        return np.clip(np.round(x), 0, 255).astype("uint8")

    files = {
        "digit_grey.png": _encode(digit(0, (20, 20))[..., 0], "PNG"),
        "digit_rgb.png": _encode(digit(1, (45, 37), (0.9, 0.5, 0.2)), "PNG"),
        "digit.jpg": _encode(digit(2, (64, 64), (0.3, 0.8, 0.6)), "JPEG"),
        "digit.bmp": _encode(digit(3, (50, 70), (0.7, 0.7, 0.2)), "BMP"),
        "digit.gif": _encode(digit(4, (40, 40), (0.2, 0.4, 0.9)), "GIF"),
        "digit_rgba.png": _encode(
            np.concatenate([digit(5, (48, 48), (0.5, 0.9, 0.4)), np.full((48, 48, 1), 128, "uint8")], -1), "PNG"
        ),
    }
    with open(load_sample_images().filenames[0], "rb") as f:
        files["china.jpg"] = f.read()
    paths = {}
    for name, data in files.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


def _library_probabilities(model, images):
    """The Keras model on ``images`` (file paths, read by the library, or uint8 arrays) fitted by the library's
    evaluation fit with the model's card, in the convention written above."""
    config = kerasarch.card_of(model).input
    arrays = [read_image(i, config.channels) if isinstance(i, (str, os.PathLike)) else i for i in images]
    fitted = np.stack([np.asarray(fit_images(a, config)) for a in arrays])
    return np.asarray(model(_convention(config.preprocessing, fitted), training=False))


def _files_bytes(paths):
    return [p.read_bytes() for p in paths]


def _check(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1), err_msg=f"{what}: top-1 differs")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=what)


def test_serving_default_on_real_files_equals_the_keras_model(exported, served, image_files):
    model, base, path = exported
    assert path == str(base / "1")
    serve = served.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["image_bytes"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    contents = _files_bytes(image_files.values())
    got = serve(image_bytes=tf.constant(contents))
    want = _library_probabilities(model, image_files.values())
    assert len(set(want.argmax(-1))) >= 2, "the test model should not answer the same class for every image"
    _check(got["probabilities"], want, "serving_default")
    top = np.argsort(-want, axis=-1)[:, :5]
    np.testing.assert_array_equal(got["top5_indices"].numpy()[:, 0], top[:, 0])
    np.testing.assert_allclose(got["top5_probabilities"].numpy(), np.take_along_axis(want, top, -1), atol=1e-4)
    assert [row[0].decode() for row in got["top5_classes"].numpy()] == [CLASS_NAMES[i] for i in top[:, 0]]
    # One image at a time gives the same answer as the batch.
    _check(serve(image_bytes=tf.constant(contents[-1:]))["probabilities"], want[-1:], "single photo")


def test_predict_images_takes_grey_rgb_and_rgba_pixels(exported, served):
    model = exported[0]
    predict = served.signatures["predict_images"]
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 40, 24, 3), dtype=np.uint8)
    want = _library_probabilities(model, list(rgb))
    _check(predict(images=tf.constant(rgb))["probabilities"], want, "predict_images RGB")
    rgba = np.concatenate([rgb, np.full((3, 40, 24, 1), 7, np.uint8)], -1)
    _check(predict(images=tf.constant(rgba))["probabilities"], want, "predict_images RGBA")
    grey = rgb[..., :1]
    want_grey = _library_probabilities(model, list(np.repeat(grey, 3, -1)))
    _check(predict(images=tf.constant(grey))["probabilities"], want_grey, "predict_images grey")
    grey_alpha = np.concatenate([grey, np.full_like(grey, 200)], -1)
    _check(predict(images=tf.constant(grey_alpha))["probabilities"], want_grey, "predict_images grey + alpha")
    for bad, message in [
        (np.zeros((0, SIZE, SIZE, 3), np.uint8), "batch of 0"),
        (np.zeros((1, SIZE, SIZE, 5), np.uint8), "1, 2, 3 or 4 channels"),
        (np.zeros((1, 0, SIZE, 3), np.uint8), "at least one pixel"),
    ]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            predict(images=tf.constant(bad))


def test_saved_model_cli_run_with_input_exprs(exported, image_files, tmp_path):
    model, _, path = exported
    cli_bin = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli_bin):
        pytest.skip("saved_model_cli (installed with tensorflow) not found beside the interpreter")
    small_photo = tf.io.encode_jpeg(
        tf.cast(tf.image.resize(tf.io.decode_jpeg(image_files["china.jpg"].read_bytes()), (48, 72)), tf.uint8)
    ).numpy()
    (tmp_path / "small.jpg").write_bytes(small_photo)
    paths = [image_files["digit_grey.png"], image_files["digit.jpg"], tmp_path / "small.jpg"]
    contents = _files_bytes(paths)
    # A Python literal (the flag is read with ast.literal_eval); every byte escaped, since ';' separates inputs.
    literal = "[" + ", ".join("b'" + "".join(f"\\x{byte:02x}" for byte in c) + "'" for c in contents) + "]"
    result = subprocess.run(
        [
            cli_bin,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            f"image_bytes={literal}",
            "--outdir",
            str(tmp_path / "cli_out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probs = np.load(tmp_path / "cli_out" / "probabilities.npy")
    _check(probs, _library_probabilities(model, paths), "saved_model_cli")
    np.testing.assert_array_equal(np.load(tmp_path / "cli_out" / "top5_indices.npy")[:, 0], probs.argmax(-1))


def test_warmup_file_parses_and_replays(exported, served):
    from tensorflow_serving.apis import prediction_log_pb2

    _, _, path = exported
    warmup = os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(warmup)]
    assert 1 <= len(logs) <= 1000  # TF Serving replays at most 1,000 records
    signatures = []
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        signatures.append(request.model_spec.signature_name)
        inputs = {name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()}
        if "image_bytes" in inputs:  # real images: each decodes
            for contents in inputs["image_bytes"].numpy():
                assert tf.io.decode_image(contents, expand_animations=False).shape[0] >= 20
        out = served.signatures[request.model_spec.signature_name](**inputs)
        assert out["probabilities"].shape == (len(next(iter(inputs.values()))), 10)
    assert set(signatures) == {"serving_default", "predict_images"}


def _tree_hashes(folder):
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            hashes[os.path.relpath(full, folder)] = (
                hashlib.sha256(open(full, "rb").read()).hexdigest(),
                os.stat(full).st_mtime_ns,
            )
    return hashes


def _cli(*args):
    return cli(["export", *map(str, args)])


def test_exporting_twice_adds_a_version_and_leaves_the_first_untouched(tmp_path, capsys):
    base = tmp_path / "models" / "resnet20"
    old_umask = os.umask(0o027)
    try:
        assert _cli("resnet20", "--format", "saved_model", "--out", base, "--no-warmup") == 0
    finally:
        os.umask(old_umask)
    before = _tree_hashes(base / "1")
    assert "saved_model.pb" in before
    # Folders and files honour the umask (0o027: group may read, others nothing), not mkdtemp's 0700.
    assert os.stat(base / "1").st_mode & 0o777 == 0o750
    assert os.stat(base / "1" / "saved_model.pb").st_mode & 0o777 == 0o640
    assert _cli("resnet20", "--format", "saved_model", "--out", base, "--no-warmup") == 0
    assert sorted(os.listdir(base)) == ["1", "2"]
    assert _tree_hashes(base / "1") == before
    assert "--model_base_path=" in capsys.readouterr().out
    # An existing version is replaced only when asked.
    assert _cli("resnet20", "--format", "saved_model", "--out", base, "--version", 2, "--no-warmup") == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(ExportError, match="positive integer"):
        export_target(base, version=0)


def test_overwrite_replaces_only_earlier_exports(tmp_path, capsys, monkeypatch):
    user = tmp_path / "my_project"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    # Not an export: refused with --overwrite, for every format, and the user's file survives.
    for fmt in ("saved_model", "tflite"):
        assert _cli("resnet20", "--format", fmt, "--out", user, "--overwrite", "--input-size", SIZE) == 2
        assert "not" in capsys.readouterr().err
        assert os.listdir(user) == ["notes.txt"] and (user / "notes.txt").read_text() == "mine"
    # A version folder holding something else is not replaced either.
    base = tmp_path / "base"
    (base / "1").mkdir(parents=True)
    (base / "1" / "data.csv").write_text("a,b")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_target(base, version=1, overwrite=True)
    # A file is never a destination.
    with pytest.raises(ExportError, match="not a folder"):
        export_target(user / "notes.txt")
    # An export's file names beside the user's files do not make a folder an export (the TFLite/ONNX marker, a
    # flat SavedModel): refused, nothing touched.
    marked, mixed = tmp_path / "marked", tmp_path / "mixed"
    for folder, name in ((marked, "kerasarch_export.json"), (mixed, "saved_model.pb")):
        folder.mkdir()
        (folder / name).write_text("{}")
        (folder / "thesis.tex").write_text("mine")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_target(marked, format="tflite", overwrite=True)
    with pytest.raises(ExportError, match="not recognisably an earlier export"):
        export_target(mixed, overwrite=True)
    assert sorted(os.listdir(marked)) == ["kerasarch_export.json", "thesis.tex"]
    assert sorted(os.listdir(mixed)) == ["saved_model.pb", "thesis.tex"]
    # An export in the flat layout (before version folders) is replaced by the versioned one only when asked.
    flat = tmp_path / "flat"
    (flat / "variables").mkdir(parents=True)
    (flat / "saved_model.pb").write_bytes(b"old")
    assert _cli("resnet20", "--format", "saved_model", "--out", flat, "--no-warmup") == 2
    assert "flat layout" in capsys.readouterr().err
    assert _cli("resnet20", "--format", "saved_model", "--out", flat, "--overwrite", "--no-warmup") == 0
    assert os.listdir(flat) == ["1"] and (flat / "1" / "saved_model.pb").read_bytes() != b"old"
    # --out . (the current folder) is refused even when it holds an earlier export.
    exported_tflite = tmp_path / "tfl"
    exported_tflite.mkdir()
    (exported_tflite / "kerasarch_export.json").write_text("{}")
    (exported_tflite / "model.tflite").write_bytes(b"old")
    monkeypatch.chdir(exported_tflite)
    assert _cli("resnet20", "--format", "tflite", "--out", ".", "--overwrite", "--input-size", SIZE) == 2
    assert "current folder" in capsys.readouterr().err
    assert sorted(os.listdir(exported_tflite)) == ["kerasarch_export.json", "model.tflite"]
    # ... and so is a folder that contains the current one.
    (exported_tflite / "sub").mkdir()
    monkeypatch.chdir(exported_tflite / "sub")
    with pytest.raises(ExportError, match="current folder or contains it"):
        export_target(exported_tflite, format="tflite", overwrite=True)


def test_bad_images_fail_their_request_and_the_next_one_is_served(exported, served, image_files):
    model = exported[0]
    serve = served.signatures["serving_default"]
    good = image_files["digit.jpg"].read_bytes()
    want = _library_probabilities(model, [image_files["digit.jpg"]])
    text = b"kerasarch: this is a text file, not an image\n"
    for bad in (b"", good[: len(good) // 2], text):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"Could not decode image\(s\) \[1\]"):
            serve(image_bytes=tf.constant([good, bad]))
        _check(serve(image_bytes=tf.constant([good]))["probabilities"], want, "request after a bad one")
    with pytest.raises(tf.errors.InvalidArgumentError, match="batch of 0"):
        serve(image_bytes=tf.constant([], tf.string))


# ------------------------------------------------------------------------ docs/serving.md, run for real


def _rest_values(value):
    """JSON values as TF Serving's REST API reads them: {"b64": ...} objects are binary strings."""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_rest_values(v) for v in value]
    return value


def _json_values(array):
    array = np.asarray(array)
    if array.dtype.kind in "SO":
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(array).tolist()
    return array.tolist()


def _rest_predict(loaded, url, body):
    """One REST ``:predict`` call (URL and JSON body) answered through the SavedModel's signatures, with TF
    Serving's request and response formats. Returns ``(http_status, json_answer)``."""
    match = re.fullmatch(r"https?://[^/]+/v1/models/([^/:]+)(?:/versions/(\d+))?:predict", url)
    if not match:
        return 404, {"error": f"Malformed request: POST {url}"}
    signature = loaded.signatures[body.get("signature_name", "serving_default")]
    names = list(signature.structured_input_signature[1])
    specs = signature.structured_input_signature[1]
    if "instances" in body:
        rows = body["instances"]
        if len(names) == 1 and not (rows and isinstance(rows[0], dict) and set(rows[0]) == set(names)):
            inputs = {names[0]: _rest_values(rows)}
        else:
            inputs = {n: [_rest_values(row[n]) for row in rows] for n in names}
    else:
        columns = body["inputs"]
        inputs = (
            {n: _rest_values(columns[n]) for n in names}
            if isinstance(columns, dict) and set(columns) == set(names)
            else {names[0]: _rest_values(columns)}
        )
    try:
        out = signature(**{n: tf.constant(v, dtype=specs[n].dtype) for n, v in inputs.items()})
    except tf.errors.InvalidArgumentError as e:
        return 400, {"error": e.message}
    out = {k: _json_values(v.numpy()) for k, v in out.items()}
    if "instances" in body:
        batch = len(next(iter(out.values())))
        return 200, {"predictions": [{k: v[i] for k, v in out.items()} for i in range(batch)]}
    return 200, {"outputs": out}


def _doc_blocks(section, language):
    """The fenced ``language`` code blocks under the level-2 heading ``section`` of docs/serving.md."""
    text = open(DOCS).read()
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", part, re.S)


@pytest.fixture
def client_folder(image_files, tmp_path, monkeypatch):
    """A working folder with the docs' example files: cat.jpg (the photograph) and dog.png (a digit)."""
    (tmp_path / "cat.jpg").write_bytes(image_files["china.jpg"].read_bytes())
    (tmp_path / "dog.png").write_bytes(image_files["digit_rgb.png"].read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _want_for_docs(model):
    return _library_probabilities(model, [os.path.abspath("cat.jpg"), os.path.abspath("dog.png")])


def test_docs_curl_request(exported, served, client_folder):
    model = exported[0]
    (block,) = _doc_blocks("REST with curl", "bash")
    # The block as written, with curl recording its arguments instead of connecting.
    script = 'curl() { printf "%s\\n" "$@" > curl_args; }\n' + block
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, cwd=client_folder, timeout=60)
    args = open("curl_args").read().split("\n")
    assert args[args.index("-X") + 1] == "POST"
    body = json.load(open(args[args.index("-d") + 1].lstrip("@")))
    status, answer = _rest_predict(served, args[-2], body)
    assert status == 200, answer
    want = _want_for_docs(model)[:1]
    _check([p["probabilities"] for p in answer["predictions"]], want, "curl example")
    assert answer["predictions"][0]["top5_classes"][0] == CLASS_NAMES[want[0].argmax()]


class _Response:
    def __init__(self, status, answer):
        self.status_code, self._answer = status, answer

    def json(self):
        return self._answer

    def raise_for_status(self):
        if self.status_code != 200:
            raise RuntimeError(f"HTTP {self.status_code}: {self._answer}")


def test_docs_python_rest_requests(exported, served, client_folder, monkeypatch, capsys):
    import requests

    model = exported[0]
    calls = []

    def post(url, json=None, timeout=None):
        calls.append(json)
        return _Response(*_rest_predict(served, url, json))

    monkeypatch.setattr(requests, "post", post)
    row, columnar = _doc_blocks("REST from Python (base64)", "python")
    namespace = {}
    exec(compile(row, "docs/serving.md (REST, row format)", "exec"), namespace)
    want = _want_for_docs(model)
    printed = capsys.readouterr().out.split("\n")
    assert printed[0].split()[:2] == ["cat.jpg", CLASS_NAMES[want[0].argmax()]]
    assert printed[1].split()[:2] == ["dog.png", CLASS_NAMES[want[1].argmax()]]
    assert abs(float(printed[0].split()[2]) - want[0].max()) <= 1e-3
    exec(compile(columnar, "docs/serving.md (REST, columnar format)", "exec"), namespace)
    assert "inputs" in calls[-1]
    assert capsys.readouterr().out.strip().startswith(f"[['{CLASS_NAMES[want[0].argmax()]}'")


def test_docs_grpc_request(exported, served, client_folder, monkeypatch, capsys):
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    model = exported[0]

    class Stub:
        """PredictionService.Predict answered through the SavedModel (what the server does with the request)."""

        def __init__(self, channel):
            pass

        def Predict(self, request, timeout=None):
            assert request.model_spec.name == "resnet50"
            signature = served.signatures[request.model_spec.signature_name or "serving_default"]
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            response = predict_pb2.PredictResponse()
            for name, value in signature(**inputs).items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

    monkeypatch.setattr(grpc, "insecure_channel", lambda target: None)
    monkeypatch.setattr(prediction_service_pb2_grpc, "PredictionServiceStub", Stub)
    (block,) = _doc_blocks("gRPC with tensorflow-serving-api", "python")
    exec(compile(block, "docs/serving.md (gRPC)", "exec"), {})
    want = _want_for_docs(model)
    printed = capsys.readouterr().out.split("\n")
    assert printed[0].split()[:2] == ["cat.jpg", CLASS_NAMES[want[0].argmax()]]
    assert printed[1].split()[:2] == ["dog.png", CLASS_NAMES[want[1].argmax()]]


def test_rest_errors_are_http_400_with_the_message(served):
    status, answer = _rest_predict(
        served,
        "http://localhost:8501/v1/models/m:predict",
        {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]},
    )
    assert status == 400 and "Could not decode image(s) [0]" in answer["error"]


def test_grey_model_serves_grey_and_colour_files(image_files, tmp_path):
    """LeNet-5 (one channel, LeCun's convention): files of every format decoded to grey as the library reads them,
    a 28 × 28 digit padded into the 32 × 32 field as the card's evaluation fit does (LeCun et al. 1998 §III-A)."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(2)
    model = kerasarch.build_model("lenet5")
    config = kerasarch.card_of(model).input
    assert config.channels == 1 and config.preprocessing == "lecun"
    path = export_model(model, tmp_path / "lenet5", warmup=False)
    digit28 = tf.image.resize(load_digits().images[7][..., None] * (255.0 / 16.0), (28, 28)).numpy()
    (tmp_path / "digit28.png").write_bytes(_encode(np.clip(np.round(digit28[..., 0]), 0, 255).astype("uint8"), "PNG"))
    # The library reads no GIF in one channel (TensorFlow's GIF decoder gives RGB); serving converts it by luma.
    paths = [p for name, p in image_files.items() if not name.endswith(".gif")] + [tmp_path / "digit28.png"]
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(_files_bytes(paths)))["probabilities"]
    want = _library_probabilities(model, paths)
    assert len(set(want.argmax(-1))) >= 2
    _check(got, want, "LeNet-5 serving_default")
    rgb = read_image(image_files["digit.gif"], 3).astype("float32")
    luma = np.round(rgb @ np.array([0.2989, 0.5870, 0.1140], "float32"))[..., None].astype("uint8")
    got = loaded.signatures["serving_default"](image_bytes=tf.constant([image_files["digit.gif"].read_bytes()]))
    _check(got["probabilities"], _library_probabilities(model, [luma]), "LeNet-5, GIF")
    grey = read_image(tmp_path / "digit28.png", 1)[None]
    _check(
        loaded.signatures["predict_images"](images=tf.constant(grey))["probabilities"],
        want[-1:],
        "LeNet-5 predict_images, one channel",
    )


# ------------------------------------------------------------------------ issue 12: serving precision and speed


def test_files_with_bytes_after_their_end_marker_are_served(exported, served, image_files):
    """Whole JPEG/PNG/GIF files skip the per-image decodability pass; a file that fails that quick test but decodes
    (bytes after the JPEG end marker, a BMP) is still served, equal to the library's reading."""
    model = exported[0]
    serve = served.signatures["serving_default"]
    good = image_files["digit.jpg"].read_bytes()
    bmp = image_files["digit.bmp"].read_bytes()
    want = _library_probabilities(model, [image_files["digit.jpg"], image_files["digit.jpg"], image_files["digit.bmp"]])
    got = serve(image_bytes=tf.constant([good, good + b"\0\0trailing", bmp]))["probabilities"]
    _check(got, want, "JPEG with trailing bytes, BMP")


@pytest.mark.parametrize("fit", ["resize_crop", "resize"])
def test_onnx_export_keeps_the_antialiased_fit(fit, tmp_path):
    """A card with an antialiased resize (ResNet-50's torchvision transform: shorter side to 232, antialiased
    bilinear, centre crop; here to 36 for a 32 × 32 input) exports valid ONNX (TensorFlow's ScaleAndTranslate has no
    tf2onnx conversion; the export maps it to ONNX Resize with antialias), equal in onnxruntime to the Keras model on
    the library's fit, for photographs scaled down and up. The model is linear in every pixel (a softmax over a
    random dense layer), so a fit that differs anywhere moves its probabilities; ``resize`` keeps the borders, where
    the antialiasing filter is renormalised."""
    import onnxruntime as ort  # the dev extra installs the export extra: a broken install fails, never skips
    import tf2onnx  # noqa: F401
    from sklearn.datasets import load_sample_images

    keras.utils.set_random_seed(5)
    inputs = keras.Input((32, 32, 3))
    dense = keras.layers.Dense(
        10, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=0.05), name="predictions"
    )
    model = keras.Model(inputs, dense(keras.layers.Flatten(name="flatten")(inputs)), name="linear")
    config = kerasarch.InputConfig(
        preprocessing="torch",
        size=(32, 32),
        channels=3,
        fit=fit,
        resize_size=36 if fit == "resize_crop" else None,
        antialias=True,
    )
    model = kerasarch.with_card(model, kerasarch.ModelCard(input=config))
    out = export_model(model, tmp_path / "onnx", format="onnx")
    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    photo = load_sample_images().images[1]
    for size in ((97, 75), (23, 29)):
        images = tf.cast(tf.round(tf.image.resize(photo[None, 100:300, 200:400], size, antialias=True)), tf.uint8)
        got = session.run(None, {"images": images.numpy()})[0]
        want = _library_probabilities(model, list(images.numpy()))
        _check(got, want, f"ONNX, antialiased {fit} from {size}")


def test_bfloat16_export_agrees_with_float32_on_real_digits(tmp_path):
    """``precision="bfloat16"`` (issue 12): a LeNet-5 trained briefly on scikit-learn's handwritten digits, exported
    in float32 and bfloat16, gives the same top-1 on >= 99% of 500 held-out real digits (issue 12's bar), while its
    probabilities do differ (the bfloat16 graph really computes in bfloat16). The export records its precision."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(3)
    digits = load_digits()
    pixels = tf.image.resize(digits.images[..., None] * (255.0 / 16.0), (28, 28)).numpy()
    pixels = np.clip(np.round(pixels), 0, 255).astype("uint8")
    model = kerasarch.build_model("lenet5")
    config = kerasarch.card_of(model).input
    train = _convention("lecun", fit_images(pixels[:-500], config))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(train, digits.target[:-500], epochs=4, batch_size=64, verbose=0)
    probabilities = {}
    for precision in ("float32", "bfloat16"):
        path = export_model(model, tmp_path / precision, precision=precision, warmup=False)
        with open(os.path.join(path, "assets.extra", "kerasarch_export.json")) as f:
            assert json.load(f)["precision"] == precision
        predict = tf.saved_model.load(path).signatures["predict_images"]
        probabilities[precision] = predict(images=tf.constant(pixels[-500:]))["probabilities"].numpy()
    top32, top16 = probabilities["float32"].argmax(-1), probabilities["bfloat16"].argmax(-1)
    assert (top32 == digits.target[-500:]).mean() >= 0.8, "the float32 model is not trained: the check would be void"
    assert (top16 == top32).mean() >= 0.99
    assert np.abs(probabilities["bfloat16"] - probabilities["float32"]).max() > 1e-4, "bfloat16 export is float32"


def test_precision_bad_input():
    model = kerasarch.build_model("lenet5")
    with pytest.raises(ExportError, match=r"float32, bfloat16\. Received: precision='float16'"):
        export_model(model, "/tmp/never", precision="float16")
    with pytest.raises(ExportError, match=r"SavedModel only.*Received: format='onnx', precision='bfloat16'"):
        export_model(model, "/tmp/never", format="onnx", precision="bfloat16")
    assert _cli("lenet5", "--format", "tflite", "--precision", "bfloat16", "--out", "/tmp/never") == 2


def test_bfloat16_export_of_a_batch_norm_network_agrees_with_float32(tmp_path):
    """The same bar for a network with batch normalisation (its statistics kept float32 in the bfloat16 export): a
    small convolution + batch-norm network trained briefly on 16 × 16 digits, exported with ``preprocessing="unit"``
    (no model card), on 500 held-out real digits."""
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(4)
    digits = load_digits()
    pixels = tf.image.resize(digits.images[..., None] * (255.0 / 16.0), (16, 16)).numpy()
    pixels = np.clip(np.round(pixels), 0, 255).astype("uint8")
    inputs = keras.Input((16, 16, 1))
    x = inputs
    for i, filters in enumerate((16, 32)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(keras.layers.ReLU(name=f"relu{i}")(x))
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="predictions")(x), name="bn_cnn")
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(pixels[:-500] / 255.0, digits.target[:-500], epochs=5, batch_size=64, verbose=0)
    tops = {}
    for precision in ("float32", "bfloat16"):
        path = export_model(model, tmp_path / precision, preprocessing="unit", precision=precision, warmup=False)
        predict = tf.saved_model.load(path).signatures["predict_images"]
        tops[precision] = predict(images=tf.constant(pixels[-500:]))["probabilities"].numpy().argmax(-1)
    assert (tops["float32"] == digits.target[-500:]).mean() >= 0.8, "the float32 model is not trained: void check"
    assert (tops["bfloat16"] == tops["float32"]).mean() >= 0.99


def test_an_imagenet_variants_export_crops_as_torchvision_does(tmp_path):
    """An ImageNet variant's card carries torchvision's evaluation transform (the shorter side resized to
    ``resize_size``, then the centre crop; 256 -> 224 scaled to the input size) and its export applies it. The image
    here already has the resize size as its shorter side, so the resize is the identity and the reference is the
    crop cut with numpy at transforms.CenterCrop's offsets (round((H - h) / 2)), in torchvision's Normalize."""
    model = kerasarch.build_model("squeezenet1_1", input_shape=(64, 64, 3))
    config = kerasarch.card_of(model).input
    assert (config.fit, config.size, config.resize_size) == ("resize_crop", (64, 64), round(64 * 256 / 224))
    image = np.random.default_rng(3).integers(0, 256, (73, 120, 3), dtype=np.uint8)  # shorter side 73
    crop = image[4:68, 28:92]  # top round(9 / 2) = 4 (half to even), left (120 - 64) / 2 = 28
    out = export_model(model, tmp_path / "sq", tap="conv1", warmup=False)
    served = tf.saved_model.load(out).signatures["features"](images=tf.constant(image[None]))["features"]
    tap = keras.Model(model.input, model.get_layer("conv1_relu").output)
    want = np.asarray(tap(_convention("torch", crop[None]), training=False))
    assert np.abs(want).max() > 0.1, "degenerate reference"
    np.testing.assert_allclose(served, want, rtol=1e-4, atol=1e-4)
