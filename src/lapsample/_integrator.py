"""Symplectic integrators of Hamiltonian dynamics."""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ._marginal.base import MarginalAux
from ._metric import AbstractMetric
from ._phase_space import FlatLogDensity, PhasePoint
from ._results import RESULTS


class AbstractIntegrator(eqx.Module):
    """A reversible, volume-preserving integrator of Hamiltonian dynamics.

    `step(logdensity, metric, point, step_size)` advances a
    [`lapsample.PhasePoint`][] by one step of signed size `step_size` (negative
    integrates backwards in time). Each evaluation of the log density is
    warm-started from the previous evaluation's `theta_star` (and, for a marginal
    that takes one, a prediction from the point's `trail`:
    `FlatLogDensity.warm_start`), so the returned point carries the latent mode at
    its position.
    """

    @abc.abstractmethod
    def step(
        self,
        logdensity: FlatLogDensity,
        metric: AbstractMetric,
        point: PhasePoint,
        step_size: Float[Array, ""],
    ) -> tuple[PhasePoint, Int[Array, ""]]:
        """**Arguments:**

        - `logdensity`: a [`lapsample.FlatLogDensity`][].
        - `metric`: the [`lapsample.AbstractMetric`][] of the kinetic energy.
        - `point`: the current phase point.
        - `step_size`: the signed step size.

        **Returns:**

        `(new_point, num_failures)`: the new point, and how many of the step's
        evaluations failed. If any failed, `new_point.logdensity` is `-inf` and
        `new_point.aux.result` holds the first failure, so the step can only be
        rejected. `new_point.aux.num_steps` is the most inner-solver iterations of
        any evaluation in the step.
        """

    @property
    @abc.abstractmethod
    def num_evaluations(self) -> int:
        """Gradient evaluations per step."""


class AbstractPalindromicIntegrator(AbstractIntegrator):
    """A splitting integrator with palindromic (symmetric) coefficients, hence
    reversible, volume preserving and of even order.

    `coefficients` alternates momentum ("kick") and position ("drift") fractions of
    the step, starting and ending with a kick: `(b₁, a₁, b₂, a₂, …, a₁, b₁)`.
    Kicks sum to one, as do drifts. Each drift is followed by one gradient
    evaluation; the first kick reuses the gradient the point already carries.
    """

    coefficients: eqx.AbstractClassVar[tuple[float, ...]]

    @property
    def num_evaluations(self) -> int:
        return len(self.coefficients) // 2

    def step(self, logdensity, metric, point, step_size):
        coefficients = self.coefficients
        position = point.position
        momentum = point.momentum
        value, grad, aux = point.logdensity, point.logdensity_grad, point.aux
        trail = point.trail
        failures = jnp.zeros((), jnp.int32)
        first_failure = RESULTS.successful
        max_inner = jnp.zeros((), jnp.int32)
        for i, c in enumerate(coefficients):
            c = jnp.asarray(c, momentum.dtype) * step_size.astype(momentum.dtype)
            if i % 2 == 0:
                momentum = momentum + c * grad
            else:
                new_position = position + c * metric.velocity(momentum)
                guess = logdensity.warm_start(
                    trail, position, aux.theta_star, new_position
                )
                trail = logdensity.trail(position, aux.theta_star)
                position = new_position
                value, grad, aux = logdensity(position, guess)
                failed = aux.result != RESULTS.successful
                failures = failures + failed.astype(jnp.int32)
                first_failure = RESULTS.where(
                    first_failure == RESULTS.successful, aux.result, first_failure
                )
                max_inner = jnp.maximum(max_inner, aux.num_steps)
        value = jnp.where(failures > 0, -jnp.inf, value)
        aux = MarginalAux(
            theta_star=aux.theta_star, result=first_failure, num_steps=max_inner
        )
        return PhasePoint(position, momentum, value, grad, aux, trail), failures


class Leapfrog(AbstractPalindromicIntegrator):
    """The leapfrog (velocity Verlet) integrator: half kick, drift, half kick.

    Second order; one gradient evaluation per step.
    """

    coefficients: ClassVar[tuple[float, ...]] = (0.5, 1.0, 0.5)


Leapfrog.__init__.__doc__ = """Takes no arguments."""


_MCLACHLAN_LAMBDA = 0.1931833275037836


class McLachlan(AbstractPalindromicIntegrator):
    """McLachlan's two-stage, second-order "minimum error" integrator:
    kick `λh`, drift `h/2`, kick `(1 - 2λ)h`, drift `h/2`, kick `λh`, with
    `λ ≈ 0.19318`.

    Two gradient evaluations per step, but a much smaller energy error than two
    leapfrog steps of size `h/2`, so it usually allows a larger step size
    (Blanes, Casas & Sanz-Serna 2014).

    ??? cite "References"

        ```bibtex
        @article{mclachlan1995numerical,
            title={On the numerical integration of ordinary differential equations
                   by symmetric composition methods},
            author={McLachlan, Robert I},
            journal={SIAM Journal on Scientific Computing},
            volume={16},
            number={1},
            pages={151--168},
            year={1995}
        }

        @article{blanes2014numerical,
            title={Numerical integrators for the Hybrid Monte Carlo method},
            author={Blanes, Sergio and Casas, Fernando and Sanz-Serna, J. M.},
            journal={SIAM Journal on Scientific Computing},
            volume={36},
            number={4},
            pages={A1556--A1580},
            year={2014}
        }
        ```
    """

    coefficients: ClassVar[tuple[float, ...]] = (
        _MCLACHLAN_LAMBDA,
        0.5,
        1.0 - 2.0 * _MCLACHLAN_LAMBDA,
        0.5,
        _MCLACHLAN_LAMBDA,
    )


McLachlan.__init__.__doc__ = """Takes no arguments."""
