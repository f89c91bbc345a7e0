"""The checks, each a hand-derived rule (the rule side) against what it must equal (the
expected side), on any function with a ``jax.custom_vjp`` or ``jax.custom_jvp`` (or plain
autodiff) whose positional arguments are arrays or pytrees of arrays; keyword arguments
are settings passed unchanged to both sides. Only floating leaves are differentiated;
integer leaves (labels, keys) are held fixed. Apart from ``"eager"`` (and the op's own
calls) each side runs as one compiled program: the same numbers, one program instead of
the many that eager execution compiles one primitive at a time.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.verify._core import (Leaves, as_cotangent, collect, differences, expected_type, expected_vjp, name_of,
                                 outputs, probe_directions, projection, random_like, scaled, signed, stack)
from jaxcnn.verify._report import (FINITE_DIFFERENCE_TOLERANCE, ArgumentReport, CheckResult, Tolerance, compare,
                                   factor, tolerance_for)

#: Every transform :func:`check_transform` knows, in the order reports list them.
TRANSFORMS = ("contract", "eager", "jit", "vmap", "grad-of-grad", "checkpoint", "sharding", "finite differences",
              "jvp", "jvp finite differences", "adjoint", "jvp vmap", "jvp-of-grad")

#: The transforms that need forward mode, which a ``custom_vjp`` does not have (jaxcnn.verify.forward).
FORWARD_MODE = ("jvp", "jvp finite differences", "adjoint", "jvp vmap", "jvp-of-grad")


def _vjp_check(op: Callable, against: str, leaves: Leaves, tol: Tolerance, rule: Callable, expected: Callable,
               out_type: Callable, cotangents: int = 3, seed: int = 0) -> CheckResult:
    """``rule(vs)`` and ``expected(vs)`` each give ``(output, [pullback(v) for v in vs])``, each
    pullback one cotangent per floating leaf, at ``cotangents`` random cotangents shaped like
    ``out_type()``: the outputs compared, then both pullbacks at every cotangent."""
    def reports():
        rng = np.random.default_rng(seed)
        like = out_type()
        vs = [random_like(rng, like) for _ in range(cotangents)]
        (out, cts), (out_ref, cts_ref) = rule(vs), expected(vs)
        yield from (compare(name, a, b, tol) for name, a, b in outputs(out, out_ref))
        for ct, ct_ref in zip(cts, cts_ref):
            for name, a, b in zip(leaves.names, ct, ct_ref):
                yield compare(name, as_cotangent(a, b), b, tol)

    return collect(name_of(op), against, leaves.dtype, reports)


def check_vjp(op: Callable, reference: Callable, *args: Any, cotangents: int = 3, seed: int = 0,
              rtol: Optional[float] = None, atol: Optional[float] = None, probe: bool = True,
              **settings: Any) -> CheckResult:
    """Compares ``op``'s forward and VJP with ``reference`` and ``jax.vjp`` of ``reference``.

    Both functions are called as ``f(*args, **settings)``. The VJP is taken with respect
    to every floating leaf of ``args``, for ``cotangents`` random normal cotangents drawn
    from ``seed``; per argument the worst element over all cotangents is reported.

    With ``probe`` (the default) it also looks beyond the sample, in one more compiled
    program: the forward and the VJP at the inputs scaled by :data:`INPUT_SCALES` (the
    floating arguments that take both signs; one of a single sign, a probability or a
    variance, keeps its values, as do integer ones), and the VJP at the cotangent scaled by
    :data:`COTANGENT_SCALES` (loss scaling), compared after dividing both sides by the
    factor. A scale where the reference is not finite is skipped, said in the result's
    ``notes``. A failure there is reported as such (``x [inputs ×1024]``); the sample's
    own comparisons are reported first.

    ``rtol``, ``atol`` override the dtype's defaults (``jaxcnn.verify._report.TOLERANCES``).
    Returns a :class:`~jaxcnn.verify.CheckResult`; call ``.assert_ok()`` to raise on mismatch.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, reference, verify
    >>> x = jnp.array([[0.5, -1.0, 2.0]])
    >>> verify.check_vjp(ops.softmax, reference.softmax, x).ok
    True
    """
    return _rule_vs_autodiff(op, reference, args, settings, lambda f: f, cotangents, seed, rtol, atol, probe)


def _rule_vs_autodiff(op, reference, args, settings, transform, cotangents=3, seed=0, rtol=None, atol=None,
                      probe=False):
    """``transform(op)``'s VJP against the compiled autodiff of ``reference`` (eager, jit, checkpoint)."""
    leaves = Leaves(op, args)
    tol = tolerance_for(leaves.dtype, rtol, atol)
    def rule(vs):
        out, pullback = jax.vjp(transform(leaves.bind(op, settings)), *leaves.arrays)
        return out, [pullback(v) for v in vs]

    result = _vjp_check(op, f"autodiff of {name_of(reference)}", leaves, tol, rule,
                        lambda vs: expected_vjp(reference, leaves, settings, vs),
                        lambda: expected_type(reference, leaves, settings), cotangents, seed)
    if not probe or result.error:
        return result

    def reports():  # the sample's comparisons again (no computing), then the probes
        yield from ([result.forward] if result.forward else []) + list(result.arguments)
        yield from _beyond(op, reference, leaves, settings, tol, seed)

    return collect(result.op, result.against, result.dtype, reports)


