"""Ports that reproduce exactly: ``nn.bind(conventions=...)`` against a model nobody here wrote.

Flax's official MNIST example CNN (examples/mnist/train.py: Conv 32 3×3 SAME, relu, avg_pool 2,
Conv 64, relu, avg_pool, flatten, Dense 256, relu, Dense 10; SGD lr 0.1 momentum 0.9, optax's
cross-entropy), its initial weights copied into the jaxcnn port, both trained on identical
synthetic batches of blank-background 16×16 images (the blank pixels reach the first ReLU at
exactly 0, where the lectures' derivative is 1 and Flax's 0).
"""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn import nn, ops, reference

SIDE, BATCH, CLASSES = 16, 32, 10


class FlaxCNN(fnn.Module):
    """Flax's examples/mnist CNN, as written there."""

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(features=32, kernel_size=(3, 3))(x)
        x = fnn.relu(x)
        x = fnn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = fnn.Conv(features=64, kernel_size=(3, 3))(x)
        x = fnn.relu(x)
        x = fnn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = fnn.Dense(features=256)(x)
        x = fnn.relu(x)
        x = fnn.Dense(features=10)(x)
        return x


def port(L):
    return L.serial(L.Conv(32, (3, 3), padding="SAME"), L.Relu(), L.MeanPool((2, 2)),
                    L.Conv(64, (3, 3), padding="SAME"), L.Relu(), L.MeanPool((2, 2)),
                    L.Flatten(), L.Dense(256), L.Relu(), L.Dense(10))


def batches(steps):
    """Learnable batches: a sparse template per class times uniform noise, zeros elsewhere."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, (steps, BATCH))
    templates = (rng.random((CLASSES, SIDE, SIDE, 1)) > 0.7).astype(np.float32)
    images = (templates[labels] * rng.random((steps, BATCH, SIDE, SIDE, 1))).astype(np.float32)
    return images, labels


def flax_loss(logits, labels):  # the example's loss
    return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, CLASSES)).mean()


def train(loss_of, params, images, labels):
    tx = optax.sgd(0.1, momentum=0.9)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_of)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for x, y in zip(images, labels):
        params, opt_state, loss = step(params, opt_state, x, y)
        losses.append(loss)
    return np.asarray(losses)


def flax_and_port(steps, L, loss=flax_loss, ops_module=ops):
    images, labels = batches(steps)
    module = FlaxCNN()
    theirs = module.init(jax.random.PRNGKey(0), jnp.zeros((1, SIDE, SIDE, 1)))["params"]
    model = port(L)
    _, state, _ = model.init(jax.random.PRNGKey(1), (-1, SIDE, SIDE, 1))
    ours = [(), (), (), (), (), (), (), (), (), ()]
    for i, name in [(0, "Conv_0"), (3, "Conv_1"), (7, "Dense_0"), (9, "Dense_1")]:
        kernel = theirs[name]["kernel"]  # Flax's Dense kernel is (n_in, n_out), jaxcnn's (n_out, n_in)
        ours[i] = {"w": kernel.T if name.startswith("Dense") else kernel, "b": theirs[name]["bias"]}
    flax_curve = train(lambda p, x, y: flax_loss(module.apply({"params": p}, x), y), theirs, images, labels)
    port_curve = train(lambda p, x, y: loss(model.apply(p, state, x)[0], y), tuple(ours), images, labels)
    return flax_curve, port_curve


@pytest.mark.parametrize("steps", [20, pytest.param(200, marks=pytest.mark.slow)])
def test_flax_mnist_port_follows_flax_exactly_with_flax_conventions(steps):
    flax_curve, port_curve = flax_and_port(steps, nn.bind(conventions="flax"))
    assert flax_curve[-1] < flax_curve[0] - 0.5  # it learns: the curve is not flat
    np.testing.assert_array_equal(port_curve, flax_curve)


def test_the_lectures_conventions_depart_from_flax_at_the_first_step():
    flax_curve, port_curve = flax_and_port(3, nn.bind())
    assert port_curve[0] == flax_curve[0]  # the same forward ...
    # ... and a different gradient at ReLU(0): step 1's loss is off by far more than float32's rounding
    assert abs(port_curve[1] - flax_curve[1]) > 20 * np.finfo(np.float32).eps * flax_curve[1]


@pytest.mark.parametrize("differs", ["nothing", "conv", "dense"])
def test_each_setting_of_the_flax_conventions_is_needed(differs):
    """ReLU′(0) = 0 alone is not exact: another conv formula (exact too) and dense's stored layout round
    differently, and the difference grows over the steps."""
    L = nn.bind(conventions="flax")
    if differs == "conv":
        L.Conv = lambda *a, **k: nn.Conv(*a, **k, method="im2col")
    if differs == "dense":
        L.Dense = lambda *a, **k: nn.Dense(*a, **k)
    flax_curve, port_curve = flax_and_port(20, L)
    assert (differs == "nothing") == np.array_equal(port_curve, flax_curve)


def test_jaxcnn_loss_agrees_with_optax_to_float32_rounding_over_20_steps():
    """ops.softmax_cross_entropy (the hand rule) is not optax's formula: equal to rounding, not bit for bit."""
    flax_curve, port_curve = flax_and_port(20, nn.bind(conventions="flax"),
                                           loss=lambda s, y: ops.softmax_cross_entropy(s, y))
    np.testing.assert_allclose(port_curve, flax_curve, rtol=1e-5)


