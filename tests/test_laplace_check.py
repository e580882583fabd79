"""`lapsample.laplace_check`: importance sampling of the latent against the Laplace
approximation, on models where the answer is known."""

import functools
import math
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls
from lapsample._laplace_check import _pareto_k

from .helpers import seed_model, shared_json
from .test_reference_values import _gp_pois_log_joint


# --------------------------------------------------------------------------------
# ArviZ's k̂ on tails whose index is known.
# --------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0.3, 0.8])
def test_pareto_k_of_a_generalised_pareto_tail(k):
    # Weights drawn from a generalised Pareto distribution with shape k have tail
    # index k exactly. PSIS fits the largest M = min(S/5, 3√S) = 948 weights; the
    # estimate's sd is about (1 + k)/√M (0.042 for k = 0.3, 0.058 for k = 0.8), so
    # 4 sd is the tolerance.
    num = 100_000
    u = np.random.default_rng(7).uniform(size=num)
    weights = (u ** (-k) - 1.0) / k
    tail = min(num / 5, 3 * math.sqrt(num))
    k_hat = _pareto_k(np.log(weights), scale=0.0, eps=np.finfo(float).eps)
    assert abs(k_hat - k) < 4 * (1 + k) / math.sqrt(tail)


def test_pareto_k_of_constant_weights_is_minus_inf():
    # ArviZ alone returns +inf for an empty tail; constant weights mean an exact
    # proposal, which the check reports as -inf.
    log_w = np.full(100, 3.0) + 1e-14 * np.arange(100)
    assert _pareto_k(log_w, scale=50.0, eps=np.finfo(float).eps) == -math.inf


# --------------------------------------------------------------------------------
# Exact models: the weights are constant.
# --------------------------------------------------------------------------------


# The seed model with `DiagonalHessian` and eight schools with `LineaxHessian` (whose
# factor is the dense Cholesky factor) cover the quadratic forms of every factor.


def test_exact_seed_model():
    model = seed_model(20)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(20), hessian=ls.DiagonalHessian())
    phis = jnp.linspace(-1.0, 2.0, 4)
    check = ls.laplace_check(marginal, jr.key(0), phi=phis, num_draws=300)
    # θ | φ, y is Gaussian: log p(θ, φ, y) − log q(θ | φ) is the same at every
    # draw up to rounding (|log p| ≈ 70 here, so rounding is ~1e-14).
    assert np.all(np.abs(check.log_weights) < 1e-10)
    assert np.all(check.pareto_k == -np.inf)
    assert np.all(np.abs(check.correction) < 1e-10)
    np.testing.assert_allclose(check.ess, 300, rtol=1e-10)
    expected = jax.jit(jax.vmap(model.exact_log_marginal))(phis)
    np.testing.assert_allclose(check.laplace_log_marginal, expected, rtol=1e-12)
    assert check.verdict == "good"
    assert "exact" in check.message


def test_exact_with_a_factor_of_unknown_layout():
    # `BandedHessian`'s factor has no layout the check knows, so the quadratic form
    # comes from a Hessian-vector product at the mode: still exact to rounding.
    model = seed_model(6)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(6), hessian=ls.BandedHessian(1))
    check = ls.laplace_check(marginal, jr.key(0), phi=jnp.array([0.0, 1.0]))
    assert np.all(np.abs(check.log_weights) < 1e-10)
    assert np.all(check.pareto_k == -np.inf)


@pytest.mark.slow
def test_exact_seed_model_student_t_proposal():
    # With a Student-t proposal the weights vary, but their mean is still the exact
    # marginal: the correction is 0 within Monte Carlo error. A wrong normalising
    # constant of the t density would shift every correction by the same amount
    # (O(1) for d = 20), so the z-scores of all four must stay below 4.
    model = seed_model(20)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(20))
    phis = jnp.linspace(-1.0, 2.0, 4)
    check = ls.laplace_check(marginal, jr.key(1), phi=phis, num_draws=2000, df=5.0)
    assert np.all(np.isfinite(check.pareto_k))
    assert np.all(np.abs(check.correction) < 4 * check.correction_se)
    assert check.max_pareto_k < 0.5


