"""Issue 18: every input and fault either works or says exactly what to fix.

Each table row is (what the user did, the call, the exception, a phrase of the
message that names the fix). Settings and data (sections 1-2) raise in Python,
before anything is compiled (the `BandedHessian` width while tracing, since `d` is
a shape); the prior covariance, structure and start checks (3-5) are failures as
data inside a run and clear errors before or at its start; section 6 is
`summary()`'s warnings.
"""

import dataclasses
import warnings

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls

from .helpers import evaluate


def _lg(**kwargs):
    return ls.LatentGaussianMarginal(
        ls.PoissonLog(jnp.ones(3)), covariance=lambda phi: jnp.eye(3), **kwargs
    )


def _quadratic_log_joint(theta, phi):
    return -0.5 * jnp.exp(phi) * jnp.sum(theta**2) - jnp.sum(jnp.diff(theta) ** 2)


# --------------------------------------------------------------------------------
# 1. Solver and strategy settings.
# --------------------------------------------------------------------------------

# A value of the wrong type is caught first by the test suite's runtime type checker
# (jaxtyping + beartype on the annotations); users, without it, see lapsample's own
# message. `True` for an int passes the checker (bool is an int) and gets ours.
CHECKER = "|Type-check error"

BAD_SETTINGS = [
    ("negative jitter", lambda: ls.DenseHessian(jitter=-0.5), ValueError, "small pos"),
    ("infinite jitter", lambda: ls.DenseHessian(jitter=jnp.inf), ValueError, ">= 0"),
    (
        "jitter a string",
        lambda: ls.DenseHessian(jitter="1e-8"),
        TypeError,
        "float" + CHECKER,
    ),
    ("Newton xtol=10", lambda: ls.Newton(xtol=10.0), ValueError, "Leave it as None"),
    ("Newton xtol=1", lambda: ls.Newton(xtol=1.0), ValueError, r"in \[0, 1\)"),
    ("Newton rtol<0", lambda: ls.Newton(rtol=-1e-3), ValueError, r"in \[0, 1\)"),
    ("Newton atol=nan", lambda: ls.Newton(atol=jnp.nan), ValueError, "finite"),
    ("Newton rtol=True", lambda: ls.Newton(rtol=True), TypeError, "float in" + CHECKER),
    (
        "Newton max_steps=True",
        lambda: ls.Newton(max_steps=True),
        TypeError,
        "Python int",
    ),
    ("Newton max_steps=0", lambda: ls.Newton(max_steps=0), ValueError, "at least 1"),
    (
        "Newton max_steps=2.0",
        lambda: ls.Newton(max_steps=2.0),
        TypeError,
        "Python int" + CHECKER,
    ),
    (
        "Newton max_backtracks<0",
        lambda: ls.Newton(max_backtracks=-1),
        ValueError,
        "at least 0",
    ),
    (
        "Newton max_backtracks=2.5",
        lambda: ls.Newton(max_backtracks=2.5),
        TypeError,
        "Python int" + CHECKER,
    ),
    ("BFGS rtol=2", lambda: ls.BFGS(rtol=2.0), ValueError, "Leave it as None"),
    ("BFGS atol<0", lambda: ls.BFGS(atol=-1.0), ValueError, r"in \[0, 1\)"),
    ("BFGS max_steps=False", lambda: ls.BFGS(max_steps=False), TypeError, "Python int"),
    ("LBFGS max_steps=0", lambda: ls.LBFGS(max_steps=0), ValueError, "at least 1"),
    (
        "LBFGS history_length=0",
        lambda: ls.LBFGS(history_length=0),
        ValueError,
        "at least 1",
    ),
    ("LG xtol=1.5", lambda: _lg(xtol=1.5), ValueError, "Leave it as None"),
    ("LG max_steps=True", lambda: _lg(max_steps=True), TypeError, "Python int"),
    ("LG max_steps=0", lambda: _lg(max_steps=0), ValueError, "at least 1"),
    ("LG max_backtracks<0", lambda: _lg(max_backtracks=-2), ValueError, "at least 0"),
]


@pytest.mark.parametrize(
    "call, error, phrase",
    [case[1:] for case in BAD_SETTINGS],
    ids=[case[0] for case in BAD_SETTINGS],
)
def test_bad_settings_are_refused(call, error, phrase):
    with pytest.raises(error, match=phrase):
        call()


