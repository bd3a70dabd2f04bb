"""FractalNet (arXiv:1605.07648): the join against numpy, drop-path statistics, global drop-path and column
extraction, the block against the expansion rule, and the parameter counts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch.applications.fractalnet import extract_column, fractalnet
from kerasarch.layers.fractal import FractalJoin, GlobalDropPathSampler
from tests.helpers import random_images, trainable_params


def _small(columns=3, **kwargs):
    """A FractalNet small enough to run many times: 2 blocks of 8 channels on 8×8 inputs, logits out."""
    kwargs = {
        "widths": (8, 8),
        "dropout": None,
        "input_shape": (8, 8, 3),
        "classes": 5,
        "classifier_activation": None,
        **kwargs,
    }
    return fractalnet(columns, **kwargs)


# --- the join ---------------------------------------------------------------------------------------------------


def test_join_is_the_mean_at_inference():
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(2, 4, 4, 6)).astype("float32") for _ in range(3)]
    selector = np.tile(np.eye(3, dtype="float32")[1], (2, 1))  # a global batch: ignored at inference
    for join, inputs in ((FractalJoin(drop_rate=0.15), xs), (FractalJoin(columns=(1, 2, 3)), xs + [selector])):
        for training in (None, False):
            np.testing.assert_allclose(join(inputs, training=training), np.mean(xs, axis=0), rtol=1e-6, atol=1e-6)


def _kept(join, n, trials):
    """Which of ``n`` inputs a join kept in each of ``trials`` training calls, read from one-hot inputs: the
    output is ``mask / sum(mask)``."""
    xs = [tf.constant(np.eye(n, dtype="float32")[i][None, None, None, :]) for i in range(n)]
    step = tf.function(lambda: join(xs, training=True))
    out = np.stack([step().numpy().reshape(n) for _ in range(trials)])
    kept = out > 0
    # The survivors are averaged: each gets weight 1/k.
    np.testing.assert_allclose(out, kept / np.maximum(kept.sum(axis=1, keepdims=True), 1), rtol=1e-6)
    return kept


def test_local_drop_path_keeps_one_and_drops_at_the_rate():
    trials = 3000
    kept = _kept(FractalJoin(drop_rate=0.15, seed=7), 3, trials)
    assert kept.any(axis=1).all(), "a join dropped all its inputs"
    # Each input is dropped with p = 0.15; when all three are dropped (p^3) one of them is put back, so the
    # observed drop rate of an input is p - p^3 / 3.
    expected = 0.15 - 0.15**3 / 3
    sigma = np.sqrt(expected * (1 - expected) / trials)
    np.testing.assert_allclose(1 - kept.mean(axis=0), expected, atol=4 * sigma)
    all_kept = 0.85**3
    np.testing.assert_allclose(kept.all(axis=1).mean(), all_kept, atol=4 * np.sqrt(all_kept * (1 - all_kept) / trials))


def test_local_drop_path_puts_back_one_input_when_all_are_dropped():
    trials = 2000
    kept = _kept(FractalJoin(drop_rate=0.5, seed=11), 2, trials)
    assert kept.any(axis=1).all()
    # Both dropped (1/4) becomes one kept at random: each input is dropped 1/2 - 1/8 of the time, both kept 1/4.
    sigma = np.sqrt(0.375 * 0.625 / trials)
    np.testing.assert_allclose(1 - kept.mean(axis=0), 0.375, atol=4 * sigma)
    np.testing.assert_allclose(kept.all(axis=1).mean(), 0.25, atol=4 * np.sqrt(0.25 * 0.75 / trials))


def test_global_selection_at_one_join():
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(2, 3, 3, 4)).astype("float32") for _ in range(2)]
    join = FractalJoin(columns=(2, 3), drop_rate=0.5)
    one_hot = np.eye(3, dtype="float32")
    # Global batch for column 3: only column 3's input passes, unscaled.
    np.testing.assert_allclose(join(xs + [np.tile(one_hot[2], (2, 1))], training=True), xs[1], rtol=1e-6)
    np.testing.assert_allclose(join(xs + [np.tile(one_hot[1], (2, 1))], training=True), xs[0], rtol=1e-6)
    # Column 1 does not pass through this join: the plain mean (the network discards it downstream).
    np.testing.assert_allclose(
        join(xs + [np.tile(one_hot[0], (2, 1))], training=True), np.mean(xs, axis=0), rtol=1e-6, atol=1e-6
    )


def test_sampler_draws_one_column_for_half_the_batches():
    x = np.zeros((4, 2, 2, 3), "float32")
    sampler = GlobalDropPathSampler(4, global_rate=0.5, seed=3)
    np.testing.assert_array_equal(sampler(x), np.zeros((4, 4)))  # inference: never global
    step = tf.function(lambda: sampler(x, training=True))
    rows = np.stack([step().numpy() for _ in range(2000)])
    assert (rows == rows[:, :1, :]).all(), "one decision per batch"
    rows = rows[:, 0, :]
    assert set(np.unique(rows)) <= {0.0, 1.0} and (rows.sum(axis=1) <= 1).all()
    is_global = rows.sum(axis=1) == 1
    np.testing.assert_allclose(is_global.mean(), 0.5, atol=4 * np.sqrt(0.25 / 2000))
    counts = rows[is_global].sum(axis=0)
    assert counts.min() > 0.7 * counts.mean(), f"columns not drawn uniformly: {counts}"


# --- the network -----------------------------------------------------------------------------------------------


def test_global_drop_path_runs_exactly_one_column_and_extraction_reproduces_it():
    model = _small(global_drop_path=1.0, drop_path=0.15, seed=5)
    columns = [extract_column(model, c) for c in (1, 2, 3)]
    x = random_images((8, 8, 3), batch=4)
    chosen = []
    for _ in range(8):
        y = np.asarray(model(x, training=True))
        gaps = [np.abs(np.asarray(col(x, training=True)) - y).max() for col in columns]
        matches = [c for c, gap in zip((1, 2, 3), gaps) if gap < 1e-5]
        assert len(matches) == 1 and min(g for g in gaps if g >= 1e-5) > 1e-3, gaps
        chosen += matches
    assert len(set(chosen)) > 1, f"the sampler always chose column {chosen[0]}"


def test_extracted_column_shares_weights_and_keeps_shapes():
    model = _small(4)
    deepest = extract_column(model, 4)
    ids = {id(w) for w in model.weights}
    assert deepest.weights and all(id(w) in ids for w in deepest.weights)
    assert deepest.output_shape == model.output_shape and deepest.input_shape == model.input_shape
    # Column c has 2^(c-1) convolutions per block: 8 + 8 here, plus the classifier.
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in deepest.layers) == 16
    assert len(extract_column(model, 1).layers) == 1 + 2 * (3 + 1) + 2  # input, 2 × (conv, bn, relu, pool), head
    with pytest.raises(ValueError, match="from 1 to 4.*Received: column=5"):
        extract_column(model, 5)
    with pytest.raises(ValueError, match="no FractalNet columns"):
        extract_column(kerasarch.build_model("vgg11", include_top=False, input_shape=(32, 32, 3)), 1)


def _maxpool2(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@pytest.mark.parametrize("columns", [2, 3, 4])
def test_block_follows_the_expansion_rule(columns):
    """The block against ``f_1(z) = conv(z)``, ``f_{C+1}(z) = join(f_C(f_C(z)), conv(z))`` evaluated recursively
    with the model's own convolution units and numpy joins; joins meeting at one depth merge into one mean over
    all their inputs, and the block's last join averages the max-pooled columns (§4's implementation)."""
    model = _small(columns, widths=(6,), input_shape=(4, 4, 3), include_top=False)
    count = {}

    def unit(z, col):
        count[col] = count.get(col, 0) + 1
        base = f"block1_col{col}_conv{count[col]}"
        for name in (base, f"{base}_bn", f"{base}_relu"):
            z = model.get_layer(name)(z, training=False)
        return np.asarray(z)

    def expand(z, c, offset):  # the unjoined column outputs of f_c; its own new column is offset + 1
        if c == 1:
            return [unit(z, offset + 1)]
        first = expand(z, c - 1, offset + 1)
        return expand(np.mean(first, axis=0), c - 1, offset + 1) + [unit(z, offset + 1)]

    x = random_images((4, 4, 3), batch=2)
    expected = np.mean([_maxpool2(y) for y in expand(x, columns, 0)], axis=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers) == 2**columns - 1


def test_dropout_per_block_and_round_trip(tmp_path):
    model = _small(dropout=(0.0, 0.3), seed=2)
    rates = {layer.name: layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)}
    assert len(rates) == 7 and set(rates.values()) == {0.3} and all(n.startswith("block2_") for n in rates)
    x = random_images((8, 8, 3), batch=2)
    path = tmp_path / "fractal.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    for layer in model.layers:
        if isinstance(layer, (FractalJoin, GlobalDropPathSampler)):
            assert loaded.get_layer(layer.name).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="Received: dropout"):
        _small(dropout=(0.1,))


def test_training_step_runs():
    model = _small(drop_path=0.15, global_drop_path=0.5, dropout=0.1, seed=0)
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = random_images((8, 8, 3), batch=8)
    history = model.fit(x, np.arange(8) % 5, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


# --- parameter counts -------------------------------------------------------------------------------------------


def _derived_params(columns, widths=(64, 128, 256, 512, 512), classes=10):
    """Trainable parameters of the §4 CIFAR FractalNet, written out.

    A block of C columns has 2^C - 1 convolutions, all 3×3: the first of each column (C of them) reads the
    block's input channels, the other 2^C - 1 - C read the block's width w. Each has 9·c_in·w weights and w
    biases (the authors' Caffe convolutions have biases; their BatchNorm has no learned scale or shift, so it
    adds nothing trainable). The classifier reads w_5 = 512 channels at 1×1.
    """
    total, c_in = 0, 3
    for w in widths:
        first, rest = columns, 2**columns - 1 - columns
        total += first * (9 * c_in * w + w) + rest * (9 * w * w + w)
        c_in = w
    return total + c_in * classes + classes


def test_parameter_counts_and_the_papers_figures():
    """20 layers (C=3): 33,714,314 = 33.7M; 40 layers (C=4): 76,084,554 = 76.1M. The paper's Table 1 prints
    38.6M and 22.9M (docs/references.md repeats them). They fit neither network, nor each other swapped (22.9M vs
    33.7M, 38.6M vs 76.1M), and no bias/BN convention closes the gap (the BN and bias terms total 20k–40k); the
    40-layer figure is even smaller than the 20-layer one although the 40-layer net has every convolution of
    the 20-layer one plus more. An independent PyTorch reimplementation (khanrc/pt.fractalnet) reports the same
    33.7M for the 20-layer network. The specs therefore carry the derived counts, with the printed ones in
    their notes."""
    c3, c4 = _derived_params(3), _derived_params(4)
    assert (c3, c4) == (33_714_314, 76_084_554)
    assert (kerasarch.get_spec("fractalnet20").params, kerasarch.get_spec("fractalnet40").params) == (c3, c4)
    assert (round(c3 / 1e6, 1), round(c4 / 1e6, 1)) == (33.7, 76.1)
    assert {round(c3 / 1e6, 1), round(c4 / 1e6, 1)}.isdisjoint({38.6, 22.9})
    # Deepest path = B · 2^(C-1) convolutions: the names' 20 and 40.
    assert [kerasarch.get_spec(n).config["columns"] for n in ("fractalnet20", "fractalnet40")] == [3, 4]


def test_fractalnet20_model_and_its_deepest_column():
    model = kerasarch.build_model("fractalnet20")
    assert trainable_params(model) == _derived_params(3)
    assert model.get_layer("block5_out").output.shape[1:] == (1, 1, 512)
    # The deepest column alone is a plain 20-layer network: per block one conv from the block input, three
    # from w to w, then the classifier.
    plain, c_in = 0, 3
    for w in (64, 128, 256, 512, 512):
        plain += (9 * c_in * w + w) + 3 * (9 * w * w + w)
        c_in = w
    assert trainable_params(extract_column(model, 3)) == plain + 512 * 10 + 10
