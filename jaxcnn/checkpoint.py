"""Checkpoints without pickle: one ``.npz`` holding every leaf of a pytree plus a JSON
header (leaf paths, shapes, dtypes, metadata).

Saving is atomic: the file is written next to its destination under a temporary name
(``.NAME.tmp-PID-*``) and renamed over it, so a crash never leaves half a checkpoint
behind; a temporary file orphaned by a killed process is removed by the next save or load
of the same checkpoint, a failed write (a full disk) removes its own and says that the
file there before is intact, and a Ctrl-C during a save takes effect once the save is
done. The file's mode follows the umask, as other output files do.

Every dtype JAX computes in round-trips bit for bit: NumPy's own under their names, and
the ``ml_dtypes`` ones (bfloat16, the float8/float4 and int4 families), which ``.npy``
cannot name, as their raw bytes (unsigned integers of their width) under their names.

Loading needs a template pytree of the same structure (e.g. a freshly initialised train
state, or :class:`jax.ShapeDtypeStruct` leaves) and checks, before anything is allocated,
the header's schema (every field's type, its nesting), its paths, shapes and dtypes
against the template, then every stored array's own ``.npy`` header and its size in the
archive; only a regular file is opened (a FIFO or a device would block or never end). A
truncated, foreign, malformed or mismatching file raises ``ValueError`` naming the file
(and the field or leaf) and changes nothing. :func:`load_params` reads the params and model
state of a training checkpoint for inference from the model alone (no train state).

:func:`locked` holds a folder for one writer (a training run) at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import numbers
import os
import signal
import stat
import tempfile
import threading
import warnings
import zipfile
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

FORMAT = "jaxcnn-checkpoint-v1"
_MAX_HEADER_BYTES = 1 << 28  # the JSON header; a history of millions of step losses fits
_MAX_DEPTH = 32  # nesting of the JSON header; jaxcnn's own is 5 deep
#: The numbers of an epoch record of ``fit``'s history (the first three always there) that readers use.
_RECORD_REQUIRED = ("train_loss", "train_accuracy", "seconds")
_RECORD_NUMBERS = (*_RECORD_REQUIRED, "test_loss", "test_accuracy", "test_sse")


def save(path: str, tree: Any, metadata: dict | None = None) -> None:
    """Atomically writes ``tree`` (arrays and scalars) and JSON-able ``metadata`` to ``path``.

    Raises:
      TypeError: a leaf whose dtype has no exact stored form (object, strings, records).
      OSError: the file cannot be written (the one there before, if any, is intact).
    """
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    arrays, dtypes = {}, []
    for i, (p, leaf) in enumerate(leaves):
        a = np.asarray(jax.device_get(leaf))
        arrays[f"leaf_{i}"] = a.view(_stored_dtype(a.dtype, f"{path}: leaf {jax.tree_util.keystr(p)}"))
        dtypes.append(a.dtype.name)
    header = {
        "format": FORMAT,
        "paths": [jax.tree_util.keystr(p) for p, _ in leaves],
        "shapes": [list(a.shape) for a in arrays.values()],
        "dtypes": dtypes,
        "metadata": metadata or {},
    }
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    write_atomically(path, lambda f: np.savez(f, **arrays))


def _stored_dtype(dtype: np.dtype, where: str) -> np.dtype:
    """How a leaf of ``dtype`` is stored: NumPy's numeric dtypes as themselves, the
    ml_dtypes ones (which ``.npy`` would write as anonymous ``|V2``) as unsigned integers
    of their width, holding the same bytes."""
    if dtype.isbuiltin == 1 and dtype.kind in "biufc":
        return dtype
    if dtype.isbuiltin == 2 and getattr(ml_dtypes, dtype.name, None) is not None:
        return np.dtype(f"u{dtype.itemsize}")
    raise TypeError(f"{where} has dtype {dtype}, which a checkpoint cannot store exactly; leaves must be "
                    f"booleans, integers, floats (bfloat16 and the other ml_dtypes included) or complex numbers.")


def write_atomically(path: str, write: Callable[[Any], None]) -> None:
    """Calls ``write(f)`` on a new temporary file next to ``path`` and renames it over
    ``path``: readers see the old file or the new one, never half of one. The new file's
    mode follows the umask; stale temporary files of ``path`` from killed processes are
    removed first; a Ctrl-C (SIGINT) arriving meanwhile is raised once the file is in place.

    Raises:
      OSError: of the original kind (e.g. ``errno.ENOSPC``, a full disk), naming ``path``
        and saying that the file there before, if any, is intact; the temporary file is
        removed, whatever went wrong.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path)
    with _interrupts_deferred():
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.tmp-{os.getpid()}-")
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it 0600
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
            if isinstance(e, OSError):
                raise _write_error(path, e) from e
            raise


