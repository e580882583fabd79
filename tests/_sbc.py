"""Simulation-based calibration (Talts et al. 2018), shared by `tests/test_sbc.py`
and `benchmarks/sbc.py`.

One replication: draw `(phi, y)` from the prior predictive, run a chain on
`p(phi | y)` (a Stan-style warm-up, then draws), thin it to `L` draws and record
the rank of the true `phi` among them. If the sampler is correct, every rank in
`0 … L` is equally likely. Replications are `vmap`ped inside one `jit`: both
models have a diagonal Hessian in `theta`, so `DiagonalHessian` involves no
Cholesky (batched Cholesky can hang on CPU with jaxlib 0.10.2).

Tuning, per replication and from the data alone: the chain starts at a fixed point
(the prior median of `phi`, independent of the truth) and runs the library's own
warm-up pieces (Stan's windowed schedule: Stan's initial step-size search, dual
averaging toward an acceptance statistic of 0.8 and a diagonal inverse mass matrix
from the windows' variances). Warm-up draws are discarded.
"""

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.stats

import lapsample
from lapsample._workflow.adaptation import (
    adapt,
    AdaptationState,
    dual_averaging_init,
    find_reasonable_step_size,
    welford_init,
)
from lapsample._workflow.schedule import schedule_flags, StepFlags

from .helpers import EightSchoolsLogJoint, import_arviz, SeedModel


jax.config.update("jax_enable_x64", True)


# The settings shared by the test and the benchmark (see tests/test_sbc.py for why
# they suffice).
NUM_REPLICATIONS = 1000
NUM_WARMUP = 200
# L, the thinned draws per replication; ranks take the values 0 … L.
NUM_DRAWS = 19
# Every THIN-th draw is kept. The post-warm-up chains' ESS per draw (bulk, ArviZ;
# `benchmarks/sbc.py --ess`) has a median of 0.3-2 and a 5% quantile of 0.08-0.26
# across samplers and models, so draws 20 apart are nearly independent in all but
# the worst-mixing few percent of replications.
THIN = 20
NUM_BINS = 10
SEED = 20261127


# --------------------------------------------------------------------------------
# Models: a prior to simulate from and a log joint per data set.
# --------------------------------------------------------------------------------


class SeedSBC(eqx.Module):
    """The seed model with `n` observations: `log_sigma ~ N(0, 3²)`,
    `theta ~ N(0, σ² I_n)`, `y ~ N(theta, I_n)`; `phi = log_sigma`."""

    n: int = eqx.field(static=True)

    parameters = ("log_sigma",)

    def draw(self, key):
        k_phi, k_theta, k_y = jr.split(key, 3)
        log_sigma = 3.0 * jr.normal(k_phi, ())
        theta = jnp.exp(log_sigma) * jr.normal(k_theta, (self.n,))
        return log_sigma, theta + jr.normal(k_y, (self.n,))

    def log_joint(self, y):
        return SeedModel(y=y)

    def theta_init(self):
        return jnp.zeros(self.n)

    def phi_init(self):
        # The prior median.
        return jnp.array(0.0)


class EightSchoolsSBC(eqx.Module):
    """Eight schools' structure with simulated data: `mu ~ N(0, 5²)`,
    `tau ~ half-Cauchy(0, 5)` (sampled as `log tau` with its Jacobian, as in
    `EightSchoolsLogJoint`), `theta_j ~ N(mu, tau²)`, `y_j ~ N(theta_j, sigma_j²)`
    with the classic `sigma`; `phi = (mu, log tau)`."""

    sigma: jax.Array = eqx.field(
        default=(15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0), converter=jnp.asarray
    )

    parameters = ("mu", "log_tau")

    def draw(self, key):
        k_mu, k_tau, k_theta, k_y = jr.split(key, 4)
        mu = 5.0 * jr.normal(k_mu, ())
        tau = 5.0 * jnp.abs(jr.cauchy(k_tau, ()))
        theta = mu + tau * jr.normal(k_theta, self.sigma.shape)
        y = theta + self.sigma * jr.normal(k_y, self.sigma.shape)
        return jnp.stack([mu, jnp.log(tau)]), y

    def log_joint(self, y):
        return EightSchoolsLogJoint(y, self.sigma)

    def theta_init(self):
        return jnp.zeros_like(self.sigma)

    def phi_init(self):
        # The prior median: mu = 0, tau = 5.
        return jnp.array([0.0, math.log(5.0)])