@pytest.mark.parametrize(
    "make",
    [
        lambda: ls.DenseHessian(jitter=0.0),
        lambda: ls.DenseHessian(jitter=1e-8),
        lambda: ls.Newton(xtol=0.0, rtol=1e-10, atol=0.0, max_backtracks=0),
        lambda: ls.BFGS(rtol=1e-6, atol=1e-6),
        lambda: ls.LBFGS(history_length=3),
        lambda: _lg(xtol=1e-9, max_backtracks=0),
    ],
)
def test_good_settings_are_accepted(make):
    make()


def test_bandwidth_at_least_d_is_refused_before_compiling():
    marginal = ls.LaplaceMarginal(
        _quadratic_log_joint, jnp.zeros(3), hessian=ls.BandedHessian(bandwidth=3)
    )
    with pytest.raises(ValueError, match=r"Use `DenseHessian\(\)` instead"):
        marginal.check(jnp.array(0.1))
    # The same refusal while tracing, for a marginal never checked.
    with pytest.raises(ValueError, match=r"at most 2"):
        eqx.filter_eval_shape(marginal, jnp.array(0.1))


# --------------------------------------------------------------------------------
# 2. Likelihood data.
# --------------------------------------------------------------------------------

Y = jnp.array([1.0, 2.0, 0.0])
BAD_DATA = [
    (
        "Poisson non-integer",
        lambda: ls.PoissonLog(jnp.array([1.0, 2.5])),
        "raw counts",
    ),
    ("Poisson negative", lambda: ls.PoissonLog(jnp.array([1.0, -1.0])), "raw counts"),
    ("NegBin non-integer", lambda: ls.NegBinomial2Log(jnp.array([0.5])), "counts"),
    ("NegBin negative", lambda: ls.NegBinomial2Log(jnp.array([-2.0])), "counts"),
    ("Bernoulli y=2", lambda: ls.BernoulliLogit(jnp.array([0.0, 2.0])), "0/1"),
    ("Bernoulli y=-1", lambda: ls.BernoulliLogit(jnp.array([-1.0, 1.0])), "0/1"),
    ("Bernoulli y=0.5", lambda: ls.BernoulliLogit(jnp.array([0.5])), "0/1"),
    (
        "negative exposure",
        lambda: ls.PoissonLog(Y, exposure=jnp.array([1.0, -1.0, 1.0])),
        "not their logarithms",
    ),
    (
        "NegBin negative exposure",
        lambda: ls.NegBinomial2Log(Y, exposure=-1.0),
        "not their logarithms",
    ),
    (
        "count with exposure 0",
        lambda: ls.PoissonLog(Y, exposure=jnp.array([1.0, 0.0, 1.0])),
        "probability 0",
    ),
    ("NaN count", lambda: ls.PoissonLog(jnp.array([1.0, jnp.nan])), "Drop those"),
    ("inf Gaussian y", lambda: ls.Gaussian(jnp.array([jnp.inf])), "impute"),
    (
        "NaN offset",
        lambda: ls.BernoulliLogit(
            jnp.array([0.0, 1.0]), offset=jnp.array([0, jnp.nan])
        ),
        "non-finite",
    ),
    ("inf exposure", lambda: ls.PoissonLog(Y, exposure=jnp.inf), "non-finite"),
]


@pytest.mark.parametrize(
    "call, phrase",
    [case[1:] for case in BAD_DATA],
    ids=[case[0] for case in BAD_DATA],
)
def test_bad_likelihood_data_is_refused(call, phrase):
    with pytest.raises(ValueError, match=phrase):
        call()


def test_traced_data_is_not_checked():
    # Data passed through `jit` cannot be checked in Python; construction works.
    @eqx.filter_jit
    def value(y):
        return ls.PoissonLog(y).log_density(jnp.zeros(2), None)

    assert np.isfinite(float(value(jnp.array([1.0, 2.0]))))


# Exposure 0 with a zero count: a certain event (log p = 0), i.e. the same
# marginal as the model without that observation.
_N = 6
_Y0 = jnp.array([0.0, 2.0, 1.0, 0.0, 3.0, 0.0])
_E0 = jnp.array([1.0, 0.5, 2.0, 0.0, 1.0, 0.0])
_PHI = jnp.array([0.1, -0.5])


