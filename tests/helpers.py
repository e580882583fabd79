"""Shared by the tests: models with known answers, an independent Laplace oracle,
finite differences, jitted evaluations of a marginal, and the statistical checks of
the sampler tests."""

import json
import math
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import jax.scipy.stats as jstats
import lineax as lx
import numpy as np
import optimistix as optx
import pytest
from numpyro.distributions import InverseGamma

import lapsample as ls


# The library never sets this; tests run in float64 (conftest.py does the same).
jax.config.update("jax_enable_x64", True)

# tests/ -> repository root -> its parent holds shared/ (/work/shared here, ../shared
# in CI).
SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_json(*parts: str) -> dict:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (expected ../shared beside repo)")
    with open(path) as f:
        return json.load(f)


def import_arviz():
    """ArviZ, imported without its import-time FutureWarning (pytest turns warnings
    into errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        import arviz

    return arviz


# --------------------------------------------------------------------------------
# Jitted evaluations of a marginal. Called eagerly, a marginal dispatches (and
# compiles) each primitive outside its loops separately; under one `filter_jit`
# taking the marginal as an argument it compiles once per marginal type and shape,
# and its arrays (the model's data) are arguments, not constants.
# --------------------------------------------------------------------------------


@eqx.filter_jit
def evaluate(marginal, phi, *args):
    """`marginal(phi, *args)`: the value and the aux."""
    return marginal(phi, *args)


@eqx.filter_jit
def value_and_grad(marginal, phi, *args):
    """`((value, aux), grad)` of `marginal(phi, *args)` in `phi`."""
    return jax.value_and_grad(marginal, has_aux=True)(phi, *args)


@eqx.filter_jit
def vmap_value_and_grad(marginal, phis, *args):
    """`value_and_grad` over a leading batch axis of `phis` (and of `args`)."""
    return jax.vmap(jax.value_and_grad(marginal, has_aux=True))(phis, *args)


@eqx.filter_jit
def neg_hessian(log_joint, theta, phi):
    """`-∇²_θ log_joint(theta, phi)`."""
    return jax.hessian(lambda t: -log_joint(t, phi))(theta)


# --------------------------------------------------------------------------------
# The seed model: log_sigma ~ N(0, 3²), theta ~ N(0, σ² I), y ~ N(theta, I).
# The Laplace approximation is exact: y_i ~ N(0, σ² + 1).
# --------------------------------------------------------------------------------


class SeedModel(eqx.Module):
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

    def exact_log_marginal(self, log_sigma):
        sigma = jnp.exp(log_sigma)
        return (
            jstats.norm.logpdf(log_sigma, 0.0, 3.0)
            + jstats.norm.logpdf(self.y, 0.0, jnp.sqrt(sigma**2 + 1.0)).sum()
        )


def seed_model(n: int, seed: int = 0) -> SeedModel:
    k1, k2 = jr.split(jr.key(seed))
    theta = 2.0 * jr.normal(k1, (n,))
    return SeedModel(y=theta + jr.normal(k2, (n,)))


# The seed walkthrough's data (used by the sampler and workflow tests).
SEED_N = 20


def seed_data(n: int = SEED_N) -> jax.Array:
    """The seed's data-generating recipe (true log_sigma = log 2) with a fixed key."""
    key = jr.key(20240601)
    key, data_key = jr.split(key)
    true_theta = jr.normal(data_key, (n,)) * 2.0
    key, obs_key = jr.split(key)
    return true_theta + jr.normal(obs_key, (n,))


# --------------------------------------------------------------------------------
# Poisson GP on 1-D inputs: theta ~ N(0, K(phi)), y_i ~ Poisson(exp(theta_i)),
# phi = (log amplitude, log length-scale). Not exact; H = K⁻¹ + diag(exp(theta)).
# --------------------------------------------------------------------------------


def se_kernel(x, log_amplitude, log_length, jitter):
    sq = (x[:, None] - x[None, :]) ** 2
    k = jnp.exp(2 * log_amplitude) * jnp.exp(-0.5 * sq / jnp.exp(2 * log_length))
    return k + jitter * jnp.eye(x.shape[0])


class PoissonGP(eqx.Module):
    x: jax.Array
    y: jax.Array
    jitter: float = eqx.field(static=True, default=1e-6)

    def __call__(self, theta, phi):
        log_amplitude, log_length = phi[0], phi[1]
        k = se_kernel(self.x, log_amplitude, log_length, self.jitter)
        chol = jnp.linalg.cholesky(k)
        white = jsl.solve_triangular(chol, theta, lower=True)
        d = self.x.shape[0]
        log_prior_theta = (
            -0.5 * jnp.dot(white, white)
            - jnp.sum(jnp.log(jnp.diagonal(chol)))
            - 0.5 * d * math.log(2 * math.pi)
        )
        log_prior_phi = jstats.norm.logpdf(phi, 0.0, 1.0).sum()
        log_lik = jstats.poisson.logpmf(self.y, jnp.exp(theta)).sum()
        return log_prior_phi + log_prior_theta + log_lik


def poisson_gp(d: int, seed: int = 1) -> PoissonGP:
    x = jnp.linspace(0.0, 10.0, d)
    k = se_kernel(x, jnp.log(1.0), jnp.log(1.5), 1e-6)
    f = jnp.linalg.cholesky(k) @ jr.normal(jr.key(seed), (d,)) + 1.0
    y = jr.poisson(jr.key(seed + 1), jnp.exp(f)).astype(jnp.float64)
    return PoissonGP(x=x, y=y)


GP_PHI = jnp.array([0.1, 0.3])


