"""verify.audit on programs nobody in this project wrote: a Flax linen and an Equinox CNN
train step with one planted wrong custom_vjp (caught, named by file:line and module path;
the correct rule gives no finding), rules inside scan/checkpoint/vmap/cond, jaxcnn's own
train step, and `jaxcnn audit`'s exit codes."""

import json
import re
import sys
import textwrap

import equinox as eqx
import flax.linen as fnn
import jax
import jax.numpy as jnp
import optax
import pytest

from jaxcnn import cli, models, train
from jaxcnn.ops._rule import custom_rule
from jaxcnn.verify import AuditReport, audit


def _swish(correct: bool):
    """x·σ(x) as a custom_vjp; the wrong backward forgets the x·σ(x)(1 − σ(x)) term."""
    @jax.custom_vjp
    def swish(x):
        return x * jax.nn.sigmoid(x)

    def swish_bwd(x, g):
        s = jax.nn.sigmoid(x)
        return (g * (s + x * s * (1 - s)) if correct else g * s,)

    swish.defvjp(lambda x: (swish(x), x), swish_bwd)
    return swish


GOOD, BAD = _swish(True), _swish(False)
THIS_FILE = "test_audit.py"


def _line_of(text: str) -> int:
    with open(__file__) as f:
        return next(k for k, line in enumerate(f, 1) if text in line)


class Block(fnn.Module):
    act: object

    @fnn.compact
    def __call__(self, x):
        return self.act(fnn.Conv(3, (3, 3))(x))  # the planted call


class FlaxCNN(fnn.Module):
    act: object

    @fnn.compact
    def __call__(self, x):
        x = Block(self.act)(x)
        x = fnn.relu(fnn.Conv(3, (3, 3))(x))
        return fnn.Dense(3)(x.reshape(x.shape[0], -1))


def _flax_step(act):
    model = FlaxCNN(act)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 1))
    y = jnp.array([0, 2])
    params = model.init(jax.random.key(1), x)
    tx = optax.sgd(0.1)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, value

    return step, (params, tx.init(params), x, y)


def test_a_flax_train_step_with_a_wrong_rule_names_the_rule_its_line_and_module_path():
    step, args = _flax_step(BAD)
    report = audit(step, *args)
    assert isinstance(report, AuditReport) and not report.ok
    (bad,) = report.failures
    assert bad.rule == "swish" and bad.verdict == "rule wrong" and not bad.ok and bad.count == 1
    assert bad.source.split(" ")[0].endswith(f"{THIS_FILE}:{_line_of('# the planted call')}")
    assert bad.path == "Block_0"
    assert "x[" in bad.worst and "rule" in bad.worst and "tolerance" in bad.worst
    assert {f.rule for f in report.findings} == {"swish", "relu"}
    assert "FAIL" in str(report) and "Block_0" in report.table()
    data = json.loads(report.to_json())
    assert data["ok"] is False and [f["rule"] for f in data["findings"] if not f["ok"]] == ["swish"]


def test_the_same_flax_train_step_with_the_correct_rule_has_no_finding():
    report = audit(*((lambda s, a: (s, *a))(*_flax_step(GOOD))))
    assert report.ok, report
    assert {f.rule: f.verdict for f in report.findings} == {"swish": "agree", "relu": "agree"}
    swish = next(f for f in report.findings if f.rule == "swish")
    assert swish.note == ""  # the train step's own backward pass sent it its cotangent


class EqxCNN(eqx.Module):
    conv: eqx.nn.Conv2d
    linear: eqx.nn.Linear
    act: object = eqx.field(static=True)

    def __init__(self, act, key):
        k1, k2 = jax.random.split(key)
        self.conv, self.linear, self.act = eqx.nn.Conv2d(1, 2, 3, key=k1), eqx.nn.Linear(2 * 3 * 3, 2, key=k2), act

    def __call__(self, x):
        return self.linear(self.act(self.conv(x)).reshape(-1))  # the Equinox call


@pytest.mark.parametrize("act", [GOOD, BAD], ids=["correct", "wrong"])
def test_an_equinox_cnn_gradient_under_vmap_is_audited_per_example(act):
    model = EqxCNN(act, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 1, 5, 5))

    @eqx.filter_jit
    def loss(model, x):
        return jnp.mean(jax.vmap(model)(x) ** 2)

    report = audit(eqx.filter_grad(loss), model, x)
    (finding,) = report.findings
    assert finding.rule == "swish" and finding.path == "EqxCNN"
    assert finding.source.split(" ")[0].endswith(f"{THIS_FILE}:{_line_of('# the Equinox call')}")
    assert finding.shapes.endswith("[2, 3, 3]")  # one example's operands
    assert finding.ok is (act is GOOD) and report.ok is (act is GOOD)


