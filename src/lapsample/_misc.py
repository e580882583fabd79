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


def max_abs(x):
    return jnp.max(jnp.abs(x), initial=0.0)


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


class NegativeLogJoint(eqx.Module):
    """`(theta_flat, phi) -> -log_joint(unravel(theta_flat), phi)`: the flat
    objective of the inner solve, the Hessian strategies and the detection (a
    Module, so the same model gives the same compiled code)."""

    log_joint: Callable
    raveller: TreeRaveller

    def __call__(self, theta_flat, phi):
        return -self.log_joint(self.raveller.unravel(theta_flat), phi)


def default_tolerance(dtype) -> float:
    """A relative tolerance that suits the floating dtype: `eps ** 0.75`.

    float64 gives about 1.8e-12 and float32 about 6.4e-6.
    """
    return float(jnp.finfo(dtype).eps) ** 0.75


def default_step_tolerance(dtype) -> float:
    """Newton's default `xtol` (stop when `max|step| <= xtol·(1 + max|theta|)`):
    `max(1e-8, eps ** (2/3))`, i.e. 1e-8 in float64 and about 2.4e-5 in float32.

    The solve returns the iterate whose own Newton step was negligible, so that
    step is its error in `theta`, and the factor at it is the one the marginal
    uses. The objective's error is second order in it, the log-determinant's
    (and the gradient's) first order: on the 911-cell disease map, 1e-8 left the
    log marginal within 3e-8 nats and its gradient within 3e-8 (relative) of a
    1e-14 solve, far below what moves an acceptance probability, and saved the
    confirming factorisation that a tighter tolerance needs from a warm start
    (3.3 → 2.8 Newton steps per leapfrog evaluation). Pass `xtol=` for more
    digits: Newton converges quadratically, so each tenfold tightening costs at
    most one more iteration.
    """
    eps = float(jnp.finfo(dtype).eps)
    return max(1e-8, eps ** (2 / 3))


def tree_where(pred, true: PyTree, false: PyTree) -> PyTree:
    return jtu.tree_map(lambda t, f: jnp.where(pred, t, f), true, false)


def is_inexact_array(x) -> bool:
    return eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def closure_convert(fn: Callable, *example_args) -> Callable:
    """Closure-convert a user callable so traced closed-over values become inputs."""
    return eqx.filter_closure_convert(fn, *example_args)


class WarmStart(eqx.Module):
    """Two warm starts for one inner solve, as the integrators pass them along a
    trajectory to a marginal whose `takes_warm_start_pair` is `True`:

    - `previous`: the mode at the previous evaluation of the trajectory;
    - `predicted`: a prediction of the mode at this one, from the last two modes
      (their difference, scaled by the projection of this move on the last).

    The marginal's inner solve starts from whichever of the two its own objective
    ranks higher at the new `phi`.
    """

    previous: PyTree
    predicted: PyTree


def previous_mode(theta_guess: WarmStart | PyTree | None) -> PyTree | None:
    """A warm start, or a `WarmStart`'s previous mode."""
    if isinstance(theta_guess, WarmStart):
        return theta_guess.previous
    return theta_guess


def map_starts(fn: Callable, theta_guess: WarmStart | PyTree | None):
    """`fn` applied to a warm start, or to each of a `WarmStart`'s two (`None`
    stays `None`)."""
    if isinstance(theta_guess, WarmStart):
        return WarmStart(fn(theta_guess.previous), fn(theta_guess.predicted))
    return None if theta_guess is None else fn(theta_guess)


def better_start(value: Array, best: Array) -> Array:
    """Whether a start whose objective (maximised) is `value` beats the best so
    far: `value` finite, and not lower (or the best so far is not finite)."""
    return jnp.isfinite(value) & (~jnp.isfinite(best) | (value >= best))


def consider_prediction(
    theta_guess: WarmStart | PyTree | None, consider: Callable, best: PyTree
) -> PyTree:
    """`consider(best, predicted)` for a `WarmStart` of two arrays whose predicted
    mode differs from its previous one; `best` otherwise. Where the two are equal
    (a trajectory's first step) `lax.cond` skips the candidate's work, which every
    solver that ranks its starts would otherwise repeat for nothing."""
    if not isinstance(theta_guess, WarmStart):
        return best
    predicted = theta_guess.predicted
    differs = jnp.any(predicted != theta_guess.previous)
    return jax.lax.cond(differs, lambda b: consider(b, predicted), lambda b: b, best)


def keep_warm_start(theta: PyTree, theta_guess: WarmStart | PyTree | None) -> PyTree:
    """`theta`, or the warm start `theta_guess` (a `WarmStart`'s previous mode)
    where `theta` is not finite: a failed solve must not poison the next warm
    start."""
    theta_guess = previous_mode(theta_guess)
    if theta is None or theta_guess is None:
        return theta
    return tree_where(all_finite(theta), theta, theta_guess)


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


def import_arviz(what: str):
    """ArviZ, imported lazily, without its import-time FutureWarning."""
    try:
        with warnings.catch_warnings():
            # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on import.
            warnings.filterwarnings("ignore", category=FutureWarning)
            import arviz
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"`{what}` needs ArviZ, which is not installed. Install it with "
            '`pip install "lapsample[arviz]"`.'
        ) from e
    return arviz


def key_name(key) -> str:
    if isinstance(key, jtu.DictKey):
        return str(key.key)
    if isinstance(key, jtu.GetAttrKey):
        return key.name
    if isinstance(key, jtu.SequenceKey):
        return str(key.idx)
    if isinstance(key, jtu.FlattenedIndexKey):
        return str(key.key)
    return str(key)  # pragma: no cover - other key types


def variable_names(tree: PyTree, base: str) -> list[tuple[str, Any]]:
    """`(name, leaf)` pairs naming the leaves of `tree`: a bare array is `base`; a
    dict (or Module, namedtuple) gives its keys; nested levels are joined with
    `.`; a top-level list or tuple gives `base.0`, `base.1`, ..."""
    pairs = jtu.tree_flatten_with_path(tree)[0]
    out = []
    for path, leaf in pairs:
        parts = [key_name(k) for k in path]
        if not parts or isinstance(path[0], jtu.SequenceKey | jtu.FlattenedIndexKey):
            parts.insert(0, base)
        out.append((".".join(parts), leaf))
    return out


def insertion_order(tree: PyTree, base: str) -> tuple[str, ...]:
    """The names of `variable_names(tree, base)` in the order the user wrote them:
    dicts in their insertion order (JAX flattens them in sorted key order), other
    containers in their own order."""
    pairs = jtu.tree_flatten_with_path(tree)[0]
    names = [name for name, _ in variable_names(tree, base)]

    def rank(index):
        node, ranks = tree, []
        for key in pairs[index][0]:
            if isinstance(node, dict) and isinstance(key, jtu.DictKey):
                ranks.append(list(node).index(key.key))
                node = node[key.key]
            elif isinstance(node, list | tuple) and isinstance(key, jtu.SequenceKey):
                ranks.append(key.idx)
                node = node[key.idx]
            else:
                break
        return tuple(ranks), index

    return tuple(names[i] for i in sorted(range(len(names)), key=rank))
