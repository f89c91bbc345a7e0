import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import nn, ops, reference

KEY = jax.random.PRNGKey(0)


def _check_shapes(layer, input_shape, batch=2):
    params, state, out_shape = layer.init(KEY, (-1, *input_shape[1:]))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *input_shape[1:])), jnp.float32)
    y, _ = layer.apply(params, state, x)
    assert (-1, *y.shape[1:]) == tuple(out_shape), (layer, input_shape)
    return params, y


@pytest.mark.parametrize("input_shape", [(-1, 3), (-1, 4, 3)])
def test_dense_shapes(input_shape):
    _check_shapes(nn.Dense(5), input_shape)


CONV_GRID = list(itertools.product([1, 2, 3], [1, 3], [1, 2], ["VALID", "SAME", "FULL", 1], [1, 2]))


@pytest.mark.parametrize("rank,window,stride,padding,dilation", CONV_GRID)
def test_conv_shapes(rank, window, stride, padding, dilation):
    spatial = {1: (9,), 2: (7, 6), 3: (5, 6, 5)}[rank]
    layer = nn.Conv(3, (window,) * rank, stride=stride, padding=padding, dilation=dilation)
    params, state, out_shape = layer.init(KEY, (-1, *spatial, 2))
    y, _ = jax.eval_shape(layer.apply, params, state, jnp.zeros((2, *spatial, 2), jnp.float32))  # traced, not run
    assert (-1, *y.shape[1:]) == tuple(out_shape), (layer, spatial)


@pytest.mark.parametrize("window,stride,padding",
                         list(itertools.product([1, 2, 3], [1, 2, 3], ["VALID", "SAME", "FULL", 0, 1])))
def test_conv_transpose_shapes(window, stride, padding):
    if isinstance(padding, int) and padding > window - 1:
        layer = nn.ConvTranspose(2, (window, window), stride=stride, padding=padding)
        pytest.raises(ValueError, layer.init, KEY, (-1, 5, 4, 3))
        return
    _check_shapes(nn.ConvTranspose(2, (window, window), stride=stride, padding=padding), (-1, 5, 4, 3))


@pytest.mark.parametrize("layer_cls", [nn.MaxPool, nn.MeanPool])
@pytest.mark.parametrize("window,stride,padding", list(itertools.product([2, 3], [None, 1, 2], ["VALID", "SAME", 1])))
def test_pool_shapes(layer_cls, window, stride, padding):
    _check_shapes(layer_cls((window, window), stride, padding), (-1, 7, 6, 3))
    _check_shapes(layer_cls(window, stride, padding), (-1, 9, 2))


@pytest.mark.parametrize("layer_cls", [nn.MaxPool, nn.MeanPool])
@pytest.mark.parametrize("stride,padding,dilation,ceil_mode", [(2, 0, 1, True), (2, 1, 2, True), (3, 1, 2, False),
                                                               (1, "SAME", (2, 1), True)])
def test_pool_layers_take_dilation_and_ceil_mode_and_agree_with_the_op(layer_cls, stride, padding, dilation, ceil_mode):
    # the layers used to lack both options; init's shape must be the op's (7 with ceil_mode: one more window)
    layer = layer_cls((2, 2), stride, padding, dilation=dilation, ceil_mode=ceil_mode)
    _, y = _check_shapes(layer, (-1, 7, 8, 3))
    op = ops.max_pool if layer_cls is nn.MaxPool else ops.mean_pool
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 8, 3)), jnp.float32)
    np.testing.assert_array_equal(y, op(x, (2, 2), stride, padding, dilation=dilation, ceil_mode=ceil_mode))


def test_pool_layer_option_errors_name_the_layer():
    with pytest.raises(TypeError, match=r"MaxPool: `ceil_mode` must be True or False, got 1"):
        nn.MaxPool(2, ceil_mode=1).init(KEY, (-1, 7, 7, 1))
    with pytest.raises(ValueError, match=r"MeanPool: the window \(3 with dilation 3, extent 7\) is larger"):
        nn.MeanPool(3, dilation=3).init(KEY, (-1, 5, 5, 1))


