"""Dropout with the hand-derived backward and forward rules: the same mask, regenerated from the key.

Srivastava et al. (2014), in the "inverted" form every framework uses: at training time
each element is kept with probability ``1 − rate`` and scaled by ``1/(1 − rate)``, so
that the expectation is ``x`` and nothing changes at test time. The forward is linear in
``x`` for a fixed mask ``m``, so its transpose is the same mask and scale applied to ``g``
(the VJP ``dx = g · m / (1 − rate)``) and its JVP is the forward applied to the tangent,
``ṫ_y = ṫ_x · m / (1 − rate)``, ``m`` from the same key (which has no tangent).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _checks
from jaxcnn.ops import _rule


def dropout(x: jax.Array, key: jax.Array, rate: float, *, deterministic: bool = False) -> jax.Array:
    """Inverted dropout ``y = x · m / (1 − rate)``, ``m ~ Bernoulli(1 − rate)`` per element.

    ``rate`` is the probability of *dropping* an element (PyTorch's ``p``, Flax's
    ``rate``; not the keep probability of ``jax.example_libraries.stax.Dropout``).
    With ``deterministic=True`` (evaluation) or ``rate == 0`` it is the identity; with
    ``rate == 1`` every element is dropped and ``y = 0``, as in PyTorch.

    Backward: ``dx = g · m / (1 − rate)``, the forward's own mask and scale. The residual
    is the key alone: the backward regenerates ``m`` from it (one comparison of 32 random
    bits per element with ``rate · 2³²``), instead of storing it; why, measured against a
    stored byte or bit mask, is in ``docs/performance.md``.

    Args:
      x: floating array of any shape.
      key: a PRNG key, ``jax.random.key(seed)`` or a legacy ``jax.random.PRNGKey(seed)``.
        The mask depends on the key and ``x.shape`` only: split the key for every call.
      rate: the drop probability in ``[0, 1]`` (a Python float).
      deterministic: skip dropout (evaluation mode).

    Returns:
      ``y``, the shape and dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, ``key`` is not a PRNG key, ``rate`` is
        not a Python (or NumPy) number, or ``deterministic`` not a bool.
      ValueError: ``rate`` is outside ``[0, 1]`` or NaN.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> y = ops.dropout(jnp.ones(8), jax.random.key(0), 0.5)
    >>> sorted(set(y.tolist())) in ([0.0, 2.0], [2.0], [0.0])
    True
    """
    x = _checks.float_array("dropout", "x", x)
    key = _validate_key(key)
    rate = _validate_rate(rate)
    if _checks.flag("dropout", "deterministic", deterministic) or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    return _dropout(x, key, rate)


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """The boolean keep mask ``m``: 32 random bits per element, kept where ``bits ≥ rate · 2³²``
    (``P(keep) = 1 − rate`` up to 2⁻³²)."""
    threshold = np.uint32(min(round(rate * 2.0**32), 2**32 - 1))
    return jax.random.bits(key, shape, jnp.uint32) >= threshold


@functools.partial(_rule.custom_rule, nondiff_argnums=(2,))
def _dropout(x, key, rate):
    return _apply(x, keep_mask(key, x.shape, rate), rate)


def _apply(v, mask, rate):
    """``v · m / (1 − rate)``."""
    return jnp.where(mask, v * jnp.asarray(1.0 / (1.0 - rate), v.dtype), jnp.zeros((), v.dtype))


def _dropout_fwd(x, key, rate):
    return _dropout(x, key, rate), key  # residual: the key; the mask is regenerated


def _dropout_bwd(rate, key, g):
    return _apply(g, keep_mask(key, g.shape, rate), rate), None  # dx = g · m / (1 − rate)


def _dropout_jvp(rate, primals, tangents):
    (x, key), (t, _) = primals, tangents  # the key's tangent is float0
    mask = keep_mask(key, x.shape, rate)  # the forward's and the VJP's mask
    return _apply(x, mask, rate), _apply(t, mask, rate)


_dropout.defvjp(_dropout_fwd, _dropout_bwd)
_dropout.defjvp(_dropout_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_dropout = jax.jit(_dropout, static_argnums=2)


def _validate_key(key):
    key = jnp.asarray(key) if isinstance(key, np.ndarray) else key
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and key.shape == ():
        return key
    if dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return key
    raise TypeError(
        f"dropout: `key` must be one PRNG key, jax.random.key(seed) or jax.random.PRNGKey(seed), got "
        f"{type(key).__name__} with dtype {dtype} and shape {getattr(key, 'shape', None)}; split a key per call "
        f"with jax.random.split."
    )


def _validate_rate(rate):
    return _checks.number("dropout", "rate", rate, 0.0, 1.0, high_open=False)  # the drop probability


def dropout_reference(x, key, rate, *, deterministic=False):
    """Autodiff reference for :func:`dropout`: the same mask, ``jnp.where`` differentiated."""
    x = _checks.float_array("dropout", "x", x)
    key, rate = _validate_key(key), _validate_rate(rate)
    if _checks.flag("dropout", "deterministic", deterministic) or rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    mask = keep_mask(key, x.shape, rate)
    return jnp.where(mask, x / (1.0 - rate), 0.0).astype(x.dtype)
