"""The gradient checker: a hand VJP against autodiff of a reference, and against finite
differences in float64.

Both checks work on any function with a ``jax.custom_vjp`` (or any reverse-mode
differentiable function) whose positional arguments are arrays or pytrees of arrays;
keyword arguments are settings passed unchanged to both sides. Only floating leaves are
differentiated; integer leaves (labels, indices) are held fixed.

Tolerances. An element passes when ``|rule − expected| ≤ atol · max(1, S) + rtol · |expected|``
where ``S`` is the largest ``|expected|`` of that argument, so that elements which cancel
to near zero inside a large gradient are judged on the gradient's scale. The defaults
depend on the dtype compared (:data:`TOLERANCES`); finite differences, always taken in
float64, use :data:`FINITE_DIFFERENCE_TOLERANCE`. The reported relative error is
``max |rule − expected| / max |expected|``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import inspect
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Tolerance(NamedTuple):
    rtol: float
    atol: float


#: Default tolerances for comparing a hand VJP with autodiff in the same dtype.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-9, atol=1e-9),
    "float32": Tolerance(rtol=1e-4, atol=1e-5),
    "float16": Tolerance(rtol=1e-2, atol=1e-2),
    "bfloat16": Tolerance(rtol=5e-2, atol=5e-2),
}

#: Default tolerance for a float64 hand VJP against float64 central differences.
FINITE_DIFFERENCE_TOLERANCE = Tolerance(rtol=1e-5, atol=1e-6)


def by_name(items: Sequence[Any], name: str) -> Any:
    """The item whose ``.name`` is ``name`` (an argument's report), or a KeyError listing the names."""
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"no argument named {name!r}; have {[item.name for item in items]}")


class GradientMismatch(AssertionError):
    """Raised by :meth:`CheckResult.assert_ok` when a check failed; the message is the report."""


