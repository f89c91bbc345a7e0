"""The mutation suite: deliberately wrong backward rules (and, in
:mod:`jaxcnn._certify.forward_mutants`, forward rules), to prove the checker catches them.

Each :class:`Mutant` is an op of :mod:`jaxcnn.ops` with the real forward and the real
backward rule, except for the cotangent of one argument, which a classic mistake
replaces (a missing kernel flip, δ not upsampled by the stride, the padding not cropped,
a missing ``1/N``, max-pool δ spread over the window, ``=`` instead of ``+=`` on
overlapping windows, ...). :func:`run` puts every mutant through the same checks as
``jaxcnn verify`` (hand VJP vs autodiff of the reference, float64), on the registry's
samples where its mistake can show, until one catches it; the mutant counts as caught
when the report blames exactly the broken argument, and the failing check is diagnosed
(it should read "rule wrong"). ``jaxcnn verify --mutants`` prints the table.

The wrong rules are written as the right formula at a wrong operand where possible
(no kernel flip = ``right(g, w=flip(w))``, the real rule of the broken argument at the
flipped kernel), so that each stays one line that says what the mistake is; the broken
argument is named once, in the :class:`Mutant`, and its op by the mutant's name.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import math
import time
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _shapes, ops
from jaxcnn._certify import display, runner
from jaxcnn._certify.forward_mutants import FORWARD_MUTANTS, ForwardMutant
from jaxcnn._certify.registry import REGISTRY
from jaxcnn._certify.runner import Record
from jaxcnn.verify import Sample


@dataclasses.dataclass(frozen=True)
class Mutant:
    """A wrong backward rule for one argument of one op.

    Attributes:
      name: ``"<op>.<mistake>"``: the op of :mod:`jaxcnn.ops` (and of the registry) it breaks.
      argument: the argument whose cotangent is wrong, by name (what the report must blame).
      description: the mistake, in words.
      wrong: ``(right, g, args, settings) -> cotangent`` of ``argument``: ``args`` by position
        and by name (``args.w``); ``right(g, settings=None, op=None, **operands)`` the real
        rule's cotangent of ``argument`` (of ``op``, at these settings, these operands by name).
      applies: whether a registry sample can show the mistake (a stride to forget, a
        batch to sum over, overlapping windows, ...).
      lecture: where the lecture notes warn against it (a quiz, a poll, a slide), if they do.
    """

    name: str
    argument: str
    description: str
    wrong: Callable
    applies: Callable[[Sample], bool] = lambda sample: True
    lecture: str = ""

    @property
    def op(self) -> str:
        return self.name.split(".")[0]

    def build(self) -> Callable:
        """The mutated op, ``f(*args, **settings)``: real forward, this mistake in the backward."""
        real_op = getattr(ops, self.op)
        names = list(inspect.signature(real_op).parameters)
        position = names.index(self.argument)

        @functools.wraps(real_op)
        def mutated(*args, **settings):
            real = functools.partial(real_op, **settings)

            @jax.custom_vjp
            def f(*a):
                return real(*a)

            def bwd(a, g):
                cotangents = list(jax.vjp(real, *a)[1](g))
                args = collections.namedtuple("Arguments", names[: len(a)])(*a)

                def right(g, settings_=None, op=None, **operands):
                    at = settings if settings_ is None else settings_
                    return jax.vjp(functools.partial(getattr(ops, op or self.op), **at),
                                   *args._replace(**operands))[1](g)[position]

                cotangents[position] = self.wrong(right, g, args, settings)
                return tuple(None if _is_float0(c) else c for c in cotangents)

            f.defvjp(lambda *a: (real(*a), a), bwd)
            return f(*args)

        mutated.__name__ = self.name
        return mutated


def _is_float0(c: Any) -> bool:
    return all(getattr(l, "dtype", None) == jax.dtypes.float0 for l in jax.tree_util.tree_leaves(c))


# --------------------------------------------------------------------------- building blocks


def _flip(w):
    """rot180 of a kernel ``(*window, C_in, C_out)`` over its spatial axes."""
    return lax.rev(w, tuple(range(w.ndim - 2)))


def _spatial(a) -> tuple[int, ...]:
    return tuple(range(1, a.ndim - 1))


def _pads(args, settings, pool: bool = False):
    """The forward's resolved ``(lo, hi)`` padding per spatial axis (``args[0]`` is the input)."""
    x, window = args[0], settings.get("window")
    if pool:
        return _shapes.pool_geometry("mutant", x.shape[1:-1], window, settings.get("stride"),
                                     settings.get("padding", "VALID"), settings.get("dilation", 1),
                                     settings.get("ceil_mode", False)).pads
    if window is None:  # conv: the window is the kernel's
        window = args[1].shape[:-2]
    return _shapes.geometry("mutant", x.shape[1:-1], window, settings.get("stride", 1),
                            settings.get("padding", "VALID"), settings.get("dilation", 1)).pads