def test_reference_ops_take_the_same_conventions():
    flax_curve, port_curve = flax_and_port(5, nn.bind(reference, conventions="flax"))
    np.testing.assert_allclose(port_curve, flax_curve, rtol=1e-5)


def test_pytorch_conventions_take_pytorchs_derivatives_at_zero():
    L = nn.bind(conventions="pytorch")
    x = jnp.array([-1.0, 0.0, 2.0])
    grad = lambda layer: jax.grad(lambda x: layer.apply((), (), x)[0].sum())(x).tolist()  # noqa: E731
    assert grad(L.Relu()) == [0.0, 0.0, 1.0]
    assert grad(L.LeakyRelu(0.25)) == [0.25, 0.25, 1.0]  # torch: the slope at 0
    assert grad(nn.bind(conventions="flax").LeakyRelu(0.25)) == [0.25, 1.0, 1.0]  # jax.nn.leaky_relu: 1 at 0
    assert grad(nn.bind().Relu()) == [0.0, 1.0, 1.0]


def test_zoo_constructors_take_the_conventions():
    from jaxcnn import models

    model = models.resnet20(norm="none", conventions="flax")
    names = set()

    def walk(layer):
        names.add(layer.name)
        for child in getattr(layer, "children", ()):
            walk(child)

    walk(model)
    assert "Relu(derivative_at_zero=0.0)" in names and "Relu" not in names


def test_bad_conventions_are_refused():
    with pytest.raises(ValueError, match=r"bind: `conventions` must be one of 'lectures', 'flax', 'pytorch', "
                                         r"got 'ecosystem'"):
        nn.bind(conventions="ecosystem")
    with pytest.raises(ValueError, match=r"dense: unknown `method` 'fast'; use one of 'lectures', 'transposed'"):
        ops.dense(jnp.ones((2, 3)), jnp.ones((4, 3)), method="fast")


@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 3)])
def test_dense_transposed_is_the_same_dense(shape):
    rng = np.random.default_rng(1)
    x, w, b = (jnp.asarray(rng.standard_normal(s)) for s in (shape, (4, 3), (4,)))
    g = jnp.asarray(rng.standard_normal((*shape[:-1], 4)))
    y, vjp = jax.vjp(lambda x, w, b: ops.dense(x, w, b, method="transposed"), x, w, b)
    y_ref, vjp_ref = jax.vjp(reference.dense, x, w, b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    for got, want in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(got, want, rtol=1e-12)