def _cov(phi):
    x = jnp.arange(_N) / _N
    k = jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / jnp.exp(2 * phi[1]))
    return jnp.exp(2 * phi[0]) * k + 1e-6 * jnp.eye(_N)


def _log_joint_without_unexposed(theta, phi):
    keep = _E0 > 0
    rate = jnp.exp(theta) * jnp.where(keep, _E0, 1.0)
    terms = jnp.where(keep, jstats.poisson.logpmf(_Y0, rate), 0.0)
    prior = jstats.multivariate_normal.logpdf(theta, jnp.zeros(_N), _cov(phi))
    return prior + jnp.sum(terms)


@eqx.filter_jit
def _value_and_grad(marginal, phi):
    return eqx.filter_value_and_grad(lambda p: marginal(p)[0])(phi)


def test_zero_exposure_zero_count_is_a_certain_event():
    lik = ls.PoissonLog(_Y0, exposure=_E0)
    terms = lik.derivatives(jnp.zeros(_N), None)
    for t in terms:
        assert np.all(np.isfinite(t))
    assert float(terms[0][3]) == 0.0 and float(terms[0][5]) == 0.0
    lg = ls.LatentGaussianMarginal(lik, covariance=_cov)
    reference = ls.LaplaceMarginal(_log_joint_without_unexposed, jnp.zeros(_N))
    value, grad = _value_and_grad(lg, _PHI)
    ref_value, ref_grad = _value_and_grad(reference, _PHI)
    assert np.isfinite(float(value))
    np.testing.assert_allclose(value, ref_value, rtol=1e-10)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-7, atol=1e-10)


def test_zero_exposure_negative_binomial_is_finite():
    lg = ls.LatentGaussianMarginal(
        ls.NegBinomial2Log(_Y0, exposure=_E0),
        covariance=_cov,
        likelihood_params=lambda phi: jnp.exp(phi[0]),
    )
    value, grad = _value_and_grad(lg, _PHI)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))


# --------------------------------------------------------------------------------
# 3. The prior covariance of `LatentGaussianMarginal` must be symmetric positive
# definite (only `B = I + W½ K W½` used to be factorised).
# --------------------------------------------------------------------------------

_NK = 5
_YK = 1.5 * jnp.array([1.0, -1.0, 1.0, -1.0, 1.0])


def _equicorrelated(phi):
    # Eigenvalues 1 - rho (n - 1 times) and 1 + (n - 1) rho: indefinite for
    # rho < -1/(n - 1) = -0.25. The data (alternating signs) pull rho down.
    rho = phi[1]
    return jnp.exp(2 * phi[0]) * ((1 - rho) * jnp.eye(_NK) + rho * jnp.ones((_NK, _NK)))


def _skewed(phi):
    return _equicorrelated(phi) + 0.1 * jnp.triu(jnp.ones((_NK, _NK)), 1)


def _gaussian_lg(covariance):
    return ls.LatentGaussianMarginal(
        ls.Gaussian(_YK),
        covariance=covariance,
        likelihood_params=lambda phi: 1.0,
        log_prior=lambda phi: (
            jstats.norm.logpdf(phi[0]) + jstats.norm.logpdf(phi[1], 0.0, 2.0)
        ),
    )


@eqx.filter_jit
def _value_grad_result(marginal, phi):
    (value, aux), grad = eqx.filter_value_and_grad(lambda p: marginal(p), has_aux=True)(
        phi
    )
    return value, grad, aux.result


@pytest.mark.parametrize(
    "covariance, phi",
    [(_equicorrelated, jnp.array([0.0, -0.5])), (_skewed, jnp.array([0.0, 0.3]))],
    ids=["indefinite", "not symmetric"],
)
def test_invalid_prior_covariance_is_minus_inf(covariance, phi):
    marginal = _gaussian_lg(covariance)
    value, grad, result = _value_grad_result(marginal, phi)
    assert value == -jnp.inf
    assert result == ls.RESULTS.prior_not_positive_definite
    np.testing.assert_array_equal(grad, 0.0)
    with pytest.raises(ValueError, match="Add a jitter to the diagonal"):
        marginal.check(phi)
    key = jr.key(0)
    theta_star = jnp.zeros(_NK)
    assert np.all(np.isnan(marginal.sample_theta(key, phi, theta_star)))


