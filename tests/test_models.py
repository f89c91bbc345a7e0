import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models, nn, ops, reference

KEY = jax.random.PRNGKey(0)


def _data(entry, rng, batch=3):
    x = rng.normal(size=(batch, *entry.input_shape[1:]))
    labels = np.arange(batch) % 2
    return jnp.asarray(x), jnp.asarray(labels)


def _loss(entry, model, state):
    def loss(params, x, labels):
        out, _ = model.apply(params, state, x, training=True, key=KEY)
        if entry.loss == "euclidean_loss":
            return ops.euclidean_loss(out, jax.nn.one_hot(labels, out.shape[-1], dtype=out.dtype))
        return ops.softmax_cross_entropy(out, labels)

    return loss


@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_zoo_model_trains_under_jit_and_matches_autodiff(name, rng):
    entry = models.ZOO[name]
    hand, auto = entry.build(ops=ops), entry.build(ops=reference)
    params, state, out_shape = hand.init(KEY, entry.input_shape)
    x, labels = _data(entry, rng)
    y, _ = jax.eval_shape(hand.apply, params, state, x.astype(jnp.float32))  # the float32 program: traced only
    assert y.shape == (3, *out_shape[1:]) and y.dtype == jnp.float32

    params64, state64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), (params, state))
    loss_hand, loss_auto = _loss(entry, hand, state64), _loss(entry, auto, state64)
    v_hand, g_hand = jax.jit(jax.value_and_grad(loss_hand))(params64, x, labels)
    v_auto, g_auto = jax.jit(jax.value_and_grad(loss_auto))(params64, x, labels)  # compiled: op by op is slow
    assert np.isfinite(v_hand)
    np.testing.assert_allclose(v_hand, v_auto, rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(g_hand), jax.tree_util.tree_leaves(g_auto)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_lenet5_parameter_counts():
    model = models.lenet5()
    params, state, shape = model.init(KEY, (-1, 32, 32, 1))
    assert shape == (-1, 10) and jax.tree_util.tree_leaves(state) == []
    assert model.count(params) == 60_806
    c3 = model.children[3]
    assert list(params) == ["c1", "c3", "c5", "f6", "output"]
    assert c3.count(params["c3"]) == 1_516
    full = models.lenet5(full_c3=True)
    assert full.count(full.init(KEY, (-1, 32, 32, 1))[0]) == 60_806 - 1_516 + 2_416


def test_mnist1d_cnn_matches_greydanus_shapes():
    model = models.mnist1d_cnn()
    params, _, shape = model.init(KEY, (-1, 40, 1))
    assert shape == (-1, 10)
    assert params[7]["w"].shape == (10, 125)  # flatten of 5 positions × 25 channels
    assert model.count(params) == (5 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (125 * 10 + 10)


EXPECTED_LENET5_SUMMARY = """\
name    layer              output shape      params  state
----------------------------------------------------------
c1      Conv(6, (5, 5))    (-1, 28, 28, 6)      156      0
        Tanh               (-1, 28, 28, 6)        0      0
        MeanPool((2, 2))   (-1, 14, 14, 6)        0      0
c3      Conv(16, (5, 5))   (-1, 10, 10, 16)   1,516      0
        Tanh               (-1, 10, 10, 16)       0      0
        MeanPool((2, 2))   (-1, 5, 5, 16)         0      0
c5      Conv(120, (5, 5))  (-1, 1, 1, 120)   48,120      0
        Tanh               (-1, 1, 1, 120)        0      0
        Flatten            (-1, 120)              0      0
f6      Dense(84)          (-1, 84)          10,164      0
        Tanh               (-1, 84)               0      0
output  Dense(10)          (-1, 10)             850      0
----------------------------------------------------------
total trainable parameters: 60,806
total state (non-trainable): 0"""


def test_lenet5_summary_is_pinned():
    assert nn.summary(models.lenet5(), (-1, 32, 32, 1)) == EXPECTED_LENET5_SUMMARY


@pytest.mark.parametrize("pool,stride", [(3, 1), (2, 2)])
def test_seesaw_cnn_pools_the_four_conv_outputs_into_two_units(pool, stride):
    model = models.seesaw_cnn(pool, stride)
    params, state, shape = model.init(KEY, (-1, 5, 1))
    assert shape == (-1, 2) and params[4]["w"].shape == (2, 2)  # A, B → C, D
    x = jnp.array([[1.0, 1.0, 0.0, 0.0, 0.0]])[..., None]
    conv = {"w": jnp.array([1.0, 2.0]).reshape(2, 1, 1), "b": jnp.zeros(1)}
    pooled, _ = nn.serial(*model.children[:4]).apply((conv, (), (), ()), state[:4], x)
    # conv outputs (3, 1, 0, 0): window 3 stride 1 pools (3, 1, 0), (1, 0, 0); window 2 stride 2 (3, 1), (0, 0)
    np.testing.assert_array_equal(pooled, [[3.0, 1.0]] if pool == 3 else [[3.0, 0.0]])


def test_seesaw_cnn_rejects_pooling_that_does_not_give_two_units():
    with pytest.raises(ValueError, match=r"max-pool window 2, stride 1 over the 4 conv outputs gives 3 pooled units"):
        models.seesaw_cnn(2, 1)


def test_resnet20_is_he_et_al_cifar_network():
    model = models.resnet20()
    params, state, shape = model.init(KEY, (-1, 28, 28, 1))
    assert shape == (-1, 10)
    assert model.count(params) == 269_434  # "0.27M" in He et al.'s Table 6
    # batch norm after each of the 19 convolutions: γ, β as params, running mean and variance as state
    assert sum(np.size(a) for a in jax.tree_util.tree_leaves(state)) == 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64)
    assert list(params) == ["conv1", "bn1", "layer1", "layer2", "layer3", "fc"]
    names = [block.name for stage in model.children[3:6] for block in stage.children]
    assert names == ["basic_block(16)"] * 3 + ["basic_block(32, /2)"] + ["basic_block(32)"] * 2 + [
        "basic_block(64, /2)"] + ["basic_block(64)"] * 2
    assert [list(block) for block in params["layer2"]] == [["conv1", "bn1", "conv2", "bn2"]] * 3
    assert [child.name for child in model.children[-2:]] == ["GlobalMeanPool", "Dense(10)"]
    weight_layers = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                     if getattr(path[-1], "key", None) == "w"]
    assert len(weight_layers) == 20
    for norm, state_size, count in (("group", 0, 269_434), ("none", 0, 269_434 - 2 * 688 + 688)):
        variant = models.resnet20(norm=norm)
        p, s, _ = variant.init(KEY, (-1, 28, 28, 1))
        assert sum(np.size(a) for a in jax.tree_util.tree_leaves(s)) == state_size
        assert variant.count(p) == count  # "none": a bias per conv instead of γ and β


