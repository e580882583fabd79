"""The Hamiltonian system a trajectory integrates, and the phase point a
transition starts from."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from ._integrator import AbstractIntegrator
from ._marginal.base import MarginalAux
from ._metric import AbstractMetric
from ._phase_space import FlatLogDensity, PhasePoint, Trail
from ._results import RESULTS


class Hamiltonian(eqx.Module):
    """The Hamiltonian system a trajectory integrates: log density, metric,
    integrator and step size, bundled.

    - `energy(point)`: `H = -log p(position) + ½ pᵀ M⁻¹ p`.
    - `step(point, direction)`: one integrator step of size `direction · step_size`
      (`direction` is `+1` or `-1`); returns `(point, num_failures)`.
    """

    logdensity: FlatLogDensity
    metric: AbstractMetric
    integrator: AbstractIntegrator
    step_size: Float[Array, ""]

    def energy(self, point: PhasePoint) -> Float[Array, ""]:
        return -point.logdensity + self.metric.kinetic_energy(point.momentum)

    def step(
        self, point: PhasePoint, direction: Int[Array, ""]
    ) -> tuple[PhasePoint, Int[Array, ""]]:
        step_size = direction.astype(point.position.dtype) * self.step_size
        new, failures = self.integrator.step(
            self.logdensity, self.metric, point, step_size
        )
        if point.trail is not None and new.trail is None:
            # An integrator that does not predict: the point it started from is
            # the new point's trail (exactly so for one evaluation per step), so
            # trajectories keep one structure.
            new = eqx.tree_at(
                lambda p: p.trail,
                new,
                self.logdensity.trail(point.position, point.aux.theta_star),
                is_leaf=lambda x: x is None,
            )
        return new, failures


def initial_point(
    position: Float[Array, " n"],
    momentum: Float[Array, " n"],
    logdensity: ArrayLike,
    logdensity_grad: Float[Array, " n"],
    theta_star: PyTree[Array],
    trail: Trail | None = None,
) -> PhasePoint:
    """The phase point a transition (or the step-size search) starts from: a chain's
    flat position, its cached log density and gradient, a fresh `momentum`, and the
    chain's latent mode as the aux (a successful solve), which warm-starts the
    first inner solve of the trajectory; `trail` as `FlatLogDensity.trail` gives
    it."""
    return PhasePoint(
        position=position,
        momentum=momentum,
        logdensity=jnp.asarray(logdensity, position.dtype),
        logdensity_grad=logdensity_grad,
        aux=MarginalAux(
            theta_star=theta_star,
            result=RESULTS.successful,
            num_steps=jnp.zeros((), jnp.int32),
        ),
        trail=trail,
    )