@pytest.mark.parametrize("layer_cls", [nn.AdaptiveMeanPool, nn.AdaptiveMaxPool])
@pytest.mark.parametrize("spatial,output_size", [((9,), 4), ((7, 6), (3, None)), ((7, 6), 8), ((3, 4, 5), (2, 5, 1))])
def test_adaptive_pool_shapes(layer_cls, spatial, output_size):
    _check_shapes(layer_cls(output_size), (-1, *spatial, 2))


@pytest.mark.parametrize("factor", [1, 2, 3])
@pytest.mark.parametrize("spatial", [(7,), (5, 6), (3, 4, 5)])
def test_resample_shapes(factor, spatial):
    _check_shapes(nn.Upsample(factor), (-1, *spatial, 2))
    _check_shapes(nn.Downsample(factor), (-1, *spatial, 2))


@pytest.mark.parametrize("layer", [nn.Relu(), nn.Sigmoid(), nn.Tanh(), nn.Softmax(), nn.MeanSubtraction(), nn.Flatten(),
                                   nn.identity()])
def test_parameter_free_layer_shapes(layer):
    params, _ = _check_shapes(layer, (-1, 4, 3, 2))
    assert params == ()


def test_bad_settings_fail_at_init():
    with pytest.raises(ValueError, match=r"Conv: the window .* is larger than the padded input"):
        nn.Conv(4, (5, 5)).init(KEY, (-1, 3, 3, 1))
    with pytest.raises(ValueError, match=r"Conv: `stride` must be >= 1"):
        nn.Conv(4, (3, 3), stride=0).init(KEY, (-1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"Conv: unknown `padding` 'HALF'"):
        nn.Conv(4, (3, 3), padding="HALF").init(KEY, (-1, 8, 8, 1))
    with pytest.raises(ValueError, match=r"Conv: `connections` must have shape \(C_in, C_out\) = \(6, 16\), got "
                                         r"\(16, 6\)"):
        nn.Conv(16, (5, 5), connections=ops.LENET5_C3_TABLE.T).init(KEY, (-1, 14, 14, 6))
    with pytest.raises(ValueError, match=r"Conv: input shape must have 4 dimensions \(N, \*spatial, C\) for a 2-D "
                                         r"window \(3, 3\), got \(-1, 8, 1\)"):
        nn.Conv(4, (3, 3)).init(KEY, (-1, 8, 1))
    with pytest.raises(ValueError, match=r"MaxPool: the window .* is larger than the padded input"):
        nn.MaxPool((4, 4)).init(KEY, (-1, 3, 3, 1))
    with pytest.raises(ValueError, match=r"Dense: `n_out` must be a positive int, got 0"):
        nn.Dense(0)
    with pytest.raises(ValueError, match=r"residual: the block must keep the input shape \(-1, 8, 8, 3\) to be added "
                                         r"to it, but it gives \(-1, 6, 6, 3\)"):
        nn.residual(nn.Conv(3, (3, 3))).init(KEY, (-1, 8, 8, 3))
    with pytest.raises(ValueError, match=r"fan_in_sum: every branch must have the same output shape"):
        nn.serial(nn.fan_out(2), nn.parallel(nn.Dense(3), nn.Dense(4)), nn.fan_in_sum()).init(KEY, (-1, 5))
    with pytest.raises(ValueError, match=r"parallel: the input must be a tuple of 2 shapes"):
        nn.parallel(nn.Dense(3), nn.Dense(4)).init(KEY, (-1, 5))


def test_combinators_compute_what_they_say(rng):
    x = jnp.asarray(rng.normal(size=(2, 5)))
    dense = nn.Dense(5, dtype=jnp.float64)
    res = nn.residual(dense)
    p_res, s_res, shape = res.init(KEY, (-1, 5))
    assert shape == (-1, 5) and s_res == ()
    np.testing.assert_allclose(res.apply(p_res, (), x)[0], x + dense.apply(p_res, (), x)[0], rtol=1e-14)
    chain = nn.serial(nn.fan_out(2), nn.parallel(dense, nn.identity()), nn.fan_in_sum())
    chain_state = ((), ((), ()), ())
    np.testing.assert_allclose(chain.apply(((), (p_res, ()), ()), chain_state, x)[0], res.apply(p_res, (), x)[0],
                               rtol=1e-14)

    concat = nn.serial(nn.fan_out(2), nn.parallel(nn.identity(), nn.Dense(3, dtype=jnp.float64)), nn.fan_in_concat())
    p, state, shape = concat.init(KEY, (-1, 5))
    y, _ = concat.apply(p, state, x)
    assert shape == (-1, 8) and y.shape == (2, 8)
    np.testing.assert_array_equal(y[:, :5], x)


def test_residual_adds_the_skip_paths_gradient(rng):
    # Bell: gradients add at branches. d/dx [x + f(x)] = I + J_f.
    x = jnp.asarray(rng.normal(size=(3, 4)))
    block = nn.serial(nn.Dense(4, dtype=jnp.float64), nn.Tanh())
    model = nn.residual(block)
    params, state, _ = model.init(KEY, (-1, 4))
    g_model = jax.grad(lambda x: jnp.sum(model.apply(params, state, x)[0] ** 2))(x)
    g_hand = jax.grad(lambda x: jnp.sum((x + block.apply(params, state, x)[0]) ** 2))(x)
    np.testing.assert_allclose(g_model, g_hand, rtol=1e-13)
    g_block_only = jax.grad(lambda x: jnp.sum((block.apply(params, state, x)[0]) ** 2))(x)
    assert not np.allclose(g_model, g_block_only)


def test_dense_block_grows_the_channels():
    block = nn.dense_block(*[nn.serial(nn.Conv(4, (3, 3), padding="SAME"), nn.Relu()) for _ in range(3)])
    params, y = _check_shapes(block, (-1, 6, 6, 5))
    assert y.shape == (2, 6, 6, 5 + 3 * 4)


def test_params_are_plain_pytrees_for_optax_and_jit(rng):
    model = nn.serial(nn.Conv(4, (3, 3), padding="SAME"), nn.Relu(), nn.Flatten(), nn.Dense(3))
    params, model_state, _ = model.init(KEY, (-1, 5, 5, 1))
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 1)), jnp.float32)
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            return ops.softmax_cross_entropy(model.apply(p, model_state, x)[0], jnp.array([0, 2]))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params2, state, loss0 = step(params, state)
    _, _, loss1 = step(params2, state)
    assert float(loss1) < float(loss0)
    assert jax.tree_util.tree_structure(params2) == jax.tree_util.tree_structure(params)


