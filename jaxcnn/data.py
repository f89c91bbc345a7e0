"""Datasets: the seesaw board, MNIST-1D (generated locally) and MNIST-format IDX files.

Every loader returns a :class:`Dataset` of NumPy arrays: images channels-last
``(N, *spatial, C)`` as float32, labels as int32. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import struct
import warnings
import zlib
from typing import NamedTuple, Optional

import numpy as np

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Fashion-MNIST's class names, by label.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
FASHION_MNIST_ENV = "JAXCNN_FASHION_MNIST"

_INSTALL_HINT = (
    "Install Debian's package with `sudo apt-get install dataset-fashion-mnist` (files land in "
    f"{FASHION_MNIST_DIR}), or point --data-dir / ${FASHION_MNIST_ENV} at a folder holding "
    "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) "
    "and t10k-labels-idx1-ubyte(.gz)."
)


class Dataset(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


# --------------------------------------------------------------------------- seesaw


def seesaw() -> Dataset:
    """The seesaw board of the Jearanaitanakij lecture: two adjacent boxes on five
    positions; state 0 = tilt left, 1 = tilt right. The 4 patterns are both the training
    and the test set. ``x`` has shape ``(4, 5)``."""
    x = np.array(
        [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], np.float32
    )
    y = np.array([0, 0, 1, 1], np.int32)
    return Dataset(x, y, x.copy(), y.copy(), 2)


# --------------------------------------------------------------------------- MNIST-1D


def mnist1d(seed: int = 42, shuffle_seq: bool = False, cache_dir: Optional[str] = None) -> Dataset:
    """MNIST-1D (Greydanus & Kobak), generated locally with the ``mnist1d`` package's
    ``make_dataset(get_dataset_args())``: 4,000 train / 1,000 test sequences of length 40,
    returned as ``(N, 40)``. ``shuffle_seq=True`` gives the paper's shuffled-sequence
    variant (one fixed permutation of the 40 positions).

    Generating takes seconds; with ``cache_dir`` the result is kept there as
    ``mnist1d-seed{seed}[-shuffled].npz`` (a :mod:`jaxcnn.checkpoint` archive, written
    atomically, so processes that start together may all write it) and read back on later
    calls. Reading checks the cache before allocating (its version, seed, shapes and dtypes)
    and then the SHA-256 of its arrays; a cache that fails a check (truncated, edited,
    written by another version) is regenerated and rewritten with a warning naming it and
    what was wrong, so a damaged cache is never trained on. A cache that cannot be written
    (a full disk) is a warning too: the data is generated anyway."""
    if cache_dir is None:
        return _generate_mnist1d(seed, shuffle_seq)
    import jax

    from jaxcnn import checkpoint

    path = os.path.join(cache_dir, f"mnist1d-seed{seed}{'-shuffled' if shuffle_seq else ''}.npz")
    meta = {"content": _MNIST1D_CACHE, "seed": seed, "shuffle_seq": shuffle_seq, "num_classes": 10}
    try:
        arrays, saved = checkpoint.load(path, {k: jax.ShapeDtypeStruct(*v) for k, v in _MNIST1D_SHAPES.items()})
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        wrong = [k for k in meta if saved.get(k) != meta[k]]
        if wrong:
            raise ValueError(f"{path}: a cache of another kind ({', '.join(f'{k} {saved.get(k)!r}' for k in wrong)}; "
                             f"expected {', '.join(f'{k} {meta[k]!r}' for k in wrong)}).")
        if saved.get("sha256") != _sha256(arrays):
            raise ValueError(f"{path}: its arrays do not match their SHA-256 (edited or corrupt).")
        return Dataset(**arrays, num_classes=10)
    except FileNotFoundError:
        pass
    except ValueError as e:
        warnings.warn(f"MNIST-1D cache {e} Regenerating it.", stacklevel=2)
    d = _generate_mnist1d(seed, shuffle_seq)
    arrays = d._asdict()
    del arrays["num_classes"]
    try:
        checkpoint.save(path, arrays, {**meta, "sha256": _sha256(arrays)})
    except OSError as e:
        warnings.warn(f"MNIST-1D cache not kept: {e}", stacklevel=2)
    return d


_MNIST1D_CACHE = "jaxcnn-mnist1d-cache-v1"
#: What a cache must hold (``make_dataset``'s defaults), checked before anything is read.
_MNIST1D_SHAPES = {"x_train": ((4000, 40), np.float32), "y_train": ((4000,), np.int32),
                   "x_test": ((1000, 40), np.float32), "y_test": ((1000,), np.int32)}


def _sha256(arrays: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}{a.shape}".encode())
        digest.update(a.data)
    return digest.hexdigest()


def _generate_mnist1d(seed: int, shuffle_seq: bool) -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise ImportError("MNIST-1D needs the `mnist1d` package: pip install 'jaxcnn[train]'.") from e
    args = get_dataset_args()
    args.seed, args.shuffle_seq = seed, shuffle_seq
    d = make_dataset(args)
    return Dataset(
        d["x"].astype(np.float32), d["y"].astype(np.int32),
        d["x_test"].astype(np.float32), d["y_test"].astype(np.int32), 10,
    )


# --------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_MAX_IDX_BYTES = 1 << 31  # refuse to allocate more than 2 GiB for one file


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST format), raw or ``.gz``.

    The header (magic ``0x0000``, a type byte, the number of dimensions, the sizes) is
    validated first, and a declared payload over 2 GiB is refused before anything is
    allocated; a raw file's size is checked against the declared payload before the
    payload is read; only a regular file is opened (a FIFO would block). A ``.gz`` file is
    decompressed to the end of its stream, so every member's CRC-32 and length are
    verified (concatenated members, as ``cat a.gz b.gz`` or bgzip write, are read as one
    stream). A truncated, corrupt or foreign file, or one holding more or fewer bytes than
    its header declares, fails with a ``ValueError`` naming it.
    """
    from jaxcnn import checkpoint

    gz = path.endswith(".gz")
    try:
        with checkpoint.open_regular(path, "IDX file") as raw, \
                (gzip.GzipFile(fileobj=raw) if gz else contextlib.nullcontext(raw)) as f:
            header = f.read(4)
            if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] not in _IDX_DTYPES:
                raise ValueError(
                    f"{path}: not an IDX file (magic bytes {header.hex() or 'missing'}; expected "
                    f"00 00, a type byte in {sorted(hex(k) for k in _IDX_DTYPES)}, and the rank)."
                )
            dtype, ndim = np.dtype(_IDX_DTYPES[header[2]]), header[3]
            raw_dims = f.read(4 * ndim)
            if ndim == 0 or len(raw_dims) < 4 * ndim:
                raise ValueError(f"{path}: IDX header declares {ndim} dimensions but is truncated or empty.")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            expected = math.prod(dims) * dtype.itemsize
            if expected > _MAX_IDX_BYTES:
                raise ValueError(f"{path}: IDX header declares shape {dims} ({expected:,} bytes), "
                                 "over the 2 GiB limit.")
            mismatch = (f"{path}: IDX header declares shape {dims} ({expected:,} bytes of {dtype}) but the "
                        f"file holds {{:,}} bytes after the header (truncated or corrupt).")
            size = os.fstat(raw.fileno()).st_size
            if not gz and size - 4 - 4 * ndim != expected:
                raise ValueError(mismatch.format(size - 4 - 4 * ndim))
            data = f.read(expected)
            held = len(data) + _read_to_end(f)  # to the end of the gzip stream: checks its CRC-32s
            if held != expected:
                raise ValueError(mismatch.format(held))
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path}: cannot read as IDX, the file is corrupt or truncated "
                         f"({type(e).__name__}: {e}).") from e
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_to_end(f, chunk: int = 1 << 20) -> int:
    """Reads ``f`` to its end in bounded chunks; returns how many bytes were left."""
    left = 0
    while block := f.read(chunk):
        left += len(block)
    return left


