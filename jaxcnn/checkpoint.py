"""Checkpoints without pickle: one ``.npz`` holding every leaf of a pytree plus a JSON
header (leaf paths, shapes, dtypes, metadata).

Saving is atomic: the file is written next to its destination under a temporary name
(``.NAME.tmp-PID-*``) and renamed over it, so a crash never leaves half a checkpoint
behind; a temporary file orphaned by a killed process is removed by the next save or load
of the same checkpoint, and a Ctrl-C during a save takes effect once the save is done.
The file's mode follows the umask, as other output files do. Loading needs a template
pytree of the same structure (e.g. a freshly initialised train state) and checks the
header's paths, shapes and dtypes against it, then every stored array's own ``.npy``
header (and its size in the archive) before reading it; a truncated, foreign or
mismatching file raises ``ValueError`` and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import threading
import zipfile
from typing import Any, Callable

import jax
import numpy as np

FORMAT = "jaxcnn-checkpoint-v1"


def save(path: str, tree: Any, metadata: dict | None = None) -> None:
    """Atomically writes ``tree`` (arrays and scalars) and JSON-able ``metadata`` to ``path``."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    arrays = {f"leaf_{i}": np.asarray(jax.device_get(leaf)) for i, (_, leaf) in enumerate(leaves)}
    header = {
        "format": FORMAT,
        "paths": [jax.tree_util.keystr(p) for p, _ in leaves],
        "shapes": [list(a.shape) for a in arrays.values()],
        "dtypes": [str(a.dtype) for a in arrays.values()],
        "metadata": metadata or {},
    }
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    write_atomically(path, lambda f: np.savez(f, **arrays))


def write_atomically(path: str, write: Callable[[Any], None]) -> None:
    """Calls ``write(f)`` on a new temporary file next to ``path`` and renames it over
    ``path``: readers see the old file or the new one, never half of one. The new file's
    mode follows the umask; stale temporary files of ``path`` from killed processes are
    removed first; a Ctrl-C (SIGINT) arriving meanwhile is raised once the file is in place."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    with _interrupts_deferred():
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.tmp-{os.getpid()}-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it 0600
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def check_writable(path: str, what: str = "checkpoint") -> None:
    """Raises ValueError unless :func:`write_atomically` can write ``path``: it is not a
    folder, and its folder is one (created if missing) that accepts new files. For checking
    an output location before the work that produces the output."""
    directory, name = os.path.split(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{path}: the {what} path is a folder; give a file path.")
    above = directory
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise ValueError(f"{path}: cannot write the {what}: {above} is a file, not a folder.")
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=f".{name}.tmp-{os.getpid()}-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"{path}: cannot write the {what} in {directory} ({type(e).__name__}: "
                         f"{e.strerror or e}).") from e


def remove_stale_temporaries(path: str) -> list[str]:
    """Removes the temporary files that :func:`write_atomically` left next to ``path`` in
    processes that no longer run (killed mid-save); returns their paths."""
    directory, name = os.path.split(os.path.abspath(path))
    removed = []
    prefix = f".{name}.tmp-"
    for entry in os.listdir(directory) if os.path.isdir(directory) else ():
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, entry))
                removed.append(os.path.join(directory, entry))
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a save of this process is in flight (another thread) or failed and cleaned up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _interrupts_deferred():
    """SIGINT during the block is held back and raised as KeyboardInterrupt after it
    (main thread only; elsewhere signals are not delivered to Python code anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(*received[0])  # Python's default handler raises KeyboardInterrupt
    elif received and previous != signal.SIG_IGN:
        raise KeyboardInterrupt


def read_header(path: str) -> dict:
    """The JSON header of a checkpoint (its metadata under ``"metadata"``)."""
    with _open(path) as npz:
        return _header(path, npz)


def load(path: str, like: Any) -> tuple[Any, dict]:
    """Reads a checkpoint into the structure of ``like``; returns ``(tree, metadata)``.

    Every stored array is checked against the template before it is read: the header's
    path, shape and dtype, then the array's own ``.npy`` header and its size in the archive.
    """
    remove_stale_temporaries(path)
    with _open(path) as npz:
        header = _header(path, npz)
        template = jax.tree_util.tree_leaves_with_path(like)
        paths = [jax.tree_util.keystr(p) for p, _ in template]
        if paths != header["paths"]:
            missing = sorted(set(paths) - set(header["paths"]))[:3]
            extra = sorted(set(header["paths"]) - set(paths))[:3]
            raise ValueError(
                f"{path}: checkpoint does not match the expected structure "
                f"({len(header['paths'])} leaves saved, {len(paths)} expected; missing {missing}, "
                f"unexpected {extra}). Was it written for another model or optimiser?"
            )
        leaves = []
        for i, ((p, ref), shape, dtype) in enumerate(zip(template, header["shapes"], header["dtypes"])):
            ref_shape = tuple(np.shape(ref))
            ref_dtype = np.dtype(ref.dtype if hasattr(ref, "dtype") else np.asarray(ref).dtype)
            where = f"{path}: leaf {jax.tree_util.keystr(p)}"
            if tuple(shape) != ref_shape or dtype != str(ref_dtype):
                raise ValueError(f"{where} is {dtype}{tuple(shape)} in the checkpoint but {ref_dtype}{ref_shape} is "
                                 f"expected.")
            try:
                _check_member(where, npz.zip, f"leaf_{i}.npy", ref_shape, ref_dtype)
                leaves.append(npz[f"leaf_{i}"])
            except (KeyError, ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
                if isinstance(e, ValueError) and str(e).startswith(where):
                    raise
                raise ValueError(f"{where} (leaf_{i}) is missing or corrupt ({e}).") from e
    tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
    return tree, header["metadata"]


def _check_member(where: str, archive: zipfile.ZipFile, name: str, shape: tuple, dtype: np.dtype) -> None:
    """Reads only the ``.npy`` header of one archive member: shape, dtype and the member's
    uncompressed size must be the template's, so nothing of the wrong size is allocated."""
    info = archive.getinfo(name)
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"{where} is stored in .npy format version {version}; jaxcnn writes 1.0 or 2.0.")
        stored_shape, _, stored_dtype = read(f)  # Fortran order reads back correctly
        data_bytes = info.file_size - f.tell()
    if tuple(stored_shape) != shape or stored_dtype != dtype:
        raise ValueError(f"{where} is stored as {stored_dtype}{tuple(stored_shape)} but its header and the "
                         f"template say {dtype}{shape}.")
    if data_bytes != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{where} holds {data_bytes:,} bytes of data but {dtype}{shape} takes "
                         f"{math.prod(shape) * dtype.itemsize:,}.")


@contextlib.contextmanager
def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint.")
    with open(path, "rb") as f:
        try:
            npz = np.load(f, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable jaxcnn checkpoint (truncated or foreign file: {e}).") from e
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single NumPy array (.npy), not a jaxcnn checkpoint (an .npz archive "
                             f"written by jaxcnn.checkpoint.save).")
        with npz:
            yield npz


def _header(path: str, npz) -> dict:
    try:
        header = json.loads(bytes(npz["__header__"]).decode())
    except (KeyError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a jaxcnn checkpoint (no valid header: {e}).") from e
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {header.get('format')!r}; expected {FORMAT!r}.")
    return header
