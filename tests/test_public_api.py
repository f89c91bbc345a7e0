"""The public surface: the lists that must agree, and the modules a user reaches from ``import jaxcnn``."""

import pkgutil
import subprocess
import sys

import pytest

import jaxcnn
from jaxcnn import ops, reference
from jaxcnn._certify.registry import REGISTRY, SPECIALISATIONS


def test_ops_references_and_the_verify_registry_list_the_same_ops():
    assert sorted(ops.__all__) == sorted(reference.__all__)
    types = {name for name in ops.__all__ if isinstance(getattr(ops, name), type)}
    functions = {name for name in ops.__all__ if callable(getattr(ops, name))} - types
    constants = set(ops.__all__) - functions - types
    assert constants == {"LENET5_C3_TABLE"} and types == {"ConvPlan", "ConvProblem"}  # conv's `method=` plans
    for name in constants | types:
        assert getattr(reference, name) is getattr(ops, name)
    # every op is certified by `jaxcnn verify`, directly or as a specialisation of a registered op
    assert functions == set(REGISTRY) | set(SPECIALISATIONS)
    assert set(REGISTRY).isdisjoint(SPECIALISATIONS) and set(SPECIALISATIONS.values()) <= set(REGISTRY)
    for name, info in REGISTRY.items():
        assert info.op is getattr(ops, name) and info.reference is getattr(reference, name)
        assert info.op is not info.reference


def test_ops_exports_functions_never_modules():
    # implementation modules are private (`jaxcnn/ops/_conv.py`, ...): `jaxcnn.ops.conv` is the function
    public_modules = [m.name for m in pkgutil.iter_modules(ops.__path__) if not m.name.startswith("_")]
    assert public_modules == []
    for name in ops.__all__:
        assert not isinstance(getattr(ops, name), type(sys)), name
        if callable(getattr(ops, name)):
            assert getattr(ops, name).__module__.startswith("jaxcnn.ops._"), name


def test_import_jaxcnn_reaches_every_subpackage_lazily():
    code = (
        "import sys, jaxcnn\n"
        "lazy = ['checkpoint', 'data', 'distributed', 'interop', 'launch', 'models', 'nn', 'ops', 'reference',\n"
        "        'reporting', 'train', 'verify']\n"
        "assert not [m for m in lazy if 'jaxcnn.' + m in sys.modules], sorted(sys.modules)\n"
        "assert 'jax' not in sys.modules  # the command line prints before JAX loads\n"
        "print(jaxcnn.nn.Dense.__name__, jaxcnn.models.lenet5.__name__, jaxcnn.train.fit.__name__,\n"
        "      jaxcnn.data.seesaw.__name__, jaxcnn.reporting.save_metrics.__name__,\n"
        "      jaxcnn.distributed.initialize.__name__, jaxcnn.launch.launch.__name__,\n"
        "      jaxcnn.interop.from_torch_state_dict.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Dense", "lenet5", "fit", "seesaw", "save_metrics", "initialize", "launch",
                           "from_torch_state_dict"]
    assert set(jaxcnn.__all__) >= {"ops", "reference", "verify", "nn", "models", "train", "data"}
    assert "train" in dir(jaxcnn)


def test_unknown_attribute_of_jaxcnn_raises_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_module'"):
        jaxcnn.no_such_module  # noqa: B018
