import errno
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from conftest import examples
from hypothesis import given
from hypothesis import strategies as st

from jaxcnn import checkpoint, cli, data, nn, train

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


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated(signum)


@pytest.mark.parametrize("signum, handler, raised", [
    (signal.SIGINT, signal.default_int_handler, KeyboardInterrupt),  # Python's own, whatever ran before
    (signal.SIGTERM, _raise_terminated, _Terminated),  # a launcher stops its processes with SIGTERM
], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_save_takes_effect_after_it(tmp_path, monkeypatch, signum, handler, raised):
    path = str(tmp_path / "c.npz")
    savez = np.savez

    def interrupted(f, **arrays):
        os.kill(os.getpid(), signum)  # delivered while the archive is half written
        savez(f, **arrays)

    monkeypatch.setattr(np, "savez", interrupted)
    previous = signal.signal(signum, handler)
    try:
        with pytest.raises(raised):
            checkpoint.save(path, TREE)
        assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, previous)
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


# --------------------------------------------------------------------------- every dtype JAX computes in

ML_DTYPES = ["bfloat16", "float16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3b11fnuz", "float8_e4m3fnuz",
             "float8_e5m2fnuz", "float8_e3m4", "float8_e4m3", "float8_e8m0fnu", "float4_e2m1fn", "int4", "uint4",
             "int2", "uint2"]


def _bits(a):
    return np.asarray(a).reshape(-1).view(np.uint8)


@pytest.mark.parametrize("dtype", ML_DTYPES)
def test_ml_dtypes_round_trip_bit_for_bit(tmp_path, dtype):
    dtype = np.dtype(getattr(ml_dtypes, dtype, dtype))
    bits = np.random.default_rng(0).integers(0, 256, (3, 4, dtype.itemsize), np.uint8)
    if dtype.name in ("int4", "uint4", "int2", "uint2", "float4_e2m1fn"):  # sub-byte types: valid values only
        bits = np.arange(12, dtype=np.uint8).reshape(3, 4, 1) % (4 if "2" in dtype.name else 16)
    tree = {"w": jnp.asarray(bits.view(dtype)[..., 0]), "b": jnp.asarray(bits[0, 0].view(dtype)[0])}
    path = str(tmp_path / "c.npz")
    checkpoint.save(path, tree)
    assert checkpoint.read_header(path)["dtypes"] == [dtype.name, dtype.name]
    loaded, _ = checkpoint.load(path, jax.tree_util.tree_map(jnp.zeros_like, tree))
    for key in tree:
        assert loaded[key].dtype == dtype and loaded[key].shape == tree[key].shape
        np.testing.assert_array_equal(_bits(loaded[key]), _bits(tree[key]))


def test_a_bfloat16_run_resumes_from_its_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    d = data.Dataset(x[:32], (x[:32, 0] > 0).astype(np.int32), x[32:], (x[32:, 0] > 0).astype(np.int32), 2)
    model, path = nn.serial(nn.Dense(8), nn.Relu(), nn.Dense(2)), str(tmp_path / "c.npz")
    straight = train.fit(model, d, epochs=2, batch_size=8, dtype=jnp.bfloat16, quiet=True)
    train.fit(model, d, epochs=1, batch_size=8, dtype=jnp.bfloat16, quiet=True, checkpoint_path=path)
    resumed = train.fit(model, d, epochs=2, batch_size=8, dtype=jnp.bfloat16, quiet=True, checkpoint_path=path,
                        resume=True)
    assert jax.tree_util.tree_leaves(resumed.state.params)[0].dtype == jnp.bfloat16
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state)):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_a_bfloat16_checkpoint_of_the_old_layout_loads(tmp_path):
    # Written before bfloat16 was stored as uint16: NumPy's anonymous |V2, the same bytes.
    w = jnp.asarray([1.5, -2.25, 3.0], jnp.bfloat16)
    header = {"format": checkpoint.FORMAT, "paths": ["['w']"], "shapes": [[3]], "dtypes": ["bfloat16"],
              "metadata": {}}
    path = tmp_path / "old.npz"
    np.savez(path, leaf_0=np.asarray(w), __header__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    loaded, _ = checkpoint.load(str(path), {"w": jnp.zeros(3, jnp.bfloat16)})
    np.testing.assert_array_equal(np.asarray(loaded["w"]).view(np.uint16), np.asarray(w).view(np.uint16))


def test_leaves_without_an_exact_stored_form_are_refused(tmp_path):
    with pytest.raises(TypeError, match=r"c.npz: leaf \['s'\] has dtype <U3, which a checkpoint cannot store"):
        checkpoint.save(str(tmp_path / "c.npz"), {"s": np.array(["abc"])})
    assert not os.listdir(tmp_path)


def test_a_template_of_shape_dtype_structs_is_enough(tmp_path):
    path = str(tmp_path / "c.npz")
    checkpoint.save(path, TREE)
    loaded, _ = checkpoint.load(path, {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32)})
    np.testing.assert_array_equal(loaded["w"], TREE["w"])
    assert loaded["w"].flags.writeable


