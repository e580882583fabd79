"""The latent-Gaussian marginal: the built-in likelihoods' derivatives, agreement with
the generic dense `LaplaceMarginal` on the same models (covariance and banded
precision forms), finite differences, posteriordb's gp_pois_regr, the Finland
disease map, failure codes and the latent draws."""

import dataclasses
import math
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls

from .helpers import (
    assert_default_xtol_error_bounded,
    central_difference_grad,
    check_mixing,
    disease_map_100,
    mcse,
    shared_json,
)


# --------------------------------------------------------------------------------
# Likelihood derivatives against automatic differentiation.
# --------------------------------------------------------------------------------

N = 20
_X = jnp.linspace(0.0, 10.0, N)
_F = jnp.sin(_X) + 0.3


def _likelihood_cases():
    y_counts = jnp.round(jnp.exp(_F + 0.5) * 1.3)
    exposure = jnp.linspace(0.5, 2.0, N)
    return {
        "poisson": (ls.PoissonLog(y_counts, exposure=exposure, offset=0.1), None),
        "negbin": (
            ls.NegBinomial2Log(y_counts, exposure=exposure),
            jnp.array(3.0),
        ),
        "bernoulli": (ls.BernoulliLogit((_F > 0.5).astype(float), offset=-0.2), None),
        "gaussian": (ls.Gaussian(_F + 0.1 * jnp.cos(3 * _X)), jnp.array(0.4)),
    }


LIKELIHOODS = ["poisson", "negbin", "bernoulli", "gaussian"]


def _reference_log_density(name, lik, theta_i, i, params):
    """`log p(y_i | theta_i)` written independently with jax.scipy.stats."""
    if name == "poisson":
        rate = jnp.exp(theta_i + lik.log_offset[i])
        return jstats.poisson.logpmf(lik.y[i], rate)
    if name == "negbin":
        mu = jnp.exp(theta_i + lik.log_offset[i])
        kappa = params
        return jstats.nbinom.logpmf(lik.y[i], kappa, kappa / (kappa + mu))
    if name == "bernoulli":
        p = jax.nn.sigmoid(theta_i + lik.offset[i])
        return jstats.bernoulli.logpmf(lik.y[i], p)
    return jstats.norm.logpdf(lik.y[i], theta_i, params)


@eqx.filter_jit
def _derivatives_and_autodiff(name, lik, theta, params):
    """The likelihood's own derivatives and log density, and autodiff's of
    `_reference_log_density` (one compilation for all of them)."""

    def term(t, i):
        return _reference_log_density(name, lik, t, i, params)

    idx = jnp.arange(N)
    ref = jax.vmap(term)(theta, idx)
    ref1 = jax.vmap(jax.grad(term))(theta, idx)
    ref2 = jax.vmap(jax.grad(jax.grad(term)))(theta, idx)
    ref3 = jax.vmap(jax.grad(jax.grad(jax.grad(term))))(theta, idx)
    derivatives = lik.derivatives(theta, params)
    return derivatives, (ref, ref1, ref2, ref3), lik.log_density(theta, params)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_likelihood_derivatives_match_autodiff(name):
    lik, params = _likelihood_cases()[name]
    theta = _F + 0.2 * jnp.cos(_X)
    (value, d1, d2, d3), (ref, ref1, ref2, ref3), log_density = (
        _derivatives_and_autodiff(name, lik, theta, params)
    )
    for got, want in ((value, ref), (d1, ref1), (d2, ref2), (d3, ref3)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(log_density, ref.sum(), rtol=1e-13)


# --------------------------------------------------------------------------------
# Agreement with LaplaceMarginal(..., DenseHessian()) on the same model.
# phi = (log amplitude, log length or AR logit, mean shift[, log likelihood param]).
# --------------------------------------------------------------------------------

JITTER = 1e-4


def _cov(phi):
    amp, length = jnp.exp(phi[0]), jnp.exp(phi[1])
    sq = (_X[:, None] - _X[None, :]) ** 2
    return amp**2 * jnp.exp(-0.5 * sq / length**2) + JITTER * jnp.eye(N)


def _prec_band(phi):
    # Stationary AR(1): coefficient tanh(phi[1]), innovation sd exp(phi[0]).
    r, s2 = jnp.tanh(phi[1]), jnp.exp(2 * phi[0])
    diag = jnp.full(N, 1 + r**2).at[0].set(1.0).at[-1].set(1.0) / s2
    sub = jnp.full(N, -r / s2)
    return jnp.stack([diag, sub])


def _band_to_dense(band):
    return jnp.diag(band[0]) + jnp.diag(band[1, :-1], -1) + jnp.diag(band[1, :-1], 1)


def _mean(phi):
    return 0.5 * phi[2] + 0.1 * _X / 10


def _log_prior(phi):
    return jstats.norm.logpdf(phi, 0.0, 1.0).sum()


def _lik_params(phi):
    return jnp.exp(phi[3])


def _models(name, form):
    lik, _ = _likelihood_cases()[name]
    has_params = name in ("negbin", "gaussian")
    params_fn = _lik_params if has_params else None
    if form == "covariance":
        marginal = ls.LatentGaussianMarginal(
            lik,
            covariance=_cov,
            mean=_mean,
            likelihood_params=params_fn,
            log_prior=_log_prior,
        )
    else:
        marginal = ls.LatentGaussianMarginal(
            lik,
            precision=_prec_band,
            mean=_mean,
            likelihood_params=params_fn,
            log_prior=_log_prior,
        )

    def log_joint(theta, phi):
        r = theta - _mean(phi)
        if form == "covariance":
            chol = jnp.linalg.cholesky(_cov(phi))
            white = jsl.solve_triangular(chol, r, lower=True)
            quad = jnp.dot(white, white)
            half_logdet_q = -jnp.sum(jnp.log(jnp.diagonal(chol)))
        else:
            q = _band_to_dense(_prec_band(phi))
            quad = r @ q @ r
            half_logdet_q = jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(q))))
        params = _lik_params(phi) if has_params else None
        return (
            _log_prior(phi)
            - 0.5 * quad
            + half_logdet_q
            - 0.5 * N * math.log(2 * math.pi)
            + lik.log_density(theta, params)
        )

    phi = jnp.array([0.2, 0.4, 0.3, 0.1] if has_params else [0.2, 0.4, 0.3])
    return marginal, log_joint, phi


