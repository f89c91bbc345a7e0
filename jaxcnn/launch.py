"""Starts a multi-process run on one machine: ``jaxcnn launch -n 2 -- train --model mnist1d_cnn``
(also ``python -m jaxcnn.launch -n 2 -- train ...``).

For trying multi-process training out, and for tests. The launcher picks a free port on
127.0.0.1 (or checks that the one given is free), starts N processes — ``python -m
jaxcnn train ... --coordinator 127.0.0.1:PORT --num-processes N --process-id I`` for a
``jaxcnn`` command, or any other command line as given, with ``$JAXCNN_COORDINATOR``,
``$JAXCNN_NUM_PROCESSES`` and ``$JAXCNN_PROCESS_ID`` set for
:func:`jaxcnn.distributed.initialize` — and forwards their output line by line with a
``[I]`` prefix.

It fails as a whole: when one process exits with an error or is killed, the launcher
stops the others (SIGTERM to each process's group, SIGKILL after ``grace`` seconds; a
``jaxcnn train`` process says where its run can be resumed), says which process failed,
and exits with that process's status (128 + the signal number for a killed one). With
``timeout`` it stops every process after that many seconds and exits with 124. Each
process runs in a process group of its own, so whatever it started is stopped with it,
and is killed by the kernel if the launcher itself dies (Linux), so no process outlives
the launcher.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence, TextIO

from jaxcnn.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID, check_port_free

#: ``jaxcnn`` subcommands the launcher runs with ``--coordinator``, ``--num-processes``, ``--process-id``.
JAXCNN_COMMANDS = ("train",)
#: The exit status after ``timeout`` (as coreutils' ``timeout``).
TIMED_OUT = 124
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on at ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def process_commands(command: Sequence[str], num_processes: int, port: int) -> list[tuple[list[str], dict]]:
    """Per process, its command line and environment."""
    command = list(command)
    if not command:
        raise ValueError("launch: no command given; e.g. `jaxcnn launch -n 2 -- train --model mnist1d_cnn`.")
    coordinator = f"{HOST}:{port}"
    out = []
    for i in range(num_processes):
        env = dict(os.environ, **{ENV_COORDINATOR: coordinator, ENV_NUM_PROCESSES: str(num_processes),
                                  ENV_PROCESS_ID: str(i)})
        if command[0] in JAXCNN_COMMANDS:
            argv = [sys.executable, "-m", "jaxcnn", *command, "--coordinator", coordinator,
                    "--num-processes", str(num_processes), "--process-id", str(i)]
        else:
            argv = command
        out.append((argv, env))
    return out


def launch(command: Sequence[str], num_processes: int, *, timeout: Optional[float] = None, grace: float = 10.0,
           port: Optional[int] = None, out: Optional[TextIO] = None) -> int:
    """Runs ``command`` in ``num_processes`` processes joined on 127.0.0.1; returns the
    exit status: 0 when every process succeeded, else the first failure's (see the
    module docstring)."""
    if num_processes < 1:
        raise ValueError(f"launch: need at least 1 process, got {num_processes}.")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"launch: `timeout` must be a positive number of seconds, got {timeout}.")
    if not (math.isfinite(grace) and grace >= 0):
        raise ValueError(f"launch: `grace` must be a number of seconds >= 0, got {grace}.")
    if port is None:
        port = free_port()
    else:  # before starting anything: a taken port would fail every process later, and obscurely
        check_port_free(HOST, port, f"launch: coordinator {HOST}:{port}")
    out = out or sys.stdout
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            out.write(line)
            out.flush()

    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    previous = None
    if threading.current_thread() is threading.main_thread():  # a SIGTERM to the launcher stops its processes too
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for argv, env in process_commands(command, num_processes, port):
            procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
                                          preexec_fn=_die_with_parent))
        say(f"[launch] {num_processes} processes, coordinator {HOST}:{port}, pids "
            f"{' '.join(str(p.pid) for p in procs)}\n")
        for i, p in enumerate(procs):  # started after every fork: preexec_fn and threads do not mix
            readers.append(threading.Thread(target=_forward, args=(p.stdout, f"[{i}] ", say), daemon=True))
            readers[-1].start()
        status = _watch(procs, timeout, say)
    except (KeyboardInterrupt, _Signalled) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        say(f"[launch] got {signal.Signals(signum).name}; stopping every process\n")
        status = 128 + signum
    finally:
        _stop(procs, grace)
        for r in readers:
            r.join(timeout=grace)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return status


def _watch(procs: list[subprocess.Popen], timeout: Optional[float], say) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            i, code = failed[0]
            how = f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else \
                f"exited with status {code}"
            running = [str(j) for j, c in enumerate(codes) if c is None]
            say(f"[launch] process {i} {how}; stopping "
                f"{'processes ' + ', '.join(running) if running else 'nothing else (none left running)'}\n")
            return 128 - code if code < 0 else code
        if all(c == 0 for c in codes):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            say(f"[launch] timed out after {timeout:g} s; stopping every process\n")
            return TIMED_OUT
        time.sleep(0.05)


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM to every process group, SIGKILL to what is left after ``grace`` seconds."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:  # also whatever a process started in its group, even after it exited
        _signal_group(p, signal.SIGKILL)
        p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _forward(stream: TextIO, prefix: str, say) -> None:
    for line in stream:
        say(prefix + (line if line.endswith("\n") else line + "\n"))


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when the launcher dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _Signalled(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupt(signum, frame):
    raise _Signalled(signum)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's options (shared by ``jaxcnn launch`` and ``python -m jaxcnn.launch``)."""
    from jaxcnn.cli import _ranged

    parser.add_argument("-n", "--num-processes", type=int, required=True, metavar="N", help="processes to start")
    parser.add_argument("--timeout", type=_ranged(float, "a positive number of seconds", lambda v: v > 0),
                        metavar="SECONDS", help="stop every process after this long and exit with 124 (default: no "
                        "limit)")
    parser.add_argument("--grace", type=_ranged(float, "a number of seconds >= 0", lambda v: v >= 0), default=10.0,
                        metavar="SECONDS", help="how long stopped processes get between SIGTERM and SIGKILL (default "
                        "10)")
    parser.add_argument("--port", type=_ranged(int, "a port in 1..65535", lambda v: 0 < v < 65536),
                        help="the coordinator's port on 127.0.0.1 (default: a free one)")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="after --: `train ...` (a jaxcnn command) or any command line")


def run(args: argparse.Namespace) -> int:
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    return launch(command, args.num_processes, timeout=args.timeout, grace=args.grace, port=args.port)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxcnn.launch", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"jaxcnn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
