"""Gradient verification: prove a hand-derived VJP right.

* :func:`check_vjp`: the rule against ``jax.vjp`` of an autodiff reference.
* :func:`check_numerical`: the rule against float64 central finite differences.

Both return a :class:`CheckResult` that names the worst element of every argument.
"""

from jaxcnn.verify.checks import (
    FINITE_DIFFERENCE_TOLERANCE,
    TOLERANCES,
    ArgumentReport,
    CheckResult,
    GradientMismatch,
    Tolerance,
    check_numerical,
    check_vjp,
)

__all__ = [
    "FINITE_DIFFERENCE_TOLERANCE",
    "TOLERANCES",
    "ArgumentReport",
    "CheckResult",
    "GradientMismatch",
    "Tolerance",
    "check_numerical",
    "check_vjp",
]
