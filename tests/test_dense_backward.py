"""The dense Laplace marginal's rebuilt gradient: the blocked inverse of the Cholesky
factor, the theta-only reverse pass through the log-determinant surrogate and the
single pass over the phi-terms, checked against independent oracles and finite
differences at d = 20 and d = 300, and the Newton loop's failed-line-search path."""

import math
import re

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np
import pytest

import lapsample as ls
from lapsample._linalg import dense as dense_kernels
from lapsample._linalg.dense import gram_of_lower_inverse, inverse_lower

from .helpers import central_difference_grad, evaluate, oracle_log_marginal


# --------------------------------------------------------------------------------
# The blocked inverse
# --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 64, 65, 200, 300])
def test_inverse_lower_matches_triangular_solve(n):
    # 64 is one leaf; 65 and 200 recurse with a ragged last block; at 300 both
    # halves of the first split (128 and 172) are products by triangles.
    a = jr.normal(jr.key(n), (n, n))
    lower = jnp.linalg.cholesky(a @ a.T / n + jnp.eye(n))
    # Garbage above the diagonal must be ignored, as a Cholesky factor's is.
    lower_dirty = lower + jnp.triu(jnp.ones((n, n)), 1)
    inverse = jax.jit(inverse_lower)(lower_dirty)
    expected = jsl.solve_triangular(lower, jnp.eye(n), lower=True)
    np.testing.assert_allclose(inverse, expected, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(jnp.triu(inverse, 1), 0.0)


@pytest.mark.parametrize("m, n", [(7, 64), (7, 65), (130, 200), (1, 129)])
def test_products_by_a_triangle_match_full_products(m, n):
    # The zero upper-right block of the triangle is skipped; the result must be
    # the full product's (a triangle of one leaf, one just over a leaf, and a
    # ragged split).
    t = jnp.tril(jr.normal(jr.key(n), (n, n)))
    x = jr.normal(jr.key(m), (m, n))
    left = jax.jit(dense_kernels._times_lower, static_argnums=2)(x, t, 64)
    np.testing.assert_allclose(left, x @ t, rtol=0, atol=1e-12)
    right = jax.jit(dense_kernels._lower_times, static_argnums=2)(t, x.T, 64)
    np.testing.assert_allclose(right, t @ x.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("blocked", [True, False])
@pytest.mark.parametrize("n", [1, 65, 200, 1100])
def test_gram_of_lower_inverse_is_the_inverse(n, blocked, monkeypatch):
    # 1100 > 16 leaves of 64: the leaves grow to 128. `blocked=False` is the path
    # taken off the CPU (solves against the identity).
    monkeypatch.setattr(dense_kernels, "_blocked", lambda: blocked)
    a = jr.normal(jr.key(n), (n, n))
    lower = jnp.linalg.cholesky(a @ a.T / n + jnp.eye(n))
    lower_dirty = lower + jnp.triu(jnp.ones((n, n)), 1)
    expected = jsl.cho_solve((lower, True), jnp.eye(n))
    np.testing.assert_allclose(
        jax.jit(gram_of_lower_inverse)(lower_dirty), expected, rtol=0, atol=1e-12
    )
    inverse = jax.jit(inverse_lower)(lower_dirty)
    np.testing.assert_allclose(inverse @ lower, jnp.eye(n), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------
# Models with a dense Hessian and several hyperparameters (a dict, so the phi
# PyTree is unravelled): theta ~ N(0, K(phi)) with a squared-exponential kernel
# plus a 0.1 nugget (cond(K) stays modest, so the oracles agree closely), and
# either a Gaussian likelihood through a dense design (Laplace exact, theta*
# closed-form) or a Poisson one (third derivatives in theta).
# --------------------------------------------------------------------------------


def _kernel(x, phi):
    sq = (x[:, None] - x[None, :]) ** 2
    k = jnp.exp(2 * phi["log_amp"]) * jnp.exp(-0.5 * sq / jnp.exp(2 * phi["log_len"]))
    return k + 0.1 * jnp.eye(x.shape[0])


def _log_prior(x, theta, phi):
    chol = jnp.linalg.cholesky(_kernel(x, phi))
    white = jsl.solve_triangular(chol, theta, lower=True)
    d = theta.shape[0]
    return (
        -0.5 * jnp.dot(white, white)
        - jnp.sum(jnp.log(jnp.diagonal(chol)))
        - 0.5 * d * math.log(2 * math.pi)
        - 0.5 * sum(jnp.square(v) for v in jax.tree_util.tree_leaves(phi))
    )


class DenseGaussian(eqx.Module):
    """`y ~ N(B theta, s² I)`: H = K⁻¹ + BᵀB / s² is dense and depends on phi."""

    x: jax.Array
    design: jax.Array
    y: jax.Array

    def __call__(self, theta, phi):
        resid = self.y - self.design @ theta
        m = self.y.shape[0]
        noise = jnp.exp(2 * phi["log_noise"])
        log_lik = -0.5 * jnp.dot(resid, resid) / noise - 0.5 * m * jnp.log(
            2 * math.pi * noise
        )
        return _log_prior(self.x, theta, phi) + log_lik


class DensePoisson(eqx.Module):
    x: jax.Array
    y: jax.Array

    def __call__(self, theta, phi):
        log_lik = jnp.sum(self.y * theta - jnp.exp(theta))
        return _log_prior(self.x, theta, phi) + log_lik


PHI = {"log_amp": jnp.array(0.2), "log_len": jnp.array(-0.4), "log_noise": -0.3}
PHI = jax.tree_util.tree_map(jnp.asarray, PHI)


def _dense_gaussian(d):
    k1, k2 = jr.split(jr.key(d))
    design = jr.normal(k1, (d // 2, d)) / math.sqrt(d)
    return DenseGaussian(
        x=jnp.linspace(0, 3, d), design=design, y=jr.normal(k2, (d // 2,))
    )


def _dense_poisson(d):
    x = jnp.linspace(0, 3, d)
    y = jr.poisson(jr.key(d), 2.0 * jnp.ones(d)).astype(jnp.float64)
    return DensePoisson(x=x, y=y)


def _exact_gaussian(model, phi):
    """The Laplace (here exact) marginal by a route that shares nothing with
    lapsample's: H built from an explicit inverse of K, theta* by a dense solve,
    `slogdet`, all differentiated by plain reverse-mode AD."""
    noise = jnp.exp(2 * phi["log_noise"])
    b = model.design
    h = jnp.linalg.inv(_kernel(model.x, phi)) + b.T @ b / noise
    theta = jnp.linalg.solve(h, b.T @ model.y / noise)
    d = theta.shape[0]
    value = (
        model(theta, phi)
        - 0.5 * jnp.linalg.slogdet(h)[1]
        + 0.5 * d * math.log(2 * math.pi)
    )
    return value, theta


def _weights(d):
    return jnp.cos(jnp.arange(d, dtype=jnp.float64))


@eqx.filter_jit
def _objective_and_grad(marginal, phi, theta_guess, weights):
    """The marginal plus `⟨w, theta*⟩` (a cotangent on theta*), and its gradient."""

    def objective(p):
        value, aux = marginal(p, theta_guess)
        return value + jnp.dot(weights, aux.theta_star), (value, aux)

    return jax.value_and_grad(objective, has_aux=True)(phi)


@eqx.filter_jit
def _exact_objective_and_grad(model, phi, weights):
    def objective(p):
        value, theta = _exact_gaussian(model, p)
        return value + jnp.dot(weights, theta), value

    return jax.value_and_grad(objective, has_aux=True)(phi)


def _flat(tree):
    return np.asarray(jax.flatten_util.ravel_pytree(tree)[0])


@pytest.fixture(scope="module", params=[20, 300])
def gaussian_case(request):
    d = request.param
    model = _dense_gaussian(d)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(d), hessian=ls.DenseHessian())
    weights = _weights(d)
    (objective, (value, aux)), grad = _objective_and_grad(
        marginal, PHI, jnp.zeros(d), weights
    )
    assert aux.result == ls.RESULTS.successful
    return d, model, marginal, value, aux, _flat(grad), weights


def test_dense_gaussian_value_and_grads_match_closed_form(gaussian_case):
    d, model, marginal, value, aux, grad, weights = gaussian_case
    (_, exact_value), exact_grad = _exact_objective_and_grad(model, PHI, weights)
    exact_theta = _exact_gaussian(model, PHI)[1]
    # Both are exact up to rounding; H has cond ~1e3 here, so 1e-10 leaves room
    # for the different routes (explicit inverse and slogdet against Cholesky).
    np.testing.assert_allclose(aux.theta_star, exact_theta, rtol=0, atol=1e-10)
    np.testing.assert_allclose(value, exact_value, rtol=1e-12)
    # The gradient includes the theta* cotangent (`⟨w, dtheta*/dphi⟩`), so the
    # adjoint solve's right-hand side with `theta_bar` is checked too.
    np.testing.assert_allclose(grad, _flat(exact_grad), rtol=1e-10, atol=1e-10)


def test_dense_gaussian_grad_matches_finite_differences(gaussian_case):
    d, model, marginal, value, aux, grad, weights = gaussian_case
    _, unravel = jax.flatten_util.ravel_pytree(PHI)

    def objective(flat):
        v, a = evaluate(marginal, unravel(flat), aux.theta_star)
        return v + jnp.dot(weights, a.theta_star)

    fd = central_difference_grad(objective, _flat(PHI), h=1e-5)
    # h = 1e-5: truncation ~h² and rounding ~eps·|objective|/h ≈ 1e-9 at d = 300.
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module", params=[20, 300])
def poisson_case(request):
    d = request.param
    model = _dense_poisson(d)
    # A tight tolerance, so that theta* is converged to rounding and the
    # comparisons below measure the gradient, not the solve.
    marginal = ls.LaplaceMarginal(
        model, jnp.zeros(d), ls.Newton(rtol=1e-16, atol=1e-16), ls.DenseHessian()
    )
    (value, aux), grad = jax.jit(
        lambda p: jax.value_and_grad(marginal, has_aux=True)(p)
    )(PHI)
    assert aux.result == ls.RESULTS.successful
    return d, model, marginal, value, aux, _flat(grad)


def test_dense_poisson_against_oracle(poisson_case):
    d, model, marginal, value, aux, grad = poisson_case
    value_oracle, grad_oracle = jax.jit(
        jax.value_and_grad(lambda p: oracle_log_marginal(model, aux.theta_star, p))
    )(PHI)
    # log det of a 300 × 300 Hessian by two routes: rounding of ~d·eps relative.
    np.testing.assert_allclose(value, value_oracle, rtol=1e-11)
    # The oracle differentiates jax.hessian and an Optimistix implicit solve by
    # plain AD; the routes differ by rounding amplified by cond(H) ~1e2 here.
    np.testing.assert_allclose(grad, _flat(grad_oracle), rtol=1e-9, atol=1e-9)


def test_dense_poisson_grad_matches_finite_differences(poisson_case):
    d, model, marginal, value, aux, grad = poisson_case
    _, unravel = jax.flatten_util.ravel_pytree(PHI)

    def objective(flat):
        return evaluate(marginal, unravel(flat), aux.theta_star)[0]

    fd = central_difference_grad(objective, _flat(PHI), h=1e-5)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------
# Newton: a failed line search keeps the last iterate and stops
# --------------------------------------------------------------------------------


class _Overflowing(eqx.Module):
    """`y·theta - exp(theta)` with a weak prior: from theta = -10 the full Newton
    step jumps to ~5e10, where `exp` overflows, so the line search must shrink it."""

    def __call__(self, theta, phi):
        return jnp.sum(5.0 * theta - jnp.exp(theta)) - 0.5 * jnp.sum(
            theta**2
        ) * jnp.exp(-2 * phi)


def test_failed_line_search_keeps_the_last_iterate():
    theta0 = -10.0 * jnp.ones(4)
    phi = jnp.array(1.0)
    no_backtracking = ls.LaplaceMarginal(
        _Overflowing(), theta0, ls.Newton(max_backtracks=0), ls.DenseHessian()
    )
    (value, aux), grad = jax.jit(
        lambda p: jax.value_and_grad(no_backtracking, has_aux=True)(p)
    )(phi)
    assert aux.result == ls.RESULTS.inner_solve_failed
    assert int(aux.num_steps) == 0
    np.testing.assert_array_equal(aux.theta_star, theta0)
    assert value == -jnp.inf
    assert grad == 0.0
    # With backtracking the same start converges.
    backtracking = eqx.tree_at(
        lambda m: m.inner_solver, no_backtracking, ls.Newton(max_backtracks=60)
    )
    value, aux = evaluate(backtracking, phi)
    assert aux.result == ls.RESULTS.successful
    assert np.isfinite(value)


# --------------------------------------------------------------------------------
# The phi-terms of the gradient in one trace of the model
# --------------------------------------------------------------------------------


def _counted_reverse_passes():
    """An identity on phi whose reverse rule counts the times it is traced: one
    count per reverse pass through the model's phi-path."""
    count = [0]

    @jax.custom_vjp
    def identity(p):
        return p

    def fwd(p):
        return p, None

    def bwd(_, g):
        count[0] += 1
        return (g,)

    identity.defvjp(fwd, bwd)
    return identity, count


@pytest.mark.parametrize("hessian", [ls.DenseHessian(), ls.LineaxHessian()])
def test_dense_gradient_reverses_the_phi_path_once(hessian):
    # The model's phi-path (here K(phi) and its Cholesky factor) is the costly
    # part of a GP's backward pass. The value, the slope along the adjoint u and
    # the log-determinant surrogate come from one trace, so it is reversed once
    # (from separate traces: twice, each with its own triangular solves).
    identity, count = _counted_reverse_passes()
    base = _dense_poisson(20)

    def log_joint(theta, phi):
        return base(theta, identity(phi))

    marginal = ls.LaplaceMarginal(log_joint, jnp.zeros(20), hessian=hessian)
    (value, aux), grad = jax.jit(
        lambda p: jax.value_and_grad(marginal, has_aux=True)(p)
    )(PHI)
    assert aux.result == ls.RESULTS.successful
    assert count[0] == 1
    assert np.all(np.isfinite(_flat(grad)))


@pytest.mark.parametrize("hessian", [ls.DenseHessian(), ls.LineaxHessian()])
def test_one_trace_terms_match_separate_traces(hessian):
    # The registered implementations of `envelope_terms` (Cholesky and Lineax
    # factors) against the default (a value_and_grad trace plus the surrogate's
    # own), in value and in phi-gradient, at a tight mode of the d = 300 Poisson
    # model and along a u that is not small (in the marginal, u carries the
    # log-determinant's theta-gradient and any cotangent on theta*).
    from lapsample._hessian.base import envelope_terms

    d = 300
    model = _dense_poisson(d)
    marginal = ls.LaplaceMarginal(
        model, jnp.zeros(d), ls.Newton(rtol=1e-16, atol=1e-16, xtol=1e-14)
    )
    _, aux = evaluate(marginal, PHI)
    theta = aux.theta_star
    phi_flat, unravel = jax.flatten_util.ravel_pytree(PHI)

    def fn(t, p):
        return -model(t, p)

    factor = hessian.factorise(fn, theta, PHI)
    u = jnp.sin(jnp.arange(d, dtype=jnp.float64))
    default = envelope_terms.dispatch(object)

    def combined(implementation):
        def terms(p_flat):
            value, slope, trace_term = implementation(
                factor, hessian, fn, theta, unravel(p_flat), u
            )
            return jnp.stack([value, slope, trace_term])

        return jax.jit(lambda p: (terms(p), jax.jacrev(terms)(p)))(phi_flat)

    (one, one_jac), (two, two_jac) = combined(envelope_terms), combined(default)
    # cond(H) ~1e2: the routes differ by rounding; the slope (≈ 0 at the mode:
    # ∇θ fn vanishes) is compared on the scale of |u|·|∇θ fn|'s parts.
    np.testing.assert_allclose(one, two, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(one_jac, two_jac, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------
# Newton factorises once when the Hessian cannot depend on theta
# --------------------------------------------------------------------------------

_DESIGN = jnp.arange(20.0).reshape(4, 5) / 10


def _gaussian_design(theta, phi):
    return -0.5 * jnp.sum((_DESIGN @ theta - 1) ** 2) - 0.5 * jnp.exp(-2 * phi) * (
        theta @ theta
    )


def _poisson_design(theta, phi):
    eta = _DESIGN @ theta
    return jnp.sum(eta - jnp.exp(eta)) - 0.5 * jnp.exp(-2 * phi) * (theta @ theta)


@pytest.mark.parametrize(
    "model, factorisations", [(_gaussian_design, 1), (_poisson_design, 2)]
)
def test_newton_factorises_once_for_a_constant_hessian(model, factorisations):
    # One Cholesky in the traced solve for a Gaussian log joint (the first
    # factor serves every iterate); a Poisson one factorises again in the loop.
    marginal = ls.LaplaceMarginal(model, jnp.zeros(5), hessian=ls.DenseHessian())
    text = str(jax.make_jaxpr(lambda p: marginal(p, jnp.ones(5))[0])(0.3))
    assert len(re.findall(r"\bcholesky\b", text)) == factorisations


def test_constant_hessian_solve_is_exact_inside_a_loop():
    # Inside a compiled loop (as in a sampler, where XLA does not hoist the
    # factorisation by itself) the once-factorised solve still gives the exact
    # marginal of the dense Gaussian model, from a cold and from a warm start.
    d = 20
    model = _dense_gaussian(d)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(d), hessian=ls.DenseHessian())
    shifts = jnp.array([0.0, 0.05, -0.1])

    @jax.jit
    def along(guess):
        def body(guess, shift):
            phi = {**PHI, "log_noise": PHI["log_noise"] + shift}
            value, aux = marginal(phi, guess)
            return aux.theta_star, (value, aux.result)

        return jax.lax.scan(body, guess, shifts)[1]

    values, results = along(jnp.zeros(d))
    assert bool(jnp.all(results == ls.RESULTS.successful))
    for shift, value in zip(shifts, values):
        phi = {**PHI, "log_noise": PHI["log_noise"] + shift}
        np.testing.assert_allclose(value, _exact_gaussian(model, phi)[0], rtol=1e-12)


@pytest.mark.parametrize("model, loops", [(_gaussian_design, 0), (_poisson_design, 2)])
def test_newton_takes_one_step_for_a_quadratic_log_joint(model, loops):
    # A gradient proved affine in theta: one Newton step and no loop (neither
    # Newton's nor its line search's); the Poisson model iterates.
    marginal = ls.LaplaceMarginal(model, jnp.zeros(5), hessian=ls.DenseHessian())
    text = str(jax.make_jaxpr(lambda p: marginal(p, jnp.ones(5))[0])(0.3))
    assert len(re.findall(r"\bwhile\b", text)) == loops


def _kinked(theta, phi):
    # -θ²/2 - |θ - 2|/2 per coordinate: the mode is θ = 1/2. The Hessian by AD is
    # constant (-1), but the log joint is not quadratic: from θ = 3 a single
    # Newton step (on the branch θ > 2) lands on -1/2, and only a second one
    # reaches the mode.
    del phi
    return jnp.sum(-0.5 * theta**2 - 0.5 * jnp.abs(theta - 2.0))


def test_a_constant_hessian_that_is_not_quadratic_still_iterates():
    d = 3
    marginal = ls.LaplaceMarginal(_kinked, jnp.zeros(d), hessian=ls.DenseHessian())
    value, aux = evaluate(marginal, jnp.zeros(()), 3.0 * jnp.ones(d))
    assert aux.result == ls.RESULTS.successful
    assert int(aux.num_steps) == 2
    np.testing.assert_allclose(aux.theta_star, 0.5, rtol=0, atol=1e-12)
    # log p̂ = log p(θ*) - ½ log det(I) + (d/2) log 2π.
    expected = d * (-0.125 - 0.75) + 0.5 * d * math.log(2 * math.pi)
    np.testing.assert_allclose(value, expected, rtol=1e-12)


def test_a_jittered_hessian_still_iterates_on_a_quadratic():
    # With `jitter` the factor is not the Hessian's, one step does not land on the
    # mode, and the solve iterates (`exact` is False) to the true mode.
    theta0 = jnp.full(5, 3.0)
    marginal = ls.LaplaceMarginal(
        _gaussian_design, jnp.zeros(5), hessian=ls.DenseHessian(jitter=0.5)
    )
    assert not marginal.hessian.exact and ls.DenseHessian().exact
    text = str(jax.make_jaxpr(lambda p: marginal(p, theta0)[0])(0.3))
    assert len(re.findall(r"\bwhile\b", text)) == 2
    _, aux = evaluate(marginal, jnp.asarray(0.3), theta0)
    assert aux.result == ls.RESULTS.successful and int(aux.num_steps) > 1
    grad = jax.grad(_gaussian_design)(aux.theta_star, 0.3)
    np.testing.assert_allclose(grad, 0.0, atol=1e-7)


# --------------------------------------------------------------------------------
# A log-determinant that does not read theta needs no adjoint
# --------------------------------------------------------------------------------


def _count_backward_work(model, d, monkeypatch, skip):
    """The value+grad of `model`'s dense marginal, and how many triangular solves
    its trace holds; `skip=False` makes the backward pass treat the
    log-determinant as reading theta (the general path), for comparison."""
    from lapsample._marginal import ad

    if not skip:
        monkeypatch.setattr(ad, "reads_arguments", lambda fn, *args: True)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(d), hessian=ls.DenseHessian())
    guess = jnp.full(d, 0.1)

    def value(p):
        return marginal(p, guess)[0]

    text = str(jax.make_jaxpr(jax.value_and_grad(value))(PHI))
    solves = len(re.findall(r"\btriangular_solve\b", text))
    out = jax.jit(jax.value_and_grad(value))(PHI)
    monkeypatch.undo()
    return out, solves


@pytest.mark.parametrize(
    "make, skipped", [(_dense_gaussian, True), (_dense_poisson, False)]
)
def test_theta_free_log_determinant_skips_the_adjoint(make, skipped, monkeypatch):
    # A Gaussian log joint's Hessian does not depend on theta: the
    # log-determinant's theta-derivative is zero, and so is the adjoint, so the
    # backward pass takes no reverse pass for it (whose trace holds `L⁻¹`'s
    # triangular solves again) and no adjoint solves, with the same value and
    # gradient as the general path to rounding. A Poisson one keeps the general
    # path.
    d = 20
    model = make(d)
    (value, grad), solves = _count_backward_work(model, d, monkeypatch, skip=True)
    (value_all, grad_all), solves_all = _count_backward_work(
        model, d, monkeypatch, skip=False
    )
    assert (solves < solves_all) if skipped else (solves == solves_all)
    np.testing.assert_allclose(value, value_all, rtol=1e-14)
    np.testing.assert_allclose(_flat(grad), _flat(grad_all), rtol=1e-12, atol=1e-14)


def _random_walk_gaussian(theta, phi):
    # A Gaussian random walk observed with unit noise: tridiagonal, quadratic in
    # theta, its log-determinant free of theta.
    y = jnp.sin(jnp.arange(theta.shape[0], dtype=theta.dtype))
    steps = jnp.diff(theta, prepend=0.0)
    return -0.5 * jnp.exp(-2 * phi) * steps @ steps - 0.5 * (theta - y) @ (theta - y)


def _random_walk_exact(phi, d=12):
    # The same marginal by a route that shares nothing with lapsample: y ~ N(0,
    # σ² (DᵀD)⁻¹ + I), D the difference matrix, plus the constants the log joint
    # leaves out (-d log σ - (d/2) log 2π for the walk, -(d/2) log 2π for y).
    y = jnp.sin(jnp.arange(d, dtype=jnp.float64))
    diff = jnp.eye(d) - jnp.eye(d, k=-1)
    cov = jnp.exp(2 * phi) * jnp.linalg.inv(diff.T @ diff) + jnp.eye(d)
    sign, logdet = jnp.linalg.slogdet(cov)
    log_y = (
        -0.5 * y @ jnp.linalg.solve(cov, y)
        - 0.5 * logdet
        - 0.5 * d * math.log(2 * math.pi)
    )
    return log_y + d * phi + d * math.log(2 * math.pi)


@pytest.mark.parametrize(
    "hessian",
    [ls.DenseHessian(), ls.BandedHessian(bandwidth=1), ls.LineaxHessian()],
    ids=["dense", "banded", "lineax"],
)
def test_theta_free_log_determinant_for_every_strategy(hessian, monkeypatch):
    # The skipped adjoint through each strategy's own envelope terms (the dense
    # factor's one-trace form, the structured default): value and gradient equal
    # to the general path and to the exact marginal, by a separate route.
    from lapsample._marginal import ad

    d = 12
    marginal = ls.LaplaceMarginal(_random_walk_gaussian, jnp.zeros(d), hessian=hessian)
    phi = jnp.asarray(0.3)

    def value_and_grad():
        return jax.jit(jax.value_and_grad(lambda p: marginal(p, jnp.zeros(d))[0]))(phi)

    seen = []

    def spy(fn, *args, reads=ad.reads_arguments):
        seen.append(reads(fn, *args))
        return seen[-1]

    monkeypatch.setattr(ad, "reads_arguments", spy)
    value, grad = value_and_grad()
    assert seen == [False]  # the backward pass took the skip
    exact_value, exact_grad = jax.value_and_grad(_random_walk_exact)(phi)
    np.testing.assert_allclose(value, exact_value, rtol=1e-12)
    np.testing.assert_allclose(grad, exact_grad, rtol=1e-10)
    monkeypatch.setattr(ad, "reads_arguments", lambda fn, *args: True)
    value_all, grad_all = value_and_grad()
    np.testing.assert_allclose(value, value_all, rtol=1e-14)
    np.testing.assert_allclose(grad, grad_all, rtol=1e-12)
