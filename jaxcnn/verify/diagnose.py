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
serious over its arguments (in the order of ``VERDICTS``, from "rule wrong").
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify._core import (Leaves, as_cotangent, central_differences, compiled_vjp, name_of,
                                 probe_directions, projection, random_like)
from jaxcnn.verify._report import (AGREE, ALL_DISAGREE, FD_UNTRUSTWORTHY, FINITE_DIFFERENCE_TOLERANCE, NON_SMOOTH,
                                   REFERENCE_WRONG, RULE_WRONG, TOLERANCES, VERDICTS, ArgumentDiagnosis, Diagnosis,
                                   Element)

#: At a kink the one-sided gap keeps at least this fraction when the step halves
#: (at a smooth point it halves: 0.5).
KINK_RATIO = 0.75


def diagnose(op: Callable, reference: Callable, *args: Any, step: float = 1e-5, elementwise_max: int = 512,
             directions: int = 4, worst: int = 3, seed: int = 0, **settings: Any) -> Diagnosis:
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
      A :class:`~jaxcnn.verify.Diagnosis`.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, reference
    >>> from jaxcnn.verify import diagnose
    >>> diagnose(ops.relu, reference.relu, jnp.array([-1.0, 0.0, 2.0])).verdict
    'non-smooth point'
    """
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        try:
            leaves = Leaves(op, args).cast(jnp.float64)
            out, pullback = compiled_vjp(op, leaves, settings)
            v = random_like(rng, out)
            rule, auto = pullback(v), compiled_vjp(reference, leaves, settings)[1](v)
            probes = list(probe_directions(leaves.arrays, elementwise_max, directions, rng))
            phi, phi0 = central_differences(projection(leaves.bind(op, settings), v), leaves.arrays,
                                            [u for u, *_ in probes], [step, step / 2])
        except Exception as e:
            return Diagnosis(name_of(op), ALL_DISAGREE, (), f"{type(e).__name__}: {str(e).strip().splitlines()[0]}")
        found = []
        for name, x, r, a, (u, index, elementwise), values in zip(leaves.names, leaves.arrays, rule, auto, probes,
                                                                    phi):
            r, a = (np.asarray(as_cotangent(c, x), np.float64).reshape(-1) for c in (r, a))
            if elementwise:
                scale = np.full(x.size, max(1.0, np.abs(a).max(initial=0.0)))
            else:
                scale = np.maximum(1.0, np.linalg.norm(u, axis=1) * np.linalg.norm(a))
            elements = _judge(u @ r, u @ a, float(phi0), values, step, scale, index)
            picked = tuple(e for _, e in sorted(elements, key=lambda e: -e[0])[:worst])
            found.append(ArgumentDiagnosis(name, picked[0].verdict if picked else AGREE, picked))
    verdict = min((a.verdict for a in found), key=VERDICTS.index, default=AGREE)
    return Diagnosis(name_of(op), verdict, tuple(found))


def _judge(rule, auto, phi0, values, h, scale, indices) -> list[tuple[float, Element]]:
    """(badness, element) per probe from the rule's and autodiff's values and ``values``,
    φ at x ± h·d and x ± h/2·d; ``scale`` is the size of the gradient each tolerance is
    relative to (as in :func:`~jaxcnn.verify._report.compare`)."""
    (plus, minus), (plus2, minus2) = values
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
        verdict = (AGREE if ra and af else NON_SMOOTH if kink[k] else RULE_WRONG if af else
                   FD_UNTRUSTWORTHY if ra else REFERENCE_WRONG if rf else ALL_DISAGREE)
        badness = max(rule_auto[k] / allowed_tight[k], auto_fd[k] / allowed[k], rule_fd[k] / allowed[k])
        elements.append((float(badness), Element(
            indices[k], float(rule[k]), float(auto[k]), float(central[k]), float(central_half[k]),
            float(forward[k]), float(backward[k]), float(allowed[k]), verdict)))
    return elements
