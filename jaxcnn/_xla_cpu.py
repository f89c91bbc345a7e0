"""The XLA:CPU workarounds, in one place: exact rewrites that XLA:CPU compiles to faster code.

None of them changes a value beyond the order of a sum (``tanh_rational`` is XLA's own float32
approximation written out); each one exists because of a measured cost, kept with the commit it
was measured at in ``docs/performance.md`` (the section named in each docstring). No op applies
one behind the caller's back: the policies pick them from an explicit platform,
:func:`resolve_platform` (convolution's: :mod:`jaxcnn._xla_cpu_conv`; tanh's: :func:`tanh_method`).

* :func:`canonical_numbers`, :func:`correlate_over_batch`, :func:`has_slow_loop_convolution`:
  convolutions in XLA:CPU's canonical form, which it also runs fast inside loop bodies.
* :func:`contract_leading`: a matrix product that lets XLA:CPU transpose the narrow operand.
* :func:`summed_in_batch_chunks`: a sum over the batch, a cache-sized chunk at a time.
* :func:`materialized`: a long fused sum computed once into a buffer of its own.
* :func:`tanh_rational`: float32 ``tanh`` that vectorises inside any fusion.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax


def resolve_platform(platform: Optional[str] = None, op: str = "jaxcnn") -> str:
    """The platform the ops tune for: ``platform`` if given, else ``jax.default_backend()``.

    The one place the default backend is read. The public ops call it once per call, at trace
    time, where their ``platform=None`` (the default) is resolved (:func:`jaxcnn.ops.conv`,
    :func:`jaxcnn.ops.conv_transpose`, :func:`jaxcnn.ops.im2col`, :func:`jaxcnn.ops.tanh`, and the
    layers that wrap them): pass ``platform="cpu"`` to trace XLA:CPU's program in any process,
    or another name (``"gpu"``) for the plain one."""
    if platform is None:
        return jax.default_backend()
    if not isinstance(platform, str) or not platform:
        raise TypeError(f"{op}: `platform` must be None or a platform name such as 'cpu' or 'gpu', "
                        f"got {platform!r}.")
    return platform


def on_cpu() -> bool:
    """Whether the resolved default platform is XLA:CPU (for the training loop's choice of scan)."""
    return resolve_platform() == "cpu"


# --------------------------------------------------------------------------- canonical convolutions


def canonical_numbers(n: int) -> lax.ConvDimensionNumbers:
    """x ``(N, *spatial, C_in)``, w ``(*window, C_in, C_out)``, y ``(N, *spatial, C_out)``:
    XLA:CPU's canonical form, which it runs as one library convolution at the top level of
    a program and inside loop bodies alike (performance.md, "Canonical convolution form")."""
    spatial = tuple(range(1, n + 1))
    return lax.ConvDimensionNumbers((0, n + 1, *spatial), (n + 1, n, *range(n)), (0, n + 1, *spatial))


def correlate_over_batch(a, b, window_strides, pads, rhs_dilation):
    """``out[k, p, q] = Σ_{n,o} a_pad[n, o·d + k·s, p] b[n, o, q]`` over the batch and every
    position ``o`` (``s`` = ``window_strides``, ``d`` = ``rhs_dilation``), laid out
    ``(*window, C_a, C_b)``: a weight gradient, ``a`` correlated with ``b`` as the kernel.

    ``C_a`` plays the batch, ``N`` the contracted feature and ``b`` the kernel
    ``(*out, N, C_b)``, moved there with explicit transposes so that the convolution is in
    the canonical form; read through swapped dimension numbers instead, XLA:CPU runs it far
    slower inside a loop body (performance.md, "Canonical convolution form"). XLA:CPU's policy
    also sums a long batch in chunks (:func:`summed_in_batch_chunks`, :mod:`jaxcnn._xla_cpu_conv`)."""
    n = a.ndim - 2
    spatial = tuple(range(1, n + 1))
    out = lax.conv_general_dilated(
        jnp.transpose(a, (n + 1, *spatial, 0)), jnp.transpose(b, (*spatial, 0, n + 1)), window_strides, pads,
        rhs_dilation=rhs_dilation, dimension_numbers=canonical_numbers(n),
    )  # (C_a, *window, C_b)
    return jnp.transpose(out, (*spatial, 0, n + 1))


def summed_in_batch_chunks(fn, chunk: int, *arrays):
    """``fn(*arrays)`` for a ``fn`` that sums over the batch (the leading axis) and gives 0 for
    zero samples, computed as the sum of ``fn`` over chunks of ``chunk`` samples in a
    ``lax.scan`` (zero samples pad the last chunk): one chunk's operands stay in the cache.
    ``fn`` may return a pytree (``None`` leaves stay ``None``); ``chunk = 0`` means no chunks."""
    n = arrays[0].shape[0]
    if not chunk or chunk >= n:
        return fn(*arrays)
    chunks = -(-n // chunk)
    parts = [lax.pad(a, jnp.zeros((), a.dtype), [(0, chunks * chunk - n, 0)] + [(0, 0, 0)] * (a.ndim - 1))
             .reshape(chunks, chunk, *a.shape[1:]) for a in arrays]
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *(p[0] for p in parts)))
    total, _ = lax.scan(lambda total, xs: (jax.tree_util.tree_map(jnp.add, total, fn(*xs)), None), zeros, parts)
    return total


