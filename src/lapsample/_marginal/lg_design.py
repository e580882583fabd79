"""The covariance form of the latent-Gaussian marginal with a design matrix,
`eta = A theta + offset(phi)` (INLA's `A`): random slopes, several effects per
observation. The log-likelihood's Hessian in `theta` is then `W = Aᵀ diag(w) A`,
not diagonal, so the `B = I + W½ K W½` algebra of `lg_covariance.py` is replaced by
its square-root-free twin

    M = I + W K,   a_new = M⁻¹ (W (theta - m) + Aᵀ ℓ'),   log det B = log det M

(Sylvester's identity), factorised by LU with partial pivoting: `M` is similar to
`B`, so its eigenvalues are real and at least 1 and `K` is still never inverted.
The gradient is Rasmussen & Williams' Alg. 5.1 with `Σ = (K⁻¹ + W)⁻¹ = K M⁻¹`,
`R = M⁻¹ W`, `u = M⁻¹ s` and `s = ½ ḡ Aᵀ(ℓ''' ⊙ diag(A Σ Aᵀ)) + θ̄`. Each Newton step
costs `O(n_obs n² + n³)` in the `n` latents: meant for a few hundred latents (the
index map of `lg_link.py` keeps `W` diagonal and costs `O(n_obs)` per step).
"""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float

from .._results import RESULTS
from .lg_covariance import (
    covariance_factor,
    covariance_ok,
    CovState,
    newton_in_a,
    psi_a,
)
from .lg_newton import NewtonSettings
from .likelihoods import AbstractLikelihood


class DesignLikelihood(eqx.Module):
    """The log-likelihood of `theta` when the observations see `A theta + offset`;
    `params` is `(params of the observation likelihood, offset or None)`."""

    likelihood: AbstractLikelihood
    design: Float[Array, "n_obs n"]

    def eta(self, theta, offset):
        eta = self.design @ theta
        return eta if offset is None else eta + offset

    def observed(self, theta, params):
        """The observation likelihood's `(l, dl, d2l, d3l)` at `A theta + offset`."""
        inner_params, offset = params
        return self.likelihood.derivatives(self.eta(theta, offset), inner_params)

    def log_density(self, theta, params):
        return jnp.sum(self.observed(theta, params)[0])

    def curvature(self, theta, params):
        """`W = -∇²_θ ℓ = Aᵀ diag(-ℓ'') A`."""
        w = -self.observed(theta, params)[2]
        return self.design.T @ (w[:, None] * self.design)


def check_design(design) -> Array | None:
    if design is None:
        return None
    arr = jnp.asarray(design)
    if arr.ndim != 2 or not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(
            "`design` must be a dense 2-D floating array A of shape (n_obs, "
            f"n_latent) (eta = A theta + offset), got shape {arr.shape} and dtype "
            f"{arr.dtype}. For a map with one latent per observation pass "
            "`index=` instead (faster)."
        )
    return arr


def _evaluate(lik, params, cov, mean, a, theta, num_steps):
    value_terms, d1, d2, _ = lik.observed(theta, params)
    value = jnp.sum(value_terms) - 0.5 * jnp.dot(a, theta - mean)
    w_obs = -d2
    w = lik.design.T @ (w_obs[:, None] * lik.design)
    grad = lik.design.T @ d1
    lu = jsl.lu_factor(jnp.eye(theta.shape[0], dtype=cov.dtype) + w @ cov)
    a_new = jsl.lu_solve(lu, w @ (theta - mean) + grad)
    theta_new = mean + cov @ a_new
    decrement = jnp.dot(grad - a, theta_new - theta)
    ok = (
        jnp.isfinite(value)
        & jnp.all(w_obs >= 0)
        & jnp.all(jnp.isfinite(lu[0]))
        & jnp.all(jnp.isfinite(a_new))
        & jnp.isfinite(decrement)
    )
    return CovState(
        a, theta, value, a_new, theta_new, decrement, lu, ok, num_steps,
        jnp.array(False),
    )  # fmt: skip


def newton_design(lik, params, cov, mean, theta_guess, settings: NewtonSettings):
    """As `newton_cov`; the returned factor is `M⁻¹` at the mode."""
    chol_cov = covariance_factor(cov)
    s, result = newton_in_a(
        lambda a, theta, k: _evaluate(lik, params, cov, mean, a, theta, k),
        lambda a, theta: psi_a(lik, params, mean, a, theta),
        lambda theta: lik.design.T @ lik.observed(theta, params)[1],
        cov,
        chol_cov,
        mean,
        theta_guess,
        settings,
        lik.likelihood.quadratic,
    )
    w_ok = jnp.all(lik.observed(s.theta, params)[2] <= 0)
    result = RESULTS.where(w_ok, result, RESULTS.hessian_not_positive_definite)
    result = RESULTS.where(
        covariance_ok(cov, chol_cov), result, RESULTS.prior_not_positive_definite
    )
    # det M > 0 wherever W ≥ 0 and K is positive definite.
    lu = s.factor
    value = s.value - 0.5 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(lu[0]))))
    m_inv = jsl.lu_solve(lu, jnp.eye(cov.shape[0], dtype=cov.dtype))
    return value, s.a, s.theta, m_inv, result, s.num_steps


def design_cotangents(lik, theta, a, m_inv, cov, mean, params, value_bar, theta_bar):
    """As `cov_cotangents`, with `M⁻¹` in place of the factor of `B`."""
    _, _, d2, d3 = lik.observed(theta, params)
    design = lik.design
    w = design.T @ (-d2[:, None] * design)
    sigma = cov @ m_inv
    sigma = 0.5 * (sigma + sigma.T)
    diag_obs = jnp.sum((design @ sigma) * design, axis=1)  # diag(A Σ Aᵀ)
    s = 0.5 * value_bar * (design.T @ (diag_obs * d3))
    if theta_bar is not None:
        s = s + theta_bar
    u = m_inv @ s
    r = m_inv @ w
    r = 0.5 * (r + r.T)
    cov_bar = value_bar * (0.5 * jnp.outer(a, a) - 0.5 * r) + jnp.outer(u, a)
    mean_bar = value_bar * a + u
    ak_u = design @ (cov @ u)

    def lik_terms(p):
        l0, l1, l2, _ = lik.observed(theta, p)
        return value_bar * (jnp.sum(l0) + 0.5 * jnp.dot(diag_obs, l2)) + jnp.dot(
            ak_u, l1
        )

    return cov_bar, mean_bar, lik_terms


def design_draw(cov, w, k_ok):
    """`key -> u ~ N(0, Σ)` with `Σ = (K⁻¹ + W)⁻¹ = (I + K W)⁻¹ K` for a dense `W`
    (NaN where `K` or `Σ` is not positive definite)."""
    n = w.shape[0]
    sigma = jsl.solve(jnp.eye(n, dtype=cov.dtype) + cov @ w, cov)
    chol_sigma = jnp.linalg.cholesky(0.5 * (sigma + sigma.T))
    chol_sigma = jnp.where(k_ok, chol_sigma, jnp.nan)

    def draw(key):
        return chol_sigma @ jr.normal(key, (n,), cov.dtype)

    return draw
