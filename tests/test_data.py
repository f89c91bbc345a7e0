import errno
import gzip
import io
import json
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

from test_checkpoint import _returns_within

from jaxcnn import checkpoint, data


def _write_idx(path, array, type_byte=0x08, dims=None, truncate=0, gz=False):
    dims = array.shape if dims is None else dims
    payload = struct.pack(">BBBB", 0, 0, type_byte, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    payload += array.astype(">u1" if type_byte == 0x08 else array.dtype).tobytes()
    payload = payload[: len(payload) - truncate]
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)
    return str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = _write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), images, gz=gz)
    np.testing.assert_array_equal(data.read_idx(path), images)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
    path = _write_idx(tmp_path / ("t.idx" + (".gz" if gz else "")), np.zeros((5, 4, 4), np.uint8), truncate=7, gz=gz)
    with pytest.raises(ValueError, match=r"declares shape \(5, 4, 4\) \(80 bytes of uint8\) but the file holds 73 "
                                         r"bytes"):
        data.read_idx(path)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(ValueError, match=r"not an IDX file \(magic bytes 504b0304"):
        data.read_idx(str(path))


def test_idx_huge_declared_size_is_refused_before_allocating(tmp_path):
    path = _write_idx(tmp_path / "huge.idx", np.zeros((1, 1, 1), np.uint8), dims=(100000, 100000, 1000))
    with pytest.raises(ValueError, match=r"over the 2 GiB limit"):
        data.read_idx(path)
    path = _write_idx(tmp_path / "big.idx", np.zeros((1, 1, 1), np.uint8), dims=(1000, 1000, 100))
    with pytest.raises(ValueError, match=r"but the file holds 1 bytes"):
        data.read_idx(path)


def _fake_fashion(directory, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        _write_idx(directory / f"{stem}-images-idx3-ubyte.gz", images, gz=True)
        _write_idx(directory / f"{stem}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    return directory


@pytest.mark.parametrize("size", [14, 28, 32])
def test_fashion_mnist_from_a_folder(tmp_path, size):
    d = data.fashion_mnist(str(_fake_fashion(tmp_path)), size)
    assert d.x_train.shape == (12, size, size, 1) and d.x_test.shape == (6, size, size, 1)
    assert d.x_train.dtype == np.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    assert d.y_train.tolist() == [i % 10 for i in range(12)]


def test_fashion_mnist_env_variable_and_missing_hint(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(_fake_fashion(tmp_path)))
    assert data.fashion_mnist().x_train.shape == (12, 28, 28, 1)
    monkeypatch.setenv(data.FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        data.fashion_mnist()


def test_downsampling_to_14_averages_2x2_blocks():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(data.resize(x, 2)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_seesaw_board():
    d = data.seesaw()
    assert d.x_train.shape == (4, 5) and d.y_train.tolist() == [0, 0, 1, 1]
    assert np.all(d.x_train.sum(1) == 2)


def test_mnist1d_is_generated_locally():
    d = data.mnist1d()
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert set(np.unique(d.y_train)) == set(range(10))
    shuffled = data.mnist1d(shuffle_seq=True)
    assert shuffled.x_train.shape == (4000, 40) and not np.allclose(shuffled.x_train, d.x_train)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_write_idx_round_trips_through_read_idx(tmp_path, dtype, gz):
    array = (np.arange(24) - 5).reshape(2, 3, 4).astype(dtype)
    path = data.write_idx(str(tmp_path / ("a.idx" + (".gz" if gz else ""))), array)
    back = data.read_idx(path)
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype


def test_write_idx_matches_the_mnist_layout_and_checks_its_input(tmp_path):
    labels = np.array([3, 1, 4], np.uint8)
    path = data.write_idx(str(tmp_path / "labels"), labels)
    with open(path, "rb") as f:
        assert f.read() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])
    with pytest.raises(TypeError, match=r"write_idx: dtype int64 has no IDX type code"):
        data.write_idx(str(tmp_path / "x"), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"write_idx: IDX holds arrays of 1 to 255 dimensions, got shape \(\)"):
        data.write_idx(str(tmp_path / "x"), np.uint8(3))


def test_fashion_mnist_class_names():
    assert len(data.FASHION_MNIST_CLASSES) == 10 and data.FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_idx_gz_corruption_anywhere_is_a_value_error_naming_the_file(tmp_path):
    # Flip each byte of the deflate stream and the trailer (CRC-32, length) in turn: each
    # is a ValueError naming the file, never different pixels.
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7)).astype(np.uint8)
    good = gzip.compress(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", *images.shape) + images.tobytes())
    path = tmp_path / "flipped-idx3-ubyte.gz"
    for position in range(10, len(good)):  # bytes 0-9 are the gzip header (mtime, flags: no CRC)
        corrupt = bytearray(good)
        corrupt[position] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        with pytest.raises(ValueError, match=re.escape(str(path))):
            data.read_idx(str(path))


def test_idx_gz_with_two_members_reads_as_one_stream(tmp_path):
    images = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    raw = struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", *images.shape) + images.tobytes()
    path = tmp_path / "two-members.gz"
    path.write_bytes(gzip.compress(raw[:11]) + gzip.compress(raw[11:]))  # as `cat a.gz b.gz` or bgzip
    np.testing.assert_array_equal(data.read_idx(str(path)), images)


def test_idx_gz_with_more_bytes_than_declared_is_refused(tmp_path):
    path = _write_idx(tmp_path / "long.gz", np.zeros((2, 3), np.uint8), dims=(2, 2), gz=True)
    with pytest.raises(ValueError, match=r"long.gz: IDX header declares shape \(2, 2\) \(4 bytes of uint8\) but the "
                                         r"file holds 6 bytes after the header"):
        data.read_idx(path)


def test_idx_labels_outside_the_classes_are_refused(tmp_path):
    directory = _fake_fashion(tmp_path)
    _write_idx(directory / "t10k-labels-idx1-ubyte", np.array([0, 1, 12, 3, 255, 5], np.uint8))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: labels must be class ids in \[0, 10\), got 2 "
                                         r"outside it \(the first: label 12 at index 2; values \[12, 255\]\)"):
        data.fashion_mnist(str(directory))


