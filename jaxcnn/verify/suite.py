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
import importlib
import multiprocessing
import os
import sys
import time
from typing import Callable, Iterable, NamedTuple, Optional

import jax
import numpy as np

from jaxcnn.verify.checks import CheckResult, GradientMismatch
from jaxcnn.verify.diagnose import NON_SMOOTH, Diagnosis, diagnose
from jaxcnn.verify.registry import REGISTRY, OpInfo, Registry, Sample, cast, cast_settings
from jaxcnn.verify.transforms import FORWARD_MODE, check_transform, sharded_arguments

DTYPES = ("float32", "float64", "bfloat16")

#: The transforms run in each dtype. Finite differences are always taken in float64;
#: bfloat16 has too few bits for compiled code, second derivatives or per-example
#: comparisons to say more than float32 does, but it is where a rule that returns the
#: wrong dtype shows (the contract).
PLAN = {
    "float64": ("eager", "grad-of-grad", "finite differences", "jvp", "jvp finite differences"),
    "float32": ("contract", "eager", "jit", "vmap", "grad-of-grad", "checkpoint", "sharding", "jvp"),
    "bfloat16": ("contract", "eager"),
}

#: ``--quick``: the first ``OpInfo.quick`` samples of each op, these transforms.
QUICK_PLAN = {
    "float64": ("eager", "finite differences", "jvp finite differences"),
    "float32": ("eager", "jit", "vmap", "grad-of-grad", "checkpoint", "sharding", "jvp"),
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


def transforms_for(info: OpInfo, index: int, sample: Sample, dtype: str, quick: bool = False,
                   rule: Optional[str] = None) -> tuple[str, ...]:
    """The transforms run for one sample in one dtype (by :data:`PLAN` or :data:`QUICK_PLAN`).

    ``rule`` is the op's kind of derivative rule (found by tracing when not given): the
    forward-mode transforms run only where there is a forward mode (not for a ``custom_vjp``).
    """
    chosen = []
    for t in (QUICK_PLAN if quick else PLAN)[dtype]:
        if t in FEW_SAMPLES and index >= info.few:
            continue
        if t in ("grad-of-grad", "jvp finite differences") and sample.kink:
            continue  # second derivatives, and finite differences of a JVP, at a kink are ill-defined
        if t in FORWARD_MODE and (rule or info.rule_at(sample)) == "custom_vjp":
            continue  # no forward mode: JAX refuses jvp of a custom_vjp
        if t == "sharding" and sharded_arguments(info.reference, cast(sample.args, dtype), info.batched,
                                                 cast_settings(sample.settings, dtype)) is None:
            continue  # one device, or no batch axis to split
        chosen.append(t)
    return tuple(chosen)


def load_registry(module: "str | Registry | None" = None) -> Registry:
    """jaxcnn's :data:`~jaxcnn.verify.registry.REGISTRY`, or the registry of the importable
    ``module``: its ``registry`` attribute, else its only :class:`~jaxcnn.verify.Registry`
    (a :class:`~jaxcnn.verify.Registry` given itself is returned as it is).

    Raises:
      ImportError: the module cannot be imported.
      ValueError: it holds no registry, or several and none named ``registry``.
    """
    if module is None:
        return REGISTRY
    if isinstance(module, Registry):
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the user's module is found from here
    loaded = importlib.import_module(module)
    if isinstance(getattr(loaded, "registry", None), Registry):
        return loaded.registry
    found = {name: value for name, value in vars(loaded).items() if isinstance(value, Registry)}
    if len(found) != 1:
        raise ValueError(
            f"--module {module}: expected one jaxcnn.verify.Registry in the module (or one named `registry`), "
            f"found {len(found)}{': ' + ', '.join(sorted(found)) if found else ''}; build one with "
            f"`registry = jaxcnn.verify.Registry()` and `registry.register(name, op, reference, samples)`."
        )
    return next(iter(found.values()))


@functools.lru_cache(maxsize=64)
def _diagnosis(name: str, index: int, op: Callable, seed: int, module: Optional[str]) -> Diagnosis:
    info = load_registry(module)[name]
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
    module: Optional[str] = None,
) -> Record:
    """One check of the registry's op ``name`` (or ``op`` in its place, e.g. a mutant)
    at sample ``index``, in ``dtype``, under ``transform``; diagnosed when it fails.
    ``module``: the user module whose registry holds ``name`` (:func:`load_registry`)."""
    info = load_registry(module)[name]
    sample = info.samples(np.random.default_rng(seed))[index]
    op = op or info.op
    start = time.perf_counter()
    with jax.enable_x64(dtype == "float64"):
        result = check_transform(transform, op, info.reference, *cast(sample.args, dtype), batched=info.batched,
                                 **cast_settings(sample.settings, dtype))
    failed = not result.ok
    pinned = bool(sample.kink) and transform == "finite differences"
    diagnosis = _diagnosis(name, index, op, seed, module) if failed or pinned else None
    where = f", module={module!r}" if isinstance(module, str) else ", module=registry" if module else ""
    snippet = snippet or (
        f"from jaxcnn.verify import suite\n"
        f"print(suite.check_sample({name!r}, {index}, {dtype!r}, {transform!r}{where}))"
    )
    return Record(label or name, sample.describe(), index, dtype, transform, result, sample.kink, diagnosis, snippet,
                  time.perf_counter() - start)


