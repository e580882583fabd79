"""Fast sampler tests: the seed walkthrough's API, jit/vmap hygiene, failures as data.

Statistical checks live in `test_sampler_statistics.py` (marked slow). Compilation
dominates the cost here, so runs share compiled code: every run of a given sampler
structure uses `run_inference_algorithm` with the same `num_steps` and the default
`transform`, and models hold data (and injected failures) as array fields.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls

from .helpers import seed_data, SEED_N, SeedModel


# The seed walkthrough's settings.
NUM_STEPS = 1_000
SEED_ARGS = dict(step_size=0.3, inverse_mass_matrix=jnp.ones(1), maxiter=100)

CONSTRUCTORS = {
    "laplace_hmc": (ls.EndpointMH, ls.Fixed),
    "laplace_mhmc": (ls.Multinomial, ls.Fixed),
    "laplace_dhmc": (ls.EndpointMH, ls.RandomLength),
    "laplace_dmhmc": (ls.Multinomial, ls.RandomLength),
    "laplace_nuts": (ls.Multinomial, ls.NoUTurn),
}


def _make(name, log_joint):
    kwargs = dict(SEED_ARGS)
    if name != "laplace_nuts":
        kwargs["num_integration_steps"] = 10
    return getattr(ls, name)(log_joint, jnp.zeros(SEED_N), **kwargs)


def _native(sampler):
    # The BlackJAX names return BlackJAX's `SamplingAlgorithm`, whose `sampler` is
    # the lapsample `Sampler`; `laplace_nuts` returns the `Sampler` itself.
    return sampler if isinstance(sampler, ls.Sampler) else sampler.sampler


def _run(sampler, seed=0, num_steps=NUM_STEPS, position=jnp.array(0.0)):
    return ls.run_inference_algorithm(
        jr.key(seed), sampler, num_steps=num_steps, initial_position=position
    )


@pytest.fixture(scope="module")
def seed_y():
    return seed_data()


@pytest.fixture(scope="module", params=list(CONSTRUCTORS))
def seed_run(request, seed_y):
    name = request.param
    sampler = _make(name, SeedModel(seed_y))
    final_state, (states, infos) = _run(sampler)
    return name, sampler, final_state, states, infos


# --------------------------------------------------------------------------------
# The walkthrough's API, every proposal × trajectory pair
# --------------------------------------------------------------------------------


def test_constructors_build_the_documented_components(seed_run):
    name, sampler, *_ = seed_run
    proposal_cls, trajectory_cls = CONSTRUCTORS[name]
    sampler = _native(sampler)
    assert isinstance(sampler, ls.Sampler)
    assert isinstance(sampler.marginal, ls.LaplaceMarginal)
    assert isinstance(sampler.proposal, proposal_cls)
    assert isinstance(sampler.trajectory, trajectory_cls)
    assert isinstance(sampler.integrator, ls.Leapfrog)
    assert sampler.marginal.inner_solver.max_steps == 100
    if trajectory_cls is ls.RandomLength:
        # Mean number of steps 10, as `num_integration_steps=10` asks.
        assert sampler.trajectory.max_num_steps == 19
        assert sampler.trajectory.min_num_steps == 1


def test_smoke(seed_run):
    name, sampler, final_state, states, infos = seed_run
    assert states.position.shape == (NUM_STEPS,)
    assert states.theta_star.shape == (NUM_STEPS, SEED_N)
    assert states.logdensity.shape == (NUM_STEPS,)
    assert states.logdensity_grad.shape == (NUM_STEPS,)
    for leaf in jax.tree_util.tree_leaves((states, final_state)):
        assert np.all(np.isfinite(leaf))
    assert infos.acceptance_rate.shape == (NUM_STEPS,)
    assert 0.3 < float(infos.acceptance_rate.mean()) <= 1.0
    assert float(infos.is_accepted.mean()) > 0.3
    assert int(infos.is_divergent.sum()) == 0
    assert int(infos.inner_failures.sum()) == 0
    assert np.all(infos.result._value == ls.RESULTS.successful._value)
    # Warm starts: after the first transitions an evaluation needs one or two
    # Newton steps (the model is Gaussian in theta, so one suffices).
    assert int(infos.inner_steps_max[10:].max()) <= 2
    assert int(infos.inner_steps_max.min()) >= 1
    steps = np.asarray(infos.num_integration_steps)
    if name in ("laplace_hmc", "laplace_mhmc"):
        assert np.all(steps == 10)
        assert np.all(infos.tree_depth == 0)
    elif name in ("laplace_dhmc", "laplace_dmhmc"):
        assert steps.min() >= 1 and steps.max() <= 19
        assert len(np.unique(steps)) > 10
        assert abs(steps.mean() - 10) < 1.0
        assert np.all(infos.tree_depth == 0)
    else:
        depth = np.asarray(infos.tree_depth)
        assert depth.min() >= 0 and depth.max() <= 10
        # A valid trajectory of depth d has 2^d - 1 steps, plus a rejected last
        # subtree of at most 2^d steps.
        assert np.all(steps >= 2**depth - 1) and np.all(steps <= 2 ** (depth + 1) - 1)
    # The posterior of log_sigma is near 0.8 with sd ≈ 0.2; a loose sanity check
    # (the statistical test is in test_sampler_statistics.py).
    assert abs(float(states.position[100:].mean()) - 0.8) < 0.25


@eqx.filter_jit
def _evaluate_batch(marginal, positions):
    return eqx.filter_vmap(marginal)(positions)


def test_state_carries_its_own_theta_star(seed_run):
    # Each accepted state's theta* is the mode at its own position (a cold solve
    # agrees): no stale warm start leaks into the state, and no extra solve is
    # needed after accepting.
    _, sampler, _, states, _ = seed_run
    values, aux = _evaluate_batch(_native(sampler).marginal, states.position[::100])
    np.testing.assert_allclose(states.theta_star[::100], aux.theta_star, atol=1e-8)
    np.testing.assert_allclose(states.logdensity[::100], values, rtol=1e-10)


def test_walkthrough_code(seed_y):
    # The seed walkthrough, with `blackjax` replaced by `lapsample` (imports as
    # they would be after renaming), shortened to its calls.
    from lapsample.mcmc.laplace_marginal import laplace_marginal_factory
    from lapsample.util import run_inference_algorithm

    y_obs = seed_y
    n = SEED_N

    def log_joint(theta, log_sigma):
        sigma = jnp.exp(log_sigma)
        log_prior_phi = jstats.norm.logpdf(log_sigma, 0.0, 3.0)
        log_prior_theta = jstats.norm.logpdf(theta, 0.0, sigma).sum()
        log_lik = jstats.norm.logpdf(y_obs, theta, 1.0).sum()
        return log_prior_phi + log_prior_theta + log_lik

    rng_key = jr.key(7)
    theta_init = jnp.zeros(n)
    phi_init = jnp.array(0.0)
    sampler = ls.laplace_mhmc(
        log_joint,
        theta_init=theta_init,
        step_size=0.3,
        inverse_mass_matrix=jnp.ones(1),
        num_integration_steps=10,
        maxiter=100,
    )
    rng_key, run_key = jax.random.split(rng_key)
    final_state, (states, infos) = run_inference_algorithm(
        run_key,
        sampler,
        num_steps=200,
        initial_position=phi_init,
        transform=lambda state, info: (state, info),
    )
    phi_samples = states.position
    theta_star_samples = states.theta_star
    assert phi_samples.shape == (200,)
    assert theta_star_samples.shape == (200, n)
    assert f"{infos.acceptance_rate.mean():.2f}"
    assert int(infos.is_divergent.sum()) == 0

    laplace = laplace_marginal_factory(log_joint, theta_init, maxiter=100)
    rng_key, *theta_keys = jax.random.split(rng_key, len(phi_samples) + 1)
    theta_keys = jnp.array(theta_keys)
    theta_samples = jax.vmap(laplace.sample_theta)(
        jnp.array(theta_keys), phi_samples, theta_star_samples
    )
    assert theta_samples.shape == (200, n)
    assert np.all(np.isfinite(theta_samples))
    # theta | phi, y is N(σ²y/(σ²+1), σ²/(σ²+1)): the draws average near the
    # posterior mean of the shrinkage estimate.
    shrink = np.exp(2 * phi_samples) / (np.exp(2 * phi_samples) + 1)
    np.testing.assert_allclose(
        theta_samples.mean(0), (shrink[:, None] * y_obs).mean(0), atol=0.35
    )
    ess_value = ls.ess(phi_samples[None])
    assert f"{ess_value:.1f}"
    assert 20 < float(ess_value) < 1000


def test_ess():
    # Independent draws: the ESS of N draws is about N (ArviZ's estimator has
    # relative sd ≈ √(2/N)-ish; 4000 draws → well within ±25%).
    x = np.asarray(jr.normal(jr.key(3), (4, 1000, 3)))
    per_coordinate = ls.ess(x)
    assert per_coordinate.shape == (3,)
    assert np.all(np.abs(per_coordinate / 4000 - 1) < 0.25)
    one = ls.ess(x[:1, :, 0])
    assert isinstance(one, float) and 700 < one < 1300
    assert ls.ess(x[:, :, 0], relative=True) == pytest.approx(ls.ess(x[:, :, 0]) / 4000)
    with pytest.raises(ValueError, match="x\\[None\\]"):
        ls.ess(x[0, :, 0])


def test_blackjax_style_module_paths():
    import lapsample.mcmc.laplace_marginal as lm
    import lapsample.util as util

    assert lm.laplace_marginal_factory is ls.laplace_marginal_factory
    assert util.run_inference_algorithm is ls.run_inference_algorithm


def test_run_inference_algorithm_arguments(seed_y):
    sampler = _make("laplace_hmc", SeedModel(seed_y))
    with pytest.raises(ValueError, match="exactly one"):
        ls.run_inference_algorithm(jr.key(0), sampler, 10)
    state = sampler.init(jnp.array(0.0))
    with pytest.raises(ValueError, match="exactly one"):
        ls.run_inference_algorithm(
            jr.key(0), sampler, 10, initial_state=state, initial_position=0.0
        )
    with pytest.raises(TypeError, match="num_steps"):
        ls.run_inference_algorithm(jr.key(0), sampler, 10.0, initial_state=state)


def test_pytree_position():
    # phi may be any PyTree; it is flattened for the kinetic energy and unflattened
    # in the state (the inverse mass matrix is over the flattened phi).
    def logp(phi):
        return -0.5 * (phi["a"] ** 2 + jnp.sum((phi["b"] / jnp.array([1.0, 2.0])) ** 2))

    sampler = ls.Sampler(
        ls.PlainDensity(logp),
        ls.Multinomial(),
        ls.NoUTurn(),
        ls.McLachlan(),
        step_size=0.5,
        inverse_mass_matrix=jnp.array([1.0, 1.0, 4.0]),
    )
    phi = {"a": jnp.array(0.1), "b": jnp.array([0.2, -0.3])}
    final_state, (states, infos) = _run(sampler, num_steps=300, position=phi)
    assert jax.tree_util.tree_structure(final_state.position) == (
        jax.tree_util.tree_structure(phi)
    )
    assert states.position["a"].shape == (300,)
    assert states.position["b"].shape == (300, 2)
    assert states.logdensity_grad["b"].shape == (300, 2)
    np.testing.assert_allclose(
        states.logdensity_grad["b"], -states.position["b"] / jnp.array([1.0, 4.0])
    )
    assert float(infos.acceptance_rate.mean()) > 0.6
    assert abs(float(states.position["b"][:, 1].std()) - 2.0) < 0.5


# --------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------


def test_incompatible_components(seed_y):
    marginal = ls.LaplaceMarginal(SeedModel(seed_y), jnp.zeros(SEED_N))
    with pytest.raises(ls.IncompatibleComponentsError, match="Multinomial"):
        ls.Sampler(
            marginal,
            ls.EndpointMH(),
            ls.NoUTurn(),
            step_size=0.1,
            inverse_mass_matrix=1.0,
        )
    assert issubclass(ls.IncompatibleComponentsError, ValueError)
    with pytest.raises(TypeError, match="AbstractProposal"):
        ls.Sampler(
            marginal,
            ls.NoUTurn(),
            ls.Multinomial(),
            step_size=0.1,
            inverse_mass_matrix=1.0,
        )
    with pytest.raises(ValueError, match="scalar"):
        ls.Sampler(
            marginal,
            ls.Multinomial(),
            ls.NoUTurn(),
            step_size=jnp.ones(2),
            inverse_mass_matrix=1.0,
        )
    with pytest.raises(ValueError, match="at least 1"):
        ls.Fixed(0)
    with pytest.raises(TypeError, match="int"):
        ls.Fixed(2.5)
    with pytest.raises(ValueError, match="at least 3"):
        ls.RandomLength(2, min_num_steps=3)
    with pytest.raises(ValueError, match="at most 30"):
        ls.NoUTurn(40)
    sampler = ls.Sampler(
        marginal, ls.Multinomial(), ls.Fixed(3), step_size=0.1, inverse_mass_matrix=1
    )
    # Step size and inverse mass are floating arrays (leaves, not static).
    assert isinstance(sampler.step_size, jax.Array)
    assert jnp.issubdtype(sampler.inverse_mass_matrix.dtype, jnp.floating)
    assert isinstance(sampler.metric, ls.DiagonalMetric)
    with pytest.raises(ValueError, match="2 entries"):
        eqx.tree_at(lambda s: s.inverse_mass_matrix, sampler, jnp.ones(2)).init(
            jnp.array(0.0)
        )


# --------------------------------------------------------------------------------
# jit and vmap hygiene
# --------------------------------------------------------------------------------


class _ShapeCheckedLogJoint(eqx.Module):
    """The seed model, asserting at trace time that its data were not split across
    chains (which `vmap` over the sampler itself would silently do when the number
    of chains equals the length of the data)."""

    y: jax.Array

    def __call__(self, theta, log_sigma):
        assert self.y.shape == (SEED_N,), "model data were batched by vmap"
        return SeedModel(self.y)(theta, log_sigma)


# Shared by the two tests below, so that the NUTS step compiles once.
_TRACED_STEP = eqx.debug.assert_max_traces(ls.Sampler.step, max_traces=1)
_JIT_STEP = eqx.filter_jit(_TRACED_STEP)


def test_bound_step_traces_once():
    # `eqx.filter_jit(sampler.step)`, the bound method, over many transitions.
    sampler = ls.Sampler(
        ls.PlainDensity(lambda x: -0.5 * jnp.sum(x**2)),
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=0.5,
        inverse_mass_matrix=jnp.ones(3),
    )
    traced = eqx.debug.assert_max_traces(sampler.step, max_traces=1)
    step = eqx.filter_jit(traced)
    state = sampler.init(jnp.zeros(3))
    for key in jr.split(jr.key(0), 50):
        state, info = step(key, state)
    assert eqx.debug.get_num_traces(traced) == 1
    assert np.all(np.isfinite(state.position))


def test_step_traces_once_across_samplers(seed_y):
    # New step sizes, inverse masses and data are array leaves: one compiled step
    # serves every sampler of this structure.
    sampler = _make("laplace_nuts", _ShapeCheckedLogJoint(seed_y))
    state = sampler.init(jnp.array(0.5))
    for i, key in enumerate(jr.split(jr.key(1), 6)):
        other = eqx.tree_at(
            lambda s: (s.step_size, s.inverse_mass_matrix, s.marginal.log_joint.y),
            sampler,
            (jnp.asarray(0.1 + 0.05 * i), jnp.ones(1) * (1 + i), seed_y + 0.1 * i),
        )
        state, info = _JIT_STEP(other, key, state)
    assert eqx.debug.get_num_traces(_TRACED_STEP) == 1
    assert np.isfinite(float(state.position))


def test_vmap_over_chains_leaves_data_unbatched(seed_y):
    num_chains = SEED_N  # equal to the data length: the trap case
    sampler = _make("laplace_nuts", _ShapeCheckedLogJoint(seed_y))
    positions = jnp.linspace(0.2, 1.4, num_chains)
    keys = jr.split(jr.key(5), num_chains)
    states = eqx.filter_vmap(sampler.init)(positions)
    assert states.theta_star.shape == (num_chains, SEED_N)
    new_states, infos = eqx.filter_jit(eqx.filter_vmap(sampler.step))(keys, states)
    assert new_states.position.shape == (num_chains,)
    assert infos.tree_depth.shape == (num_chains,)
    # Each chain matches an unbatched transition from the same key and state.
    for i in (0, 7, num_chains - 1):
        state_i = jax.tree_util.tree_map(lambda x: x[i], states)
        expected, info_i = _JIT_STEP(sampler, keys[i], state_i)
        np.testing.assert_allclose(
            new_states.position[i], expected.position, rtol=1e-10
        )
        assert int(infos.num_integration_steps[i]) == int(info_i.num_integration_steps)
    assert eqx.debug.get_num_traces(_TRACED_STEP) == 1


# --------------------------------------------------------------------------------
# Failures are data
# --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_nan_region_is_divergent_and_rejected(name, seed_y):
    # log_joint is NaN for log_sigma > 1.1 (posterior mass there ≈ 5%): the
    # trajectories that enter it are divergent, the chain never moves into it and
    # keeps sampling. Same structure as `seed_run`, so no new compilation. The chain
    # starts in the bulk (0.8): from the seed's start at 0, ten steps of 0.3 always
    # overshoot past 1.1, so a fixed-length trajectory, rejected as a whole when it
    # diverges, would never leave 0.
    barrier = 1.1
    sampler = _make(name, SeedModel(seed_y, nan_above=barrier))
    final_state, (states, infos) = _run(sampler, seed=1, position=jnp.array(0.8))
    divergent = np.asarray(infos.is_divergent)
    assert divergent.sum() > 5
    for leaf in jax.tree_util.tree_leaves((states, final_state)):
        assert np.all(np.isfinite(leaf))
    assert float(states.position.max()) <= barrier
    assert np.all(np.asarray(infos.inner_failures)[divergent] >= 1)
    assert np.all(np.asarray(infos.inner_failures)[~divergent] == 0)
    failed = np.asarray(infos.result._value)[divergent]
    assert np.all(failed != ls.RESULTS.successful._value)
    # The chain continues: it keeps moving after its first divergence.
    first = int(np.argmax(divergent))
    assert np.asarray(infos.is_accepted)[first + 1 :].mean() > 0.3
    if name in ("laplace_hmc", "laplace_dhmc", "laplace_mhmc", "laplace_dmhmc"):
        # Fixed-length trajectories reject a divergent transition as a whole.
        assert not np.any(np.asarray(infos.is_accepted)[divergent])


def test_plain_density_nan_is_sanitised():
    # A PlainDensity may return NaN (value or gradient); the sampler treats it as
    # -inf: divergent, rejected.
    def logp(x):
        return jnp.where(x > 1.0, jnp.nan, -0.5 * x**2)

    sampler = ls.Sampler(
        ls.PlainDensity(logp),
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=0.4,
        inverse_mass_matrix=1.0,
    )
    final_state, (states, infos) = _run(sampler, num_steps=300)
    assert states.theta_star is None
    assert np.all(np.isfinite(states.position))
    assert np.all(np.isfinite(states.logdensity))
    assert float(states.position.max()) <= 1.0
    assert int(infos.is_divergent.sum()) > 5
    divergent = np.asarray(infos.is_divergent)
    assert np.all(
        np.asarray(infos.result._value)[divergent]
        == ls.RESULTS.nonfinite_log_density._value
    )


class _PoissonLogJoint(eqx.Module):
    """log_sigma ~ N(0, 1), theta ~ N(0, σ² I), counts ~ Poisson(exp(theta)): not
    Gaussian in theta, so Newton needs several steps from a distant warm start."""

    counts: jax.Array

    def __call__(self, theta, log_sigma):
        sigma = jnp.exp(log_sigma)
        return (
            jstats.norm.logpdf(log_sigma, 0.0, 1.0)
            + jstats.norm.logpdf(theta, 0.0, sigma).sum()
            + jnp.sum(self.counts * theta - jnp.exp(theta))
        )


def test_failed_inner_solve_is_divergent_and_rejected():
    # Newton(max_steps=1) converges (to its tight default tolerance) only when the
    # warm start is already very close to the mode; with steps of 0.01 about half
    # the trajectories meet a failed inner solve. Those are divergent and rejected;
    # the chain keeps going.
    log_joint = _PoissonLogJoint(jnp.array([0.0, 1.0, 3.0, 8.0, 20.0, 2.0]))
    theta_init = jnp.zeros(6)
    phi = jnp.array(0.8)
    good = ls.LaplaceMarginal(log_joint, theta_init)
    _, aux = eqx.filter_jit(good)(phi)
    sampler = ls.laplace_hmc(
        log_joint,
        theta_init,
        step_size=0.01,
        inverse_mass_matrix=jnp.ones(1),
        num_integration_steps=4,
        inner_solver=ls.Newton(max_steps=1),
    )
    state = sampler.init(phi, theta_guess=aux.theta_star)
    assert np.isfinite(float(state.logdensity))
    final_state, (states, infos) = ls.run_inference_algorithm(
        jr.key(2), sampler, num_steps=300, initial_state=state
    )
    divergent = np.asarray(infos.is_divergent)
    assert divergent.sum() > 5
    assert np.asarray(infos.inner_failures)[divergent].min() >= 1
    codes = np.asarray(infos.result._value)[divergent]
    assert np.any(codes == ls.RESULTS.inner_solve_failed._value)
    assert not np.any(np.asarray(infos.is_accepted)[divergent])
    assert np.asarray(infos.is_accepted).mean() > 0.2
    for leaf in jax.tree_util.tree_leaves(states):
        assert np.all(np.isfinite(leaf))
    # Every state the chain visits is a genuine mode (checked with a full solve).
    # Newton stops when its decrement δᵀAδ/2 is below ~1.8e-12·|log joint| ≈ 1e-10,
    # so a one-step solve leaves theta* accurate to ~√(2e-10/0.3) ≈ 3e-5 along flat
    # directions (the zero count); log det H moves at first order with theta*, so
    # the log density is accurate to ~1e-5 (absolute).
    values, auxes = _evaluate_batch(good, states.position[::30])
    np.testing.assert_allclose(states.theta_star[::30], auxes.theta_star, atol=1e-4)
    np.testing.assert_allclose(states.logdensity[::30], values, rtol=0, atol=1e-4)
