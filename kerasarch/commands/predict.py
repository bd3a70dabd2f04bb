"""``kerasarch predict MODEL_OR_FILE IMAGES_OR_DIR``: the top-k classes of each image, with class names.

``MODEL_OR_FILE`` is a registry name (with ``--weights``, default ``imagenet``), a ``.keras`` file or a run folder
(``kerasarch train --out`` / ``finetune train --out``). Each image goes through the model's evaluation transform —
what its checkpoint was evaluated with (an ImageNet checkpoint: resize the shorter side, centre crop), or what its
training run recorded — and its preprocessing. Corrupt or unreadable files are reported and skipped.

A table on a terminal; CSV on standard output otherwise; ``--out FILE.csv`` or ``FILE.json`` writes a file::

    kerasarch predict resnet50 --weights imagenet photos/ --top 5
    kerasarch predict runs/flowers photos/ --out predictions.csv
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from typing import Any

__all__ = [
    "InferenceModel",
    "load_for_inference",
    "cli_weights",
    "list_images",
    "predict_files",
    "progress_bar",
    "register",
    "run",
]


@dataclasses.dataclass
class InferenceModel:
    """A model ready to classify images, with the input preparation its card prescribes.

    Attributes:
        model: the Keras model (its first output is used).
        input: the :class:`~kerasarch.card.InputConfig` images are prepared with (fit, then pixel convention).
        class_names: one name per output, or ``None`` when unknown.
        class_ids: other spellings of the same classes (ImageNet: WordNet ids, curated names) accepted when
            matching class folders.
        description: where the model, its weights and its input convention came from.
    """

    model: Any
    input: Any
    class_names: list[str] | None
    class_ids: list[list[str]] = dataclasses.field(default_factory=list)
    description: str = ""

    @property
    def input_shape(self):
        shape = self.model.input_shape
        shape = shape[0] if isinstance(shape, list) else shape
        return tuple(shape[1:])

    @property
    def num_classes(self):
        return int(self.model.outputs[0].shape[-1])

    def transform(self, image):
        """One ``(h, w, c)`` image in ``[0, 255]`` -> the model's input
        (:func:`kerasarch.preprocessing.prepare_images`)."""
        from kerasarch.preprocessing import prepare_images

        return prepare_images(image, self.input)

    def predict(self, images):
        """Probabilities ``(N, classes)`` for a batch of prepared images."""
        import numpy as np

        out = self.model(images, training=False)
        if isinstance(out, dict):
            out = out.get("predictions", next(iter(out.values())))
        elif isinstance(out, (list, tuple)):
            out = out[0]
        probs = np.asarray(out, dtype="float32")
        if probs.min() < 0 or not np.allclose(probs.sum(-1), 1.0, atol=1e-3):  # logits
            probs = np.exp(probs - probs.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
        return probs


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _imagenet_labels(num_classes):
    """ImageNet's names and other spellings for a 1,000-class output, else ``(None, [])``."""
    if num_classes != 1000:
        return None, []
    from kerasarch.weights.classes import imagenet_class_names

    return imagenet_class_names(), [imagenet_class_names("wnid"), imagenet_class_names("clean")]


def _labels(model, card, pretrained):
    outputs = int(model.outputs[0].shape[-1])
    names = list(card.class_names) if card is not None and card.class_names else None
    if names is not None and len(names) != outputs:
        names = None
    if names is None and not pretrained:
        return None, []
    imagenet, ids = _imagenet_labels(outputs)
    if names is None:
        return imagenet, ids
    return names, ids if imagenet is not None and names == imagenet else []


def _override(config, preprocessing, where):
    if preprocessing is None or preprocessing == config.preprocessing:
        return config
    print(f"kerasarch: --preprocessing {preprocessing} overrides {where}'s {config.preprocessing}", file=sys.stderr)
    return config.replace(preprocessing=preprocessing)


def _load_keras_file(path):
    import keras

    import kerasarch  # noqa: F401  (registers kerasarch's layers and the card before loading)

    try:
        return keras.models.load_model(path, compile=False)
    except (ValueError, OSError, KeyError, TypeError) as e:
        raise ValueError(f"Could not load {path!r} as a Keras model: {e}") from e


