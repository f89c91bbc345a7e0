import json

import jax
import jax.numpy as jnp
import pytest

from jaxcnn import cli, ops


def test_verify_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "v.json"
    code = cli.main(["verify", "--op", "relu", "--op", "dense", "--dtype", "float64", "--quick", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "relu" in out and "dense" in out and "finite differences" in out and "0 failed" in out
    records = json.loads(path.read_text())
    assert {r["op"] for r in records} == {"relu", "dense"}
    assert all(r["ok"] for r in records)


def test_verify_exits_1_and_explains_a_wrong_rule(monkeypatch, capsys):
    @jax.custom_vjp
    def wrong_sigmoid(x):
        return jax.nn.sigmoid(x)

    wrong_sigmoid.defvjp(lambda x: (wrong_sigmoid(x), x), lambda x, g: (g * x * (1 - x),))
    monkeypatch.setattr(ops, "sigmoid", wrong_sigmoid)
    code = cli.main(["verify", "--op", "sigmoid", "--dtype", "float32", "--quick"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAILED" in out and "MISMATCH at [" in out and "x " in out


def test_bad_arguments_give_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", "--op", "nonexistent"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxcnn: error:") and "nonexistent" in err and "\n" not in err
