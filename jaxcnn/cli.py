"""The ``jaxcnn`` command line.

* ``jaxcnn verify``: certifies every hand-derived rule.
* ``jaxcnn train``: trains a zoo model on a dataset (default: the MNIST-1D CNN), in one
  process or in several joined by JAX's distributed runtime (``--coordinator``, ``--distributed``).
* ``jaxcnn launch -n N -- train ...``: starts a multi-process run on this machine
  (:mod:`jaxcnn.launch`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import importlib
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Optional, Sequence


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, no usage dump
        self.exit(2, f"jaxcnn: error: {message}\n")


def _flag_sets(text: str) -> tuple[str, ...]:
    """``--compilers default,fast``: the flag sets named (:data:`jaxcnn._certify.compilation.FLAG_SETS`)."""
    from jaxcnn._certify import compilation

    names = tuple(compilation.FLAG_SETS) if text == "all" else tuple(dict.fromkeys(n.strip() for n in text.split(",")))
    try:
        for name in names:
            compilation.flag_set(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--compilers: ")) from None
    return names


def _parser() -> argparse.ArgumentParser:
    from jaxcnn._certify import compilation
    from jaxcnn._certify.registry import REGISTRY
    from jaxcnn._certify.runner import DTYPES
    from jaxcnn.verify import TRANSFORMS

    from jaxcnn import reporting

    parser = _Parser(prog="jaxcnn", description="CNNs in JAX with hand-derived, verified gradients.",
                     epilog="Run `jaxcnn COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"jaxcnn {reporting.package_version()}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", parser_class=_Parser)
    verify = commands.add_parser(
        "verify",
        help="certify every op's hand-derived VJP against autodiff and finite differences",
        description="Checks each op's forward, custom_vjp contract and hand-derived VJP against autodiff of "
        "its reference (eager, jit, vmap, grad-of-grad, checkpoint, sharding when several devices are "
        "present; float32, float64, bfloat16) and against float64 finite differences. Failures are "
        "diagnosed (rule wrong / finite differences untrustworthy / non-smooth point) and come with "
        "a snippet that reproduces them. Exit status 1 on any failure.",
    )
    verify.add_argument("--op", action="append", metavar="NAME",
                        help="op to check (repeatable; default: all). Choices: " + ", ".join(sorted(REGISTRY))
                        + " (or the ops of --module)")
    verify.add_argument("--module", metavar="PKG.MODULE",
                        help="certify the ops registered in this importable module (a jaxcnn.verify.Registry "
                        "named `registry`, or its only one) instead of jaxcnn's")
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
    compilers = verify.add_mutually_exclusive_group()
    compilers.add_argument("--fast-compile", action="store_true",
                        help="compile with two XLA flags that halve the sweep's compile time (no LLVM "
                        "optimisation, the classic fusion emitters) instead of XLA's defaults; the header names them")
    compilers.add_argument("--compilers", type=_flag_sets, metavar="SET,SET",
                        help="run the checks under each of these XLA flag sets, each in its own worker processes, "
                        "and report every check whose verdict depends on the set. Choices: "
                        + ", ".join(compilation.FLAG_SETS) + "; 'all' for every one")
    verify.add_argument("--no-cache", action="store_true",
                        help="do not use JAX's persistent compilation cache (also: JAXCNN_NO_CACHE=1); by default "
                        "compiled programs are kept in $JAXCNN_CACHE_DIR, else ~/.cache/jaxcnn/jax (XDG_CACHE_HOME)")

    audit = commands.add_parser(
        "audit",
        help="check every custom_vjp/custom_jvp rule inside your program, at its real operands",
        description="Runs the program PKG.MODULE:NAME (a function of no arguments returning (fn, args) or "
        "(fn, args, kwargs)) once, records every custom_vjp and custom_jvp call in it with its real operands "
        "and cotangent, and checks each distinct rule there against autodiff of its own primal and float64 "
        "finite differences, compiled and eager. Exit status 1 on a finding, 2 on a usage error.",
    )
    audit.add_argument("program", metavar="PKG.MODULE:NAME", help="where to find the program to audit")
    audit.add_argument("--nans", action="store_true", help="also locate where a NaN or inf is born")
    audit.add_argument("--json", metavar="PATH", help="also write the report as JSON")

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
    train.add_argument("--data-dir", help="folder of IDX files for fashion_mnist*; for mnist1d*, a folder to cache "
                       "the generated set in")
    train.add_argument("--limit", type=_positive_int, metavar="N",
                       help="train and test on the first N examples of each set only (quick trials)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, help="epochs to train")
    length.add_argument("--steps", type=_positive_int, help="optimiser steps to train (default 6000)")
    train.add_argument("--batch-size", type=_positive_int, default=100,
                       help="examples per optimiser step, split over --devices (default 100); a trailing partial "
                       "batch is dropped every epoch")
    train.add_argument("--lr", type=_positive_float, default=1e-2, help="learning rate α (default 1e-2)")
    train.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="default adam")
    train.add_argument("--momentum", type=_momentum,
                       help="SGD momentum in [0, 1), with --optimizer sgd only (default 0)")
    train.add_argument("--weight-decay", type=_non_negative_float, default=0.0,
                       help="L2 penalty λ >= 0 on the weights (default 0)")
    train.add_argument("--seed", type=_seed, default=0, help="PRNG seed, a signed 64-bit integer (default 0)")
    train.add_argument("--shuffle", action=argparse.BooleanOptionalAction,
                       help="reshuffle the training set every epoch (default: yes, except on mnist1d*, whose "
                       "reference recipe takes the batches in stored order)")
    train.add_argument("--devices", type=_positive_int,
                       help="data-parallel devices (default 1; every device of every process in a multi-process run)")
    train.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32",
                       help="float32 (default), or mixed_bfloat16: float32 params, bfloat16 compute, batch norm and "
                       "the loss in float32")
    train.add_argument("--ops", choices=("hand", "autodiff"), default="hand",
                       help="hand-derived rules (jaxcnn.ops) or autodiff (jaxcnn.reference)")
    train.add_argument("--out", help="output folder (default runs/MODEL)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true",
                       help="continue from OUT/checkpoint.npz (written with the same settings)")
    start.add_argument("--overwrite", action="store_true", help="start over, replacing OUT/checkpoint.npz")
    train.add_argument("--allow-changed-settings", action="store_true",
                       help="with --resume: continue a checkpoint written with other settings")
    train.add_argument("--quiet", action="store_true", help="no loading line, no progress bar")
    multi = train.add_argument_group(
        "multi-process training", "Join a run of several processes (hosts) on JAX's distributed runtime: every "
        "process runs the same command; process 0 writes the outputs. Give --coordinator, --num-processes and "
        "--process-id together (as `jaxcnn launch` does), or --distributed alone.")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address and a free port")
    multi.add_argument("--num-processes", type=_positive_int, metavar="N", help="number of processes")
    multi.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 .. N-1")
    multi.add_argument("--distributed", action="store_true",
                       help="let JAX find the settings (SLURM, Open MPI, TPU pods; or $JAXCNN_COORDINATOR etc.)")

    from jaxcnn import launch

    launcher = commands.add_parser(
        "launch", help="start a multi-process run on this machine: jaxcnn launch -n 2 -- train ...",
        description="Starts N processes joined on 127.0.0.1 and forwards their output with a [I] prefix; when one "
        "fails, stops the others and exits with its status (124 after --timeout).")
    launch.add_arguments(launcher)
    return parser


def _ranged(cast, kind: str, accept):
    """An argparse type: ``cast(text)``, finite, for which ``accept(value)`` holds."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}")
        return value

    return parse


