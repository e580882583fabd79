"""`SampleResults` output: the `log_likelihood` group of `to_arviz()` (so that
`az.loo` and `az.compare` run), `coords`/`dims`, variables in the order the user
wrote them, and public names that read `lapsample.X`.

Fast tests build `SampleResults` by hand from known draws, so that the pointwise
log-likelihoods can be compared with an independent computation (scipy.stats) at
every draw without compiling a sampler. Slow tests run `sample` end to end.
"""

import pickle
import warnings

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.special
import scipy.stats

import lapsample as ls
from lapsample._misc import insertion_order
from lapsample._output.sample_results import SAMPLE_STATS

from .helpers import import_arviz


az = import_arviz()
numpyro = pytest.importorskip("numpyro")
dist = pytest.importorskip("numpyro.distributions")

CHAINS, DRAWS = 2, 40
Y_COUNTS = np.array([0.0, 3.0, 1.0, 7.0, 2.0, 0.0, 4.0, 1.0])
EXPOSURE = np.array([1.0, 2.0, 0.5, 3.0, 1.0, 1.5, 2.0, 1.0])
N = Y_COUNTS.shape[0]


def fake_results(model, phi, theta, *, chains=CHAINS, draws=DRAWS, **fields):
    """`SampleResults` holding the given draws, with quiet statistics (no
    divergences, full warm-up), as `sample` would return them."""
    sampler = ls.Sampler(
        model, ls.Multinomial(), ls.NoUTurn(), step_size=1.0, inverse_mass_matrix=1.0
    )
    stats = {name: np.zeros((chains, draws)) for name in SAMPLE_STATS}
    position = jax.tree_util.tree_map(lambda x: jnp.asarray(x[:, -1]), phi)
    final = ls.SamplerState(
        position=position,
        logdensity=jnp.zeros(()),
        logdensity_grad=position,
        theta_star=None,
    )
    stats["diverging"] = stats["diverging"].astype(bool)
    return ls.SampleResults(
        phi=phi,
        theta_star=theta,
        theta=theta,
        sample_stats=stats,
        warmup_phi=None,
        warmup_sample_stats=None,
        step_size=np.ones(chains),
        inverse_mass_matrix=None,
        final_state=final,
        num_warmup=1000,
        num_warmup_divergences=np.zeros(chains, int),
        sampler=sampler,
        **fields,
    )


def _gp(phi):
    x = jnp.linspace(0.0, 1.0, N)
    amp = jnp.exp(phi["log_amp"])
    return amp**2 * jnp.exp(-0.5 * (x[:, None] - x[None]) ** 2 / 0.3**2) + 1e-6 * (
        jnp.eye(N)
    )


def _latent_draws(seed, scale=0.1):
    """Draws of `theta` near log(y + 1): a posterior-like cloud, so that PSIS-LOO
    has well-behaved importance ratios."""
    rng = np.random.default_rng(seed)
    centre = np.log(Y_COUNTS + 1.0)
    return centre + scale * rng.standard_normal((CHAINS, DRAWS, N))


def _hyper_draws(seed):
    rng = np.random.default_rng(seed)
    return {
        "log_amp": 0.1 * rng.standard_normal((CHAINS, DRAWS)),
        "log_kappa": 1.0 + 0.1 * rng.standard_normal((CHAINS, DRAWS)),
    }


def _loo(idata, **kwargs):
    # A few observations of a tiny data set can have k̂ above 0.7 (ArviZ warns);
    # the tests check that LOO runs on the group, not the model's fit.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Pareto.*", category=UserWarning)
        return az.loo(idata, pointwise=True, **kwargs)


