"""PyTorch ``state_dict`` import and export, with every layout conversion.

A jaxcnn model's params and state sit at paths (``params["layer1"][0]["conv1"]["w"]``), a
PyTorch model's tensors at dotted keys (``layer1.0.conv1.weight``); a chain's names and
positions are both, so a model whose layers carry PyTorch's names (the zoo's, or any
``nn.serial(("conv1", ...), ...)``) maps key for key. What differs is the layout:

* ``Conv``: PyTorch's ``(C_out, C_in / g, *window)`` (OIHW, and OIW, OIDHW) is jaxcnn's
  ``(*window, C_in / g, C_out)`` (HWIO): axes moved, nothing else.
* ``ConvTranspose``: PyTorch's ``(C_in, C_out / g, *window)`` (IOHW) with the window
  flipped (jaxcnn's ``conv_transpose`` correlates with the kernel PyTorch's scatters with).
* ``Dense``: ``(n_out, n_in)`` in both (``y = x Wᵀ + b``, PyTorch's ``Linear``); after a
  ``Flatten`` of an ``(N, *spatial, C)`` map PyTorch has flattened ``(N, C, *spatial)``, so
  the input columns are permuted (and so are the vectors of a norm layer between them).
* ``BatchNorm``: ``weight``, ``bias`` are γ, β; ``running_mean``, ``running_var`` the state
  (both keep the unbiased variance); ``num_batches_tracked`` has no counterpart and is
  ignored. The momentum is a setting, not a tensor: PyTorch's ``momentum=m`` is
  ``nn.BatchNorm(momentum=1 - m)`` (its default 0.1 is jaxcnn's default 0.9).
* ``GroupNorm``, ``LayerNorm``: ``weight``, ``bias`` are γ, β.

Layers without params map to nothing (PyTorch's ``F.relu``, ``nn.ReLU``, pooling, dropout).
A layer with params of another kind (a custom :class:`jaxcnn.nn.Layer`, :func:`jaxcnn.nn.from_stax`)
is a ``ValueError`` naming it. Arrays come back in the tensors' dtype (a float64 ``state_dict``
gives float64 params, with ``jax_enable_x64``) and go out as NumPy arrays, bit for bit:

>>> import jax
>>> from jaxcnn import interop, nn
>>> model = nn.serial(("conv1", nn.Conv(4, 3)), nn.Relu(), nn.Flatten(), ("fc", nn.Dense(2)))
>>> params, state, _ = model.init(jax.random.PRNGKey(0), (-1, 5, 5, 1))
>>> state_dict = interop.to_torch_state_dict(model, params, state, (-1, 5, 5, 1))
>>> {k: v.shape for k, v in state_dict.items()}
{'conv1.weight': (4, 1, 3, 3), 'conv1.bias': (4,), 'fc.weight': (2, 36), 'fc.bias': (2,)}
>>> params2, state2 = interop.from_torch_state_dict(model, state_dict, (-1, 5, 5, 1))
>>> bool((params2["fc"]["w"] == params["fc"]["w"]).all())
True

(``torch.nn.Module.load_state_dict`` takes tensors: ``{k: torch.from_numpy(v) for k, v in
state_dict.items()}``.)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.nn.core import Layer, Shape

#: jaxcnn's leaf names and PyTorch's, per layer kind (params and state alike).
NAMES = {
    "Conv": {"w": "weight", "b": "bias"},
    "ConvTranspose": {"w": "weight", "b": "bias"},
    "Dense": {"w": "weight", "b": "bias"},
    "BatchNorm": {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"},
    "GroupNorm": {"gamma": "weight", "beta": "bias"},
    "LayerNorm": {"gamma": "weight", "beta": "bias"},
}
_IGNORED = ("num_batches_tracked",)  # BatchNorm's step counter: no counterpart (the momentum is fixed)


class _Entry(NamedTuple):
    """A layer with params or state: its path in the model's trees, the layer, its input
    shape, and the ``(*spatial, C)`` of a flatten before it whose order it must follow."""

    path: tuple
    layer: Layer
    input_shape: Shape
    flat: Optional[tuple]


# --------------------------------------------------------------------------- the walk


def _init_shape(layer: Layer, input_shape):
    shapes = []
    jax.eval_shape(lambda: shapes.append(layer.init(jax.random.PRNGKey(0), input_shape)[2]) or 0)
    return shapes[0]


def _has_leaves(layer: Layer, input_shape) -> bool:
    return bool(jax.tree_util.tree_leaves(jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), input_shape)[:2])))


def _walk(layer: Layer, input_shape, path: tuple, found: list, flat: Optional[tuple]) -> Optional[tuple]:
    """Appends an :class:`_Entry` per layer with params or state, in order; returns the flatten
    order still pending after ``layer`` (``None``: none)."""
    if layer.kind == "serial":
        shape = input_shape
        for child, key in zip(layer.children, layer.keys):
            flat = _walk(child, shape, path + (key or ()), found, flat)
            shape = _init_shape(child, shape)
        return flat
    if layer.kind == "parallel":
        for child, key, shape in zip(layer.children, layer.keys, input_shape):
            _walk(child, shape, path + (key or ()), found, None)
        return _after(layer, input_shape, flat)
    if layer.children:  # residual, a ResNet block: children that see the layer's input
        for child, key in zip(layer.children, layer.keys):
            if key is not None:
                _walk(child, input_shape, path + key, found, None)
        return _after(layer, input_shape, flat)
    if layer.kind == "Flatten":
        spatial, channels = tuple(input_shape[1:-1]), input_shape[-1]
        return (*spatial, channels) if len(input_shape) > 2 and math.prod(spatial) > 1 and channels > 1 else None
    if layer.kind in NAMES:
        found.append(_Entry(path, layer, tuple(input_shape), flat))
        return None if layer.kind == "Dense" else _after(layer, input_shape, flat)
    if _has_leaves(layer, input_shape):
        raise ValueError(f"interop: {layer.name} at params{_keystr(path)} has params or state, but PyTorch's layout "
                         f"for it is not known (only {', '.join(NAMES)} are); convert its tensors by hand.")
    return _after(layer, input_shape, flat)


def _after(layer: Layer, input_shape, flat):
    """The flatten order stays pending through layers that keep the shape (an activation, dropout)."""
    if flat is not None and tuple(_init_shape(layer, input_shape)) != tuple(input_shape):
        raise ValueError(f"interop: {layer.name} changes the shape {tuple(input_shape)} between a Flatten and the "
                         f"Dense after it, so PyTorch's (N, C, *spatial) flatten order cannot be followed through it.")
    return flat


def _keystr(path) -> str:
    return "".join(f"[{k!r}]" for k in path)


def _torch_key(path, name: str) -> str:
    return ".".join([*map(str, path), name])


# --------------------------------------------------------------------------- the layouts


def _to_torch(entry: _Entry, name: str, a: np.ndarray) -> np.ndarray:
    """jaxcnn's array ``name`` of ``entry``'s layer in PyTorch's layout."""
    kind, n = entry.layer.kind, a.ndim - 2
    if kind == "Conv" and name == "w":  # (*k, I/g, O) -> (O, I/g, *k)
        return a.transpose(n + 1, n, *range(n))
    if kind == "ConvTranspose" and name == "w":  # (*k, I/g, O) -> (I, O/g, *k), flipped
        c_in = entry.input_shape[-1]
        g = c_in // a.shape[-2]
        a = a.reshape(*a.shape[:-1], g, a.shape[-1] // g)  # (*k, I/g, g, O/g)
        a = a.transpose(n + 1, n, n + 2, *range(n)).reshape(c_in, a.shape[-1], *a.shape[:n])
        return a[(slice(None), slice(None), *[slice(None, None, -1)] * n)]
    if entry.flat is not None and (kind == "Dense" and name == "w" or kind != "Dense" and a.ndim == 1):
        lead, k, m = a.shape[:-1], a.ndim - 1, len(entry.flat) - 1  # the columns (h, w, c) -> (c, h, w)
        return a.reshape(*lead, *entry.flat).transpose(*range(k), k + m, *range(k, k + m)).reshape(*lead, -1)
    return a


def _from_torch(entry: _Entry, name: str, t: np.ndarray, like_shape: tuple) -> np.ndarray:
    """PyTorch's tensor for ``entry``'s array ``name`` in jaxcnn's layout (the inverse of :func:`_to_torch`)."""
    kind, n = entry.layer.kind, len(like_shape) - 2
    if kind == "Conv" and name == "w":  # (O, I/g, *k) -> (*k, I/g, O)
        return t.transpose(*range(2, n + 2), 1, 0)
    if kind == "ConvTranspose" and name == "w":  # (I, O/g, *k), flipped -> (*k, I/g, O)
        i_g, o = like_shape[-2:]
        g = t.shape[0] // i_g
        t = t[(slice(None), slice(None), *[slice(None, None, -1)] * n)].reshape(g, i_g, o // g, *t.shape[2:])
        return t.transpose(*range(3, n + 3), 1, 0, 2).reshape(like_shape)
    if entry.flat is not None and (kind == "Dense" and name == "w" or kind != "Dense" and t.ndim == 1):
        lead, k, m = t.shape[:-1], t.ndim - 1, len(entry.flat) - 1  # the columns (c, h, w) -> (h, w, c)
        t = t.reshape(*lead, entry.flat[-1], *entry.flat[:-1])
        return t.transpose(*range(k), *range(k + 1, k + m + 1), k).reshape(like_shape)
    return t


def _absent_connections(entry: _Entry, params_template) -> Optional[np.ndarray]:
    """Where a ``Conv`` with a connection table (LeNet-5's C3) has no weight, as a mask of ``w``'s
    shape, or ``None`` for a full one. The table is read off the layer itself: its weight
    gradient is exactly zero at the absent connections and nowhere else (for an input of ones)."""
    like = _subtree(params_template, entry.path)
    if entry.layer.count(like) == sum(leaf.size for leaf in like.values()):
        return None
    params = {k: jnp.ones(v.shape, jnp.float32) for k, v in like.items()}
    x = jnp.ones((1, *entry.input_shape[1:]), jnp.float32)
    dw = jax.grad(lambda w: jnp.sum(entry.layer.apply({**params, "w": w}, (), x)[0]))(params["w"])
    return np.asarray(dw == 0)


# --------------------------------------------------------------------------- the public pair


def _entries(model: Layer, input_shape) -> tuple[list, Any]:
    if not isinstance(model, Layer):
        raise TypeError(f"interop: `model` must be a jaxcnn.nn.Layer, got {type(model).__name__}.")
    input_shape = tuple(input_shape)
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), input_shape)[:2])
    found: list = []
    _walk(model, input_shape, (), found, None)
    return found, template


