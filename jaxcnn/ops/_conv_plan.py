"""What ``method=`` means: a plan naming one exact formula per product of convolution.

The formulas are the rows of one table, :data:`jaxcnn.ops._conv.FORMULAS` (``"xla"``, the
lecture's three convolutions, first). ``method`` is one of

* a formula's name: every product by that formula, as written, on every platform (so
  ``method="xla"`` is the reproducible reference route: no platform rewrite);
* a :class:`Plan` (public as ``jaxcnn.ops.ConvPlan``): each product named, with the optional tunings (``weight_chunk``,
  ``materialize_input``) spelled out;
* a policy, any callable ``policy(problem: Problem) -> Plan`` (``jaxcnn.ops.ConvProblem``) (the geometry, shapes, dtype
  and platform of the call at hand);
* ``"auto"`` (default), the policy :func:`jaxcnn._xla_cpu_conv.auto_policy`: XLA's
  convolutions off the CPU, the shape-tuned plan on XLA:CPU, never Winograd (docs/performance.md,
  "The convolution family").

The platform a policy sees is resolved once per call, by :func:`jaxcnn._xla_cpu.resolve_platform`
(an explicit ``platform=`` wins over ``jax.default_backend()``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from jaxcnn import _shapes


class Plan(NamedTuple):
    """Which formula of the table computes each of the three products, and how it is tuned.

    ``Plan("rows", "rows", "im2col")``: ``y`` and ``dW`` by row blocks, ``dx`` by col2im (im2col's
    input gradient). The tunings change no value beyond the order of a sum: ``weight_chunk = c > 0``
    sums ``dW`` over the batch ``c`` samples at a time (a ``lax.scan``, zero samples padding the last
    chunk); ``materialize_input`` computes col2im's ``dx`` (that of ``"im2col"``, ``"taps"`` and
    ``"rows"``) into a buffer of its own (:func:`jaxcnn._xla_cpu.materialized`).
    """

    forward: str  # y
    weight: str  # dW
    input: str  # dx
    weight_chunk: int = 0
    materialize_input: bool = False

    @classmethod
    def of(cls, name: str) -> "Plan":
        """Every product by the formula ``name``, untuned."""
        return cls(name, name, name)


class Problem(NamedTuple):
    """What a policy is told about one convolution (for :func:`jaxcnn.ops.conv_transpose`: about
    the convolution it transposes, whose input has the transposed convolution's output shape)."""

    geometry: _shapes.Geometry  # window, stride, dilation, resolved pads, output spatial shape
    x_shape: tuple[int, ...]  # (N, *spatial, C_in)
    w_shape: tuple[int, ...]  # (*window, C_in / groups, C_out)
    groups: int
    dtype: Any  # a NumPy dtype
    platform: str  # "cpu", "gpu", "tpu", ...


# Backwards-compatible names (jaxcnn/verify/registry.py, experiments/bench.py): the formulas that
# apply to every geometry, and those that apply to some; the table's own list is
# jaxcnn.ops._conv.METHODS.
METHODS = ("auto", "xla", "im2col", "taps", "rows")
GEOMETRY_METHODS = ("winograd",)


def auto_plan(geom: _shapes.Geometry, in_shape, c_in: int, c_out: int, backend=None, *, groups: int = 1) -> Plan:
    """The plan ``method="auto"`` gives a float32 convolution of one sample on ``backend``
    (the resolved default platform if None); kept for the experiments that print it."""
    import numpy as np

    from jaxcnn import _xla_cpu, _xla_cpu_conv

    problem = Problem(geom, (1, *in_shape, c_in), (*geom.window, c_in // groups, c_out), groups,
                      np.dtype("float32"), _xla_cpu.resolve_platform(backend))
    return _xla_cpu_conv.auto_policy(problem)
