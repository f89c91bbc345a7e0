"""The mutation suite: every deliberately wrong backward rule is caught and blamed on the
argument it breaks; where its mistake cannot show, the mutant passes (so the mutants are
the right rules but for the one mistake, and the checker is not merely strict)."""

import functools

import jax
import numpy as np
import pytest

from jaxcnn import ops
from jaxcnn._certify import mutants, runner
from jaxcnn._certify.forward_mutants import FORWARD_MUTANTS, ForwardMutant
from jaxcnn._certify.registry import REGISTRY

LISTED = [  # the mistakes the issue names, and one per remaining op
    "conv.no_kernel_flip", "conv.no_stride_upsampling", "conv.padding_not_cropped",
    "softmax_cross_entropy.missing_1_over_N", "max_pool.spread_over_window", "max_pool.overwrite_on_overlap",
    "conv.transposed_kernel", "conv.channels_permuted", "conv.bias_not_summed_over_batch",
    # wrong forward rules (issue 33); all but relu's need the ops' hand JVPs
    "conv.tangent_without_conv_x_tw", "batch_norm.tangent_without_statistics", "max_pool.tangent_to_last_maximum",
    "relu.tangent_other_convention_at_zero",
]


def test_every_op_has_a_mutant_and_the_listed_mistakes_are_there():
    assert {m.op for m in mutants.MUTANTS.values()} == set(REGISTRY)
    assert set(LISTED) <= set(mutants.MUTANTS)


# the listed mutants by default; all of them with -m slow, as `jaxcnn verify --mutants` runs them
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name in LISTED else (pytest.mark.slow,)) for name in sorted(mutants.MUTANTS)])
def test_mutant_is_caught_blamed_on_its_argument_and_diagnosed(name):
    o = mutants.run_one(mutants.MUTANTS[name], 0)
    assert o.ok, str(o)
    assert o.blamed == (o.mutant.argument,)
    assert not o.record.result[_first_leaf(o)].ok
    # the verdict: the rule is wrong, except at a kink a sample pins on purpose, where a
    # different valid choice is "non-smooth" (routing to every tied maximum is no valid one);
    # a wrong JVP beside a right VJP fails only under the forward check that caught it
    valid_at_kink = o.record.kink and name not in NO_SUBGRADIENT
    wrong = f"fails only under {o.record.transform}" if isinstance(o.mutant, ForwardMutant) else "rule wrong"
    assert o.record.verdict == ("non-smooth point" if valid_at_kink else wrong), str(o)


NO_SUBGRADIENT = {"max_pool.routes_to_every_tied_maximum"}


def test_a_tie_routed_to_every_maximum_is_judged_jointly_and_the_first_maximum_is_not():
    name = "max_pool.routes_to_every_tied_maximum"
    o = mutants.run_one(mutants.MUTANTS[name])
    assert o.ok and o.record.kink and o.record.verdict == "rule wrong", str(o)
    joint = o.record.diagnosis["x"].worst[0]
    assert joint.index == ("jointly", 2) and joint.rule == pytest.approx(2 * joint.central), str(o)
    # under finite differences a pinned kink must be non-smooth: the right rule is, the mutant is not
    assert runner.check_sample("max_pool", o.record.index, "float64", "finite differences").ok
    record = mutants.reproduce(name, o.record.index, "finite differences")
    assert not record.ok and record.verdict == "rule wrong", str(record)


def _first_leaf(outcome):
    return next(r.name for r in outcome.record.result.arguments if r.name.split("[")[0] == outcome.mutant.argument)


@pytest.mark.parametrize("name, index", [
    ("max_pool.overwrite_on_overlap", 0),  # 2×2/2: no overlap, = and += agree
    ("mean_pool.overwrite_on_overlap", 0),
    ("im2col.overwrite_on_overlap", 3),  # window 2, stride 3
    ("conv.no_stride_upsampling", 0),  # stride 1
    ("conv.padding_not_cropped", 0),  # VALID
    ("softmax_cross_entropy.missing_1_over_N", 5),  # control: stays caught (N = 3)
])
def test_a_mutant_passes_where_its_mistake_cannot_show(name, index):
    m = mutants.MUTANTS[name]
    sample = REGISTRY[m.op].samples(np.random.default_rng(0))[index]
    record = mutants.reproduce(name, index)
    assert record.ok != m.applies(sample), str(record)


