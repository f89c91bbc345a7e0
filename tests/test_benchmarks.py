"""The benchmark scripts run (quick mode) and print their tables; figures are not asserted."""

import json
import pathlib
import subprocess
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize("script", ["bench_conv.py", "bench_pool.py"])
def test_benchmark_quick_mode(script, tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, script, "--quick", "--json", str(out)], cwd=EXPERIMENTS,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "autodiff ms" in proc.stdout and "worst" in proc.stdout
    assert json.loads(out.read_text())["results"]
