"""One run of a program that records every ``custom_vjp``/``custom_jvp`` call in it (and every
call of a jaxcnn op, a :class:`jaxcnn.ops._rule.custom_rule`), where it runs: the rule, the
call's place (``file:line``, the model path), its real operands and the cotangent that reaches
its output in the program's backward pass.

A traced program no longer holds a ``custom_vjp`` call once ``jax.grad`` has gone through it
(the rule is linearised into plain equations), so the calls are caught where they are made:
while the program is traced, ``custom_vjp.__call__``, ``custom_jvp.__call__`` and
``custom_rule.__call__`` are wrapped;
each call sends its array operands to the host with ``jax.debug.callback`` (which runs under
``jit``, ``vmap`` (per example), ``scan``/``while`` (every iteration; the first is kept),
``cond`` (the branch taken) and ``checkpoint``), and its output passes through an identity
whose backward sends the arriving cotangent to the host. JAX's caches are cleared before and
after, so that the user's own compiled functions are traced with the wrappers and then without.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import custom_derivatives as _cd
from jax._src import source_info_util

from jaxcnn.ops import _rule

_JAX_DIR = os.path.dirname(os.path.dirname(jax.__file__))  # site-packages/jax/..
_HERE = os.path.dirname(__file__)
_JAXCNN = os.path.dirname(_HERE)
# jaxcnn's ops are where its rules are defined, not where a program calls them: its layers are
_SKIP = (os.path.join(_JAX_DIR, "jax") + os.sep, os.path.join(_JAX_DIR, "jaxlib") + os.sep, _HERE + os.sep,
         os.path.join(_JAXCNN, "ops") + os.sep, os.path.dirname(os.__file__) + os.sep)


@dataclasses.dataclass
class Call:
    """One call of a custom rule while tracing: the custom function object, its positional
    arguments with the array leaves replaced by their recorded values once the program ran."""

    kind: str  # "custom_vjp", "custom_jvp" or "custom_rule"
    custom: Any  # the jax.custom_vjp / jax.custom_jvp / jaxcnn custom_rule object
    static: tuple  # nondiff_argnums
    tree: Any  # treedef of the positional arguments
    leaves: list  # every leaf; arrays are replaced by their values (None until recorded)
    arrays: list[int]  # which leaves are arrays (recorded through the callback)
    source: str
    path: str
    transforms: tuple[str, ...]
    recorded: bool = False
    cotangent: Any = None
    keys: dict = dataclasses.field(default_factory=dict)  # leaf -> PRNG implementation, for typed keys

    @property
    def args(self) -> tuple:
        return jax.tree_util.tree_unflatten(self.tree, self.leaves)


class _Recorder:
    def __init__(self):
        self.calls: list[Call] = []
        self.active = False  # inside a rule being called: its inner calls run untouched
        self.cotangents_only = False
        self.seen: dict = {}


_recorder: Optional[_Recorder] = None


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic)) or isinstance(leaf, jax.core.Tracer)


def _place() -> Optional[tuple[str, str]]:
    """``(file:line (function), model path)`` of the call: the first frame outside JAX, the
    standard library and this capture, and the modules it is made inside (Flax linen's bound
    path, else the classes of the ``self`` of Flax nnx/Equinox/Haiku module frames). None for
    a call made by another rule's own derivative (a ``custom_jvp`` rule calling its primal, a
    ``custom_rule``'s primal, fwd, bwd or jvp traced by JAX)."""
    source, flax_path, classes = "", None, []
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename == _cd.__file__ and frame.f_code.co_name in _RULE_TRACERS or filename == _rule.__file__:
            return None
        if not source and not filename.startswith(_SKIP) and not filename.startswith("<frozen"):
            shown = os.path.relpath(filename) if filename.startswith(os.getcwd() + os.sep) else filename
            source = f"{shown}:{frame.f_lineno} ({frame.f_code.co_name})"
        owner = frame.f_locals.get("self") if source else None
        if owner is not None:
            scope = getattr(owner, "scope", None)
            if flax_path is None and scope is not None and hasattr(scope, "path") and _is_flax_module(owner):
                flax_path = "/".join(str(p) for p in scope.path) or type(owner).__name__
            if _is_module(owner) and not type(owner).__name__.startswith("_") and (
                    not classes or classes[-1] != type(owner).__name__):  # not a library's private wrapper
                classes.append(type(owner).__name__)
        frame = frame.f_back
    path = flax_path if flax_path is not None else " > ".join(reversed(classes))
    if not path:  # what the program names with jax.named_scope (jaxcnn's layers; Haiku)
        path = "/".join(p for p in str(source_info_util.current_name_stack()).split("/")
                        if p and not re.fullmatch(r"[\w.-]*\(.*\)", p))  # without transforms: jvp(), jit(f)
    return source or "?", path


