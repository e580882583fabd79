"""Issue 5: bad sampler settings get a clear error before compilation, float32 gets a
warning, and a run where the inner solve fails often says that the Laplace
approximation is in doubt.

The marginal's own input checks (theta_init, log_joint's output, a non-finite
start) are in tests/test_validation.py; a checkpoint written for another model is
refused in tests/test_workflow.py (`test_resume_refuses_*`).
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls

from .helpers import evaluate, seed_model


N = 20
MODEL = seed_model(N)


def _hmc(**overrides):
    settings = dict(step_size=0.1, inverse_mass_matrix=1.0, num_integration_steps=5)
    settings.update(overrides)
    return ls.laplace_hmc(MODEL, jnp.zeros(N), **settings).sampler


def _nuts(**overrides):
    settings = dict(step_size=0.1, inverse_mass_matrix=1.0)
    settings.update(overrides)
    return ls.laplace_nuts(MODEL, jnp.zeros(N), **settings)


def _marginal():
    return ls.LaplaceMarginal(MODEL, jnp.zeros(N))


# (what the user did, the call, the exception, a phrase of the message). Every one
# of them raises in Python, before anything is traced or compiled.
BAD_SETTINGS = [
    ("step_size=0", lambda: _hmc(step_size=0.0), ValueError, "positive and finite"),
    ("step_size<0", lambda: _nuts(step_size=-0.1), ValueError, "positive and finite"),
    ("step_size=nan", lambda: _hmc(step_size=jnp.nan), ValueError, "positive and"),
    ("step_size=inf", lambda: _hmc(step_size=jnp.inf), ValueError, "positive and"),
    (
        "inverse mass < 0",
        lambda: _hmc(inverse_mass_matrix=-1.0),
        ValueError,
        "must be positive and finite",
    ),
    (
        "inverse mass with a NaN entry",
        lambda: ls.DiagonalMetric(jnp.array([1.0, jnp.nan])),
        ValueError,
        r"entries \[1\] are not",
    ),
    (
        "dense inverse mass not positive definite",
        lambda: _hmc(inverse_mass_matrix=jnp.array([[1.0, 2.0], [2.0, 1.0]])),
        ValueError,
        "positive definite",
    ),
    (
        "dense inverse mass not symmetric",
        lambda: ls.DenseMetric(jnp.array([[1.0, 0.5], [0.0, 1.0]])),
        ValueError,
        "symmetric",
    ),
    (
        "divergence_threshold=0",
        lambda: _hmc(divergence_threshold=0.0),
        ValueError,
        "divergence_threshold",
    ),
    (
        "num_integration_steps=0",
        lambda: _hmc(num_integration_steps=0),
        ValueError,
        "at least 1",
    ),
    (
        "num_integration_steps=2.5",
        lambda: _hmc(num_integration_steps=2.5),
        TypeError,
        "int",
    ),
    ("max_tree_depth=0", lambda: _nuts(max_tree_depth=0), ValueError, "at least 1"),
    ("max_tree_depth=31", lambda: _nuts(max_tree_depth=31), ValueError, "at most 30"),
    (
        "incompatible components (endpoint MH with NUTS)",
        lambda: ls.Sampler(
            _marginal(),
            ls.EndpointMH(),
            ls.NoUTurn(),
            step_size=0.1,
            inverse_mass_matrix=1.0,
        ),
        ls.IncompatibleComponentsError,
        "Multinomial",
    ),
    (
        "run_inference_algorithm(num_steps=0)",
        lambda: ls.run_inference_algorithm(
            jr.key(0), _hmc(), 0, initial_position=jnp.array(0.0)
        ),
        ValueError,
        "at least 1",
    ),
    (
        "initial_position (1 coordinate) vs a 3-entry inverse mass",
        lambda: _hmc(inverse_mass_matrix=jnp.ones(3)).init(jnp.array(0.0)),
        ValueError,
        "3 entries but the position has 1",
    ),
    (
        "initial_position (2 coordinates) vs a 3×3 inverse mass",
        lambda: _hmc(inverse_mass_matrix=jnp.eye(3)).init(
            {"a": jnp.array(0.0), "b": jnp.array(0.0)}
        ),
        ValueError,
        "3×3 but the position has 2",
    ),
    (
        "sample: initial_position vs the sampler's inverse mass",
        lambda: ls.sample(
            jr.key(0), _hmc(inverse_mass_matrix=jnp.ones(3)), jnp.array(0.0)
        ),
        ValueError,
        "3 entries",
    ),
    (
        "sample: num_chains=0",
        lambda: ls.sample(jr.key(0), _marginal(), jnp.array(0.0), num_chains=0),
        ValueError,
        "`num_chains` must be at least 1",
    ),
    (
        "sample: num_samples=0",
        lambda: ls.sample(jr.key(0), _marginal(), jnp.array(0.0), num_samples=0),
        ValueError,
        "`num_samples` must be at least 1",
    ),
]


@pytest.mark.parametrize(
    "call, error, match",
    [case[1:] for case in BAD_SETTINGS],
    ids=[case[0] for case in BAD_SETTINGS],
)
def test_bad_settings_raise_before_compiling(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_traced_settings_are_not_checked():
    # Inside `jit` (e.g. a step size adapted in the loop) values are unknown: the
    # checks must not try to read them.
    @eqx.filter_jit
    def build(step_size, inverse_mass):
        sampler = _hmc(step_size=step_size, inverse_mass_matrix=inverse_mass)
        return sampler.step_size * sampler.metric.velocity(jnp.ones(1))

    assert float(build(jnp.array(0.5), jnp.array(2.0))[0]) == 1.0


def test_float32_warns_and_explains():
    with pytest.warns(UserWarning, match=r"`theta_init` is float32.*jax_enable_x64"):
        marginal = ls.LaplaceMarginal(MODEL, jnp.zeros(N, jnp.float32))
    with pytest.warns(UserWarning, match=r"`phi` is float32.*ill-conditioned"):
        _marginal().check(jnp.array(0.3, jnp.float32))
    # float64 is quiet.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _marginal().check(jnp.array(0.3))
    del marginal


# --------------------------------------------------------------------------------
# The Laplace-validity warning, on a real run whose inner solve fails over half of
# the posterior: above `CUT` the log joint is convex in theta (H is not positive
# definite), so every evaluation there is a rejected, counted transition.
# --------------------------------------------------------------------------------

CUT = 0.7  # near the posterior median of log_sigma for this data (about 0.75)


def _broken_log_joint(theta, log_sigma):
    # For log_sigma > CUT the extra (1/σ² + 2) Σθ² turns the Hessian of the
    # negative log joint from (1/σ² + 1) I into -(1/σ² + 3) I: not positive
    # definite, and the log joint has no maximum in theta.
    extra = jnp.where(
        log_sigma > CUT, (jnp.exp(-2 * log_sigma) + 2.0) * jnp.sum(theta**2), 0.0
    )
    return MODEL(theta, log_sigma) + extra


@pytest.fixture(scope="module")
def broken_results():
    marginal = ls.LaplaceMarginal(_broken_log_joint, jnp.zeros(N))
    return ls.sample(
        jr.key(3),
        marginal,
        jnp.array(0.0),
        num_warmup=150,
        num_samples=150,
        num_chains=2,
        progress_bar=False,
    )


def test_failures_are_rejections_not_draws(broken_results):
    phi = np.asarray(broken_results.phi)
    assert np.all(np.isfinite(phi))
    # The chains never stand where the solve fails...
    assert phi.max() <= CUT
    # ...and they went there often: each such transition is counted.
    assert broken_results.diagnostics()["inner_failure_fraction"] > 0.05


def test_summary_says_laplace_is_in_doubt(broken_results):
    with pytest.warns(UserWarning) as record:
        broken_results.summary()
    text = "\n".join(str(w.message) for w in record)
    assert "Laplace approximation may not be valid" in text
    for fix in ("max_steps", "BFGS", "concave"):
        assert fix in text
    # In float64 the message does not ask for float64; in float32 it does.
    assert "jax_enable_x64" not in text
    low = eqx.tree_at(
        lambda r: r.phi, broken_results, broken_results.phi.astype(np.float32)
    )
    with pytest.warns(UserWarning, match="jax_enable_x64"):
        low.summary()


def test_few_failures_get_the_ordinary_warning(broken_results):
    # One failed transition out of 300 is a rejection, not a verdict on Laplace.
    stats = dict(broken_results.sample_stats)
    stats["inner_failed"] = np.zeros_like(stats["inner_failed"])
    stats["inner_failed"][0, 0] = 1
    few = eqx.tree_at(lambda r: r.sample_stats, broken_results, stats)
    with pytest.warns(UserWarning) as record:
        few.summary()
    text = "\n".join(str(w.message) for w in record)
    assert "1 transitions with a failed inner solve" in text
    assert "may not be valid" not in text


def test_seed_model_check_is_exact_reference():
    # The exact seed marginal at one point (guards the fixture's premise that the
    # model below CUT is the ordinary, exact one).
    marginal = ls.LaplaceMarginal(_broken_log_joint, jnp.zeros(N))
    value, aux = evaluate(marginal, jnp.array(0.2))
    sigma2 = jnp.exp(0.4)
    exact = (
        jstats.norm.logpdf(0.2, 0.0, 3.0)
        + jstats.norm.logpdf(MODEL.y, 0.0, jnp.sqrt(sigma2 + 1.0)).sum()
    )
    np.testing.assert_allclose(float(value), float(exact), rtol=1e-10)
    value, aux = evaluate(marginal, jnp.array(1.0))
    assert aux.result == ls.RESULTS.hessian_not_positive_definite
    assert value == -jnp.inf


# --------------------------------------------------------------------------------
# A NaN in the gradient only (the value is finite): the transition is rejected and
# counted, and a chain that meets it does not disturb the others under vmap.
# --------------------------------------------------------------------------------

GRAD_BARRIER = 1.1  # posterior mass of log_sigma above it is about 5%


@jax.custom_jvp
def _nan_slope(x):
    return jnp.zeros_like(x)


@_nan_slope.defjvp
def _nan_slope_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _nan_slope(x), jnp.where(x > GRAD_BARRIER, jnp.nan, 0.0) * t


def _nan_gradient_log_joint(theta, log_sigma):
    return MODEL(theta, log_sigma) + _nan_slope(log_sigma)


# Slow: two sampler compilations (~16 s on 2 cores).
@pytest.mark.slow
def test_nan_gradient_is_rejected_and_chains_are_independent():
    sampler = ls.laplace_nuts(
        _nan_gradient_log_joint,
        jnp.zeros(N),
        step_size=0.3,
        inverse_mass_matrix=1.0,
        hessian=ls.DiagonalHessian(),
    )
    value, grad = jax.value_and_grad(lambda p: sampler.marginal(p)[0])(jnp.array(1.5))
    assert np.isfinite(float(value)) and np.isnan(float(grad))

    def run(key, position):
        return ls.run_inference_algorithm(
            key, sampler, num_steps=300, initial_position=position
        )

    keys = jr.split(jr.key(11), 2)
    starts = jnp.array([0.9, 0.6])
    _, (states, infos) = eqx.filter_jit(eqx.filter_vmap(run))(keys, starts)
    divergent = np.asarray(infos.is_divergent)
    assert divergent.sum() > 5
    for leaf in jax.tree_util.tree_leaves(states):
        assert np.all(np.isfinite(leaf))
    assert float(states.position.max()) <= GRAD_BARRIER
    codes = np.asarray(infos.result._value)[divergent]
    assert np.any(codes == ls.RESULTS.nonfinite_log_density._value)
    # Each chain alone gives the same draws as inside the batch: a failure in one
    # chain changes nothing in another (only round-off from batched kernels).
    for i in range(2):
        _, (alone, _) = eqx.filter_jit(run)(keys[i], starts[i])
        np.testing.assert_allclose(
            states.position[i], alone.position, rtol=1e-9, atol=1e-12
        )
