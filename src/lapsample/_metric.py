"""Euclidean metrics: the kinetic energy `½ pᵀ M⁻¹ p` of Hamiltonian Monte Carlo.

Metrics work on *flat* momentum vectors; the samplers ravel the (PyTree) position
`phi` once and keep momentum flat.
"""

import abc
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray, PyTree

from ._misc import concrete_value, TreeRaveller
from ._validate import as_float


class AbstractMetric(eqx.Module):
    """A Euclidean metric: the inverse mass matrix `M⁻¹` of the kinetic energy
    `K(p) = ½ pᵀ M⁻¹ p`, with momentum `p ~ N(0, M)`.

    Subclasses implement `sample_momentum` and `velocity`; the kinetic energy and the
    generalised U-turn test follow from them. Hold the matrix as an array field so
    that new values (after adaptation, say) never cause recompilation.
    """

    @abc.abstractmethod
    def sample_momentum(
        self, key: PRNGKeyArray, like: Float[Array, " n"]
    ) -> Float[Array, " n"]:
        """Draw `p ~ N(0, M)`.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `like`: the flat position; gives the size and dtype of the draw.

        **Returns:**

        A flat momentum vector.
        """

    @abc.abstractmethod
    def velocity(self, momentum: Float[Array, " n"]) -> Float[Array, " n"]:
        """`M⁻¹ p`, the time derivative of the position."""

    def kinetic_energy(self, momentum: Float[Array, " n"]) -> Float[Array, ""]:
        """`½ pᵀ M⁻¹ p`."""
        return 0.5 * jnp.dot(momentum, self.velocity(momentum))

    def is_turning(
        self,
        velocity_left: Float[Array, " n"],
        velocity_right: Float[Array, " n"],
        momentum_sum: Float[Array, " n"],
    ) -> Bool[Array, ""]:
        """The generalised U-turn criterion (Betancourt 2013).

        A trajectory segment with end velocities `M⁻¹p⁻`, `M⁻¹p⁺` and summed momentum
        `ρ` (over every point of the segment, ends included) is turning when
        `(M⁻¹p⁻)·ρ <= 0` or `(M⁻¹p⁺)·ρ <= 0`. The test is symmetric in the two ends.
        """
        return (jnp.dot(velocity_left, momentum_sum) <= 0) | (
            jnp.dot(velocity_right, momentum_sum) <= 0
        )

    @abc.abstractmethod
    def check_size(self, size: int) -> None:
        """Raise `ValueError` (at trace time) if the metric cannot act on a flat
        position of `size` coordinates."""


class DiagonalMetric(AbstractMetric):
    """A diagonal (or scalar) inverse mass matrix.

    `inverse_mass_matrix` is a vector with one entry per flat position coordinate, or
    a scalar applied to every coordinate.
    """

    inverse_mass_matrix: Float[Array, "*n"] = eqx.field(converter=as_float)

    def __check_init__(self):
        if self.inverse_mass_matrix.ndim > 1:
            raise ValueError(
                "`DiagonalMetric` takes a scalar or a vector of inverse masses; got "
                f"an array of shape {self.inverse_mass_matrix.shape}. Use "
                "`DenseMetric` for a full matrix."
            )
        values = concrete_value(self.inverse_mass_matrix)
        if values is not None and not np.all(np.isfinite(values) & (values > 0)):
            bad = np.argwhere(~(np.isfinite(values) & (values > 0))).ravel().tolist()
            raise ValueError(
                "The inverse mass matrix must be positive and finite; "
                + (f"entries {bad[:5]} are not" if values.ndim else f"got {values}")
                + ". Use estimates of the posterior variances of phi, or 1.0 (and "
                "let `lapsample.sample` adapt it)."
            )

    def sample_momentum(self, key, like):
        z = jr.normal(key, like.shape, like.dtype)
        return z / jnp.sqrt(self.inverse_mass_matrix).astype(like.dtype)

    def velocity(self, momentum):
        return self.inverse_mass_matrix.astype(momentum.dtype) * momentum

    def check_size(self, size):
        if self.inverse_mass_matrix.ndim == 1 and self.inverse_mass_matrix.shape != (
            size,
        ):
            raise ValueError(
                "The inverse mass matrix has "
                f"{self.inverse_mass_matrix.shape[0]} entries but the position "
                f"has {size} coordinates once flattened. Pass one inverse mass per "
                "coordinate, or a scalar."
            )


