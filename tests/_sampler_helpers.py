"""Models and checks shared by the sampler tests (integrators, samplers, statistics)."""

import json
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest


# The library never sets this; tests run in float64 (conftest.py does the same).
jax.config.update("jax_enable_x64", True)

# tests/ -> repository root -> its parent holds shared/ (/work/shared here, ../shared
# in CI).
SHARED = Path(__file__).resolve().parents[2] / "shared"


def import_arviz():
    """ArviZ, imported without its import-time FutureWarning (pytest turns warnings
    into errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        import arviz

    return arviz


# --------------------------------------------------------------------------------
# The seed walkthrough's model: log_sigma ~ N(0, 3²), theta ~ N(0, σ² I_n),
# y ~ N(theta, I_n). The Laplace approximation is exact: y_i ~ N(0, σ² + 1).
# --------------------------------------------------------------------------------

SEED_N = 20


def seed_data(n: int = SEED_N) -> jax.Array:
    """The seed's data-generating recipe (true log_sigma = log 2) with a fixed key."""
    key = jr.key(20240601)
    key, data_key = jr.split(key)
    true_theta = jr.normal(data_key, (n,)) * 2.0
    key, obs_key = jr.split(key)
    return true_theta + jr.normal(obs_key, (n,))


class SeedLogJoint(eqx.Module):
    """`log p(theta, log_sigma, y)`, the data held as an array field.

    `nan_above` injects a failure: the log joint is NaN where `log_sigma` exceeds it
    (default `inf`: never). It is an array, so changing it does not recompile.
    """

    y: jax.Array
    nan_above: jax.Array = eqx.field(default=float("inf"), converter=jnp.asarray)

    def __call__(self, theta, log_sigma):
        sigma = jnp.exp(log_sigma)
        lp = (
            jstats.norm.logpdf(log_sigma, 0.0, 3.0)
            + jstats.norm.logpdf(theta, 0.0, sigma).sum()
            + jstats.norm.logpdf(self.y, theta, 1.0).sum()
        )
        return jnp.where(log_sigma > self.nan_above, jnp.nan, lp)


def seed_exact_log_marginal(y, log_sigma):
    """The closed-form `log p(log_sigma | y)` up to a constant."""
    sigma2 = np.exp(2 * np.asarray(log_sigma))[..., None]
    y = np.asarray(y)
    log_lik = -0.5 * (np.log(2 * np.pi * (sigma2 + 1)) + y**2 / (sigma2 + 1)).sum(-1)
    log_prior = -0.5 * (np.asarray(log_sigma) / 3.0) ** 2
    return log_prior + log_lik


def seed_exact_moments(y) -> tuple[float, float]:
    """Posterior mean and variance of log_sigma by quadrature of the closed form.

    The trapezoid rule on [-10, 10] with 40 001 nodes: the density is smooth and
    negligible at the ends, so the error is far below 1e-10.
    """
    grid = np.linspace(-10.0, 10.0, 40_001)
    logp = seed_exact_log_marginal(y, grid)
    w = np.exp(logp - logp.max())
    w /= np.trapezoid(w, grid)
    mean = np.trapezoid(w * grid, grid)
    var = np.trapezoid(w * (grid - mean) ** 2, grid)
    return float(mean), float(var)


# --------------------------------------------------------------------------------
# Gaussian plain densities.
# --------------------------------------------------------------------------------


class GaussianLogDensity(eqx.Module):
    mean: jax.Array
    precision: jax.Array

    def __call__(self, x):
        d = x - self.mean
        return -0.5 * d @ (self.precision @ d)


CORRELATED_MEAN = np.array([1.0, -2.0])
CORRELATED_COV = np.array([[1.0, 0.9 * np.sqrt(3.0)], [0.9 * np.sqrt(3.0), 3.0]])


def correlated_gaussian() -> GaussianLogDensity:
    """A 2-D Gaussian with correlation 0.9 and standard deviations 1 and √3."""
    return GaussianLogDensity(
        jnp.asarray(CORRELATED_MEAN), jnp.asarray(np.linalg.inv(CORRELATED_COV))
    )


# --------------------------------------------------------------------------------
# Eight schools (posteriordb, case A): theta = the 8 school effects,
# phi = (mu, log tau) with the log tau Jacobian.
# --------------------------------------------------------------------------------

EIGHT_SCHOOLS = SHARED / "posteriordb" / "eight_schools-eight_schools_noncentered"


def eight_schools_json(name: str) -> dict:
    path = EIGHT_SCHOOLS / name
    if not path.exists():
        pytest.skip(
            f"posteriordb reference {path} is absent: the tests expect the shared "
            "folder beside the repository (../shared)."
        )
    with open(path) as f:
        return json.load(f)


class EightSchoolsLogJoint(eqx.Module):
    """`log p(theta, mu, log tau, y)` with tau ~ half-Cauchy(0, 5) and the
    `+ log tau` Jacobian; `phi = jnp.array([mu, log_tau])`."""

    y: jax.Array
    sigma: jax.Array

    def __call__(self, theta, phi):
        mu, log_tau = phi[0], phi[1]
        tau = jnp.exp(log_tau)
        lp = jstats.norm.logpdf(mu, 0.0, 5.0)
        lp = lp + jnp.log(2.0 / (jnp.pi * 5.0 * (1.0 + (tau / 5.0) ** 2))) + log_tau
        lp = lp + jstats.norm.logpdf(theta, mu, tau).sum()
        lp = lp + jstats.norm.logpdf(self.y, theta, self.sigma).sum()
        return lp


def eight_schools_log_joint() -> EightSchoolsLogJoint:
    data = eight_schools_json("data.json")
    return EightSchoolsLogJoint(
        jnp.asarray(data["y"], float), jnp.asarray(data["sigma"], float)
    )


# Reference checks (posteriordb README, section 2): |z| < Z_MAX per statistic, after
# requiring ESS >= 400 and R-hat < 1.01.
Z_MAX = 4.0


def mcse(draws, method, **kwargs):
    az = import_arviz()
    return float(az.mcse(np.asarray(draws), method=method, **kwargs))


def check_mixing(draws, name):
    az = import_arviz()
    draws = np.asarray(draws)
    ess = float(az.ess(draws))
    rhat = float(az.rhat(draws))
    assert ess >= 400, f"{name}: ESS {ess:.0f} < 400, MCSEs would be unreliable"
    assert rhat < 1.01, f"{name}: R-hat {rhat:.4f} >= 1.01"


def eight_schools_z_scores(phi, theta, summary) -> dict[str, float]:
    """z-scores of mean, sd, q05 and q95 of mu, log tau and each theta against the
    posteriordb reference, for draws shaped (chains, draws, ...)."""
    params = {"mu": phi[..., 0], "log_tau": phi[..., 1]}
    params.update({f"theta[{j + 1}]": theta[..., j] for j in range(8)})
    zs = {}
    for name, draws in params.items():
        check_mixing(draws, name)
        ref = summary[name]
        estimates = {
            "mean": (draws.mean(), mcse(draws, "mean")),
            "sd": (draws.std(ddof=1), mcse(draws, "sd")),
            "q05": (np.quantile(draws, 0.05), mcse(draws, "quantile", prob=0.05)),
            "q95": (np.quantile(draws, 0.95), mcse(draws, "quantile", prob=0.95)),
        }
        for stat, (value, se) in estimates.items():
            zs[f"{name}.{stat}"] = (value - ref[stat]) / np.hypot(
                se, ref[f"mcse_{stat}"]
            )
    return zs
