"""Shared gradient assertions for op tests: one op × one input, under every transform.

Each helper is :func:`jaxcnn.verify.check_transform` of ``jaxcnn.ops.<name>`` against
``jaxcnn.reference.<name>`` (never an op with itself), raising with the checker's report.
"""

from __future__ import annotations

import functools

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


#: The transforms of :func:`assert_forward_mode`, each compared with the reference's.
FORWARD_TRANSFORMS = ["jvp", "linearize", "jacfwd", "hessian", "jvp-of-grad", "grad-of-jvp"]


def assert_forward_mode(name, *args, rtol=1e-10, atol=1e-12, seed=0, **settings):
    """``jaxcnn.ops.<name>`` under every forward-mode transform equals ``jaxcnn.reference.<name>``
    under the same (float64 inputs advised), and the traced programs run the hand rules: the
    JVP's lowered program carries ``jaxcnn.<rule>.jvp`` and the gradient's ``jaxcnn.<rule>.vjp``.

    Differentiates with respect to every floating argument; integer ones (labels, keys) stay
    fixed. The Hessian and the forward-over-reverse product are of ``Σ cos(y) ⊙ c`` (a
    curved function of every output, ``c`` fixed and random)."""
    import re

    import jax
    import jax.numpy as jnp
    import numpy as np

    op = functools.partial(getattr(ops, name), **settings)
    ref = functools.partial(getattr(reference, name), **settings)
    where = [i for i, a in enumerate(args) if jnp.issubdtype(jnp.result_type(a), jnp.inexact)]
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 4 * len(args) + 4))

    def of(fn):
        def g(*floats):
            full = list(args)
            for i, v in zip(where, floats):
                full[i] = v
            return fn(*full)
        return g

    primals = tuple(jnp.asarray(args[i]) for i in where)
    tangents = tuple(jax.random.normal(next(keys), p.shape, p.dtype) for p in primals)
    out = jax.eval_shape(of(ref), *primals)
    weights = jax.tree_util.tree_map(lambda o: jax.random.normal(next(keys), o.shape, o.dtype)
                                     if jnp.issubdtype(o.dtype, jnp.inexact) else None, out)

    def scalar(fn):
        def s(*floats):
            ys = jax.tree_util.tree_leaves(of(fn)(*floats))
            cs = jax.tree_util.tree_leaves(weights)
            return sum(jnp.sum(jnp.cos(y) * c) for y, c in zip(ys, cs))
        return s

    argnums = tuple(range(len(primals)))
    cases = {
        "jvp": lambda fn: jax.jvp(of(fn), primals, tangents),
        "linearize": lambda fn: jax.linearize(of(fn), *primals)[1](*tangents),
        "jacfwd": lambda fn: jax.jacfwd(of(fn), argnums=argnums)(*primals),
        "hessian": lambda fn: jax.hessian(scalar(fn), argnums=argnums)(*primals),
        "jvp-of-grad": lambda fn: jax.jvp(jax.grad(scalar(fn), argnums=argnums), primals, tangents),
        "grad-of-jvp": lambda fn: jax.grad(lambda *p: sum(jnp.sum(jnp.cos(t) * c) for t, c in zip(
                jax.tree_util.tree_leaves(jax.jvp(of(fn), p, tangents)[1]),
                jax.tree_util.tree_leaves(weights))), argnums=argnums)(*primals),
    }
    for transform, run in cases.items():
        got, expected = run(op), run(ref)
        for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=rtol, atol=atol,
                                       err_msg=f"{name}: {transform} of the op vs of the reference")
    rules = r"jaxcnn\.\w+\.(jvp|vjp)"
    forward = jax.jit(lambda p, t: jax.jvp(of(op), p, t)).lower(primals, tangents).as_text(debug_info=True)
    backward = jax.jit(jax.grad(scalar(op), argnums=argnums)).lower(*primals).as_text(debug_info=True)
    assert "jvp" in {m.group(1) for m in re.finditer(rules, forward)}, f"{name}: jax.jvp ran no hand JVP"
    assert "vjp" in {m.group(1) for m in re.finditer(rules, backward)}, f"{name}: jax.grad ran no hand VJP"


def assert_adjoint_identity(fn, *primals, rtol=1e-12, seed=0):
    """``⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩`` for random ``ṫ`` and ``g``: ``jax.jvp`` (the hand JVP) against
    ``jax.vjp`` (the hand VJP) of ``fn`` at ``primals``, every output and floating argument.
    Ties the two hand derivations together where the reference's autodiff may route ties
    differently."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 64))
    tangents = tuple(jax.random.normal(next(keys), p.shape, p.dtype) for p in primals)
    out, t_out = jax.jvp(fn, primals, tangents)
    g = jax.tree_util.tree_map(lambda o: jax.random.normal(next(keys), o.shape, o.dtype), out)
    cts = jax.vjp(fn, *primals)[1](g)
    dot = lambda a, b: sum(float(jnp.vdot(u, v)) for u, v in zip(jax.tree_util.tree_leaves(a),  # noqa: E731
                                                                 jax.tree_util.tree_leaves(b)))
    lhs, rhs = dot(t_out, g), dot(tangents, cts)
    np.testing.assert_allclose(lhs, rhs, rtol=rtol, err_msg="⟨J ṫ, g⟩ ≠ ⟨ṫ, Jᵀ g⟩: the hand JVP and VJP disagree")


def assert_jvp_vmaps_and_keeps_float32(fn, *samples, seed=0):
    """``jax.vmap`` of ``jax.jvp(fn)`` over ``samples`` (a leading sample axis on every argument)
    equals the samples' JVPs one by one, and the JVP of the first sample in float32 runs, keeps
    float32 and agrees with float64 to float32 precision."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(samples)))
    tangents = tuple(jax.random.normal(next(keys), s.shape, s.dtype) for s in samples)
    leaves = lambda tree: jax.tree_util.tree_leaves(tree)  # noqa: E731
    batched = jax.vmap(lambda p, t: jax.jvp(fn, p, t)[1])(samples, tangents)
    for i in range(samples[0].shape[0]):
        one = jax.jvp(fn, tuple(s[i] for s in samples), tuple(t[i] for t in tangents))[1]
        for b, o in zip(leaves(batched), leaves(one)):
            np.testing.assert_allclose(b[i], o, rtol=1e-13, atol=1e-14, err_msg="vmap of jvp vs one by one")
    first = lambda arrays, dtype: tuple(a[0].astype(dtype) for a in arrays)  # noqa: E731
    y32, t32 = jax.jvp(fn, first(samples, jnp.float32), first(tangents, jnp.float32))
    t64 = jax.jvp(fn, first(samples, jnp.float64), first(tangents, jnp.float64))[1]
    for y, t, e in zip(leaves(y32), leaves(t32), leaves(t64)):
        assert y.dtype == t.dtype == jnp.float32, (y.dtype, t.dtype)
        np.testing.assert_allclose(t, e, rtol=1e-4, atol=1e-4, err_msg="float32 jvp vs float64")
