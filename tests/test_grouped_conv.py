"""GroupedConv2D: every formulation equals keras.layers.Conv2D(groups=…) and a numpy reference, forward and
gradients, in float32; same weights layout; serialisable; used by the grouped families."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import kerasarch
from kerasarch.layers.grouped import FORMULATIONS, GroupedConv2D, auto_formulation

# (groups, C_in, C_out, kernel, strides, padding, dilation)
CASES = [
    (2, 6, 8, 3, 1, "same", 1),
    (4, 8, 12, 3, 2, "same", 1),
    (4, 8, 8, 3, 2, "valid", 1),
    (2, 4, 6, 5, 1, "valid", 1),
    (3, 6, 9, 3, 1, "same", 2),
    (8, 8, 16, 1, 1, "valid", 1),
]
TF_FORMULATIONS = ("keras", "grouped_op", "split", "auto")


def _np_pad_same(x, k, s, d):
    """TensorFlow's 'same' padding: total = max((ceil(H/s) − 1)·s + (k − 1)·d + 1 − H, 0), the extra on the end."""
    pads = []
    for size in x.shape[1:3]:
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def np_grouped_conv(x, kernel, bias, groups, s, padding, d, upstream=None):
    """Direct grouped convolution in numpy; with ``upstream`` (dL/dy) also returns dL/dx and dL/dkernel."""
    n, h, w, cin = x.shape
    k, _, cg_in, cout = kernel.shape
    cg_out = cout // groups
    pads = _np_pad_same(x, k, s, d) if padding == "same" else [(0, 0), (0, 0)]
    xp = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)]).astype("float64")
    ho = (xp.shape[1] - (k - 1) * d - 1) // s + 1
    wo = (xp.shape[2] - (k - 1) * d - 1) // s + 1
    xg = xp.reshape(n, xp.shape[1], xp.shape[2], groups, cg_in)
    kg = kernel.astype("float64").reshape(k, k, cg_in, groups, cg_out)
    y = np.zeros((n, ho, wo, groups, cg_out))
    for a in range(k):
        for b in range(k):
            patch = xg[:, a * d : a * d + (ho - 1) * s + 1 : s, b * d : b * d + (wo - 1) * s + 1 : s]  # n,ho,wo,g,ci
            y += np.einsum("nhwgi,igo->nhwgo", patch, kg[a, b])
    y = y.reshape(n, ho, wo, cout) + bias
    if upstream is None:
        return y
    ug = upstream.astype("float64").reshape(n, ho, wo, groups, cg_out)
    dxg = np.zeros_like(xg)
    dk = np.zeros_like(kg)
    for a in range(k):
        for b in range(k):
            sl = (slice(None), slice(a * d, a * d + (ho - 1) * s + 1, s), slice(b * d, b * d + (wo - 1) * s + 1, s))
            dk[a, b] = np.einsum("nhwgi,nhwgo->igo", xg[sl], ug)
            dxg[sl] += np.einsum("nhwgo,igo->nhwgi", ug, kg[a, b])
    dx = dxg.reshape(xp.shape)[:, pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + w]
    return y, dx, dk.reshape(kernel.shape)


