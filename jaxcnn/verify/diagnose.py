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
* ``"agree"``;
* ``"the rule raised"`` (or ``"the reference raised"``): the exception, in one line, is the
  diagnosis's ``explanation``;
* ``"fails only under <transform>"``: given the ``transform`` a check failed under, when
  the three agree at the sample: the rule's values are right, and the ``explanation`` says
  what the transform points to (its batching under ``vmap``, its own derivative under
  grad-of-grad, ...).

At a non-smooth point the rule's choice must still be a subgradient: per element between
the one-sided slopes, and jointly over the non-smooth elements of an argument, e.g. a tie
for a maximum: where moving them together is smooth (the tied maximum moves with them),
the rule's weights must sum to that slope (a convex combination of the one-hot routings,
not weight 1 to every maximum). A rule that fails either is "rule wrong".

An argument's verdict is its worst element's (a wrong one first); the diagnosis's verdict is the most
serious over its arguments (in the order of ``VERDICTS``, from "the rule raised").
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify._core import (Leaves, as_cotangent, central_differences, compiled_vjp, name_of,
                                 probe_directions, projection, random_like, scaled, signed)
from jaxcnn.verify._report import (AGREE, ALL_DISAGREE, FD_UNTRUSTWORTHY, FINITE_DIFFERENCE_TOLERANCE, NON_SMOOTH,
                                   ONLY_UNDER, REFERENCE_RAISED, REFERENCE_WRONG, RULE_RAISED, RULE_WRONG, TOLERANCES,
                                   VERDICTS, ArgumentDiagnosis, Diagnosis, Element)

#: At a kink the one-sided gap keeps at least this fraction when the step halves
#: (at a smooth point it halves: 0.5).
KINK_RATIO = 0.75


#: What a failure under one transform, with the rule right at the sample, points to.
EXPLANATIONS = {
    "jit": "the rule is right at the sample run eagerly, but not compiled (a value read in Python at trace "
           "time, or the compiler)",
    "vmap": "the rule is right at the sample, but its batching is wrong (an axis or a per-example quantity mixed "
            "up in fwd or bwd under vmap)",
    "grad-of-grad": "the rule is right at the sample, but its backward's own derivative is wrong (right to first "
                    "order only, or not differentiable)",
    "checkpoint": "the rule is right at the sample, but not rematerialised under jax.checkpoint (residuals "
                  "recomputed differently)",
    "sharding": "the rule is right at the sample, but not split over devices (a reduction over the batch axis "
                "kept per device)",
    "contract": "the rule's values are right at the sample, but it breaks the custom_vjp contract (a cotangent's "
                "dtype or shape, fwd = primal, vjp(0) = 0 or linearity: see the check's report)",
    "jvp": "the VJP is right at the sample; the forward-mode (JVP) rule is wrong",
    "jvp finite differences": "the VJP is right at the sample; the forward-mode (JVP) rule is wrong",
    "adjoint": "the VJP is right at the sample; the JVP is not its adjoint (⟨J ṫ, g⟩ ≠ ⟨ṫ, Jᵀ g⟩: a tangent term "
               "missing, or routed to another element than the VJP's)",
    "jvp vmap": "the VJP is right at the sample; the forward-mode (JVP) rule's batching is wrong",
    "jvp-of-grad": "the VJP is right at the sample; the JVP of its backward (forward over reverse) is wrong",
}


def explain(transform: str) -> str:
    """What a failure only under ``transform`` (``"vmap"``, ``"eager in float32"``) points to."""
    name, _, dtype = transform.partition(" in ")
    if name in EXPLANATIONS:
        return EXPLANATIONS[name] + (f", in {dtype}" if dtype else "")
    if dtype:
        return f"the rule is right at the sample in float64, but not in {dtype} (precision lost inside the rule)"
    return f"the rule is right at the sample in float64, but not under {transform}"