def test_idx_labels_of_a_float_type_are_a_value_error_naming_the_file(tmp_path):
    directory = _fake_fashion(tmp_path)
    path = data.write_idx(str(directory / "train-labels-idx1-ubyte"), (np.arange(12) % 10).astype(np.float32))
    with pytest.raises(ValueError, match=re.escape(path) + r": labels must be integer class ids \(IDX type ubyte, "
                                                           r"byte, short or int\), got dtype float32"):
        data.fashion_mnist(str(directory))


def test_idx_test_images_of_another_resolution_are_refused(tmp_path):
    directory = _fake_fashion(tmp_path)
    test = _write_idx(directory / "t10k-images-idx3-ubyte.gz", np.zeros((6, 14, 14), np.uint8), gz=True)
    train = str(directory / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match=re.escape(f"{test}: test images are 14×14 but the training images in "
                                                   f"{train} are 28×28; both sets must have one resolution")):
        data.idx_dataset(str(directory))


def test_idx_images_and_labels_errors_name_the_file(tmp_path):
    directory = _fake_fashion(tmp_path)
    path = _write_idx(directory / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match=re.escape(path) + r": expected 6 labels, one per image, got shape \(5,\)"):
        data.idx_dataset(str(directory))


def test_idx_reads_only_regular_files(tmp_path):
    fifo = tmp_path / "images-idx3-ubyte"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    error = _returns_within(10, fifo, lambda: data.read_idx(str(fifo)))
    assert isinstance(error, ValueError), error
    assert str(error) == f"{fifo}: a FIFO, not a regular file; the IDX file must be one."
    with pytest.raises(ValueError, match=r"/dev/zero: a character device, not a regular file; the IDX file must be "):
        data.read_idx("/dev/zero")


# --------------------------------------------------------------------------- the MNIST-1D cache


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory):
    """A folder holding a freshly written cache, and the dataset it holds."""
    directory = tmp_path_factory.mktemp("cache")
    return directory, data.mnist1d(cache_dir=str(directory))


def _cached(directory, tmp_path):
    """A copy of the cache folder to damage."""
    copy = tmp_path / "cache"
    shutil.copytree(directory, copy)
    return copy, str(copy / "mnist1d-seed42.npz")