def test_connection_table_weights_start_at_zero_and_stay_there(rng):
    layer = nn.Conv(16, (5, 5), connections=ops.LENET5_C3_TABLE)
    params, state, _ = layer.init(KEY, (-1, 14, 14, 6))
    absent = ~ops.LENET5_C3_TABLE
    assert np.all(np.asarray(params["w"])[:, :, absent] == 0)
    x = jnp.asarray(rng.normal(size=(2, 14, 14, 6)), jnp.float32)
    g = jax.grad(lambda p: jnp.sum(layer.apply(p, state, x)[0] ** 2))(params)
    assert np.all(np.asarray(g["w"])[:, :, absent] == 0)
    assert layer.count(params) == 1516


@pytest.mark.parametrize("name,scale,mode", [
    ("lecun_normal", 1, "in"), ("lecun_uniform", 1, "in"), ("glorot_normal", 1, "avg"),
    ("glorot_uniform", 1, "avg"), ("he_normal", 2, "in"), ("he_uniform", 2, "in"),
])
def test_initializer_variances(name, scale, mode):
    fan_in, fan_out = 300, 100
    w = getattr(nn.initializers, name)()(KEY, (400, 300), jnp.float32, fan_in, fan_out)
    n = fan_in if mode == "in" else (fan_in + fan_out) / 2
    assert float(jnp.var(w)) == pytest.approx(scale / n, rel=0.05)
    assert float(jnp.mean(w)) == pytest.approx(0.0, abs=0.01 * np.sqrt(scale / n))


