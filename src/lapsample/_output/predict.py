r"""Predictions from the draws of a run: a user function mapped over every draw
(`predictive`) and the Gaussian-process conditional of the latent at new points
(`predict_latent`).

With `theta ~ N(m, K)` at the observed points and `theta_new` jointly Gaussian with
it (mean `m*`, cross-covariance `K*` of shape `n × n_new`, covariance `K**`),

    theta_new | theta, phi ~ N(m* + K*ᵀ K⁻¹ (theta - m),  K** - K*ᵀ K⁻¹ K*),

computed with one Cholesky `K = L Lᵀ`: `V = L⁻¹ K*`, mean `m* + Vᵀ L⁻¹ (theta - m)`,
covariance `K** - Vᵀ V` (Rasmussen & Williams, *Gaussian Processes for Machine
Learning*, §2.2, in our own notation). The conditional covariance is only positive
semidefinite (zero at an observed point), so draws use its symmetric square root
from an eigendecomposition with the eigenvalues that rounding made negative set to
zero, not a Cholesky with jitter.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._marginal.latent_gaussian import LatentGaussianMarginal
from .sample_results import SampleResults


def _theta_draws(results: SampleResults, caller: str):
    if not isinstance(results, SampleResults):
        raise TypeError(
            f"`{caller}` takes the `lapsample.SampleResults` of `lapsample.sample`, "
            f"got {type(results).__name__}."
        )
    if results.theta is None:
        raise ValueError(
            f"`{caller}` needs draws of the latent `theta`: run "
            "`lapsample.sample(..., sample_theta=True)`."
        )
    return results.theta


def _map_draws(per_draw: Callable, key, args, shape, batch_size):
    """`per_draw(key, *args)` over every `(chain, draw)` under one jit, each with
    its own key from `jr.split(key, (chains, draws))`; host numpy out."""
    chains, draws = shape
    keys = jr.split(key, (chains, draws))

    def flat(x):
        return jnp.reshape(jnp.asarray(x), (chains * draws, *np.shape(x)[2:]))

    @jax.jit
    def run(keys, args):
        out = jax.lax.map(
            lambda xs: per_draw(*xs),
            (flat(keys), *jtu.tree_map(flat, args)),
            batch_size=chains * draws if batch_size is None else batch_size,
        )
        return jtu.tree_map(
            lambda x: jnp.reshape(x, (chains, draws, *x.shape[1:])), out
        )

    return jtu.tree_map(np.asarray, jax.device_get(run(keys, args)))


def _check_batch_size(batch_size):
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive int or None, got {batch_size!r}."
        )


def predictive(
    key: PRNGKeyArray,
    results: SampleResults,
    fn: Callable[[PRNGKeyArray, Any, Any], PyTree[Array]],
    *,
    batch_size: int | None = None,
) -> PyTree[np.ndarray]:
    """Posterior predictive draws: `fn(key, theta, phi)` at every draw of a run
    made with `sample_theta=True`, e.g. to simulate replicated data.

    ```python
    results = lapsample.sample(key, marginal, phi_init, sample_theta=True)

    def replicate(key, theta, phi):
        return jax.random.poisson(key, jnp.exp(theta))

    y_rep = lapsample.predictive(jax.random.key(1), results, replicate)
    y_rep.shape  # (chains, draws, n)
    ```

    `fn` is mapped over all draws with `jax.vmap` under one `jax.jit`; the draw
    `(c, d)` gets the key `jax.random.split(key, (chains, draws))[c, d]`, so the
    answer depends only on `key` (not on `batch_size`).

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `results`: the [`lapsample.SampleResults`][] of a run with
      `sample_theta=True`.
    - `fn`: `(key, theta, phi) -> PyTree of arrays`, written for one draw; `theta`
      and `phi` are as stored in `results` (for a
      [`lapsample.NumPyroModel`][], `phi` is unconstrained: use its own
      `predictive` instead). A `theta` draw is NaN where the Hessian was not
      positive definite, and so then is what `fn` computes from it.
    - `batch_size`: draws evaluated at once (`jax.lax.map`'s `batch_size`), to bound
      memory; default all of them.

    **Returns:**

    `fn`'s PyTree with numpy arrays of leading axes `(chains, draws)`.
    """
    theta = _theta_draws(results, "predictive")
    if not callable(fn):
        raise TypeError(f"`fn` must be a function `(key, theta, phi)`, got {fn!r}.")
    _check_batch_size(batch_size)
    shape = (results.num_chains, results.num_samples)
    return _map_draws(fn, key, (theta, results.phi), shape, batch_size)


def _conditional(marginal, theta, phi, cross_covariance, new_covariance, new_mean):
    """The mean and covariance (or its diagonal) of `theta_new | theta, phi`."""
    cov = jnp.asarray(marginal.covariance(phi))
    n = cov.shape[0]
    dtype = cov.dtype
    mean = (
        jnp.zeros(n, dtype)
        if marginal.mean is None
        else jnp.broadcast_to(jnp.asarray(marginal.mean(phi), dtype), (n,))
    )
    cross = jnp.asarray(cross_covariance(phi), dtype)
    new = jnp.asarray(new_covariance(phi), dtype)
    new_mu = jnp.broadcast_to(jnp.asarray(new_mean(phi), dtype), (cross.shape[1],))
    lower = jnp.linalg.cholesky(cov)
    v = jsl.solve_triangular(lower, cross, lower=True)
    r = jsl.solve_triangular(lower, jnp.asarray(theta, dtype) - mean, lower=True)
    mu = new_mu + v.T @ r
    if new.ndim == 1:
        return mu, new - jnp.sum(v * v, axis=0), jnp.max(jnp.abs(new))
    return mu, new - v.T @ v, jnp.max(jnp.abs(jnp.diagonal(new)))


def _draw(key, mu, cov, scale):
    """One draw of `N(mu, cov)` for a positive semidefinite `cov` (its diagonal
    alone: independent marginals); NaN where `cov` has an eigenvalue below
    `-√eps · scale`, the largest prior variance `K**_ii` at the new points (not
    rounding: the three covariances are inconsistent)."""
    z = jr.normal(key, mu.shape, mu.dtype)
    tol = jnp.sqrt(jnp.finfo(mu.dtype).eps) * scale
    if cov.ndim == 1:
        bad = jnp.any(cov < -tol)
        return jnp.where(bad, jnp.nan, mu + jnp.sqrt(jnp.maximum(cov, 0.0)) * z)
    cov = 0.5 * (cov + cov.T)
    values, vectors = jnp.linalg.eigh(cov)
    bad = jnp.min(values) < -tol
    root = vectors * jnp.sqrt(jnp.maximum(values, 0.0))
    return jnp.where(bad, jnp.nan, mu + root @ (vectors.T @ z))


def _default_new_mean(marginal, phi0):
    if marginal.mean is None:
        return lambda phi: 0.0
    shape = jax.eval_shape(marginal.mean, phi0).shape
    if shape != ():
        raise ValueError(
            "The marginal's `mean` gives one value per observed latent (shape "
            f"{shape}), so the mean at the new points is unknown: give "
            "`new_mean=phi -> m*` (shape (n_new,))."
        )
    return marginal.mean


def predict_latent(
    key: PRNGKeyArray,
    results: SampleResults,
    cross_covariance: Callable[[Any], Array],
    new_covariance: Callable[[Any], Array],
    new_mean: Callable[[Any], Array] | None = None,
    *,
    return_mean_cov: bool = False,
    batch_size: int | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    r"""The latent at new points (Gaussian-process prediction), one draw per draw
    of a [`lapsample.LatentGaussianMarginal`][] run with `sample_theta=True` and a
    `covariance=`:

    $$\theta_* \mid \theta, \phi \sim N\big(m_* + K_*^\top K^{-1}(\theta - m),\;
    K_{**} - K_*^\top K^{-1} K_*\big),$$

    with `K = covariance(phi)` and `m = mean(phi)` of the marginal at the observed
    latents, and `K*`, `K**`, `m*` from the functions below. Drawn at every
    `(theta, phi)` draw, these are draws of the posterior predictive of the latent.

    ```python
    def cross(phi):  # n × n_new
        return kernel(x, x_new, phi)

    def new(phi):  # n_new × n_new
        return kernel(x_new, x_new, phi)

    f_new = lapsample.predict_latent(key, results, cross, new)  # (chains, draws, n_new)
    ```

    `K` is factorised by Cholesky as given (no jitter is added: put the same nugget
    in `covariance` as in the model); where it is not positive definite the draw is
    NaN. The conditional covariance is positive semidefinite but may be singular
    (zero at an observed point), so draws use its symmetric square root, with the
    eigenvalues that rounding makes negative set to zero; where an eigenvalue is
    below `-√eps · max diag(K**)` (`cross_covariance` or `new_covariance` do not belong
    to the same kernel as `covariance`) the draw is NaN. Each draw costs
    `O(n³ + n² n_new + n_new³)`; for many new points, return the diagonal from
    `new_covariance` instead.

    **Arguments:**

    - `key`: a JAX PRNG key; the draw `(c, d)` uses
      `jax.random.split(key, (chains, draws))[c, d]`.
    - `results`: the [`lapsample.SampleResults`][] of a `LatentGaussianMarginal`
      with `covariance=` (not `precision=`: its latent has no covariance function
      to extend to new points), run with `sample_theta=True`.
    - `cross_covariance`: `phi -> K*`, the covariance between the observed latents
      and the new points, shape `(n, n_new)`.
    - `new_covariance`: `phi -> K**`, shape `(n_new, n_new)`; or its diagonal,
      shape `(n_new,)`, for independent draws from each new point's marginal
      (no correlation between new points: cheaper, and enough for pointwise
      intervals).
    - `new_mean`: `phi -> m*` at the new points (a scalar or shape `(n_new,)`).
      Default: `0` if the marginal has no `mean`, the marginal's `mean` if it gives
      a scalar (a constant mean), else an error asks for it.
    - `return_mean_cov`: return the conditional's mean and covariance (or
      diagonal) at every draw instead of draws.
    - `batch_size`: draws evaluated at once, to bound memory; default all.

    **Returns:**

    Draws of shape `(chains, draws, n_new)`; with `return_mean_cov=True`, the tuple
    `(mean, cov)` of shapes `(chains, draws, n_new)` and `(chains, draws, n_new,
    n_new)` (or `(chains, draws, n_new)` for a diagonal `new_covariance`).
    """
    theta = _theta_draws(results, "predict_latent")
    marginal = results.sampler.marginal
    if not isinstance(marginal, LatentGaussianMarginal):
        raise TypeError(
            "`predict_latent` is for a `lapsample.LatentGaussianMarginal` with "
            f"`covariance=`; this run's marginal is a {type(marginal).__name__}. "
            "For other models, use `lapsample.predictive` with your own function."
        )
    if marginal.covariance is None:
        raise ValueError(
            "`predict_latent` needs the covariance form (`covariance=phi -> K`): "
            "a `precision=` latent has no covariance function to extend to new "
            "points."
        )
    for name, fn in (
        ("cross_covariance", cross_covariance),
        ("new_covariance", new_covariance),
        ("new_mean", new_mean),
    ):
        if fn is not None and not callable(fn):
            raise TypeError(f"`{name}` must be a function of `phi`, got {fn!r}.")
    _check_batch_size(batch_size)
    phi0 = jtu.tree_map(lambda x: jnp.asarray(x[0, 0]), results.phi)
    if new_mean is None:
        new_mean = _default_new_mean(marginal, phi0)
    n = theta.shape[-1]
    cross_shape = jax.eval_shape(cross_covariance, phi0).shape
    if len(cross_shape) != 2 or cross_shape[0] != n:
        raise ValueError(
            f"`cross_covariance(phi)` has shape {cross_shape}; it must be "
            f"(n, n_new) = ({n}, n_new), the observed latents by the new points."
        )
    n_new = cross_shape[1]
    new_shape = jax.eval_shape(new_covariance, phi0).shape
    if new_shape not in ((n_new, n_new), (n_new,)):
        raise ValueError(
            f"`new_covariance(phi)` has shape {new_shape}; it must be "
            f"({n_new}, {n_new}) or its diagonal ({n_new},)."
        )

    def per_draw(key, theta, phi):
        mu, cov, scale = _conditional(
            marginal, theta, phi, cross_covariance, new_covariance, new_mean
        )
        return (mu, cov) if return_mean_cov else _draw(key, mu, cov, scale)

    shape = (results.num_chains, results.num_samples)
    return _map_draws(per_draw, key, (theta, results.phi), shape, batch_size)