def _assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_mnist1d_cache_is_read_back(mnist1d_cache, monkeypatch):
    directory, d = mnist1d_cache
    monkeypatch.setattr(data, "_generate_mnist1d", None)  # read, not generated
    _assert_same(data.mnist1d(cache_dir=str(directory)), d)
    assert os.listdir(directory) == ["mnist1d-seed42.npz"]


def _rewrite(path, **changes):
    """The cache at ``path`` with arrays or metadata replaced, its checksum left as it was."""
    arrays, meta = checkpoint.load(path, {k: jax.ShapeDtypeStruct(*v) for k, v in data._MNIST1D_SHAPES.items()})
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for key, value in changes.items():
        (arrays if key in arrays else meta)[key] = value
    checkpoint.save(path, arrays, meta)


DAMAGE = {
    "zeroed x_train": (lambda path: _rewrite(path, x_train=np.zeros((4000, 40), np.float32)),
                       r"its arrays do not match their SHA-256 \(edited or corrupt\)"),
    "another seed": (lambda path: _rewrite(path, seed=7), r"a cache of another kind \(seed 7; expected seed 42\)"),
    "truncated": (lambda path: Path(path).write_bytes(Path(path).read_bytes()[:100000]),
                  r"not a readable jaxcnn checkpoint \(truncated or foreign"),
    "a key missing": (lambda path: np.savez(path, x_train=np.zeros((4000, 40), np.float32)),
                      r"not a jaxcnn checkpoint \(no valid header"),
    "an old cache": (lambda path: np.savez(path, **_arrays(path), num_classes=10), r"not a jaxcnn checkpoint"),
    "a huge declared size": (lambda path: _huge(path), r"leaf \['x_train'\] is float32\(100000000, 4\) in the "
                                                      r"checkpoint but float32\(4000, 40\) is expected"),
}


def _arrays(path):
    arrays, _ = checkpoint.load(path, {k: jax.ShapeDtypeStruct(*v) for k, v in data._MNIST1D_SHAPES.items()})
    return arrays


def _huge(path):
    """A small file whose header declares 1.5 GiB of x_train."""
    arrays, meta = checkpoint.load(path, {k: jax.ShapeDtypeStruct(*v) for k, v in data._MNIST1D_SHAPES.items()})
    checkpoint.save(path, {**arrays, "x_train": np.broadcast_to(np.float32(0), (100_000_000, 4))[:1]}, meta)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    header = json.loads(np.load(io.BytesIO(members["__header__.npy"])).tobytes())
    index = header["paths"].index("['x_train']")
    header["shapes"][index] = [100_000_000, 4]
    members["__header__.npy"] = _npy(np.frombuffer(json.dumps(header).encode(), np.uint8))
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    assert os.path.getsize(path) < 2_000_000


def _npy(array):
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_mnist1d_cache_is_regenerated_with_a_warning(mnist1d_cache, tmp_path, damage, monkeypatch):
    directory, d = mnist1d_cache
    monkeypatch.setattr(data, "_generate_mnist1d", lambda seed, shuffle_seq: d)  # as generating gives it, faster
    copy, path = _cached(directory, tmp_path)
    spoil, reason = DAMAGE[damage]
    spoil(path)
    with pytest.warns(UserWarning, match=re.escape(f"MNIST-1D cache {path}: ") + ".*" + reason + r".* Regenerating it"):
        _assert_same(data.mnist1d(cache_dir=str(copy)), d)
    assert os.listdir(copy) == ["mnist1d-seed42.npz"]
    _assert_same(data.mnist1d(cache_dir=str(copy)), d)  # rewritten: read back without a warning


def test_a_cache_that_cannot_be_written_leaves_nothing_behind(tmp_path, monkeypatch):
    def full(f, **arrays):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    path = str(tmp_path / "mnist1d-seed42.npz")
    with pytest.warns(UserWarning, match=re.escape(f"MNIST-1D cache not kept: {path}: could not be "
                                                   f"written (No space left on device)")):
        d = data.mnist1d(cache_dir=str(tmp_path))
    assert d.x_train.shape == (4000, 40) and not os.listdir(tmp_path)
