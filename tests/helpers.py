"""Models with known answers, an independent Laplace oracle, and finite differences."""

import json
import math
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


# tests/ -> repository root -> its parent holds shared/ (../shared in CI).
SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_json(*parts: str) -> dict:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data {path} is absent (expected ../shared beside repo)")
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------------
# The seed model: log_sigma ~ N(0, 3²), theta ~ N(0, σ² I), y ~ N(theta, I).
# The Laplace approximation is exact: y_i ~ N(0, σ² + 1).
# --------------------------------------------------------------------------------


class SeedModel(eqx.Module):
    y: jax.Array

    def __call__(self, theta, log_sigma):
        sigma = jnp.exp(log_sigma)
        return (
            jstats.norm.logpdf(log_sigma, 0.0, 3.0)
            + jstats.norm.logpdf(theta, 0.0, sigma).sum()
            + jstats.norm.logpdf(self.y, theta, 1.0).sum()
        )

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
