"""`DiagonalHessian`: conditionally independent latents, one Hessian-vector
product per factorisation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float

from .._factor import AbstractStructuredFactor
from .base import (
    AbstractStructuredHessian,
    hvp,
    probe_vector,
    quadratic_form,
    structure_agrees,
)


# --------------------------------------------------------------------------------
# Diagonal
# --------------------------------------------------------------------------------


class DiagonalFactor(AbstractStructuredFactor):
    """The factor of [`lapsample.DiagonalHessian`][]: the diagonal of the Hessian
    (replaced by ones where it is not positive, so downstream arithmetic stays
    finite)."""

    diagonal: Float[Array, " d"]
    positive_definite: Bool[Array, ""]
    structure_ok: Bool[Array, ""] = eqx.field(default_factory=lambda: jnp.array(True))


class DiagonalHessian(AbstractStructuredHessian):
    """For models whose Hessian in `theta` is diagonal (conditionally independent
    latents, e.g. `theta_i ~ N(mu, tau²)`, `y_i ~ p(y_i | theta_i)`).

    The diagonal is one Hessian-vector product with a vector of ones, and every
    operation is `O(d)`.

    With off-diagonal curvature the product with ones returns row sums, so the
    structure is checked with one more Hessian-vector product (see `verify`; once per
    inner solve, on the factor at the mode): a violation gives a factor with
    `structure_ok = False`, a marginal of `-inf` and the code
    `RESULTS.structure_violated`; [`lapsample.LaplaceMarginal.check`][] raises a
    `ValueError` before compilation.
    """

    verify: bool = True

    def factorise(self, fn, theta, phi):
        diagonal = hvp(fn, theta, phi, jnp.ones_like(theta))
        if self.verify:
            z = probe_vector(theta)
            structure_ok = structure_agrees(
                hvp(fn, theta, phi, z), diagonal * z, jnp.abs(diagonal * z)
            )
        else:
            structure_ok = jnp.array(True)
        ok = jnp.all(jnp.isfinite(diagonal)) & jnp.all(diagonal > 0)
        diagonal = jnp.where(ok, diagonal, jnp.ones_like(diagonal))
        return DiagonalFactor(
            diagonal=diagonal,
            positive_definite=ok & structure_ok,
            structure_ok=structure_ok,
        )

    def factor_product(self, factor, z):
        product = factor.diagonal * z
        return product, jnp.abs(product)

    def logdet(self, factor):
        return jnp.sum(jnp.log(factor.diagonal))

    def solve(self, factor, vector):
        return vector / factor.diagonal

    def sample(self, factor, key):
        z = jr.normal(key, factor.diagonal.shape, dtype=factor.diagonal.dtype)
        return z / jnp.sqrt(factor.diagonal)

    def logdet_surrogate(self, factor, fn, theta, phi):
        inverse = jax.lax.stop_gradient(1.0 / factor.diagonal)
        return jnp.dot(inverse, hvp(fn, theta, phi, jnp.ones_like(theta)))


DiagonalHessian.__init__.__doc__ = """**Arguments:**

- `verify`: check that the Hessian is diagonal with one extra Hessian-vector
    product (default `True`): at every direct `factorise`, and once per inner solve
    (on the factor at the mode) inside the Laplace marginal. Turn it off only for a
    model already checked: with off-diagonal curvature the results are then
    silently wrong.
"""


@quadratic_form.register(DiagonalFactor)
def _(factor: DiagonalFactor, fn, theta, phi, u):
    del fn, theta, phi
    return jnp.dot(factor.diagonal * u, u)
