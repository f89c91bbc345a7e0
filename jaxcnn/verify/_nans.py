"""Where a NaN or inf is born: the first operation, forward or backward, to make one.

:func:`locate_nonfinite` runs the program once compiled (outputs and the VJP of a
cotangent of ones with respect to every floating-point leaf of the positional arguments).
If both stay finite, it returns ``None``. Otherwise it evaluates the traced program one
equation at a time, into ``jit``, ``remat``, the taken ``cond`` branch, ``scan`` and
``while`` bodies iteration by iteration, and the primal bodies of ``custom_vjp`` and
``custom_jvp`` calls and of jaxcnn's ops (``call_hi_primitive`` equations of a
:class:`jaxcnn.ops._rule.custom_rule`):

* forward: the first equation whose output holds a NaN/inf while none of its inputs does;
* backward: each operation's VJP in reverse order (a ``custom_vjp`` call or a jaxcnn op
  through its own ``bwd``, which is then traced and searched with its own source lines), the first whose
  input cotangent turns non-finite from finite output cotangents.

``jax_debug_nans`` names the compiled function in the backward pass; this names the
forward operation being differentiated, its ``file:line`` and its layer path (the
``jax.named_scope`` names that Flax and Equinox record).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core
from jax._src import source_info_util as siu

from jaxcnn.ops import _rule

_CALLS = ("jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint")


@dataclasses.dataclass(frozen=True)
class NonFiniteReport:
    """The operation where a NaN/inf is born (see :func:`locate_nonfinite`)."""

    phase: str  # "forward" or "backward"
    primitive: str
    source: str  # "file:line" of the innermost user frame, "unknown" when none
    path: str  # layer path from the name stack, "" when none was recorded
    message: str
    within: tuple[str, ...] = ()  # e.g. ("scan iteration 3", "custom_vjp bwd f_bwd")
    traceback: tuple[str, ...] = ()  # user frames, innermost first

    def __str__(self) -> str:
        lines = [f"non-finite value born in the {self.phase} pass: {self.primitive} at {self.source}"]
        if self.path:
            lines.append(f"  layer path: {self.path}")
        if self.within:
            lines.append(f"  within: {' > '.join(self.within)}")
        lines.append(f"  {self.message}")
        lines += [f"  from {frame}" for frame in self.traceback[1:4]]
        return "\n".join(lines)


class _Node:
    """One value of the evaluated program; ``active`` when it depends on a differentiated input."""

    __slots__ = ("value", "active")

    def __init__(self, value, active=False):
        self.value, self.active = value, active


@dataclasses.dataclass
class _Site:
    eqn: Any
    prefix: Any  # the name stack of the enclosing calls
    within: tuple[str, ...]
    outer: tuple = ()  # the enclosing calls' equations, innermost last (remat bodies record no frames)

    def report(self, phase: str, message: str, primitive: str | None = None) -> NonFiniteReport:
        info = self.eqn.source_info
        for e in (self.eqn, *self.outer[::-1]):
            frames = [f"{f.file_name}:{f.start_line} ({f.function_name})"
                      for f in siu.user_frames(e.source_info.traceback) if f.file_name not in _PLUMBING]
            if frames:
                break
        stack = (self.prefix + info.name_stack).stack
        path = "/".join(s.name for s in stack if isinstance(s, siu.Scope))
        source = frames[0].rsplit(" (", 1)[0] if frames else "unknown"
        transforms = [s.name for s in stack if isinstance(s, siu.Transform)]  # the program's own jvp, vmap, ...
        within = (f"under {'('.join(transforms[::-1])}{')' * (len(transforms) - 1)}",) if transforms else ()
        within += self.within
        return NonFiniteReport(phase, primitive or self.eqn.primitive.name, source, path, message,
                               within, tuple(frames))


#: Frames that are the search's or jaxcnn's rule machinery, never the place a value is made.
_PLUMBING = (__file__, _rule.__file__)


def _hi(eqn):
    """The hijax primitive of a ``call_hi_primitive`` equation (a jaxcnn op's call, or its
    tangent under ``jvp``), or None."""
    prim = eqn.params.get("_prim") if eqn.primitive.name == "call_hi_primitive" else None
    return prim if hasattr(prim, "expand") else None


def _hi_name(prim) -> str:
    rule = getattr(prim, "rule", None) or getattr(getattr(prim, "call", None), "rule", None)
    return f"jaxcnn.{rule.name}" if rule is not None else type(prim).__name__


def _hi_primal(prim, vals):
    """The primal of a hijax call (``prim.expand``) traced at ``vals``, its flat operands."""
    def primal(*flat):
        return jax.tree_util.tree_leaves(prim.expand(*jax.tree_util.tree_unflatten(prim.in_tree, flat)))

    return jax.make_jaxpr(primal)(*vals)


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, int))


def _inexact(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)


def _finite(x) -> np.ndarray:
    """The finite mask, on the host (an eager ``jnp.isfinite`` would compile once per shape)."""
    x = np.asarray(x)
    return np.isfinite(x if x.dtype.kind in "fc" else x.astype(np.float32))


def _bad(x) -> bool:
    return _inexact(x) and not _finite(x).all()


def _first_bad(x) -> tuple[int, ...]:
    mask = ~_finite(x)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _at(x, idx, shape):
    """``x`` at ``idx`` when it is elementwise with an array of ``shape``, else its shape."""
    x = np.asarray(x)
    if x.shape == tuple(shape):
        return repr(x[idx].item())
    return repr(x.item()) if x.ndim == 0 else f"{x.dtype}{list(x.shape)}"


def _count(x) -> str:
    return f"{int(np.sum(~_finite(x)))} of {np.size(x)} elements non-finite"


def _zero_ct(x):
    return jnp.zeros_like(x) if _inexact(x) else np.zeros(np.shape(x), jax.dtypes.float0)


def _bind(eqn, vals):
    out = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
    return list(out) if eqn.primitive.multiple_results else [out]


def _open(body):
    return (body.jaxpr, body.consts) if isinstance(body, core.ClosedJaxpr) else (body, ())


class _Birth(Exception):
    pass


class _Interpreter:
    """Evaluates a jaxpr equation by equation; records the first birth and, optionally, a tape."""

    def __init__(self, tape: bool, stop: bool):
        self.tape = [] if tape else None  # (pullback, in_nodes, out_nodes, site or None)
        self.stop, self.birth, self.outer = stop, None, []
        self.compiled = {}  # one program per equation (and activity pattern): a scan body's ops compile once

    def run(self, jaxpr, consts, nodes, prefix, within, record=True):
        env = dict(zip(jaxpr.constvars, map(_Node, consts)))
        env.update(zip(jaxpr.invars, nodes))
        read = lambda v: _Node(v.val) if isinstance(v, core.Literal) else env[v]  # noqa: E731
        for eqn in jaxpr.eqns:
            env.update(zip(eqn.outvars, self.eqn(eqn, [read(v) for v in eqn.invars], prefix, within, record)))
        return [read(v) for v in jaxpr.outvars]

    def _record(self, pullback, ins, outs, site, record):
        active = record and self.tape is not None and any(n.active for n in ins)
        for n in outs:
            n.active = active and _inexact(n.value)
        if active:
            self.tape.append((pullback, ins, outs, site))

    def eqn(self, eqn, ins, prefix, within, record):
        self.outer.append(eqn)
        try:
            return self._eqn(eqn, ins, prefix, within, record)
        finally:
            self.outer.pop()

    def _eqn(self, eqn, ins, prefix, within, record):
        name, params, site = eqn.primitive.name, eqn.params, _Site(eqn, prefix, within, tuple(self.outer[:-1]))
        inner = prefix + eqn.source_info.name_stack
        if name in _CALLS:
            return self.run(*_open(params.get("jaxpr", params.get("call_jaxpr"))), ins, inner, within, record)
        if name in ("custom_vjp_call", "custom_jvp_call"):  # differentiated by its rule, searched through its primal
            if self.stop:
                outs = [_Node(n.value) for n in self.run(*_open(params["call_jaxpr"]), ins, inner, within, False)]
            else:  # on the way to the backward pass: one compiled call, not op by op
                call = self.compiled.setdefault(id(eqn), jax.jit(lambda *v: _bind(eqn, v)))
                outs = [_Node(v) for v in call(*[n.value for n in ins])]
            self._record(_eqn_pullback(eqn, ins, self.compiled), ins, outs, site, record)
            return outs
        if _hi(eqn) is not None:  # a jaxcnn op: differentiated by its hand rule, searched through its primal
            if self.stop:
                closed = self.compiled.setdefault(("primal", id(eqn)), _hi_primal(_hi(eqn), [n.value for n in ins]))
                outs = [_Node(n.value) for n in self.run(closed.jaxpr, closed.consts, ins, inner, within, False)]
            else:
                call = self.compiled.setdefault(id(eqn), jax.jit(lambda *v: _bind(eqn, v)))
                outs = [_Node(v) for v in call(*[n.value for n in ins])]
            self._record(_eqn_pullback(eqn, ins, self.compiled), ins, outs, site, record)
            return outs
        if name == "cond":
            index = int(ins[0].value)
            branch = _open(params["branches"][index])
            return self.run(*branch, ins[1:], inner, (*within, f"cond branch {index}"), record)
        if name == "while":
            nc, nb = params["cond_nconsts"], params["body_nconsts"]
            carry, i = ins[nc + nb:], 0
            while bool(self.run(*_open(params["cond_jaxpr"]), ins[:nc] + carry, inner, within, False)[0].value):
                carry = self.run(*_open(params["body_jaxpr"]), ins[nc:nc + nb] + carry, inner,
                                 (*within, f"while iteration {i}"), record)
                i += 1
            return carry
        if name == "scan":
            return self.scan(eqn, ins, inner, within, record)
        vals = _bind(eqn, [n.value for n in ins])
        outs = [_Node(v) for v in vals]
        self._record(_eqn_pullback(eqn, ins, self.compiled), ins, outs, site, record)
        if self.birth is None and any(map(_bad, vals)) and not any(_bad(n.value) for n in ins):
            self.birth = site.report("forward", _forward_message(eqn, ins, vals))
            if self.stop:
                raise _Birth
        return outs

    def scan(self, eqn, ins, prefix, within, record):
        p = eqn.params
        consts, carry, xs = ins[:p["num_consts"]], ins[p["num_consts"]:p["num_consts"] + p["num_carry"]], \
            ins[p["num_consts"] + p["num_carry"]:]
        steps = range(p["length"])[::-1] if p["reverse"] else range(p["length"])
        ys = {}
        for i in steps:
            x_i = [_Node(x.value[i]) for x in xs]
            for x, n in zip(xs, x_i):
                self._record(lambda ct, x=x, i=i: [jnp.zeros_like(x.value).at[i].set(ct[0])], [x], [n], None, record)
            outs = self.run(*_open(p["jaxpr"]), consts + carry + x_i, prefix, (*within, f"scan iteration {i}"), record)
            carry, ys[i] = outs[:p["num_carry"]], outs[p["num_carry"]:]
        stacked = []
        for j, var in enumerate(eqn.outvars[p["num_carry"]:]):
            column = [ys[i][j] for i in range(p["length"])]
            value = jnp.stack([n.value for n in column]) if column else jnp.zeros(var.aval.shape, var.aval.dtype)
            stacked.append(_Node(value))
            self._record(lambda ct: list(ct[0]), column, stacked[-1:], None, record)
        return carry + stacked


def _eqn_pullback(eqn, ins, compiled):
    """The VJP of one equation with respect to its active inputs, as ``cts_out -> cts_in``.

    Compiled as one program: run eagerly, a rule's every operation would compile on its own.
    """

    def pullback(cts_out):
        active = tuple(i for i, n in enumerate(ins) if n.active)
        given = tuple(k for k, ct in enumerate(cts_out) if ct is not None)

        def vjp(vals, cts_given):
            def f(*xs):
                return _bind(eqn, [dict(zip(active, xs)).get(i, v) for i, v in enumerate(vals)])

            outs, pb = jax.vjp(f, *[vals[i] for i in active])
            cts = [_zero_ct(o) for o in outs]
            for k, ct in zip(given, cts_given):
                cts[k] = ct
            return pb(cts)

        program = compiled.setdefault((id(eqn), active, given), jax.jit(vjp))
        grads = program([n.value for n in ins], [cts_out[k] for k in given])
        return [dict(zip(active, grads)).get(i) for i in range(len(ins))]

    return pullback


def _forward_message(eqn, ins, vals):
    k = next(k for k, v in enumerate(vals) if _bad(v))
    out, idx = vals[k], _first_bad(vals[k])
    args = ", ".join(_at(n.value, idx, out.shape) for n in ins)
    where = f" at {list(idx)}" if idx else ""
    return (f"{eqn.primitive.name}({args}) = {np.asarray(out)[idx].item()!r}{where} from finite inputs "
            f"({_count(out)}, output {out.dtype}{list(out.shape)})")


def _backward(interp, out_nodes, forward_birth):
    cts = {}
    for n in out_nodes:
        if n.active:
            cts[n] = cts[n] + jnp.ones_like(n.value) if n in cts else jnp.ones_like(n.value)
    for pullback, ins, outs, site in reversed(interp.tape):
        cts_out = [cts.get(n) for n in outs]
        if all(ct is None for ct in cts_out):
            continue
        cts_in = pullback(cts_out)
        bad = [i for i, ct in enumerate(cts_in) if ct is not None and _bad(ct)]
        if bad and site is not None and not any(ct is not None and _bad(ct) for ct in cts_out):
            return _backward_report(site, ins, cts_out, cts_in[bad[0]], bad[0], forward_birth)
        for n, ct in zip(ins, cts_in):
            if ct is not None and n.active:
                cts[n] = cts[n] + ct if n in cts else ct
    return None


def _backward_report(site, ins, cts_out, ct, k, forward_birth):
    eqn, idx = site.eqn, _first_bad(ct)
    note = f"; the forward had already made {forward_birth.primitive} non-finite at {forward_birth.source}" \
        if forward_birth else ""
    if eqn.primitive.name == "custom_vjp_call":
        inside = _inside_bwd(site, [n.value for n in ins], cts_out)
        if inside is not None:
            return inside
        bwd = eqn.params["bwd"].debug_info.func_src_info
        return site.report("backward", f"the custom_vjp bwd rule {bwd} returns a non-finite cotangent for "
                                       f"input {k} from finite cotangents (its residuals are not finite){note}")
    prim = _hi(eqn)
    if prim is not None and hasattr(prim, "rule"):
        inside = _inside_rule_bwd(site, prim, [n.value for n in ins], cts_out)
        if inside is not None:
            return inside
        return site.report("backward", f"the bwd rule {prim.rule.bwd.__name__} of {_hi_name(prim)} returns a "
                                       f"non-finite cotangent for input {k} from finite cotangents (its residuals "
                                       f"are not finite){note}", _hi_name(prim))
    given = ", ".join(_at(n.value, idx, ct.shape) for n in ins)
    incoming = ", ".join(_at(c, idx, ct.shape) for c in cts_out if c is not None)
    where = f" at {list(idx)}" if idx else ""
    value, name = np.asarray(ct)[idx].item(), eqn.primitive.name
    if name == "custom_jvp_call":  # differentiated by its jvp rule: name the function it belongs to
        name = f"custom_jvp_call[{eqn.params['call_jaxpr'].jaxpr.debug_info.func_name}]"
    elif prim is not None:
        name = _hi_name(prim)
    return site.report("backward", f"the cotangent of {name}'s input {k} becomes {value!r}{where} "
                                   f"(inputs {given}; incoming cotangent {incoming}; {_count(ct)}){note}", name)


def _inside_bwd(site, invals, cts_out):
    """Trace the ``custom_vjp``'s own bwd at its real residuals and search it as a forward program."""
    p = site.eqn.params
    try:
        n = p["num_consts"]
        fwd_jaxpr, fwd_consts = p["fwd_jaxpr_thunk"].call_wrapped(*[True] * (len(invals) - n))
        _, res_tree, forwarded = p["out_trees"]()
        outs = iter(core.eval_jaxpr(fwd_jaxpr, fwd_consts, *invals[n:]))
        res = [next(outs) if f is None else invals[f] for f in forwarded]
        cts = [_zero_ct(v) if ct is None else ct for ct, v in zip(cts_out, p["call_jaxpr"].out_avals)]
        closed = jax.make_jaxpr(lambda r, c: p["bwd"].call_wrapped(*r, *c))(res, cts)
        interp = _Interpreter(tape=False, stop=True)
        call = f"custom_vjp {p['call_jaxpr'].jaxpr.debug_info.func_name} called at {site.report('', '').source}"
        interp.run(closed.jaxpr, closed.consts, [_Node(v) for v in jax.tree.leaves((res, cts))],
                   site.prefix + site.eqn.source_info.name_stack,
                   (*site.within, call, f"its bwd {p['bwd'].debug_info.func_name}"))
    except _Birth:
        b = interp.birth
        return dataclasses.replace(b, phase="backward",
                                   message=b.message.replace("from finite inputs", "in the bwd rule"))
    except Exception:  # noqa: BLE001 - the rule's internals vary across JAX versions; fall back to the call
        return None
    return None


