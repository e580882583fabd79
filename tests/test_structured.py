"""BandedHessian and BlockDiagonalHessian against DenseHessian, on models with that
structure, and the structure checks (DiagonalHessian's included)."""

import importlib.util
import json
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lapsample
from lapsample._factor import factor_result
from lapsample._hessian import banded as banded_module
from lapsample._hessian.base import factorise_and_solve
from lapsample._linalg.banded import band_selected_inverse
from lapsample._misc import NegativeLogJoint, TreeRaveller

from .helpers import (
    central_difference_grad,
    check_mixing,
    mcse,
    value_and_grad,
    Z_MAX,
)


# --------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------


class StochasticVolatility(eqx.Module):
    """AR(1) log-volatility, `y_t ~ N(0, exp(theta_t))`: tridiagonal Hessian.
    phi = (mu, logit of the AR coefficient, log sigma)."""

    y: jax.Array

    def __call__(self, theta, phi):
        mu, logit_rho, log_sigma = phi[0], phi[1], phi[2]
        rho = jax.nn.sigmoid(logit_rho)
        sigma = jnp.exp(log_sigma)
        centred = theta - mu
        innovations = (centred[1:] - rho * centred[:-1]) / sigma
        prior = -0.5 * jnp.sum(innovations**2) - (theta.size - 1) * log_sigma
        prior += -0.5 * centred[0] ** 2 * (1 - rho**2) / sigma**2
        prior += 0.5 * jnp.log1p(-(rho**2)) - log_sigma
        likelihood = jnp.sum(-0.5 * theta - 0.5 * self.y**2 * jnp.exp(-theta))
        hyper = -0.5 * jnp.sum(phi**2 / jnp.array([4.0, 4.0, 1.0]))
        return prior + likelihood + hyper


class RandomWalk2(eqx.Module):
    """Second-order random walk latent with Poisson counts: bandwidth 2. An extra
    coupling `theta_t theta_{t+3}` (weight `extra`) breaks the band."""

    y: jax.Array
    extra: float = 0.0

    def __call__(self, theta, phi):
        log_tau, mu = phi[0], phi[1]
        tau = jnp.exp(log_tau)
        second = theta[2:] - 2 * theta[1:-1] + theta[:-2]
        prior = -0.5 * jnp.sum(second**2) / tau**2 - (theta.size - 2) * log_tau
        prior += -0.5 * jnp.sum((theta[:2] - mu) ** 2)
        rate = theta + mu
        likelihood = jnp.sum(self.y * rate - jnp.exp(rate))
        coupling = -self.extra * jnp.sum((theta[3:] - theta[:-3]) ** 2)
        return prior + likelihood + coupling - 0.5 * jnp.sum(phi**2)


class GroupedEffects(eqx.Module):
    """Random intercept, slope and curvature per group (blocks of 3) with
    correlated effects and a Poisson likelihood. `extra` couples neighbouring
    groups."""

    x: jax.Array  # (groups, n)
    y: jax.Array  # (groups, n)
    extra: float = 0.0

    def __call__(self, theta, phi):
        b = theta.reshape(-1, 3)
        scales = jnp.exp(phi[:3])
        corr = jnp.tanh(phi[3])
        # Precision of the effects: D⁻¹ R⁻¹ D⁻¹, R with one off-diagonal correlation.
        r = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        r = r.at[0, 1].set(corr).at[1, 0].set(corr)
        cov = r * scales[:, None] * scales[None, :]
        chol = jnp.linalg.cholesky(cov)
        z = jax.scipy.linalg.solve_triangular(chol, b.T, lower=True)
        prior = -0.5 * jnp.sum(z**2) - b.shape[0] * jnp.sum(jnp.log(jnp.diag(chol)))
        eta = b[:, :1] + b[:, 1:2] * self.x + b[:, 2:3] * self.x**2
        likelihood = jnp.sum(self.y * eta - jnp.exp(eta))
        coupling = -self.extra * jnp.sum((b[1:, 0] - b[:-1, 0]) ** 2)
        return prior + likelihood + coupling - 0.5 * jnp.sum(phi**2)


def _sv_data(t, seed=0):
    rng = np.random.default_rng(seed)
    h = np.zeros(t)
    h[0] = -1 + 0.3 * rng.normal()
    for i in range(1, t):
        h[i] = -1 + 0.9 * (h[i - 1] + 1) + 0.3 * rng.normal()
    return jnp.asarray(np.exp(h / 2) * rng.normal(size=t))


