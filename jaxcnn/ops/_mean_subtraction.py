"""Mean subtraction with its hand-derived backward (Bell, "Example layer: mean subtraction").

The forward ``h = x − mean(x)`` is linear and symmetric (``J = I − 1 1ᵀ / D``), so both rules
are the forward applied again: the VJP ``dx = g − mean(g)`` and the JVP ``ṫ_h = ṫ_x − mean(ṫ_x)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcnn import _checks
from jaxcnn.ops import _rule


def mean_subtraction(x: jax.Array, axis: int | tuple[int, ...] = -1) -> jax.Array:
    """Mean subtraction ``h_i = x_i − (1/D) Σ_k x_k`` along ``axis`` (Bell).

    Backward: ``dx = g − mean(g)`` along the same axes. As the lecture notes, the
    backward is the forward applied to ``g`` ("Remember they're usually not the same").
    Nothing is saved for the backward pass.

    Args:
      x: floating array.
      axis: the axis (or tuple of axes) to centre; Bell centres the channels of each
        example, ``axis=-1`` for channels-last data.

    Returns:
      ``h``, same shape and dtype as ``x``.

    Raises:
      TypeError: ``x`` is not floating point.
      ValueError: ``axis`` is out of range or repeated.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.mean_subtraction(jnp.array([[1.0, 2.0, 6.0]])).tolist()
    [[-2.0, -1.0, 3.0]]
    """
    x, axes = _validate(x, axis)
    return _mean_subtraction(x, axes)


def _centre(x, axes):
    return x - jnp.mean(x, axis=axes, keepdims=True)


@functools.partial(_rule.custom_rule, nondiff_argnums=(1,))
def _mean_subtraction(x, axes):
    return _centre(x, axes)


def _mean_subtraction_fwd(x, axes):
    return _centre(x, axes), ()  # no residuals


def _mean_subtraction_bwd(axes, _, g):
    return (_centre(g, axes),)


def _mean_subtraction_jvp(axes, primals, tangents):
    (x,), (t,) = primals, tangents
    return _centre(x, axes), _centre(t, axes)


_mean_subtraction.defvjp(_mean_subtraction_fwd, _mean_subtraction_bwd)
_mean_subtraction.defjvp(_mean_subtraction_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_mean_subtraction = jax.jit(_mean_subtraction, static_argnums=1)


def _validate(x, axis):
    x = _checks.float_array("mean_subtraction", "x", x)
    _checks.min_rank("mean_subtraction", "x", x, 1, "(..., D)")
    return x, _checks.axis("mean_subtraction", "axis", axis, x.ndim)


def mean_subtraction_reference(x, axis=-1):
    """Autodiff reference for :func:`mean_subtraction`."""
    x, axes = _validate(x, axis)
    return x - jnp.mean(x, axis=axes, keepdims=True)
