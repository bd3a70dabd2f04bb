"""``python -m finetune extract``: run a network over a data set and write one tap's features to disk.

The features go to ``OUT/shard-NNNNN.npz`` (``features``, ``labels``, ``index``) with ``OUT/metadata.json``.
Everything is checked before the first image is read (the data has images, the weights fit the model, the tap
exists, ``OUT`` is empty or a features directory and holds nothing from another extraction). Shards are written
atomically through ``OUT/.extract-tmp/``; a rerun of the same command removes only its own leftovers there, skips
the finished shards, and the files it leaves are byte-identical to an uninterrupted run's. An extraction that
reads no image at all fails instead of writing empty features.
"""

from __future__ import annotations

import os
import re
import sys
import time

import numpy as np

from finetune.errors import FinetuneError
from finetune.store import (
    FORMAT_VERSION,
    METADATA,
    TMP_DIR,
    clean_temporaries,
    read_metadata,
    save_npz,
    shard_name,
    write_json,
)
from kerasarch.weights.download import file_digest

__all__ = ["extract", "register", "run"]

# Metadata entries that must agree for a rerun to resume (rather than refuse) an existing directory.
_IDENTITY = (
    "model",
    "tap",
    "tap_layer",
    "weights_sha256",
    "seed",
    "preprocessing",
    "input_shape",
    "fit",
    "dataset",
    "feature_shape",
    "shard_size",
    "batch_size",
    "dtype",
)


