"""Global mean and max pooling over every spatial axis, with hand-derived backward.

They are the window pooling of the lectures (Raj: mean pooling spreads ``δ / K``; Park,
Jearanaitanakij: max pooling routes ``δ`` to the arg-max) with one window the size of
the whole map, so the backward needs no window bookkeeping: a broadcast for the mean,
a one-hot comparison against the saved arg-max for the max. Forward mode transposes
them: the mean of the tangent, ``ṫ_y = (1/S) Σ_s ṫ_x``, and the tangent at the saved arg-max,
``ṫ_y = ṫ_x[s*]`` (the VJP's first maximum).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks
from jaxcnn.ops import _rule


def global_mean_pool(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Mean over every spatial axis of a channels-last ``x``: ``y_nc = (1/S) Σ_s x_nsc``.

    Backward (Raj's mean pooling with one window of ``S`` elements): ``dx_nsc = g_nc / S``.
    No residual.

    Args:
      x: ``(N, *spatial, C)``, at least one spatial axis.
      keepdims: keep the spatial axes with size 1 (``(N, 1, …, 1, C)``, PyTorch's
        ``AdaptiveAvgPool2d(1)`` layout) instead of ``(N, C)``.

    Returns:
      ``(N, C)`` (or ``(N, 1, …, 1, C)``), in the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, or ``keepdims`` is not a bool.
      ValueError: ``x`` has no spatial axis.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.global_mean_pool(jnp.arange(8.0).reshape(1, 2, 2, 2)).tolist()
    [[3.0, 4.0]]
    """
    x = _validate("global_mean_pool", x)
    return _global_mean_pool(x, _checks.flag("global_mean_pool", "keepdims", keepdims))


@functools.partial(_rule.custom_rule, nondiff_argnums=(1,))
def _global_mean_pool(x, keepdims):
    return jnp.mean(x, axis=_spatial(x), keepdims=keepdims)


def _global_mean_pool_fwd(x, keepdims):
    return _global_mean_pool(x, keepdims), x.shape  # residual: the shape only (static)


def _global_mean_pool_bwd(keepdims, shape, g):
    g = g if keepdims else g.reshape(shape[0], *(1,) * (len(shape) - 2), shape[-1])
    return (jnp.broadcast_to(g / math.prod(shape[1:-1]), shape),)  # dx = g / S everywhere


def _global_mean_pool_jvp(keepdims, primals, tangents):
    (x,), (t,) = primals, tangents
    return _global_mean_pool(x, keepdims), _global_mean_pool(t, keepdims)  # linear: ṫ_y = mean_s ṫ_x


_global_mean_pool.defvjp(_global_mean_pool_fwd, _global_mean_pool_bwd)
_global_mean_pool.defjvp(_global_mean_pool_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_global_mean_pool = jax.jit(_global_mean_pool, static_argnums=1)


def global_max_pool(x: jax.Array, *, keepdims: bool = False) -> jax.Array:
    """Maximum over every spatial axis of a channels-last ``x``: ``y_nc = max_s x_nsc``.

    Backward (the lectures' max pooling with one window): ``dx_nsc = g_nc`` at the saved
    arg-max ``s*`` of each ``(n, c)`` and 0 elsewhere; a tie goes to the first maximum in
    row-major spatial order. The residual is the arg-max, one int32 per ``(n, c)``.

    Args:
      x: ``(N, *spatial, C)``, at least one spatial axis.
      keepdims: keep the spatial axes with size 1 instead of returning ``(N, C)``.

    Returns:
      ``(N, C)`` (or ``(N, 1, …, 1, C)``), in the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, or ``keepdims`` is not a bool.
      ValueError: ``x`` has no spatial axis.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([[[1.0], [5.0], [5.0]]])  # (N, W, C) = (1, 3, 1): a tie
    >>> jax.grad(lambda x: ops.global_max_pool(x).sum())(x).ravel().tolist()
    [0.0, 1.0, 0.0]
    """
    x = _validate("global_max_pool", x)
    return _global_max_pool(x, _checks.flag("global_max_pool", "keepdims", keepdims))


class ArgmaxResiduals(NamedTuple):
    argmax: jax.Array  # (N, C) int32: the flat spatial index of the first maximum
    shape: tuple  # the shape of x (static)


def _flat(x):
    """``(N, S, C)``: the spatial axes flattened in row-major order."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])  # no -1: N may be 0


@functools.partial(_rule.custom_rule, nondiff_argnums=(1,))
def _global_max_pool(x, keepdims):
    return jnp.max(x, axis=_spatial(x), keepdims=keepdims)


def _global_max_pool_fwd(x, keepdims):
    argmax = jnp.argmax(_flat(x), axis=1).astype(jnp.int32)
    return _global_max_pool(x, keepdims), ArgmaxResiduals(argmax, x.shape)


def _global_max_pool_bwd(keepdims, res: ArgmaxResiduals, g):
    shape = res.shape
    g = g.reshape(shape[0], 1, shape[-1])
    at_max = lax.broadcasted_iota(jnp.int32, (1, math.prod(shape[1:-1]), 1), 1) == res.argmax[:, None, :]
    return (jnp.where(at_max, g, jnp.zeros((), g.dtype)).reshape(shape),)  # δ routed to the arg-max


def _global_max_pool_jvp(keepdims, primals, tangents):
    (x,), (t,) = primals, tangents
    y, res = _global_max_pool_fwd(x, keepdims)
    t_y = jnp.take_along_axis(_flat(t), res.argmax[:, None, :], axis=1)  # ṫ_y = ṫ_x at the saved arg-max
    return y, t_y.reshape(y.shape)


_global_max_pool.defvjp(_global_max_pool_fwd, _global_max_pool_bwd)
_global_max_pool.defjvp(_global_max_pool_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_global_max_pool = jax.jit(_global_max_pool, static_argnums=1)


def _spatial(x):
    return tuple(range(1, x.ndim - 1))


def _validate(op, x):
    x = _checks.float_array(op, "x", x)
    _checks.min_rank(op, "x", x, 3, "(N, *spatial, C) with at least one spatial axis")
    return x


def global_mean_pool_reference(x, *, keepdims=False):
    """Autodiff reference for :func:`global_mean_pool`."""
    x = _validate("global_mean_pool", x)
    return jnp.mean(x, axis=_spatial(x), keepdims=_checks.flag("global_mean_pool", "keepdims", keepdims))


def global_max_pool_reference(x, *, keepdims=False):
    """Autodiff reference for :func:`global_max_pool`: the first maximum picked with ``take_along_axis``
    (``jnp.max``'s own rule would share a tie)."""
    x = _validate("global_max_pool", x)
    keepdims = _checks.flag("global_max_pool", "keepdims", keepdims)
    flat = _flat(x)
    first = lax.stop_gradient(jnp.argmax(flat, axis=1))
    y = jnp.take_along_axis(flat, first[:, None, :], axis=1)[:, 0, :]
    return y.reshape(x.shape[0], *(1,) * (x.ndim - 2), x.shape[-1]) if keepdims else y