def test_exact_eight_schools():
    data = shared_json(
        "posteriordb", "eight_schools-eight_schools_noncentered", "data.json"
    )
    y, sigma = jnp.asarray(data["y"], float), jnp.asarray(data["sigma"], float)

    def log_joint(theta, phi):
        return (
            jstats.norm.logpdf(theta, phi["mu"], jnp.exp(phi["log_tau"])).sum()
            + jstats.norm.logpdf(y, theta, sigma).sum()
        )

    marginal = ls.LaplaceMarginal(log_joint, jnp.zeros(8), hessian=ls.LineaxHessian())
    phis = {"mu": jnp.array([0.0, 4.4, 10.0]), "log_tau": jnp.array([-3.0, 1.3, 2.5])}
    check = ls.laplace_check(marginal, jr.key(2), phi=phis, num_draws=300)
    assert np.all(np.abs(check.log_weights) < 1e-10)
    assert np.all(check.pareto_k == -np.inf)
    assert np.all(np.abs(check.correction) < 1e-10)
    assert check.verdict == "good"
    table = check.summary()
    assert list(table.columns[:2]) == ["log_tau", "mu"]
    assert table.attrs["verdict"] == "good"


# --------------------------------------------------------------------------------
# Poisson GP: the correction against posteriordb's importance-sampled values.
# --------------------------------------------------------------------------------


@pytest.mark.slow
def test_gp_pois_regr_correction_matches_reference():
    data = shared_json("posteriordb", "gp_pois_regr-gp_pois_regr", "data.json")
    points = shared_json("posteriordb", "gp_pois_regr-gp_pois_regr", "summary.json")[
        "log_marginal_test_points"
    ]["points"]
    x, k = jnp.asarray(data["x"], float), jnp.asarray(data["k"], float)
    marginal = ls.LaplaceMarginal(_gp_pois_log_joint(x, k), jnp.zeros(11))
    phis = jnp.array([[math.log(p["rho"]), math.log(p["alpha"])] for p in points])
    check = ls.laplace_check(marginal, jr.key(3), phi=phis, num_draws=50_000)
    reference = np.array(
        [
            p["exact_log_p_y_given_phi_IS"] - p["laplace_log_q_y_given_phi"]
            for p in points
        ]
    )
    # The reference's own Laplace value is the same as ours (see
    # test_reference_values), so the two corrections estimate the same number by
    # independent importance samplers: their difference has variance
    # se_ours² + se_ref², with se_ours from the delta method (~0.0011 at 5e4 draws,
    # weights' ESS ≈ 94%) and se_ref = IS_se (~0.0011). Pass at |z| < 4.
    reference_se = np.array([p["IS_se"] for p in points])
    combined = np.sqrt(check.correction_se**2 + reference_se**2)
    z = (check.correction - reference) / combined
    assert np.all(np.abs(z) < 4), z
    # The corrections (~0.01) are ≥ 5 combined errors from zero, so this test
    # would fail for an importance sampler that found no correction at all.
    assert np.all(check.correction > 4 * combined)
    assert check.verdict == "good"


# --------------------------------------------------------------------------------
# A model where Laplace is poor: one Bernoulli observation per latent.
# --------------------------------------------------------------------------------


class _BernoulliLogit(eqx.Module):
    y: jax.Array

    def __call__(self, theta, log_sigma):
        return (
            jstats.norm.logpdf(log_sigma, 1.0, 1.0)
            + jstats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
            + jnp.sum(
                self.y * jax.nn.log_sigmoid(theta)
                + (1.0 - self.y) * jax.nn.log_sigmoid(-theta)
            )
        )


@pytest.fixture(scope="module")
def bernoulli_check():
    # With a wide prior (sigma = 5, 10) the conditional of each latent is flat on
    # the side its observation favours, with the prior's tails; the Laplace Gaussian
    # has the curvature at the mode, which is larger. The weights' tail index per
    # latent is 1 - var_q/var_p ≈ 0.7 for sigma = 5, and higher for sigma = 7.4
    # and 10 (log sigma = 2, 2.3); with 30 latents the product of the weights is
    # heavier still (measured k̂ with three keys: 0.95 to 1.6 and 1.4 to 2.3).
    # For sigma = 0.37 and 1 (log sigma = -1, 0) it is good (k̂ of 0.2 or less).
    y = (jr.uniform(jr.key(3), (30,)) < 0.5).astype(float)
    marginal = ls.LaplaceMarginal(
        _BernoulliLogit(y), jnp.zeros(30), hessian=ls.DiagonalHessian()
    )
    phis = jnp.array([-1.0, 0.0, 2.0, 2.3])
    return y, ls.laplace_check(marginal, jr.key(4), phi=phis, num_draws=1000)


