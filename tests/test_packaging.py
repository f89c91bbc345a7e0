"""The package as pip builds it: type hints marked (PEP 561), the licence as an SPDX expression with its file
(PEP 639), and no deprecation warning from the build backend."""

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_py_typed_and_the_license_and_builds_without_warnings(tmp_path):
    try:
        version = tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except metadata.PackageNotFoundError:
        version = None
    if version is None or version < (77, 0):
        if os.environ.get("CI"):  # the test extra installs setuptools >= 77: anything else under CI is broken
            pytest.fail("setuptools >= 77 is not installed, though the test extra requires it")
    if version is None:
        pytest.skip("setuptools is not installed here (pip builds in an isolated environment)")
    if version < (77, 0):
        pytest.skip(f"setuptools {metadata.version('setuptools')} predates PEP 639 (pyproject asks for >= 77)")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "jaxcnn", tmp_path / "jaxcnn", ignore=shutil.ignore_patterns("__pycache__"))
    build = "import setuptools.build_meta as backend; print(backend.build_wheel('dist'))"
    proc = subprocess.run([sys.executable, "-W", "error", "-c", build], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # -W error: a deprecation warning fails the build
    with zipfile.ZipFile(tmp_path / "dist" / proc.stdout.split()[-1]) as wheel:
        names = wheel.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        fields = wheel.read(info).decode().splitlines()
        license_text = wheel.read(info.replace("METADATA", "licenses/LICENSE")).decode()
    assert "jaxcnn/py.typed" in names
    assert "License-Expression: Apache-2.0" in fields and "License-File: LICENSE" in fields
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