def _write_error(path: str, e: OSError) -> OSError:
    """``e`` (its kind and errno kept) with a message naming ``path`` and what survives."""
    before = "the file there before is intact" if os.path.exists(path) else "no file was there before"
    error = type(e)(f"{path}: could not be written ({e.strerror or e}); {before}.")
    error.errno = e.errno
    return error


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
    """SIGINT or SIGTERM during the block is held back and delivered after it, to the handler
    that was there before (main thread only; elsewhere signals are not delivered to Python code
    anyway): a save is never cut in half by Ctrl-C or by a launcher stopping its processes.
    Yields the list of ``(signum, frame)`` received so far (the training loop polls it between
    chunks of steps); an ignored signal stays ignored."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, lambda *args: received.append(args)) for s in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(s) != signal.SIG_IGN}  # an ignored signal stays ignored
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not received:
        return
    signum, frame = received[0]
    handler = previous[signum]
    if callable(handler):
        handler(signum, frame)  # Python's default SIGINT handler raises KeyboardInterrupt
    elif handler == signal.SIG_DFL and signum == signal.SIGTERM:
        signal.raise_signal(signum)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
    """Holds ``directory`` (created if missing) for this process while the block runs: a
    second holder, in this process or another, gets a ``ValueError`` at once naming the
    folder and the process that holds it. The lock is the kernel's ``flock`` on the folder
    itself: nothing is written into it, and the lock ends with its process however that
    ends (a crash, SIGKILL). Where the file system cannot lock a folder (some NFS mounts)
    this is a warning, and the block runs unlocked.

    >>> import tempfile
    >>> with locked(tempfile.mkdtemp()):
    ...     pass  # train and write the folder's files
    """
    os.makedirs(directory, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(os.fstat(fd))
            raise ValueError(f"{directory} is in use by another run ({holder} holds its lock); wait for it to "
                             f"finish, or write to another folder.") from None
        except OSError as e:  # a file system without flock on folders (some NFS mounts)
            warnings.warn(f"cannot lock {directory} ({e.strerror or e}): a second run writing there at the same "
                          f"time would not be refused.", stacklevel=3)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(st: os.stat_result) -> str:
    """Who holds the flock on the file of ``st`` ("process PID"), from Linux's /proc/locks."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()  # "1: FLOCK ADVISORY WRITE 1234 08:01:5678 0 EOF"
                if fields[1] == "FLOCK":
                    major, minor, inode = fields[5].split(":")
                    if (int(major, 16), int(minor, 16), int(inode)) == (os.major(st.st_dev), os.minor(st.st_dev),
                                                                        st.st_ino):
                        return f"process {fields[4]}"
    return "another process"