# --------------------------------------------------------------------------------
# The log_likelihood group.
# --------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["poisson", "negbinomial", "bernoulli"])
def test_latent_gaussian_pointwise_matches_scipy(likelihood):
    theta = _latent_draws(0)
    phi = _hyper_draws(1)
    kappa = np.exp(phi["log_kappa"])[..., None]
    y = Y_COUNTS
    if likelihood == "poisson":
        lik, params = ls.PoissonLog(y, exposure=EXPOSURE), None
        expected = scipy.stats.poisson.logpmf(y, EXPOSURE * np.exp(theta))
    elif likelihood == "negbinomial":
        lik, params = ls.NegBinomial2Log(y), lambda phi: jnp.exp(phi["log_kappa"])
        mu = np.exp(theta)
        expected = scipy.stats.nbinom.logpmf(y, kappa, kappa / (kappa + mu))
    else:
        y = (Y_COUNTS > 1).astype(float)
        lik, params = ls.BernoulliLogit(y), None
        expected = scipy.stats.bernoulli.logpmf(y, scipy.special.expit(theta))
    model = ls.LatentGaussianMarginal(lik, covariance=_gp, likelihood_params=params)
    results = fake_results(model, phi, theta)
    idata = results.to_arviz()
    assert list(idata.log_likelihood.data_vars) == ["y"]
    pointwise = idata.log_likelihood["y"].values
    assert pointwise.shape == (CHAINS, DRAWS, N)
    np.testing.assert_allclose(pointwise, expected, rtol=1e-10, atol=1e-12)
    loo = _loo(idata)
    assert loo.loo_i.shape == (N,)
    # elpd_loo is a sum of per-observation log predictive densities, each at most
    # the log of the largest likelihood of that observation over the draws.
    assert loo.elpd_loo <= np.sum(pointwise.max(axis=(0, 1))) + 1e-9


def test_gaussian_likelihood_uses_its_scale():
    rng = np.random.default_rng(2)
    y = rng.standard_normal(N)
    theta = rng.standard_normal((CHAINS, DRAWS, N))
    phi = {"log_amp": np.zeros((CHAINS, DRAWS)), "log_sigma": np.full((1, 1), -0.5)}
    phi["log_sigma"] = np.broadcast_to(phi["log_sigma"], (CHAINS, DRAWS)).copy()
    model = ls.LatentGaussianMarginal(
        ls.Gaussian(y),
        covariance=_gp,
        likelihood_params=lambda phi: jnp.exp(phi["log_sigma"]),
    )
    idata = fake_results(model, phi, theta).to_arviz()
    expected = scipy.stats.norm.logpdf(y, theta, np.exp(-0.5))
    np.testing.assert_allclose(idata.log_likelihood["y"], expected, rtol=1e-10)


def test_user_log_likelihood_coords_and_dims():
    """A `LaplaceMarginal` has no likelihood lapsample could split: the user's
    `log_likelihood(theta, phi)` is mapped over the draws; `coords`/`dims` reach
    ArviZ; a dict names several observed variables."""

    def log_joint(theta, phi):
        return jnp.sum(scipy_free_poisson(Y_COUNTS, theta)) - 0.5 * jnp.sum(
            theta**2
        ) * jnp.exp(-2 * phi["log_amp"])

    model = ls.LaplaceMarginal(log_joint, jnp.zeros(N))
    theta = _latent_draws(3)
    phi = {"log_amp": _hyper_draws(4)["log_amp"]}
    results = fake_results(model, phi, theta)
    # Without a function there is no group, and asking for one says what to pass.
    assert "log_likelihood" not in results.to_arviz().groups()
    with pytest.raises(ValueError, match=r"to_arviz\(log_likelihood=fn\)"):
        results.to_arviz(log_likelihood=True)

    def log_lik(theta, phi):
        del phi
        return scipy_free_poisson(Y_COUNTS, theta)

    idata = results.to_arviz(
        log_likelihood=log_lik,
        coords={"county": [f"c{i}" for i in range(N)]},
        dims={"y": ["county"], "theta": ["county"]},
    )
    expected = scipy.stats.poisson.logpmf(Y_COUNTS, np.exp(theta))
    np.testing.assert_allclose(idata.log_likelihood["y"], expected, rtol=1e-10)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "county")
    assert idata.posterior["theta"].dims == ("chain", "draw", "county")
    assert list(idata.posterior["county"].values) == [f"c{i}" for i in range(N)]
    _loo(idata)

    def two_groups(theta, phi):
        del phi
        terms = scipy_free_poisson(Y_COUNTS, theta)
        return {"first": terms[:3], "rest": terms[3:]}

    idata = results.to_arviz(log_likelihood=two_groups)
    assert set(idata.log_likelihood.data_vars) == {"first", "rest"}
    _loo(idata, var_name="rest")