def write_idx(path: str, array: np.ndarray) -> str:
    """Writes ``array`` as an IDX file (the inverse of :func:`read_idx`), gzipped when
    ``path`` ends in ``.gz``; for exporting data or making small MNIST-format test sets.

    Raises:
      TypeError: if the dtype has no IDX type code (uint8, int8, int16, int32, float32,
        float64).
      ValueError: for a 0-d array or more than 255 dimensions.
    """
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX type code; use uint8, int8, int16, int32, "
                        f"float32 or float64.")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"write_idx: IDX holds arrays of 1 to 255 dimensions, got shape {array.shape}.")
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = array.astype(np.dtype(_IDX_DTYPES[code]).newbyteorder(">")).tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
        f.write(header + payload)
    return path


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"Fashion-MNIST file {stem}(.gz) not found in {directory}. {_INSTALL_HINT}")


def idx_dataset(directory: str, num_classes: int = 10) -> Dataset:
    """An MNIST-format dataset (MNIST, Fashion-MNIST, KMNIST, ...) from its four IDX files,
    as ``(N, H, W, 1)`` float32 images scaled to [0, 1] and int32 labels.

    Raises:
      ValueError: naming the file: images that are not ``(N, H, W)``, test images of
        another resolution than the training images, labels that are not integer class
        ids in ``[0, num_classes)`` or not one per image (and every :func:`read_idx` error).
    """
    def images(stem):
        path = _find(directory, stem)
        a = read_idx(path)
        if a.ndim != 3:
            raise ValueError(f"{path}: expected images of shape (N, H, W), got {a.shape}.")
        return path, (a.astype(np.float32) / 255.0)[..., None]

    def labels(stem, n):
        path = _find(directory, stem)
        a = read_idx(path)
        if a.shape != (n,):
            raise ValueError(f"{path}: expected {n} labels, one per image, got shape {a.shape}.")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{path}: labels must be integer class ids (IDX type ubyte, byte, short or int), got "
                             f"dtype {a.dtype}.")
        check_labels(path, a, num_classes)
        return a.astype(np.int32)

    (train_path, x_train), (test_path, x_test) = images("train-images-idx3-ubyte"), images("t10k-images-idx3-ubyte")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(f"{test_path}: test images are {x_test.shape[1]}×{x_test.shape[2]} but the training images "
                         f"in {train_path} are {x_train.shape[1]}×{x_train.shape[2]}; both sets must have one "
                         f"resolution.")
    return Dataset(
        x_train, labels("train-labels-idx1-ubyte", len(x_train)),
        x_test, labels("t10k-labels-idx1-ubyte", len(x_test)), num_classes,
    )


