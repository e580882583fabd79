"""Trajectories: how far to integrate, in which directions, and when to stop."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._integrator import AbstractIntegrator, FlatLogDensity, PhasePoint
from ._metric import AbstractMetric
from ._misc import tree_where
from ._proposal import (
    AbstractProposal,
    AbstractWeightedProposal,
    acceptance_probability,
    ProposalState,
)
from ._results import RESULTS


class IncompatibleComponentsError(ValueError):
    """Raised when a sampler is built from components that cannot work together,
    for example [`lapsample.NoUTurn`][] with [`lapsample.EndpointMH`][]."""


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


class _Stats(eqx.Module):
    num_steps: Int[Array, ""]
    sum_acceptance: Float[Array, ""]
    inner_steps_max: Int[Array, ""]
    inner_failures: Int[Array, ""]
    result: RESULTS

    @staticmethod
    def zero(dtype) -> "_Stats":
        return _Stats(
            num_steps=jnp.zeros((), jnp.int32),
            sum_acceptance=jnp.zeros((), dtype),
            inner_steps_max=jnp.zeros((), jnp.int32),
            inner_failures=jnp.zeros((), jnp.int32),
            result=RESULTS.successful,
        )

    def add(self, point, failures, energy, energy0, divergent) -> "_Stats":
        point_result = RESULTS.where(
            point.aux.result != RESULTS.successful,
            point.aux.result,
            RESULTS.where(divergent, RESULTS.divergent, RESULTS.successful),
        )
        return _Stats(
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


def _is_divergent(point: PhasePoint, energy, energy0, threshold) -> Bool[Array, ""]:
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
    """

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
            divergent = _is_divergent(point, energy, energy0, divergence_threshold)
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
            _Stats.zero(dtype),
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


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be a Python int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    return int(value)


