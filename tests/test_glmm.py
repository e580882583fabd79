"""Generalised linear mixed models through `LatentGaussianMarginal`: an index map from
observations to latents (random intercepts) and a phi-dependent offset (fixed
effects), against the generic `LaplaceMarginal` on the same log joint, finite
differences, input errors, and (slow) a run of `lapsample.sample` against NumPyro's
NUTS on the full model."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls

from .helpers import central_difference_grad, check_mixing, mcse


# --------------------------------------------------------------------------------
# A random-intercept model: G groups of unequal size (one empty), two covariates.
#   eta_i = alpha[g_i] + x_i · beta,  alpha ~ N(0, tau² I) (covariance form) or
#   precision tau⁻² I (a diagonal band), phi = {beta, log_tau}.
# --------------------------------------------------------------------------------

G = 12
SIZES = np.array([0, 1, 2, 3, 5, 8, 4, 6, 7, 9, 3, 2])  # group 0 has no data
GROUP = np.repeat(np.arange(G), SIZES)
N_OBS = GROUP.shape[0]
_rng = np.random.default_rng(3)
X = _rng.normal(size=(N_OBS, 2))
BETA = np.array([0.6, -0.4])
ALPHA = 0.8 * _rng.normal(size=G)
ETA = 0.3 + ALPHA[GROUP] + X @ BETA
Y_BIN = (_rng.uniform(size=N_OBS) < 1 / (1 + np.exp(-ETA))).astype(float)
Y_COUNT = _rng.poisson(np.exp(ETA)).astype(float)


def _offset(phi):
    return phi["beta"][0] + X @ phi["beta"][1:]


def _log_prior(phi):
    return jstats.norm.logpdf(phi["beta"], 0.0, 2.0).sum() + jstats.norm.logpdf(
        phi["log_tau"], 0.0, 1.0
    )


PHI = {"beta": jnp.array([0.2, 0.5, -0.3]), "log_tau": jnp.array(-0.2)}


def _glmm(lik, form):
    if form == "covariance":
        prior = {"covariance": lambda phi: jnp.exp(2 * phi["log_tau"]) * jnp.eye(G)}
    else:
        prior = {
            "precision": lambda phi: jnp.exp(-2 * phi["log_tau"]) * jnp.ones((1, G))
        }
    marginal = ls.LatentGaussianMarginal(
        lik, index=GROUP, offset=_offset, log_prior=_log_prior, **prior
    )

    def log_joint(theta, phi):
        # The same model written out by hand, for the generic path.
        eta = theta[GROUP] + _offset(phi)
        return (
            _log_prior(phi)
            + jstats.norm.logpdf(theta, 0.0, jnp.exp(phi["log_tau"])).sum()
            + lik.log_density(eta, None)
        )

    return marginal, log_joint


LIKS = {
    "bernoulli": ls.BernoulliLogit(Y_BIN),
    "poisson": ls.PoissonLog(Y_COUNT, exposure=np.linspace(0.5, 1.5, N_OBS)),
}


def _assert_agrees_with_generic(marginal, log_joint, phi, n):
    """Mode, value (1e-10) and gradient (1e-8) equal to the generic dense
    `LaplaceMarginal` on the same log joint."""
    (value, aux), grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))(phi)
    assert aux.result == ls.RESULTS.successful
    assert aux.theta_star.shape == (n,)
    generic = ls.LaplaceMarginal(log_joint, jnp.zeros(n), hessian=ls.DenseHessian())
    (value_g, aux_g), grad_g = jax.jit(jax.value_and_grad(generic, has_aux=True))(phi)
    assert aux_g.result == ls.RESULTS.successful
    np.testing.assert_allclose(aux.theta_star, aux_g.theta_star, atol=1e-9)
    np.testing.assert_allclose(value, value_g, rtol=1e-10)
    for key in phi:
        scale = float(jnp.abs(grad_g[key]).max())
        np.testing.assert_allclose(grad[key], grad_g[key], rtol=1e-8, atol=1e-8 * scale)


@pytest.mark.parametrize(
    "name, form", [("bernoulli", "covariance"), ("poisson", "precision")]
)
def test_glmm_agrees_with_generic_laplace(name, form):
    marginal, log_joint = _glmm(LIKS[name], form)
    _assert_agrees_with_generic(marginal, log_joint, PHI, G)


def test_glmm_gradient_matches_central_differences():
    marginal, _ = _glmm(LIKS["poisson"], "covariance")

    def flat(p):
        return {"beta": p[:3], "log_tau": p[3]}

    fn = eqx.filter_jit(lambda p: marginal(flat(p))[0])
    p0 = jnp.concatenate([PHI["beta"], PHI["log_tau"][None]])
    grad = jax.jit(jax.grad(fn))(p0)
    # Values are accurate to ~1e-12 relative (|value| ~ 50): with h = 1e-3 that is
    # ~1e-8 of noise per difference, and the truncation error h²/6·f''' is ~1e-7
    # for third derivatives of order 1.
    fd = central_difference_grad(fn, p0, h=1e-3)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)


def test_index_and_offset_on_the_observation_scale():
    """An identity index and a constant offset give what the likelihood's own
    fixed offset gives (same marginal, so the offset is added where it should
    be)."""
    n = 10
    y = jnp.arange(n, dtype=float) % 4

    def cov(phi):
        return jnp.exp(phi) * jnp.eye(n) + 0.5

    with_offset = ls.LatentGaussianMarginal(
        ls.PoissonLog(y),
        covariance=cov,
        index=np.arange(n),
        offset=lambda phi: 0.3 + 0 * phi,
    )
    fixed = ls.LatentGaussianMarginal(ls.PoissonLog(y, offset=0.3), covariance=cov)
    phi = jnp.array(-0.5)
    np.testing.assert_allclose(
        eqx.filter_jit(with_offset)(phi)[0], eqx.filter_jit(fixed)(phi)[0], rtol=1e-13
    )


def test_sample_theta_and_conditional_use_the_latent_space():
    marginal, log_joint = _glmm(LIKS["bernoulli"], "covariance")
    value, aux = eqx.filter_jit(marginal)(PHI)
    draw = eqx.filter_jit(marginal.sample_theta)(jr.key(0), PHI, aux.theta_star)
    assert draw.shape == (G,) and np.all(np.isfinite(draw))

    @eqx.filter_jit
    def conditional_log_joint(marginal, phi):
        cond = marginal.laplace_conditional(phi)
        return cond.theta_star, cond.log_joint(cond.theta_star)

    theta_star, at_mode = conditional_log_joint(marginal, PHI)
    np.testing.assert_allclose(at_mode, log_joint(theta_star, PHI), rtol=1e-12)


# --------------------------------------------------------------------------------
# Random intercepts and slopes through a design matrix: theta = (alpha, slope),
# eta_i = alpha[g_i] + x_i slope[g_i] + offset_i, each group's pair correlated.
# --------------------------------------------------------------------------------

DESIGN = np.zeros((N_OBS, 2 * G))
DESIGN[np.arange(N_OBS), GROUP] = 1.0
DESIGN[np.arange(N_OBS), G + GROUP] = X[:, 1]
PHI_SLOPES = {**PHI, "log_sd_slope": jnp.array(-0.5), "rho": jnp.array(0.3)}


def _slopes_cov(phi):
    sd = jnp.exp(jnp.stack([phi["log_tau"], phi["log_sd_slope"]]))
    rho = jnp.tanh(phi["rho"])
    pair = jnp.outer(sd, sd) * jnp.array([[1.0, rho], [rho, 1.0]])
    return jnp.kron(pair, jnp.eye(G))


def _slopes(lik):
    marginal = ls.LatentGaussianMarginal(
        lik, covariance=_slopes_cov, design=DESIGN, offset=_offset, log_prior=_log_prior
    )

    def log_joint(theta, phi):
        cov = _slopes_cov(phi)
        return (
            _log_prior(phi)
            + jstats.multivariate_normal.logpdf(theta, jnp.zeros(2 * G), cov)
            + lik.log_density(DESIGN @ theta + _offset(phi), None)
        )

    return marginal, log_joint


@pytest.fixture(scope="module")
def slopes_models():
    return _slopes(LIKS["poisson"])


def test_design_matrix_agrees_with_generic_laplace(slopes_models):
    marginal, log_joint = slopes_models
    _assert_agrees_with_generic(marginal, log_joint, PHI_SLOPES, 2 * G)


def test_design_matrix_draws_have_the_laplace_covariance(slopes_models):
    """With `H = -∇²_θ log p(theta, y | phi)` at the mode (autodiff of the generic
    log joint), draws `u ~ N(0, H⁻¹)` have `uᵀ H u ~ χ²_n`: over N draws the mean
    of `uᵀHu / n` has sd `sqrt(2 / (n N))` (0.0065 for n = 24, N = 2000); allow
    5 sd. The conditional's quadratic form must be `uᵀ H u` itself."""
    marginal, log_joint = slopes_models

    @eqx.filter_jit
    def draws_and_forms(marginal, phi):
        cond = marginal.laplace_conditional(phi)
        u = jax.vmap(cond.draw)(jr.split(jr.key(1), 2000))
        return cond.theta_star, u, jax.vmap(cond.quadratic_form)(u[:5])

    theta_star, u, forms = draws_and_forms(marginal, PHI_SLOPES)
    hess = -jax.hessian(log_joint)(theta_star, PHI_SLOPES)
    quad = jnp.einsum("ki,ij,kj->k", u, hess, u)
    np.testing.assert_allclose(forms, quad[:5], rtol=1e-10)
    n = 2 * G
    assert abs(float(jnp.mean(quad)) / n - 1) < 5 * math.sqrt(2 / (n * 2000))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"index": GROUP.astype(float)}, TypeError, "integer array"),
        ({"index": GROUP[:, None]}, TypeError, "1-D integer"),
        ({"index": GROUP - 2}, ValueError, "negative"),
        ({"index": GROUP + 1}, ValueError, "reads latent 12"),
        ({"index": GROUP[:-3]}, ValueError, "data and `index`/`design` disagree"),
        (
            {"index": GROUP, "offset": lambda phi: jnp.zeros(3)},
            ValueError,
            r"`offset\(phi\)` has shape \(3,\)",
        ),
        ({}, ValueError, "give `index=`"),
        ({"index": GROUP, "design": DESIGN}, ValueError, "not both"),
        ({"design": DESIGN[:, :5]}, ValueError, "must have shape"),
        ({"design": GROUP}, TypeError, "dense 2-D floating"),
        ({"index": GROUP, "offset": 1.0}, TypeError, "offset"),
    ],
)
def test_bad_glmm_inputs_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        marginal = ls.LatentGaussianMarginal(
            LIKS["bernoulli"], covariance=lambda phi: jnp.eye(G), **kwargs
        )
        jax.eval_shape(marginal, PHI)