def _inside_rule_bwd(site, prim, invals, cts_out):
    """Trace a jaxcnn op's hand bwd at its real residuals (from its ``fwd``) and search it as a
    forward program, as :func:`_inside_bwd` does for a ``custom_vjp``."""
    rule, structure = prim.rule, {}

    def residual_arrays(*flat):  # the residuals' arrays; their other leaves (settings) kept aside
        res = rule.fwd(*prim.args(jax.tree_util.tree_unflatten(prim.in_tree, flat)))[1]
        leaves, structure["tree"] = jax.tree_util.tree_flatten(res)
        structure["constants"] = [None if _rule._is_array(leaf) else leaf for leaf in leaves]
        return [leaf for leaf in leaves if _rule._is_array(leaf)]

    def bwd(arrays, g):
        it = iter(arrays)
        res = jax.tree_util.tree_unflatten(structure["tree"], [next(it) if c is None else c
                                                               for c in structure["constants"]])
        return jax.tree_util.tree_leaves(prim.cotangents(res, g))

    interp = _Interpreter(tape=False, stop=True)
    try:
        arrays = jax.jit(residual_arrays)(*invals)
        out_tree = jax.tree_util.tree_structure(prim.out_aval)
        g = jax.tree_util.tree_unflatten(out_tree, [_zero_ct(jnp.zeros(a.shape, a.dtype)) if ct is None else ct
                                                    for ct, a in zip(cts_out, jax.tree_util.tree_leaves(
                                                        prim.out_aval))])
        closed = jax.make_jaxpr(bwd)(arrays, g)
        call = f"jaxcnn op {rule.name} called at {site.report('', '').source}"
        interp.run(closed.jaxpr, closed.consts, [_Node(v) for v in jax.tree.leaves((arrays, g))],
                   site.prefix + site.eqn.source_info.name_stack, (*site.within, call, f"its bwd {rule.bwd.__name__}"))
    except _Birth:
        b = interp.birth
        return dataclasses.replace(b, phase="backward",
                                   message=b.message.replace("from finite inputs", "in the bwd rule"))
    except Exception:  # noqa: BLE001 - a rule that cannot be traced apart: the report names the call
        return None
    return None


