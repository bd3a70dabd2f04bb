"""LeNet-5 (LeCun et al. 1998, §II-B): the layer figures of the paper, its C3 connection table, and the custom
layers against numpy references."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch.layers.lenet import (
    LENET5_C3_TABLE,
    ConnectionTableConv2D,
    EuclideanRBF,
    ScaledTanh,
    TrainableSubsampling2D,
)
from tests.helpers import random_images, trainable_params

# Table I of the paper, transcribed: row = S2 map, column = C3 map, X = connected.
TABLE_I = """
X...XXX..XXXX.XX
XX...XXX..XXXX.X
XXX...XXX..X.XXX
.XXX..XXXX..X.XX
..XXX..XXXX.XX.X
...XXX..XXXX.XXX
"""

# The paper's figures, layer by layer: (layer, output shape, trainable parameters).
LENET5_LAYERS = [
    ("c1", (28, 28, 6), 6 * (5 * 5 * 1 + 1)),  # 156
    ("s2", (14, 14, 6), 6 * 2),  # one coefficient + one bias per map: 12
    # 6 maps read 3 S2 maps, 9 read 4, 1 reads all 6: 6·(3·25 + 1) + 9·(4·25 + 1) + (6·25 + 1) = 456 + 909 + 151
    ("c3", (10, 10, 16), 6 * (3 * 25 + 1) + 9 * (4 * 25 + 1) + (6 * 25 + 1)),  # 1,516
    ("s4", (5, 5, 16), 16 * 2),  # 32
    ("c5", (1, 1, 120), 120 * (5 * 5 * 16 + 1)),  # 48,120
    ("f6", (84,), 84 * (120 + 1)),  # 10,164
]
PAPER_WITHOUT_OUTPUT = 60_000  # §II-B: "60,000 trainable parameters"
DENSE_OUTPUT = 10 * (84 + 1)  # 850: lenet5 = 60,000 + 850 = 60,850
RBF_CENTRES = 10 * 84  # 840, trainable only with rbf_centres="trainable"


def np_conv_valid(x, k):
    """Valid 2-D convolution (cross-correlation, as Keras): x (N, H, W, C), k (kh, kw, C, O)."""
    patches = np.lib.stride_tricks.sliding_window_view(x, k.shape[:2], axis=(1, 2))  # N, H', W', C, kh, kw
    return np.einsum("nhwcij,ijco->nhwo", patches, k)


def test_connection_table_is_table_one():
    rows = TABLE_I.split()
    transcribed = [tuple(i for i in range(6) if rows[i][j] == "X") for j in range(16)]
    assert LENET5_C3_TABLE == tuple(transcribed)
    assert sorted(len(r) for r in LENET5_C3_TABLE) == [3] * 6 + [4] * 9 + [6]


def test_paper_layer_figures():
    model = kerasarch.build_model("lenet5")
    for layer, shape, params in LENET5_LAYERS:
        assert tuple(model.get_layer(layer).output.shape[1:]) == shape, layer
        assert model.get_layer(layer).count_params() == params, layer
    assert sum(p for _, _, p in LENET5_LAYERS) == PAPER_WITHOUT_OUTPUT
    assert trainable_params(model) == PAPER_WITHOUT_OUTPUT + DENSE_OUTPUT == 60_850
    assert isinstance(model.get_layer("c1_act"), ScaledTanh)


def test_modern_variant_count():
    model = kerasarch.build_model("lenet5_relu")
    # C1 156 + C3 full 16·(5·5·6 + 1) = 2,416 + C5 48,120 + F6 10,164 + output 850; max-pools have none.
    assert model.get_layer("c3").count_params() == 16 * (5 * 5 * 6 + 1) == 2_416
    assert trainable_params(model) == 156 + 2_416 + 48_120 + 10_164 + 850 == 61_706
    assert isinstance(model.get_layer("s2"), keras.layers.MaxPooling2D)


@pytest.mark.parametrize(
    "centres, trainable, total",
    [
        ("fixed", PAPER_WITHOUT_OUTPUT, PAPER_WITHOUT_OUTPUT + RBF_CENTRES),
        ("trainable", PAPER_WITHOUT_OUTPUT + RBF_CENTRES, PAPER_WITHOUT_OUTPUT + RBF_CENTRES),
    ],
)
def test_rbf_output_counts(centres, trainable, total):
    model = kerasarch.build_model("lenet5", output="rbf", rbf_centres=centres)
    assert trainable_params(model) == trainable
    assert model.count_params() == total
    assert model.output_shape == (None, 10)


def test_c3_masks_weights_and_matches_numpy():
    layer = ConnectionTableConv2D(LENET5_C3_TABLE, 5)
    layer.build((None, 14, 14, 6))
    assert layer.count_params() == 1_516
    rng = np.random.default_rng(0)
    packed = rng.normal(size=(5, 5, 60)).astype("float32")
    bias = rng.normal(size=(16,)).astype("float32")
    layer.set_weights([packed, bias])
    full = np.zeros((5, 5, 6, 16), "float32")  # the documented packing: by output map, then ascending input map
    n = 0
    for j, row in enumerate(LENET5_C3_TABLE):
        for i in row:
            full[:, :, i, j] = packed[:, :, n]
            n += 1
    np.testing.assert_array_equal(np.asarray(layer.full_kernel()), full)
    x = rng.normal(size=(2, 14, 14, 6)).astype("float32")
    np.testing.assert_allclose(np.asarray(layer(x)), np_conv_valid(x, full) + bias, rtol=1e-4, atol=1e-4)


def test_c3_output_map_does_not_depend_on_inputs_outside_its_table():
    layer = ConnectionTableConv2D(LENET5_C3_TABLE, 5)
    x = tf.constant(np.random.default_rng(1).normal(size=(1, 14, 14, 6)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
        sums = [tf.reduce_sum(y[..., j]) for j in range(16)]
    for j, row in enumerate(LENET5_C3_TABLE):
        per_input = np.abs(tape.gradient(sums[j], x).numpy()).sum(axis=(0, 1, 2))
        assert np.all(per_input[list(row)] > 0), j
        assert np.all(per_input[[i for i in range(6) if i not in row]] == 0), j
    # And directly: changing the maps outside map 0's table {0, 1, 2} leaves map 0 unchanged, not the others.
    x2 = x.numpy().copy()
    x2[..., 3:] += 5.0
    before, after = np.asarray(layer(x)), np.asarray(layer(x2))
    np.testing.assert_array_equal(after[..., 0], before[..., 0])
    assert not np.allclose(after[..., 15], before[..., 15])


def test_c3_needs_the_input_maps_its_table_reads():
    with pytest.raises(ValueError, match="at least 6 channels.*Received"):
        ConnectionTableConv2D(LENET5_C3_TABLE, 5)(np.zeros((1, 14, 14, 4), "float32"))


def test_subsampling_matches_numpy():
    rng = np.random.default_rng(2)
    layer = TrainableSubsampling2D(2)
    x = rng.normal(size=(2, 28, 28, 6)).astype("float32")
    layer.build(x.shape)
    coef, bias = rng.normal(size=(6,)).astype("float32"), rng.normal(size=(6,)).astype("float32")
    layer.set_weights([coef, bias])
    window_sums = x.reshape(2, 14, 2, 14, 2, 6).sum(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(layer(x)), window_sums * coef + bias, rtol=1e-5, atol=1e-5)
    assert layer.count_params() == 12


def test_untrained_subsampling_is_an_average_pool():
    x = np.random.default_rng(3).normal(size=(1, 10, 10, 16)).astype("float32")
    expected = x.reshape(1, 5, 2, 5, 2, 16).mean(axis=(2, 4))
    np.testing.assert_allclose(np.asarray(TrainableSubsampling2D(2)(x)), expected, rtol=1e-5, atol=1e-6)


def test_scaled_tanh():
    a = np.linspace(-4, 4, 17).astype("float32")
    np.testing.assert_allclose(np.asarray(ScaledTanh()(a)), 1.7159 * np.tanh(2 * a / 3), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ScaledTanh()(np.array([-1.0, 1.0], "float32"))), [-1, 1], atol=1e-4)


@pytest.mark.parametrize("trainable", [False, True])
def test_rbf_is_squared_distance_to_the_centres(trainable):
    x = np.random.default_rng(4).normal(size=(3, 84)).astype("float32")
    layer = EuclideanRBF(10, trainable_centres=trainable)
    logits = np.asarray(layer(x))
    w = layer.get_weights()[0]
    assert w.shape == (84, 10) and set(np.unique(w)) == {-1.0, 1.0}
    penalties = ((x[:, :, None] - w[None]) ** 2).sum(axis=1)
    np.testing.assert_allclose(-logits, penalties, rtol=1e-5)
    assert len(layer.trainable_weights) == int(trainable)
    probs = np.asarray(EuclideanRBF(10, activation="softmax")(x))
    np.testing.assert_allclose(probs.argmax(-1), penalties.argmin(-1))


def test_every_weight_gets_a_gradient():
    model = kerasarch.build_model("lenet5", output="rbf", rbf_centres="trainable")
    x = random_images((32, 32, 1), batch=4)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(np.arange(4), model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    for w, g in zip(model.trainable_weights, grads):
        assert g is not None and np.any(np.asarray(g) != 0), w.path


def test_rbf_model_round_trip(tmp_path):
    model = kerasarch.build_model("lenet5", output="rbf", rbf_centres="trainable")
    x = random_images((32, 32, 1), batch=2)
    y = model.predict(x, verbose=0)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)
    model.save(tmp_path / "lenet5_rbf.keras")
    loaded = keras.saving.load_model(tmp_path / "lenet5_rbf.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), y, rtol=1e-5, atol=1e-6)
    assert loaded.get_layer("predictions").get_config() == model.get_layer("predictions").get_config()
    assert loaded.get_layer("c3").get_config() == model.get_layer("c3").get_config()


def test_headless_ends_at_c5():
    model = kerasarch.build_model("lenet5", include_top=False)
    assert model.layers[-1].name == "c5_act" and model.output_shape == (None, 1, 1, 120)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output": "euclid"}, "Received: output='euclid'"),
        ({"subsampling": "avg"}, "Received: subsampling='avg'"),
        ({"rbf_centres": "learned"}, "Received: rbf_centres='learned'"),
    ],
)
def test_impossible_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kerasarch.build_model("lenet5", **kwargs)
