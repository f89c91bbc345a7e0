"""Checkpoints without pickle: one ``.npz`` holding every leaf of a pytree plus a JSON
header (leaf paths, shapes, dtypes, metadata).

Saving is atomic: the file is written next to its destination under a temporary name
and renamed over it, so a crash never leaves half a checkpoint behind. Loading needs a
template pytree of the same structure (e.g. a freshly initialised train state) and
checks every leaf's path, shape and dtype against it; a truncated, foreign or
mismatching file raises ``ValueError`` and changes nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from typing import Any

import jax
import numpy as np

FORMAT = "jaxcnn-checkpoint-v1"


def save(path: str, tree: Any, metadata: dict | None = None) -> None:
    """Atomically writes ``tree`` (arrays and scalars) and JSON-able ``metadata`` to ``path``."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    arrays = {f"leaf_{i}": np.asarray(jax.device_get(leaf)) for i, (_, leaf) in enumerate(leaves)}
    header = {
        "format": FORMAT,
        "paths": [jax.tree_util.keystr(p) for p, _ in leaves],
        "shapes": [list(a.shape) for a in arrays.values()],
        "dtypes": [str(a.dtype) for a in arrays.values()],
        "metadata": metadata or {},
    }
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_header(path: str) -> dict:
    """The JSON header of a checkpoint (its metadata under ``"metadata"``)."""
    with _open(path) as npz:
        return _header(path, npz)


def load(path: str, like: Any) -> tuple[Any, dict]:
    """Reads a checkpoint into the structure of ``like``; returns ``(tree, metadata)``."""
    with _open(path) as npz:
        header = _header(path, npz)
        template = jax.tree_util.tree_leaves_with_path(like)
        paths = [jax.tree_util.keystr(p) for p, _ in template]
        if paths != header["paths"]:
            missing = sorted(set(paths) - set(header["paths"]))[:3]
            extra = sorted(set(header["paths"]) - set(paths))[:3]
            raise ValueError(
                f"{path}: checkpoint does not match the expected structure "
                f"({len(header['paths'])} leaves saved, {len(paths)} expected; missing {missing}, "
                f"unexpected {extra}). Was it written for another model or optimiser?"
            )
        leaves = []
        for i, ((p, ref), shape, dtype) in enumerate(zip(template, header["shapes"], header["dtypes"])):
            ref_shape = tuple(np.shape(ref))
            ref_dtype = str(ref.dtype if hasattr(ref, "dtype") else np.asarray(ref).dtype)
            if tuple(shape) != ref_shape or dtype != ref_dtype:
                raise ValueError(
                    f"{path}: leaf {jax.tree_util.keystr(p)} is {dtype}{tuple(shape)} in the checkpoint "
                    f"but {ref_dtype}{ref_shape} is expected."
                )
            try:
                leaves.append(npz[f"leaf_{i}"])
            except (KeyError, ValueError, zipfile.BadZipFile, OSError) as e:
                raise ValueError(f"{path}: leaf {i} is missing or corrupt ({e}).") from e
    tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)
    return tree, header["metadata"]


@contextlib.contextmanager
def _open(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint.")
    with open(path, "rb") as f:
        try:
            npz = np.load(f, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable jaxcnn checkpoint (truncated or foreign file: {e}).") from e
        with npz:
            yield npz


def _header(path: str, npz) -> dict:
    try:
        header = json.loads(bytes(npz["__header__"]).decode())
    except (KeyError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a jaxcnn checkpoint (no valid header: {e}).") from e
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {header.get('format')!r}; expected {FORMAT!r}.")
    return header
