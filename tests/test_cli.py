import errno
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxcnn
from jaxcnn import checkpoint, cli, data, ops, reporting
from jaxcnn._certify.registry import REGISTRY


def test_verify_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "v.json"
    code = cli.main(["verify", "--op", "relu", "--dtype", "float64", "--quick", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "relu" in out and "finite differences" in out and "0 failed" in out
    assert re.search(r"\n-+ .* -+ +-+\nrelu +\d+ .* ok +ok\n", out)  # the forward-mode column, then the status
    records = json.loads(path.read_text())
    assert {r["op"] for r in records} == {"relu"}
    assert all(r["ok"] for r in records)
    assert {r["transform"] for r in records} == {"eager", "finite differences", "jvp finite differences", "adjoint"}
    assert all("runner.check_sample(" in r["snippet"] for r in records)


def test_verify_exits_1_explains_a_wrong_rule_and_prints_code_that_reproduces_it(monkeypatch, capsys):
    @jax.custom_vjp
    def wrong_sigmoid(x):
        return jax.nn.sigmoid(x)

    wrong_sigmoid.defvjp(lambda x: (wrong_sigmoid(x), x), lambda x, g: (g * x * (1 - x),))
    monkeypatch.setattr(ops, "sigmoid", wrong_sigmoid)
    code = cli.main(["verify", "--op", "sigmoid", "--dtype", "float32", "--quick", "--transform", "eager"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out and "MISMATCH at [" in out and "x " in out
    assert "verdict: rule wrong" in out and "finite-diff" in out and "tolerance" in out
    snippet = out.split("reproduce:\n")[1].split("\n\n")[0]
    exec("\n".join(line[4:] for line in snippet.splitlines()), {})
    assert "sigmoid #0" in capsys.readouterr().out


def test_verify_mutants_prints_the_catch_rate(capsys):
    code = cli.main(["verify", "--mutants", "--op", "sigmoid", "--op", "mean_subtraction"])
    out = capsys.readouterr().out
    assert code == 0
    assert "sigmoid.derivative_from_input" in out and "mean_subtraction.identity_backward" in out
    assert "caught 2 of 2 mutants" in out


def test_python_m_jaxcnn_verify_checks_data_parallel_sharding_on_4_devices(tmp_path):
    path = tmp_path / "sharding.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "jaxcnn", "verify", "--quick", "--dtype", "float32", "--transform", "sharding",
               "--json", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = json.loads(path.read_text())
    assert {r["op"] for r in records} == set(REGISTRY)  # every op has a sample with a batch axis to split
    assert all(r["transform"] == "sharding" and r["ok"] for r in records)
    assert "0 failed" in proc.stdout


def _verify_relu(tmp_path, *options):
    """``python -m jaxcnn verify`` of one relu check with no $XLA_FLAGS given: the process, the JSON."""
    path = tmp_path / "v.json"
    env = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}  # not the suite's flags
    command = [sys.executable, "-m", "jaxcnn", "verify", "--op", "relu", "--dtype", "float64", "--quick",
               "--transform", "eager", "--json", str(path), *options]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc, json.loads(path.read_text())


def test_verify_compiles_under_xlas_defaults_and_its_header_says_so(tmp_path):
    proc, records = _verify_relu(tmp_path)
    assert "compiler: default (jax 0.10.2, jaxlib 0.10.2, backend cpu); XLA_FLAGS: none, XLA's default " \
           "compilation\n" in proc.stdout.replace(jax.__version__, "0.10.2")
    assert [r["compiler"]["xla_flags"] for r in records] == [[]]
    assert records[0]["compiler"]["compilation"] == "default" and records[0]["compiler"]["set_by_jaxcnn"] == []


def test_verify_fast_compile_sets_the_two_flags_and_names_them_in_the_header(tmp_path):
    from jaxcnn._certify.compilation import FAST_COMPILE_FLAGS

    proc, records = _verify_relu(tmp_path, "--fast-compile")
    flags = " ".join(FAST_COMPILE_FLAGS)
    assert f"backend cpu); XLA_FLAGS: {flags}; jaxcnn set {flags}\n" in proc.stdout
    assert records[0]["compiler"]["xla_flags"] == records[0]["compiler"]["set_by_jaxcnn"] == list(FAST_COMPILE_FLAGS)
    assert records[0]["compiler"]["compilation"] == "fast"


#: A rule right under XLA's defaults and wrong under oneDNN: a stand-in for a miscompilation.
FLAG_DEPENDENT_RULE = """
import os

import jax
import jax.numpy as jnp
import numpy as np
from jaxcnn.verify import Registry, Sample


@jax.custom_vjp
def sin(x):
    return jnp.sin(x)


def sin_bwd(x, g):
    wrong = "--xla_cpu_use_onednn=true" in os.environ.get("XLA_FLAGS", "")
    return (g * jnp.cos(x) * (2.0 if wrong else 1.0),)


sin.defvjp(lambda x: (sin(x), x), sin_bwd)
registry = Registry()
registry.register("sin", sin, jnp.sin, [Sample((np.random.default_rng(0).normal(size=(3,)),))])
"""


def test_verify_compilers_runs_each_flag_set_and_reports_a_disagreement(tmp_path, monkeypatch, capsys):
    (tmp_path / "flag_dependent.py").write_text(FLAG_DEPENDENT_RULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "v.json"
    code = cli.main(["verify", "--module", "flag_dependent", "--dtype", "float64", "--transform", "eager",
                     "--compilers", "default,onednn", "--jobs", "1", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "1 disagreements between flag sets" in out
    assert "DISAGREE sin #0 ((3,)) [float64, eager]: passes under default; FAILS under onednn (" in out
    assert "Failures under onednn:" in out and "Failures under default:" not in out
    records = json.loads(path.read_text())
    assert [(r["compiler"]["compilation"], r["ok"]) for r in records] == [("default", True), ("onednn", False)]
    assert "--xla_cpu_use_onednn=true" in records[1]["compiler"]["xla_flags"]
    assert "--xla_cpu_use_onednn=true" not in records[0]["compiler"]["xla_flags"]


def test_an_unknown_flag_set_and_two_compiler_options_are_one_line_each(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", "--compilers", "default,turbo"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("jaxcnn: error: argument --compilers: unknown flag set 'turbo'; choose from "
                                       "default, fast, no-xnn-fusions, onednn (comma-separated, e.g. --compilers "
                                       "default,fast).\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", "--fast-compile", "--compilers", "fast"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "jaxcnn: error: argument --compilers: not allowed with argument --fast-compile\n"


def test_bad_arguments_give_one_line_and_exit_2(capsys):
    for argv in (["verify", "--op", "nonexistent"], ["verify", "--transform", "pmap"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("jaxcnn: error:") and argv[-1] in err and "\n" not in err


def test_verify_checks_the_json_path_before_the_sweep(tmp_path, capsys, monkeypatch):
    from jaxcnn._certify import runner

    monkeypatch.setattr(runner, "run", lambda **kwargs: pytest.fail("the sweep ran"))
    (tmp_path / "file").write_text("x")
    assert cli.main(["verify", "--op", "relu", "--json", str(tmp_path / "file" / "v.json")]) == 2
    err = capsys.readouterr().err
    assert err == (f"jaxcnn: error: {tmp_path}/file/v.json: cannot write the --json file: {tmp_path}/file is a "
                   f"file, not a folder.\n")


def test_jaxcnn_alone_lists_its_commands_with_what_each_does_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "jaxcnn"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("usage: jaxcnn [-h] [--version] COMMAND ...")
    for command, says in (("verify", "certify every op"), ("train", "train a zoo model"),
                          ("launch", "start a multi-process run")):
        assert re.search(rf"^ +{command} +{says}", proc.stdout, flags=re.M), proc.stdout


def test_version_is_the_installed_package_version_and_the_source_tree_falls_back(capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"jaxcnn {metadata.version('jaxcnn')}\n"
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == jaxcnn.__version__  # one version, whichever is read

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert reporting.package_version() == jaxcnn.__version__
    with pytest.raises(metadata.PackageNotFoundError):
        reporting.package_version("optax")


# --- Signals, exit statuses and the files the CLI writes (issue 36) ---------------------------------------------

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SEESAW = ["train", "--model", "seesaw_cnn", "--data", "seesaw", "--batch-size", "1", "--optimizer", "sgd", "--quiet"]


@pytest.fixture
def trials(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    return importlib.import_module("interrupt_trials")


@pytest.fixture(scope="module")
def mnist1d_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mnist1d")
    data.mnist1d(cache_dir=str(directory))
    return str(directory)


def test_ctrl_c_in_the_imports_and_sigterm_in_training_end_in_the_interrupted_line(trials, mnist1d_cache):
    """The quick version of the 20-trial run below (the signal trials of experiments/interrupt_trials.py)."""
    for delay, signum in ((1.0, signal.SIGINT), (3.0, signal.SIGTERM)):
        code, verdict, stderr = trials.signal_trial(delay, signum, mnist1d_cache)
        assert verdict in ("interrupted", "finished", "finished, then stopped"), (delay, code, stderr)
        assert code != -signal.SIGSEGV


@pytest.mark.slow
def test_twenty_early_ctrl_cs_and_twenty_taken_ports_never_crash(trials, capsys):
    code = trials.main(["--trials", "20"])
    out = capsys.readouterr().out
    assert code == 0 and "0 of 40 trials failed" in out, out
    assert "status -11" not in out and "status -6" not in out


def test_a_taken_coordinator_port_ends_process_0_with_one_line(trials):
    for _ in range(2):
        code, verdict, stderr = trials.port_trial()
        assert verdict == "port in use", (code, stderr)


def test_a_signal_while_a_finished_program_shuts_down_ends_it_at_once_with_its_output_complete():
    code = ("import atexit, os, signal, sys, time; from jaxcnn import cli; "
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(60), print('slept'))); "
            "sys.argv = ['jaxcnn']; sys.exit(cli.main())")  # `jaxcnn` alone: its help, then status 0
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert proc.returncode == 128 + signal.SIGTERM and proc.stderr == "", proc.stderr
    assert proc.stdout.startswith("usage: jaxcnn") and "slept" not in proc.stdout


def test_an_interruption_python_can_only_ignore_is_raised_again():
    class SignalledOnDelete:
        def __del__(self):  # a signal handled in here (as in a gc callback) cannot propagate
            signal.raise_signal(signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with cli._signals_interrupt(), pytest.raises(cli.Interrupted) as e:
        SignalledOnDelete()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pass
    assert e.value.signum == signal.SIGTERM and isinstance(e.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) == before  # put back


def test_every_output_replaces_a_planted_symlink_and_never_writes_through_it(tmp_path):
    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.write_bytes(b"precious")
    names = ["checkpoint.npz", "metrics.json", "learning_curve.png"]
    for name in names:
        (out / name).symlink_to(victim)
    assert cli.main([*SEESAW, "--epochs", "1", "--out", str(out), "--overwrite"]) == 0
    assert victim.read_bytes() == b"precious"
    assert not any((out / name).is_symlink() for name in names)
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out)) == sorted(names)  # no temporary file left


def test_a_full_disk_names_the_checkpoint_that_survived(tmp_path, capsys, monkeypatch):
    save, fsync, saves = checkpoint.save, os.fsync, []

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def second_save_fails(*args, **kwargs):
        saves.append(args[0])
        if len(saves) == 2:
            monkeypatch.setattr(os, "fsync", full_disk)
        save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", second_save_fails)
    assert cli.main([*SEESAW, "--epochs", "3", "--out", str(tmp_path)]) == 2
    monkeypatch.setattr(os, "fsync", fsync)
    err = capsys.readouterr().err
    assert re.fullmatch(rf"jaxcnn: error: [^\n]*No space left on device[^\n]*; last checkpoint at epoch 1 "
                        rf"\({tmp_path}/checkpoint.npz; continue with --resume\)\n", err), err
    assert len(checkpoint.read_header(str(tmp_path / "checkpoint.npz"))["metadata"]["history"]) == 1
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_os_errors_read_without_the_errno_prefix_and_name_their_file():
    args = cli._parser().parse_args([*SEESAW, "--out", "/nowhere"])
    assert cli._error_line(args, FileNotFoundError(errno.ENOENT, "No such file or directory", "/x/train.gz")) == \
        "jaxcnn: error: /x/train.gz: No such file or directory"
    assert cli._error_line(args, ValueError("bad")) == "jaxcnn: error: bad"
    assert cli._error_line(args, OSError(errno.EROFS, "Read-only file system")) == \
        "jaxcnn: error: Read-only file system; no checkpoint written yet"


_CHUNKS_OF_ONE_STEP = """
import os, sys, time
from jaxcnn import cli, train

train._CHUNK_SECONDS = 0.0  # chunks of one step
advance, marker = train.Progress.advance, os.environ.get("MARK_AT")

def advance_slowly(self, step):  # from step MARK_AT on: a marker file, then a slow epoch to signal into
    advance(self, step)
    if marker and step >= int(marker):
        open(os.environ["MARK_FILE"], "w").close()
        time.sleep(0.2)

train.Progress.advance = advance_slowly
sys.exit(cli.main())
"""


_ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))


def _train_mnist1d(argv, out, *extra):
    return subprocess.run([sys.executable, "-m", "jaxcnn", *argv, "--out", str(out), *extra], env=_ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def mnist1d_run(tmp_path_factory):
    """An uninterrupted `jaxcnn train` on MNIST-1D, 100 steps an epoch: its arguments and folder."""
    folder = tmp_path_factory.mktemp("mnist1d")
    argv = ["train", "--data", "mnist1d", "--model", "mnist1d_cnn", "--limit", "400", "--batch-size", "4",
            "--epochs", "3", "--shuffle", "--data-dir", str(folder / "data"), "--quiet"]
    straight = _train_mnist1d(argv, folder / "straight")
    assert straight.returncode == 0, straight.stderr
    return argv, folder / "straight"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_epoch_2_stops_within_seconds_and_resume_ends_with_the_uninterrupted_params(tmp_path, signum,
                                                                                               mnist1d_run):
    """`jaxcnn train` on MNIST-1D (100 steps an epoch), signalled from outside in epoch 2:
    it exits within seconds naming the step it keeps, and --resume ends with exactly the
    checkpoint arrays of an uninterrupted run (which took its chunks otherwise)."""
    (argv, straight), env = mnist1d_run, _ENV
    mark = tmp_path / "in-epoch-2"
    proc = subprocess.Popen([sys.executable, "-c", _CHUNKS_OF_ONE_STEP, *argv, "--out", str(tmp_path / "cut")],
                            env=dict(env, MARK_AT="105", MARK_FILE=str(mark)), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signum)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    match = re.fullmatch(r"jaxcnn: interrupted; last checkpoint at step (\d+) of 100 in epoch 2 \(.*checkpoint.npz; "
                         r"continue with --resume\)\n", err)
    assert match and 5 <= int(match[1]) < 100, err
    # A step's chunk and the save, not the rest of the epoch: its steps sleep 0.2 s each, which no load shortens.
    assert waited < 0.2 * (100 - int(match[1]))
    resumed = _train_mnist1d(argv, tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = np.load(straight / "checkpoint.npz"), np.load(tmp_path / "cut" / "checkpoint.npz")
    leaves = sorted(k for k in a.files if k.startswith("leaf_"))
    assert leaves and leaves == sorted(k for k in b.files if k.startswith("leaf_"))
    for k in leaves:
        np.testing.assert_array_equal(a[k], b[k])
    history = [json.loads((run / "metrics.json").read_text())["history"] for run in (straight, tmp_path / "cut")]
    assert [h["train_loss"] for h in history[0]] == [h["train_loss"] for h in history[1]]
