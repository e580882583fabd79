"""The predicted warm start along a trajectory (`lapsample.WarmStart`): the secant
prediction the integrators form, the latent-Gaussian Newton's choice between it and
the previous mode, and the Newton steps it saves on a leapfrog trajectory."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls
from lapsample._hamiltonian import Hamiltonian, initial_point
from lapsample._metric import metric_from_inverse_mass_matrix
from lapsample._misc import TreeRaveller
from lapsample._phase_space import FlatLogDensity


N = 60
_X = jnp.linspace(0.0, 10.0, N)
_Y = jnp.round(jnp.exp(jnp.sin(_X) + 0.8))


def _cov(phi):
    amp, length = jnp.exp(phi[0]), jnp.exp(phi[1])
    sq = (_X[:, None] - _X[None, :]) ** 2
    return amp**2 * jnp.exp(-0.5 * sq / length**2) + 1e-4 * jnp.eye(N)


def _prec_band(phi):
    # Stationary AR(1): coefficient tanh(phi[1]), innovation sd exp(phi[0]).
    r, s2 = jnp.tanh(phi[1]), jnp.exp(2 * phi[0])
    diag = jnp.full(N, 1 + r**2).at[0].set(1.0).at[-1].set(1.0) / s2
    return jnp.stack([diag, jnp.full(N, -r / s2)])


def _log_prior(phi):
    return jstats.norm.logpdf(phi, 0.0, 1.0).sum()


def _gp_log_joint(theta, phi):
    """The covariance form's model for `LaplaceMarginal` (dense, Newton)."""
    chol = jnp.linalg.cholesky(_cov(phi))
    white = jax.scipy.linalg.solve_triangular(chol, theta - 0.5, lower=True)
    return (
        _log_prior(phi)
        - 0.5 * jnp.dot(white, white)
        - jnp.sum(jnp.log(jnp.diagonal(chol)))
        + ls.PoissonLog(_Y).log_density(theta, None)
    )


def _marginal(form, xtol=None, predictor=True):
    if form == "generic":
        return ls.LaplaceMarginal(
            _gp_log_joint,
            jnp.zeros(N),
            inner_solver=ls.Newton(xtol=xtol),
            hessian=ls.DenseHessian(),
            predictor=predictor,
        )
    shape = {"covariance": _cov} if form == "covariance" else {"precision": _prec_band}
    return ls.LatentGaussianMarginal(
        ls.PoissonLog(_Y),
        **shape,
        mean=lambda phi: jnp.full(N, 0.5),
        log_prior=_log_prior,
        xtol=xtol,
        predictor=predictor,
    )


PHI = jnp.array([0.1, 0.5])
FORMS = ["covariance", "precision", "generic"]


@eqx.filter_jit
def _value_and_grad(marginal, phi, guess):
    return jax.value_and_grad(marginal, has_aux=True)(phi, guess)


@pytest.mark.parametrize("form", FORMS)
def test_newton_starts_from_the_better_of_the_pair(form):
    marginal = _marginal(form, xtol=1e-13)
    new = PHI + jnp.array([0.06, -0.05])
    previous = _value_and_grad(marginal, PHI, None)[0][1].theta_star
    (value, aux), grad = _value_and_grad(marginal, new, previous)
    mode = aux.theta_star
    # The exact mode as the prediction: Newton starts there and only confirms it.
    (value_p, aux_p), grad_p = _value_and_grad(
        marginal, new, ls.WarmStart(previous, mode)
    )
    assert aux_p.result == ls.RESULTS.successful
    assert int(aux_p.num_steps) <= 1 < int(aux.num_steps)
    np.testing.assert_allclose(value_p, value, rtol=1e-13)
    np.testing.assert_allclose(grad_p, grad, rtol=1e-9)
    np.testing.assert_allclose(aux_p.theta_star, mode, atol=1e-10)
    # A wild prediction is not taken: the solve is the previous mode's, step for
    # step.
    (value_w, aux_w), grad_w = _value_and_grad(
        marginal, new, ls.WarmStart(previous, previous + 30.0)
    )
    assert int(aux_w.num_steps) == int(aux.num_steps)
    np.testing.assert_array_equal(aux_w.theta_star, mode)
    np.testing.assert_array_equal(value_w, value)
    np.testing.assert_array_equal(grad_w, grad)


