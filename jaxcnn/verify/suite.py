"""Runs the checker over the registry: every op × sample × dtype × transform."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Iterable, Optional

import jax
import numpy as np

from jaxcnn.verify.checks import CheckResult, check_numerical, check_vjp
from jaxcnn.verify.registry import REGISTRY, OpInfo, Sample, cast

DTYPES = ("float32", "float64", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Record:
    """One check: which op, sample, dtype and transform, and its result."""

    op: str
    sample: str
    dtype: str
    transform: str
    result: CheckResult

    def worst(self) -> tuple[float, float]:
        reports = self.result.arguments + ((self.result.forward,) if self.result.forward else ())
        if not reports:
            return (np.inf, np.inf) if self.result.error else (0.0, 0.0)
        return max(r.max_abs_error for r in reports), max(r.max_rel_error for r in reports)


def _jit(fn, settings):
    """``fn`` jitted with its settings bound, keeping its name and signature for reports."""
    jitted = jax.jit(functools.partial(fn, **settings))

    @functools.wraps(fn)
    def call(*args):
        return jitted(*args)

    return call


def _checks(info: OpInfo, sample: Sample, dtype: str) -> Iterable[tuple[str, CheckResult]]:
    op, ref = info.op, info.reference
    args = cast(sample.args, dtype)
    yield "eager", check_vjp(op, ref, *args, **sample.settings)
    yield "jit", check_vjp(_jit(op, sample.settings), _jit(ref, sample.settings), *args)
    if dtype == "float64":
        yield "finite differences", check_numerical(op, *args, **sample.settings)


def run(
    names: Optional[Iterable[str]] = None,
    dtypes: Iterable[str] = DTYPES,
    quick: bool = False,
    seed: int = 0,
) -> list[Record]:
    """Checks the named ops (all by default); ``quick`` keeps a few samples per op.

    float64 checks run with 64-bit mode switched on for their duration only.
    """
    records = []
    for name in names or REGISTRY:
        info = REGISTRY[name]
        samples = info.samples(np.random.default_rng(seed))
        if quick:
            samples = samples[: info.quick]
        for sample in samples:
            for dtype in dtypes:
                with jax.enable_x64(dtype == "float64"):
                    for transform, result in _checks(info, sample, dtype):
                        records.append(Record(name, sample.describe(), dtype, transform, result))
    return records


def summary_rows(records: list[Record]) -> list[tuple]:
    """One row per op: samples, transforms, worst errors, status."""
    rows = []
    for name in dict.fromkeys(r.op for r in records):
        mine = [r for r in records if r.op == name]
        worst_abs = max(r.worst()[0] for r in mine)
        worst_rel = max(r.worst()[1] for r in mine)
        failed = sum(not r.result.ok for r in mine)
        rows.append((
            name,
            len({r.sample for r in mine}),
            ", ".join(dict.fromkeys(r.transform for r in mine)),
            ", ".join(dict.fromkeys(r.dtype for r in mine)),
            f"{worst_abs:.1e}",
            f"{worst_rel:.1e}",
            "ok" if not failed else f"FAILED ({failed} of {len(mine)})",
        ))
    return rows


def format_table(records: list[Record]) -> str:
    header = ("op", "samples", "transforms", "dtypes", "worst abs", "worst rel", "status")
    rows = [header] + summary_rows(records)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_failures(records: list[Record]) -> str:
    out = []
    for r in records:
        if not r.result.ok:
            out.append(f"{r.op} {r.sample} [{r.dtype}, {r.transform}]\n{r.result}")
    return "\n\n".join(out)


def to_json(records: list[Record]) -> list[dict]:
    return [
        {
            "op": r.op,
            "sample": r.sample,
            "dtype": r.dtype,
            "transform": r.transform,
            "ok": r.result.ok,
            "error": r.result.error,
            "worst_abs_error": r.worst()[0],
            "worst_rel_error": r.worst()[1],
            "arguments": [dataclasses.asdict(a) for a in r.result.arguments],
        }
        for r in records
    ]


def timed_run(**kwargs) -> tuple[list[Record], float]:
    start = time.perf_counter()
    records = run(**kwargs)
    return records, time.perf_counter() - start
