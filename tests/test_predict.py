"""`lapsample.predictive` and `lapsample.predict_latent` on one short run of a small
Poisson GP (2 chains × 20 draws, `sample_theta=True`): shapes, determinism by key,
agreement with a per-draw loop and with the Gaussian conditional computed in numpy,
and the errors for runs and models they do not apply to."""

import dataclasses

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import lapsample as ls


N = 12
X = jnp.linspace(0.0, 5.0, N)
X_NEW = jnp.array([0.3, 2.55, 4.9, 6.0])
Y = jnp.round(jnp.exp(jnp.sin(X) + 0.5))
NUGGET = 1e-2


def kernel(a, b, phi):
    sq = (a[:, None] - b[None, :]) ** 2
    return jnp.exp(2 * phi["log_amp"]) * jnp.exp(-0.5 * sq / jnp.exp(2 * phi["log_ls"]))


def covariance(phi):
    return kernel(X, X, phi) + NUGGET * jnp.eye(N)


def cross(phi):
    return kernel(X, X_NEW, phi)


def new(phi):
    return kernel(X_NEW, X_NEW, phi) + NUGGET * jnp.eye(X_NEW.shape[0])


def log_prior(phi):
    return -0.5 * (phi["log_amp"] ** 2 + (phi["log_ls"] - 0.5) ** 2)


PHI_INIT = {"log_amp": jnp.array(0.0), "log_ls": jnp.array(0.5)}


def _run(marginal, sample_theta=True):
    return ls.sample(
        jr.key(3),
        marginal,
        PHI_INIT,
        num_warmup=30,
        num_samples=20,
        num_chains=2,
        sample_theta=sample_theta,
        progress_bar=False,
    )


@pytest.fixture(scope="module")
def results():
    marginal = ls.LatentGaussianMarginal(
        ls.PoissonLog(Y),
        covariance=covariance,
        mean=lambda phi: 0.2,
        log_prior=log_prior,
    )
    return _run(marginal)


def _replicate(key, theta, phi):
    return {
        "y": jr.poisson(key, jnp.exp(theta)),
        "scale": jnp.exp(phi["log_amp"]) * jr.normal(key, (2,)),
    }


def test_predictive_shapes_determinism_and_loop(results):
    out = ls.predictive(jr.key(0), results, _replicate)
    assert out["y"].shape == (2, 20, N) and out["scale"].shape == (2, 20, 2)
    assert isinstance(out["y"], np.ndarray)
    again = ls.predictive(jr.key(0), results, _replicate, batch_size=7)
    other = ls.predictive(jr.key(1), results, _replicate)
    np.testing.assert_array_equal(out["y"], again["y"])
    np.testing.assert_array_equal(out["scale"], again["scale"])
    assert not np.array_equal(out["scale"], other["scale"])
    keys = jr.split(jr.key(0), (2, 20))
    for c, d in [(0, 0), (1, 13)]:
        phi = jax.tree.map(lambda x: x[c, d], results.phi)
        manual = _replicate(keys[c, d], jnp.asarray(results.theta[c, d]), phi)
        np.testing.assert_array_equal(out["y"][c, d], manual["y"])
        np.testing.assert_allclose(out["scale"][c, d], manual["scale"], rtol=1e-14)


def test_predict_latent_at_the_observed_points_returns_theta(results):
    # K* = K, K** = K: the conditional is a point mass at theta (its covariance is
    # zero up to rounding, O(eps · cond K) entries, so the draw's noise is
    # O(√(eps · cond K)) ≈ 1e-6 at most here).
    draws = ls.predict_latent(jr.key(0), results, covariance, covariance)
    np.testing.assert_allclose(draws, results.theta, atol=1e-5)
    mean, cov = ls.predict_latent(
        jr.key(0), results, covariance, covariance, return_mean_cov=True
    )
    np.testing.assert_allclose(mean, results.theta, atol=1e-10)
    np.testing.assert_allclose(cov, 0.0, atol=1e-10)


def _numpy_conditional(results, c, d):
    phi = jax.tree.map(lambda x: x[c, d], results.phi)
    k = np.asarray(covariance(phi))
    k_star = np.asarray(cross(phi))
    k_new = np.asarray(new(phi))
    theta = results.theta[c, d]
    mean = 0.2 + k_star.T @ np.linalg.solve(k, theta - 0.2)
    cov = k_new - k_star.T @ np.linalg.solve(k, k_star)
    return mean, cov