class Unit(NamedTuple):
    """The checks of one sample of one op: what one worker runs at a time."""

    name: str
    index: int
    checks: tuple[tuple[str, str], ...]  # (dtype, transform), in plan order


def plan(
    names: Optional[Iterable[str]] = None,
    dtypes: Iterable[str] = DTYPES,
    quick: bool = False,
    transforms: Optional[Iterable[str]] = None,
    seed: int = 0,
    module: Optional[str] = None,
) -> list[Unit]:
    """Every check :func:`run` will make, as :class:`Unit` s in registry order."""
    registry = load_registry(module)
    dtypes, transforms = tuple(dtypes), None if transforms is None else tuple(transforms)
    units = []
    for name in names or registry:
        info = registry[name]
        samples = info.samples(np.random.default_rng(seed))
        rule = None
        for index, sample in enumerate(samples[: info.quick] if quick else samples):
            rule = rule or info.rule_at(sample)
            checks = tuple((dtype, t) for dtype in dtypes
                           for t in transforms_for(info, index, sample, dtype, quick, rule)
                           if transforms is None or t in transforms)
            if checks:
                units.append(Unit(name, index, checks))
    return units


def run(
    names: Optional[Iterable[str]] = None,
    dtypes: Iterable[str] = DTYPES,
    quick: bool = False,
    transforms: Optional[Iterable[str]] = None,
    seed: int = 0,
    jobs: int = 1,
    module: Optional[str] = None,
    progress: Optional[Callable[[Record], None]] = None,
    units: Optional[list[Unit]] = None,
) -> list[Record]:
    """Checks the named ops (all by default).

    Args:
      names: ops of the registry.
      dtypes: dtypes among :data:`DTYPES`.
      quick: the first ``OpInfo.quick`` samples of each op, :data:`QUICK_PLAN`.
      transforms: keep only these.
      seed: seed of the samples.
      jobs: worker processes, each taking one sample of one op at a time, the costliest
        first (compilation, the main cost, is single-threaded). With one job everything
        runs in this process.
      module: certify the registry of this importable module, or this
        :class:`~jaxcnn.verify.Registry` (:func:`load_registry`; a registry object cannot
        be sent to worker processes: it runs in this one).
      progress: called with each :class:`Record` as it completes (in completion order).
      units: the plan, if already made by :func:`plan` with the same arguments.

    Returns:
      One :class:`Record` per check, in registry order.
    """
    units = units if units is not None else plan(names, dtypes, quick, transforms, seed, module)
    progress = progress or (lambda record: None)
    if jobs <= 1 or len(units) <= 1 or isinstance(module, Registry):
        done = []
        for unit in units:
            for record in _run_unit(unit, seed, module, progress):
                done.append(record)
        return done
    context = multiprocessing.get_context("spawn")  # JAX is multithreaded: no fork
    by_unit = {}
    with concurrent.futures.ProcessPoolExecutor(min(jobs, len(units)), mp_context=context) as pool:
        order = sorted(range(len(units)), key=lambda k: -len(units[k].checks))  # longest first
        futures = {pool.submit(_run_unit, units[k], seed, module): k for k in order}
        for future in concurrent.futures.as_completed(futures):
            by_unit[futures[future]] = future.result()
            for record in by_unit[futures[future]]:
                progress(record)
    return [r for k in range(len(units)) for r in by_unit[k]]


