"""The Laplace marginal against values computed outside lapsample: posteriordb's
`log_marginal_test_points` and the Finland disease-map data (Margossian et al.)."""

import math

import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls

from .helpers import disease_map_100, oracle_log_marginal, shared_json


def _points(case):
    return shared_json("posteriordb", case, "summary.json")["log_marginal_test_points"][
        "points"
    ]


def _check_points(log_joint, theta_init, phis, expected, rtol):
    marginal = ls.LaplaceMarginal(log_joint, theta_init)
    values, aux = jax.jit(jax.vmap(marginal))(jnp.asarray(phis))
    assert jnp.all(aux.result == ls.RESULTS.successful)
    np.testing.assert_allclose(values, expected, rtol=rtol)


def test_eight_schools_test_points():
    # Exact (Gaussian-Gaussian); the reference excludes the priors on mu and tau,
    # so log_joint leaves them out too and the marginal is log p(y | mu, tau).
    data = shared_json(
        "posteriordb", "eight_schools-eight_schools_noncentered", "data.json"
    )
    y, sigma = jnp.asarray(data["y"], float), jnp.asarray(data["sigma"], float)

    def log_joint(theta, phi):
        mu, tau = phi[0], jnp.exp(phi[1])
        return (
            jstats.norm.logpdf(theta, mu, tau).sum()
            + jstats.norm.logpdf(y, theta, sigma).sum()
        )

    points = _points("eight_schools-eight_schools_noncentered")
    phis = [[p["mu"], math.log(p["tau"])] for p in points]
    expected = [p["log_p_y_given_phi"] for p in points]
    _check_points(log_joint, jnp.zeros(8), phis, expected, rtol=1e-8)


def test_sblrc_test_points():
    # Bayesian linear regression, beta ~ N(0, 10² I) integrated out: exact.
    data = shared_json("posteriordb", "sblrc-blr", "data.json")
    x, y = jnp.asarray(data["X"], float), jnp.asarray(data["y"], float)

    def log_joint(beta, log_sigma):
        return (
            jstats.norm.logpdf(beta, 0.0, 10.0).sum()
            + jstats.norm.logpdf(y, x @ beta, jnp.exp(log_sigma)).sum()
        )

    points = _points("sblrc-blr")
    phis = [math.log(p["sigma"]) for p in points]
    expected = [p["log_p_y_given_phi"] for p in points]
    _check_points(log_joint, jnp.zeros(5), phis, expected, rtol=1e-8)


def _gp_pois_log_joint(x, k):
    def log_joint(f_tilde, phi):
        rho, alpha = jnp.exp(phi[0]), jnp.exp(phi[1])
        cov = alpha**2 * jnp.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * rho**2))
        chol = jnp.linalg.cholesky(cov + 1e-10 * jnp.eye(x.shape[0]))
        f = chol @ f_tilde
        return (
            jstats.norm.logpdf(f_tilde).sum()
            + jstats.poisson.logpmf(k, jnp.exp(f)).sum()
        )

    return log_joint


def test_gp_pois_regr_test_points():
    # Not exact: the reference is the standard Laplace value (mode + log det of
    # I + W½ K W½), which the whitened parametrisation f = L f_tilde reproduces
    # (Laplace is invariant under a linear change of the latent).
    data = shared_json("posteriordb", "gp_pois_regr-gp_pois_regr", "data.json")
    x, k = jnp.asarray(data["x"], float), jnp.asarray(data["k"], float)
    points = _points("gp_pois_regr-gp_pois_regr")
    phis = [[math.log(p["rho"]), math.log(p["alpha"])] for p in points]
    expected = [p["laplace_log_q_y_given_phi"] for p in points]
    _check_points(_gp_pois_log_joint(x, k), jnp.zeros(11), phis, expected, rtol=1e-8)


# --------------------------------------------------------------------------------
# Disease map, 100 Finnish cells: theta ~ N(0, K), y ~ Poisson(ye · exp(theta)),
# phi = (log alpha, log rho) with inverse-gamma priors and their Jacobians.
# --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def disease_map():
    model = disease_map_100()
    return model, model.n


def test_disease_map_strategies_and_oracle_agree(disease_map):
    log_joint, n = disease_map
    phi = jnp.array([math.log(0.8), math.log(6.0)])
    results = {}
    for name, hessian in [("dense", ls.DenseHessian()), ("lineax", ls.LineaxHessian())]:
        marginal = ls.LaplaceMarginal(log_joint, jnp.zeros(n), hessian=hessian)
        (value, aux), grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))(phi)
        assert aux.result == ls.RESULTS.successful
        results[name] = (value, grad, aux.theta_star)
    value_oracle, grad_oracle = jax.jit(
        jax.value_and_grad(
            lambda p: oracle_log_marginal(log_joint, results["dense"][2], p)
        )
    )(phi)
    # Dense and Lineax share the algorithm (different Hessian assembly): rounding
    # only. The oracle takes a different route; H has cond ~1e8 here, so rounding
    # alone allows ~cond·eps ≈ 2e-8 relative in the gradient (measured: 2e-9).
    np.testing.assert_allclose(results["dense"][0], results["lineax"][0], rtol=1e-12)
    np.testing.assert_allclose(results["dense"][1], results["lineax"][1], rtol=1e-8)
    np.testing.assert_allclose(results["dense"][0], value_oracle, rtol=1e-11)
    np.testing.assert_allclose(results["dense"][1], grad_oracle, rtol=1e-7)
