"""``kerasarch evaluate MODEL_OR_FILE --data DIR|tfds:NAME|digits|mnist5k``: top-1 / top-5 accuracy and a confusion
matrix.

``MODEL_OR_FILE`` is what ``kerasarch predict`` takes (a registry name with ``--weights``, a ``.keras`` file, a run
folder); images go through the same evaluation transform (the checkpoint's resize and centre crop, or what the
training run recorded). ``DIR`` holds one sub-folder per class. Its class names are matched against the model's
before anything runs: each folder must name one of the model's classes (an ImageNet model also accepts WordNet ids
such as ``n01440764``), so a folder of a few ImageNet classes evaluates an ImageNet model; a folder that does not
match is refused with the names that differ. A model without known class names needs as many folders as outputs
(matched in sorted order, which ``kerasarch train`` and ``finetune train`` use).

    kerasarch evaluate resnet50 --weights imagenet --data val/ --out eval/
    kerasarch evaluate runs/flowers --data flowers/test --out eval/
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from kerasarch.commands.predict import InferenceModel, cli_weights, load_for_inference

__all__ = ["match_classes", "evaluate_dataset", "confusion_matrix_png", "register", "run"]


def match_classes(net: InferenceModel, folder_classes: list[str], where: str) -> list[int]:
    """The model output index of each of ``folder_classes``; raises, naming the mismatch, when they do not fit."""
    if net.class_names is None:
        if len(folder_classes) != net.num_classes:
            raise ValueError(
                f"{where} has {len(folder_classes)} class folders and the model has {net.num_classes} "
                f"outputs (its class names are not recorded): they cannot be the same classes. "
                f"Received: {_shown(folder_classes)}"
            )
        return list(range(net.num_classes))
    spellings = [net.class_names, *net.class_ids]
    lookup = {}
    for names in reversed(spellings):
        for i, name in enumerate(names):
            for key in (name, name.replace("_", " "), name.lower(), name.lower().replace("_", " ")):
                lookup[key] = i
    indices, unknown = [], []
    for name in folder_classes:
        hit = next(
            (
                lookup[k]
                for k in (name, name.replace("_", " "), name.lower(), name.lower().replace("_", " "))
                if k in lookup
            ),
            None,
        )
        indices.append(hit)
        if hit is None:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"The class folders of {where} do not match the model's classes: {len(unknown)} of "
            f"{len(folder_classes)} ({_shown(unknown)}) are not among the model's {net.num_classes} "
            f"classes ({_shown(net.class_names)}). Evaluate on a folder whose sub-folders are named "
            f"after the model's classes."
        )
    if len(set(indices)) != len(indices):
        raise ValueError(f"Two class folders of {where} name the same class of the model: {_shown(folder_classes)}")
    return indices


def _shown(names, n=6):
    names = list(names)
    return ", ".join(repr(x) for x in names[:n]) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def evaluate_dataset(
    net: InferenceModel, dataset, label_to_output: list[int], *, batch_size: int = 32, total: int | None = None
):
    """Runs ``net`` on an unbatched ``(image, label)`` dataset of ``[0, 255]`` images.

    Returns:
        ``(top1, top5, confusion, n)``: accuracies, the ``(len(labels), len(labels) + 1)`` confusion counts (rows:
        true folder class; columns: predicted folder class, the last one "another class of the model") and the
        number of images.
    """
    import numpy as np

    from kerasarch.commands.predict import progress_bar

    k = min(5, net.num_classes)
    n_labels = len(label_to_output)
    to_label = {out: i for i, out in enumerate(label_to_output)}
    confusion = np.zeros((n_labels, n_labels + 1), dtype=np.int64)
    hit1 = hit5 = n = 0
    batch, labels = [], []

    def flush():
        nonlocal hit1, hit5, n
        if not batch:
            return
        probs = net.predict(np.stack(batch))
        want = np.asarray([label_to_output[y] for y in labels])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        hit1 += int((order[:, 0] == want).sum())
        hit5 += int((order == want[:, None]).any(axis=1).sum())
        n += len(labels)
        for y, pred in zip(labels, order[:, 0]):
            confusion[y, to_label.get(int(pred), n_labels)] += 1
        batch.clear()
        labels.clear()

    with progress_bar(total or 0, "evaluate") as bar:
        task = bar.add_task("images", total=total)
        for image, label in dataset:
            batch.append(np.asarray(net.transform(image), dtype="float32"))
            labels.append(int(label))
            if len(batch) >= batch_size:
                flush()
            bar.advance(task)
        flush()
    if n == 0:
        raise ValueError("No usable image to evaluate on.")
    return hit1 / n, hit5 / n, confusion, n


def confusion_matrix_png(confusion, class_names: list[str], path: str, title: str = "") -> str:
    """Writes the confusion matrix as a PNG (rows: true class; columns: predicted; counts in the cells when few)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = confusion.shape
    labels = list(class_names) + (["other"] if cols > rows else [])
    side = min(2 + 0.45 * cols, 30)
    fig, ax = plt.subplots(figsize=(side, min(2 + 0.45 * rows, 30)))
    ax.imshow(confusion, cmap="Blues", aspect="auto")
    if cols <= 40:
        ax.set_xticks(range(cols), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(rows), labels[:rows], fontsize=8)
    if rows * cols <= 400:
        top = confusion.max() or 1
        for i in range(rows):
            for j in range(cols):
                ax.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if confusion[i, j] > top / 2 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    from kerasarch.training.checkpoint import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def _open_data(args, channels):
    from kerasarch import data

    if args.data in data.BUILTIN:  # the built-in offline sets: their held-out test split
        _, ds = data.load(args.data)
        return ds, list(ds.class_names), int(ds.cardinality())
    if args.data.startswith("tfds:"):
        ds = data.from_tfds(args.data[5:], args.split, args.data_dir)
        if not ds.class_names:
            raise ValueError(f"{args.data} has no class names (its label is not a ClassLabel).")
        return ds, list(ds.class_names), getattr(ds, "num_examples", None)
    if not os.path.isdir(args.data):
        raise FileNotFoundError(f"--data must be an image folder or tfds:NAME. Received: --data {args.data}")
    folders = sorted(
        d for d in os.listdir(args.data) if not d.startswith(".") and os.path.isdir(os.path.join(args.data, d))
    )
    if not folders:
        raise ValueError(f"{args.data!r} has no class sub-folders: expected {args.data}/<class name>/<images>.")
    return None, folders, None