#: :func:`check_vjp` probes beyond the sample at the inputs scaled by these factors: powers
#: of two, exact in every binary format, so that zeros, ties and signs stay where the
#: sample put them (about ×1e-3, ×16, ×1e3) ...
INPUT_SCALES = (2.0 ** -10, 2.0 ** 4, 2.0 ** 10)

#: ... and at the cotangent scaled by these (the range of loss scaling, about ×1e-4 and ×1e4).
COTANGENT_SCALES = (2.0 ** -14, 2.0 ** 14)


def _beyond(op: Callable, reference: Callable, leaves: Leaves, settings: dict, tol: Tolerance, seed: int):
    """The probes of :func:`check_vjp`: the rule against autodiff of the reference at the
    scaled inputs and cotangents, all evaluated in one compiled program (one copy of each
    side, mapped over the inputs and the cotangents); a scale where the reference is less
    finite than at the sample (outside the op's domain) is a note."""
    which = signed(leaves.arrays)
    scales = INPUT_SCALES if any(which) else ()
    if not scales:
        yield "inputs not scaled: no floating argument takes both signs (a single sign may be its domain)"
    rule, expected = leaves.call(op, settings), leaves.call(reference, settings)
    v = random_like(np.random.default_rng(seed), expected_type(reference, leaves, settings))
    cotangents = [v] + [jax.tree_util.tree_map(lambda w, c=c: np.asarray(w) * np.asarray(c, w.dtype), v)  # host
                        for c in COTANGENT_SCALES]

    @jax.jit
    def evaluate(stacked_floats, flat, cotangents):
        def both(xs):  # one copy of each side in the program: mapped over the inputs, then the cotangents
            (out, pullback), (out_ref, pullback_ref) = (jax.vjp(lambda *f, g=g: g(f, flat), *xs)
                                                        for g in (rule, expected))
            return out, out_ref, jax.lax.map(lambda w: (pullback(w), pullback_ref(w)), cotangents)

        return jax.lax.map(both, stacked_floats)

    inputs = stack([leaves.arrays] + [_scaled_on_host(leaves.arrays, which, s) for s in scales])
    outs, out_refs, (cts, cts_ref) = jax.device_get(evaluate(inputs, leaves.flat, stack(cotangents)))

    def at(tree, *index):
        return jax.tree_util.tree_map(lambda a: a[index], tree)

    sample_out, sample_ct = at(out_refs, 0), at(cts_ref, 0, 0)
    probes = [(("inputs", s), at(outs, i), at(out_refs, i), at(cts, i, 0), at(cts_ref, i, 0))
              for i, s in enumerate(scales, 1)]
    probes += [(("cotangent", c), None, None, at(cts, 0, j), at(cts_ref, 0, j))
               for j, c in enumerate(COTANGENT_SCALES, 1)]
    for probe, out, out_ref, ct, ct_ref in probes:
        if _not_finite(out_ref, ct_ref) > _not_finite(sample_out if out_ref is not None else None, sample_ct):
            yield f"{probe[0]} {factor(probe[1])} skipped: the reference is not finite there (outside the op's domain)"
            continue
        reports = _judged(leaves, probe, out, out_ref, ct, ct_ref, tol)
        if not all(r.ok for r in reports) and leaves.dtype != "float64":
            # the reference may be what loses precision out there: the rule is judged against it in float64
            out_wide, ct_wide = _reference_in_float64(reference, leaves, settings, which, probe, v)
            wide = _judged(leaves, probe, out, out_wide if out is not None else None, ct, ct_wide, tol)
            if all(r.ok for r in wide):
                yield f"{probe[0]} {factor(probe[1])}: compared with the reference in float64 (in {leaves.dtype} " \
                      f"it is not accurate there)"
                reports = wide
        yield from reports


