"""BlackJAX's state, info and algorithm types for the Laplace samplers: plain
NamedTuples, so `jax.jit`, `jax.vmap` and `jax.lax.scan` take them as they are."""

from collections.abc import Callable
from typing import Any, NamedTuple

from jaxtyping import Array, Bool, Float, Int, PyTree

from .._proposal import AbstractProposal, EndpointMH, Multinomial
from .._results import RESULTS


class LaplaceHMCState(NamedTuple):
    """BlackJAX's `LaplaceHMCState`: `position` (`phi`), `logdensity`,
    `logdensity_grad` and `theta_star`, the mode of the latent at `position`."""

    position: PyTree[Array]
    logdensity: Float[Array, ""]
    logdensity_grad: PyTree[Array]
    theta_star: PyTree[Array]


class LaplaceDynamicHMCState(NamedTuple):
    """BlackJAX's `LaplaceDynamicHMCState`: the fields of `LaplaceHMCState` and
    `random_generator_arg`, from which `integration_steps_fn` draws the number of
    integrator steps of the next transition (a PRNG key is stored as its raw
    `uint32` data)."""

    position: PyTree[Array]
    logdensity: Float[Array, ""]
    logdensity_grad: PyTree[Array]
    theta_star: PyTree[Array]
    random_generator_arg: Array


class LaplaceHMCInfo(NamedTuple):
    """BlackJAX's `LaplaceHMCInfo`, filled from lapsample's
    [`lapsample.SamplerInfo`][].

    - `acceptance_rate`, `is_divergent`, `energy`, `num_integration_steps`: as in
      `SamplerInfo`.
    - `is_accepted`: BlackJAX's meaning: the endpoint passed the Metropolis test
      (endpoint proposals); for multinomial ones `True` unless the trajectory
      diverged (lapsample then rejects it whole).
    - `momentum`, `proposal`: `None` (not recorded).
    - `lbfgs_iter_num`: the most Newton iterations of any evaluation in the
      transition (`SamplerInfo.inner_steps_max`).
    - `lbfgs_error`: `‖∇_θ log_joint(θ*, φ)‖₂` at the new state.
    - `lbfgs_converged`: every inner solve of the transition succeeded.
    - `lbfgs_hit_maxiter`: an evaluation used all `maxiter` Newton iterations (or
      an inner solve failed).
    - `tree_depth`, `inner_steps_max`, `inner_failures`, `result`: lapsample's own
      diagnostics, as in `SamplerInfo`.
    """

    momentum: Any
    acceptance_rate: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    is_divergent: Bool[Array, ""]
    energy: Float[Array, ""]
    proposal: Any
    num_integration_steps: Int[Array, ""]
    lbfgs_iter_num: Int[Array, ""]
    lbfgs_error: Float[Array, ""]
    lbfgs_converged: Bool[Array, ""]
    lbfgs_hit_maxiter: Bool[Array, ""]
    tree_depth: Int[Array, ""]
    inner_steps_max: Int[Array, ""]
    inner_failures: Int[Array, ""]
    result: RESULTS


class SamplingAlgorithm(NamedTuple):
    """BlackJAX's `SamplingAlgorithm`: `init(position, rng_key=None)` (and
    lapsample's optional `theta_guess=`, a warm start for the first inner solve) and
    `step(rng_key, state)`, plain functions that `jax.jit`, `jax.vmap` and
    `jax.lax.scan` accept; and `sampler`, the lapsample [`lapsample.Sampler`][]
    underneath (for `eqx.filter_jit(algorithm.sampler.step)`, `lapsample.sample`,
    or swapping a component)."""

    init: Callable
    step: Callable
    sampler: Any


def hmc_proposal() -> EndpointMH:
    """`build_proposal=hmc_proposal`: the endpoint with a Metropolis–Hastings test,
    lapsample's [`lapsample.EndpointMH`][]."""
    return EndpointMH()


def multinomial_hmc_proposal() -> Multinomial:
    """`build_proposal=multinomial_hmc_proposal`: a draw from the whole
    trajectory, lapsample's [`lapsample.Multinomial`][]."""
    return Multinomial()


def resolve_proposal(build_proposal: Any) -> AbstractProposal:
    """An [`lapsample.AbstractProposal`][] for BlackJAX's `build_proposal=`: a
    proposal, or a function of no arguments returning one (`hmc_proposal`,
    `multinomial_hmc_proposal` from `lapsample.mcmc.hmc`)."""
    proposal = build_proposal
    if not isinstance(proposal, AbstractProposal) and callable(proposal):
        name = getattr(build_proposal, "__name__", "")
        if name in ("hmc_proposal", "multinomial_hmc_proposal"):
            # BlackJAX's own builders (or ours): matched by name.
            proposal = EndpointMH() if name == "hmc_proposal" else Multinomial()
        else:
            proposal = build_proposal()
    if not isinstance(proposal, AbstractProposal):
        raise TypeError(
            "`build_proposal` must be `lapsample.mcmc.hmc.hmc_proposal`, "
            "`lapsample.mcmc.hmc.multinomial_hmc_proposal` or an "
            f"`lapsample.AbstractProposal`, got {build_proposal!r}."
        )
    return proposal
