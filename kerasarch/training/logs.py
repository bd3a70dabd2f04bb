"""What a run reports: a progress bar on a terminal, one line per epoch otherwise, a CSV file and TensorBoard."""

from __future__ import annotations

import csv
import io
import os
import sys
import time

from kerasarch.keras_compat import progbar_position
from kerasarch.training.checkpoint import atomic_write_text

__all__ = ["ProgressReporter", "write_csv", "TensorBoardWriter"]


def _fmt(logs):
    parts = []
    for k, v in logs.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}" if k == "lr" else f"{k} {v:.4f}")
        else:
            parts.append(f"{k} {v}")
    return " - ".join(parts)


class ProgressReporter:
    """Prints training progress.

    Args:
        verbose: ``"auto"`` (a progress bar when stdout is a terminal, else one line per epoch), 0 (silent),
            1 (progress bar), 2 (one line per epoch).
        epochs: the number of epochs.
        stream: where to print (default ``sys.stdout``).
    """

    def __init__(self, verbose="auto", epochs=None, stream=None):
        self.stream = stream or sys.stdout
        if verbose == "auto":
            isatty = getattr(self.stream, "isatty", lambda: False)
            verbose = 1 if isatty() else 2
        self.verbose, self.epochs = int(verbose), epochs
        self._bar = None

    def print(self, text):
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def epoch_begin(self, epoch, steps):
        self._start = time.monotonic()
        if self.verbose == 1:
            import keras

            self.print(f"Epoch {epoch + 1}/{self.epochs}")
            self._bar = keras.utils.Progbar(steps, stateful_metrics=["loss", "accuracy", "lr"])

    def step(self, step, logs):
        if self._bar is not None:
            self._bar.update(step, values=list(logs.items()))

    def epoch_end(self, epoch, logs):
        seconds = time.monotonic() - self._start
        if self.verbose == 1 and self._bar is not None:
            self._bar.update(self._bar.target or progbar_position(self._bar), values=list(logs.items()), finalize=True)
            self._bar = None
        elif self.verbose == 2:
            self.print(f"epoch {epoch + 1}/{self.epochs} - {seconds:.1f}s - {_fmt(logs)}")


def write_csv(path, history):
    """Writes the per-epoch ``history`` (a dict of equal-length lists, with ``"epoch"``) to ``path``, atomically."""
    keys = ["epoch"] + [k for k in history if k != "epoch"]
    rows = zip(*(history[k] for k in keys)) if history.get("epoch") else []
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(keys)
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


class TensorBoardWriter:
    """Per-epoch scalars under ``<log_dir>/train`` and ``<log_dir>/validation`` (``val_*`` keys), as the Keras
    TensorBoard callback names them (``epoch_loss`` ...).

    Written with TensorFlow's own summary writer and the scalar plugin's metadata, so the event files are made
    whether or not the ``tensorboard`` package is installed (``tf.summary.scalar`` needs it).
    """

    def __init__(self, log_dir):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR,
        )
        self.train = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
        self.validation = tf.summary.create_file_writer(os.path.join(log_dir, "validation"))

    def _scalar(self, tag, value, step):
        tf = self._tf
        tf.summary.write(
            tag, tf.constant(float(value), tf.float32), step=step, metadata=self._metadata.SerializeToString()
        )

    def write(self, epoch, logs):
        with self.train.as_default():
            for k, v in logs.items():
                if not k.startswith("val_") and isinstance(v, (int, float)) and k != "epoch":
                    self._scalar(f"epoch_{k}", v, epoch)
        with self.validation.as_default():
            for k, v in logs.items():
                if k.startswith("val_"):
                    self._scalar(f"epoch_{k[4:]}", v, epoch)
        self.train.flush()
        self.validation.flush()

    def close(self):
        self.train.close()
        self.validation.close()
