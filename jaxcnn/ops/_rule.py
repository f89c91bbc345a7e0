"""A hand rule in both modes: ``jax.custom_vjp``'s interface plus a hand-derived JVP.

``jax.custom_vjp`` takes one rule, the VJP, and refuses forward mode (``jax.jvp``,
``jax.jacfwd``, ``jax.hessian``). Every op of :mod:`jaxcnn.ops` is instead a
:class:`custom_rule`: the same ``defvjp(fwd, bwd)`` as ``jax.custom_vjp`` (the lectures'
backward formulas, unchanged) and ``defjvp(jvp)`` (the hand-derived tangent, with
``jax.custom_jvp``'s calling convention). A call binds one JAX "hijax" primitive
(``jax.experimental.hijax.VJPHiPrimitive``) that carries both rules:

* reverse mode (``jax.grad``, ``jax.vjp``, ``jacrev``) runs ``fwd`` then ``bwd``, as
  ``jax.custom_vjp`` does;
* forward mode (``jax.jvp``, ``jacfwd``, ``linearize``) runs the hand ``jvp``;
* ``vmap`` maps the rules themselves; ``jit`` lowers the primal (``fun``); ``checkpoint``
  recomputes it; higher orders differentiate the rules' own code (forward-over-reverse,
  ``jax.hessian``, differentiates ``fwd`` and ``bwd`` as written).

Where ``jax.experimental.hijax`` is absent (jax older than 0.8), :func:`custom_rule`
falls back to ``jax.custom_vjp``: reverse mode is unchanged and forward mode raises
:class:`ForwardModeUnavailable`-style ``TypeError`` naming the op. ``FORWARD_MODE`` says
which. Design and measurements: docs/ops.md, "Forward mode".
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import numpy as np

try:  # experimental in jax 0.8–0.10: the only public way to give one function both rules
    from jax._src import ad_util
    from jax._src import hijax as _hijax
    from jax._src.interpreters import ad as _ad
    from jax._src.interpreters import batching as _batching
    from jax.experimental.hijax import VJPHiPrimitive

    FORWARD_MODE = True
except ImportError:  # pragma: no cover (older jax: reverse mode only)
    FORWARD_MODE = False

#: The name every hand rule's equations carry in the traced program (``jax.make_jaxpr``'s
#: name stack): ``jaxcnn.<op>.vjp`` for the backward, ``jaxcnn.<op>.jvp`` for the tangent.
SCOPE = "jaxcnn.{name}.{mode}"


class custom_rule:  # noqa: N801 (named like jax.custom_vjp, which it stands for)
    """``jax.custom_vjp`` with a hand JVP: ``defvjp(fwd, bwd)`` and ``defjvp(jvp)``.

    ``fwd(*args) -> (out, residuals)``; ``bwd(*nondiff, residuals, g) -> cotangents`` (one
    per differentiable argument, ``None`` for integer ones); ``jvp(*nondiff, primals,
    tangents) -> (out, tangent_out)``, ``primals`` and ``tangents`` the differentiable
    arguments in order (integer arguments get ``float0`` tangents). The arguments listed
    in ``nondiff_argnums`` are Python settings, hashable.
    """

    def __init__(self, fun: Callable, nondiff_argnums: Sequence[int] = ()):
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.nondiff_argnums = tuple(nondiff_argnums)
        self.fwd = self.bwd = self.jvp = None
        self.name = fun.__name__.lstrip("_")
        # The output's type is read from the primal traced once per settings and input types.
        self._abstract = jax.jit(fun, static_argnums=self.nondiff_argnums)

    def defvjp(self, fwd: Callable, bwd: Callable) -> "custom_rule":
        self.fwd, self.bwd = fwd, bwd
        return self

    def defjvp(self, jvp: Callable) -> "custom_rule":
        self.jvp = jvp
        return self

    def __call__(self, *args):
        if self.fwd is None:
            raise AttributeError(f"jaxcnn.ops: {self.name} has no VJP; call defvjp(fwd, bwd).")
        static = tuple(args[i] for i in self.nondiff_argnums)
        dynamic = tuple(a for i, a in enumerate(args) if i not in self.nondiff_argnums)
        in_avals = jax.tree_util.tree_map(jax.typeof, dynamic)
        out_aval = jax.tree_util.tree_map(
            lambda s: jax.core.ShapedArray(s.shape, s.dtype, weak_type=s.weak_type),
            self._abstract.eval_shape(*args))
        return _Call(self, _Hashable(static), in_avals, out_aval)(*dynamic)

    def merged(self, static: tuple, dynamic: Sequence) -> tuple:
        """The positional arguments of ``fun`` from the settings and the differentiable ones."""
        settings, values = iter(static), iter(dynamic)
        n = len(static) + len(dynamic)
        return tuple(next(settings) if i in self.nondiff_argnums else next(values) for i in range(n))

    def __repr__(self) -> str:
        return f"custom_rule({self.name})"


class _Hashable:
    """The settings as a primitive parameter: compared by value, by identity where unhashable."""

    def __init__(self, value: tuple):
        self.value = value
        try:
            self._key = hash(value)
        except TypeError:
            self._key = None

    def __hash__(self):
        return self._key if self._key is not None else id(self.value)

    def __eq__(self, other):
        if not isinstance(other, _Hashable):
            return False
        if self._key is None or other._key is None:
            return self.value is other.value
        return self.value == other.value

    def __repr__(self):
        return repr(self.value)


def _instantiate(tree: Any) -> Any:
    return jax.tree_util.tree_map(ad_util.instantiate, tree, is_leaf=lambda x: isinstance(x, ad_util.Zero))


if FORWARD_MODE:

    def _batch(vmapped):
        """The batching rule: ``vmapped(prim, ...)`` maps the rules, every output along axis 0; a
        call with nothing mapped (JAX's vmap asks hijax primitives anyway) stays unbatched."""

        def batch(self, axis_data, args, dims):
            if all(d is None for d in jax.tree_util.tree_leaves(dims, is_leaf=lambda d: d is None)):
                return self(*args), jax.tree_util.tree_map(lambda _: None, self.out_aval)
            out_dim = self.batch_dim_rule(axis_data, dims)
            return vmapped(self, axis_data, dims, out_dim)(*args), out_dim

        return batch

    class _Primitive(VJPHiPrimitive):
        """vmap maps the rules themselves; every output is batched along axis 0."""

        def batch(self, axis_data, args, dims):
            return _batch(_VmapCall)(self, axis_data, args, dims)

        def batch_dim_rule(self, axis_data, in_dims):
            return jax.tree_util.tree_map(lambda _: 0, self.out_aval)

    class _Call(_Primitive):
        """One call of a :class:`custom_rule`: the rule and its settings are the parameters.

        Its JVP is the primal (from ``fwd``, which also gives the residuals) and a
        :class:`_Tangent`: a linear primitive evaluated by the hand JVP and transposed by the
        hand VJP, so that reverse mode reached through a JVP (``jax.checkpoint``'s
        linearisation, ``jax.linear_transpose`` of ``jax.linearize``) still runs ``bwd``.
        """

        def __init__(self, rule: custom_rule, static: _Hashable, in_avals, out_aval):
            self.in_avals, self.out_aval = in_avals, out_aval
            self.params = dict(rule=rule, static=static)
            super().__init__()

        def args(self, dynamic):
            return self.rule.merged(self.static.value, dynamic)

        def expand(self, *dynamic):
            return self.rule.fun(*self.args(dynamic))

        def vjp_fwd(self, nzs_in, *dynamic):
            return self.rule.fwd(*self.args(dynamic))

        def vjp_bwd_retval(self, res, g):
            return self.cotangents(res, g)

        def cotangents(self, res, g):
            """``bwd``'s cotangents as a pytree of the differentiable arguments."""
            with jax.named_scope(SCOPE.format(name=self.rule.name, mode="vjp")):
                cts = self.rule.bwd(*self.static.value, res, _instantiate(g))
            cts = tuple(cts) if isinstance(cts, list) else cts
            if not isinstance(cts, tuple) or len(cts) != len(self.in_avals):
                raise TypeError(f"jaxcnn.ops: {self.rule.name}'s bwd must return a tuple of "
                                f"{len(self.in_avals)} cotangents, got {type(cts).__name__}.")
            cts = _hijax.broadcast_prefix(cts, self.in_avals, is_leaf=lambda x: x is None)
            return jax.tree_util.tree_unflatten(self.in_tree, map(_hijax._replace_none, self.in_avals_flat, cts))

        def tangent(self, primals, tangents):
            """The hand JVP's output tangent (``tangents`` without symbolic zeros)."""
            if self.rule.jvp is None:
                raise TypeError(f"jaxcnn.ops.{self.rule.name} has no forward-mode rule (jax.jvp, jax.jacfwd, "
                                f"jax.hessian); differentiate it in reverse mode, or use jaxcnn.reference."
                                f"{self.rule.name} for both modes.")
            with jax.named_scope(SCOPE.format(name=self.rule.name, mode="jvp")):
                return self.rule.jvp(*self.static.value, tuple(primals), tuple(tangents))[1]

        def jvp(self, primals, tangents):
            out, res = self.rule.fwd(*self.args(primals))
            return out, _Tangent.of(self, primals, res, tangents)

        def lin(self, nzs_in, *primals):  # jax.linearize
            out, res = self.rule.fwd(*self.args(primals))
            return out, (primals, res)

        def linearized(self, residuals, *tangents):
            primals, res = residuals
            return _Tangent.of(self, primals, res, tangents)

        def __repr__(self):
            return f"jaxcnn.{self.rule.name}[{self.static!r}]"

    def _is_array(leaf) -> bool:
        return isinstance(leaf, (jax.Array, jax.core.Tracer, np.ndarray, np.generic))

    class _Tangent(_Primitive):
        """``ṫ_y = J ṫ_x``: evaluated by the hand JVP, transposed by the hand VJP (``Jᵀ g``)."""

        @classmethod
        def of(cls, call: _Call, primals, res, tangents):
            primals, tangents = tuple(primals), _instantiate(tuple(tangents))
            leaves, res_tree = jax.tree_util.tree_flatten(res)
            arrays = tuple(leaf for leaf in leaves if _is_array(leaf))
            constants = tuple(None if _is_array(leaf) else leaf for leaf in leaves)
            flat_t = jax.tree_util.tree_leaves(tangents)
            inexact = tuple(jax.dtypes.issubdtype(a.dtype, jax.numpy.inexact) for a in call.in_avals_flat)
            linear = tuple(t for t, f in zip(flat_t, inexact) if f)
            return cls(call, _Hashable((res_tree, constants)), inexact, primals, arrays, linear)(
                primals, arrays, linear)

        def __init__(self, call, res_static, inexact, primals, arrays, linear):
            typeof = functools.partial(jax.tree_util.tree_map, jax.typeof)
            self.in_avals = (typeof(primals), typeof(arrays), typeof(linear))
            self.out_aval = jax.tree_util.tree_map(lambda a: a.to_tangent_aval(), call.out_aval)
            self.params = dict(call=call, res_static=res_static, inexact=inexact)
            super().__init__()

        def _res(self, arrays):
            tree, constants = self.res_static.value
            it = iter(arrays)
            return jax.tree_util.tree_unflatten(tree, [next(it) if c is None else c for c in constants])

        def _tangents(self, linear):
            it = iter(linear)
            flat = [next(it) if f else np.zeros(a.shape, jax.dtypes.float0)
                    for a, f in zip(self.call.in_avals_flat, self.inexact)]
            return jax.tree_util.tree_unflatten(self.call.in_tree, flat)

        def expand(self, primals, arrays, linear):
            return self.call.tangent(primals, self._tangents(linear))

        def linear_cotangents(self, primals, arrays, g):
            """``Jᵀ g`` for the linear inputs, a list: the hand VJP from the saved residuals."""
            cts = self.call.cotangents(self._res(arrays), g)
            flat = jax.tree_util.tree_leaves(cts, is_leaf=_is_zero)
            return [_ad.instantiate_zeros(ct) for ct, f in zip(flat, self.inexact) if f]

        def transpose(self, g, primals, arrays, linear):
            _accumulate(linear, self.linear_cotangents(primals, arrays, _instantiate(g)))

        def batch(self, axis_data, args, dims):
            return _batch(_VmapTangent)(self, axis_data, args, dims)

        def jvp(self, primals, tangents):  # higher orders: autodiff of the hand JVP's code
            return jax.jvp(self.expand, primals, _instantiate(tangents))

        def vjp_fwd(self, nzs_in, *args):
            return jax.vjp(self.expand, *args)

        def vjp_bwd_retval(self, pullback, g):
            return pullback(_instantiate(g))

        def __repr__(self):
            return f"jaxcnn.{self.call.rule.name}.tangent"

    class _VmapCall(_hijax.VmapOf):
        """A vmapped :class:`_Call` (or a vmapped vmap of one)."""

        def batch(self, axis_data, args, dims):
            return _batch(_VmapCall)(self, axis_data, args, dims)

    class _VmapTangent(_hijax.VmapOf):
        """A vmapped :class:`_Tangent`, still transposed by the (vmapped) hand VJP."""

        def linear_cotangents(self, primals, arrays, g):
            dims_p, dims_a, dims_l = self.in_dims
            out_dims = [_batching.sum_axis if d is None else d for d in dims_l]
            return jax.vmap(self.prim.linear_cotangents, in_axes=(dims_p, dims_a, self.out_dim),
                            out_axes=out_dims, **self._vmap_params, sum_match=True)(primals, arrays, g)

        transpose = _Tangent.transpose

        def batch(self, axis_data, args, dims):
            return _batch(_VmapTangent)(self, axis_data, args, dims)

    def _accumulate(accums, cts) -> None:
        for acc, ct in zip(accums, cts):
            if isinstance(acc, _ad.GradAccum):
                acc.accum(ct)

    def _is_zero(x) -> bool:
        return isinstance(x, ad_util.Zero)

else:  # pragma: no cover

    def _Call(rule, static, in_avals, out_aval):  # noqa: N802
        custom = jax.custom_vjp(rule.fun, nondiff_argnums=rule.nondiff_argnums)
        custom.defvjp(rule.fwd, rule.bwd)
        return lambda *dynamic: custom(*rule.merged(static.value, dynamic))
