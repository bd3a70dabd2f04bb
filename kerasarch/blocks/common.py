"""Convolution units shared by every family: conv → BN → activation, and the pre-activation BN → act → conv."""

from __future__ import annotations

from keras import layers

from kerasarch.layers.grouped import GroupedConv2D
from kerasarch.layers.normalization import BatchNormalization
from kerasarch.layers.pointwise import PointwiseConv2D

__all__ = ["apply_conv", "apply_conv_bn_act", "apply_bn_act", "apply_bn_act_conv", "BN_EPS_KERAS", "BN_EPS_TORCH"]

# keras.applications' ResNet/DenseNet use 1.001e-5 (the Caffe ports); torchvision uses 1e-5.
BN_EPS_KERAS = 1.001e-5
BN_EPS_TORCH = 1e-5


def apply_conv(
    x,
    filters,
    kernel_size,
    *,
    name,
    strides=1,
    padding="same",
    groups=1,
    use_bias=True,
    dilation_rate=1,
    kernel_initializer="glorot_uniform",
    kernel_regularizer=None,
):
    """A Conv2D whose padding may be ``"same"``, ``"valid"`` or an int / pair of explicit zero padding.

    Explicit padding (``padding=3``) adds a ``{name}_pad`` ZeroPadding2D and pads symmetrically like
    Caffe and PyTorch; TensorFlow's ``"same"`` pads the bottom/right more when the stride is 2, which breaks
    weight porting.
    """
    if not isinstance(padding, str):
        if padding:
            x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
        padding = "valid"
    # Grouped and 1×1 convolutions: Conv2D's weights and layout, computed the way that is fast on this backend and
    # device (kerasarch.layers.grouped, kerasarch.layers.pointwise).
    if groups > 1:
        conv = GroupedConv2D
    elif kernel_size in (1, (1, 1)):
        conv = PointwiseConv2D
    else:
        conv = layers.Conv2D
    return conv(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=use_bias,
        dilation_rate=dilation_rate,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer,
        name=name,
    )(x)


def apply_bn_act(
    x,
    *,
    name,
    activation="relu",
    bn_epsilon=BN_EPS_KERAS,
    bn_momentum=0.99,
    bn_name=None,
    act_name=None,
    gamma_initializer="ones",
):
    """BatchNormalization (``{name}_bn``) then the activation (``{name}_{activation}``); ``activation=None``
    stops after BN."""
    # Keras' BatchNormalization, computed by TensorFlow's fused kernel where it applies (same weights and names).
    x = BatchNormalization(
        epsilon=bn_epsilon, momentum=bn_momentum, gamma_initializer=gamma_initializer, name=bn_name or f"{name}_bn"
    )(x)
    if activation is not None:
        label = activation if isinstance(activation, str) else "act"
        x = layers.Activation(activation, name=act_name or f"{name}_{label}")(x)
    return x


def apply_conv_bn_act(
    x,
    filters,
    kernel_size,
    *,
    name,
    strides=1,
    padding="same",
    groups=1,
    use_bias=False,
    norm=True,
    activation="relu",
    bn_epsilon=BN_EPS_KERAS,
    bn_momentum=0.99,
    conv_name=None,
    bn_name=None,
    act_name=None,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
    gamma_initializer="ones",
):
    """Conv (``{name}_conv``) → BatchNorm (``{name}_bn``) → activation (``{name}_relu``).

    ``norm=False`` leaves out the BN (the pre-BN networks: AlexNet, VGG, GoogLeNet, NiN, SqueezeNet);
    ``activation=None`` leaves out the activation (the last conv of a residual branch).
    """
    x = apply_conv(
        x,
        filters,
        kernel_size,
        name=conv_name or f"{name}_conv",
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer,
    )
    if norm:
        return apply_bn_act(
            x,
            name=name,
            activation=activation,
            bn_epsilon=bn_epsilon,
            bn_momentum=bn_momentum,
            bn_name=bn_name,
            act_name=act_name,
            gamma_initializer=gamma_initializer,
        )
    if activation is not None:
        label = activation if isinstance(activation, str) else "act"
        x = layers.Activation(activation, name=act_name or f"{name}_{label}")(x)
    return x


def apply_bn_act_conv(
    x,
    filters,
    kernel_size,
    *,
    name,
    strides=1,
    padding="same",
    groups=1,
    use_bias=False,
    activation="relu",
    bn_epsilon=BN_EPS_KERAS,
    bn_momentum=0.99,
    conv_name=None,
    bn_name=None,
    act_name=None,
    kernel_initializer="he_normal",
    kernel_regularizer=None,
):
    """Pre-activation unit: BatchNorm → activation → conv (DenseNet, pre-activation ResNet)."""
    x = apply_bn_act(
        x,
        name=name,
        activation=activation,
        bn_epsilon=bn_epsilon,
        bn_momentum=bn_momentum,
        bn_name=bn_name,
        act_name=act_name,
    )
    return apply_conv(
        x,
        filters,
        kernel_size,
        name=conv_name or f"{name}_conv",
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=kernel_regularizer,
    )