class Fixed(AbstractNumStepsTrajectory):
    """A trajectory of `num_steps` integrator steps in every transition."""

    num_steps: int

    def __check_init__(self):
        _check_int("Fixed(num_steps=...)", self.num_steps, 1)

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
        _check_int("RandomLength(min_num_steps=...)", self.min_num_steps, 1)
        _check_int(
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


class _Checkpoints(eqx.Module):
    """Per tree level `j`, values recorded at the first leaf `a` of the level's
    current sub-tree (leaves `a … a + 2ʲ - 1` in integration order). `S_k` is the
    running momentum sum over the leaves `0 … k` of the sub-tree being built.

    - `velocity_open`: velocity at leaf `a`;
    - `velocity_before`: velocity of the point before leaf `a`;
    - `sum_through`: `S_a`;
    - `sum_before`: `S_{a-1}`;
    - `sum_before2`: `S_{a-2}`.
    """

    velocity_open: Float[Array, "depth n"]
    velocity_before: Float[Array, "depth n"]
    sum_through: Float[Array, "depth n"]
    sum_before: Float[Array, "depth n"]
    sum_before2: Float[Array, "depth n"]


class _Subtree(eqx.Module):
    index: Int[Array, ""]
    point: PhasePoint
    first_momentum: Float[Array, " n"]
    state: ProposalState
    momentum_sum: Float[Array, " n"]
    checkpoints: _Checkpoints
    turning: Bool[Array, ""]
    diverged: Bool[Array, ""]
    stats: _Stats


class _Tree(eqx.Module):
    left: PhasePoint
    right: PhasePoint
    state: ProposalState
    momentum_sum: Float[Array, " n"]
    depth: Int[Array, ""]
    stop: Bool[Array, ""]
    diverged: Bool[Array, ""]
    stats: _Stats


class NoUTurn(AbstractDynamicTrajectory):
    """The No-U-Turn trajectory (Hoffman & Gelman 2014) in its modern form
    (Betancourt 2017): multinomial sampling and the generalised U-turn criterion.

    Each transition repeatedly doubles the trajectory, in a direction drawn at
    random, by a new sub-tree of `2^depth` steps, until the trajectory makes a
    U-turn, a point diverges, or `max_tree_depth` doublings are done. Points are
    drawn uniformly-progressively within a sub-tree and biased-progressively across
    doublings. A sub-tree that turns back on itself (checked on every power-of-two
    sub-sub-tree, with the additional checks across adjacent halves that Stan uses)
    or diverges is discarded and the expansion stops.

    The tree is built iteratively with `lax.while_loop`: memory is `O(max_tree_depth
    · dim(phi))` whatever the trajectory length, and the code traces once.

    Requires an [`lapsample.AbstractWeightedProposal`][] such as
    [`lapsample.Multinomial`][].

    ??? cite "References"

        ```bibtex
        @article{hoffman2014no,
            title={The No-U-Turn sampler: adaptively setting path lengths in
                   Hamiltonian Monte Carlo},
            author={Hoffman, Matthew D and Gelman, Andrew},
            journal={Journal of Machine Learning Research},
            volume={15},
            number={1},
            pages={1593--1623},
            year={2014}
        }

        @article{betancourt2017conceptual,
            title={A Conceptual Introduction to Hamiltonian Monte Carlo},
            author={Betancourt, Michael},
            journal={arXiv preprint arXiv:1701.02434},
            year={2017}
        }
        ```
    """

    max_tree_depth: int = 10

    def __check_init__(self):
        _check_int("NoUTurn(max_tree_depth=...)", self.max_tree_depth, 1)
        if self.max_tree_depth > 30:
            raise ValueError(
                "`NoUTurn(max_tree_depth=...)` must be at most 30 (2^30 steps per "
                f"transition); got {self.max_tree_depth}."
            )

    def build(self, key, hamiltonian, proposal, initial, divergence_threshold):
        self.check_proposal(proposal)
        assert isinstance(proposal, AbstractWeightedProposal)
        metric = hamiltonian.metric
        max_depth = self.max_tree_depth
        dtype = initial.position.dtype
        n = initial.position.shape[0]
        levels = jnp.arange(max_depth, dtype=jnp.int32)
        spans = jnp.left_shift(jnp.ones((), jnp.int32), levels)
        energy0 = hamiltonian.energy(initial)
        start_state = proposal.init(initial, energy0, energy0)
        turning_batch = jax.vmap(metric.is_turning, in_axes=(0, None, 0))
        turning_pairs = jax.vmap(metric.is_turning, in_axes=(0, 0, 0))

        def build_subtree(key, start, direction, depth, stats):
            num_leaves = jnp.left_shift(jnp.ones((), jnp.int32), depth)

            def cond(s: _Subtree):
                return (s.index < num_leaves) & ~s.turning & ~s.diverged

            def body(s: _Subtree):
                k = s.index
                point, failures = hamiltonian.step(s.point, direction)
                energy = hamiltonian.energy(point)
                divergent = _is_divergent(point, energy, energy0, divergence_threshold)
                stats = s.stats.add(point, failures, energy, energy0, divergent)
                state = proposal.update(
                    jr.fold_in(key, k), s.state, point, energy, energy0
                )
                momentum_before = s.point.momentum
                velocity_before = metric.velocity(momentum_before)
                momentum = point.momentum
                velocity = metric.velocity(momentum)
                sum_before = s.momentum_sum
                total = sum_before + momentum
                # Record the leaf that opens a sub-tree at each level...
                opens = (k % spans == 0)[:, None]
                c = s.checkpoints
                c = _Checkpoints(
                    velocity_open=jnp.where(opens, velocity, c.velocity_open),
                    velocity_before=jnp.where(
                        opens, velocity_before, c.velocity_before
                    ),
                    sum_through=jnp.where(opens, total, c.sum_through),
                    sum_before=jnp.where(opens, sum_before, c.sum_before),
                    sum_before2=jnp.where(
                        opens, sum_before - momentum_before, c.sum_before2
                    ),
                )
                # ...then test every sub-tree (levels j >= 1) that this leaf closes.
                # Level j's sub-tree is [a, k]; its halves are [a, a' - 1] and
                # [a', k], where a' opened level j - 1's current sub-tree.
                closes = ((k + 1) % spans == 0) & (levels >= 1) & (levels <= depth)
                whole = total - c.sum_before[1:]
                turn = turning_batch(c.velocity_open[1:], velocity, whole)
                # Left half plus the first point of the right half.
                left_ext = c.sum_through[:-1] - c.sum_before[1:]
                turn = turn | turning_pairs(
                    c.velocity_open[1:], c.velocity_open[:-1], left_ext
                )
                # Right half plus the last point of the left half.
                right_ext = total - c.sum_before2[:-1]
                turn = turn | turning_batch(c.velocity_before[:-1], velocity, right_ext)
                turning = jnp.any(closes[1:] & turn)
                return _Subtree(
                    index=k + 1,
                    point=point,
                    first_momentum=jnp.where(k == 0, momentum, s.first_momentum),
                    state=state,
                    momentum_sum=total,
                    checkpoints=c,
                    turning=turning,
                    diverged=divergent,
                    stats=stats,
                )

            zeros = jnp.zeros((max_depth, n), dtype)
            empty = ProposalState(
                point=start,
                energy=jnp.asarray(jnp.inf, energy0.dtype),
                log_weight=jnp.asarray(-jnp.inf, energy0.dtype),
            )
            init = _Subtree(
                index=jnp.zeros((), jnp.int32),
                point=start,
                first_momentum=start.momentum,
                state=empty,
                momentum_sum=jnp.zeros((n,), dtype),
                checkpoints=_Checkpoints(zeros, zeros, zeros, zeros, zeros),
                turning=jnp.array(False),
                diverged=jnp.array(False),
                stats=stats,
            )
            return jax.lax.while_loop(cond, body, init)

        def cond(tree: _Tree):
            return ~tree.stop & (tree.depth < max_depth)

        def body(tree: _Tree):
            key_dir, key_sub, key_merge = jr.split(jr.fold_in(key, tree.depth), 3)
            forward = jr.bernoulli(key_dir)
            direction = jnp.where(forward, 1, -1)
            start = tree_where(forward, tree.right, tree.left)
            far = tree_where(forward, tree.left, tree.right)
            sub = build_subtree(key_sub, start, direction, tree.depth, tree.stats)
            valid = ~sub.turning & ~sub.diverged
            merged = proposal.merge(key_merge, tree.state, sub.state, True)
            state = tree_where(valid, merged, tree.state)
            left = tree_where(forward, tree.left, sub.point)
            right = tree_where(forward, sub.point, tree.right)
            total = tree.momentum_sum + sub.momentum_sum
            # The whole trajectory, then the checks across the two halves.
            turning = metric.is_turning(
                metric.velocity(left.momentum), metric.velocity(right.momentum), total
            )
            turning = turning | metric.is_turning(
                metric.velocity(far.momentum),
                metric.velocity(sub.first_momentum),
                tree.momentum_sum + sub.first_momentum,
            )
            turning = turning | metric.is_turning(
                metric.velocity(start.momentum),
                metric.velocity(sub.point.momentum),
                sub.momentum_sum + start.momentum,
            )
            return _Tree(
                left=left,
                right=right,
                state=state,
                momentum_sum=total,
                depth=tree.depth + valid.astype(jnp.int32),
                stop=~valid | turning,
                diverged=sub.diverged,
                stats=sub.stats,
            )

        init = _Tree(
            left=initial,
            right=initial,
            state=start_state,
            momentum_sum=initial.momentum,
            depth=jnp.zeros((), jnp.int32),
            stop=jnp.array(False),
            diverged=jnp.array(False),
            stats=_Stats.zero(dtype),
        )
        tree = jax.lax.while_loop(cond, body, init)
        chosen = proposal.finalise(
            jr.fold_in(key, max_depth), tree.state, start_state, energy0
        )
        return chosen, tree.stats.info(tree.diverged, tree.depth)


NoUTurn.__init__.__doc__ = """**Arguments:**

- `max_tree_depth`: the most doublings per transition, so at most
    `2^max_tree_depth - 1` integrator steps (a Python int, 1 to 30; default 10).
"""