def diagnose(op: Callable, reference: Callable, *args: Any, step: float = 1e-5, elementwise_max: int = 512,
             directions: int = 4, worst: int = 3, seed: int = 0, transform: Optional[str] = None,
             probe: tuple = (), **settings: Any) -> Diagnosis:
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
      transform: the transform a check failed under (``"vmap"``, ``"eager in float32"``):
        where the three agree at the sample, the verdict is ``"fails only under <transform>"``
        with its explanation.
      probe: where beyond the sample, as a failing check's ``ArgumentReport.probe``:
        ``("inputs", s)`` diagnoses at the inputs that take both signs scaled by ``s``,
        ``("cotangent", c)`` with the cotangent scaled by ``c``.
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
        leaves = Leaves(op, args).cast(jnp.float64)
        if probe and probe[0] == "inputs":
            leaves = Leaves(op, leaves.rebuild(scaled(leaves.arrays, signed(leaves.arrays), probe[1])))
        c = probe[1] if probe and probe[0] == "cotangent" else 1.0

        def raised(verdict, e):
            return Diagnosis(name_of(op), verdict, (), f"{type(e).__name__}: {_first_line(e)}", probe=probe)

        try:
            out, pullback = compiled_vjp(op, leaves, settings)
            v = jax.tree_util.tree_map(lambda w: w * c, random_like(rng, out))
            rule = pullback(v)
            phi = projection(leaves.bind(op, settings), v)
            probes = list(probe_directions(leaves.arrays, elementwise_max, directions, rng))
            values, phi0 = central_differences(phi, leaves.arrays, [u for u, *_ in probes], [step, step / 2])
        except Exception as e:  # noqa: BLE001 (the diagnosis of a rule that raises)
            return raised(RULE_RAISED, e)
        try:
            auto = compiled_vjp(reference, leaves, settings)[1](v)
        except Exception as e:  # noqa: BLE001
            return raised(REFERENCE_RAISED, e)
        found = []
        for k, (name, x, r, a, (u, index, elementwise), at) in enumerate(zip(
                leaves.names, leaves.arrays, rule, auto, probes, values)):
            r, a = (np.asarray(as_cotangent(ct, x), np.float64).reshape(-1) for ct in (r, a))
            if elementwise:
                scale = np.full(x.size, max(1.0, np.abs(a).max(initial=0.0)))
            else:
                scale = np.maximum(1.0, np.linalg.norm(u, axis=1) * np.linalg.norm(a))
            elements = _judge(u @ r, u @ a, float(phi0), at, step, scale, index)
            if elementwise:
                elements += _jointly(phi, leaves.arrays, k, r, a, elements, step, scale[0])
            picked = tuple(e for _, e in sorted(elements, key=lambda e: (e[1].verdict != RULE_WRONG, -e[0]))[:worst])
            found.append(ArgumentDiagnosis(name, picked[0].verdict if picked else AGREE, picked))
    verdict = min((a.verdict for a in found), key=VERDICTS.index, default=AGREE)
    if verdict == AGREE and transform:
        return Diagnosis(name_of(op), f"{ONLY_UNDER} {transform}", tuple(found), explanation=explain(transform),
                         probe=probe)
    return Diagnosis(name_of(op), verdict, tuple(found), probe=probe)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


def _jointly(phi, arrays, k, rule, auto, elements, h, scale) -> list[tuple[float, Element]]:
    """The non-smooth elements of leaf ``k`` judged together: moved all at once along
    ``u`` (1 on each), where ``φ`` is smooth along ``u`` (a tie whose maximum moves with
    them), the rule's ``⟨u, Jᵀv⟩`` must be that slope; one element ``("jointly", n)``."""
    kinks = [e.index for _, e in elements if e.verdict == NON_SMOOTH]
    if len(kinks) < 2:
        return []
    x = arrays[k]
    u = np.zeros(x.shape)
    for index in kinks:
        u[index] = 1.0
    u = u.reshape(1, -1)
    along = lambda y: phi(*arrays[:k], y, *arrays[k + 1:])  # noqa: E731
    (((plus, minus), (plus2, minus2)),), phi0 = central_differences(along, [x], [u], [h, h / 2])
    plus, minus, plus2, minus2 = (float(p[0]) for p in (plus, minus, plus2, minus2))
    central, central_half = (plus - minus) / (2 * h), (plus2 - minus2) / h
    forward, backward = (plus - phi0) / h, (phi0 - minus) / h
    joint_rule, joint_auto = float(u[0] @ rule), float(u[0] @ auto)
    fd = FINITE_DIFFERENCE_TOLERANCE
    allowed = fd.atol * max(1.0, scale * len(kinks)) + fd.rtol * abs(central)
    gap, gap_half = abs(forward - backward), abs(plus2 - 2 * phi0 + minus2) / (h / 2)
    if gap_half > KINK_RATIO * gap and gap_half > allowed:
        return []  # not smooth along u either (ReLU's zeros): no joint constraint
    bad = abs(joint_rule - central) / allowed
    verdict = RULE_WRONG if bad > 1 else NON_SMOOTH
    return [(float(bad), Element(("jointly", len(kinks)), joint_rule, joint_auto, central, central_half, forward,
                                 backward, allowed, verdict))]


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
    # at a kink the rule's choice lies between the one-sided slopes (up to their O(h) error)
    forward_half, backward_half = (plus2 - phi0) / (h / 2), (phi0 - minus2) / (h / 2)
    slack = allowed + 2 * (np.abs(forward - forward_half) + np.abs(backward - backward_half))
    between = (rule >= np.minimum(forward, backward) - slack) & (rule <= np.maximum(forward, backward) + slack)
    elements = []
    for k in range(len(rule)):
        ra, af, rf = rule_auto[k] <= allowed_tight[k], auto_fd[k] <= allowed[k], rule_fd[k] <= allowed[k]
        verdict = (AGREE if ra and af else (NON_SMOOTH if between[k] else RULE_WRONG) if kink[k] else
                   RULE_WRONG if af else FD_UNTRUSTWORTHY if ra else REFERENCE_WRONG if rf else ALL_DISAGREE)
        badness = max(rule_auto[k] / allowed_tight[k], auto_fd[k] / allowed[k], rule_fd[k] / allowed[k])
        elements.append((float(badness), Element(
            indices[k], float(rule[k]), float(auto[k]), float(central[k]), float(central_half[k]),
            float(forward[k]), float(backward[k]), float(allowed[k]), verdict)))
    return elements
