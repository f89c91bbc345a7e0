"""How ``jaxcnn verify`` (and the test suite) compile: JAX's persistent compilation cache,
the XLA flag sets a certificate can be taken under (XLA's defaults unless asked otherwise),
and the header that names them (docs/performance.md, docs/verifying.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional, Sequence

import jax


def use_compilation_cache(directory: Optional[str] = None) -> str:
    """Switches on JAX's persistent compilation cache for this process and the workers it
    starts, keeping every program however small (a sweep compiles thousands of small ones;
    a second run loads them instead of compiling them). Returns the directory: ``directory``,
    else ``$JAXCNN_CACHE_DIR``, else ``jaxcnn/jax`` under ``$XDG_CACHE_HOME`` (``~/.cache``).
    A directory the user gave JAX (``$JAX_COMPILATION_CACHE_DIR``) is kept."""
    directory = (directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.environ.get("JAXCNN_CACHE_DIR")
                 or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxcnn", "jax"))
    settings = {"jax_compilation_cache_dir": directory, "jax_persistent_cache_min_compile_time_secs": 0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)  # spawned workers read these when they import JAX
    return directory


#: XLA flags that compile the sweep's thousands of tiny programs about twice as fast (no
#: LLVM optimisation, the classic fusion emitters): the same HLO; elementwise functions may
#: round differently (float32 tanh by an ulp). ``jaxcnn verify`` certifies under XLA's
#: defaults and uses these only with ``--fast-compile``; the test suite uses them for its
#: own time (tests/conftest.py). See docs/performance.md.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")

#: The compiler configurations ``jaxcnn verify --compilers`` can certify under, each the XLA
#: flags it adds to ``$XLA_FLAGS``: XLA's defaults; the fast-compile flags; XLA:CPU's
#: XNNPACK and YNNPACK fusions off (the library calls XLA:CPU makes by default); oneDNN on.
FLAG_SETS = {
    "default": (),
    "fast": FAST_COMPILE_FLAGS,
    "no-xnn-fusions": ("--xla_cpu_use_xnnpack=false", "--xla_cpu_experimental_xnn_fusion_type=",
                       "--xla_cpu_experimental_ynn_fusion_type="),
    "onednn": ("--xla_cpu_use_onednn=true",),
}


def flag_set(name: str) -> tuple[str, ...]:
    """The flags of the named :data:`FLAG_SETS` entry.

    Raises:
      ValueError: no such flag set.
    """
    if name not in FLAG_SETS:
        raise ValueError(f"--compilers: unknown flag set {name!r}; choose from {', '.join(FLAG_SETS)} "
                         f"(comma-separated, e.g. --compilers default,fast).")
    return FLAG_SETS[name]


def with_flags(flags: Sequence[str], current: Optional[str] = None) -> str:
    """``$XLA_FLAGS`` (or ``current``) with ``flags`` added, those it sets already kept as they are."""
    current = os.environ.get("XLA_FLAGS", "") if current is None else current
    given = {f.split("=")[0] for f in current.split()}
    return " ".join([current, *(f for f in flags if f.split("=")[0] not in given)]).strip()


def use_fast_compilation() -> tuple[str, ...]:
    """Adds :data:`FAST_COMPILE_FLAGS` to ``$XLA_FLAGS`` (those not set already) for this
    process and the workers it starts; returns those it added. Takes effect only before
    JAX's backend starts."""
    current = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = with_flags(FAST_COMPILE_FLAGS, current)
    return tuple(f for f in os.environ["XLA_FLAGS"].split() if f not in current.split())


def backend_started() -> bool:
    """Whether JAX's backend has started in this process (``$XLA_FLAGS`` is read then, once)."""
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def check_flags(flags: Sequence[str], name: str = "") -> None:
    """Makes sure this jaxlib accepts ``$XLA_FLAGS`` with ``flags`` added, in a fresh process
    (XLA ends a process whose ``$XLA_FLAGS`` names a flag it does not know).

    Raises:
      ValueError: the process fails; the message quotes XLA's complaint.
    """
    env = dict(os.environ, XLA_FLAGS=with_flags(flags))
    code = "import jax.numpy as jnp; (jnp.ones(3) @ jnp.ones(3)).block_until_ready()"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        complaint = next((line.split("] ", 1)[-1] for line in lines if "XLA_FLAGS" in line), lines[-1] if lines else "")
        raise ValueError(f"--compilers{' ' + name if name else ''}: this jaxlib ({jax.__version__}) does not run "
                         f"with XLA_FLAGS={env['XLA_FLAGS']!r}: {complaint}")


def describe(name: str = "default", added: Sequence[str] = (), xla_flags: Optional[str] = None) -> dict:
    """The compiler configuration certified under: jax and jaxlib versions, the backend, the
    XLA flags in force (``xla_flags``, else ``$XLA_FLAGS``), those of them jaxcnn ``added``,
    and the name of the flag set (:data:`FLAG_SETS`)."""
    import jaxlib

    flags = (os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags).split()
    return {"compilation": name, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "xla_flags": flags, "set_by_jaxcnn": list(added)}


def header(config: dict) -> str:
    """The certificate's first line: the compiler configuration (:func:`describe`)."""
    flags = " ".join(config["xla_flags"]) or "none"
    mine = f"; jaxcnn set {' '.join(config['set_by_jaxcnn'])}" if config["set_by_jaxcnn"] else ""
    default = ", XLA's default compilation" if not config["xla_flags"] else ""
    return (f"compiler: {config['compilation']} (jax {config['jax']}, jaxlib {config['jaxlib']}, backend "
            f"{config['backend']}); XLA_FLAGS: {flags}{default}{mine}")
