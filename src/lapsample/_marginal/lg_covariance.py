"""The covariance form of the latent-Gaussian marginal: Newton in
`B = I + W½ K W½` (Rasmussen & Williams, Alg. 3.1) and its cotangents (Alg. 5.1)."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
from jaxtyping import Array, Bool, Int

from .._linalg.dense import (
    cholesky_lower,
    factor_finite,
    gram_of_lower_inverse,
)
from .._misc import better_start, consider_prediction, previous_mode
from .._results import RESULTS
from .lg_newton import damped_newton, NewtonSettings


# --------------------------------------------------------------------------------
# Newton, covariance form: state (a, theta = m + K a).
# --------------------------------------------------------------------------------


class CovState(eqx.Module):
    """Newton's state in `a` (`theta = m + K a`), shared with `lg_design.py`."""

    a: Array
    theta: Array
    value: Array  # Ψ(a) = ℓ(theta) - ½ aᵀ(theta - m)
    a_new: Array  # the full Newton step's target
    theta_new: Array
    decrement: Array  # ∇Ψᵀ(theta_new - theta)
    factor: Any  # of B (Cholesky) or of M = I + W K (LU) at theta
    ok: Bool[Array, ""]
    num_steps: Int[Array, ""]
    done: Bool[Array, ""]

    @property
    def step_vector(self) -> Array:
        """The full Newton step in `theta`."""
        return self.theta_new - self.theta


def covariance_symmetric(cov) -> Bool[Array, ""]:
    """Whether each `|K_ij - K_ji|` is within `√eps·√(K_ii K_jj)`, the scale that
    bounds the entries of a positive definite matrix."""
    cov = jax.lax.stop_gradient(cov)
    eps = jnp.finfo(cov.dtype).eps
    diag = jnp.abs(jnp.diagonal(cov))
    scale = jnp.sqrt(diag[:, None] * diag[None, :])
    return jnp.all(jnp.abs(cov - cov.T) <= jnp.sqrt(eps) * scale)


def covariance_factor(cov) -> Array:
    """The Cholesky factor of `K` (NaN where it is not positive definite), outside
    differentiation: `covariance_ok`'s certificate and Newton's warm start."""
    # Of `Kᵀ` (equal, as `K` is checked symmetric): LAPACK reads column-major
    # order, so `K` itself can stay row-major, as its other users want it.
    return cholesky_lower(jax.lax.stop_gradient(cov).T)


def covariance_ok(cov, lower=None) -> Bool[Array, ""]:
    """Whether `K` is symmetric and positive definite (a finite Cholesky factor,
    `lower` if given). `B = I + W½ K W½` can be positive definite for an indefinite
    `K` (where `W` is small), so its factor alone does not tell; this costs one
    more Cholesky of an `n × n` matrix per evaluation, which Newton's warm start
    then reuses (callers that factorise `K` anyway pass their factor)."""
    if lower is None:
        lower = covariance_factor(cov)
    return covariance_symmetric(cov) & factor_finite(lower)


def psi_a(lik, params, mean, a, theta):
    """Newton's objective `Ψ(a) = ℓ(theta) - ½ aᵀ(theta - m)`."""
    return lik.log_density(theta, params) - 0.5 * jnp.dot(a, theta - mean)


def b_factor(cov, w):
    """`L` with `L Lᵀ = I + W½ K W½`, and `W½` (NaN where `W < 0`).

    `B` is built from `Kᵀ` (equal: `K` is checked symmetric). LAPACK reads `B` in
    column-major order and XLA:CPU's matrix-vector products read `K` in row-major
    order; from `K` itself XLA kept `K` column-major inside Newton's loop and
    copied it to row-major at every step (0.8 ms of a 9 ms step at n = 911), while
    from `Kᵀ` one row-major `K` serves both."""
    sqrt_w = jnp.where(w >= 0, jnp.sqrt(jnp.maximum(w, 0.0)), jnp.nan)
    b = jnp.eye(w.shape[0], dtype=w.dtype) + sqrt_w[:, None] * cov.T * sqrt_w[None, :]
    return cholesky_lower(b), sqrt_w


