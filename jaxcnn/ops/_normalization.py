"""Batch, layer and group normalisation with the hand-derived backward.

Ioffe & Szegedy (2015) derive batch normalisation's backward by the chain rule through
``μ``, ``σ²`` and ``x̂``; collected, the three paths give one line per argument. With
``x̂ = (x − μ) / σ``, ``σ = √(σ² + ε)``, ``y = γ x̂ + β`` and the means over the ``n``
elements that share one ``μ``:

    ∂L/∂x̂ = g γ
    ∂L/∂σ² = −½ Σ (g γ) x̂ / σ²            (x − μ = σ x̂)
    ∂L/∂μ  = −Σ (g γ) / σ                   (the σ² path contributes −2 Σ (x − μ)/n = 0)
    dx = ∂L/∂x̂ / σ + ∂L/∂σ² · 2 (x − μ)/n + ∂L/∂μ / n
       = (1/σ) (gγ − mean(gγ) − x̂ · mean(gγ x̂))

For batch norm ``γ`` is constant over the reduced elements, so ``dx = (γ/σ)(g − mean(g) −
x̂ · mean(g x̂))`` and the two means are ``dβ / n`` and ``dγ / n``: the backward is two
reductions and one fused elementwise pass, from the saved ``x̂`` and ``1/σ`` alone. Layer
and group normalisation give ``γ`` per normalised element, so ``gγ`` is formed first.

Forward mode differentiates the same chain forwards, the statistics' tangents included
(``ṫ_μ = mean(ṫ_x)``, ``ṫ_σ² = 2 mean((x − μ) ṫ_x) = 2σ mean(x̂ ṫ_x)``, ``ṫ_σ = ṫ_σ² / 2σ``):

    ṫ_x̂ = (ṫ_x − ṫ_μ − x̂ ṫ_σ) / σ = (1/σ) (ṫ_x − mean(ṫ_x) − x̂ · mean(x̂ ṫ_x))
    ṫ_y = γ ṫ_x̂ + ṫ_γ x̂ + ṫ_β

from the same saved ``x̂`` and ``1/σ`` (the overflow fallback's, exact): two reductions and
one elementwise pass, the transpose of the backward's. In evaluation mode ``μ``, ``σ²`` are
inputs: ``ṫ_y = (γ/σ)(ṫ_x − ṫ_μ) − ½ (γ/σ²) x̂ ṫ_σ² + ṫ_γ x̂ + ṫ_β``.

bfloat16 (and float16) inputs are normalised in float32 and the results cast back, as
PyTorch and Flax do; float32 and float64 stay in their own precision.

The statistics are computed in two passes, ``μ = mean(x)`` then ``σ² = mean((x − μ)²)``.
Where a sum overflows the dtype (in float32 once ``|x − μ|`` nears ``1.8·10¹⁹``, where
PyTorch's and the plain formula's ``σ²`` become inf and every output ``β``) they are
recomputed from ``x`` and ``x − μ`` scaled by powers of two, which is exact: ``x̂`` and
every gradient stay right for any finite input, and the returned ``σ²`` is inf only where
the variance itself exceeds the dtype's range. Finite statistics are never recomputed, so
ordinary inputs give the same bits as the plain formula.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks
from jaxcnn.ops import _rule

# --------------------------------------------------------------------------- batch norm


def batch_norm(
    x: jax.Array,
    gamma: Optional[jax.Array],
    beta: Optional[jax.Array],
    *,
    axis: int = -1,
    eps: float = 1e-5,
    mean: Optional[jax.Array] = None,
    var: Optional[jax.Array] = None,
):
    """Batch normalisation ``y = γ (x − μ) / √(σ² + ε) + β`` per channel (Ioffe & Szegedy).

    Training mode (``mean`` and ``var`` absent): ``μ`` and ``σ²`` are the batch
    statistics of each channel, over every axis but ``axis`` (the batch and spatial
    axes), ``σ²`` the *biased* variance ``mean((x − μ)²)`` (what normalises, as in
    PyTorch and Flax). Returns ``(y, μ, σ²)`` with that biased ``σ²``. For PyTorch's running
    statistics correct it to the unbiased variance first: PyTorch updates
    ``running_var ← (1 − m) running_var + m · σ² · n / (n − 1)`` with ``n = x.size / C``,
    the elements per channel (Flax's ``BatchNorm`` keeps the biased ``σ²``).

    Evaluation mode (``mean`` and ``var`` given, e.g. running statistics): normalises
    with them and returns ``y`` alone.

    Backward (training; from the saved ``x̂ = (x − μ)/σ`` and ``1/σ`` only, the means over
    the ``n`` elements of a channel)::

        dx = (γ/σ) (g − mean(g) − x̂ · mean(g x̂))     mean(g) = dβ/n, mean(g x̂) = dγ/n
        dγ = Σ g x̂        dβ = Σ g

    (derivation in the module docstring), plus ``g_μ / n + g_σ² · 2 σ x̂ / n`` when the
    returned statistics themselves carry a cotangent. Evaluation: ``dx = g γ/σ``,
    ``dγ = Σ g x̂``, ``dβ = Σ g``, ``dμ = −(γ/σ) dβ``, ``dσ² = −½ (γ/σ²) dγ``.

    Args:
      x: floating array with at least 2 dimensions, channels on ``axis`` (channels-last:
        ``(N, C)``, ``(N, W, C)``, ``(N, H, W, C)``, ...).
      gamma: scale ``(C,)``, or None for 1 (no learned scale).
      beta: shift ``(C,)``, or None for 0.
      axis: the channel axis (a Python int).
      eps: ``ε ≥ 0``, finite, added to the variance (a Python or NumPy float).
      mean: running mean ``(C,)`` for evaluation mode; give ``var`` with it.
      var: running variance ``(C,)`` for evaluation mode.

    Returns:
      ``(y, μ, σ²)`` in training mode (``μ``, ``σ²`` of shape ``(C,)``), ``y`` in
      evaluation mode; all in the dtype of ``x``.

    Raises:
      TypeError: an array is not floating point, the dtypes differ, ``axis`` is not one
        int, or ``eps`` is not a number.
      ValueError: ``x`` has fewer than 2 dimensions, ``axis`` is out of range, a
        parameter is not ``(C,)``, only one of ``mean``/``var`` is given, ``eps`` is
        negative, infinite or NaN, or training mode sees one value per channel.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> y, mu, var = ops.batch_norm(jnp.array([[1.0], [3.0]]), jnp.ones(1), jnp.zeros(1), eps=0.0)
    >>> y.ravel().tolist(), mu.tolist(), var.tolist()
    ([-1.0, 1.0], [2.0], [1.0])
    """
    x, gamma, beta, mean, var, axis, eps = _validate_bn(x, gamma, beta, mean, var, axis, eps)
    reduced = tuple(a for a in range(x.ndim) if a != axis)
    if mean is None:
        return _batch_norm_train(x, gamma, beta, reduced, eps)
    return _batch_norm_eval(x, gamma, beta, mean, var, reduced, eps)


class NormResiduals(NamedTuple):
    x_hat: jax.Array  # (x − μ)/σ, the shape of x, in the compute dtype
    inv_sigma: jax.Array  # 1/σ = 1/√(σ² + ε), the shape of the statistics (kept dims)
    gamma: jax.Array  # γ, broadcastable to x


def _compute_dtype(dtype):
    """float32 for bfloat16/float16, else the dtype itself."""
    return jnp.promote_types(dtype, jnp.float32)


def _per_channel(v, x, axes):
    """A ``(C,)`` vector as an array broadcastable to ``x`` (size 1 on the reduced ``axes``)."""
    return v.reshape(tuple(1 if a in axes else n for a, n in enumerate(x.shape)))


def _statistics(x, axes, eps):
    """``μ``, the biased ``σ²`` and ``1/σ = 1/√(σ² + ε)`` over ``axes`` (dims kept).

    Two passes, ``μ = mean(x)`` then ``σ² = mean((x − μ)²)``: no cancellation. Where a sum
    overflows (``(x − μ)²`` beyond the dtype's range: ``|x − μ| > 1.8·10¹⁹`` in float32), ``σ²``
    is inf and every ``x̂`` would be 0, so the statistics are recomputed from ``x`` scaled by
    powers of two (:func:`_scaled_statistics`); finite statistics are kept as they are.
    """
    mu = jnp.mean(x, axes, keepdims=True)
    centred = x - mu
    var = jnp.mean(centred * centred, axes, keepdims=True)
    plain = (mu, var, lax.rsqrt(var + eps))
    return lax.cond(jnp.all(jnp.isfinite(var)), lambda: plain, lambda: _scaled_statistics(x, axes, eps))


def _scaled_statistics(x, axes, eps):
    """:func:`_statistics` from ``x s₁`` and ``(x − μ) s₂``, powers of two ``s ≤ 1`` that bring
    the largest magnitude below 1 (:func:`_downscale`), so no sum can overflow:

        μ = mean(x s₁) / s₁      σ² = mean(((x − μ) s₂)²) / s₂²      1/σ = s₂ / √(σ² s₂² + ε s₂²)

    Scaling by a power of two is exact, so these are the plain formulas' values wherever
    those are finite; ``σ²`` itself is inf when it lies beyond the dtype's range, ``1/σ``
    still exact. (``ε s₂²`` may underflow: then ``σ² s₂² ≥ 1/(4n)`` outweighs it.)"""
    s1, up1 = _downscale(x, axes)
    mu = jnp.mean(x * s1, axes, keepdims=True) * up1
    s2, up2 = _downscale(x - mu, axes)
    scaled = (x - mu) * s2
    var_scaled = jnp.mean(scaled * scaled, axes, keepdims=True)
    return mu, var_scaled * up2 * up2, s2 * lax.rsqrt(var_scaled + eps * s2 * s2)


def _downscale(x, axes):
    """Per group, the power of two ``s = 2⁻ᵉ ≤ 1`` with ``max |x| s < 1`` (1 where ``max |x| < 1``),
    and ``2ᵉ``. (Scale back by multiplying with ``2ᵉ``: XLA rewrites ``a / s / s`` as ``a / s²``,
    and ``s²`` can underflow to 0.)"""
    top = jnp.max(jnp.abs(x), axes, keepdims=True)
    mantissa, _ = jnp.frexp(top)  # top = mantissa · 2ᵉ, mantissa in [½, 1)
    big, one = top >= 1, jnp.ones((), x.dtype)
    return jnp.where(big, mantissa / top, one), jnp.where(big, top / mantissa, one)  # exact quotients


@functools.partial(_rule.custom_rule, nondiff_argnums=(3, 4))
def _batch_norm_train(x, gamma, beta, axes, eps):
    return _batch_norm_train_fwd(x, gamma, beta, axes, eps)[0]


def _batch_norm_train_fwd(x, gamma, beta, axes, eps):
    ct = _compute_dtype(x.dtype)
    xc = x.astype(ct)
    mu, var, inv_sigma = _statistics(xc, axes, eps)
    x_hat = (xc - mu) * inv_sigma
    gamma_b = _per_channel(gamma.astype(ct), x, axes)
    y = x_hat * gamma_b + _per_channel(beta.astype(ct), x, axes)
    stats = (mu.reshape(gamma.shape).astype(x.dtype), var.reshape(gamma.shape).astype(x.dtype))
    return (y.astype(x.dtype), *stats), NormResiduals(x_hat, inv_sigma, gamma_b)


def _batch_norm_train_bwd(axes, eps, res: NormResiduals, cotangents):
    g, g_mu, g_var = cotangents
    x_hat, inv_sigma, gamma = res
    ct, dtype = x_hat.dtype, g.dtype
    g = g.astype(ct)
    n = math.prod(x_hat.shape[a] for a in axes)
    d_beta = jnp.sum(g, axes, keepdims=True)  # Σ g
    d_gamma = jnp.sum(g * x_hat, axes, keepdims=True)  # Σ g x̂
    dx = (gamma * inv_sigma) * (g - d_beta / n - x_hat * (d_gamma / n))  # (γ/σ)(g − mean g − x̂ mean(g x̂))
    # the returned statistics: ∂μ/∂x = 1/n, ∂σ²/∂x = 2 (x − μ)/n = 2 σ x̂ / n
    dx = dx + _per_channel(g_mu.astype(ct) / n, x_hat, axes) + x_hat * _per_channel(
        g_var.astype(ct) * (2 / n), x_hat, axes) / inv_sigma
    shape = g_mu.shape
    return dx.astype(dtype), d_gamma.reshape(shape).astype(dtype), d_beta.reshape(shape).astype(dtype)


def _batch_norm_train_jvp(axes, eps, primals, tangents):
    (x, gamma, _), (t_x, t_gamma, t_beta) = primals, tangents
    out, (x_hat, inv_sigma, gamma_b) = _batch_norm_train_fwd(*primals, axes, eps)
    ct, dtype = x_hat.dtype, x.dtype
    t = t_x.astype(ct)
    t_mu = jnp.mean(t, axes, keepdims=True)  # ṫ_μ = mean(ṫ_x)
    t_spread = jnp.mean(x_hat * t, axes, keepdims=True)  # mean(x̂ ṫ_x) = ṫ_σ² / 2σ
    t_x_hat = inv_sigma * (t - t_mu - x_hat * t_spread)  # (1/σ)(ṫ_x − mean(ṫ_x) − x̂ · mean(x̂ ṫ_x))
    t_y = gamma_b * t_x_hat + x_hat * _per_channel(t_gamma.astype(ct), x, axes) + _per_channel(
        t_beta.astype(ct), x, axes)  # γ ṫ_x̂ + ṫ_γ x̂ + ṫ_β
    t_var = 2 * t_spread / inv_sigma  # ṫ_σ² = 2σ mean(x̂ ṫ_x)
    return out, (t_y.astype(dtype), t_mu.reshape(gamma.shape).astype(dtype), t_var.reshape(gamma.shape).astype(dtype))


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
_batch_norm_train.defjvp(_batch_norm_train_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_batch_norm_train = jax.jit(_batch_norm_train, static_argnums=(3, 4))


@functools.partial(_rule.custom_rule, nondiff_argnums=(5, 6))
def _batch_norm_eval(x, gamma, beta, mean, var, axes, eps):
    return _batch_norm_eval_fwd(x, gamma, beta, mean, var, axes, eps)[0]


def _batch_norm_eval_fwd(x, gamma, beta, mean, var, axes, eps):
    ct = _compute_dtype(x.dtype)
    inv_sigma = _per_channel(lax.rsqrt(var.astype(ct) + eps), x, axes)
    x_hat = (x.astype(ct) - _per_channel(mean.astype(ct), x, axes)) * inv_sigma
    gamma_b = _per_channel(gamma.astype(ct), x, axes)
    y = x_hat * gamma_b + _per_channel(beta.astype(ct), x, axes)
    return y.astype(x.dtype), NormResiduals(x_hat, inv_sigma, gamma_b)


def _batch_norm_eval_bwd(axes, eps, res: NormResiduals, g):
    x_hat, inv_sigma, gamma = res
    reduced = {a % x_hat.ndim for a in axes}  # the channel count, also for an empty batch
    ct, dtype, shape = x_hat.dtype, g.dtype, (math.prod(d for i, d in enumerate(x_hat.shape) if i not in reduced),)
    g = g.astype(ct)
    d_beta = jnp.sum(g, axes, keepdims=True)  # Σ g
    d_gamma = jnp.sum(g * x_hat, axes, keepdims=True)  # Σ g x̂
    scale = gamma * inv_sigma
    dx = g * scale  # g γ/σ
    d_mean = -scale * d_beta  # −(γ/σ) Σ g
    d_var = -0.5 * gamma * inv_sigma * inv_sigma * d_gamma  # −½ (γ/σ²) Σ g x̂
    return tuple(a.reshape(shape).astype(dtype) if i else a.astype(dtype)
                 for i, a in enumerate((dx, d_gamma, d_beta, d_mean, d_var)))


def _batch_norm_eval_jvp(axes, eps, primals, tangents):
    x, t_x, (t_gamma, t_beta, t_mean, t_var) = primals[0], tangents[0], tangents[1:]
    y, (x_hat, inv_sigma, gamma) = _batch_norm_eval_fwd(*primals, axes, eps)
    ct = x_hat.dtype

    def channel(v):  # a (C,) tangent, broadcastable to x
        return _per_channel(v.astype(ct), x, axes)

    scale = gamma * inv_sigma
    t_y = (scale * (t_x.astype(ct) - channel(t_mean))  # (γ/σ)(ṫ_x − ṫ_μ)
           - 0.5 * scale * inv_sigma * x_hat * channel(t_var)  # − ½ (γ/σ²) x̂ ṫ_σ²
           + x_hat * channel(t_gamma) + channel(t_beta))  # + ṫ_γ x̂ + ṫ_β
    return y, t_y.astype(x.dtype)


_batch_norm_eval.defvjp(_batch_norm_eval_fwd, _batch_norm_eval_bwd)
_batch_norm_eval.defjvp(_batch_norm_eval_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_batch_norm_eval = jax.jit(_batch_norm_eval, static_argnums=(5, 6))


def _validate_bn(x, gamma, beta, mean, var, axis, eps):
    op = "batch_norm"
    x = _checks.float_array(op, "x", x)
    _checks.min_rank(op, "x", x, 2, "(N, ..., C) with channels on `axis`")
    axis = _checks.single_axis(op, "axis", axis, x.ndim)
    eps = _eps(op, eps)
    c = x.shape[axis]
    params = _params(op, x, c, gamma=gamma, beta=beta, mean=mean, var=var)
    if (mean is None) != (var is None):
        given, missing = ("mean", "var") if var is None else ("var", "mean")
        raise ValueError(
            f"{op}: `{given}` was given without `{missing}`; evaluation mode needs both running statistics "
            f"(shape ({c},)), training mode neither."
        )
    if mean is None and x.size // c <= 1:
        raise ValueError(
            f"{op}: training mode needs more than one value per channel to compute batch statistics, got x of "
            f"shape {tuple(x.shape)} with {c} channels on axis {axis}; use a batch larger than 1, or pass "
            f"`mean` and `var` for evaluation mode."
        )
    return x, params["gamma"], params["beta"], params["mean"], params["var"], axis, eps


def _eps(op, eps):
    return _checks.number(op, "eps", eps, low=0.0)  # added to the variance


def _params(op, x, shape, **arrays):
    """Parameters of the shape ``shape`` (an int means ``(C,)``) in ``x``'s dtype; None:
    ``gamma`` → ones, ``beta`` → zeros, statistics stay None."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    out = {}
    for name, a in arrays.items():
        if a is None:
            fill = {"gamma": jnp.ones, "beta": jnp.zeros}.get(name)
            out[name] = None if fill is None else fill(shape, x.dtype)
            continue
        a = _checks.float_array(op, name, a)
        _checks.shape(op, name, a, shape, f"(one value per normalised feature of x {tuple(x.shape)})")
        _checks.same_dtype(op, x=x, **{name: a})
        out[name] = a
    return out


# --------------------------------------------------------------------------- layer and group norm


def layer_norm(x: jax.Array, gamma: Optional[jax.Array], beta: Optional[jax.Array], *, axis=-1,
               eps: float = 1e-5) -> jax.Array:
    """Layer normalisation ``y = γ (x − μ) / √(σ² + ε) + β`` over ``axis``, per example.

    ``μ`` and the biased ``σ²`` are taken over the axes ``axis`` of each example (every
    other axis is a batch axis); ``γ`` and ``β`` have one entry per normalised element,
    the shape ``x.shape[axis]`` (PyTorch's ``LayerNorm(normalized_shape)`` with
    ``elementwise_affine``). The default ``axis=-1`` normalises the channels of a
    channels-last activation; ``axis=(1, 2, 3)`` normalises ``(H, W, C)`` together.

    Backward (Ba et al., the batch-norm derivation over the other axes; ``n`` elements
    per example, ``ĝ = g γ``)::

        dx = (1/σ) (ĝ − mean(ĝ) − x̂ · mean(ĝ x̂))
        dγ = Σ_batch g x̂        dβ = Σ_batch g

    from the saved ``x̂`` and ``1/σ``.

    Args:
      x: floating array.
      gamma: scale of shape ``x.shape[axis]`` (the normalised axes in order), or None for 1.
      beta: shift of the same shape, or None for 0.
      axis: an int or a tuple of ints, the normalised axes.
      eps: ``ε ≥ 0``, finite (a Python or NumPy float).

    Returns:
      ``y``, the shape and dtype of ``x``.

    Raises:
      TypeError: an array is not floating point, the dtypes differ, ``axis`` or ``eps``
        has the wrong type.
      ValueError: ``axis`` is empty, out of range or repeated, ``gamma``/``beta`` have
        the wrong shape, or ``eps`` is negative, infinite or NaN.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.layer_norm(jnp.array([[1.0, 3.0]]), None, None, eps=0.0).tolist()
    [[-1.0, 1.0]]
    """
    return _layer_norm(x, gamma, beta, axis, eps, _normalise)


def _layer_norm(x, gamma, beta, axis, eps, normalise):
    """Validates, then ``normalise`` (the hand rule or the reference) over ``axis``."""
    op = "layer_norm"
    x = _checks.float_array(op, "x", x)
    _checks.min_rank(op, "x", x, 1, "(..., features)")
    axes = _checks.axis(op, "axis", axis, x.ndim)
    eps = _eps(op, eps)
    params = _params(op, x, tuple(x.shape[a] for a in axes), gamma=gamma, beta=beta)
    kept = tuple(n if a in axes else 1 for a, n in enumerate(x.shape))
    return normalise(x, params["gamma"].reshape(kept), params["beta"].reshape(kept), axes, eps)


def group_norm(x: jax.Array, gamma: Optional[jax.Array], beta: Optional[jax.Array], groups: int, *,
               eps: float = 1e-5) -> jax.Array:
    """Group normalisation (Wu & He) of a channels-last ``x``: ``C`` channels in ``groups`` groups.

    Each example's channels are split into ``groups`` consecutive groups of ``C/groups``;
    ``μ`` and the biased ``σ²`` are taken over the spatial axes and the channels of one
    group; then ``y = γ (x − μ) / √(σ² + ε) + β`` with ``γ``, ``β`` per channel (PyTorch's
    ``GroupNorm``). ``groups=1`` is layer normalisation over ``(…, C)``; ``groups=C`` is
    instance normalisation.

    Backward: :func:`layer_norm`'s, over the group's elements (``ĝ = g γ``)::

        dx = (1/σ) (ĝ − mean(ĝ) − x̂ · mean(ĝ x̂))
        dγ = Σ_{N, space} g x̂        dβ = Σ_{N, space} g

    Args:
      x: ``(N, *spatial, C)``, floating, at least 2 dimensions.
      gamma: ``(C,)``, or None for 1.
      beta: ``(C,)``, or None for 0.
      groups: a Python int dividing ``C``.
      eps: ``ε ≥ 0``, finite (a Python or NumPy float).

    Returns:
      ``y``, the shape and dtype of ``x``.

    Raises:
      TypeError: an array is not floating point, the dtypes differ, ``groups`` is not
        an int, ``eps`` not a number.
      ValueError: ``x`` has fewer than 2 dimensions, ``groups`` does not divide ``C``,
        ``gamma``/``beta`` are not ``(C,)``, or ``eps`` is negative, infinite or NaN.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.group_norm(jnp.array([[1.0, 3.0, 0.0, 4.0]]), None, None, 2, eps=0.0).tolist()
    [[-1.0, 1.0, -1.0, 1.0]]
    """
    return _group_norm(x, gamma, beta, groups, eps, _normalise)


def _group_norm(x, gamma, beta, groups, eps, normalise):
    """Validates, groups the channels, then ``normalise`` (the hand rule or the reference)."""
    op = "group_norm"
    x = _checks.float_array(op, "x", x)
    _checks.min_rank(op, "x", x, 2, "(N, ..., C)")
    c = x.shape[-1]
    groups = _checks.integer(op, "groups", groups)
    if groups < 1 or c % groups:
        raise ValueError(
            f"{op}: `groups`={groups} must be a positive divisor of the {c} channels of x {tuple(x.shape)}."
        )
    eps = _eps(op, eps)
    params = _params(op, x, c, gamma=gamma, beta=beta)
    grouped = x.reshape(*x.shape[:-1], groups, c // groups)
    axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)  # space and the channels of a group
    kept = (1,) * (x.ndim - 1) + (groups, c // groups)
    y = normalise(grouped, params["gamma"].reshape(kept), params["beta"].reshape(kept), axes, eps)
    return y.reshape(x.shape)


@functools.partial(_rule.custom_rule, nondiff_argnums=(3, 4))
def _normalise(x, gamma, beta, axes, eps):
    """``γ x̂ + β`` with ``x̂`` normalised over ``axes``; ``γ``, ``β`` broadcastable to ``x``."""
    return _normalise_fwd(x, gamma, beta, axes, eps)[0]


def _normalise_fwd(x, gamma, beta, axes, eps):
    ct = _compute_dtype(x.dtype)
    xc = x.astype(ct)
    mu, _, inv_sigma = _statistics(xc, axes, eps)
    x_hat = (xc - mu) * inv_sigma
    y = x_hat * gamma.astype(ct) + beta.astype(ct)
    return y.astype(x.dtype), NormResiduals(x_hat, inv_sigma, gamma.astype(ct))


def _normalise_bwd(axes, eps, res: NormResiduals, g):
    x_hat, inv_sigma, gamma = res
    dtype = g.dtype
    g = g.astype(x_hat.dtype)
    g_hat = g * gamma  # ∂L/∂x̂
    dx = inv_sigma * (g_hat - jnp.mean(g_hat, axes, keepdims=True)
                      - x_hat * jnp.mean(g_hat * x_hat, axes, keepdims=True))
    d_gamma = _sum_to(g * x_hat, gamma.shape)  # Σ_batch g x̂
    d_beta = _sum_to(g, gamma.shape)  # Σ_batch g
    return dx.astype(dtype), d_gamma.astype(dtype), d_beta.astype(dtype)


def _normalise_jvp(axes, eps, primals, tangents):
    x, (t_x, t_gamma, t_beta) = primals[0], tangents
    y, (x_hat, inv_sigma, gamma) = _normalise_fwd(*primals, axes, eps)
    ct = x_hat.dtype
    t = t_x.astype(ct)
    t_x_hat = inv_sigma * (t - jnp.mean(t, axes, keepdims=True)
                           - x_hat * jnp.mean(x_hat * t, axes, keepdims=True))  # ṫ_x̂, the statistics' tangents in
    t_y = gamma * t_x_hat + x_hat * t_gamma.astype(ct) + t_beta.astype(ct)  # γ ṫ_x̂ + ṫ_γ x̂ + ṫ_β
    return y, t_y.astype(x.dtype)


_normalise.defvjp(_normalise_fwd, _normalise_bwd)
_normalise.defjvp(_normalise_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_normalise = jax.jit(_normalise, static_argnums=(3, 4))


def _sum_to(a, shape):
    """``a`` summed over the axes where ``shape`` (same rank) has size 1, kept."""
    return jnp.sum(a, tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True)


# --------------------------------------------------------------------------- references


def _reference_normalise(x, gamma, beta, axes, eps):
    """``(x − μ) / √(σ² + ε)`` with ``x`` and ``x − μ`` scaled by constant powers of two that
    bring their largest magnitude below 1 (exact: the same bits as unscaled wherever those
    are finite, and no overflow of ``Σ x`` or ``Σ (x − μ)²`` for any finite ``x``)."""
    ct = _compute_dtype(x.dtype)
    xc = x.astype(ct)
    s1, up1 = lax.stop_gradient(_downscale(xc, axes))
    mu = jnp.mean(xc * s1, axes, keepdims=True) * up1
    s2, up2 = lax.stop_gradient(_downscale(xc - mu, axes))
    scaled = (xc - mu) * s2
    var_scaled = jnp.mean(jnp.square(scaled), axes, keepdims=True)  # jnp.var's formula, about a given μ
    y = scaled / jnp.sqrt(var_scaled + eps * s2 * s2) * gamma.astype(ct) + beta.astype(ct)
    return y.astype(x.dtype), mu, var_scaled * up2 * up2


def batch_norm_reference(x, gamma, beta, *, axis=-1, eps=1e-5, mean=None, var=None):
    """Autodiff reference for :func:`batch_norm`."""
    x, gamma, beta, mean, var, axis, eps = _validate_bn(x, gamma, beta, mean, var, axis, eps)
    reduced = tuple(a for a in range(x.ndim) if a != axis)
    g, b = _per_channel(gamma, x, reduced), _per_channel(beta, x, reduced)
    if mean is None:
        y, mu, v = _reference_normalise(x, g, b, reduced, eps)
        return y, mu.reshape(gamma.shape).astype(x.dtype), v.reshape(gamma.shape).astype(x.dtype)
    ct = _compute_dtype(x.dtype)
    m, v = (_per_channel(a.astype(ct), x, reduced) for a in (mean, var))
    return ((x.astype(ct) - m) / jnp.sqrt(v + eps) * g.astype(ct) + b.astype(ct)).astype(x.dtype)


def layer_norm_reference(x, gamma, beta, *, axis=-1, eps=1e-5):
    """Autodiff reference for :func:`layer_norm`."""
    return _layer_norm(x, gamma, beta, axis, eps, _reference_normalised)


def group_norm_reference(x, gamma, beta, groups, *, eps=1e-5):
    """Autodiff reference for :func:`group_norm` (per example and group, with ``jnp.var``)."""
    return _group_norm(x, gamma, beta, groups, eps, _reference_normalised)


def _reference_normalised(x, gamma, beta, axes, eps):
    return _reference_normalise(x, gamma, beta, axes, eps)[0]
