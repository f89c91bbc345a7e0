"""Shared gradient assertions for op tests: one op × one input, under every transform.

Each helper compares ``jaxcnn.ops.<name>`` with ``jaxcnn.reference.<name>`` (never an op
with itself) through :mod:`jaxcnn.verify` and raises with the checker's report.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import ops, reference, verify


def pair(name):
    return getattr(ops, name), getattr(reference, name)


def assert_vjp(name, *args, **settings):
    op, ref = pair(name)
    verify.check_vjp(op, ref, *args, **settings).assert_ok()


def assert_jit(name, *args, **settings):
    op, ref = pair(name)
    op_j = jax.jit(functools.partial(op, **settings))
    ref_j = jax.jit(functools.partial(ref, **settings))
    verify.check_vjp(op_j, ref_j, *args).assert_ok()


def assert_vmap(name, *args, in_axes=0, **settings):
    """Batched inputs along in_axes (a leading axis of size 3 is added to each batched arg)."""
    op, ref = pair(name)
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    def stack(leaf):  # in numpy: eager jnp would compile a program per primitive and shape
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jnp.stack([leaf] * 3)
        floating, leaf = jnp.issubdtype(leaf.dtype, jnp.floating), np.asarray(leaf)
        return jnp.asarray(np.stack([leaf, 0.5 * leaf, -leaf] if floating else [leaf] * 3))

    batched = tuple(a if ax is None else jax.tree_util.tree_map(stack, a) for a, ax in zip(args, axes))
    op_v = jax.vmap(functools.partial(op, **settings), in_axes=axes)
    ref_v = jax.vmap(functools.partial(ref, **settings), in_axes=axes)
    verify.check_vjp(op_v, ref_v, *batched).assert_ok()


def _gradient_fn(fn, args, settings, seed=1):
    """x ↦ ∇⟨fn(x), v⟩ for a fixed random v: its VJP is a Hessian-vector product."""
    out = jax.eval_shape(functools.partial(fn, **settings), *args)
    rng = np.random.default_rng(seed)
    v = jax.tree_util.tree_map(lambda o: jnp.asarray(rng.standard_normal(o.shape), o.dtype), out)
    float_argnums = tuple(
        i for i, a in enumerate(args)
        if all(jnp.issubdtype(jnp.result_type(l), jnp.floating) for l in jax.tree_util.tree_leaves(a))
    )

    def scalar(*a):
        outs = jax.tree_util.tree_leaves(fn(*a, **settings))
        return sum(jnp.vdot(o, w) for o, w in zip(outs, jax.tree_util.tree_leaves(v)))

    return jax.grad(scalar, argnums=float_argnums)


def assert_grad_of_grad(name, *args, **settings):
    op, ref = pair(name)
    verify.check_vjp(_gradient_fn(op, args, settings), _gradient_fn(ref, args, settings), *args).assert_ok()


def assert_numerical(name, *args, **settings):
    verify.check_numerical(getattr(ops, name), *args, **settings).assert_ok()


def assert_transform(transform, name, *args, vmap_axes=0, **settings):
    """One check of :func:`assert_all` by name ("eager", "jit", "vmap", "grad-of-grad",
    "checkpoint", "finite differences"): for ``covering`` the transforms with other parameters."""
    if transform == "eager":
        assert_vjp(name, *args, **settings)
    elif transform == "jit":
        assert_jit(name, *args, **settings)
    elif transform == "vmap":
        assert_vmap(name, *args, in_axes=vmap_axes, **settings)
    elif transform == "grad-of-grad":
        assert_grad_of_grad(name, *args, **settings)
    elif transform == "checkpoint":
        verify.check_transform("checkpoint", *pair(name), *args, **settings).assert_ok()
    elif transform == "finite differences":
        assert_numerical(name, *args, **settings)
    else:
        raise ValueError(f"unknown transform {transform!r}")


#: Every transform of :func:`assert_transform`.
TRANSFORMS = ["eager", "jit", "vmap", "grad-of-grad", "checkpoint", "finite differences"]


def assert_all(name, *args, vmap_axes=0, **settings):
    """Every check above but checkpoint (float64 inputs advised; vmap skipped when vmap_axes is None)."""
    for transform in TRANSFORMS:
        if transform != "checkpoint" and not (transform == "vmap" and vmap_axes is None):
            assert_transform(transform, name, *args, vmap_axes=vmap_axes, **settings)
