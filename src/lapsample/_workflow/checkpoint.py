"""Checkpoint files of `lapsample.sample`: a NumPy `.npz` archive (no pickle) with a
JSON header.

Layout: `__header__` holds UTF-8 JSON bytes with a magic string, a format version,
the run's settings, a fingerprint of the model and the progress counters; every
other entry is a plain array (`carry/<i>`, `draws/<i>`, `warmup/<i>`, `positions/<i>`,
`key_data`). Files are written atomically: to a temporary file in the same
directory, flushed and fsynced, then renamed over the target with `os.replace`.
"""

import errno
import hashlib
import json
import os
import re
import tempfile
import types
import zipfile
from typing import Any

import jax
import jax.random as jr
import jax.tree_util as jtu
import numpy as np


MAGIC = "lapsample-checkpoint"
VERSION = 1
_HEADER = "__header__"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, not a lapsample
    checkpoint, from an incompatible version, or written for a different model."""


# --------------------------------------------------------------------------------
# A stable description of a model: structure, array shapes/dtypes, data hashes.
# --------------------------------------------------------------------------------

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# Version 2 names functions, callables and types without their module: the same
# model imported from another file (`from run_script import marginal`) has the same
# fingerprint. Checkpoints without a version were written with version 1.
FINGERPRINT_VERSION = 2


def _name(obj, legacy: bool) -> str:
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if not legacy:
        return qualname
    return f"{getattr(obj, '__module__', None) or ''}.{qualname}"


def _describe_leaf(leaf, legacy: bool, depth: int = 0) -> Any:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            # A typed PRNG key: its implementation and its raw bits.
            impl = str(jr.key_impl(leaf))
            leaf = jr.key_data(leaf)
        else:
            impl = None
        array = np.asarray(leaf)
        digest = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        description = ["array", list(array.shape), str(array.dtype), digest]
        return description if impl is None else ["key", impl, *description[1:]]
    if isinstance(leaf, bool | int | float | str | complex) or leaf is None:
        return [type(leaf).__name__, repr(leaf)]
    if isinstance(leaf, types.FunctionType):
        # A plain function: its name, its code, and what it closes over (data held
        # in a closure is part of the model).
        code = leaf.__code__
        code_hash = hashlib.sha256(
            code.co_code + _ADDRESS.sub("", repr(code.co_consts)).encode()
        ).hexdigest()
        cells = []
        if depth < 3:
            for cell in leaf.__closure__ or ():
                try:
                    contents = cell.cell_contents
                except ValueError:  # an empty cell
                    contents = None
                cells.append(
                    [
                        _describe_leaf(x, legacy, depth + 1)
                        for x in jtu.tree_leaves(contents)
                    ]
                )
        return ["function", _name(leaf, legacy), code_hash, cells]
    if callable(leaf):
        return ["callable", _name(leaf, legacy)]
    return ["object", _name(type(leaf), legacy)]


def model_fingerprint(model, legacy: bool = False) -> str:
    """A SHA-256 over the model's PyTree structure (types and static fields, with
    memory addresses removed), and every leaf: arrays (and typed PRNG keys, by their
    bits) by shape, dtype and a hash of their bytes; functions by qualified name, a
    hash of their bytecode and what their closures hold; other callables by
    qualified name; scalars by value. Names leave out the module (`legacy=True`:
    with it, as checkpoints without a `fingerprint_version` were written).

    It catches a different structure or different data held in the model before
    anything compiles; `resume` then recomputes the log density at the checkpoint,
    which catches what no fingerprint of Python code can see (globals, helper
    functions, methods)."""
    leaves, treedef = jtu.tree_flatten(model)
    description = {
        "structure": _ADDRESS.sub("", str(treedef)),
        "leaves": [_describe_leaf(leaf, legacy) for leaf in leaves],
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------
# PyTree structures of builtin containers as JSON.
# --------------------------------------------------------------------------------


def encode_structure(tree) -> Any:
    """A JSON description of a PyTree made of dicts (string keys), lists, tuples,
    `None` and array leaves. Raises `TypeError` for any other node type."""
    if tree is None:
        return {"node": "none"}
    if type(tree) is dict:
        keys = sorted(tree)
        if not all(isinstance(k, str) for k in keys):
            raise TypeError("dict keys must be strings")
        return {
            "node": "dict",
            "keys": keys,
            "children": [encode_structure(tree[k]) for k in keys],
        }
    if type(tree) in (list, tuple):
        return {
            "node": type(tree).__name__,
            "children": [encode_structure(x) for x in tree],
        }
    if jtu.treedef_is_leaf(jtu.tree_structure(tree)):
        return {"node": "leaf"}
    raise TypeError(f"unsupported PyTree node {type(tree).__qualname__}")


def decode_structure(spec, leaves: list) -> Any:
    """Rebuild the PyTree described by `spec` from `leaves` (consumed in order)."""
    leaves = list(leaves)

    def build(s):
        node = s["node"]
        if node == "none":
            return None
        if node == "leaf":
            return leaves.pop(0)
        children = [build(c) for c in s["children"]]
        if node == "dict":
            return dict(zip(s["keys"], children))
        if node == "list":
            return children
        if node == "tuple":
            return tuple(children)
        raise CheckpointError(f"unknown node type {node!r} in the checkpoint")

    return build(spec)


# --------------------------------------------------------------------------------
# Reading and writing.
# --------------------------------------------------------------------------------


def write(path: str | os.PathLike, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write a checkpoint atomically: a temporary file beside `path`, fsync, then
    `os.replace`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    header = dict(
        header, magic=MAGIC, version=VERSION, fingerprint_version=FINGERPRINT_VERSION
    )
    payload = {_HEADER: np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
    payload.update(arrays)
    existed = os.path.exists(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
        )
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise _write_failed(path, e, existed) from e
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass


def _write_failed(path: str, error: OSError, existed: bool) -> OSError:
    reason = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        reason = "the disk is full"
    if existed:
        after = (
            f"The previous checkpoint in {path} is still valid and unchanged: free "
            f"some space (or fix the cause) and continue the run with "
            f"`lapsample.resume({path!r}, model)`."
        )
    else:
        after = "No checkpoint was written: fix the cause and start the run again."
    return OSError(
        error.errno, f"Writing the checkpoint {path} failed: {reason}. {after}"
    )


def _not_a_checkpoint(path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path!s} is not a usable lapsample checkpoint: {reason}. The file was left "
        "unchanged."
    )


def read(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate a checkpoint; every entry is loaded eagerly so that a
    truncated file fails here with a `CheckpointError`, not later."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path!s}.")
    if not zipfile.is_zipfile(path):
        raise _not_a_checkpoint(
            path,
            "it is not a checkpoint archive (it may be truncated, e.g. copied while "
            "being written, or another kind of file)",
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if _HEADER not in names:
                raise _not_a_checkpoint(path, "it has no lapsample header")
            raw_header = archive[_HEADER]
            arrays = {name: archive[name] for name in names if name != _HEADER}
    except CheckpointError:
        raise
    except Exception as e:
        raise _not_a_checkpoint(
            path,
            "it could not be read as a checkpoint archive (it may be truncated, "
            f"e.g. copied while being written, or another kind of file): {e}",
        ) from e
    try:
        header = json.loads(bytes(raw_header).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_a_checkpoint(path, f"its header is not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise _not_a_checkpoint(path, "its header does not carry the lapsample magic")
    if header.get("version") != VERSION:
        raise _not_a_checkpoint(
            path,
            f"it has format version {header.get('version')!r} and this lapsample "
            f"reads version {VERSION}",
        )
    return header, arrays


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` holds a readable lapsample checkpoint."""
    try:
        read(path)
    except (CheckpointError, FileNotFoundError):
        return False
    return True


def preflight(path: str, overwrite: bool, initial_position) -> dict:
    """Check, before anything compiles, that a new run may write its checkpoint at
    `path` (after `check_path`, with the lock held); returns the encoded structure
    of `initial_position` for the header."""
    if os.path.exists(path):
        if not is_checkpoint(path):
            raise FileExistsError(
                f"{path} exists and is not a lapsample checkpoint; it will "
                "not be overwritten. Choose another `checkpoint` path."
            )
        if not overwrite:
            raise FileExistsError(
                f"The checkpoint {path} exists. Continue it with "
                f"`lapsample.resume({path!r}, model)`, or pass "
                "`overwrite=True` to start afresh."
            )
    try:
        return encode_structure(initial_position)
    except TypeError as e:
        raise TypeError(
            "Checkpoints need `initial_position` made of arrays in dicts (with "
            f"string keys), lists and tuples: {e}."
        ) from None