#: The functions of jax's custom_derivatives that trace a rule's own derivative.
_RULE_TRACERS = ("_flatten_jvp", "_flatten_fwd", "_flatten_bwd", "jvp", "lift_jvp", "_get_jvp")


def _is_flax_module(owner: Any) -> bool:
    return any(c.__module__.startswith("flax.linen") and c.__name__ == "Module" for c in type(owner).__mro__)


def _is_module(owner: Any) -> bool:
    return any(c.__name__ == "Module" and c.__module__.split(".")[0] in ("flax", "equinox", "haiku")
               for c in type(owner).__mro__)


def _is_float(leaf: Any) -> bool:
    return jnp.issubdtype(getattr(leaf, "dtype", None) or jnp.result_type(leaf), jnp.inexact)


def _is_key(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _transforms(leaves: list) -> tuple[str, ...]:
    found = []
    for leaf in leaves:
        t = leaf
        while isinstance(t, jax.core.Tracer):
            name = type(t).__name__
            kind = {"BatchTracer": "vmap", "JVPTracer": "autodiff", "LinearizeTracer": "autodiff",
                    "DynamicJaxprTracer": "jit"}.get(name)
            if kind and kind not in found:
                found.append(kind)
            t = getattr(t, "val", getattr(t, "primal", None))
    return tuple(found)


def _wrapped(kind: str, original: Callable) -> Callable:
    def call(self, *args, **kwargs):
        rec = _recorder
        if rec is None or rec.active:
            return original(self, *args, **kwargs)
        args = _cd.resolve_kwargs(self.fun, args, kwargs)
        place = _place()
        if place is None:
            return original(self, *args)
        rec.active = True
        try:
            out = original(self, *args)
        finally:
            rec.active = False
        if rec.cotangents_only:  # the n-th call of this rule at this place in the first run
            key = (id(self), place[0])
            n = rec.seen.get(key, 0)
            rec.seen[key] = n + 1
            same = [c for c in rec.calls if id(c.custom) == id(self) and c.source == place[0]]
            return _watch(out, same[n]) if n < len(same) else out
        leaves, tree = jax.tree_util.tree_flatten(args)
        arrays = [k for k, leaf in enumerate(leaves) if _is_array(leaf)]
        source, path = place
        found = Call(kind, self, tuple(self.nondiff_argnums), tree, list(leaves), arrays, source, path,
                     _transforms(leaves))
        rec.calls.append(found)
        if arrays:  # typed PRNG keys travel as their key data and are wrapped again on the host
            keys = {k: jax.random.key_impl(leaves[k]) for k in arrays if _is_key(leaves[k])}
            found.keys = keys
            jax.debug.callback(lambda *values: _store(found, values),
                               *[jax.random.key_data(leaves[k]) if k in keys else leaves[k] for k in arrays])
        else:
            found.recorded = True
        return _watch(out, found)

    return call


def _store(call: Call, values) -> None:
    if call.recorded:  # a later iteration, a rematerialised forward, another example: the first is kept
        return
    for k, value in zip(call.arrays, values):
        call.leaves[k] = (jax.random.wrap_key_data(np.asarray(value), impl=call.keys[k]) if k in call.keys
                          else np.asarray(value))
    call.recorded = True


def _store_cotangent(call: Call, values) -> None:
    if call.cotangent is None:
        call.cotangent = [np.asarray(v) for v in values]


def _watch(out: Any, call: Call) -> Any:
    """``out`` through an identity whose backward records the cotangent arriving at it."""
    leaves, tree = jax.tree_util.tree_flatten(out)
    floats = [k for k, leaf in enumerate(leaves) if _is_float(leaf)]
    if not floats:
        return out

    @jax.custom_vjp
    def identity(*xs):
        return xs

    def bwd(_, gs):
        jax.debug.callback(lambda *values: _store_cotangent(call, values), *gs)
        return gs

    identity.defvjp(lambda *xs: (xs, None), bwd)
    watched = _original_vjp_call(identity, *[leaves[k] for k in floats])
    for k, w in zip(floats, watched):
        leaves[k] = w
    return jax.tree_util.tree_unflatten(tree, leaves)


_original_vjp_call = _cd.custom_vjp.__call__
_original_jvp_call = _cd.custom_jvp.__call__
_original_rule_call = _rule.custom_rule.__call__


@contextlib.contextmanager
def recording(recorder: _Recorder):
    """Within: every custom rule called while tracing is recorded by ``recorder``."""
    global _recorder
    jax.clear_caches()
    _recorder = recorder
    _cd.custom_vjp.__call__ = _wrapped("custom_vjp", _original_vjp_call)
    _cd.custom_jvp.__call__ = _wrapped("custom_jvp", _original_jvp_call)
    _rule.custom_rule.__call__ = _wrapped("custom_rule", _original_rule_call)
    try:
        yield recorder
    finally:
        _cd.custom_vjp.__call__ = _original_vjp_call
        _cd.custom_jvp.__call__ = _original_jvp_call
        _rule.custom_rule.__call__ = _original_rule_call
        _recorder = None
        jax.effects_barrier()
        jax.clear_caches()


def record(fn: Callable, args: tuple, kwargs: dict) -> list[Call]:
    """Every custom rule call of ``fn(*args, **kwargs)``, with its operands from one run and,
    where the program has its own backward pass (a train step), the cotangent it sends; else
    the cotangent of ``⟨fn(x), 1⟩`` over the floating outputs (a loss: its gradient)."""
    recorder = _Recorder()
    with recording(recorder):
        jax.block_until_ready(fn(*args, **kwargs))
        jax.effects_barrier()
    calls = recorder.calls
    if calls and all(c.cotangent is None for c in calls):
        again = _Recorder()
        again.calls, again.cotangents_only = calls, True
        with recording(again):
            _gradient_of_sum(fn, args, kwargs)
            jax.effects_barrier()
    return calls


def _gradient_of_sum(fn: Callable, args: tuple, kwargs: dict) -> None:
    flat, tree = jax.tree_util.tree_flatten(args)
    where = [k for k, leaf in enumerate(flat) if _is_array(leaf) and _is_float(leaf)]

    def total(*floats):
        leaves = list(flat)
        for k, x in zip(where, floats):
            leaves[k] = x
        out = fn(*jax.tree_util.tree_unflatten(tree, leaves), **kwargs)
        outs = [o for o in jax.tree_util.tree_leaves(out) if _is_float(o)]
        return sum(jnp.sum(o.astype(jnp.float32)) for o in outs) if outs else jnp.float32(0)

    if where:
        try:
            jax.block_until_ready(jax.grad(total, argnums=tuple(range(len(where))))(*[flat[k] for k in where]))
        except Exception:  # noqa: BLE001 (not differentiable as a whole: random cotangents only)
            pass