PROGRAMS = {
    "scan": lambda f: lambda x: jax.lax.scan(lambda c, a: (c + f(a), None), 0.0, x)[0],
    "checkpoint": lambda f: lambda x: jnp.sum(jax.checkpoint(f)(x)),
    "vmap": lambda f: lambda x: jnp.sum(jax.vmap(f)(x)),
    "cond": lambda f: lambda x: jax.lax.cond(x[0] > 0, lambda x: jnp.sum(f(x)), lambda x: jnp.sum(x), x),
    "while": lambda f: lambda x: jax.lax.while_loop(lambda c: c[1] < 2, lambda c: (c[0] + f(c[0]), c[1] + 1),
                                                    (x, 0))[0].sum(),
}


@pytest.mark.parametrize("where", sorted(PROGRAMS))
def test_a_rule_inside_a_transform_is_found_and_checked(where):
    x = jnp.array([0.7, -0.4, 1.3])
    bad = audit(jax.jit(PROGRAMS[where](BAD)), x)
    assert [(f.rule, f.verdict) for f in bad.findings] == [("swish", "rule wrong")]
    assert audit(PROGRAMS[where](GOOD), x).ok


def test_a_branch_not_taken_is_not_checked():
    x = jnp.array([-0.7, 0.4])
    report = audit(PROGRAMS["cond"](BAD), x)
    assert report.ok and [f.verdict for f in report.findings] == ["not reached"]


def test_calls_of_one_rule_at_the_same_shapes_are_checked_once_and_counted():
    x = jnp.array([0.7, -0.4, 1.3])
    report = audit(lambda x: jnp.sum(BAD(x) + BAD(2 * x) + BAD(x[:2]).sum()), x)
    assert sorted((f.count, f.shapes.split("[")[1]) for f in report.findings) == [(1, "2]"), (2, "3]")]
    assert all(not f.ok for f in report.findings)


def _tiny_jaxcnn_model():
    from jaxcnn import nn

    return nn.serial(nn.Conv(2, (3, 3)), nn.Relu(), nn.MaxPool((2, 2)), nn.Flatten(), nn.Dense(3))


@pytest.mark.parametrize("model, shape", [pytest.param(_tiny_jaxcnn_model, (2, 6, 6, 1), id="tiny"),
                                          pytest.param(models.lenet5, (2, 32, 32, 1), id="lenet5",
                                                       marks=pytest.mark.slow)])
def test_a_jaxcnn_train_step_has_every_op_certified_in_place(model, shape):
    model = model()
    optimizer = train.make_optimizer("sgd", 0.1)
    state = train.init_state(model, optimizer, shape)
    step = jax.jit(train.make_step(train.make_loss(model), optimizer))
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    report = audit(step, state, (x, jnp.arange(shape[0]) % 3))
    assert report.ok, report
    rules = {f.rule for f in report.findings}
    assert {"_conv", "_dense", "_softmax_cross_entropy"} <= rules
    assert all(f.verdict in ("agree", "non-smooth point") for f in report.findings)
    assert all("jaxcnn/ops/" not in f.source for f in report.findings)  # where the layer calls it


def _cube(wrong: str):
    """x³ as a jaxcnn ``custom_rule`` (an op's mechanism): hand VJP and hand JVP, one of them
    wrong (``"bwd"``/``"jvp"``: 3x instead of 3x²) or neither (``""``)."""
    def cube(x):
        return x ** 3

    def bwd(x, g):
        return (g * 3 * (x if wrong == "bwd" else x ** 2),)

    def jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return x ** 3, t * 3 * (x if wrong == "jvp" else x ** 2)

    return custom_rule(cube).defvjp(lambda x: (x ** 3, x), bwd).defjvp(jvp)


