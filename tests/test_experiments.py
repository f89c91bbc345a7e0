"""The experiment scripts run end to end in quick mode (a few steps; figures not asserted),
and the image experiments stop with the install hint when Fashion-MNIST is absent."""

import importlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxcnn import data

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
IMAGE_SCRIPTS = ["homework", "lenet5", "ops_vs_autodiff", "modern_cnn"]


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory):
    """A tiny Fashion-MNIST in IDX format: 64 training and 32 test images of noise."""
    directory = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for split, n in (("train", 64), ("t10k", 32)):
        data.write_idx(str(directory / f"{split}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28), np.uint8))
        data.write_idx(str(directory / f"{split}-labels-idx1-ubyte.gz"), (np.arange(n) % 10).astype(np.uint8))
    return directory


SCRIPTS = ["seesaw", "mnist1d", *IMAGE_SCRIPTS]


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory, fake_fashion):
    """Every script's quick run, started together (they are mostly compile time) and
    awaited by the test that reads it."""
    runs = {}
    for script in SCRIPTS:
        out = tmp_path_factory.mktemp(script)
        extra = ["--data-dir", str(fake_fashion)] if script in IMAGE_SCRIPTS else []
        command = [sys.executable, str(EXPERIMENTS / f"{script}.py"), "--quick", "--out", str(out), *extra]
        runs[script] = out, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield runs
    for _, proc in runs.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_writes_the_report_and_its_plots(script, quick_runs):
    out, proc = quick_runs[script]
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    report = (out / f"{script}.md").read_text()
    assert report.startswith("# ") and "|---|" in report and "QUICK SMOKE RUN" in report
    images = [line[line.index("(") + 1:-1] for line in report.splitlines() if line.startswith("![")]
    assert images
    for name in images:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.fixture
def experiment(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    return lambda name: importlib.import_module(name)


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_image_experiments_stop_with_the_install_hint(script, tmp_path, experiment, capsys):
    with pytest.raises(SystemExit) as e:
        experiment(script).main(["--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST folder") and "apt-get install dataset-fashion-mnist" in err
    assert err.count("\n") == 1
    assert not list(tmp_path.glob("*.md"))


def test_quick_mode_defaults_to_a_temporary_folder(experiment):
    args = experiment("_common").parse_args("x", ["--quick"], seeds=3)
    assert pathlib.Path(args.out).is_dir() and "results" not in args.out and args.seeds == 3
    assert experiment("_common").parse_args("x", []).out == str(EXPERIMENTS / "results")


def test_verify_ecosystem_quick_certifies_softplus_and_catches_the_planted_error(experiment, tmp_path):
    experiment("verify_ecosystem").main(["--quick", "--out", str(tmp_path)])
    report = (tmp_path / "verify_ecosystem.md").read_text()
    assert "jax.nn.softplus" in report and "0 failed" in report and "QUICK SMOKE RUN" in report
    planted = "| jax.nn.softplus (planted error) | #0 ((4, 5)) | float64 | jvp finite differences | rule wrong | x |"
    assert planted in report
    assert "| relu at 0 | jnp.maximum(x, 0) | 0.5 | 0.5 |" in report


def test_audit_ecosystem_quick_catches_and_names_the_planted_flax_rule(experiment, tmp_path):
    experiment("audit_ecosystem").main(["--quick", "--out", str(tmp_path)])
    report = (tmp_path / "audit_ecosystem.md").read_text()
    assert "QUICK SMOKE RUN" in report
    planted = next(line for line in report.splitlines() if line.startswith("| Flax linen CNN, planted wrong swish"))
    assert "`swish` at `experiments/audit_ecosystem.py:" in planted and "(Block_0): rule wrong" in planted
    loss = next(line for line in report.splitlines() if line.startswith("| optax.log_cosh"))
    assert "| none |" in loss


def test_curvature_quick_mode_agrees_on_the_top_eigenvalue(tmp_path, fake_fashion):
    command = [sys.executable, str(EXPERIMENTS / "curvature.py"), "--quick", "--out", str(tmp_path),
               "--data-dir", str(fake_fashion)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "curvature.md").read_text()
    assert "|---|" in report and "QUICK SMOKE RUN" in report and "the same to float32 precision" in report