@dataclasses.dataclass(frozen=True)
class ArgumentReport:
    """How one array (an argument's gradient, or the forward output) compared.

    Attributes:
      name: the argument, e.g. ``"w"`` or ``"params['conv']['w']"``; ``"output"`` for the
        forward value.
      shape: its shape.
      max_abs_error: ``max |rule − expected|``.
      max_rel_error: ``max |rule − expected| / max |expected|``.
      index: the element that is worst relative to its tolerance (for a projection check,
        ``("direction", k)``).
      rule: the hand rule's value there.
      expected: the autodiff or finite-difference value there.
      tolerance: the error allowed there.
      ok: whether every element is within its tolerance.
      note: why the comparison could not be made element by element, if it could not.
      what: the property compared, when not the value itself (e.g. ``"vjp(0) = 0"``).
    """

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    index: tuple
    rule: float
    expected: float
    tolerance: float
    ok: bool
    note: str = ""
    what: str = ""

    def describe(self, expected_label: str) -> str:
        name = f"{self.name} [{self.what}]" if self.what else self.name
        head = f"{name:<16} {str(self.shape):<18}"
        if self.note:
            return f"{head} {'ok' if self.ok else 'MISMATCH'}: {self.note}"
        errors = f"max abs {self.max_abs_error:.2e}  max rel {self.max_rel_error:.2e}"
        if self.ok:
            return f"{head} {errors}  ok"
        where = ", ".join(str(i) for i in self.index)
        return (
            f"{head} {errors}  MISMATCH at [{where}]: rule {self.rule:.6g}, "
            f"{expected_label} {self.expected:.6g}, tolerance {self.tolerance:.2e}"
        )


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of :func:`check_vjp` or :func:`check_numerical`.

    ``ok`` tells whether everything agreed; ``str(result)`` is a readable report;
    :meth:`assert_ok` raises :class:`GradientMismatch` with that report.
    """

    op: str
    against: str  # "autodiff of <reference>" or "finite differences"
    dtype: str
    forward: Optional[ArgumentReport]
    arguments: tuple[ArgumentReport, ...]
    error: str = ""  # an exception raised while checking

    @property
    def ok(self) -> bool:
        reports = self.arguments + ((self.forward,) if self.forward else ())
        return not self.error and all(r.ok for r in reports)

    def failures(self) -> tuple[ArgumentReport, ...]:
        reports = ((self.forward,) if self.forward else ()) + self.arguments
        return tuple(r for r in reports if not r.ok)

    def __getitem__(self, name: str) -> ArgumentReport:
        return by_name(self.arguments, name)

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAILED"
        forward_mode = "forward mode" in self.against
        title = self.against if self.against == "custom_vjp contract" else (
            f"{'JVP' if forward_mode else 'hand VJP'} vs {self.against}")
        lines = [f"{self.op}: {title} ({self.dtype}): {status}"]
        if self.error:
            lines.append(f"  error: {self.error}")
        label = {"finite differences": "finite-diff", "finite differences (forward mode)": "finite-diff",
                 "custom_vjp contract": "expected"}.get(self.against, "autodiff")
        if self.forward is not None:
            lines.append("  " + self.forward.describe("reference"))
        lines.extend("  " + r.describe(label) for r in self.arguments)
        return "\n".join(lines)

    def assert_ok(self) -> "CheckResult":
        """Returns self if the check passed; raises :class:`GradientMismatch` otherwise."""
        if not self.ok:
            raise GradientMismatch(str(self))
        return self


# --------------------------------------------------------------------------- comparison


def compare(name: str, rule: Any, expected: Any, tol: Tolerance) -> ArgumentReport:
    """Element-wise comparison of two arrays under ``tol``; NaNs agree with NaNs."""
    rule, expected = np.asarray(rule), np.asarray(expected)
    shape = tuple(expected.shape)
    if rule.shape != expected.shape:
        note = f"rule returned shape {tuple(rule.shape)}, expected {shape}"
        return ArgumentReport(name, shape, np.inf, np.inf, (), np.nan, np.nan, 0.0, False, note)
    rule = rule.astype(np.float64)
    expected = expected.astype(np.float64)
    if expected.size == 0:
        return ArgumentReport(name, shape, 0.0, 0.0, (), 0.0, 0.0, 0.0, True)
    both_nan = np.isnan(rule) & np.isnan(expected)
    with np.errstate(invalid="ignore"):
        err = np.where(both_nan, 0.0, np.abs(rule - expected))
    err = np.where(np.isnan(err), np.inf, err)
    finite = np.abs(expected[np.isfinite(expected)])
    scale = float(finite.max()) if finite.size else 0.0
    allowed = tol.atol * max(1.0, scale) + tol.rtol * np.where(np.isfinite(expected), np.abs(expected), 0)
    worst = np.unravel_index(int(np.argmax(err / allowed)), shape)
    max_abs = float(err.max())
    return ArgumentReport(
        name=name,
        shape=shape,
        max_abs_error=max_abs,
        max_rel_error=max_abs / scale if scale > 0 else max_abs,
        index=tuple(int(i) for i in worst),
        rule=float(rule[worst]),
        expected=float(expected[worst]),
        tolerance=float(allowed[worst]),
        ok=bool(np.all(err <= allowed)),
    )


def _is_float(leaf: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def name_of(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _arg_names(op: Callable, n: int) -> list[str]:
    """Names of the first n positional parameters of op (arg0, arg1, ... if unknown)."""
    try:
        params = list(inspect.signature(op).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(n):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY, params[i].POSITIONAL_OR_KEYWORD):
            names.append(params[i].name)
        else:
            names.append(f"arg{i}")
    return names


def float_leaves(op: Callable, args: Sequence[Any]):
    """(name, arg index, path, leaf) for every floating leaf of the positional args."""
    out = []
    for i, (name, arg) in enumerate(zip(_arg_names(op, len(args)), args)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(arg):
            if _is_float(leaf):
                out.append((name + jax.tree_util.keystr(path), i, path, leaf))
    return out


def random_like(rng: np.random.Generator, tree: Any) -> Any:
    """A standard-normal pytree with the shapes and dtypes of tree's floating leaves."""
    return jax.tree_util.tree_map(
        lambda t: jnp.asarray(rng.standard_normal(np.shape(t)), dtype=jnp.result_type(t)), tree
    )