def test_the_report_of_a_caught_mutant_reproduces_it(capsys):
    record = mutants.run_one(mutants.MUTANTS["conv.padding_not_cropped"]).record
    exec(record.snippet, {})
    out = capsys.readouterr().out
    assert "FAILED" in out and "rule wrong" in out and f"conv.padding_not_cropped #{record.index}" in out


def test_the_mutation_table_counts_the_catches():
    outcomes = mutants.run(names=["relu", "dense"])
    table = mutants.format_table(outcomes)
    assert table.count("caught") == len(outcomes) + 1  # the header's column and one per row
    assert "MISSED" not in table and "WRONG ARGUMENT" not in table
    missed = mutants.format_table([mutants.Outcome(outcomes[0].mutant, None, 3)])
    assert "MISSED" in missed and "none of 3" in missed


def test_a_mutant_keeps_the_real_forward_and_the_other_arguments_rules(rng):
    m = mutants.MUTANTS["conv.no_kernel_flip"]
    x, w, b = rng.normal(size=(2, 6, 3)), rng.normal(size=(3, 3, 2)), rng.normal(size=2)
    mutated = m.build()
    np.testing.assert_allclose(mutated(x, w, b, stride=2), ops.conv(x, w, b, stride=2))
    record = runner.check_sample("conv", 0, "float64", "eager", op=mutated)
    assert record.result["w"].ok and record.result["b"].ok and not record.result["x"].ok


# --------------------------------------------------------------------------- wrong forward rules


def _with_reference_jvp(name):
    """``ops.<name>`` with the reference's JVP as its forward rule (its VJP the real one): a
    stand-in for the hand JVP, so that the forward mutants' checks run without it."""
    from jaxcnn import reference
    from jaxcnn.ops._rule import custom_rule

    real, ref = getattr(ops, name), getattr(reference, name)

    @functools.wraps(real)
    def op(*args, **settings):
        bound, bound_ref = functools.partial(real, **settings), functools.partial(ref, **settings)

        def fun(*a):
            return bound(*a)

        rule = custom_rule(fun).defvjp(lambda *a: (bound(*a), a), lambda a, g: tuple(jax.vjp(bound, *a)[1](g)))
        return rule.defjvp(lambda p, t: jax.jvp(bound_ref, tuple(p), tuple(t)))(*args)

    return op


def test_the_forward_mutants_are_the_three_the_issue_names_and_relus_convention():
    assert [m.name for m in FORWARD_MUTANTS] == LISTED[-4:]
    assert all(mutants.MUTANTS[m.name] is m for m in FORWARD_MUTANTS)


@pytest.mark.parametrize("name", [m.name for m in FORWARD_MUTANTS])
def test_a_forward_mutant_is_caught_and_blamed_with_stand_in_jvps_and_the_right_rule_passes(name, monkeypatch):
    m = mutants.MUTANTS[name]
    if m.op != "relu":  # relu has its hand JVP already
        monkeypatch.setattr(ops, m.op, _with_reference_jvp(m.op))
    o = mutants.run_one(m)
    assert o.ok and o.blamed == (m.argument,) and o.record.transform == "adjoint", str(o)
    assert o.record.result.forward.ok  # the primal is the real one
    # the same check of the right rule passes: the adjoint identity is not merely strict
    right = runner.check_sample(m.op, o.record.index, "float64", "adjoint", op=getattr(ops, m.op))
    assert right.ok, str(right)


def test_a_forward_mutant_keeps_the_real_forward_and_vjp_and_passes_where_its_mistake_cannot_show(rng, monkeypatch):
    m = mutants.MUTANTS["conv.tangent_without_conv_x_tw"]
    x, w, b = rng.normal(size=(2, 6, 3)), rng.normal(size=(3, 3, 2)), rng.normal(size=2)
    np.testing.assert_allclose(m.build()(x, w, b, stride=2), ops.conv(x, w, b, stride=2))
    assert runner.check_sample("conv", 0, "float64", "eager", op=m.build()).ok  # reverse mode: the lectures' VJP
    monkeypatch.setattr(ops, "max_pool", _with_reference_jvp("max_pool"))
    tie = mutants.MUTANTS["max_pool.tangent_to_last_maximum"]
    samples = REGISTRY["max_pool"].samples(np.random.default_rng(0))
    assert not tie.applies(samples[0]) and tie.applies(samples[6])
    assert mutants.reproduce(tie.name, 0).ok  # no tie: the first and last maximum are the same element
    assert not mutants.reproduce(tie.name, 6).ok
