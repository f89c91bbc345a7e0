"""Certifying your own derivative rules: the README's worked example.

Three ops with hand-written derivatives, each registered with a reference written
plainly for autodiff and a few samples, then certified by

    jaxcnn verify --module experiments.custom_rules

(run from the repository root) or, one test per check, by
``pytest.mark.parametrize("case", registry.pytest_cases())``.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify import Registry, Sample


@jax.custom_vjp
def swish(x):
    """``x · σ(x)``; backward ``g · (σ + x σ (1 − σ))``."""
    return x * jax.nn.sigmoid(x)


def _swish_fwd(x):
    s = jax.nn.sigmoid(x)
    return x * s, (x, s)


def _swish_bwd(residuals, g):
    x, s = residuals
    return (g * (s + x * s * (1 - s)),)


swish.defvjp(_swish_fwd, _swish_bwd)


@jax.custom_jvp
def softplus(x):
    """``log(1 + eˣ)``, computed stably; forward-mode rule ``ṫ · σ(x)``."""
    return jnp.logaddexp(x, 0.0)


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus(x), jax.nn.sigmoid(x) * t


@jax.custom_vjp
def huber(prediction, target, delta=1.0):
    """Mean Huber loss: ``½ d²`` where ``|d| ≤ δ``, else ``δ (|d| − ½ δ)``, with ``d = prediction − target``."""
    d = prediction - target
    return jnp.mean(jnp.where(jnp.abs(d) <= delta, 0.5 * d**2, delta * (jnp.abs(d) - 0.5 * delta)))


def _huber_fwd(prediction, target, delta):
    return huber(prediction, target, delta), (prediction - target, delta)


def _huber_bwd(residuals, g):
    d, delta = residuals
    dd = g * jnp.clip(d, -delta, delta) / d.size  # the slope, clipped at ±δ, over the mean's N
    return dd, -dd, None


huber.defvjp(_huber_fwd, _huber_bwd)


# The references: the documented formulas, for autodiff.
def swish_reference(x):
    return x / (1 + jnp.exp(-x))


def softplus_reference(x):
    return jnp.log1p(jnp.exp(x))


def huber_reference(prediction, target, delta=1.0):
    d = prediction - target
    return jnp.mean(jnp.where(jnp.abs(d) <= delta, 0.5 * d**2, delta * (jnp.abs(d) - 0.5 * delta)))


def _huber_samples(rng):
    """Differences away from the kinks at ±δ: |d| in [0.1, 0.8) or [1.2, 3)."""
    sign = rng.choice([-1.0, 1.0], size=(6, 3))
    d = sign * np.where(rng.random((6, 3)) < 0.5, rng.uniform(0.1, 0.8, (6, 3)), rng.uniform(1.2, 3.0, (6, 3)))
    target = rng.normal(size=(6, 3))
    return [Sample((target + d, target)), Sample((target + 2 * d, target), {"delta": 2.0}, label="delta=2")]


rng = np.random.default_rng(0)
registry = Registry()
registry.register("swish", swish, swish_reference, [Sample((rng.normal(size=(4, 5)),)),
                                                    Sample((3.0 * rng.normal(size=(2, 3, 4)),))])
registry.register("softplus", softplus, softplus_reference, [Sample((2.0 * rng.normal(size=(4, 5)),))])
registry.register("huber", huber, huber_reference, _huber_samples, batched=(0, 1))