def _rw2_data(t, seed=1):
    rng = np.random.default_rng(seed)
    trend = np.cumsum(np.cumsum(0.05 * rng.normal(size=t)))
    return jnp.asarray(rng.poisson(np.exp(1.0 + trend - trend.mean())), float)


def _grouped_data(groups, n=6, seed=2):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(groups, n))
    b = rng.normal(size=(groups, 3)) * np.array([0.7, 0.4, 0.2])
    y = rng.poisson(np.exp(0.5 + b[:, :1] + b[:, 1:2] * x + b[:, 2:3] * x**2))
    return jnp.asarray(x), jnp.asarray(y, float)


# (name, log joint, d, phi, structured strategy)
CASES = {
    "banded1-sv": (
        StochasticVolatility(_sv_data(60)),
        60,
        jnp.array([-1.0, 2.0, -1.2]),
        lapsample.BandedHessian(bandwidth=1),
    ),
    "banded3-rw2": (
        RandomWalk2(_rw2_data(52)),
        52,  # not a multiple of 3: exercises the padded last block
        jnp.array([-1.5, 0.8]),
        lapsample.BandedHessian(bandwidth=3),  # wider than the model's 2 is fine
    ),
    "block3-grouped": (
        GroupedEffects(*_grouped_data(20)),
        60,
        jnp.array([-0.3, -0.8, -1.5, 0.4]),
        lapsample.BlockDiagonalHessian(block_size=3),
    ),
}


def _value_and_grad(marginal, guess):
    # With an explicit guess (here the marginal's own `theta_init`) the compiled
    # function is the one `test_batched_over_chains_equals_one_at_a_time` calls.
    def run(phi):
        (value, aux), grad = value_and_grad(marginal, phi, guess)
        return value, grad, aux

    return run


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    log_joint, d, phi, structured = CASES[request.param]
    out = {}
    strategies = {"dense": lapsample.DenseHessian(), "structured": structured}
    for name, hessian in strategies.items():
        marginal = lapsample.LaplaceMarginal(log_joint, jnp.zeros(d), hessian=hessian)
        marginal.check(phi)
        run = _value_and_grad(marginal, jnp.zeros(d))
        value, grad, aux = run(phi)
        assert aux.result == lapsample.RESULTS.successful
        out[name] = (run, value, grad, aux.theta_star)
    return request.param, log_joint, phi, structured, out


def test_value_and_gradient_equal_dense(case):
    _, _, _, _, out = case
    _, v_dense, g_dense, _ = out["dense"]
    _, v, g, _ = out["structured"]
    assert abs(float(v - v_dense)) <= 1e-10 * abs(float(v_dense))
    np.testing.assert_allclose(g, g_dense, rtol=1e-8, atol=1e-8)


def test_gradient_against_central_differences(case):
    _, _, phi, _, out = case
    run, _, g, _ = out["structured"]
    fd = central_difference_grad(lambda p: run(p)[0], phi, h=1e-5)
    # Central differences of a converged marginal: error O(h²·f''') + O(eps/h),
    # about 1e-6 here.
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5)


def test_long_latents_take_the_probes_one_at_a_time(case, monkeypatch):
    # Above a size limit `BandedHessian` runs its probes through one linearisation
    # one at a time (less memory at T = 10⁷); the numbers are those of the batch.
    name, log_joint, phi, structured, out = case
    if not isinstance(structured, lapsample.BandedHessian):
        pytest.skip("only the banded strategy batches its probes")
    _, v_batch, g_batch, _ = out["structured"]
    d = out["structured"][3].shape[0]
    marginal = lapsample.LaplaceMarginal(log_joint, jnp.zeros(d), hessian=structured)

    def jaxpr():
        return str(jax.make_jaxpr(lambda p: marginal(p, jnp.zeros(d))[0])(phi))

    # The one-at-a-time branch is a loop over the 2b + 1 probes of the band (2b + 2
    # with the structure check's).
    b = structured.bandwidth
    probe_loops = {f"length={2 * b + 1}", f"length={2 * b + 2}"}
    assert not any(loop in jaxpr() for loop in probe_loops)
    monkeypatch.setattr(banded_module, "_BATCHED_PROBES_LIMIT", 0)
    jax.clear_caches()  # inner traces are cached; the limit is read while tracing
    assert any(loop in jaxpr() for loop in probe_loops)
    (value, aux), grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))(
        phi, jnp.zeros(d)
    )
    assert aux.result == lapsample.RESULTS.successful
    np.testing.assert_allclose(value, v_batch, rtol=1e-12)
    np.testing.assert_allclose(grad, g_batch, rtol=1e-9, atol=1e-12)
    monkeypatch.undo()
    jax.clear_caches()  # later tests trace the batched branch again


