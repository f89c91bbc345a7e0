"""Shared gradient assertions for op tests: one op × one input, under every transform.

Each helper is :func:`jaxcnn.verify.check_transform` of ``jaxcnn.ops.<name>`` against
``jaxcnn.reference.<name>`` (never an op with itself), raising with the checker's report.
"""

from __future__ import annotations

from jaxcnn import ops, reference, verify

#: Every transform of :func:`assert_transform`.
TRANSFORMS = ["eager", "jit", "vmap", "grad-of-grad", "checkpoint", "finite differences"]


def assert_transform(transform, name, *args, vmap_axes=0, **settings):
    """One check by name (one of :data:`TRANSFORMS`). ``vmap_axes``: the batched arguments for
    ``"vmap"``, as ``jax.vmap``'s ``in_axes`` (0 for all, or a tuple with None for the shared ones)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}")
    axes = vmap_axes if isinstance(vmap_axes, tuple) else (vmap_axes,) * len(args)
    batched = tuple(i for i, axis in enumerate(axes) if axis is not None)
    verify.check_transform(transform, getattr(ops, name), getattr(reference, name), *args, batched=batched,
                           **settings).assert_ok()


def assert_all(name, *args, vmap_axes=0, **settings):
    """Every check but checkpoint (float64 inputs advised; vmap skipped when vmap_axes is None)."""
    for transform in TRANSFORMS:
        if transform != "checkpoint" and not (transform == "vmap" and vmap_axes is None):
            assert_transform(transform, name, *args, vmap_axes=vmap_axes, **settings)


def assert_vjp(name, *args, **settings):
    assert_transform("eager", name, *args, **settings)


def assert_jit(name, *args, **settings):
    assert_transform("jit", name, *args, **settings)


def assert_vmap(name, *args, in_axes=0, **settings):
    assert_transform("vmap", name, *args, vmap_axes=in_axes, **settings)


def assert_grad_of_grad(name, *args, **settings):
    assert_transform("grad-of-grad", name, *args, **settings)


def assert_numerical(name, *args, **settings):
    assert_transform("finite differences", name, *args, **settings)
