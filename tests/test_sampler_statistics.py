"""Statistical checks of the samplers against exact answers (slow: `pytest -m slow`).

Every check is a z-score, `z = (estimate - truth) / MCSE`, with the Monte Carlo
standard error estimated by ArviZ from 4 chains (through the effective sample size,
so autocorrelation is accounted for). For a correct sampler the MCMC central limit
theorem makes z approximately N(0, 1); we pass at |z| < 4, whose false-alarm rate is
6e-5 per check for a Gaussian z (the rule of `shared/posteriordb/README.md`; MCSEs
are themselves estimated to ~10-20%, and 4 rather than 3 absorbs that). To make the
MCSE trustworthy we also require ESS >= 400 and R-hat < 1.01 first. Seeds are fixed,
so a pass is reproducible.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import lapsample as ls

from .helpers import (
    check_mixing,
    CORRELATED_COV,
    correlated_gaussian,
    CORRELATED_MEAN,
    eight_schools_json,
    eight_schools_log_joint,
    eight_schools_z_scores,
    mcse,
    seed_data,
    seed_exact_moments,
    SEED_N,
    SeedModel,
    Z_MAX,
)


pytestmark = pytest.mark.slow

NUM_CHAINS = 4


def _run_chains(sampler, key, initial_positions, num_steps):
    """`num_chains` chains in parallel: vmap over keys and starting points with the
    sampler (and so the model's data) unbatched."""

    def one(k, p):
        return ls.run_inference_algorithm(k, sampler, num_steps, initial_position=p)

    keys = jr.split(key, initial_positions.shape[0])
    _, (states, infos) = eqx.filter_jit(eqx.filter_vmap(one))(keys, initial_positions)
    return states, infos


def _z_mean_of(values, truth):
    """z-score of the chain average of `values` against its expectation `truth`."""
    return (float(np.mean(values)) - truth) / mcse(values, "mean")


# --------------------------------------------------------------------------------
# The seed model, every proposal × trajectory pair, against quadrature.
# --------------------------------------------------------------------------------

SEED_SAMPLERS = {
    "laplace_hmc": lambda lj: ls.laplace_hmc(lj, jnp.zeros(SEED_N), 0.3, 1.0, 10),
    "laplace_mhmc": lambda lj: ls.laplace_mhmc(lj, jnp.zeros(SEED_N), 0.3, 1.0, 10),
    "laplace_dhmc": lambda lj: ls.laplace_dhmc(
        lj, jnp.zeros(SEED_N), 0.3, 1.0, num_integration_steps=10
    ),
    "laplace_dmhmc": lambda lj: ls.laplace_dmhmc(
        lj, jnp.zeros(SEED_N), 0.3, 1.0, num_integration_steps=10
    ),
    "laplace_nuts": lambda lj: ls.laplace_nuts(lj, jnp.zeros(SEED_N), 0.3, 1.0),
    "laplace_nuts_mclachlan": lambda lj: ls.laplace_nuts(
        lj, jnp.zeros(SEED_N), 0.5, 1.0, integrator=ls.McLachlan()
    ),
}


@pytest.mark.parametrize("name", list(SEED_SAMPLERS))
def test_seed_model_log_sigma_moments(name):
    # The Laplace marginal is exact here, so the posterior of log_sigma is the
    # closed form y_i ~ N(0, σ² + 1) times the N(0, 3²) prior; its mean and variance
    # come from quadrature (error < 1e-10, i.e. exact at this scale).
    y = seed_data()
    mean, var = seed_exact_moments(y)
    sampler = SEED_SAMPLERS[name](SeedModel(y))
    starts = jnp.array([0.0, 0.5, 1.0, 1.5])  # over-dispersed around the mode 0.8
    states, infos = _run_chains(sampler, jr.key(11), starts, 3_000)
    draws = np.asarray(states.position)[:, 200:]  # (chains, draws); drop warm-up
    assert int(infos.is_divergent.sum()) == 0
    check_mixing(draws, name)
    # Mean: z of the average. Variance: the average of (x - mean)² with the exact
    # mean has expectation exactly `var`, and its own MCSE (through its own ESS).
    z_mean = _z_mean_of(draws, mean)
    z_var = _z_mean_of((draws - mean) ** 2, var)
    assert abs(z_mean) < Z_MAX, (name, z_mean, draws.mean(), mean)
    assert abs(z_var) < Z_MAX, (name, z_var, draws.var(), var)


# --------------------------------------------------------------------------------
# NUTS on a correlated Gaussian (a plain density): the HMC stack alone.
# --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inverse_mass_matrix",
    [np.ones(2), CORRELATED_COV],
    ids=["diagonal", "dense"],
)
def test_nuts_correlated_gaussian_moments(inverse_mass_matrix):
    # Correlation 0.9 and scales 1 and √3: with a unit diagonal metric NUTS needs
    # long trajectories along the ridge (depth 3-5), with the dense metric set to
    # the covariance the target is isotropic. Checks: both means, both variances and
    # the covariance, each as the z of an average whose expectation is known.
    sampler = ls.Sampler(
        ls.PlainDensity(correlated_gaussian()),
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=0.3 if inverse_mass_matrix.ndim == 1 else 0.6,
        inverse_mass_matrix=jnp.asarray(inverse_mass_matrix),
    )
    starts = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, -4.0], [2.0, -4.0]])
    states, infos = _run_chains(sampler, jr.key(12), starts, 4_000)
    draws = np.asarray(states.position)[:, 200:]  # (chains, draws, 2)
    assert int(infos.is_divergent.sum()) == 0
    centred = draws - CORRELATED_MEAN
    checks = {
        "mean[0]": (draws[..., 0], CORRELATED_MEAN[0]),
        "mean[1]": (draws[..., 1], CORRELATED_MEAN[1]),
        "var[0]": (centred[..., 0] ** 2, CORRELATED_COV[0, 0]),
        "var[1]": (centred[..., 1] ** 2, CORRELATED_COV[1, 1]),
        "cov": (centred[..., 0] * centred[..., 1], CORRELATED_COV[0, 1]),
    }
    for name, (values, truth) in checks.items():
        check_mixing(values, name)
        z = _z_mean_of(values, truth)
        assert abs(z) < Z_MAX, (name, z, values.mean(), truth)