def extract(
    model,
    data,
    tap,
    out,
    *,
    weights=None,
    split="train",
    input_shape=None,
    classes=None,
    fit=None,
    preprocessing=None,
    batch_size=64,
    shard_size=1024,
    seed=0,
    overwrite=False,
    data_dir=None,
    verbose=1,
    on_shard=None,
):
    """Extracts the features of ``tap`` for every image of ``data`` into the directory ``out``.

    Args:
        model: registry name of the network.
        data: a folder (one sub-folder per class), ``mnist5k``, ``digits``, ``tfds:NAME``, or an
            :class:`~finetune.sources.ImageSource`.
        tap: paper tap name (see :func:`kerasarch.features.list_taps`) or layer name.
        out: the features directory.
        weights: ``.keras`` / ``.weights.h5`` file, or ``None`` (random weights from ``seed``).
        split: the data set split (built-in and TFDS data).
        input_shape: ``(H, W, C)`` to build the network for; default: the weights file's, else the spec's.
        classes: the classifier width of a ``.weights.h5`` file.
        fit: how images reach the input size (``"auto"``, ``"pad"``, ``"resize"``, ``"resize_crop"``; see
            :class:`kerasarch.InputConfig`); default: the model card's.
        preprocessing: the input convention, if not the model card's (weights trained with another one).
        batch_size: images per forward pass.
        shard_size: images per shard file.
        seed: initialisation seed when ``weights`` is None.
        overwrite: replace a finished or different extraction in ``out`` instead of refusing.
        data_dir: TFDS data directory.
        verbose: 0 silent, 1 progress lines with throughput on stderr.
        on_shard: called as ``on_shard(i)`` after shard ``i`` is on disk (tests use it to interrupt a run).

    Returns:
        The metadata dict of the finished extraction.
    """
    from finetune.backbone import FIT_MODES, load_backbone, prepare_batch
    from finetune.sources import ImageSource, open_source
    from kerasarch.features import feature_extractor, resolve_taps

    if batch_size < 1 or shard_size < 1:
        raise FinetuneError(f"batch_size and shard_size must be >= 1. Received: {batch_size}, {shard_size}")
    if fit is not None and fit not in FIT_MODES:
        raise FinetuneError(f"fit must be one of {FIT_MODES}. Received: {fit!r}")
    source = data if isinstance(data, ImageSource) else open_source(data, split=split, data_dir=data_dir)
    backbone = load_backbone(
        model, weights, input_shape=input_shape, classes=classes, seed=seed, preprocessing=preprocessing
    )
    config = backbone.input_for(fit)  # the model card's fit unless --fit says otherwise
    fit = config.fit
    try:
        tap_layer = resolve_taps(backbone.model, [tap], backbone.spec)[tap]
    except ValueError as e:
        raise FinetuneError(str(e)) from e
    fx = feature_extractor(backbone.model, [tap], spec=backbone.spec)
    feature_shape = [int(d) for d in fx.output[tap].shape[1:]]
    n = len(source)
    meta = {
        "format": "kerasarch-features",
        "version": FORMAT_VERSION,
        **backbone.describe(),
        "tap": tap,
        "tap_layer": tap_layer,
        "fit": fit,
        "dataset": {**source.describe(), "split": split},
        "class_names": list(source.class_names),
        "feature_shape": feature_shape,
        "dtype": "float32",
        "num_images": n,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "num_shards": -(-n // shard_size),
        "complete": False,
        "shards": [],
        "unusable_files": [list(f) for f in getattr(source, "skipped", [])],
    }
    out = os.fspath(out)
    if _prepare_out(out, meta, overwrite):
        if verbose:
            print(f"[extract] {out}: already complete ({n} images).", file=sys.stderr)
        return read_metadata(out)
    tmp_dir = os.path.join(out, TMP_DIR)
    write_json(os.path.join(out, METADATA), meta, tmp_dir=tmp_dir)

    started, done_now, last = time.perf_counter(), 0, 0.0
    shards, skipped = [], []
    for s in range(meta["num_shards"]):
        path = os.path.join(out, shard_name(s))
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        if not _valid_shard(path, hi - lo):
            feats, labels, index = [], [], []
            for b in range(lo, hi, batch_size):
                images, lab, idx = source.read(b, min(hi, b + batch_size), channels=backbone.input_shape[-1])
                if len(idx):
                    x = prepare_batch(images, backbone.input_shape, backbone.preprocessing, input_config=config)
                    feats.append(np.asarray(fx.predict_on_batch(x)[tap], dtype="float32"))
                    labels.append(lab)
                    index.append(idx)
                now = time.perf_counter()
                if verbose and now - last >= 2.0:
                    last = now
                    _progress(min(hi, b + batch_size), n, done_now + min(hi, b + batch_size) - lo, now - started)
            save_npz(
                path,
                features=np.concatenate(feats) if feats else np.zeros((0, *feature_shape), "float32"),
                labels=np.concatenate(labels) if labels else np.zeros((0,), "int64"),
                index=np.concatenate(index) if index else np.zeros((0,), "int64"),
                tmp_dir=tmp_dir,
            )
            done_now += hi - lo
            if verbose:
                _progress(hi, n, done_now, time.perf_counter() - started)
        with np.load(path, allow_pickle=False) as z:
            kept = set(z["index"].tolist())
            count = len(z["index"])
        skipped += [i for i in range(lo, hi) if i not in kept]
        shards.append({"file": shard_name(s), "count": count, "sha256": file_digest(path, "sha256")})
        if on_shard is not None:
            on_shard(s)
    meta.update(complete=True, shards=shards, skipped=skipped, num_extracted=sum(sh["count"] for sh in shards))
    if n and not meta["num_extracted"]:
        clean_temporaries(out)
        raise FinetuneError(
            f"No image of {source.name} could be read for {meta['model']} (all {n} skipped as "
            f"unreadable; the warnings above say why). Nothing was extracted into {out!r}."
        )
    write_json(os.path.join(out, METADATA), meta, tmp_dir=tmp_dir)
    clean_temporaries(out)
    if verbose:
        took = time.perf_counter() - started
        print(
            f"[extract] done: {meta['num_extracted']} features of {meta['model']}/{tap} {feature_shape} in {out}"
            f" ({done_now} computed in {took:.1f}s, {len(skipped)} unreadable images skipped)",
            file=sys.stderr,
        )
    return meta


def _prepare_out(out, meta, overwrite):
    """Makes ``out`` ready; returns True when it already holds this finished extraction."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FinetuneError(f"--out {out!r} exists and is not a directory.")
    os.makedirs(out, exist_ok=True)
    if not os.path.exists(os.path.join(out, METADATA)):
        others = sorted(f for f in os.listdir(out) if f != TMP_DIR)
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise FinetuneError(
                f"--out {out!r} is not empty ({shown}) and is not a features directory (no "
                f"{METADATA}); give a new or empty directory."
            )
        clean_temporaries(out)  # left by a run killed while writing its first metadata
        return False
    old = read_metadata(out)
    clean_temporaries(out)
    diffs = [k for k in _IDENTITY if old.get(k) != meta.get(k)]
    if not diffs and old.get("complete") and not overwrite:
        return True
    if diffs or overwrite:
        if not overwrite:
            detail = "; ".join(f"{k}: {old.get(k)!r} -> {meta.get(k)!r}" for k in diffs[:4])
            raise FinetuneError(
                f"{out!r} holds another extraction ({old.get('model')}/{old.get('tap')}; differs in "
                f"{detail}). Use another --out, or --overwrite to replace it."
            )
        for f in os.listdir(out):  # exactly the files an extraction writes, nothing else
            if re.fullmatch(r"shard-\d{5}\.npz", f) or f == METADATA:
                os.remove(os.path.join(out, f))
    return False


def _valid_shard(path, expected):
    if not os.path.exists(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return len(z["labels"]) == len(z["index"]) == len(z["features"]) <= expected
    except Exception:  # noqa: BLE001 - any unreadable shard is recomputed
        return False


def _progress(done, total, done_now, seconds):
    rate = done_now / seconds if seconds > 0 else float("inf")
    eta = (total - done) / rate if rate > 0 else 0.0
    print(
        f"[extract] {done}/{total} images ({100 * done / total:.0f}%)  {rate:.1f} img/s  ETA {eta:.0f}s",
        file=sys.stderr,
        flush=True,
    )


def register(sub):
    p = sub.add_parser(
        "extract", help="write a tap's features of a data set to disk (resumable)", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("model", help="registry name, e.g. lenet5, resnet20, vgg16")
    p.add_argument("data", help="a folder with one sub-folder per class, mnist5k, digits, or tfds:NAME")
    p.add_argument("--tap", required=True, help="paper tap name (kerasarch.features.list_taps) or layer name")
    p.add_argument("--out", required=True, help="features directory")
    p.add_argument(
        "--weights",
        default=None,
        help="imagenet, imagenet:<source or checkpoint>, a .h5/.pth/.safetensors/.keras/.weights.h5 file or a run "
        "folder (default: random, from --seed)",
    )
    p.add_argument("--split", default="train", help="data set split (built-in: train, test, all)")
    p.add_argument("--input-shape", default=None, help="H,W,C (default: the weights file's, else the model's)")
    p.add_argument("--classes", type=int, default=None, help="classifier width of a .weights.h5 file")
    p.add_argument(
        "--fit",
        choices=("auto", "pad", "resize", "resize_crop"),
        default=None,
        help="how images reach the input size (default: the model card's)",
    )
    p.add_argument(
        "--preprocessing", default=None, help="input convention if not the model's (caffe, torch, tf, unit, none)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="TFDS data directory")
    p.add_argument("--overwrite", action="store_true", help="replace another extraction in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args):
    from finetune.backbone import parse_shape

    meta = extract(
        args.model,
        args.data,
        args.tap,
        args.out,
        weights=args.weights,
        split=args.split,
        input_shape=parse_shape(args.input_shape),
        classes=args.classes,
        fit=args.fit,
        preprocessing=args.preprocessing,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        seed=args.seed,
        overwrite=args.overwrite,
        data_dir=args.data_dir,
        verbose=0 if args.quiet else 1,
    )
    print(
        f"{meta['num_extracted']} features {tuple(meta['feature_shape'])} of {meta['model']}/{meta['tap']} "
        f"in {args.out}"
    )
    return 0