def b_draw(cov, w, chol_k):
    """`key -> u ~ N(0, (K⁻¹ + W)⁻¹)` for a diagonal `W`, given the Cholesky factor
    of `K`: with `f ~ N(0, K)` and `e ~ N(0, I)`, `h = f + K W½ e` has covariance
    `K + K W K`, and `h - K R h` (`R = W½ B⁻¹ W½`) has `(K⁻¹ + W)⁻¹`."""
    lower, sqrt_w = b_factor(cov, w)
    n = w.shape[0]

    def draw(key):
        key_f, key_e = jr.split(key)
        f = chol_k @ jr.normal(key_f, (n,), cov.dtype)
        h = f + cov @ (sqrt_w * jr.normal(key_e, (n,), cov.dtype))
        r_h = sqrt_w * jsl.cho_solve((lower, True), sqrt_w * h)
        return h - cov @ r_h

    return draw


def _cov_evaluate(lik, params, cov, mean, a, theta, num_steps):
    value_terms, d1, d2, _ = lik.derivatives(theta, params)
    value = jnp.sum(value_terms) - 0.5 * jnp.dot(a, theta - mean)
    w = -d2
    lower, sqrt_w = b_factor(cov, w)
    # Newton: a_new = b - W½ B⁻¹ W½ K b, b = W (theta - m) + ℓ'.
    rhs = w * (theta - mean) + d1
    a_new = rhs - sqrt_w * jsl.cho_solve((lower, True), sqrt_w * (cov @ rhs))
    theta_new = mean + cov @ a_new
    decrement = jnp.dot(d1 - a, theta_new - theta)
    ok = (
        jnp.isfinite(value)
        & factor_finite(lower)
        & jnp.all(jnp.isfinite(a_new))
        & jnp.isfinite(decrement)
    )
    return CovState(
        a, theta, value, a_new, theta_new, decrement, lower, ok, num_steps,
        jnp.array(False),
    )  # fmt: skip


def newton_in_a(
    evaluate, psi, latent_grad, cov, chol_cov, mean, theta_guess, settings, quadratic
):
    """Damped Newton on `a` (`theta = m + K a`) from the best of up to three starts
    (the highest objective): `theta = m` (`a = 0`); `a = ∇ℓ(theta_guess)`, which is
    `a*` exactly when `theta_guess` is the mode at the same phi; and
    `a = K⁻¹(theta_guess - m)` from the Cholesky factor `chol_cov` of `K`
    (`covariance_factor`, also the certificate), i.e. `theta_guess` itself. For a
    `WarmStart` its previous mode takes the place of `theta_guess`, and
    `a = K⁻¹(predicted - m)` is a fourth candidate.
    From the previous mode of a trajectory the last is the closest: the second
    maps it through the new `K` (phi moved by 0.1 on the 911-cell disease map:
    4.0 Newton steps from it, 3.0 from the previous mode itself;
    `benchmarks/predictor.py`). `evaluate(a, theta, num_steps)` gives a
    `CovState`, `psi(a, theta)` the objective, `latent_grad(theta)` the
    log-likelihood's gradient in `theta`; `quadratic`: the likelihood is (one
    step, `damped_newton`'s `settle`). Returns `damped_newton`'s output."""
    a0 = jnp.zeros(cov.shape[0], cov.dtype)
    theta0 = mean
    psi0 = psi(a0, theta0)

    def consider(best, a_guess):
        a0, theta0, psi0 = best
        theta_guess_a = mean + cov @ a_guess
        psi_guess = psi(a_guess, theta_guess_a)
        better = better_start(psi_guess, psi0)
        return (
            jnp.where(better, a_guess, a0),
            jnp.where(better, theta_guess_a, theta0),
            jnp.where(better, psi_guess, psi0),
        )

    previous = previous_mode(theta_guess)
    best = (a0, theta0, psi0)
    if previous is not None:
        best = consider(best, latent_grad(previous))
        best = consider(best, jsl.cho_solve((chol_cov, True), previous - mean))
    # Two solves and a product with K (O(n²)) for the prediction.
    a0, theta0, psi0 = consider_prediction(
        theta_guess,
        lambda b, p: consider(b, jsl.cho_solve((chol_cov, True), p - mean)),
        best,
    )

    def trial_value(s, step):
        return psi(s.a + step * (s.a_new - s.a), s.theta + step * s.step_vector)

    def move(s, step):
        return evaluate(
            s.a + step * (s.a_new - s.a),
            s.theta + step * s.step_vector,
            s.num_steps + 1,
        )

    def settle(s):
        value = psi(s.a_new, s.theta_new)
        return CovState(
            s.a_new, s.theta_new, value, s.a_new, s.theta_new,
            jnp.zeros_like(s.decrement), s.factor, s.ok & jnp.isfinite(value),
            s.num_steps + 1, jnp.array(True),
        )  # fmt: skip

    state = evaluate(a0, theta0, jnp.array(0))
    return damped_newton(
        state, move, trial_value, settings, settle if quadratic else None
    )


