"""Proposals: which point of a trajectory the chain moves to."""

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ._integrator import PhasePoint
from ._misc import tree_where


class ProposalState(eqx.Module):
    """The running choice of a proposal along a trajectory.

    - `point`: the candidate [`lapsample.PhasePoint`][].
    - `energy`: its Hamiltonian `H = -log p + K`.
    - `log_weight`: `log Σᵢ exp(H₀ - Hᵢ)` over the trajectory points this state
      summarises, relative to the energy `H₀` of the trajectory's initial point
      (`-inf` for none).
    """

    point: PhasePoint
    energy: Float[Array, ""]
    log_weight: Float[Array, ""]


def log_weight(energy: Float[Array, ""], energy0: Float[Array, ""]) -> Array:
    """`H₀ - H`, with NaN (from `inf - inf`, say) mapped to `-inf`: a point whose
    energy cannot be compared is never chosen."""
    delta = energy0 - energy
    return jnp.where(jnp.isnan(delta), -jnp.inf, delta)


def acceptance_probability(
    energy: Float[Array, ""], energy0: Float[Array, ""]
) -> Float[Array, ""]:
    """`min(1, exp(H₀ - H))`, zero where it is not defined."""
    return jnp.minimum(1.0, jnp.exp(log_weight(energy, energy0)))


class AbstractProposal(eqx.Module):
    """Chooses the next state of the chain from the points of a trajectory.

    A trajectory starts from `init(initial_point, …)`, feeds each new point to
    `update`, and finally calls `finalise` to get the chosen state. Energies are
    passed with the energy `H₀` of the initial point so that weights stay relative
    (and finite) however large `H` is.
    """

    def init(
        self, point: PhasePoint, energy: Float[Array, ""], energy0: Float[Array, ""]
    ) -> ProposalState:
        """The state of a trajectory that holds only `point`."""
        return ProposalState(point, energy, log_weight(energy, energy0))

    @abc.abstractmethod
    def update(
        self,
        key: PRNGKeyArray,
        state: ProposalState,
        point: PhasePoint,
        energy: Float[Array, ""],
        energy0: Float[Array, ""],
    ) -> ProposalState:
        """Account for a new point of the trajectory.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `state`: the proposal's state so far.
        - `point`, `energy`: the new point and its Hamiltonian.
        - `energy0`: the Hamiltonian of the trajectory's initial point.

        **Returns:**

        The updated [`lapsample.ProposalState`][].
        """

    @abc.abstractmethod
    def finalise(
        self,
        key: PRNGKeyArray,
        state: ProposalState,
        initial: ProposalState,
        energy0: Float[Array, ""],
    ) -> ProposalState:
        """The state the chain moves to.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `state`: the proposal's state after the whole trajectory.
        - `initial`: the state of the initial point alone.
        - `energy0`: the Hamiltonian of the initial point.

        **Returns:**

        The chosen [`lapsample.ProposalState`][].
        """


class AbstractWeightedProposal(AbstractProposal):
    """A proposal that samples a point of the *whole* trajectory with probability
    proportional to `exp(-H)`.

    Such proposals can be built progressively in O(1) memory and can merge two
    trajectory segments (`merge`), which is what the No-U-Turn sampler needs.
    Trajectories of fixed length give a weighted proposal a uniformly random
    position of the initial point within the trajectory, as detailed balance
    requires.
    """

    @abc.abstractmethod
    def merge(
        self,
        key: PRNGKeyArray,
        state: ProposalState,
        new: ProposalState,
        biased: bool,
    ) -> ProposalState:
        """Combine the choices of two adjacent trajectory segments.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `state`: the state of the existing segment.
        - `new`: the state of the new segment.
        - `biased`: if `True`, move to `new`'s candidate with probability
          `min(1, W_new / W_state)` (biased progressive sampling, which favours
          points far from the start); otherwise with probability
          `W_new / (W_state + W_new)` (uniform progressive sampling).

        **Returns:**

        The merged [`lapsample.ProposalState`][], whose `log_weight` is the total.
        """


class Multinomial(AbstractWeightedProposal):
    """Multinomial sampling from the whole trajectory: the next state is a point of
    the trajectory drawn with probability proportional to `exp(-H)`, chosen
    progressively as the trajectory is built (Betancourt 2017).

    There is no separate accept/reject step: the initial point is one of the
    candidates. With [`lapsample.NoUTurn`][] the sampling across doublings is biased
    progressive sampling; within a fixed-length trajectory it is uniform.

    ??? cite "References"

        ```bibtex
        @article{betancourt2017conceptual,
            title={A Conceptual Introduction to Hamiltonian Monte Carlo},
            author={Betancourt, Michael},
            journal={arXiv preprint arXiv:1701.02434},
            year={2017}
        }
        ```
    """

    def update(self, key, state, point, energy, energy0):
        return self.merge(key, state, self.init(point, energy, energy0), False)

    def merge(self, key, state, new, biased):
        total = jnp.logaddexp(state.log_weight, new.log_weight)
        if biased:
            log_prob = new.log_weight - state.log_weight
        else:
            log_prob = new.log_weight - total
        # -inf - -inf is NaN: a segment of zero weight is never chosen.
        log_prob = jnp.where(new.log_weight == -jnp.inf, -jnp.inf, log_prob)
        take_new = _bernoulli_log(key, log_prob)
        merged = tree_where(take_new, new, state)
        return ProposalState(merged.point, merged.energy, total)

    def finalise(self, key, state, initial, energy0):
        del key, initial, energy0
        return state


Multinomial.__init__.__doc__ = """Takes no arguments."""


class EndpointMH(AbstractProposal):
    """Classic HMC: propose the last point of the trajectory and accept it with
    the Metropolis–Hastings probability `min(1, exp(H₀ - H))`.
    """

    def update(self, key, state, point, energy, energy0):
        del key, state
        return self.init(point, energy, energy0)

    def finalise(self, key, state, initial, energy0):
        accept = _bernoulli_log(key, log_weight(state.energy, energy0))
        return tree_where(accept, state, initial)


EndpointMH.__init__.__doc__ = """Takes no arguments."""


def _bernoulli_log(key: PRNGKeyArray, log_prob: Float[Array, ""]) -> Bool[Array, ""]:
    """`True` with probability `min(1, exp(log_prob))` (NaN counts as zero)."""
    u = jr.uniform(key, (), dtype=log_prob.dtype)
    return jnp.log(u) < jnp.where(jnp.isnan(log_prob), -jnp.inf, log_prob)
