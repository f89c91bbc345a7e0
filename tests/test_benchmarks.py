"""The benchmark script runs (quick mode) and prints its tables; figures are not asserted."""

import json
import pathlib
import subprocess
import sys

import pytest

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _bench(tmp_path, *options):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "bench.py", "--quick", *options, "--json", str(out)], cwd=EXPERIMENTS,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, json.loads(out.read_text())["results"]


def test_benchmark_quick_mode_on_one_network(tmp_path):
    stdout, results = _bench(tmp_path, "--only", "ops", "--only", "conv-methods", "--only", "train",
                             "--cases", "conv", "--cases", "max_pool", "--networks", "MNIST-1D")
    for heading in ("hand rule (ops) vs autodiff", "per method", "Train step: MNIST-1D"):
        assert heading in stdout, heading
    assert "Train step: LeNet-5" not in stdout and "GFLOP/s" not in stdout
    assert [r["op"] for r in results["ops"]] == ["conv", "max_pool"]
    assert all(r["ms"]["ops"] > 0 and r["ms"]["autodiff"] > 0 for r in results["ops"])
    assert set(results["conv_methods"][0]["ms"]) >= {"auto", "xla", "im2col"}
    (steps,) = [r["ms_per_step"] for r in results["train"]]
    assert "jaxcnn ops (jit step)" in steps and "jaxcnn reference (make_epoch, lax.scan)" in steps


@pytest.mark.slow
def test_benchmark_quick_mode(tmp_path):
    stdout, results = _bench(tmp_path)
    for heading in ("hand rule (ops) vs autodiff", "per method", "Train step: LeNet-5", "Train step: MNIST-1D",
                    "GFLOP/s"):
        assert heading in stdout, heading
    assert {r["op"] for r in results["ops"]} == {"dense", "softmax_cross_entropy", "l2_penalty", "conv", "max_pool",
                                                  "batch_norm", "dropout"}
    assert all(r["ms"]["ops"] > 0 and r["ms"]["autodiff"] > 0 for r in results["ops"])
    steps = results["train"][0]["ms_per_step"]
    assert "jaxcnn ops (jit step)" in steps and "jaxcnn reference (make_epoch, lax.scan)" in steps


def test_profile_step_prints_the_kernels_of_a_step(tmp_path):
    hlo = tmp_path / "step.hlo"
    proc = subprocess.run([sys.executable, "profile_step.py", "--batch", "4", "--steps", "2", "--top", "5",
                           "--hlo", str(hlo)], cwd=EXPERIMENTS, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "lenet5 on jaxcnn.ops" in proc.stdout and "| kernel | µs / step | share | result |" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "kernel" not in line]
    assert len(rows) == 5  # every kernel name printed is one the compiled HLO defines
    assert all(f"%{row.split(' | ')[0][2:]} = " in hlo.read_text() for row in rows)


def _bench_networks(tmp_path, *cases):
    out, table = tmp_path / "result.json", tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "bench_networks.py", "--quick", *(a for c in cases for a in ("--cases", c)),
                           "--json", str(out), "--out", str(table)], cwd=EXPERIMENTS, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "ops / reference (95%)" in table.read_text() and "noise floor" in proc.stdout
    return json.loads(out.read_text())["results"]


def test_bench_networks_quick_mode_on_one_network(tmp_path):
    (cnn,) = _bench_networks(tmp_path, "1-D")
    assert cnn["ms"]["ops"] > 0 and cnn["ms"]["reference"] > 0 and cnn["ms"]["reference again"] > 0
    assert cnn["memory"]["ops"]["temp"] >= 0 and cnn["residual_bytes"]["ops"] > 0
    assert set(cnn["peers_ms"]) <= {"ops", "Flax linen", "PyTorch CPU"} and "ops" in cnn["peers_ms"]


@pytest.mark.slow
def test_bench_networks_quick_mode(tmp_path):
    results = _bench_networks(tmp_path)
    assert len(results) == 5 and all(r["ms"]["ops"] > 0 and r["ms"]["reference"] > 0 for r in results)
    assert all(r["residual_bytes"]["ops"] > 0 for r in results)


def test_winograd_products_prints_the_three_products_and_the_plan():
    proc = subprocess.run([sys.executable, "winograd_products.py", "--shapes", "2x6x12x12,1x4x2x3", "--repeats", "1"],
                          cwd=EXPERIMENTS, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "y ms: xla / winograd (ratio)" in proc.stdout and "auto: y / dW / dx" in proc.stdout
    assert "2 × 6×6, 12 → 12" in proc.stdout and "1 × 4×4, 2 → 3" in proc.stdout


def test_bench_conv_family_quick_mode_on_two_layers(tmp_path):
    out, table = tmp_path / "result.json", tmp_path / "table.md"
    proc = subprocess.run([sys.executable, "bench_conv_family.py", "--quick", "--cases", "3-D", "--cases", "transposed",
                           "--json", str(out), "--out", str(table)], cwd=EXPERIMENTS, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = table.read_text()
    assert "ops / reference (95%)" in text and "ops / PyTorch" in text and "noise floor" in text
    assert "load average" in text and "commit" in text
    rows = json.loads(out.read_text())["results"]
    assert [r["family"] for r in rows] == ["quick 3-D 3×3×3", "quick transposed 1-D, stride 2"]
    assert all(r["ms"]["ops"] > 0 and r["ms"]["reference"] > 0 and r["ms"]["reference again"] > 0 for r in rows)
    assert rows[0]["plan"] == "rows / rows / im2col" and rows[1]["plan"] == "im2col / im2col / im2col"  # auto's
    assert all(set(r.get("torch_ms", {"ops": 1})) <= {"ops", "PyTorch CPU"} for r in rows)


def test_bench_forward_mode_quick_mode(tmp_path):
    out = tmp_path / "forward.md"
    proc = subprocess.run([sys.executable, "bench_forward_mode.py", "--quick", "--out", str(out)], cwd=EXPERIMENTS,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = out.read_text()
    assert table.count("\n| quick") == 3 and "HVP" in table and "jacfwd" in table