def test_batched_over_chains_equals_one_at_a_time(case):
    # Vectorised chains evaluate the marginal under `vmap`; the batched band
    # extraction, factorisation and backward pass must give each chain's own
    # numbers (to rounding: batched kernels may order sums differently).
    _, log_joint, phi, structured, out = case
    run, _, _, theta = out["structured"]
    marginal = lapsample.LaplaceMarginal(
        log_joint, jnp.zeros(theta.shape[0]), hessian=structured
    )
    phis = phi + 0.05 * jnp.array([[0.0], [1.0], [-1.0]])

    def one(p):
        (value, _), grad = jax.value_and_grad(marginal, has_aux=True)(p, theta)
        return value, grad

    values, grads = jax.jit(jax.vmap(one))(phis)
    for i in range(phis.shape[0]):
        (value, _), grad = value_and_grad(marginal, phis[i], theta)
        np.testing.assert_allclose(values[i], value, rtol=1e-12)
        np.testing.assert_allclose(grads[i], grad, rtol=1e-9, atol=1e-10)


@eqx.filter_jit
def _factor_quantities(strategy, fn, theta, phi, key):
    d = theta.shape[0]
    matrix = jax.hessian(fn)(theta, phi)
    factor = strategy.factorise(fn, theta, phi)
    v = jnp.sin(jnp.arange(d, dtype=theta.dtype))
    # Draws are `M z` with z ~ N(0, I): the implied covariance is M Mᵀ.
    m = jax.vmap(lambda z: strategy._transform(factor, z), out_axes=1)(jnp.eye(d))
    dense = lapsample.DenseHessian()
    dense_factor = dense.factorise(fn, theta, phi)
    surrogate_grads = [
        jax.grad(s.logdet_surrogate, argnums=2)(f, fn, theta, phi)
        for s, f in ((strategy, factor), (dense, dense_factor))
    ]
    return dict(
        matrix=matrix,
        ok=factor.positive_definite & factor.structure_ok,
        logdet=strategy.logdet(factor),
        solve=strategy.solve(factor, v),
        v=v,
        implied_covariance=m @ m.T,
        draw=strategy.sample(factor, key),
        surrogate=strategy.logdet_surrogate(factor, fn, theta, phi),
        surrogate_grads=surrogate_grads,
    )


