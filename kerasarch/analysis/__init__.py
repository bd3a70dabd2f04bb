"""Analysis of a model: parameters, multiply-adds, activation memory and receptive fields, layer by layer.

    from kerasarch import analysis
    p = analysis.profile("vgg16")               # or a keras.Model, or a .keras file
    p.total_params, p.total_macs, p.activation_bytes(), p.training_memory_bytes(batch_size=32, optimizer="adam")
    analysis.receptive_field("vgg16", "block5_pool")   # ReceptiveField(size=212, jump=32)

Counting rules (also in ``docs/analysis.md``). All counts are per example; the graph is walked with symbolic
shapes, nested Functional and Sequential models included, one row per layer call.

- **MACs** (multiply-adds) are the multiplications of inputs by weights, the convention of torchvision's
  published GFLOPS figures: Conv1D/2D/3D ``output positions × kh·kw·(C_in/groups)·C_out``; DepthwiseConv
  ``output positions × kh·kw·C_in·multiplier``; SeparableConv depthwise + pointwise; Conv*Transpose ``input
  positions × kh·kw·C_in·C_out`` (every input pixel scatters the kernel, zero padding included); Dense of any
  rank ``positions × C_in·units``. Padding positions count as computed, as in every published figure. A layer
  with a ``macs(input_shape)`` method (input shape with the batch axis, ``None``) is asked; kerasarch's custom
  layers are dispatched by class name (``counting.CUSTOM_COUNTERS``); any other layer with trainable weights
  counts each multiplying weight (not biases) once per output position and is marked *estimated*.
- **Other ops** are the element-wise operations, never mixed into MACs: bias additions and fused activations of
  conv/dense layers (1 per output), activation layers 1 (softmax 3), BatchNorm 2 (inference scale and shift),
  Layer/GroupNorm 5, pooling ``window`` per output, global pooling 1 per input, LRN ``n + 3`` per output, merges
  ``inputs − 1`` per output (Average + 1), copies 1 per output value (Concatenate, ZeroPadding, Cropping,
  UpSampling, Permute), views 0 (Flatten, Reshape, Dropout at inference). Unknown weightless operations count 1
  per output and are marked estimated.
- **Activations** of a row = the values that layer outputs for one example. The total counts the input image and
  every layer output once, treating activation layers (ReLU, softmax ...) as computed in place — as the lecture's
  tables and fused kernels do, so that ``Conv2D(activation="relu")`` and Conv2D + ReLU count alike — and views
  as sharing memory; ``activation_count(every_output=True)`` counts every layer's output instead. Bytes use
  each layer's output dtype (the compute dtype of its policy) unless a ``dtype`` is given.
- **Training memory** (an estimate): activations kept for backward + parameters + gradients + optimizer slots.
- **Receptive field**: ``size += dilation·(k − 1)·jump``, ``jump *= stride`` through convolutions and pools,
  unchanged through padding and element-wise layers, maximum over branches at merges.
"""

from kerasarch.analysis.counting import OPTIMIZER_SLOTS
from kerasarch.analysis.profile import LayerRow, Profile, ReceptiveField, profile, receptive_field, resolve_model

__all__ = ["profile", "receptive_field", "Profile", "LayerRow", "ReceptiveField", "resolve_model", "OPTIMIZER_SLOTS"]
