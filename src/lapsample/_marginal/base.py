"""The marginal interface and what every marginal returns beside its value."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree, Scalar

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
    previous evaluation's `aux.theta_star`, or, to a marginal whose
    `takes_warm_start_pair` is `True`, a [`lapsample.WarmStart`][] holding it and a
    predicted mode.
    """

    @property
    def takes_warm_start_pair(self) -> bool:
        """Whether samplers pass a [`lapsample.WarmStart`][] as `theta_guess`."""
        return False

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


class LaplaceConditional(eqx.Module):
    """The Laplace approximation `N(theta*, A⁻¹)` of `p(theta | phi, y)` at one
    `phi`, factorised once, as [`lapsample.laplace_check`][] uses it.

    - `value`: the Laplace log marginal at `phi`;
    - `result`: the [`lapsample.RESULTS`][] code of the solve and factorisation;
    - `theta_star`: the mode, flat;
    - `log_joint`: flat `theta -> log p(theta, phi, y)` (up to the marginal's
      constant);
    - `draw`: `key -> u ~ N(0, A⁻¹)`, `A` the negative Hessian at the mode;
    - `quadratic_form`: `u -> uᵀ A u`, consistent with `draw` (jitter included).
    """

    value: Scalar
    result: RESULTS
    theta_star: Float[Array, " d"]
    log_joint: Callable[[Float[Array, " d"]], Scalar]
    draw: Callable[[PRNGKeyArray], Float[Array, " d"]]
    quadratic_form: Callable[[Float[Array, " d"]], Scalar]


class AbstractLaplaceMarginal(AbstractMarginal):
    """A marginal whose latent `theta` is integrated out by a Laplace approximation.

    Besides its value, it can draw `theta` from the approximation
    (`sample_theta`, used by `sample(..., sample_theta=True)`), give the
    approximation itself at one `phi` (`laplace_conditional`, used by
    [`lapsample.laplace_check`][]) and check a model before compiling (`check`,
    used by [`lapsample.sample`][]). [`lapsample.LaplaceMarginal`][] and
    [`lapsample.LatentGaussianMarginal`][] are the two built in.
    """

    theta_init: eqx.AbstractVar[Any]

    @abc.abstractmethod
    def sample_theta(
        self, key: PRNGKeyArray, phi: PyTree[Array], theta_star: PyTree[Array]
    ) -> PyTree[Array]:
        """A draw from the Laplace approximation `N(theta_star, A⁻¹)` of
        `p(theta | phi, y)`, NaN where it cannot be formed."""

    @abc.abstractmethod
    def laplace_conditional(
        self, phi: PyTree[Array], theta_guess: PyTree[Array] | None = None
    ) -> LaplaceConditional:
        """The Laplace approximation at `phi` (solving for the mode from
        `theta_guess`), as a [`lapsample.LaplaceConditional`][]."""

    @abc.abstractmethod
    def check(self, phi: PyTree[ArrayLike]) -> None:
        """Raise a clear error, before any compilation, for a model that cannot be
        evaluated at `phi`."""


@eqx.filter_jit
def result_at(marginal: AbstractMarginal, phi: PyTree[ArrayLike]) -> RESULTS:
    """The `RESULTS` code of `marginal` at one concrete `phi` (to explain a failure
    before or at the start of a run)."""
    return marginal(phi)[1].result


class PlainDensity(AbstractMarginal):
    """An ordinary log density `logdensity_fn(phi)`, with no latent to integrate out.

    Lets the HMC machinery run on any differentiable log density.
    """

    logdensity_fn: Callable

    def __call__(self, phi, theta_guess=None):
        del theta_guess
        value = jnp.asarray(self.logdensity_fn(phi))
        # Shapes are static: a user error, reported while tracing (before
        # compiling), not a JAX error about `where` deep inside the sampler.
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise ValueError(
                "`PlainDensity`: `logdensity_fn(phi)` must return a real scalar "
                f"(shape ()), the log density; it returned shape {value.shape} and "
                f"dtype {value.dtype}. Return one number: sum the terms "
                "(`.sum()`), take the single entry (`[0]`), or drop "
                "`keepdims=True`; and compute it in floating point."
            )
        result = RESULTS.where(
            jnp.isfinite(value), RESULTS.successful, RESULTS.nonfinite_log_density
        )
        return value, MarginalAux(
            theta_star=None, result=result, num_steps=jnp.array(0)
        )


PlainDensity.__init__.__doc__ = """**Arguments:**

- `logdensity_fn`: `phi -> scalar`, a log density up to a constant (a real
    scalar of shape `()`, not `(1,)`).
"""