def _window_positions(x_shape, settings, pool: bool) -> np.ndarray:
    """Flat positions in the padded grid of every window's entries, ``(*out, K)``, window order."""
    window = _shapes.spatial_tuple("mutant", "window", settings["window"], len(x_shape) - 2)
    stride = settings.get("stride") if pool else settings.get("stride", 1)
    stride = window if stride is None else _shapes.spatial_tuple("mutant", "stride", stride, len(window))
    dilation = _shapes.spatial_tuple("mutant", "dilation", settings.get("dilation", 1), len(window))
    pads = _pads((np.zeros(x_shape),), settings, pool)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(x_shape[1:-1], pads))
    extent = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    out = [(p - e) // s + 1 for p, e, s in zip(padded, extent, stride)]
    per_axis = [np.arange(o)[:, None] * s + np.arange(k)[None, :] * d
                for o, s, k, d in zip(out, stride, window, dilation)]
    grids = np.meshgrid(*[p.reshape(-1) for p in per_axis], indexing="ij")  # over (o₁, k₁, o₂, k₂, ...)
    flat = np.ravel_multi_index(tuple(grids), padded).reshape([d for o, k in zip(out, window) for d in (o, k)])
    n = len(window)
    return flat.transpose([*range(0, 2 * n, 2), *range(1, 2 * n, 2)]).reshape(*out, math.prod(window))


def _overlapping(pool: bool) -> Callable[[Sample], bool]:
    """Whether some input element lies in more than one window (where ``+=`` matters)."""
    def applies(sample: Sample) -> bool:
        positions = _window_positions(np.shape(sample.args[0]), sample.settings, pool)
        return len(np.unique(positions)) < positions.size

    return applies


def _assign_windows(values, x_shape, settings, pool: bool, positions=None, add: bool = False):
    """``dx_pad[p] = value`` (assignment, the mistake; ``+=`` with ``add``) for every window
    entry, then cropped.

    ``values`` is ``(N, *out, K, C)`` (or ``(N, *out, C)`` with ``positions`` per entry).
    """
    pads = _pads((np.zeros(x_shape),), settings, pool)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(x_shape[1:-1], pads))
    n, c = x_shape[0], x_shape[-1]
    if positions is None:
        positions = jnp.broadcast_to(_window_positions(x_shape, settings, pool), values.shape[:-1])
    batch = jnp.arange(n).reshape((n,) + (1,) * (positions.ndim - 1))
    flat = jnp.zeros((n, math.prod(padded), c), values.dtype)
    if positions.ndim == values.ndim:  # one position per (example, window, channel)
        channel = jnp.arange(c).reshape((1,) * (positions.ndim - 1) + (c,))
        flat = flat.at[batch, positions, channel].set(values)
    else:
        flat = flat.at[batch, positions].add(values) if add else flat.at[batch, positions].set(values)
    grid = flat.reshape(n, *padded, c)
    return grid[(slice(None), *(slice(lo, lo + size) for (lo, _), size in zip(pads, x_shape[1:-1])), slice(None))]


def _bias_mean_over_batch(right, g, args, settings):
    """``db`` averaged instead of summed over the batch (summed over positions only)."""
    return jnp.mean(jnp.sum(g, axis=tuple(range(1, g.ndim - 1))), axis=0)


def _has(i: int, predicate: Callable = lambda a: True) -> Callable[[Sample], bool]:
    """Whether positional argument ``i`` is given and satisfies ``predicate``."""
    def given(sample: Sample) -> bool:
        return len(sample.args) > i and sample.args[i] is not None and bool(predicate(np.asarray(sample.args[i])))

    return given


def _setting(predicate: Callable[[dict], bool]) -> Callable[[Sample], bool]:
    return lambda sample: bool(predicate(sample.settings))


def _both(*predicates) -> Callable[[Sample], bool]:
    return lambda sample: all(p(sample) for p in predicates)


def _batch_gt_1(sample: Sample) -> bool:
    return np.ndim(sample.args[0]) >= 2 and np.shape(sample.args[0])[0] > 1


def _strided(settings: dict) -> bool:
    return np.max(settings.get("stride", 1)) > 1


def _padded_low(sample: Sample) -> bool:
    return any(lo > 0 for lo, _ in _pads(sample.args, sample.settings))


def _window_gt_1(sample: Sample) -> bool:
    return math.prod(np.shape(sample.args[1])[:-2]) > 1


# --------------------------------------------------------------------------- the mistakes: conv


def _conv_no_stride_upsampling(right, g, args, settings):
    """The rule at stride 1 with δ packed at the start: its S − 1 zeros never inserted."""
    dense = dict(settings, stride=1)
    full = jax.eval_shape(functools.partial(ops.conv, **dense), *args).shape
    return right(jnp.zeros(full, g.dtype).at[tuple(slice(0, n) for n in g.shape)].set(g), dense)


def _conv_padding_not_cropped(right, g, args, settings):
    """``dx`` of the padded map keeps its first n entries instead of deleting the padding."""
    x = args.x
    pads = _pads(args, settings)
    unpadded = dict(settings, padding="VALID")
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    dx_padded = right(g, unpadded, x=padded)
    return dx_padded[(slice(None), *(slice(0, n) for n in x.shape[1:-1]), slice(None))]


def _conv_transposed_kernel(right, g, args, settings):
    """The spatially transposed kernel used where the lectures rotate it by 180°."""
    w = args.w
    n = w.ndim - 2
    transposed = jnp.transpose(w, (*reversed(range(n)), n, n + 1))
    return right(g, w=_flip(transposed))


def _conv_channels_permuted(right, g, args, settings):
    """``dw`` laid out ``(…, C_out, C_in)`` and read as ``(…, C_in, C_out)`` (OIHW vs HWIO)."""
    dw = right(g)
    return dw.reshape(*dw.shape[:-2], dw.shape[-1], dw.shape[-2]).swapaxes(-1, -2)


def _conv_own_map_only(right, g, args, settings):
    """``δ_p' = δ_p *full w_pp``: only the output map of the same index, not ``Σ_q δ_q *full w_qp``."""
    w = args.w
    own = w * jnp.asarray(np.eye(w.shape[-2], w.shape[-1]), w.dtype)  # keep w_pp, drop q ≠ p
    return right(g, w=own)


def _conv_connections_ignored(right, g, args, settings):
    """Absent connections get the gradient of a fully connected kernel."""
    full = {k: v for k, v in settings.items() if k != "connections"}
    return right(g, full)


def _dense_of_groups(right, g, args, settings):
    """The rule of the dense conv whose every input map feeds every output map, each group's
    kernel repeated over all groups."""
    w_dense = jnp.tile(args.w, (1,) * (args.w.ndim - 2) + (settings["groups"], 1))  # (*window, C_in, C_out)
    return right(g, {k: v for k, v in settings.items() if k != "groups"}, w=w_dense)


def _conv_groups_mixed_dx(right, g, args, settings):
    """``dx_p = Σ_q δ_q *full w_qp`` over every output map q, not only p's group's."""
    return _dense_of_groups(right, g, args, settings)