def test_valid_prior_covariance_still_works():
    marginal = _gaussian_lg(_equicorrelated)
    phi = jnp.array([0.0, -0.2])
    marginal.check(phi)
    value, grad, result = _value_grad_result(marginal, phi)
    assert result == ls.RESULTS.successful
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))


def test_indefinite_covariance_under_sample_gives_no_nan_draws():
    # The posterior of rho piles up against the edge of validity (rho = -0.25):
    # proposals beyond it must be rejected, not accepted with NaN theta draws.
    results = ls.sample(
        jr.key(0),
        _gaussian_lg(_equicorrelated),
        jnp.array([0.0, 0.3]),
        num_warmup=100,
        num_samples=100,
        num_chains=1,
        sample_theta=True,
        progress_bar=False,
    )
    assert np.all(np.isfinite(results.theta))
    assert np.all(np.asarray(results.phi)[..., 1] > -0.25)
    # The edge was reached: those proposals were rejected as failed solves.
    assert results.diagnostics()["inner_failures"].sum() > 0


# --------------------------------------------------------------------------------
# 4. Structure checks row by row: one stiff latent (curvature 1e9) must not hide
# real coupling between two ordinary ones.
# --------------------------------------------------------------------------------

_DS = 8


def _stiff_log_joint(coupling):
    def log_joint(theta, phi):
        precision = jnp.exp(phi) + jnp.zeros(_DS).at[1].set(1e9)
        # theta[3] and theta[6] are outside a diagonal, bandwidth-1 or 2-block
        # structure.
        return (
            -0.5 * jnp.sum(precision * theta**2)
            - coupling * theta[3] * theta[6]
            + jnp.sum(theta)
            - phi**2
        )

    return log_joint


STRUCTURED = [
    ls.DiagonalHessian(),
    ls.BandedHessian(bandwidth=1),
    ls.BlockDiagonalHessian(block_size=2),
]


@eqx.filter_jit
def _value_and_result(marginal, phi):
    value, aux = marginal(phi)
    return value, aux.result


@pytest.mark.parametrize("hessian", STRUCTURED, ids=lambda h: type(h).__name__)
def test_stiff_latent_does_not_hide_coupling(hessian):
    marginal = ls.LaplaceMarginal(
        _stiff_log_joint(0.5), jnp.zeros(_DS), hessian=hessian
    )
    with pytest.raises(ValueError, match=r"or use `DenseHessian\(\)`"):
        marginal.check(jnp.array(0.0))
    value, result = _value_and_result(marginal, jnp.array(0.0))
    assert value == -jnp.inf
    assert result == ls.RESULTS.structure_violated


@pytest.mark.parametrize("hessian", STRUCTURED, ids=lambda h: type(h).__name__)
def test_stiff_latent_with_the_structure_is_accepted(hessian):
    marginal = ls.LaplaceMarginal(
        _stiff_log_joint(0.0), jnp.zeros(_DS), hessian=hessian
    )
    marginal.check(jnp.array(0.0))
    dense = ls.LaplaceMarginal(_stiff_log_joint(0.0), jnp.zeros(_DS))
    value, result = _value_and_result(marginal, jnp.array(0.0))
    reference, _ = _value_and_result(dense, jnp.array(0.0))
    assert result == ls.RESULTS.successful
    np.testing.assert_allclose(value, reference, rtol=1e-12)


# --------------------------------------------------------------------------------
# 5. Start failures explained: the `RESULTS` reason and its fix, not one generic
# message; a log joint that is not concave in theta is caught by `check`.
# --------------------------------------------------------------------------------

_COUNTS = jnp.array([50.0, 80.0, 30.0, 120.0])


def _poisson_log_joint(theta, phi, counts=_COUNTS):
    prior = jstats.norm.logpdf(theta, 0.0, jnp.exp(phi))
    return jnp.sum(prior) + jnp.sum(jstats.poisson.logpmf(counts, jnp.exp(theta)))


def _convex_log_joint(theta, phi):
    # A sign error: +½ θᵀθ instead of −½ θᵀθ.
    return 0.5 * jnp.sum(theta**2) * jnp.exp(phi) - phi**2


def _nan_data_log_joint(theta, phi):
    # A missing count coded as NaN.
    return _poisson_log_joint(theta, phi, _COUNTS.at[2].set(jnp.nan))