def _scaled_on_host(floats: Sequence[Any], which: Sequence[bool], s: float) -> list:
    """:func:`~jaxcnn.verify._core.scaled` in NumPy (a power of two: exact in every format)."""
    return [np.asarray(x) * np.asarray(s, np.asarray(x).dtype) if w else np.asarray(x) for x, w in zip(floats, which)]


def _judged(leaves: Leaves, probe: tuple, out, out_ref, ct, ct_ref, tol: Tolerance) -> list[ArgumentReport]:
    """A probe's comparisons: the outputs at scaled inputs, the cotangents (divided by the
    cotangent's factor, so that the tolerance scales with it)."""
    c = probe[1] if probe[0] == "cotangent" else 1.0
    # inputs shrunk by s: a scale-invariant op's gradient (a normalisation's) and its rounding grow as 1/s
    floor = 1 / probe[1] if probe[0] == "inputs" and probe[1] < 1 else 0.0
    compared = [*((n, a, b, None) for n, a, b in (outputs(out, out_ref) if out is not None else ())),
                *((n, np.asarray(as_cotangent(a, b), np.float64) / c, np.asarray(b, np.float64) / c, floor)
                  for n, a, b in zip(leaves.names, ct, ct_ref))]
    return [dataclasses.replace(compare(n, a, b, tol, None if not f else max(f, _largest(b))), probe=probe)
            for n, a, b, f in compared]


def _largest(a: Any) -> float:
    finite = np.abs(np.asarray(a, np.float64))
    return float(finite[np.isfinite(finite)].max(initial=0.0))


def _reference_in_float64(reference: Callable, leaves: Leaves, settings: dict, which: list, probe: tuple, v: Any):
    """The reference's output and VJP at a probe, computed in float64 (one compiled program)."""
    s, c = (probe[1], 1.0) if probe[0] == "inputs" else (1.0, probe[1])
    with jax.enable_x64(True):
        wide = leaves.cast(jnp.float64)
        w = jax.tree_util.tree_map(lambda t: np.asarray(t, np.float64) * c, v)

        @jax.jit
        def evaluate(floats, flat, w):
            out, pullback = jax.vjp(lambda *f: wide.call(reference, settings)(f, flat), *scaled(floats, which, s))
            return out, pullback(w)

        return jax.device_get(evaluate(wide.arrays, wide.flat, w))


def _not_finite(*trees: Any) -> int:
    """How many elements of the trees' leaves are NaN or infinite."""
    return sum(int(np.sum(~np.isfinite(np.asarray(leaf, np.float64)))) for tree in trees if tree is not None
               for leaf in jax.tree_util.tree_leaves(tree))


