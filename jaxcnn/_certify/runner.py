"""Runs :func:`jaxcnn.verify.check_transform` over a registry: every op × sample × dtype × transform.

Which transforms run in which dtype is :data:`PLAN`. The costly transforms
(:data:`FEW_SAMPLES`) run on the first few samples of each op, so that each still
covers every op while the full sweep stays within a few minutes on two cores; second
derivatives are not compared at the samples that sit on a kink. A failing check is
diagnosed (:func:`jaxcnn.verify.diagnose`: rule wrong, finite differences untrustworthy,
or a non-smooth point) and comes with a snippet that reproduces it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
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

from jaxcnn._certify.registry import REGISTRY, cast, cast_settings
from jaxcnn.verify import CheckResult, Diagnosis, GradientMismatch, Registry, Sample, check_transform, diagnose
from jaxcnn.verify._report import NON_SMOOTH
from jaxcnn.verify.checks import FORWARD_MODE, sharded_arguments
from jaxcnn.verify.registry import OpInfo

DTYPES = ("float32", "float64", "bfloat16")

#: The transforms run in each dtype. Finite differences are always taken in float64;
#: bfloat16 has too few bits for compiled code, second derivatives or per-example
#: comparisons to say more than float32 does, but it is where a rule that returns the
#: wrong dtype shows (the contract).
#: Forward mode (a hand JVP) has its own rows: against the reference's JVP ("jvp", compiled,
#: and under "jvp vmap" and "jvp-of-grad"), against central differences, and against the
#: op's own VJP by the adjoint identity ("adjoint").
PLAN = {
    "float64": ("eager", "grad-of-grad", "finite differences", "jvp", "jvp finite differences", "adjoint"),
    "float32": ("contract", "eager", "jit", "vmap", "grad-of-grad", "checkpoint", "sharding", "jvp", "adjoint",
                "jvp vmap", "jvp-of-grad"),
    "bfloat16": ("contract", "eager"),
}

#: ``--quick``: the first ``OpInfo.quick`` samples of each op, these transforms.
QUICK_PLAN = {
    "float64": ("eager", "finite differences", "jvp finite differences", "adjoint"),
    "float32": ("eager", "jit", "vmap", "grad-of-grad", "checkpoint", "sharding", "jvp", "adjoint"),
    "bfloat16": ("contract",),
}

#: The dtypes whose ``"eager"`` check probes beyond the sample (scaled inputs and
#: cotangents, :func:`jaxcnn.verify.check_vjp`), the first of them a sample is checked in:
#: once per sample, one more compiled program (bfloat16's 8 bits would say no more).
PROBED = ("float32", "float64")

#: Transforms that run only on the first ``OpInfo.few`` samples of each op.
FEW_SAMPLES = frozenset({"contract", "vmap", "grad-of-grad", "checkpoint", "sharding", "jvp vmap", "jvp-of-grad"})


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


def rule_at(info: OpInfo, sample: Sample) -> str:
    """The op's kind of rule; one that cannot even be traced counts as ``"autodiff"`` (every
    transform then runs, and each reports the op's error)."""
    try:
        return info.rule_at(sample)
    except Exception:  # noqa: BLE001
        return "autodiff"


def transforms_for(info: OpInfo, index: int, sample: Sample, dtype: str, quick: bool = False,
                   rule: Optional[str] = None) -> tuple[str, ...]:
    """The transforms run for one sample in one dtype (by :data:`PLAN` or :data:`QUICK_PLAN`):
    forward mode only where there is one (not for a ``custom_vjp``), sharding only where
    the batch axis can be split over several devices."""
    chosen = []
    for t in (QUICK_PLAN if quick else PLAN)[dtype]:
        if t in FEW_SAMPLES and index >= info.few:
            continue
        if t in ("grad-of-grad", "jvp-of-grad", "jvp finite differences") and sample.kink:
            continue  # second derivatives, and finite differences of a JVP, at a kink are ill-defined
        if t in FORWARD_MODE and (rule or rule_at(info, sample)) == "custom_vjp":
            continue  # a user's jax.custom_vjp: JAX refuses its jvp (a jaxcnn op without a JVP fails instead)
        if t == "sharding" and sharded_arguments(info.reference, cast(sample.args, dtype), info.batched,
                                                 cast_settings(sample.settings, dtype)) is None:
            continue
        chosen.append(t)
    return tuple(chosen)


