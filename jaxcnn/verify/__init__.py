"""Gradient verification: prove a hand-derived VJP right.

* :func:`check_vjp`: the rule against ``jax.vjp`` of an autodiff reference.
* :func:`check_numerical`: the rule against float64 central finite differences.
* :func:`check_contract`: the ``custom_vjp`` contract (fwd = primal, one cotangent per
  argument with its shape and dtype, ``vjp(0) = 0``, linear in the cotangent).
* :func:`check_transform`: :func:`check_vjp` under ``jit``, ``vmap`` (per-example
  gradients), grad-of-grad (Hessian-vector products), ``jax.checkpoint`` or sharding.
* :func:`diagnose`: when they disagree, the verdict: rule wrong, finite differences
  untrustworthy, or a non-smooth point.

* :func:`check_jvp`, :func:`check_jvp_numerical`: forward mode (``custom_jvp`` rules).

The checks return a :class:`CheckResult` that names the worst element of every argument.
Your own ops: a :class:`Registry` (``registry.register(name, op, reference, samples)``)
is certified by ``jaxcnn verify --module PKG.MODULE`` or, one test per check, by
:func:`pytest_cases`.
``jaxcnn verify`` runs them over every op of :mod:`jaxcnn.ops`
(:mod:`jaxcnn.verify.registry`, :mod:`jaxcnn.verify.suite`) and, with ``--mutants``,
over deliberately wrong rules (:mod:`jaxcnn.verify.mutants`).
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
from jaxcnn.verify.contract import check_contract
from jaxcnn.verify.diagnose import VERDICTS, Diagnosis, diagnose
from jaxcnn.verify.forward import check_jvp, check_jvp_numerical
from jaxcnn.verify.registry import RULES, Registry, Sample, away_from_zero, distinct, normal, rule_of
from jaxcnn.verify.suite import pytest_cases
from jaxcnn.verify.transforms import TRANSFORMS, check_transform

__all__ = [
    "FINITE_DIFFERENCE_TOLERANCE",
    "RULES",
    "TOLERANCES",
    "TRANSFORMS",
    "VERDICTS",
    "ArgumentReport",
    "CheckResult",
    "Diagnosis",
    "GradientMismatch",
    "Registry",
    "Sample",
    "Tolerance",
    "away_from_zero",
    "check_contract",
    "check_jvp",
    "check_jvp_numerical",
    "check_numerical",
    "check_transform",
    "check_vjp",
    "diagnose",
    "distinct",
    "normal",
    "pytest_cases",
    "rule_of",
]