# --------------------------------------------------------------------------- malformed headers, odd files


def _with_header(path, header):
    """TREE's checkpoint at ``path`` with its JSON header replaced by ``header`` (any JSON value)."""
    checkpoint.save(str(path), TREE)
    with zipfile.ZipFile(path) as z:
        leaf = z.read("leaf_0.npy")
    text = header if isinstance(header, str) else json.dumps(header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("__header__.npy", _npy(np.frombuffer(text.encode(), np.uint8)))
        z.writestr("leaf_0.npy", leaf)
    return str(path)


GOOD = {"format": checkpoint.FORMAT, "paths": ["['w']"], "shapes": [[2, 3]], "dtypes": ["float32"],
        "metadata": {"history": [{"epoch": 1, "step": 4, "train_loss": 0.5, "train_accuracy": 0.75, "seconds": 1.0}],
                     "settings": {"seed": 0}}}


def _edit(**changes):
    header = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = header
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return header


MALFORMED = [  # (header, what the message names)
    ([1, 2], r"field \(the header\) must be a JSON object, got list"),
    ("null", r"field \(the header\) must be a JSON object, got NoneType"),
    (_edit(paths="['w']"), r"field paths must be a list, one entry per leaf, got str"),
    (_edit(paths=[3]), r"field paths\[0\] must be a string, got int 3"),
    (_edit(shapes=[2, 3]), r"field shapes\[0\] must be a list of sizes, got int 2"),
    (_edit(shapes=[[2, "3"]]), r"field shapes\[0\] must be a list of sizes \(integers >= 0\), got list \[2, '3'\]"),
    (_edit(shapes=[[2, -3]]), r"field shapes\[0\] must be a list of sizes \(integers >= 0\)"),
    (_edit(shapes=[[2.0, 3]]), r"field shapes\[0\] must be a list of sizes \(integers >= 0\)"),
    (_edit(shapes=[[True, 3]]), r"field shapes\[0\] must be a list of sizes \(integers >= 0\)"),
    (_edit(shapes=[]), r"lists 1 paths, 0 shapes and 1 dtypes; it needs one of each per leaf"),
    (_edit(dtypes=None), r"field dtypes must be a list, one entry per leaf, got NoneType"),
    (_edit(dtypes=[["float32"]]), r"field dtypes\[0\] must be a string"),
    (_edit(metadata=[]), r"field metadata must be a JSON object, got list"),
    (_edit(metadata__settings=[1]), r"field metadata.settings must be a JSON object, got list"),
    (_edit(metadata__history={"epoch": 1}), r"field metadata.history must be a list of epoch records, got dict"),
    (_edit(metadata__history=[3]), r"field metadata.history\[0\] must be an epoch record"),
    (_edit(metadata__history__0__epoch="1"), r"field metadata.history\[0\].epoch must be an integer >= 0, got str"),
    (_edit(metadata__history__0__step=None), r"field metadata.history\[0\].step must be an integer >= 0"),
    (_edit(metadata__history__0__train_loss="low"), r"field metadata.history\[0\].train_loss must be a number"),
    (_edit(metadata__history__0__test_accuracy=[1]), r"field metadata.history\[0\].test_accuracy must be a number"),
    (_edit(metadata__history__0__step_losses=[0.1, "x"]), r"metadata.history\[0\].step_losses must be a list of "
                                                         r"numbers"),
    (_edit(format="jaxcnn-checkpoint-v0"), r"unknown checkpoint format 'jaxcnn-checkpoint-v0'"),
    ({**GOOD, "metadata": {"deep": json.loads("[" * 40 + "]" * 40)}}, r"nested over 32 levels deep"),
    ("[" * 100000 + "]" * 100000, r"no valid header: RecursionError"),
    ('{"format": "jaxcnn-checkpoint-v1", ', r"no valid header: JSONDecodeError"),
    ("\udcff", r"no valid header: UnicodeDecodeError"),
]


@pytest.mark.parametrize("header,message", MALFORMED, ids=[m.split(" must")[0][:40] for _, m in MALFORMED])
def test_a_malformed_header_is_a_value_error_naming_the_file_and_field(tmp_path, header, message):
    if header == "\udcff":
        path = _with_header(tmp_path / "c.npz", "")
        with zipfile.ZipFile(path, "w") as z:  # bytes that are not UTF-8
            z.writestr("__header__.npy", _npy(np.frombuffer(b"\xff\xfe", np.uint8)))
    else:
        path = _with_header(tmp_path / "c.npz", header)
    for read in (checkpoint.read_header, lambda p: checkpoint.load(p, TREE)):
        with pytest.raises(ValueError, match=re.escape(path) + ".*" + message):
            read(path)


@examples(20, 200)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10),
       st.sampled_from(["paths", "shapes", "dtypes", "metadata", "history", "record", "epoch"]))