MODELS = {"seed": SeedSBC(n=10), "eight_schools": EightSchoolsSBC()}


# --------------------------------------------------------------------------------
# Samplers: the seed API's shims, with a diagonal Hessian and placeholder tuning
# (the warm-up replaces step size and inverse mass).
# --------------------------------------------------------------------------------

# Integrator steps of the fixed-length samplers (the mean number for the
# random-length ones). After warm-up the metric is the posterior's diagonal
# variance and the step size is about 1, so a trajectory spans a few posterior
# standard deviations.
NUM_INTEGRATION_STEPS = 4
MAX_TREE_DEPTH = 6


def _shim(shim: Callable, **options) -> Callable:
    def make(log_joint, theta_init, size):
        built = shim(
            log_joint,
            theta_init,
            step_size=1.0,
            inverse_mass_matrix=jnp.ones(size),
            hessian=lapsample.DiagonalHessian(),
            **options,
        )
        # The BlackJAX names return a `SamplingAlgorithm` over a `Sampler`.
        return built if isinstance(built, lapsample.Sampler) else built.sampler

    return make


_FIXED = dict(num_integration_steps=NUM_INTEGRATION_STEPS)
SAMPLERS = {
    "laplace_hmc": _shim(lapsample.laplace_hmc, **_FIXED),
    "laplace_mhmc": _shim(lapsample.laplace_mhmc, **_FIXED),
    "laplace_dhmc": _shim(lapsample.laplace_dhmc, **_FIXED),
    "laplace_dmhmc": _shim(lapsample.laplace_dmhmc, **_FIXED),
    "laplace_nuts": _shim(lapsample.laplace_nuts, max_tree_depth=MAX_TREE_DEPTH),
}


def make_sampler(model, sampler_name: str) -> lapsample.Sampler:
    """The sampler for `model`, built once on a template data set (each replication
    swaps in its own `log_joint`)."""
    _, y = model.draw(jr.key(0))
    size = model.phi_init().size
    return SAMPLERS[sampler_name](model.log_joint(y), model.theta_init(), size)


# --------------------------------------------------------------------------------
# One replication, and all of them vmapped in one jit.
# --------------------------------------------------------------------------------


def _tuned(sampler, adaptation):
    return eqx.tree_at(
        lambda s: (s.step_size, s.inverse_mass_matrix),
        sampler,
        (adaptation.step_size, adaptation.inverse_mass_matrix),
    )


def _replication(sampler, model, key, flags, num_warmup):
    k_data, k_search, k_chain = jr.split(key, 3)
    truth, y = model.draw(k_data)
    sampler = eqx.tree_at(lambda s: s.marginal.log_joint, sampler, model.log_joint(y))
    state = sampler.init(model.phi_init())
    step_size = find_reasonable_step_size(sampler, k_search, state, sampler.step_size)
    flat_size = model.phi_init().size
    adaptation = AdaptationState(
        step_size=step_size,
        inverse_mass_matrix=jnp.ones(flat_size),
        dual_averaging=dual_averaging_init(step_size),
        welford=welford_init(flat_size, False, step_size.dtype),
        target_accept=jnp.asarray(0.8),
    )

    # Warm-up and draws in one scan (one copy of the transition to compile); the
    # adaptation is frozen after the last warm-up transition.
    def transition(carry, xs):
        state, adaptation = carry
        key, step_flags = xs
        k_step, k_adapt = jr.split(key)
        tuned = _tuned(sampler, adaptation)
        state, info = tuned.step(k_step, state)
        adaptation = jax.lax.cond(
            step_flags.is_warmup,
            lambda a: adapt(tuned, k_adapt, a, state, info.acceptance_rate, step_flags),
            lambda a: a,
            adaptation,
        )
        return (state, adaptation), (state.position, info.is_divergent)

    num_steps = flags.is_warmup.shape[0]
    (_, adaptation), (positions, divergent) = jax.lax.scan(
        transition, (state, adaptation), (jr.split(k_chain, num_steps), flags)
    )
    positions = jnp.reshape(positions, (num_steps, -1))[num_warmup:]
    return dict(
        truth=jnp.reshape(truth, (-1,)),
        draws=positions,
        divergences=divergent[num_warmup:].sum(),
        step_size=adaptation.step_size,
    )