def _bernoulli_exact_log_marginal(y, log_sigma):
    """`log p(y, log_sigma)` by Gauss-Hermite quadrature: the latents are
    independent given sigma, so it is a sum of one-dimensional integrals."""
    nodes, weights = np.polynomial.hermite.hermgauss(150)
    theta = math.sqrt(2.0) * math.exp(log_sigma) * nodes
    log_lik = np.where(
        np.asarray(y)[:, None] == 1.0,
        -np.logaddexp(0.0, -theta),
        -np.logaddexp(0.0, theta),
    )
    integrals = np.log(np.exp(log_lik) @ weights / math.sqrt(math.pi))
    prior = -0.5 * (log_sigma - 1.0) ** 2 - 0.5 * math.log(2 * math.pi)
    return prior + integrals.sum()


def test_poor_laplace_is_flagged(bernoulli_check):
    y, check = bernoulli_check
    assert not np.any(check.failed)
    assert np.all(check.pareto_k[2:] >= 0.7)
    # Where k̂ < 0.7 the correction estimate is reliable: it matches the exact
    # correction from quadrature within 4 of its Monte Carlo standard errors.
    good = check.pareto_k < 0.7
    assert good[:2].all()
    exact = np.array(
        [_bernoulli_exact_log_marginal(y, float(p)) for p in check.phi[good]]
    )
    error = check.correction[good] - (exact - check.laplace_log_marginal[good])
    assert np.all(np.abs(error) < 4 * check.correction_se[good]), error
    assert check.verdict == "bad"
    assert "not trustworthy" in check.message
    assert "not trustworthy" in str(check)
    assert "verdict='bad'" in repr(check)


def test_plot(bernoulli_check):
    _, check = bernoulli_check
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = check.plot()
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="Unknown phi coordinates"):
        check.plot(coords=["nope"])


# --------------------------------------------------------------------------------
# Integration with `sample`.
# --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_runs():
    marginal = ls.LaplaceMarginal(seed_model(5), jnp.zeros(5))
    # 16 draws in all: fewer than the 20 the check takes by default, so it
    # checks them all.
    kwargs = dict(num_warmup=200, num_samples=8, num_chains=2, progress_bar=False)
    plain = ls.sample(jr.key(5), marginal, jnp.array(0.0), **kwargs)
    checked = ls.sample(
        jr.key(5), marginal, jnp.array(0.0), laplace_check=True, **kwargs
    )
    return marginal, plain, checked


def test_sample_with_laplace_check(seed_runs, capsys):
    _, plain, checked = seed_runs
    assert plain.laplace_check is None
    check = checked.laplace_check
    assert isinstance(check, ls.LaplaceCheckResults)
    assert check.num_phi == 16 and check.num_draws == 1000
    assert check.verdict == "good"
    # The check has a key of its own: the draws are unchanged.
    np.testing.assert_array_equal(plain.phi, checked.phi)
    # The checked values are posterior draws, at the recorded (chain, draw).
    chain, draw = check.draw_index.T
    np.testing.assert_array_equal(check.phi, checked.phi[chain, draw])
    # Other diagnostics (R-hat of a short run) may warn; a good check never does.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = checked.summary()
        checked.print_summary()
    assert not any("Laplace check" in str(w.message) for w in caught)
    assert df.attrs["laplace_check"] is check
    assert "Laplace check" in capsys.readouterr().out


def test_too_many_phi(seed_runs):
    _, plain, _ = seed_runs
    with pytest.raises(ValueError, match="num_phi"):
        ls.laplace_check(plain, jr.key(6), num_phi=17)


# --------------------------------------------------------------------------------
# LatentGaussianMarginal: its own conditional, checked like a LaplaceMarginal.
# --------------------------------------------------------------------------------


_LG_N = 10
_LG_X = jnp.linspace(0.0, 1.0, _LG_N)


def _lg_covariance(phi):
    # Squared-exponential kernel with a jitter large enough that K⁻¹ is well
    # conditioned (uᵀK⁻¹u enters the weights, so its rounding must stay small).
    d = _LG_X[:, None] - _LG_X[None, :]
    return jnp.exp(-0.5 * d**2 / jnp.exp(2 * phi[0])) + 0.1 * jnp.eye(_LG_N)


def _lg_precision(phi):
    # Stationary AR(1), coefficient tanh(phi[0]), unit innovation sd.
    r = jnp.tanh(phi[0])
    diag = jnp.full(_LG_N, 1 + r**2).at[0].set(1.0).at[-1].set(1.0)
    return jnp.stack([diag, jnp.full(_LG_N, -r)])


