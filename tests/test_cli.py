import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import jax
import pytest

import jaxcnn
from jaxcnn import cli, ops, reporting
from jaxcnn._certify.registry import REGISTRY


def test_verify_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "v.json"
    code = cli.main(["verify", "--op", "relu", "--op", "dense", "--dtype", "float64", "--quick", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "relu" in out and "dense" in out and "finite differences" in out and "0 failed" in out
    records = json.loads(path.read_text())
    assert {r["op"] for r in records} == {"relu", "dense"}
    assert all(r["ok"] for r in records)
    assert {r["transform"] for r in records} == {"eager", "finite differences"}
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