def _assert_agrees_with_dense(marginal, log_joint, phi):
    """Mode, value and gradient equal to `LaplaceMarginal(log_joint)` (dense)."""
    (value, aux), grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))(phi)
    assert aux.result == ls.RESULTS.successful
    # The dense path starts at our mode and verifies it with its own Newton.
    dense = ls.LaplaceMarginal(log_joint, aux.theta_star)
    (value_d, aux_d), grad_d = jax.jit(jax.value_and_grad(dense, has_aux=True))(phi)
    assert aux_d.result == ls.RESULTS.successful
    np.testing.assert_allclose(aux.theta_star, aux_d.theta_star, atol=1e-9)
    np.testing.assert_allclose(value, value_d, rtol=1e-10)
    np.testing.assert_allclose(
        grad, grad_d, rtol=1e-8, atol=1e-8 * jnp.abs(grad_d).max()
    )


# Each likelihood once in the fast suite, alternating forms; the other four
# combinations (each a dense compile) run with the slow tests.
_FAST_PAIRS = {
    ("poisson", "covariance"),
    ("negbin", "precision"),
    ("bernoulli", "covariance"),
    ("gaussian", "precision"),
}


@pytest.mark.parametrize(
    "name, form",
    [
        pytest.param(
            name,
            form,
            marks=() if (name, form) in _FAST_PAIRS else pytest.mark.slow,
        )
        for name in LIKELIHOODS
        for form in ("covariance", "precision")
    ],
)
def test_agrees_with_dense_laplace(name, form):
    marginal, log_joint, phi = _models(name, form)
    _assert_agrees_with_dense(marginal, log_joint, phi)


def _difference_precision(order: int):
    """`phi -> (Q_band, Q)`: `Q = e^{-2 phi0} DᵀD + e^{phi1} I` with `D` the
    `order`-th difference matrix (a random walk of that order plus a ridge), of
    bandwidth `order`. The band's ignored tail entries hold garbage (1e3): the
    marginal must not read them."""
    d = np.eye(N)
    for _ in range(order):
        d = d[1:] - d[:-1]
    structure = d.T @ d if order else np.zeros((N, N))
    bands = np.full((order + 1, N), 1e3)
    for k in range(order + 1):
        bands[k, : N - k] = np.diagonal(structure, -k)
    ridge = np.zeros((order + 1, N))
    ridge[0] = 1.0

    def band(phi):
        return jnp.exp(-2 * phi[0]) * bands + jnp.exp(phi[1]) * ridge

    def dense(phi):
        return jnp.exp(-2 * phi[0]) * structure + jnp.exp(phi[1]) * jnp.eye(N)

    return band, dense


