"""State and randomness in composition: batch norm's running statistics, dropout's keys,
training and evaluation modes, the layers built on the modern ops, and interop with stax
and jax.nn.initializers."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.example_libraries import stax

from jaxcnn import nn, ops, reference

KEY = jax.random.PRNGKey(0)


def _x(rng, *shape, dtype=jnp.float32):
    return jnp.asarray(rng.normal(size=shape), dtype)


# --------------------------------------------------------------------------- state threading


def test_batch_norm_updates_running_statistics_in_training_and_uses_them_in_evaluation(rng):
    layer = nn.BatchNorm(momentum=0.8, eps=1e-3)
    params, state, shape = layer.init(KEY, (-1, 5, 3))
    assert shape == (-1, 5, 3) and set(params) == {"gamma", "beta"}
    np.testing.assert_array_equal(state["mean"], np.zeros(3))
    np.testing.assert_array_equal(state["var"], np.ones(3))
    x = _x(rng, 4, 5, 3) * 2 + 1
    y, new = layer.apply(params, state, x, training=True)
    flat = np.asarray(x, np.float64).reshape(-1, 3)
    n = flat.shape[0]
    expected = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-3)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 3), expected, rtol=1e-4, atol=1e-5)
    # running ← momentum · running + (1 − momentum) · batch, the variance unbiased (n / (n − 1))
    np.testing.assert_allclose(new["mean"], 0.2 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.8 + 0.2 * flat.var(0) * n / (n - 1), rtol=1e-5)
    y_eval, same = layer.apply(params, new, x)
    assert same is new
    expected = (flat - np.asarray(new["mean"])) / np.sqrt(np.asarray(new["var"]) + 1e-3)
    np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 3), expected, rtol=1e-5, atol=1e-6)


def test_batch_norm_statistics_carry_no_gradient(rng):
    layer = nn.BatchNorm()
    params, state, _ = layer.init(KEY, (-1, 3))
    x = _x(rng, 6, 3)
    g = jax.grad(lambda x: jnp.sum(layer.apply(params, state, x, training=True)[1]["mean"]))(x)
    np.testing.assert_array_equal(g, np.zeros_like(x))


def test_combinators_thread_state_through_every_branch(rng):
    """serial, parallel, residual, fan_out/fan_in and dense_block each hand every child its
    own state back, updated, in the structure init gave."""
    block = nn.serial(nn.Dense(4), nn.BatchNorm(), nn.Relu())
    model = nn.serial(
        nn.Dense(4), nn.residual(block),
        nn.fan_out(2), nn.parallel(nn.BatchNorm(), nn.serial(nn.Dense(4), nn.BatchNorm())), nn.fan_in_concat(),
        # dense_block's input is all batch-normalised (zero batch mean): a bias keeps its last mean off 0.
        nn.dense_block(nn.serial(nn.Dense(2, b_init=jax.nn.initializers.constant(0.5)), nn.BatchNorm())),
    )
    params, state, shape = model.init(KEY, (-1, 3))
    assert shape == (-1, 10)
    x = _x(rng, 8, 3)
    y, new = jax.jit(lambda p, s, x: model.apply(p, s, x, training=True))(params, state, x)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(state)
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(state))]
    assert len(changed) == 2 * 4 and all(changed)  # four batch norms, mean and var each
    y_eval, kept = model.apply(params, new, x)
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(kept), jax.tree_util.tree_leaves(new)))
    assert not np.allclose(y, y_eval)


def test_stateless_layers_are_written_as_before():
    double = nn.Layer.stateless(lambda key, s: ((), s), lambda params, x: 2 * x, name="double")
    model = nn.serial(double, nn.Relu(), double)
    params, state, _ = model.init(KEY, (-1, 2))
    y, new = model.apply(params, state, jnp.array([[1.0, -1.0]]), training=True, key=KEY)
    np.testing.assert_array_equal(y, [[4.0, 0.0]])
    assert new == state == ((), (), ())


# --------------------------------------------------------------------------- dropout and keys


def test_dropout_rate_is_the_drop_probability_and_evaluation_is_the_identity():
    layer = nn.Dropout(0.3)
    params, state, _ = layer.init(KEY, (-1, 100_000))
    x = jnp.ones((1, 100_000))
    y, _ = layer.apply(params, state, x, training=True, key=KEY)
    dropped = float(jnp.mean(y == 0))
    assert dropped == pytest.approx(0.3, abs=0.01)
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.7], rtol=1e-6)
    np.testing.assert_array_equal(layer.apply(params, state, x)[0], x)


def test_combinators_give_each_layer_its_own_key():
    model = nn.serial(nn.Dropout(0.5), nn.fan_out(2), nn.parallel(nn.Dropout(0.5), nn.Dropout(0.5)))
    params, state, _ = model.init(KEY, (-1, 64))
    (a, b), _ = model.apply(params, state, jnp.ones((1, 64)), training=True, key=KEY)
    assert not np.array_equal(a == 0, b == 0)
    (a2, _), _ = model.apply(params, state, jnp.ones((1, 64)), training=True, key=KEY)
    np.testing.assert_array_equal(a, a2)  # same key, same masks
    (a3, _), _ = model.apply(params, state, jnp.ones((1, 64)), training=True, key=jax.random.PRNGKey(1))
    assert not np.array_equal(a, a3)


def test_dropout_in_training_without_a_key_is_an_error():
    layer = nn.Dropout(0.5)
    with pytest.raises(ValueError, match=r"Dropout\(0.5\): training=True needs a PRNG key; call "
                                         r"apply\(params, state, x, training=True, key=key\)"):
        layer.apply((), (), jnp.ones((2, 3)), training=True)


# --------------------------------------------------------------------------- the new layers


def _grads(layer, params, state, x, training, key=None):
    def loss(params, x):
        y, _ = layer.apply(params, state, x, training=training, key=key)
        return jnp.sum(jnp.sin(y))

    return jax.grad(loss, argnums=(0, 1))(params, x)


NEW_LAYERS = {
    "BatchNorm(train)": (lambda o: nn.BatchNorm(ops=o), (-1, 4, 5, 3), True),
    "BatchNorm(eval)": (lambda o: nn.BatchNorm(ops=o), (-1, 4, 5, 3), False),
    "LayerNorm": (lambda o: nn.LayerNorm(ops=o), (-1, 4, 5, 6), True),
    "LayerNorm(H, W, C)": (lambda o: nn.LayerNorm(axis=(1, 2, 3), ops=o), (-1, 4, 5, 6), True),
    "GroupNorm": (lambda o: nn.GroupNorm(3, ops=o), (-1, 4, 5, 6), True),
    "Dropout": (lambda o: nn.Dropout(0.4, ops=o), (-1, 4, 5, 3), True),
    "GlobalMeanPool": (lambda o: nn.GlobalMeanPool(ops=o), (-1, 4, 5, 3), True),
    "GlobalMaxPool": (lambda o: nn.GlobalMaxPool(ops=o), (-1, 4, 5, 3), True),
    "LogSoftmax": (lambda o: nn.LogSoftmax(ops=o), (-1, 7), True),
    "LeakyRelu": (lambda o: nn.LeakyRelu(0.2, ops=o), (-1, 4, 3), True),
    "Conv(groups=2)": (lambda o: nn.Conv(4, (3, 3), padding="SAME", groups=2, ops=o), (-1, 5, 5, 6), True),
    "Conv(depthwise)": (lambda o: nn.Conv(6, (3, 3), stride=2, groups=6, ops=o), (-1, 7, 7, 6), True),
    "ConvTranspose(groups, dilation, output_padding)": (
        lambda o: nn.ConvTranspose(6, 3, stride=2, padding=1, dilation=(1, 2), output_padding=1, groups=2, ops=o),
        (-1, 4, 3, 4), True),
}


@pytest.mark.parametrize("name", sorted(NEW_LAYERS))
def test_new_layer_gradients_agree_between_ops_and_reference(name, rng):
    build, shape, training = NEW_LAYERS[name]
    hand, auto = build(ops), build(reference)
    params, state, out_shape = hand.init(KEY, shape)
    params, state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64) + 0.1 * rng.normal(size=a.shape),
                                           (params, state))
    state = jax.tree_util.tree_map(jnp.abs, state)  # a running variance stays positive
    x = _x(rng, 3, *shape[1:], dtype=jnp.float64)
    y, _ = hand.apply(params, state, x, training=training, key=KEY)
    assert (-1, *y.shape[1:]) == tuple(out_shape)
    g_hand = _grads(hand, params, state, x, training, KEY)
    g_auto = _grads(auto, params, state, x, training, KEY)
    for a, b in zip(jax.tree_util.tree_leaves(g_hand), jax.tree_util.tree_leaves(g_auto)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_grouped_conv_params_and_count():
    layer = nn.Conv(8, (3, 3), groups=4)
    params, _, shape = layer.init(KEY, (-1, 6, 6, 4))
    assert params["w"].shape == (3, 3, 1, 8) and shape == (-1, 4, 4, 8)
    assert layer.count(params) == 3 * 3 * 1 * 8 + 8


def test_conv_transpose_options_params_and_shape():
    layer = nn.ConvTranspose(6, 3, stride=2, padding=1, dilation=2, output_padding=1, groups=3)
    params, _, shape = layer.init(KEY, (-1, 4, 5, 3))
    # PyTorch's (n − 1)·s − 2p + d·(k − 1) + output_padding + 1 per axis
    assert params["w"].shape == (3, 3, 1, 6) and shape == (-1, 3 * 2 - 2 + 4 + 1 + 1, 4 * 2 - 2 + 4 + 1 + 1, 6)
    y, _ = layer.apply(params, (), jnp.ones((2, 4, 5, 3), jnp.float32))
    assert y.shape == (2, *shape[1:])
    with pytest.raises(ValueError, match=r"ConvTranspose: `groups` must be a positive int dividing `features` 6, "
                                         r"got 4"):
        nn.ConvTranspose(6, 3, groups=4)
    with pytest.raises(ValueError, match=r"ConvTranspose: `groups` 2 must divide the input channels, got input "
                                         r"shape \(-1, 4, 4, 3\) with 3 channels"):
        nn.ConvTranspose(6, 3, groups=2).init(KEY, (-1, 4, 4, 3))


def test_global_pools_reduce_every_spatial_axis(rng):
    x = _x(rng, 2, 3, 4, 5)
    np.testing.assert_allclose(nn.GlobalMeanPool().apply((), (), x)[0], x.mean((1, 2)), rtol=1e-6)
    np.testing.assert_allclose(nn.GlobalMaxPool().apply((), (), x)[0], x.max((1, 2)), rtol=1e-6)


def test_bad_settings_of_the_new_layers_fail_early():
    with pytest.raises(ValueError, match=r"BatchNorm: `momentum` is the weight of the old running value and must be "
                                         r"in \[0, 1\), got 1.5 \(PyTorch's momentum m is 1 - m here\)"):
        nn.BatchNorm(momentum=1.5)
    with pytest.raises(ValueError, match=r"BatchNorm: `eps` must be a number >= 0, got -1"):
        nn.BatchNorm(eps=-1)
    with pytest.raises(ValueError, match=r"Dropout: `rate` is the probability of dropping an element and must be in "
                                         r"\[0, 1\), got 1.0"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match=r"GroupNorm: 4 groups must divide the channels \(last axis\) of the input, "
                                         r"got input shape \(-1, 5, 6\)"):
        nn.GroupNorm(4).init(KEY, (-1, 5, 6))
    with pytest.raises(ValueError, match=r"LayerNorm: `axis` 0 must name non-batch axes of the input shape \(-1, 5\)"):
        nn.LayerNorm(axis=0).init(KEY, (-1, 5))
    with pytest.raises(ValueError, match=r"Conv: `groups` must be a positive int dividing `features` 6, got 4"):
        nn.Conv(6, (3, 3), groups=4)
    with pytest.raises(ValueError, match=r"Conv: `groups` 3 must divide the input channels, got input shape "
                                         r"\(-1, 5, 5, 4\) with 4 channels"):
        nn.Conv(6, (3, 3), groups=3).init(KEY, (-1, 5, 5, 4))
    with pytest.raises(ValueError, match=r"GlobalMeanPool: input shape must be \(N, \*spatial, C\) with at least one "
                                         r"spatial axis, got \(-1, 5\)"):
        nn.GlobalMeanPool().init(KEY, (-1, 5))


# --------------------------------------------------------------------------- interop


def test_jaxcnn_and_stax_layers_refuse_to_mix_with_a_clear_error():
    with pytest.raises(TypeError, match=r"Relu is a jaxcnn layer, not a stax \(init_fun, apply_fun\) pair: its init "
                                        r"returns \(params, state, output_shape\)"):
        stax.serial(stax.Dense(3), nn.Relu())
    with pytest.raises(TypeError, match=r"serial: layer 1 is a stax-style \(init_fun, apply_fun\) pair, not a "
                                        r"jaxcnn.nn.Layer; .* Wrap it: jaxcnn.nn.from_stax\(layer\)"):
        nn.serial(nn.Dense(3), stax.Relu)
    with pytest.raises(TypeError, match=r"parallel: layer 0 must be a jaxcnn.nn.Layer, got str"):
        nn.parallel("Dense")


def test_from_stax_wraps_a_stax_layer(rng):
    f64 = jnp.float64  # stax's biases are float64 when 64-bit mode is on, as in this suite
    model = nn.serial(nn.Dense(4, dtype=f64), nn.from_stax(stax.serial(stax.Dense(3), stax.Relu)),
                      nn.Dense(2, dtype=f64))
    params, state, shape = model.init(KEY, (-1, 5))
    assert shape == (-1, 2)
    x = _x(rng, 2, 5, dtype=f64)
    y, _ = model.apply(params, state, x)
    (w, b), _ = params[1]
    hidden = jnp.maximum(nn.Dense(4).apply(params[0], (), x)[0] @ w + b, 0)
    manual = nn.Dense(2).apply(params[2], (), hidden)[0]
    np.testing.assert_allclose(y, manual, rtol=1e-6)


def test_jax_nn_initializers_are_accepted_directly():
    n_in, n_out = 400, 300
    params, _, _ = nn.Dense(n_out, w_init=jax.nn.initializers.he_normal(),
                            b_init=jax.nn.initializers.constant(0.5)).init(KEY, (-1, n_in))
    assert params["w"].shape == (n_out, n_in)
    assert float(jnp.var(params["w"])) == pytest.approx(2 / n_in, rel=0.05)  # fan-in is n_in, not n_out
    np.testing.assert_array_equal(params["b"], np.full(n_out, 0.5))
    params, _, _ = nn.Conv(64, (3, 3), w_init=jax.nn.initializers.lecun_uniform()).init(KEY, (-1, 8, 8, 32))
    assert float(jnp.var(params["w"])) == pytest.approx(1 / (9 * 32), rel=0.05)
    with pytest.raises(TypeError, match=r"initializer must be callable as init\(key, shape, dtype\[, fan_in, "
                                        r"fan_out\]\), got 0.5"):
        nn.Dense(3, w_init=0.5).init(KEY, (-1, 2))


def test_summary_shows_params_and_state():
    model = nn.serial(nn.Conv(4, (3, 3)), nn.BatchNorm(), nn.Relu(), nn.Flatten(), nn.Dropout(0.5), nn.Dense(2))
    table = nn.summary(model, (-1, 5, 5, 1))
    assert table.splitlines()[0].split() == ["layer", "output", "shape", "params", "state"]
    row = next(line for line in table.splitlines() if line.startswith("BatchNorm"))
    assert row.split()[-2:] == ["8", "8"]  # gamma, beta; running mean, var
    assert table.endswith("total trainable parameters: 122\ntotal state (non-trainable): 8")  # 40 + 8 + 74


@pytest.mark.slow  # needs Flax, which only the bench extra installs: `pip install -e ".[test,bench]"`
def test_a_flax_cnn_with_batch_norm_and_dropout_ports_with_its_variables(rng):
    """Flax linen's Conv → BatchNorm → ReLU → Dropout → Dense, ported layer by layer: the same
    outputs in evaluation and in training (dropout off), the same running mean, and the
    running variance differing only by n / (n − 1) (Flax keeps the biased one, jaxcnn
    PyTorch's unbiased one)."""
    fnn = pytest.importorskip("flax.linen")

    class Net(fnn.Module):
        rate: float

        @fnn.compact
        def __call__(self, x, train):
            x = fnn.Conv(8, (3, 3), padding="SAME", use_bias=False)(x)
            x = fnn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = fnn.relu(x).reshape(x.shape[0], -1)
            x = fnn.Dropout(self.rate, deterministic=not train)(x)
            return fnn.Dense(3)(x)

    def port(rate):
        return nn.serial(nn.Conv(8, (3, 3), padding="SAME", use_bias=False), nn.BatchNorm(momentum=0.9, eps=1e-5),
                         nn.Relu(), nn.Flatten(), nn.Dropout(rate), nn.Dense(3))

    x = _x(rng, 4, 5, 5, 2)
    variables = Net(0.5).init({"params": KEY, "dropout": KEY}, x, train=False)
    p, stats = variables["params"], variables["batch_stats"]
    params = ({"w": p["Conv_0"]["kernel"]}, {"gamma": p["BatchNorm_0"]["scale"], "beta": p["BatchNorm_0"]["bias"]},
              (), (), (), {"w": p["Dense_0"]["kernel"].T, "b": p["Dense_0"]["bias"]})
    state = ((), {"mean": stats["BatchNorm_0"]["mean"], "var": stats["BatchNorm_0"]["var"]}, (), (), (), ())
    model = port(0.5)
    np.testing.assert_allclose(model.apply(params, state, x)[0], Net(0.5).apply(variables, x, train=False),
                               rtol=1e-5, atol=1e-6)
    y_flax, updates = Net(0.0).apply(variables, x, train=True, mutable=["batch_stats"])
    y, new = port(0.0).apply(params, state, x, training=True, key=KEY)
    np.testing.assert_allclose(y, y_flax, rtol=1e-4, atol=1e-5)
    flax_stats = updates["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(new[1]["mean"], flax_stats["mean"], rtol=1e-5, atol=1e-7)
    n = 4 * 5 * 5
    np.testing.assert_allclose(new[1]["var"] - 0.9, (flax_stats["var"] - 0.9) * n / (n - 1), rtol=1e-4)


def test_bind_covers_every_layer_that_takes_ops():
    from jaxcnn.nn import bound

    takes_ops = {name for name in nn.__all__ if inspect.isfunction(getattr(nn, name)) and name != "bind"
                 and "ops" in inspect.signature(getattr(nn, name)).parameters}
    assert set(bound.LAYERS) == takes_ops