def register(sub):
    p = sub.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy and a confusion matrix on a labelled folder or TFDS set",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("model", metavar="MODEL_OR_FILE", help="registry name, .keras file or run folder")
    p.add_argument(
        "--data", required=True, help="a folder of class sub-folders, tfds:NAME, or mnist5k / digits (their test split)"
    )
    p.add_argument("--split", default="test", help="TFDS split (default test)")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir")
    p.add_argument(
        "--weights",
        default=None,
        help="for a registry name: imagenet (default), imagenet:<source or checkpoint> (imagenet:torchvision, "
        "imagenet:timm, imagenet:IMAGENET1K_V1), or a .h5/.pth/.safetensors/.keras/.weights.h5 file",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None, help="folder for metrics.json and confusion.png")
    p.add_argument("--preprocessing", default=None, help="override the model's input convention")
    p.add_argument("--input-size", type=int, default=None, help="for a registry name: build for SIZE x SIZE inputs")
    p.set_defaults(func=run)


def run(args):
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1. Received: --batch-size {args.batch_size}")
    from kerasarch.data import BUILTIN

    weights = cli_weights(args.model, args.weights)
    if not args.data.startswith("tfds:") and args.data not in BUILTIN and not os.path.isdir(args.data):
        raise FileNotFoundError(
            f"--data must be an image folder, tfds:NAME or one of {', '.join(BUILTIN)}. Received: --data {args.data}"
        )
    net = load_for_inference(args.model, weights, preprocessing=args.preprocessing, input_size=args.input_size)
    channels = net.input_shape[-1]
    dataset, classes, total = _open_data(args, channels)
    mapping = match_classes(net, classes, args.data)  # before any image is read
    if dataset is None:
        from kerasarch import data

        with warnings.catch_warnings():  # the skipped files are reported below, one line each
            warnings.simplefilter("ignore", UserWarning)
            dataset = data.from_directory(args.data, None, channels=1 if channels == 1 else 3, class_names=classes)
        total = len(dataset.file_paths)
        for path, reason in dataset.skipped:
            print(f"kerasarch evaluate: skipped {path}: {reason}", file=sys.stderr)
    print(f"kerasarch evaluate: {net.description}; {len(classes)} classes in {args.data}", file=sys.stderr)
    top1, top5, confusion, n = evaluate_dataset(net, dataset, mapping, batch_size=args.batch_size, total=total)
    k = min(5, net.num_classes)
    line = f"top-1 {top1:.2%} ({int(round(top1 * n))}/{n}), top-{k} {top5:.2%} on {args.data}"
    if args.out:
        from kerasarch.training.checkpoint import atomic_write_text

        os.makedirs(args.out, exist_ok=True)
        png = confusion_matrix_png(
            confusion,
            classes,
            os.path.join(args.out, "confusion.png"),
            title=f"{args.model} on {args.data}: top-1 {top1:.2%}",
        )
        atomic_write_text(
            os.path.join(args.out, "metrics.json"),
            json.dumps(
                {
                    "model": args.model,
                    "weights": weights,
                    "data": args.data,
                    "description": net.description,
                    "examples": n,
                    "top1": top1,
                    f"top{k}": top5,
                    "class_names": classes,
                    "confusion": confusion.tolist(),
                },
                indent=2,
            ),
        )
        line += f"; confusion matrix {png}"
    print(line)
    return 0
