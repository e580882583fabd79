"""Value and gradient of the Laplace marginal against closed forms, an independent
oracle and finite differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample as ls

from .helpers import (
    assert_default_xtol_error_bounded,
    central_difference_grad,
    evaluate,
    GP_PHI,
    neg_hessian,
    oracle_log_marginal,
    poisson_gp,
    seed_model,
    value_and_grad,
    vmap_value_and_grad,
)


SOLVERS = {
    "newton": ls.Newton(),
    "bfgs": ls.BFGS(),
    "lbfgs": ls.LBFGS(),
}
HESSIANS = {
    "dense": ls.DenseHessian(),
    "lineax": ls.LineaxHessian(),
    "diagonal": ls.DiagonalHessian(),
}


# Compiled once per model type and shape (the model's data are arguments).
@eqx.filter_jit
def _exact_value_and_grad(model, phi):
    return jax.value_and_grad(model.exact_log_marginal)(phi)


@eqx.filter_jit
def _oracle_value_and_grad(log_joint, theta_start, phi):
    return jax.value_and_grad(lambda p: oracle_log_marginal(log_joint, theta_start, p))(
        phi
    )


@eqx.filter_jit
def _sample_thetas(marginal, keys, phi, theta_star):
    """`marginal.sample_theta` at one `phi` for each key."""
    return jax.vmap(marginal.sample_theta, in_axes=(0, None, None))(
        keys, phi, theta_star
    )


@pytest.mark.parametrize("n", [20, 300])
@pytest.mark.parametrize("hessian", list(HESSIANS))
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_seed_model_exact(n, solver, hessian):
    # The Gaussian-Gaussian seed model: Laplace is exact, so value and gradient must
    # equal the closed form y_i ~ N(0, σ² + 1) to rounding.
    model = seed_model(n)
    marginal = ls.LaplaceMarginal(
        model, jnp.zeros(n), SOLVERS[solver], HESSIANS[hessian]
    )
    for log_sigma in [-1.0, 0.3, 1.7]:
        phi = jnp.array(log_sigma)
        (value, aux), grad = value_and_grad(marginal, phi)
        value_exact, grad_exact = _exact_value_and_grad(model, phi)
        assert aux.result == ls.RESULTS.successful
        assert abs(float(value - value_exact)) <= 1e-10 * (1 + abs(float(value_exact)))
        assert abs(float(grad - grad_exact)) <= 1e-8 * (1 + abs(float(grad_exact)))


@pytest.fixture(scope="module", params=[20, 100])
def gp_case(request):
    d = request.param
    model = poisson_gp(d)
    # Solved to rounding (the default xtol, 1e-8, leaves the log marginal ~1e-8
    # off: see test_default_xtol_error_is_first_order_in_the_last_step), so that
    # the oracle comparison below checks the formulas, not the stopping rule.
    marginal = ls.LaplaceMarginal(model, jnp.zeros(d), ls.Newton(xtol=1e-12))
    (value, aux), grad = value_and_grad(marginal, GP_PHI)
    assert aux.result == ls.RESULTS.successful
    return model, marginal, value, grad, aux.theta_star


def test_poisson_gp_is_ill_conditioned(gp_case):
    # The case is only a meaningful test if H is stiff (cond ~1e6).
    model, _, _, _, theta_star = gp_case
    hess = neg_hessian(model, theta_star, GP_PHI)
    assert np.linalg.cond(np.asarray(hess)) > 1e5


def test_poisson_gp_against_oracle(gp_case):
    # Optimistix root find + ImplicitAdjoint + jax.hessian + Cholesky, all by plain
    # AD: a different route to the same quantity. Both are converged to rounding, so
    # agreement is tight; cond(H) ~1e6 costs a few digits in the gradient.
    model, _, value, grad, theta_star = gp_case
    value_oracle, grad_oracle = _oracle_value_and_grad(model, theta_star, GP_PHI)
    np.testing.assert_allclose(value, value_oracle, rtol=1e-11)
    np.testing.assert_allclose(grad, grad_oracle, rtol=1e-7, atol=1e-8)


def test_default_xtol_error_is_first_order_in_the_last_step():
    # d = 20 Poisson GP, cond(H) ~1e6, phi moved by 0.1 from the warm start's phi.
    d = 20
    model = poisson_gp(d)
    dense = ls.DenseHessian()
    default = ls.LaplaceMarginal(model, jnp.zeros(d), hessian=dense)
    tight = ls.LaplaceMarginal(model, jnp.zeros(d), ls.Newton(xtol=1e-13), dense)
    assert_default_xtol_error_bounded(
        default, tight, model, GP_PHI, GP_PHI + jnp.array([0.08, -0.06])
    )


def test_poisson_gp_against_finite_differences(gp_case):
    # Five-point central differences of the converged marginal (each evaluation a
    # fresh solve). The model's own value is only reproducible to ~1e-8 across phi
    # (the kernel's Cholesky with cond(K) ~1e6), so h = 1e-3: rounding error
    # ~1e-8 / 1e-3 = 1e-5 and truncation O(h⁴); hence the 1e-4 relative tolerance.
    _, marginal, _, grad, _ = gp_case
    h = 1e-3

    def five_point(i):
        e = jnp.zeros(2).at[i].set(h)
        f = [float(evaluate(marginal, GP_PHI + k * e)[0]) for k in (2, 1, -1, -2)]
        return (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / (12 * h)

    fd = np.array([five_point(0), five_point(1)])
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver", ["newton", "bfgs"])
@pytest.mark.parametrize("hessian", ["dense", "lineax"])
def test_poisson_gp_solvers_agree(solver, hessian):
    # d = 20. Quasi-Newton solvers stop on small steps, which on a stiff problem
    # leaves theta* ~1e-6 off; the tolerance says so. (LBFGS does not converge
    # here within its step budget and reports it: see the failure test.)
    d = 20
    model = poisson_gp(d)
    reference = ls.LaplaceMarginal(model, jnp.zeros(d))
    marginal = ls.LaplaceMarginal(
        model, jnp.zeros(d), SOLVERS[solver], HESSIANS[hessian]
    )
    (value, aux), grad = value_and_grad(marginal, GP_PHI)
    (value_ref, _), grad_ref = value_and_grad(reference, GP_PHI)
    assert aux.result == ls.RESULTS.successful
    tol = 1e-10 if solver == "newton" else 1e-5
    np.testing.assert_allclose(value, value_ref, rtol=tol)
    np.testing.assert_allclose(grad, grad_ref, rtol=tol * 100, atol=tol)


def test_lbfgs_reports_non_convergence_on_stiff_gp():
    d = 20
    marginal = ls.LaplaceMarginal(poisson_gp(d), jnp.zeros(d), ls.LBFGS(max_steps=30))
    (value, aux), grad = value_and_grad(marginal, GP_PHI)
    assert aux.result == ls.RESULTS.nonlinear_max_steps_reached
    assert value == -jnp.inf
    assert jnp.all(jnp.isfinite(grad))


def test_seed_model_finite_differences():
    model = seed_model(20)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(20))
    phi = jnp.array([0.4])
    fd = central_difference_grad(lambda p: evaluate(marginal, p[0])[0], phi, h=1e-5)
    (_, _), grad = value_and_grad(marginal, phi[0])
    np.testing.assert_allclose(float(grad), fd[0], rtol=1e-7)


def test_pytree_theta_and_phi():
    # The same GP with theta split into a dict of two blocks and phi as a dict must
    # give exactly the numbers of the raveled version.
    d = 20
    flat_model = poisson_gp(d)

    def tree_model(theta, phi):
        flat_theta = jnp.concatenate([theta["a"], theta["b"].reshape(-1)])
        flat_phi = jnp.stack([phi["log_amplitude"], phi["log_length"]])
        return flat_model(flat_theta, flat_phi)

    theta_init = {"a": jnp.zeros(8), "b": jnp.zeros((3, 4))}
    phi = {"log_amplitude": GP_PHI[0], "log_length": GP_PHI[1]}
    flat = ls.LaplaceMarginal(flat_model, jnp.zeros(d))
    tree = ls.LaplaceMarginal(tree_model, theta_init)
    (v1, a1), g1 = value_and_grad(flat, GP_PHI)
    (v2, a2), g2 = value_and_grad(tree, phi)
    assert a2.theta_star["b"].shape == (3, 4)
    np.testing.assert_allclose(v1, v2, rtol=1e-13)
    # The gradient of this GP (jitter 1e-6) is sensitive to rounding: reversing or
    # permuting theta inside the log joint, which changes nothing but the order of
    # operations, moves it by up to 3e-9 (relative) at GP_PHI, and XLA fuses the
    # raveled and the PyTree programs differently. 1e-8 is above that spread; a
    # wrong unravelling (swapped or misplaced leaves) is an O(1) error.
    np.testing.assert_allclose(
        g1, jnp.stack([g2["log_amplitude"], g2["log_length"]]), rtol=1e-8
    )
    np.testing.assert_allclose(
        a1.theta_star[:8], a2.theta_star["a"], rtol=1e-10, atol=1e-12
    )


def test_gp_gradient_under_reordering():
    # The spread that bounds test_pytree_theta_and_phi's tolerance: the same GP
    # with theta permuted inside the log joint is the same marginal, computed in
    # another order. Its gradient agrees to rounding (measured up to 3e-9,
    # relative, at two phis), and must stay there: a wrong index in the
    # unravelling or a backward pass that amplifies rounding breaks it.
    d = 20
    model = poisson_gp(d)
    perm = np.random.default_rng(0).permutation(d)
    inverse = np.argsort(perm)

    def permuted(theta, phi):
        return model(theta[inverse], phi)

    dense = ls.DenseHessian()
    (v1, _), g1 = value_and_grad(
        ls.LaplaceMarginal(model, jnp.zeros(d), hessian=dense), GP_PHI
    )
    (v2, _), g2 = value_and_grad(
        ls.LaplaceMarginal(permuted, jnp.zeros(d), hessian=dense), GP_PHI
    )
    # The value moves by ~1e-12 (relative) under reordering: cond(H) ≈ 1e6 times
    # the rounding of the log-determinant's terms.
    np.testing.assert_allclose(v1, v2, rtol=1e-10)
    np.testing.assert_allclose(g1, g2, rtol=1e-8)


def test_gradient_through_theta_star():
    # A cotangent on aux.theta_star goes through the same adjoint solve: compare
    # d/dphi sum(theta*(phi)) with finite differences of the converged mode.
    d = 20
    marginal = ls.LaplaceMarginal(poisson_gp(d), jnp.zeros(d))

    def total(phi):
        return jnp.sum(marginal(phi)[1].theta_star)

    grad = jax.jit(jax.grad(total))(GP_PHI)
    fd = central_difference_grad(jax.jit(total), GP_PHI, h=1e-5)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_sample_theta_moments(getkey):
    # 20 000 draws of N(theta*, H⁻¹) on the d = 20 GP. Each mean is off by
    # sd_i/√N at one sigma, each covariance entry by sqrt((Σ_ii Σ_jj + Σ_ij²)/N);
    # 5 sigma over 20 + 210 statistics keeps a false alarm below 1e-4.
    d, num = 20, 20_000
    model = poisson_gp(d)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(d))
    _, aux = evaluate(marginal, GP_PHI)
    keys = jr.split(getkey(), num)
    draws = _sample_thetas(marginal, keys, GP_PHI, aux.theta_star)
    cov = np.linalg.inv(np.asarray(neg_hessian(model, aux.theta_star, GP_PHI)))
    sd = np.sqrt(np.diag(cov))
    mean_err = np.asarray(draws.mean(0) - aux.theta_star)
    assert np.all(np.abs(mean_err) <= 5 * sd / np.sqrt(num))
    emp_cov = np.cov(np.asarray(draws), rowvar=False)
    cov_se = np.sqrt((np.outer(sd**2, sd**2) + cov**2) / num)
    assert np.all(np.abs(emp_cov - cov) <= 5 * cov_se)


@pytest.mark.parametrize("hessian", list(HESSIANS))
def test_sample_theta_exact_conditional(hessian, getkey):
    # In the seed model p(theta | phi, y) is N(y σ²/(σ²+1), σ²/(σ²+1) I) exactly.
    n, num = 5, 20_000
    model = seed_model(n)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(n), hessian=HESSIANS[hessian])
    phi = jnp.array(0.5)
    _, aux = evaluate(marginal, phi)
    keys = jr.split(getkey(), num)
    draws = _sample_thetas(marginal, keys, phi, aux.theta_star)
    s2 = float(jnp.exp(2 * phi))
    var = s2 / (s2 + 1)
    np.testing.assert_allclose(aux.theta_star, model.y * var, rtol=1e-12)
    # Mean: 5 sigma of sd/√N; variance: 5 sigma of var·√(2/N).
    assert np.all(np.abs(draws.mean(0) - aux.theta_star) <= 5 * np.sqrt(var / num))
    assert np.all(np.abs(draws.var(0) - var) <= 5 * var * np.sqrt(2 / num))


def test_non_convergence_gives_code_minus_inf_and_finite_gradient():
    d = 20
    marginal = ls.LaplaceMarginal(poisson_gp(d), jnp.zeros(d), ls.Newton(max_steps=1))
    (value, aux), grad = value_and_grad(marginal, GP_PHI)
    assert aux.result == ls.RESULTS.inner_solve_failed
    assert value == -jnp.inf
    assert jnp.all(grad == 0)
    assert jnp.all(jnp.isfinite(aux.theta_star))


def _concave_only_for_positive_phi(theta, phi):
    # Concave in theta iff phi > 0: a stand-in for a model whose conditional stops
    # being log-concave in some region of phi.
    return -0.5 * phi * jnp.sum(theta**2) + jnp.sum(theta) - 0.5 * phi**2


@pytest.mark.parametrize("hessian", list(HESSIANS))
def test_non_positive_definite_hessian(hessian):
    marginal = ls.LaplaceMarginal(
        _concave_only_for_positive_phi, jnp.zeros(3), hessian=HESSIANS[hessian]
    )
    phis = jnp.array([1.0, -1.0, 2.0])
    (values, aux), grads = vmap_value_and_grad(marginal, phis)
    assert (aux.result == ls.RESULTS.hessian_not_positive_definite)[1]
    assert values[1] == -jnp.inf and grads[1] == 0
    # The good elements are untouched: exact Gaussian marginal
    # log p = -φ²/2 + 3/(2φ) + (3/2) log(2π/φ) (up to the 2π from Laplace).
    for i in (0, 2):
        phi = float(phis[i])
        exact = -0.5 * phi**2 + 1.5 / phi + 1.5 * np.log(2 * np.pi / phi)
        d_exact = -phi - 1.5 / phi**2 - 1.5 / phi
        assert (aux.result == ls.RESULTS.successful)[i]
        np.testing.assert_allclose(values[i], exact, rtol=1e-12)
        np.testing.assert_allclose(grads[i], d_exact, rtol=1e-10)


def test_failure_under_vmap_affects_only_that_element():
    # Newton(max_steps=2) from a cold start: phi far from the data needs more steps.
    d = 20
    model = poisson_gp(d)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(d), ls.Newton(max_steps=3))
    _, aux_good = evaluate(marginal, GP_PHI)
    guesses = jnp.stack([aux_good.theta_star, jnp.zeros(d), aux_good.theta_star])
    phis = jnp.stack([GP_PHI, GP_PHI, GP_PHI + 0.01])
    (values, aux), grads = vmap_value_and_grad(marginal, phis, guesses)
    ok = aux.result == ls.RESULTS.successful
    assert list(np.asarray(ok)) == [True, False, True]
    assert jnp.all(jnp.isfinite(values[ok])) and values[1] == -jnp.inf
    assert jnp.all(jnp.isfinite(grads))


def test_compiles_once_across_phi_and_guess():
    d = 20
    model = poisson_gp(d)
    marginal = ls.LaplaceMarginal(model, jnp.zeros(d))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def value_and_grad(marginal, phi, guess):
        return jax.value_and_grad(marginal, has_aux=True)(phi, guess)

    guess = jnp.zeros(d)
    for k in range(4):
        (_, aux), _ = value_and_grad(marginal, GP_PHI + 0.01 * k, guess)
        guess = aux.theta_star
        assert aux.result == ls.RESULTS.successful


def test_warm_start_takes_fewer_steps():
    d = 100
    marginal = ls.LaplaceMarginal(poisson_gp(d), jnp.zeros(d))
    _, cold = evaluate(marginal, GP_PHI, jnp.zeros(d))
    _, warm = evaluate(marginal, GP_PHI + 0.01, cold.theta_star)
    assert int(warm.num_steps) < int(cold.num_steps)
    assert int(warm.num_steps) <= 3


def test_closed_over_traced_data():
    # log_joint closing over a traced array (data passed through jit) must work:
    # the marginal closure-converts it before its custom VJP.
    model = seed_model(10)

    @jax.jit
    def f(y, phi):
        def log_joint(theta, log_sigma):
            sigma = jnp.exp(log_sigma)
            return (
                jstats.norm.logpdf(log_sigma, 0.0, 3.0)
                + jstats.norm.logpdf(theta, 0.0, sigma).sum()
                + jstats.norm.logpdf(y, theta, 1.0).sum()
            )

        marginal = ls.LaplaceMarginal(log_joint, jnp.zeros(10))
        return jax.value_and_grad(lambda p: marginal(p)[0])(phi)

    value, grad = f(model.y, jnp.array(0.2))
    value_exact, grad_exact = _exact_value_and_grad(model, jnp.array(0.2))
    np.testing.assert_allclose(value, value_exact, rtol=1e-12)
    np.testing.assert_allclose(grad, grad_exact, rtol=1e-10)


def test_laplace_marginal_factory_matches_seed_usage(getkey):
    model = seed_model(20)
    laplace = ls.laplace_marginal_factory(model, jnp.zeros(20), maxiter=100)
    # BlackJAX's bundle of functions, over a lapsample marginal.
    assert isinstance(laplace.marginal, ls.LaplaceMarginal)
    assert laplace.marginal.inner_solver.max_steps == 100
    phis = jnp.array([0.1, 0.5])
    values, theta_star = jax.jit(jax.vmap(laplace))(phis)
    np.testing.assert_allclose(
        values, jax.jit(jax.vmap(model.exact_log_marginal))(phis), rtol=1e-12
    )
    keys = jr.split(getkey(), 2)
    draws = jax.jit(jax.vmap(laplace.sample_theta))(keys, phis, theta_star)
    assert draws.shape == (2, 20) and jnp.all(jnp.isfinite(draws))


def test_float32_newton_converges():
    # Tolerances adapt to the dtype: float32 must converge too, not spin to
    # max_steps on an unreachable float64 tolerance.
    model = seed_model(20)
    y32 = model.y.astype(jnp.float32)

    def log_joint(theta, log_sigma):
        sigma = jnp.exp(log_sigma)
        return (
            jstats.norm.logpdf(theta, 0.0, sigma).sum()
            + jstats.norm.logpdf(y32, theta, 1.0).sum()
        )

    with pytest.warns(UserWarning, match="float32"):
        marginal = ls.LaplaceMarginal(log_joint, jnp.zeros(20, jnp.float32))
    (value, aux), grad = value_and_grad(marginal, jnp.array(0.3, jnp.float32))
    assert value.dtype == jnp.float32
    assert aux.result == ls.RESULTS.successful
    exact = jstats.norm.logpdf(model.y, 0.0, jnp.sqrt(jnp.exp(0.6) + 1.0)).sum()
    np.testing.assert_allclose(float(value), float(exact), rtol=1e-5)


def test_newton_is_exact_when_the_log_joint_has_a_large_constant():
    # A constant in the log joint (here 1e9, e.g. an unnormalised likelihood)
    # makes the rounding of fn ~1e-7, larger than the decrease Armijo's test
    # predicts near the mode: the line search then compared noise and stopped
    # ~1e-5 short of the mode. The mode must not depend on the constant.
    counts = jnp.array([0.0, 1.0, 3.0, 8.0, 20.0, 2.0, 50.0, 0.0])

    def make(offset):
        def log_joint(theta, log_sigma):
            prior = jstats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
            return offset + prior + jnp.sum(counts * theta - jnp.exp(theta))

        return log_joint

    phi = jnp.array(1.0)
    _, plain = eqx.filter_jit(ls.LaplaceMarginal(make(0.0), jnp.zeros(8)))(phi)
    _, shifted = eqx.filter_jit(ls.LaplaceMarginal(make(1e9), jnp.zeros(8)))(phi)
    assert shifted.result == ls.RESULTS.successful
    np.testing.assert_allclose(shifted.theta_star, plain.theta_star, atol=1e-9)
