"""Forward mode through every zoo model: the hand JVPs (and the hand VJPs under them) against
autodiff of the same model built on ``jaxcnn.reference``, in float64.

``jax.jacfwd`` and ``jax.hessian`` of a whole model are taken along a few directions — the
loss as a function of ``z`` in ``params + Σ_k z_k V_k`` and ``x + Σ_k z_k U_k`` (``V``, ``U``
fixed and random) — so that every parameter and input element is moved while the Jacobian and
Hessian stay 3 × 3 and cheap; ``jax.jvp`` and the forward-over-reverse Hessian-vector product
act on the whole parameter pytree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import models, ops, reference

KEY = jax.random.PRNGKey(0)
DIRECTIONS = 3


def _setup(name, input_shape=None):
    entry = models.ZOO[name]
    input_shape = input_shape or entry.input_shape
    hand, auto = entry.build(ops=ops), entry.build(ops=reference)
    params, state, _ = hand.init(KEY, input_shape)
    params, state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64)
                                           if jnp.issubdtype(a.dtype, jnp.floating) else a, (params, state))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *input_shape[1:])))
    labels = jnp.arange(2) % 2

    def loss(model, backend):
        def f(params, x):
            out, _ = model.apply(params, state, x, training=True, key=KEY)
            if entry.loss == "euclidean_loss":
                return backend.euclidean_loss(out, jax.nn.one_hot(labels, out.shape[-1], dtype=out.dtype))
            return backend.softmax_cross_entropy(out, labels)
        return f

    def logits(model):
        return lambda params, x: model.apply(params, state, x, training=True, key=KEY)[0]

    leaves, tree = jax.tree_util.tree_flatten(params)
    draw = lambda: jax.tree_util.tree_unflatten(tree, [jnp.asarray(rng.normal(size=l.shape)) for l in leaves])  # noqa: E731
    return (loss(hand, ops), loss(auto, reference)), (logits(hand), logits(auto)), params, x, draw, rng


def _close(got, want, what):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        scale = float(jnp.max(jnp.abs(w))) or 1.0
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-8, atol=1e-10 * scale, err_msg=what)


#: The zoo's largest networks run in the slow suite; the same networks on 8×8 inputs are their quick
#: twins in the default one.
SLOW = {"resnet20", "resnet20_gn", "resnet20_plain", "vgg_small"}
SMALL = {"resnet20": (-1, 8, 8, 3), "vgg_small": (-1, 8, 8, 1)}  # batch norm, residuals, dropout


@pytest.mark.parametrize("name,input_shape", [pytest.param(n, None, marks=pytest.mark.slow) if n in SLOW else (n, None)
                                              for n in sorted(models.ZOO)] + sorted(SMALL.items()))
def test_zoo_model_in_forward_mode_matches_autodiff(name, input_shape):
    (loss_hand, loss_auto), (logits_hand, logits_auto), params, x, draw, rng = _setup(name, input_shape)
    v, u = draw(), jnp.asarray(rng.normal(size=x.shape))
    def jvp_logits(f):
        return jax.jit(lambda p, x: jax.jvp(f, (p, x), (v, u)))(params, x)

    def hvp(f):
        return jax.jit(lambda p: jax.jvp(jax.grad(lambda p: f(p, x)), (p,), (v,))[1])(params)

    vs, us = [draw() for _ in range(DIRECTIONS)], [jnp.asarray(rng.normal(size=x.shape)) for _ in range(DIRECTIONS)]

    def along(f):
        def g(z):
            p = jax.tree_util.tree_map(lambda a, *d: a + sum(zk * dk for zk, dk in zip(z, d)), params, *vs)
            return f(p, x + sum(zk * uk for zk, uk in zip(z, us)))
        return g

    z0 = jnp.zeros(DIRECTIONS)
    _close(jvp_logits(logits_hand), jvp_logits(logits_auto), f"{name}: jax.jvp of the logits")
    _close(hvp(loss_hand), hvp(loss_auto), f"{name}: Hessian-vector product (jvp of grad)")
    _close(jax.jit(jax.jacfwd(along(logits_hand)))(z0), jax.jit(jax.jacfwd(along(logits_auto)))(z0),
           f"{name}: jax.jacfwd of the logits")
    _close(jax.jit(jax.hessian(along(loss_hand)))(z0), jax.jit(jax.hessian(along(loss_auto)))(z0),
           f"{name}: jax.hessian of the loss")