def scipy_free_poisson(y, theta):
    """`log Poisson(y | exp(theta))` in JAX (the user's own code in the tests)."""
    return y * theta - jnp.exp(theta) - jax.scipy.special.gammaln(y + 1)


def test_log_likelihood_needs_theta_draws_and_valid_input():
    model = ls.LatentGaussianMarginal(ls.PoissonLog(Y_COUNTS), covariance=_gp)
    phi = {"log_amp": _hyper_draws(5)["log_amp"]}
    results = fake_results(model, phi, None)
    # By default: no group without draws of theta (a summary still works) ...
    assert "log_likelihood" not in results.to_arviz().groups()
    # ... and asking for it names the fix.
    with pytest.raises(ValueError, match="sample_theta=True"):
        results.to_arviz(log_likelihood=True)
    with pytest.raises(ValueError, match="sample_theta=True"):
        results.to_arviz(log_likelihood=lambda theta, phi: theta)
    with pytest.raises(TypeError, match="log_likelihood"):
        results.to_arviz(log_likelihood="y")
    full = fake_results(model, phi, _latent_draws(6))
    assert "log_likelihood" not in full.to_arviz(log_likelihood=False).groups()
    # `summary` never evaluates the likelihood (its R-hat warning on these short
    # made-up chains is beside the point).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = full.summary()
    assert "y" not in table.index


SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
Y_SCHOOLS = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])