@pytest.mark.parametrize("order", [0, 2, 3])
def test_precision_form_agrees_with_dense_at_any_bandwidth(order):
    # Bandwidth 1 is covered above; 0 (a diagonal Q), 2 and 3 (blocks of 2 and 3
    # latents, the last block of 3 padded) run the general block recurrences.
    band, dense_q = _difference_precision(order)
    lik, _ = _likelihood_cases()["poisson"]
    marginal = ls.LatentGaussianMarginal(
        lik, precision=band, mean=lambda phi: phi[2], log_prior=_log_prior
    )

    def log_joint(theta, phi):
        q = dense_q(phi)
        r = theta - phi[2]
        half_logdet_q = jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(q))))
        return (
            _log_prior(phi)
            - 0.5 * r @ q @ r
            + half_logdet_q
            - 0.5 * N * math.log(2 * math.pi)
            + lik.log_density(theta, None)
        )

    phi = jnp.array([-0.3, -0.5, 0.4])
    _assert_agrees_with_dense(marginal, log_joint, phi)


@pytest.mark.parametrize("form", ["covariance", "precision"])
def test_gradient_matches_central_differences(form):
    marginal, _, phi = _models("negbin", form)
    fn = eqx.filter_jit(marginal)
    (_, aux), grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))(phi)
    # Each re-solve gives the value to ~1e-12 relative (|value| ~ 100, so ~1e-10):
    # with h = 1e-3 that is ~5e-8 of noise in each difference, and the truncation
    # error h²/6·f''' is ~2e-7 for third derivatives of order 1.
    fd = central_difference_grad(lambda p: fn(p)[0], phi, h=1e-3)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("empty_cells", [False, True])
def test_covariance_form_gradient_at_d300(empty_cells):
    """The rebuilt backward pass (`B⁻¹` once, `diag(Σ)` in `O(n²)`) at d = 300
    against the generic dense `LaplaceMarginal` on the same log joint (the
    independent oracle) and central differences. With zero exposure in every 10th
    cell those latents have `w_i = 0`, which takes the product-form branch."""
    n = 300
    x = jnp.linspace(0.0, 10.0, n)
    exposure = jnp.linspace(0.5, 2.0, n)
    if empty_cells:
        exposure = exposure.at[::10].set(0.0)
    f_true = jnp.sin(x) + 0.3
    y = jnp.asarray(
        np.random.default_rng(3).poisson(np.asarray(exposure * jnp.exp(f_true)))
    )
    lik = ls.PoissonLog(y, exposure=exposure)

    def covariance(phi):
        sq = (x[:, None] - x[None, :]) ** 2
        # A 0.1 nugget keeps cond(K) modest, so the dense oracle is accurate.
        k = jnp.exp(2 * phi[0]) * jnp.exp(-0.5 * sq / jnp.exp(2 * phi[1]))
        return k + 0.1 * jnp.eye(n)

    marginal = ls.LatentGaussianMarginal(lik, covariance=covariance)

    def log_joint(theta, phi):
        chol = jnp.linalg.cholesky(covariance(phi))
        white = jsl.solve_triangular(chol, theta, lower=True)
        return (
            -0.5 * white @ white
            - jnp.sum(jnp.log(jnp.diagonal(chol)))
            - 0.5 * n * math.log(2 * math.pi)
            + lik.log_density(theta, None)
        )

    phi = jnp.array([0.1, 0.2])
    _assert_agrees_with_dense(marginal, log_joint, phi)
    fn = eqx.filter_jit(marginal)
    grad = jax.jit(jax.grad(lambda p: marginal(p)[0]))(phi)
    # |value| ~ 500: each re-solve's value is good to ~1e-12 relative, so ~2.5e-7
    # of noise per difference at h = 1e-3, and truncation h²/6·f''' ~ 2e-7.
    fd = central_difference_grad(lambda p: fn(p)[0], phi, h=1e-3)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("smallest_w", [1e-20, 0.0])
