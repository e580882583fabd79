"""`laplace_check`: importance sampling of the latent at a few `phi` to tell whether
the Laplace approximation of `p(theta | phi, y)` can be trusted there."""

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._marginal.base import AbstractLaplaceMarginal, AbstractMarginal
from ._misc import import_arviz
from ._output.check_results import LaplaceCheckResults
from ._output.sample_results import SampleResults
from ._results import RESULTS
from ._validate import check_int, check_key


# Log-weights whose spread (max - min) is below this many float epsilons, relative
# to the size of the log joint at the mode, are "constant to rounding": the
# Laplace approximation is then exact and k̂ is reported as -inf (ArviZ's fit
# would return +inf for an empty tail, or fit a tail to rounding noise).
_ROUNDING_ULPS = 1e4


# --------------------------------------------------------------------------------
# The computation.
# --------------------------------------------------------------------------------


def _log_weights_one(marginal, num_draws: int, df, phi, guess, key):
    """Log-weights relative to the Laplace value at one `phi`:
    `log p(theta, phi, y) - log q(theta | phi) - laplace(phi)`."""
    proposal = marginal.laplace_conditional(phi, guess)
    theta = proposal.theta_star
    d = theta.shape[0]
    draw_key, scale_key = jr.split(key)
    u = jax.vmap(proposal.draw)(jr.split(draw_key, num_draws))
    if df is not None:
        # Student-t with the same centre and scale: u / sqrt(chi²_df / df).
        chi2 = 2.0 * jr.gamma(scale_key, df / 2.0, (num_draws,), dtype=u.dtype)
        u = u * jnp.sqrt(df / chi2)[:, None]
    quad = jax.vmap(proposal.quadratic_form)(u)
    lp0 = proposal.log_joint(theta)
    # log p(theta) - log p(theta*) ...
    log_ratio = jax.vmap(lambda v: proposal.log_joint(theta + v))(u) - lp0
    # ... minus log q(theta) - log q_Gauss(theta*); the normalisers of q and of the
    # Laplace value share log det H, which cancels.
    if df is None:
        log_w = log_ratio + 0.5 * quad
    else:
        const = (
            jax.scipy.special.gammaln((df + d) / 2.0)
            - jax.scipy.special.gammaln(df / 2.0)
            - 0.5 * d * jnp.log(df / 2.0)
        )
        log_w = log_ratio + 0.5 * (df + d) * jnp.log1p(quad / df) - const
    # A draw where the model is NaN counts as zero density, as in the sampler.
    log_w = jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)
    return proposal.value, log_w, proposal.result, -lp0


@eqx.filter_jit
def _log_weights(marginal, num_draws, df, phis, guesses, keys):
    def one(args):
        phi, guess, key = args
        value, log_w, result, f0 = _log_weights_one(
            marginal, num_draws, df, phi, guess, key
        )
        return value, log_w, result._value, f0

    # Sequential over phi: a dense Cholesky is never batched (see COMMON notes on
    # batched LAPACK on CPU); the draws at one phi are vectorised.
    return jax.lax.map(one, (phis, guesses, keys))


def _pareto_k(log_w: np.ndarray, scale: float, eps: float) -> float:
    finite = log_w[np.isfinite(log_w)]
    if finite.size < log_w.size and finite.size == 0:
        return math.nan
    spread = float(np.max(finite) - np.min(finite)) if finite.size else math.inf
    if finite.size == log_w.size and spread <= _ROUNDING_ULPS * eps * (1.0 + scale):
        return -math.inf

    az = import_arviz("lapsample.laplace_check")
    _, k = az.psislw(np.asarray(log_w, float).copy(), reff=1.0)
    return float(k)


def _weight_summary(log_w: np.ndarray) -> tuple[float, float, float]:
    """`(log mean w, its delta-method standard error, ESS)`."""
    top = np.max(log_w)
    if not np.isfinite(top):
        return -math.inf, math.nan, 0.0
    w = np.exp(log_w - top)
    mean = w.mean()
    correction = float(top + np.log(mean))
    se = float(w.std(ddof=1) / (math.sqrt(w.size) * mean))
    ess = float(w.sum() ** 2 / np.sum(w**2))
    return correction, se, ess


