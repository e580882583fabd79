"""Property-based tests: random Gaussian-Gaussian models, where the Laplace marginal
has a closed form, with random dimensions, PyTree structures and scales spanning
1e-3 to 1e3."""

import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np
from hypothesis import given, HealthCheck, settings

import lapsample as ls


def _unflatten(flat, shapes):
    out, start = {}, 0
    for i, shape in enumerate(shapes):
        size = math.prod(shape)
        out[f"block{i}"] = flat[start : start + size].reshape(shape)
        start += size
    return out


@st.composite
def gaussian_models(draw):
    shapes = draw(
        st.lists(
            hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3),
            min_size=1,
            max_size=3,
        )
    )
    d = sum(math.prod(s) for s in shapes)
    m = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    log_scale = draw(st.floats(math.log(1e-3), math.log(1e3)))
    noise = draw(st.floats(1e-3, 1e3))
    design = rng.normal(size=(m, d))
    prior_root = rng.normal(size=(d, d)) / math.sqrt(d) + np.eye(d)
    y = rng.normal(size=m) * (1 + noise)
    return shapes, design, prior_root @ prior_root.T, noise, y, log_scale


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(gaussian_models())
def test_random_gaussian_models_match_closed_form(case):
    # theta ~ N(mu · 1, s² Σ₀), y ~ N(C theta, r² I): the marginal is
    # y ~ N(mu C 1, s² C Σ₀ Cᵀ + r² I), and Laplace is exact.
    shapes, design, sigma0, noise, y, log_scale = case
    design, sigma0, y = jnp.asarray(design), jnp.asarray(sigma0), jnp.asarray(y)
    d = sigma0.shape[0]
    prior_chol = jnp.linalg.cholesky(sigma0)

    def log_joint(theta, phi):
        flat = jnp.concatenate(
            [jnp.ravel(theta[f"block{i}"]) for i in range(len(shapes))]
        )
        s = jnp.exp(phi["log_scale"])
        mean = phi["mu"] * jnp.ones(d)
        white = (
            jax.scipy.linalg.solve_triangular(prior_chol, flat - mean, lower=True) / s
        )
        log_prior = (
            -0.5 * jnp.dot(white, white)
            - d * phi["log_scale"]
            - jnp.sum(jnp.log(jnp.diagonal(prior_chol)))
            - 0.5 * d * math.log(2 * math.pi)
        )
        return log_prior + jstats.norm.logpdf(y, design @ flat, noise).sum()

    def exact(phi):
        s2 = jnp.exp(2 * phi["log_scale"])
        cov = s2 * design @ sigma0 @ design.T + noise**2 * jnp.eye(y.shape[0])
        mean = phi["mu"] * design @ jnp.ones(d)
        return jstats.multivariate_normal.logpdf(y, mean, cov)

    theta_init = _unflatten(jnp.zeros(d), shapes)
    marginal = ls.LaplaceMarginal(log_joint, theta_init)
    phi = {"log_scale": jnp.asarray(log_scale), "mu": jnp.asarray(0.3)}
    (value, aux), grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))(phi)
    value_exact, grad_exact = jax.jit(jax.value_and_grad(exact))(phi)
    assert aux.result == ls.RESULTS.successful
    assert jax.tree_util.tree_structure(aux.theta_star) == jax.tree_util.tree_structure(
        theta_init
    )
    # Rounding error in a solve grows like cond(H)·eps, and these models span six
    # decades of scale (cond(H) up to ~1e9), so the tolerance follows that
    # bound with a factor 100 of headroom, and 1e-10 for well-conditioned cases.
    s2 = float(jnp.exp(2 * log_scale))
    hess = np.linalg.inv(s2 * np.asarray(sigma0)) + design.T @ design / noise**2
    tol = 1e-10 + 100 * np.finfo(np.float64).eps * np.linalg.cond(np.asarray(hess))
    assert abs(float(value - value_exact)) <= tol * (1 + abs(float(value_exact)))
    for k in phi:
        g, ge = float(grad[k]), float(grad_exact[k])
        assert abs(g - ge) <= tol * (abs(ge) + 1)
