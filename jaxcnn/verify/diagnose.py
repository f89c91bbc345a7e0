"""The three-way verdict: when the hand rule, autodiff and finite differences disagree,
which one to believe.

:func:`diagnose` evaluates, in float64, the three values of every element of every
argument's gradient (random projections for large arguments): the rule's ``Jᵀv``, the
reference's autodiff ``Jᵀv``, and central differences of ``φ = ⟨f(x), v⟩`` with step
``h`` and ``h/2``. It also takes the one-sided differences ``(φ(x + h) − φ(x)) / h`` and
``(φ(x) − φ(x − h)) / h``. Their gap is ``≈ h·|φ''|`` at a smooth point, halving with
the step, and a jump that does not shrink at a kink, where the central differences (the
mean of the two slopes) stay put as the step halves. Per element:

* ``"non-smooth point"``: the one-sided differences differ by a jump that stays as the
  step halves (ReLU at 0, a tie in a max-pooling window). No value is wrong; the rule
  makes a choice there, which only a sample that pins the convention can judge;
* ``"rule wrong"``: rule ≠ autodiff ≈ finite differences;
* ``"finite differences untrustworthy"``: autodiff ≈ rule ≠ finite differences (too
  large a step for the curvature, too small a step for the rounding);
* ``"reference wrong"``: rule ≈ finite differences ≠ autodiff;
* ``"all three disagree"``;
* ``"agree"``.

An argument's verdict is its worst element's; the diagnosis's verdict is the most
serious over its arguments (in the order above, read from "rule wrong").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify.checks import (
    FINITE_DIFFERENCE_TOLERANCE,
    TOLERANCES,
    as_array,
    by_name,
    cotangent_leaf,
    name_of,
    perturbed,
    probes,
    start_float64_probing,
)

AGREE = "agree"
RULE_WRONG = "rule wrong"
FD_UNTRUSTWORTHY = "finite differences untrustworthy"
NON_SMOOTH = "non-smooth point"
REFERENCE_WRONG = "reference wrong"
ALL_DISAGREE = "all three disagree"

#: The verdicts, the most serious first.
VERDICTS = (RULE_WRONG, REFERENCE_WRONG, ALL_DISAGREE, NON_SMOOTH, FD_UNTRUSTWORTHY, AGREE)

#: At a kink the one-sided gap keeps at least this fraction when the step halves
#: (at a smooth point it halves: 0.5).
KINK_RATIO = 0.75


@dataclasses.dataclass(frozen=True)
class Element:
    """The three values at one element (or one random direction) of a gradient.

    Attributes:
      index: the element, or ``("direction", k)``.
      rule, autodiff: the hand rule's and the reference's ``Jᵀv`` there.
      central, central_half: central differences with step ``h`` and ``h/2``.
      forward, backward: the one-sided differences with step ``h``.
      tolerance: the finite-difference tolerance there.
      verdict: one of :data:`VERDICTS`.
    """

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
        return (
            f"[{where}] rule {self.rule:.6g}, autodiff {self.autodiff:.6g}, finite-diff {self.central:.6g} "
            f"(h/2: {self.central_half:.6g}; one-sided {self.backward:.6g} | {self.forward:.6g}), "
            f"tolerance {self.tolerance:.1e}: {self.verdict}"
        )


@dataclasses.dataclass(frozen=True)
class ArgumentDiagnosis:
    """One argument: its verdict and its worst elements, worst first."""

    name: str
    verdict: str
    worst: tuple[Element, ...]


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """The outcome of :func:`diagnose`; ``str()`` is a readable report."""

    op: str
    verdict: str
    arguments: tuple[ArgumentDiagnosis, ...]
    error: str = ""

    def __getitem__(self, name: str) -> ArgumentDiagnosis:
        return by_name(self.arguments, name)

    def __str__(self) -> str:
        lines = [f"{self.op}: verdict: {self.verdict}"]
        if self.error:
            lines.append(f"  error: {self.error}")
        for a in self.arguments:
            lines.append(f"  {a.name}: {a.verdict}")
            lines.extend(f"    {e}" for e in a.worst if a.verdict != AGREE)
        return "\n".join(lines)


def diagnose(
    op: Callable,
    reference: Callable,
    *args: Any,
    step: float = 1e-5,
    elementwise_max: int = 512,
    directions: int = 4,
    worst: int = 3,
    seed: int = 0,
    **settings: Any,
) -> Diagnosis:
    """Says which of the hand rule, autodiff and finite differences is wrong, per argument.

    Runs in float64 (switched on for this call only; floating leaves are cast).

    Args:
      op: the function with the hand-derived rule.
      reference: the same forward, differentiated by autodiff.
      *args: arrays or pytrees of arrays; integer leaves are held fixed.
      step: the finite-difference step ``h``.
      elementwise_max: the largest argument examined element by element; larger ones
        along ``directions`` random directions.
      directions: how many random directions for large arguments.
      worst: how many of the worst elements each argument reports.
      seed: seed of the cotangent and the directions.
      **settings: keyword arguments passed unchanged to both functions.

    Returns:
      A :class:`Diagnosis`.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, reference
    >>> from jaxcnn.verify import diagnose
    >>> diagnose(ops.relu, reference.relu, jnp.array([-1.0, 0.0, 2.0])).verdict
    'non-smooth point'
    """
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        try:
            args, v, pullback, phi = start_float64_probing(op, args, settings, rng)
            rule, auto = pullback(v), jax.vjp(lambda *a: reference(*a, **settings), *args)[1](v)
        except Exception as e:
            return Diagnosis(name_of(op), ALL_DISAGREE, (), f"{type(e).__name__}: {e}")
        phi0 = float(phi(*args))
        found = []
        for probe in probes(op, args, phi, rng, elementwise_max, directions):
            ct = [np.asarray(as_array(cotangent_leaf(c[probe.index], probe.path), probe.leaf), np.float64).reshape(-1)
                  for c in (rule, auto)]
            if probe.elementwise:
                scale = np.full(probe.leaf.size, max(1.0, np.abs(ct[1]).max(initial=0.0)))
            else:
                scale = np.maximum(1.0, np.linalg.norm(probe.directions, axis=1) * np.linalg.norm(ct[1]))
            steps = [perturbed(probe.phi_at, probe.leaf, jnp.asarray(probe.directions), h) for h in (step, step / 2)]
            rule_v, auto_v = probe.directions @ ct[0], probe.directions @ ct[1]
            elements = _judge(rule_v, auto_v, phi0, steps, step, scale, probe.indices)
            picked = tuple(e for _, e in sorted(elements, key=lambda e: -e[0])[:worst])
            found.append(ArgumentDiagnosis(probe.name, picked[0].verdict if picked else AGREE, picked))
    verdict = min((a.verdict for a in found), key=VERDICTS.index, default=AGREE)
    return Diagnosis(name_of(op), verdict, tuple(found))


def _judge(rule, auto, phi0, steps, h, scale, indices) -> list[tuple[float, Element]]:
    """(badness, element) per probe from the rule's and autodiff's values and φ at x ± h·d, x ± h/2·d.

    ``scale`` is the size of the gradient the tolerance is relative to (as in
    :func:`jaxcnn.verify.checks.compare`), per probe.
    """
    (plus, minus), (plus2, minus2) = (tuple(np.asarray(a) for a in s) for s in steps)
    central, central_half = (plus - minus) / (2 * h), (plus2 - minus2) / h
    forward, backward = (plus - phi0) / h, (phi0 - minus) / h
    gap, gap_half = np.abs(forward - backward), np.abs(plus2 - 2 * phi0 + minus2) / (h / 2)
    fd, tight = FINITE_DIFFERENCE_TOLERANCE, TOLERANCES["float64"]
    allowed = fd.atol * scale + fd.rtol * np.abs(auto)
    allowed_tight = tight.atol * scale + tight.rtol * np.abs(auto)
    rule_auto, auto_fd, rule_fd = np.abs(rule - auto), np.abs(auto - central), np.abs(rule - central)
    # a kink: a jump between the one-sided slopes that does not shrink with the step, while
    # the central differences (the mean of the two slopes) stay put; a step too large for
    # the curvature moves the central difference too
    kink = (gap_half > KINK_RATIO * gap) & (gap_half > allowed) & (np.abs(central - central_half) <= allowed)
    elements = []
    for k in range(len(rule)):
        ra, af, rf = rule_auto[k] <= allowed_tight[k], auto_fd[k] <= allowed[k], rule_fd[k] <= allowed[k]
        if ra and af:
            verdict = AGREE
        elif kink[k]:
            verdict = NON_SMOOTH
        elif af:
            verdict = RULE_WRONG
        elif ra:
            verdict = FD_UNTRUSTWORTHY
        elif rf:
            verdict = REFERENCE_WRONG
        else:
            verdict = ALL_DISAGREE
        badness = max(rule_auto[k] / allowed_tight[k], auto_fd[k] / allowed[k], rule_fd[k] / allowed[k])
        elements.append((float(badness), Element(
            indices[k], float(rule[k]), float(auto[k]), float(central[k]), float(central_half[k]),
            float(forward[k]), float(backward[k]), float(allowed[k]), verdict,
        )))
    return elements
