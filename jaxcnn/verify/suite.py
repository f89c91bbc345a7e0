"""Runs the checker over the registry: every op × sample × dtype × transform.

Which transforms run in which dtype is :data:`PLAN`. The costly transforms
(:data:`FEW_SAMPLES`) run on the first few samples of each op, so that each still
covers every op while the full sweep stays within a few minutes on two cores; second
derivatives are not compared at the samples that sit on a kink. A failing check is
diagnosed (:func:`jaxcnn.verify.diagnose`: rule wrong, finite differences untrustworthy,
or a non-smooth point) and comes with a snippet that reproduces it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import time
from typing import Callable, Iterable, Optional

import jax
import numpy as np

from jaxcnn.verify.checks import CheckResult
from jaxcnn.verify.diagnose import NON_SMOOTH, Diagnosis, diagnose
from jaxcnn.verify.registry import REGISTRY, OpInfo, Sample, cast, cast_settings
from jaxcnn.verify.transforms import check_transform, sharded_arguments

DTYPES = ("float32", "float64", "bfloat16")

#: The transforms run in each dtype. Finite differences are always taken in float64;
#: bfloat16 has too few bits for compiled code, second derivatives or per-example
#: comparisons to say more than float32 does, but it is where a rule that returns the
#: wrong dtype shows (the contract).
PLAN = {
    "float64": ("eager", "grad-of-grad", "finite differences"),
    "float32": ("contract", "eager", "jit", "vmap", "grad-of-grad", "checkpoint", "sharding"),
    "bfloat16": ("contract", "eager"),
}

#: ``--quick``: the first ``OpInfo.quick`` samples of each op, these transforms.
QUICK_PLAN = {
    "float64": ("eager", "finite differences"),
    "float32": ("eager", "jit", "vmap", "grad-of-grad", "checkpoint", "sharding"),
    "bfloat16": ("contract",),
}

#: Transforms that run only on the first ``OpInfo.few`` samples of each op: each still
#: covers every op, and the full sweep stays within a few minutes on two cores.
FEW_SAMPLES = frozenset({"contract", "vmap", "grad-of-grad", "checkpoint", "sharding"})


@dataclasses.dataclass(frozen=True)
class Record:
    """One check: which op, sample, dtype and transform; its result, its diagnosis when
    it failed (or sits on a kink on purpose), and code that reproduces it."""

    op: str
    sample: str
    index: int  # of the sample in the op's catalogue
    dtype: str
    transform: str
    result: CheckResult
    kink: str = ""
    diagnosis: Optional[Diagnosis] = None
    snippet: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Passed; at a pinned kink, finite differences must instead find the point non-smooth."""
        if self.kink and self.transform == "finite differences":
            return self.diagnosis is not None and self.diagnosis.verdict == NON_SMOOTH
        return self.result.ok

    @property
    def verdict(self) -> str:
        return self.diagnosis.verdict if self.diagnosis else ""

    def worst(self) -> tuple[float, float]:
        reports = self.result.arguments + ((self.result.forward,) if self.result.forward else ())
        if not reports:
            return (np.inf, np.inf) if self.result.error else (0.0, 0.0)
        return max(r.max_abs_error for r in reports), max(r.max_rel_error for r in reports)

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAILED"
        if self.kink and self.transform == "finite differences":
            status += f" (kink pinned on purpose: {self.kink}; finite differences must find it non-smooth)"
        lines = [f"{self.op} #{self.index} {self.sample} [{self.dtype}, {self.transform}]: {status}", str(self.result)]
        if self.diagnosis is not None:
            lines.append(str(self.diagnosis))
        if self.snippet:
            lines.append("reproduce:\n" + "\n".join("    " + line for line in self.snippet.splitlines()))
        return "\n".join(lines)


def transforms_for(info: OpInfo, index: int, sample: Sample, dtype: str, quick: bool = False) -> tuple[str, ...]:
    """The transforms run for one sample in one dtype (by :data:`PLAN` or :data:`QUICK_PLAN`)."""
    chosen = []
    for t in (QUICK_PLAN if quick else PLAN)[dtype]:
        if t in FEW_SAMPLES and index >= info.few:
            continue
        if t == "grad-of-grad" and sample.kink:
            continue  # second derivatives at a kink are ill-defined
        if t == "sharding" and sharded_arguments(info.reference, cast(sample.args, dtype), info.batched,
                                                 cast_settings(sample.settings, dtype)) is None:
            continue  # one device, or no batch axis to split
        chosen.append(t)
    return tuple(chosen)


@functools.lru_cache(maxsize=64)
def _diagnosis(name: str, index: int, op: Callable, seed: int) -> Diagnosis:
    info = REGISTRY[name]
    sample = info.samples(np.random.default_rng(seed))[index]
    return diagnose(op, info.reference, *sample.args, **sample.settings)


def check_sample(
    name: str,
    index: int,
    dtype: str,
    transform: str,
    op: Optional[Callable] = None,
    label: Optional[str] = None,
    snippet: str = "",
    seed: int = 0,
) -> Record:
    """One check of the registry's op ``name`` (or ``op`` in its place, e.g. a mutant)
    at sample ``index``, in ``dtype``, under ``transform``; diagnosed when it fails."""
    info = REGISTRY[name]
    sample = info.samples(np.random.default_rng(seed))[index]
    op = op or info.op
    start = time.perf_counter()
    with jax.enable_x64(dtype == "float64"):
        result = check_transform(transform, op, info.reference, *cast(sample.args, dtype), batched=info.batched,
                                 **cast_settings(sample.settings, dtype))
    failed = not result.ok
    pinned = bool(sample.kink) and transform == "finite differences"
    diagnosis = _diagnosis(name, index, op, seed) if failed or pinned else None
    snippet = snippet or (
        f"from jaxcnn.verify import suite\n"
        f"print(suite.check_sample({name!r}, {index}, {dtype!r}, {transform!r}))"
    )
    return Record(label or name, sample.describe(), index, dtype, transform, result, sample.kink, diagnosis, snippet,
                  time.perf_counter() - start)


