"""What a check finds, and how it reads: one comparison of two arrays, the results of the
checks and of :func:`~jaxcnn.verify.diagnose`, and their text.

Tolerances. An element passes when ``|rule − expected| ≤ atol · max(1, S) + rtol · |expected|``
where ``S`` is the largest ``|expected|`` of that argument, so that elements which cancel
to near zero inside a large gradient are judged on the gradient's scale. The defaults
depend on the dtype compared (:data:`TOLERANCES`); finite differences, always taken in
float64, use :data:`FINITE_DIFFERENCE_TOLERANCE`. The reported relative error is
``max |rule − expected| / max |expected|``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence

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


def tolerance_for(dtype: str, rtol: Optional[float], atol: Optional[float]) -> Tolerance:
    """The loosest default among the ``/``-joined dtypes, with ``rtol``/``atol`` overriding it."""
    found = [TOLERANCES.get(d, TOLERANCES["float32"]) for d in dtype.split("/")]
    return Tolerance(max(t.rtol for t in found) if rtol is None else rtol,
                     max(t.atol for t in found) if atol is None else atol)


class GradientMismatch(AssertionError):
    """Raised by :meth:`CheckResult.assert_ok` when a check failed; the message is the report."""


@dataclasses.dataclass(frozen=True)
class ArgumentReport:
    """How one array (an argument's gradient, ``"w"`` or ``"params['conv']['w']"``, or the
    forward value, ``"output"``) compared: its ``shape``, ``max |rule − expected|``, that over
    ``max |expected|``, the element worst relative to its tolerance (``index``; for a
    projection ``("direction", k)``) with the ``rule``'s and ``expected`` values and the
    ``tolerance`` there, whether every element is within its tolerance (``ok``), a ``note``
    when the comparison could not be made element by element, the property compared
    (``what``) when not the value itself (e.g. ``"vjp(0) = 0"``), and for a probe beyond
    the sample (:func:`~jaxcnn.verify.check_vjp`'s) which one: ``("inputs", 1024.0)`` or
    ``("cotangent", 16384.0)``."""

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
    probe: tuple = ()

    @property
    def label(self) -> str:
        """What was compared, where not the value at the sample: ``"vjp(0) = 0"``, ``"inputs ×1024"``."""
        return self.what or (f"{self.probe[0]} {factor(self.probe[1])}" if self.probe else "")

    def describe(self, expected_label: str) -> str:
        name = f"{self.name} [{self.label}]" if self.label else self.name
        head = f"{name:<16} {str(self.shape):<18}"
        if self.note:
            return f"{head} {'ok' if self.ok else 'MISMATCH'}: {self.note}"
        errors = f"max abs {self.max_abs_error:.2e}  max rel {self.max_rel_error:.2e}"
        if self.ok:
            return f"{head} {errors}  ok"
        where = ", ".join(str(i) for i in self.index)
        return (f"{head} {errors}  MISMATCH at [{where}]: rule {self.rule:.6g}, "
                f"{expected_label} {self.expected:.6g}, tolerance {self.tolerance:.2e}")


def factor(scale: float) -> str:
    """``"×1024"``, ``"×1/1024"``: a probe's scale."""
    return f"×{scale:g}" if scale >= 1 else f"×1/{1 / scale:g}"


def by_name(items: Sequence[Any], name: str) -> Any:
    """The item whose ``.name`` is ``name`` (an argument's report), or a KeyError listing the names."""
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"no argument named {name!r}; have {[item.name for item in items]}")


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of a check: ``ok``, a report per argument (and of the forward output),
    ``str(result)`` a readable report, :meth:`assert_ok` raises :class:`GradientMismatch`
    with it; ``result["w"]`` is the report of argument ``w``."""

    op: str
    against: str  # "autodiff of <reference>", "finite differences", "custom_vjp contract", ...
    dtype: str
    forward: Optional[ArgumentReport]
    arguments: tuple[ArgumentReport, ...]
    error: str = ""  # an exception raised while checking, in one line
    notes: tuple[str, ...] = ()  # what the check left out, and why (a probe outside the op's domain)

    @property
    def ok(self) -> bool:
        return not self.error and not self.failures()

    def failures(self) -> tuple[ArgumentReport, ...]:
        return tuple(r for r in ((self.forward,) if self.forward else ()) + self.arguments if not r.ok)

    def __getitem__(self, name: str) -> ArgumentReport:
        return by_name(self.arguments, name)

    def __str__(self) -> str:
        title = self.against if self.against == "custom_vjp contract" else (
            f"{'JVP' if 'forward mode' in self.against else 'hand VJP'} vs {self.against}")
        lines = [f"{self.op}: {title} ({self.dtype}): {'ok' if self.ok else 'FAILED'}"]
        if self.error:
            lines.append(f"  error: {self.error}")
        lines.extend(f"  note: {note}" for note in self.notes)
        label = ("finite-diff" if self.against.startswith("finite differences") else
                 "⟨ṫ, Jᵀ g⟩" if "adjoint identity" in self.against else
                 "expected" if self.against == "custom_vjp contract" else "autodiff")
        if self.forward is not None:
            lines.append("  " + self.forward.describe("reference"))
        lines.extend("  " + r.describe(label) for r in self.arguments)
        return "\n".join(lines)

    def assert_ok(self) -> "CheckResult":
        """Returns self if the check passed; raises :class:`GradientMismatch` otherwise."""
        if not self.ok:
            raise GradientMismatch(str(self))
        return self


def compare(name: str, rule: Any, expected: Any, tol: Tolerance, scale: Any = None, index: Any = None,
            what: str = "") -> ArgumentReport:
    """The one comparison: ``rule`` against ``expected`` element by element under ``tol``
    (NaN agrees with NaN). ``scale``: the ``S`` of each element's tolerance (default the
    largest finite ``|expected|``); ``index``: how to name element ``k`` (default its
    position in ``expected``'s shape)."""
    rule, expected = np.asarray(rule), np.asarray(expected)
    shape = tuple(expected.shape)
    if rule.shape != expected.shape:
        note = f"rule returned shape {tuple(rule.shape)}, expected {shape}"
        return ArgumentReport(name, shape, np.inf, np.inf, (), np.nan, np.nan, 0.0, False, note, what)
    if expected.size == 0:
        return ArgumentReport(name, shape, 0.0, 0.0, (), 0.0, 0.0, 0.0, True, what=what)
    rule, expected = rule.astype(np.float64), expected.astype(np.float64)
    with np.errstate(invalid="ignore"):
        err = np.where(np.isnan(rule) & np.isnan(expected), 0.0, np.abs(rule - expected))
    err = np.where(np.isnan(err), np.inf, err)
    finite = np.abs(expected[np.isfinite(expected)])
    largest = float(finite.max()) if finite.size else 0.0
    scale = max(1.0, largest) if scale is None else np.maximum(1.0, scale)
    allowed = tol.atol * scale + tol.rtol * np.where(np.isfinite(expected), np.abs(expected), 0)
    worst_at = np.unravel_index(int(np.argmax(err / allowed)), shape)
    max_abs = float(err.max())
    return ArgumentReport(
        name, shape, max_abs, max_abs / largest if largest > 0 else max_abs,
        tuple(int(i) for i in worst_at) if index is None else index[worst_at[0]],
        float(rule[worst_at]), float(expected[worst_at]), float(np.broadcast_to(allowed, shape)[worst_at]),
        bool(np.all(err <= allowed)), what=what)


def worst(reports: Sequence[ArgumentReport]) -> ArgumentReport:
    """The failing report with the largest error relative to its tolerance (or the largest if all pass);
    the comparisons at the sample first: a probe beyond it speaks only where they all pass."""
    own = [r for r in reports if not r.probe]
    if own and (not all(r.ok for r in own) or all(r.ok for r in reports)):
        reports = own
    return max(reports, key=lambda r: (not r.ok, r.max_abs_error / max(r.tolerance, 1e-300)))


# --------------------------------------------------------------------------- the three-way verdict

AGREE = "agree"
RULE_WRONG = "rule wrong"
FD_UNTRUSTWORTHY = "finite differences untrustworthy"
NON_SMOOTH = "non-smooth point"
REFERENCE_WRONG = "reference wrong"
ALL_DISAGREE = "all three disagree"
RULE_RAISED = "the rule raised"
REFERENCE_RAISED = "the reference raised"

#: The verdicts of :func:`~jaxcnn.verify.diagnose`, the most serious first; beside them
#: ``"fails only under <transform>"`` (:data:`ONLY_UNDER`), when the three agree at the sample.
VERDICTS = (RULE_RAISED, RULE_WRONG, REFERENCE_RAISED, REFERENCE_WRONG, ALL_DISAGREE, NON_SMOOTH, FD_UNTRUSTWORTHY,
            AGREE)

#: The verdict of a check that failed under a transform while the rule, autodiff and finite
#: differences agree at the sample.
ONLY_UNDER = "fails only under"


@dataclasses.dataclass(frozen=True)
class Element:
    """The values at one element (``index``, or ``("direction", k)``) of a gradient: the rule's
    and the reference's ``Jᵀv``, central differences with step ``h`` and ``h/2``, the one-sided
    ones with step ``h``, the finite-difference tolerance, and the verdict (:data:`VERDICTS`)."""

    index: tuple
    rule: float
    autodiff: float
    central: float
    central_half: float
    forward: float
    backward: float
    tolerance: float
    verdict: str

    def __str__(self) -> str:
        where = ", ".join(str(i) for i in self.index)
        return (f"[{where}] rule {self.rule:.6g}, autodiff {self.autodiff:.6g}, finite-diff {self.central:.6g} "
                f"(h/2: {self.central_half:.6g}; one-sided {self.backward:.6g} | {self.forward:.6g}), "
                f"tolerance {self.tolerance:.1e}: {self.verdict}")


@dataclasses.dataclass(frozen=True)
class ArgumentDiagnosis:
    """One argument: its verdict and its worst elements, worst first."""

    name: str
    verdict: str
    worst: tuple[Element, ...]


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """The outcome of :func:`~jaxcnn.verify.diagnose`: ``verdict`` (one of :data:`VERDICTS`, or
    ``"fails only under <transform>"``), what it means where it needs saying (``explanation``:
    the exception a side raised, in one line, or what a transform-only failure points to),
    where it was taken (``probe``, as :attr:`ArgumentReport.probe`), one
    :class:`ArgumentDiagnosis` per argument (``diagnosis["w"]``); ``str()`` is a readable report."""

    op: str
    verdict: str
    arguments: tuple[ArgumentDiagnosis, ...]
    error: str = ""  # the exception a side raised, in one line
    explanation: str = ""
    probe: tuple = ()

    def __getitem__(self, name: str) -> ArgumentDiagnosis:
        return by_name(self.arguments, name)

    def __str__(self) -> str:
        at = f" (at the sample's {self.probe[0]} {factor(self.probe[1])})" if self.probe else ""
        said = self.explanation or self.error
        lines = [f"{self.op}: verdict: {self.verdict}{': ' + said if said else ''}{at}"]
        for a in self.arguments:
            lines.append(f"  {a.name}: {a.verdict}")
            lines.extend(f"    {e}" for e in a.worst if a.verdict != AGREE)
        return "\n".join(lines)