# --------------------------------------------------------------------------------
# Independent oracle: Optimistix root find of ∇_θ log p with ImplicitAdjoint, then
# jax.hessian and a Cholesky log-determinant, all differentiated by plain AD.
# --------------------------------------------------------------------------------


def oracle_log_marginal(log_joint, theta_start, phi):
    def grad_neg(theta, p):
        return jax.grad(lambda t: -log_joint(t, p))(theta)

    sol = optx.root_find(
        grad_neg,
        optx.Newton(rtol=1e-9, atol=1e-9),
        theta_start,
        args=phi,
        adjoint=optx.ImplicitAdjoint(lx.Cholesky()),
        tags=frozenset({lx.positive_semidefinite_tag}),
        max_steps=200,
    )
    theta = sol.value
    hess = jax.hessian(lambda t: -log_joint(t, phi))(theta)
    lower = jnp.linalg.cholesky(hess)
    d = theta.shape[0]
    return (
        log_joint(theta, phi)
        - jnp.sum(jnp.log(jnp.diagonal(lower)))
        + 0.5 * d * math.log(2 * math.pi)
    )


def central_difference_grad(fn, x, h=1e-5):
    """Central differences of a scalar function of a flat float64 vector."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h
        grad[i] = (float(fn(jnp.asarray(x + e))) - float(fn(jnp.asarray(x - e)))) / (
            2 * h
        )
    return grad


# --------------------------------------------------------------------------------
# The Finland disease map (Margossian et al. 2020), 100 cells: theta ~ N(0, K(phi)),
# y_i ~ Poisson(ye_i exp(theta_i)), phi = (log alpha, log rho) with inverse-gamma
# priors on alpha and rho (Jacobians included).
# --------------------------------------------------------------------------------


def inv_gamma_logpdf(v, shape, scale):
    # NumPyro's density, independent of the one written out in
    # examples/disease_map.py (which these tests then check).
    return InverseGamma(shape, scale).log_prob(v)


class DiseaseMap(eqx.Module):
    y: jax.Array
    ye: jax.Array
    sq_dist: jax.Array
    rho_shape: float
    rho_scale: float

    @property
    def n(self) -> int:
        return self.y.shape[0]

    def covariance(self, phi):
        alpha, rho = jnp.exp(phi[0]), jnp.exp(phi[1])
        kernel = alpha**2 * jnp.exp(-self.sq_dist / (2 * rho**2))
        return kernel + 1e-8 * jnp.eye(self.n)

    def log_prior(self, phi):
        alpha, rho = jnp.exp(phi[0]), jnp.exp(phi[1])
        return (
            inv_gamma_logpdf(alpha, 10.0, 10.0)
            + phi[0]
            + inv_gamma_logpdf(rho, self.rho_shape, self.rho_scale)
            + phi[1]
        )

    def __call__(self, theta, phi):
        """The log joint, written out with a dense Cholesky of K."""
        chol = jnp.linalg.cholesky(self.covariance(phi))
        white = jsl.solve_triangular(chol, theta, lower=True)
        log_prior_theta = (
            -0.5 * jnp.dot(white, white)
            - jnp.sum(jnp.log(jnp.diagonal(chol)))
            - 0.5 * self.n * math.log(2 * math.pi)
        )
        rate = self.ye * jnp.exp(theta)
        log_lik = jstats.poisson.logpmf(self.y, rate).sum()
        return self.log_prior(phi) + log_prior_theta + log_lik


def disease_map_100() -> DiseaseMap:
    data = shared_json("margossian", "disease_map_100.json")
    x = jnp.asarray(data["x"], float)
    return DiseaseMap(
        y=jnp.asarray(data["y"], float),
        ye=jnp.asarray(data["ye"], float),
        sq_dist=jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1),
        rho_shape=data["rho_alpha_prior"],
        rho_scale=data["rho_beta_prior"],
    )


# --------------------------------------------------------------------------------
# The seed model's posterior of log_sigma, in closed form.
# --------------------------------------------------------------------------------


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


def assert_default_xtol_error_bounded(default, tight, log_joint, phi_prev, phi):
    """The default step tolerance (`xtol = 1e-8`) against a solve to rounding
    (`tight`), both warm-started at `phi` from the mode at `phi_prev`, as a sampler
    does. The returned mode is off by about its last Newton step, at most
    `1e-8 (1 + max|theta|)` (the factor 2 below covers the quadratically smaller
    steps that would follow); the log marginal `log p(theta) - ½ log det H(theta)`
    by first order in that error through the log-determinant and second order
    through `log p`, whose gradient vanishes at the mode: the bound below is that
    expansion, doubled for the terms beyond it. And the default saves a step."""
    theta_prev = evaluate(tight, phi_prev)[1].theta_star
    (value, aux), _ = value_and_grad(default, phi, theta_prev)
    (value_t, aux_t), _ = value_and_grad(tight, phi, theta_prev)
    assert aux.result == ls.RESULTS.successful
    assert aux_t.result == ls.RESULTS.successful
    assert int(aux.num_steps) < int(aux_t.num_steps)
    theta_t = aux_t.theta_star
    error = np.asarray(aux.theta_star - theta_t)
    assert np.max(np.abs(error)) <= 2e-8 * (1 + float(jnp.max(jnp.abs(theta_t))))
    hess = neg_hessian(log_joint, theta_t, phi)
    logdet_grad = jax.grad(
        lambda t: 0.5 * jnp.linalg.slogdet(neg_hessian(log_joint, t, phi))[1]
    )(theta_t)
    first = float(jnp.sum(jnp.abs(logdet_grad))) * np.max(np.abs(error))
    second = 0.5 * float(jnp.max(jnp.linalg.eigvalsh(hess))) * float(error @ error)
    assert abs(float(value - value_t)) <= 2 * (first + second)