def eight_schools(J, sigma, y=None):
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("J", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@pytest.fixture(scope="module")
def schools():
    return ls.from_numpyro(eight_schools, 8, SIGMA, y=Y_SCHOOLS, latent=("theta",))


def _schools_draws():
    rng = np.random.default_rng(7)
    phi = {
        "mu": 4.0 + rng.standard_normal((CHAINS, DRAWS)),
        "tau": 1.0 + 0.3 * rng.standard_normal((CHAINS, DRAWS)),
    }
    theta = {"theta": 4.0 + 5.0 * rng.standard_normal((CHAINS, DRAWS, 8))}
    return phi, theta


def test_numpyro_pointwise_matches_scipy(schools):
    phi, theta = _schools_draws()
    results = fake_results(
        schools.marginal,
        phi,
        theta,
        postprocess=schools.postprocess,
        pointwise_log_likelihood=schools.pointwise_log_likelihood,
        phi_order=("tau", "mu"),
    )
    idata = results.to_arviz()
    expected = scipy.stats.norm.logpdf(Y_SCHOOLS, theta["theta"], SIGMA)
    np.testing.assert_allclose(idata.log_likelihood["obs"], expected, rtol=1e-10)
    _loo(idata)
    # The hyperparameters as the model writes them, then the latent.
    assert list(idata.posterior.data_vars) == ["tau", "mu", "theta"]
    # Results of a run on `model.marginal`: `model.to_arviz` adds the same group.
    plain = fake_results(schools.marginal, phi, theta)
    assert "log_likelihood" not in plain.to_arviz().groups()
    again = schools.to_arviz(plain)
    np.testing.assert_allclose(again.log_likelihood["obs"], expected, rtol=1e-10)


# --------------------------------------------------------------------------------
# Names and order.
# --------------------------------------------------------------------------------


def test_insertion_order():
    tree = {"tau": 1.0, "mu": np.zeros(2), "b": {"z": 1.0, "a": 2.0}}
    assert insertion_order(tree, "phi") == ("tau", "mu", "b.z", "b.a")
    assert insertion_order(np.zeros(3), "phi") == ("phi",)
    assert insertion_order([1.0, {"b": 1.0, "a": 2.0}], "phi") == (
        "phi.0",
        "phi.1.b",
        "phi.1.a",
    )


def test_variables_in_the_order_written():
    """The hyperparameters in the order of the initial position, before the
    latent; `summary` rows follow."""

    def log_joint(theta, phi):
        return -0.5 * jnp.sum(theta**2) + phi["sigma"] + phi["alpha0"] + phi["beta"]

    model = ls.LaplaceMarginal(log_joint, jnp.zeros(3))
    rng = np.random.default_rng(8)
    chains, draws = 4, 200
    phi = {
        name: rng.standard_normal((chains, draws))
        for name in ("alpha0", "beta", "sigma")
    }
    theta = rng.standard_normal((chains, draws, 3))
    order = insertion_order({"sigma": 0.0, "beta": 0.0, "alpha0": 0.0}, "phi")
    results = fake_results(
        model, phi, theta, chains=chains, draws=draws, phi_order=order
    )
    assert list(results.to_arviz().posterior.data_vars) == [
        "sigma",
        "beta",
        "alpha0",
        "theta",
    ]
    rows = list(results.summary().index)
    assert rows == ["sigma", "beta", "alpha0", "theta[0]", "theta[1]", "theta[2]"]
    # Without a recorded order (e.g. results built by hand): the PyTree's order.
    unordered = fake_results(model, phi, theta, chains=chains, draws=draws)
    assert list(unordered.to_arviz().posterior.data_vars)[:3] == [
        "alpha0",
        "beta",
        "sigma",
    ]


def test_public_names_read_lapsample():
    for name in ("CheckpointError", "IncompatibleComponentsError", "SampleResults"):
        assert getattr(ls, name).__module__ == "lapsample"
    assert ls.sample.__module__ == "lapsample"
    with pytest.raises(ls.CheckpointError) as info:
        raise ls.CheckpointError("bad file")
    assert info.type.__module__ + "." + info.type.__qualname__ == (
        "lapsample.CheckpointError"
    )
    # Pickles name the public path, and load back to the same classes.
    error = pickle.loads(pickle.dumps(ls.CheckpointError("x")))
    assert type(error) is ls.CheckpointError
    assert pickle.loads(pickle.dumps(ls.DenseHessian())) == ls.DenseHessian()
    assert repr(ls.RESULTS.successful) == "lapsample.RESULTS<successful>"
    assert ls.RESULTS[ls.RESULTS.successful] == "successful"


# --------------------------------------------------------------------------------
# End to end (slow: each compiles a sampler, ~30-60 s on 2 cores).
# --------------------------------------------------------------------------------


def _short_run(key, model, initial_position):
    """Enough draws for LOO to run (not for the posterior), with `theta`."""
    return ls.sample(
        key,
        model,
        initial_position,
        num_warmup=150,
        num_samples=100,
        num_chains=2,
        sample_theta=True,
        progress_bar=False,
    )


@pytest.mark.slow
def test_sample_latent_gaussian_loo_and_order():
    model = ls.LatentGaussianMarginal(
        ls.PoissonLog(Y_COUNTS, exposure=EXPOSURE),
        covariance=_gp,
        log_prior=lambda phi: -0.5 * phi["log_amp"] ** 2 - 0.5 * phi["z"] ** 2,
    )
    results = _short_run(jr.key(0), model, {"z": 0.0, "log_amp": 0.0})
    idata = results.to_arviz()
    assert list(idata.posterior.data_vars) == ["z", "log_amp", "theta"]
    expected = scipy.stats.poisson.logpmf(
        Y_COUNTS, EXPOSURE * np.exp(np.asarray(results.theta))
    )
    np.testing.assert_allclose(idata.log_likelihood["y"], expected, rtol=1e-10)
    loo = _loo(idata)
    assert np.isfinite(loo.elpd_loo)


@pytest.mark.slow
def test_sample_numpyro_loo(schools):
    results = _short_run(jr.key(1), schools, None)
    idata = results.to_arviz()
    assert list(idata.posterior.data_vars) == ["tau", "mu", "theta"]
    theta = np.asarray(results.theta["theta"])
    expected = scipy.stats.norm.logpdf(Y_SCHOOLS, theta, SIGMA)
    np.testing.assert_allclose(idata.log_likelihood["obs"], expected, rtol=1e-10)
    with warnings.catch_warnings():
        # k̂ warnings of a short run, and ArviZ 0.23's use of a pandas keyword
        # that pandas deprecates (Pandas4Warning): not this test's business.
        warnings.simplefilter("ignore")
        compared = az.compare({"a": idata, "b": idata})
    assert len(compared) == 2