def test_posterior_variances_against_the_inverse(smallest_w):
    """`diag((K⁻¹ + W)⁻¹)` in the backward pass, from `B⁻¹` in `O(n²)` (every
    `w_i > 0`, down to 1e-20) and by the product form (a `w_i = 0`, a latent
    without data), against `inv(inv(K) + W)` on a well-conditioned `K`."""
    from lapsample._linalg.dense import gram_of_lower_inverse
    from lapsample._marginal.lg_covariance import _posterior_variances, b_factor

    x = jnp.linspace(0.0, 10.0, 40)
    cov = jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2) + 0.1 * jnp.eye(40)
    w = jnp.linspace(0.2, 30.0, 40).at[::5].set(smallest_w).at[3].set(1e-8)
    lower, sqrt_w = b_factor(cov, w)
    got = jax.jit(_posterior_variances)(
        gram_of_lower_inverse(lower), lower, cov, sqrt_w
    )
    want = jnp.diagonal(jnp.linalg.inv(jnp.linalg.inv(cov) + jnp.diag(w)))
    # K has condition ~ 1e2: the reference is good to ~1e-14 relative.
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_warm_start_reaches_the_same_mode():
    # Solved to rounding (the default xtol leaves each mode up to 1e-8 off, and
    # differently from different starts: see the next test).
    marginal, _, phi = _models("poisson", "covariance")
    marginal = dataclasses.replace(marginal, xtol=1e-13)
    fn = eqx.filter_jit(marginal)
    value0, aux0 = fn(phi)
    near = phi + 0.02
    value_cold, aux_cold = fn(near)
    value_warm, aux_warm = fn(near, aux0.theta_star)
    assert aux_warm.result == ls.RESULTS.successful
    assert aux_warm.num_steps < aux_cold.num_steps
    np.testing.assert_allclose(value_warm, value_cold, rtol=1e-12)
    np.testing.assert_allclose(aux_warm.theta_star, aux_cold.theta_star, atol=1e-9)


@pytest.mark.parametrize("form", ["covariance", "precision"])
def test_default_xtol_error_is_first_order_in_the_last_step(form):
    default, log_joint, phi = _models("poisson", form)
    tight = dataclasses.replace(default, xtol=1e-13)
    assert_default_xtol_error_bounded(
        default, tight, log_joint, phi, phi + jnp.array([0.08, -0.06, 0.05])
    )


def test_phi_may_be_a_pytree():
    lik, _ = _likelihood_cases()["gaussian"]
    marginal, _, phi = _models("gaussian", "covariance")
    tree = {"kernel": phi[:2], "shift": phi[2], "log_sigma": phi[3]}

    def flat(p):
        return jnp.concatenate([p["kernel"], p["shift"][None], p["log_sigma"][None]])

    tree_marginal = ls.LatentGaussianMarginal(
        lik,
        covariance=lambda p: _cov(flat(p)),
        mean=lambda p: _mean(flat(p)),
        likelihood_params=lambda p: _lik_params(flat(p)),
        log_prior=lambda p: _log_prior(flat(p)),
    )
    (value, _), grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))(phi)
    (value_t, _), grad_t = jax.jit(jax.value_and_grad(tree_marginal, has_aux=True))(
        tree
    )
    np.testing.assert_allclose(value_t, value, rtol=1e-13)
    np.testing.assert_allclose(flat(grad_t), grad, rtol=1e-12)


# --------------------------------------------------------------------------------
# Failures are codes, not exceptions.
# --------------------------------------------------------------------------------


def test_nonfinite_covariance_region_is_rejected():
    lik, _ = _likelihood_cases()["poisson"]

    def cov(phi):
        return jnp.where(phi[0] > 1.0, jnp.nan, _cov(phi))

    marginal = ls.LatentGaussianMarginal(lik, covariance=cov, log_prior=_log_prior)
    vg = jax.jit(jax.value_and_grad(marginal, has_aux=True))
    (value, aux), grad = vg(jnp.array([1.5, 0.4]))
    assert value == -jnp.inf
    assert aux.result != ls.RESULTS.successful
    np.testing.assert_array_equal(grad, 0.0)
    (value, aux), grad = vg(jnp.array([0.5, 0.4]))
    assert aux.result == ls.RESULTS.successful
    assert jnp.all(jnp.isfinite(grad))


def test_indefinite_precision_is_rejected():
    lik, _ = _likelihood_cases()["poisson"]

    def band(phi):
        # |r| > 1 makes the AR(1) "precision" indefinite.
        r = phi[0]
        return jnp.stack([jnp.ones(N), jnp.full(N, -r)])

    marginal = ls.LatentGaussianMarginal(lik, precision=band)
    vg = jax.jit(jax.value_and_grad(marginal, has_aux=True))
    (value, aux), grad = vg(jnp.array([1.5]))
    assert value == -jnp.inf
    assert aux.result == ls.RESULTS.hessian_not_positive_definite
    np.testing.assert_array_equal(grad, 0.0)


