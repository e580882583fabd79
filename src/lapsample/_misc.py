"""Small private helpers shared by the modules of lapsample."""

import math
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree, Shaped


class TreeRaveller(eqx.Module):
    """Flattens a PyTree of arrays to one vector and back.

    Unlike `jax.flatten_util.ravel_pytree`, which returns a fresh closure, this is a
    Module with hashable static metadata only, so it can be a field of other Modules
    without causing recompilation.
    """

    treedef: Any = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    dtypes: tuple[Any, ...] = eqx.field(static=True)

    def __init__(self, tree: PyTree[ArrayLike]):
        leaves, treedef = jtu.tree_flatten(tree)
        self.treedef = treedef
        self.shapes = tuple(tuple(np.shape(x)) for x in leaves)
        self.dtypes = tuple(jnp.result_type(x) for x in leaves)

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def dtype(self):
        if len(self.dtypes) == 0:
            return jnp.result_type(float)
        return jnp.result_type(*self.dtypes)

    def ravel(self, tree: PyTree[ArrayLike]) -> Shaped[Array, " n"]:
        leaves = jtu.tree_leaves(tree)
        if len(leaves) == 0:
            return jnp.zeros((0,), self.dtype)
        return jnp.concatenate(
            [jnp.ravel(jnp.asarray(x)).astype(self.dtype) for x in leaves]
        )

    def unravel(self, flat: Shaped[Array, " n"]) -> PyTree[Array]:
        leaves = []
        start = 0
        for shape, dtype in zip(self.shapes, self.dtypes):
            size = math.prod(shape)
            leaves.append(flat[start : start + size].reshape(shape).astype(dtype))
            start += size
        return jtu.tree_unflatten(self.treedef, leaves)

    def same_structure(self, tree: PyTree[ArrayLike]) -> bool:
        leaves, treedef = jtu.tree_flatten(tree)
        return treedef == self.treedef and all(
            tuple(np.shape(x)) == s for x, s in zip(leaves, self.shapes)
        )


def default_tolerance(dtype) -> float:
    """A relative tolerance that suits the floating dtype: `eps ** 0.75`.

    float64 gives about 1.8e-12 and float32 about 6.4e-6.
    """
    return float(jnp.finfo(dtype).eps) ** 0.75


def tree_where(pred, true: PyTree, false: PyTree) -> PyTree:
    return jtu.tree_map(lambda t, f: jnp.where(pred, t, f), true, false)


def is_inexact_array(x) -> bool:
    return eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def closure_convert(fn: Callable, *example_args) -> Callable:
    """Closure-convert a user callable so traced closed-over values become inputs."""
    return eqx.filter_closure_convert(fn, *example_args)


def all_finite(tree: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree)]
    if len(leaves) == 0:
        return jnp.array(True)
    return jnp.stack(leaves).all()


def stop_gradient_tree(tree: PyTree) -> PyTree:
    return jtu.tree_map(jax.lax.stop_gradient, tree)


def concrete_value(x) -> np.ndarray | None:
    """`x` as a NumPy array, or `None` while it is being traced (values are checked
    only when they are known)."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


LOW_PRECISION_MESSAGE = (
    "{name} is {dtype}. Laplace marginals need float64: the Hessians of latent "
    "models are often ill-conditioned (condition numbers of 1e6 to 1e9 are "
    "common), and with float32's ~7 significant digits the mode, the "
    "log-determinant and the implicit gradient can lose most of their digits. "
    "That shows up as failed inner solves, divergences, or draws that are wrong "
    "without any sign. Enable float64 with "
    '`jax.config.update("jax_enable_x64", True)` at the top of the script, before '
    "creating any array."
)


def warn_if_low_precision(tree: PyTree, name: str, stacklevel: int = 3) -> None:
    """A `UserWarning` when a floating leaf of `tree` has fewer than 64 bits."""
    for leaf in jtu.tree_leaves(tree):
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.inexact) and jnp.finfo(dtype).bits < 64:
            warnings.warn(
                LOW_PRECISION_MESSAGE.format(name=name, dtype=dtype),
                UserWarning,
                stacklevel=stacklevel,
            )
            return
