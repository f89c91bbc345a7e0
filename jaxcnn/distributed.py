"""Training across processes and hosts on JAX's distributed runtime.

JAX runs one program in every process (one process per host, or per accelerator) and
joins them with :func:`jax.distributed.initialize`: ``jax.devices()`` then lists every
process's devices, a :class:`jax.sharding.Mesh` spans them, and a jitted function over
globally sharded arrays runs as one program whose collectives (the gradient all-reduce
of data parallelism) cross processes — over gloo on the CPU, NCCL on GPUs, ICI/DCN on
TPUs. :func:`jaxcnn.train.fit` trains this way once :func:`initialize` has run:

* every process holds the dataset on the host and computes the same global shuffling
  (from the replicated PRNG key), then gathers only its own rows of each global batch
  (:func:`feed`) — no process ever puts another's share on a device;
* a global batch that does not divide by the device count is padded to a multiple of it
  for the transfer and cut back inside the compiled step (:func:`unpad`), where XLA
  splits it unevenly, as ``make_epoch`` does on one process;
* any reduction over the batch — the mean loss, its gradient, and batch statistics such
  as a batch norm's mean and variance — is computed by that one program over the
  global batch, across processes: no layer sees only its process's share;
* only the primary process (:func:`is_primary`) writes checkpoints, metrics and plots
  and prints progress; every process resumes from the same checkpoint.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Optional

import jax
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

#: Environment variables :func:`initialize` reads when called without arguments
#: (``jaxcnn launch`` sets them for commands that are not ``jaxcnn`` subcommands).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAXCNN_COORDINATOR", "JAXCNN_NUM_PROCESSES", "JAXCNN_PROCESS_ID"


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, timeout: int = 300) -> None:
    """Joins this process to a multi-process run; call it first, before any JAX computation.

    ``jax.distributed.initialize`` with the CPU's cross-process collectives switched to
    gloo, and JAX's preemption service off: its handler would swallow SIGTERM, which so
    stops the process as in a single-process run (``jaxcnn train`` says where to resume).
    Give all three arguments (the same ``coordinator`` and ``num_processes`` in every
    process, ``process_id`` 0 … N−1, process 0 hosting the coordinator), or none:
    then ``$JAXCNN_COORDINATOR``, ``$JAXCNN_NUM_PROCESSES`` and ``$JAXCNN_PROCESS_ID``
    (set by ``jaxcnn launch``) if present, else JAX's own detection (SLURM, Open MPI,
    TPU pods). A coordinator on a loopback address (``127.0.0.1:PORT``, ``localhost``)
    listens on that address only; on any other host it listens on every interface, as JAX
    does by default. (Gloo's own connections listen on the address the machine's host name
    resolves to; JAX offers no setting for it.)

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordinator service.
      num_processes: the number of processes N.
      process_id: this process's index, ``0 <= process_id < N``.
      timeout: seconds to wait for every process to connect.

    Raises:
      ValueError: only some of the three arguments given, or malformed ones; in process 0,
        the coordinator's port already in use (checked first: JAX's coordinator service
        would crash the process).
    """
    given = (coordinator, num_processes, process_id)
    if all(v is None for v in given) and os.environ.get(ENV_COORDINATOR):
        coordinator = os.environ[ENV_COORDINATOR]
        num_processes, process_id = (_env_int(name) for name in (ENV_NUM_PROCESSES, ENV_PROCESS_ID))
    elif any(v is None for v in given) and any(v is not None for v in given):
        raise ValueError(
            f"initialize: give all of `coordinator`, `num_processes` and `process_id`, or none of them (to let "
            f"JAX detect SLURM, Open MPI or a TPU pod); got coordinator={coordinator!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}.")
    kwargs: dict[str, Any] = {}
    if coordinator is not None:
        host, port = split_address(coordinator)
        if not 1 <= num_processes or not 0 <= process_id < num_processes:
            raise ValueError(f"initialize: need num_processes >= 1 and 0 <= process_id < num_processes, got "
                             f"num_processes={num_processes}, process_id={process_id}.")
        if host in ("localhost", "::1") or host.startswith("127."):
            kwargs["coordinator_bind_address"] = f"{host}:{port}"
        if process_id == 0:  # JAX's coordinator service crashes the process on a port in use
            bind = kwargs.get("coordinator_bind_address") or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or \
                f"[::]:{port}"
            check_port_free(*split_address(bind), f"initialize: coordinator {coordinator}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Its SIGTERM handler would swallow the signal (fit has no preemption sync point): SIGTERM stops the process.
    jax.config.update("jax_enable_preemption_service", False)
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout, **kwargs)
    except ValueError as e:
        if coordinator is not None:
            raise
        raise ValueError(f"initialize: no coordinator given and JAX found no cluster around this process ({e}): "
                         "pass coordinator, num_processes and process_id (--coordinator, --num-processes, "
                         "--process-id), or run it under srun, mpirun, a TPU pod or `jaxcnn launch`.") from e


def split_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(HOST, PORT)``; ``ValueError`` naming the address otherwise."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address must be HOST:PORT with a port in 1..65535, got {address!r}.")
    return host.strip("[]"), int(port)


def check_port_free(host: str, port: int, what: str) -> None:
    """Raises ``ValueError`` naming ``what`` if a TCP server could not listen on
    ``host:port`` because another socket holds it (``::`` or ``0.0.0.0``: every interface)."""
    wildcard, in_use = host in ("", "::", "0.0.0.0"), False
    for h in ("::", "0.0.0.0") if wildcard else (host,):  # a wildcard: either IP stack
        try:
            with socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a just-closed port is free
                s.bind((h, port))
                return
        except OSError as e:
            in_use = in_use or e.errno == errno.EADDRINUSE
    if in_use:
        raise ValueError(f"{what}: port {port} is already in use{'' if wildcard else ' on ' + host}; stop what "
                         f"listens there or choose another port.")


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    if not text.isdigit():
        raise ValueError(f"initialize: ${ENV_COORDINATOR} is set, so ${name} must be a non-negative integer, "
                         f"got {text!r}.")
    return int(text)


def is_primary() -> bool:
    """Whether this is the process that writes files and prints (process 0)."""
    return jax.process_index() == 0


def is_multiprocess() -> bool:
    """Whether more than one process takes part in this run."""
    return jax.process_count() > 1


def assert_same(value: Any, what: str) -> None:
    """Raises in every process unless ``value`` (a pytree of numbers) is the same in all of them.

    Processes that disagree on the run's settings (dataset size, batch size, steps, the
    step a checkpoint resumes from) would otherwise wait for each other forever."""
    if is_multiprocess():
        multihost_utils.assert_equal(value, f"{what} differ between processes: every process must run the "
                                     "same command on the same data (and resume from the same checkpoint)")


def batch_spec(ndim: int, axis: int) -> PartitionSpec:
    """A :class:`PartitionSpec` splitting axis ``axis`` of an ``ndim``-D array over ``"batch"``."""
    return PartitionSpec(*([None] * axis), "batch", *([None] * (ndim - axis - 1)))


def padded_size(batch: int, mesh: Mesh) -> int:
    """``batch`` rounded up to a multiple of the mesh's device count."""
    return -(-batch // mesh.devices.size) * mesh.devices.size


def feed(x: np.ndarray, rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """The global array ``x[rows]``, split over ``mesh`` along the last axis of ``rows``,
    built from this process's rows only.

    ``x`` (the dataset, on the host) and ``rows`` (global row indices, shape ``(..., B)``)
    are the same in every process; each process reads and transfers only the rows its
    devices hold (:func:`jax.make_array_from_callback`, called once per local device). The
    batch axis is padded to a multiple of the device count with copies of row 0; cut it
    back to ``B`` with :func:`unpad` inside the compiled function.
    """
    rows = np.asarray(rows)
    batch_axis = rows.ndim - 1
    pad = padded_size(rows.shape[-1], mesh) - rows.shape[-1]
    rows = np.pad(rows, [(0, 0)] * batch_axis + [(0, pad)])
    shape = rows.shape + x.shape[1:]
    sharding = NamedSharding(mesh, batch_spec(len(shape), batch_axis))
    return jax.make_array_from_callback(shape, sharding, lambda index: x[rows[index[:rows.ndim]]])


def unpad(x: jax.Array, batch: int, mesh: Mesh, axis: int = 0) -> jax.Array:
    """Inside a jitted function: the first ``batch`` entries along ``axis`` of a
    :func:`feed` array, split over the mesh's ``"batch"`` axis (unevenly when ``batch``
    does not divide by the device count; XLA pads internally)."""
    x = lax.slice_in_dim(x, 0, batch, axis=axis)
    return lax.with_sharding_constraint(x, NamedSharding(mesh, batch_spec(x.ndim, axis)))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (the same host or device values in every process) replicated on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


__all__ = ["ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "assert_same", "batch_spec", "check_port_free",
           "feed", "initialize", "is_multiprocess", "is_primary", "padded_size", "replicate", "split_address", "unpad"]
