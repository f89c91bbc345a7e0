"""The ``jaxcnn`` command line.

* ``jaxcnn verify``: certifies every hand-derived rule.
* ``jaxcnn train``: trains a zoo model on a dataset (default: the MNIST-1D CNN).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, no usage dump
        self.exit(2, f"jaxcnn: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    from jaxcnn.verify.registry import REGISTRY
    from jaxcnn.verify.suite import DTYPES
    from jaxcnn.verify.transforms import TRANSFORMS

    parser = _Parser(prog="jaxcnn", description="CNNs in JAX with hand-derived, verified gradients.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    verify = commands.add_parser(
        "verify",
        help="certify every op's hand-derived VJP against autodiff and finite differences",
        description="Checks each op's forward, custom_vjp contract and hand-derived VJP against autodiff of "
        "its reference (eager, jit, vmap, grad-of-grad, checkpoint, sharding when several devices are "
        "present; float32, float64, bfloat16) and against float64 finite differences. Failures are "
        "diagnosed (rule wrong / finite differences untrustworthy / non-smooth point) and come with "
        "a snippet that reproduces them. Exit status 1 on any failure.",
    )
    verify.add_argument("--op", action="append", choices=sorted(REGISTRY), metavar="NAME",
                        help="op to check (repeatable; default: all). Choices: " + ", ".join(sorted(REGISTRY)))
    verify.add_argument("--dtype", action="append", choices=DTYPES, help="dtype (repeatable; default: all)")
    verify.add_argument("--transform", action="append", choices=TRANSFORMS, metavar="NAME",
                        help="transform (repeatable; default: all). Choices: " + ", ".join(TRANSFORMS))
    verify.add_argument("--quick", action="store_true", help="a few samples per op (under a minute)")
    verify.add_argument("--jobs", type=_positive_int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per CPU core)")
    verify.add_argument("--mutants", action="store_true",
                        help="instead, run the mutation suite: deliberately wrong backward rules, each "
                        "of which must be caught and blamed on the right argument")
    verify.add_argument("--json", metavar="PATH", help="also write every check as JSON")

    from jaxcnn.data import DATASETS
    from jaxcnn.models import ZOO

    train = commands.add_parser(
        "train",
        help="train a zoo model (default: the MNIST-1D CNN on locally generated MNIST-1D)",
        description="Trains a model from jaxcnn.models on a dataset from jaxcnn.data with optax, "
        "writing metrics.json, learning_curve.png and checkpoint.npz into --out.",
    )
    train.add_argument("--model", default="mnist1d_cnn", choices=sorted(ZOO), metavar="NAME",
                       help="zoo model (default mnist1d_cnn). Choices: " + ", ".join(sorted(ZOO)))
    train.add_argument("--data", default="mnist1d", choices=sorted(DATASETS), metavar="NAME",
                       help="dataset (default mnist1d). Choices: " + ", ".join(sorted(DATASETS)))
    train.add_argument("--data-dir", help="folder of IDX files for fashion_mnist*")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, help="epochs to train")
    length.add_argument("--steps", type=_positive_int, help="optimiser steps to train (default 6000)")
    train.add_argument("--batch-size", type=_positive_int, default=100)
    train.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate α (default 1e-2)")
    train.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    train.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty λ on the weights (default 0)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--devices", type=_positive_int, default=1, help="data-parallel devices (default 1)")
    train.add_argument("--ops", choices=("hand", "autodiff"), default="hand",
                       help="hand-derived rules (jaxcnn.ops) or autodiff (jaxcnn.reference)")
    train.add_argument("--out", help="output folder (default runs/MODEL)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _positive(cast, kind: str):
    """An argparse type: ``cast(text)``, which must be > 0."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind}, got {text!r}")
        return value

    return parse


_positive_int = _positive(int, "integer")
_positive_float = _positive(float, "number")


def _train(args) -> int:
    import math
    import os

    import jaxcnn.ops
    import jaxcnn.reference
    from jaxcnn import data, models, reporting, train

    entry = models.ZOO[args.model]
    dataset = data.DATASETS[args.data](directory=args.data_dir)
    want, have = entry.input_shape[1:], dataset.x_train.shape[1:]
    if math.prod(want) != math.prod(have):
        raise ValueError(f"model {args.model} takes inputs of shape {want} but dataset {args.data} has {have}.")
    backend = jaxcnn.ops if args.ops == "hand" else jaxcnn.reference
    out = args.out or os.path.join("runs", args.model)
    steps = args.steps if args.steps or args.epochs else 6000
    result = train.fit(
        entry.build(ops=backend), dataset, input_shape=entry.input_shape, loss=entry.loss,
        optimizer=train.make_optimizer(args.optimizer, args.lr, args.momentum),
        epochs=args.epochs, steps=steps if not args.epochs else None, batch_size=args.batch_size,
        weight_decay=args.weight_decay, seed=args.seed, devices=args.devices,
        checkpoint_path=os.path.join(out, "checkpoint.npz"), resume=args.resume, quiet=args.quiet,
        ops=backend,
    )
    config = {k: v for k, v in vars(args).items() if k != "command"}
    reporting.save_metrics(out, result, config)
    reporting.plot_history(result.history, os.path.join(out, "learning_curve.png"), f"{args.model} on {args.data}")
    seconds = sum(h["seconds"] for h in result.history)
    print(f"{args.model} on {args.data}: test accuracy {result.test.accuracy:.4f}, test loss "
          f"{result.test.loss:.4f} after {int(result.state.step)} steps ({seconds:.1f} s of training); "
          f"wrote {out}/metrics.json, learning_curve.png, checkpoint.npz")
    return 0


def _verify(args) -> int:
    from jaxcnn.verify import mutants, suite

    if args.mutants:
        outcomes, seconds = mutants.timed_run(names=args.op)
        print(mutants.format_table(outcomes))
        missed = [o for o in outcomes if not o.ok]
        if missed:
            print("\nNot caught, or blamed on the wrong argument:\n" + "\n\n".join(str(o) for o in missed))
        print(f"\ncaught {len(outcomes) - len(missed)} of {len(outcomes)} mutants ({seconds:.1f} s)")
        _write_json(args.json, [o.to_json() for o in outcomes])
        return 1 if missed else 0

    records, seconds = suite.timed_run(names=args.op, dtypes=args.dtype or suite.DTYPES, quick=args.quick,
                                       transforms=args.transform, jobs=args.jobs)
    print(suite.format_table(records))
    failures = suite.format_failures(records)
    if failures:
        print("\nFailures:\n" + failures)
    failed = sum(not r.ok for r in records)
    print(f"\n{len(records) - failed} passed, {failed} failed ({len(records)} checks in {seconds:.1f} s)")
    _write_json(args.json, suite.to_json(records))
    return 1 if failed else 0


def _write_json(path: Optional[str], data) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=float)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "verify":
            return _verify(args)
        return _train(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"jaxcnn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
