"""Multi-process training on JAX's distributed runtime, for real: processes on 127.0.0.1
joined by ``jax.distributed.initialize`` with gloo collectives, started by ``jaxcnn launch``."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from jaxcnn import checkpoint, cli, data, distributed, launch

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6
# The MNIST-1D CNN on 400 examples; 75 per global batch does not divide by 2 devices.
TRAIN = ["train", "--model", "mnist1d_cnn", "--limit", "400", "--batch-size", "75", "--optimizer", "sgd",
         "--lr", "0.05", "--momentum", "0.9", "--seed", "3"]


def _env(tmp: Path, **extra) -> dict:
    # Every run compiles the same programs: JAX's persistent cache lets later runs reuse them.
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp / "xla"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
                **extra)


def _launch(tmp: Path, n: int, argv: list, timeout: float = 240) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxcnn", "launch", "-n", str(n), "--timeout", str(timeout),
                             "--grace", "5", "--", *argv], env=_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _leaves(path: Path) -> list:
    with np.load(path, allow_pickle=False) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: (len(k), k)) if k != "__header__"]


def test_jaxcnn_train_in_two_processes_reports_once_and_writes_every_output(tmp_path):
    """The quick version of the test below, in the default suite: ``jaxcnn launch -n 2 -- train``
    end to end, process 0 alone reporting and writing."""
    out, cache = tmp_path / "run", tmp_path / "data"
    data.mnist1d(cache_dir=str(cache))  # generated once, not by each process
    proc = _launch(tmp_path, 2, [*TRAIN, "--limit", "150", "--epochs", "2", "--data-dir", str(cache),
                                 "--out", str(out)])
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, text
    lines = text.splitlines()
    assert [line.split(",")[0] for line in lines if "epoch " in line and "best" not in line] == \
        ["[0] epoch 1", "[0] epoch 2"]
    assert sum(line.startswith("[0] mnist1d_cnn on mnist1d: test accuracy") for line in lines) == 1
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "learning_curve.png", "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"]["processes"] == 2 and metrics["device"]["count"] == 2 and len(metrics["history"]) == 2


@pytest.mark.slow
def test_two_processes_killed_and_resumed_train_as_one_process_with_two_devices(tmp_path):
    """The same training run twice: one process with two forced host devices, and two
    processes (one device each) on 127.0.0.1, one of them killed after the first
    checkpoint, the run then resumed. (One test: each test would start the runs again.)"""
    cache = tmp_path / "data"
    data.mnist1d(cache_dir=str(cache))  # generated once; every process then reads the cached file
    assert [p.name for p in cache.iterdir()] == ["mnist1d-seed42.npz"]
    assert data.mnist1d(cache_dir=str(cache)).x_train.shape == (4000, 40)
    train = [*TRAIN, "--data-dir", str(cache)]
    one, two = tmp_path / "one" / "checkpoint.npz", tmp_path / "two" / "checkpoint.npz"
    single = subprocess.Popen([sys.executable, "-m", "jaxcnn", *train, "--epochs", str(EPOCHS), "--devices", "2",
                               "--out", str(one.parent)],
                              env=_env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # A process killed mid-run: far more epochs than it gets to run; process 1 is killed
    # once the first checkpoint is written. The launcher stops process 0 and fails.
    proc = _launch(tmp_path, 2, [*train, "--epochs", "500", "--out", str(two.parent)])
    pids = [int(p) for p in proc.stdout.readline().split("pids ")[1].split()]
    while not two.exists() and proc.poll() is None:
        time.sleep(0.005)
    os.kill(pids[1], signal.SIGKILL)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGKILL, out
    assert "[launch] process 1 was killed by signal 9 (SIGKILL); stopping processes 0" in out
    assert not any(_alive(pid) for pid in pids)
    header = checkpoint.read_header(two)  # the last checkpoint is intact: a valid header, every leaf readable
    killed_epochs = len(header["metadata"]["history"])
    assert 1 <= killed_epochs < EPOCHS and len(_leaves(two)) == len(header["paths"])
    assert os.listdir(two.parent) == ["checkpoint.npz"]  # no temporary file left, no metrics before the end

    # Resumed by every process from that checkpoint, the run ends where one process with two devices does.
    proc = _launch(tmp_path, 2, [*train, "--epochs", str(EPOCHS), "--out", str(two.parent), "--resume"])
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    single_out = single.communicate(timeout=300)[0]
    assert single.returncode == 0, single_out
    lines = out.splitlines()
    assert sum("test accuracy" in line for line in lines if "epoch" not in line) == 1  # one process reports
    assert any(line.startswith("[0] mnist1d_cnn on mnist1d: test accuracy") for line in lines)
    # and shows progress, from the resumed epoch on (the closing "best epoch ..." summary is not progress)
    progress = [line for line in lines if "epoch " in line and "best epoch " not in line]
    assert len(progress) == EPOCHS - killed_epochs and all(line.startswith("[0] epoch ") for line in progress)
    assert sorted(os.listdir(two.parent)) == ["checkpoint.npz", "learning_curve.png", "metrics.json"]
    header_one, header_two = checkpoint.read_header(one), checkpoint.read_header(two)
    assert len(header_two["metadata"]["history"]) == EPOCHS and header_one["paths"] == header_two["paths"]
    for a, b in zip(_leaves(one), _leaves(two)):  # params, optimiser state, step, key
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(header_one["metadata"]["history"], header_two["metadata"]["history"]):  # and evaluations
        assert a["epoch"] == b["epoch"] and a["step"] == b["step"]
        np.testing.assert_allclose([a["train_loss"], a["test_loss"], a["test_accuracy"]],
                                   [b["train_loss"], b["test_loss"], b["test_accuracy"]], rtol=1e-5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


SCRIPT = textwrap.dedent("""
    import numpy as np, jax, jax.numpy as jnp
    from jaxcnn import data, distributed, nn, train
    distributed.initialize()  # from $JAXCNN_COORDINATOR etc., set by the launcher
    i = jax.process_index()
    mesh = train.make_mesh(jax.device_count())
    x = np.arange(30.0).reshape(15, 2)
    rows = np.array([[4, 0, 9, 2, 7], [1, 3, 14, 5, 6]])  # 5 per batch: uneven over 2 devices
    fed = distributed.feed(x, rows, mesh)
    total = jax.jit(lambda a: distributed.unpad(a, 5, mesh, axis=1).sum(axis=(1, 2)))(fed)
    print("shard", [s.data.shape for s in fed.addressable_shards], "sums", np.asarray(total).tolist(),
          "expected", x[rows].sum(axis=(1, 2)).tolist(), flush=True)
    # Batch statistics (a batch norm's mean and variance) come out over the global batch.
    stats = jax.jit(lambda a: (lambda b: (b.mean(axis=1), b.var(axis=1)))(distributed.unpad(a, 5, mesh, axis=1)))(fed)
    np.testing.assert_allclose(np.asarray(stats[0]), x[rows].mean(axis=1))
    np.testing.assert_allclose(np.asarray(stats[1]), x[rows].var(axis=1), rtol=1e-6)
    print("global batch statistics", flush=True)
    # Whole epochs fed from the host, scanned or stepped, equal a single device's epoch, the model
    # state too (batch norm's running statistics over the global batch, the same dropout masks).
    import optax
    model, opt = nn.serial(nn.Dense(4), nn.BatchNorm(), nn.Relu(), nn.Dropout(0.3), nn.Dense(2)), optax.sgd(0.1)
    params, model_state, _ = model.init(jax.random.PRNGKey(0), (-1, 2))
    step = train.make_step(train.make_loss(model), opt)
    xf, labels = x.astype(np.float32) / 30, (x[:, 0] > 14).astype(np.int32)
    state = lambda: jax.tree_util.tree_map(jnp.copy, train.TrainState(params, model_state, opt.init(params),
                                                                     jnp.int32(0), jax.random.PRNGKey(1)))  # donated
    local = train.make_epoch(step, 5)(state(), jnp.asarray(xf), jnp.asarray(labels), 3)[0]  # this process alone
    for loop in ("scan", "steps"):
        fed = train.make_epoch(step, 5, mesh, loop=loop)(distributed.replicate(state(), mesh), xf, labels, 3)[0]
        for a, b in zip(jax.tree_util.tree_leaves(local), jax.tree_util.tree_leaves(fed)):
            # atol: the first Dense's bias gets an exactly-zero gradient through batch norm (a shift it
            # removes), so it holds only the rounding of sums the two processes order differently.
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    print("fed epochs equal", flush=True)
    try:
        d = data.Dataset(x, np.zeros(15, np.int32), x, np.zeros(15, np.int32), 2)
        train.fit(nn.Dense(2), d, epochs=1, batch_size=5, devices=1, quiet=True)
    except ValueError as e:
        print("mesh:", e, flush=True)
    try:
        distributed.assert_same(np.int64(i), "the seeds")
    except AssertionError as e:
        print("assert_same:", str(e).split(":")[0], flush=True)