def test_secant_prediction_from_the_trail():
    raveller = TreeRaveller(PHI)
    logdensity = FlatLogDensity(_marginal("covariance"), raveller)
    theta_before, theta_now = jnp.linspace(0.0, 1.0, N), jnp.linspace(1.0, 3.0, N)
    trail = logdensity.trail(jnp.array([0.0, 0.0]), theta_before)
    assert isinstance(trail, ls.Trail)
    # The new move is twice the last one along it, plus an orthogonal part: the
    # mode's last change is extrapolated by the projection, 2.
    guess = logdensity.warm_start(
        trail, jnp.array([1.0, 0.0]), theta_now, jnp.array([3.0, 5.0])
    )
    assert isinstance(guess, ls.WarmStart)
    np.testing.assert_array_equal(guess.previous, theta_now)
    np.testing.assert_allclose(
        guess.predicted, theta_now + 2.0 * (theta_now - theta_before), rtol=1e-15
    )
    # No last move (a trajectory's first step): the prediction is the previous
    # mode.
    here = jnp.array([1.0, 0.0])
    first = logdensity.warm_start(
        logdensity.trail(here, theta_now), here, theta_now, jnp.array([2.0, 1.0])
    )
    np.testing.assert_array_equal(first.predicted, theta_now)
    # Marginals that take one theta_guess get the previous mode alone.
    for marginal in (
        _marginal("covariance", predictor=False),
        _marginal("generic", predictor=False),
        # An inner solver that takes one start.
        ls.LaplaceMarginal(_gp_log_joint, jnp.zeros(N), inner_solver=ls.BFGS()),
    ):
        assert not marginal.takes_warm_start_pair
        plain = FlatLogDensity(marginal, raveller)
        assert plain.trail(here, theta_now) is None
        assert plain.warm_start(None, here, theta_now, 2 * here) is theta_now


@eqx.filter_jit
def _trajectory(marginal, momentum, step_size, num_steps):
    """One leapfrog trajectory through lapsample's own integrator: the log density
    and Newton steps of each evaluation."""
    logdensity = FlatLogDensity(marginal, TreeRaveller(PHI))
    value, grad, aux = logdensity(PHI, None)
    metric = metric_from_inverse_mass_matrix(jnp.ones(2), PHI)
    hamiltonian = Hamiltonian(logdensity, metric, ls.Leapfrog(), step_size)
    point = initial_point(
        PHI, momentum, value, grad, aux.theta_star,
        logdensity.trail(PHI, aux.theta_star),
    )  # fmt: skip

    def body(point, _):
        point, _ = hamiltonian.step(point, jnp.ones((), jnp.int32))
        return point, (point.logdensity, point.aux.num_steps, point.aux.result)

    return jax.lax.scan(body, point, None, length=num_steps)[1]


@pytest.mark.parametrize(
    "form, step_size", [("covariance", 0.1), ("precision", 0.05), ("generic", 0.1)]
)
def test_prediction_saves_newton_steps_along_a_trajectory(form, step_size):
    # The same trajectory with and without the prediction: each evaluation's log
    # density within Newton's tolerance of the other's (the default xtol leaves
    # the mode up to about 1e-8 off, differently from different starts: the
    # log-determinant moves by first order in that, here by at most 1e-7), and
    # fewer Newton steps in all (when written: 29 against 25 in the covariance form
    # and the generic marginal, 34 against 28 in the precision form).
    momentum = jnp.array([1.0, -0.8])
    step = jnp.asarray(step_size)
    with_prediction = _trajectory(_marginal(form), momentum, step, 12)
    without = _trajectory(_marginal(form, predictor=False), momentum, step, 12)
    assert np.all(with_prediction[2]._value == ls.RESULTS.successful._value)
    np.testing.assert_allclose(with_prediction[0], without[0], rtol=0, atol=1e-6)
    steps_with, steps_without = int(with_prediction[1].sum()), int(without[1].sum())
    assert steps_with < steps_without, (steps_with, steps_without)