def load_for_inference(
    model_or_file: str,
    weights: str | None = "imagenet",
    *,
    preprocessing: str | None = None,
    input_size: int | None = None,
) -> InferenceModel:
    """Loads a registry model with ``weights``, a ``.keras`` file or a run folder, with the input preparation and
    class names its card gives.

    A model built by kerasarch (or saved from one) carries its card: the checkpoint's evaluation transform and
    pixel convention, its class names. A ``.keras`` file without a card falls back on the ``recipe.json``
    (``kerasarch train``) or ``result.json`` (``finetune train``) beside it, else needs ``preprocessing``.

    Args:
        model_or_file: a registry name, a ``.keras`` file or a run folder holding ``model.keras``.
        weights: for a registry name, what ``build_model`` takes (``imagenet``, ``imagenet:torchvision``, a
            ``.h5``/``.pth``/``.safetensors``/``.keras`` file); ignored for files.
        preprocessing: overrides the card's pixel convention (said on stderr).
        input_size: for a registry name, build for ``input_size`` × ``input_size`` inputs.
    """
    from kerasarch.card import PREPROCESSING_MODES, card_of, has_card

    if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
        raise ValueError(
            f"--preprocessing must be one of {', '.join(PREPROCESSING_MODES)}. Received: {preprocessing!r}"
        )
    path = os.fspath(model_or_file)
    if os.path.isdir(path) or path.endswith(".keras"):
        keras_file = os.path.join(path, "model.keras") if os.path.isdir(path) else path
        if not os.path.isfile(keras_file):
            raise FileNotFoundError(
                f"{keras_file!r} not found: MODEL_OR_FILE must be a registry name, a .keras file "
                f"or a run folder holding model.keras. Received: {model_or_file!r}"
            )
        model = _load_keras_file(keras_file)
        if has_card(model):
            card = card_of(model)
            names, ids = _labels(model, card, pretrained=bool(card.weights))
            config = _override(card.input, preprocessing, "the card")
            return InferenceModel(model, config, names, ids, f"{keras_file} ({_describe(config)})")
        return _from_run_folder(model, keras_file, preprocessing)
    from kerasarch.registry import get_spec

    spec = get_spec(path)
    kwargs = {"input_shape": (input_size, input_size, spec.input_shape[-1])} if input_size else {}
    model = spec.build(weights=weights, **kwargs)
    card = card_of(model)
    names, ids = _labels(model, card, pretrained=weights is not None)
    config = _override(card.input, preprocessing, "the card")
    source = ""
    if card.weights:
        source = ", ".join(str(card.weights[k]) for k in ("source", "checkpoint", "file") if card.weights.get(k))
    what = f"{spec.name} with weights {weights}" + (f" ({source})" if source else "")
    return InferenceModel(model, config, names, ids, f"{what}; {_describe(config)}")


def cli_weights(model_or_file: str, weights: str | None) -> str | None:
    """The ``--weights`` of ``predict`` / ``evaluate``: ``imagenet`` when not given for a registry name; refused for
    a ``.keras`` file or run folder, which holds its own weights."""
    path = os.fspath(model_or_file)
    if os.path.isdir(path) or path.endswith(".keras"):
        if weights is not None:
            raise ValueError(
                f"--weights applies to a registry name; {path!r} is a .keras file or run folder that holds its own "
                f"weights. Received: --weights {weights}"
            )
        return None
    return "imagenet" if weights is None else weights


def _describe(config):
    fit = config.fit + (f" {config.resize_size}" if config.fit == "resize_crop" else "")
    size = "x".join(str(s) for s in config.size) if config.size else "any"
    return f"input {size}x{config.channels}, fit {fit}, preprocessing {config.preprocessing}"


def _from_run_folder(model, keras_file, preprocessing):
    from kerasarch.card import InputConfig

    folder = os.path.dirname(os.path.abspath(keras_file))
    recipe = _read_json(os.path.join(folder, "recipe.json")) or {}
    result = _read_json(os.path.join(folder, "result.json")) or {}
    mode = preprocessing or recipe.get("preprocessing") or result.get("preprocessing")
    if mode is None:
        raise ValueError(
            f"{keras_file!r} has no kerasarch model card and no recipe.json or result.json beside it "
            f"saying how its inputs are prepared: pass --preprocessing (caffe, torch, tf, unit, lecun or "
            f"none)."
        )
    shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    config = InputConfig(preprocessing=mode, size=tuple(shape[1:3]), channels=int(shape[3]), fit="auto")
    names = result.get("class_names")
    return InferenceModel(model, config, names, [], f"{keras_file} (no card; {_describe(config)})")


def list_images(target: str) -> list[str]:
    """The image files of ``target``: the file itself, or every image under the folder (sorted, recursive)."""
    from kerasarch.data import IMAGE_EXTENSIONS

    if os.path.isfile(target):
        return [target]
    if not os.path.isdir(target):
        raise FileNotFoundError(f"No such image file or folder: {target!r}")
    found = []
    for dirpath, dirnames, filenames in os.walk(target):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            os.path.join(dirpath, f)
            for f in sorted(filenames)
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    return found


def _read(path: str, channels: int):
    """``(image, None)``, or ``(None, reason)`` for a file that is not a usable image
    (:func:`kerasarch.data.read_image`: the cheap signature check, then a full decode)."""
    import numpy as np

    from kerasarch.data import ImageFileError, read_image

    try:
        return np.asarray(read_image(path, 1 if channels == 1 else 3), dtype="float32"), None
    except ImageFileError as e:
        return None, str(e)