def _dense_precision(band):
    q = jnp.diag(band[0])
    off = jnp.diag(band[1, :-1], -1)
    return q + off + off.T


def _lg_marginal(likelihood, form, **kwargs):
    matrix = {"covariance": _lg_covariance, "precision": _lg_precision}[form]
    return ls.LatentGaussianMarginal(
        likelihood,
        **{form: matrix},
        mean=lambda phi: phi[1],
        log_prior=lambda phi: -0.5 * jnp.sum(phi**2),
        **kwargs,
    )


_LG_PHIS = jnp.array([[-1.0, 0.0], [0.0, 0.5], [0.5, -0.5]])


@pytest.mark.parametrize("form", ["covariance", "precision"])
def test_exact_latent_gaussian(form):
    y = jnp.sin(6 * _LG_X) + 0.3 * jr.normal(jr.key(3), (_LG_N,))
    sigma = 0.5
    marginal = _lg_marginal(ls.Gaussian(y), form, likelihood_params=lambda phi: sigma)
    check = ls.laplace_check(marginal, jr.key(0), phi=_LG_PHIS, num_draws=300)
    # θ | φ, y is Gaussian: the weights are constant to rounding (|log p| ≈ 20).
    assert np.all(np.abs(check.log_weights) < 1e-10)
    assert np.all(check.pareto_k == -np.inf)
    assert np.all(np.abs(check.correction) < 1e-10)
    assert check.verdict == "good"

    # The Laplace value is the exact log p(y | φ) + log prior(φ).
    def exact(phi):
        if form == "covariance":
            cov = _lg_covariance(phi)
        else:
            cov = jnp.linalg.inv(_dense_precision(_lg_precision(phi)))
        marginal_cov = cov + sigma**2 * jnp.eye(_LG_N)
        return jstats.multivariate_normal.logpdf(
            y, jnp.full(_LG_N, phi[1]), marginal_cov
        ) - 0.5 * jnp.sum(phi**2)

    expected = jax.jit(jax.vmap(exact))(_LG_PHIS)
    np.testing.assert_allclose(check.laplace_log_marginal, expected, rtol=1e-10)


_POISSON_Y = jnp.array([0.0, 1, 3, 0, 2, 5, 1, 0, 0, 2])


def _poisson_log_joint(form):
    """The latent-Gaussian Poisson model written out, for `LaplaceMarginal`."""

    def fn(theta, phi):
        if form == "covariance":
            prior = jstats.multivariate_normal.logpdf(
                theta, jnp.full(_LG_N, phi[1]), _lg_covariance(phi)
            )
        else:
            r = theta - phi[1]
            q = _dense_precision(_lg_precision(phi))
            prior = (
                -0.5 * r @ q @ r
                + 0.5 * jnp.linalg.slogdet(q)[1]
                - 0.5 * _LG_N * jnp.log(2 * jnp.pi)
            )
        lik = jstats.poisson.logpmf(_POISSON_Y, jnp.exp(theta)).sum()
        return prior + lik - 0.5 * jnp.sum(phi**2)

    return fn


@functools.cache
def _poisson_checks(form, df):
    """`laplace_check` of the latent-Gaussian marginal and of the equivalent dense
    `LaplaceMarginal`, at the same phi with the same key. Both solve to rounding
    (`xtol=1e-12`; the default 1e-8 leaves each mode up to ~1e-8 off, differently),
    so that the comparison checks the two implementations, not the stopping rule."""
    lg = _lg_marginal(ls.PoissonLog(_POISSON_Y), form, xtol=1e-12)
    dense = ls.LaplaceMarginal(
        _poisson_log_joint(form),
        jnp.zeros(_LG_N),
        ls.Newton(xtol=1e-12),
        hessian=ls.DenseHessian(),
    )
    return tuple(
        ls.laplace_check(m, jr.key(4), phi=_LG_PHIS, num_draws=1000, df=df)
        for m in (lg, dense)
    )


