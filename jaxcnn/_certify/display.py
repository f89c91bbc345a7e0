"""What ``jaxcnn verify`` prints: the progress lines, the table, the failures, the JSON."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
import time
from typing import Optional

from jaxcnn._certify.runner import Record
from jaxcnn.verify.checks import FORWARD_MODE

#: Short names for the table (the JSON report has the full ones).
SHORT_DTYPES = {"float64": "f64", "float32": "f32", "bfloat16": "bf16", "float16": "f16"}
SHORT_TRANSFORMS = {"finite differences": "fd", "jvp finite differences": "jvp-fd", "jvp-of-grad": "jvp∘grad"}

#: The table's width, and the most of it an op's name takes (longer names are cut, "…").
TABLE_WIDTH, NAME_WIDTH = 100, 30


def _pinned(r: Record) -> bool:
    return bool(r.kink) and r.transform == "finite differences"


def summary_rows(records: list[Record]) -> list[tuple]:
    """One row per op: checks, worst absolute and relative errors each with the dtype and
    transform it came from, the status of its forward-mode checks (:data:`~jaxcnn.verify.checks.FORWARD_MODE`:
    the hand JVP against the reference, finite differences and the hand VJP; ``-``: none run), status. The
    worst errors leave out finite differences at a kink pinned on purpose (large by design);
    the status counts them as passed when they were found non-smooth."""
    rows = []
    for name in dict.fromkeys(r.op for r in records):
        mine = [r for r in records if r.op == name]
        measured = [r for r in mine if not _pinned(r)]
        failed = sum(not r.ok for r in mine)
        forward = [r for r in mine if r.transform in FORWARD_MODE]
        forward_failed = sum(not r.ok for r in forward)
        rows.append((name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…", len(mine),
                     _worst_with_source(measured, 0), _worst_with_source(measured, 1),
                     "-" if not forward else "ok" if not forward_failed else f"{forward_failed} FAILED",
                     "ok" if not failed else f"{failed} FAILED"))
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
    header = ("op", "checks", "worst abs (where)", "worst rel (where)", "forward", "status")
    table = format_rows(header, summary_rows(records))
    transforms, dtypes = dict.fromkeys(r.transform for r in records), dict.fromkeys(r.dtype for r in records)
    short = [f"{v} = {k}" for k, v in {**SHORT_DTYPES, **SHORT_TRANSFORMS}.items() if k in transforms or k in dtypes]
    pinned: dict[str, int] = {}
    for r in records:
        if _pinned(r) and r.ok:
            pinned[r.op] = pinned.get(r.op, 0) + 1
    notes = [f"transforms: {', '.join(transforms)}", f"dtypes: {', '.join(dtypes)} ({', '.join(short)})"]
    if pinned:
        notes.append("kinks pinned on purpose, found non-smooth by finite differences: "
                     + ", ".join(f"{op} {n}" for op, n in pinned.items()))
    return table + "\n" + "\n".join(textwrap.fill(line, TABLE_WIDTH, subsequent_indent="  ") for line in notes)


def format_failures(records: list[Record]) -> str:
    """Each failing sample once: where it failed (dtypes and transforms), the first failing
    check's report, the diagnosis (the same for every check of the sample: it is taken in
    float64) and the code that reproduces it."""
    groups: dict[tuple, list[Record]] = {}
    for r in records:
        if not r.ok:
            groups.setdefault((r.op, r.index, str(r.diagnosis)), []).append(r)
    blocks = []
    for failed in groups.values():
        first = failed[0]
        where = "; ".join(f"{dtype}: {', '.join(r.transform for r in failed if r.dtype == dtype)}"
                          for dtype in dict.fromkeys(r.dtype for r in failed))
        lines = [f"{first.op} #{first.index} {first.sample}: FAILED {len(failed)} check{'s' * (len(failed) > 1)} "
                 f"({where})", str(first.result)]
        if len(failed) > 1:
            lines.append("  (the first of them; the others' reports are in --json)")
        if first.diagnosis is not None:
            lines.append(str(first.diagnosis))
        if first.snippet:
            lines.append("reproduce:\n" + "\n".join("    " + line for line in first.snippet.splitlines()))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_matrix(by_compiler: dict[str, list[Record]], seconds: dict[str, float]) -> str:
    """The flag-set matrix: one row per flag set (checks, failures, worst errors, time), then
    every check that passes under some flag sets and fails under others, naming both."""
    rows = []
    for name, records in by_compiler.items():
        measured = [r for r in records if not _pinned(r)]
        failed = sum(not r.ok for r in records)
        rows.append((name, len(records), _worst_with_source(measured, 0), _worst_with_source(measured, 1),
                     f"{seconds.get(name, 0.0):.0f} s", "ok" if not failed else f"{failed} FAILED"))
    table = format_rows(("flag set", "checks", "worst abs error (where)", "worst rel error (where)", "time",
                         "status"), rows)
    lines = [f"{len(disagreements(by_compiler))} disagreements between flag sets"]
    for key, verdicts in disagreements(by_compiler).items():
        op, index, sample, dtype, transform = key
        passed = [name for name, r in verdicts.items() if r.ok]
        failed = [f"{name} ({r.worst()[0]:.1e} abs)" for name, r in verdicts.items() if not r.ok]
        lines.append(f"DISAGREE {op} #{index} {sample} [{dtype}, {transform}]: passes under {', '.join(passed)}; "
                     f"FAILS under {', '.join(failed)}")
    return table + "\n" + "\n".join(lines)


def disagreements(by_compiler: dict[str, list[Record]]) -> dict[tuple, dict[str, Record]]:
    """The checks (op, sample index, sample, dtype, transform) whose verdict depends on the flag
    set: each with its :class:`Record` under every flag set that ran it."""
    checks: dict[tuple, dict[str, Record]] = {}
    for name, records in by_compiler.items():
        for r in records:
            checks.setdefault((r.op, r.index, r.sample, r.dtype, r.transform), {})[name] = r
    return {key: verdicts for key, verdicts in checks.items() if len({r.ok for r in verdicts.values()}) > 1}


def to_json(records: list[Record], compiler: Optional[dict] = None) -> list[dict]:
    """Every check as a dict; ``compiler``: the configuration it was compiled under
    (:func:`jaxcnn._certify.compilation.describe`), in each."""
    return [{"compiler": compiler, "op": r.op, "sample": r.sample, "index": r.index, "dtype": r.dtype,
             "transform": r.transform,
             "ok": r.ok, "kink": r.kink, "error": r.result.error, "worst_abs_error": r.worst()[0],
             "worst_rel_error": r.worst()[1],
             "forward": dataclasses.asdict(r.result.forward) if r.result.forward else None,
             "arguments": [dataclasses.asdict(a) for a in r.result.arguments], "verdict": r.verdict,
             "diagnosis": dataclasses.asdict(r.diagnosis) if r.diagnosis else None, "snippet": r.snippet,
             "seconds": r.seconds} for r in records]


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
            self._clear()
            self._print(f"FAILED {record.op} #{record.index} {record.sample} [{record.dtype}, {record.transform}]"
                        + (f": {record.verdict}" if record.verdict else ""))
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