def test_design_needs_the_covariance_form():
    with pytest.raises(ValueError, match="needs the covariance form"):
        ls.LatentGaussianMarginal(
            LIKS["bernoulli"], precision=lambda phi: jnp.ones((1, 2 * G)), design=DESIGN
        )


# --------------------------------------------------------------------------------
# Against NUTS on the full model (slow).
# --------------------------------------------------------------------------------


@pytest.mark.slow
def test_glmm_posterior_matches_numpyro_nuts():
    """A Poisson random-intercept model, 30 groups × 20 observations with counts
    of ~3-8: each group's conditional posterior is close to Gaussian, so the Laplace
    marginal is close to the exact one and NUTS on the full joint (theta and phi)
    is a reference for the phi posterior."""
    numpyro = pytest.importorskip("numpyro")
    dist = numpyro.distributions
    groups, per_group = 30, 20
    rng = np.random.default_rng(7)
    group = np.repeat(np.arange(groups), per_group)
    x = rng.normal(size=group.shape[0])
    alpha = 0.5 * rng.normal(size=groups)
    y = rng.poisson(np.exp(1.5 + alpha[group] + 0.3 * x)).astype(float)

    def offset(phi):
        return phi[0] + phi[1] * x

    def log_prior(phi):
        return jstats.norm.logpdf(phi[:2], 0.0, 3.0).sum() + jstats.norm.logpdf(
            phi[2], -1.0, 1.0
        )

    marginal = ls.LatentGaussianMarginal(
        ls.PoissonLog(y),
        covariance=lambda phi: jnp.exp(2 * phi[2]) * jnp.eye(groups),
        index=group,
        offset=offset,
        log_prior=log_prior,
    )
    results = ls.sample(
        jr.key(5),
        marginal,
        jnp.array([1.0, 0.0, -1.0]),
        num_warmup=500,
        num_samples=1000,
        num_chains=4,
        progress_bar=False,
    )
    ours = np.asarray(results.phi)  # (chains, draws, 3)

    def model():
        b = numpyro.sample("b", dist.Normal(0.0, 3.0).expand([2]))
        log_tau = numpyro.sample("log_tau", dist.Normal(-1.0, 1.0))
        # Centred: each group is informed by ~90 expected counts, where centring
        # mixes better than the non-centred form (whose b0 is tied to mean(z)).
        alpha = numpyro.sample(
            "alpha", dist.Normal(b[0], jnp.exp(log_tau)).expand([groups])
        )
        eta = alpha[group] + b[1] * x
        numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)

    mcmc = numpyro.infer.MCMC(
        numpyro.infer.NUTS(model),
        num_warmup=500,
        num_samples=1000,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jr.key(6))
    s = mcmc.get_samples(group_by_chain=True)
    ref = np.concatenate([np.asarray(s["b"]), np.asarray(s["log_tau"])[..., None]], -1)
    # Each estimate's Monte Carlo error is its MCSE (from its ESS, which
    # check_mixing requires to be >= 400); the two runs are independent, so their
    # difference has sd sqrt(mcse_a² + mcse_b²). |z| < 4 fails by chance with
    # probability ~6e-5 per statistic. The Laplace error in the phi posterior is
    # far smaller here (each group's intercept is informed by ~100 expected
    # counts).
    for i, name in enumerate(["b0", "b1", "log_tau"]):
        for draws in (ours[..., i], ref[..., i]):
            check_mixing(draws, name)
        for stat in ("mean", "sd"):
            est = [
                float(np.mean(d) if stat == "mean" else np.std(d))
                for d in (ours[..., i], ref[..., i])
            ]
            se = math.hypot(mcse(ours[..., i], stat), mcse(ref[..., i], stat))
            z = (est[0] - est[1]) / se
            assert abs(z) < 4, (
                f"{name} {stat}: {est[0]:.4f} vs NUTS {est[1]:.4f} (z = {z:.2f})"
            )


def test_gaussian_design_solves_in_one_step():
    # The design form with a Gaussian likelihood: one Newton step, the generic
    # dense marginal's mode, value and gradient.
    y = jnp.asarray(Y_COUNT, dtype=jnp.float64) - 1.0
    lik = ls.Gaussian(y)
    marginal = ls.LatentGaussianMarginal(
        lik,
        covariance=_slopes_cov,
        design=DESIGN,
        offset=_offset,
        likelihood_params=lambda phi: 0.7,
        log_prior=_log_prior,
    )

    def log_joint(theta, phi):
        return (
            _log_prior(phi)
            + jstats.multivariate_normal.logpdf(
                theta, jnp.zeros(2 * G), _slopes_cov(phi)
            )
            + lik.log_density(DESIGN @ theta + _offset(phi), 0.7)
        )

    text = str(jax.make_jaxpr(lambda p: marginal(p)[0])(PHI_SLOPES))
    assert "while" not in text
    assert int(eqx.filter_jit(marginal)(PHI_SLOPES)[1].num_steps) == 1
    _assert_agrees_with_generic(marginal, log_joint, PHI_SLOPES, 2 * G)
