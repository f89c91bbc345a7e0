"""Activation functions with hand-derived backward and forward rules.

Lectures: Hu & Zhu ("BP in vector-matrix form": ``δ⁽ˡ⁻¹⁾ = δ⁽ˡ⁾ ⊙ f'(y⁽ˡ⁻¹⁾)`` with
``f' = f(1 − f)`` for the sigmoid and ``[x ≥ 0]`` for ReLU); Jearanaitanakij (the ReLU
gradient flows where the activation "is positive or zero"; the sigmoid derivative
``f(1 − f)`` in the worked example); Bell (softmax and its Jacobian).

Each VJP is ``dx = Jᵀ g`` and each JVP ``ṫ_y = J ṫ_x`` with the same ``J`` (the same mask,
the same saved output), so ``⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩``:

* elementwise ``f``: ``dx = f'(x) ⊙ g`` and ``ṫ_y = f'(x) ⊙ ṫ_x``, ``J`` diagonal, with
  ``f' = [x ≥ 0]`` (ReLU), ``1`` or ``negative_slope`` (leaky ReLU), ``y (1 − y)``
  (sigmoid) and ``1 − y²`` (tanh) from the saved output ``y``;
* softmax: ``dx = p ⊙ (g − Σ_k g_k p_k)`` and ``ṫ_p = p ⊙ (ṫ − Σ_k p_k ṫ_k)`` (``J`` symmetric);
* log-softmax: ``dx = g − p Σ_k g_k`` and ``ṫ_y = ṫ − Σ_k p_k ṫ_k``, ``p = e^y``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks, _xla_cpu
from jaxcnn.ops import _rule

# --------------------------------------------------------------------------- ReLU


def relu(x: jax.Array, *, derivative_at_zero: float = 1.0) -> jax.Array:
    """Rectified linear unit ``max(0, x)``.

    Backward: ``dx = g · [x ≥ 0]`` (default) or ``dx = g · [x > 0]``
    (``derivative_at_zero=0.0``).

    **The derivative at x = 0.** The default follows the lectures (Hu & Zhu: ``f'(x) = 1
    if x ≥ 0``; Jearanaitanakij: the gradient flows if the activation "is positive or
    zero"): at exactly ``x = 0`` the gradient passes. ``jax.nn.relu``, Flax and PyTorch
    give 0 there: pass ``derivative_at_zero=0.0`` (also ``nn.Relu(derivative_at_zero=0.0)``)
    to reproduce them. Away from 0 the two agree, but exact zeros are common: a ported
    model with zero-initialised biases sees ``x = 0`` wherever an image is blank, and its
    bias gradients then differ from the original's from the first step. The residual is
    ``x``; the backward takes the mask from it either way.

    Args:
      x: floating array of any shape.
      derivative_at_zero: ``1.0`` (the lectures) or ``0.0`` (``jax.nn.relu``, Flax,
        PyTorch).

    Returns:
      ``max(0, x)``, same shape and dtype.

    Raises:
      TypeError: ``x`` is not floating point.
      ValueError: ``derivative_at_zero`` is neither 0 nor 1.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> jax.grad(lambda x: ops.relu(x).sum())(jnp.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 1.0, 1.0]
    >>> jax.grad(lambda x: ops.relu(x, derivative_at_zero=0.0).sum())(jnp.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 1.0]
    """
    x = _checks.float_array("relu", "x", x)
    return _relu(x, _at_zero("relu", derivative_at_zero, (1.0, 0.0), "0.0 (jax.nn.relu, Flax, PyTorch)"))


def _at_zero(op, value, allowed, other):
    """``derivative_at_zero`` checked against ``allowed``: True when x = 0 counts as ``x ≥ 0``."""
    rule = f"must be {allowed[0]} (the lectures: the gradient passes at x = 0) or {other}"
    value = _checks.number(op, "derivative_at_zero", value)
    if value not in allowed:
        raise ValueError(f"{op}: `derivative_at_zero` {rule}, got {value!r}.")
    return value == allowed[0]


@functools.partial(_rule.custom_rule, nondiff_argnums=(1,))
def _relu(x, passes_at_zero):
    # max(x, 0) as a select, NaN passed through: XLA:CPU fuses a select into its neighbours
    # best (performance.md, "ReLU as a select").
    return jnp.where(x < 0, jnp.zeros((), x.dtype), x)


def _relu_fwd(x, passes_at_zero):
    # residual: x itself, the mask is taken in the backward where it fuses with the select (a
    # stored boolean mask costs a pass of its own: performance.md, "ReLU's residual")
    return _relu(x, passes_at_zero), x


def _relu_bwd(passes_at_zero, x, g):
    mask = x >= 0 if passes_at_zero else x > 0  # f'(x) = 1 where x passes, 0 elsewhere
    return (jnp.where(mask, g, jnp.zeros((), g.dtype)),)


def _relu_jvp(passes_at_zero, primals, tangents):
    (x,), (t,) = primals, tangents
    mask = x >= 0 if passes_at_zero else x > 0  # the VJP's mask: J is diagonal, Jᵀ = J
    return _relu(x, passes_at_zero), jnp.where(mask, t, jnp.zeros((), t.dtype))


_relu.defvjp(_relu_fwd, _relu_bwd)
_relu.defjvp(_relu_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_relu = jax.jit(_relu, static_argnums=1)


# --------------------------------------------------------------------------- leaky ReLU


def leaky_relu(x: jax.Array, negative_slope: float = 0.01, *, derivative_at_zero: float = 1.0) -> jax.Array:
    """Leaky ReLU ``f(x) = x`` for ``x ≥ 0``, ``negative_slope · x`` below (Maas et al.).

    Backward: ``dx = g · (1 if x ≥ 0 else negative_slope)``, from a one-byte mask. At
    exactly ``x = 0`` the default passes the gradient as :func:`relu` does (and as
    ``jax.nn.leaky_relu`` and Flax do); PyTorch uses ``negative_slope`` there: pass
    ``derivative_at_zero=negative_slope`` to reproduce it.

    Args:
      x: floating array of any shape.
      negative_slope: the slope below 0 (a Python float or a NumPy floating scalar;
        PyTorch's default 0.01).
      derivative_at_zero: ``1.0`` or ``negative_slope``.

    Returns:
      ``f(x)``, same shape and dtype.

    Raises:
      TypeError: ``x`` is not floating point, or ``negative_slope`` is not a number.
      ValueError: ``negative_slope`` is infinite or NaN (the output would be ``±inf`` or
        NaN below 0), or ``derivative_at_zero`` is neither 1 nor ``negative_slope``.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> jax.grad(lambda x: ops.leaky_relu(x, 0.1).sum())(jnp.array([-1.0, 0.0, 2.0])).tolist()
    [0.10000000149011612, 1.0, 1.0]
    """
    x, slope, passes = _validate_leaky_relu(x, negative_slope, derivative_at_zero)
    return _leaky_relu(x, slope, passes)


def _validate_leaky_relu(x, negative_slope, derivative_at_zero):
    x = _checks.float_array("leaky_relu", "x", x)
    slope = _checks.number("leaky_relu", "negative_slope", negative_slope)
    passes = _at_zero("leaky_relu", derivative_at_zero, (1.0, slope), f"negative_slope={slope} (PyTorch)")
    return x, slope, passes


@functools.partial(_rule.custom_rule, nondiff_argnums=(1, 2))
def _leaky_relu(x, slope, passes_at_zero):
    return jnp.where(x >= 0, x, x * jnp.asarray(slope, x.dtype))


def _leaky_relu_fwd(x, slope, passes_at_zero):
    return _leaky_relu(x, slope, passes_at_zero), (x >= 0 if passes_at_zero else x > 0)  # residual: the mask


def _leaky_relu_bwd(slope, passes_at_zero, mask, g):
    return (jnp.where(mask, g, g * jnp.asarray(slope, g.dtype)),)  # g · f'(x), f' ∈ {1, slope}


def _leaky_relu_jvp(slope, passes_at_zero, primals, tangents):
    (x,), (t,) = primals, tangents
    mask = x >= 0 if passes_at_zero else x > 0  # the VJP's mask
    return _leaky_relu(x, slope, passes_at_zero), jnp.where(mask, t, t * jnp.asarray(slope, t.dtype))


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)
_leaky_relu.defjvp(_leaky_relu_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_leaky_relu = jax.jit(_leaky_relu, static_argnums=(1, 2))


# --------------------------------------------------------------------------- sigmoid


def sigmoid(x: jax.Array) -> jax.Array:
    """Logistic sigmoid ``f(x) = 1 / (1 + e⁻ˣ)``.

    Backward: ``dx = g · f (1 − f)``, computed from the saved output ``f`` (Hu & Zhu,
    Jearanaitanakij), so the residual is the output alone.

    Args:
      x: floating array of any shape.

    Returns:
      ``f(x)``, same shape and dtype; stable for large ``|x|``.

    Raises:
      TypeError: ``x`` is not floating point.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> float(jax.grad(lambda x: ops.sigmoid(x))(jnp.float32(0.0)))
    0.25
    """
    return _sigmoid(_checks.float_array("sigmoid", "x", x))


@_rule.custom_rule
def _sigmoid(x):
    return lax.logistic(x)


def _sigmoid_fwd(x):
    y = _sigmoid(x)
    return y, y  # residual: f


def _sigmoid_bwd(y, g):
    return (g * (y * (1 - y)),)  # δ · f(1 − f), the derivative formed first


def _sigmoid_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = _sigmoid(x)
    return y, t * (y * (1 - y))  # f'(x) ṫ from the output, as the VJP


_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)
_sigmoid.defjvp(_sigmoid_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_sigmoid = jax.jit(_sigmoid)


# --------------------------------------------------------------------------- tanh


def tanh(x: jax.Array, *, method: str = "auto", platform: Optional[str] = None) -> jax.Array:
    """Hyperbolic tangent ``f(x) = tanh(x)``.

    Backward: ``dx = g · (1 − f²)``, computed from the saved output ``f``.

    ``method`` picks the forward: ``"jnp"``, ``jnp.tanh``; ``"rational"`` (float32 only), XLA's
    own rational approximation written out (:func:`jaxcnn._xla_cpu.tanh_rational`: within 6.5
    ulp of the exact value; ``|x| < 2.4·10⁻³⁶`` gives ``±0``), which XLA:CPU fuses with the layer
    before it at full speed; ``"auto"`` (default), the rational for float32 on the CPU and
    ``jnp.tanh`` elsewhere (:func:`jaxcnn._xla_cpu.tanh_method`).

    Args:
      x: floating array of any shape.
      method: ``"auto"``, ``"jnp"`` or ``"rational"``.
      platform: the platform ``"auto"`` tunes for; None: ``jax.default_backend()`` at trace
        time (:func:`jaxcnn._xla_cpu.resolve_platform`).

    Returns:
      ``tanh(x)``, same shape and dtype.

    Raises:
      TypeError: ``x`` is not floating point, or ``platform`` is not a name.
      ValueError: ``method`` is unknown, or ``"rational"`` for another dtype than float32.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> float(jax.grad(ops.tanh)(jnp.float32(0.0)))
    1.0
    """
    x, method = _tanh_checked(x, method, platform)
    return _tanh(x, method)


def _tanh_checked(x, method, platform):
    x = _checks.float_array("tanh", "x", x)
    platform = _xla_cpu.resolve_platform(platform, "tanh")
    if not isinstance(method, str) or method not in _xla_cpu.TANH_METHODS:
        raise ValueError(f"tanh: unknown `method` {method!r}; use one of "
                         f"{', '.join(map(repr, _xla_cpu.TANH_METHODS))}.")
    if method == "rational" and x.dtype != jnp.float32:
        raise ValueError(f"tanh: `method='rational'` is XLA's float32 approximation, got x of dtype {x.dtype}; "
                         f"use method='jnp' or 'auto'.")
    return x, _xla_cpu.tanh_method(x.dtype, platform) if method == "auto" else method


@functools.partial(_rule.custom_rule, nondiff_argnums=(1,))
def _tanh(x, method):
    return _xla_cpu.tanh_rational(x) if method == "rational" else jnp.tanh(x)


def _tanh_fwd(x, method):
    y = _tanh(x, method)
    return y, y  # residual: f


def _tanh_bwd(method, y, g):
    return (g * (1 - y * y),)


def _tanh_jvp(method, primals, tangents):
    (x,), (t,) = primals, tangents
    y = _tanh(x, method)
    return y, t * (1 - y * y)  # from the output of the forward that ran (the rational's too), as the VJP


_tanh.defvjp(_tanh_fwd, _tanh_bwd)
_tanh.defjvp(_tanh_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_tanh = jax.jit(_tanh, static_argnums=1)


# --------------------------------------------------------------------------- softmax


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax ``p_k = e^{x_k} / Σ_j e^{x_j}`` along ``axis``.

    Computed stably as ``e^{x − max x}``. Backward (the softmax Jacobian
    ``∂p_i/∂x_k = p_i (δ_ik − p_k)`` applied to ``g``): ``dx = p ⊙ (g − Σ_k g_k p_k)``,
    from the saved output ``p``.

    Args:
      x: floating array of any shape.
      axis: the axis that sums to one (a Python int).

    Returns:
      ``p``, same shape and dtype (empty when the axis is: no classes, nothing to normalise).

    Raises:
      TypeError: ``x`` is not floating point, or ``axis`` is not one int.
      ValueError: ``axis`` is out of range.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> [round(v, 4) for v in ops.softmax(jnp.log(jnp.array([0.3, 0.7]))).tolist()]
    [0.3, 0.7]
    """
    x, axis = _validate_axis_op("softmax", x, axis)
    if x.shape[axis] == 0:  # no classes: an empty result, as jax.nn.softmax and PyTorch give
        return jnp.zeros_like(x)
    return _softmax(x, axis)


class SoftmaxResiduals(NamedTuple):
    p: jax.Array


@functools.partial(_rule.custom_rule, nondiff_argnums=(1,))
def _softmax(x, axis):
    e = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _softmax_fwd(x, axis):
    p = _softmax(x, axis)
    return p, SoftmaxResiduals(p)


def _softmax_bwd(axis, res: SoftmaxResiduals, g):
    p = res.p
    return (p * (g - jnp.sum(g * p, axis=axis, keepdims=True)),)


def _softmax_jvp(axis, primals, tangents):
    (x,), (t,) = primals, tangents
    p = _softmax(x, axis)
    return p, p * (t - jnp.sum(p * t, axis=axis, keepdims=True))  # J = diag(p) − p pᵀ, symmetric


_softmax.defvjp(_softmax_fwd, _softmax_bwd)
_softmax.defjvp(_softmax_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_softmax = jax.jit(_softmax, static_argnums=1)


# --------------------------------------------------------------------------- log-softmax


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """Log-softmax ``y_k = x_k − log Σ_j e^{x_j}`` along ``axis``, computed stably.

    ``y = (x − max x) − log Σ e^{x − max x}``. Backward (``∂y_i/∂x_k = δ_ik − p_k`` with
    ``p = e^y``): ``dx = g − e^y · Σ_k g_k``, from the saved output ``y``.

    Args:
      x: floating array of any shape.
      axis: the normalised axis (a Python int).

    Returns:
      ``y``, same shape and dtype (empty when the axis is, as :func:`softmax` and PyTorch's
      ``log_softmax`` give).

    Raises (as :func:`softmax`): TypeError for a non-floating ``x`` or an ``axis`` that is
    not one int, ValueError for an ``axis`` out of range.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> [round(v, 4) for v in ops.log_softmax(jnp.zeros(4)).tolist()]  # log ¼ each
    [-1.3863, -1.3863, -1.3863, -1.3863]
    """
    x, axis = _validate_axis_op("log_softmax", x, axis)
    if x.shape[axis] == 0:  # no classes: an empty result, as softmax (and PyTorch's log_softmax) give
        return jnp.zeros_like(x)
    return _log_softmax(x, axis)


def _validate_axis_op(op, x, axis):
    """``x`` floating with at least one dimension, ``axis`` one normalised axis (softmax, log-softmax)."""
    x = _checks.float_array(op, "x", x)
    _checks.min_rank(op, "x", x, 1, "(..., K)")
    return x, _checks.single_axis(op, "axis", axis, x.ndim)


@functools.partial(_rule.custom_rule, nondiff_argnums=(1,))
def _log_softmax(x, axis):
    shifted = x - jnp.max(x, axis=axis, keepdims=True)
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def _log_softmax_fwd(x, axis):
    y = _log_softmax(x, axis)
    return y, y  # residual: y (p = e^y)


def _log_softmax_bwd(axis, y, g):
    return (g - jnp.exp(y) * jnp.sum(g, axis=axis, keepdims=True),)  # g − p Σ g


def _log_softmax_jvp(axis, primals, tangents):
    (x,), (t,) = primals, tangents
    # ṫ − Σ p ṫ (J = I − 1 pᵀ), p = e^{x − max x} / Σ: the forward's own exponentials, not a second e^y
    e = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    total = jnp.sum(e, axis=axis, keepdims=True)
    return _log_softmax(x, axis), t - jnp.sum(e * t, axis=axis, keepdims=True) / total


_log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)
_log_softmax.defjvp(_log_softmax_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_log_softmax = jax.jit(_log_softmax, static_argnums=1)


# --------------------------------------------------------------------------- references


def relu_reference(x, *, derivative_at_zero=1.0):
    """Autodiff reference for :func:`relu`, with the same kink convention.

    ``jnp.where(x >= 0, x, 0)`` differentiates to ``[x ≥ 0]``, the lectures' choice;
    ``jnp.where(x > 0, x, 0)`` to ``[x > 0]``.
    """
    x = _checks.float_array("relu", "x", x)
    passes = _at_zero("relu", derivative_at_zero, (1.0, 0.0), "0.0 (jax.nn.relu, Flax, PyTorch)")
    return jnp.where(x >= 0 if passes else x > 0, x, jnp.zeros((), x.dtype))


def leaky_relu_reference(x, negative_slope=0.01, *, derivative_at_zero=1.0):
    """Autodiff reference for :func:`leaky_relu` (``jnp.where`` on the same side of 0)."""
    x, slope, passes = _validate_leaky_relu(x, negative_slope, derivative_at_zero)
    return jnp.where(x >= 0 if passes else x > 0, x, slope * x)


def log_softmax_reference(x, axis=-1):
    """Autodiff reference for :func:`log_softmax`; the max shift carries no gradient."""
    x, axis = _validate_axis_op("log_softmax", x, axis)
    if x.shape[axis] == 0:
        return jnp.zeros_like(x)
    shifted = x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def sigmoid_reference(x):
    """Autodiff reference for :func:`sigmoid` (``jax.nn.sigmoid``)."""
    return jax.nn.sigmoid(_checks.float_array("sigmoid", "x", x))


def tanh_reference(x, *, method="auto", platform=None):
    """Autodiff reference for :func:`tanh` (``jnp.tanh``; ``method`` and ``platform`` are validated and ignored)."""
    return jnp.tanh(_tanh_checked(x, method, platform)[0])


def softmax_reference(x, axis=-1):
    """Autodiff reference for :func:`softmax`; the max shift carries no gradient."""
    x, axis = _validate_axis_op("softmax", x, axis)
    if x.shape[axis] == 0:
        return jnp.zeros_like(x)
    e = jnp.exp(x - lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True)))
    return e / jnp.sum(e, axis=axis, keepdims=True)