def test_sampler_state_round_trip_with_the_trail():
    # A sampler's step carries the trail through the whole trajectory (NUTS
    # stores phase points in its tree) and returns an ordinary state.
    marginal = _marginal("covariance")
    sampler = ls.Sampler(
        marginal,
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=0.05,
        inverse_mass_matrix=jnp.ones(2),
    )
    state = sampler.init(PHI)
    key = jax.random.key(0)
    step = eqx.filter_jit(sampler.step)
    for _ in range(3):
        key, sub = jax.random.split(key)
        state, info = step(sub, state)
        assert int(info.inner_failures) == 0
        assert int(info.num_integration_steps) >= 3
    assert state.theta_star.shape == (N,)
    # The state's mode is the mode at its position (not a trail's).
    mode = _value_and_grad(marginal, state.position, None)[0][1].theta_star
    np.testing.assert_allclose(state.theta_star, mode, atol=1e-6)


class _PlainLeapfrog(ls.AbstractIntegrator):
    """A user's integrator written before trails: each evaluation from the
    previous mode alone, the point returned without a trail."""

    @property
    def num_evaluations(self):
        return 1

    def step(self, logdensity, metric, point, step_size):
        momentum = point.momentum + 0.5 * step_size * point.logdensity_grad
        position = point.position + step_size * metric.velocity(momentum)
        value, grad, aux = logdensity(position, point.aux.theta_star)
        momentum = momentum + 0.5 * step_size * grad
        failed = (aux.result != ls.RESULTS.successful).astype(jnp.int32)
        return ls.PhasePoint(position, momentum, value, grad, aux), failed


def test_an_integrator_without_trails_still_runs_no_u_turn():
    # NUTS keeps phase points in a loop's carry, whose structure must not change:
    # the Hamiltonian gives a trail-less point its starting point as the trail.
    sampler = ls.Sampler(
        _marginal("covariance"),
        ls.Multinomial(),
        ls.NoUTurn(),
        integrator=_PlainLeapfrog(),
        step_size=0.05,
        inverse_mass_matrix=jnp.ones(2),
    )
    state, info = eqx.filter_jit(sampler.step)(jax.random.key(1), sampler.init(PHI))
    assert int(info.num_integration_steps) >= 3
    assert int(info.inner_failures) == 0


def test_trajectory_with_predictions_is_reversible():
    # A prediction changes only where Newton starts, so the log density moves
    # within Newton's tolerance and the leapfrog map stays reversible to it: 12
    # steps forward, the momentum negated, 12 back. (Going back, the projection
    # of each move on the last is -1 and the prediction is the mode returned to.)
    marginal = _marginal("covariance", xtol=1e-12)
    logdensity = FlatLogDensity(marginal, TreeRaveller(PHI))
    metric = metric_from_inverse_mass_matrix(jnp.ones(2), PHI)
    hamiltonian = Hamiltonian(logdensity, metric, ls.Leapfrog(), jnp.asarray(0.1))

    @eqx.filter_jit
    def run(point):
        def body(point, _):
            point, _ = hamiltonian.step(point, jnp.ones((), jnp.int32))
            return point, point.aux.num_steps

        return jax.lax.scan(body, point, None, length=12)

    start = eqx.filter_jit(logdensity.point)(PHI, jnp.array([1.0, -0.8]), None)
    end, steps = run(start)
    assert int(steps.sum()) > 0
    assert not np.allclose(end.position, start.position, atol=1e-2)
    back, _ = run(eqx.tree_at(lambda p: p.momentum, end, -end.momentum))
    np.testing.assert_allclose(back.position, start.position, rtol=0, atol=1e-10)
    np.testing.assert_allclose(-back.momentum, start.momentum, rtol=0, atol=1e-10)
    np.testing.assert_allclose(back.logdensity, start.logdensity, rtol=0, atol=1e-9)
