"""Custom layers, each registered as serializable under the ``kerasarch`` package name, so that a ``.keras``
file loads back with ``safe_mode=True``. Importing this package imports every layer module."""

from kerasarch._discover import import_submodules

import_submodules(__name__)

from kerasarch.layers.normalization import BatchNormalization  # noqa: E402,F401  (Keras' BN on TF's fused kernel)
from kerasarch.layers.preprocessing import Preprocessing  # noqa: E402,F401  (the card's input preparation as a layer)