DiagonalMetric.__init__.__doc__ = """**Arguments:**

- `inverse_mass_matrix`: a positive scalar, or a positive vector with one entry per
    coordinate of the flattened position (the order of
    `jax.flatten_util.ravel_pytree`: a dict's keys sorted, not as written).
    Estimates of the posterior variances are the usual choice.
"""


class DenseMetric(AbstractMetric):
    """A dense inverse mass matrix `M⁻¹` (symmetric positive definite).

    Momentum draws use the Cholesky factor `M⁻¹ = L Lᵀ`: `p = L⁻ᵀ z` has covariance
    `L⁻ᵀ L⁻¹ = M`.
    """

    inverse_mass_matrix: Float[Array, "n n"] = eqx.field(converter=as_float)

    def __check_init__(self):
        shape = self.inverse_mass_matrix.shape
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"`DenseMetric` takes a square matrix; got shape {shape}.")
        values = concrete_value(self.inverse_mass_matrix)
        if values is None:
            return
        positive_definite = np.all(np.isfinite(values)) and np.allclose(
            values, values.T, rtol=1e-6, atol=0.0
        )
        if positive_definite:
            try:
                np.linalg.cholesky(values)
            except np.linalg.LinAlgError:
                positive_definite = False
        if not positive_definite:
            raise ValueError(
                "The dense inverse mass matrix must be finite, symmetric and "
                "positive definite. Use an estimate of the posterior covariance of "
                "phi (e.g. `np.cov(draws.T)` plus a small multiple of the "
                "identity), or a vector of variances for a diagonal metric."
            )

    def sample_momentum(self, key, like):
        z = jr.normal(key, like.shape, like.dtype)
        lower = jnp.linalg.cholesky(self.inverse_mass_matrix.astype(like.dtype))
        return jsl.solve_triangular(lower, z, lower=True, trans="T")

    def velocity(self, momentum):
        return self.inverse_mass_matrix.astype(momentum.dtype) @ momentum

    def check_size(self, size):
        if self.inverse_mass_matrix.shape[0] != size:
            raise ValueError(
                "The inverse mass matrix is "
                f"{self.inverse_mass_matrix.shape[0]}×"
                f"{self.inverse_mass_matrix.shape[0]} but the position has {size} "
                "coordinates once flattened. Pass a matrix over the flattened "
                "position (`jax.flatten_util.ravel_pytree` gives its order: a "
                "dict's keys sorted)."
            )


DenseMetric.__init__.__doc__ = """**Arguments:**

- `inverse_mass_matrix`: a symmetric positive definite `n × n` matrix, `n` the
    number of coordinates of the flattened position, in the order of
    `jax.flatten_util.ravel_pytree` (a dict's keys sorted, not as written); an
    estimate of the posterior covariance is the usual choice.
"""


def as_inverse_mass(
    inverse_mass_matrix: AbstractMetric | Mapping | ArrayLike,
) -> AbstractMetric | PyTree[Array] | Array:
    """A metric is kept, a dict mirroring `phi` becomes a dict of floating arrays
    (mapped onto the flattened position once `phi` is known), anything else a
    floating array."""
    if isinstance(inverse_mass_matrix, AbstractMetric):
        return inverse_mass_matrix
    if isinstance(inverse_mass_matrix, Mapping):
        return jtu.tree_map(as_float, dict(inverse_mass_matrix))
    return as_float(inverse_mass_matrix)


