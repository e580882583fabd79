"""Trajectories: how far to integrate, in which directions, and when to stop."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._hamiltonian import Hamiltonian
from ._misc import tree_where
from ._phase_space import PhasePoint
from ._proposal import (
    AbstractProposal,
    AbstractWeightedProposal,
    acceptance_probability,
    ProposalState,
)
from ._results import RESULTS
from ._validate import check_int


class IncompatibleComponentsError(ValueError):
    """Raised when a sampler is built from components that cannot work together,
    for example [`lapsample.NoUTurn`][] with [`lapsample.EndpointMH`][]."""


class TrajectoryInfo(eqx.Module):
    """What a trajectory reports about itself.

    - `acceptance_rate`: the statistic that step-size adaptation targets: the mean
      over the new points of `min(1, exp(H₀ - H))` for a weighted proposal, the
      endpoint's acceptance probability (0 after a divergence) for an endpoint
      one.
    - `is_divergent`: whether a point had an energy error above the divergence
      threshold, a non-finite log density or a failed inner solve.
    - `num_steps`: integrator steps taken.
    - `tree_depth`: completed doublings of a No-U-Turn trajectory (0 otherwise).
    - `inner_steps_max`: the most inner-solver iterations of any evaluation.
    - `inner_failures`: the number of evaluations whose marginal failed.
    - `result`: the first failure in the trajectory, `RESULTS.divergent` for an energy
      divergence, or `RESULTS.successful`.
    """

    acceptance_rate: Float[Array, ""]
    is_divergent: Bool[Array, ""]
    num_steps: Int[Array, ""]
    tree_depth: Int[Array, ""]
    inner_steps_max: Int[Array, ""]
    inner_failures: Int[Array, ""]
    result: RESULTS


class TrajectoryStats(eqx.Module):
    num_steps: Int[Array, ""]
    sum_acceptance: Float[Array, ""]
    inner_steps_max: Int[Array, ""]
    inner_failures: Int[Array, ""]
    result: RESULTS

    @staticmethod
    def zero(dtype) -> "TrajectoryStats":
        return TrajectoryStats(
            num_steps=jnp.zeros((), jnp.int32),
            sum_acceptance=jnp.zeros((), dtype),
            inner_steps_max=jnp.zeros((), jnp.int32),
            inner_failures=jnp.zeros((), jnp.int32),
            result=RESULTS.successful,
        )

    def add(self, point, failures, energy, energy0, divergent) -> "TrajectoryStats":
        point_result = RESULTS.where(
            point.aux.result != RESULTS.successful,
            point.aux.result,
            RESULTS.where(divergent, RESULTS.divergent, RESULTS.successful),
        )
        return TrajectoryStats(
            num_steps=self.num_steps + 1,
            sum_acceptance=self.sum_acceptance
            + acceptance_probability(energy, energy0).astype(self.sum_acceptance.dtype),
            inner_steps_max=jnp.maximum(self.inner_steps_max, point.aux.num_steps),
            inner_failures=self.inner_failures + failures,
            result=RESULTS.where(
                self.result == RESULTS.successful, point_result, self.result
            ),
        )

    def info(self, is_divergent, tree_depth) -> TrajectoryInfo:
        rate = self.sum_acceptance / jnp.maximum(self.num_steps, 1)
        return TrajectoryInfo(
            acceptance_rate=rate,
            is_divergent=is_divergent,
            num_steps=self.num_steps,
            tree_depth=jnp.asarray(tree_depth, jnp.int32),
            inner_steps_max=self.inner_steps_max,
            inner_failures=self.inner_failures,
            result=self.result,
        )


def energy_diverged(point: PhasePoint, energy, energy0, threshold) -> Bool[Array, ""]:
    # Written so that NaN counts as divergent.
    too_large = ~(energy - energy0 <= threshold)
    return too_large | (point.aux.result != RESULTS.successful)


class AbstractTrajectory(eqx.Module):
    """Builds a trajectory from the initial phase point and returns the proposal's
    choice among its points.

    A trajectory must be reversible: the set of points, and the probability of
    building it, must be the same from every point of it that the proposal may
    choose. A point that diverges (energy error above the threshold, a non-finite
    log density, a failed inner solve) must never be chosen.
    """

    @abc.abstractmethod
    def build(
        self,
        key: PRNGKeyArray,
        hamiltonian: Hamiltonian,
        proposal: AbstractProposal,
        initial: PhasePoint,
        divergence_threshold: Float[Array, ""],
    ) -> tuple[ProposalState, TrajectoryInfo]:
        """**Arguments:**

        - `key`: a JAX PRNG key.
        - `hamiltonian`: a [`lapsample.Hamiltonian`][] (log density, metric,
          integrator, step size).
        - `proposal`: the [`lapsample.AbstractProposal`][] that picks the next state.
        - `initial`: the initial [`lapsample.PhasePoint`][], momentum drawn.
        - `divergence_threshold`: the largest energy error `H - H₀` that is not a
          divergence.

        **Returns:**

        `(chosen, info)`: the proposal's chosen [`lapsample.ProposalState`][] and a
        [`lapsample.TrajectoryInfo`][].
        """

    @abc.abstractmethod
    def check_proposal(self, proposal: AbstractProposal) -> None:
        """Raise [`lapsample.IncompatibleComponentsError`][] if `proposal` cannot be
        used with this trajectory (called when a [`lapsample.Sampler`][] is built)."""


class AbstractDynamicTrajectory(AbstractTrajectory):
    """A trajectory whose length depends on the points it visits (a termination
    criterion). Its proposal must sample from the whole trajectory, i.e. be an
    [`lapsample.AbstractWeightedProposal`][]: moving to the endpoint of such a
    trajectory with a Metropolis–Hastings test is not reversible.

    `max_tree_depth` bounds the number of doublings of a transition (at most
    `2^max_tree_depth - 1` integrator steps); the driver reports how often a run
    reaches it.
    """

    max_tree_depth: eqx.AbstractVar[int]

    def check_proposal(self, proposal):
        if not isinstance(proposal, AbstractWeightedProposal):
            name = type(self).__name__
            raise IncompatibleComponentsError(
                f"`{name}` cannot be used with `{type(proposal).__name__}`: a "
                "trajectory whose length depends on the points it visits must draw "
                "the next state from the whole trajectory, so it needs an "
                "`AbstractWeightedProposal`. Use `proposal=lapsample.Multinomial()` "
                "(as `lapsample.laplace_nuts` does), or keep `EndpointMH()` with "
                "`Fixed(num_steps)` or `RandomLength(...)`."
            )


class AbstractNumStepsTrajectory(AbstractTrajectory):
    """A trajectory of a number of steps drawn independently of the state.

    With an [`lapsample.AbstractWeightedProposal`][] (e.g.
    [`lapsample.Multinomial`][]) the `L` steps are split uniformly at random into
    `B ~ U{0, …, L}` steps backwards in time from the initial point and `L - B`
    forwards, so that the initial point sits at a uniformly random place in the
    trajectory (needed for detailed balance); the proposal then draws one of the
    `L + 1` points. With [`lapsample.EndpointMH`][] all steps go forwards and the
    endpoint is accepted or rejected.

    The integration stops at the first divergent point, and a divergent trajectory
    is rejected as a whole: the chain stays where it is.
    """

    @abc.abstractmethod
    def draw_num_steps(self, key: PRNGKeyArray) -> Int[Array, ""]:
        """The number of integrator steps of one transition (at least 1)."""

    def check_proposal(self, proposal):
        del proposal  # every proposal works with a state-independent length

    def build(self, key, hamiltonian, proposal, initial, divergence_threshold):
        key_n, key_split, key_loop, key_final = jr.split(key, 4)
        num_steps = self.draw_num_steps(key_n)
        if isinstance(proposal, AbstractWeightedProposal):
            num_backward = jr.randint(key_split, (), 0, num_steps + 1)
        else:
            num_backward = jnp.zeros((), num_steps.dtype)
        energy0 = hamiltonian.energy(initial)
        start = proposal.init(initial, energy0, energy0)
        dtype = initial.position.dtype

        def cond(carry):
            i, _, _, _, diverged, _ = carry
            return (i < num_steps) & ~diverged

        def body(carry):
            i, left, right, state, diverged, stats = carry
            backward = i < num_backward
            point, failures = hamiltonian.step(
                tree_where(backward, left, right), jnp.where(backward, -1, 1)
            )
            energy = hamiltonian.energy(point)
            divergent = energy_diverged(point, energy, energy0, divergence_threshold)
            stats = stats.add(point, failures, energy, energy0, divergent)
            state = proposal.update(
                jr.fold_in(key_loop, i), state, point, energy, energy0
            )
            left = tree_where(backward, point, left)
            right = tree_where(backward, right, point)
            return i + 1, left, right, state, diverged | divergent, stats

        carry = (
            jnp.zeros((), num_steps.dtype),
            initial,
            initial,
            start,
            jnp.array(False),
            TrajectoryStats.zero(dtype),
        )
        _, _, _, state, diverged, stats = jax.lax.while_loop(cond, body, carry)
        chosen = proposal.finalise(key_final, state, start, energy0)
        chosen = tree_where(diverged, start, chosen)
        info = stats.info(diverged, 0)
        if not isinstance(proposal, AbstractWeightedProposal):
            # An endpoint proposal: the statistic is the endpoint's acceptance
            # probability, zero after a divergence.
            rate = acceptance_probability(state.energy, energy0)
            rate = jnp.where(diverged, 0.0, rate).astype(info.acceptance_rate.dtype)
            info = eqx.tree_at(lambda i: i.acceptance_rate, info, rate)
        return chosen, info


class Fixed(AbstractNumStepsTrajectory):
    """A trajectory of `num_steps` integrator steps in every transition."""

    num_steps: int

    def __check_init__(self):
        check_int("Fixed(num_steps=...)", self.num_steps, 1)

    def draw_num_steps(self, key):
        del key
        return jnp.asarray(self.num_steps, jnp.int32)


Fixed.__init__.__doc__ = """**Arguments:**