def _select_from_results(results, num_phi: int):
    phi = results.phi
    leaves = jtu.tree_leaves(phi)
    num_chains, num_samples = np.shape(leaves[0])[:2]
    total = num_chains * num_samples
    if num_phi > total:
        raise ValueError(
            f"`num_phi={num_phi}` is more than the {total} draws in the results; "
            f"pass `num_phi` of at most {total}."
        )
    flat_index = np.round(np.linspace(0, total - 1, num_phi)).astype(int)
    chain, draw = np.divmod(flat_index, num_samples)
    chosen = jtu.tree_map(lambda x: np.asarray(x)[chain, draw], phi)
    guesses = None
    if results.theta_star is not None:
        guesses = jtu.tree_map(lambda x: np.asarray(x)[chain, draw], results.theta_star)
    return chosen, guesses, np.stack([chain, draw], axis=1)


def laplace_check(
    results_or_marginal: Any,
    key: PRNGKeyArray,
    *,
    phi: PyTree[Any] | None = None,
    num_phi: int = 20,
    num_draws: int = 1000,
    df: float | None = None,
) -> LaplaceCheckResults:
    r"""Check the Laplace approximation by importance sampling the latent.

    At each of `num_phi` values of `phi` (spread evenly over the posterior draws of
    a [`lapsample.SampleResults`][], or given), this draws `num_draws` latents from
    the Laplace approximation `q(theta | phi) = N(theta*, H⁻¹)` and computes the
    importance log-weights

    $$\log w = \log p(\theta, \phi, y) - \log q(\theta \mid \phi),$$

    whose mean is the exact marginal `p(y, phi)`. It reports, per `phi`:

    - the Pareto k̂ of the weights (PSIS, via ArviZ's `psislw`): below 0.5 the
      Laplace conditional covers the true one well; from 0.5 to 0.7 usable; 0.7
      or more means the true conditional has mass the approximation misses, and
      the approximation should not be trusted there. Weights constant to
      rounding (the approximation is exact, e.g. a Gaussian likelihood) give
      k̂ = -inf;
    - the correction `log mean(w) - log p̂_Laplace(y, phi)`, with its Monte Carlo
      standard error (delta method) and the effective sample size of the
      weights. A correction that is the same at every `phi` only shifts the log
      marginal, which leaves the posterior of `phi` unchanged; one that varies
      with `phi` distorts it.

    ```python
    results = lapsample.sample(key, marginal, phi_init)
    check = lapsample.laplace_check(results, jax.random.key(1))
    check.print_summary()      # per-phi table and verdict
    check.plot()               # k̂ and the correction against each phi coordinate
    ```

    **Arguments:**

    - `results_or_marginal`: a [`lapsample.SampleResults`][] whose marginal is a
      [`lapsample.LaplaceMarginal`][] or a [`lapsample.LatentGaussianMarginal`][],
      or such a marginal together with `phi`. For the latent-Gaussian marginal,
      `log p(theta, phi, y)` is the Gaussian (or GMRF) prior density plus the
      likelihood's terms plus `log_prior(phi)`, and `H = K⁻¹ + W` (or `Q + W`);
      the draws are those of its `sample_theta`.
    - `key`: a JAX PRNG key.
    - `phi`: the values to check, a PyTree like one `phi` with an extra leading
      axis (required with a marginal; with results it replaces the draws).
    - `num_phi`: how many posterior draws to check (at least 1; ignored when `phi`
      is given).
    - `num_draws`: latent draws per `phi` (at least 2; the k̂ estimate needs a
      few hundred).
    - `df`: if given, the proposal is a multivariate Student-t with `df` degrees of
      freedom and the same centre and scale as `N(theta*, H⁻¹)`. Heavier tails
      than the target's make the weights bounded, so the correction estimate
      stays reliable where the Gaussian proposal gives k̂ > 0.7; k̂ then judges
      the Student-t proposal, not the Laplace approximation.

    **Returns:**

    A [`lapsample.LaplaceCheckResults`][].

    **Cost:** per `phi`, one inner solve and factorisation, plus `num_draws`
    evaluations of `log_joint` (vectorised with `vmap`).

    ??? cite "References"

        ```bibtex
        @article{vehtari2024pareto,
            title={Pareto smoothed importance sampling},
            author={Vehtari, Aki and Simpson, Daniel and Gelman, Andrew and
                    Yao, Yuling and Gabry, Jonah},
            journal={Journal of Machine Learning Research},
            volume={25},
            number={72},
            pages={1--58},
            year={2024}
        }
        ```
    """

    num_draws = check_int("num_draws", num_draws, 2)
    num_phi = check_int("num_phi", num_phi, 1)
    if df is not None:
        if isinstance(df, bool) or not isinstance(df, int | float | np.floating):
            raise TypeError(f"`df` must be a positive float or None, got {df!r}.")
        df = float(df)
        if not (math.isfinite(df) and df > 0):
            raise ValueError(f"`df` must be positive and finite, got {df}.")
    if isinstance(results_or_marginal, SampleResults):
        marginal = results_or_marginal.sampler.marginal
    elif isinstance(results_or_marginal, AbstractMarginal):
        marginal = results_or_marginal
    else:
        raise TypeError(
            "`laplace_check` takes a `lapsample.SampleResults` or a "
            "`lapsample.LaplaceMarginal`/`LatentGaussianMarginal` (with `phi=`), got "
            f"{type(results_or_marginal).__name__}."
        )
    if not isinstance(marginal, AbstractLaplaceMarginal):
        raise ValueError(
            "`laplace_check` needs a marginal with a latent, an "
            "`lapsample.AbstractLaplaceMarginal` such as `lapsample.LaplaceMarginal` "
            "or `lapsample.LatentGaussianMarginal`: there is no latent to check in a "
            f"{type(marginal).__name__}."
        )
    key = check_key(key)
    draw_index = None
    guesses = None
    if phi is None:
        if not isinstance(results_or_marginal, SampleResults):
            raise ValueError(
                "With a marginal, pass the values to check as `phi=`: a PyTree like "
                "one `phi` with a leading axis, e.g. `phi=results.phi[0, ::50]`."
            )
        phi, guesses, draw_index = _select_from_results(results_or_marginal, num_phi)
    leaves = [np.asarray(x) for x in jtu.tree_leaves(phi)]
    if not leaves or any(x.ndim == 0 for x in leaves):
        raise ValueError(
            "`phi` needs a leading axis over the values to check on every leaf "
            "(e.g. `jnp.stack([phi1, phi2])`)."
        )
    count = leaves[0].shape[0]
    if count < 1 or any(x.shape[0] != count for x in leaves):
        raise ValueError(
            "Every leaf of `phi` needs the same leading axis length (the number of "
            f"values to check), at least 1; got shapes {[x.shape for x in leaves]}."
        )
    phi = jtu.tree_map(
        lambda x: (
            np.asarray(x)
            if np.issubdtype(np.asarray(x).dtype, np.inexact)
            else np.asarray(x, float)
        ),
        phi,
    )
    first = jtu.tree_map(lambda x: jnp.asarray(x[0]), phi)
    marginal.check(first)  # clear errors, before compiling
    if guesses is None:
        guesses = jtu.tree_map(
            lambda x: np.broadcast_to(np.asarray(x), (count, *np.shape(x))),
            marginal.theta_init,
        )
    keys = jr.split(key, count)
    values, log_w, codes, f0 = _log_weights(marginal, num_draws, df, phi, guesses, keys)
    values, log_w, codes, f0 = (np.asarray(x) for x in (values, log_w, codes, f0))
    eps = float(np.finfo(log_w.dtype).eps)
    ok = codes == int(RESULTS.successful._value)
    pareto_k = np.full(count, np.nan)
    correction = np.full(count, np.nan)
    se = np.full(count, np.nan)
    ess = np.full(count, np.nan)
    for i in np.flatnonzero(ok):
        pareto_k[i] = _pareto_k(log_w[i], abs(float(f0[i])), eps)
        correction[i], se[i], ess[i] = _weight_summary(log_w[i])
    return LaplaceCheckResults(
        phi=phi,
        pareto_k=pareto_k,
        correction=correction,
        correction_se=se,
        ess=ess,
        laplace_log_marginal=values,
        log_weights=log_w,
        result=codes,
        draw_index=draw_index,
        num_draws=num_draws,
        df=df,
    )