def _sample_poisson(inner_solver):
    marginal = ls.LaplaceMarginal(
        _poisson_log_joint, jnp.zeros(4), inner_solver=inner_solver
    )
    return _sample(marginal, jnp.array(1.0))


def _sample(marginal, phi):
    return ls.sample(
        jr.key(0),
        marginal,
        phi,
        num_warmup=10,
        num_samples=10,
        num_chains=1,
        progress_bar=False,
    )


START_FAILURES = [
    (
        "Newton(max_steps=1)",
        lambda: _sample_poisson(ls.Newton(max_steps=1)),
        r"raise the inner solver's `max_steps`",
    ),
    (
        "not concave in theta (check)",
        lambda: ls.LaplaceMarginal(_convex_log_joint, jnp.zeros(4)).check(
            jnp.array(0.0)
        ),
        r"not concave in `theta`.*check the signs",
    ),
    (
        "PlainDensity not finite",
        lambda: _sample(ls.PlainDensity(lambda p: jnp.log(p)), jnp.array(-1.0)),
        r"NaN or infinite there: check the data",
    ),
    (
        "non-PD K at the start",
        lambda: _sample(_gaussian_lg(_equicorrelated), jnp.array([0.0, -0.5])),
        r"Add a jitter to the diagonal",
    ),
    (
        # Optimistix's own code (`nonlinear_max_steps_reached`), not its generic
        # "root-find" message.
        "BFGS(max_steps=1)",
        lambda: _sample_poisson(ls.BFGS(max_steps=1)),
        r"raise the inner solver's `max_steps` \(e\.g\. .*`BFGS\(max_steps=500\)`",
    ),
    (
        "NaN in the data of a LaplaceMarginal (check)",
        lambda: ls.LaplaceMarginal(_nan_data_log_joint, jnp.zeros(4)).check(
            jnp.array(1.0)
        ),
        r"check the data the log joint reads for NaN",
    ),
]


@pytest.mark.parametrize(
    "call, phrase",
    [case[1:] for case in START_FAILURES],
    ids=[case[0] for case in START_FAILURES],
)
def test_start_failures_name_the_reason(call, phrase):
    with pytest.raises(ValueError, match=phrase):
        call()


def test_check_passes_a_model_not_concave_at_theta_init_only():
    # log p = log N(theta; 0, 1) + Σ log t_1(y - theta): the Cauchy terms are not
    # concave far from y, so theta_init = 0 has negative curvature, but the mode
    # (near y) is fine and BFGS (no Hessian while iterating) reaches it: `check`
    # must not refuse it. (Newton cannot start there, and `check` says so.)
    y = jnp.array([4.0, 4.0])

    def log_joint(theta, phi):
        prior = jstats.norm.logpdf(theta, 0.0, jnp.exp(phi))
        return jnp.sum(prior) + jnp.sum(jstats.cauchy.logpdf(y - theta, 0.0, 0.1))

    # (At phi = 2 the curvature of the log joint at 0 is +0.107 per latent.)
    phi = jnp.array(2.0)
    ls.LaplaceMarginal(log_joint, jnp.zeros(2), inner_solver=ls.BFGS()).check(phi)
    with pytest.raises(ValueError, match="start `theta_init` nearer the mode"):
        ls.LaplaceMarginal(log_joint, jnp.zeros(2)).check(phi)


# --------------------------------------------------------------------------------
# 6. `summary()` warns about max-tree-depth saturation and a short warm-up.
# --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def normal_results():
    return ls.sample(
        jr.key(1),
        ls.PlainDensity(lambda phi: -0.5 * jnp.sum(phi**2)),
        jnp.zeros(2),
        num_warmup=150,
        num_samples=100,
        num_chains=2,
        progress_bar=False,
    )


def _summary_messages(results):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results.summary()
    return "\n".join(str(w.message) for w in caught)


