"""Issue 20: BlackJAX code runs unchanged. The BlackJAX names (`laplace_hmc`, ...,
`lapsample.mcmc.laplace_marginal.*`, `run_inference_algorithm`) keep BlackJAX
1.7.1's signatures, defaults, types and fields, and their functions go through
plain `jax.jit`, `jax.vmap` and `jax.lax.scan`; float32 never fails a
warnings-as-errors suite."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls
from lapsample.mcmc import hmc as mcmc_hmc
from lapsample.mcmc.laplace_dynamic_hmc import (
    init as dynamic_init,
    LaplaceDynamicHMCState,
)
from lapsample.mcmc.laplace_hmc import (
    as_top_level_api,
    init as hmc_init,
    LaplaceHMCState,
)
from lapsample.mcmc.laplace_marginal import (
    laplace_marginal_factory,
    LaplaceHMCInfo,
    LaplaceMarginal,
)
from lapsample.util import run_inference_algorithm


N = 4
Y = jnp.array([1.2, -0.7, 0.4, -1.6])


def log_joint(theta, log_sigma):
    # theta | phi ~ N(0, exp(phi)² I), y | theta ~ N(theta, I): Laplace is exact.
    prior = jstats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
    return prior + jstats.norm.logpdf(Y, theta, 1.0).sum()


def exact_log_marginal(log_sigma):
    return jstats.norm.logpdf(Y, 0.0, jnp.sqrt(jnp.exp(2 * log_sigma) + 1)).sum()


def exact_mode(log_sigma):
    s2 = jnp.exp(2 * log_sigma)
    return s2 / (s2 + 1) * Y


# The BlackJAX field names (blackjax 1.7.1, mcmc/laplace_*.py).
HMC_STATE_FIELDS = ("position", "logdensity", "logdensity_grad", "theta_star")
INFO_FIELDS = (
    "momentum",
    "acceptance_rate",
    "is_accepted",
    "is_divergent",
    "energy",
    "proposal",
    "num_integration_steps",
    "lbfgs_iter_num",
    "lbfgs_error",
    "lbfgs_converged",
    "lbfgs_hit_maxiter",
)


@pytest.fixture(scope="module")
def laplace():
    return laplace_marginal_factory(log_joint, jnp.zeros(N), maxiter=200)


@pytest.fixture(scope="module")
def hmc():
    return ls.laplace_hmc(log_joint, jnp.zeros(N), 0.1, jnp.ones(1), 3, maxiter=200)


@pytest.fixture(scope="module")
def dmhmc():
    return ls.laplace_dmhmc(log_joint, jnp.zeros(N), 0.1, jnp.ones(1), maxiter=200)


# --------------------------------------------------------------------------------
# jax.jit / vmap / scan of init, step and the marginal (the "unhashable type" row)
# --------------------------------------------------------------------------------


def test_plain_jit_vmap_scan_of_init_and_step(hmc):
    state = jax.jit(hmc.init)(jnp.array(0.0))
    step = jax.jit(hmc.step)
    new_state, info = step(jr.key(0), state)
    assert isinstance(new_state, LaplaceHMCState)
    assert isinstance(info, LaplaceHMCInfo)
    assert np.isfinite(new_state.logdensity) and np.isfinite(info.acceptance_rate)
    step(jr.key(1), new_state)
    assert step._cache_size() == 1  # a second call does not retrace

    @jax.jit
    def init_and_step(keys, positions):
        states = jax.vmap(hmc.init)(positions)
        return states, jax.vmap(hmc.step)(keys, states)

    states, (batch, infos) = init_and_step(
        jr.split(jr.key(2), 3), jnp.array([0.0, 0.5, 1.0])
    )
    np.testing.assert_allclose(
        states.logdensity, jax.vmap(exact_log_marginal)(states.position), rtol=1e-10
    )
    assert batch.theta_star.shape == (3, N) and infos.energy.shape == (3,)

    def one(state, key):
        state, info = hmc.step(key, state)
        return state, state.position

    final, positions = jax.jit(lambda s, k: jax.lax.scan(one, s, k))(
        state, jr.split(jr.key(3), 5)
    )
    assert positions.shape == (5,)
    np.testing.assert_allclose(final.theta_star, exact_mode(final.position), atol=1e-8)


def test_plain_jit_and_vmap_of_the_dynamic_sampler(dmhmc):
    init = jax.jit(jax.vmap(dmhmc.init))
    states = init(jnp.array([0.0, 0.5]), jr.split(jr.key(0), 2))
    assert isinstance(states, LaplaceDynamicHMCState)
    new, info = jax.jit(jax.vmap(dmhmc.step))(jr.split(jr.key(1), 2), states)
    assert np.all(np.isfinite(new.logdensity))
    assert not np.array_equal(new.random_generator_arg, states.random_generator_arg)


def test_plain_jit_of_the_marginal(laplace):
    assert isinstance(laplace, LaplaceMarginal)
    jitted = jax.jit(laplace)
    for phi in (0.0, 0.5, -0.5):
        value, theta_star = jitted(jnp.array(phi))
        np.testing.assert_allclose(value, exact_log_marginal(phi), rtol=1e-10)
        np.testing.assert_allclose(theta_star, exact_mode(phi), atol=1e-10)
    assert jitted._cache_size() == 1
    (value, theta_star), grad = jax.jit(jax.value_and_grad(laplace, has_aux=True))(
        jnp.array(0.3)
    )
    np.testing.assert_allclose(grad, jax.grad(exact_log_marginal)(0.3), rtol=1e-8)
    values, modes = jax.jit(jax.vmap(laplace))(jnp.array([0.1, 0.2]))
    np.testing.assert_allclose(modes[1], exact_mode(0.2), atol=1e-10)


# --------------------------------------------------------------------------------
# The marginal's outputs (`theta_star`, `solve_theta`, `get_theta_star`, ...)
# --------------------------------------------------------------------------------


def test_marginal_functions(laplace):
    phi = jnp.array(0.4)
    solve = jax.jit(laplace.solve_theta)
    np.testing.assert_allclose(solve(phi), exact_mode(phi), atol=1e-10)
    warm = solve(phi, exact_mode(0.41))
    np.testing.assert_allclose(warm, exact_mode(phi), atol=1e-10)
    theta, diag = jax.jit(laplace.solve_theta_with_info)(phi)
    assert bool(diag.converged) and not bool(diag.hit_maxiter)
    assert 1 <= int(diag.iter_num) <= 3 and float(diag.error) < 1e-8
    value, theta_star = jax.jit(laplace.log_marginal)(phi)
    np.testing.assert_allclose(theta_star, theta, atol=1e-12)
    # get_theta_star is differentiable: the implicit function theorem's dθ*/dφ.
    np.testing.assert_allclose(
        jax.jit(jax.jacobian(laplace.get_theta_star))(phi),
        jax.jacobian(exact_mode)(phi),
        rtol=1e-8,
    )
    draw = jax.jit(laplace.sample_theta)(jr.key(0), phi, theta_star)
    assert draw.shape == (N,)
    assert isinstance(laplace.marginal, ls.LaplaceMarginal)
    assert laplace.marginal.inner_solver.max_steps == 200


def test_factory_maps_lbfgs_options():
    default = laplace_marginal_factory(log_joint, jnp.zeros(N))
    assert default.marginal.inner_solver == ls.Newton(max_steps=30)
    mapped = laplace_marginal_factory(
        log_joint, jnp.zeros(N), maxiter=5, gtol=1e-6, ftol=1e-9, maxls=20
    )
    assert mapped.marginal.inner_solver == ls.Newton(atol=1e-6, max_steps=5)
    with pytest.raises(TypeError, match="maxiterations"):
        laplace_marginal_factory(log_joint, jnp.zeros(N), maxiterations=5)


# --------------------------------------------------------------------------------
# Defaults, return types, state and info fields
# --------------------------------------------------------------------------------


def test_defaults_and_signatures():
    for fn in (ls.laplace_dhmc, ls.laplace_dmhmc):
        params = inspect.signature(fn).parameters
        assert list(params)[:4] == [
            "log_joint_fn",
            "theta_init",
            "step_size",
            "inverse_mass_matrix",
        ]
        assert params["num_integration_steps"].default is None
    for fn in (ls.laplace_hmc, ls.laplace_dhmc):
        params = inspect.signature(fn).parameters
        assert params["divergence_threshold"].default == 1000
        assert params["build_proposal"].default is mcmc_hmc.hmc_proposal
        assert params["maxiter"].default == 30
    assert as_top_level_api is ls.laplace_hmc
    algorithm = ls.laplace_dhmc(log_joint, jnp.zeros(N), 0.1, 1.0)
    assert algorithm.sampler.trajectory == ls.RandomLength(9)
    assert isinstance(algorithm.sampler.proposal, ls.EndpointMH)


def test_default_dynamic_length_is_uniform_on_1_to_9(dmhmc):
    # BlackJAX's integration_steps_fn: randint(key, (), 1, 10) of the state's arg.
    _, infos = run_inference_algorithm(
        jr.key(4),
        dmhmc,
        60,
        initial_position=jnp.array(0.0),
        transform=lambda state, info: info,
    )
    assert set(np.unique(infos.num_integration_steps)) == set(range(1, 10))
    assert np.all(infos.is_accepted)  # multinomial: BlackJAX's "always accepted"


def test_types_and_fields(hmc, laplace):
    assert LaplaceHMCState._fields == HMC_STATE_FIELDS
    dynamic_fields = HMC_STATE_FIELDS + ("random_generator_arg",)
    assert LaplaceDynamicHMCState._fields == dynamic_fields
    assert LaplaceHMCInfo._fields[: len(INFO_FIELDS)] == INFO_FIELDS
    phi = jnp.array(0.5)
    state = jax.jit(hmc_init, static_argnums=1)(phi, laplace)
    assert isinstance(state, LaplaceHMCState)
    same = hmc.init(phi)
    for a, b in zip(state, same):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    dynamic = jax.jit(dynamic_init, static_argnums=1)(phi, laplace, jr.key(0))
    assert isinstance(dynamic, LaplaceDynamicHMCState)
    np.testing.assert_array_equal(dynamic.random_generator_arg, jr.key_data(jr.key(0)))
    _, info = jax.jit(hmc.step)(jr.key(1), state)
    assert int(info.lbfgs_iter_num) >= 1 and float(info.lbfgs_error) < 1e-8
    assert bool(info.lbfgs_converged) and not bool(info.lbfgs_hit_maxiter)
    assert info.momentum is None and info.proposal is None


def test_hit_maxiter_reports_an_exhausted_budget():
    algorithm = ls.laplace_hmc(log_joint, jnp.zeros(N), 0.01, 1.0, 2, maxiter=1)
    _, info = jax.jit(algorithm.step)(jr.key(0), algorithm.init(jnp.array(3.0)))
    assert bool(info.lbfgs_hit_maxiter)


def test_build_proposal_matches_the_alias(hmc):
    explicit = ls.laplace_hmc(
        log_joint,
        jnp.zeros(N),
        0.1,
        jnp.ones(1),
        3,
        maxiter=200,
        build_proposal=mcmc_hmc.multinomial_hmc_proposal,
    )
    alias = ls.laplace_mhmc(log_joint, jnp.zeros(N), 0.1, jnp.ones(1), 3, maxiter=200)
    assert isinstance(explicit.sampler.proposal, ls.Multinomial)
    state = hmc.init(jnp.array(0.2))
    a, info_a = jax.jit(alias.step)(jr.key(5), state)
    b, info_b = jax.jit(explicit.step)(jr.key(5), state)
    assert float(a.logdensity) == float(b.logdensity)
    assert bool(info_a.is_accepted) and bool(info_b.is_accepted)
    with pytest.raises(TypeError, match="build_proposal"):
        ls.laplace_hmc(log_joint, jnp.zeros(N), 0.1, 1.0, 3, build_proposal="mh")


def test_run_inference_algorithm_is_blackjax_s(hmc):
    # BlackJAX splits the key for `init`, then scans `step` over split keys.
    key = jr.key(6)
    final, (states, infos) = run_inference_algorithm(
        key, hmc, 4, initial_position=jnp.array(0.0)
    )
    assert isinstance(final, LaplaceHMCState) and isinstance(infos, LaplaceHMCInfo)
    key, init_key = jr.split(key)
    state = hmc.init(jnp.array(0.0), init_key)
    for k in jr.split(key, 4):
        state, _ = hmc.step(k, state)
    np.testing.assert_allclose(final.position, state.position, rtol=1e-12)
    np.testing.assert_allclose(states.position[-1], state.position, rtol=1e-12)


# --------------------------------------------------------------------------------
# float32 under warnings-as-errors
# --------------------------------------------------------------------------------


Y32 = Y.astype(jnp.float32)


def log_joint32(theta, log_sigma):
    prior = jstats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
    return prior + jstats.norm.logpdf(Y32, theta, 1.0).sum()


def _float32_laplace():
    return laplace_marginal_factory(log_joint32, jnp.zeros(N, jnp.float32), maxiter=50)


def test_float32_never_raises_under_warnings_as_errors():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("error")
        _float32_laplace()
        laplace = _float32_laplace()
        algorithm = ls.laplace_hmc(
            log_joint32, jnp.zeros(N, jnp.float32), 0.1, 1.0, 3, maxiter=50
        )
    # Shown at most once (per input and process), never raised.
    assert len(record) <= 1
    assert all(issubclass(r.category, ls.LowPrecisionWarning) for r in record)
    value, theta_star = jax.jit(laplace)(jnp.array(0.3, jnp.float32))
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, exact_log_marginal(0.3), rtol=1e-4)
    state = algorithm.init(jnp.array(0.0, jnp.float32))
    state, info = jax.jit(algorithm.step)(jr.key(0), state)
    assert state.logdensity.dtype == jnp.float32 and not bool(info.is_divergent)


def test_float32_warning_obeys_filters_that_name_it():
    assert issubclass(ls.LowPrecisionWarning, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ls.LowPrecisionWarning)
        with pytest.raises(ls.LowPrecisionWarning, match="jax_enable_x64"):
            _float32_laplace()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", ls.LowPrecisionWarning)
        _float32_laplace()
    assert record == []
    with pytest.warns(ls.LowPrecisionWarning, match="`theta_init` is float32"):
        _float32_laplace()


def _gaussian_2d(x):
    # N(0, diag(1, 4)).
    return -0.5 * (x[0] ** 2 + x[1] ** 2 / 4.0)


def test_window_adaptation_and_nuts_for_a_reference_run():
    # BlackJAX's reference-run idiom (its Laplace funnel test builds one):
    # window_adaptation(nuts, logdensity).run(...) then nuts(logdensity, **params),
    # with plain jax.jit of step and run_inference_algorithm from the warm state.
    warmup = ls.window_adaptation(ls.nuts, _gaussian_2d)
    (state, parameters), info = warmup.run(jr.key(0), jnp.zeros(2), num_steps=200)
    assert set(parameters) == {"step_size", "inverse_mass_matrix"}
    assert isinstance(info, ls.SampleResults)
    algorithm = ls.nuts(_gaussian_2d, **parameters)
    stepped, _ = jax.jit(algorithm.step)(jr.key(1), state)
    assert stepped.position.shape == (2,)
    _, draws = ls.run_inference_algorithm(
        jr.key(2), algorithm, 500, initial_state=state, transform=_position
    )
    draws = np.asarray(draws)
    ess = ls.ess(draws[None])
    # Monte Carlo error from the ESS: sd(mean) = sigma / sqrt(ESS) and
    # sd(var) ≈ sigma² sqrt(2 / ESS); 4 standard errors each (fixed seed).
    sigma2 = np.array([1.0, 4.0])
    np.testing.assert_array_less(np.abs(draws.mean(0)), 4 * np.sqrt(sigma2 / ess))
    np.testing.assert_array_less(
        np.abs(draws.var(0) - sigma2), 4 * sigma2 * np.sqrt(2 / ess)
    )


def _position(state, info):
    del info
    return state.position
