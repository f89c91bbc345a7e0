"""A per-layer table of output shapes and parameter counts, like Keras' ``model.summary()``."""

from __future__ import annotations

import jax

from jaxcnn.nn.core import Layer, Shape


def _rows(layer: Layer, params, input_shape, key, depth: int):
    """(name, output shape, count) per leaf layer; a serial chain is expanded in place."""
    if layer.children:
        rows, shape = [], input_shape
        for child, p, k in zip(layer.children, params, jax.random.split(key, len(layer.children))):
            child_rows, shape = _rows(child, p, shape, k, depth + 1)
            rows += child_rows
        return rows, shape
    _, shape = layer.init(key, input_shape)
    return [("  " * max(depth - 1, 0) + layer.name, shape, layer.count(params))], shape


def summary(model: Layer, input_shape: Shape, key=None) -> str:
    """Returns a table: one row per layer with its output shape and trainable parameters.

    Parameters fixed at zero by a connection table are not counted (LeNet-5's C3 has
    1,516 trainable parameters, not 2,416).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    params, _ = model.init(key, tuple(input_shape))
    rows, _ = _rows(model, params, tuple(input_shape), key, 0)
    table = [("layer", "output shape", "params")] + [(n, str(tuple(s)), f"{c:,}") for n, s, c in rows]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    rule = "-" * (sum(widths) + 4)
    lines = [f"{table[0][0]:<{widths[0]}}  {table[0][1]:<{widths[1]}}  {table[0][2]:>{widths[2]}}", rule]
    lines += [f"{n:<{widths[0]}}  {s:<{widths[1]}}  {c:>{widths[2]}}" for n, s, c in table[1:]]
    lines += [rule, f"total trainable parameters: {model.count(params):,}"]
    return "\n".join(lines)
