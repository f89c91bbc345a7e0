"""Certify every custom gradient inside a JAX program, where it runs.

:func:`audit` runs ``fn(*args, **kwargs)`` once (a loss, a model's apply, a whole train
step) and records every ``jax.custom_vjp`` and ``jax.custom_jvp`` call made in it: jaxcnn's
ops (each a :class:`jaxcnn.ops._rule.custom_rule`, recorded as such), ``jax.nn``'s, optax's,
Flax's, Equinox's and your own, inside ``jit``, ``vmap``, ``scan``, ``while``, ``cond`` and
``checkpoint`` bodies, with the call's real operands and
the real cotangent that reaches its output (``_capture``). Each distinct rule (the same
custom function, settings and operand shapes) is then checked once, at those operands,
against autodiff of **its own primal function** (no reference to write):

* the rule's forward and VJP (and JVP, for a ``custom_jvp`` and a ``custom_rule`` with a hand
  JVP) against autodiff of the primal, with the real cotangent and with random ones
  (:func:`~jaxcnn.verify.check_vjp`), eager and compiled (``jax.jit``, under the user's own
  flags and defaults);
* against float64 central finite differences (:func:`~jaxcnn.verify.check_numerical`);
* when any of these disagree, :func:`~jaxcnn.verify.diagnose` gives the verdict. A
  "non-smooth point" or "finite differences untrustworthy" is no finding; "rule wrong",
  "all three disagree", or an exception is. Where the primal cannot be differentiated
  (``"reference wrong"``: the rule agrees with finite differences, the primal's autodiff
  does not), the report says so and judges by finite differences.

See docs/auditing.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify import _capture
from jaxcnn.verify._core import Leaves, as_cotangent, collect, name_of, outputs, random_like
from jaxcnn.verify._report import (AGREE, ALL_DISAGREE, FD_UNTRUSTWORTHY, NON_SMOOTH, REFERENCE_WRONG, RULE_WRONG,
                                   CheckResult, compare, tolerance_for)
from jaxcnn.verify.checks import check_jvp, check_numerical
from jaxcnn.verify.diagnose import diagnose

#: The verdict of a rule whose check raised: the rule (or its primal) fails at the real operands.
RAISED = "rule raised"

#: The verdict of a rule that agrees eagerly but not when compiled, or the reverse.
COMPILED_DIFFERS = "compiled differs from eager"

#: Verdicts that are no finding.
CLEAN = (AGREE, NON_SMOOTH, FD_UNTRUSTWORTHY)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One distinct rule at one place: where (``source``, ``path``), which rule (``rule``,
    ``kind``), how many calls it stands for (``count``), at which shapes, the ``verdict``,
    whether it is ``ok``, the worst element (``worst``: argument, index, rule, expected,
    tolerance), what was checked (``checks``, each ``CheckResult`` as text) and a ``note``."""

    rule: str
    kind: str
    source: str
    path: str
    count: int
    shapes: str
    verdict: str
    ok: bool
    worst: str = ""
    note: str = ""
    checks: tuple[str, ...] = ()
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """What :func:`audit` found: one :class:`Finding` per distinct rule (``.findings``, each
    with ``.ok``), ``.ok`` when all are, ``str(report)`` (or :meth:`table`) a terminal table,
    :meth:`to_json`."""

    program: str
    findings: tuple[Finding, ...]
    calls: int
    seconds: float

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failures(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if not f.ok)

    def table(self) -> str:
        head = (f"audit of {self.program}: {self.calls} custom-rule calls, {len(self.findings)} distinct rules, "
                f"{len(self.failures)} finding{'s' if len(self.failures) != 1 else ''} ({self.seconds:.1f} s)")
        rows = [("", "rule", "calls", "verdict", "where", "model path")]
        rows += [("ok" if f.ok else "FAIL", f.rule, str(f.count), f.verdict, f.source, f.path or "-")
                 for f in self.findings]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        for f in self.findings:
            if not f.ok or f.note:
                lines.append(f"  {f.rule} at {f.source}{': ' + f.worst if f.worst and not f.ok else ''}"
                             f"{'  (' + f.note + ')' if f.note else ''}")
        return "\n".join(lines)

    __str__ = table

    def to_json(self) -> str:
        return json.dumps({"program": self.program, "ok": self.ok, "calls": self.calls, "seconds": self.seconds,
                           "findings": [f.as_dict() for f in self.findings]}, indent=2)