def _conv_groups_dw_first_block(right, g, args, settings):
    """``dW`` computed densely and cut to the first ``C_in / g`` input maps for every group,
    not each group's own block ``dW[..., j·C_in/g + p, j·C_out/g + q]``."""
    return _dense_of_groups(right, g, args, settings)[..., : args.w.shape[-2], :]


def _grouped(sample: Sample) -> bool:
    return sample.settings.get("groups", 1) > 1


def _conv_transpose_output_padding_ignored(right, g, args, settings):
    """``dx`` as if the output had no ``output_padding``: δ's last ``a`` positions per axis dropped."""
    extra = _shapes.spatial_tuple("mutant", "output_padding", settings["output_padding"], g.ndim - 2, minimum=0)
    cropped = g[(slice(None), *(slice(0, n - a) for n, a in zip(g.shape[1:-1], extra)), slice(None))]
    return right(cropped, {**settings, "output_padding": 0})


# --------------------------------------------------------------------------- the mistakes: pooling


def _max_pool_overwrite(right, g, args, settings):
    """δ routed to the arg-max with ``=``: a maximum shared by overlapping windows keeps one δ."""
    x = args.x
    pads = _pads(args, settings, pool=True)
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    positions = _window_positions(x.shape, settings, pool=True)  # (*out, K)
    entries = padded.reshape(x.shape[0], -1, x.shape[-1])[:, positions]  # (N, *out, K, C)
    first_max = jnp.argmax(entries, axis=-2)  # (N, *out, C)
    candidates = jnp.broadcast_to(positions[None, ..., None], entries.shape)
    where = jnp.take_along_axis(candidates, first_max[..., None, :], -2)
    return _assign_windows(g, x.shape, settings, True, positions=where[..., 0, :])


def _max_pool_every_tied_maximum(right, g, args, settings):
    """δ routed with weight 1 to every maximum of a window: a tie of two passes 2δ on, no subgradient."""
    x = args.x
    padded = jnp.pad(x, ((0, 0), *_pads(args, settings, pool=True), (0, 0)), constant_values=-jnp.inf)
    positions = _window_positions(x.shape, settings, pool=True)  # (*out, K)
    entries = padded.reshape(x.shape[0], -1, x.shape[-1])[:, positions]  # (N, *out, K, C)
    routed = jnp.where(entries == entries.max(axis=-2, keepdims=True), g[..., None, :], 0)
    return _assign_windows(routed, x.shape, settings, True, add=True)


def _mean_pool_overwrite(right, g, args, settings):
    """``δ / K`` spread with ``=``: an element shared by overlapping windows keeps one share."""
    x = args.x
    per_window = g / _mean_pool_divisor(x, settings)
    k = _window_positions(x.shape, settings, pool=True).shape[-1]
    return _assign_windows(jnp.repeat(per_window[..., None, :], k, axis=-2), x.shape, settings, True)


def _mean_pool_divisor(x, settings):
    """``K``, or with ``count_padding=False`` the number of real elements of each window."""
    window = _shapes.spatial_tuple("mutant", "window", settings["window"], x.ndim - 2)
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    counted = dict(settings, count_padding=True)
    real = ops.mean_pool(ones, **counted) * math.prod(window)
    return real if settings.get("count_padding", True) is False else jnp.asarray(math.prod(window), x.dtype)


def _ceil_divisor_ratio(x, settings):
    """``divisor_i / K`` per output position, PyTorch's divisor under ``ceil_mode`` (the input
    and its explicit padding count, the positions added by rounding up do not): the right
    rule at ``g · divisor / K`` spreads ``g / K``."""
    where = (x.shape[1:-1], settings["window"], settings.get("stride"), settings.get("padding", "VALID"),
             settings.get("dilation", 1))
    geom, explicit = _shapes.pool_geometry("mutant", *where, True), _shapes.pool_geometry("mutant", *where).pads
    counts = np.ones(())
    for k, s, d, o, (lo, _), n, (low, high) in zip(geom.window, geom.stride, geom.dilation, geom.out_shape,
                                                  geom.pads, x.shape[1:-1], explicit):
        entries = np.arange(o)[:, None] * s - lo + np.arange(k)[None, :] * d  # input positions, padding < 0
        counts = np.multiply.outer(counts, np.sum((entries >= -low) & (entries < n + high), axis=1))
    return jnp.asarray(counts[None, ..., None] / math.prod(geom.window), x.dtype)


# --------------------------------------------------------------------------- the mistakes: adaptive pooling


def _adaptive_windows(x_shape, settings):
    """Per spatial axis, PyTorch's ``(start, end)`` of every adaptive window."""
    out = _shapes.adaptive_output_shape("mutant", x_shape[1:-1], settings["output_size"])
    return [_shapes.adaptive_windows(n, m) for n, m in zip(x_shape[1:-1], out)]


def _adaptive_sizes(x_shape, settings):
    """``|W_i|`` per output position, ``(1, *out, 1)``."""
    sizes = np.ones(())
    for start, end in _adaptive_windows(x_shape, settings):
        sizes = np.multiply.outer(sizes, end - start)
    return sizes[None, ..., None]


def _adaptive_overlapping(sample: Sample) -> bool:
    """Some input position lies in two windows (where ``+=`` matters)."""
    return any(np.any(end[:-1] > start[1:]) for start, end in _adaptive_windows(np.shape(sample.args[0]),
                                                                                 sample.settings))


def _adaptive_uneven(sample: Sample) -> bool:
    """The windows do not all have one size."""
    return np.ptp(_adaptive_sizes(np.shape(sample.args[0]), sample.settings)) > 0


def _no_indices(sample: Sample) -> bool:
    return not sample.settings.get("return_indices", False)


def _adaptive_mean_overwrite(right, g, args, settings):
    """``δ_i / |W_i|`` spread with ``=``: a position in two windows keeps the last window's share."""
    share = g / jnp.asarray(_adaptive_sizes(args.x.shape, settings), g.dtype)
    for axis, (start, end) in enumerate(_adaptive_windows(args.x.shape, settings)):
        last = np.searchsorted(start, np.arange(args.x.shape[axis + 1]), side="right") - 1  # the last window holding p
        share = jnp.take(share, last, axis=axis + 1)
    return share


