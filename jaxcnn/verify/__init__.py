"""Gradient verification: prove a hand-derived derivative rule right.

* :func:`check_vjp`: the rule against ``jax.vjp`` of an autodiff reference.
* :func:`check_numerical`: the rule against float64 central finite differences.
* :func:`check_contract`: the ``custom_vjp`` contract (fwd = primal, one cotangent per
  argument with its shape and dtype, ``vjp(0) = 0``, linear in the cotangent).
* :func:`check_jvp`: forward mode (a hand JVP) against the reference's.
* :func:`check_adjoint`: a function's forward mode against its reverse mode,
  ``⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩`` (the dot-product test: a hand JVP against a hand VJP).
* :func:`check_transform`: any of these by name, or :func:`check_vjp` under ``jit``,
  ``vmap`` (per-example gradients), grad-of-grad, ``jax.checkpoint`` or sharding, and
  forward mode under ``vmap`` and of a gradient (:data:`TRANSFORMS`).
* :func:`diagnose`: when they disagree, the verdict: rule wrong, finite differences
  untrustworthy, or a non-smooth point.
* :func:`audit`: every ``custom_vjp``/``custom_jvp`` rule inside any JAX program (a Flax or
  Equinox train step), checked at the operands it receives there (docs/auditing.md).

The checks return a :class:`CheckResult` that names the worst element of every argument
(``.assert_ok()`` raises :class:`GradientMismatch`). Your own ops: a :class:`Registry`
(``registry.register(name, op, reference, samples)``, each a :class:`Sample`) is certified
by ``jaxcnn verify --module PKG.MODULE`` or, one test per check, by
:meth:`Registry.pytest_cases`. ``jaxcnn verify`` certifies every op of :mod:`jaxcnn.ops`
the same way (and, with ``--mutants``, catches deliberately wrong rules).
"""

from jaxcnn.verify._nans import locate_nonfinite as find_nonfinite
from jaxcnn.verify._report import CheckResult, Diagnosis, GradientMismatch
from jaxcnn.verify.checks import TRANSFORMS, check_contract, check_jvp, check_numerical, check_transform, check_vjp
from jaxcnn.verify.diagnose import diagnose
from jaxcnn.verify.forward import check_adjoint
from jaxcnn.verify.audit import AuditReport, Finding, audit
from jaxcnn.verify.registry import Registry, Sample

__all__ = [
    "TRANSFORMS",
    "AuditReport",
    "CheckResult",
    "Diagnosis",
    "Finding",
    "GradientMismatch",
    "Registry",
    "Sample",
    "audit",
    "check_adjoint",
    "check_contract",
    "check_jvp",
    "check_numerical",
    "check_transform",
    "check_vjp",
    "diagnose",
    "find_nonfinite",
]