def test_summary_tuning_warnings(normal_results):
    text = _summary_messages(normal_results)
    assert "maximum tree depth" not in text and "num_warmup" not in text
    stats = dict(normal_results.sample_stats)
    stats["reached_max_treedepth"] = np.zeros_like(stats["reached_max_treedepth"])
    stats["reached_max_treedepth"][1, :56] = True  # 28% of 200 transitions
    saturated = eqx.tree_at(lambda r: r.sample_stats, normal_results, stats)
    text = _summary_messages(saturated)
    assert "28% of the transitions hit the maximum tree depth" in text
    assert "Raise `max_tree_depth`" in text and "priors" in text
    stats["reached_max_treedepth"][1, :] = False
    stats["reached_max_treedepth"][1, 0] = True  # 0.5%: no warning
    once = eqx.tree_at(lambda r: r.sample_stats, normal_results, stats)
    assert "maximum tree depth" not in _summary_messages(once)
    short = dataclasses.replace(normal_results, num_warmup=20)
    text = _summary_messages(short)
    assert "`num_warmup=20` is shorter than the warm-up schedule" in text
    assert "at least 150" in text
    assert "not adapted" in _summary_messages(
        dataclasses.replace(normal_results, num_warmup=10)
    )


# --------------------------------------------------------------------------------
# 7. Inputs that raised raw JAX errors: a dict inverse mass matrix mirroring phi
# works; complex values, a non-scalar `PlainDensity`, a full matrix given as the
# banded precision and a dict that does not mirror phi are refused, before
# compiling, with the fix.
# --------------------------------------------------------------------------------

_DICT_PHI = {"mu": jnp.array(0.3), "log_tau": jnp.array(-0.2), "beta": jnp.zeros(2)}


def _gaussian_density(phi):
    return -0.5 * (phi["mu"] ** 2 + 4.0 * phi["log_tau"] ** 2) - jnp.sum(
        phi["beta"] ** 2
    )


def _plain_sampler(inverse_mass_matrix):
    return ls.Sampler(
        ls.PlainDensity(_gaussian_density),
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=0.3,
        inverse_mass_matrix=inverse_mass_matrix,
    )


_N_BAND = 5
# A random-walk precision plus a ridge, as a full matrix.
_Q_FULL = 2.1 * jnp.eye(_N_BAND) - jnp.eye(_N_BAND, k=1) - jnp.eye(_N_BAND, k=-1)


def _precision_lg(precision):
    return ls.LatentGaussianMarginal(
        ls.PoissonLog(jnp.array([1.0, 0.0, 3.0, 2.0, 1.0])), precision=precision
    )


def _band_from_full(q, bandwidth):
    # The conversion the error message gives.
    return jnp.stack(
        [jnp.pad(jnp.diagonal(q, -k), (0, k)) for k in range(bandwidth + 1)]
    )


BAD_INPUTS = [
    (
        "complex phi",
        lambda: _sample(
            ls.PlainDensity(lambda p: -0.5 * jnp.sum(p**2)), jnp.zeros(2, complex)
        ),
        TypeError,
        r"`initial_position` is complex .*`x\.real`",
    ),
    (
        "complex leaf of a dict phi",
        lambda: _sample(
            ls.LaplaceMarginal(_quadratic_log_joint, jnp.zeros(3)),
            {"a": jnp.array(0.0), "b": jnp.array(1j)},
        ),
        TypeError,
        r"`initial_position\['b'\]` is complex",
    ),
    (
        "complex theta_init",
        lambda: ls.LaplaceMarginal(_quadratic_log_joint, jnp.zeros(3, complex)),
        TypeError,
        r"`theta_init` is complex .*Pass real floats",
    ),
    (
        "complex theta_init of a LatentGaussianMarginal",
        lambda: ls.LatentGaussianMarginal(
            ls.PoissonLog(jnp.ones(3)),
            covariance=lambda phi: jnp.eye(3),
            theta_init=jnp.zeros(3, complex),
        ),
        TypeError,
        r"1-D real floating array",
    ),
    (
        "complex phi to check",
        lambda: ls.LaplaceMarginal(_quadratic_log_joint, jnp.zeros(3)).check(
            jnp.array(0.0 + 0.5j)
        ),
        TypeError,
        r"`phi` is complex",
    ),
    (
        "complex inverse mass matrix",
        lambda: _plain_sampler(jnp.ones(4, complex)),
        TypeError,
        r"is complex",
    ),
    (
        "PlainDensity returning shape (1,)",
        lambda: _sample(
            ls.PlainDensity(lambda p: -0.5 * jnp.sum(p**2, keepdims=True)),
            jnp.zeros(2),
        ),
        ValueError,
        r"returned shape \(1,\).*`\.sum\(\)`.*`\[0\]`",
    ),
    (
        "PlainDensity returning a vector",
        lambda: _sample(ls.PlainDensity(lambda p: -0.5 * p**2), jnp.zeros(2)),
        ValueError,
        r"must return a real scalar",
    ),
    (
        "full n x n precision for the banded form",
        lambda: _sample(_precision_lg(lambda phi: _Q_FULL * jnp.exp(phi)), 0.0),
        ValueError,
        r"lower bands of Q, not Q itself.*jnp\.diagonal\(Q, -k\)",
    ),
    (
        "dict inverse mass with other keys than phi",
        lambda: _sample(
            _plain_sampler({"mu": 1.0, "tau": 2.0, "beta": 1.0}), _DICT_PHI
        ),
        ValueError,
        r"must mirror phi",
    ),
    (
        "dict inverse mass with a leaf of the wrong shape",
        lambda: _sample(
            _plain_sampler({"mu": 1.0, "log_tau": 2.0, "beta": jnp.ones(3)}), _DICT_PHI
        ),
        ValueError,
        r"`inverse_mass_matrix\['beta'\]` has shape \(3,\)",
    ),
    (
        "dict inverse mass not positive",
        lambda: _plain_sampler({"mu": 1.0, "log_tau": -2.0, "beta": 1.0}),
        ValueError,
        r"must be positive and finite",
    ),
    (
        "dict inverse mass, metric without phi",
        lambda: _plain_sampler({"mu": 1.0, "log_tau": 2.0, "beta": 1.0}).metric,
        ValueError,
        r"needs phi: pass `position=phi`",
    ),
]