def open_regular(path: str, what: str = "file"):
    """Opens ``path`` for reading in binary mode if it is a regular file (following
    symlinks); a FIFO, socket, device or folder is a ``ValueError`` naming it, raised
    without blocking (opening a FIFO for reading would wait for a writer forever)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}.") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, not a regular file; the {what} must be one.") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "an odd file")
        raise ValueError(f"{path}: {kind}, not a regular file; the {what} must be one.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_header(path: str) -> dict:
    """The JSON header of a checkpoint (its metadata under ``"metadata"``), its schema checked."""
    with _open(path) as archive:
        return _header(path, archive)


def load(path: str, like: Any) -> tuple[Any, dict]:
    """Reads a checkpoint into the structure of ``like``; returns ``(tree, metadata)``.

    Every stored array is checked against the template before it is read: the header's
    path, shape and dtype, then the array's own ``.npy`` header and its size in the archive.
    The template's leaves may be arrays, scalars or :class:`jax.ShapeDtypeStruct`.
    """
    return _load(path, like)


def _load(path: str, like: Any, prefix: str = "") -> tuple[Any, dict]:
    """:func:`load`; with a ``prefix`` (``".params"``), ``like`` is the subtree stored under
    it and the checkpoint's other leaves are skipped."""
    remove_stale_temporaries(path)
    with _open(path) as archive:
        header = _header(path, archive)
        template = jax.tree_util.tree_leaves_with_path(like)
        paths = [prefix + jax.tree_util.keystr(p) for p, _ in template]
        stored_paths = [p for p in header["paths"] if p == prefix or p.startswith((prefix + "[", prefix + "."))] \
            if prefix else header["paths"]
        if paths != stored_paths:
            missing = sorted(set(paths) - set(stored_paths))[:3]
            extra = sorted(set(stored_paths) - set(paths))[:3]
            raise ValueError(
                f"{path}: checkpoint does not match the expected structure{' under ' + prefix if prefix else ''} "
                f"({len(stored_paths)} leaves saved, {len(paths)} expected; missing {missing}, "
                f"unexpected {extra}). Was it written for another model or optimiser?"
            )
        index = {p: i for i, p in enumerate(header["paths"])}
        leaves = []
        for (p, ref), name in zip(template, paths):
            i = index[name]
            shape, dtype = header["shapes"][i], header["dtypes"][i]
            ref_shape = tuple(ref.shape) if hasattr(ref, "shape") else np.shape(ref)
            ref_dtype = np.dtype(ref.dtype if hasattr(ref, "dtype") else np.asarray(ref).dtype)
            where = f"{path}: leaf {name}"
            if tuple(shape) != ref_shape or dtype != ref_dtype.name:
                raise ValueError(f"{where} is {dtype}{tuple(shape)} in the checkpoint but {ref_dtype}{ref_shape} is "
                                 f"expected.")
            stored = _stored_dtype(ref_dtype, where)
            legacy = np.dtype(f"V{ref_dtype.itemsize}") if stored != ref_dtype else None  # NumPy's |V2 for bfloat16
            leaves.append(_read_member(where, archive, f"leaf_{i}.npy", ref_shape, stored, legacy).view(ref_dtype))
    tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
    return tree, header["metadata"]


def load_params(path: str, model: Any, *, input_shape: Optional[Sequence[int]] = None) -> tuple[Any, Any]:
    """The trained ``(params, model_state)`` of a checkpoint written by :func:`jaxcnn.train.fit`
    or ``jaxcnn train``, for inference with ``model.apply(params, model_state, x)``: no train
    state (optimiser, step, key) to rebuild. ``model`` is the network trained (e.g.
    ``models.resnet20()``); its structure comes from ``model.init`` at the input shape and
    dtype the checkpoint records (``input_shape`` for a checkpoint that records none).

    Raises:
      ValueError: the checkpoint records no input shape and none is given, or its params or
        state do not match ``model``'s (another model: the paths, shapes or dtypes differ).
    """
    settings = read_header(path)["metadata"].get("settings") or {}
    shape = input_shape if input_shape is not None else settings.get("input_shape")
    if shape is None:
        raise ValueError(f"load_params: {path} records no input shape (it was not written by train.fit); pass "
                         f"`input_shape`, e.g. (-1, 28, 28, 1).")
    shape = tuple(int(n) for n in shape)
    dtype = jnp.dtype(settings.get("dtype", "float32"))
    params, model_state = jax.tree_util.tree_map(  # in the dtype fit trained in (its floating leaves)
        lambda a: jax.ShapeDtypeStruct(a.shape, dtype if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype),
        jax.eval_shape(lambda key: model.init(key, shape)[:2], jax.random.PRNGKey(0)))
    params, _ = _load(path, params, ".params")
    model_state, _ = _load(path, model_state, ".model_state")
    return jax.device_put(params), jax.device_put(model_state)