def load_registry(module: "str | Registry | None" = None) -> Registry:
    """jaxcnn's :data:`~jaxcnn._certify.registry.REGISTRY`, or the registry of the importable
    ``module`` (found from the current directory, as ``python -m`` finds it): its
    ``registry`` attribute, else its only :class:`~jaxcnn.verify.Registry` (a Registry
    given itself is returned as it is).

    Raises:
      ImportError: the module cannot be imported.
      ValueError: importing it exits, it holds no registry, several and none named
        ``registry``, or an empty one.
    """
    if module is None or isinstance(module, Registry):
        return REGISTRY if module is None else module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        loaded = importlib.import_module(module)
    except SystemExit as e:
        raise ValueError(f"--module {module}: importing it called sys.exit({e.code!r}), so no registry was "
                         f"loaded; keep the registry's module free of top-level exits.") from None
    found = {name: value for name, value in vars(loaded).items() if isinstance(value, Registry)}
    if isinstance(getattr(loaded, "registry", None), Registry):
        found = {"registry": loaded.registry}
    if len(found) != 1:
        raise ValueError(
            f"--module {module}: expected one jaxcnn.verify.Registry in the module (or one named `registry`), "
            f"found {len(found)}{': ' + ', '.join(sorted(found)) if found else ''}; build one with "
            f"`registry = jaxcnn.verify.Registry()` and `registry.register(name, op, reference, samples)`.")
    (name, registry), = found.items()
    if not registry:
        raise ValueError(f"--module {module}: its Registry `{name}` holds no ops, so there is nothing to certify; "
                         f"add one with `{name}.register(name, op, reference, samples)`.")
    return registry


def _bound(fn: Callable, settings: dict) -> Callable:
    """``fn`` with ``settings`` bound, keeping its name and signature for the reports."""
    return functools.wraps(fn)(functools.partial(fn, **settings))


def check_unit(info: OpInfo, index: int, checks: Iterable[tuple[str, str]], op: Optional[Callable] = None,
               seed: int = 0, label: Optional[str] = None, snippet: Callable = lambda dtype, transform: "",
               progress: Callable = lambda record: None) -> list[Record]:
    """The ``(dtype, transform)`` checks of ``info``'s sample ``index`` (``op`` in its place, e.g.
    a mutant). The sample is drawn once, cast once per dtype, and its op and reference bound
    once, so that eager, jit and checkpoint share the compiled expected side; a failure (or
    a kink pinned on purpose, under finite differences) is diagnosed once per sample."""
    sample = info.samples(np.random.default_rng(seed))[index]
    op = op or info.op
    checks = tuple(checks)
    probed = next((d for d in PROBED if (d, "eager") in checks), None)
    records, diagnosis, bound = [], None, {}
    for dtype, transform in checks:
        start = time.perf_counter()
        with jax.enable_x64(dtype == "float64"):
            if dtype not in bound:
                settings = cast_settings(sample.settings, dtype)
                bound = {dtype: (_bound(op, settings), _bound(info.reference, settings), cast(sample.args, dtype))}
            rule, ref, args = bound[dtype]
            result = check_transform(transform, rule, ref, *args, batched=info.batched, probe=dtype == probed)
        if diagnosis is None and (not result.ok or (sample.kink and transform == "finite differences")):
            where = _where(result, dtype, transform)
            diagnosis = diagnose(op, info.reference, *sample.args, **sample.settings, **where)
        failed_or_pinned = not result.ok or (sample.kink and transform == "finite differences")
        records.append(Record(label or info.name, sample.describe(), index, dtype, transform, result, sample.kink,
                              diagnosis if failed_or_pinned else None, snippet(dtype, transform),
                              time.perf_counter() - start))
        progress(records[-1])
    return records


def _where(result: CheckResult, dtype: str, transform: str) -> dict:
    """What :func:`~jaxcnn.verify.diagnose` needs of a failed check: the transform it failed
    under (``"eager in float32"``: the dtype), and the probe beyond the sample where only
    probes failed."""
    if result.ok:
        return {}
    probes = [r.probe for r in result.failures()]
    where = {"transform": f"{transform} in {dtype}" if transform == "eager" and dtype != "float64" else transform}
    return {**where, "probe": probes[0]} if probes and all(probes) else where


def check_sample(name: str, index: int, dtype: str, transform: str, op: Optional[Callable] = None,
                 label: Optional[str] = None, snippet: str = "", seed: int = 0,
                 module: "str | Registry | None" = None) -> Record:
    """One check of the registry's op ``name`` (or ``op`` in its place) at sample ``index``, in
    ``dtype``, under ``transform``; ``module``: whose registry (:func:`load_registry`)."""
    where = f", module={module!r}" if isinstance(module, str) else ", module=registry" if module else ""
    code = snippet or (f"from jaxcnn._certify import runner\n"
                       f"print(runner.check_sample({name!r}, {index}, {dtype!r}, {transform!r}{where}))")
    return check_unit(load_registry(module)[name], index, [(dtype, transform)], op, seed, label,
                      lambda *_: code)[0]


class Unit(NamedTuple):
    """The checks of one sample of one op: what one worker runs at a time."""

    name: str
    index: int
    checks: tuple[tuple[str, str], ...]  # (dtype, transform), in plan order