def run(
    names: Optional[Iterable[str]] = None,
    dtypes: Iterable[str] = DTYPES,
    quick: bool = False,
    transforms: Optional[Iterable[str]] = None,
    seed: int = 0,
    jobs: int = 1,
) -> list[Record]:
    """Checks the named ops (all by default).

    Args:
      names: ops of the registry.
      dtypes: dtypes among :data:`DTYPES`.
      quick: the first ``OpInfo.quick`` samples of each op, :data:`QUICK_PLAN`.
      transforms: keep only these.
      seed: seed of the samples.
      jobs: worker processes (the ops are shared out; compilation, the main cost, is
        single-threaded). With one job, or one op, everything runs in this process.

    Returns:
      One :class:`Record` per check, in registry order.
    """
    names = list(names or REGISTRY)
    dtypes, transforms = tuple(dtypes), None if transforms is None else tuple(transforms)
    jobs = min(jobs, len(names))
    if jobs <= 1:
        return _run_ops(names, dtypes, quick, transforms, seed)
    groups = [[] for _ in range(jobs)]
    load = [0] * jobs
    for name in sorted(names, key=lambda n: -_cost(n, quick)):  # longest first, to the least loaded
        k = load.index(min(load))
        groups[k].append(name)
        load[k] += _cost(name, quick)
    context = multiprocessing.get_context("spawn")  # JAX is multithreaded: no fork
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(_run_ops, group, dtypes, quick, transforms, seed) for group in groups]
        done = {name: [] for name in names}
        for future in futures:
            for record in future.result():
                done[record.op].append(record)
    return [r for name in names for r in done[name]]


def _cost(name: str, quick: bool) -> int:
    info = REGISTRY[name]
    return info.quick if quick else len(info.samples(np.random.default_rng(0)))


def _run_ops(names, dtypes, quick, transforms, seed) -> list[Record]:
    return [r for name in names for r in _run_op(name, dtypes, quick, transforms, seed)]


def _run_op(name, dtypes, quick, transforms, seed) -> list[Record]:
    info = REGISTRY[name]
    samples = info.samples(np.random.default_rng(seed))
    records = []
    for index, sample in enumerate(samples[: info.quick] if quick else samples):
        for dtype in dtypes:
            for transform in transforms_for(info, index, sample, dtype, quick):
                if transforms is None or transform in transforms:
                    records.append(check_sample(name, index, dtype, transform, seed=seed))
    return records


def summary_rows(records: list[Record]) -> list[tuple]:
    """One row per op: samples, transforms, dtypes, worst errors, status.

    The worst errors leave out finite differences at a kink pinned on purpose (large by
    design); the status counts them as passed when they were found non-smooth.
    """
    rows = []
    for name in dict.fromkeys(r.op for r in records):
        mine = [r for r in records if r.op == name]
        measured = [r.worst() for r in mine if not (r.kink and r.transform == "finite differences")] or [(0.0, 0.0)]
        failed = sum(not r.ok for r in mine)
        pinned = sum(bool(r.kink) and r.transform == "finite differences" and r.ok for r in mine)
        status = "ok" if not failed else f"FAILED ({failed} of {len(mine)})"
        rows.append((
            name,
            len({r.index for r in mine}),
            ", ".join(dict.fromkeys(r.transform for r in mine)),
            ", ".join(dict.fromkeys(r.dtype for r in mine)),
            f"{max(w[0] for w in measured):.1e}",
            f"{max(w[1] for w in measured):.1e}",
            status + (f", {pinned} kink pinned" if pinned else ""),
        ))
    return rows


def format_rows(header: tuple, rows: list[tuple]) -> str:
    """A plain-text table: columns padded to their widest cell, a rule under the header."""
    rows = [header] + rows
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(records: list[Record]) -> str:
    header = ("op", "samples", "transforms", "dtypes", "worst abs", "worst rel", "status")
    return format_rows(header, summary_rows(records))


def format_failures(records: list[Record]) -> str:
    return "\n\n".join(str(r) for r in records if not r.ok)


def to_json(records: list[Record]) -> list[dict]:
    return [
        {
            "op": r.op,
            "sample": r.sample,
            "index": r.index,
            "dtype": r.dtype,
            "transform": r.transform,
            "ok": r.ok,
            "kink": r.kink,
            "error": r.result.error,
            "worst_abs_error": r.worst()[0],
            "worst_rel_error": r.worst()[1],
            "forward": dataclasses.asdict(r.result.forward) if r.result.forward else None,
            "arguments": [dataclasses.asdict(a) for a in r.result.arguments],
            "verdict": r.verdict,
            "diagnosis": dataclasses.asdict(r.diagnosis) if r.diagnosis else None,
            "snippet": r.snippet,
            "seconds": r.seconds,
        }
        for r in records
    ]


def timed_run(**kwargs) -> tuple[list[Record], float]:
    start = time.perf_counter()
    records = run(**kwargs)
    return records, time.perf_counter() - start