# --------------------------------------------------------------------------------
# Eight schools (posteriordb, case A) with laplace_nuts.
# --------------------------------------------------------------------------------


@eqx.filter_jit
def _draw_theta(marginal, keys, phi, theta_star):
    return jax.vmap(jax.vmap(marginal.sample_theta))(keys, phi, theta_star)


def test_eight_schools_laplace_nuts():
    # theta = the 8 school effects (integrated out; Laplace is exact as theta | phi
    # is Gaussian), phi = (mu, log tau). Hand-tuned: the inverse mass is the
    # reference posterior variances of (mu, log tau), the step size gives an
    # acceptance rate ≈ 0.8. theta is drawn from N(theta*, H⁻¹) at every draw of phi.
    # z = (g_new - g_ref) / √(m_new² + m_ref²) as in shared/posteriordb/README.md,
    # with g = mean, sd, 5% and 95% quantiles and m their MCSEs.
    summary = eight_schools_json("summary.json")["reference_summary"]
    log_joint = eight_schools_log_joint()
    sampler = ls.laplace_nuts(
        log_joint,
        jnp.zeros(8),
        step_size=0.8,
        inverse_mass_matrix=jnp.array([10.95, 1.38]),
    )
    starts = jnp.array([[0.0, 0.0], [5.0, 1.0], [2.0, -1.0], [8.0, 2.0]])
    states, infos = _run_chains(sampler, jr.key(13), starts, 3_000)
    assert int(infos.is_divergent.sum()) == 0
    keep = slice(500, None)
    phi = states.position[:, keep]
    theta_star = states.theta_star[:, keep]
    keys = jr.split(jr.key(14), phi.shape[0] * phi.shape[1]).reshape(phi.shape[:2])
    theta = np.asarray(_draw_theta(sampler.marginal, keys, phi, theta_star))
    phi = np.asarray(phi)
    assert np.all(np.isfinite(theta))

    zs = eight_schools_z_scores(phi, theta, summary)
    worst = max(zs, key=lambda k: abs(zs[k]))
    assert len(zs) == 40
    assert abs(zs[worst]) < Z_MAX, (worst, zs[worst], zs)
