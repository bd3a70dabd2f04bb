"""kerasarch.features: a tap's features are the tapped layer's output of the full model, paper tap names resolve
to layers, and an unknown tap fails with the valid names."""

import keras
import numpy as np
import pytest

import kerasarch
from kerasarch import features
from tests.helpers import random_images


def _chain_outputs(model, x):
    """Runs a chain-shaped model layer by layer (no Functional graph slicing): ``{layer name: output}``."""
    outs = {}
    h = keras.ops.convert_to_tensor(x)
    for layer in model.layers[1:]:
        h = layer(h, training=False)
        outs[layer.name] = keras.ops.convert_to_numpy(h)
    return outs


@pytest.mark.parametrize("name, shape", [("lenet5", (32, 32, 1)), ("vgg11", (32, 32, 3))])
def test_every_paper_tap_equals_the_layer_output_of_the_full_model(name, shape):
    model = kerasarch.build_model(name, input_shape=shape)
    x = random_images(shape, batch=3, seed=1) * 255.0
    taps = features.list_taps(name)
    fx = features.feature_extractor(model, taps)
    got = fx.predict(x, verbose=0)
    assert set(got) == set(taps)
    reference = _chain_outputs(model, x)
    spec = kerasarch.get_spec(name)
    for tap in taps:
        np.testing.assert_allclose(got[tap], reference[spec.taps[tap]], rtol=1e-5, atol=1e-5, err_msg=tap)
    # and the chain ends in the full model's output
    np.testing.assert_allclose(reference["predictions"], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_resnet_stage_taps_continue_into_the_full_models_output():
    """ResNet-20 (a branched graph): its last stage tap, average-pooled and put through the classifier, gives the
    full model's output; every stage tap has the paper's shape (32, 16, 8 pixels; 16, 32, 64 maps)."""
    model = kerasarch.build_model("resnet20")
    x = random_images((32, 32, 3), batch=2, seed=2)
    fx = features.feature_extractor(model, features.list_taps("resnet20"))
    got = fx.predict(x, verbose=0)
    assert [got[t].shape[1:] for t in ("conv2_x", "conv3_x", "conv4_x")] == [(32, 32, 16), (16, 16, 32), (8, 8, 64)]
    pooled = got["conv4_x"].mean(axis=(1, 2))
    kernel, bias = model.get_layer("predictions").get_weights()
    logits = pooled @ kernel + bias
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), rtol=1e-4, atol=1e-6)


def test_built_by_name_with_paper_and_layer_names():
    fx = features.feature_extractor("vgg11", ["fc7", "block3_conv2"], input_shape=(32, 32, 3))
    assert fx.name == "vgg11_features"
    out = fx.predict(random_images((32, 32, 3), batch=1), verbose=0)
    assert out["fc7"].shape == (1, 4096)  # fc7 is keras.applications' fc2
    assert out["block3_conv2"].shape == (1, 8, 8, 256)
    assert fx.get_layer("fc2") is not None


def test_extractor_shares_the_models_weights():
    model = kerasarch.build_model("lenet5")
    fx = features.feature_extractor(model, "C1")
    x = random_images((32, 32, 1), batch=1)
    before = fx.predict(x, verbose=0)["C1"]
    kernel, bias = model.get_layer("c1").get_weights()
    model.get_layer("c1").set_weights([kernel, bias + 1.0])
    assert not np.allclose(fx.predict(x, verbose=0)["C1"], before)


def test_unknown_tap_lists_the_valid_ones():
    model = kerasarch.build_model("lenet5")
    with pytest.raises(ValueError, match=r"Unknown tap 'F7' for lenet5\. .*C1, S2, C3, S4, C5, F6"):
        features.feature_extractor(model, ["F6", "F7"])


def test_tap_missing_from_a_headless_model_says_why():
    with pytest.raises(ValueError, match=r"'fc7' of vgg11 is layer 'fc2'.*include_top=False"):
        features.feature_extractor("vgg11", "fc7", input_shape=(32, 32, 3), include_top=False)


def test_list_taps_and_penultimate_tap():
    assert features.list_taps("vgg16")[-3:] == ["pool5", "fc6", "fc7"]
    assert features.penultimate_tap("vgg16") == "fc7"
    assert features.penultimate_tap("lenet5") == "F6"
    with pytest.raises(ValueError, match="Did you mean"):
        features.list_taps("lenet6")


def test_unregistered_model_takes_layer_names_only():
    inputs = keras.Input((4,))
    out = keras.layers.Dense(3, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(out), name="custom")
    fx = features.feature_extractor(model, "hidden")
    assert fx.predict(np.ones((1, 4), "float32"), verbose=0)["hidden"].shape == (1, 3)
    with pytest.raises(ValueError, match="Unknown tap 'fc7' for model 'custom'.*hidden"):
        features.feature_extractor(model, "fc7")
    with pytest.raises(ValueError, match="no model card"):
        features.list_taps(model)


def test_paper_taps_come_from_the_card_whatever_the_model_is_named(tmp_path):
    model = kerasarch.build_model("lenet5", name="digits_net")
    path = tmp_path / "net.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert features.list_taps(loaded) == ["C1", "S2", "C3", "S4", "C5", "F6"]
    fx = features.feature_extractor(loaded, ["S4", "F6"])
    out = fx.predict(np.zeros((1, 32, 32, 1), "float32"), verbose=0)
    assert out["S4"].shape == (1, 5, 5, 16) and out["F6"].shape == (1, 84)
