"""Timing helpers shared by the benchmark scripts (figures are printed, never asserted).

Both sides of a comparison are compiled first, then timed interleaved (a, b, b, a, ...)
so that machine noise hits them alike; the median of the repeats is reported, and a
ratio of two sides is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax


def block(tree):
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, tree)


def compile_seconds(fn: Callable, *args) -> float:
    """Seconds to lower and compile a jitted ``fn`` for ``args``."""
    start = time.perf_counter()
    fn.lower(*args).compile()
    return time.perf_counter() - start


def interleaved_times(fns: Sequence[Callable], args: Sequence, repeats: int = 20, warmup: int = 3,
                      min_seconds: float = 0.0, max_repeats: int = 2000) -> list[list[float]]:
    """Seconds of every call of each ``fns[i](*args[i])``, timed interleaved in rounds of one
    call each; entry ``r`` of every list comes from round ``r``.

    The order within a round rotates and reverses from round to round (for two functions
    a b, b a, b a, a b; for three, all six orders in turn), so that no function always
    runs first, last or right after another one. At least ``repeats`` rounds, and more for
    fast functions — enough for ``min_seconds`` of the slowest, up to ``max_repeats`` — so
    that sub-millisecond figures are not ruled by a few dozen noisy samples."""
    for fn, a in zip(fns, args):
        for _ in range(warmup):
            block(fn(*a))
    if min_seconds > 0:
        slowest = 0.0
        for fn, a in zip(fns, args):
            start = time.perf_counter()
            block(fn(*a))
            slowest = max(slowest, time.perf_counter() - start)
        repeats = max(repeats, min(max_repeats, int(min_seconds / max(slowest, 1e-9))))
    n = len(fns)
    times = [[] for _ in fns]
    for r in range(repeats):
        order = [(k + r) % n for k in range(n)]
        for i in (order if (r // n) % 2 == 0 else order[::-1]):
            fn, a = fns[i], args[i]
            start = time.perf_counter()
            block(fn(*a))
            times[i].append(time.perf_counter() - start)
    return times


def interleaved_medians(fns: Sequence[Callable], args: Sequence, **kwargs) -> list[float]:
    """Median seconds per call of each ``fns[i](*args[i])``, timed by :func:`interleaved_times`."""
    return [statistics.median(t) for t in interleaved_times(fns, args, **kwargs)]


def paired_ratio(times: Sequence[float], baseline: Sequence[float]) -> tuple[float, float, float]:
    """The median over rounds of ``times[r] / baseline[r]`` (two sides timed moments apart
    in the same round, so that load which drifts over seconds cancels), with a 95%
    distribution-free interval for that median (order statistics ``n/2 ± 0.98·√n``)."""
    ratios = sorted(t / b for t, b in zip(times, baseline))
    n = len(ratios)
    half = 0.98 * math.sqrt(n)
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half))
    return statistics.median(ratios), ratios[lo], ratios[hi]


def blocked_medians(fns: Sequence[Callable], repeats: int = 20, calls: int = 10, skip: int = 2) -> list[float]:
    """Median seconds per call of each argument-free ``fns[i]``, run in rounds of ``calls``
    consecutive calls per function; the first ``skip`` calls of each round are not
    counted, so that threads another framework leaves spinning (PyTorch's OpenMP pool),
    or a thread pool the previous one left asleep, cost nobody; and the order rotates
    every round, so that no function is always the first of a round (in a LeNet-5 table
    the jitted step read 7.2–7.6 ms whenever it came first and 6.3 ms after the others)."""
    times = [[] for _ in fns]
    for r in range(max(1, -(-repeats // (calls - skip)))):
        for i in ((r + k) % len(fns) for k in range(len(fns))):  # each round starts with the next one
            fn = fns[i]
            for j in range(calls):
                start = time.perf_counter()
                block(fn())
                if j >= skip:
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


class BenchSettings(NamedTuple):
    quick: bool
    repeats: int
    warmup: int
    json: Optional[str]


def bench_settings(description: str, argv=None) -> BenchSettings:
    """The benchmark scripts' shared command line: ``--quick``, ``--repeats``, ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per function (default 30, quick 3)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    return BenchSettings(args.quick, args.repeats or (3 if args.quick else 30), 1 if args.quick else 3, args.json)


def machine_line(repeats: int, what: str) -> str:
    return (f"jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
            f"float32, median of {repeats}, {what}")


def write_json(path: Optional[str], repeats: int, results) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"jax": jax.__version__, "device": str(jax.devices()[0]), "repeats": repeats,
                       "results": results}, f, indent=2)