def _adaptive_max_overwrite(right, g, args, settings):
    """δ routed to the arg-max with ``=``: a maximum shared by overlapping windows keeps one δ."""
    x = args.x
    _, indices = ops.adaptive_max_pool(x, settings["output_size"], return_indices=True)
    n, c = x.shape[0], x.shape[-1]
    batch = jnp.arange(n).reshape((n,) + (1,) * (g.ndim - 1))
    channel = jnp.arange(c).reshape((1,) * (g.ndim - 1) + (c,))
    dx = jnp.zeros((n, math.prod(x.shape[1:-1]), c), g.dtype).at[batch, indices, channel].set(g)
    return dx.reshape(x.shape)


def _max_pool_dilation_ignored(right, g, args, settings):
    """The arg-max found over the dilated window, but δ placed as if the window were contiguous."""
    x = args.x
    _, indices = ops.max_pool(x, **dict(settings, return_indices=True))
    window = _shapes.spatial_tuple("mutant", "window", settings["window"], x.ndim - 2)
    dilation = _shapes.spatial_tuple("mutant", "dilation", settings.get("dilation", 1), x.ndim - 2)
    position = jnp.stack(jnp.unravel_index(indices, x.shape[1:-1]))  # (d, N, *out, C) input positions
    start = [lax.broadcasted_iota(jnp.int32, indices.shape, a + 1) * s - lo
             for a, (s, (lo, _)) in enumerate(zip(_stride(settings, window), _pads(args, settings, True)))]
    offset = [(p - st) // d for p, st, d in zip(position, start, dilation)]  # P(i) per axis
    wrong = [jnp.clip(st + o, 0, n - 1) for st, o, n in zip(start, offset, x.shape[1:-1])]
    flat = jnp.ravel_multi_index(tuple(wrong), x.shape[1:-1], mode="clip")
    n, c = x.shape[0], x.shape[-1]
    dx = jnp.zeros((n, int(np.prod(x.shape[1:-1])), c), g.dtype)
    batch = jnp.arange(n).reshape((n,) + (1,) * (g.ndim - 1))
    channel = jnp.arange(c).reshape((1,) * (g.ndim - 1) + (c,))
    return dx.at[batch, flat, channel].add(g).reshape(x.shape)


def _stride(settings, window):
    stride = settings.get("stride")
    return window if stride is None else _shapes.spatial_tuple("mutant", "stride", stride, len(window))


def _im2col_overwrite(right, g, args, settings):
    """col2im with ``=`` instead of overlap-add: an element in several windows keeps one entry."""
    x = args.x
    k = _window_positions(x.shape, settings, pool=False).shape[-1]
    return _assign_windows(g.reshape(*g.shape[:-1], k, x.shape[-1]), x.shape, settings, False)


# --------------------------------------------------------------------------- the mistakes: resampling


def _factors(x, settings):
    return _shapes.spatial_tuple("mutant", "factor", settings["factor"], x.ndim - 2)


def _upsample_nearest_adjoint(right, g, args, settings):
    """``dx[i] = Σ_j g[S·i + j]``: the adjoint of nearest-neighbour upsampling, not of zero insertion."""
    x = args.x
    factor = _factors(x, settings)
    tail = [(0, 0), *((0, n * s - m) for n, s, m in zip(x.shape[1:-1], factor, g.shape[1:-1])), (0, 0)]
    blocks_shape = (x.shape[0], *(d for n, s in zip(x.shape[1:-1], factor) for d in (n, s)), x.shape[-1])
    blocks = jnp.pad(g, tail).reshape(blocks_shape)
    return jnp.sum(blocks, axis=tuple(range(2, 2 * len(factor) + 1, 2)))


def _downsample_nearest_adjoint(right, g, args, settings):
    """δ copied to all ``S`` positions of a block instead of zeros at the dropped ones."""
    x = args.x
    for axis, s in enumerate(_factors(x, settings), start=1):
        g = jnp.repeat(g, s, axis=axis)
    return g[tuple(slice(0, n) for n in x.shape)]


def _any_factor_gt_1(sample: Sample) -> bool:
    return np.max(sample.settings["factor"]) > 1


# --------------------------------------------------------------------------- the mistakes: normalisation


def _normalised(x, axes, eps, mean=None, var=None):
    """``x̂`` and ``1/σ`` over ``axes`` (batch statistics, or the given running ones)."""
    if mean is None:
        mean, var = jnp.mean(x, axes, keepdims=True), jnp.var(x, axes, keepdims=True)
    inv_sigma = lax.rsqrt(var + eps)
    return (x - mean) * inv_sigma, inv_sigma


def _bn_parts(args, settings):
    """Batch norm's ``g``-independent parts at the sample: ``x̂``, ``γ/σ`` and the reduced axes."""
    x, gamma = args.x, args.gamma
    axis = settings.get("axis", -1) % x.ndim
    axes = tuple(a for a in range(x.ndim) if a != axis)
    shape = tuple(1 if a in axes else n for a, n in enumerate(x.shape))
    stats = [None if settings.get(k) is None else jnp.reshape(settings[k], shape) for k in ("mean", "var")]
    x_hat, inv_sigma = _normalised(x, axes, settings.get("eps", 1e-5), *stats)
    gamma = jnp.ones(shape, x.dtype) if gamma is None else jnp.reshape(gamma, shape)
    return x_hat, gamma * inv_sigma, axes


def _bn_dropped_term(term: Callable) -> Callable:
    """The right ``dx`` with one term of ``(γ/σ)(g − mean(g) − x̂·mean(g x̂))`` left out (added back)."""
    def wrong(right, g, args, settings):
        x_hat, scale, axes = _bn_parts(args, settings)
        g_y = g[0]  # training mode returns (y, μ, σ²): the cotangent of y
        return right(g) + scale * term(g_y, x_hat, axes)

    return wrong


def _bn_eval_with_batch_rule(right, g, args, settings):
    """Evaluation mode differentiated as if the running statistics were batch statistics."""
    x_hat, scale, axes = _bn_parts(args, settings)
    return scale * (g - jnp.mean(g, axes, keepdims=True) - x_hat * jnp.mean(g * x_hat, axes, keepdims=True))


def _layer_norm_gamma_outside(right, g, args, settings):
    """``dx = (γ/σ)(g − mean(g) − x̂·mean(g x̂))``: batch norm's rule, with γ taken as constant
    over the normalised elements, instead of ``(1/σ)(ĝ − mean(ĝ) − x̂·mean(ĝ x̂))``, ``ĝ = gγ``."""
    x, gamma = args.x, args.gamma
    axes = _checks_axes(settings.get("axis", -1), x.ndim)
    x_hat, inv_sigma = _normalised(x, axes, settings.get("eps", 1e-5))
    gamma = jnp.reshape(gamma, tuple(n if a in axes else 1 for a, n in enumerate(x.shape)))
    return gamma * inv_sigma * (g - jnp.mean(g, axes, keepdims=True)
                                - x_hat * jnp.mean(g * x_hat, axes, keepdims=True))


def _checks_axes(axis, ndim) -> tuple[int, ...]:
    return tuple(sorted(a % ndim for a in ((axis,) if isinstance(axis, int) else axis)))


def _group_norm_means_over_all_channels(right, g, args, settings):
    """The per-group ``x̂`` and ``σ``, but the backward's two means taken over all channels."""
    x, gamma, groups = args.x, args.gamma, settings["groups"]
    grouped = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    x_hat, inv_sigma = _normalised(grouped, tuple(range(1, x.ndim - 1)) + (x.ndim,), settings.get("eps", 1e-5))
    x_hat = x_hat.reshape(x.shape)
    inv_sigma = jnp.repeat(inv_sigma.reshape(x.shape[0], *(1,) * (x.ndim - 2), groups), x.shape[-1] // groups, -1)
    g_hat = g * (1.0 if gamma is None else gamma)
    every = tuple(range(1, x.ndim))
    return inv_sigma * (g_hat - jnp.mean(g_hat, every, keepdims=True)
                        - x_hat * jnp.mean(g_hat * x_hat, every, keepdims=True))


def _dropout_mask(key, settings, shape):
    """Where the forward keeps an element (the op's own mask: a kept one is nonzero)."""
    return ops.dropout(jnp.ones(shape), key, rate=settings["rate"]) != 0


def _dropping(sample: Sample) -> bool:
    return 0 < sample.settings["rate"] < 1 and not sample.settings.get("deterministic", False)


def _kept_weight(labels, settings):
    """``D = Σ_n m_n w_{y_n}``: the summed weights of the rows not ignored."""
    w = jnp.asarray(settings["weights"])[jnp.clip(labels, 0, len(settings["weights"]) - 1)]
    ignore = settings.get("ignore_index")
    return jnp.sum(w if ignore is None else jnp.where(labels != ignore, w, 0))


def _weighted_class_id_mean(sample: Sample) -> bool:
    labels = np.asarray(sample.args[1])
    return (sample.settings.get("weights") is not None and np.issubdtype(labels.dtype, np.integer)
            and sample.settings.get("reduction", "mean") == "mean")


def _training(sample: Sample) -> bool:
    return sample.settings.get("mean") is None


# --------------------------------------------------------------------------- the catalogue


def _scaled_rule(factor: Callable) -> Callable:
    """The right rule times ``factor(args)`` (a missing ``1/N``, a missing ``½``, ...)."""
    return lambda right, g, args, settings: right(g) * factor(args)


def _elementwise(formula: Callable) -> Callable:
    """A wrong ``dx = formula(g, x, settings)`` for a one-argument op."""
    return lambda right, g, args, settings: formula(g, args.x, settings)


#: Every mutant by name: the backward ones, then the forward ones (:class:`ForwardMutant`).
MUTANTS: dict[str, "Mutant | ForwardMutant"] = {m.name: m for m in [
    Mutant("conv.no_kernel_flip", "x", "δ correlated with w itself, not rot180(w)",
           lambda right, g, a, s: right(g, w=_flip(a.w)), _window_gt_1,
           lecture="Hu & Zhu's quiz, option C; Raj's poll 3: δ *full w correlates with rot180(w), not w"),
    Mutant("conv.transposed_kernel", "x", "the spatially transposed kernel instead of the flipped one",
           _conv_transposed_kernel,
           _both(_window_gt_1, lambda s: np.ndim(s.args[1]) >= 4 and len(set(np.shape(s.args[1])[:-2])) == 1)),
    Mutant("conv.no_stride_upsampling", "x", "δ not upsampled by the stride before the full convolution",
           _conv_no_stride_upsampling, _setting(_strided),
           lecture="Raj: with stride S the derivative map is upsampled (S − 1 zeros) before the full convolution"),
    Mutant("conv.dw_no_stride_upsampling", "w", "δ not upsampled by the stride before correlating with x",
           _conv_no_stride_upsampling, _setting(_strided),
           lecture="Raj: the upsampled derivative map, not δ itself, is correlated with the input"),
    Mutant("conv.padding_not_cropped", "x", "the padded derivative map cut to n entries, not cropped",
           _conv_padding_not_cropped, _padded_low,
           lecture="Raj: the derivative map has the size of the zero-padded map; delete its padding regions"),
    Mutant("conv.dw_flipped_delta", "w", "dW correlates x with rot180(δ) instead of δ",
           lambda right, g, a, s: right(lax.rev(g, _spatial(g))),
           lecture="Raj's poll 4 (false): \"the output map must be flipped before convolution\"; "
                   "∂E/∂w = y *valid rot180(δ)"),
    Mutant("conv.own_map_only", "x", "δ_p' = δ_p *full w_pp: the other output maps fed by p left out",
           _conv_own_map_only, _has(1, lambda w: w.shape[-1] > 1),
           lecture="Hu & Zhu's quiz: δ_p' = Σ_q δ_q *full w_qp sums every output map q that input map p feeds"),
    Mutant("conv.channels_permuted", "w", "dW in (C_out, C_in) order read as (C_in, C_out)",
           _conv_channels_permuted, _has(1, lambda w: w.shape[-1] > 1 and w.shape[-2] > 1)),
    Mutant("conv.connections_ignored", "w", "absent connections of the table get a gradient",
           _conv_connections_ignored,
           _setting(lambda s: s.get("connections") is not None and not np.all(s["connections"]))),
    Mutant("conv.bias_not_summed_over_batch", "b", "db averaged over the batch instead of summed",
           _bias_mean_over_batch, _both(_has(2), _batch_gt_1)),
    Mutant("conv.groups_mixed_dx", "x", "grouped dx summed over every output map, all groups mixed",
           _conv_groups_mixed_dx, _grouped),
    Mutant("conv.groups_dw_first_block", "w",
           "grouped dW computed densely, every group given the first group's block of input maps",
           _conv_groups_dw_first_block, _grouped),
    Mutant("conv_transpose.output_padding_ignored", "x",
           "dx as if output_padding were 0: δ at the extra output positions dropped",
           _conv_transpose_output_padding_ignored,
           _setting(lambda s: np.max(s.get("output_padding", 0)) > 0)),
    Mutant("conv_transpose.no_kernel_flip", "x", "dx correlates δ with w, not with flip(w)",
           lambda right, g, a, s: right(g, w=_flip(a.w)), _window_gt_1),
    Mutant("conv_transpose.dw_flipped", "w", "dW left flipped",
           lambda right, g, a, s: _flip(right(g)), _window_gt_1),
    Mutant("conv_transpose.bias_not_summed_over_batch", "b",
           "db averaged over the batch instead of summed", _bias_mean_over_batch, _both(_has(2), _batch_gt_1)),
    Mutant("dense.bias_not_summed_over_batch", "b", "db averaged over the batch instead of summed",
           lambda right, g, a, s: jnp.mean(g.reshape(-1, g.shape[-1]), axis=0),
           _both(_has(2), lambda s: np.ndim(s.args[0]) >= 2)),
    Mutant("dense.dw_first_example_only", "w", "dW = δ xᵀ of the first example, not summed over the batch",
           lambda right, g, a, s: jnp.outer(g.reshape(-1, g.shape[-1])[0], a.x.reshape(-1, a.x.shape[-1])[0]),
           lambda s: np.ndim(s.args[0]) >= 2),
    Mutant("relu.kink_strict", "x", "dx = g·[x > 0]: the gradient stopped at x = 0",
           _elementwise(lambda g, x, s: jnp.where(x > 0, g, 0)),
           lambda s: bool(s.kink) and s.settings.get("derivative_at_zero", 1.0) == 1.0),
    Mutant("relu.kink_passes_when_asked_to_stop", "x", "derivative_at_zero=0 ignored: dx = g·[x ≥ 0]",
           _elementwise(lambda g, x, s: jnp.where(x >= 0, g, 0)),
           lambda s: bool(s.kink) and s.settings.get("derivative_at_zero") == 0.0),
    Mutant("leaky_relu.slope_forgotten", "x", "dx = g·[x ≥ 0]: ReLU's rule, the slope below 0 lost",
           _elementwise(lambda g, x, s: jnp.where(x >= 0, g, 0))),
    Mutant("log_softmax.diagonal_only", "x", "dx = g (1 − p): the off-diagonal −p_k g_i dropped",
           _elementwise(lambda g, x, s: g * (1 - jnp.exp(ops.log_softmax(x, **s)))),
           lambda s: np.shape(s.args[0])[s.settings.get("axis", -1)] > 1),
    Mutant("global_mean_pool.missing_1_over_S", "x",
           "dx = g broadcast, not divided by the map size",
           lambda right, g, a, s: right(g) * math.prod(np.shape(a.x)[1:-1]),
           lambda s: math.prod(np.shape(s.args[0])[1:-1]) > 1),
    Mutant("global_max_pool.spread_over_map", "x",
           "δ spread over the whole map, not routed to the max",
           lambda right, g, a, s: right(g, op="global_mean_pool") * math.prod(np.shape(a.x)[1:-1]),
           lambda s: math.prod(np.shape(s.args[0])[1:-1]) > 1),
    Mutant("sigmoid.derivative_from_input", "x", "f'(x) taken as x (1 − x) instead of f (1 − f)",
           _elementwise(lambda g, x, s: g * x * (1 - x))),
    Mutant("tanh.missing_square", "x", "f'(x) taken as 1 − f instead of 1 − f²",
           _elementwise(lambda g, x, s: g * (1 - jnp.tanh(x)))),
    Mutant("softmax.diagonal_jacobian_only", "x", "dx = g p (1 − p): the off-diagonal p_i p_k dropped",
           _elementwise(lambda g, x, s: g * ops.softmax(x, **s) * (1 - ops.softmax(x, **s)))),
    Mutant("softmax_cross_entropy.missing_1_over_N", "logits", "ds = g (p − t), no 1/N",
           _scaled_rule(lambda a: a.logits.size // a.logits.shape[-1]), _batch_gt_1),
    Mutant("softmax_cross_entropy.label_gradient_sign", "labels",
           "dt = +g log p / N (sign lost)", _scaled_rule(lambda a: -1.0),
           _has(1, lambda t: np.issubdtype(t.dtype, np.floating))),
    Mutant("softmax_cross_entropy.weighted_mean_divides_by_N", "logits",
           "weighted mean divided by N instead of the summed weights of the kept rows",
           lambda right, g, a, s: right(g) * _kept_weight(a.labels, s) / a.labels.size,
           _weighted_class_id_mean),
    Mutant("softmax_cross_entropy.smoothing_left_out", "logits",
           "the backward of the unsmoothed loss: ε/K never reaches the other classes",
           lambda right, g, a, s: right(g, dict(s, label_smoothing=0.0)),
           _setting(lambda s: s.get("label_smoothing", 0) > 0)),
    Mutant("softmax_cross_entropy.ignored_rows_not_masked", "logits",
           "ignore_index dropped in the backward: ignored rows get a gradient and count in the mean",
           lambda right, g, a, s: right(g, {k: v for k, v in s.items() if k != "ignore_index"},
                                        labels=jnp.clip(a.labels, 0, a.logits.shape[-1] - 1)),
           _setting(lambda s: s.get("ignore_index") is not None)),
    Mutant("euclidean_loss.sum_divided_by_N", "pred", "reduction='sum' still divided by N",
           _scaled_rule(lambda a: 1.0 / a.pred.shape[0]),
           lambda s: s.settings.get("reduction") == "sum" and np.shape(s.args[0])[0] > 1),
    Mutant("euclidean_loss.missing_1_over_N", "pred", "dz = g (z − y), no 1/N",
           _scaled_rule(lambda a: a.pred.shape[0]), lambda s: np.shape(s.args[0])[0] > 1),
    Mutant("euclidean_loss.target_gradient_sign", "target", "dy = g (z − y) / N: sign of dz",
           _scaled_rule(lambda a: -1.0)),
    Mutant("mean_subtraction.identity_backward", "x", "dx = g: the mean of g not subtracted",
           _elementwise(lambda g, x, s: g)),
    Mutant("flatten.column_major", "x", "g reshaped back in column-major (Fortran) order",
           _elementwise(lambda g, x, s: jnp.reshape(g, x.shape, order="F")), lambda s: np.ndim(s.args[0]) >= 2),
    Mutant("l2_penalty.lam_missing_half", "lam", "dλ = g Σ w², the ½ lost",
           _scaled_rule(lambda a: 2.0)),
    Mutant("l2_penalty.params_missing_lam", "params", "dw = g w, λ lost",
           lambda right, g, a, s: jax.tree_util.tree_map(lambda w: g * w, a.params), lambda s: float(s.args[1]) != 1.0),
    Mutant("max_pool.spread_over_window", "x", "δ spread over the whole window, not routed to the max",
           lambda right, g, a, s: right(g, op="mean_pool") * math.prod(_shapes.spatial_tuple(
               "mutant", "window", s["window"], a.x.ndim - 2)),
           lecture="Jearanaitanakij: the gradient flows through the neuron with the largest activation only"),
    Mutant("max_pool.overwrite_on_overlap", "x", "dx[argmax] = δ with = instead of +=",
           _max_pool_overwrite, _overlapping(pool=True),
           lecture="Raj: dy(P(l, m, i, j)) += δ, \"because this entry may be selected in multiple adjacent "
                   "overlapping windows\""),
    Mutant("max_pool.routes_to_every_tied_maximum", "x", "δ routed to every maximum of a tie (weights sum to 2)",
           _max_pool_every_tied_maximum, lambda s: bool(s.kink),
           lecture="Jearanaitanakij: the gradient flows through the neuron with the largest activation only"),
    Mutant("mean_pool.missing_1_over_K", "x", "δ spread without dividing by the window size",
           lambda right, g, a, s: right(g) * math.prod(_shapes.spatial_tuple(
               "mutant", "window", s["window"], a.x.ndim - 2)), lambda s: s.settings.get("count_padding", True),
           lecture="Raj, mean pooling: each entry of the window gets δ / K²"),
    Mutant("mean_pool.overwrite_on_overlap", "x", "δ / K spread with = instead of +=",
           _mean_pool_overwrite, _both(_overlapping(pool=True), _setting(lambda s: not s.get("ceil_mode"))),
           lecture="Raj, mean pooling: += over overlapping windows"),
    Mutant("mean_pool.ceil_extension_counted", "x",
           "ceil_mode's windows divided by K, the positions added by rounding up counted as padding",
           lambda right, g, a, s: right(g * _ceil_divisor_ratio(a.x, s)),
           _setting(lambda s: s.get("ceil_mode") and s.get("count_padding", True))),
    Mutant("adaptive_mean_pool.divided_by_largest_window", "x",
           "δ spread as δ / K, K the largest window, not each window's own |W_i|",
           lambda right, g, a, s: right(g * jnp.asarray(_adaptive_sizes(a.x.shape, s) / np.max(
               _adaptive_sizes(a.x.shape, s)), g.dtype)), _adaptive_uneven),
    Mutant("adaptive_mean_pool.overwrite_on_overlap", "x", "δ_i / |W_i| spread with = instead of +=",
           _adaptive_mean_overwrite, _adaptive_overlapping,
           lecture="Raj, mean pooling: += over overlapping windows"),
    Mutant("adaptive_max_pool.overwrite_on_overlap", "x", "dx[P(i)] = δ with = instead of +=",
           _adaptive_max_overwrite, _both(_adaptive_overlapping, _no_indices),
           lecture="Raj: dy(P(l, m, i, j)) += δ, \"because this entry may be selected in multiple adjacent "
                   "overlapping windows\""),
    Mutant("adaptive_max_pool.spread_over_window", "x", "δ spread over the whole window, not routed to the max",
           lambda right, g, a, s: right(g * jnp.asarray(_adaptive_sizes(a.x.shape, s), g.dtype),
                                        {"output_size": s["output_size"]}, op="adaptive_mean_pool"), _no_indices,
           lecture="Jearanaitanakij: the gradient flows through the neuron with the largest activation only"),
    Mutant("max_pool.dilation_ignored", "x", "δ routed to s·i − lo + P(i): the window's dilation forgotten",
           _max_pool_dilation_ignored, _setting(lambda s: np.max(s.get("dilation", 1)) > 1)),
    Mutant("im2col.overwrite_on_overlap", "x", "col2im with = instead of overlap-add (+=)",
           _im2col_overwrite, _overlapping(pool=False)),
    Mutant("upsample.nearest_neighbour_adjoint", "x", "dx[i] = Σ_j g[S·i + j] instead of g[S·i]",
           _upsample_nearest_adjoint, _any_factor_gt_1),
    Mutant("batch_norm.no_mean_g_term", "x", "dx = (γ/σ)(g − x̂·mean(g x̂)): the −mean(g) term lost",
           _bn_dropped_term(lambda g, x_hat, axes: jnp.mean(g, axes, keepdims=True)), _training),
    Mutant("batch_norm.no_xhat_term", "x", "dx = (γ/σ)(g − mean(g)): the −x̂·mean(g x̂) term lost",
           _bn_dropped_term(lambda g, x_hat, axes: x_hat * jnp.mean(g * x_hat, axes, keepdims=True)), _training),
    Mutant("batch_norm.eval_with_batch_rule", "x",
           "evaluation mode differentiated through the statistics (the training rule at the running ones)",
           _bn_eval_with_batch_rule, lambda s: not _training(s)),
    Mutant("layer_norm.gamma_outside", "x", "γ factored out of the means as in batch norm",
           _layer_norm_gamma_outside, _has(1, lambda gamma: np.ptp(gamma) > 0)),
    Mutant("group_norm.means_over_all_channels", "x",
           "the backward's means over every channel instead of the group's", _group_norm_means_over_all_channels,
           _setting(lambda s: s["groups"] > 1)),
    Mutant("dropout.not_rescaled", "x", "dx = g·m: the 1/(1 − rate) of the forward left out",
           lambda right, g, a, s: jnp.where(_dropout_mask(a.key, s, g.shape), g, 0), _dropping),
    Mutant("dropout.fresh_mask", "x", "the backward draws a new mask from a split key",
           lambda right, g, a, s: jnp.where(_dropout_mask(jax.random.split(a.key)[0], s, g.shape), g, 0)
           / (1 - s["rate"]),
           _dropping),
    Mutant("downsample.nearest_neighbour_adjoint", "x", "δ copied over the block instead of zeros",
           _downsample_nearest_adjoint, _any_factor_gt_1),
    *FORWARD_MUTANTS,
]}


# --------------------------------------------------------------------------- running them


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one mutant fared: the record of the check that caught it (None if none did)."""

    mutant: Mutant
    record: Optional[Record]
    samples_tried: int

    @property
    def blamed(self) -> tuple[str, ...]:
        """The arguments the failing check's report names."""
        if self.record is None:
            return ()
        return tuple(dict.fromkeys(r.name.split("[")[0] for r in self.record.result.arguments if not r.ok))

    @property
    def caught(self) -> bool:
        return self.record is not None

    @property
    def ok(self) -> bool:
        """Caught, and blamed on exactly the argument it breaks."""
        return self.caught and self.blamed == (self.mutant.argument,)

    def __str__(self) -> str:
        m = self.mutant
        head = f"{m.name} ({m.description}; breaks {m.argument})"
        if self.record is None:
            return f"{head}: NOT CAUGHT on {self.samples_tried} samples"
        return f"{head}: blamed {', '.join(self.blamed) or 'nothing'}\n{self.record}"

    def to_json(self) -> dict:
        r = self.record
        return {
            "mutant": self.mutant.name, "op": self.mutant.op, "argument": self.mutant.argument,
            "description": self.mutant.description, "caught": self.caught, "blamed": list(self.blamed),
            "ok": self.ok, "verdict": r.verdict if r else "", "sample": r.sample if r else "",
            "index": r.index if r else None, "samples_tried": self.samples_tried,
        }


def reproduce(name: str, index: int, transform: Optional[str] = None, seed: int = 0) -> Record:
    """The check of mutant ``name`` at registry sample ``index`` (float64), diagnosed when it
    fails: ``transform``, by default the first its kind runs (``"eager"``, or ``"adjoint"``
    for a forward mutant)."""
    m = MUTANTS[name]
    transform = transform or _transforms(m)[0]
    snippet = f"from jaxcnn._certify import mutants\nprint(mutants.reproduce({name!r}, {index}, {transform!r}))"
    return runner.check_sample(m.op, index, "float64", transform, op=m.build(), label=name, snippet=snippet, seed=seed)


def run_one(m: Mutant, seed: int = 0) -> Outcome:
    """Checks ``m`` on its applicable samples in registry order until one catches it."""
    samples = REGISTRY[m.op].samples(np.random.default_rng(seed))
    tried = 0
    for index, sample in enumerate(samples):
        if not m.applies(sample):
            continue
        tried += 1
        for transform in _transforms(m):
            record = reproduce(m.name, index, transform, seed=seed)
            if not record.ok:
                return Outcome(m, record, tried)
    return Outcome(m, None, tried)


def _transforms(m: "Mutant | ForwardMutant") -> tuple[str, ...]:
    """The checks that must catch ``m``: the hand VJP against autodiff, or a forward mutant's."""
    return m.transforms if isinstance(m, ForwardMutant) else ("eager",)


def run(names: Optional[Iterable[str]] = None, seed: int = 0) -> list[Outcome]:
    """Every mutant (or those of the ops ``names``), each checked until caught."""
    ops_wanted = set(names or REGISTRY)
    return [run_one(m, seed) for m in MUTANTS.values() if m.op in ops_wanted]


def timed_run(**kwargs) -> tuple[list[Outcome], float]:
    start = time.perf_counter()
    outcomes = run(**kwargs)
    return outcomes, time.perf_counter() - start


def format_table(outcomes: list[Outcome]) -> str:
    header = ("mutant", "argument", "caught by sample", "blamed", "verdict", "status")
    rows = [
        (
            o.mutant.name,
            o.mutant.argument,
            f"#{o.record.index} {o.record.sample}" if o.record else f"none of {o.samples_tried}",
            ", ".join(o.blamed) or "-",
            o.record.verdict if o.record else "-",
            "caught" if o.ok else ("WRONG ARGUMENT" if o.caught else "MISSED"),
        )
        for o in outcomes
    ]
    return display.format_rows(header, rows)
