"""How ``jaxcnn verify`` (and the test suite) compile: JAX's persistent compilation cache
and XLA flags for the sweep's thousands of tiny programs (docs/performance.md)."""

from __future__ import annotations

import os
from typing import Optional

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
#: round differently (float32 tanh by an ulp), far inside the verifier's tolerances.
#: ``jaxcnn verify`` adds them unless ``$JAXCNN_FAST_COMPILE=0``; see docs/performance.md.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def use_fast_compilation() -> str:
    """Adds :data:`FAST_COMPILE_FLAGS` to ``$XLA_FLAGS`` (those not set already) for this
    process and the workers it starts. Takes effect only before JAX's first compilation."""
    current = os.environ.get("XLA_FLAGS", "")
    added = [f for f in FAST_COMPILE_FLAGS if f.split("=")[0] not in current]
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return os.environ["XLA_FLAGS"]