def dtype_name(args: Sequence[Any]) -> str:
    dtypes = sorted({str(jnp.result_type(l)) for a in args for l in jax.tree_util.tree_leaves(a) if _is_float(l)})
    return "/".join(dtypes) or "none"


def tolerance_for(dtype: str, rtol: Optional[float], atol: Optional[float]) -> Tolerance:
    base = TOLERANCES.get(dtype.split("/")[0], TOLERANCES["float32"])
    # With mixed dtypes the loosest one governs.
    for d in dtype.split("/"):
        t = TOLERANCES.get(d, base)
        base = Tolerance(max(base.rtol, t.rtol), max(base.atol, t.atol))
    return Tolerance(base.rtol if rtol is None else rtol, base.atol if atol is None else atol)


def cotangent_leaf(ct: Any, path: tuple) -> Any:
    for key in path:
        if isinstance(key, jax.tree_util.SequenceKey):
            ct = ct[key.idx]
        elif isinstance(key, jax.tree_util.DictKey):
            ct = ct[key.key]
        elif isinstance(key, jax.tree_util.GetAttrKey):
            ct = getattr(ct, key.name)
        else:  # FlattenedIndexKey and custom nodes
            ct = jax.tree_util.tree_leaves(ct)[key.key]
    return ct


def worst(reports: list[ArgumentReport]) -> ArgumentReport:
    """The failing report with the largest error (or the largest error if all pass)."""
    return max(reports, key=lambda r: (not r.ok, r.max_abs_error / max(r.tolerance, 1e-300)))


# --------------------------------------------------------------------------- check_vjp


def check_vjp(
    op: Callable,
    reference: Callable,
    *args: Any,
    cotangents: int = 3,
    seed: int = 0,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    **settings: Any,
) -> CheckResult:
    """Compares ``op``'s forward and VJP with ``reference`` and ``jax.vjp`` of ``reference``.

    Both functions are called as ``f(*args, **settings)``. The VJP is taken with respect
    to every floating leaf of ``args``, for ``cotangents`` random normal cotangents drawn
    from ``seed``; per argument the worst element over all cotangents is reported.

    Args:
      op: the function with the hand-derived rule.
      reference: the same forward, differentiated by autodiff.
      *args: arrays or pytrees of arrays.
      cotangents: how many random cotangents to try.
      seed: seed of the cotangents.
      rtol, atol: override the dtype's defaults (:data:`TOLERANCES`).
      **settings: keyword arguments passed unchanged to both functions.

    Returns:
      A :class:`CheckResult`; call ``.assert_ok()`` to raise on mismatch.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, reference, verify
    >>> x = jnp.array([[0.5, -1.0, 2.0]])
    >>> verify.check_vjp(ops.softmax, reference.softmax, x).ok
    True
    """
    dtype = dtype_name(args)
    against = f"autodiff of {name_of(reference)}"
    return compare_pullbacks(
        name_of(op), against, float_leaves(op, args), tolerance_for(dtype, rtol, atol), dtype,
        rule=lambda: jax.vjp(lambda *a: op(*a, **settings), *args),
        expected=lambda: expected_vjp(reference, args, settings),
        cotangents=cotangents, seed=seed,
    )


#: The last few expected sides, by (reference, arguments, settings): see :func:`expected_vjp`.
_EXPECTED: "collections.OrderedDict[tuple, tuple[Any, Callable]]" = collections.OrderedDict()


def expected_vjp(reference: Callable, args: Sequence[Any], settings: dict) -> tuple[Any, Callable]:
    """:func:`compiled_vjp` of ``reference`` at ``args``, remembered: the expected side does
    not depend on the transform applied to the rule, so the checks of one sample under
    ``eager``, ``jit`` and ``checkpoint`` trace, compile and run it once (and each
    cotangent's pullback once). Keyed by the reference itself, the arguments' and
    settings' values and the 64-bit mode; the last 8 are kept."""
    key = (reference, fingerprint(args), fingerprint(settings), jax.config.jax_enable_x64)
    if key not in _EXPECTED:
        out, pullback = compiled_vjp(lambda *a: reference(*a, **settings), *args)
        _EXPECTED[key] = out, _remembered(pullback)
        while len(_EXPECTED) > 8:
            _EXPECTED.popitem(last=False)
    _EXPECTED.move_to_end(key)
    return _EXPECTED[key]