def _read_member(where: str, archive: zipfile.ZipFile, name: str, shape: tuple | None, dtype: np.dtype,
                 legacy: np.dtype | None = None) -> np.ndarray:
    """Reads one ``.npy`` member of the archive: its header first, whose shape (unless
    ``shape`` is None), dtype (``dtype``, or ``legacy`` for the same bytes) and byte count
    must be those expected, and only then the data, into an array of exactly that size."""
    try:
        info = archive.getinfo(name)
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"{where} is stored in .npy format version {version}; jaxcnn writes 1.0 or 2.0.")
            stored_shape, fortran, stored_dtype = read(f)
            stored_shape = tuple(stored_shape)
            shape = stored_shape if shape is None else shape
            if stored_shape != shape or not (stored_dtype == dtype or legacy is not None and stored_dtype == legacy):
                raise ValueError(f"{where} is stored as {stored_dtype}{stored_shape} but its header and the "
                                 f"template say {dtype}{shape}.")
            data_bytes, want = info.file_size - f.tell(), math.prod(shape) * dtype.itemsize
            if data_bytes != want:
                raise ValueError(f"{where} holds {data_bytes:,} bytes of data but {dtype}{shape} takes {want:,}.")
            array = np.empty(shape[::-1] if fortran else shape, dtype)
            view = memoryview(array.reshape(-1).view(np.uint8))
            done = 0
            while done < want and (n := f.readinto(view[done:])):
                done += n
            if done != want:
                raise ValueError(f"{where} ends after {done:,} of its {want:,} bytes.")
    except (KeyError, zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(where):
            raise
        raise ValueError(f"{where} ({name}) is missing or corrupt ({type(e).__name__}: {e}).") from e
    return array.T if fortran else array


@contextlib.contextmanager
def _open(path: str):
    with open_regular(path, "checkpoint") as f:
        if f.read(6) == b"\x93NUMPY":
            raise ValueError(f"{path}: a single NumPy array (.npy), not a jaxcnn checkpoint (an .npz archive "
                             f"written by jaxcnn.checkpoint.save).")
        f.seek(0)
        try:
            archive = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable jaxcnn checkpoint (truncated or foreign file: {e}).") from e
        with archive:
            yield archive


def _header(path: str, archive: zipfile.ZipFile) -> dict:
    where = f"{path}: the checkpoint header"
    try:
        if archive.getinfo("__header__.npy").file_size > _MAX_HEADER_BYTES:
            raise ValueError(f"{where} is over {_MAX_HEADER_BYTES:,} bytes.")
        raw = _read_member(where, archive, "__header__.npy", None, np.dtype(np.uint8))
        header = json.loads(raw.tobytes().decode())
    except (KeyError, ValueError, RecursionError) as e:  # JSON and Unicode errors are ValueErrors
        raise ValueError(f"{path}: not a jaxcnn checkpoint (no valid header: {type(e).__name__}: {e}).") from e
    check_header(path, header)
    return header


def check_header(path: str, header: Any) -> None:
    """Raises ``ValueError`` naming ``path`` and the field unless ``header`` has the schema
    :func:`save` writes: ``format``; ``paths``, ``shapes`` (lists of sizes) and ``dtypes``,
    one entry per leaf; ``metadata``, a JSON object no more than 32 levels deep, whose
    ``history`` (if any) is a list of epoch records (objects with integer ``epoch`` and
    ``step``; numbers for ``train_loss``, ``train_accuracy``, ``seconds`` and, if there,
    ``test_loss``, ``test_accuracy``, ``test_sse``; a list of numbers for ``step_losses``;
    other fields free), whose ``settings`` (if any) is an object and whose ``epoch_in_progress``
    (if any, a mid-epoch checkpoint) says where in which epoch, as :func:`jaxcnn.train.fit` writes them."""
    def fail(field, expected, got):
        shown = repr(got) if len(repr(got)) <= 60 else repr(got)[:57] + "..."
        raise ValueError(f"{path}: checkpoint header field {field} must be {expected}, got "
                         f"{type(got).__name__} {shown}. Is the file corrupt or written by something else?")

    if not isinstance(header, dict):
        fail("(the header)", "a JSON object", header)
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {header.get('format')!r}; expected {FORMAT!r}.")
    _check_depth(path, header)
    for field, kind in (("paths", str), ("dtypes", str), ("shapes", list)):
        value = header.get(field)
        if not isinstance(value, list):
            fail(field, "a list, one entry per leaf", value)
        for i, entry in enumerate(value):
            if not isinstance(entry, kind):
                fail(f"{field}[{i}]", f"a {'list of sizes' if kind is list else 'string'}", entry)
    for i, shape in enumerate(header["shapes"]):
        if not all(_is_int(n) and n >= 0 for n in shape):
            fail(f"shapes[{i}]", "a list of sizes (integers >= 0)", shape)
    if not len(header["paths"]) == len(header["shapes"]) == len(header["dtypes"]):
        raise ValueError(f"{path}: checkpoint header lists {len(header['paths'])} paths, {len(header['shapes'])} "
                         f"shapes and {len(header['dtypes'])} dtypes; it needs one of each per leaf.")
    metadata = header.get("metadata")
    if not isinstance(metadata, dict):
        fail("metadata", "a JSON object", metadata)
    if "settings" in metadata and not isinstance(metadata["settings"], dict):
        fail("metadata.settings", "a JSON object", metadata["settings"])
    history = metadata.get("history", [])
    if not isinstance(history, list):
        fail("metadata.history", "a list of epoch records", history)
    for i, record in enumerate(history):
        field = f"metadata.history[{i}]"
        if not isinstance(record, dict):
            fail(field, "an epoch record (a JSON object)", record)
        for key in ("epoch", "step"):
            if not _is_int(record.get(key)) or record[key] < 0:
                fail(f"{field}.{key}", "an integer >= 0", record.get(key))
        for key in _RECORD_NUMBERS:
            if (key in record or key in _RECORD_REQUIRED) and not _is_number(record.get(key)):
                fail(f"{field}.{key}", "a number", record.get(key))
        losses = record.get("step_losses", [])
        if not isinstance(losses, list) or not all(_is_number(v) for v in losses):
            fail(f"{field}.step_losses", "a list of numbers", losses)
    if "epoch_in_progress" in metadata:
        _check_epoch_in_progress(path, metadata["epoch_in_progress"], fail)


def _check_epoch_in_progress(path: str, part: Any, fail: Callable) -> None:
    """A mid-epoch checkpoint's position (:func:`jaxcnn.train.epochs`): integers ``epoch`` >= 1
    and ``step`` of ``steps``, one loss and one accuracy per step done, its ``seconds``."""
    field = "metadata.epoch_in_progress"
    if not isinstance(part, dict):
        fail(field, "an object (epoch, step, steps, losses, accuracies, seconds)", part)
    for key, low in (("epoch", 1), ("step", 0), ("steps", 1)):
        if not _is_int(part.get(key)) or part[key] < low:
            fail(f"{field}.{key}", f"an integer >= {low}", part.get(key))
    if part["step"] > part["steps"]:
        fail(f"{field}.step", f"at most steps={part['steps']}", part["step"])
    for key in ("losses", "accuracies"):
        values = part.get(key)
        if not isinstance(values, list) or len(values) != part["step"] or not all(_is_number(v) for v in values):
            fail(f"{field}.{key}", f"a list of {part['step']} numbers (one per step done)", values)
    if not _is_number(part.get("seconds")):
        fail(f"{field}.seconds", "a number", part.get("seconds"))

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_depth(path: str, header: dict) -> None:
    """No recursion: a header nested thousands deep is refused, not a RecursionError."""
    level = [header]
    for depth in range(_MAX_DEPTH + 1):
        level = [v for node in level for v in (node.values() if isinstance(node, dict) else node)
                 if isinstance(v, (dict, list))]
        if not level:
            return
    raise ValueError(f"{path}: checkpoint header is nested over {_MAX_DEPTH} levels deep; jaxcnn writes at most a "
                     f"few.")

