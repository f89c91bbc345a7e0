"""Your own ops: a Registry certified by `jaxcnn verify --module` and by pytest_cases, the
README's worked example (experiments/custom_rules.py) passing, and wrong rules (a custom_vjp
and a custom_jvp) caught and blamed on the right op, argument and transform."""

import json
import re
import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import cli, ops
from jaxcnn._certify import display, runner
from jaxcnn._certify.registry import normal
from jaxcnn.verify import GradientMismatch, Registry, Sample
from jaxcnn.verify.checks import FORWARD_MODE
from jaxcnn.verify.registry import rule_of

ROOT = pathlib.Path(__file__).resolve().parents[1]

WRONG = textwrap.dedent('''
    import jax
    from experiments import custom_rules
    import numpy as np
    from jaxcnn.verify import Registry, Sample

    @jax.custom_vjp
    def swish(x):
        return custom_rules.swish(x)

    swish.defvjp(lambda x: (swish(x), x), lambda x, g: (g * jax.nn.sigmoid(x),))  # the product rule forgotten

    @jax.custom_jvp
    def softplus(x):
        return custom_rules.softplus(x)

    softplus.defjvp(lambda p, t: (softplus(p[0]), jax.nn.tanh(p[0]) * t[0]))  # tanh for the sigmoid

    registry = Registry()
    registry.register("swish", swish, custom_rules.swish_reference,
                      [Sample((np.random.default_rng(0).normal(size=(3, 4)),))])
    registry.register("softplus", softplus, custom_rules.softplus_reference,
                      [Sample((np.random.default_rng(0).normal(size=(3, 4)),))])
''')


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))


def test_the_worked_example_is_certified_by_the_command_line(at_root, tmp_path, capsys):
    path = tmp_path / "v.json"
    argv = ["verify", "--module", "experiments.custom_rules", "--quick", "--dtype", "float64", "--jobs", "1",
            "--no-cache", "--json", str(path)]
    assert cli.main(argv) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "checks (3 ops, experiments.custom_rules) on 1 worker" in out and "0 failed" in out
    records = json.loads(path.read_text())
    assert {r["op"] for r in records} == {"swish", "softplus", "huber"}
    by_op = {op: {r["transform"] for r in records if r["op"] == op} for op in ("swish", "softplus")}
    assert "jvp finite differences" in by_op["softplus"]  # a custom_jvp: forward mode checked
    assert not {"jvp", "jvp finite differences"} & by_op["swish"]  # a custom_vjp has no forward mode
    assert all("module='experiments.custom_rules'" in r["snippet"] for r in records)


