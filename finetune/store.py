"""Feature directories on disk: byte-reproducible ``.npz`` shards, ``metadata.json``, and the checks that
keep features of one model/tap from being mixed with another's.

A features directory holds ``shard-00000.npz`` ... (arrays ``features``, ``labels``, ``index``) and
``metadata.json`` (model, tap, weights sha256, preprocessing, shapes, class names, dataset fingerprint,
the shards with their sha256). Nothing in either depends on the time or on whether the run was interrupted,
so a resumed extraction is byte-identical to an uninterrupted one.

Files are written atomically through a temporary file in the directory's own ``.extract-tmp/`` sub-folder
(:data:`TMP_DIR`), named ``.<final name>.<random>.tmp`` (:func:`is_own_temporary`): a crashed writer's leftovers are
found there by that exact pattern and nowhere else, so cleaning them up never touches a user's file.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile

import numpy as np

from finetune.errors import FinetuneError
from kerasarch.fileio import atomic_write
from kerasarch.weights.download import file_digest

__all__ = [
    "FORMAT_VERSION",
    "METADATA",
    "TMP_DIR",
    "FeatureSet",
    "check_same_source",
    "clean_temporaries",
    "is_own_temporary",
    "load_features",
    "read_metadata",
    "save_npz",
    "shard_name",
    "write_json",
]

METADATA = "metadata.json"
FORMAT_VERSION = 1
TMP_DIR = ".extract-tmp"
# The temporaries ``atomic_write`` makes for a shard or the metadata: ``.<final name>.<8 random chars>.tmp``.
_OWN_TMP = re.compile(r"^\.(shard-\d{5}\.npz|metadata\.json)\.[a-z0-9_]{8}\.tmp$")
# A fixed zip timestamp (the earliest a zip can hold): numpy's savez stamps the current time.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def shard_name(i):
    return f"shard-{i:05d}.npz"


def is_own_temporary(name):
    """Whether ``name`` is a temporary file an interrupted extraction leaves in :data:`TMP_DIR`."""
    return bool(_OWN_TMP.match(name))


def clean_temporaries(directory):
    """Removes an interrupted extraction's temporaries: only files in ``directory/.extract-tmp`` named as
    :func:`is_own_temporary` says, then the sub-folder itself if that leaves it empty. Returns what was removed."""
    tmp = os.path.join(os.fspath(directory), TMP_DIR)
    if not os.path.isdir(tmp) or os.path.islink(tmp):
        return []
    removed = []
    for name in sorted(os.listdir(tmp)):
        path = os.path.join(tmp, name)
        if is_own_temporary(name) and os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
            removed.append(path)
    if not os.listdir(tmp):
        os.rmdir(tmp)
    return removed


def save_npz(path, *, tmp_dir=None, **arrays):
    """Writes ``arrays`` as an uncompressed ``.npz`` whose bytes depend only on the arrays, atomically (a
    temporary file renamed into place, so a crash never leaves half a shard under the final name; ``tmp_dir``:
    where the temporary file goes, default beside ``path``)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    _atomic_write(path, buf.getvalue(), tmp_dir)


def write_json(path, obj, *, tmp_dir=None):
    """Writes ``obj`` as sorted, indented JSON, atomically (``tmp_dir`` as in :func:`save_npz`)."""
    _atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), tmp_dir)


def _atomic_write(path, data, tmp_dir=None):
    with atomic_write(os.fspath(path), tmp_dir=tmp_dir) as f:
        f.write(data)


def read_metadata(directory):
    """The ``metadata.json`` of a features directory; a missing or unreadable one is a :class:`FinetuneError`."""
    path = os.path.join(os.fspath(directory), METADATA)
    if not os.path.isdir(directory):
        raise FinetuneError(f"Features directory not found: {os.fspath(directory)!r}.")
    if not os.path.exists(path):
        raise FinetuneError(
            f"{os.fspath(directory)!r} is not a features directory: it has no {METADATA} "
            f"(make one with `python -m finetune extract`)."
        )
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise FinetuneError(f"Cannot read {path!r}: {e}") from e
    if meta.get("format") != "kerasarch-features" or meta.get("version") != FORMAT_VERSION:
        raise FinetuneError(f"{path!r} is not a kerasarch features file of version {FORMAT_VERSION}.")
    return meta


class FeatureSet:
    """The features of a finished extraction: ``features`` (N, ...), ``labels`` (N,), ``index`` (N,) and the
    ``metadata`` dict."""

    def __init__(self, directory, metadata, features, labels, index):
        self.directory = os.fspath(directory)
        self.metadata = metadata
        self.features = features
        self.labels = labels
        self.index = index

    @property
    def source(self):
        """``"model/tap"``, for messages."""
        return f"{self.metadata['model']}/{self.metadata['tap']}"

    @property
    def class_names(self):
        return list(self.metadata["class_names"])


def load_features(directory, *, model=None, tap=None):
    """Loads a finished features directory, checking it is complete and, if given, that it comes from
    ``model`` / ``tap``.

    Raises:
        FinetuneError: not a features directory, an unfinished extraction, a shard that does not match the
            metadata's checksum, or features from another model/tap than asked for.
    """
    meta = read_metadata(directory)
    where = os.fspath(directory)
    if model is not None and meta["model"] != model or tap is not None and meta["tap"] != tap:
        raise FinetuneError(
            f"{where!r} holds features of {meta['model']}/{meta['tap']}, not of "
            f"{model or meta['model']}/{tap or meta['tap']}: features of one network or tap "
            f"cannot stand in for another's."
        )
    if not meta.get("complete"):
        raise FinetuneError(
            f"The extraction in {where!r} is not finished; run the same `extract` command again to resume it."
        )
    feats, labels, index = [], [], []
    for shard in meta["shards"]:
        path = os.path.join(where, shard["file"])
        if not os.path.exists(path) or file_digest(path, "sha256") != shard["sha256"]:
            raise FinetuneError(
                f"Shard {path!r} is missing or does not match the checksum in {METADATA}; "
                f"re-run `extract` with --overwrite."
            )
        with np.load(path, allow_pickle=False) as z:
            feats.append(z["features"])
            labels.append(z["labels"])
            index.append(z["index"])
    shape = (0, *meta["feature_shape"])
    return FeatureSet(
        where,
        meta,
        np.concatenate(feats) if feats else np.zeros(shape, "float32"),
        np.concatenate(labels) if labels else np.zeros((0,), "int64"),
        np.concatenate(index) if index else np.zeros((0,), "int64"),
    )


# What must agree for two features directories to be used together (training one, evaluating the other).
_SAME_SOURCE_KEYS = ("model", "tap", "weights_sha256", "seed", "preprocessing", "input_shape", "feature_shape")


def check_same_source(a: FeatureSet, b: FeatureSet):
    """Raises a :class:`FinetuneError` unless ``a`` and ``b`` come from the same network, weights, tap and
    preprocessing, and name the same classes."""
    diffs = [k for k in _SAME_SOURCE_KEYS if a.metadata.get(k) != b.metadata.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: {a.metadata.get(k)!r} vs {b.metadata.get(k)!r}" for k in diffs)
        raise FinetuneError(
            f"Features in {a.directory!r} ({a.source}) and {b.directory!r} ({b.source}) come from "
            f"different extractions ({detail}); a classifier fitted on one cannot be evaluated "
            f"on the other. Extract both with the same model, weights and tap."
        )
    if a.class_names != b.class_names:
        raise FinetuneError(
            f"Features in {a.directory!r} and {b.directory!r} name different classes: "
            f"{a.class_names} vs {b.class_names}."
        )