def test_bad_construction_raises():
    lik, _ = _likelihood_cases()["poisson"]
    with pytest.raises(ValueError, match="exactly one"):
        ls.LatentGaussianMarginal(lik)
    with pytest.raises(ValueError, match="exactly one"):
        ls.LatentGaussianMarginal(lik, covariance=_cov, precision=_prec_band)
    with pytest.raises(TypeError, match="AbstractLikelihood"):
        ls.LatentGaussianMarginal(lambda t: t, covariance=_cov)
    phi = jnp.array([0.2, 0.4])
    short = ls.LatentGaussianMarginal(ls.PoissonLog(jnp.ones(N - 1)), covariance=_cov)
    with pytest.raises(ValueError, match="disagree in length|does not accept"):
        short(phi)
    marginal = ls.LatentGaussianMarginal(lik, covariance=_cov)
    with pytest.raises(ValueError, match="must have shape"):
        marginal(phi, jnp.zeros(N + 1))
    not_square = ls.LatentGaussianMarginal(lik, covariance=lambda p: _cov(p)[:, :-1])
    with pytest.raises(ValueError, match="square"):
        not_square(phi)


# --------------------------------------------------------------------------------
# Latent draws: covariance (K⁻¹ + W)⁻¹ within Monte-Carlo error.
# --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("form", ["covariance", "precision"])
def test_sample_theta_covariance(form):
    marginal, log_joint, phi = _models("poisson", form)
    _, aux = eqx.filter_jit(marginal)(phi)
    theta_star = aux.theta_star
    sigma = jnp.linalg.inv(jax.hessian(lambda t: -log_joint(t, phi))(theta_star))
    num = 20_000
    keys = jr.split(jr.key(3), num)
    draws = jax.jit(
        lambda ks: jax.lax.map(lambda k: marginal.sample_theta(k, phi, theta_star), ks)
    )(keys)
    centred = draws - theta_star
    emp = centred.T @ centred / num
    # Sample covariance of N Gaussian draws about the known mean: entry (i, j) has
    # sd sqrt((S_ii S_jj + S_ij²)/N); 400 entries, so 5 sd bounds all of them.
    sd = jnp.sqrt((jnp.outer(jnp.diag(sigma), jnp.diag(sigma)) + sigma**2) / num)
    assert float(jnp.max(jnp.abs(emp - sigma) / sd)) < 5.0
    # And the mean is theta_star.
    mean_sd = jnp.sqrt(jnp.diag(sigma) / num)
    assert float(jnp.max(jnp.abs(centred.mean(0)) / mean_sd)) < 5.0


# --------------------------------------------------------------------------------
# posteriordb gp_pois_regr: the Laplace log-marginal test points.
# --------------------------------------------------------------------------------


def _gp_pois_regr():
    data = shared_json("posteriordb", "gp_pois_regr-gp_pois_regr", "data.json")
    x = jnp.asarray(data["x"], float)
    k = jnp.asarray(data["k"], float)

    def cov(phi):
        rho, alpha = jnp.exp(phi[0]), jnp.exp(phi[1])
        sq = (x[:, None] - x[None, :]) ** 2
        return alpha**2 * jnp.exp(-sq / (2 * rho**2)) + 1e-10 * jnp.eye(x.shape[0])

    def log_prior(phi):
        # rho ~ Gamma(25, rate 4), alpha ~ half-N(0, 2), with the log Jacobians.
        rho, alpha = jnp.exp(phi[0]), jnp.exp(phi[1])
        return (
            jstats.gamma.logpdf(rho, 25.0, scale=0.25)
            + phi[0]
            + jstats.norm.logpdf(alpha, 0.0, 2.0)
            + math.log(2.0)
            + phi[1]
        )

    return ls.PoissonLog(k), cov, log_prior


def test_gp_pois_regr_test_points():
    lik, cov, _ = _gp_pois_regr()
    points = shared_json("posteriordb", "gp_pois_regr-gp_pois_regr", "summary.json")[
        "log_marginal_test_points"
    ]["points"]
    marginal = ls.LatentGaussianMarginal(lik, covariance=cov)
    fn = eqx.filter_jit(marginal)
    for p in points:
        value, aux = fn(jnp.array([math.log(p["rho"]), math.log(p["alpha"])]))
        assert aux.result == ls.RESULTS.successful
        np.testing.assert_allclose(value, p["laplace_log_q_y_given_phi"], rtol=1e-10)