def plan(names: Optional[Iterable[str]] = None, dtypes: Iterable[str] = DTYPES, quick: bool = False,
         transforms: Optional[Iterable[str]] = None, seed: int = 0,
         module: "str | Registry | None" = None) -> list[Unit]:
    """Every check :func:`run` will make, as :class:`Unit` s in registry order."""
    registry = load_registry(module)
    dtypes, transforms = tuple(dtypes), None if transforms is None else tuple(transforms)
    units = []
    for name in names or registry:
        info = registry[name]
        samples = info.samples(np.random.default_rng(seed))
        rule = None
        for index, sample in enumerate(samples[: info.quick] if quick else samples):
            rule = rule or rule_at(info, sample)
            checks = tuple((dtype, t) for dtype in dtypes
                           for t in transforms_for(info, index, sample, dtype, quick, rule)
                           if transforms is None or t in transforms)
            if checks:
                units.append(Unit(name, index, checks))
    return units


def run(names: Optional[Iterable[str]] = None, dtypes: Iterable[str] = DTYPES, quick: bool = False,
        transforms: Optional[Iterable[str]] = None, seed: int = 0, jobs: int = 1,
        module: "str | Registry | None" = None, progress: Optional[Callable[[Record], None]] = None,
        units: Optional[list[Unit]] = None, xla_flags: Optional[str] = None) -> list[Record]:
    """Checks the named ops (all by default), :func:`plan` ``s units (or ``units``), on ``jobs``
    worker processes, each taking one unit at a time, the longest first (compilation, the
    main cost, is single-threaded); with one job (or a Registry object, which cannot be
    sent to workers) in this process. ``xla_flags``: the workers' ``$XLA_FLAGS`` (XLA reads
    it once, as its backend starts, so the checks then always run in workers; a Registry
    object cannot). ``progress`` gets each :class:`Record` as it completes.
    Returns one :class:`Record` per check, in registry order."""
    units = units if units is not None else plan(names, dtypes, quick, transforms, seed, module)
    progress = progress or (lambda record: None)
    if xla_flags is not None and isinstance(module, Registry):
        raise ValueError("xla_flags: the checks run in worker processes then, and a Registry object cannot be "
                         "sent to them; pass the name of the module that holds it.")
    if xla_flags is None and (jobs <= 1 or len(units) <= 1 or isinstance(module, Registry)):
        return [record for unit in units for record in _run_unit(unit, seed, module, progress)]
    with _environment(XLA_FLAGS=xla_flags):
        return _run_in_workers(units, seed, jobs, module, progress)


@contextlib.contextmanager
def _environment(**values: Optional[str]):
    """``os.environ`` with ``values`` set (None: left as it is), for the processes started within."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update({name: value for name, value in values.items() if value is not None})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_in_workers(units: list[Unit], seed: int, jobs: int, module, progress) -> list[Record]:
    by_unit = {}
    context = multiprocessing.get_context("spawn")  # JAX is multithreaded: no fork
    with concurrent.futures.ProcessPoolExecutor(max(1, min(jobs, len(units))), mp_context=context) as pool:
        order = sorted(range(len(units)), key=lambda k: -len(units[k].checks))
        futures = {pool.submit(_run_unit, units[k], seed, module): k for k in order}
        for future in concurrent.futures.as_completed(futures):
            by_unit[futures[future]] = future.result()
            for record in by_unit[futures[future]]:
                progress(record)
    return [r for k in range(len(units)) for r in by_unit[k]]


def _run_unit(unit: Unit, seed: int, module, progress=lambda record: None) -> list[Record]:
    where = f", module={module!r}" if isinstance(module, str) else ", module=registry" if module else ""

    def snippet(dtype, transform):
        return (f"from jaxcnn._certify import runner\nprint(runner.check_sample({unit.name!r}, {unit.index}, "
                f"{dtype!r}, {transform!r}{where}))")

    return check_unit(load_registry(module)[unit.name], unit.index, unit.checks, seed=seed, snippet=snippet,
                      progress=progress)


class Case(NamedTuple):
    """One check of :meth:`~jaxcnn.verify.Registry.pytest_cases`: :meth:`run` it, or :meth:`assert_ok`."""

    name: str
    index: int
    dtype: str
    transform: str
    registry: Registry

    def run(self, seed: int = 0) -> Record:
        return check_sample(self.name, self.index, self.dtype, self.transform, seed=seed, module=self.registry)

    def assert_ok(self) -> Record:
        """The check's :class:`Record`; raises :class:`~jaxcnn.verify.GradientMismatch` with the
        full report (diagnosis included) when it fails."""
        record = self.run()
        if not record.ok:
            raise GradientMismatch(str(record))
        return record


def pytest_cases(registry: Registry, dtypes: Optional[Iterable[str]] = None, quick: bool = False,
                 transforms: Optional[Iterable[str]] = None) -> list:
    """:meth:`jaxcnn.verify.Registry.pytest_cases`."""
    import pytest

    return [pytest.param(Case(unit.name, unit.index, dtype, transform, registry),
                         id=f"{unit.name}-{unit.index}-{dtype}-{transform.replace(' ', '_')}")
            for unit in plan(dtypes=dtypes or DTYPES, quick=quick, transforms=transforms, module=registry)
            for dtype, transform in unit.checks]