def test_conv_fans_follow_layout_and_custom_initializers_are_used():
    seen = {}

    def recording(key, shape, dtype, fan_in, fan_out):
        seen.update(shape=shape, fan_in=fan_in, fan_out=fan_out)
        return jnp.full(shape, 0.5, dtype)

    params, _, _ = nn.Conv(8, (3, 3), w_init=recording).init(KEY, (-1, 6, 6, 4))
    assert seen == {"shape": (3, 3, 4, 8), "fan_in": 36, "fan_out": 72}
    assert np.all(np.asarray(params["w"]) == 0.5)
    params, _, _ = nn.Dense(3, w_init=nn.initializers.from_jax(jax.nn.initializers.ones)).init(KEY, (-1, 2))
    assert params["w"].shape == (3, 2) and np.all(np.asarray(params["w"]) == 1)


def test_ops_backend_switch_gives_equal_gradients(rng):
    def build(backend):
        return nn.serial(nn.Conv(3, (3, 3), stride=2, padding="SAME", ops=backend), nn.Relu(ops=backend),
                         nn.MaxPool((2, 2), ops=backend), nn.Flatten(ops=backend), nn.Dense(4, ops=backend))

    hand, auto = build(ops), build(reference)
    params, state, _ = hand.init(KEY, (-1, 8, 8, 2))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    x = jnp.asarray(rng.normal(size=(3, 8, 8, 2)))
    labels = jnp.array([0, 1, 3])

    def loss(model):
        return lambda p: ops.softmax_cross_entropy(model.apply(p, state, x)[0], labels)

    g_hand = jax.grad(loss(hand))(params)
    g_auto = jax.grad(loss(auto))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g_hand), jax.tree_util.tree_leaves(g_auto)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bind_gives_every_layer_one_backend_and_a_call_keyword_still_wins():
    hand, auto = nn.bind(ops), nn.bind(reference)
    assert set(nn.bound.LAYERS) | set(nn.bound.COMBINATORS) <= set(vars(hand))
    assert {name for name in nn.__all__ if name[0].isupper() and name != "Layer"} == set(nn.bound.LAYERS)
    x = jnp.ones((1, 6, 6, 1), jnp.float32)

    def hand_rules(layer):
        params, state, _ = layer.init(jax.random.PRNGKey(0), x.shape)
        return str(jax.make_jaxpr(layer.apply)(params, state, x)).count("_prim=jaxcnn.")

    assert hand_rules(auto.serial(auto.Conv(2, (3, 3)), auto.Relu(), auto.MaxPool(2))) == 0
    assert hand_rules(hand.serial(hand.Conv(2, (3, 3)), hand.Relu(), hand.MaxPool(2))) == 3
    assert hand_rules(auto.Conv(2, (3, 3), ops=ops)) == 1
    assert nn.bind().ops is None and hand.initializers is nn.initializers


# --------------------------------------------------------------------------- params of another model


def test_apply_refuses_params_of_another_architecture():
    model = nn.serial(nn.Conv(4, (3, 3)), nn.Relu(), nn.Flatten(), nn.Dense(10))
    wider = nn.serial(nn.Conv(6, (3, 3)), nn.Relu(), nn.Flatten(), nn.Dense(10))
    larger_kernel = nn.serial(nn.Conv(4, (5, 5), padding="SAME"), nn.Relu(), nn.Flatten(), nn.Dense(10))
    x = jnp.ones((2, 8, 8, 1), jnp.float32)
    for other in (wider, larger_kernel):
        params, state, _ = other.init(KEY, (-1, 8, 8, 1))
        with pytest.raises(ValueError, match=r"serial.apply: the params and state do not have the shapes serial.init "
                                             r"gives for input shape \(2, 8, 8, 1\): .*params\[0\]\['w'\] \(in "
                                             r"Conv\(4, \(3, 3\)\)\) has shape \((3, 3|5, 5), 1, [46]\) where init "
                                             r"gives \(3, 3, 1, 4\)"):
            jax.jit(lambda p, s, x: model.apply(p, s, x))(params, state, x)