def test_factor_against_dense_matrix(case, getkey):
    _, log_joint, phi, strategy, out = case
    _, _, _, theta = out["dense"]
    d = theta.shape[0]
    fn = NegativeLogJoint(log_joint, TreeRaveller(theta))
    q = _factor_quantities(strategy, fn, theta, phi, getkey())
    covariance = jnp.linalg.inv(q["matrix"])
    assert q["ok"]
    _, logdet = jnp.linalg.slogdet(q["matrix"])
    np.testing.assert_allclose(q["logdet"], logdet, rtol=1e-12)
    np.testing.assert_allclose(q["solve"], covariance @ q["v"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        q["implied_covariance"], covariance, rtol=1e-9, atol=1e-12
    )
    assert q["draw"].shape == (d,) and jnp.all(jnp.isfinite(q["draw"]))
    # The surrogate tr(A₀⁻¹ ∇²fn) is d at the factorised point, and its gradient
    # in theta is that of log det ∇²fn (the dense strategy's surrogate).
    np.testing.assert_allclose(q["surrogate"], d, rtol=1e-10)
    np.testing.assert_allclose(*q["surrogate_grads"], rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------------
# Violated structure
# --------------------------------------------------------------------------------

VIOLATIONS = {
    "banded": (
        RandomWalk2(_rw2_data(40), extra=0.3),  # bandwidth 3 declared as 2
        40,
        jnp.array([-1.5, 0.8]),
        lapsample.BandedHessian(bandwidth=2),
    ),
    "block": (
        GroupedEffects(*_grouped_data(10), extra=0.3),  # groups coupled
        30,
        jnp.array([-0.3, -0.8, -1.5, 0.4]),
        lapsample.BlockDiagonalHessian(block_size=3),
    ),
    "diagonal": (
        StochasticVolatility(_sv_data(30)),  # tridiagonal declared as diagonal
        30,
        jnp.array([-1.0, 2.0, -1.2]),
        lapsample.DiagonalHessian(),
    ),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violated_structure_raises_at_check(name):
    log_joint, d, phi, strategy = VIOLATIONS[name]
    marginal = lapsample.LaplaceMarginal(log_joint, jnp.zeros(d), hessian=strategy)
    with pytest.raises(ValueError, match="does not have the structure"):
        marginal.check(phi)


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violated_structure_is_a_result_code_under_jit(name):
    log_joint, d, phi, strategy = VIOLATIONS[name]
    marginal = lapsample.LaplaceMarginal(log_joint, jnp.zeros(d), hessian=strategy)
    value, aux = eqx.filter_jit(marginal)(phi)
    assert value == -jnp.inf
    assert aux.result == lapsample.RESULTS.structure_violated


def _diagonal_model(theta, phi):
    return jnp.sum(-0.5 * (theta / jnp.exp(phi[0])) ** 2 - jnp.exp(theta))


# For each structured strategy: a model that has its structure (with phi).
GENUINE = {
    "banded": (CASES["banded3-rw2"][0], CASES["banded3-rw2"][2], 52),
    "block": (CASES["block3-grouped"][0], CASES["block3-grouped"][2], 60),
    "diagonal": (_diagonal_model, jnp.array([0.3]), 30),
}


@eqx.filter_jit
def _checked_and_late(strategy, fn, theta, phi):
    checked = strategy.factorise(fn, theta, phi)
    early = strategy.without_checks().factorise(fn, theta, phi)
    return checked, strategy.check_factor(early, fn, theta, phi)


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_check_on_the_factor_agrees_with_the_check_at_factorisation(name):
    # Newton factorises without the structure check and checks the returned factor
    # once (`check_factor`, from `A = L Lᵀ`): it must reach the same verdict as the
    # check made while factorising, on a violated and on a genuine structure.
    violated, d_violated, phi_violated, strategy = VIOLATIONS[name]
    genuine, phi_genuine, d_genuine = GENUINE[name]
    if name == "banded":
        strategy_genuine = lapsample.BandedHessian(bandwidth=3)
    else:
        strategy_genuine = strategy
    for log_joint, d, phi, declared, expected in (
        (violated, d_violated, phi_violated, strategy, False),
        (genuine, d_genuine, phi_genuine, strategy_genuine, True),
    ):
        theta = jnp.linspace(-0.5, 0.5, d)
        fn = NegativeLogJoint(log_joint, TreeRaveller(theta))
        checked, late = _checked_and_late(declared, fn, theta, phi)
        for factor in (checked, late):
            assert bool(factor.structure_ok) == expected
            assert bool(factor.positive_definite) == expected
        # Apart from the verdict, the factors hold the same arrays.
        for a, b in zip(jax.tree.leaves(checked), jax.tree.leaves(late)):
            np.testing.assert_array_equal(a, b)


class _Signed(eqx.Module):
    """`sign * log_joint(theta, phi)`; the sign is an array, so that both signs
    share one compilation."""

    log_joint: eqx.Module
    sign: jax.Array = eqx.field(converter=jnp.asarray)

    def __call__(self, theta, phi):
        return self.sign * self.log_joint(theta, phi)


@eqx.filter_jit
def _fused_and_separate(strategy, fn, theta, phi, v):
    fused = factorise_and_solve(strategy, fn, theta, phi, v)
    factor = strategy.factorise(fn, theta, phi)
    return fused, (factor, strategy.solve(factor, v))


@pytest.mark.parametrize("bandwidth", [1, 3])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_factorise_and_solve_equals_factorise_then_solve(bandwidth, sign):
    # Newton's step uses `factorise_and_solve` (fused for a tridiagonal band); it
    # must agree with the two separate calls, including for an indefinite Hessian
    # (`sign = -1`: the negated model), whose factor is the identity.
    sv = CASES["banded1-sv"][0]
    phi = CASES["banded1-sv"][2]
    theta = jnp.linspace(-1.0, 0.5, 60)
    fn = NegativeLogJoint(_Signed(sv, sign), TreeRaveller(theta))
    strategy = lapsample.BandedHessian(bandwidth=bandwidth).without_checks()
    v = jnp.cos(jnp.arange(60.0))
    (fused_factor, fused_x), (factor, x) = _fused_and_separate(
        strategy, fn, theta, phi, v
    )
    assert bool(factor.positive_definite) == (sign > 0)
    for a, b in zip(jax.tree.leaves(fused_factor), jax.tree.leaves(factor)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fused_x, x, rtol=1e-12, atol=1e-14)


@eqx.filter_jit
def _recurrence_outputs(strategy, fn, theta, phi, v):
    factor = strategy.factorise(fn, theta, phi)
    fused = factorise_and_solve(strategy, fn, theta, phi, v)
    return (
        factor,
        fused,
        strategy.solve(factor, v),
        strategy.sample(factor, jax.random.key(0)),
        band_selected_inverse(factor),
    )


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_associative_recurrences_equal_sequential(sign):
    # `recurrences="associative"` (the default off the CPU) reorders the
    # arithmetic of every bandwidth-1 recurrence: factor, solves, draws and the
    # selected inverse must agree with the sequential scans to rounding, and an
    # indefinite Hessian (sign = -1) must be detected the same way.
    sv, _, phi, _ = CASES["banded1-sv"]
    theta = jnp.linspace(-1.0, 0.5, 60)
    fn = NegativeLogJoint(_Signed(sv, sign), TreeRaveller(theta))
    v = jnp.cos(jnp.arange(60.0))
    outputs = {
        mode: _recurrence_outputs(
            lapsample.BandedHessian(1, recurrences=mode), fn, theta, phi, v
        )
        for mode in ("sequential", "associative")
    }
    assert outputs["associative"][0].associative
    assert not outputs["sequential"][0].associative
    assert bool(outputs["associative"][0].positive_definite) == (sign > 0)
    for a, b in zip(
        jax.tree.leaves(outputs["associative"]), jax.tree.leaves(outputs["sequential"])
    ):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_associative_recurrences_give_the_same_marginals():
    sv = _load_example("stochastic_volatility")
    y = sv.simulate(300)
    phi = sv.PHI_INIT + jnp.array([-0.8, 0.5, 0.3])
    vg = eqx.filter_jit(lambda m, p: jax.value_and_grad(m, has_aux=True)(p))
    for make in (
        lambda mode: sv.marginal_for(y, lapsample.BandedHessian(1, recurrences=mode)),
        lambda mode: eqx.tree_at(
            lambda m: m.recurrences, sv.latent_gaussian_marginal_for(y), mode
        ),
    ):
        # Built once per mode: a marginal with closures of its own (the latent
        # Gaussian's) would be traced and compiled again for each new copy.
        marginals = {mode: make(mode) for mode in ("sequential", "associative")}
        # The associative form has no sequential loop left over the latents.
        for mode, loops in (("sequential", True), ("associative", False)):
            jaxpr = str(eqx.filter_make_jaxpr(vg)(marginals[mode], phi)[0])
            assert ("scan[" in jaxpr) == loops, mode
        (value_s, aux_s), grad_s = vg(marginals["sequential"], phi)
        (value_a, aux_a), grad_a = vg(marginals["associative"], phi)
        assert aux_a.result == aux_s.result == lapsample.RESULTS.successful
        np.testing.assert_allclose(value_a, value_s, rtol=1e-12)
        np.testing.assert_allclose(aux_a.theta_star, aux_s.theta_star, atol=1e-10)
        np.testing.assert_allclose(grad_a, grad_s, rtol=1e-9)


def test_recurrences_must_be_a_known_mode():
    with pytest.raises(ValueError, match="'auto', 'sequential' or 'associative'"):
        lapsample.BandedHessian(1, recurrences="parallel")
    with pytest.raises(ValueError, match="'auto', 'sequential' or 'associative'"):
        lapsample.LatentGaussianMarginal(
            lapsample.PoissonLog(jnp.ones(3)),
            precision=lambda phi: jnp.ones((2, 3)),
            recurrences="scan",
        )


def test_check_on_the_factor_leaves_indefinite_to_its_own_code():
    # A Hessian with the declared structure that is not positive definite (the
    # negated SV model) must be reported as such, not as a violated structure:
    # its factor was replaced by identities, whose product proves nothing.
    sv, _, phi, banded = CASES["banded1-sv"]
    theta = jnp.zeros(60)
    fn = NegativeLogJoint(lambda t, p: -sv(t, p), TreeRaveller(theta))
    _, factor = _checked_and_late(banded, fn, theta, phi)
    assert not bool(factor.positive_definite) and bool(factor.structure_ok)
    code = factor_result(factor, lapsample.RESULTS.successful)
    assert code == lapsample.RESULTS.hessian_not_positive_definite


def test_verify_false_skips_the_jit_check_but_not_check():
    log_joint, d, phi, _ = VIOLATIONS["banded"]
    strategy = lapsample.BandedHessian(bandwidth=2, verify=False)
    marginal = lapsample.LaplaceMarginal(log_joint, jnp.zeros(d), hessian=strategy)
    with pytest.raises(ValueError, match="does not have the structure"):
        marginal.check(phi)
    value, aux = eqx.filter_jit(marginal)(phi)
    # Silently wrong, as documented: the factor sees an aliased band.
    assert aux.result == lapsample.RESULTS.successful and jnp.isfinite(value)


def test_structured_model_passes_check_with_diagonal_model():
    # DiagonalHessian's check passes on a genuinely diagonal model.
    def log_joint(theta, phi):
        return jnp.sum(-0.5 * (theta / jnp.exp(phi)) ** 2 - jnp.exp(theta))

    marginal = lapsample.LaplaceMarginal(
        log_joint, jnp.zeros(20), hessian=lapsample.DiagonalHessian()
    )
    marginal.check(jnp.array(0.3))


def test_block_size_must_divide_the_latent():
    log_joint, _, phi, _ = CASES["block3-grouped"]
    marginal = lapsample.LaplaceMarginal(
        log_joint, jnp.zeros(60), hessian=lapsample.BlockDiagonalHessian(7)
    )
    with pytest.raises(ValueError, match="multiple of 7"):
        marginal.check(phi)


@pytest.mark.parametrize(
    "make",
    [
        lambda: lapsample.BandedHessian(bandwidth=0),
        lambda: lapsample.BlockDiagonalHessian(block_size=-2),
    ],
)
def test_invalid_sizes(make):
    with pytest.raises(ValueError, match="must be at least 1"):
        make()


# --------------------------------------------------------------------------------
# Stochastic volatility, T = 1000, against a long full-joint NUTS run (slow)
# --------------------------------------------------------------------------------

SV_REFERENCE = pathlib.Path(__file__).parent / "data" / "sv_reference.json"


def _load_example(name):
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stochastic_volatility_as_a_latent_gaussian_equals_banded():
    """The SV example's two formulations: `BandedHessian(1)` on the log joint and
    `LatentGaussianMarginal` with the AR(1) precision and a custom likelihood.
    Same mode and gradient; the values differ by the constants the log joint
    drops, exactly `T log 2π`."""
    sv = _load_example("stochastic_volatility")
    y = sv.simulate(200)
    vg = eqx.filter_jit(lambda m, p: jax.value_and_grad(m, has_aux=True)(p))
    phi = sv.PHI_INIT + jnp.array([-0.8, 0.5, 0.3])
    (value_b, aux_b), grad_b = vg(sv.marginal_for(y), phi)
    (value_l, aux_l), grad_l = vg(sv.latent_gaussian_marginal_for(y), phi)
    assert aux_b.result == aux_l.result == lapsample.RESULTS.successful
    np.testing.assert_allclose(aux_l.theta_star, aux_b.theta_star, atol=1e-9)
    np.testing.assert_allclose(
        value_b - value_l, 200 * np.log(2 * np.pi), rtol=0, atol=1e-9
    )
    np.testing.assert_allclose(grad_l, grad_b, rtol=1e-8)


def _laplace_posterior_moments(marginal, reference, names, n=25):
    """Mean and sd of each phi coordinate under the Laplace-approximate posterior,
    by the trapezoid rule on an n³ grid over reference mean ± 6 reference sds
    (spacing 0.5 sd; the density is smooth and its mass at the grid's faces is
    below 1e-4, so the rule's error is far below the Monte Carlo errors compared)."""
    centre = np.array([reference[k]["mean"] for k in names])
    sd = np.array([reference[k]["sd"] for k in names])
    axes = [c + s * np.linspace(-6, 6, n) for c, s in zip(centre, sd)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(names))
    _, aux = eqx.filter_jit(marginal)(jnp.asarray(centre))

    @eqx.filter_jit
    def evaluate(marginal, points, guess):
        return jax.lax.map(lambda p: marginal(p, guess)[0], points, batch_size=625)

    log_density = np.asarray(evaluate(marginal, jnp.asarray(grid), aux.theta_star))
    assert np.all(np.isfinite(log_density))
    weights = np.exp(log_density - log_density.max())
    weights /= weights.sum()
    mean = weights @ grid
    return mean, np.sqrt(weights @ (grid - mean) ** 2)


@pytest.mark.slow
def test_stochastic_volatility_against_full_joint_nuts():
    """SV with T = 1000: `lapsample.sample` with the banded Laplace marginal vs the
    fixture tests/data/sv_reference.json, a long full-joint NUTS run (NumPyro 0.22,
    non-centred, 4 chains × 10,000 draws after 1000 warm-up, seed 1) made once by
    `python benchmarks/make_sv_reference.py --write`.

    The Laplace marginal is not exact for SV (the likelihood is not Gaussian in
    theta), so the comparison is split in two, each with its own error:

    1. The sampler: moments of the draws vs the moments of the Laplace-approximate
       posterior itself, by quadrature over phi (no Monte Carlo error). z = the
       difference over the draws' MCSE; |z| < Z_MAX = 4.
    2. The approximation: quadrature moments vs the full-joint reference. Measured
       when this test was written: mean differences of +0.011, -0.051 and -0.017
       posterior sds (mu, logit_rho, log_sigma; the logit_rho one is 4.6 reference
       MCSEs, so the Laplace bias is visible) and sds 1-2% wider. Asserted: every
       mean within 0.1 posterior sd and every sd within 5%, an accuracy claim
       about the approximation (about twice what was measured), not a Monte Carlo
       tolerance.

    Direct z-scores of the draws vs the reference (combined MCSE) are printed.
    """
    reference = json.loads(SV_REFERENCE.read_text())
    sv = _load_example("stochastic_volatility")
    marginal = sv.marginal_for(sv.simulate(reference["T"]))
    quad_mean, quad_sd = _laplace_posterior_moments(
        marginal, reference["phi"], sv.PHI_NAMES
    )
    results = lapsample.sample(
        jax.random.key(7),
        marginal,
        sv.PHI_INIT,
        num_warmup=500,
        num_samples=1000,
        num_chains=4,
        progress_bar=False,
    )
    phi = np.asarray(results.phi)
    z_sampler, z_direct, bias = {}, {}, {}
    for i, name in enumerate(sv.PHI_NAMES):
        draws = phi[:, :, i]
        check_mixing(draws, name)
        ref = reference["phi"][name]
        for stat, value, se, exact in (
            ("mean", draws.mean(), mcse(draws, "mean"), quad_mean[i]),
            ("sd", draws.std(ddof=1), mcse(draws, "sd"), quad_sd[i]),
        ):
            z_sampler[f"{name}.{stat}"] = (value - exact) / se
            z_direct[f"{name}.{stat}"] = (value - ref[stat]) / np.hypot(
                se, ref[f"mcse_{stat}"]
            )
        bias[name] = (
            (quad_mean[i] - ref["mean"]) / ref["sd"],
            quad_sd[i] / ref["sd"] - 1,
        )
    print("sampler vs Laplace quadrature z:", _rounded(z_sampler))
    print("draws vs full-joint reference z:", _rounded(z_direct))
    print("Laplace bias (mean in sds, relative sd):", _rounded(bias))
    bad = {k: v for k, v in z_sampler.items() if abs(v) >= Z_MAX}
    assert not bad, f"sampler |z| >= {Z_MAX}: {bad} (all: {z_sampler})"
    for name, (mean_shift, sd_change) in bias.items():
        assert abs(mean_shift) < 0.1, (name, mean_shift)
        assert abs(sd_change) < 0.05, (name, sd_change)


def _rounded(d):
    return {
        k: tuple(round(float(x), 3) for x in v)
        if isinstance(v, tuple)
        else round(float(v), 2)
        for k, v in d.items()
    }
