"""Losses and the L2 penalty with hand-derived backward rules.

Lectures: Bell (Euclidean loss ``L_i = ½ Σ_j (z_ij − y_ij)²``, ``∂L_i/∂z = z − y``,
``∂L_i/∂y = y − z``, averaged over the batch); Hu & Zhu ("Softmax-cross-entropy error
layer: δ = y⁽ᴸ⁾ − t"; weight decay ``− αλW``); Jearanaitanakij (``∂L_i/∂f = p − 1`` at the
target and ``p`` elsewhere; the regulariser ``½ λ Σ w²`` with gradient ``λw``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks

# --------------------------------------------------------------------------- softmax CE


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy ``L = −(1/N) Σ_n Σ_k t_nk log p_nk``, ``p = softmax(s)``.

    Backward (Bell, Hu & Zhu, Jearanaitanakij): ``dL/ds = g (p − t) / N``; for
    probability labels also ``dL/dt = −g log p / N``; integer labels get no gradient.
    Target rows that do not sum to one get the exact ``dL/ds = g (p Σ_k t_k − t) / N``,
    which is the lecture's formula whenever ``Σ_k t_k = 1``.

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
        An out-of-range class id makes the loss NaN rather than silently wrong.

    Returns:
      The scalar mean loss, in the dtype of ``logits``.

    Raises:
      TypeError: ``logits`` is not floating point; ``labels`` is neither integer nor of
        the logits' dtype.
      ValueError: ``logits`` has fewer than 2 dimensions; ``labels`` has the wrong shape.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> s = jnp.log(jnp.array([[0.3, 0.7]]))  # p = (0.3, 0.7), target class 2
    >>> [round(v, 6) for v in jax.grad(ops.softmax_cross_entropy)(s, jnp.array([1]))[0].tolist()]
    [0.3, -0.3]
    """
    logits, labels = _validate_ce(logits, labels)
    return _softmax_cross_entropy(logits, labels)


class ClassIdResiduals(NamedTuple):
    exp_shifted: jax.Array  # e^{s − max s}, computed by the forward pass for the log-sum
    total: jax.Array  # Σ_k e^{s_k − max s} per row, shape (..., 1): p = exp_shifted / total
    labels: jax.Array  # integer class ids


class TargetRowResiduals(NamedTuple):
    logits: jax.Array  # s (the input itself: nothing new is stored at full size)
    top: jax.Array  # max_k s_k per row, shape (..., 1)
    log_sum: jax.Array  # log Σ_k e^{s_k − top} per row: log p = (s − top) − log_sum, exactly as in the forward
    labels: jax.Array  # target rows t


def _normaliser(s):
    """``max s``, ``e^{s − max s}`` and its row sums."""
    top = jnp.max(s, axis=-1, keepdims=True)
    exp_shifted = jnp.exp(s - top)
    return top, exp_shifted, jnp.sum(exp_shifted, axis=-1, keepdims=True)


def _mean_ce(s, top, log_sum, labels):
    n = s.size // s.shape[-1]
    if jnp.issubdtype(labels.dtype, jnp.integer):  # −(1/N) Σ_n log p[n, label_n]: pick, do not mask
        picked = jnp.take_along_axis(s, jnp.clip(labels, 0, s.shape[-1] - 1)[..., None], -1)
        loss = -jnp.sum((picked - top) - log_sum) / n
        valid = jnp.all((labels >= 0) & (labels < s.shape[-1]))
        return jnp.where(valid, loss, jnp.nan)
    return -jnp.sum(labels * ((s - top) - log_sum)) / n


@jax.custom_vjp
def _softmax_cross_entropy(logits, labels):
    return _softmax_cross_entropy_fwd(logits, labels)[0]


