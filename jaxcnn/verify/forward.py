"""The forward-mode checks beyond :func:`~jaxcnn.verify.check_jvp`: a hand JVP against the
hand VJP (the adjoint identity), and the JVP under ``vmap`` and of a gradient.

* :func:`check_adjoint`: ``⟨J ṫ, g⟩`` from ``jax.jvp`` against ``⟨ṫ, Jᵀ g⟩`` from ``jax.vjp``
  for random ``ṫ`` and ``g``, the dot-product test of scientific computing. It needs no
  reference: it ties the two derivations of one op to each other, and blames the argument
  whose tangent or cotangent breaks the identity.
* :func:`check_jvp_vmap`: ``jax.vmap`` of the op's JVP against a loop of the reference's.
* :func:`check_jvp_of_grad`: the JVP of ``x ↦ ∇ₓ⟨f(x), v⟩``, a forward-over-reverse
  Hessian-vector product, against the reference's.

Each is one compiled program per side (the adjoint: one for both modes, called once per pair).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify._core import Leaves, as_cotangent, collect, name_of, outputs, random_like
from jaxcnn.verify._report import CheckResult, Tolerance, compare, tolerance_for


def _dot(a: Any, b: Any) -> Any:
    """``Σ⟨a, b⟩`` over the leaves, accumulated in float32 at least (bfloat16 sums lose the test)."""
    wide = lambda t: jnp.asarray(t, jnp.promote_types(jnp.result_type(t), jnp.float32))  # noqa: E731
    inexact = lambda t: jnp.issubdtype(jnp.result_type(t), jnp.inexact)  # noqa: E731 (not an index's float0)
    return sum(jnp.vdot(wide(u), wide(w)) for u, w in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
               if inexact(u) and inexact(w))


def _norm(a: Any) -> Any:
    return jnp.sqrt(_dot(a, a))


def check_adjoint(fn: Callable, *args: Any, pairs: int = 3, seed: int = 0, rtol: Optional[float] = None,
                  **settings: Any) -> CheckResult:
    """The adjoint identity ``⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩`` of ``fn``'s forward and reverse modes at ``args``.

    ``J ṫ`` from ``jax.jvp`` (a hand JVP), ``Jᵀ g`` from ``jax.vjp`` (a hand VJP): for each
    floating leaf, ``pairs`` random normal ``(ṫ, g)``, ``ṫ`` along that leaf alone, so that a
    broken rule is blamed on the argument it mishandles. The two sides agree to rounding
    when the rules are each other's adjoints; an element passes when
    ``|⟨J ṫ, g⟩ − ⟨ṫ, Jᵀ g⟩| ≤ rtol · max(1, |J ṫ| |g|, |ṫ| |Jᵀ g|)`` (the Cauchy–Schwarz
    bound of both sides: the tolerance scales with the magnitudes), ``rtol`` the dtype's
    default (``jaxcnn.verify._report.TOLERANCES``) unless given. The report's worst element is ``("pair", k)``; the
    output row compares the primal of ``jax.jvp`` with that of ``jax.vjp``.

    No reference is needed; it checks any function with both modes (a ``custom_vjp`` has no
    forward mode: JAX raises, reported as the error).

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, verify
    >>> verify.check_adjoint(ops.relu, jnp.array([[0.5, -1.0, 2.0]])).ok
    True
    """
    leaves = Leaves(fn, args)
    base = tolerance_for(leaves.dtype, rtol, None)
    tol = Tolerance(rtol=0.0, atol=base.rtol)  # judged on the scale of the bound: rtol · max(1, bound)
    g_fn = leaves.bind(fn, settings)

    @jax.jit
    def evaluate(xs, tangents, g):
        out, pullback = jax.vjp(g_fn, *xs)
        cts = pullback(g)
        rows = []
        for k, t in enumerate(tangents):  # a tangent along leaf k alone
            ts = [t if j == k else jnp.zeros_like(x) for j, x in enumerate(xs)]
            out_t, jt = jax.jvp(g_fn, tuple(xs), tuple(ts))
            ct = jnp.asarray(as_cotangent(cts[k], xs[k]), jnp.result_type(xs[k]))
            rows.append((_dot(jt, g), _dot(t, ct), jnp.maximum(_norm(jt) * _norm(g), _norm(t) * _norm(ct))))
        return out, out_t, rows

    def reports():
        rng = np.random.default_rng(seed)
        found = []
        for _ in range(pairs):
            out = jax.eval_shape(g_fn, *leaves.arrays)
            tangents, g = [random_like(rng, x) for x in leaves.arrays], random_like(rng, out)
            found.append(jax.device_get(evaluate(leaves.arrays, tangents, g)))
        out, out_t, _ = found[0]
        yield from (compare(n, a, b, base, what="jvp primal = vjp primal") for n, a, b in outputs(out_t, out))
        for k, name in enumerate(leaves.names):
            forward, reverse, bound = (np.array([float(f[2][k][i]) for f in found]) for i in range(3))
            bound = np.where(np.isnan(bound), 0.0, bound)  # NaN on both sides agrees (a NaN-by-design sample)
            yield compare(name, forward, reverse, tol, scale=bound, index=[("pair", i) for i in range(pairs)],
                          what="⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩")

    return collect(name_of(fn), "its VJP by the adjoint identity, forward mode", leaves.dtype, reports)


def stacked(args: Sequence[Any], batched: Sequence[int], scales: Sequence[float]) -> tuple:
    """The arguments at ``batched`` stacked over a new leading axis, example ``k`` with its
    floating leaves times ``scales[k]`` (integer leaves repeated); the others unchanged."""
    def stack(leaf):
        a = np.asarray(leaf)
        floating = np.issubdtype(a.dtype, np.inexact) or a.dtype == jnp.bfloat16
        return jnp.stack([jnp.asarray(leaf) * jnp.asarray(c, a.dtype) if floating else jnp.asarray(leaf)
                          for c in scales])

    return tuple(jax.tree_util.tree_map(stack, a) if i in batched else a for i, a in enumerate(args))


def check_jvp_vmap(op: Callable, reference: Callable, *args: Any, batched: Sequence[int] = (0,),
                   scales: Sequence[float] = (1.0, 0.75, 1.25), **options: Any) -> CheckResult:
    """``jax.jvp`` of ``jax.vmap(op)`` over the ``batched`` arguments (the sample times each of
    ``scales``, stacked) against ``jax.jvp`` of a loop of ``reference`` over the examples:
    :func:`~jaxcnn.verify.check_jvp` of the two (its options, ``tangents``, ``seed``, ``rtol``,
    ``atol``, and the op's settings, passed on)."""
    from jaxcnn.verify.checks import check_jvp

    settings = {k: v for k, v in options.items() if k not in ("tangents", "seed", "rtol", "atol")}
    options = {k: v for k, v in options.items() if k not in settings}
    n, batched = len(scales), tuple(batched)
    axes = tuple(0 if i in batched else None for i in range(len(args)))

    @functools.wraps(op)
    def mapped(*a):
        return jax.vmap(functools.partial(op, **settings), in_axes=axes)(*a)

    @functools.wraps(reference)
    def looped(*a):
        at = lambda k: [jax.tree_util.tree_map(lambda l: l[k], x) if i in batched else x  # noqa: E731
                        for i, x in enumerate(a)]
        results = [reference(*at(k), **settings) for k in range(n)]
        return jax.tree_util.tree_map(lambda *r: jnp.stack(r), *results)

    result = check_jvp(mapped, looped, *stacked(args, batched, scales), **options)
    return _relabelled(result, f"a loop over examples of forward mode of {name_of(reference)}")


def check_jvp_of_grad(op: Callable, reference: Callable, *args: Any, seed: int = 0, **options: Any) -> CheckResult:
    """Forward over reverse: ``jax.jvp`` of ``x ↦ ∇ₓ⟨op(x), v⟩`` (``v`` random, the same for
    both) against the same of ``reference``: Hessian-vector products, the hand JVP applied to
    the hand VJP's code. :func:`~jaxcnn.verify.check_jvp`'s options and the settings pass on."""
    from jaxcnn.verify.checks import _gradient_of, check_jvp

    settings = {k: v for k, v in options.items() if k not in ("tangents", "rtol", "atol")}
    options = {k: v for k, v in options.items() if k not in settings}
    result = check_jvp(_gradient_of(op, settings), _gradient_of(reference, settings), *args, seed=seed, **options)
    return _relabelled(result, f"forward mode of the gradient of {name_of(reference)}")


def _relabelled(result: CheckResult, against: str) -> CheckResult:
    import dataclasses

    return dataclasses.replace(result, against=against)
