"""The default Hessian strategy (`AutoHessian`): it picks the cheapest strategy
whose structure holds, once, before compiling; the pick gives the dense marginal's
value and gradient; a structure it misses is caught, not wrong; an unresolved one
is exactly dense; and a large dense Hessian is announced before anything runs."""

import logging
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import pytest

import lapsample

from .helpers import evaluate, seed_model, value_and_grad
from .test_detect import _expected, CASES


def _lapsample_log(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "lapsample")


@pytest.mark.parametrize("name", ["diagonal-seed", "rw2", "blocks-of-3", "gp-dense"])
def test_default_picks_the_structure_and_matches_dense(name, caplog):
    log_joint, d, phi, (kind, size), _ = CASES[name]
    caplog.set_level(logging.INFO, logger="lapsample")
    # max_size=8 as in test_detect (a wider search changes nothing here).
    auto = lapsample.LaplaceMarginal(
        log_joint, jnp.zeros(d), hessian=lapsample.AutoHessian(max_size=8)
    )
    resolved = auto.with_hessian_for(phi)
    expected = _expected(kind, size)
    assert resolved.hessian == expected, resolved.hessian_reason
    # It says what it chose: the log line, the repr, and why.
    assert "chosen by AutoHessian" in resolved.hessian_reason
    assert repr(expected) in repr(resolved)
    assert repr(expected) in _lapsample_log(caplog)
    if kind != "dense":
        # Structured picks keep their structure check.
        assert resolved.hessian.verify
    dense = lapsample.LaplaceMarginal(
        log_joint, jnp.zeros(d), hessian=lapsample.DenseHessian()
    )
    (value, aux), grad = value_and_grad(resolved, phi)
    (value_d, _), grad_d = value_and_grad(dense, phi)
    assert aux.result == lapsample.RESULTS.successful
    np.testing.assert_allclose(value, value_d, rtol=1e-11)
    np.testing.assert_allclose(grad, grad_d, rtol=1e-9, atol=1e-11)


def test_the_default_is_auto_and_check_uses_the_pick(caplog):
    caplog.set_level(logging.INFO, logger="lapsample")
    marginal = lapsample.LaplaceMarginal(seed_model(12), jnp.zeros(12))
    assert marginal.hessian == lapsample.AutoHessian()
    marginal.check(jnp.array(0.3))
    assert "DiagonalHessian()" in _lapsample_log(caplog)
    # A given strategy is kept as it is.
    given = lapsample.LaplaceMarginal(
        seed_model(12), jnp.zeros(12), hessian=lapsample.DenseHessian()
    )
    assert given.with_hessian_for(jnp.array(0.3)) is given


def test_unresolved_evaluates_as_dense_and_says_how_to_detect(caplog):
    caplog.set_level(logging.DEBUG, logger="lapsample")
    log_joint = seed_model(12)
    auto = lapsample.LaplaceMarginal(log_joint, jnp.zeros(12))
    dense = lapsample.LaplaceMarginal(
        log_joint, jnp.zeros(12), hessian=lapsample.DenseHessian()
    )
    phi = jnp.array(0.3)
    value, aux = evaluate(auto, phi)
    value_d, _ = evaluate(dense, phi)
    assert aux.result == lapsample.RESULTS.successful
    # The same computation: equal, not merely close.
    assert float(value) == float(value_d)
    assert "with_hessian_for" in _lapsample_log(caplog)

    # Under the user's jit phi is a tracer: no detection, the marginal unchanged.
    @eqx.filter_jit
    def inside(m, p):
        assert m.with_hessian_for(p) is m
        return m(p)[0]

    assert float(inside(auto, phi)) == float(value_d)


class _CoupledFarAway(eqx.Module):
    """The seed model plus a coupling `(theta_1 − theta_2)²` weighted by
    `0.2·relu(theta_0 − 2)³`: exactly zero near `theta_init = 0` (so the detection
    sees a diagonal Hessian) and switched on at the mode, where `y_0 = 4` pulls
    `theta_0` to about 3.5."""

    y: jax.Array

    def __call__(self, theta, log_sigma):
        weight = 0.2 * jnp.maximum(theta[0] - 2.0, 0.0) ** 3
        return (
            jstats.norm.logpdf(log_sigma, 0.0, 3.0)
            + jstats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
            + jstats.norm.logpdf(self.y, theta, 1.0).sum()
            - 0.5 * weight * (theta[1] - theta[2]) ** 2
        )