def canonical_convolution(params) -> bool:
    """Whether a ``conv_general_dilated`` equation's ``params`` are in the canonical form."""
    n = len(params["dimension_numbers"].lhs_spec) - 2
    return (params["dimension_numbers"] == canonical_numbers(n)
            and params["feature_group_count"] == params["batch_group_count"] == 1)


def has_slow_loop_convolution(jaxpr) -> bool:
    """Whether ``jaxpr``, or any jaxpr nested in it (custom rules, jit, cond), has a
    convolution that XLA:CPU runs slowly inside a loop body: one not in its canonical
    form (batch first and channels last, kernel ``(*window, in, out)``, no groups), as
    autodiff's transposed convolutions are. XLA reorders such a convolution's operands
    with copies at the top level of a program, not in a loop body (performance.md,
    "Scan vs steps")."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated" and not canonical_convolution(eqn.params):
            return True
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(sub, "eqns") and has_slow_loop_convolution(sub):
                    return True
    return False


# --------------------------------------------------------------------------- matrix products and sums


def contract_leading(a, b):
    """``aᵀ b`` over every axis but the last (batch and positions), computed as ``(bᵀ a)ᵀ``:
    with the narrow δ as ``b``, XLA:CPU transposes δ for its matrix kernel rather than the
    wide column matrix ``a`` (performance.md, "Transpose the narrow operand")."""
    lead = tuple(range(a.ndim - 1))
    return lax.dot_general(b, a, ((lead, lead), ((), ()))).T


#: col2im sums of at least this many terms per element are materialised (:func:`materialized`).
MATERIALIZE_TERMS = 9


def materializes(geom, platform: str) -> bool:
    """Whether col2im's overlap-add for ``geom`` is :func:`materialized` on ``platform``: on
    XLA:CPU, from :data:`MATERIALIZE_TERMS` windows per element."""
    terms = math.prod(-(-k // s) for k, s in zip(geom.window, geom.stride))  # windows per element
    return platform == "cpu" and terms >= MATERIALIZE_TERMS


def materialized(a):
    """``a`` itself, computed into a buffer of its own on XLA:CPU.

    col2im is a sum of up to ``Π ⌈k / s⌉`` terms per element. A consumer that reads each
    element several times — a tiled pooling backward, which spreads each δ over its
    window — gets that sum fused into it by XLA:CPU and recomputed per read.
    ``lax.optimization_barrier`` is dropped by XLA:CPU before fusion, but a matrix product
    is a fusion boundary: ``a``, four values to a row, times the 4 × 4 identity — 8 flops
    per element, exact for finite values (a non-finite entry spreads NaN to the other
    three of its row). Worth it only for long sums (:func:`materializes`; performance.md,
    "col2im materialisation"); sizes not divisible by 4 get ``a`` unchanged."""
    if a.size % 4:
        return a
    return (a.reshape(-1, 4) @ jnp.eye(4, dtype=a.dtype)).reshape(a.shape)


# --------------------------------------------------------------------------- tanh

# XLA's float32 tanh (llvm_ir::EmitFastTanh, Eigen's coefficients): an odd rational 13/6 in
# z = clip(x, ±c), p(z²) and q(z²) highest power first. c is XLA's own clamp, the largest
# input whose rational rounds to at most 1 (with or without fused multiply-adds); beyond
# it (Eigen's old ±9) it exceeds 1 by an ulp and 1 − f² turns negative.
TANH_CLAMP = 7.99881172180175781
TANH_NUMERATOR = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
                  1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
TANH_DENOMINATOR = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def tanh_rational(x):
    """float32 ``tanh`` on the CPU: the rational approximation XLA itself uses, written out.

    ``tanh(x) ≈ z · p(z²) / q(z²)`` with ``z = clip(x, ±7.9988…)`` (``jnp.polyval``: Horner's
    rule), so that ``|tanh x| ≤ 1`` and ``1 − f² ≥ 0`` for every float32 (saturating at ±1).
    XLA:CPU computes ``jnp.tanh`` fast as a kernel of its own but far slower inside a fused
    loop (a conv's ``+ b`` fused with the tanh after it); the same arithmetic spelled out in
    multiplies, adds and one divide vectorises in any fusion, and ending in the divide it
    stays one buffer rather than ``p / q`` plus a product recomputed in every consumer
    (performance.md, "tanh's rational"). XLA's ``tanh(x) = x`` branch for ``|x| < 4·10⁻⁴``
    is left out (a select splits the fusion), so ``z · p`` underflows to ``±0`` for
    ``|x| < 2.4·10⁻³⁶``. Otherwise within 6.5 ulp of the exact ``tanh`` for every float32
    (``jnp.tanh``: 4.9); ``±0``, ``±inf`` and NaN map as ``tanh`` does."""
    z = jnp.clip(x, -TANH_CLAMP, TANH_CLAMP)
    z2 = z * z
    p, q = (jnp.polyval(jnp.asarray(c, x.dtype), z2) for c in (TANH_NUMERATOR, TANH_DENOMINATOR))
    return (z * p) / q


#: The ``method`` names of :func:`jaxcnn.ops.tanh`: ``jnp.tanh`` and :func:`tanh_rational`.
TANH_METHODS = ("auto", "jnp", "rational")


def tanh_method(dtype, platform: str) -> str:
    """``method="auto"`` of :func:`jaxcnn.ops.tanh`: the rational for float32 on XLA:CPU
    (performance.md, "tanh's rational"), ``jnp.tanh`` elsewhere."""
    return "rational" if dtype == jnp.float32 and platform == "cpu" else "jnp"