_positive_int = _ranged(int, "a positive integer", lambda v: v > 0)
_positive_float = _ranged(float, "a positive number", lambda v: v > 0)
_non_negative_float = _ranged(float, "a number >= 0", lambda v: v >= 0)
_momentum = _ranged(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
_seed = _ranged(int, "an integer in [-2**63, 2**63)", lambda v: -(2**63) <= v < 2**63)


def _loss(name: str, backend):
    """A zoo loss name (``models.ZOO[...].loss``) as that backend's loss: names are a command-line notion."""
    from jaxcnn import train

    loss = getattr(backend, name)
    return train.OneHotTargets(loss) if name == "euclidean_loss" else loss


#: Optional packages ``jaxcnn train`` needs (all in the ``train`` extra), and what for.
_TRAIN_NEEDS = {"matplotlib": "learning_curve.png", "mnist1d": "--data mnist1d", "tqdm": "the progress bar"}


def _missing_train_packages(args) -> list[str]:
    needed = ["matplotlib"]
    if args.data.startswith("mnist1d"):
        needed.append("mnist1d")
    if not args.quiet and sys.stderr.isatty():
        needed.append("tqdm")
    missing = []
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(f"{name} ({_TRAIN_NEEDS[name]})")
    return missing


def _train(args) -> int:
    started = time.monotonic()
    import jax

    import jaxcnn.ops
    import jaxcnn.reference
    from jaxcnn import _checks, checkpoint, data, models, reporting, train

    multi = (args.coordinator, args.num_processes, args.process_id)
    if args.distributed and any(v is not None for v in multi):
        raise ValueError("give --distributed alone (JAX finds the settings), or --coordinator, --num-processes and "
                         "--process-id without it.")
    if args.distributed or any(v is not None for v in multi):
        from jaxcnn import distributed

        distributed.initialize(*multi)  # first: before any JAX computation
    # Everything that can be checked before the data is loaded and the first step runs.
    if args.momentum is not None and args.optimizer != "sgd":
        raise ValueError(f"--momentum goes with --optimizer sgd; {args.optimizer} keeps its own moment estimates "
                         f"(got --momentum {args.momentum} with --optimizer {args.optimizer}).")
    if args.optimizer == "sgd" and args.momentum is None:
        args.momentum = 0.0  # recorded as used; with adam it stays None (null in metrics.json): none was used
    if args.devices is not None:
        train.check_devices(args.devices, "--devices {}")
    missing = _missing_train_packages(args)
    if missing:
        raise ValueError(f"jaxcnn train needs {', '.join(missing)}, not installed; install the train extra: "
                         f"pip install 'jaxcnn[train]'.")
    out = _out(args)
    checkpoint_path = os.path.join(out, "checkpoint.npz")
    for name in ("checkpoint.npz", "metrics.json", "learning_curve.png"):
        checkpoint.check_writable(os.path.join(out, name), "output")
    _checks.run_location(checkpoint_path, args.resume, args.overwrite)
    if args.allow_changed_settings and not args.resume:
        raise ValueError("--allow-changed-settings goes with --resume.")
    entry = models.ZOO[args.model]
    dataset = data.DATASETS[args.data](directory=args.data_dir)
    if args.limit:
        dataset = dataset._replace(x_train=dataset.x_train[:args.limit], y_train=dataset.y_train[:args.limit],
                                   x_test=dataset.x_test[:args.limit], y_test=dataset.y_test[:args.limit])
    want, have = entry.input_shape[1:], dataset.x_train.shape[1:]
    if math.prod(want) != math.prod(have):
        raise ValueError(f"model {args.model} takes inputs of shape {want} but dataset {args.data} has {have}.")
    backend = jaxcnn.ops if args.ops == "hand" else jaxcnn.reference  # chosen once: the model, its loss and penalty
    steps = args.steps if args.steps or args.epochs else 6000
    # Greydanus' MNIST-1D recipe cycles through the training set in stored order, batch k = rows [100k, 100k + 100).
    shuffle = args.shuffle if args.shuffle is not None else not args.data.startswith("mnist1d")
    run = train.Config(
        epochs=args.epochs, steps=steps if not args.epochs else None, batch_size=args.batch_size,
        loss=_loss(entry.loss, backend), penalty=backend.l2_penalty, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum or 0.0, weight_decay=args.weight_decay, seed=args.seed, devices=args.devices,
        precision=args.precision, shuffle=shuffle, input_shape=entry.input_shape, checkpoint_path=checkpoint_path,
        resume=args.resume, overwrite=args.overwrite, allow_changed_settings=args.allow_changed_settings,
        quiet=args.quiet, settings={k: getattr(args, k) for k in ("model", "data", "ops")},
    )
    with checkpoint.locked(out) if jax.process_index() == 0 else contextlib.nullcontext():  # one run per --out
        result = train.fit(entry.build(ops=backend), dataset, run)
        if jax.process_index() != 0:  # one process writes and reports
            return 0
        config = {**{k: v for k, v in vars(args).items() if k != "command"}, "out": out, "shuffle": shuffle}
        reporting.plot_history(result.history, os.path.join(out, "learning_curve.png"), f"{args.model} on {args.data}")
        reporting.save_metrics(out, result, config, wall_seconds=time.monotonic() - started)
        seconds = sum(h["seconds"] for h in result.history)
        best = reporting.best_epoch(result.history)
        print(f"{args.model} on {args.data}: test accuracy {result.test.accuracy:.4f}, test loss "
              f"{result.test.loss:.4f} after {int(result.state.step)} steps ({seconds:.1f} s of training)")
        if best:
            print(f"best epoch {best['epoch']} of {result.history[-1]['epoch']} (chosen on the test set): test "
                  f"accuracy {best['test_accuracy']:.4f}, test loss {best['test_loss']:.4f}")
        print(f"wrote {out}/metrics.json, learning_curve.png, checkpoint.npz")
        return 0


#: The XLA flags ``--fast-compile`` added to ``$XLA_FLAGS`` before JAX's backend started.
_flags_added: list[str] = []


def _compiler(name: str) -> tuple[Optional[str], dict]:
    """Flag set ``name`` on top of the XLA flags the user gave: the ``$XLA_FLAGS`` its checks
    need (None: this process's, already in force) and its configuration for the header."""
    from jaxcnn._certify import compilation

    in_force = os.environ.get("XLA_FLAGS", "")
    given = " ".join(f for f in in_force.split() if f not in _flags_added)
    wanted = compilation.with_flags(compilation.flag_set(name), given)
    added = [f for f in wanted.split() if f not in given.split()]
    return (None if wanted.split() == in_force.split() else wanted), compilation.describe(name, added, wanted)


def _verify(args) -> int:
    from jaxcnn import checkpoint
    from jaxcnn._certify import compilation, display, mutants, runner

    if args.json:  # before the sweep, not after it
        checkpoint.check_writable(args.json, "--json file")

    if args.mutants:
        outcomes, seconds = mutants.timed_run(names=args.op)
        print(mutants.format_table(outcomes))
        missed = [o for o in outcomes if not o.ok]
        if missed:
            print("\nNot caught, or blamed on the wrong argument:\n" + "\n\n".join(str(o) for o in missed))
        print(f"\ncaught {len(outcomes) - len(missed)} of {len(outcomes)} mutants ({seconds:.1f} s)")
        _write_json(args.json, [o.to_json() for o in outcomes])
        return 1 if missed else 0

    if not args.no_cache and not os.environ.get("JAXCNN_NO_CACHE"):
        compilation.use_compilation_cache()
    settings = dict(names=args.op, dtypes=args.dtype or runner.DTYPES, quick=args.quick, transforms=args.transform,
                    module=args.module)
    units = runner.plan(**settings)
    if not units:  # a certificate of nothing is no certificate
        raise ValueError(_nothing_selected(args, runner))
    workers = max(1, min(args.jobs, len(units)))
    what = f" ({len({u.name for u in units})} ops{', ' + args.module if args.module else ''})"
    by_compiler, configs, seconds = {}, {}, {}
    for name in args.compilers or ("fast" if args.fast_compile else "default",):
        xla_flags, configs[name] = _compiler(name)
        if xla_flags is not None:
            compilation.check_flags(xla_flags.split(), name)
        print(compilation.header(configs[name]), flush=True)
        progress = display.Progress()
        progress.start(sum(len(u.checks) for u in units), workers, what)
        start = time.perf_counter()
        by_compiler[name] = runner.run(**settings, jobs=workers, units=units, progress=progress,
                                       xla_flags=xla_flags)
        seconds[name] = time.perf_counter() - start
        progress.finish()
    failed = 0
    for name, records in by_compiler.items():
        if len(by_compiler) > 1:
            print(f"\n{compilation.header(configs[name])}")
        print(display.format_table(records))
        failures = display.format_failures(records)
        if failures:
            print(f"\nFailures{' under ' + name if len(by_compiler) > 1 else ''}:\n" + failures)
        failed += sum(not r.ok for r in records)
    total = sum(len(records) for records in by_compiler.values())
    disagreements = 0
    if len(by_compiler) > 1:
        print("\n" + display.format_matrix(by_compiler, seconds))
        disagreements = len(display.disagreements(by_compiler))
    print(f"\n{total - failed} passed, {failed} failed ({total} checks in {sum(seconds.values()):.1f} s"
          + (f", {len(by_compiler)} flag sets, {disagreements} disagreements" if len(by_compiler) > 1 else "") + ")")
    _write_json(args.json, [row for name, records in by_compiler.items()
                            for row in display.to_json(records, configs[name])])
    return 1 if failed or disagreements else 0


def _audit(args) -> int:
    from jaxcnn import checkpoint
    from jaxcnn.verify import audit

    if args.json:
        checkpoint.check_writable(args.json, "--json file")
    fn, fn_args, fn_kwargs = _program(args.program)
    try:
        report = audit(fn, *fn_args, nans=args.nans, **fn_kwargs)
    except Exception as e:  # noqa: BLE001 (the user's program failed: one line, status 2)
        text = str(e).strip()
        raise ValueError(f"{args.program}: the program raised {type(e).__name__}: "
                         f"{text.splitlines()[0] if text else ''}") from e
    print(report.table())
    if args.json:
        checkpoint.write_atomically(args.json, lambda f: f.write(report.to_json().encode()))
    return 0 if report.ok else 1


def _program(spec: str):
    """``(fn, args, kwargs)`` from ``PKG.MODULE:NAME``, NAME a function returning ``(fn, args)``
    or ``(fn, args, kwargs)``."""
    import importlib

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"audit: the program must be given as PKG.MODULE:NAME (NAME a function returning "
                         f"(fn, args) or (fn, args, kwargs)), got {spec!r}.")
    found = getattr(importlib.import_module(module), name, None)
    if not callable(found):
        raise ValueError(f"audit: {module} has no function {name!r} (it must return (fn, args) or "
                         f"(fn, args, kwargs)).")
    made = found()
    if not (isinstance(made, tuple) and len(made) in (2, 3) and callable(made[0])
            and isinstance(made[1], (tuple, list)) and (len(made) == 2 or isinstance(made[2], dict))):
        raise ValueError(f"audit: {spec}() must return (fn, args) or (fn, args, kwargs) with fn callable, args a "
                         f"tuple and kwargs a dict, got {type(made).__name__} "
                         f"{'of ' + str(len(made)) if isinstance(made, tuple) else ''}".rstrip() + ".")
    return made[0], tuple(made[1]), dict(made[2]) if len(made) == 3 else {}


