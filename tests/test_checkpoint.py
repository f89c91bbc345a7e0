import io
import json
import os
import signal
import stat
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import checkpoint

TREE = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3)}


def _archive(path, header_shape, member: bytes):
    """A checkpoint whose header says float32``header_shape`` for leaf ['w'] and whose
    ``leaf_0.npy`` member is ``member`` (raw .npy bytes)."""
    header = {"format": checkpoint.FORMAT, "paths": ["['w']"], "shapes": [list(header_shape)],
              "dtypes": ["float32"], "metadata": {}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__header__.npy", _npy(np.frombuffer(json.dumps(header).encode(), np.uint8)))
        z.writestr("leaf_0.npy", member)
    return str(path)


def _npy(array):
    f = io.BytesIO()
    np.save(f, array)
    return f.getvalue()


def test_stored_arrays_are_checked_against_the_template_before_reading(tmp_path):
    path = _archive(tmp_path / "a.npz", (2, 3), _npy(np.zeros((3, 2), np.float64)))
    with pytest.raises(ValueError, match=r"a.npz: leaf \['w'\] is stored as float64\(3, 2\) but its header and the "
                                         r"template say float32\(2, 3\)"):
        checkpoint.load(path, TREE)
    huge = io.BytesIO()  # an entry claiming 2**42 elements: refused, nothing allocated
    np.lib.format.write_array_header_1_0(huge, {"descr": "<f4", "fortran_order": False, "shape": (2**42,)})
    path = _archive(tmp_path / "b.npz", (2, 3), huge.getvalue() + b"\0" * 24)
    with pytest.raises(ValueError, match=r"b.npz: leaf \['w'\] is stored as float32\(4398046511104,\) but its header "
                                         r"and the template say float32\(2, 3\)"):
        checkpoint.load(path, TREE)
    short = _npy(np.zeros((2, 3), np.float32))[:-8]
    path = _archive(tmp_path / "c.npz", (2, 3), short)
    with pytest.raises(ValueError, match=r"c.npz: leaf \['w'\] holds 16 bytes of data but float32\(2, 3\) takes 24"):
        checkpoint.load(path, TREE)


def test_a_npy_file_is_a_clear_error(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.ones(3))
    with pytest.raises(ValueError, match=r"c.npy: a single NumPy array \(.npy\), not a jaxcnn checkpoint"):
        checkpoint.load(str(path), TREE)


def test_stale_temporary_files_of_killed_saves_are_removed(tmp_path):
    path = str(tmp_path / "c.npz")
    dead = tmp_path / ".c.npz.tmp-999999999-abcd.npz"  # above any pid_max: no such process
    live = tmp_path / f".c.npz.tmp-{os.getppid()}-abcd.npz"  # a running process's save in flight
    other = tmp_path / ".d.npz.tmp-999999999-abcd.npz"  # another checkpoint's
    for f in (dead, live, other):
        f.write_bytes(b"x" * 100)
    checkpoint.save(path, TREE)
    assert sorted(os.listdir(tmp_path)) == sorted(["c.npz", live.name, other.name])
    dead.write_bytes(b"x")
    checkpoint.load(path, TREE)  # a resume cleans up too
    assert not dead.exists()


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        checkpoint.save(str(tmp_path / "c.npz"), TREE)
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(os.stat(tmp_path / "c.npz").st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)


def test_ctrl_c_during_a_save_takes_effect_after_it(tmp_path, monkeypatch):
    path = str(tmp_path / "c.npz")
    savez = np.savez

    def interrupted(f, **arrays):
        os.kill(os.getpid(), signal.SIGINT)  # delivered while the archive is half written
        savez(f, **arrays)

    monkeypatch.setattr(np, "savez", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(path, TREE)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    loaded, _ = checkpoint.load(path, TREE)  # the save completed first
    np.testing.assert_array_equal(loaded["w"], TREE["w"])
    assert os.listdir(tmp_path) == ["c.npz"]


def test_check_writable_names_the_folder_it_cannot_write(tmp_path, monkeypatch):
    # A read-only folder (simulated: these tests may run as root, who may write anywhere).
    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", read_only)
    with pytest.raises(ValueError, match=r"c.npz: cannot write the checkpoint in .* \(PermissionError: Permission "
                                         r"denied\)"):
        checkpoint.check_writable(str(tmp_path / "c.npz"))
