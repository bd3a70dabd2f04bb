"""Distribution strategies for :func:`kerasarch.training.train` (TensorFlow backend only: ``tf.distribute``).

- one device: TensorFlow's default strategy;
- several devices of one machine: ``MirroredStrategy`` (all GPUs, or all logical CPU devices when there is no GPU);
- several machines: ``MultiWorkerMirroredStrategy`` configured from ``TF_CONFIG``. TensorFlow requires it to be
  created before any other TensorFlow operation runs in the process: call :func:`make_strategy` first thing and
  pass the strategy to ``train`` (``kerasarch train`` does this itself).

kerasarch trains with its own loop (``strategy.run`` around the Keras model and optimizer) under every
strategy, because Keras 3's ``model.fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585):
one loop, so single-device, multi-device and multi-worker runs compute the same thing. Conventions:

- the recipe's ``batch_size`` is the *global* batch: each of the N replicas gets ``batch_size / N`` examples per
  step and gradients are summed over replicas of losses divided by the global batch, so an N-replica step is the
  same update as a one-device step on the whole batch (BatchNorm statistics stay per replica);
- the learning rate belongs to the global batch; keeping ``batch_size`` keeps it, overriding it scales it linearly;
- each worker reads the whole input, shuffles it identically (same seed), then keeps every N-th example
  (per-example sharding), so the union of a step's per-worker batches is the one-device batch; batches that would
  be partial are dropped when there are several replicas, and every worker runs the same number of steps;
- validation runs on every worker over the whole validation set, without collectives;
- only the chief (worker 0) writes checkpoints, logs and the final model.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["make_strategy", "is_chief", "worker_count", "worker_index", "tf_config_workers"]


def tf_config_workers() -> int:
    """The number of tasks in ``TF_CONFIG``'s cluster (0 when it is unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except ValueError:
        return 0
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))


def _multi_worker():
    import tensorflow as tf

    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        if "program startup" in str(e):
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created before any TensorFlow operation runs in this process. "
                "Call kerasarch.training.make_strategy('multi_worker') first thing (before building datasets or "
                "models) and pass the strategy to train()."
            ) from e
        raise


def make_strategy(
    strategy: str | tf.distribute.Strategy | None = "auto", devices: Sequence[str] | None = None
) -> tf.distribute.Strategy:
    """A ``tf.distribute.Strategy`` for ``strategy``.

    Args:
        strategy: ``"auto"`` (multi-worker when ``TF_CONFIG`` names several tasks, mirrored over several GPUs,
            else the default strategy), ``"mirrored"``, ``"multi_worker"``, ``None``/``"default"`` (one device),
            or a ``tf.distribute.Strategy`` (returned as it is).
        devices: the devices of a mirrored strategy (default: every GPU, else every logical CPU device).

    TensorFlow only: ``tf.distribute`` strategies drive TensorFlow's runtime, so this raises a ``RuntimeError`` on
    another Keras backend.
    """
    import tensorflow as tf

    from kerasarch.keras_compat import require_tensorflow

    require_tensorflow("kerasarch.training.make_strategy (tf.distribute)")
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if strategy in (None, "default", "one_device"):
        return tf.distribute.get_strategy()
    if strategy == "auto":
        if tf_config_workers() > 1:
            return _multi_worker()
        if len(tf.config.list_physical_devices("GPU")) > 1:
            return tf.distribute.MirroredStrategy(devices)
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        if devices is None and not tf.config.list_physical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if strategy == "multi_worker":
        return _multi_worker()
    raise ValueError(
        "`strategy` must be 'auto', 'mirrored', 'multi_worker', None or a tf.distribute.Strategy. "
        f"Received: strategy={strategy!r}"
    )


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """The number of workers (input pipelines) of ``strategy``: the chief and the workers of its cluster, 1 for a
    strategy without one (read from the public ``cluster_resolver``, as TensorFlow counts them)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    cluster = resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("chief", ())) + len(cluster.get("worker", ())))


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This worker's index (0 outside multi-worker strategies)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or worker_count(strategy) == 1:
        return 0
    if resolver.task_type == "chief":
        return 0
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return int(resolver.task_id) + (1 if has_chief else 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (the chief, or worker 0 when the cluster has no chief)."""
    return worker_index(strategy) == 0
