"""Every registered model, parametrised over ``list_models()``: its parameter count against the published
figure in its spec (docs/references.md), its output shape, a forward pass and the ``.keras`` round trip."""

import keras
import numpy as np
import pytest

import kerasarch
from tests.helpers import random_images, trainable_params

MODELS = kerasarch.list_models()
# 3,600-4,200 layers: their forward pass and .keras round trip take 30+ s each, so they run with `-m slow`.
VERY_DEEP = {"resnet1202", "preact_resnet1001"}
ROUND_TRIP = [pytest.param(n, marks=pytest.mark.slow) if n in VERY_DEEP else n for n in MODELS]


def _rounds_to(value, approx):
    """True when ``value`` rounds to the paper's printed figure ``approx = (figure, unit, decimals)``."""
    figure, unit, decimals = approx
    scale = {"M": 1e6, "K": 1e3, "": 1}[unit]
    return round(value / scale, decimals) == figure


def _out_shape(model):
    return [tuple(s) for s in model.output_shape] if isinstance(model.output_shape, list) else tuple(model.output_shape)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_and_output_shape(name):
    spec = kerasarch.get_spec(name)
    assert spec.params is not None or spec.params_approx is not None, f"{name} has no reference figure"
    model = kerasarch.build_model(name)
    assert model.name == name
    n = trainable_params(model)
    if spec.params is not None:
        assert n == spec.params, f"{name}: {n:,} trainable parameters, reference {spec.params:,} ({spec.params_source})"
    else:
        assert _rounds_to(n, spec.params_approx), f"{name}: {n:,} does not round to {spec.params_approx}"
    if spec.total_params is not None:
        assert model.count_params() == spec.total_params
    assert _out_shape(model) == (None, spec.classes)
    assert tuple(model.input_shape[1:]) == tuple(spec.input_shape)
    for tap, layer in spec.taps.items():
        model.get_layer(layer)  # raises if a declared tap does not exist


def _small_shape(spec):
    size = max(spec.min_input_size, 32)
    return (size, size, spec.input_shape[-1])


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_forward_and_keras_round_trip(name, tmp_path):
    spec = kerasarch.get_spec(name)
    shape = _small_shape(spec)
    # Heavy models do the round trip without their top (the top is covered by the parameter test).
    model = kerasarch.build_model(name, input_shape=shape, include_top=not spec.slow, pooling="avg")
    x = random_images(shape, batch=2)
    y = np.asarray(model(x, training=False))  # eager call: predict() would compile the whole graph
    assert np.all(np.isfinite(y)), f"{name}: non-finite outputs"
    if not spec.slow:
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-4)  # softmax top
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), y, rtol=1e-5, atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


def test_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match="Did you mean:.*vgg16"):
        kerasarch.build_model("vgg61")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (16, 16, 3)}, "at least 32 pixels.*Received: input_shape=\\(16, 16, 3\\)"),
        ({"classes": 0}, "classes.*Received: classes=0"),
        ({"pooling": "mean", "include_top": False}, "pooling.*Received: pooling='mean'"),
        ({"input_shape": (224, 224)}, "Received: input_shape=\\(224, 224\\)"),
        ({"weights": "missing.weights.h5"}, "not found"),
    ],
)
def test_impossible_arguments_raise_clearly(kwargs, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        kerasarch.build_model("vgg11", **kwargs)


def test_two_instances_live_in_one_model():
    a = kerasarch.build_model("vgg11", include_top=False, input_shape=(32, 32, 3), name="left")
    b = kerasarch.build_model("vgg11", include_top=False, input_shape=(32, 32, 3), name="right")
    inp = keras.Input((32, 32, 3))
    both = keras.Model(inp, keras.layers.Concatenate()([a(inp), b(inp)]))
    assert both.output_shape == (None, 1, 1, 1024)


def test_list_models_by_pattern_and_spec():
    assert kerasarch.list_models("vgg1[69]") == ["vgg16", "vgg19"]
    spec = kerasarch.get_spec("VGG16")
    assert spec.taps["fc7"] == "fc2" and spec.family == "vgg"
