"""Integrators and metrics: reversibility, order of the energy error, warm starts."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import lapsample as ls
from lapsample._misc import TreeRaveller

from .helpers import (
    CORRELATED_COV,
    correlated_gaussian,
    seed_data,
    SEED_N,
    SeedModel,
)


INTEGRATORS = [ls.Leapfrog(), ls.McLachlan()]
METRICS = [
    ls.DiagonalMetric(jnp.array([1.0, 0.5])),
    ls.DenseMetric(jnp.array([[1.0, 0.3], [0.3, 0.5]])),
]


def _flat(marginal, position):
    return ls.FlatLogDensity(marginal, TreeRaveller(position))


@eqx.filter_jit
def _trajectory(integrator, logdensity, metric, point, step_size, num_steps):
    """Integrate `num_steps` steps; return the end point and the largest energy error
    along the way."""

    def energy(p):
        return -p.logdensity + metric.kinetic_energy(p.momentum)

    energy0 = energy(point)

    def body(_, carry):
        p, worst = carry
        p, _ = integrator.step(logdensity, metric, p, step_size)
        return p, jnp.maximum(worst, jnp.abs(energy(p) - energy0))

    return jax.lax.fori_loop(0, num_steps, body, (point, jnp.zeros(())))


@eqx.filter_jit
def _start(logdensity, metric, key, position):
    momentum = metric.sample_momentum(key, position)
    return logdensity.point(position, momentum, None)


def _negate(point):
    return eqx.tree_at(lambda p: p.momentum, point, -point.momentum)


@pytest.mark.parametrize("integrator", INTEGRATORS, ids=lambda i: type(i).__name__)
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: type(m).__name__)
def test_reversible_gaussian(integrator, metric):
    logdensity = _flat(ls.PlainDensity(correlated_gaussian()), jnp.zeros(2))
    start = _start(logdensity, metric, jr.key(0), jnp.array([0.3, -1.0]))
    step = jnp.asarray(0.2)
    end, _ = _trajectory(integrator, logdensity, metric, start, step, 25)
    assert not np.allclose(end.position, start.position, atol=1e-2)
    back, _ = _trajectory(integrator, logdensity, metric, _negate(end), step, 25)
    back = _negate(back)
    np.testing.assert_allclose(back.position, start.position, rtol=0, atol=1e-10)
    np.testing.assert_allclose(back.momentum, start.momentum, rtol=0, atol=1e-10)
    np.testing.assert_allclose(back.logdensity, start.logdensity, rtol=0, atol=1e-10)
    # Backwards in time is the same as negating the momentum twice.
    back2, _ = _trajectory(integrator, logdensity, metric, end, -step, 25)
    np.testing.assert_allclose(back2.position, start.position, rtol=0, atol=1e-10)


@pytest.mark.parametrize("integrator", INTEGRATORS, ids=lambda i: type(i).__name__)
def test_reversible_laplace(integrator):
    # Each evaluation is warm-started from the previous theta*, so the log density
    # depends on the path only through the inner solver's error (Newton to
    # eps**0.75, then one more quadratic step): reversibility holds to ~1e-10.
    marginal = ls.LaplaceMarginal(SeedModel(seed_data()), jnp.zeros(SEED_N))
    logdensity = _flat(marginal, jnp.zeros(()))
    metric = ls.DiagonalMetric(jnp.ones(1))
    start = _start(logdensity, metric, jr.key(1), jnp.array([0.6]))
    step = jnp.asarray(0.05)
    end, _ = _trajectory(integrator, logdensity, metric, start, step, 12)
    assert end.aux.result == ls.RESULTS.successful
    back, _ = _trajectory(integrator, logdensity, metric, _negate(end), step, 12)
    np.testing.assert_allclose(back.position, start.position, rtol=0, atol=1e-10)
    np.testing.assert_allclose(-back.momentum, start.momentum, rtol=0, atol=1e-10)
    # The warm-started theta* at the end is the mode at the end's position.
    _, _, cold = eqx.filter_jit(logdensity)(end.position, None)
    np.testing.assert_allclose(end.aux.theta_star, cold.theta_star, atol=1e-9)


@pytest.mark.parametrize("integrator", INTEGRATORS, ids=lambda i: type(i).__name__)
@pytest.mark.parametrize("metric", METRICS, ids=lambda m: type(m).__name__)
def test_energy_error_second_order(integrator, metric):
    # Over a fixed time T, a second-order integrator's energy error is C h² + O(h⁴),
    # so halving h divides the largest error along the trajectory by about 4.
    logdensity = _flat(ls.PlainDensity(correlated_gaussian()), jnp.zeros(2))
    start = _start(logdensity, metric, jr.key(2), jnp.array([0.5, -1.5]))
    total_time = 2.0
    errors = []
    for h in (0.04, 0.02, 0.01):
        num_steps = jnp.asarray(round(total_time / h))
        _, worst = _trajectory(
            integrator, logdensity, metric, start, jnp.asarray(h), num_steps
        )
        errors.append(float(worst))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 3.6) and np.all(ratios < 4.4), (errors, ratios)


def test_mclachlan_beats_leapfrog_at_equal_cost():
    # McLachlan's step costs two gradients; its error constant is much smaller than
    # that of two leapfrog steps of half the size (Blanes, Casas & Sanz-Serna 2014).
    metric = METRICS[0]
    logdensity = _flat(ls.PlainDensity(correlated_gaussian()), jnp.zeros(2))
    start = _start(logdensity, metric, jr.key(3), jnp.array([0.5, -1.5]))
    _, leapfrog = _trajectory(
        ls.Leapfrog(), logdensity, metric, start, jnp.asarray(0.05), jnp.asarray(40)
    )
    _, mclachlan = _trajectory(
        ls.McLachlan(), logdensity, metric, start, jnp.asarray(0.1), jnp.asarray(20)
    )
    assert float(mclachlan) < 0.5 * float(leapfrog)


def test_num_evaluations():
    assert ls.Leapfrog().num_evaluations == 1
    assert ls.McLachlan().num_evaluations == 2
    assert sum(ls.McLachlan().coefficients[::2]) == pytest.approx(1.0)
    assert sum(ls.McLachlan().coefficients[1::2]) == pytest.approx(1.0)


@eqx.filter_jit
def _step(integrator, logdensity, metric, point, step_size):
    return integrator.step(logdensity, metric, point, step_size)


def test_failed_evaluation_is_marked():
    # A NaN log density (here beyond x = 1) gives -inf, a zero gradient and a
    # failure code, so the step can only be rejected.
    def logp(x):
        return jnp.where(x[0] > 1.0, jnp.nan, -0.5 * jnp.sum(x**2))

    logdensity = _flat(ls.PlainDensity(logp), jnp.zeros(1))
    metric = ls.DiagonalMetric(1.0)
    point = eqx.filter_jit(logdensity.point)(jnp.array([0.9]), jnp.array([3.0]), None)
    for integrator in INTEGRATORS:
        new, failures = _step(integrator, logdensity, metric, point, jnp.asarray(0.2))
        assert int(failures) >= 1
        assert new.logdensity == -jnp.inf
        assert np.all(np.isfinite(new.logdensity_grad))
        assert new.aux.result == ls.RESULTS.nonfinite_log_density


# --------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------


def test_metric_momentum_covariance():
    # p ~ N(0, M) with M = inverse_mass_matrix⁻¹; 40 000 draws estimate each entry of
    # the covariance to within ~1% (sd of a sample covariance entry ≈ scale/√N ≈
    # 0.005·scale), so 5% is a > 8-sigma margin.
    inverse_mass = np.array([[2.0, 0.6], [0.6, 0.5]])
    mass = np.linalg.inv(inverse_mass)
    metric = ls.DenseMetric(inverse_mass)
    keys = jr.split(jr.key(4), 40_000)
    draws = jax.jit(jax.vmap(lambda k: metric.sample_momentum(k, jnp.zeros(2))))(keys)
    np.testing.assert_allclose(np.cov(draws.T), mass, rtol=0.05, atol=0.02)
    diagonal = ls.DiagonalMetric(jnp.array([4.0, 0.25]))
    draws = jax.jit(jax.vmap(lambda k: diagonal.sample_momentum(k, jnp.zeros(2))))(keys)
    np.testing.assert_allclose(np.var(draws, 0), [0.25, 4.0], rtol=0.05)


def test_metric_dispatch_and_validation():
    assert isinstance(ls.metric_from_inverse_mass_matrix(1.0), ls.DiagonalMetric)
    assert isinstance(
        ls.metric_from_inverse_mass_matrix(jnp.ones(3)), ls.DiagonalMetric
    )
    assert isinstance(ls.metric_from_inverse_mass_matrix(jnp.eye(3)), ls.DenseMetric)
    with pytest.raises(ValueError, match="scalar, a vector"):
        ls.metric_from_inverse_mass_matrix(jnp.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="square"):
        ls.DenseMetric(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="3 entries"):
        ls.DiagonalMetric(jnp.ones(3)).check_size(2)
    p = jnp.array([1.0, 2.0])
    dense = ls.DenseMetric(jnp.array([[2.0, 0.5], [0.5, 1.0]]))
    np.testing.assert_allclose(dense.velocity(p), [3.0, 2.5])
    np.testing.assert_allclose(dense.kinetic_energy(p), 0.5 * (3.0 + 5.0))


def test_metric_is_turning():
    metric = ls.DiagonalMetric(1.0)
    forward = jnp.array([1.0, 0.0])
    assert not metric.is_turning(forward, forward, 3 * forward)
    assert metric.is_turning(forward, -forward, 0.5 * forward)
    assert metric.is_turning(-forward, forward, 0.5 * forward)


def test_correlated_covariance_is_what_helpers_say():
    # Guard for the other modules: the target covariance used by the NUTS check.
    np.testing.assert_allclose(
        np.linalg.inv(np.asarray(correlated_gaussian().precision)), CORRELATED_COV
    )