@eqx.filter_jit
def _simulate(sampler, model, keys, flags, num_warmup: int):
    return jax.vmap(lambda k: _replication(sampler, model, k, flags, num_warmup))(keys)


def simulate(
    model_name: str,
    sampler_name: str,
    *,
    seed: int = SEED,
    num_replications: int = NUM_REPLICATIONS,
    num_warmup: int = NUM_WARMUP,
    num_samples: int = NUM_DRAWS * THIN,
) -> dict[str, np.ndarray]:
    """Run `num_replications` SBC replications of one (model, sampler) pair, each
    with `num_warmup` warm-up transitions and `num_samples` kept ones.

    **Returns:** NumPy arrays: `truth` `(reps, P)`, `draws` `(reps, num_samples,
    P)` (every post-warm-up draw, unthinned), `divergences` (after warm-up)
    and `step_size` `(reps,)`.
    """
    model = MODELS[model_name]
    sampler = make_sampler(model, sampler_name)
    flags = schedule_flags(num_warmup, num_samples)
    flags = StepFlags(
        is_warmup=jnp.asarray(flags["is_warmup"]),
        in_window=jnp.asarray(flags["in_window"]),
        window_end=jnp.asarray(flags["window_end"]),
        is_last_warmup=jnp.asarray(flags["is_last_warmup"]),
    )
    keys = jr.split(jr.key(seed), num_replications)
    out = _simulate(sampler, model, keys, flags, num_warmup)
    return {k: np.asarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------------
# Ranks and the uniformity test.
# --------------------------------------------------------------------------------


def ranks(truth: np.ndarray, draws: np.ndarray, num_draws: int) -> np.ndarray:
    """The rank of each true value among `num_draws` (`L`) draws thinned evenly from
    each chain (every `num_samples // L`-th draw): `#{draws < truth}`, in `0 … L`.
    Shapes `(reps, P)` and `(reps, num_samples, P)` give `(reps, P)`."""
    thin = draws.shape[1] // num_draws
    thinned = draws[:, thin - 1 :: thin, :][:, :num_draws]
    return (thinned < truth[:, None, :]).sum(axis=1)


def chi_square(rank: np.ndarray, num_ranks: int, num_bins: int) -> tuple[float, float]:
    """Pearson's chi-square statistic of the ranks `0 … num_ranks - 1` grouped
    into `num_bins` equal bins, against the uniform distribution, and its p-value
    (`num_bins - 1` degrees of freedom)."""
    if num_ranks % num_bins:
        raise ValueError(f"{num_bins} bins do not divide {num_ranks} ranks evenly.")
    counts = np.bincount(rank * num_bins // num_ranks, minlength=num_bins)
    expected = rank.size / num_bins
    stat = float(((counts - expected) ** 2 / expected).sum())
    return stat, float(scipy.stats.chi2.sf(stat, num_bins - 1))


def uniformity(
    results: dict[str, np.ndarray],
    num_draws: int = NUM_DRAWS,
    num_bins: int = NUM_BINS,
) -> list[tuple[float, float]]:
    """`(chi-square, p-value)` of the ranks of each parameter of `simulate`'s
    results."""
    rank = ranks(results["truth"], results["draws"], num_draws)
    return [chi_square(r, num_draws + 1, num_bins) for r in rank.T]


def relative_ess(draws: np.ndarray) -> np.ndarray:
    """ESS per draw (bulk, ArviZ) of each replication's chain: `(reps, P)`."""
    az = import_arviz()
    reps, num_samples, num_params = draws.shape
    out = np.empty((reps, num_params))
    for r in range(reps):
        for p in range(num_params):
            out[r, p] = az.ess(draws[r, None, :, p]) / num_samples
    return out


def shrink(draws: np.ndarray, factor: float) -> np.ndarray:
    """A miscalibrated posterior for the negative control: each replication's
    draws pulled toward their mean, so the posterior's scale is `factor` times
    the right one."""
    mean = draws.mean(axis=1, keepdims=True)
    return mean + factor * (draws - mean)