def check_numerical(op: Callable, *args: Any, step: float = 1e-5, elementwise_max: int = 512, directions: int = 4,
                    seed: int = 0, rtol: Optional[float] = None, atol: Optional[float] = None,
                    **settings: Any) -> CheckResult:
    """Compares ``op``'s VJP with central finite differences, in float64.

    64-bit mode is switched on only inside this call (the global flag is left as it
    was) and every floating leaf of ``args`` is cast to float64. With a random cotangent
    ``v`` and ``φ(x) = ⟨op(x), v⟩``, the rule's ``Jᵀv`` is compared

    * element by element with ``(φ(x + h eᵢ) − φ(x − h eᵢ)) / 2h`` for arguments of at
      most ``elementwise_max`` elements (all perturbations evaluated in one vmapped map),
    * by projections on ``directions`` random directions ``u``,
      ``⟨u, Jᵀv⟩`` against ``(φ(x + h u) − φ(x − h u)) / 2h``, for larger arguments.

    Draw ``args`` away from kinks (ReLU at 0, ties in a max-pooling window) by more than
    the step ``h``, ``step`` (not ``eps``: an op's own ``eps`` setting, e.g. batch norm's,
    passes through ``**settings``). ``rtol``, ``atol`` override ``(1e-5, 1e-6)``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, verify
    >>> verify.check_numerical(ops.sigmoid, jnp.array([0.3, -1.2])).ok
    True
    """
    tol = _fd_tolerance(rtol, atol)

    def reports():
        leaves = Leaves(op, args).cast(jnp.float64)
        rng = np.random.default_rng(seed)
        g = leaves.call(op, settings)
        v = random_like(rng, jax.eval_shape(g, leaves.arrays, leaves.flat))
        probes = list(probe_directions(leaves.arrays, elementwise_max, directions, rng))

        @jax.jit  # the rule's VJP and every finite difference: one program
        def evaluate(floats, flat, v, directions):
            at = lambda *f: g(f, flat)  # noqa: E731
            return jax.vjp(at, *floats)[1](v), differences(projection(at, v), floats, directions, [step])[0]

        cts, phi = jax.device_get(evaluate(leaves.arrays, leaves.flat, v, [u for u, *_ in probes]))
        rule = [np.asarray(as_cotangent(c, x), np.float64).reshape(-1) for c, x in zip(cts, leaves.arrays)]
        for name, x, r, (u, index, elementwise), ((plus, minus),) in zip(leaves.names, leaves.arrays, rule, probes,
                                                                          phi):
            numeric = (plus - minus) / (2 * step)
            if elementwise:
                yield compare(name, r.reshape(x.shape), numeric.reshape(x.shape), tol)
            else:  # random directions: ⟨u, Jᵀv⟩, judged on the scale |u| |Jᵀv|
                yield compare(name, u @ r, numeric, tol, np.linalg.norm(u, axis=1) * np.linalg.norm(r), index)

    with jax.enable_x64(True):
        return collect(name_of(op), "finite differences", "float64", reports)


def _fd_tolerance(rtol: Optional[float], atol: Optional[float]) -> Tolerance:
    base = FINITE_DIFFERENCE_TOLERANCE
    return Tolerance(base.rtol if rtol is None else rtol, base.atol if atol is None else atol)


#: ``vjp(0)`` must be zero: at most 1e-30 (a tolerance of exactly 0 would divide by 0).
EXACT = Tolerance(rtol=0.0, atol=1e-30)

#: The coefficients of the linearity check ``vjp(a·g₁ + b·g₂) = a·vjp(g₁) + b·vjp(g₂)``.
LINEARITY = (0.75, -1.5)


