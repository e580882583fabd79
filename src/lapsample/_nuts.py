"""The No-U-Turn trajectory: iterative doubling with multinomial sampling."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int

from ._misc import tree_where
from ._phase_space import PhasePoint
from ._proposal import AbstractWeightedProposal, ProposalState
from ._trajectory import AbstractDynamicTrajectory, energy_diverged, TrajectoryStats
from ._validate import check_int


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
    stats: TrajectoryStats


class _Tree(eqx.Module):
    left: PhasePoint
    right: PhasePoint
    state: ProposalState
    momentum_sum: Float[Array, " n"]
    depth: Int[Array, ""]
    stop: Bool[Array, ""]
    diverged: Bool[Array, ""]
    stats: TrajectoryStats


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
        check_int("NoUTurn(max_tree_depth=...)", self.max_tree_depth, 1)
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
                divergent = energy_diverged(
                    point, energy, energy0, divergence_threshold
                )
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
            stats=TrajectoryStats.zero(dtype),
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