def test_resnet20_stride_two_shortcut_is_the_subsampled_identity_with_zero_channels(rng):
    """Option A: where the map halves, the shortcut keeps every second pixel and appends zero channels."""
    model = models.resnet20(norm="none")
    block = next(child for stage in model.children[3:6] for child in stage.children
                 if child.name == "basic_block(32, /2)")
    params, state, _ = block.init(KEY, (-1, 8, 8, 16))
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 16)), jnp.float32)
    y, _ = block.apply(zero, state, x)
    np.testing.assert_array_equal(y[..., :16], jnp.maximum(x[:, ::2, ::2], 0))
    np.testing.assert_array_equal(y[..., 16:], 0)


def test_resnet20_rejects_an_unknown_norm():
    with pytest.raises(ValueError, match=r"resnet20: `norm` must be 'batch', 'group' or 'none', got 'layer'"):
        models.resnet20(norm="layer")
    with pytest.raises(ValueError, match=r"resnet20: group norm's `groups` must divide every stage's channels "
                                         r"\(16, 32, 64\), got 5"):
        models.resnet20(norm="group", groups=5)


def test_vgg_small_drops_out_in_training_only(rng):
    model = models.vgg_small()
    params, state, shape = model.init(KEY, (-1, 28, 28, 1))
    assert shape == (-1, 10)
    x = jnp.asarray(rng.normal(size=(4, 28, 28, 1)), jnp.float32)
    eval_a, _ = model.apply(params, state, x)
    eval_b, _ = model.apply(params, state, x)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, new = model.apply(params, state, x, training=True, key=jax.random.PRNGKey(1))
    train_b, _ = model.apply(params, state, x, training=True, key=jax.random.PRNGKey(2))
    assert not np.allclose(train_a, train_b)
    assert not np.allclose(new["bn1"]["mean"], state["bn1"]["mean"])


@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_zoo_model_ops_switch_reaches_every_layer(name):
    # nn.bind(ops) binds the backend once per model: with ops=reference no hand rule may be left
    entry = models.ZOO[name]
    x = jnp.zeros((2, *entry.input_shape[1:]), jnp.float32)

    def hand_rules(model):
        params, state, _ = model.init(KEY, entry.input_shape)
        apply = lambda p, s, x: model.apply(p, s, x, training=True, key=KEY)  # noqa: E731 (every layer's path)
        return str(jax.make_jaxpr(apply)(params, state, x)).count("_prim=jaxcnn.")

    assert hand_rules(entry.build(ops=reference)) == 0
    assert hand_rules(entry.build(ops=ops)) == hand_rules(entry.build()) > 0