def check_contract(op: Callable, *args: Any, seed: int = 0, rtol: Optional[float] = None,
                   atol: Optional[float] = None, **settings: Any) -> CheckResult:
    """Checks the ``custom_vjp`` contract of ``op`` at ``args``: no reference needed.

    Through ``jax.vjp`` on the op (so it works on any reverse-differentiable function, each
    side compiled whole): the primal call and the ``fwd`` run by ``jax.vjp`` give the same
    output; the pullback returns, per floating leaf, a cotangent with the primal's shape and
    dtype (JAX rejects a wrong count or shape, reported as the error; a wrong dtype it lets
    through); a zero cotangent gives exactly zero; the pullback is linear,
    ``vjp(a·g₁ + b·g₂) = a·vjp(g₁) + b·vjp(g₂)``.

    ``rtol``, ``atol`` override the dtype's defaults for the primal-vs-fwd and linearity
    comparisons; ``vjp(0)`` must be exactly 0. Per argument the report is the worst of the
    properties, named in its ``what``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, verify
    >>> verify.check_contract(ops.softmax, jnp.array([[0.5, -1.0, 2.0]])).ok
    True
    """
    leaves = Leaves(op, args)
    tol = tolerance_for(leaves.dtype, rtol, atol)
    a, b = LINEARITY

    def reports():
        g = leaves.call(op, settings)
        like = jax.eval_shape(g, leaves.arrays, leaves.flat)
        rng = np.random.default_rng(seed)
        g1, g2 = random_like(rng, like), random_like(rng, like)
        mixed = jax.tree_util.tree_map(lambda u, w: a * np.asarray(u) + b * np.asarray(w), g1, g2)
        zero = jax.tree_util.tree_map(lambda t: np.zeros(t.shape, t.dtype), like)

        @jax.jit  # the primal call, and jax.vjp's forward and pullback at the four cotangents: one program
        def evaluate(floats, flat, stacked):
            out, pullback = jax.vjp(lambda *f: g(f, flat), *floats)
            return g(floats, flat), out, jax.lax.map(pullback, stacked)

        primal, out, stacked = jax.device_get(evaluate(leaves.arrays, leaves.flat, stack([g1, g2, mixed, zero])))
        cts = [tuple(c[k] for c in stacked) for k in range(4)]
        yield from (compare(name, o, p, tol, what="fwd = primal") for name, o, p in outputs(out, primal))
        for name, x, c1, c2, c_mixed, c_zero in zip(leaves.names, leaves.arrays, *cts):
            yield _type_report(name, c1, x)
            yield compare(name, c_zero, np.zeros(np.shape(x)), EXACT, what="vjp(0) = 0")
            yield compare(name, c_mixed, a * np.asarray(c1, np.float64) + b * np.asarray(c2, np.float64), tol,
                          what="linear in g")

    return collect(name_of(op), "custom_vjp contract", leaves.dtype, reports)


def _type_report(name: str, ct: Any, leaf: Any) -> ArgumentReport:
    """Whether the cotangent has the primal's shape and dtype."""
    got = (tuple(np.shape(ct)), str(getattr(ct, "dtype", type(ct).__name__)))
    want = (tuple(np.shape(leaf)), str(jnp.result_type(leaf)))
    note = "" if got == want else f"cotangent is {got[1]}{list(got[0])}, the primal is {want[1]}{list(want[0])}"
    bad = 0.0 if got == want else np.inf
    return ArgumentReport(name, want[0], bad, bad, (), np.nan, np.nan, 0.0, got == want, note, what="shape/dtype")