def test_apply_refuses_params_made_for_another_input_size():
    model = nn.serial(nn.Dense(16), nn.Relu(), nn.Dense(4))
    params, state, _ = model.init(KEY, (-1, 8))
    with pytest.raises(ValueError, match=r"serial.apply: the params and state do not have the shapes serial.init "
                                         r"gives for input shape \(3, 9\): params\[0\]\['w'\] \(in Dense\(16\)\) "
                                         r"has shape \(16, 8\) where init gives \(16, 9\). Were they made for "
                                         r"another model or input size\?"):
        model.apply(params, state, jnp.ones((3, 9), jnp.float32))


def test_apply_refuses_params_with_leaves_missing_or_extra():
    model = nn.serial(nn.Dense(16), nn.BatchNorm(), nn.Relu(), nn.Dense(4))
    params, state, _ = model.init(KEY, (-1, 8))
    x = jnp.ones((3, 8), jnp.float32)
    with pytest.raises(ValueError, match=r"serial.apply: the params and state do not have the structure serial.init "
                                         r"gives for input shape \(3, 8\): missing \[\"params\[3\]\['b'\]\", "
                                         r"\"params\[3\]\['w'\]\"\], unexpected \[\]"):
        model.apply(params[:3] + ((),), state, x)
    other_state = nn.serial(nn.Dense(16), nn.BatchNorm(), nn.Relu(), nn.Dense(4)).init(KEY, (-1, 5))[1]
    bigger = nn.serial(nn.Dense(32), nn.BatchNorm(), nn.Relu(), nn.Dense(4)).init(KEY, (-1, 8))[1]
    model.apply(params, other_state, x)  # running statistics do not depend on the input size here
    with pytest.raises(ValueError, match=r"state\[1\]\['mean'\] \(in BatchNorm.*\) has shape \(32,\) where init "
                                         r"gives \(16,\)"):
        model.apply(params, bigger, x)


def test_the_params_check_traces_init_once_per_input_shape_and_only_at_the_top():
    calls = []

    def counted(layer):
        def init(key, shape):
            calls.append(layer.name)
            return layer.init(key, shape)
        return nn.Layer(init, layer.apply, name=layer.name)

    model = nn.serial(counted(nn.Dense(3)), nn.Relu())
    params, state, _ = model.init(KEY, (-1, 2))
    calls.clear()
    for _ in range(3):  # eager calls: the expected shapes are kept
        model.apply(params, state, jnp.ones((4, 2), jnp.float32))
    assert calls == ["Dense(3)"]  # the serial's check traced its init once; the Dense itself did not check again
    model.apply(params, state, jnp.ones((5, 2), jnp.float32))
    assert calls == ["Dense(3)"] * 2


def test_a_layer_whose_init_cannot_be_traced_is_applied_unchecked():
    def init(key, shape):  # needs concrete values: jax.eval_shape cannot run it
        scale = float(jax.random.uniform(key))
        return {"w": jnp.full(shape[1:], scale)}, shape

    layer = nn.Layer.stateless(init, lambda params, x: x * params["w"], name="scaled")
    params, state, _ = layer.init(KEY, (-1, 3))
    y, _ = layer.apply(params, state, jnp.ones((2, 3), jnp.float32))
    np.testing.assert_allclose(y, jnp.broadcast_to(params["w"], (2, 3)))


# --------------------------------------------------------------------------- named children


def _named_net():
    return nn.serial(("conv1", nn.Conv(4, (3, 3))), ("bn1", nn.BatchNorm()), nn.Relu(), nn.Flatten(),
                     ("fc", nn.Dense(2)))


