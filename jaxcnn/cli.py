"""The ``jaxcnn`` command line: ``jaxcnn verify`` certifies every hand-derived rule."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, no usage dump
        self.exit(2, f"jaxcnn: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    from jaxcnn.verify.registry import REGISTRY
    from jaxcnn.verify.suite import DTYPES

    parser = _Parser(prog="jaxcnn", description="CNNs in JAX with hand-derived, verified gradients.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    verify = commands.add_parser(
        "verify",
        help="check every op's hand-derived VJP against autodiff and finite differences",
        description="Checks each op's forward and hand-derived VJP against autodiff of its "
        "reference (eager and jitted, per dtype) and against float64 finite differences.",
    )
    verify.add_argument("--op", action="append", choices=sorted(REGISTRY), metavar="NAME",
                        help="op to check (repeatable; default: all). Choices: " + ", ".join(sorted(REGISTRY)))
    verify.add_argument("--dtype", action="append", choices=DTYPES, help="dtype (repeatable; default: all)")
    verify.add_argument("--quick", action="store_true", help="a few samples per op")
    verify.add_argument("--json", metavar="PATH", help="also write every check as JSON")
    return parser


def _verify(args) -> int:
    from jaxcnn.verify import suite

    records, seconds = suite.timed_run(names=args.op, dtypes=args.dtype or suite.DTYPES, quick=args.quick)
    print(suite.format_table(records))
    failures = suite.format_failures(records)
    if failures:
        print("\nFailures:\n" + failures)
    failed = sum(not r.result.ok for r in records)
    print(f"\n{len(records) - failed} passed, {failed} failed ({len(records)} checks in {seconds:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(suite.to_json(records), f, indent=1, default=float)
    return 1 if failed else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "verify":
        return _verify(args)
    raise AssertionError(args.command)  # argparse only allows known commands


if __name__ == "__main__":
    sys.exit(main())
