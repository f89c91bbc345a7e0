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

    Differentiates with respect to every floating argument (an array or a pytree of them);
    integer ones (labels, keys) stay fixed. The Hessian and the forward-over-reverse product
    are of ``Σ cos(y) ⊙ c`` (a curved function of every output, ``c`` fixed and random)."""
    import re

    import jax
    import jax.numpy as jnp
    import numpy as np

    op = functools.partial(getattr(ops, name), **settings)
    ref = functools.partial(getattr(reference, name), **settings)

    def floating(a):  # an array, or a pytree of them (l2_penalty's params)
        leaves = jax.tree_util.tree_leaves(a)
        return bool(leaves) and all(jnp.issubdtype(jnp.result_type(v), jnp.inexact) for v in leaves)

    where = [i for i, a in enumerate(args) if floating(a)]
    n_leaves = max(len(args), len(jax.tree_util.tree_leaves(args)))
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 4 * n_leaves + 4))

    def of(fn):
        def g(*floats):
            full = list(args)
            for i, v in zip(where, floats):
                full[i] = v
            return fn(*full)
        return g

    primals = tuple(jax.tree_util.tree_map(jnp.asarray, args[i]) for i in where)
    tangents = jax.tree_util.tree_map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), primals)
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
        "jvp": lambda fn, p, t: jax.jvp(of(fn), p, t),
        "linearize": lambda fn, p, t: jax.linearize(of(fn), *p)[1](*t),
        "jacfwd": lambda fn, p, t: jax.jacfwd(of(fn), argnums=argnums)(*p),
        "hessian": lambda fn, p, t: jax.hessian(scalar(fn), argnums=argnums)(*p),
        "jvp-of-grad": lambda fn, p, t: jax.jvp(jax.grad(scalar(fn), argnums=argnums), p, t),
        "grad-of-jvp": lambda fn, p, t: jax.grad(lambda *q: sum(jnp.sum(jnp.cos(u) * c) for u, c in zip(
                jax.tree_util.tree_leaves(jax.jvp(of(fn), q, t)[1]),
                jax.tree_util.tree_leaves(weights))), argnums=argnums)(*p),
    }

    def every(fn):  # one compiled program per side: a dozen small ones cost the suite minutes
        return jax.jit(lambda p, t: {transform: run(fn, p, t) for transform, run in cases.items()})(primals, tangents)

    got, expected = every(op), every(ref)
    for transform in cases:
        for g, e in zip(jax.tree_util.tree_leaves(got[transform]), jax.tree_util.tree_leaves(expected[transform])):
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=rtol, atol=atol,
                                       err_msg=f"{name}: {transform} of the op vs of the reference")
    rules = r"jaxcnn\.\w+\.(jvp|vjp)"
    forward = jax.jit(lambda p, t: jax.jvp(of(op), p, t)).lower(primals, tangents).as_text(debug_info=True)
    backward = jax.jit(jax.grad(scalar(op), argnums=argnums)).lower(*primals).as_text(debug_info=True)
    assert "jvp" in {m.group(1) for m in re.finditer(rules, forward)}, f"{name}: jax.jvp ran no hand JVP"
    assert "vjp" in {m.group(1) for m in re.finditer(rules, backward)}, f"{name}: jax.grad ran no hand VJP"


def assert_jvp(name, *args, in_axes=None, rtol=1e-10, atol=1e-12, seed=0, **settings):
    """``jax.jvp`` of ``jaxcnn.ops.<name>`` equals the reference's, values and dtypes (the
    tangent's is the output's), in any dtype (loosen ``rtol``/``atol`` below float64). With
    ``in_axes`` (one entry per floating argument, None for a shared one) under ``jax.vmap``
    of ``jax.jvp``. Integer arguments (labels, keys) stay fixed, as in :func:`assert_forward_mode`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    leaves_of = jax.tree_util.tree_leaves
    where = [i for i, a in enumerate(args)
             if leaves_of(a) and all(jnp.issubdtype(jnp.result_type(v), jnp.inexact) for v in leaves_of(a))]
    primals = tuple(jax.tree_util.tree_map(jnp.asarray, args[i]) for i in where)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(leaves_of(primals))))
    tangents = jax.tree_util.tree_map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), primals)

    def jvp(module):
        def f(*floats):
            full = list(args)
            for i, v in zip(where, floats):
                full[i] = v
            return getattr(module, name)(*full, **settings)

        run = lambda p, t: jax.jvp(f, p, t)  # noqa: E731
        return (run if in_axes is None else jax.vmap(run, in_axes=(in_axes, in_axes)))(primals, tangents)

    got, expected = jvp(ops), jvp(reference)
    for g, e in zip(leaves_of(got), leaves_of(expected)):
        assert g.dtype == e.dtype, f"{name}: the op's jvp gives {g.dtype}, the reference's {e.dtype}"
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(e, np.float64), rtol=rtol, atol=atol,
                                   err_msg=f"{name}: jvp{'' if in_axes is None else ' under vmap'} of the op vs "
                                           f"of the reference")
    for out, tangent in zip(leaves_of(got[0]), leaves_of(got[1])):
        assert tangent.dtype == out.dtype, f"{name}: the tangent is {tangent.dtype}, the output {out.dtype}"


def assert_adjoint(name, *args, rtol=1e-12, seed=0, **settings):
    """:func:`assert_adjoint_identity` of ``jaxcnn.ops.<name>`` over its floating arguments
    (arrays or pytrees of them; integer ones, labels and keys, stay fixed)."""
    import jax
    import jax.numpy as jnp

    leaves_of = jax.tree_util.tree_leaves
    where = [i for i, a in enumerate(args)
             if leaves_of(a) and all(jnp.issubdtype(jnp.result_type(v), jnp.inexact) for v in leaves_of(a))]

    def f(*floats):
        full = list(args)
        for i, v in zip(where, floats):
            full[i] = v
        return getattr(ops, name)(*full, **settings)

    primals = tuple(jax.tree_util.tree_map(jnp.asarray, args[i]) for i in where)
    assert_adjoint_identity(f, *primals, rtol=rtol, seed=seed, what=f"{name} {settings}")


def assert_adjoint_identity(fn, *primals, rtol=1e-12, seed=0, what=""):
    """``⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩`` for random ``ṫ`` and ``g``: ``jax.jvp`` (the hand JVP) against
    ``jax.vjp`` (the hand VJP) of ``fn`` at ``primals`` (arrays or pytrees), every output and
    floating argument, to rounding (float64 advised). Ties the two hand derivations together
    where the reference's autodiff may route ties differently."""
    import jax
    import numpy as np

    leaves_of = jax.tree_util.tree_leaves
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(leaves_of(primals)) + 64))
    tangents = jax.tree_util.tree_map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), primals)
    out, t_out = jax.jvp(fn, primals, tangents)
    g = jax.tree_util.tree_map(lambda o: jax.random.normal(next(keys), o.shape, o.dtype), out)
    cts = jax.vjp(fn, *primals)[1](g)

    def dot(a, b):
        return sum(np.vdot(np.asarray(u, np.float64), np.asarray(v, np.float64))
                   for u, v in zip(leaves_of(a), leaves_of(b)))

    np.testing.assert_allclose(dot(t_out, g), dot(tangents, cts), rtol=rtol,
                               err_msg=f"{what}: ⟨J ṫ, g⟩ (hand JVP) ≠ ⟨ṫ, Jᵀ g⟩ (hand VJP)")


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