def _softmax_cross_entropy_fwd(logits, labels):
    top, exp_shifted, total = _normaliser(logits)
    log_sum = jnp.log(total)
    loss = _mean_ce(logits, top, log_sum, labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        return loss, ClassIdResiduals(exp_shifted, total, labels)
    return loss, TargetRowResiduals(logits, top, log_sum, labels)


def _softmax_cross_entropy_bwd(res, g):
    if isinstance(res, ClassIdResiduals):  # dL/ds = g (p − t) / N, t one-hot
        scale = g / res.labels.size  # one scalar: a multiply per element, not a multiply and a divide
        target = res.labels[..., None] == jnp.arange(res.exp_shifted.shape[-1])
        return res.exp_shifted * (scale / res.total) - jnp.where(target, scale, 0), None
    s, t = res.logits, res.labels  # rows t need not sum to one: in general ds = (p Σt − t) / N
    scale = g / (s.size // s.shape[-1])
    log_p = (s - res.top) - res.log_sum
    ds = (jnp.exp(log_p) * jnp.sum(t, axis=-1, keepdims=True) - t) * scale
    return ds, log_p * -scale


_softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)


def _validate_ce(logits, labels):
    op = "softmax_cross_entropy"
    logits = _checks.float_array(op, "logits", logits)
    _checks.min_rank(op, "logits", logits, 2, "(N, K)")
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        _checks.shape(op, "labels", labels, logits.shape[:-1],
                      "(integer class ids: logits.shape[:-1])")
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        _checks.shape(op, "labels", labels, logits.shape,
                      "(one-hot or probability rows: logits.shape)")
        _checks.same_dtype(op, logits=logits, labels=labels)
    else:
        raise TypeError(
            f"softmax_cross_entropy: `labels` must be integer class ids of shape "
            f"{tuple(logits.shape[:-1])} or floating target rows of shape {tuple(logits.shape)}, "
            f"got dtype {labels.dtype} with shape {tuple(labels.shape)}."
        )
    return logits, labels


# --------------------------------------------------------------------------- Euclidean


def euclidean_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Euclidean loss ``L = (1/N) Σ_i ½ ‖z_i − y_i‖²`` (Bell).

    Backward (Bell, with the batch mean): ``dz = g (z − y) / N``, ``dy = g (y − z) / N``.
    The residual is the difference ``z − y``.

    Args:
      pred: predictions ``z`` of shape ``(N, ...)``.
      target: targets ``y``, the same shape and dtype.

    Returns:
      The scalar mean loss.

    Raises:
      TypeError: an argument is not floating point, or the dtypes differ.
      ValueError: ``pred`` is a scalar, or the shapes differ.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> float(ops.euclidean_loss(jnp.array([[1.0, 2.0], [0.0, 0.0]]), jnp.zeros((2, 2))))
    1.25
    """
    pred, target = _validate_euclidean(pred, target)
    return _euclidean_loss(pred, target)


class EuclideanResiduals(NamedTuple):
    diff: jax.Array  # z - y


@jax.custom_vjp
def _euclidean_loss(pred, target):
    diff = pred - target
    return 0.5 * jnp.sum(diff * diff) / pred.shape[0]


def _euclidean_loss_fwd(pred, target):
    return _euclidean_loss(pred, target), EuclideanResiduals(pred - target)


def _euclidean_loss_bwd(res: EuclideanResiduals, g):
    dz = res.diff * (g / res.diff.shape[0])  # (z − y) g / N: one scalar, one multiply per element
    return dz, -dz


_euclidean_loss.defvjp(_euclidean_loss_fwd, _euclidean_loss_bwd)


def _validate_euclidean(pred, target):
    op = "euclidean_loss"
    pred = _checks.float_array(op, "pred", pred)
    target = _checks.float_array(op, "target", target)
    _checks.min_rank(op, "pred", pred, 1, "(N, ...)")
    _checks.shape(op, "target", target, pred.shape, "(the shape of `pred`)")
    _checks.same_dtype(op, pred=pred, target=target)
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
      ValueError: ``lam`` is not a scalar.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> float(ops.l2_penalty({"w": jnp.array([1.0, 2.0]), "v": jnp.array([[2.0]])}, 0.1))
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


@jax.custom_vjp
def _l2_penalty(params, lam):
    return 0.5 * lam * _sum_sq(params, lam.dtype)


def _l2_penalty_fwd(params, lam):
    sum_sq = _sum_sq(params, lam.dtype)
    return 0.5 * lam * sum_sq, L2Residuals(params, lam, sum_sq)


def _l2_penalty_bwd(res: L2Residuals, g):
    g_lam = g * res.lam
    dparams = jax.tree_util.tree_map(lambda w: g_lam.astype(w.dtype) * w, res.params)
    return dparams, g * 0.5 * res.sum_sq


_l2_penalty.defvjp(_l2_penalty_fwd, _l2_penalty_bwd)


def _validate_l2(params, lam):
    leaves = jax.tree_util.tree_leaves_with_path(params)
    arrays = []
    for path, leaf in leaves:
        where = "params" + jax.tree_util.keystr(path)
        arrays.append(_checks.float_array("l2_penalty", where, leaf))
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), arrays)
    dtype = jnp.result_type(*arrays) if arrays else jnp.float32
    if isinstance(lam, (int, float)):
        lam = jnp.asarray(lam, dtype)
    lam = _checks.float_array("l2_penalty", "lam", lam)
    _checks.rank("l2_penalty", "lam", lam, 0, "(a scalar)")
    return params, lam


# --------------------------------------------------------------------------- references


def softmax_cross_entropy_reference(logits, labels):
    """Autodiff reference for :func:`softmax_cross_entropy`."""
    logits, labels = _validate_ce(logits, labels)
    shifted = logits - lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    log_p = shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    n = logits.size // logits.shape[-1]
    if jnp.issubdtype(labels.dtype, jnp.integer):
        picked = jnp.take_along_axis(log_p, jnp.clip(labels, 0, logits.shape[-1] - 1)[..., None], -1)
        valid = (labels >= 0) & (labels < logits.shape[-1])
        return jnp.where(jnp.all(valid), -jnp.sum(picked) / n, jnp.nan)
    return -jnp.sum(labels * log_p) / n


def euclidean_loss_reference(pred, target):
    """Autodiff reference for :func:`euclidean_loss`."""
    pred, target = _validate_euclidean(pred, target)
    return 0.5 * jnp.sum((pred - target) ** 2) / pred.shape[0]


def l2_penalty_reference(params, lam):
    """Autodiff reference for :func:`l2_penalty`."""
    params, lam = _validate_l2(params, lam)
    total = jnp.zeros((), lam.dtype)
    for w in jax.tree_util.tree_leaves(params):
        total = total + jnp.sum(w**2).astype(lam.dtype)
    return 0.5 * lam * total