def check_labels(where: str, labels: np.ndarray, num_classes: int) -> None:
    """Raises ValueError unless every label is a class id in ``[0, num_classes)``: out of
    range, softmax cross-entropy is NaN and a confusion matrix would drop the example."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{where}: labels must be integer class ids, got dtype {labels.dtype}.")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(
            f"{where}: labels must be class ids in [0, {num_classes}), got {bad.size} outside it "
            f"(the first: label {labels.flat[bad[0]]} at index {bad[0]}; values "
            f"{np.unique(labels.flat[bad])[:5].tolist()})."
        )


def fashion_mnist(directory: Optional[str] = None, size: int = 28) -> Dataset:
    """Fashion-MNIST from IDX files: ``directory``, else ``$JAXCNN_FASHION_MNIST``, else
    Debian's ``/usr/share/datasets/fashion-mnist``. ``size=14`` averages 2×2 blocks (Park's
    homework input); ``size=32`` zero-pads 2 pixels on each side (LeNet-5's input)."""
    directory = directory or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Fashion-MNIST folder {directory} does not exist. {_INSTALL_HINT}")
    d = idx_dataset(directory)
    return Dataset(resize(d.x_train, size), d.y_train, resize(d.x_test, size), d.y_test, d.num_classes)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """28×28 images to 14×14 (2×2 block means), 28 (unchanged) or 32 (zero padding)."""
    n, h, w, c = images.shape
    if size == h:
        return images
    if size * 2 == h and size * 2 == w:
        return images.reshape(n, size, 2, size, 2, c).mean(axis=(2, 4))
    if size == h + 4 and size == w + 4:
        return np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    raise ValueError(f"resize: cannot turn {h}×{w} images into {size}×{size}; use {h // 2}, {h} or {h + 4}.")


#: Loaders by name, for the command line.
DATASETS = {
    "seesaw": lambda **kw: seesaw(),
    "mnist1d": lambda directory=None, **kw: mnist1d(cache_dir=directory),
    "mnist1d_shuffled": lambda directory=None, **kw: mnist1d(shuffle_seq=True, cache_dir=directory),
    "fashion_mnist": lambda directory=None, **kw: fashion_mnist(directory, 28),
    "fashion_mnist14": lambda directory=None, **kw: fashion_mnist(directory, 14),
    "fashion_mnist32": lambda directory=None, **kw: fashion_mnist(directory, 32),
}
