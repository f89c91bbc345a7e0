"""Losses and the L2 penalty with hand-derived backward rules.

Lectures: Bell (Euclidean loss ``L_i = ½ Σ_j (z_ij − y_ij)²``, ``∂L_i/∂z = z − y``,
``∂L_i/∂y = y − z``, averaged over the batch); Hu & Zhu ("Softmax-cross-entropy error
layer: δ = y⁽ᴸ⁾ − t"; weight decay ``− αλW``); Jearanaitanakij (``∂L_i/∂f = p − 1`` at the
target and ``p`` elsewhere; the regulariser ``½ λ Σ w²`` with gradient ``λw``).

Each loss's JVP is the row of its gradient dotted with the tangents (``ṫ_L = ⟨∇L, ṫ⟩``,
the VJP's formulas with ``g = 1`` contracted against the tangents):

* cross-entropy, per row: ``ṫ_ℓn = Σ_k (p_nk Σ_j c_nj − c_nk) ṡ_nk − (1 − ε) Σ_k w_k log p_nk ṫ_nk``
  (the last term for target rows), scaled and summed as the loss (``1/D``, ``1`` or per row);
* Euclidean: ``ṫ_ℓi = ⟨z_i − y_i, ṫ_z,i − ṫ_y,i⟩``, averaged, summed or per example;
* L2 penalty: ``ṫ_R = λ Σ ⟨w, ṫ_w⟩ + ½ ṫ_λ Σ w²``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks
from jaxcnn.ops import _rule

# --------------------------------------------------------------------------- softmax CE

REDUCTIONS = ("mean", "sum", "none")


def softmax_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    weights: Optional[jax.Array] = None,
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> jax.Array:
    """Softmax cross-entropy ``L = −(1/N) Σ_n Σ_k t_nk log p_nk``, ``p = softmax(s)``; PyTorch's options.

    Backward (Bell, Hu & Zhu, Jearanaitanakij): ``dL/ds = g (p − t) / N``; for
    probability labels also ``dL/dt = −g log p / N``; integer labels get no gradient.

    With the options, each row's loss is ``ℓ_n = −Σ_k c_nk log p_nk`` with the
    coefficients of PyTorch's ``cross_entropy`` (``ε`` = ``label_smoothing``, ``w`` =
    ``weights``, ``m_n = 0`` on an ignored row, else 1):

    * class ids ``y``: ``c_nk = m_n ((1 − ε) w_{y_n} [k = y_n] + (ε/K) w_k)``;
    * target rows ``t``: ``c_nk = w_k ((1 − ε) t_nk + ε/K)``;

    and ``reduction="none"`` returns every ``ℓ_n``, ``"sum"`` their sum, ``"mean"`` their
    sum divided by ``D``: with class ids the summed weight of the kept rows,
    ``D = Σ_n m_n w_{y_n}`` (the count of kept rows without weights), with target rows
    ``D = N``. The backward is the same formula for every option, since
    ``∂ℓ_n/∂s_n = p_n Σ_k c_nk − c_n``::

        ds_n = σ_n (p_n Σ_k c_nk − c_n)      σ_n = g/D, g, or g_n (mean, sum, none)
        dt_nk = −σ_n (1 − ε) w_k log p_nk   (target rows)

    An ignored row is selected out, as PyTorch's ``nll_loss`` skips it by index: its
    ``ℓ_n`` and ``ds_n`` are exactly 0 whatever its logits, and its class weight is never
    read (nor is the weight of a class no kept row has, unless ``ε > 0`` puts every weight
    in the smoothing term, as in PyTorch). **Every row ignored** (an all-padding batch):
    ``"mean"`` is ``0/0 = NaN``, PyTorch's value, while the gradient is 0 — no row
    contributes — as autodiff of the reference and PyTorch give; ``"sum"`` is 0 and
    ``"none"`` all zeros. Under ``vmap`` this holds per mapped batch.

    Target rows that do not sum to one get exactly this (the lecture's ``p − t`` needs
    ``Σ_k t_k = 1``). ``weights`` are constants: like PyTorch, no gradient flows to them.

    ``log p = (s − max s) − log Σ e^{s − max s}`` is computed stably (logits of magnitude
    1e4 are fine). Residuals: with class ids, ``e^{s − max s}`` (which the forward pass
    computes anyway) and its row sums, so the backward pass is one multiply-subtract per
    element, ``p − t = e^{s − max s} / Σ − t``; with target rows, the logits themselves
    and two numbers per row (``max s`` and the log-sum), and ``p = exp(log p)`` is
    recomputed in the backward pass, so saturated probabilities never produce
    ``0 · log 0`` in ``dL/dt``.

    Args:
      logits: scores ``s`` of shape ``(N, K)``, or ``(..., K)`` where every leading axis
        counts towards ``N``.
      labels: integer class ids of shape ``logits.shape[:-1]`` with values in ``[0, K)``,
        or one-hot / probability rows of shape ``logits.shape`` (same dtype as logits).
        A class id outside ``[0, K)`` (other than ``ignore_index``) anywhere in the batch
        makes the loss NaN and every element of ``dL/ds`` NaN — what autodiff of the
        reference and finite differences of a NaN loss give — so an update from such a
        batch is never silently finite. (Labels cannot be checked here: under ``jit`` they
        are traced. ``jaxcnn.data``, ``train.fit`` and ``train.evaluate`` refuse them where
        they are concrete.)
      weights: per-class weights ``(K,)`` (PyTorch's ``weight``), same dtype as logits.
      ignore_index: a class id (a Python or NumPy int) whose rows count for nothing,
        neither in the loss, its gradient nor ``D`` (PyTorch's default -100 is not
        assumed: None ignores nothing). Class ids only.
      label_smoothing: ``ε ∈ [0, 1]`` (a Python or NumPy float): the target becomes
        ``(1 − ε) t + ε/K``.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
      The loss, in the dtype of ``logits``: a scalar, or ``logits.shape[:-1]`` with
      ``reduction="none"``.

    Raises:
      TypeError: ``logits`` is not floating point; ``labels`` is neither integer nor of
        the logits' dtype; ``weights`` has another dtype; an option has the wrong type.
      ValueError: ``logits`` has fewer than 2 dimensions; ``labels`` or ``weights`` has
        the wrong shape; ``ignore_index`` with target rows; ``label_smoothing`` outside
        ``[0, 1]`` or NaN; an unknown ``reduction``.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> s = jnp.log(jnp.array([[0.3, 0.7]]))  # p = (0.3, 0.7), target class 2
    >>> [round(v, 6) for v in jax.grad(ops.softmax_cross_entropy)(s, jnp.array([1]))[0].tolist()]
    [0.3, -0.3]
    """
    logits, labels, weights, ignore_index, eps = _validate_ce(logits, labels, weights, ignore_index, label_smoothing,
                                                              reduction)
    return _softmax_cross_entropy(logits, labels, weights, ignore_index, eps, reduction)


class ClassIdResiduals(NamedTuple):
    exp_shifted: jax.Array  # e^{s − max s}, computed by the forward pass for the log-sum
    total: jax.Array  # Σ_k e^{s_k − max s} per row, shape (..., 1): p = exp_shifted / total
    labels: jax.Array  # integer class ids
    weights: Optional[jax.Array]  # w (K,) or None


class TargetRowResiduals(NamedTuple):
    logits: jax.Array  # s (the input itself: nothing new is stored at full size)
    top: jax.Array  # max_k s_k per row, shape (..., 1)
    log_sum: jax.Array  # log Σ_k e^{s_k − top} per row: log p = (s − top) − log_sum, exactly as in the forward
    labels: jax.Array  # target rows t
    weights: Optional[jax.Array]


def _normaliser(s):
    """``max s``, ``e^{s − max s}`` and its row sums."""
    top = jnp.max(s, axis=-1, keepdims=True)
    exp_shifted = jnp.exp(s - top)
    return top, exp_shifted, jnp.sum(exp_shifted, axis=-1, keepdims=True)


class RowCoefficients(NamedTuple):
    """Per class-id row: ``r_n = m_n w_{y_n}`` (the one-hot's coefficient before ``1 − ε``),
    ``m_n`` (kept) and the divisor ``D``; None where the option is off (1 everywhere)."""

    kept: Optional[jax.Array]  # m_n as a bool mask, shape (...,)
    row_weight: Optional[jax.Array]  # m_n w_{y_n}
    divisor: Any  # D = Σ_n m_n w_{y_n}: an array, or the Python int N


def _row_coefficients(labels, k, weights, ignore_index, dtype) -> RowCoefficients:
    kept = None if ignore_index is None else labels != ignore_index
    w_y = None if weights is None else weights[jnp.clip(labels, 0, k - 1)]
    if kept is None:
        row_weight = w_y
    else:  # selected, not multiplied: an ignored row's class weight is never read (0 · NaN is NaN)
        row_weight = jnp.where(kept, jnp.ones((), dtype) if w_y is None else w_y, jnp.zeros((), dtype))
    return RowCoefficients(kept, row_weight, labels.size if row_weight is None else jnp.sum(row_weight))


def _reduce(rows, divisor, reduction):
    if reduction == "none":
        return rows
    total = jnp.sum(rows)
    return total / divisor if reduction == "mean" else total


def _scale(g, divisor, reduction):
    """``σ_n``: ``g/D`` (mean), ``g`` (sum) or ``g_n`` (none), broadcastable against a row's classes."""
    if reduction == "none":
        return g[..., None]
    return g / divisor if reduction == "mean" else g


def _ce_rows(s, top, log_sum, labels, weights, ignore_index, eps):
    """``ℓ_n`` for every row (all NaN when a class id that is not ignored is out of range)."""
    k = s.shape[-1]
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        t = labels if eps == 0 else (1 - eps) * labels + eps / k
        c = t if weights is None else t * weights
        return -jnp.sum(c * ((s - top) - log_sum), axis=-1)
    picked = jnp.take_along_axis(s, jnp.clip(labels, 0, k - 1)[..., None], -1)  # pick, do not mask
    nll = -((picked - top) - log_sum)[..., 0]
    coef = _row_coefficients(labels, k, weights, ignore_index, s.dtype)
    rows = nll if coef.row_weight is None else coef.row_weight * nll
    if eps:  # the smoothing term −(ε/K) m_n Σ_k w_k log p_nk
        w = jnp.ones((k,), s.dtype) if weights is None else weights
        smooth = -(jnp.sum(w * (s - top), axis=-1) - jnp.sum(w) * log_sum[..., 0])
        rows = (1 - eps) * rows + (eps / k) * smooth
    if coef.kept is not None:  # m_n = 0: the row is selected out, whatever its logits
        rows = jnp.where(coef.kept, rows, jnp.zeros((), s.dtype))
    return rows * _nan_unless_valid(labels, k, ignore_index, s.dtype)


def _nan_unless_valid(labels, k, ignore_index, dtype):
    """1, or NaN when any class id other than ``ignore_index`` lies outside ``[0, K)``: a
    factor of the loss and of its gradient, so that both are NaN for such a batch (in the
    rule and under autodiff)."""
    valid = (labels >= 0) & (labels < k)
    if ignore_index is not None:
        valid = valid | (labels == ignore_index)
    return jnp.where(jnp.all(valid), jnp.ones((), dtype), jnp.asarray(jnp.nan, dtype))


def _ce_divisor(labels, weights, ignore_index, dtype, k):
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        return labels.size // k
    return _row_coefficients(labels, k, weights, ignore_index, dtype).divisor


@functools.partial(_rule.custom_rule, nondiff_argnums=(3, 4, 5))
def _softmax_cross_entropy(logits, labels, weights, ignore_index, eps, reduction):
    return _softmax_cross_entropy_fwd(logits, labels, weights, ignore_index, eps, reduction)[0]


def _softmax_cross_entropy_fwd(logits, labels, weights, ignore_index, eps, reduction):
    top, exp_shifted, total = _normaliser(logits)
    log_sum = jnp.log(total)
    rows = _ce_rows(logits, top, log_sum, labels, weights, ignore_index, eps)
    loss = _reduce(rows, _ce_divisor(labels, weights, ignore_index, logits.dtype, logits.shape[-1]), reduction)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return loss, ClassIdResiduals(exp_shifted, total, labels, weights)
    return loss, TargetRowResiduals(logits, top, log_sum, labels, weights)


def _softmax_cross_entropy_bwd(ignore_index, eps, reduction, res, g):
    if isinstance(res, ClassIdResiduals):  # ds = σ (p Σ_k c_k − c), c = m((1 − ε) w_y onehot + (ε/K) w)
        e, labels, weights = res.exp_shifted, res.labels, res.weights
        k = e.shape[-1]
        coef = _row_coefficients(labels, k, weights, ignore_index, e.dtype)
        valid = _nan_unless_valid(labels, k, ignore_index, g.dtype)
        scale = _scale(g, coef.divisor, reduction) * valid
        target = labels[..., None] == jnp.arange(k)
        on_target = scale if coef.row_weight is None else scale * coef.row_weight[..., None]
        if not eps:  # Σ_k c_k = r_n
            ds = e * (on_target / res.total) - jnp.where(target, on_target, 0)
        else:
            w_sum = k if weights is None else jnp.sum(weights)
            c_sum = (1 - eps) * on_target + (eps / k) * w_sum * scale
            smooth = (eps / k) * scale * (1 if weights is None else weights)
            ds = e * (c_sum / res.total) - jnp.where(target, (1 - eps) * on_target, 0) - smooth
        if coef.kept is not None:  # c_n = 0 on an ignored row: ds_n = 0, selected (σ = g/0 when all are)
            ds = jnp.where(coef.kept[..., None], ds, jnp.zeros((), ds.dtype) * valid)
        return ds, None, None
    s, t, w = res.logits, res.labels, res.weights  # rows t need not sum to one: ds = σ (p Σc − c)
    k = s.shape[-1]
    scale = _scale(g, s.size // k, reduction)
    log_p = (s - res.top) - res.log_sum
    t_smooth = t if eps == 0 else (1 - eps) * t + eps / k
    c = t_smooth if w is None else t_smooth * w
    ds = (jnp.exp(log_p) * jnp.sum(c, axis=-1, keepdims=True) - c) * scale
    dt = log_p * -(scale if w is None else scale * w)
    return ds, dt if eps == 0 else (1 - eps) * dt, None


def _softmax_cross_entropy_jvp(ignore_index, eps, reduction, primals, tangents):
    # ṫ_ℓn = ⟨p_n Σc_n − c_n, ṡ_n⟩ (− (1 − ε) ⟨w log p_n, ṫ_n⟩ for target rows): the VJP's ds and dt
    # contracted with the tangents; the weights are constants (their tangent is not read), as in the VJP
    (s, labels, weights), (s_dot, t_dot, _) = primals, tangents
    out = _softmax_cross_entropy(s, labels, weights, ignore_index, eps, reduction)
    k = s.shape[-1]
    top, e, total = _normaliser(s)
    p_dot = jnp.sum(e * s_dot, axis=-1) / total[..., 0]  # ⟨p_n, ṡ_n⟩
    if not jnp.issubdtype(labels.dtype, jnp.integer):  # target rows: c_n = w ((1 − ε) t_n + ε/K), D = N
        t = labels if eps == 0 else (1 - eps) * labels + eps / k
        c = t if weights is None else t * weights
        log_p = (s - top) - jnp.log(total)
        rows = jnp.sum(c, axis=-1) * p_dot - jnp.sum(c * s_dot, axis=-1)
        rows = rows - (1 - eps) * jnp.sum(log_p * (t_dot if weights is None else weights * t_dot), axis=-1)
        rows = _per_row_scale(rows, s.size // k, reduction)
        return out, rows if reduction == "none" else jnp.sum(rows)
    coef = _row_coefficients(labels, k, weights, ignore_index, s.dtype)  # class ids: t_dot is float0
    valid = _nan_unless_valid(labels, k, ignore_index, s.dtype)
    r = 1 if coef.row_weight is None else coef.row_weight  # r_n = m_n w_{y_n} = Σ_k c_nk without smoothing
    picked = jnp.take_along_axis(s_dot, jnp.clip(labels, 0, k - 1)[..., None], -1)[..., 0]  # ṡ_{n, y_n}
    rows = r * (p_dot - picked)
    if eps:  # c_n = (1 − ε) r_n onehot + (ε/K) w: the smoothing term (ε/K) (Σw ⟨p_n, ṡ_n⟩ − ⟨w, ṡ_n⟩)
        w_sum, w_dot = (k, jnp.sum(s_dot, axis=-1)) if weights is None else (
            jnp.sum(weights), jnp.sum(weights * s_dot, axis=-1))
        rows = (1 - eps) * rows + (eps / k) * (w_sum * p_dot - w_dot)
    rows = _per_row_scale(rows, coef.divisor, reduction) * valid
    if coef.kept is not None:  # ṫ_ℓn = 0 on an ignored row, selected as in the VJP (0, not 0/0, when all are)
        rows = jnp.where(coef.kept, rows, jnp.zeros((), rows.dtype) * valid)
    return out, rows if reduction == "none" else jnp.sum(rows)


def _per_row_scale(rows, divisor, reduction):
    """Each row's tangent times ``σ_n / g``: ``1/D`` (mean) or 1 (sum, none), before the sum."""
    return rows / divisor if reduction == "mean" else rows


_softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)
_softmax_cross_entropy.defjvp(_softmax_cross_entropy_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_softmax_cross_entropy = jax.jit(_softmax_cross_entropy, static_argnums=(3, 4, 5))


def _validate_ce(logits, labels, weights, ignore_index, label_smoothing, reduction):
    op = "softmax_cross_entropy"
    logits = _checks.float_array(op, "logits", logits)
    _checks.min_rank(op, "logits", logits, 2, "(N, K)")
    if logits.shape[-1] == 0:
        raise ValueError(f"{op}: `logits` must have at least one class (K = logits.shape[-1] >= 1), "
                         f"got shape {tuple(logits.shape)}.")
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        _checks.shape(op, "labels", labels, logits.shape[:-1],
                      "(integer class ids: logits.shape[:-1])")
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        _checks.shape(op, "labels", labels, logits.shape,
                      "(one-hot or probability rows: logits.shape)")
        _checks.same_dtype(op, logits=logits, labels=labels)
        if ignore_index is not None:
            raise ValueError(
                f"{op}: `ignore_index`={ignore_index!r} applies to integer class ids only (as in PyTorch), but "
                f"`labels` are target rows of shape {tuple(labels.shape)}; give those rows zero weight instead."
            )
    else:
        raise TypeError(
            f"softmax_cross_entropy: `labels` must be integer class ids of shape "
            f"{tuple(logits.shape[:-1])} or floating target rows of shape {tuple(logits.shape)}, "
            f"got dtype {labels.dtype} with shape {tuple(labels.shape)}."
        )
    if weights is not None:
        weights = _checks.float_array(op, "weights", weights)
        _checks.shape(op, "weights", weights, logits.shape[-1:], "(one weight per class)")
        _checks.same_dtype(op, logits=logits, weights=weights)
    if ignore_index is not None:
        ignore_index = _checks.integer(op, "ignore_index", ignore_index)
    label_smoothing = _checks.number(op, "label_smoothing", label_smoothing, 0.0, 1.0, high_open=False)
    _check_reduction(op, reduction)
    return logits, labels, weights, ignore_index, label_smoothing


def _check_reduction(op, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: `reduction` must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}.")


# --------------------------------------------------------------------------- Euclidean


def euclidean_loss(pred: jax.Array, target: jax.Array, *, reduction: str = "mean") -> jax.Array:
    """Euclidean loss ``L = (1/N) Σ_i ½ ‖z_i − y_i‖²`` (Bell).

    ``reduction`` as in PyTorch's losses: ``"none"`` returns every example's
    ``ℓ_i = ½ ‖z_i − y_i‖²`` (shape ``(N,)``), ``"sum"`` their sum, ``"mean"`` (default,
    the lecture's) their mean, so that ``mean == none.mean()`` and ``sum == none.sum()``.
    Relation to ``torch.nn.functional.mse_loss``, which averages ``(z − y)²`` over every
    element: ``mse_loss(z, y, reduction="sum") = 2 · euclidean_loss(z, y, reduction="sum")``
    and ``mse_loss(z, y) = 2 · euclidean_loss(z, y) / D`` with ``D = z.size / N``.

    Backward (Bell, with the batch mean): ``dz = g (z − y) / N``, ``dy = g (y − z) / N``;
    with ``"sum"`` no ``1/N``; with ``"none"`` ``dz_i = g_i (z_i − y_i)``. The residual is
    the difference ``z − y``.

    Args:
      pred: predictions ``z`` of shape ``(N, ...)``.
      target: targets ``y``, the same shape and dtype.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
      The loss: a scalar, or ``(N,)`` with ``reduction="none"``.

    Raises:
      TypeError: an argument is not floating point, or the dtypes differ.
      ValueError: ``pred`` is a scalar, the shapes differ, or ``reduction`` is unknown.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> float(ops.euclidean_loss(jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.zeros((2, 2))))
    1.25
    """
    pred, target = _validate_euclidean(pred, target, reduction)
    return _euclidean_loss(pred, target, reduction)


class EuclideanResiduals(NamedTuple):
    diff: jax.Array  # z - y


def _per_example(a):
    """``Σ`` over every axis but the first (a 1-D ``a`` is its own per-example value)."""
    return jnp.sum(a, axis=tuple(range(1, a.ndim)))


@functools.partial(_rule.custom_rule, nondiff_argnums=(2,))
def _euclidean_loss(pred, target, reduction):
    diff = pred - target
    return _reduce(0.5 * _per_example(diff * diff), pred.shape[0], reduction)


def _euclidean_loss_fwd(pred, target, reduction):
    return _euclidean_loss(pred, target, reduction), EuclideanResiduals(pred - target)


def _euclidean_loss_bwd(reduction, res: EuclideanResiduals, g):
    diff = res.diff
    if reduction == "none":  # dz_i = g_i (z_i − y_i)
        scale = g.reshape(g.shape + (1,) * (diff.ndim - 1))
    else:  # (z − y) g / N: one scalar, one multiply per element
        scale = g / diff.shape[0] if reduction == "mean" else g
    dz = diff * scale
    return dz, -dz


def _euclidean_loss_jvp(reduction, primals, tangents):
    (pred, target), (t_pred, t_target) = primals, tangents
    diff = pred - target
    rows = _per_example(diff * (t_pred - t_target))  # ⟨z_i − y_i, ṫ_z,i − ṫ_y,i⟩
    return _reduce(0.5 * _per_example(diff * diff), pred.shape[0], reduction), _reduce(rows, pred.shape[0], reduction)


_euclidean_loss.defvjp(_euclidean_loss_fwd, _euclidean_loss_bwd)
_euclidean_loss.defjvp(_euclidean_loss_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_euclidean_loss = jax.jit(_euclidean_loss, static_argnums=2)


def _validate_euclidean(pred, target, reduction):
    op = "euclidean_loss"
    pred = _checks.float_array(op, "pred", pred)
    target = _checks.float_array(op, "target", target)
    _checks.min_rank(op, "pred", pred, 1, "(N, ...)")
    _checks.shape(op, "target", target, pred.shape, "(the shape of `pred`)")
    _checks.same_dtype(op, pred=pred, target=target)
    _check_reduction(op, reduction)
    return pred, target


# --------------------------------------------------------------------------- L2 penalty


def l2_penalty(params: Any, lam: Any) -> jax.Array:
    """Weight decay ``R = ½ λ Σ w²`` over every leaf of a pytree (Jearanaitanakij, Hu & Zhu).

    Backward: ``dw = g λ w`` for every leaf and ``dλ = g · ½ Σ w²``.

    Args:
      params: a pytree (dict, list, NamedTuple, ...) of floating arrays. Select the
        leaves you want penalised first (e.g. weights but not biases).
      lam: the regularisation strength ``λ``, a Python float or a floating scalar.

    Returns:
      The scalar penalty, in the promoted dtype of the leaves.

    Raises:
      TypeError: a leaf or ``lam`` is not floating point.
      ValueError: ``lam`` is not a scalar, or is a Python (NumPy) number that is not
        finite.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> round(float(ops.l2_penalty({"w": jnp.array([1.0, 2.0]), "v": jnp.array([[2.0]])}, 0.1)), 6)
    0.45
    """
    params, lam = _validate_l2(params, lam)
    return _l2_penalty(params, lam)


class L2Residuals(NamedTuple):
    params: Any  # the leaves w, for dw = λ w
    lam: jax.Array  # λ
    sum_sq: jax.Array  # Σ w², for dλ


def _sum_sq(params, dtype):
    leaves = jax.tree_util.tree_leaves(params)
    return sum((jnp.sum(w * w).astype(dtype) for w in leaves), jnp.zeros((), dtype))


@_rule.custom_rule
def _l2_penalty(params, lam):
    return 0.5 * lam * _sum_sq(params, lam.dtype)


def _l2_penalty_fwd(params, lam):
    sum_sq = _sum_sq(params, lam.dtype)
    return 0.5 * lam * sum_sq, L2Residuals(params, lam, sum_sq)


def _l2_penalty_bwd(res: L2Residuals, g):
    g_lam = g * res.lam
    dparams = jax.tree_util.tree_map(lambda w: g_lam.astype(w.dtype) * w, res.params)
    return dparams, g * 0.5 * res.sum_sq


def _l2_penalty_jvp(primals, tangents):
    (params, lam), (t_params, t_lam) = primals, tangents
    sum_sq = _sum_sq(params, lam.dtype)
    leaves, t_leaves = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(t_params)
    w_dot = sum((jnp.sum(w * t).astype(lam.dtype) for w, t in zip(leaves, t_leaves)), jnp.zeros((), lam.dtype))
    return 0.5 * lam * sum_sq, lam * w_dot + 0.5 * t_lam * sum_sq  # λ Σ ⟨w, ṫ_w⟩ + ½ ṫ_λ Σ w²


_l2_penalty.defvjp(_l2_penalty_fwd, _l2_penalty_bwd)
_l2_penalty.defjvp(_l2_penalty_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_l2_penalty = jax.jit(_l2_penalty)


def _validate_l2(params, lam):
    leaves = jax.tree_util.tree_leaves_with_path(params)
    arrays = []
    for path, leaf in leaves:
        where = "params" + jax.tree_util.keystr(path)
        arrays.append(_checks.float_array("l2_penalty", where, leaf))
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), arrays)
    dtype = jnp.result_type(*arrays) if arrays else jnp.float32
    if isinstance(lam, (int, float, np.integer, np.floating)):  # a setting: finite, in the leaves' dtype
        lam = jnp.asarray(_checks.number("l2_penalty", "lam", lam), dtype)
    lam = _checks.float_array("l2_penalty", "lam", lam)
    _checks.rank("l2_penalty", "lam", lam, 0, "(a scalar)")
    return params, lam


# --------------------------------------------------------------------------- references


def softmax_cross_entropy_reference(logits, labels, *, weights=None, ignore_index=None, label_smoothing=0.0,
                                    reduction="mean"):
    """Autodiff reference for :func:`softmax_cross_entropy`, written as PyTorch's ``cross_entropy``
    is: ``(1 − ε) · nll_loss(log p) + (ε/K) · smooth_loss`` with one divisor for both."""
    logits, labels, weights, ignore_index, eps = _validate_ce(logits, labels, weights, ignore_index, label_smoothing,
                                                              reduction)
    k = logits.shape[-1]
    shifted = logits - lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    log_p = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    w = jnp.ones((k,), logits.dtype) if weights is None else lax.stop_gradient(weights)  # constants, as in PyTorch
    if not jnp.issubdtype(labels.dtype, jnp.integer):  # probability targets: smoothed, weighted, divided by N
        t = (1 - eps) * labels + eps / k
        rows = -jnp.sum(w * t * log_p, axis=-1)
        return _reduce(rows, labels.size // k, reduction)
    # An id outside [0, K) makes everything NaN, the gradient of ignored rows included.
    log_p = log_p * _nan_unless_valid(labels, k, ignore_index, logits.dtype)
    kept = jnp.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    safe = jnp.clip(labels, 0, k - 1)
    # PyTorch's nll_loss reads w[y_n] on kept rows only: the weight of an absent (or the ignored)
    # class never enters, not even as 0 · w (NaN for a NaN weight), nor in the gradient
    w_y = jnp.where(kept, w[safe], 0)
    nll = jnp.where(kept, -w_y * jnp.take_along_axis(log_p, safe[..., None], -1)[..., 0], 0)
    divisor = jnp.sum(w_y)
    rows = nll
    if eps:  # PyTorch adds the smoothing term only for ε > 0: every weight enters it
        rows = (1 - eps) * nll + (eps / k) * jnp.where(kept, -jnp.sum(w * log_p, axis=-1), 0)
    return _reduce(rows, divisor, reduction)


def euclidean_loss_reference(pred, target, *, reduction="mean"):
    """Autodiff reference for :func:`euclidean_loss`."""
    pred, target = _validate_euclidean(pred, target, reduction)
    per_example = 0.5 * jnp.sum((pred - target) ** 2, axis=tuple(range(1, pred.ndim)))
    return _reduce(per_example, pred.shape[0], reduction)


def l2_penalty_reference(params, lam):
    """Autodiff reference for :func:`l2_penalty`."""
    params, lam = _validate_l2(params, lam)
    total = jnp.zeros((), lam.dtype)
    for w in jax.tree_util.tree_leaves(params):
        total = total + jnp.sum(w**2).astype(lam.dtype)
    return 0.5 * lam * total