def progress_bar(total, label):
    """A rich progress bar on standard error when it is a terminal; otherwise nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def predict_files(net: InferenceModel, paths: list[str], *, top: int = 5, batch_size: int = 32):
    """``(rows, skipped)``: per usable image ``{"file", "top": [(index, name, probability), ...]}``, and
    ``(path, reason)`` for each file that is not a usable image."""
    import numpy as np

    channels = net.input_shape[-1]
    k = max(1, min(int(top), net.num_classes))
    rows, skipped, batch, batch_paths = [], [], [], []

    def flush():
        if not batch:
            return
        probs = net.predict(np.stack(batch))
        for path, p in zip(batch_paths, probs):
            best = np.argsort(-p, kind="stable")[:k]
            rows.append({"file": path, "top": [(int(i), _name(net, int(i)), float(p[i])) for i in best]})
        batch.clear()
        batch_paths.clear()

    with progress_bar(len(paths), "predict") as bar:
        task = bar.add_task("images", total=len(paths))
        for path in paths:
            image, reason = _read(path, channels)
            if image is None:
                skipped.append((path, reason))
            else:
                batch.append(np.asarray(net.transform(image), dtype="float32"))
                batch_paths.append(path)
                if len(batch) >= batch_size:
                    flush()
            bar.advance(task)
        flush()
    return rows, skipped


def _name(net, index):
    return net.class_names[index] if net.class_names and index < len(net.class_names) else f"class_{index}"


def register(sub):
    p = sub.add_parser(
        "predict",
        help="top-k classes of images with a registry model, a .keras file or a run folder",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("model", metavar="MODEL_OR_FILE", help="registry name, .keras file or run folder")
    p.add_argument("images", metavar="IMAGES_OR_DIR", help="an image file or a folder (searched recursively)")
    p.add_argument(
        "--weights",
        default=None,
        help="for a registry name: imagenet (default), imagenet:<source or checkpoint> (imagenet:torchvision, "
        "imagenet:timm, imagenet:IMAGENET1K_V1), or a .h5/.pth/.safetensors/.keras/.weights.h5 file",
    )
    p.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None, help="write the predictions to FILE.csv or FILE.json")
    p.add_argument("--preprocessing", default=None, help="override the model's input convention")
    p.add_argument("--input-size", type=int, default=None, help="for a registry name: build for SIZE x SIZE inputs")
    p.set_defaults(func=run)


def _csv_text(rows, top):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["file"]
    for r in range(1, top + 1):
        header += [f"top{r}_index", f"top{r}_class", f"top{r}_probability"]
    writer.writerow(header)
    for row in rows:
        cells = [row["file"]]
        for index, name, prob in row["top"]:
            cells += [index, name, f"{prob:.6f}"]
        writer.writerow(cells)
    return out.getvalue()


def _table(rows, top):
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("file", overflow="fold")
    for r in range(1, top + 1):
        table.add_column(f"top-{r}")
    for row in rows:
        table.add_row(os.path.basename(row["file"]), *[f"{name} {prob:.1%}" for _, name, prob in row["top"]])
    Console().print(table)


def run(args):
    if args.top < 1:
        raise ValueError(f"--top must be at least 1. Received: --top {args.top}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1. Received: --batch-size {args.batch_size}")
    if args.out and not args.out.lower().endswith((".csv", ".json")):
        raise ValueError(f"--out must name a .csv or .json file. Received: --out {args.out}")
    weights = cli_weights(args.model, args.weights)
    paths = list_images(args.images)
    if not paths:
        raise ValueError(f"No image files ({', '.join(_extensions())}) under {args.images!r}.")
    net = load_for_inference(args.model, weights, preprocessing=args.preprocessing, input_size=args.input_size)
    print(f"kerasarch predict: {net.description}; {len(paths)} file(s)", file=sys.stderr)
    rows, skipped = predict_files(net, paths, top=args.top, batch_size=args.batch_size)
    for path, reason in skipped:
        print(f"kerasarch predict: skipped: {reason}", file=sys.stderr)
    top = max(1, min(args.top, net.num_classes))
    if args.out:
        from kerasarch.training.checkpoint import atomic_write_text

        if args.out.lower().endswith(".json"):
            text = json.dumps(
                {
                    "model": args.model,
                    "weights": weights,
                    "description": net.description,
                    "predictions": [
                        {"file": r["file"], "top": [{"index": i, "class": n, "probability": p} for i, n, p in r["top"]]}
                        for r in rows
                    ],
                    "skipped": [{"file": f, "reason": why} for f, why in skipped],
                },
                indent=2,
            )
        else:
            text = _csv_text(rows, top)
        atomic_write_text(args.out, text)
        print(f"kerasarch predict: {len(rows)} image(s) -> {args.out}; {len(skipped)} skipped", file=sys.stderr)
    elif sys.stdout.isatty():
        _table(rows, top)
    else:
        sys.stdout.write(_csv_text(rows, top))
    return 0 if rows else 1


def _extensions():
    from kerasarch.data import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS
