"""One rule, checked under every transform a user may wrap it in.

:func:`check_transform` compares the hand VJP of ``op`` with autodiff of ``reference``
(the same numbers as :func:`~jaxcnn.verify.check_vjp`) after a transform:

* ``"eager"``: no transform; ``"jit"``: both functions under ``jax.jit``;
* ``"checkpoint"``: the op under ``jax.checkpoint`` (rematerialised, in one compiled
  program) against the plain reference;
* ``"vmap"``: batched arguments (``batched``, e.g. the input) stacked over a new axis,
  the others (weights) unbatched and shared: the per-example gradients of *every*
  argument, from ``jax.vmap`` of the op's VJP, against a Python loop of the reference's
  VJP over the examples;
* ``"grad-of-grad"``: ``x ↦ ∇ₓ⟨f(x), v⟩`` for a fixed random ``v`` is compared first
  (its output is the gradient), then its own VJP, a Hessian-vector product, by
  reverse-over-reverse differentiation of the op's backward rule against autodiff of the
  reference. For piecewise-linear ops (ReLU, max-pooling) and linear ones the Hessian is
  zero away from the kinks, so the check pins that the rule is differentiable and gives
  exactly that zero; at a kink second derivatives are ill-defined and none is compared;
* ``"sharding"``: the batched arguments tiled to a multiple of the device count along
  their leading (batch) axis and split over a ``jax.sharding.Mesh`` of all devices, the
  others replicated; the jitted op's VJP on the sharded arrays against the reference
  on a single device (data parallelism);
* ``"contract"``: :func:`~jaxcnn.verify.check_contract` (no reference);
* ``"finite differences"``: :func:`~jaxcnn.verify.check_numerical` (no reference);
* ``"jvp"``, ``"jvp finite differences"``: forward mode, for ``custom_jvp`` rules and
  plain autodiff (:mod:`jaxcnn.verify.forward`).

Apart from ``"eager"`` (and the op's own calls), each side of a comparison runs as a
program compiled whole: the numbers are the same, and one program replaces the many
that eager execution compiles one primitive at a time.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.verify.checks import (
    CheckResult,
    check_numerical,
    check_vjp,
    compare_pullbacks,
    compiled_vjp,
    dtype_name,
    expected_vjp,
    float_leaves,
    name_of,
    random_like,
    tolerance_for,
)
from jaxcnn.verify.contract import check_contract
from jaxcnn.verify.forward import check_jvp, check_jvp_numerical

#: Every transform :func:`check_transform` knows, in the order reports list them.
TRANSFORMS = ("contract", "eager", "jit", "vmap", "grad-of-grad", "checkpoint", "sharding", "finite differences",
              "jvp", "jvp finite differences")

#: The transforms that need forward mode, which a ``custom_vjp`` does not have.
FORWARD_MODE = ("jvp", "jvp finite differences")

#: The examples of a vmap check are the sample scaled by these factors (positive, so a
#: sample drawn away from kinks and ties stays away from them).
VMAP_SCALES = (1.0, 0.75, 1.25)


def check_transform(
    transform: str,
    op: Callable,
    reference: Callable,
    *args: Any,
    batched: Sequence[int] = (0,),
    seed: int = 0,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    **settings: Any,
) -> CheckResult:
    """Checks ``op``'s hand VJP against autodiff of ``reference`` under ``transform``.

    Args:
      transform: one of :data:`TRANSFORMS`.
      op: the function with the hand-derived rule, called as ``op(*args, **settings)``.
      reference: the same forward, differentiated by autodiff.
      *args: arrays or pytrees of arrays.
      batched: for ``"vmap"`` and ``"sharding"``: the positions of the per-example
        arguments (inputs, labels); the others (weights, settings arrays) are shared.
      seed: seed of the random cotangents.
      rtol, atol: override the default tolerances.
      **settings: keyword arguments passed unchanged to both functions.

    Returns:
      A :class:`~jaxcnn.verify.CheckResult`.

    Raises:
      ValueError: ``transform`` is unknown, or ``"sharding"`` is asked for with a single
        device or arguments that cannot be split along their batch axis.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops, reference, verify
    >>> x = jnp.array([[0.5, -1.0], [2.0, 0.3]])
    >>> w = jnp.array([[1.0, 0.5], [-0.2, 0.7], [0.1, 0.1]])
    >>> verify.check_transform("vmap", ops.dense, reference.dense, x, w).ok
    True
    """
    tol = dict(seed=seed, rtol=rtol, atol=atol)
    if transform == "contract":
        return check_contract(op, *args, **tol, **settings)
    if transform == "finite differences":
        return check_numerical(op, *args, **tol, **settings)
    if transform == "eager":
        return check_vjp(op, reference, *args, **tol, **settings)
    if transform in ("jit", "checkpoint"):  # against the same autodiff as "eager", computed once (expected_vjp)
        # checkpoint: rematerialised inside one compiled program (eager execution is "eager"'s)
        rule = _bound(op, settings, jax.jit if transform == "jit" else lambda f: jax.jit(jax.checkpoint(f)))
        dtype = dtype_name(args)
        return compare_pullbacks(name_of(op), f"autodiff of {name_of(reference)}", float_leaves(op, args),
                                 tolerance_for(dtype, rtol, atol), dtype, rule=lambda: jax.vjp(rule, *args),
                                 expected=lambda: expected_vjp(reference, args, settings), seed=seed)
    if transform == "grad-of-grad":
        return check_vjp(gradient_of(op, args, settings), gradient_of(reference, args, settings), *args, **tol)
    if transform == "vmap":
        return _check_vmap(op, reference, args, tuple(batched), settings, seed, rtol, atol)
    if transform == "sharding":
        return _check_sharded(op, reference, args, tuple(batched), settings, seed, rtol, atol)
    if transform == "jvp":
        return check_jvp(op, reference, *args, **tol, **settings)
    if transform == "jvp finite differences":
        return check_jvp_numerical(op, *args, **tol, **settings)
    raise ValueError(f"check_transform: unknown `transform` {transform!r}; use one of {', '.join(TRANSFORMS)}.")


def _bound(fn: Callable, settings: dict, transform: Callable = lambda f: f) -> Callable:
    """``transform(fn)`` with ``settings`` bound, keeping fn's name and signature for reports."""
    inner = transform(functools.partial(fn, **settings))

    @functools.wraps(fn)
    def call(*args):
        return inner(*args)

    return call


def _is_float_arg(arg: Any) -> bool:
    return all(jnp.issubdtype(jnp.result_type(l), jnp.inexact) for l in jax.tree_util.tree_leaves(arg))


def gradient_of(fn: Callable, args: Sequence[Any], settings: dict, seed: int = 1) -> Callable:
    """``args ↦ ∇⟨fn(*args), v⟩`` over the floating arguments, for a fixed random ``v``.

    Its VJP is a Hessian-vector product. ``v`` depends only on ``seed`` and the output's
    shape, so the op and its reference get the same one.
    """
    v = random_like(np.random.default_rng(seed), jax.eval_shape(functools.partial(fn, **settings), *args))
    argnums = tuple(i for i, a in enumerate(args) if _is_float_arg(a))

    def scalar(*a):
        out = jax.tree_util.tree_leaves(fn(*a, **settings))
        return sum(jnp.vdot(o, w) for o, w in zip(out, jax.tree_util.tree_leaves(v)))

    # Compiled whole: the Hessian-vector product is the same under jit, and the eager
    # execution of the rule is the "eager" transform's to check.
    compiled = jax.jit(jax.grad(scalar, argnums=argnums))

    @functools.wraps(fn)
    def gradient(*a):
        return compiled(*a)

    return gradient


# --------------------------------------------------------------------------- vmap


def _scaled(tree: Any, factor: float) -> Any:
    """Floating leaves times ``factor`` (integer leaves, e.g. labels, unchanged)."""
    return jax.tree_util.tree_map(lambda l: l * jnp.asarray(factor, l.dtype) if _is_float_arg(l) else l, tree)


def _stack(trees: Sequence[Any]) -> Any:
    """Leaf-wise stack over a new leading axis (on the host, so integer cotangents stack too)."""
    return jax.tree_util.tree_map(lambda *l: np.stack([np.asarray(x) for x in l]), *trees)


