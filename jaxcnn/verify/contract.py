"""The ``custom_vjp`` contract: what any backward rule must satisfy, whatever its formula.

:func:`check_contract` needs no reference. Through ``jax.vjp`` on the op (so it works on
any reverse-differentiable function, ``custom_vjp`` or not; each side compiled whole, the
eager execution is the ``"eager"`` transform's) it checks that

* the primal call ``op(*args)`` and the ``fwd`` run by ``jax.vjp`` give the same output;
* the pullback returns one cotangent per argument, each floating leaf with the shape
  and dtype of its primal (JAX itself rejects a wrong count or shape, which is then
  reported as the error; a wrong dtype it lets through);
* a zero cotangent gives exactly zero;
* the pullback is linear: ``vjp(a·g₁ + b·g₂) = a·vjp(g₁) + b·vjp(g₂)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify.checks import (
    ArgumentReport,
    CheckResult,
    Tolerance,
    compare,
    compiled_vjp,
    cotangent_leaf,
    dtype_name,
    float_leaves,
    name_of,
    random_like,
    tolerance_for,
    worst,
)

#: ``vjp(0)`` must be zero: at most 1e-30 (a tolerance of exactly 0 would divide by 0).
EXACT = Tolerance(rtol=0.0, atol=1e-30)

#: The coefficients of the linearity check ``vjp(a·g₁ + b·g₂) = a·vjp(g₁) + b·vjp(g₂)``.
LINEARITY = (0.75, -1.5)


def check_contract(
    op: Callable,
    *args: Any,
    seed: int = 0,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    **settings: Any,
) -> CheckResult:
    """Checks the ``custom_vjp`` contract of ``op`` at ``args`` (no reference needed).

    Args:
      op: the function with the hand-derived rule, called as ``op(*args, **settings)``.
      *args: arrays or pytrees of arrays; integer leaves are held fixed.
      seed: seed of the two random cotangents.
      rtol, atol: override the dtype's defaults (:data:`jaxcnn.verify.TOLERANCES`) for
        the primal-vs-fwd and linearity comparisons; ``vjp(0)`` must be exactly 0.
      **settings: keyword arguments passed unchanged to ``op``.

    Returns:
      A :class:`~jaxcnn.verify.CheckResult` against ``"custom_vjp contract"``; per
      argument the worst of the dtype/shape, zero and linearity properties, named in
      the report's ``what``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, verify
    >>> verify.check_contract(ops.softmax, jnp.array([[0.5, -1.0, 2.0]])).ok
    True
    """
    dtype = dtype_name(args)
    tol = tolerance_for(dtype, rtol, atol)
    against = "custom_vjp contract"
    fn = lambda *a: op(*a, **settings)  # noqa: E731
    try:
        primal = jax.jit(fn)(*args)
        out, pullback = compiled_vjp(fn, *args)
        rng = np.random.default_rng(seed)
        g1, g2 = random_like(rng, out), random_like(rng, out)
        (a, b) = LINEARITY
        mixed = jax.tree_util.tree_map(lambda u, v: a * u + b * v, g1, g2)
        zero = jax.tree_util.tree_map(jnp.zeros_like, out)
        ct1, ct2, ct_mixed, ct_zero = (pullback(g) for g in (g1, g2, mixed, zero))
    except Exception as e:  # a wrong count or shape is raised by JAX: report it
        return CheckResult(name_of(op), against, dtype, None, (), f"{type(e).__name__}: {e}")

    forward = worst([
        dataclasses.replace(compare("output" + jax.tree_util.keystr(p), o, q, tol), what="fwd = primal")
        for (p, o), q in zip(jax.tree_util.tree_leaves_with_path(out), jax.tree_util.tree_leaves(primal))
    ] or [compare("output", 0.0, 0.0, tol)])
    arguments = []
    for name, i, path, leaf in float_leaves(op, args):
        c1, c2, c_mixed, c_zero = (cotangent_leaf(ct[i], path) for ct in (ct1, ct2, ct_mixed, ct_zero))
        arguments.append(worst([
            _type_report(name, c1, leaf),
            dataclasses.replace(compare(name, c_zero, np.zeros(np.shape(leaf)), EXACT), what="vjp(0) = 0"),
            dataclasses.replace(compare(name, c_mixed, a * _f64(c1) + b * _f64(c2), tol), what="linear in g"),
        ]))
    return CheckResult(name_of(op), against, dtype, forward, tuple(arguments))


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a, np.float64)


def _type_report(name: str, ct: Any, leaf: Any) -> ArgumentReport:
    """Whether the cotangent has the primal's shape and dtype."""
    got = (tuple(np.shape(ct)), str(getattr(ct, "dtype", type(ct).__name__)))
    want = (tuple(np.shape(leaf)), str(jnp.result_type(leaf)))
    ok = got == want
    note = "" if ok else f"cotangent is {got[1]}{list(got[0])}, the primal is {want[1]}{list(want[0])}"
    bad = 0.0 if ok else np.inf
    return ArgumentReport(name, want[0], bad, bad, (), np.nan, np.nan, 0.0, ok, note, what="shape/dtype")