def _remembered(pullback: Callable) -> Callable:
    results: dict = {}

    def call(v):
        key = fingerprint(v)
        if key not in results:
            results[key] = pullback(v)
        return results[key]

    return call


def fingerprint(tree: Any) -> tuple:
    """A hashable stand-in for a pytree's structure and values (arrays by dtype, shape and bytes)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)

    def one(leaf):
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                return ("key", str(leaf.dtype), fingerprint(jax.random.key_data(leaf)))
            a = np.asarray(leaf)
            return (str(a.dtype), a.shape, hashlib.sha1(a.tobytes()).hexdigest())
        try:
            hash(leaf)
            return leaf
        except TypeError:
            return repr(leaf)

    return (str(treedef), tuple(one(leaf) for leaf in leaves))


def compiled_vjp(fn: Callable, *args: Any) -> tuple[Any, Callable]:
    """``(fn(*args), pullback)`` as ``jax.vjp`` gives them, each side one compiled program.

    For the expected side of a comparison and for transforms whose point is not eager
    execution: a program compiled whole replaces the dozens of per-primitive programs
    that eager execution compiles, and the pullback's program serves every cotangent.
    """
    out = jax.jit(lambda a: jax.vjp(fn, *a)[0])(args)  # the output of a custom_vjp's fwd, as jax.vjp's
    pullback = jax.jit(lambda v, a: jax.vjp(fn, *a)[1](v))
    return out, lambda v: pullback(v, args)


def compare_pullbacks(
    op_name: str,
    against: str,
    leaves: list,
    tol: Tolerance,
    dtype: str,
    rule: Callable[[], tuple[Any, Callable]],
    expected: Callable[[], tuple[Any, Callable]],
    cotangents: int = 3,
    seed: int = 0,
) -> CheckResult:
    """The engine of :func:`check_vjp` and of the transformed checks.

    ``rule()`` and ``expected()`` each return ``(output, pullback)`` as ``jax.vjp`` does;
    the outputs are compared, then both pullbacks at ``cotangents`` random cotangents,
    leaf by leaf for the floating ``leaves`` (from :func:`float_leaves`). An exception
    raised by either side becomes the result's ``error``.
    """
    try:
        out, pullback = rule()
        out_ref, pullback_ref = expected()
    except Exception as e:  # report, do not crash: the rule may be the culprit
        return CheckResult(op_name, against, dtype, None, (), f"{type(e).__name__}: {e}")

    fwd_reports = [
        compare("output" + jax.tree_util.keystr(p), a, b, tol)
        for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(out), jax.tree_util.tree_leaves(out_ref))
    ]
    forward = worst(fwd_reports) if fwd_reports else None

    rng = np.random.default_rng(seed)
    per_arg: dict[str, list[ArgumentReport]] = {name: [] for name, *_ in leaves}
    try:
        for _ in range(cotangents):
            v = random_like(rng, out_ref)
            ct_op, ct_ref = pullback(v), pullback_ref(v)
            for name, i, path, _leaf in leaves:
                a = cotangent_leaf(ct_op[i], path)
                b = cotangent_leaf(ct_ref[i], path)
                per_arg[name].append(compare(name, as_array(a, b), b, tol))
    except Exception as e:
        return CheckResult(op_name, against, dtype, forward, (), f"{type(e).__name__}: {e}")
    arguments = tuple(worst(r) for r in per_arg.values())
    return CheckResult(op_name, against, dtype, forward, arguments)


def as_array(ct: Any, like: Any) -> Any:
    """A rule's cotangent as an array (None, or a symbolic zero, means zeros)."""
    if ct is None or getattr(ct, "dtype", None) == jax.dtypes.float0:
        return np.zeros(np.shape(like))
    return ct


