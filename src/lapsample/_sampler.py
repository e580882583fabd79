"""The sampler: a marginal, a proposal, a trajectory and an integrator."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from ._hamiltonian import Hamiltonian, initial_point
from ._integrator import AbstractIntegrator, Leapfrog
from ._marginal.base import AbstractMarginal
from ._metric import (
    AbstractMetric,
    as_inverse_mass,
    check_inverse_mass,
    metric_from_inverse_mass_matrix,
)
from ._misc import concrete_value, TreeRaveller
from ._phase_space import FlatLogDensity
from ._proposal import AbstractProposal
from ._results import RESULTS
from ._trajectory import AbstractTrajectory
from ._validate import as_float


class SamplerState(eqx.Module):
    """The state of a chain (arrays only, so it can be a `lax.scan` carry).

    - `position`: the hyperparameters `phi` (a PyTree like the initial position).
    - `logdensity`: the marginal log density at `position`.
    - `logdensity_grad`: its gradient (a PyTree like `position`).
    - `theta_star`: the mode of the latent at `position` (`None` for a marginal
      without a latent). It warm-starts the next transition, and
      `LaplaceMarginal.sample_theta(key, position, theta_star)` draws the latent.
    """

    position: PyTree[Float[Array, "..."]]
    logdensity: Float[Array, ""]
    logdensity_grad: PyTree[Float[Array, "..."]]
    theta_star: PyTree[Array] | None


class SamplerInfo(eqx.Module):
    """Diagnostics of one transition.

    - `acceptance_rate`: the mean of `min(1, exp(H₀ - H))` over the trajectory's new
      points (for [`lapsample.EndpointMH`][] with one trajectory, the Metropolis
      acceptance probability of the endpoint, or 0 after a divergence).
    - `is_accepted`: whether the chain moved.
    - `is_divergent`: whether the trajectory diverged: an energy error above
      `divergence_threshold`, a non-finite log density or gradient, or a failed
      inner solve. A divergent point is never accepted.
    - `energy`: the Hamiltonian at the new state.
    - `num_integration_steps`: integrator steps in the transition.
    - `tree_depth`: completed doublings of a [`lapsample.NoUTurn`][] trajectory (0
      for other trajectories). Equal to `max_tree_depth` means the trajectory was
      cut short.
    - `inner_steps_max`: the most inner-solver iterations of any evaluation in the
      trajectory.
    - `inner_failures`: how many evaluations in the trajectory failed (a failed
      inner solve, a Hessian that is not positive definite, a non-finite value).
    - `result`: the first failure in the trajectory as a [`lapsample.RESULTS`][]
      code, `RESULTS.divergent` for an energy divergence, else
      `RESULTS.successful`.
    """

    acceptance_rate: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    is_divergent: Bool[Array, ""]
    energy: Float[Array, ""]
    num_integration_steps: Int[Array, ""]
    tree_depth: Int[Array, ""]
    inner_steps_max: Int[Array, ""]
    inner_failures: Int[Array, ""]
    result: RESULTS


class Sampler(eqx.Module):
    """Hamiltonian Monte Carlo on a marginal log density over `phi`, assembled from
    pluggable parts.

    ```python
    sampler = lapsample.Sampler(
        lapsample.LaplaceMarginal(log_joint, theta_init),
        lapsample.Multinomial(),
        lapsample.NoUTurn(),
        step_size=0.5,
        inverse_mass_matrix=jnp.ones(2),
    )
    state = sampler.init(phi)
    state, info = eqx.filter_jit(sampler.step)(key, state)
    ```

    A `Sampler` is a PyTree whose step size and inverse mass matrix are arrays, so
    new values never cause recompilation; pass it through `eqx.filter_jit`. To run
    several chains, vmap the *bound method*, `eqx.filter_vmap(sampler.step)(keys,
    states)`, so that data held by the model is not split across chains.

    Every evaluation of the marginal along a trajectory is warm-started from the
    previous evaluation's `theta_star`, and the chosen point already carries its
    own, so no extra solve is needed after a transition. Failures are data: a failed
    inner solve or a non-finite value anywhere in a trajectory makes the transition
    divergent (`info.is_divergent`) and the bad point is never accepted; under
    `vmap` only the affected chain is touched.
    """

    marginal: AbstractMarginal
    proposal: AbstractProposal
    trajectory: AbstractTrajectory
    integrator: AbstractIntegrator
    step_size: Float[Array, ""]
    inverse_mass_matrix: Float[Array, "*shape"] | AbstractMetric | dict[str, Any]
    divergence_threshold: Float[Array, ""]

    def __init__(
        self,
        marginal: AbstractMarginal,
        proposal: AbstractProposal,
        trajectory: AbstractTrajectory,
        integrator: AbstractIntegrator = Leapfrog(),
        *,
        step_size: ArrayLike,
        inverse_mass_matrix: ArrayLike | AbstractMetric | dict[str, Any],
        divergence_threshold: ArrayLike = 1000.0,
    ):
        self.marginal = marginal
        self.proposal = proposal
        self.trajectory = trajectory
        self.integrator = integrator
        self.step_size = as_float(step_size)
        self.inverse_mass_matrix = as_inverse_mass(inverse_mass_matrix)
        self.divergence_threshold = as_float(divergence_threshold)

    def __check_init__(self):
        for name, value, cls in (
            ("marginal", self.marginal, AbstractMarginal),
            ("proposal", self.proposal, AbstractProposal),
            ("trajectory", self.trajectory, AbstractTrajectory),
            ("integrator", self.integrator, AbstractIntegrator),
        ):
            if not isinstance(value, cls):
                raise TypeError(
                    f"`Sampler({name}=...)` must be a `lapsample.{cls.__name__}`, "
                    f"got {type(value).__name__}."
                )
        self.trajectory.check_proposal(self.proposal)
        if jnp.ndim(self.step_size) != 0:
            raise ValueError(
                f"`step_size` must be a scalar; got shape {jnp.shape(self.step_size)}."
            )
        if jnp.ndim(self.divergence_threshold) != 0:
            raise ValueError("`divergence_threshold` must be a scalar.")
        step_size = concrete_value(self.step_size)
        if step_size is not None and not (np.isfinite(step_size) and step_size > 0):
            raise ValueError(
                f"`step_size` must be positive and finite, got {step_size}. Start "
                "from e.g. 0.1 (`lapsample.sample` tunes it during warm-up), or "
                "check the computation that produced it."
            )
        threshold = concrete_value(self.divergence_threshold)
        if threshold is not None and not threshold > 0:
            raise ValueError(
                f"`divergence_threshold` must be positive, got {threshold}; the "
                "default is 1000 (an energy error in nats)."
            )
        # Validates the values and shape of the inverse mass matrix.
        check_inverse_mass(self.inverse_mass_matrix)

    @property
    def metric(self) -> AbstractMetric:
        """The [`lapsample.AbstractMetric`][] built from `inverse_mass_matrix`: a
        scalar or a vector gives a [`lapsample.DiagonalMetric`][], a matrix a
        [`lapsample.DenseMetric`][]. A dict mirroring `phi` needs `phi` for its
        layout: use `lapsample.metric_from_inverse_mass_matrix(
        sampler.inverse_mass_matrix, phi)` (`init`, `step` and
        `lapsample.sample` do)."""
        return metric_from_inverse_mass_matrix(self.inverse_mass_matrix)

    def init(
        self,
        position: PyTree[ArrayLike],
        theta_guess: PyTree[ArrayLike] | None = None,
    ) -> SamplerState:
        """The state of a chain at `position`.

        **Arguments:**

        - `position`: the initial `phi`, any PyTree of floating arrays (integers are
          converted). Its log density should be finite: a chain that starts where
          the marginal fails reports every transition as divergent.
        - `theta_guess`: a starting point for the inner solve (default: the
          marginal's own, e.g. `theta_init`).

        **Returns:**

        A [`lapsample.SamplerState`][].
        """
        position = jtu.tree_map(as_float, position)
        metric = metric_from_inverse_mass_matrix(self.inverse_mass_matrix, position)
        metric.check_size(TreeRaveller(position).size)
        return _init(self.marginal, position, theta_guess)

    def step(
        self, key: PRNGKeyArray, state: SamplerState
    ) -> tuple[SamplerState, SamplerInfo]:
        """One transition.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `state`: the current [`lapsample.SamplerState`][].

        **Returns:**

        `(new_state, info)`, with `info` a [`lapsample.SamplerInfo`][].
        """
        metric = metric_from_inverse_mass_matrix(
            self.inverse_mass_matrix, state.position
        )
        metric.check_size(TreeRaveller(state.position).size)
        return _step(self, key, state)


# The work is done in jitted functions so that eager calls (a Python loop over
# `sampler.step`) compile once; under an outer `jit`/`vmap` they are inlined. `_init`
# depends on the marginal only, so samplers that share a marginal share its
# compilation.


@eqx.filter_jit
def _init(marginal, position, theta_guess):
    raveller = TreeRaveller(position)
    flat = raveller.ravel(position)
    value, grad, aux = FlatLogDensity(marginal, raveller)(flat, theta_guess)
    return SamplerState(
        position=raveller.unravel(flat),
        logdensity=value,
        logdensity_grad=raveller.unravel(grad),
        theta_star=aux.theta_star,
    )


@eqx.filter_jit
def _step(sampler: Sampler, key, state):
    raveller = TreeRaveller(state.position)
    logdensity = FlatLogDensity(sampler.marginal, raveller)
    metric = metric_from_inverse_mass_matrix(
        sampler.inverse_mass_matrix, state.position
    )
    flat = raveller.ravel(state.position)
    key_momentum, key_trajectory = jr.split(key)
    initial = initial_point(
        flat,
        metric.sample_momentum(key_momentum, flat),
        state.logdensity,
        raveller.ravel(state.logdensity_grad),
        state.theta_star,
        logdensity.trail(flat, state.theta_star),
    )
    hamiltonian = Hamiltonian(
        logdensity,
        metric,
        sampler.integrator,
        jnp.asarray(sampler.step_size, flat.dtype),
    )
    chosen, info = sampler.trajectory.build(
        key_trajectory,
        hamiltonian,
        sampler.proposal,
        initial,
        jnp.asarray(sampler.divergence_threshold, flat.dtype),
    )
    point = chosen.point
    new_state = SamplerState(
        position=raveller.unravel(point.position),
        logdensity=point.logdensity,
        logdensity_grad=raveller.unravel(point.logdensity_grad),
        theta_star=point.aux.theta_star,
    )
    sampler_info = SamplerInfo(
        acceptance_rate=info.acceptance_rate,
        is_accepted=jnp.any(point.position != flat),
        is_divergent=info.is_divergent,
        energy=chosen.energy,
        num_integration_steps=info.num_steps,
        tree_depth=info.tree_depth,
        inner_steps_max=info.inner_steps_max,
        inner_failures=info.inner_failures,
        result=info.result,
    )
    return new_state, sampler_info


Sampler.__init__.__doc__ = """**Arguments:**

- `marginal`: the target, an [`lapsample.AbstractMarginal`][]: a
    [`lapsample.LaplaceMarginal`][], or a [`lapsample.PlainDensity`][] for an
    ordinary log density.
- `proposal`: an [`lapsample.AbstractProposal`][]: [`lapsample.EndpointMH`][] or
    [`lapsample.Multinomial`][].
- `trajectory`: an [`lapsample.AbstractTrajectory`][]: [`lapsample.Fixed`][],
    [`lapsample.RandomLength`][] or [`lapsample.NoUTurn`][] (which needs
    `Multinomial`).
- `integrator`: an [`lapsample.AbstractIntegrator`][]; default
    [`lapsample.Leapfrog`][].
- `step_size`: the integrator's step size (keyword-only; a scalar, stored as an
    array).
- `inverse_mass_matrix`: keyword-only; a scalar or a vector (diagonal metric) or a
    square matrix (dense metric) over the flattened `phi`, in the order of
    `jax.flatten_util.ravel_pytree` (a dict's keys sorted, not as written); or a
    dict mirroring a dict `phi`, one positive scalar (or array of the leaf's shape)
    per key, e.g. `{"mu": 1.0, "log_tau": 2.0}` (a diagonal metric, mapped onto
    the flattened layout); or an [`lapsample.AbstractMetric`][].
- `divergence_threshold`: the energy error `H - H₀` above which a trajectory is
    divergent (default 1000, as in Stan).

**Raises:**

[`lapsample.IncompatibleComponentsError`][] (a `ValueError`) for a proposal and
trajectory that cannot work together, such as `NoUTurn` with `EndpointMH`.
"""