@pytest.mark.parametrize("wrong", ["", "bwd", "jvp"])
def test_a_custom_rule_is_checked_in_both_modes_and_a_wrong_bwd_or_jvp_is_caught(wrong):
    x = jnp.array([0.7, -0.4, 1.3])
    report = audit(jax.jit(lambda x: jnp.sum(jnp.sin(_cube(wrong)(x)))), x)
    (finding,) = report.findings
    assert (finding.rule, finding.kind, finding.ok) == ("cube", "custom_rule", not wrong), report
    assert any("JVP vs forward mode" in c for c in finding.checks)
    failed = {c.split(": ")[1].split(" (")[0] for c in finding.checks if c.splitlines()[0].endswith("FAILED")}
    assert failed == {"": set(), "jvp": {"JVP vs forward mode of cube's primal"},
                      "bwd": {"hand VJP vs autodiff of cube's primal, at the program's operands",
                              "hand VJP vs finite differences"}}[wrong], finding.checks
    if wrong:
        assert finding.verdict == "rule wrong" and finding.worst.startswith("x[")


def test_audit_rejects_a_program_that_is_not_callable():
    with pytest.raises(TypeError, match=r"audit: `fn` must be the program to run, a callable .* got tuple"):
        audit((lambda x: x, (1.0,)))


PROGRAM_MODULE = """
import jax, jax.numpy as jnp

def _swish(correct):
    @jax.custom_vjp
    def swish(x):
        return x * jax.nn.sigmoid(x)

    def bwd(x, g):
        s = jax.nn.sigmoid(x)
        return (g * (s + x * s * (1 - s)) if correct else g * s,)

    swish.defvjp(lambda x: (swish(x), x), bwd)
    return swish

GOOD, BAD = _swish(True), _swish(False)

def clean():
    return (lambda x: jnp.sum(GOOD(x)), (jnp.array([0.5, -1.0]),))

def wrong():
    return (lambda x, scale: jnp.sum(BAD(x) * scale), (jnp.array([0.5, -1.0]),), {"scale": 2.0})

def not_a_pair():
    return 3
"""


@pytest.fixture
def programs(tmp_path, monkeypatch):
    (tmp_path / "my_programs.py").write_text(textwrap.dedent(PROGRAM_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_programs"
    sys.modules.pop("my_programs", None)


def test_jaxcnn_audit_exits_0_when_clean_1_on_a_finding_and_writes_json(programs, tmp_path, capsys):
    assert cli.main(["audit", f"{programs}:clean"]) == 0
    assert "0 findings" in capsys.readouterr().out
    out = tmp_path / "report.json"
    assert cli.main(["audit", f"{programs}:wrong", "--json", str(out)]) == 1
    assert "FAIL  swish" in capsys.readouterr().out
    assert json.loads(out.read_text())["findings"][0]["verdict"] == "rule wrong"


@pytest.mark.parametrize("spec, message", [
    ("my_programs", r"must be given as PKG\.MODULE:NAME"),
    ("my_programs:missing", r"my_programs has no function 'missing'"),
    ("my_programs:not_a_pair", r"must return \(fn, args\) or \(fn, args, kwargs\).* got int"),
    ("no_such_module_xyz:f", r"No module named 'no_such_module_xyz'"),
])
def test_jaxcnn_audit_exits_2_with_one_line_on_a_usage_error(programs, capsys, spec, message):
    assert cli.main(["audit", spec]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def _newton_sqrt(correct: bool):
    """√x by Newton's iteration in a while_loop (forward mode only), with a custom_jvp."""
    @jax.custom_jvp
    def sqrt(x):
        return jax.lax.while_loop(lambda c: c[1] < 30, lambda c: ((c[0] + x / c[0]) / 2, c[1] + 1), (x, 0))[0]

    @sqrt.defjvp
    def sqrt_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        y = sqrt(x)
        return y, t / (2 * y) if correct else t / y

    return sqrt


@pytest.mark.parametrize("correct", [True, False])
def test_a_rule_whose_primal_autodiff_cannot_reverse_is_judged_by_finite_differences(correct):
    report = audit(lambda x: jnp.sum(_newton_sqrt(correct)(x)), jnp.array([2.0, 3.0]))
    (finding,) = report.findings
    assert "not reverse-differentiable" in finding.note and "judged by finite differences" in finding.note
    assert finding.ok is correct and finding.verdict == ("agree" if correct else "rule wrong")


def test_a_rule_taking_a_typed_prng_key_is_audited_at_that_key():
    @jax.custom_vjp
    def noisy(x, key):
        return x + 0.1 * jax.random.normal(key, x.shape, x.dtype)

    noisy.defvjp(lambda x, key: (noisy(x, key), None), lambda _, g: (g, None))
    report = audit(lambda x, key: jnp.sum(noisy(x, key) ** 2), jnp.ones(3), jax.random.key(0))
    (finding,) = report.findings
    assert finding.ok and finding.verdict == "agree" and finding.note == "", report
    assert "key<fry>[]" in finding.shapes
