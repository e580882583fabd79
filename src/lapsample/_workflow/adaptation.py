"""Stan's warm-up: dual averaging of the step size, Welford estimates of the
metric, and the initial step-size search."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .._hamiltonian import Hamiltonian, initial_point
from .._misc import TreeRaveller
from .._phase_space import FlatLogDensity
from .schedule import StepFlags


# Stan's (and Hoffman & Gelman's) dual-averaging constants.
_GAMMA = 0.05
_T0 = 10.0
_KAPPA = 0.75

# The initial step-size search stops outside these bounds (a flat or degenerate
# target would otherwise double forever).
_MIN_STEP_SIZE = 1e-10
_MAX_STEP_SIZE = 1e7
_MAX_SEARCH_ITERATIONS = 100


# --------------------------------------------------------------------------------
# Dual averaging (Nesterov 2009; Hoffman & Gelman 2014, section 3.2.1).
# --------------------------------------------------------------------------------


class DualAveragingState(eqx.Module):
    """Dual averaging of `log(step_size)` toward a target acceptance statistic.

    - `log_step_size`: the iterate `x_t`, used by the next transition.
    - `log_step_size_avg`: the weighted average `x̄_t`, the final step size.
    - `error_avg`: the running average `H̄_t` of `target - acceptance`.
    - `count`: `t`, the number of updates since the last restart.
    - `mu`: the shrinkage point, `log(10 · step_size)` at the last restart.
    """

    log_step_size: Float[Array, ""]
    log_step_size_avg: Float[Array, ""]
    error_avg: Float[Array, ""]
    count: Int[Array, ""]
    mu: Float[Array, ""]


def dual_averaging_init(step_size: Float[Array, ""]) -> DualAveragingState:
    """A fresh dual-averaging state around `step_size` (`mu = log(10 · step_size)`)."""
    step_size = jnp.asarray(step_size)
    step_size = jnp.asarray(step_size, step_size.dtype)  # drop weak typing
    log_step = jnp.log(step_size)
    zero = jnp.zeros((), step_size.dtype)
    return DualAveragingState(
        log_step_size=log_step,
        log_step_size_avg=zero,
        error_avg=zero,
        count=jnp.zeros((), jnp.int32),
        mu=jnp.log(10.0 * step_size),
    )


def dual_averaging_update(
    state: DualAveragingState,
    acceptance: Float[Array, ""],
    target: Float[Array, ""],
) -> DualAveragingState:
    """One update with the acceptance statistic of the last transition:

    ```
    t    = t + 1
    H̄_t  = (1 - 1/(t + t0)) H̄_{t-1} + (target - a_t)/(t + t0)
    x_t  = mu - √t / gamma · H̄_t
    x̄_t  = t^-kappa x_t + (1 - t^-kappa) x̄_{t-1}
    ```

    with `gamma = 0.05`, `t0 = 10`, `kappa = 0.75`. A non-finite statistic counts
    as 0 (reject), and a statistic above 1 as 1.
    """
    dtype = state.error_avg.dtype
    acceptance = jnp.asarray(acceptance, dtype)
    acceptance = jnp.where(jnp.isfinite(acceptance), acceptance, 0.0)
    acceptance = jnp.clip(acceptance, 0.0, 1.0)
    count = state.count + 1
    t = count.astype(dtype)
    eta = 1.0 / (t + _T0)
    error_avg = (1.0 - eta) * state.error_avg + eta * (
        jnp.asarray(target, dtype) - acceptance
    )
    log_step = state.mu - jnp.sqrt(t) / _GAMMA * error_avg
    weight = t**-_KAPPA
    log_avg = weight * log_step + (1.0 - weight) * state.log_step_size_avg
    return DualAveragingState(
        log_step_size=log_step,
        log_step_size_avg=log_avg,
        error_avg=error_avg,
        count=count,
        mu=state.mu,
    )


# --------------------------------------------------------------------------------
# Welford's running (co)variance with Stan's regularisation.
# --------------------------------------------------------------------------------


class WelfordState(eqx.Module):
    """Running mean and sum of squared deviations (Welford's algorithm) of the flat
    position.

    - `count`: the number of draws added.
    - `mean`: their mean.
    - `m2`: the sum of squared deviations, a vector (diagonal) or a matrix (dense).
    """

    count: Int[Array, ""]
    mean: Float[Array, " n"]
    m2: Float[Array, " n"] | Float[Array, "n n"]


def welford_init(size: int, dense: bool, dtype) -> WelfordState:
    """An empty estimator for `size` coordinates."""
    shape = (size, size) if dense else (size,)
    return WelfordState(
        count=jnp.zeros((), jnp.int32),
        mean=jnp.zeros((size,), dtype),
        m2=jnp.zeros(shape, dtype),
    )


def welford_update(state: WelfordState, x: Float[Array, " n"]) -> WelfordState:
    """Add one draw."""
    x = x.astype(state.mean.dtype)
    count = state.count + 1
    delta = x - state.mean
    mean = state.mean + delta / count.astype(x.dtype)
    if state.m2.ndim == 2:
        m2 = state.m2 + jnp.outer(delta, x - mean)
    else:
        m2 = state.m2 + delta * (x - mean)
    return WelfordState(count=count, mean=mean, m2=m2)


def welford_inverse_mass_matrix(
    state: WelfordState,
) -> Float[Array, " n"] | Float[Array, "n n"]:
    """The sample (co)variance, shrunk toward `1e-3 · I` as Stan does:
    `(n / (n + 5)) · var + 1e-3 · 5 / (n + 5)`."""
    n = state.count.astype(state.mean.dtype)
    covariance = state.m2 / jnp.maximum(n - 1.0, 1.0)
    shrink = n / (n + 5.0)
    ridge = 1e-3 * 5.0 / (n + 5.0)
    if state.m2.ndim == 2:
        eye = jnp.eye(state.m2.shape[0], dtype=state.m2.dtype)
        out = shrink * covariance + ridge * eye
        # Symmetrise away round-off so that the Cholesky factor is well defined.
        return 0.5 * (out + out.T)
    return shrink * covariance + ridge


# --------------------------------------------------------------------------------
# The state of a chain's adaptation.
# --------------------------------------------------------------------------------


class AdaptationState(eqx.Module):
    """Everything warm-up adapts, for one chain (arrays only).

    - `step_size`: the step size of the next transition.
    - `inverse_mass_matrix`: the inverse mass matrix of the next transition (a
      vector for a diagonal metric, a matrix for a dense one), or `None` when the
      sampler's own metric is kept.
    - `dual_averaging`: the step size's `DualAveragingState`.
    - `welford`: the running (co)variance of the current slow window, or `None`
      when the mass matrix is not adapted.
    - `target_accept`: the target of the acceptance statistic.
    """

    step_size: Float[Array, ""]
    inverse_mass_matrix: Float[Array, "*n"] | None
    dual_averaging: DualAveragingState
    welford: WelfordState | None
    target_accept: Float[Array, ""]


# --------------------------------------------------------------------------------
# The initial step-size heuristic.
# --------------------------------------------------------------------------------


def find_reasonable_step_size(
    sampler,
    key: PRNGKeyArray,
    state,
    step_size: Float[Array, ""],
) -> Float[Array, ""]:
    """Stan's initial step-size heuristic (Hoffman & Gelman 2014, Algorithm 4, with
    Stan's threshold of 0.8).

    From `state`, take one integrator step with fresh momentum; if the acceptance
    probability `exp(H₀ - H)` exceeds 0.8, double the step size until it no longer
    does, otherwise halve it until it does. A failed evaluation counts as
    probability 0. The search stops after 100 tries or outside `[1e-10, 1e7]`.

    **Arguments:**

    - `sampler`: a [`lapsample.Sampler`][] (its marginal, integrator and metric).
    - `key`: a JAX PRNG key (for the momenta).
    - `state`: the chain's [`lapsample.SamplerState`][].
    - `step_size`: the starting step size.

    **Returns:**

    The step size, a scalar array of the same dtype.
    """
    raveller = TreeRaveller(state.position)
    logdensity = FlatLogDensity(sampler.marginal, raveller)
    flat = raveller.ravel(state.position)
    dtype = flat.dtype
    step_size = jnp.asarray(step_size)
    logdensity_grad = raveller.ravel(state.logdensity_grad)
    forward = jnp.ones((), jnp.int32)
    threshold = math.log(0.8)

    def energy_change(eps, k):
        momentum = sampler.metric.sample_momentum(k, flat)
        point = initial_point(
            flat,
            momentum,
            state.logdensity,
            logdensity_grad,
            state.theta_star,
            logdensity.trail(flat, state.theta_star),
        )
        hamiltonian = Hamiltonian(
            logdensity, sampler.metric, sampler.integrator, eps.astype(dtype)
        )
        new, failures = hamiltonian.step(point, forward)
        h = hamiltonian.energy(new)
        ok = jnp.isfinite(h) & (failures == 0)
        return jnp.where(ok, hamiltonian.energy(point) - h, -jnp.inf)

    # One call site of the integrator (each one is a copy of the marginal's
    # compiled code): the first trip only decides the direction of the search.
    def cond(carry):
        i, eps, done, _ = carry
        in_range = (eps > _MIN_STEP_SIZE) & (eps < _MAX_STEP_SIZE)
        return ~done & (i < _MAX_SEARCH_ITERATIONS) & in_range

    def body(carry):
        i, eps, _, grow = carry
        change = energy_change(eps, jr.fold_in(key, i))
        grow = jnp.where(i == 0, change > threshold, grow)
        stop = jnp.where(grow, ~(change > threshold), ~(change < threshold))
        stop = stop & (i > 0)
        factor = jnp.where(grow, 2.0, 0.5).astype(eps.dtype)
        eps = jnp.where(stop | (i == 0), eps, eps * factor)
        return i + 1, eps, stop, grow

    init = (jnp.zeros((), jnp.int32), step_size, jnp.array(False), jnp.array(False))
    _, eps, _, _ = jax.lax.while_loop(cond, body, init)
    return jnp.clip(eps, _MIN_STEP_SIZE, _MAX_STEP_SIZE).astype(step_size.dtype)


def adapt(
    sampler,
    key: PRNGKeyArray,
    adaptation: AdaptationState,
    state,
    acceptance: Float[Array, ""],
    flags: StepFlags,
) -> AdaptationState:
    """Update one chain's adaptation after a warm-up transition, as Stan's
    `adapt_diag_e_nuts` / `adapt_dense_e_nuts` do: a dual-averaging update; the new
    position added to the window's estimate; at the end of a slow window, the new
    inverse mass matrix, a fresh step-size search and a dual-averaging restart; after
    the last warm-up transition, the step size `exp(x̄)`.

    `sampler` is the sampler of the transition just made (tuned with the current
    `adaptation`); `flags` must not be batched over chains, so that the window-end
    branch stays a real branch under `vmap`.
    """
    da = dual_averaging_update(
        adaptation.dual_averaging, acceptance, adaptation.target_accept
    )
    step_size = jnp.exp(da.log_step_size).astype(adaptation.step_size.dtype)
    inverse_mass = adaptation.inverse_mass_matrix
    welford = adaptation.welford
    if welford is not None:
        flat = TreeRaveller(state.position).ravel(state.position)
        welford = jax.tree_util.tree_map(
            lambda new, old: jnp.where(flags.in_window, new, old),
            welford_update(welford, flat),
            welford,
        )

        def close_window(operands):
            welford, inverse_mass, step_size, da = operands
            new_inverse_mass = welford_inverse_mass_matrix(welford).astype(
                inverse_mass.dtype
            )
            tuned = eqx.tree_at(
                lambda s: (s.step_size, s.inverse_mass_matrix),
                sampler,
                (step_size, new_inverse_mass),
            )
            new_step = find_reasonable_step_size(tuned, key, state, step_size)
            empty = welford_init(
                welford.mean.shape[0], welford.m2.ndim == 2, welford.mean.dtype
            )
            return empty, new_inverse_mass, new_step, dual_averaging_init(new_step)

        welford, inverse_mass, step_size, da = jax.lax.cond(
            flags.window_end,
            close_window,
            lambda operands: operands,
            (welford, inverse_mass, step_size, da),
        )
    final = jnp.exp(da.log_step_size_avg).astype(step_size.dtype)
    step_size = jnp.where(flags.is_last_warmup, final, step_size)
    return AdaptationState(
        step_size=step_size,
        inverse_mass_matrix=inverse_mass,
        dual_averaging=da,
        welford=welford,
        target_accept=adaptation.target_accept,
    )


def initial_inverse_mass_matrix(
    inverse_mass_matrix: ArrayLike, size: int, dense: bool, dtype
) -> Array:
    """The starting inverse mass matrix of warm-up, from the sampler's: a scalar is
    broadcast, a vector becomes a diagonal matrix when `dense`, a matrix keeps its
    diagonal when not `dense`."""
    array = jnp.asarray(inverse_mass_matrix, dtype)
    if array.ndim == 0:
        array = jnp.full((size,), array, dtype)
    if dense and array.ndim == 1:
        array = jnp.diag(array)
    if not dense and array.ndim == 2:
        array = jnp.diagonal(array)
    return array