def _run_unit(unit: Unit, seed: int, module: Optional[str], progress=None) -> list[Record]:
    records = []
    for dtype, transform in unit.checks:
        records.append(check_sample(unit.name, unit.index, dtype, transform, seed=seed, module=module))
        if progress is not None:
            progress(records[-1])
    return records


#: Short names for the table (the JSON report has the full ones).
SHORT_DTYPES = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}
SHORT_TRANSFORMS = {"finite differences": "fd", "jvp finite differences": "jvp-fd"}

#: The table's width, and the most of it an op's name takes (longer names are cut, "…").
TABLE_WIDTH, NAME_WIDTH = 100, 30


def summary_rows(records: list[Record]) -> list[tuple]:
    """One row per op: checks, worst absolute and relative errors each with the dtype and
    transform it came from, status.

    The worst errors leave out finite differences at a kink pinned on purpose (large by
    design); the status counts them as passed when they were found non-smooth.
    """
    rows = []
    for name in dict.fromkeys(r.op for r in records):
        mine = [r for r in records if r.op == name]
        measured = [r for r in mine if not (r.kink and r.transform == "finite differences")]
        failed = sum(not r.ok for r in mine)
        rows.append((
            name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…",
            len(mine),
            _worst_with_source(measured, 0),
            _worst_with_source(measured, 1),
            "ok" if not failed else f"{failed} FAILED",
        ))
    return rows


def _worst_with_source(records: list[Record], which: int) -> str:
    """``"7.5e-01 bf16 vmap"``: the largest error over ``records``, its dtype and transform."""
    if not records:
        return "-"
    top = max(records, key=lambda r: r.worst()[which])
    return (f"{top.worst()[which]:.1e} {SHORT_DTYPES.get(top.dtype, top.dtype)} "
            f"{SHORT_TRANSFORMS.get(top.transform, top.transform)}")


def format_rows(header: tuple, rows: list[tuple]) -> str:
    """A plain-text table: columns padded to their widest cell, a rule under the header."""
    rows = [header] + rows
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(records: list[Record]) -> str:
    """The summary, at most :data:`TABLE_WIDTH` columns: one row per op, then the transforms
    and dtypes run, the short names, and the kinks pinned on purpose."""
    header = ("op", "checks", "worst abs error (where)", "worst rel error (where)", "status")
    table = format_rows(header, summary_rows(records))
    transforms = dict.fromkeys(r.transform for r in records)
    dtypes = dict.fromkeys(r.dtype for r in records)
    short = [f"{v} = {k}" for k, v in {**SHORT_DTYPES, **SHORT_TRANSFORMS}.items() if k in transforms or k in dtypes]
    pinned = {}
    for r in records:
        if r.kink and r.transform == "finite differences" and r.ok:
            pinned[r.op] = pinned.get(r.op, 0) + 1
    notes = [f"transforms: {', '.join(transforms)}", f"dtypes: {', '.join(dtypes)} ({', '.join(short)})"]
    if pinned:
        notes.append("kinks pinned on purpose, found non-smooth by finite differences: "
                     + ", ".join(f"{op} {n}" for op, n in pinned.items()))
    return table + "\n" + _wrap("\n".join(notes), TABLE_WIDTH)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ") for line in text.splitlines())