def newton_cov(lik, params, cov, mean, theta_guess, settings: NewtonSettings):
    chol_cov = covariance_factor(cov)
    s, result = newton_in_a(
        lambda a, theta, k: _cov_evaluate(lik, params, cov, mean, a, theta, k),
        lambda a, theta: psi_a(lik, params, mean, a, theta),
        lambda theta: lik.derivatives(theta, params)[1],
        cov,
        chol_cov,
        mean,
        theta_guess,
        settings,
        lik.quadratic,
    )
    result = RESULTS.where(
        factor_finite(s.factor), result, RESULTS.hessian_not_positive_definite
    )
    result = RESULTS.where(
        covariance_ok(cov, chol_cov), result, RESULTS.prior_not_positive_definite
    )
    value = s.value - jnp.sum(jnp.log(jnp.diagonal(s.factor)))
    return value, s.a, s.theta, s.factor, result, s.num_steps


def cov_cotangents(lik, theta, a, lower, cov, mean, params, value_bar, theta_bar):
    _, _, d2, d3 = lik.derivatives(theta, params)
    w = -d2
    sqrt_w = jnp.sqrt(jnp.maximum(w, 0.0))
    # P = B⁻¹ from the factor (blocked inverse and one product), so that every
    # other term is O(n²): R = W½ P W½.
    b_inv = gram_of_lower_inverse(lower)
    r = sqrt_w[:, None] * b_inv * sqrt_w[None, :]
    diag_sigma = _posterior_variances(b_inv, lower, cov, sqrt_w)
    s = 0.5 * value_bar * diag_sigma * d3
    if theta_bar is not None:
        s = s + theta_bar
    u = s - r @ (cov @ s)
    cov_bar = value_bar * (0.5 * jnp.outer(a, a) - 0.5 * r) + jnp.outer(u, a)
    mean_bar = value_bar * a + u
    k_u = cov @ u

    def lik_terms(p):
        l0, l1, l2, _ = lik.derivatives(theta, p)
        return value_bar * (jnp.sum(l0) + 0.5 * jnp.dot(diag_sigma, l2)) + jnp.dot(
            k_u, l1
        )

    return cov_bar, mean_bar, lik_terms


def _posterior_variances(b_inv, lower, cov, sqrt_w):
    """`diag(Σ)`, `Σ = (K⁻¹ + W)⁻¹`, given `P = B⁻¹`.

    `Σ = W^-½ (I - P) W^-½` and `I - P = P W½ K W½`, so
    `Σ_ii = Σ_j P_ij √w_j K_ji / √w_i`: `O(n²)` once `P` is at hand, against an
    `n × n` product for `K_ii - ‖L⁻¹ W½ k_i‖²`. It is also the more accurate of
    the two: the latter cancels where the data dominate (`Σ_ii ≪ K_ii`), while here
    row `i` of `P` off its diagonal carries the factor `√w_i` that is divided out,
    and rounding is relative, so even `w_i = 1e-20` costs nothing. Checked against
    an 80-bit reference: 911-cell disease map, relative error 7e-10 against 2e-9
    for the product form; a 1-D GP with `w_i` down to 1e-20, 3e-12 against 7e-12.
    Only `w_i = 0` (a latent without data, e.g. an empty group under `index=`)
    divides zero by zero: then the product form is used for all of `diag(Σ)`
    (`lax.cond`: under `vmap` both are computed)."""
    has_data = jnp.all(sqrt_w > 0)

    def from_inverse(_):
        safe = jnp.where(sqrt_w > 0, sqrt_w, 1.0)
        # A row sum (one reduction over P and K) rather than `(P ∘ K) @ √w`, which
        # wrote `P ∘ K` out first (1.5 ms of a 51 ms evaluation at n = 911).
        return jnp.sum(b_inv * cov * sqrt_w[None, :], axis=1) / safe

    def from_product(_):
        v = jsl.solve_triangular(lower, jnp.diag(sqrt_w), lower=True)
        vk = v @ cov
        return jnp.diagonal(cov) - jnp.sum(vk * vk, axis=0)

    return jax.lax.cond(has_data, from_inverse, from_product, None)