def check_inverse_mass(
    inverse_mass_matrix: AbstractMetric | Mapping | ArrayLike,
) -> AbstractMetric | PyTree[Array] | Array:
    """`as_inverse_mass`, and a clear `ValueError` for values or shapes that no
    metric accepts (a dict's layout is checked later, against `phi`)."""
    out = as_inverse_mass(inverse_mass_matrix)
    if isinstance(out, dict):
        for leaf in jtu.tree_leaves(out):
            DiagonalMetric(jnp.ravel(leaf))
    else:
        metric_from_inverse_mass_matrix(out)
    return out


def _flatten_mass_tree(tree: PyTree[Array], position: PyTree[ArrayLike]) -> Array:
    """A dict of inverse masses mirroring `position` (one scalar or one array of
    the leaf's shape per leaf) as one vector in the flattened order of
    `position`."""
    got, want = jtu.tree_structure(tree), jtu.tree_structure(position)
    if got != want:
        raise ValueError(
            "A dict `inverse_mass_matrix` must mirror phi, with one entry per leaf; "
            f"it has the structure {got} and phi {want}. Give one positive scalar "
            "(or an array of the leaf's shape) per key of phi, e.g. "
            '`{"mu": 1.0, "log_tau": 2.0}`.'
        )
    raveller = TreeRaveller(position)
    leaves = []
    for (path, mass), shape in zip(
        jtu.tree_flatten_with_path(tree)[0], raveller.shapes
    ):
        if jnp.ndim(mass) != 0 and jnp.shape(mass) != shape:
            raise ValueError(
                f"`inverse_mass_matrix{jtu.keystr(path)}` has shape "
                f"{jnp.shape(mass)} but phi's leaf has shape {shape}: give a "
                "scalar (the same inverse mass for the whole leaf) or an array of "
                "the leaf's shape."
            )
        leaves.append(jnp.broadcast_to(mass, shape))
    return raveller.ravel(jtu.tree_unflatten(jtu.tree_structure(position), leaves))


def metric_from_inverse_mass_matrix(
    inverse_mass_matrix: AbstractMetric | Mapping | ArrayLike,
    position: PyTree[ArrayLike] | None = None,
) -> AbstractMetric:
    """The metric for an inverse mass matrix given as a scalar, a vector (diagonal),
    a matrix (dense) or a dict mirroring `phi` (diagonal); an
    [`lapsample.AbstractMetric`][] is returned unchanged.

    A vector or matrix is over the flattened position, in the order of
    `jax.flatten_util.ravel_pytree`: for a dict `phi` the keys are **sorted**, not
    in the order written, so `{"mu": ..., "log_tau": ...}` flattens as
    `(log_tau, mu)`. A dict such as `{"mu": 1.0, "log_tau": 2.0}` (one positive
    scalar, or an array of the leaf's shape, per leaf of `phi`) avoids the
    question: it is mapped onto the flattened layout, given `position`.

    **Arguments:**

    - `inverse_mass_matrix`: a scalar, vector, square matrix or dict, or a metric.
    - `position`: a value of `phi` (only its structure and shapes are read); needed
      for a dict.

    **Returns:**

    An [`lapsample.AbstractMetric`][].
    """
    if isinstance(inverse_mass_matrix, AbstractMetric):
        return inverse_mass_matrix
    if isinstance(inverse_mass_matrix, Mapping):
        tree = check_inverse_mass(inverse_mass_matrix)
        if position is None:
            raise ValueError(
                "A dict `inverse_mass_matrix` is mapped onto the flattened phi, so "
                "it needs phi: pass `position=phi` (`Sampler.init`, `Sampler.step` "
                "and `lapsample.sample` do this themselves)."
            )
        return DiagonalMetric(_flatten_mass_tree(tree, position))
    array = jnp.asarray(inverse_mass_matrix)
    if array.ndim <= 1:
        return DiagonalMetric(array)
    if array.ndim == 2:
        return DenseMetric(array)
    raise ValueError(
        "`inverse_mass_matrix` must be a scalar, a vector (diagonal) or a square "
        f"matrix (dense), or a dict mirroring phi; got an array of shape "
        f"{array.shape}."
    )