def _tangents(leaves: Leaves, tangents: int, seed: int):
    """``(name, tangents)``: per floating leaf, ``tangents`` random tangents along it alone
    (zeros for the others), so that a wrong rule is blamed on the leaf it mishandles."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(leaves.names):
        for _ in range(tangents):
            yield name, [random_like(rng, x) if j == k else jnp.zeros_like(x) for j, x in enumerate(leaves.arrays)]


def check_jvp(op: Callable, reference: Callable, *args: Any, tangents: int = 3, seed: int = 0,
              rtol: Optional[float] = None, atol: Optional[float] = None, **settings: Any) -> CheckResult:
    """Compares ``jax.jvp`` of ``op`` (its ``custom_jvp`` rule) with ``jax.jvp`` of ``reference``.

    Reverse mode reaches a ``custom_jvp`` rule by transposing it (:func:`check_vjp`); this
    checks the rule itself. For each floating leaf, ``tangents`` random normal tangents along
    that leaf alone; its report is the worst output element over them. A ``custom_vjp`` has
    no forward mode (JAX raises, reported as the error).

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import verify
    >>> x = jnp.array([0.5, -1.0, 2.0])
    >>> verify.check_jvp(jax.nn.relu, lambda x: jnp.where(x > 0, x, 0.0), x).ok
    True
    """
    leaves = Leaves(op, args)
    tol = tolerance_for(leaves.dtype, rtol, atol)

    def reports():
        rule, expected = (jax.jit(lambda xs, ts, f=f: jax.jvp(leaves.bind(f, settings), xs, ts))
                          for f in (op, reference))
        for k, (name, ts) in enumerate(_tangents(leaves, tangents, seed)):
            (out, dout), (out_ref, dout_ref) = rule(leaves.arrays, ts), expected(leaves.arrays, ts)
            if k == 0:
                yield from (compare(n, a, b, tol) for n, a, b in outputs(out, out_ref))
            yield from (compare(name, a, b, tol) for _, a, b in outputs(dout, dout_ref))

    return collect(name_of(op), f"forward mode of {name_of(reference)}", leaves.dtype, reports)


def _check_jvp_numerical(op: Callable, *args: Any, step: float = 1e-5, tangents: int = 3, seed: int = 0,
                         rtol: Optional[float] = None, atol: Optional[float] = None, **settings: Any) -> CheckResult:
    """``jax.jvp`` of ``op`` against ``(f(x + h·t) − f(x − h·t)) / 2h`` along the tangents of
    :func:`check_jvp`, element by element over the output, in float64 (one compiled program)."""
    tol = _fd_tolerance(rtol, atol)

    def reports():
        leaves = Leaves(op, args).cast(jnp.float64)
        g = leaves.bind(op, settings)

        @jax.jit
        def evaluate(xs, ts):
            plus, minus = g(*[x + step * t for x, t in zip(xs, ts)]), g(*[x - step * t for x, t in zip(xs, ts)])
            return jax.jvp(g, xs, ts)[1], jax.tree_util.tree_map(lambda p, m: (p - m) / (2 * step), plus, minus)

        for name, ts in _tangents(leaves, tangents, seed):
            yield from (compare(name, a, b, tol) for _, a, b in outputs(*evaluate(leaves.arrays, ts)))

    with jax.enable_x64(True):
        return collect(name_of(op), "finite differences (forward mode)", "float64", reports)


def check_transform(transform: str, op: Callable, reference: Callable, *args: Any, batched: Sequence[int] = (0,),
                    seed: int = 0, rtol: Optional[float] = None, atol: Optional[float] = None, probe: bool = True,
                    **settings: Any) -> CheckResult:
    """Checks ``op``'s rule against ``reference`` under ``transform``, one of :data:`TRANSFORMS`:

    * ``"eager"``: :func:`check_vjp` (its probes beyond the sample with ``probe``);
      ``"jit"``: the op under ``jax.jit``;
    * ``"checkpoint"``: the op under ``jax.checkpoint`` (rematerialised, in one compiled
      program) against the plain reference;
    * ``"vmap"``: batched arguments (``batched``, e.g. the input) stacked over a new axis
      (the sample scaled by 1, 0.75, 1.25), the others (weights) unbatched and shared: the
      per-example gradients of *every* argument, from ``jax.vmap`` of the op's VJP,
      against a loop of the reference's VJP over the examples;
    * ``"grad-of-grad"``: ``x ↦ ∇ₓ⟨f(x), v⟩`` for a fixed random ``v`` is compared first
      (its output is the gradient), then its own VJP, a Hessian-vector product, by
      reverse-over-reverse differentiation of the op's backward rule. For piecewise-linear
      ops the Hessian is zero away from the kinks: the check pins that the rule is
      differentiable and gives exactly that zero;
    * ``"sharding"``: the batched arguments tiled to a multiple of the device count along
      their leading axis and split over a ``jax.sharding.Mesh`` of all devices, the others
      replicated: the jitted op's VJP against the reference on a single device;
    * ``"contract"``: :func:`check_contract`; ``"finite differences"``: :func:`check_numerical`;
    * ``"jvp"``: :func:`check_jvp` (compiled); ``"jvp finite differences"``: ``jax.jvp`` of
      the op against central differences along the same tangents, in float64;
    * ``"adjoint"``: :func:`check_adjoint`, the op's JVP against its own VJP (no reference);
      ``"jvp vmap"``: the JVP of ``jax.vmap`` of the op (the batched arguments as for
      ``"vmap"``) against a loop of the reference's; ``"jvp-of-grad"``: the JVP of the
      gradient (forward over reverse, Hessian-vector products) against the reference's.

    ``batched``: for ``"vmap"`` and ``"sharding"``, the positions of the per-example arguments
    (inputs, labels); the others (weights, settings arrays) are shared.

    Raises:
      ValueError: ``transform`` is unknown, or ``"sharding"`` is asked for with a single
        device or arguments that cannot be split along their batch axis.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, reference, verify
    >>> x = jnp.array([[0.5, -1.0], [2.0, 0.3]])
    >>> w = jnp.array([[1.0, 0.5], [-0.2, 0.7], [0.1, 0.1]])
    >>> verify.check_transform("vmap", ops.dense, reference.dense, x, w).ok
    True
    """
    tol = dict(seed=seed, rtol=rtol, atol=atol)
    if transform in ("eager", "jit", "checkpoint"):
        wrap = {"eager": lambda f: f, "jit": jax.jit, "checkpoint": lambda f: jax.jit(jax.checkpoint(f))}[transform]
        return _rule_vs_autodiff(op, reference, args, settings, wrap, **tol, probe=probe and transform == "eager")
    if transform == "grad-of-grad":
        return check_vjp(_gradient_of(op, settings), _gradient_of(reference, settings), *args, **tol, probe=False)
    if transform == "vmap":
        return _check_vmap(op, reference, Leaves(op, args), tuple(batched), settings, tol)
    if transform == "sharding":
        return _check_sharded(op, reference, args, tuple(batched), settings, tol)
    if transform == "jvp":
        return check_jvp(op, reference, *args, **tol, **settings)
    if transform in ("adjoint", "jvp vmap", "jvp-of-grad"):
        from jaxcnn.verify import forward

        if transform == "adjoint":
            return forward.check_adjoint(op, *args, seed=seed, rtol=rtol, **settings)
        if transform == "jvp vmap":
            return forward.check_jvp_vmap(op, reference, *args, batched=batched, **tol, **settings)
        return forward.check_jvp_of_grad(op, reference, *args, **tol, **settings)
    without_reference = {"contract": check_contract, "finite differences": check_numerical,
                         "jvp finite differences": _check_jvp_numerical}
    if transform not in without_reference:
        raise ValueError(f"check_transform: unknown `transform` {transform!r}; use one of {', '.join(TRANSFORMS)}.")
    return without_reference[transform](op, *args, **tol, **settings)


def _gradient_of(fn: Callable, settings: dict, seed: int = 1) -> Callable:
    """``args ↦ ∇⟨fn(*args), v⟩`` over the floating leaves, for a fixed random ``v`` (from
    ``seed`` and the output's shape: the op and its reference get the same one). Its VJP is
    a Hessian-vector product; compiled whole (the eager execution is ``"eager"``'s)."""
    @jax.jit
    def gradient(*args):
        leaves = Leaves(fn, args)
        g = leaves.bind(fn, settings)
        v = random_like(np.random.default_rng(seed), jax.eval_shape(g, *leaves.arrays))
        return jax.grad(projection(g, v), argnums=tuple(range(len(leaves.arrays))))(*leaves.arrays)

    return functools.wraps(fn)(lambda *args: gradient(*args))


#: The examples of a vmap check are the sample scaled by these factors (positive, so a
#: sample drawn away from kinks and ties stays away from them).
VMAP_SCALES = (1.0, 0.75, 1.25)


def _check_vmap(op, reference, leaves: Leaves, batched: tuple, settings: dict, tol: dict) -> CheckResult:
    mapped = [leaves.argument[k] in batched for k in range(len(leaves.flat))]
    examples = [Leaves(op, leaves.rebuild([x * jnp.asarray(c, x.dtype) if mapped[k] else x
                                           for k, x in zip(leaves.where, leaves.arrays)])) for c in VMAP_SCALES]
    floats = [stack([e.arrays[j] for e in examples]) if mapped[k] else x
              for j, (k, x) in enumerate(zip(leaves.where, leaves.arrays))]
    flat = [stack([e.flat[k] for e in examples]) if m else x for k, (m, x) in enumerate(zip(mapped, leaves.flat))]
    axes = ([0 if mapped[k] else None for k in leaves.where], [0 if m else None for m in mapped])

    def pullback_of(fn):
        return lambda f, c, v: jax.vjp(lambda *f: leaves.call(fn, settings)(f, c), *f)[1](v)

    def rule(vs):  # one program: the vmapped forward and pullback, mapped over the cotangents
        @jax.jit
        def evaluate(floats, flat, stacked):
            out = jax.vmap(leaves.call(op, settings), in_axes=axes)(floats, flat)
            return out, jax.lax.map(lambda v: jax.vmap(pullback_of(op), in_axes=(*axes, 0))(floats, flat, v), stacked)

        out, cts = jax.device_get(evaluate(floats, flat, stack(vs)))
        return out, [tuple(c[k] for c in cts) for k in range(len(vs))]

    def expected(vs):  # a loop over the examples of one compiled program (forward and every pullback)
        bound = functools.partial(reference, **settings)
        per_example = [expected_vjp(bound, e, {}, [jax.tree_util.tree_map(lambda a: a[k], v) for v in vs])
                       for k, e in enumerate(examples)]
        return stack([out for out, _ in per_example]), [stack([cts[j] for _, cts in per_example])
                                                        for j in range(len(vs))]

    def out_type():
        return jax.eval_shape(jax.vmap(leaves.call(reference, settings), in_axes=axes), floats, flat)

    against = f"a loop over examples of autodiff of {name_of(reference)}"
    return _vjp_check(op, against, leaves, tolerance_for(leaves.dtype, tol["rtol"], tol["atol"]), rule, expected,
                      out_type, seed=tol["seed"])


def sharded_arguments(op: Callable, args: Sequence[Any], batched: Sequence[int], settings: dict) -> Optional[tuple]:
    """The arguments for a data-parallel check on every device, or None where none can be made.

    Each batched argument is tiled ``n`` times (``n`` devices; copy ``k`` scaled by
    ``1 + k / 2n``) along its leading axis. None with a single device, a scalar leaf in a
    batched argument, or when ``op`` rejects the tiled arguments (its leading axis is not
    a batch axis, e.g. a 1-D input of ``dense``).
    """
    n = jax.device_count()
    if n < 2 or any(np.ndim(leaf) == 0 for i in batched for leaf in jax.tree_util.tree_leaves(args[i])):
        return None
    scaled = lambda leaf, c: leaf * c if np.issubdtype(np.asarray(leaf).dtype, np.floating) else leaf  # noqa: E731
    tiled = tuple(jax.tree_util.tree_map(lambda l: np.concatenate([scaled(np.asarray(l), 1 + k / (2 * n))
                                                                   for k in range(n)]), a) if i in batched else a
                  for i, a in enumerate(args))
    try:
        jax.eval_shape(functools.partial(op, **settings), *tiled)
    except Exception:  # noqa: BLE001 (a rule that raises is reported by the other checks)
        return None
    return tiled


def _check_sharded(op, reference, args, batched: tuple, settings: dict, tol: dict) -> CheckResult:
    tiled = sharded_arguments(op, args, batched, settings)
    if tiled is None:
        raise ValueError(
            f"check_transform: 'sharding' needs more than one device (have {jax.device_count()}) and batched "
            f"arguments {list(batched)} whose leading axis {name_of(op)} accepts tiled; run with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=4 to try it on a CPU.")
    leaves = Leaves(op, tiled)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    split, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    flat = [jax.device_put(x, split if leaves.argument[k] in batched else replicated)
            for k, x in enumerate(leaves.flat)]
    floats = [flat[k] for k in leaves.where]
    jitted = jax.jit(leaves.call(op, settings))

    def rule(vs):
        out, pullback = jax.vjp(lambda *f: jitted(f, flat), *floats)
        return out, [pullback(v) for v in vs]

    return _vjp_check(op, f"autodiff of {name_of(reference)} on one device", leaves,
                      tolerance_for(leaves.dtype, tol["rtol"], tol["atol"]), rule,
                      lambda vs: expected_vjp(reference, leaves, settings, vs),
                      lambda: expected_type(reference, leaves, settings), seed=tol["seed"])
