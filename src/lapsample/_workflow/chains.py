"""The per-chain compiled pieces: one transition, the set-up of every chain and a
chunk of transitions, vectorised or sequential on each device."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jax.sharding import PartitionSpec
from jaxtyping import Array, Float, PyTree

from .._misc import TreeRaveller
from .._sampler import Sampler, SamplerInfo, SamplerState
from .adaptation import (
    adapt,
    AdaptationState,
    dual_averaging_init,
    find_reasonable_step_size,
    welford_init,
)
from .devices import CHAIN_AXIS


# --------------------------------------------------------------------------------
# Per-chain pieces (traced inside the jitted chunk).
# --------------------------------------------------------------------------------


class ChainCarry(eqx.Module):
    state: SamplerState
    adaptation: AdaptationState


class Record(eqx.Module):
    position: PyTree[Array]
    logdensity: Float[Array, ""]
    theta_star: PyTree[Array] | None
    theta: PyTree[Array] | None
    info: SamplerInfo
    step_size: Float[Array, ""]


def _tuned(sampler: Sampler, adaptation: AdaptationState) -> Sampler:
    if adaptation.inverse_mass_matrix is None:
        return eqx.tree_at(lambda s: s.step_size, sampler, adaptation.step_size)
    return eqx.tree_at(
        lambda s: (s.step_size, s.inverse_mass_matrix),
        sampler,
        (adaptation.step_size, adaptation.inverse_mass_matrix),
    )


def _chain_keys(key_data, key_impl: str):
    key = jr.wrap_key_data(key_data, impl=key_impl)
    setup_key, run_key = jr.split(key)
    return setup_key, run_key


def _transition(sampler, run_key, carry: ChainCarry, step, flags, sample_theta):
    key = jr.fold_in(run_key, step)
    key_step, key_adapt, key_theta = jr.split(key, 3)
    tuned = _tuned(sampler, carry.adaptation)
    state, info = tuned.step(key_step, carry.state)
    adaptation = jax.lax.cond(
        flags.is_warmup,
        lambda a: adapt(tuned, key_adapt, a, state, info.acceptance_rate, flags),
        lambda a: a,
        carry.adaptation,
    )
    theta = None
    if sample_theta:
        marginal = sampler.marginal

        def draw(_):
            return marginal.sample_theta(key_theta, state.position, state.theta_star)

        def skip(_):
            return jtu.tree_map(lambda x: jnp.full_like(x, jnp.nan), state.theta_star)

        theta = jax.lax.cond(flags.is_warmup, skip, draw, None)
    record = Record(
        position=state.position,
        logdensity=state.logdensity,
        theta_star=state.theta_star,
        theta=theta,
        info=info,
        step_size=tuned.step_size,
    )
    return ChainCarry(state, adaptation), record


def _over_chains(fn, batched, shared, mesh, vectorized: bool):
    """`fn(shared, one_chain)` for every chain of `batched` (leading axis): `vmap`
    or a sequential `lax.map` on each device, with `shard_map` across a mesh."""

    def local(batched, shared):
        if vectorized:
            return eqx.filter_vmap(lambda b: fn(shared, b))(batched)
        return jax.lax.map(lambda b: fn(shared, b), batched)

    if mesh is None:
        return local(batched, shared)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(CHAIN_AXIS), PartitionSpec()),
        out_specs=PartitionSpec(CHAIN_AXIS),
        check_vma=False,
    )(batched, shared)


def setup_chains_impl(
    sampler,
    key_data,
    positions,
    inverse_mass,
    target_accept,
    *,
    key_impl,
    search,
    welford_dense,
    mesh,
    vectorized,
):
    dynamic, static = eqx.partition(sampler, eqx.is_array)

    def one(shared, batched):
        dynamic, inverse_mass, target_accept = shared
        sampler = eqx.combine(dynamic, static)
        key_data, position = batched
        setup_key, _ = _chain_keys(key_data, key_impl)
        state = sampler.init(position)
        # A strongly typed copy, so that the adaptation's carry keeps its type.
        step_size = jnp.asarray(sampler.step_size, sampler.step_size.dtype)
        if search:
            tuned = sampler
            if inverse_mass is not None:
                tuned = eqx.tree_at(
                    lambda s: s.inverse_mass_matrix, sampler, inverse_mass
                )
            step_size = find_reasonable_step_size(tuned, setup_key, state, step_size)
        if welford_dense is None:
            welford = None
        else:
            flat = TreeRaveller(state.position).ravel(state.position)
            welford = welford_init(flat.shape[0], welford_dense, flat.dtype)
        adaptation = AdaptationState(
            step_size=step_size,
            inverse_mass_matrix=inverse_mass,
            dual_averaging=dual_averaging_init(step_size),
            welford=welford,
            target_accept=jnp.asarray(target_accept, step_size.dtype),
        )
        return ChainCarry(state, adaptation)

    return _over_chains(
        one,
        (key_data, positions),
        (dynamic, inverse_mass, target_accept),
        mesh,
        vectorized,
    )


setup_chains = eqx.filter_jit(setup_chains_impl)


def advance_chains_impl(
    sampler,
    key_data,
    carry,
    flags,
    start,
    num_steps,
    *,
    key_impl,
    sample_theta,
    mesh,
    vectorized,
):
    """Run `num_steps` (at most the length of `flags`) transitions of every chain,
    from global iteration `start`; returns the new carry and the records, padded
    to the chunk length."""
    dynamic, static = eqx.partition(sampler, eqx.is_array)
    chunk = flags.is_warmup.shape[0]

    def one(shared, batched):
        dynamic, flags, start, num_steps = shared
        sampler = eqx.combine(dynamic, static)
        key_data, carry = batched
        _, run_key = _chain_keys(key_data, key_impl)

        def transition(carry, i):
            step_flags = jtu.tree_map(lambda f: f[i], flags)
            return _transition(
                sampler, run_key, carry, start + i, step_flags, sample_theta
            )

        template = eqx.filter_eval_shape(transition, carry, 0)[1]
        buffers = jtu.tree_map(
            lambda s: jnp.zeros((chunk, *s.shape), s.dtype), template
        )

        def body(i, loop):
            carry, buffers = loop
            carry, record = transition(carry, i)
            buffers = jtu.tree_map(lambda b, r: b.at[i].set(r), buffers, record)
            return carry, buffers

        return jax.lax.fori_loop(0, num_steps, body, (carry, buffers))

    return _over_chains(
        one, (key_data, carry), (dynamic, flags, start, num_steps), mesh, vectorized
    )


# A module-level jitted function, so that every run with the same structure (model
# type and shapes, number of chains, chunk length, options) shares one compilation.
advance_chains = eqx.filter_jit(advance_chains_impl)


def evaluate_chains_impl(sampler, positions, theta_guess, *, mesh, vectorized):
    """The state of every chain at `positions` (leading chain axis), each inner solve
    warm-started at the chain's `theta_guess` (`None` for a marginal without a
    latent): the log density and gradient that `resume` compares with the
    checkpoint's."""
    dynamic, static = eqx.partition(sampler, eqx.is_array)

    def one(dynamic, batched):
        position, theta = batched
        return eqx.combine(dynamic, static).init(position, theta)

    return _over_chains(one, (positions, theta_guess), dynamic, mesh, vectorized)


evaluate_chains = eqx.filter_jit(evaluate_chains_impl)