def audit(fn: Callable, *args: Any, nans: bool = False, seed: int = 0, **kwargs: Any) -> AuditReport:
    """Checks every ``custom_vjp``/``custom_jvp`` rule called by ``fn(*args, **kwargs)``, at
    the operands it receives there.

    Args:
      fn: any JAX program: a loss, a model's apply, a (jitted) train step.
      *args, **kwargs: what ``fn`` is called with, once.
      nans: also locate where a NaN or inf is born, forward or backward (the finding of
        ``jaxcnn.verify._nans.locate_nonfinite``, when installed, added to the report).
      seed: seed of the random cotangents and directions.

    Returns:
      An :class:`AuditReport`; ``report.ok`` is False on a finding.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import verify
    >>> report = verify.audit(lambda x: jnp.sum(jax.nn.relu(x)), jnp.array([-1.0, 2.0]))
    >>> report.ok, [f.rule for f in report.findings]
    (True, ['relu'])
    """
    if not callable(fn):
        raise TypeError(f"audit: `fn` must be the program to run, a callable (a loss, a model's apply, a train "
                        f"step), got {type(fn).__name__} {fn!r:.60}.")
    start = time.perf_counter()
    calls = _capture.record(fn, args, kwargs)
    groups: dict[Any, list[_capture.Call]] = {}
    for call in calls:
        groups.setdefault(_key(call), []).append(call)
    findings = [_check(group, seed) for group in groups.values()]
    if nans:
        findings.extend(_nan_findings(fn, args, kwargs))
    return AuditReport(name_of(fn), tuple(findings), len(calls), time.perf_counter() - start)


def _key(call: _capture.Call) -> tuple:
    """Calls with the same rule (its functions' code), settings and operand shapes are one."""
    custom = call.custom
    code = tuple(getattr(getattr(custom, a, None), "__code__", None) for a in ("fun", "fwd", "bwd", "jvp"))
    static = tuple(repr(call.leaves[k]) if k not in call.arrays else
                   (np.shape(call.leaves[k]), _dtype(call.leaves[k]) if call.recorded else "")
                   for k in range(len(call.leaves)))
    return (call.kind, code, getattr(custom, "__name__", ""), str(call.tree), static, call.source)


def _dtype(leaf: Any) -> str:
    return str(getattr(leaf, "dtype", None) or np.result_type(leaf))


def _split(call: _capture.Call) -> tuple[Callable, Callable, tuple]:
    """``(rule, primal, dynamic)``: the rule and its primal as functions of the call's
    differentiable positional arguments (the settings, ``nondiff_argnums``, bound)."""
    args = call.args
    static = set(call.static)
    dynamic = tuple(a for i, a in enumerate(args) if i not in static)

    def merged(dyn):
        it = iter(dyn)
        return tuple(args[i] if i in static else next(it) for i in range(len(args)))

    custom = call.custom
    name = getattr(custom, "__name__", name_of(custom.fun))

    def rule(*dyn):
        return custom(*merged(dyn))

    def primal(*dyn):
        return custom.fun(*merged(dyn))

    rule.__name__, primal.__name__ = name, f"{name}'s primal"
    rule.__signature__ = primal.__signature__ = _dynamic_signature(custom.fun, static, len(args))
    return rule, primal, dynamic