def _verify_module(tmp_path, monkeypatch, capsys, module: str, source: str):
    """``jaxcnn verify --module`` of ``source`` (quick, float64): exit status, output, JSON records."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "v.json"
    code = cli.main(["verify", "--module", module, "--quick", "--dtype", "float64", "--jobs", "1", "--no-cache",
                     "--json", str(path)])
    return code, capsys.readouterr().out, json.loads(path.read_text())


def test_wrong_rules_in_a_users_module_fail_with_the_right_blame(at_root, tmp_path, monkeypatch, capsys):
    code, out, records = _verify_module(tmp_path, monkeypatch, capsys, "wrong_rules", WRONG)
    assert code == 1
    assert "FAILED swish #0" in out and "FAILED softplus #0" in out and "verdict: rule wrong" in out
    failed = {(r["op"], r["transform"]) for r in records if not r["ok"]}
    assert ("swish", "eager") in failed and ("swish", "finite differences") in failed
    assert {("softplus", "jvp finite differences"), ("softplus", "eager")} <= failed  # forward and its transpose


BEYOND = textwrap.dedent('''
    import jax
    import jax.numpy as jnp
    import numpy as np
    from experiments import custom_rules
    from jaxcnn.verify import Registry, Sample

    def swish_with(backward):
        f = jax.custom_vjp(custom_rules.swish_reference)
        f.defvjp(lambda x: (f(x), x), backward)
        return f

    def derivative(x):
        s = jax.nn.sigmoid(x)
        return s + x * s * (1 - s)

    registry = Registry()
    x = np.random.default_rng(0).normal(size=(3, 4))  # |x| < 5, as samples are
    registry.register("swish", custom_rules.swish, custom_rules.swish_reference, [Sample((x,))])
    registry.register("swish_far", swish_with(lambda x, g: (g * jnp.where(abs(x) > 5, 0.5, 1.0) * derivative(x),)),
                      custom_rules.swish_reference, [Sample((x,))])  # approximated for |x| > 5
    registry.register("swish_clipped", swish_with(lambda x, g: (jnp.clip(g, -10, 10) * derivative(x),)),
                      custom_rules.swish_reference, [Sample((x,))])  # wrong under loss scaling
''')


def test_rules_wrong_only_beyond_the_samples_fail_in_a_users_module(at_root, tmp_path, monkeypatch, capsys):
    code, out, records = _verify_module(tmp_path, monkeypatch, capsys, "beyond_rules", BEYOND)
    assert code == 1
    failed = {r["op"]: r for r in records if not r["ok"]}
    assert set(failed) == {"swish_far", "swish_clipped"}, out
    for op, probe in (("swish_far", "inputs"), ("swish_clipped", "cotangent")):
        record = failed[op]
        assert record["transform"] == "eager" and record["verdict"] == "rule wrong", out
        assert [a["probe"][0] for a in record["arguments"]] == [probe], out
    assert "x [inputs ×16]" in out and "x [cotangent ×16384]" in out and "at the sample's cotangent ×16384" in out


def test_pytest_cases_make_one_test_per_check_and_fail_a_wrong_rule(at_root, tmp_path, monkeypatch):
    (tmp_path / "wrong_rules_cases.py").write_text(WRONG)
    monkeypatch.syspath_prepend(str(tmp_path))
    import wrong_rules_cases
    from experiments import custom_rules

    cases = custom_rules.registry.pytest_cases(dtypes=("float32",), quick=True)
    ids = [c.id for c in cases]
    assert "swish-0-float32-vmap" in ids and "softplus-0-float32-jvp" in ids and len(ids) == len(set(ids))
    assert len(cases) == sum(len(u.checks) for u in runner.plan(dtypes=("float32",), quick=True,
                                                              module=custom_rules.registry))
    cases[0].values[0].assert_ok()
    wrong = {c.id: c.values[0] for c in wrong_rules_cases.registry.pytest_cases(dtypes=("float32",), quick=True,
                                                                            transforms=("eager", "jvp"))}
    with pytest.raises(GradientMismatch, match=r"(?s)swish #0 .*float32, eager.*MISMATCH.*rule wrong"):
        wrong["swish-0-float32-eager"].assert_ok()
    with pytest.raises(GradientMismatch, match=r"(?s)softplus #0 .*float32, jvp.*JVP vs forward mode"):
        wrong["softplus-0-float32-jvp"].assert_ok()


def test_the_rule_kind_is_found_by_tracing_or_given():
    x = np.ones(3)
    assert (rule_of(jax.nn.relu, x), rule_of(ops.relu, x), rule_of(jnp.sin, x)) == (
        "custom_jvp", "custom_rule", "autodiff")  # a jaxcnn op: both modes, so forward mode is certified
    assert rule_of(jax.jit(jax.nn.softplus), x) == "custom_jvp"  # found inside a jit
    registry = Registry()
    info = registry.register("sin", jnp.sin, jnp.sin, [(normal(3),)], rule="custom_vjp")
    assert info.rule_at(info.samples(None)[0]) == "custom_vjp"
    assert not any(t in FORWARD_MODE for u in runner.plan(module=registry) for _, t in u.checks)


def test_registration_errors():
    registry = Registry()
    registry.register("sin", jnp.sin, jnp.sin, [Sample((normal(3),))])
    with pytest.raises(ValueError, match="an op named 'sin' is already registered"):
        registry.register("sin", jnp.sin, jnp.sin, [Sample((normal(3),))])
    with pytest.raises(TypeError, match="`reference` of 'cos' must be callable, got str"):
        registry.register("cos", jnp.cos, "cos", [Sample((normal(3),))])
    with pytest.raises(ValueError, match="`rule` of 'cos' must be one of custom_vjp, custom_jvp, custom_rule, "
                                         "autodiff or 'auto', got 'vjp'"):
        registry.register("cos", jnp.cos, jnp.cos, [Sample((normal(3),))], rule="vjp")
    with pytest.raises(ValueError, match="'cos' needs at least one sample, got none"):
        registry.register("cos", jnp.cos, jnp.cos, [])
    with pytest.raises(TypeError, match="each sample of 'cos' must be a Sample or a tuple of arguments, got ndarray"):
        registry.register("cos", jnp.cos, jnp.cos, [normal(3)])


def test_module_errors_are_one_line_and_exit_2(at_root, tmp_path, monkeypatch, capsys):
    (tmp_path / "no_registry.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for argv, message in (
        (["verify", "--module", "no_such_module_v24"], "No module named 'no_such_module_v24'"),
        (["verify", "--module", "no_registry"], "expected one jaxcnn.verify.Registry in the module"),
        (["verify", "--module", "experiments.custom_rules", "--op", "relu"], "invalid choice: 'relu'"),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("jaxcnn: error:") and message in err and "\n" not in err


def test_progress_lines_failures_as_they_happen_and_a_table_within_100_columns():
    import dataclasses
    import io

    from jaxcnn._certify import mutants

    good = runner.check_sample("relu", 0, "float64", "eager")
    wrong = mutants.MUTANTS["sigmoid.derivative_from_input"].build()
    bad = runner.check_sample("sigmoid", 0, "float64", "eager", op=wrong)
    long = dataclasses.replace(bad, op="optax.softmax_cross_entropy_with_integer_labels", dtype="bfloat16",
                               transform="jvp finite differences")
    records = [good, bad, long]
    for live in (True, False):
        stream = io.StringIO()
        progress = display.Progress(stream, live=live)
        progress.start(3, 2, " (3 ops)")
        for record in records:
            progress(record)
        progress.finish()
        out = stream.getvalue()
        assert out.startswith("3 checks (3 ops) on 2 workers\n")
        assert "FAILED sigmoid #0 ((4, 5)) [float64, eager]: rule wrong\n" in out
        assert ("\r[1/3] 0 failed" in out) == live and ("\n[3/3] 2 failed" in out) == (not live)
    table = display.format_table(records)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "optax.softmax_cross_entropy_w…" in table and "2 FAILED" not in table and "1 FAILED" in table
    assert f"{good.worst()[0]:.1e} f64 eager" in table and "jvp-fd = jvp finite differences" in table


RAISES = textwrap.dedent('''
    import numpy as np
    from jaxcnn.verify import Registry, Sample

    def broken(x):
        raise RuntimeError("broken op: this line is the summary\\nand this the detail")

    registry = Registry()
    registry.register("broken", broken, lambda x: x, [Sample((np.ones((2, 3)),))])
    registry.register("fine", lambda x: 2 * x, lambda x: x + x, [Sample((np.ones((2, 3)),))])
''')


def test_an_op_that_raises_is_a_failed_row_of_the_table_with_the_one_line_error(at_root, tmp_path, monkeypatch,
                                                                                 capsys):
    code, out, records = _verify_module(tmp_path, monkeypatch, capsys, "raising_rules", RAISES)
    assert code == 1 and "Traceback" not in out
    table = out.split("\nFailures:\n")[0]
    rows = {line.split()[0]: line for line in table.splitlines() if line.startswith(("broken ", "fine "))}
    assert rows["broken"].endswith("FAILED") and rows["fine"].endswith("ok")
    broken = [r for r in records if r["op"] == "broken"]
    assert broken and all(not r["ok"] for r in broken)
    assert all(r["error"] == "RuntimeError: broken op: this line is the summary" for r in broken)
    assert "error: RuntimeError: broken op: this line is the summary\n" in out


@pytest.mark.parametrize("module, source, message", [
    ("empty_rules", "from jaxcnn.verify import Registry\nregistry = Registry()\n",
     "its Registry `registry` holds no ops, so there is nothing to certify"),
    ("exiting_rules", "import sys\nsys.exit(0)\n", r"importing it called sys.exit\(0\), so no registry was loaded"),
])
def test_a_module_that_certifies_nothing_is_an_error(at_root, tmp_path, monkeypatch, capsys, module, source, message):
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SystemExit) as e:
        cli.main(["verify", "--module", module, "--no-cache"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"jaxcnn: error: --module {module}: ")
    assert re.search(message, err) and err.count("\n") == 1


def test_filters_that_select_no_check_are_an_error(capsys):
    assert cli.main(["verify", "--op", "relu", "--dtype", "bfloat16", "--transform", "jit", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxcnn: error: no check to run: --op relu --dtype bfloat16 --transform 'jit' select none")
    assert "bfloat16: contract, eager" in err and err.count("\n") == 1


def test_one_bug_found_by_several_checks_is_diagnosed_once_with_where_it_showed():
    from jaxcnn._certify import display, mutants

    wrong = mutants.MUTANTS["sigmoid.derivative_from_input"].build()
    info = runner.load_registry()["sigmoid"]
    checks = [("float64", "eager"), ("float64", "finite differences"), ("float32", "eager"), ("float32", "jit")]
    records = runner.check_unit(info, 0, checks, op=wrong, snippet=lambda dtype, transform: f"{dtype} {transform}")
    assert not any(r.ok for r in records)
    text = display.format_failures(records)
    assert text.count("verdict: rule wrong") == 1 and text.count("reproduce:") == 1
    assert "sigmoid #0 ((4, 5)): FAILED 4 checks (float64: eager, finite differences; float32: eager, jit)" in text


def test_each_sample_is_drawn_once_per_unit_of_checks():
    draws = []

    def samples(rng):
        draws.append(1)
        return [Sample((rng.normal(size=(3, 4)),)), Sample((rng.normal(size=(2, 5)),))]

    registry = Registry()
    registry.register("tanh", jnp.tanh, lambda x: (1 - jnp.exp(-2 * x)) / (1 + jnp.exp(-2 * x)), samples)
    units = runner.plan(dtypes=("float64", "float32"), quick=False, module=registry)
    draws.clear()
    records = runner.run(module=registry, units=units)
    assert len(records) > 2 * len(units) and all(r.ok for r in records)
    assert len(draws) == len(units)  # once per sample's unit, not per check nor again for a diagnosis
