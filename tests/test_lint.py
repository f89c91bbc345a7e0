"""The linter: ruff, configured in pyproject.toml, finds nothing in the package, the tests or the experiments."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _ruff():
    if shutil.which("ruff"):
        return ["ruff"]
    try:
        import ruff  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "ruff"]


def test_ruff_finds_nothing():
    command = _ruff()
    if command is None:
        if os.environ.get("CI"):  # CI installs the test extra, so a missing linter is a broken install, not a skip
            pytest.fail("ruff is not installed, though the test extra requires it")
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([*command, "check", "--no-cache", "jaxcnn", "tests", "experiments"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