- `num_steps`: the number of integrator steps per transition (a Python int, at
    least 1).
"""


class RandomLength(AbstractNumStepsTrajectory):
    """A trajectory whose number of steps is drawn afresh in every transition,
    uniformly from `{min_num_steps, …, max_num_steps}`.

    Randomising the length avoids the near-periodic trajectories that make a fixed
    length mix badly for some targets (Neal 2011, "MCMC using Hamiltonian
    dynamics"); it does not adapt the length to the target (use
    [`lapsample.NoUTurn`][] for that). The seed's
    `laplace_dhmc(..., num_integration_steps=L)` uses `RandomLength(2 * L - 1)`,
    whose mean is `L`.
    """

    max_num_steps: int
    min_num_steps: int = 1

    def __check_init__(self):
        check_int("RandomLength(min_num_steps=...)", self.min_num_steps, 1)
        check_int(
            "RandomLength(max_num_steps=...)", self.max_num_steps, self.min_num_steps
        )

    def draw_num_steps(self, key):
        return jr.randint(
            key, (), self.min_num_steps, self.max_num_steps + 1, dtype=jnp.int32
        )


RandomLength.__init__.__doc__ = """**Arguments:**

- `max_num_steps`: the largest number of steps (a Python int).
- `min_num_steps`: the smallest number of steps (default 1).
"""