def _dynamic_signature(fun: Callable, static: set, n: int) -> inspect.Signature:
    """The primal's signature without its settings, so that reports name ``x``, ``w`` (not ``arg0``)."""
    try:
        params = [p for p in inspect.signature(fun).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [params[i].name if i < len(params) else f"arg{i}" for i in range(n) if i not in static]
    return inspect.Signature([inspect.Parameter(a, inspect.Parameter.POSITIONAL_ONLY) for a in names])


def _check(group: list[_capture.Call], seed: int) -> Finding:
    call = group[0]
    start = time.perf_counter()
    name = getattr(call.custom, "__name__", "?")
    shapes = ", ".join(f"{_dtype(call.leaves[k])}{list(np.shape(call.leaves[k]))}" for k in call.arrays
                       if call.recorded)
    paths = ", ".join(dict.fromkeys(c.path for c in group if c.path))
    base = dict(rule=name, kind=call.kind, source=call.source, path=paths, count=len(group), shapes=shapes)
    if not call.recorded:
        return Finding(**base, verdict="not reached", ok=True, note="never executed in this run (a branch not "
                       "taken, a loop run zero times)", seconds=time.perf_counter() - start)
    rule, primal, dynamic = _split(call)
    why = _not_differentiable(primal, dynamic)
    if why:  # judged by finite differences alone
        numerical = check_numerical(rule, *dynamic, seed=seed)
        note = f"its primal is not reverse-differentiable ({why}): judged by finite differences"
        return Finding(**base, verdict=AGREE if numerical.ok else RULE_WRONG, ok=numerical.ok,
                       worst="" if numerical.ok else _worst([numerical]), note=note, checks=(str(numerical),),
                       seconds=time.perf_counter() - start)
    in_place = _in_place(rule, primal, dynamic, call, seed)
    results = [in_place]
    if call.kind == "custom_jvp" or call.kind == "custom_rule" and call.custom.jvp is not None:  # a hand JVP
        results.append(check_jvp(rule, primal, *dynamic, seed=seed))
    numerical = check_numerical(rule, *dynamic, seed=seed)
    results.append(numerical)
    checks = tuple(str(r) for r in results)
    note = "" if call.cotangent is not None else "no real cotangent reached it; random cotangents only"
    if all(r.ok for r in results):
        return Finding(**base, verdict=AGREE, ok=True, note=note, checks=checks,
                       seconds=time.perf_counter() - start)
    errors = [r for r in results if r.error]
    if errors and all(r.error for r in results):
        return Finding(**base, verdict=RAISED, ok=False, worst=errors[0].error, note=note, checks=checks,
                       seconds=time.perf_counter() - start)
    compiled_ok = all(r.ok for r in in_place.arguments + (in_place.forward,) if r.what == COMPILED_EQUALS_EAGER)
    verdict = diagnose(rule, primal, *dynamic, seed=seed)
    judged = verdict.verdict
    if verdict.error:
        judged = RAISED
    elif judged == REFERENCE_WRONG and compiled_ok:
        note = "; ".join(filter(None, [note, "the primal's autodiff disagrees with the rule and finite differences "
                                             "(not differentiable as written): judged by finite differences"]))
        judged = AGREE if numerical.ok else RULE_WRONG
    elif not compiled_ok:
        judged = COMPILED_DIFFERS
    elif judged == AGREE:
        judged = ALL_DISAGREE if not numerical.ok else RULE_WRONG
    ok = judged in CLEAN
    if judged == NON_SMOOTH and compiled_ok:
        note = "; ".join(filter(None, [note, "the operands sit at a kink: the rule's choice there is not judged"]))
    worst = _worst(results)
    return Finding(**base, verdict=judged, ok=ok, worst=worst if not ok else "", note=note,
                   checks=checks + (str(verdict),), seconds=time.perf_counter() - start)


def _not_differentiable(primal: Callable, dynamic: tuple) -> str:
    """Why autodiff cannot differentiate the primal in reverse mode (e.g. a ``while_loop``), or ""."""
    leaves = Leaves(primal, dynamic)
    g = leaves.bind(primal, {})

    def pullback(*xs):
        out, vjp = jax.vjp(g, *xs)
        return vjp(jax.tree_util.tree_map(jnp.zeros_like, out))

    try:
        jax.eval_shape(pullback, *leaves.arrays)
    except Exception as e:  # noqa: BLE001 (a rule whose primal fails to trace is judged by the other checks)
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:160]
    return ""


def _worst(results: list[CheckResult]) -> str:
    for r in results:
        if r.error:
            return f"{r.against}: {r.error}"
        for a in r.failures():
            where = ", ".join(str(i) for i in a.index)
            return (f"{a.name}[{where}] rule {a.rule:.6g}, expected {a.expected:.6g} ({r.against}), "
                    f"tolerance {a.tolerance:.1e}")
    return ""


#: The ``what`` of the comparison of the compiled rule with the eager rule.
COMPILED_EQUALS_EAGER = "compiled = eager"


