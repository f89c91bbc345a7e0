"""Signals and a taken port against ``jaxcnn train``, N trials each, and the return codes they end with.

    python experiments/interrupt_trials.py [--trials 20] [--signal INT|TERM] [--no-port]

A signal trial starts ``python -m jaxcnn train --data mnist1d --model mnist1d_mlp --epochs 2
--out TMP --quiet`` and sends the signal after a delay; the delays are spread geometrically over
0.5 … 8 s, so they fall into the imports, the compilation, the epochs and the writing of the
outputs. Every trial must end in one of three ways:

* ``interrupted``: status 128 + the signal number, the last line on stderr ``jaxcnn: interrupted...``;
* ``finished``: status 0, the run was over before the signal came;
* ``finished, then stopped``: the outputs were written (``wrote ...`` printed) and the signal
  ended the process on its way out (status 128 + the signal number, or −signal where it came
  after ``jaxcnn.cli.main`` had returned).

Anything else (a crash such as SIGSEGV, status −11, a traceback, a lost interruption) fails.
A port trial holds a port on 127.0.0.1 and starts process 0 of a two-process run with its
coordinator there: it must exit with status 2 and one line saying the port is in use.

Prints the histogram of return codes; exits 1 if any trial failed. (Issue 36; the test suite
runs two trials of each kind, ``-m slow`` twenty.)
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--data", "mnist1d", "--model", "mnist1d_mlp", "--epochs", "2", "--quiet"]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def delays(n: int, low: float = 0.5, high: float = 8.0) -> list[float]:
    """``n`` delays from ``low`` to ``high`` seconds, geometrically spaced."""
    return [low * (high / low) ** (i / max(n - 1, 1)) for i in range(n)]


def signal_trial(delay: float, signum: int, data_dir: str) -> tuple[int, str, str]:
    """One run sent ``signum`` after ``delay`` seconds: ``(status, verdict, stderr)``; the verdict is
    ``"interrupted"``, ``"finished"``, ``"finished, then stopped"`` or ``"FAILED"``."""
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.Popen([sys.executable, "-m", "jaxcnn", *TRAIN, "--data-dir", data_dir, "--out", out],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
        time.sleep(delay)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=600)
    code, last = proc.returncode, (stderr.strip().splitlines() or [""])[-1]
    if "Traceback" in stderr or "Fatal Python error" in stderr:
        verdict = "FAILED"
    elif code == 128 + signum and last.startswith("jaxcnn: interrupted"):
        verdict = "interrupted"
    elif code == 0:
        verdict = "finished"
    elif code in (128 + signum, -signum) and "\nwrote " in "\n" + stdout:
        verdict = "finished, then stopped"
    else:
        verdict = "FAILED"
    return code, verdict, stderr


def port_trial() -> tuple[int, str, str]:
    """Process 0 of two, its coordinator's port held by another socket: ``(status, verdict, stderr)``."""
    with socket.socket() as held, tempfile.TemporaryDirectory() as out:
        held.bind(("127.0.0.1", 0))
        held.listen()
        address = f"127.0.0.1:{held.getsockname()[1]}"
        proc = subprocess.run([sys.executable, "-m", "jaxcnn", *TRAIN, "--out", out, "--coordinator", address,
                               "--num-processes", "2", "--process-id", "0"],
                              capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    expected = f"jaxcnn: error: initialize: coordinator {address}: port {address.split(':')[1]} is already in use"
    ok = proc.returncode == 2 and proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1
    return proc.returncode, "port in use" if ok else "FAILED", proc.stderr


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials of each kind (default 20)")
    parser.add_argument("--signal", choices=("INT", "TERM"), default="INT", help="the signal sent (default INT)")
    parser.add_argument("--no-port", action="store_true", help="no port trials")
    args = parser.parse_args(argv)
    failed = 0
    with tempfile.TemporaryDirectory() as data_dir:
        subprocess.run([sys.executable, "-c", f"from jaxcnn import data; data.mnist1d(cache_dir={data_dir!r})"],
                       env=_env(), check=True, cwd=REPO)  # once, for every run; not here: this folder's mnist1d.py
        signum = getattr(signal, f"SIG{args.signal}")
        runs = [("SIG" + args.signal, d, lambda d=d: signal_trial(d, signum, data_dir)) for d in delays(args.trials)]
        runs += [] if args.no_port else [("port", None, port_trial)] * args.trials
        histograms: dict = collections.defaultdict(collections.Counter)
        for kind, delay, trial in runs:
            code, verdict, stderr = trial()
            histograms[kind][code] += 1
            failed += verdict == "FAILED"
            line = (stderr.strip().splitlines() or [""])[-1] if verdict == "interrupted" else ""
            print(f"{kind:7} {'' if delay is None else f'{delay:4.2f} s':6}  status {code:4}  {verdict}  {line[:90]}",
                  flush=True)
            if verdict == "FAILED":
                print("    " + "\n    ".join(stderr.strip().splitlines()[-15:]), flush=True)
    for kind, counts in histograms.items():
        print(f"{kind}: " + ", ".join(f"status {c}: {n}" for c, n in sorted(counts.items())))
    print(f"{failed} of {len(runs)} trials failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