# --------------------------------------------------------------------------- check_numerical


def check_numerical(
    op: Callable,
    *args: Any,
    step: float = 1e-5,
    elementwise_max: int = 512,
    directions: int = 4,
    seed: int = 0,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    **settings: Any,
) -> CheckResult:
    """Compares ``op``'s VJP with central finite differences, in float64.

    64-bit mode is switched on only inside this call (the global flag is left as it
    was) and every floating leaf of ``args`` is cast to float64. With a random cotangent
    ``v`` and ``φ(x) = ⟨op(x), v⟩``, the rule's ``Jᵀv`` is compared

    * element by element with ``(φ(x + h eᵢ) − φ(x − h eᵢ)) / 2h`` for arguments of at
      most ``elementwise_max`` elements (all perturbations evaluated in one vmapped map),
    * by projections on ``directions`` random directions ``u``,
      ``⟨u, Jᵀv⟩`` against ``(φ(x + h u) − φ(x − h u)) / 2h``, for larger arguments.

    Args:
      op: the function with the hand-derived rule.
      *args: arrays or pytrees of arrays; draw them away from kinks (ReLU at 0, ties in
        a max-pooling window) by more than ``step``.
      step: the step ``h`` (named ``step``, not ``eps``, so that an op's own ``eps``
        setting, e.g. batch norm's, passes through ``**settings``).
      elementwise_max: the largest argument checked element by element.
      directions: number of random directions for larger arguments.
      seed: seed of the cotangent and directions.
      rtol, atol: override :data:`FINITE_DIFFERENCE_TOLERANCE`.
      **settings: keyword arguments passed unchanged to ``op``.

    Returns:
      A :class:`CheckResult`; call ``.assert_ok()`` to raise on mismatch.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, verify
    >>> verify.check_numerical(ops.sigmoid, jnp.array([0.3, -1.2])).ok
    True
    """
    base = FINITE_DIFFERENCE_TOLERANCE
    tol = Tolerance(base.rtol if rtol is None else rtol, base.atol if atol is None else atol)
    with jax.enable_x64(True):
        return _check_numerical_x64(op, args, step, elementwise_max, directions, seed, tol, settings)


def _check_numerical_x64(op, args, step, elementwise_max, directions, seed, tol, settings):
    rng = np.random.default_rng(seed)
    try:
        args, v, pullback, phi = start_float64_probing(op, args, settings, rng)
        ct = pullback(v)
    except Exception as e:
        return CheckResult(name_of(op), "finite differences", "float64", None, (), f"{type(e).__name__}: {e}")
    reports = []
    found = list(probes(op, args, phi, rng, elementwise_max, directions))
    for probe, (plus, minus) in zip(found, perturbed_together(found, step)):
        rule = np.asarray(as_array(cotangent_leaf(ct[probe.index], probe.path), probe.leaf), np.float64)
        if probe.elementwise:
            reports.append(compare(probe.name, rule, ((plus - minus) / (2 * step)).reshape(probe.leaf.shape), tol))
        else:
            reports.append(_projections(probe, rule, plus, minus, step, tol))
    return CheckResult(name_of(op), "finite differences", "float64", None, tuple(reports))


# --------------------------------------------------------------------------- float64 probing
# Shared by check_numerical and diagnose; call inside ``jax.enable_x64(True)``.


def start_float64_probing(op: Callable, args: Sequence[Any], settings: dict, rng: np.random.Generator):
    """``(args, v, pullback, φ)``: ``args`` with floating leaves cast to float64, a random
    cotangent ``v`` of ``op``'s output, the rule's pullback, and ``φ(*a) = ⟨op(*a), v⟩``.
    Raises whatever ``op`` raises."""
    args = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64) if _is_float(a) else jnp.asarray(a), tuple(args)
    )
    fn = lambda *a: op(*a, **settings)  # noqa: E731
    out, pullback = compiled_vjp(fn, *args)
    v = random_like(rng, out)

    def phi(*a):
        return sum(jnp.vdot(o, w) for o, w in zip(jax.tree_util.tree_leaves(fn(*a)), jax.tree_util.tree_leaves(v)))

    return args, v, pullback, phi