def _nothing_selected(args, runner) -> str:
    """Why the filters select no check: what the ops chosen run in the dtypes chosen."""
    filters = " ".join([f"--op {n}" for n in args.op or ()] + [f"--dtype {d}" for d in args.dtype or ()]
                       + [f"--transform {t!r}" for t in args.transform or ()] + (["--quick"] if args.quick else []))
    available = {}
    for unit in runner.plan(args.op, args.dtype or runner.DTYPES, args.quick, module=args.module):
        for dtype, transform in unit.checks:
            available.setdefault(dtype, dict.fromkeys(()))[transform] = None
    runs = "; ".join(f"{d}: {', '.join(t)}" for d, t in available.items()) or "nothing"
    return (f"no check to run: {filters} select none (the ops chosen run {runs}); a certificate of zero checks "
            f"certifies nothing.")


def _check_op_names(parser: argparse.ArgumentParser, args) -> None:
    """``--op`` names must be in the registry certified (jaxcnn's, or that of ``--module``)."""
    from jaxcnn._certify import runner

    try:
        registry = runner.load_registry(args.module)
    except (ImportError, ValueError) as e:
        parser.error(f"--module {args.module}: {e}" if isinstance(e, ImportError) else str(e))
    unknown = [name for name in args.op or () if name not in registry]
    if unknown:
        parser.error(f"argument --op: invalid choice: {unknown[0]!r} (choose from {', '.join(sorted(registry))})")


