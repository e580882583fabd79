"""BlackJAX's `init`/`step` functions over a [`lapsample.Sampler`][]: the
translation between lapsample's `SamplerState`/`SamplerInfo` and BlackJAX's
`LaplaceHMCState`/`LaplaceDynamicHMCState`/`LaplaceHMCInfo`."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Int, PRNGKeyArray, PyTree

from .._proposal import AbstractWeightedProposal
from .._sampler import Sampler, SamplerInfo, SamplerState
from .._trajectory import AbstractNumStepsTrajectory
from .._validate import as_float
from .marginal import gradient_norm, LaplaceMarginal, max_steps_of
from .types import (
    LaplaceDynamicHMCState,
    LaplaceHMCInfo,
    LaplaceHMCState,
    SamplingAlgorithm,
)


class GivenLength(AbstractNumStepsTrajectory):
    """A trajectory of `num_steps` integrator steps, an array drawn outside (by
    BlackJAX's `integration_steps_fn`)."""

    num_steps: Int[Array, ""]

    def draw_num_steps(self, key):
        del key
        return jnp.asarray(self.num_steps, jnp.int32)


def steps_uniform_below(upper: int) -> Callable:
    """`key -> randint(key, (), 1, upper)`, BlackJAX's default `integration_steps_fn`
    with `upper = 10`."""

    def integration_steps_fn(key):
        return jr.randint(key, (), 1, upper)

    return integration_steps_fn


def next_key(key):
    return jr.split(key)[1]


def as_generator_arg(arg: Any) -> Array:
    """A typed PRNG key as its raw `uint32` data (a state of plain numbers), anything
    else (a Halton index, a raw key) as an array."""
    arg = jnp.asarray(arg)
    if jnp.issubdtype(arg.dtype, jax.dtypes.prng_key):
        return jr.key_data(arg)
    return arg


def compat_info(sampler: Sampler, state: SamplerState, info: SamplerInfo):
    max_steps = max_steps_of(sampler.marginal)
    failed = info.inner_failures > 0
    hit = failed if max_steps is None else (info.inner_steps_max >= max_steps) | failed
    if isinstance(sampler.proposal, AbstractWeightedProposal):
        # BlackJAX: no rejection step. A divergent trajectory is rejected whole.
        accepted = ~info.is_divergent
    else:
        accepted = info.is_accepted
    return LaplaceHMCInfo(
        momentum=None,
        acceptance_rate=info.acceptance_rate,
        is_accepted=accepted,
        is_divergent=info.is_divergent,
        energy=info.energy,
        proposal=None,
        num_integration_steps=info.num_integration_steps,
        lbfgs_iter_num=info.inner_steps_max,
        lbfgs_error=gradient_norm(sampler.marginal, state.theta_star, state.position),
        lbfgs_converged=~failed,
        lbfgs_hit_maxiter=hit,
        tree_depth=info.tree_depth,
        inner_steps_max=info.inner_steps_max,
        inner_failures=info.inner_failures,
        result=info.result,
    )


def _native_state(state) -> SamplerState:
    return SamplerState(
        state.position, state.logdensity, state.logdensity_grad, state.theta_star
    )


def fixed_algorithm(sampler: Sampler) -> SamplingAlgorithm:
    """BlackJAX's `init(position, rng_key=None)` and `step(rng_key, state)` over
    `sampler`, with `LaplaceHMCState` states."""

    def init(
        position: PyTree[ArrayLike],
        rng_key: PRNGKeyArray | None = None,
        theta_guess: PyTree[ArrayLike] | None = None,
    ):
        del rng_key
        native = sampler.init(position, theta_guess)
        return LaplaceHMCState(
            native.position,
            native.logdensity,
            native.logdensity_grad,
            native.theta_star,
        )

    def step(rng_key: PRNGKeyArray, state: LaplaceHMCState):
        new, info = sampler.step(rng_key, _native_state(state))
        return (
            LaplaceHMCState(
                new.position, new.logdensity, new.logdensity_grad, new.theta_star
            ),
            compat_info(sampler, new, info),
        )

    return SamplingAlgorithm(init, step, sampler)


def dynamic_algorithm(
    sampler: Sampler,
    next_random_arg_fn: Callable | None,
    integration_steps_fn: Callable,
    integration_steps_params: tuple,
) -> SamplingAlgorithm:
    """As `fixed_algorithm`, with `LaplaceDynamicHMCState` states whose
    `random_generator_arg` sets each transition's number of steps."""
    if next_random_arg_fn is None:
        next_random_arg_fn = next_key

    def init(
        position: PyTree[ArrayLike],
        rng_key: Any,
        theta_guess: PyTree[ArrayLike] | None = None,
    ):
        native = sampler.init(position, theta_guess)
        return LaplaceDynamicHMCState(
            native.position,
            native.logdensity,
            native.logdensity_grad,
            native.theta_star,
            as_generator_arg(rng_key),
        )

    def step(rng_key: PRNGKeyArray, state: LaplaceDynamicHMCState):
        arg = state.random_generator_arg
        num_steps = integration_steps_fn(arg, *integration_steps_params)
        this = eqx.tree_at(lambda s: s.trajectory, sampler, GivenLength(num_steps))
        new, info = this.step(rng_key, _native_state(state))
        new_state = LaplaceDynamicHMCState(
            new.position,
            new.logdensity,
            new.logdensity_grad,
            new.theta_star,
            next_random_arg_fn(arg),
        )
        return new_state, compat_info(sampler, new, info)

    return SamplingAlgorithm(init, step, sampler)


def _state_fields(position: PyTree[ArrayLike], laplace: LaplaceMarginal):
    position = jtu.tree_map(as_float, position)
    (value, theta_star), grad = jax.value_and_grad(laplace, has_aux=True)(position)
    return position, value, grad, theta_star


def init_hmc(position: PyTree[ArrayLike], laplace: LaplaceMarginal) -> LaplaceHMCState:
    """BlackJAX's `blackjax.mcmc.laplace_hmc.init(position, laplace)`: the state at
    `position` for a marginal from `laplace_marginal_factory` (cold start)."""
    return LaplaceHMCState(*_state_fields(position, laplace))


def init_dynamic_hmc(
    position: PyTree[ArrayLike], laplace: LaplaceMarginal, random_generator_arg: Any
) -> LaplaceDynamicHMCState:
    """BlackJAX's `blackjax.mcmc.laplace_dynamic_hmc.init(position, laplace,
    random_generator_arg)`."""
    return LaplaceDynamicHMCState(
        *_state_fields(position, laplace), as_generator_arg(random_generator_arg)
    )
