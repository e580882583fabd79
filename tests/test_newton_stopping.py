"""Newton's stopping test on a strongly curved log joint: a step negligible in
theta can still be worth a great deal in the objective, and the marginal's value
must not carry that error silently."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import lapsample as ls


D = 6
Y = jnp.arange(D, dtype=jnp.float64) % 3


def _poisson(theta, log_scale):
    # Poisson counts with a N(0, e^(2·log_scale)) prior on each latent: at
    # log_scale = -60 the curvature in theta is e^120.
    return jnp.sum(Y * theta - jnp.exp(theta)) - 0.5 * jnp.exp(-2 * log_scale) * (
        theta @ theta
    )


def _gaussian(theta, log_scale):
    # The same prior with normal observations: quadratic in theta.
    return -0.5 * jnp.sum((Y - theta) ** 2) - 0.5 * jnp.exp(-2 * log_scale) * (
        theta @ theta
    )


# A warm start off the mode by rounding-sized amounts (1e-16), as a sampler's
# previous mode is when phi jumps to where the prior pins the latents near 0.
NOISE = 1e-16 * jnp.linspace(1.0, 2.0, D)


@pytest.mark.parametrize("model", [_poisson, _gaussian])
@pytest.mark.parametrize("hessian", [ls.DenseHessian(), ls.DiagonalHessian()])
def test_a_step_negligible_in_theta_but_not_in_the_objective_is_taken(model, hessian):
    marginal = eqx.filter_jit(ls.LaplaceMarginal(model, jnp.zeros(D), hessian=hessian))
    phi = jnp.asarray(-60.0)
    value_cold, aux_cold = marginal(phi, jnp.zeros(D))
    value_warm, aux_warm = marginal(phi, NOISE)
    assert aux_warm.result == ls.RESULTS.successful
    # From NOISE, stopping on the step alone (1e-16 <= xtol) left the value off by
    # ½·e^120·|NOISE|² ≈ 1e20 nats.
    np.testing.assert_allclose(value_warm, value_cold, rtol=1e-12)


def test_latent_gaussian_warm_start_in_a_strongly_curved_prior():
    # `LatentGaussianMarginal`'s Newton state is evaluated after a step (its
    # iterate solves the linearised system), so a warm start off by rounding is
    # corrected before the stopping test; this pins that. The precision is a
    # second difference (tridiagonal 2, -1: positive definite) scaled by e^120.
    def precision(phi):
        s2 = jnp.exp(2 * phi[0])
        return jnp.stack([jnp.full(D, 2.0 / s2), jnp.full(D, -1.0 / s2)])

    marginal = eqx.filter_jit(
        ls.LatentGaussianMarginal(ls.PoissonLog(Y), precision=precision)
    )
    phi = jnp.array([-60.0])
    value_cold, aux_cold = marginal(phi)
    value_warm, aux_warm = marginal(phi, aux_cold.theta_star + NOISE)
    assert aux_warm.result == ls.RESULTS.successful
    np.testing.assert_allclose(value_warm, value_cold, rtol=1e-12)