def _write_json(path: Optional[str], data) -> None:
    if path:
        from jaxcnn import checkpoint

        text = json.dumps(data, indent=1, default=float)
        checkpoint.write_atomically(path, lambda f: f.write(text.encode()))


def _out(args) -> str:
    return args.out or os.path.join("runs", args.model)


def _last_checkpoint(args) -> str:
    """Where a ``jaxcnn train`` run can be continued from, as the end of a sentence."""
    path = os.path.join(_out(args), "checkpoint.npz")
    try:
        from jaxcnn import checkpoint

        metadata = checkpoint.read_header(path)["metadata"]
    except (ValueError, OSError):
        return "no checkpoint written yet"
    except Exception:  # e.g. a signal arrived while JAX was being imported: say no more than is known
        return f"see {path}"
    history, part = metadata.get("history") or [], metadata.get("epoch_in_progress")
    where = f"epoch {history[-1]['epoch'] if history else 0}" if part is None else \
        f"step {part['step']} of {part['steps']} in epoch {part['epoch']}"
    return f"last checkpoint at {where} ({path}; continue with --resume)"


def _interrupted(args) -> str:
    """The one line printed on Ctrl-C or SIGTERM: where the run can be continued from."""
    if args is None or args.command != "train":
        return "interrupted"
    return f"interrupted; {_last_checkpoint(args)}"


