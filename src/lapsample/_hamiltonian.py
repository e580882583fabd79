"""The Hamiltonian system a trajectory integrates, and the phase point a
transition starts from."""

import equinox as eqx
from jaxtyping import Array, Float, Int

from ._integrator import AbstractIntegrator
from ._metric import AbstractMetric
from ._phase_space import FlatLogDensity, PhasePoint


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
        return self.integrator.step(self.logdensity, self.metric, point, step_size)