def test_named_children_key_params_and_state_and_compute_what_the_positional_chain_does(rng):
    named = _named_net()
    positional = nn.serial(nn.Conv(4, (3, 3)), nn.BatchNorm(), nn.Relu(), nn.Flatten(), nn.Dense(2))
    params, state, shape = named.init(KEY, (-1, 5, 5, 1))
    assert shape == (-1, 2) and list(params) == ["conv1", "bn1", "fc"] and list(state) == ["conv1", "bn1", "fc"]
    assert params["fc"]["w"].shape == (2, 36) and list(state["bn1"]) == ["mean", "var"]
    p, s, _ = positional.init(KEY, (-1, 5, 5, 1))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.array_equal(a, b)), (params["conv1"], params["bn1"], params["fc"]), (p[0], p[1], p[4])))
    x = jnp.asarray(rng.normal(size=(3, 5, 5, 1)), jnp.float32)
    y, new = named.apply(params, state, x, training=True, key=KEY)
    y_pos, new_pos = positional.apply(p, s, x, training=True, key=KEY)
    np.testing.assert_array_equal(y, y_pos)
    np.testing.assert_array_equal(new["bn1"]["mean"], new_pos[1]["mean"])
    assert named.count(params) == positional.count(p) == 122
    g = jax.grad(lambda p: jnp.sum(named.apply(p, state, x)[0]))(params)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)


def test_named_parallel_keys_its_branches():
    model = nn.serial(nn.fan_out(2), nn.parallel(("left", nn.Dense(3)), ("right", nn.Dense(3))), nn.fan_in_sum())
    params, _, shape = model.init(KEY, (-1, 4))
    assert shape == (-1, 3) and list(params[1]) == ["left", "right"]
    x = jnp.ones((2, 4), jnp.float32)
    y, _ = model.apply(params, ((), {"left": (), "right": ()}, ()), x)
    np.testing.assert_allclose(y, x @ (params[1]["left"]["w"] + params[1]["right"]["w"]).T, rtol=1e-6)


def test_summary_shows_the_params_keys_of_a_named_chain():
    model = _named_net()
    params, _, _ = model.init(KEY, (-1, 5, 5, 1))
    lines = nn.summary(model, (-1, 5, 5, 1)).splitlines()
    assert lines[0].split()[:2] == ["name", "layer"]
    assert [line.split()[0] for line in lines[2:7] if not line.startswith(" ")] == list(params)
    assert lines[4].split()[0] == "Relu"  # an unnamed layer: no key


def test_named_chain_errors_name_the_layer():
    with pytest.raises(ValueError, match=r"serial: layer 2 \(Dense\(3\)\) has params or state but no name, in a "
                                         r"chain whose other layers are named; give it one: \('name', Dense\(3\)\)"):
        nn.serial(("fc1", nn.Dense(3)), nn.Relu(), nn.Dense(3)).init(KEY, (-1, 4))
    with pytest.raises(ValueError, match=r"serial: layer 1's name must be a non-empty string without '.' and unique "
                                         r"in the chain, got 'fc' \(Dense\(2\)\)"):
        nn.serial(("fc", nn.Dense(3)), ("fc", nn.Dense(2)))
    with pytest.raises(ValueError, match=r"parallel: layer 0's name .* got 'a.b'"):
        nn.parallel(("a.b", nn.Dense(3)))
    with pytest.raises(TypeError, match=r"serial: layer 1 must be a jaxcnn.nn.Layer, got int 3"):
        nn.serial(("fc", nn.Dense(3)), ("relu", 3))


def test_apply_names_the_key_and_layer_of_a_wrong_leaf_in_a_named_chain():
    model = _named_net()
    params, state, _ = model.init(KEY, (-1, 5, 5, 1))
    params = {**params, "fc": {"w": jnp.zeros((2, 35)), "b": jnp.zeros(2)}}
    with pytest.raises(ValueError, match=r"params\['fc'\]\['w'\] \(in Dense\(2\)\) has shape \(2, 35\) where init "
                                         r"gives \(2, 36\)"):
        model.apply(params, state, jnp.ones((1, 5, 5, 1), jnp.float32))