def test_any_json_in_any_header_field_is_loaded_or_refused_with_a_value_error(value, field):
    header = json.loads(json.dumps(GOOD))
    target = {"paths": header, "shapes": header, "dtypes": header, "metadata": header,
              "history": header["metadata"], "record": header["metadata"]["history"],
              "epoch": header["metadata"]["history"][0]}[field]
    key = {"record": 0, "epoch": "epoch"}.get(field, field)
    target[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = _with_header(os.path.join(tmp, "c.npz"), header)
        try:
            checkpoint.load(path, TREE)
        except ValueError as e:
            assert str(e).startswith(path)


def _returns_within(seconds, fifo, call):
    """Runs ``call()`` in a thread; if it is still blocked after ``seconds`` (opening ``fifo``
    waits for a writer), opens ``fifo`` for writing to release it and fails the test."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(call)))
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
        pytest.fail(f"blocked on the FIFO {fifo}")
    return outcome[0]


def _outcome(call):
    try:
        return call()
    except Exception as e:  # returned to the test thread
        return e


def test_only_regular_files_are_opened(tmp_path):
    fifo = tmp_path / "checkpoint.npz"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for read in (checkpoint.read_header, lambda p: checkpoint.load(p, TREE)):
        error = _returns_within(10, fifo, lambda: read(str(fifo)))
        assert isinstance(error, ValueError) and re.search(r"checkpoint.npz: a FIFO, not a regular file; the "
                                                           r"checkpoint must be one", str(error)), error
    with pytest.raises(ValueError, match=r"null: a character device, not a regular file; the checkpoint must be one"):
        checkpoint.load("/dev/null", TREE)
    with pytest.raises(ValueError, match=rf"{tmp_path}: a folder, not a regular file; the checkpoint must be one"):
        checkpoint.load(str(tmp_path), TREE)


def test_resume_from_a_fifo_fails_at_once(tmp_path):
    os.mkfifo(tmp_path / "checkpoint.npz")
    argv = ["train", "--model", "seesaw_cnn", "--data", "seesaw", "--batch-size", "1", "--epochs", "1", "--quiet",
            "--resume", "--out", str(tmp_path)]
    run = subprocess.run([sys.executable, "-m", "jaxcnn", *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "checkpoint.npz: a FIFO, not a regular file; the checkpoint must be one" in run.stderr


def test_resume_with_a_history_that_is_not_a_list_is_a_clear_error(tmp_path, capsys):
    argv = ["train", "--model", "seesaw_cnn", "--data", "seesaw", "--batch-size", "1", "--quiet",
            "--out", str(tmp_path)]
    assert cli.main([*argv, "--epochs", "1"]) == 0
    path = tmp_path / "checkpoint.npz"
    header = checkpoint.read_header(str(path))
    header["metadata"]["history"] = {str(i): r for i, r in enumerate(header["metadata"]["history"])}
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["__header__.npy"] = _npy(np.frombuffer(json.dumps(header).encode(), np.uint8))
    with zipfile.ZipFile(path, "w") as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    capsys.readouterr()
    assert cli.main([*argv, "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "field metadata.history must be a list of epoch records, got dict" in err and "Traceback" not in err


# --------------------------------------------------------------------------- the run-folder lock


def test_a_locked_folder_refuses_a_second_holder_at_once(tmp_path):
    with checkpoint.locked(str(tmp_path)):
        with pytest.raises(ValueError, match=rf"{tmp_path} is in use by another run \(process {os.getpid()} holds "
                                             rf"its lock\); wait for it to finish, or write to another folder"):
            with checkpoint.locked(str(tmp_path)):
                pass
    with checkpoint.locked(str(tmp_path)):  # released on exit
        pass
    assert not os.listdir(tmp_path)  # nothing written into the folder


def test_a_folder_that_cannot_be_locked_is_a_warning(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(checkpoint.fcntl, "flock", no_locks)
    ran = []
    with pytest.warns(UserWarning, match=rf"cannot lock {tmp_path} \(No locks available\): a second run writing "
                                         rf"there at the same time would not be refused"):
        with checkpoint.locked(str(tmp_path)):
            ran.append(True)
    assert ran == [True]


def test_a_killed_holder_releases_the_lock(tmp_path):
    code = "import sys, time; from jaxcnn import checkpoint\nwith checkpoint.locked(sys.argv[1]):\n" \
           "    print('held', flush=True); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline() == "held\n"
            with pytest.raises(ValueError, match=rf"process {holder.pid} holds its lock"):
                with checkpoint.locked(str(tmp_path)):
                    pass
        finally:
            holder.kill()
    with checkpoint.locked(str(tmp_path)):
        pass


def test_a_second_train_run_on_one_folder_fails_fast(tmp_path):
    with checkpoint.locked(str(tmp_path)):  # as a first run training there holds it
        second = subprocess.run([sys.executable, "-m", "jaxcnn", "train", "--model", "seesaw_cnn", "--data", "seesaw",
                                 "--batch-size", "1", "--epochs", "1", "--quiet", "--out", str(tmp_path)],
                                capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    assert f"jaxcnn: error: {tmp_path} is in use by another run (process {os.getpid()} holds its lock)" \
        in second.stderr
    assert not os.listdir(tmp_path)  # the second run wrote nothing


# --------------------------------------------------------------------------- a failed write


def test_a_full_disk_names_the_file_and_keeps_the_one_before(tmp_path, monkeypatch):
    path = str(tmp_path / "c.npz")
    checkpoint.save(path, TREE)
    before = Path(path).read_bytes()

    def full(f, **arrays):
        f.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError, match=rf"{path}: could not be written \(No space left on device\); the file there "
                                      rf"before is intact") as e:
        checkpoint.save(path, TREE)
    assert e.value.errno == errno.ENOSPC and str(e.value).startswith(path)
    assert Path(path).read_bytes() == before and os.listdir(tmp_path) == ["c.npz"]
    with pytest.raises(OSError, match=r"d.npz: could not be written .*; no file was there before"):
        checkpoint.save(str(tmp_path / "d.npz"), TREE)
    assert os.listdir(tmp_path) == ["c.npz"]


# --------------------------------------------------------------------------- load_params: for inference


def _bn_model():
    return nn.serial(nn.Conv(3, (3, 3)), nn.BatchNorm(), nn.Relu(), nn.Flatten(), nn.Dense(4))


def _bn_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 6, 1)).astype(np.float32)
    y = (x.sum((1, 2, 3)) > 0).astype(np.int32) + 2 * (x[:, 0, 0, 0] > 0)
    return data.Dataset(x[:32], y[:32], x[32:], y[32:], 4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_params_gives_the_trained_params_and_state_from_the_model_alone(tmp_path, dtype):
    path = str(tmp_path / "checkpoint.npz")
    result = train.fit(_bn_model(), _bn_data(), epochs=2, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.9,
                       dtype=dtype, checkpoint_path=path, quiet=True)
    params, model_state = checkpoint.load_params(path, _bn_model())
    for got, want in [(params, result.state.params), (model_state, result.state.model_state)]:
        assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    x = jnp.asarray(_bn_data().x_test, dtype)
    logits, _ = _bn_model().apply(params, model_state, x)  # evaluation mode: the running statistics
    want, _ = _bn_model().apply(result.state.params, result.state.model_state, x)
    np.testing.assert_array_equal(np.asarray(logits, np.float32), np.asarray(want, np.float32))


def test_load_params_refuses_another_model_and_a_checkpoint_without_its_input_shape(tmp_path):
    path = str(tmp_path / "checkpoint.npz")
    train.fit(_bn_model(), _bn_data(), epochs=1, batch_size=8, checkpoint_path=path, quiet=True)
    other = nn.serial(nn.Conv(5, (3, 3)), nn.BatchNorm(), nn.Relu(), nn.Flatten(), nn.Dense(4))
    with pytest.raises(ValueError, match=r"checkpoint.npz: leaf .params\[0\]\['b'\] is float32\(3,\) in the checkpoint "
                                         r"but float32\(5,\) is expected"):
        checkpoint.load_params(path, other)
    with pytest.raises(ValueError, match=r"checkpoint does not match the expected structure under .params \(6 leaves "
                                         r"saved, 2 expected"):
        checkpoint.load_params(path, nn.serial(nn.Flatten(), nn.Dense(4)))
    bare = str(tmp_path / "bare.npz")
    checkpoint.save(bare, train.init_state(_bn_model(), optax.sgd(0.1), (-1, 6, 6, 1), 0))
    with pytest.raises(ValueError, match=r"load_params: .*bare.npz records no input shape \(it was not written by "
                                         r"train.fit\); pass `input_shape`"):
        checkpoint.load_params(bare, _bn_model())
    params, _ = checkpoint.load_params(bare, _bn_model(), input_shape=(-1, 6, 6, 1))
    assert params[0]["w"].shape == (3, 3, 1, 3)
