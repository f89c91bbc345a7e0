"""Test configuration: 64-bit types are available (tests always name their dtype).

Sample inputs away from kinks come from the verify registry's helpers
(:func:`jaxcnn._certify.registry.away_from_zero`, :func:`~jaxcnn._certify.registry.distinct`), one set for both.
"""

import functools
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest
from hypothesis import settings

jax.config.update("jax_enable_x64", True)


def pytest_configure(config):
    """Compiling is most of the suite's time, so, as ``jaxcnn verify --fast-compile`` does (docs/performance.md):

    * the two fast-compile XLA flags (:data:`jaxcnn._certify.compilation.FAST_COMPILE_FLAGS`: the
      same HLO, no LLVM optimisation), unless ``JAXCNN_FAST_COMPILE=0``;
    * one persistent compilation cache per run, in a temporary folder shared by the xdist
      workers and every process a test starts (a program compiled again, the same network
      built afresh by another test or script, is loaded instead), unless ``JAXCNN_NO_CACHE=1``.
      Nothing is written to the user's ``~/.cache``.

    Both reach the processes tests start through the environment."""
    from jaxcnn._certify import compilation as suite

    if os.environ.get("JAXCNN_FAST_COMPILE", "1") != "0":
        suite.use_fast_compilation()
    if not hasattr(config, "workerinput"):  # the controller, or the only process
        os.environ["JAXCNN_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxcnn-test-xla-")
    if not os.environ.get("JAXCNN_NO_CACHE"):
        suite.use_compilation_cache(os.environ["JAXCNN_TEST_XLA_CACHE"])


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop("JAXCNN_TEST_XLA_CACHE"), ignore_errors=True)


FLOAT_DTYPES = ["float32", "float64"]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def covering(name_a, values_a, name_b, values_b, ids_b=None):
    """``pytest.mark.parametrize`` over ``values_a × values_b`` in which the default suite runs
    a covering diagonal (every value of each list at least once, ``max(len)`` cases) and the
    rest of the cross product is marked ``slow`` (``python -m pytest -m slow`` runs it).

    ``name_b`` may name several arguments (``"x_shape,w_shape,settings"``), each value of
    ``values_b`` then being their tuple; ids read ``"<id of b>-<a>"``.
    """
    diagonal = {(k % len(values_a), k % len(values_b)) for k in range(max(len(values_a), len(values_b)))}
    params = []
    for j, b in enumerate(values_b):
        for i, a in enumerate(values_a):
            params.append(pytest.param(
                a, *(b if "," in name_b else (b,)), id=f"{ids_b[j] if ids_b else b}-{a}",
                marks=() if (i, j) in diagonal else (pytest.mark.slow,)))
    return pytest.mark.parametrize(f"{name_a},{name_b}", params)


def examples(few, many):
    """Runs a ``@given`` property as a test of ``few`` examples in the default suite and one of
    ``many`` marked ``slow``: each example compiles its own shapes. Place above ``@given``."""
    def decorate(prop):
        @functools.wraps(prop)
        @pytest.mark.parametrize("examples", [pytest.param(few, id=f"{few}-examples"),
                                              pytest.param(many, id=f"{many}-examples", marks=pytest.mark.slow)])
        def test(examples):
            settings(max_examples=examples, deadline=None)(prop)()

        del test.__wrapped__  # pytest reads the signature: the test takes `examples`, not the property's draws
        return test
    return decorate
