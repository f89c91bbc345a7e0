"""jaxcnn's op registry: for every op in :mod:`jaxcnn.ops`, its reference and sample inputs.

Samples are drawn away from kinks (no ReLU input near 0, no ties in a pooling window)
and cover every option an op has, the awkward values included (stride larger than the
window, odd sizes with ``"SAME"``, padding larger than the kernel where that is legal,
connection tables, integer / one-hot / probability labels, dilation). The few samples
that sit on a kink on purpose say so in ``Sample.kink``: they pin the op's convention
there against its reference, and finite differences must call them non-smooth.
Arrays are float64 NumPy here; :func:`cast` turns them into the dtype under test,
leaving integer leaves (labels) alone, and :func:`cast_settings` the floating arrays
among the keyword settings (running statistics, class weights).

To register a new op (or a new option of an old one), add it to :data:`REGISTRY` (or a
:class:`~jaxcnn.verify.Sample` to its list); ``jaxcnn verify`` and the tests pick it up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import ops, reference
from jaxcnn.ops._conv_plan import METHODS as CONV_METHODS  # a public tuple of conv methods is coming (issue 31)
from jaxcnn.verify import Registry, Sample


def normal(shape: Any, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    """Standard normal float64 values of ``shape`` (times ``scale``), from ``seed``."""
    return np.random.default_rng(seed).normal(size=shape) * scale


def cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves to ``dtype`` (JAX arrays); integer leaves unchanged."""
    def leaf(a):
        a = np.asarray(a)
        return jnp.asarray(a, dtype) if np.issubdtype(a.dtype, np.floating) else jnp.asarray(a)

    return jax.tree_util.tree_map(leaf, tree)


def cast_settings(settings: dict, dtype: Any) -> dict:
    """Floating NumPy arrays among the settings (running statistics, class weights) to ``dtype``;
    everything else (strides, paddings, keys) unchanged."""
    return {k: jnp.asarray(v, dtype) if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.floating) else v
            for k, v in settings.items()}


def _normal(rng, *shape, scale=1.0):
    return rng.normal(size=shape) * scale