def test_predict_latent_moments_and_draws_match_numpy(results):
    mean, cov = ls.predict_latent(jr.key(0), results, cross, new, return_mean_cov=True)
    _, diag = ls.predict_latent(
        jr.key(0),
        results,
        cross,
        lambda phi: jnp.diagonal(new(phi)),
        return_mean_cov=True,
    )
    assert mean.shape == (2, 20, 4) and cov.shape == (2, 20, 4, 4)
    for c, d in [(0, 5), (1, 19)]:
        ref_mean, ref_cov = _numpy_conditional(results, c, d)
        np.testing.assert_allclose(mean[c, d], ref_mean, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cov[c, d], ref_cov, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(diag[c, d], np.diagonal(ref_cov), rtol=1e-9)
    # The draws: at one fixed (theta, phi), repeated 4000 times (a run whose every
    # draw is draw (0, 5)), their mean and covariance estimate the conditional's.
    # Standard error of a mean: sd/√4000 ≈ 0.016 sd; of a covariance entry:
    # ≤ √2·sd_i·sd_j/√4000 ≈ 0.022 sd_i sd_j. Tolerances at ~5 standard errors.
    repeated = jax.tree.map(
        lambda x: np.broadcast_to(x[0:1, 5:6], (1, 4000, *x.shape[2:])),
        (results.phi, results.theta),
    )
    fixed = dataclasses.replace(
        results,
        phi=repeated[0],
        theta=repeated[1],
        sample_stats={"lp": np.zeros((1, 4000))},
    )
    draws = ls.predict_latent(jr.key(4), fixed, cross, new)[0]
    ref_mean, ref_cov = _numpy_conditional(results, 0, 5)
    sd = np.sqrt(np.diagonal(ref_cov))
    np.testing.assert_array_less(np.abs(draws.mean(0) - ref_mean), 0.08 * sd)
    np.testing.assert_array_less(
        np.abs(np.cov(draws.T) - ref_cov), 0.11 * np.outer(sd, sd)
    )


def test_errors(results):
    with pytest.raises(ValueError, match="cross_covariance"):
        ls.predict_latent(jr.key(0), results, lambda phi: jnp.zeros((3, 2)), new)
    with pytest.raises(ValueError, match="new_covariance"):
        ls.predict_latent(jr.key(0), results, cross, lambda phi: jnp.eye(3))
    with pytest.raises(ValueError, match="batch_size"):
        ls.predictive(jr.key(0), results, _replicate, batch_size=0)
    with pytest.raises(TypeError, match="SampleResults"):
        ls.predictive(jr.key(0), {"theta": 1}, _replicate)


def _with_marginal(results, marginal):
    sampler = dataclasses.replace(results.sampler, marginal=marginal)
    return dataclasses.replace(results, sampler=sampler)


def test_errors_for_precision_form_and_no_theta(results):
    no_theta = dataclasses.replace(results, theta=None)
    with pytest.raises(ValueError, match=r"sample_theta=True"):
        ls.predictive(jr.key(0), no_theta, _replicate)
    with pytest.raises(ValueError, match=r"sample_theta=True"):
        ls.predict_latent(jr.key(0), no_theta, cross, new)
    band = jnp.stack([2.0 * jnp.ones(N), -jnp.ones(N)])
    precision = ls.LatentGaussianMarginal(ls.PoissonLog(Y), precision=lambda phi: band)
    with pytest.raises(ValueError, match="covariance form"):
        ls.predict_latent(jr.key(0), _with_marginal(results, precision), cross, new)
    plain = ls.LaplaceMarginal(lambda theta, phi: -0.5 * jnp.sum(theta**2), Y)
    with pytest.raises(TypeError, match="LatentGaussianMarginal"):
        ls.predict_latent(jr.key(0), _with_marginal(results, plain), cross, new)


def test_mean_vector_needs_new_mean(results):
    marginal = results.sampler.marginal
    vector_mean = ls.LatentGaussianMarginal(
        marginal.likelihood,
        covariance=covariance,
        mean=lambda phi: 0.2 * jnp.ones(N),
        log_prior=log_prior,
    )
    swapped = _with_marginal(results, vector_mean)
    with pytest.raises(ValueError, match="new_mean"):
        ls.predict_latent(jr.key(0), swapped, cross, new)
    mean, _ = ls.predict_latent(
        jr.key(0), swapped, cross, new, lambda phi: 0.2, return_mean_cov=True
    )
    ref_mean, _ = _numpy_conditional(results, 1, 2)
    np.testing.assert_allclose(mean[1, 2], ref_mean, rtol=1e-10, atol=1e-12)