""")


def test_processes_feed_their_own_rows_and_reduce_over_the_global_batch(tmp_path):
    proc = _launch(tmp_path, 2, [sys.executable, "-c", SCRIPT], timeout=120)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    for i in (0, 1):
        line = next(line for line in out.splitlines() if line.startswith(f"[{i}] shard"))
        assert "[(2, 3, 2)]" in line  # a (2, 6, 2) array padded from 5 rows: 3 rows per process
        assert "sums [93.0, 121.0] expected [93.0, 121.0]" in line
        assert f"[{i}] global batch statistics" in out and f"[{i}] fed epochs equal" in out
        assert (f"[{i}] mesh: devices=1 requested, but a run over 2 processes trains on all of their 2 devices: "
                "pass devices=2 or None.") in out
        assert f"[{i}] assert_same: the seeds differ between processes" in out


def _sleeper(code: str) -> list:
    return [sys.executable, "-c", "import os, subprocess, sys, time\n"
            "i = int(os.environ['JAXCNN_PROCESS_ID'])\n"
            "child = subprocess.Popen(['sleep', '60'])\n"
            "print('process', i, 'of', os.environ['JAXCNN_NUM_PROCESSES'], 'child', child.pid, flush=True)\n" + code]


def _child_pids(out: str) -> list:
    return [int(line.split("child ")[1]) for line in out.splitlines() if " child " in line]


def test_launcher_stops_the_others_and_their_children_when_one_fails(tmp_path):
    # Process 0 would sleep for longer than the launcher's timeout: status 3, not 124, and no "slept"
    # show that it was stopped when process 1 failed (no wall-clock bound, which load can break).
    proc = _launch(tmp_path, 3, _sleeper("time.sleep(0.5 * i); sys.exit(3 if i == 1 else 0) if i else time.sleep(600); "
                                         "print('slept', flush=True)"), timeout=300)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 3, out
    assert "slept" not in out and "timed out" not in out
    assert "[1] process 1 of 3 child" in out and "[0] process 0 of 3 child" in out
    assert "[launch] process 1 exited with status 3; stopping processes 0, 2" in out
    assert len(_child_pids(out)) == 3 and not any(_alive(pid) for pid in _child_pids(out))


def test_launcher_timeout_stops_everything_with_124(tmp_path):
    proc = _launch(tmp_path, 2, _sleeper("time.sleep(60)"), timeout=1.5)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == launch.TIMED_OUT, out
    assert "[launch] timed out after 1.5 s; stopping every process" in out
    assert not any(_alive(pid) for pid in _child_pids(out))


def test_processes_die_with_a_killed_launcher(tmp_path):
    proc = _launch(tmp_path, 2, _sleeper("time.sleep(60)"), timeout=60)
    pids = [int(p) for p in proc.stdout.readline().split("pids ")[1].split()]
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    assert all(" child " in line for line in lines), lines
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 60  # a limit on waiting, not on speed
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)
    for pid in _child_pids("".join(lines)):  # their own children are not the kernel's to kill
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("argv,message", [
    (["train", "--coordinator", "127.0.0.1:1234"], "initialize: give all of `coordinator`, `num_processes` and "
     "`process_id`, or none of them"),
    (["train", "--distributed", "--process-id", "0"], "give --distributed alone"),
    (["train", "--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
     "coordinator address must be HOST:PORT with a port in 1..65535, got 'nohost'"),
    (["train", "--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "need num_processes >= 1 and 0 <= process_id < num_processes, got num_processes=2, process_id=2"),
    (["launch", "-n", "0", "--", "train"], "launch: need at least 1 process, got 0"),
    (["launch", "-n", "2"], "launch: no command given"),
])
def test_multiprocess_argument_errors(argv, message, capsys, monkeypatch):
    for name in os.environ:  # as if no cluster were around, even when the tests run under one
        if name.startswith(("SLURM_", "OMPI_", "JAXCNN_")) or name == "JAX_COORDINATOR_ADDRESS":
            monkeypatch.delenv(name)
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_distributed_outside_any_cluster_says_what_to_pass(tmp_path):
    env = {k: v for k, v in _env(tmp_path).items()  # in a fresh process: initialize must come before any JAX call
           if not k.startswith(("SLURM_", "OMPI_", "JAXCNN_")) and k != "JAX_COORDINATOR_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "jaxcnn", "train", "--distributed"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("jaxcnn: error: initialize: no coordinator given and JAX found no cluster around "
                                  "this process (coordinator_address should be defined.): pass coordinator, "
                                  "num_processes and process_id (--coordinator, --num-processes, --process-id)")


def test_initialize_reads_the_launchers_environment_and_checks_it(monkeypatch):
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "127.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(ValueError, match=r"\$JAXCNN_COORDINATOR is set, so \$JAXCNN_NUM_PROCESSES must be a "
                                         r"non-negative integer, got 'two'"):
        distributed.initialize()


def test_distributed_finds_its_settings_in_the_variables_srun_sets(tmp_path):
    """JAX's SLURM detection, with the variables ``srun`` sets for two tasks on one node
    (the coordinator's port comes from the job id; it is bound to 127.0.0.1 only)."""
    port = next(p for p in range(61440 + os.getpid() % 3000, 65536) if _free(p))
    env = {k: v for k, v in _env(tmp_path).items() if not k.startswith("JAXCNN_")}
    env.update(SLURM_JOB_ID=str(port - 61440), SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2",
               SLURM_STEP_NUM_NODES="1", JAX_COORDINATOR_BIND_ADDRESS=f"127.0.0.1:{port}")
    script = ("import jax; from jaxcnn import distributed; distributed.initialize(); "
              "print(jax.process_index(), jax.process_count(), jax.device_count(), distributed.is_primary())")
    procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(env, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [out.splitlines()[-1] for out in outputs] == ["0 2 2 True", "1 2 2 False"]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_python_m_jaxcnn_launch_runs_any_command_with_the_launchers_variables(tmp_path):
    code = ("import os; "
            "print(os.environ['JAXCNN_COORDINATOR'].startswith('127.0.0.1:'), os.environ['JAXCNN_PROCESS_ID'])")
    proc = subprocess.run([sys.executable, "-m", "jaxcnn.launch", "-n", "2", "--", sys.executable, "-c", code],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(line for line in proc.stdout.splitlines() if not line.startswith("[launch]")) == \
        ["[0] True 0", "[1] True 1"]


def test_a_terminated_launcher_stops_its_processes_and_their_children(tmp_path):
    proc = _launch(tmp_path, 2, _sleeper("time.sleep(60)"), timeout=60)
    lines = [proc.stdout.readline() for _ in range(3)]
    assert all(" child " in line for line in lines[1:]), lines
    proc.terminate()
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "[launch] got SIGTERM; stopping every process" in out
    assert not any(_alive(pid) for pid in _child_pids(out))


# --- Signals, ports and the launcher's options (issue 36) ----------------------------------------------------


def test_a_launcher_stopped_with_sigterm_forwards_where_training_can_resume(tmp_path):
    """The launcher stops its processes with SIGTERM: each says where its run can be continued from."""
    out = tmp_path / "run"
    proc = _launch(tmp_path, 1, ["train", "--model", "seesaw_cnn", "--data", "seesaw", "--batch-size", "1",
                                 "--optimizer", "sgd", "--quiet", "--steps", "100000000", "--out", str(out)],
                   timeout=600)
    deadline = time.monotonic() + 600  # until the first checkpoint is written (slow on a loaded machine)
    while not (out / "checkpoint.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.terminate()
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert "[launch] got SIGTERM; stopping every process" in text
    lines = [line for line in text.splitlines() if line.startswith("[0] jaxcnn: interrupted")]
    assert len(lines) == 1 and re.fullmatch(r"\[0\] jaxcnn: interrupted; last checkpoint at (epoch|step \d+ of \d+ in "
                                            r"epoch) \d+ \(.*checkpoint.npz; continue with --resume\)", lines[0]), text
    checkpoint.read_header(str(out / "checkpoint.npz"))


def _held_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_initialize_refuses_a_taken_coordinator_port_in_process_0(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_BIND_ADDRESS", raising=False)
    with _held_port() as held:
        port = held.getsockname()[1]
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(ValueError, match=rf"^initialize: coordinator {host}:{port}: port {port} is already "
                                                 rf"in use on {host}; stop what listens there or choose another port"):
                distributed.initialize(f"{host}:{port}", 2, 0)
        with pytest.raises(ValueError, match=rf"^initialize: coordinator otherhost:{port}: port {port} is already in "
                                             r"use on 127.0.0.1"):  # the bind address JAX would use
            monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", f"127.0.0.1:{port}")
            distributed.initialize(f"otherhost:{port}", 2, 0)
    with _held_port() as held:  # a wildcard: taken on either IP stack
        distributed.check_port_free("127.0.0.2", held.getsockname()[1], "x")  # another address: free
        wildcard = socket.socket()
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen()
        with wildcard, pytest.raises(ValueError, match=r"^y: port \d+ is already in use; stop"):
            distributed.check_port_free("::", wildcard.getsockname()[1], "y")


def test_launch_refuses_a_taken_port_before_starting_anything(tmp_path, capsys):
    with _held_port() as held:
        port = held.getsockname()[1]
        assert cli.main(["launch", "-n", "2", "--port", str(port), "--", "train", "--out", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no "[launch] 2 processes" line: nothing started
    assert err == (f"jaxcnn: error: launch: coordinator 127.0.0.1:{port}: port {port} is already in use on 127.0.0.1; "
                   f"stop what listens there or choose another port.\n")


@pytest.mark.parametrize("option,value,expected", [
    ("--grace", "-1", "a number of seconds >= 0"), ("--grace", "nan", "a number of seconds >= 0"),
    ("--timeout", "-5", "a positive number of seconds"), ("--timeout", "0", "a positive number of seconds"),
    ("--timeout", "inf", "a positive number of seconds"), ("--port", "0", "a port in 1..65535"),
    ("--port", "70000", "a port in 1..65535"),
])
def test_launch_refuses_out_of_range_options_in_one_line(option, value, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["launch", "-n", "2", option, value, "--", "train", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"jaxcnn: error: argument {option}: expected {expected}, got {value!r}\n"


@pytest.mark.parametrize("kwargs,message", [
    ({"grace": -1.0}, "launch: `grace` must be a number of seconds >= 0, got -1.0"),
    ({"timeout": -5.0}, "launch: `timeout` must be a positive number of seconds, got -5.0"),
])
def test_launch_function_checks_its_times(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        launch.launch(["true"], 1, **kwargs)