def locate_nonfinite(fn: Callable, *args, **kwargs) -> NonFiniteReport | None:
    """The first operation whose output (forward) or cotangent (backward) becomes NaN/inf.

    Args:
      fn: any JAX function (a loss, a train step, a model's apply).
      *args: its positional arguments; the floating-point leaves are differentiated, with a
        cotangent of ones on every floating-point output.
      **kwargs: keyword arguments, held fixed.

    Returns:
      ``None`` when the outputs and the gradient are finite, else a :class:`NonFiniteReport`
      naming the primitive, its ``file:line``, its layer path and the offending values.
    """
    keyed, treedef = jax.tree_util.tree_flatten_with_path(args)
    arrays = [i for i, (_, x) in enumerate(keyed) if _is_array(x)]
    for key, x in keyed:
        if _bad(x):
            return NonFiniteReport("forward", "input", "unknown", "", f"the argument args{jax.tree_util.keystr(key)} "
                                   f"is non-finite already ({_count(x)})")

    def flat(*xs):  # the array leaves in, the rest (an Equinox module's functions, say) held static
        vals = [x for _, x in keyed]
        for i, x in zip(arrays, xs):
            vals[i] = x
        return [y for y in jax.tree.leaves(fn(*jax.tree.unflatten(treedef, vals), **kwargs)) if _is_array(y)]

    leaves = [keyed[i][1] for i in arrays]
    closed = jax.make_jaxpr(flat)(*leaves)
    diff = [i for i, x in enumerate(leaves) if _inexact(x)]
    program = core.jaxpr_as_fun(closed)

    def outputs_and_gradient(*xs):
        vals = list(leaves)
        for i, x in zip(diff, xs):
            vals[i] = x
        out, vjp = jax.vjp(lambda *d: program(*[dict(zip(diff, d)).get(i, v) for i, v in enumerate(vals)]), *xs)
        return out, vjp([jnp.ones_like(o) if _inexact(o) else _zero_ct(o) for o in out])

    with jax.debug_nans(False), jax.debug_infs(False):
        try:
            outs, gradient = jax.jit(outputs_and_gradient)(*[leaves[i] for i in diff])
        except Exception:  # noqa: BLE001 - not reverse-differentiable: the forward is all there is to check
            outs, gradient = jax.jit(program)(*leaves), []
        backward = not any(map(_bad, outs))
        if backward and not any(map(_bad, gradient)):
            return None
        interp = _Interpreter(tape=backward, stop=not backward)
        nodes = [_Node(x, i in diff) for i, x in enumerate(leaves)]
        try:
            out_nodes = interp.run(closed.jaxpr, closed.consts, nodes, siu.new_name_stack(), ())
        except _Birth:
            return interp.birth
        found = _backward(interp, out_nodes, interp.birth) if backward else interp.birth
    if found is None:
        phase = "backward" if backward else "forward"
        return NonFiniteReport(phase, "?", "unknown", "", f"the compiled program's {phase} pass is non-finite, "
                               "but every operation stays finite when run one at a time (an XLA rewrite?)")
    return found
