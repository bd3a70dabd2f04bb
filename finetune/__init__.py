"""kerasarch's fine-tuning module: from a folder of images and a pretrained network to the best classifier
quickly.

Commands (``python -m finetune <command> --help``):

- ``extract``: one tap's features of a data set, written to disk in shards (resumable);
- ``linear``: a linear classifier on extracted features, with its held-out accuracy;
- ``train``: end-to-end fine-tuning (LP-FT by default: the linear probe as the new head, then everything fine-tuned);
- ``tune``: a keras-tuner search over the head and the fine-tuning schedule (local or distributed);
- ``demo``: the transfer benchmark of ``docs/transfer.md`` (``bench/transfer.py``).
"""

from finetune.errors import FinetuneError

__all__ = ["FinetuneError"]