class Probe(NamedTuple):
    """One floating leaf of the arguments and the directions to probe it along."""

    name: str  # the argument's name and the leaf's path
    index: int  # the argument's position
    path: tuple  # the leaf's path in the argument
    leaf: jax.Array
    phi_at: Callable  # value of the leaf -> φ
    directions: np.ndarray  # (P, leaf.size): unit vectors (element by element) or random
    indices: list  # per direction: the element's index, or ("direction", k)
    elementwise: bool


def probes(op: Callable, args: Sequence[Any], phi: Callable, rng: np.random.Generator, elementwise_max: int,
           directions: int):
    """A :class:`Probe` per floating leaf: every element of leaves of at most
    ``elementwise_max`` elements, else ``directions`` random directions (drawn from ``rng``)."""
    for name, i, path, leaf in float_leaves(op, args):
        def phi_at(value, i=i, path=path):
            return phi(*args[:i], _replace_leaf(args[i], path, value), *args[i + 1:])

        if leaf.size <= elementwise_max:
            indices = [tuple(int(j) for j in np.unravel_index(k, leaf.shape)) for k in range(leaf.size)]
            yield Probe(name, i, path, leaf, phi_at, np.eye(leaf.size), indices, True)
        else:
            yield Probe(name, i, path, leaf, phi_at, rng.standard_normal((directions, leaf.size)),
                        [("direction", k) for k in range(directions)], False)


def _replace_leaf(tree: Any, path: tuple, value: Any) -> Any:
    return jax.tree_util.tree_map_with_path(lambda p, l: value if p == path else l, tree)


def perturbed(phi_at: Callable, leaf: jax.Array, directions: jax.Array, step: float) -> tuple[jax.Array, jax.Array]:
    """``φ(x + step·d)`` and ``φ(x − step·d)`` for every row ``d`` of ``directions``.

    ``phi_at`` maps a value of the leaf ``x`` to the scalar ``φ``; each row of
    ``directions`` has ``leaf.size`` entries. All rows are evaluated in one jitted map.
    """
    f = jax.jit(lambda d: phi_at(leaf + d.reshape(leaf.shape)))
    return (jax.lax.map(f, step * directions, batch_size=64), jax.lax.map(f, -step * directions, batch_size=64))


def perturbed_together(found: Sequence[Probe], step: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`perturbed` for every probe at once: ``(plus, minus)`` per probe, all of them
    evaluated by one compiled program (a map over the directions of each leaf)."""
    def evaluate(directions):
        values = []
        for probe, u in zip(found, directions):
            both = jax.lax.map(lambda d, p=probe: p.phi_at(p.leaf + d.reshape(p.leaf.shape)),
                               jnp.concatenate([step * u, -step * u]), batch_size=64)
            values.append((both[: len(u)], both[len(u):]))
        return values

    # numpy in and out: eager jnp arithmetic on the results would compile a program per primitive and shape
    return jax.device_get(jax.jit(evaluate)([p.directions for p in found])) if found else []


def _projections(probe: Probe, rule, plus, minus, step, tol) -> ArgumentReport:
    u = probe.directions
    numeric = np.asarray((plus - minus) / (2 * step))
    analytic = np.asarray(u @ rule.reshape(-1))
    reports = []
    for k in range(len(u)):
        scale = float(np.linalg.norm(u[k]) * np.linalg.norm(rule))
        allowed = tol.atol * max(1.0, scale) + tol.rtol * abs(numeric[k])
        err = abs(analytic[k] - numeric[k])
        err = err if np.isfinite(err) else np.inf
        reports.append(ArgumentReport(
            probe.name, tuple(probe.leaf.shape), err, err / scale if scale > 0 else err,
            ("direction", k), float(analytic[k]), float(numeric[k]), allowed, bool(err <= allowed),
        ))
    return worst(reports)