def _without_float0(cotangents: Any) -> Any:
    """Cotangents with the integer arguments' symbolic zeros dropped (they cannot be vmapped)."""
    return jax.tree_util.tree_map(lambda c: None if c.dtype == jax.dtypes.float0 else c, cotangents)


def _replace(args: Sequence[Any], positions: Iterable[int], values: Iterable[Any]) -> tuple:
    full = list(args)
    for i, value in zip(positions, values):
        full[i] = value
    return tuple(full)


def _check_vmap(op, reference, args, batched, settings, seed, rtol, atol) -> CheckResult:
    examples = [_replace(args, batched, (_scaled(args[i], c) for i in batched)) for c in VMAP_SCALES]
    stacked = tuple(_stack([e[i] for e in examples]) for i in batched)

    def pullback_at(fn, values, v):
        return _without_float0(jax.vjp(_bound(fn, settings), *_replace(args, batched, values))[1](v))

    # Each side compiled whole (one program per side and role, the same for every
    # example and cotangent); eager execution is the "eager" transform's to check.
    def rule():
        out = jax.jit(jax.vmap(lambda values: op(*_replace(args, batched, values), **settings)))(stacked)
        pullback = jax.jit(jax.vmap(functools.partial(pullback_at, op)))
        return out, lambda vs: pullback(stacked, vs)

    def expected():
        forward = jax.jit(lambda values: reference(*_replace(args, batched, values), **settings))
        out = _stack([forward([e[i] for i in batched]) for e in examples])
        pullback = jax.jit(functools.partial(pullback_at, reference))

        def loop(vs):
            return _stack([pullback([e[i] for i in batched], jax.tree_util.tree_map(lambda a: a[k], vs))
                           for k, e in enumerate(examples)])

        return out, loop

    dtype = dtype_name(args)
    against = f"a loop over examples of autodiff of {name_of(reference)}"
    return compare_pullbacks(name_of(op), against, float_leaves(op, args), tolerance_for(dtype, rtol, atol), dtype,
                             rule, expected, seed=seed)


# --------------------------------------------------------------------------- sharding


def sharded_arguments(op: Callable, args: Sequence[Any], batched: Sequence[int], settings: dict) -> Optional[tuple]:
    """The arguments for a data-parallel check on every device, or None where none can be made.

    Each batched argument is tiled ``n`` times (``n`` devices; copy ``k`` scaled by
    ``1 + k / 2n``) along its leading axis. None with a single device, a scalar leaf in a
    batched argument, or when ``op`` rejects the tiled arguments (its leading axis is
    not a batch axis, e.g. a 1-D input of ``dense``).
    """
    n = jax.device_count()
    leaves = [l for i in batched for l in jax.tree_util.tree_leaves(args[i])]
    if n < 2 or any(np.ndim(l) == 0 for l in leaves):
        return None
    tiled = _replace(args, batched, (
        jax.tree_util.tree_map(lambda l: np.concatenate([np.asarray(_scaled(l, 1 + k / (2 * n))) for k in range(n)]),
                               args[i])
        for i in batched
    ))
    try:
        jax.eval_shape(functools.partial(op, **settings), *tiled)
    except (ValueError, TypeError):
        return None
    return tiled


def _check_sharded(op, reference, args, batched, settings, seed, rtol, atol) -> CheckResult:
    tiled = sharded_arguments(op, args, batched, settings)
    if tiled is None:
        raise ValueError(
            f"check_transform: 'sharding' needs more than one device (have {jax.device_count()}) and batched "
            f"arguments {list(batched)} whose leading axis {name_of(op)} accepts tiled; run with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count=4 to try it on a CPU."
        )
    mesh = Mesh(np.array(jax.devices()), ("data",))
    split, replicated = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
    placed = tuple(jax.device_put(a, split if i in batched else replicated) for i, a in enumerate(tiled))
    dtype = dtype_name(args)
    against = f"autodiff of {name_of(reference)} on one device"
    return compare_pullbacks(
        name_of(op), against, float_leaves(op, args), tolerance_for(dtype, rtol, atol), dtype,
        rule=lambda: jax.vjp(_bound(op, settings, jax.jit), *placed),
        expected=lambda: compiled_vjp(_bound(reference, settings), *tiled),
        seed=seed,
    )