@pytest.mark.parametrize("df", [None, pytest.param(5.0, marks=pytest.mark.slow)])
def test_latent_gaussian_agrees_with_dense_precision_form(df):
    # Precision form: both marginals draw u = L⁻ᵀ z with L the (unique) Cholesky
    # factor of Q + W and z from the same keys, so the draws, the weights and the
    # corrections agree to rounding, not just within Monte Carlo error.
    lg, dense = _poisson_checks("precision", df)
    np.testing.assert_allclose(
        lg.laplace_log_marginal, dense.laplace_log_marginal, rtol=1e-9
    )
    np.testing.assert_allclose(lg.log_weights, dense.log_weights, atol=1e-8)
    np.testing.assert_allclose(lg.correction, dense.correction, atol=1e-9)
    np.testing.assert_allclose(lg.pareto_k, dense.pareto_k, atol=1e-6)
    # Poisson is not Gaussian: the weights do vary.
    assert np.all(np.ptp(lg.log_weights, axis=1) > 1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("df", [None, 5.0])
def test_latent_gaussian_agrees_with_dense_covariance_form(df):
    # Covariance form: the latent-Gaussian marginal draws without factorising
    # K⁻¹ + W (from f ~ N(0, K) and e ~ N(0, I)), so its draws differ from the
    # dense L⁻ᵀ z; the two corrections are independent estimates of the same
    # quantity and agree within 4 combined standard errors.
    lg, dense = _poisson_checks("covariance", df)
    np.testing.assert_allclose(
        lg.laplace_log_marginal, dense.laplace_log_marginal, rtol=1e-9
    )
    assert np.all(lg.pareto_k < 0.7) and np.all(dense.pareto_k < 0.7)
    combined = np.hypot(lg.correction_se, dense.correction_se)
    assert np.all(np.abs(lg.correction - dense.correction) < 4 * combined)
    assert not np.allclose(lg.log_weights, dense.log_weights)


# Slow: a full `sample` compilation (~20 s on 2 cores).
@pytest.mark.slow
def test_sample_with_laplace_check_latent_gaussian():
    y = jnp.sin(6 * _LG_X) + 0.3 * jr.normal(jr.key(3), (_LG_N,))
    marginal = _lg_marginal(
        ls.Gaussian(y), "precision", likelihood_params=lambda phi: 0.5
    )
    results = ls.sample(
        jr.key(5),
        marginal,
        jnp.zeros(2),
        num_warmup=100,
        num_samples=4,
        num_chains=2,
        progress_bar=False,
        laplace_check=True,
    )
    check = results.laplace_check
    assert isinstance(check, ls.LaplaceCheckResults)
    assert check.num_phi == 8
    chain, draw = check.draw_index.T
    np.testing.assert_array_equal(check.phi, results.phi[chain, draw])
    # The Gaussian likelihood makes the Laplace conditional exact.
    assert np.all(check.pareto_k == -np.inf)
    assert check.verdict == "good"


# --------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------


def test_bad_input():
    marginal = ls.LaplaceMarginal(seed_model(5), jnp.zeros(5))
    phi = jnp.zeros(2)
    key = jr.key(0)
    with pytest.raises(ValueError, match="num_draws"):
        ls.laplace_check(marginal, key, phi=phi, num_draws=1)
    with pytest.raises(ValueError, match="num_phi"):
        ls.laplace_check(marginal, key, phi=phi, num_phi=0)
    with pytest.raises(TypeError, match="num_draws"):
        ls.laplace_check(marginal, key, phi=phi, num_draws=10.0)
    with pytest.raises(ValueError, match="df"):
        ls.laplace_check(marginal, key, phi=phi, df=-1.0)
    with pytest.raises(ValueError, match="pass the values to check as `phi=`"):
        ls.laplace_check(marginal, key)
    with pytest.raises(ValueError, match="leading axis"):
        ls.laplace_check(marginal, key, phi=jnp.array(0.0))
    with pytest.raises(TypeError, match="SampleResults"):
        ls.laplace_check("model", key, phi=phi)
    plain = ls.PlainDensity(lambda p: -0.5 * p**2)
    with pytest.raises(ValueError, match="no latent"):
        ls.laplace_check(plain, key, phi=phi)
    lg = ls.LatentGaussianMarginal(
        ls.PoissonLog(jnp.zeros(3)), covariance=lambda phi: jnp.ones((3, 2))
    )
    with pytest.raises(ValueError, match="square"):
        ls.laplace_check(lg, key, phi=phi)
    with pytest.raises(ValueError, match="laplace_check=True"):
        ls.sample(key, plain, jnp.array(0.0), laplace_check=True)
    with pytest.raises(TypeError, match="laplace_check"):
        ls.sample(key, marginal, jnp.array(0.0), laplace_check="yes")
