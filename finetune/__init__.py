"""kerasarch's fine-tuning module: from a folder of images and a pretrained network to the best classifier
quickly.

Commands (``python -m finetune <command> --help``):

- ``extract``: one tap's features of a data set, written to disk in shards (resumable);
- ``linear``: a linear classifier on extracted features, with its held-out accuracy;
- ``train``: end-to-end fine-tuning: a new head, a head phase with the backbone frozen, then an unfrozen phase;
- ``tune``: a keras-tuner search over the head and the fine-tuning schedule (local or distributed);
- ``demo``: the transfer experiment of ``docs/transfer.md`` (mnist5k digits 0-4 -> 5-9).
"""

from finetune.errors import FinetuneError

__all__ = ["FinetuneError"]
