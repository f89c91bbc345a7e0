"""Fully connected (dense) layer with its hand-derived backward and forward rules.

Lectures: Hu & Zhu, "Backpropagation in vector-matrix form" (the FC layer answers);
Park, "FC layer" forward/backward; Bell, the chain rule for a linear layer.

``y = x Wᵀ + b`` is bilinear in ``(x, W)`` and linear in ``b``, so its JVP is the forward
applied to the tangents, one argument at a time: ``ṫ_y = ṫ_x Wᵀ + x ṫ_Wᵀ + ṫ_b``; the VJP
is its transpose, ``dx = g W``, ``dW = gᵀ x``, ``db = Σ g``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks
from jaxcnn.ops import _rule


#: The formulas ``method`` names: ``"lectures"`` (the default: the products below on ``W`` as
#: stored) and ``"transposed"`` (the same products on a ``(n_in, n_out)`` copy of ``W``, Flax's kernel
#: layout: ``y = x·K + b``, ``dx = g·Kᵀ``, ``dK = xᵀ·g``, ``dW = dKᵀ``), which computes what
#: autodiff of Flax's ``Dense`` computes, rounding included (docs/models-and-training.md, "Ports").
METHODS = ("lectures", "transposed")


def dense(x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *, method: str = "lectures") -> jax.Array:
    r"""Fully connected layer ``y = x Wᵀ + b``.

    Forward, for every leading index (batch, time, ...):
    ``y_j = Σ_i w_ji x_i + b_j``.

    Backward (Hu & Zhu: ``∂E/∂W = δ yᵀ``, ``∂E/∂b = δ``, ``δ⁽ˡ⁻¹⁾ = Wᵀ δ⁽ˡ⁾``, written
    for row vectors and summed over the leading axes):

    * ``dx = g W``
    * ``dW = gᵀ x`` (summed over every leading axis)
    * ``db = Σ g`` (over every leading axis)

    Args:
      x: input of shape ``(..., n_in)``.
      w: weights of shape ``(n_out, n_in)``, as in the lectures (not ``(n_in, n_out)``).
      b: optional bias of shape ``(n_out,)``.
      method: ``"lectures"`` or ``"transposed"`` (:data:`METHODS`); both exact, they round
        differently (a matrix product's sums run in its operands' memory order).

    Returns:
      ``y`` of shape ``(..., n_out)`` and the dtype of ``x``.

    Raises:
      TypeError: an argument is not floating point, or the dtypes differ.
      ValueError: ``w`` is not 2-D, its ``n_in`` differs from ``x.shape[-1]``, ``b``
        is not ``(n_out,)``, or ``method`` is unknown.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([[1.0, 2.0]])
    >>> w = jnp.array([[1.0, 0.0], [1.0, -1.0], [0.5, 0.5]])
    >>> ops.dense(x, w, jnp.array([0.0, 1.0, 0.0])).tolist()
    [[1.0, 0.0, 1.5]]
    """
    x, w, b = _validate(x, w, b, method)
    if method == "transposed":
        return _dense_transposed(x, w, b, b is not None)
    return _dense(x, w, b, b is not None)


class DenseResiduals(NamedTuple):
    x: jax.Array  # the input, for dW = gᵀ x
    w: jax.Array  # the weights, for dx = g W (their (n_in, n_out) copy K under method="transposed")


def _times_w_transposed(x, w):
    """``x Wᵀ`` over the last axis of ``x``."""
    return lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))


@functools.partial(_rule.custom_rule, nondiff_argnums=(3,))
def _dense(x, w, b, bias: bool):
    y = _times_w_transposed(x, w)
    return y if b is None else y + b


def _dense_fwd(x, w, b, bias: bool):
    return _dense(x, w, b, bias), DenseResiduals(x, w)


def _dense_bwd(bias: bool, res: DenseResiduals, g):
    lead = tuple(range(g.ndim - 1))
    dx = g @ res.w
    dw = lax.dot_general(g, res.x, ((lead, lead), ((), ())))
    db = jnp.sum(g, axis=lead) if bias else None
    return dx, dw, db


def _dense_jvp(bias: bool, primals, tangents):
    (x, w, b), (tx, tw, tb) = primals, tangents
    ty = _times_w_transposed(tx, w) + _times_w_transposed(x, tw)  # ṫ_x Wᵀ + x ṫ_Wᵀ
    return _dense(x, w, b, bias), ty if b is None else ty + tb  # + ṫ_b


_dense.defvjp(_dense_fwd, _dense_bwd)
_dense.defjvp(_dense_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_dense = jax.jit(_dense, static_argnums=3)


@functools.partial(_rule.custom_rule, nondiff_argnums=(3,))
def _dense_transposed(x, w, b, bias: bool):
    return _dense_transposed_fwd(x, w, b, bias)[0]


def _dense_transposed_fwd(x, w, b, bias: bool):
    # The barrier keeps the copy: without it XLA folds the transpose into the product's
    # dimension numbers, and the sums run in W's order again.
    k = lax.optimization_barrier(w.T)
    y = lax.dot_general(x, k, (((x.ndim - 1,), (0,)), ((), ())))
    return (y if b is None else y + b), DenseResiduals(x, k)


def _dense_transposed_bwd(bias: bool, res: DenseResiduals, g):
    lead = tuple(range(g.ndim - 1))
    dx = lax.dot_general(g, res.w, (((g.ndim - 1,), (1,)), ((), ())))
    dk = lax.dot_general(res.x, g, ((lead, lead), ((), ())))
    db = jnp.sum(g, axis=lead) if bias else None
    return dx, dk.T, db


def _dense_transposed_jvp(bias: bool, primals, tangents):
    (x, w, b), (tx, tw, tb) = primals, tangents
    y, res = _dense_transposed_fwd(x, w, b, bias)
    product = lambda a, k: lax.dot_general(a, k, (((a.ndim - 1,), (0,)), ((), ())))  # noqa: E731
    ty = product(tx, res.w) + product(x, lax.optimization_barrier(tw.T))  # ṫ_x K + x ṫ_K, K = Wᵀ
    return y, ty if b is None else ty + tb


_dense_transposed.defvjp(_dense_transposed_fwd, _dense_transposed_bwd)
_dense_transposed.defjvp(_dense_transposed_jvp)
_dense_transposed = jax.jit(_dense_transposed, static_argnums=3)


def _validate(x, w, b, method="lectures"):
    op = "dense"
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"dense: unknown `method` {method!r}; use one of {', '.join(map(repr, METHODS))}.")
    x = _checks.float_array(op, "x", x)
    w = _checks.float_array(op, "w", w)
    b = None if b is None else _checks.float_array(op, "b", b)
    _checks.min_rank(op, "x", x, 1, "(..., n_in)")
    _checks.rank(op, "w", w, 2, "(n_out, n_in)")
    if w.shape[1] != x.shape[-1]:
        raise ValueError(
            f"dense: `w` must have shape (n_out, n_in) with n_in = x.shape[-1] = {x.shape[-1]}, "
            f"got w of shape {tuple(w.shape)}. jaxcnn stores dense weights (n_out, n_in) as in "
            f"the lectures (y = x Wᵀ + b); if yours are (n_in, n_out), pass `w.T`."
        )
    if b is not None:
        _checks.shape(op, "b", b, (w.shape[0],), "(n_out,) with n_out = w.shape[0]")
    _checks.same_dtype(op, x=x, w=w, b=b)
    return x, w, b


def dense_reference(x, w, b=None, *, method="lectures"):
    """Autodiff reference for :func:`dense`: plain ``x @ w.T + b`` (``method`` validated, else ignored)."""
    x, w, b = _validate(x, w, b, method)
    y = x @ w.T
    return y if b is None else y + b