@pytest.mark.parametrize(
    "call, error, phrase",
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_inputs_are_refused(call, error, phrase):
    with pytest.raises(error, match=phrase):
        call()


def test_dict_inverse_mass_matrix_mirrors_phi(tmp_path):
    # Flattened in sorted-key order: beta (2 entries), log_tau, mu.
    written = {"mu": 1.0, "log_tau": 2.0, "beta": jnp.array([3.0, 4.0])}
    metric = ls.metric_from_inverse_mass_matrix(written, _DICT_PHI)
    np.testing.assert_array_equal(metric.inverse_mass_matrix, [3.0, 4.0, 2.0, 1.0])
    # A scalar covers a whole leaf.
    metric = ls.metric_from_inverse_mass_matrix({**written, "beta": 5.0}, _DICT_PHI)
    np.testing.assert_array_equal(metric.inverse_mass_matrix, [5.0, 5.0, 2.0, 1.0])
    # `Sampler.init`/`step` and `sample` give exactly what the flat vector gives.
    flat = jnp.array([3.0, 4.0, 2.0, 1.0])
    key = jr.key(3)
    for_dict, for_flat = _plain_sampler(written), _plain_sampler(flat)
    state_d, _ = for_dict.step(key, for_dict.init(_DICT_PHI))
    state_f, _ = for_flat.step(key, for_flat.init(_DICT_PHI))
    assert eqx.tree_equal(state_d, state_f)
    kwargs = dict(num_warmup=0, num_samples=5, num_chains=1, progress_bar=False)
    path = tmp_path / "run.lsmp"
    draws_d = ls.sample(key, for_dict, _DICT_PHI, checkpoint=path, **kwargs).phi
    draws_f = ls.sample(key, for_flat, _DICT_PHI, **kwargs).phi
    assert eqx.tree_equal(draws_d, draws_f)
    # `resume` maps it the same way.
    again = ls.resume(path, for_dict, progress_bar=False).phi
    assert eqx.tree_equal(again, draws_d)


def test_banded_precision_from_the_message_is_right():
    # The conversion the full-matrix error suggests gives the same marginal as the
    # covariance form with K = Q⁻¹.
    band = _band_from_full(_Q_FULL, 1)
    precision = _precision_lg(lambda phi: band * jnp.exp(phi))
    covariance = ls.LatentGaussianMarginal(
        precision.likelihood,
        covariance=lambda phi: jnp.linalg.inv(_Q_FULL * jnp.exp(phi)),
    )
    precision.check(jnp.array(0.2))
    value_p, aux_p = evaluate(precision, jnp.array(0.2))
    value_c, aux_c = evaluate(covariance, jnp.array(0.2))
    assert aux_p.result == ls.RESULTS.successful == aux_c.result
    np.testing.assert_allclose(value_p, value_c, rtol=1e-10)