#: Write errors after which a ``jaxcnn train`` error names the checkpoint that survived.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _error_line(args, e: Exception) -> str:
    """The one line printed for a user error (no traceback)."""
    text = str(e)
    if isinstance(e, OSError) and e.strerror:  # without Python's "[Errno N]" prefix, naming the file if it is known
        text = f"{e.filename}: {e.strerror}" if e.filename and str(e.filename) not in e.strerror else e.strerror
    if isinstance(e, OSError) and e.errno in _WRITE_ERRORS and args is not None and args.command == "train":
        text = f"{text.rstrip('.')}; {_last_checkpoint(args)}"
    return f"jaxcnn: error: {text}"


# Signals. A Ctrl-C (SIGINT) or a SIGTERM (`jaxcnn launch`, a batch system or `kill` stopping the run) raises
# Interrupted in the main thread; the command then prints one line and exits with 128 + the signal number. A
# program that was interrupted leaves with os._exit: the interpreter's teardown is never run beside XLA threads
# still compiling or running (which crashes it).
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received (a KeyboardInterrupt, so that whatever cleans up after a
    Ctrl-C does so after a SIGTERM too)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_received: list[int] = []  # signals received by the running main(), kept even where an exception was swallowed


def _on_signal(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def _import_numpy_held():
    """Imports NumPy with SIGINT/SIGTERM only recorded, then raises :class:`Interrupted` for one
    that came: NumPy's C-level import (``import_array``, reached from jaxlib and ml_dtypes too)
    prints a traceback for an exception raised inside it before turning it into an ImportError."""
    held = [signal.signal(s, lambda signum, frame: _received.append(signum)) for s in SIGNALS]
    try:
        import ml_dtypes  # noqa: F401  (its import_array, with NumPy's)
        import numpy  # noqa: F401
    finally:
        for s, handler in zip(SIGNALS, held):
            signal.signal(s, handler)
    if _received:
        raise Interrupted(_received[0])


def _on_unraisable(hook_args, default):
    """An Interrupted raised where Python can only ignore it (a gc callback, a ``__del__``) is
    raised again at the next point where it propagates."""
    try:
        if isinstance(hook_args.exc_value, Interrupted):
            _raise_again(hook_args.exc_value.signum)
            return
        default(hook_args)
    except Interrupted as e:  # delivered in here
        _raise_again(e.signum)


def _raise_again(signum: int) -> None:
    import _thread

    # From another thread: the main thread takes it once this hook has returned.
    _thread.start_new_thread(_thread.interrupt_main, (signum,))


@contextlib.contextmanager
def _signals_interrupt():
    """While the block runs (in the main thread): SIGINT and SIGTERM raise :class:`Interrupted`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = [signal.signal(s, _on_signal) for s in SIGNALS]
    previous_hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_on_unraisable, default=previous_hook)
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for s, handler in zip(SIGNALS, previous):
            signal.signal(s, handler)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the command line; returns the exit status: 0, 1 (verify found a failure), 2 (a
    user error, one line on stderr, no traceback), or 128 + the signal number after Ctrl-C
    (SIGINT, 130) or SIGTERM (143), one line on stderr saying where a training run can be
    continued from.

    Called as the program (``argv`` None: the ``jaxcnn`` command, ``python -m jaxcnn``), an
    interrupted command leaves through ``os._exit`` once that line is printed, and one that
    has finished leaves at once on a signal arriving while Python shuts down (status 128 +
    the signal number, its output already complete)."""
    program = argv is None
    code = _main(argv, program)
    if program and threading.current_thread() is threading.main_thread():
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        for s in SIGNALS:
            signal.signal(s, _leave)
    return code


def _leave(signum, frame):
    os._exit(128 + signum)


def _main(argv: Optional[Sequence[str]], program: bool) -> int:
    args = code = None
    with _signals_interrupt():  # first: from here on, a Ctrl-C or SIGTERM ends in the one line below
        try:
            _import_numpy_held()
            argv = sys.argv[1:] if argv is None else list(argv)
            if argv[:1] == ["train"] and not {"-h", "--help", "--quiet"} & set(argv):
                print("jaxcnn train: loading JAX, the model and the data ...", flush=True)  # before the slow imports
            if argv[:1] == ["verify"] and not {"-h", "--help"} & set(argv):
                print("jaxcnn verify: loading JAX and the checks ...", flush=True)  # before the slow imports
                if "--fast-compile" in argv:  # before JAX's backend starts, which reads $XLA_FLAGS once
                    from jaxcnn._certify import compilation

                    if not compilation.backend_started():
                        _flags_added.extend(compilation.use_fast_compilation())
            parser = _parser()
            args = parser.parse_args(argv)
            code = _command(parser, args)
            if args.command == "launch":  # the launcher reports a signal itself
                return code
        except KeyboardInterrupt as e:
            if not _received:  # raised by other code than _on_signal (Python's own handler, a test)
                _received.append(getattr(e, "signum", signal.SIGINT))
        except Exception:
            if not _received:
                raise
            # else an Interrupted that foreign code turned into its own error (numpy's import: ImportError)
        if not _received:
            return code
        for s in SIGNALS:  # a second Ctrl-C must not interrupt the message
            signal.signal(s, signal.SIG_IGN)
        print(f"jaxcnn: {_interrupted(args)}", file=sys.stderr, flush=True)
        code = 128 + _received[0]
        if program:
            with contextlib.suppress(OSError, ValueError):  # a closed or broken stdout
                sys.stdout.flush()
            os._exit(code)
        return code


def _command(parser: argparse.ArgumentParser, args) -> int:
    if args.command is None:  # `jaxcnn` alone: what it can do, as `pip` does
        parser.print_help()
        return 0
    if args.command == "verify" and (args.op or args.module):
        _check_op_names(parser, args)
    try:
        if args.command == "verify":
            return _verify(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "launch":
            from jaxcnn import launch

            return launch.run(args)
        return _train(args)
    except (ValueError, OSError, ImportError) as e:  # FileNotFoundError and PermissionError are OSErrors
        if _received:  # an interruption turned into an error (e.g. an ImportError): main reports it
            raise
        print(_error_line(args, e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