@pytest.mark.slow
def test_gp_pois_regr_phi_moments():
    """phi moments from `lapsample.sample` against the quadrature of the Laplace
    target in summary.json (its MCSE is 0), with |z| < 4 per the README there."""
    lik, cov, log_prior = _gp_pois_regr()
    summary = shared_json("posteriordb", "gp_pois_regr-gp_pois_regr", "summary.json")
    quad = summary["quadrature"]
    marginal = ls.LatentGaussianMarginal(lik, covariance=cov, log_prior=log_prior)
    results = ls.sample(
        jr.key(11),
        marginal,
        jnp.array([1.7, 1.0]),
        num_warmup=500,
        num_samples=1000,
        num_chains=4,
        sample_theta=True,
        progress_bar=False,
    )
    # `sample` draws theta from this marginal's own Laplace approximation.
    assert results.theta.shape == (4, 1000, lik.y.shape[0])
    assert np.all(np.isfinite(results.theta))
    phi = np.asarray(results.phi)  # (chains, draws, 2)
    for i, name in enumerate(["log_rho", "log_alpha"]):
        draws = phi[..., i]
        check_mixing(draws, name)
        for stat, ref in (("mean", quad[name]["mean"]), ("sd", quad[name]["sd"])):
            est = float(np.mean(draws) if stat == "mean" else np.std(draws))
            z = (est - ref) / mcse(draws, stat)
            assert abs(z) < 4, f"{name} {stat}: {est:.4f} vs {ref:.4f} (z = {z:.2f})"


# --------------------------------------------------------------------------------
# Disease map, 100 Finnish cells: agreement with the dense path.
# --------------------------------------------------------------------------------


def test_disease_map_100_agrees_with_dense():
    log_joint = disease_map_100()
    n, cov, log_prior = log_joint.n, log_joint.covariance, log_joint.log_prior
    lik = ls.PoissonLog(log_joint.y, exposure=log_joint.ye)
    phi = jnp.array([math.log(0.8), math.log(6.0)])
    marginal = ls.LatentGaussianMarginal(lik, covariance=cov, log_prior=log_prior)
    (value, aux), grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))(phi)
    assert aux.result == ls.RESULTS.successful
    dense = ls.LaplaceMarginal(log_joint, jnp.zeros(n))
    (value_d, aux_d), grad_d = jax.jit(jax.value_and_grad(dense, has_aux=True))(phi)
    assert aux_d.result == ls.RESULTS.successful
    # K + 1e-8 I has cond ~1e8-1e9 and the dense path works with K⁻¹ (the B form
    # never does), so rounding in the dense path alone allows ~cond·eps ≈ 1e-8
    # relative in the value's pieces and the gradient.
    np.testing.assert_allclose(value, value_d, rtol=1e-10)
    np.testing.assert_allclose(grad, grad_d, rtol=2e-8)


@pytest.mark.parametrize("form", ["covariance", "precision"])
def test_gaussian_likelihood_solves_in_one_step(form):
    # A Gaussian likelihood is quadratic in theta: one Newton step, no loop in the
    # traced solve (a Poisson one iterates), from a cold and from a warm start,
    # with the value of the dense Laplace marginal (`test_agrees_with_dense_laplace`
    # checks the gradient and mode too).
    counts = {}
    for name in ("gaussian", "poisson"):
        marginal, _, phi = _models(name, form)
        text = str(jax.make_jaxpr(lambda p: marginal(p)[0])(phi))
        counts[name] = len(re.findall(r"\bwhile\b", text))
    assert counts == {"gaussian": 0, "poisson": 2}
    marginal, log_joint, phi = _models("gaussian", form)
    fn = eqx.filter_jit(marginal)
    _, cold = fn(phi)
    value, warm = fn(phi + 0.05, cold.theta_star)
    for aux in (cold, warm):
        assert aux.result == ls.RESULTS.successful and int(aux.num_steps) == 1
    dense = ls.LaplaceMarginal(log_joint, jnp.zeros(N), hessian=ls.DenseHessian())
    np.testing.assert_allclose(value, eqx.filter_jit(dense)(phi + 0.05)[0], rtol=1e-12)