def _in_place(rule: Callable, primal: Callable, dynamic: tuple, call: _capture.Call, seed: int,
              cotangents: int = 2) -> CheckResult:
    """The rule at the call's operands: its forward and VJP compiled (``jax.jit``, under the
    user's flags) against the compiled autodiff of its primal, at the cotangent the program
    sent it (where one reached it) and at ``cotangents`` random ones; and the eager rule
    against the compiled one at the first of these cotangents.

    The compiled side is one program: both forwards, and both pullbacks mapped over the
    stacked cotangents (``lax.map``: each pullback traced and compiled once, whatever their number).
    """
    leaves = Leaves(rule, dynamic)
    tol = tolerance_for(leaves.dtype, None, None)

    def reports():
        rule_at, primal_at = leaves.call(rule, {}), leaves.call(primal, {})
        out_type = jax.eval_shape(primal_at, leaves.arrays, leaves.flat)
        rng = np.random.default_rng(seed)
        vs = [_program_cotangent(call, out_type)] if call.cotangent is not None else []
        vs = [v for v in vs if v is not None] + [random_like(rng, out_type) for _ in range(cotangents)]

        @jax.jit
        def evaluate(floats, flat, stacked):
            (out, pullback), (out_ref, pullback_ref) = (jax.vjp(lambda *f, g=g: g(f, flat), *floats)
                                                        for g in (rule_at, primal_at))
            return out, out_ref, jax.lax.map(lambda v: (pullback(v), pullback_ref(v)), stacked)

        stacked = jax.tree_util.tree_map(lambda *v: np.stack([np.asarray(w) for w in v]), *vs)  # on the host
        out, out_ref, (cts, cts_ref) = jax.device_get(evaluate(leaves.arrays, leaves.flat, stacked))
        yield from (compare(n, a, b, tol) for n, a, b in outputs(out, out_ref))
        for k in range(len(vs)):
            for n, a, b in zip(leaves.names, cts, cts_ref):
                yield compare(n, as_cotangent(a[k], b[k]), b[k], tol)
        # the eager rule: the same numbers as the compiled one, within the dtype's tolerance
        eager_out, eager_pullback = jax.vjp(leaves.bind(rule, {}), *leaves.arrays)
        yield from (compare(n, a, b, tol, what=COMPILED_EQUALS_EAGER) for n, a, b in outputs(out, eager_out))
        for n, a, b in zip(leaves.names, cts, eager_pullback(vs[0])):
            yield compare(n, as_cotangent(a[0], b), as_cotangent(b, a[0]), tol, what=COMPILED_EQUALS_EAGER)

    return collect(rule.__name__, f"autodiff of {primal.__name__}, at the program's operands", leaves.dtype,
                   reports)


def _program_cotangent(call: _capture.Call, out_ref: Any) -> Any:
    """The cotangent the program sent to the call's output, as a pytree like ``out_ref`` (its type)
    (zeros for its integer leaves); None when its shapes do not match."""
    flat, tree = jax.tree_util.tree_flatten(out_ref)
    floats = [k for k, o in enumerate(flat) if jnp.issubdtype(jnp.result_type(o), jnp.inexact)]
    if len(floats) != len(call.cotangent) or any(np.shape(flat[k]) != np.shape(g)
                                                 for k, g in zip(floats, call.cotangent)):
        return None
    v = [np.zeros(np.shape(o), jnp.result_type(o)) for o in flat]  # numpy: no program compiled per shape
    for k, g in zip(floats, call.cotangent):
        v[k] = np.asarray(g, jnp.result_type(flat[k]))
    return jax.tree_util.tree_unflatten(tree, v)


def _nan_findings(fn: Callable, args: tuple, kwargs: dict) -> list[Finding]:
    """The NaN locator's answer as a finding: ``locate_nonfinite(fn, *args, **kwargs)`` returns
    None (or an object with a true ``.ok``) when every value is finite, else what it found
    (its text, and ``.source``/``.path``/``.primitive`` where it names them)."""
    try:
        from jaxcnn.verify._nans import locate_nonfinite
    except ImportError as e:
        raise ValueError("audit: `nans=True` needs the NaN locator, jaxcnn.verify._nans, which this jaxcnn does "
                         "not have; call audit without `nans`.") from e
    found = locate_nonfinite(fn, *args, **kwargs)
    if found is None or getattr(found, "ok", False):
        return []
    text = str(found).strip()
    return [Finding(str(getattr(found, "primitive", "") or "non-finite value"), "nans",
                    str(getattr(found, "source", "") or "?"), str(getattr(found, "path", "") or ""), 1, "",
                    "non-finite value born", False, worst=text.splitlines()[0] if text else "")]


__all__ = ["AuditReport", "Finding", "audit"]