def use_compilation_cache(directory: Optional[str] = None) -> str:
    """Switches on JAX's persistent compilation cache for this process and the workers it
    starts, keeping every program however small (a sweep compiles thousands of small ones;
    a second run loads them instead of compiling them). Returns the directory: ``directory``,
    else ``$JAXCNN_CACHE_DIR``, else ``jaxcnn/jax`` under ``$XDG_CACHE_HOME`` (``~/.cache``).
    A directory the user gave JAX (``$JAX_COMPILATION_CACHE_DIR``) is kept."""
    directory = (directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("JAXCNN_CACHE_DIR")
                 or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxcnn", "jax"))
    settings = {"jax_compilation_cache_dir": directory, "jax_persistent_cache_min_compile_time_secs": 0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)  # spawned workers read these when they import JAX
    return directory


#: XLA flags that compile the sweep's thousands of tiny programs about twice as fast (no
#: LLVM optimisation, the classic fusion emitters): the same HLO; elementwise functions may
#: round differently (float32 tanh by an ulp), far inside the verifier's tolerances.
#: ``jaxcnn verify`` adds them unless ``$JAXCNN_FAST_COMPILE=0``; see docs/performance.md.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def use_fast_compilation() -> str:
    """Adds :data:`FAST_COMPILE_FLAGS` to ``$XLA_FLAGS`` (those not set already) for this
    process and the workers it starts. Takes effect only before JAX's first compilation."""
    current = os.environ.get("XLA_FLAGS", "")
    added = [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in current]
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return os.environ["XLA_FLAGS"]


class Progress:
    """What ``jaxcnn verify`` prints while it runs.

    :meth:`start` prints the header (how many checks, on how many workers); :meth:`__call__`
    takes each :class:`Record` as it completes: on a terminal it rewrites one status line
    in place (``\\r``), elsewhere it prints a plain line every tenth of the checks; a
    failure is printed at once, in one line (the details come after the table).
    """

    def __init__(self, stream=None, live: Optional[bool] = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.total = self.done = self.failed = 0
        self.started = time.perf_counter()
        self._next_plain = 0

    def start(self, total: int, workers: int, what: str = "") -> None:
        self.total, self.started = total, time.perf_counter()
        self._print(f"{total} checks{what} on {workers} worker{'s' if workers != 1 else ''}")

    def __call__(self, record: Record) -> None:
        self.done += 1
        if not record.ok:
            self.failed += 1
            verdict = f": {record.verdict}" if record.verdict else ""
            self._clear()
            self._print(f"FAILED {record.op} #{record.index} {record.sample} [{record.dtype}, {record.transform}]"
                        f"{verdict}")
        line = (f"[{self.done}/{self.total}] {self.failed} failed, {time.perf_counter() - self.started:.0f} s: "
                f"{record.op} {record.dtype} {record.transform}")
        if self.live:
            self.stream.write("\r" + line[:99].ljust(99))
            self.stream.flush()
        elif self.done >= self._next_plain or self.done == self.total:
            self._next_plain = self.done + max(1, self.total // 10)
            self._print(line)

    def finish(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r" + " " * 99 + "\r")
            self.stream.flush()

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


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


class Case(NamedTuple):
    """One check of :func:`pytest_cases`: :meth:`run` it, or :meth:`assert_ok`."""

    name: str
    index: int
    dtype: str
    transform: str
    registry: Registry

    def run(self, seed: int = 0) -> Record:
        return check_sample(self.name, self.index, self.dtype, self.transform, seed=seed, module=self.registry)

    def assert_ok(self) -> Record:
        """The check's :class:`Record`; raises :class:`~jaxcnn.verify.GradientMismatch`
        with the full report (diagnosis included) when it fails."""
        record = self.run()
        if not record.ok:
            raise GradientMismatch(str(record))
        return record


def pytest_cases(registry: Registry, dtypes: Iterable[str] = DTYPES, quick: bool = False,
                 transforms: Optional[Iterable[str]] = None) -> list:
    """One ``pytest.param`` per op × sample × dtype × transform of ``registry``, the plan of
    ``jaxcnn verify`` (the same checks), with readable ids (``"tanh-0-float32-vmap"``).

    >>> # in a test file:
    >>> # @pytest.mark.parametrize("case", jaxcnn.verify.pytest_cases(registry))
    >>> # def test_rule(case):
    >>> #     case.assert_ok()
    """
    import pytest

    return [
        pytest.param(Case(unit.name, unit.index, dtype, transform, registry),
                     id=f"{unit.name}-{unit.index}-{dtype}-{transform.replace(' ', '_')}")
        for unit in plan(dtypes=dtypes, quick=quick, transforms=transforms, module=registry)
        for dtype, transform in unit.checks
    ]
