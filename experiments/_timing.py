"""Timing helpers shared by the benchmark scripts (figures are printed, never asserted).

Both sides of a comparison are compiled first, then timed interleaved (a, b, a, b, ...)
so that machine noise hits them alike; the median of the repeats is reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import jax


def block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def compile_seconds(fn: Callable, *args) -> float:
    """Seconds to lower and compile a jitted ``fn`` for ``args``."""
    start = time.perf_counter()
    fn.lower(*args).compile()
    return time.perf_counter() - start


def interleaved_medians(fns: Sequence[Callable], args: Sequence, repeats: int = 20, warmup: int = 3) -> list[float]:
    """Median seconds per call of each ``fns[i](*args[i])``, timed interleaved."""
    for fn, a in zip(fns, args):
        for _ in range(warmup):
            block(fn(*a))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, (fn, a) in enumerate(zip(fns, args)):
            start = time.perf_counter()
            block(fn(*a))
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def residual_bytes(fn: Callable, *args, argnums=0) -> int:
    """Bytes of the residuals that ``jax.vjp`` of ``fn`` keeps for the backward pass."""
    _, vjp_fn = jax.vjp(lambda *a: fn(*a), *args)
    leaves = jax.tree_util.tree_leaves(vjp_fn)
    return sum(int(l.size) * l.dtype.itemsize for l in leaves if hasattr(l, "dtype"))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
