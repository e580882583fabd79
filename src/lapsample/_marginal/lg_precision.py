"""The precision form of the latent-Gaussian marginal: Newton on `Q + W` with the
banded kernels, and its cotangents from the selected inverse."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

from .._linalg.banded import (
    add_to_block_diagonal,
    band_matvec,
    band_selected_inverse,
    banded_factorise,
    banded_logdet,
    banded_solve,
    BandedFactor,
    blocks_inner,
    lower_bands_to_blocks,
)
from .._misc import better_start, consider_prediction, previous_mode
from .._results import RESULTS
from .lg_newton import damped_newton, NewtonSettings


BAND_LAYOUT = (
    "`precision(phi)` must return the lower bands of Q, not Q itself: an array of "
    "shape (b + 1, n) with `Q_band[k, i] = Q[i + k, i]` (row 0 the diagonal, row k "
    "the k-th sub-diagonal padded at the end), b the bandwidth. From a full "
    "matrix: `jnp.stack([jnp.pad(jnp.diagonal(Q, -k), (0, k)) for k in "
    "range(b + 1)])`; a Q with no band structure belongs in the covariance form "
    "(`covariance=phi -> inv(Q)`)."
)


def check_band_layout(band: ArrayLike) -> None:
    """A clear `ValueError` for a concrete `precision(phi)` that is a full
    symmetric `n × n` matrix rather than its lower bands.

    The two layouts share the shape `(n, n)` (a band of width `n - 1`), so the
    values decide: Q is symmetric, while its lower bands are symmetric only by
    coincidence (row 0 would have to equal column 0: Q's diagonal equal to its
    first column). Checked on concrete values, by `LatentGaussianMarginal.check`
    (which `lapsample.sample` calls), not while tracing.
    """
    band = np.asarray(band)
    n = band.shape[-1]
    if band.ndim != 2 or band.shape != (n, n) or n < 2:
        return
    if np.all(np.isfinite(band)) and np.allclose(band, band.T, rtol=1e-10, atol=0):
        raise ValueError(
            f"`precision(phi)` returned a symmetric {n} × {n} matrix: that looks "
            "like the full precision Q, which would be read as its lower bands "
            "and give wrong values. " + BAND_LAYOUT
        )


# --------------------------------------------------------------------------------
# Newton, precision form: state theta, banded H = Q + W.
# --------------------------------------------------------------------------------


class _PrecState(eqx.Module):
    theta: Array
    value: Array  # Ψ(theta) = ℓ(theta) - ½ rᵀ Q r
    direction: Array
    decrement: Array
    factor: BandedFactor  # of Q + W at theta
    ok: Bool[Array, ""]
    num_steps: Int[Array, ""]
    done: Bool[Array, ""]

    @property
    def step_vector(self) -> Array:
        """The full Newton step in `theta`."""
        return self.direction


def _prec_psi(lik, params, band, mean, theta):
    r = theta - mean
    return jnp.sum(lik.derivatives(theta, params)[0]) - 0.5 * jnp.dot(
        r, band_matvec(band, r)
    )


def _prec_evaluate(lik, params, band, q_blocks, mean, theta, num_steps, associative):
    value_terms, d1, d2, _ = lik.derivatives(theta, params)
    r = theta - mean
    qr = band_matvec(band, r)
    value = jnp.sum(value_terms) - 0.5 * jnp.dot(r, qr)
    grad = d1 - qr
    factor, factor_ok, direction = banded_factorise(
        add_to_block_diagonal(q_blocks[0], -d2),
        q_blocks[1],
        theta.shape[0],
        rhs=grad,
        associative=associative,
    )
    decrement = jnp.dot(grad, direction)
    ok = jnp.isfinite(value) & factor_ok & jnp.all(jnp.isfinite(direction))
    return _PrecState(
        theta, value, direction, decrement, factor, ok, num_steps, jnp.array(False)
    )


def newton_prec(lik, params, band, mean, theta_guess, settings: NewtonSettings):
    q_blocks = lower_bands_to_blocks(band)

    # The best start by the objective: the prior mean, the guess, and for a
    # `WarmStart` its predicted mode too.
    def consider(best, start):
        theta0, psi0 = best
        psi_start = _prec_psi(lik, params, band, mean, start)
        better = better_start(psi_start, psi0)
        return jnp.where(better, start, theta0), jnp.where(better, psi_start, psi0)

    best = (mean, _prec_psi(lik, params, band, mean, mean))
    previous = previous_mode(theta_guess)
    if previous is not None:
        best = consider(best, previous)
    theta0, _ = consider_prediction(theta_guess, consider, best)

    def evaluate(theta, num_steps):
        return _prec_evaluate(
            lik, params, band, q_blocks, mean, theta, num_steps, settings.associative
        )

    def trial_value(s, step):
        return _prec_psi(lik, params, band, mean, s.theta + step * s.direction)

    def move(s, step):
        return evaluate(s.theta + step * s.direction, s.num_steps + 1)

    def settle(s):
        theta = s.theta + s.direction
        value = _prec_psi(lik, params, band, mean, theta)
        return _PrecState(
            theta, value, jnp.zeros_like(s.direction), jnp.zeros_like(s.decrement),
            s.factor, s.ok & jnp.isfinite(value), s.num_steps + 1, jnp.array(True),
        )  # fmt: skip

    state = evaluate(theta0, jnp.array(0))
    s, result = damped_newton(
        state, move, trial_value, settings, settle if lik.quadratic else None
    )
    prior_factor, prior_ok = banded_factorise(
        *q_blocks, band.shape[1], associative=settings.associative
    )
    pd = s.factor.positive_definite & prior_ok
    result = RESULTS.where(pd, result, RESULTS.hessian_not_positive_definite)
    value = s.value + 0.5 * banded_logdet(prior_factor) - 0.5 * banded_logdet(s.factor)
    return value, s.theta, (s.factor, prior_factor), result, s.num_steps


def prec_cotangents(lik, theta, factors, band, mean, params, value_bar, theta_bar):
    factor, prior_factor = factors
    _, _, d2, d3 = lik.derivatives(theta, params)
    # The band of (Q + W)⁻¹ and of Q⁻¹ (selected inverses): the derivatives of the
    # two log-determinants, constants in the linearisation below (closed over, not
    # arguments of `terms`).
    sigma_blocks = band_selected_inverse(factor)
    prior_inverse = band_selected_inverse(prior_factor)
    diag_sigma = jnp.diagonal(sigma_blocks[0], axis1=-2, axis2=-1).ravel()
    diag_sigma = diag_sigma[: theta.shape[0]]
    s = 0.5 * value_bar * diag_sigma * d3
    if theta_bar is not None:
        s = s + theta_bar
    u = banded_solve(factor, s)

    def terms(band_, mean_, p):
        # ḡ·log q + uᵀ∇_theta log q at fixed theta*, with each log-determinant
        # replaced by its linearisation tr(A⁻¹ dA) (same first derivatives).
        l0, l1, l2, _ = lik.derivatives(theta, p)
        r = theta - mean_
        qr = band_matvec(band_, r)
        q_blocks = lower_bands_to_blocks(band_)
        log_q = (
            jnp.sum(l0)
            - 0.5 * jnp.dot(r, qr)
            + 0.5 * blocks_inner(prior_inverse, q_blocks)
            - 0.5 * (blocks_inner(sigma_blocks, q_blocks) - jnp.dot(diag_sigma, l2))
        )
        return value_bar * log_q + jnp.dot(u, l1 - qr)

    return terms