def _case(case, seed=0):
    groups, cin, cout, k, s, padding, d = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 11, 10, cin)).astype("float32")
    kernel = rng.standard_normal((k, k, cin // groups, cout)).astype("float32")
    bias = rng.standard_normal((cout,)).astype("float32")
    upstream_shape = np_grouped_conv(x, kernel, bias, groups, s, padding, d).shape
    upstream = rng.standard_normal(upstream_shape).astype("float32")
    return x, kernel, bias, upstream


def _layer(cls, case, kernel, bias, **kw):
    groups, cin, cout, k, s, padding, d = case
    layer = cls(cout, k, strides=s, padding=padding, dilation_rate=d, groups=groups, **kw)
    layer.build((None, None, None, cin))
    layer.set_weights([kernel, bias])
    return layer


def _forward_and_grads(layer, x, upstream, jit=False):
    xv = tf.constant(x)

    @tf.function(jit_compile=jit)
    def run(xv):
        with tf.GradientTape() as tape:
            tape.watch(xv)
            y = layer(xv)
            loss = tf.reduce_sum(y * upstream)
        dx, dk = tape.gradient(loss, [xv, layer.kernel])
        return y, dx, dk

    return [t.numpy() for t in run(xv)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "g{}_{}to{}_k{}_s{}_{}_d{}".format(*c))
def test_formulations_match_numpy_and_keras_conv2d(case):
    x, kernel, bias, upstream = _case(case)
    y_np, dx_np, dk_np = np_grouped_conv(x, kernel, bias, case[0], case[4], case[5], case[6], upstream)
    y_ref, dx_ref, dk_ref = _forward_and_grads(_layer(keras.layers.Conv2D, case, kernel, bias), x, upstream)
    np.testing.assert_allclose(y_ref, y_np, rtol=1e-4, atol=1e-4)  # the reference agrees with numpy
    for how in TF_FORMULATIONS:
        y, dx, dk = _forward_and_grads(_layer(GroupedConv2D, case, kernel, bias, formulation=how), x, upstream)
        for got, np_ref, keras_ref, what in (
            (y, y_np, y_ref, "y"),
            (dx, dx_np, dx_ref, "dL/dx"),
            (dk, dk_np, dk_ref, "dL/dkernel"),
        ):
            np.testing.assert_allclose(got, np_ref, rtol=1e-4, atol=1e-4, err_msg=f"{how} {what} vs numpy")
            np.testing.assert_allclose(got, keras_ref, rtol=1e-5, atol=1e-4, err_msg=f"{how} {what} vs Conv2D")


def test_auto_is_grouped_op_eagerly_and_split_under_xla_on_cpu():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("CPU rule")
    case = CASES[1]
    x, kernel, bias, upstream = _case(case, seed=1)
    layer = _layer(GroupedConv2D, case, kernel, bias)
    seen = []

    @tf.function(jit_compile=True)
    def traced(v):
        seen.append(layer.resolved_formulation())
        return layer(v)

    traced(tf.constant(x))
    assert seen == ["split"]
    assert auto_formulation() == "grouped_op"  # oneDNN is on in TensorFlow's x86-64 builds
    y_np, dx_np, dk_np = np_grouped_conv(x, kernel, bias, case[0], case[4], case[5], case[6], upstream)
    y, dx, dk = _forward_and_grads(layer, x, upstream, jit=True)
    for got, ref in ((y, y_np), (dx, dx_np), (dk, dk_np)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_mixed_bfloat16_runs_in_bfloat16_and_stays_close():
    case = CASES[1]
    x, kernel, bias, _ = _case(case, seed=2)
    y_np = np_grouped_conv(x, kernel, bias, case[0], case[4], case[5], case[6])
    keras.config.set_dtype_policy("mixed_bfloat16")
    for how in ("grouped_op", "split"):
        y = _layer(GroupedConv2D, case, kernel, bias, formulation=how)(x)
        assert y.dtype == tf.bfloat16
        # bfloat16 has an 8-bit mantissa: ~0.4% relative error per operand, summed over 18 products
        np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), y_np, rtol=0.05, atol=0.15)


def test_same_weights_layout_and_serialisation(tmp_path):
    case = CASES[0]
    x, kernel, bias, _ = _case(case, seed=3)
    layer = _layer(GroupedConv2D, case, kernel, bias, name="conv2")
    plain = _layer(keras.layers.Conv2D, case, kernel, bias)
    assert isinstance(layer, keras.layers.Conv2D)
    assert [tuple(w.shape) for w in layer.weights] == [tuple(w.shape) for w in plain.weights] == [(3, 3, 3, 8), (8,)]
    assert [w.path.split("/")[-1] for w in layer.weights] == ["kernel", "bias"]
    inputs = keras.Input((None, None, case[1]))
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "g.keras")
    model.save(path)
    back = keras.models.load_model(path, safe_mode=True)
    assert type(back.get_layer("conv2")) is GroupedConv2D and back.get_layer("conv2").formulation == "auto"
    np.testing.assert_allclose(back(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    clone = GroupedConv2D.from_config({**layer.get_config(), "formulation": "split"})
    assert clone.groups == case[0] and clone.formulation == "split"


def test_bad_formulation_is_one_clear_line():
    with pytest.raises(ValueError, match=r"one of \('auto', .*Received: formulation='fast'"):
        GroupedConv2D(8, 3, groups=2, formulation="fast")
    assert FORMULATIONS[0] == "auto"


@pytest.mark.parametrize("name, grouped", [("alexnet", ["conv2", "conv4", "conv5"]), ("resnext29_8x64d", None)])
def test_grouped_families_use_it(name, grouped):
    model = kerasarch.build_model(name, weights=None, input_shape=(32, 32, 3) if "29" in name else None)
    found = sorted(layer.name for layer in model.layers if isinstance(layer, GroupedConv2D))
    assert found, name
    assert all(layer.groups > 1 for layer in model.layers if isinstance(layer, GroupedConv2D))
    assert not [layer.name for layer in model.layers if type(layer) is keras.layers.Conv2D and layer.groups > 1]
    if grouped is not None:
        assert found == grouped


def test_jax_backend(tmp_path):
    import jax  # noqa: F401  (the dev extra installs it: a broken install fails, never skips)

    case = CASES[1]
    x, kernel, bias, upstream = _case(case, seed=4)
    y_np, dx_np, dk_np = np_grouped_conv(x, kernel, bias, case[0], case[4], case[5], case[6], upstream)
    np.savez(tmp_path / "in.npz", x=x, kernel=kernel, bias=bias, upstream=upstream)
    code = textwrap.dedent(f"""
        import sys
        import jax
        import numpy as np
        from kerasarch.layers.grouped import GroupedConv2D
        d = np.load(sys.argv[1])
        layer = GroupedConv2D({case[2]}, {case[3]}, strides={case[4]}, padding={case[5]!r}, groups={case[0]})
        layer.build((None, None, None, {case[1]}))
        layer.set_weights([d["kernel"], d["bias"]])
        assert layer.resolved_formulation() == ("split" if jax.default_backend() == "cpu" else "keras")
        loss = lambda x, k: (layer.convolution_op(x, k) * d["upstream"]).sum()
        dx, dk = jax.grad(loss, argnums=(0, 1))(d["x"], d["kernel"])
        np.savez(sys.argv[2], y=np.asarray(layer(d["x"])), dx=np.asarray(dx), dk=np.asarray(dk))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    for got, ref in ((out["y"], y_np), (out["dx"], dx_np), (out["dk"], dk_np)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
