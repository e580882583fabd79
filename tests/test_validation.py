"""Bad input gets a clear Python error naming the fix, before any compilation."""

import jax.numpy as jnp
import jax.scipy.stats as jstats
import pytest

import lapsample as ls

from .helpers import seed_model


def test_integer_theta_init():
    with pytest.raises(TypeError, match="must be floating point"):
        ls.LaplaceMarginal(seed_model(3), jnp.zeros(3, dtype=int))


def test_theta_init_not_an_array():
    with pytest.raises(TypeError, match="not an array"):
        ls.LaplaceMarginal(seed_model(3), {"a": "zeros"})


def test_log_joint_not_callable():
    # (Under the test suite's runtime type checker the annotation check fires
    # first; users see lapsample's own message.)
    with pytest.raises(TypeError, match="must be a callable|Callable"):
        ls.LaplaceMarginal(jnp.zeros(3), jnp.zeros(3))


def test_wrong_component_types():
    with pytest.raises(TypeError, match="AbstractInnerSolver"):
        ls.LaplaceMarginal(seed_model(3), jnp.zeros(3), inner_solver="newton")
    with pytest.raises(TypeError, match="AbstractHessianStrategy"):
        ls.LaplaceMarginal(seed_model(3), jnp.zeros(3), hessian=ls.Newton())


def test_integer_phi():
    marginal = ls.LaplaceMarginal(seed_model(3), jnp.zeros(3))
    with pytest.raises(TypeError, match="phi.*must be floating point"):
        marginal.check(jnp.array(1))


def test_theta_init_wrong_shape():
    marginal = ls.LaplaceMarginal(seed_model(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="structure and shapes"):
        marginal.check(jnp.array(0.0))


def test_theta_init_wrong_structure():
    def log_joint(theta, phi):
        return jstats.norm.logpdf(theta["a"], 0.0, jnp.exp(phi)).sum()

    marginal = ls.LaplaceMarginal(log_joint, {"b": jnp.zeros(2)})
    with pytest.raises(ValueError, match="structure and shapes"):
        marginal.check(jnp.array(0.0))


def test_non_scalar_output():
    marginal = ls.LaplaceMarginal(lambda t, p: -(t**2) * p, jnp.zeros(3))
    with pytest.raises(ValueError, match="must return a scalar"):
        marginal.check(jnp.array(1.0))


def test_non_float_output():
    marginal = ls.LaplaceMarginal(lambda t, p: jnp.sum(t > p), jnp.zeros(3))
    with pytest.raises(ValueError, match="floating-point log density"):
        marginal.check(jnp.array(1.0))


def test_non_finite_phi_is_named():
    marginal = ls.LaplaceMarginal(seed_model(3), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"not finite: phi"):
        marginal.check(jnp.array(jnp.nan))


def test_non_finite_model_at_start():
    def log_joint(theta, phi):
        # Poisson rate exp(theta) = 1 but a zero-probability observation model.
        return jnp.sum(jnp.log(theta)) - phi**2

    marginal = ls.LaplaceMarginal(log_joint, jnp.zeros(3))
    with pytest.raises(ValueError, match="inside the support"):
        marginal.check(jnp.array(0.5))


def test_non_finite_gradient_at_start():
    # sqrt has an infinite slope at 0: finite value, infinite gradient.
    marginal = ls.LaplaceMarginal(
        lambda t, p: -jnp.sum(jnp.sqrt(t)) - p**2, jnp.zeros(3)
    )
    with pytest.raises(ValueError, match="gradient is"):
        marginal.check(jnp.array(0.5))


def test_good_input_passes():
    ls.LaplaceMarginal(seed_model(3), jnp.zeros(3)).check(jnp.array(0.1))
