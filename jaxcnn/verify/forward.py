"""Forward mode: a ``custom_jvp`` rule (or autodiff) checked through ``jax.jvp``.

Half of JAX's own custom derivatives are ``jax.custom_jvp`` (``jax.nn.relu``,
``jax.numpy.logaddexp`` inside ``softplus``, ...). Reverse mode reaches such a rule by
transposing it, which the VJP checks already exercise; these two check the rule itself:

* :func:`check_jvp`: ``jax.jvp`` of the op against ``jax.jvp`` of the reference, for
  random tangents, one argument at a time (so that a wrong rule is blamed on the
  argument whose tangent it mishandles);
* :func:`check_jvp_numerical`: ``jax.jvp`` of the op against central differences
  ``(f(x + h·t) − f(x − h·t)) / 2h`` along the same kind of tangents, in float64.

A ``custom_vjp`` has no forward mode (JAX raises); the suite runs these checks only for
``custom_jvp`` and plain-autodiff ops. Tolerances are those of the VJP checks.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify.checks import (
    FINITE_DIFFERENCE_TOLERANCE,
    CheckResult,
    Tolerance,
    compare,
    dtype_name,
    float_leaves,
    name_of,
    random_like,
    tolerance_for,
    worst,
)


def _on_float_leaves(fn: Callable, args: Sequence[Any], settings: dict) -> tuple[Callable, list, list[int]]:
    """``(g, floats, positions)``: ``g(*floats)`` is ``fn(*args, **settings)`` as a function of the
    floating leaves of ``args`` alone (integer leaves, e.g. labels, held fixed)."""
    leaves, treedef = jax.tree_util.tree_flatten(tuple(args))
    positions = [k for k, leaf in enumerate(leaves) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]

    def g(*floats):
        full = list(leaves)
        for k, x in zip(positions, floats):
            full[k] = x
        return fn(*jax.tree_util.tree_unflatten(treedef, full), **settings)

    return g, [leaves[k] for k in positions], positions


def _one_at_a_time(floats: list, which: int, tangent: Any) -> list:
    """Tangents: ``tangent`` for float leaf ``which``, zeros for the others."""
    return [tangent if k == which else jnp.zeros_like(x) for k, x in enumerate(floats)]


def check_jvp(
    op: Callable,
    reference: Callable,
    *args: Any,
    tangents: int = 3,
    seed: int = 0,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    **settings: Any,
) -> CheckResult:
    """Compares ``jax.jvp`` of ``op`` (its ``custom_jvp`` rule) with ``jax.jvp`` of ``reference``.

    For each floating leaf of ``args``, ``tangents`` random normal tangents (drawn from
    ``seed``) along that leaf alone; the report of that argument is the worst output
    element over them. Each side is one compiled program.

    Returns:
      A :class:`~jaxcnn.verify.CheckResult` against ``"forward mode of <reference>"``.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import verify
    >>> x = jnp.array([0.5, -1.0, 2.0])
    >>> verify.check_jvp(jax.nn.relu, lambda x: jnp.where(x > 0, x, 0.0), x).ok
    True
    """
    dtype = dtype_name(args)
    tol = tolerance_for(dtype, rtol, atol)
    against = f"forward mode of {name_of(reference)}"
    try:
        g_op, floats, _ = _on_float_leaves(op, args, settings)
        g_ref, _, _ = _on_float_leaves(reference, args, settings)
        jvp_op = jax.jit(lambda xs, ts: jax.jvp(g_op, xs, ts))
        jvp_ref = jax.jit(lambda xs, ts: jax.jvp(g_ref, xs, ts))
        rng = np.random.default_rng(seed)
        reports, forward = [], None
        for which, (name, *_rest) in enumerate(float_leaves(op, args)):
            per_tangent = []
            for _ in range(tangents):
                ts = _one_at_a_time(floats, which, random_like(rng, floats[which]))
                (out, dout), (out_ref, dout_ref) = jvp_op(floats, ts), jvp_ref(floats, ts)
                if forward is None:
                    forward = worst([compare("output" + jax.tree_util.keystr(p), a, b, tol) for (p, a), b in
                                     zip(jax.tree_util.tree_leaves_with_path(out), jax.tree_util.tree_leaves(out_ref))])
                per_tangent += [compare(name, a, b, tol) for a, b in
                                zip(jax.tree_util.tree_leaves(dout), jax.tree_util.tree_leaves(dout_ref))]
            reports.append(worst(per_tangent))
    except Exception as e:  # report, do not crash: the rule may be the culprit
        return CheckResult(name_of(op), against, dtype, None, (), f"{type(e).__name__}: {e}")
    return CheckResult(name_of(op), against, dtype, forward, tuple(reports))


def check_jvp_numerical(
    op: Callable,
    *args: Any,
    step: float = 1e-5,
    tangents: int = 3,
    seed: int = 0,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    **settings: Any,
) -> CheckResult:
    """Compares ``jax.jvp`` of ``op`` with central differences along the same tangents, in float64.

    Per floating leaf, ``tangents`` random normal tangents ``t`` along that leaf alone:
    ``jvp(x; t)`` against ``(f(x + h·t) − f(x − h·t)) / 2h`` element by element over the
    output. All evaluations of one check run in one compiled program. 64-bit mode is on
    only inside this call.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import verify
    >>> verify.check_jvp_numerical(jax.nn.softplus, jnp.array([0.5, -1.0, 2.0])).ok
    True
    """
    base = FINITE_DIFFERENCE_TOLERANCE
    tol = Tolerance(base.rtol if rtol is None else rtol, base.atol if atol is None else atol)
    against = "finite differences (forward mode)"
    with jax.enable_x64(True):
        try:
            args = jax.tree_util.tree_map(
                lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)
                else jnp.asarray(a), tuple(args))
            g, floats, _ = _on_float_leaves(op, args, settings)
            rng = np.random.default_rng(seed)
            names = [name for name, *_ in float_leaves(op, args)]
            directions = [[_one_at_a_time(floats, which, random_like(rng, floats[which])) for _ in range(tangents)]
                          for which in range(len(floats))]

            @jax.jit
            def evaluate(xs, ts):
                _, dout = jax.jvp(g, xs, ts)
                plus = g(*[x + step * t for x, t in zip(xs, ts)])
                minus = g(*[x - step * t for x, t in zip(xs, ts)])
                numeric = jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * step), plus, minus)
                return dout, numeric

            reports = []
            for name, per_leaf in zip(names, directions):
                per_tangent = []
                for ts in per_leaf:
                    dout, numeric = evaluate(floats, ts)
                    per_tangent += [compare(name, a, b, tol) for a, b in
                                    zip(jax.tree_util.tree_leaves(dout), jax.tree_util.tree_leaves(numeric))]
                reports.append(worst(per_tangent))
        except Exception as e:
            return CheckResult(name_of(op), against, "float64", None, (), f"{type(e).__name__}: {e}")
    return CheckResult(name_of(op), against, "float64", None, tuple(reports))