def away_from_zero(rng, *shape, low=0.1, high=2.0):
    """Random values with ``|v|`` in ``[low, high)``: no ReLU kink, no exact zeros."""
    return rng.uniform(low, high, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def distinct(rng, *shape, gap=0.05):
    """Values at least ``gap`` apart: no ties inside any pooling window."""
    n = int(np.prod(shape))
    return rng.permutation((np.arange(n) - n / 2) * gap).reshape(shape)


def _dense(rng):
    return [
        Sample((_normal(rng, 4, 3), _normal(rng, 5, 3), _normal(rng, 5))),
        Sample((_normal(rng, 4, 3), _normal(rng, 2, 3)), label="no bias"),
        Sample((_normal(rng, 2, 3, 6), _normal(rng, 4, 6), _normal(rng, 4)), label="leading axes (2, 3, 6)"),
        Sample((_normal(rng, 7), _normal(rng, 1, 7), _normal(rng, 1)), label="1-D input, one output"),
    ]


def _elementwise(rng):
    return [
        Sample((away_from_zero(rng, 4, 5),)),
        Sample((away_from_zero(rng, 2, 3, 4, 2),)),
        Sample((away_from_zero(rng, 9, low=4.0, high=9.0),), label="saturating (9,), |x| in [4, 9)"),
    ]


def _relu(rng):
    at_zero = away_from_zero(rng, 3, 4)
    at_zero[:, ::2] = 0.0
    return _elementwise(rng) + [
        Sample((at_zero,), label="exact zeros (3, 4)", kink="the gradient passes at x = 0 (x >= 0)"),
        Sample((at_zero,), {"derivative_at_zero": 0.0}, label="exact zeros (3, 4), derivative_at_zero=0",
               kink="the gradient stops at x = 0 (x > 0), as jax.nn.relu"),
    ]


def _leaky_relu(rng):
    at_zero = away_from_zero(rng, 2, 5)
    at_zero[:, 1::2] = 0.0
    return [
        Sample((away_from_zero(rng, 4, 5),)),
        Sample((away_from_zero(rng, 2, 3, 4),), {"negative_slope": 0.2}, label="(2, 3, 4) slope 0.2"),
        Sample((away_from_zero(rng, 6),), {"negative_slope": -0.5}, label="(6,) slope -0.5"),
        Sample((at_zero,), {"negative_slope": 0.1}, label="exact zeros (2, 5), slope 0.1",
               kink="the gradient passes at x = 0 (derivative 1)"),
        Sample((at_zero,), {"negative_slope": 0.1, "derivative_at_zero": 0.1},
               label="exact zeros (2, 5), derivative_at_zero=slope",
               kink="derivative negative_slope at x = 0 (PyTorch)"),
    ]


def _log_softmax(rng):
    return [
        Sample((_normal(rng, 4, 5, scale=2),)),
        Sample((_normal(rng, 2, 3, 4, scale=2),), {"axis": 1}),
        Sample((_normal(rng, 3, 6, scale=30),), label="large logits (3, 6), scale 30"),
        Sample((_normal(rng, 5, 1),), label="one class (5, 1): y = 0"),
    ]


def _global_mean_pool(rng):
    return [
        Sample((_normal(rng, 2, 3, 4, 5),)),
        Sample((_normal(rng, 3, 7, 2),), label="1-D (3, 7, 2)"),
        Sample((_normal(rng, 2, 2, 3, 2, 3),), {"keepdims": True}, label="3-D, keepdims"),
        Sample((_normal(rng, 2, 1, 1, 4),), label="1x1 map"),
    ]


def _global_max_pool(rng):
    tied = distinct(rng, 1, 3, 3, 2)
    tied[0, 2, 1, 0] = tied[0, 0, 2, 0] = tied[..., 0].max() + 0.5  # a tie for the maximum of channel 0
    return [
        Sample((distinct(rng, 2, 3, 4, 5),)),
        Sample((distinct(rng, 3, 7, 2),), label="1-D (3, 7, 2)"),
        Sample((distinct(rng, 2, 2, 3, 2, 3),), {"keepdims": True}, label="3-D, keepdims"),
        Sample((tied,), label="a tie (1, 3, 3, 2)", kink="ties go to the first maximum in row-major order"),
    ]


def _softmax(rng):
    return [
        Sample((_normal(rng, 4, 5, scale=2),)),
        Sample((_normal(rng, 4, 5, scale=2),), {"axis": 0}),
        Sample((_normal(rng, 2, 3, 4, scale=2),), {"axis": 1}),
        Sample((_normal(rng, 3, 6, scale=30),), label="large logits (3, 6), scale 30"),
    ]


def _softmax_cross_entropy(rng):
    logits = _normal(rng, 6, 4, scale=2)
    probs = np.exp(_normal(rng, 6, 4))
    ids = rng.integers(0, 4, size=6)
    ids[[1, 4]] = 2  # two rows of the class ignored below
    weights = rng.uniform(0.2, 3.0, 4)
    return [
        Sample((logits, rng.integers(0, 4, size=6)), label="integer labels (6,)"),
        Sample((logits, np.eye(4)[rng.integers(0, 4, size=6)]), label="one-hot labels (6, 4)"),
        Sample((logits, probs / probs.sum(-1, keepdims=True)), label="probability labels (6, 4)"),
        Sample((_normal(rng, 2, 3, 5, scale=2), rng.integers(0, 5, size=(2, 3))), label="leading axes (2, 3, 5)"),
        Sample((logits, probs), label="target rows not summing to one (6, 4)"),
        Sample((_normal(rng, 3, 5, scale=30), rng.integers(0, 5, size=3)), label="large logits (3, 5), scale 30"),
        Sample((logits, np.array([0, 4, 1, -1, 3, 2])),
               label="out-of-range class ids 4 and -1 (6,): NaN loss and NaN gradient"),
        Sample((logits, ids), {"weights": weights}, label="class weights, mean over the summed weights"),
        Sample((logits, ids), {"weights": weights, "ignore_index": 2, "label_smoothing": 0.2},
               label="weights, ignore_index=2, label_smoothing=0.2"),
        Sample((logits, np.where(np.arange(6) % 3 == 0, -100, ids)), {"ignore_index": -100, "reduction": "sum"},
               label="ignore_index=-100 (out of range), sum"),
        Sample((_normal(rng, 2, 3, 5, scale=2), rng.integers(0, 5, size=(2, 3))),
               {"label_smoothing": 0.1, "reduction": "none"}, label="leading axes, label_smoothing=0.1, none"),
        Sample((logits, probs / probs.sum(-1, keepdims=True)), {"weights": weights, "label_smoothing": 0.3},
               label="probability labels, weights, label_smoothing=0.3"),
        Sample((logits, probs), {"reduction": "none", "weights": weights}, label="target rows, weights, none"),
    ]


def _euclidean_loss(rng):
    return [
        Sample((_normal(rng, 4, 3), _normal(rng, 4, 3))),
        Sample((_normal(rng, 2, 3, 2), _normal(rng, 2, 3, 2))),
        Sample((_normal(rng, 5), _normal(rng, 5)), label="1-D (5,)"),
        Sample((_normal(rng, 3, 2, 2), _normal(rng, 3, 2, 2)), {"reduction": "sum"}, label="(3, 2, 2) sum"),
        Sample((_normal(rng, 4, 3), _normal(rng, 4, 3)), {"reduction": "none"}, label="(4, 3) none"),
        Sample((_normal(rng, 5), _normal(rng, 5)), {"reduction": "none"}, label="1-D (5,) none"),
    ]


def _mean_subtraction(rng):
    return [
        Sample((_normal(rng, 4, 5),)),
        Sample((_normal(rng, 2, 3, 4),), {"axis": (1, 2)}),
        Sample((_normal(rng, 3, 4),), {"axis": 0}),
        Sample((_normal(rng, 2, 3, 4),), {"axis": -2}),
    ]


def _flatten(rng):
    return [
        Sample((_normal(rng, 2, 3, 4, 2),)),
        Sample((_normal(rng, 3, 5),)),
        Sample((_normal(rng, 4),), label="1-D (4,) -> (4, 1)"),
    ]


class _Params(NamedTuple):
    w: Any
    b: Any


def _l2_penalty(rng):
    params = {"conv": {"w": _normal(rng, 3, 3, 2, 4)}, "dense": [_normal(rng, 5, 4), _normal(rng, 5)]}
    return [
        Sample((params, np.float64(0.3)), label="nested dict/list params, lam=0.3"),
        Sample((_Params(_normal(rng, 4, 3), _normal(rng, 3)), np.float64(2.0)), label="NamedTuple params, lam=2"),
        Sample((_normal(rng, 6), np.float64(0.05)), label="one array, lam=0.05"),
    ]


def _conv(rng):
    table = rng.random((4, 3)) < 0.6
    table[0] = True  # every output map fed by at least one input
    return [
        Sample((_normal(rng, 2, 9, 3), _normal(rng, 3, 3, 4), _normal(rng, 4)), label="1-D k3 VALID"),
        Sample((_normal(rng, 2, 7, 6, 3), _normal(rng, 3, 3, 3, 2), _normal(rng, 2)),
               {"stride": 2, "padding": "SAME"}, label="2-D k3 s2 SAME, odd sizes"),
        Sample((_normal(rng, 1, 6, 6, 2), _normal(rng, 2, 2, 2, 3)), {"stride": 3},
               label="2-D k2 s3 (stride > window)"),
        Sample((_normal(rng, 2, 8, 7, 2), _normal(rng, 3, 2, 2, 2), _normal(rng, 2)),
               {"dilation": (2, 1), "padding": ((1, 2), (0, 1))}, label="2-D dilation (2, 1), explicit pads"),
        Sample((_normal(rng, 1, 4, 4, 1), _normal(rng, 2, 2, 1, 2)), {"padding": 3}, label="2-D k2 padding 3 > kernel"),
        Sample((_normal(rng, 1, 5, 6, 4), _normal(rng, 3, 3, 4, 3), _normal(rng, 3)),
               {"padding": "FULL", "connections": table}, label="2-D FULL with a connection table"),
        Sample((_normal(rng, 1, 5, 4, 6, 2), _normal(rng, 2, 3, 2, 2, 2), _normal(rng, 2)),
               {"stride": (1, 2, 2), "padding": "SAME"}, label="3-D k(2,3,2) s(1,2,2) SAME"),
        Sample((_normal(rng, 2, 7, 3), _normal(rng, 1, 3, 2), _normal(rng, 2)), {"stride": 2, "padding": "SAME"},
               label="1-D 1x1 kernel s2 SAME, odd size"),
        Sample((_normal(rng, 2, 5, 5, 2), _normal(rng, 2, 2, 2, 2), _normal(rng, 2)),
               {"stride": 2, "dilation": 2, "padding": 1}, label="2-D k2 s2 dilation 2 p1"),
        *(
            Sample((_normal(rng, 2, 7, 6, 3), _normal(rng, 3, 3, 3, 2), _normal(rng, 2)),
                   {"stride": 2, "padding": 1, "method": method}, label=f"2-D k3 s2 p1, method={method}")
            for method in CONV_METHODS
        ),
        Sample((_normal(rng, 2, 7, 6, 3), _normal(rng, 3, 3, 3, 2), _normal(rng, 2)),
               {"padding": ((1, 2), (3, 1)), "method": "winograd"},
               label="2-D k3 s1, pads (1, 2) (3, 1), method='winograd' (F(2×2, 3×3), odd tiles)"),
        Sample((_normal(rng, 1, 6, 5, 4), _normal(rng, 3, 3, 4, 3)),
               {"dilation": 2, "padding": "SAME", "connections": table, "method": "im2col"},
               label="2-D im2col dilation 2 SAME with a table"),
        Sample((_normal(rng, 1, 5, 5, 2), _normal(rng, 2, 2, 2, 2)), {"stride": 3, "padding": 3, "method": "im2col"},
               label="2-D im2col k2 s3 padding 3 > kernel"),
        Sample((_normal(rng, 2, 6, 5, 3), _normal(rng, 3, 3, 1, 3), _normal(rng, 3)), {"padding": "SAME", "groups": 3},
               label="2-D depthwise (groups = C_in = 3) SAME, odd sizes"),
        Sample((_normal(rng, 2, 9, 2), _normal(rng, 3, 1, 4), _normal(rng, 4)),
               {"stride": 2, "padding": 1, "groups": 2}, label="1-D depthwise, channel multiplier 2, s2 p1"),
        Sample((_normal(rng, 2, 8, 7, 4), _normal(rng, 2, 3, 2, 6), _normal(rng, 6)),
               {"stride": 2, "padding": ((1, 2), (0, 1)), "dilation": (2, 1), "groups": 2},
               label="2-D groups 2 (4 → 6) s2 dilation (2, 1) explicit pads"),
        *(
            Sample((_normal(rng, 1, 6, 5, 4), _normal(rng, 3, 3, 2, 4), _normal(rng, 4)),
                   {"stride": 2, "padding": 1, "groups": 2, "method": method},
                   label=f"2-D groups 2 k3 s2 p1, method={method}")
            for method in CONV_METHODS
        ),
    ]


def _im2col(rng):
    return [
        Sample((_normal(rng, 2, 5, 6, 3),), {"window": (2, 3)}),
        Sample((_normal(rng, 1, 7, 2),), {"window": 3, "stride": 2, "padding": "SAME"}),
        Sample((_normal(rng, 1, 6, 6, 2),), {"window": (2, 2), "stride": 2, "dilation": 2, "padding": 1}),
        Sample((_normal(rng, 1, 7, 2),), {"window": 2, "stride": 3, "padding": 3},
               label="1-D k2 s3 padding 3 > window"),
        Sample((_normal(rng, 1, 4, 5, 3, 1),), {"window": 2, "padding": "FULL"}, label="3-D k2 FULL"),
    ]


def _max_pool(rng):
    tied = distinct(rng, 1, 4, 4, 1)
    tied[0, 1, 0, 0] = tied[0, 0, 1, 0] = tied[0, :2, :2, 0].max() + 0.5  # a tie for the maximum
    return [
        Sample((distinct(rng, 2, 6, 6, 3),), {"window": 2}, label="2-D 2x2/2"),
        Sample((distinct(rng, 1, 7, 7, 2),), {"window": 3, "stride": 2}, label="2-D 3x3/2 overlapping"),
        Sample((distinct(rng, 1, 7, 5, 2),), {"window": 3, "stride": 1, "padding": "SAME"},
               label="2-D 3x3/1 SAME, odd sizes"),
        Sample((distinct(rng, 2, 9, 2),), {"window": 2, "stride": 3}, label="1-D stride > window"),
        Sample((distinct(rng, 1, 4, 5, 4, 2),), {"window": (2, 3, 2), "stride": (2, 1, 2), "padding": 1},
               label="3-D padded"),
        Sample((distinct(rng, 1, 5, 3),), {"window": 3, "stride": 2, "padding": "FULL"}, label="1-D 3/2 FULL"),
        Sample((tied,), {"window": 2}, label="2-D 2x2/2 with a tie",
               kink="ties go to the first maximum in window order"),
        Sample((distinct(rng, 2, 7, 8, 2),), {"window": 3, "stride": 1, "dilation": 2}, label="2-D 3x3/1 dilation 2"),
        Sample((distinct(rng, 1, 7, 6, 2),), {"window": 2, "stride": 2, "ceil_mode": True},
               label="2-D 2x2/2 ceil_mode, odd size (a window past the input)"),
        Sample((distinct(rng, 2, 8, 3),), {"window": 3, "stride": 2, "padding": 1, "dilation": 2, "ceil_mode": True},
               label="1-D 3/2 p1 dilation 2 ceil_mode"),
        Sample((distinct(rng, 2, 7, 6, 2),), {"window": 3, "stride": 2, "padding": 1, "return_indices": True},
               label="2-D 3x3/2 p1 overlapping, return_indices (flat arg-max indices out too)"),
    ]


def _mean_pool(rng):
    return [
        Sample((_normal(rng, 2, 6, 6, 3),), {"window": 2}, label="2-D 2x2/2"),
        Sample((_normal(rng, 1, 7, 7, 2),), {"window": 3, "stride": 2, "padding": "SAME", "count_padding": False},
               label="2-D 3x3/2 SAME, count_padding=False"),
        Sample((_normal(rng, 2, 8, 2),), {"window": 3, "stride": 2, "padding": 1}, label="1-D padded"),
        Sample((_normal(rng, 1, 4, 4, 4, 2),), {"window": 2, "stride": 1}, label="3-D overlapping"),
        Sample((_normal(rng, 2, 9, 2),), {"window": 2, "stride": 3}, label="1-D stride > window"),
        Sample((_normal(rng, 1, 5, 4, 2),), {"window": 3, "padding": "FULL", "count_padding": False},
               label="2-D 3x3/3 FULL, count_padding=False"),
        Sample((_normal(rng, 2, 8, 7, 2),), {"window": 3, "stride": 2, "padding": 1, "ceil_mode": True},
               label="2-D 3x3/2 p1 ceil_mode: PyTorch's divisor (padding counts, the extension not)"),
        Sample((_normal(rng, 1, 8, 2),), {"window": 2, "stride": 3, "ceil_mode": True, "count_padding": False},
               label="1-D 2/3 ceil_mode, count_padding=False"),
        Sample((_normal(rng, 1, 7, 6, 2),), {"window": 2, "stride": 1, "dilation": (2, 3)},
               label="2-D dilation (2, 3)"),
    ]


def _adaptive_mean_pool(rng):
    return [
        Sample((_normal(rng, 2, 7, 5, 3),), {"output_size": (3, 2)}, label="2-D (7, 5) -> (3, 2): sizes not dividing"),
        Sample((_normal(rng, 2, 3, 2),), {"output_size": 5}, label="1-D 3 -> 5: output larger than the input"),
        Sample((_normal(rng, 1, 4, 5, 3, 2),), {"output_size": (2, 3, None)}, label="3-D (4, 5, 3) -> (2, 3, None)"),
        Sample((_normal(rng, 2, 6, 6, 2),), {"output_size": 3}, label="2-D 6 -> 3: tiled windows"),
        Sample((_normal(rng, 2, 10, 2),), {"output_size": 4}, label="1-D 10 -> 4"),
        Sample((_normal(rng, 1, 2, 5, 2),), {"output_size": (4, 1)}, label="2-D (2, 5) -> (4, 1): larger and global"),
    ]


def _adaptive_max_pool(rng):
    tied = distinct(rng, 1, 5, 5, 1)
    tied[0, 1:3, 1:3, 0] = tied.max() + 0.5  # four tied maxima, shared by overlapping windows
    return [
        Sample((distinct(rng, 2, 7, 5, 3),), {"output_size": (3, 2)}, label="2-D (7, 5) -> (3, 2): sizes not dividing"),
        Sample((distinct(rng, 2, 3, 2),), {"output_size": 5}, label="1-D 3 -> 5: output larger than the input"),
        Sample((distinct(rng, 1, 4, 5, 3, 2),), {"output_size": (2, 3, None)}, label="3-D (4, 5, 3) -> (2, 3, None)"),
        Sample((distinct(rng, 2, 6, 6, 2),), {"output_size": 3}, label="2-D 6 -> 3: tiled windows"),
        Sample((tied,), {"output_size": 3}, label="2-D 5 -> 3 with tied maxima in overlapping windows",
               kink="ties go to the first maximum in window order"),
        Sample((distinct(rng, 2, 9, 2),), {"output_size": 4, "return_indices": True},
               label="1-D 9 -> 4, return_indices (flat arg-max indices out too)"),
    ]


def _resample(rng):
    return [
        Sample((_normal(rng, 2, 5, 6, 3),), {"factor": 2}),
        Sample((_normal(rng, 1, 7, 2),), {"factor": 3}),
        Sample((_normal(rng, 1, 3, 4, 5, 2),), {"factor": (1, 2, 3)}),
        Sample((_normal(rng, 2, 3, 2),), {"factor": 5}, label="1-D factor 5 > size 3"),
    ]


def _conv_transpose(rng):
    return [
        Sample((_normal(rng, 2, 4, 5, 3), _normal(rng, 3, 3, 3, 2), _normal(rng, 2)), {"stride": 2},
               label="k3 s2 VALID"),
        Sample((_normal(rng, 1, 5, 4, 2), _normal(rng, 2, 2, 2, 3)), {"stride": 3, "padding": "SAME"},
               label="k2 s3 SAME (stride > window)"),
        Sample((_normal(rng, 1, 6, 3), _normal(rng, 4, 3, 2), _normal(rng, 2)), {"stride": 2, "padding": 1},
               label="1-D k4 s2 p1"),
        Sample((_normal(rng, 2, 3, 2), _normal(rng, 2, 2, 2), _normal(rng, 2)), {"stride": 3},
               label="1-D k2 s3 VALID (bias-only tail)"),
        Sample((_normal(rng, 1, 4, 4, 2), _normal(rng, 3, 3, 2, 2), _normal(rng, 2)), {"stride": 2, "padding": "FULL"},
               label="2-D k3 s2 FULL"),
        Sample((_normal(rng, 1, 2, 3, 2, 2), _normal(rng, 2, 2, 2, 2, 2)),
               {"stride": (1, 2, 2), "padding": ((1, 0), (0, 1), (1, 1))},
               label="3-D k2 s(1,2,2) explicit pads"),
        Sample((_normal(rng, 2, 4, 5, 4), _normal(rng, 3, 3, 2, 6), _normal(rng, 6)),
               {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2},
               label="2-D k3 s2 p1 output_padding 1, groups 2 (PyTorch's ×2 upsampling)"),
        Sample((_normal(rng, 2, 4, 4), _normal(rng, 3, 1, 8), _normal(rng, 8)),
               {"stride": 3, "padding": 2, "dilation": 2, "output_padding": 2, "groups": 4},
               label="1-D depthwise ×2, k3 dilation 2 s3 p2 output_padding 2"),
        Sample((_normal(rng, 1, 3, 4, 2), _normal(rng, 2, 2, 2, 3)),
               {"stride": 1, "dilation": (2, 3), "output_padding": (1, 0), "padding": "SAME"},
               label="2-D stride 1 dilation (2, 3) output_padding (1, 0) < dilation, SAME"),
    ]


def _batch_norm(rng):
    return [
        Sample((_normal(rng, 2, 3, 3, 4), _normal(rng, 4), _normal(rng, 4)), label="NHWC (2, 3, 3, 4), training"),
        Sample((_normal(rng, 6, 5), _normal(rng, 5), _normal(rng, 5)),
               {"mean": _normal(rng, 5), "var": rng.uniform(0.5, 2.0, 5)}, label="(6, 5), evaluation (running stats)"),
        Sample((_normal(rng, 2, 3, 4, 4), _normal(rng, 3), _normal(rng, 3)), {"axis": 1},
               label="NCHW (2, 3, 4, 4), axis=1"),
        Sample((_normal(rng, 2, 3), None, None), {"eps": 0.0}, label="(2, 3): n = 2 per channel, no affine, eps=0"),
        Sample((100.0 + _normal(rng, 8, 2), _normal(rng, 2), _normal(rng, 2)), {"eps": 1e-3},
               label="(8, 2) offset by 100, eps=1e-3"),
        Sample((_normal(rng, 3, 5, 2), _normal(rng, 2), _normal(rng, 2)),
               {"axis": -1, "mean": _normal(rng, 2), "var": rng.uniform(0.1, 3.0, 2), "eps": 0.0},
               label="NWC (3, 5, 2), evaluation, eps=0"),
    ]


def _layer_norm(rng):
    return [
        Sample((_normal(rng, 4, 6), _normal(rng, 6), _normal(rng, 6)), label="(4, 6) over the features"),
        Sample((_normal(rng, 2, 3, 4, 5), _normal(rng, 3, 4, 5), _normal(rng, 3, 4, 5)), {"axis": (1, 2, 3)},
               label="NHWC (2, 3, 4, 5) over (H, W, C)"),
        Sample((_normal(rng, 2, 3, 4, 5), _normal(rng, 3, 4), _normal(rng, 3, 4)), {"axis": (1, 2), "eps": 1e-3},
               label="over (H, W) only, eps=1e-3"),
        Sample((_normal(rng, 3, 2), None, None), {"eps": 0.0}, label="(3, 2): two features, no affine, eps=0"),
    ]


def _group_norm(rng):
    return [
        Sample((_normal(rng, 2, 3, 4, 6), _normal(rng, 6), _normal(rng, 6)), {"groups": 3}, label="NHWC C=6, 3 groups"),
        Sample((_normal(rng, 2, 5, 4), _normal(rng, 4), _normal(rng, 4)), {"groups": 1},
               label="NWC, 1 group (layer norm over W and C)"),
        Sample((_normal(rng, 2, 3, 3, 4), _normal(rng, 4), _normal(rng, 4)), {"groups": 4},
               label="4 groups of 1 (instance norm)"),
        Sample((_normal(rng, 3, 6), None, None), {"groups": 2, "eps": 0.0},
               label="(3, 6) no space: groups of 3, eps=0"),
        Sample((_normal(rng, 1, 2, 3, 2, 4), _normal(rng, 4), _normal(rng, 4)), {"groups": 2}, label="3-D, 2 groups"),
    ]


def _key(seed):
    """A legacy ``jax.random.PRNGKey(seed)`` as NumPy ``uint32[2]`` (an integer leaf: never cast)."""
    return np.array([0, seed], np.uint32)


def _dropout(rng):
    return [
        Sample((_normal(rng, 4, 6), _key(1)), {"rate": 0.5}, label="(4, 6) rate 0.5"),
        Sample((_normal(rng, 2, 3, 3, 2), _key(2)), {"rate": 0.1}, label="NHWC rate 0.1"),
        Sample((_normal(rng, 8, 5), _key(3)), {"rate": 0.9}, label="(8, 5) rate 0.9: most dropped"),
        Sample((_normal(rng, 3, 4), _key(4)), {"rate": 0.3, "deterministic": True}, label="deterministic (evaluation)"),
        Sample((_normal(rng, 3, 4), _key(5)), {"rate": 1.0}, label="rate 1: all dropped"),
        Sample((_normal(rng, 7), _key(6)), {"rate": 0.0}, label="rate 0: identity"),
    ]


class _Ops(Registry):
    """jaxcnn's ops: each op and reference looked up in :mod:`jaxcnn.ops` and
    :mod:`jaxcnn.reference` when one is taken out (a test may patch the op it certifies)."""

    def __getitem__(self, name: str):
        return dataclasses.replace(super().__getitem__(name), op=getattr(ops, name), reference=getattr(reference, name))


def _registry() -> Registry:
    registry = _Ops()
    for name, samples, options in [
        ("dense", _dense, {}),
        ("relu", _relu, {}),
        ("sigmoid", _elementwise, {}),
        ("tanh", _elementwise, {}),
        ("softmax", _softmax, {}),
        ("softmax_cross_entropy", _softmax_cross_entropy, {"batched": (0, 1)}),
        ("euclidean_loss", _euclidean_loss, {"batched": (0, 1)}),
        ("mean_subtraction", _mean_subtraction, {}),
        ("flatten", _flatten, {}),
        ("l2_penalty", _l2_penalty, {"few": 1}),
        ("conv", _conv, {"few": 3, "quick": 2}),
        ("im2col", _im2col, {}),
        ("max_pool", _max_pool, {}),
        ("mean_pool", _mean_pool, {}),
        ("adaptive_mean_pool", _adaptive_mean_pool, {}),
        ("adaptive_max_pool", _adaptive_max_pool, {}),
        ("upsample", _resample, {}),
        ("downsample", _resample, {}),
        ("conv_transpose", _conv_transpose, {}),
        ("batch_norm", _batch_norm, {}),
        ("layer_norm", _layer_norm, {}),
        ("group_norm", _group_norm, {}),
        ("dropout", _dropout, {}),
        ("leaky_relu", _leaky_relu, {}),
        ("log_softmax", _log_softmax, {}),
        ("global_mean_pool", _global_mean_pool, {}),
        ("global_max_pool", _global_max_pool, {}),
    ]:
        registry.register(name, getattr(ops, name), getattr(reference, name), samples, **{"few": 2, **options})
    return registry


#: Every op in :mod:`jaxcnn.ops`, by name.
REGISTRY: Registry = _registry()

#: Public ops that fix a setting of a registered op (the spatial rank of ``conv``): they run
#: the same custom_vjp, so its samples certify them; ``tests/test_conv.py`` checks they agree.
SPECIALISATIONS: dict[str, str] = {"conv1d": "conv", "conv2d": "conv", "conv3d": "conv"}