def test_coupling_away_from_theta_init_is_caught_and_names_the_fix():
    y = jnp.concatenate([jnp.array([4.0]), 0.5 * jr.normal(jr.key(3), (7,))])
    log_joint = _CoupledFarAway(y)
    phi = jnp.array(1.0)
    marginal = lapsample.LaplaceMarginal(log_joint, jnp.zeros(8))
    resolved = marginal.with_hessian_for(phi)
    # The detection is fooled (the coupling is zero near theta_init) ...
    assert resolved.hessian == lapsample.DiagonalHessian()
    # ... and the check at theta_init cannot see it either ...
    resolved.check(phi)
    # ... but the structure check at the mode refuses the value: -inf and a code,
    # never a wrong number.
    value, aux = evaluate(resolved, phi)
    assert aux.result == lapsample.RESULTS.structure_violated
    assert float(value) == -np.inf
    dense = lapsample.LaplaceMarginal(
        log_joint, jnp.zeros(8), hessian=lapsample.DenseHessian()
    )
    value_d, aux_d = evaluate(dense, phi)
    assert aux_d.result == lapsample.RESULTS.successful
    assert np.isfinite(float(value_d))
    # `sample` resolves the same way and its start failure names what to pass.
    with pytest.raises(ValueError, match=r"hessian=lapsample\.DenseHessian\(\)"):
        lapsample.sample(
            jr.key(0),
            marginal,
            phi,
            num_warmup=0,
            num_samples=1,
            num_chains=1,
            progress_bar=False,
        )


def _never_called(theta, phi):
    raise AssertionError("the log joint was evaluated")


@pytest.mark.parametrize("strategy", [lapsample.DenseHessian, lapsample.LineaxHessian])
def test_large_dense_hessian_warns_before_anything_runs(strategy):
    # The log joint raises if called: the warning comes from `d` alone, at
    # construction, before any tracing or compilation.
    with pytest.warns(lapsample.LargeDenseHessianWarning) as record:
        lapsample.LaplaceMarginal(_never_called, jnp.zeros(20_000), hessian=strategy())
    message = str(record[0].message)
    for phrase in ("GiB", "detect_hessian", "DiagonalHessian", "LatentGaussian"):
        assert phrase in message
    # Small d: no warning (pytest turns any warning into an error).
    lapsample.LaplaceMarginal(_never_called, jnp.zeros(1000), hessian=strategy())
    # The default does not warn at construction: it may pick a structure.
    lapsample.LaplaceMarginal(_never_called, jnp.zeros(20_000))
    # Filtered by its category.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=lapsample.LargeDenseHessianWarning)
        lapsample.LaplaceMarginal(_never_called, jnp.zeros(20_000), hessian=strategy())


def test_auto_choosing_a_large_dense_hessian_warns_before_compiling_the_marginal():
    def coupled(theta, phi):
        # Hessian I + 11ᵀ: every latent coupled to every other, so dense.
        return -0.5 * jnp.sum(theta**2) - 0.5 * jnp.sum(theta) ** 2 + 0.0 * phi

    marginal = lapsample.LaplaceMarginal(coupled, jnp.zeros(3000))
    with pytest.warns(lapsample.LargeDenseHessianWarning, match="d = 3000"):
        resolved = marginal.with_hessian_for(jnp.array(0.0))
    assert resolved.hessian == lapsample.DenseHessian()


@pytest.mark.parametrize("kwargs", [{"num_points": 0}, {"max_size": 0}])
def test_auto_hessian_settings_are_checked(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        lapsample.AutoHessian(**kwargs)


def test_sample_resolves_once_and_summary_says_which(capsys):
    marginal = lapsample.LaplaceMarginal(seed_model(10), jnp.zeros(10))
    results = lapsample.sample(
        jr.key(1),
        marginal,
        jnp.array(0.0),
        num_warmup=10,
        num_samples=10,
        num_chains=1,
        progress_bar=False,
    )
    assert results.sampler.marginal.hessian == lapsample.DiagonalHessian()
    with warnings.catch_warnings():
        # The deliberately short run's own diagnostics are not the point here.
        warnings.simplefilter("ignore")
        df = results.summary()
        results.print_summary()
    assert df.attrs["hessian"].startswith("hessian: DiagonalHessian()")
    assert "chosen by AutoHessian" in df.attrs["hessian"]
    assert "hessian: DiagonalHessian()" in capsys.readouterr().out
