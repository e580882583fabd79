"""`lapsample.from_numpyro`: NumPyro models as input.

Fast: the NumPyro-derived log joint against hand-written ones (Jacobians included),
the marginal against posteriordb's closed-form test points, the maps back to the
constrained space, posterior predictive draws, and the errors for inputs that
cannot work. Slow: eight schools (centred, `latent=("theta",)`) against the
posteriordb reference.
"""

import builtins
import csv
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls
from lapsample._workflow.settings import unwrap_numpyro

from .helpers import (
    eight_schools_json,
    eight_schools_z_scores,
    EightSchoolsLogJoint,
    SHARED,
    shared_json,
    Z_MAX,
)


numpyro = pytest.importorskip("numpyro")
dist = pytest.importorskip("numpyro.distributions")


Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(J, sigma, y=None):
    """The classic centred eight schools."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)
    numpyro.deterministic("tau_squared", tau**2)


def poisson_lognormal(counts):
    """A latent with a constrained (positive) support: `rate` is integrated out
    on the log scale."""
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    m = numpyro.sample("m", dist.Normal(0.0, 1.0))
    with numpyro.plate("i", counts.shape[0]):
        rate = numpyro.sample("rate", dist.LogNormal(m, s))
        numpyro.sample("counts", dist.Poisson(rate), obs=counts)


COUNTS = np.array([0.0, 3.0, 1.0, 7.0, 2.0, 0.0])


def poisson_lognormal_log_joint(theta, phi):
    """By hand: `u = log rate`, `v = log s`, with the Jacobians `+ u` and `+ v`."""
    u, v, m = theta["rate"], phi["s"], phi["m"]
    s = jnp.exp(v)
    lp = jnp.log(2.0) + jstats.norm.logpdf(s, 0.0, 1.0) + v
    lp = lp + jstats.norm.logpdf(m, 0.0, 1.0)
    # LogNormal(rate | m, s) · rate = Normal(u | m, s).
    lp = lp + jstats.norm.logpdf(u, m, s).sum()
    lp = lp + jstats.poisson.logpmf(COUNTS, jnp.exp(u)).sum()
    return lp


@pytest.fixture(scope="module")
def schools():
    return ls.from_numpyro(eight_schools, 8, SIGMA, y=Y, latent=("theta",))


def test_split_and_initialisation(schools):
    assert isinstance(schools.marginal, ls.LaplaceMarginal)
    assert schools.latent == ("theta",)
    assert set(schools.phi_init) == {"mu", "tau"}
    assert set(schools.theta_init) == {"theta"}
    assert schools.theta_init["theta"].shape == (8,)
    # NumPyro's init_to_uniform: Uniform(-2, 2) on the unconstrained scale.
    for value in [*schools.phi_init.values(), schools.theta_init["theta"]]:
        assert np.all(np.abs(np.asarray(value)) <= 2.0)


# Slow: a full `sample` compilation (~30 s on 2 cores) for a plumbing check.
@pytest.mark.slow
def test_sample_takes_the_model_and_names_the_sites(schools, tmp_path):
    # `sample` starts at the model's own initialisation and the results show the
    # sites in their constrained space: `tau`, not log tau. A short run: names,
    # shapes and the mapping are checked, not the posterior (see the slow test).
    results = ls.sample(
        jr.key(0),
        schools,
        num_warmup=20,
        num_samples=10,
        num_chains=1,
        sample_theta=True,
        save_warmup=True,
        progress_bar=False,
        checkpoint=tmp_path / "run.lsmp",
    )
    posterior = results.to_arviz().posterior
    assert set(posterior.data_vars) == {"mu", "tau", "theta", "tau_squared"}
    assert posterior["theta"].shape == (1, 10, 8)
    np.testing.assert_allclose(posterior["tau"], np.exp(results.phi["tau"]))
    np.testing.assert_allclose(posterior["tau_squared"], posterior["tau"] ** 2)
    # `model.constrain(results)`, as the docstrings say (was an AttributeError).
    draws = schools.constrain(results)
    assert set(draws) == set(posterior.data_vars)
    np.testing.assert_allclose(draws["tau"], posterior["tau"])
    warmup = results.to_arviz().warmup_posterior
    assert set(warmup.data_vars) == {"mu", "tau"}
    # The short warm-up is deliberate here, and `summary` says it is too short.
    with pytest.warns(UserWarning, match="shorter than the warm-up schedule"):
        table = results.summary()
    assert "tau" in table.index and "theta[7]" in table.index
    # `resume` given the NumPyro model keeps the names.
    again = ls.resume(tmp_path / "run.lsmp", schools, progress_bar=False)
    assert set(again.to_arviz().posterior.data_vars) == set(posterior.data_vars)
    with pytest.raises(TypeError, match="needs an `initial_position`"):
        ls.sample(jr.key(0), schools.marginal)


def _random_points(key, num, theta_fn, phi_fn):
    keys = jr.split(key, num)
    return jax.jit(jax.vmap(theta_fn))(keys), jax.jit(jax.vmap(phi_fn))(keys)


def test_log_joint_matches_hand_written(schools, getkey):
    # Eight schools: tau > 0 is sampled as log tau, with the `+ log tau` Jacobian.
    by_hand = EightSchoolsLogJoint(jnp.asarray(Y), jnp.asarray(SIGMA))
    theta, phi = _random_points(
        getkey(),
        5,
        lambda k: {"theta": 10.0 * jr.normal(jr.fold_in(k, 0), (8,))},
        lambda k: {"mu": 5.0 * jr.normal(jr.fold_in(k, 1)), "tau": jr.normal(k)},
    )
    got = jax.jit(jax.vmap(schools.marginal.log_joint))(theta, phi)
    expected = jax.jit(jax.vmap(by_hand))(
        theta["theta"], jnp.stack([phi["mu"], phi["tau"]], axis=-1)
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12)

    # A positive latent is transformed, not rejected; its Jacobian is included.
    model = ls.from_numpyro(poisson_lognormal, jnp.asarray(COUNTS), latent="rate")
    assert set(model.phi_init) == {"s", "m"}
    assert set(model.theta_init) == {"rate"}
    theta, phi = _random_points(
        getkey(),
        5,
        lambda k: {"rate": jr.normal(jr.fold_in(k, 0), (6,))},
        lambda k: {"s": jr.normal(jr.fold_in(k, 1)), "m": jr.normal(k)},
    )
    got = jax.jit(jax.vmap(model.marginal.log_joint))(theta, phi)
    expected = jax.jit(jax.vmap(poisson_lognormal_log_joint))(theta, phi)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_marginal_matches_posteriordb_test_points(schools):
    # theta | phi, y is Gaussian, so the Laplace marginal is exact: log p(y | mu,
    # tau) (posteriordb's test points) plus the priors and the log-tau Jacobian.
    points = shared_json(
        "posteriordb", "eight_schools-eight_schools_noncentered", "summary.json"
    )["log_marginal_test_points"]["points"]
    mu = np.array([p["mu"] for p in points])
    tau = np.array([p["tau"] for p in points])
    phi = {"mu": jnp.asarray(mu), "tau": jnp.asarray(np.log(tau))}
    values, aux = jax.jit(jax.vmap(schools.marginal))(phi)
    assert np.all(aux.result == ls.RESULTS.successful)
    log_prior = (
        np.asarray(jstats.norm.logpdf(mu, 0.0, 5.0))
        + np.log(2.0 / (math.pi * 5.0 * (1.0 + (tau / 5.0) ** 2)))
        + np.log(tau)
    )
    expected = np.array([p["log_p_y_given_phi"] for p in points]) + log_prior
    np.testing.assert_allclose(values, expected, rtol=1e-10)


def _fake_draws(key, chains=2, draws=100):
    """Unconstrained draws shaped `(chains, draws, ...)`, NumPy arrays as in
    `SampleResults` (not a posterior; only the maps are under test)."""
    k1, k2, k3 = jr.split(key, 3)
    phi = {
        "mu": 3.0 * jr.normal(k1, (chains, draws)),
        "tau": jr.normal(k2, (chains, draws)),
    }
    theta = {"theta": 5.0 * jr.normal(k3, (chains, draws, 8))}
    return jax.tree.map(np.asarray, phi), jax.tree.map(np.asarray, theta)


def test_constrain_names_and_shapes(schools, getkey):
    phi, theta = _fake_draws(getkey())
    out = schools.constrain(phi, theta, batch_ndims=2)
    assert set(out) == {"mu", "tau", "theta", "tau_squared"}
    np.testing.assert_allclose(out["mu"], phi["mu"])
    np.testing.assert_allclose(out["tau"], jnp.exp(phi["tau"]), rtol=1e-14)
    np.testing.assert_allclose(out["theta"], theta["theta"])
    assert out["theta"].shape == (2, 100, 8)
    np.testing.assert_allclose(out["tau_squared"], out["tau"] ** 2, rtol=1e-14)
    # Without the latent, only the phi sites.
    only_phi = schools.constrain(phi, None, batch_ndims=2)
    assert set(only_phi) == {"mu", "tau"}
    np.testing.assert_allclose(only_phi["tau"], out["tau"])
    one = schools.constrain(schools.phi_init)
    np.testing.assert_allclose(one["tau"], jnp.exp(schools.phi_init["tau"]))


def test_runs_on_the_marginal_show_the_sites(schools, getkey):
    # `sample` given `model.marginal`, or a `Sampler` on it, names the draws by
    # the constrained sites too (the old docstrings led there, and ArviZ showed a
    # `tau` holding log tau); a marginal written by hand gets no map.
    phi, theta = _fake_draws(getkey())
    sampler = ls.Sampler(
        schools.marginal,
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=1.0,
        inverse_mass_matrix=1.0,
    )
    for given in (schools, schools.marginal, sampler):
        _, start, source = unwrap_numpyro(given, None if given is schools else 0)
        out = source.postprocess(phi, theta)
        assert set(out) == {"mu", "tau", "theta", "tau_squared"}
        np.testing.assert_allclose(out["tau"], np.exp(phi["tau"]), rtol=1e-14)
    hand_written = ls.LaplaceMarginal(EightSchoolsLogJoint(Y, SIGMA), jnp.zeros(8))
    assert unwrap_numpyro(hand_written, 0)[2] is None


def test_predictive_feeds_the_draws(schools, getkey):
    # The replicated data are y_rep = theta + sigma · eps with the *given* theta
    # draws, so (y_rep - theta) / sigma is N(0, 1): 1600 values, standard errors
    # 1/√1600 = 0.025 for the mean and ≈ 1/√3200 = 0.018 for the sd; 5 of them
    # allowed. Had Predictive drawn theta afresh from its prior (tau up to e² ≈ 7
    # here), the sd would be well above 1.
    phi, theta = _fake_draws(getkey())
    out = schools._predict(getkey(), phi, theta, (8, SIGMA), {}, None)
    assert set(out) == {"obs", "tau_squared"}
    assert out["obs"].shape == (2, 100, 8)
    residual = (out["obs"] - np.asarray(theta["theta"])) / SIGMA
    assert abs(residual.mean()) < 5 * 0.025
    assert abs(residual.std() - 1.0) < 5 * 0.018


@pytest.mark.parametrize(
    "latent, phrase",
    [
        (("school_effect",), "has no site of that name"),
        (("obs",), "an observed site"),
        (("tau_squared",), "`numpyro.deterministic` site"),
        (("J",), "has a plate site of that name"),
        (("mu", "tau", "theta"), "leaves no hyperparameters"),
        ((), "`latent` is empty"),
        (("theta", "theta"), "names a site twice"),
    ],
)
def test_bad_latent_names(latent, phrase):
    with pytest.raises(ValueError, match=phrase):
        ls.from_numpyro(eight_schools, 8, SIGMA, y=Y, latent=latent)


def _mixture(y, enumerate_=False):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    infer = {"enumerate": "parallel"} if enumerate_ else {}
    with numpyro.plate("i", y.shape[0]):
        z = numpyro.sample("z", dist.Bernoulli(0.5), infer=infer)
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(theta + 3.0 * z, 1.0), obs=y)


def _with_param(y):
    scale = numpyro.param("scale", 1.0, constraint=dist.constraints.positive)
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("i", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, scale))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def _subsampled(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("i", y.shape[0], subsample_size=2) as index:
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y[index])


_MASK = np.array([True, False, True, True])


def _masked(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("i", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, 1.0))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y, obs_mask=_MASK)


@pytest.mark.parametrize(
    "model, kwargs, latent, phrase",
    [
        # A discrete site named as the latent.
        (_mixture, {}, ("z",), "latent site 'z' is discrete"),
        # A discrete site elsewhere, enumerated or not: HMC cannot sample it either.
        (_mixture, {}, ("theta",), "sample site 'z' is discrete"),
        (_mixture, {"enumerate_": True}, ("theta",), "sample site 'z' is discrete"),
        (_with_param, {}, ("theta",), "`numpyro.param` site 'scale'"),
        (_subsampled, {}, ("theta",), "`subsample_size=2`.*Remove `subsample_size`"),
        # Every name NumPyro makes of a site with `obs_mask=`.
        (_masked, {}, ("y_unobserved",), "with `obs_mask=`.*site of their own"),
        (_masked, {}, ("y",), "part of the site 'y' with `obs_mask=`"),
        (_masked, {}, ("y_observed",), "part of the site 'y' with `obs_mask=`"),
    ],
)
def test_unsupported_models(model, kwargs, latent, phrase):
    y = jnp.asarray(Y[:4])
    with pytest.raises(ValueError, match=phrase):
        ls.from_numpyro(model, y, latent=latent, **kwargs)


def test_clear_error_without_numpyro(monkeypatch):
    real_import = builtins.__import__

    def no_numpyro(name, *args, **kwargs):
        if name == "numpyro" or name.startswith("numpyro."):
            raise ImportError("No module named 'numpyro'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_numpyro)
    with pytest.raises(ImportError, match=r'pip install "lapsample\[numpyro\]"'):
        ls.from_numpyro(eight_schools, 8, SIGMA, y=Y)


@pytest.mark.slow
def test_eight_schools_centred_matches_posteriordb():
    # Eight schools in NumPyro, centred, theta (the 8 school effects) integrated
    # out: exact, as theta | mu, tau, y is Gaussian. `sample`'s defaults (1000
    # warm-up iterations, 1000 draws, 4 chains) from the model's own
    # initialisation, theta drawn from N(theta*, H⁻¹) at every draw, all mapped
    # back to the sites. Compared with the reference as in
    # shared/posteriordb/README.md: z = (g_new - g_ref) / √(m_new² + m_ref²) for g
    # = mean, sd, 5% and 95% quantiles of mu, log tau and theta, m their MCSEs,
    # after requiring ESS ≥ 400 and R-hat < 1.01 (eight_schools_z_scores).
    data = eight_schools_json("data.json")
    summary = eight_schools_json("summary.json")["reference_summary"]
    sigma = np.asarray(data["sigma"], float)
    model = ls.from_numpyro(
        eight_schools, data["J"], sigma, y=np.asarray(data["y"], float)
    )
    # The model itself goes to `sample`: it starts at `model.phi_init`, and the
    # results name the draws by the model's sites.
    results = ls.sample(jr.key(20261127), model, sample_theta=True, progress_bar=False)
    assert int(results.sample_stats["diverging"].sum()) == 0
    draws = model.constrain_results(results)
    assert draws["theta"].shape == (4, 1000, 8)
    assert np.all(np.isfinite(draws["theta"]))
    assert np.all(draws["tau"] > 0)
    phi = np.stack([draws["mu"], np.log(draws["tau"])], axis=-1)
    zs = eight_schools_z_scores(phi, draws["theta"], summary)
    worst = max(zs, key=lambda k: abs(zs[k]))
    assert len(zs) == 40
    assert abs(zs[worst]) < Z_MAX, (worst, zs[worst], zs)

    # ArviZ shows the sites, constrained, with their shapes.
    idata = results.to_arviz()
    posterior = idata.posterior
    assert set(posterior.data_vars) == {"mu", "tau", "theta", "tau_squared"}
    assert posterior["theta"].shape == (4, 1000, 8)
    np.testing.assert_allclose(posterior["tau"], np.exp(results.phi["tau"]))
    assert "lp" in idata.sample_stats

    # Posterior predictive: y_rep = theta + sigma · eps, eps ~ N(0, 1), over 32 000
    # values (standard errors 0.0056 for the mean, 0.004 for the sd; 5 allowed).
    y_rep = model.predictive(jr.key(1), results, data["J"], sigma)["obs"]
    assert y_rep.shape == (4, 1000, 8)
    residual = (y_rep - draws["theta"]) / sigma
    assert abs(residual.mean()) < 5 * 0.0056
    assert abs(residual.std() - 1.0) < 5 * 0.004


# --------------------------------------------------------------------------------
# NumPyro's `examples/ucbadmit.py` (pyro-ppl/numpyro, Apache-2.0): the model as its
# authors wrote it. It counts the departments with NumPy on a data argument
# (`len(np.unique(dept))`), which needs the data concrete, as NumPyro's NUTS keeps
# them; lapsample used to trace them (`TracerArrayConversionError`).
# --------------------------------------------------------------------------------


def glmm(dept, male, applications, admit=None):
    v_mu = numpyro.sample("v_mu", dist.Normal(0, jnp.array([4.0, 1.0])))

    sigma = numpyro.sample("sigma", dist.HalfNormal(jnp.ones(2)))
    L_Rho = numpyro.sample("L_Rho", dist.LKJCholesky(2, concentration=2))
    scale_tril = sigma[..., jnp.newaxis] * L_Rho
    # non-centered parameterization
    num_dept = len(np.unique(dept))
    z = numpyro.sample("z", dist.Normal(jnp.zeros((num_dept, 2)), 1))
    v = jnp.dot(scale_tril, z.T).T

    logits = v_mu[0] + v[dept, 0] + (v_mu[1] + v[dept, 1]) * male
    if admit is None:
        # we use a Delta site to record probs for predictive distribution
        probs = jax.scipy.special.expit(logits)
        numpyro.sample("probs", dist.Delta(probs), obs=probs)
    numpyro.sample("admit", dist.Binomial(applications, logits=logits), obs=admit)


@pytest.fixture(scope="module")
def ucbadmit():
    """`(dept, male, applications, admit)`, parsed as `numpyro.examples.datasets`
    does (that module downloads the file; the tests read the shared copy)."""
    path = SHARED / "numpyro-datasets" / "UCBadmit.csv"
    if not path.exists():
        pytest.skip(f"NumPyro data set {path} is absent (expected ../shared)")
    dept, male, applications, admit = [], [], [], []
    with open(path) as f:
        fields = ["index", "dept", "gender", "admit", "reject", "applications"]
        rows = csv.DictReader(f, delimiter=";", fieldnames=fields)
        next(rows)  # the header
        for row in rows:
            dept.append(ord(row["dept"]) - ord("A"))
            male.append(row["gender"] == "male")
            applications.append(int(row["applications"]))
            admit.append(int(row["admit"]))
    return tuple(np.stack(x) for x in (dept, male, applications, admit))


# NumPyro's own `initialize_model` runs the model op by op: 13-40 s, so slow.
@pytest.mark.slow
def test_model_using_numpy_on_its_data(ucbadmit):
    model = ls.from_numpyro(glmm, *ucbadmit, latent=("z",))
    assert set(model.phi_init) == {"v_mu", "sigma", "L_Rho"}
    assert model.theta_init["z"].shape == (6, 2)
    # `check` evaluates the log joint and its gradients under `jit`: where the
    # data were traced, `np.unique(dept)` raised here.
    model.marginal.check(model.phi_init)
    # The log joint is NumPyro's own potential energy (here jitted with the data
    # closed over, as NumPyro's MCMC does).
    numpyro_util = pytest.importorskip("numpyro.infer.util")
    params = {**model.phi_init, "z": 0.3 * jnp.ones((6, 2))}
    expected = -jax.jit(lambda p: numpyro_util.potential_energy(glmm, ucbadmit, {}, p))(
        params
    )
    got = eqx.filter_jit(model.marginal.log_joint)({"z": params["z"]}, model.phi_init)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# Slow: a full `sample` compilation of the GLMM (~60 s on 2 cores).
@pytest.mark.slow
def test_ucbadmit_samples_on_the_marginal(ucbadmit):
    # A run on `model.marginal` (not the model): the draws are finite and ArviZ
    # shows the constrained sites, as `model.constrain(results)` gives them.
    model = ls.from_numpyro(glmm, *ucbadmit, latent=("z",))
    results = ls.sample(
        jr.key(0),
        model.marginal,
        model.phi_init,
        num_warmup=100,
        num_samples=50,
        num_chains=1,
        sample_theta=True,
        progress_bar=False,
    )
    draws = model.constrain(results)
    posterior = results.to_arviz().posterior
    assert set(posterior.data_vars) == {"v_mu", "sigma", "L_Rho", "z"}
    for name in ("sigma", "L_Rho", "z"):
        assert np.all(np.isfinite(draws[name]))
        np.testing.assert_allclose(posterior[name], draws[name])
    assert np.all(draws["sigma"] > 0)
    np.testing.assert_allclose(draws["sigma"], np.exp(results.phi["sigma"]))
    # Cholesky factors of correlation matrices: unit rows.
    np.testing.assert_allclose(np.sum(draws["L_Rho"] ** 2, axis=-1), 1.0)
