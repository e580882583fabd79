"""The marginal interface and what every marginal returns beside its value."""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Int, PyTree, Scalar

from .._results import RESULTS


class MarginalAux(eqx.Module):
    """Auxiliary output of a marginal evaluation.

    - `theta_star`: the mode of the latent at this `phi` (a PyTree like `theta_init`),
      `None` for a [`lapsample.PlainDensity`][].
    - `result`: a [`lapsample.RESULTS`][] code; anything but `successful` means the
      log density is `-inf` here.
    - `num_steps`: inner-solver iterations used.
    """

    theta_star: PyTree[Array] | None
    result: RESULTS
    num_steps: Int[Array, ""]


class AbstractMarginal(eqx.Module):
    """A log density over `phi` that the samplers can target.

    `marginal(phi, theta_guess)` returns `(log_density, aux)` and is differentiable in
    `phi` with `jax.value_and_grad(marginal, has_aux=True)`. `theta_guess` is a warm
    start for the latent (ignored by marginals without one); samplers pass the
    previous evaluation's `aux.theta_star`.
    """

    @abc.abstractmethod
    def __call__(
        self, phi: PyTree[Array], theta_guess: PyTree[Array] | None = None
    ) -> tuple[Scalar, MarginalAux]:
        """**Arguments:**

        - `phi`: the hyperparameters.
        - `theta_guess`: a warm start for the latent, or `None`.

        **Returns:**

        `(log_density, aux)`, with `aux` a [`lapsample.MarginalAux`][].
        """


class PlainDensity(AbstractMarginal):
    """An ordinary log density `logdensity_fn(phi)`, with no latent to integrate out.

    Lets the HMC machinery run on any differentiable log density.
    """

    logdensity_fn: Callable

    def __call__(self, phi, theta_guess=None):
        del theta_guess
        value = jnp.asarray(self.logdensity_fn(phi))
        result = RESULTS.where(
            jnp.isfinite(value), RESULTS.successful, RESULTS.nonfinite_log_density
        )
        return value, MarginalAux(
            theta_star=None, result=result, num_steps=jnp.array(0)
        )


PlainDensity.__init__.__doc__ = """**Arguments:**

- `logdensity_fn`: `phi -> scalar`, a log density up to a constant.
"""
