"""Flattening the per-example axes, with its (trivial) hand-written backward and forward rules.

Flattening is linear: the JVP is the forward applied to the tangent, ``ṫ_y = flatten(ṫ_x)``,
and the VJP its transpose, ``dx = g`` reshaped back.
"""

from __future__ import annotations

import functools
import math

import jax

from jaxcnn import _checks
from jaxcnn.ops import _rule


def flatten(x: jax.Array) -> jax.Array:
    """Flattens every axis but the first: ``(N, d1, d2, ...) → (N, d1·d2·...)``.

    Backward: ``dx = g`` reshaped back to ``(N, d1, d2, ...)``. Nothing is saved but
    the static trailing shape. Row-major order, so an NHWC map flattens as ``(h, w, c)``
    with the channel fastest.

    Args:
      x: floating array of shape ``(N, ...)``.

    Returns:
      Array of shape ``(N, prod(x.shape[1:]))``.

    Raises:
      TypeError: ``x`` is not floating point.
      ValueError: ``x`` is a scalar.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.flatten(jnp.zeros((2, 3, 4, 5))).shape
    (2, 60)
    """
    x = _checks.float_array("flatten", "x", x)
    _checks.min_rank("flatten", "x", x, 1, "(N, ...)")
    return _flatten(x, tuple(x.shape[1:]))


@functools.partial(_rule.custom_rule, nondiff_argnums=(1,))
def _flatten(x, tail):
    return x.reshape(x.shape[0], math.prod(tail))


def _flatten_fwd(x, tail):
    return _flatten(x, tail), ()  # the shape is static: no residuals


def _flatten_bwd(tail, _, g):
    return (g.reshape(g.shape[0], *tail),)


def _flatten_jvp(tail, primals, tangents):
    (x,), (t,) = primals, tangents
    return _flatten(x, tail), t.reshape(t.shape[0], math.prod(tail))


_flatten.defvjp(_flatten_fwd, _flatten_bwd)
_flatten.defjvp(_flatten_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_flatten = jax.jit(_flatten, static_argnums=1)


def flatten_reference(x):
    """Autodiff reference for :func:`flatten`."""
    x = _checks.float_array("flatten", "x", x)
    _checks.min_rank("flatten", "x", x, 1, "(N, ...)")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))