def _subtree(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _leaves(entry: _Entry, trees):
    """``(tree, name, leaf)`` for each of the layer's arrays (tree 0 the params, 1 the state), in
    PyTorch's order: weight, bias, running_mean, running_var."""
    subs = [_subtree(tree, entry.path) for tree in trees]
    for name in NAMES[entry.layer.kind]:
        for tree, sub in enumerate(subs):
            if isinstance(sub, Mapping) and name in sub:
                yield tree, name, sub[name]


def to_torch_state_dict(model: Layer, params, state, input_shape: Shape) -> dict[str, np.ndarray]:
    """``model``'s params and state as a PyTorch ``state_dict``: dotted keys (the chain's names
    and positions, then ``weight``, ``bias``, ``running_mean``, ``running_var``) to NumPy arrays
    in PyTorch's layouts (see the module docstring), in the model's order. ``input_shape`` (the
    batch axis any int) fixes the geometry a ``Flatten`` reorders.

    Raises:
      ValueError: a layer with params whose PyTorch layout is not known.
    """
    found, _ = _entries(model, input_shape)
    out = {}
    for entry in found:
        for tree, name, leaf in _leaves(entry, (params, state)):
            out[_torch_key(entry.path, NAMES[entry.layer.kind][name])] = np.array(
                _to_torch(entry, name, np.asarray(leaf)), order="C")  # a writable copy, for torch.from_numpy
    return out


def from_torch_state_dict(model: Layer, state_dict: Mapping[str, Any], input_shape: Shape, *,
                          strict: bool = True) -> tuple[Any, Any]:
    """``(params, state)`` for ``model`` from a PyTorch ``state_dict`` (or a ``torch.nn.Module``,
    whose ``state_dict()`` is taken): each jaxcnn array from the tensor at its dotted key,
    converted to jaxcnn's layout (see the module docstring), in the tensor's dtype.

    Args:
      model: the jaxcnn model; its layers with params must carry the PyTorch module's names
        (or positions, for an ``nn.Sequential``).
      state_dict: dotted keys to tensors or arrays.
      input_shape: the model's input shape (batch axis any int): fixes the flatten geometry.
      strict: refuse keys the model has no place for (``num_batches_tracked`` is always ignored).

    Raises:
      ValueError: a key the model needs is missing, a tensor's shape is not PyTorch's layout of
        the jaxcnn array's (naming the key, both shapes and the layer), or (``strict``) keys left over.
    """
    if callable(getattr(state_dict, "state_dict", None)):
        state_dict = state_dict.state_dict()
    found, template = _entries(model, input_shape)
    values: dict = {}
    wanted = []
    for entry in found:
        for tree, name, leaf in _leaves(entry, template):
            key = _torch_key(entry.path, NAMES[entry.layer.kind][name])
            wanted.append(key)
            if key not in state_dict:
                continue
            t = state_dict[key]
            t = np.asarray(t.detach().cpu() if hasattr(t, "detach") else t)
            want = _to_torch(entry, name, np.zeros(leaf.shape, np.int8)).shape
            if t.shape != want:
                raise ValueError(
                    f"from_torch_state_dict: {key} has shape {t.shape} where {entry.layer.name} at "
                    f"{('params', 'state')[tree]}{_keystr((*entry.path, name))} needs {want} (PyTorch's layout of "
                    f"jaxcnn's {tuple(leaf.shape)}). Was the state_dict made for another model or input size?")
            a = _from_torch(entry, name, t, tuple(leaf.shape))
            absent = _absent_connections(entry, template[0]) if (entry.layer.kind, name) == ("Conv", "w") else None
            if absent is not None and np.any(a[absent]):
                raise ValueError(
                    f"from_torch_state_dict: {key} has {int(np.count_nonzero(a[absent]))} nonzero weights at "
                    f"connections {entry.layer.name}'s connection table leaves out (at params"
                    f"{_keystr((*entry.path, name))}), which it would ignore; zero them in PyTorch (multiply the "
                    f"weight by the table) or give the layer no table.")
            values[(tree, *entry.path, name)] = jnp.asarray(a)
    missing = [k for k in wanted if k not in state_dict]
    if missing:
        keys = list(state_dict)
        raise ValueError(f"from_torch_state_dict: the state_dict has no {missing[:4]}{' ...' * (len(missing) > 4)} "
                         f"({len(missing)} of the {len(wanted)} tensors {model.name} needs; it has "
                         f"{keys[:4]}{' ...' * (len(keys) > 4)}).")
    extra = [k for k in state_dict if k not in wanted and k.rsplit(".", 1)[-1] not in _IGNORED]
    if strict and extra:
        raise ValueError(f"from_torch_state_dict: the state_dict has keys {model.name} has no place for: "
                         f"{extra[:4]}{' ...' if len(extra) > 4 else ''}; pass strict=False to ignore them.")

    def pick(tree):
        def leaf(path, like):
            return values[(tree, *(getattr(k, "key", getattr(k, "idx", None)) for k in path))]
        return jax.tree_util.tree_map_with_path(leaf, template[tree])

    return pick(0), pick(1)
