"""`laplace_check`: importance sampling of the latent at a few `phi` to tell whether
the Laplace approximation of `p(theta | phi, y)` can be trusted there."""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._hessian import (
    _hvp,
    AbstractFactor,
    AbstractHessianStrategy,
    CholeskyFactor,
    DiagonalFactor,
    LineaxFactor,
)
from ._latent_gaussian import LatentGaussianMarginal
from ._marginal import AbstractMarginal, LaplaceMarginal
from ._results import RESULTS


# Pareto k̂ thresholds of Vehtari et al. (2024): below GOOD the importance-sampling
# estimates converge at the usual rate; below USABLE they are usable but slow; at or
# above USABLE the proposal misses mass that matters.
K_GOOD = 0.5
K_USABLE = 0.7

# Log-weights whose spread (max - min) is below this many float epsilons, relative
# to the size of the log joint at the mode, are "constant to rounding": the
# Laplace approximation is then exact and k̂ is reported as -inf (ArviZ's fit
# would return +inf for an empty tail, or fit a tail to rounding noise).
_ROUNDING_ULPS = 1e4


# --------------------------------------------------------------------------------
# The result.
# --------------------------------------------------------------------------------


def _phi_columns(phi) -> list[tuple[str, np.ndarray]]:
    """`(name, values)` of every scalar coordinate of `phi` (leading axis: the
    checked draws), named as in `SampleResults.to_arviz`."""
    from ._results_object import variable_names

    out = []
    for (name, _), leaf in zip(
        variable_names(jtu.tree_map(lambda x: x[0], phi), "phi"), jtu.tree_leaves(phi)
    ):
        leaf = np.asarray(leaf)
        flat = leaf.reshape(leaf.shape[0], -1)
        if leaf.ndim == 1:
            out.append((name, flat[:, 0]))
        else:
            for index in np.ndindex(*leaf.shape[1:]):
                label = f"{name}[{','.join(str(i) for i in index)}]"
                out.append((label, leaf[(slice(None), *index)]))
    return out


class LaplaceCheckResults(eqx.Module):
    """The result of [`lapsample.laplace_check`][]: importance-sampling diagnostics of
    the Laplace approximation at `num_phi` values of `phi`.

    Arrays have a leading axis over the checked values of `phi`.

    - `phi`: the checked values, a PyTree like one draw of `phi`.
    - `pareto_k`: the Pareto k̂ of the importance weights (PSIS, Vehtari et al.
      2024). `-inf` when the log-weights are constant to rounding (the
      approximation is exact there); NaN where the Laplace approximation failed.
    - `correction`: the importance-sampling estimate of
      `log p(y, phi) - log p̂_Laplace(y, phi)`, i.e. `log mean(w)` with the weights
      scaled so that the Laplace value is 0.
    - `correction_se`: its Monte Carlo standard error (delta method,
      `sd(w) / (sqrt(S) mean(w))`).
    - `ess`: the effective sample size of the weights, `(Σw)² / Σw²`.
    - `laplace_log_marginal`: the Laplace log marginal at `phi` (what the sampler
      targets).
    - `log_weights`: the log-weights, `(num_phi, num_draws)`, relative to the
      Laplace value (`correction = logmeanexp(log_weights)`).
    - `result`: the [`lapsample.RESULTS`][] code of the inner solve at each `phi`.
    - `draw_index`: for values taken from a [`lapsample.SampleResults`][], the
      `(chain, draw)` of each, shape `(num_phi, 2)`; else `None`.
    - `num_draws`: latent draws per `phi`.
    - `df`: the degrees of freedom of the Student-t proposal, or `None` for the
      Gaussian `N(theta*, H⁻¹)`.

    `verdict` is `"good"`, `"usable"` or `"bad"` from the largest k̂;
    `print_summary()` prints the table and the verdict, `summary()` gives the table
    as a `pandas.DataFrame`, `plot()` draws k̂ and the correction against `phi`.
    """

    phi: PyTree[np.ndarray]
    pareto_k: np.ndarray
    correction: np.ndarray
    correction_se: np.ndarray
    ess: np.ndarray
    laplace_log_marginal: np.ndarray
    log_weights: np.ndarray
    result: np.ndarray
    draw_index: np.ndarray | None
    num_draws: int = eqx.field(static=True)
    df: float | None = eqx.field(static=True)

    @property
    def num_phi(self) -> int:
        return int(np.shape(self.pareto_k)[0])

    @property
    def failed(self) -> np.ndarray:
        """Where the Laplace approximation itself failed (no mode, or a Hessian that
        is not positive definite), per checked `phi`."""
        return np.asarray(self.result) != int(RESULTS.successful._value)

    @property
    def max_pareto_k(self) -> float:
        k = np.asarray(self.pareto_k)[~self.failed]
        return float(np.max(k)) if k.size else math.nan

    @property
    def verdict(self) -> str:
        """`"good"` if every k̂ < 0.5, `"usable"` if every k̂ < 0.7, else `"bad"`
        (also when the approximation failed at some checked `phi`)."""
        if np.any(self.failed):
            return "bad"
        k = self.max_pareto_k
        if k < K_GOOD:
            return "good"
        if k < K_USABLE:
            return "usable"
        return "bad"

    @property
    def message(self) -> str:
        """The verdict in a sentence or two."""
        k = np.asarray(self.pareto_k)
        n = self.num_phi
        proposal = "N(theta*, H⁻¹)" if self.df is None else f"Student-t(df={self.df:g})"
        head = (
            f"Laplace check ({n} phi values, {self.num_draws} latent draws each "
            f"from {proposal}): "
        )
        failed = int(np.sum(self.failed))
        if failed:
            return head + (
                f"the Laplace approximation failed (no mode or a Hessian that is "
                f"not positive definite) at {failed} of {n} phi values; the "
                "approximation is not trustworthy there."
            )
        spread = float(np.ptp(self.correction))
        noise = float(np.max(self.correction_se))
        if n == 1:
            shape = ""
        elif spread > 4 * noise:
            shape = (
                f" The correction to the log marginal varies by {spread:.3g} across "
                f"phi (Monte Carlo error up to {noise:.2g}): the Laplace marginal "
                "distorts the posterior of phi, not just shifts it; see `plot()`."
            )
        else:
            shape = (
                f" The correction to the log marginal varies by {spread:.3g} across "
                f"phi, within Monte Carlo error (up to {noise:.2g}): no sign that the "
                "posterior of phi is distorted."
            )
        if np.all(np.isneginf(k)):
            return head + (
                "the importance weights are constant to rounding: the Laplace "
                "approximation is exact here (good)."
            )
        max_k = self.max_pareto_k
        if self.verdict == "good":
            return head + f"max k̂ = {max_k:.2f} < {K_GOOD}: good." + shape
        if self.verdict == "usable":
            return (
                head + f"max k̂ = {max_k:.2f}, between {K_GOOD} and {K_USABLE}: usable, "
                "but the correction estimates converge slowly." + shape
            )
        bad = int(np.sum(k >= K_USABLE))
        return head + (
            f"k̂ ≥ {K_USABLE} at {bad} of {n} phi values (max {max_k:.2f}): the "
            "Laplace approximation of p(theta | phi, y) is not trustworthy there "
            "(the true conditional has mass in tails the approximation misses), "
            "and neither are these correction estimates"
            + (
                " (a Student-t proposal, `df=5`, estimates them more reliably)"
                if self.df is None
                else ""
            )
            + ". Consider a reparameterisation, a model with more data per latent, "
            "or sampling theta jointly with phi."
        )

    def __repr__(self) -> str:
        return (
            f"LaplaceCheckResults(num_phi={self.num_phi}, "
            f"num_draws={self.num_draws}, df={self.df}, "
            f"max_pareto_k={self.max_pareto_k:.3g}, "
            f"max_abs_correction={float(np.nanmax(np.abs(self.correction))):.3g}, "
            f"verdict={self.verdict!r})"
        )

    def _table(self) -> dict[str, np.ndarray]:
        columns = dict(_phi_columns(self.phi))
        columns["k_hat"] = np.asarray(self.pareto_k)
        columns["correction"] = np.asarray(self.correction)
        columns["correction_se"] = np.asarray(self.correction_se)
        columns["ess"] = np.asarray(self.ess)
        columns["laplace_lp"] = np.asarray(self.laplace_log_marginal)
        return columns

    def summary(self):
        """The per-`phi` table: the coordinates of `phi`, `k_hat`, `correction`,
        `correction_se`, `ess` and `laplace_lp`, one row per checked value.

        **Returns:**

        A `pandas.DataFrame`; `df.attrs["verdict"]` and `df.attrs["message"]` hold
        the verdict.
        """
        import pandas as pd

        df = pd.DataFrame(self._table())
        df.index.name = "phi_value"
        df.attrs["verdict"] = self.verdict
        df.attrs["message"] = self.message
        return df

    def __str__(self) -> str:
        columns = self._table()
        names = list(columns)
        rows = [[f"{v:.4g}" for v in columns[name]] for name in names]
        widths = [
            max(len(name), *(len(r) for r in rows[i])) for i, name in enumerate(names)
        ]
        lines = ["  ".join(n.rjust(w) for n, w in zip(names, widths))]
        for j in range(self.num_phi):
            lines.append("  ".join(rows[i][j].rjust(w) for i, w in enumerate(widths)))
        return "\n".join(lines + [self.message])

    def print_summary(self) -> None:
        """Print the per-`phi` table and the verdict."""
        print(str(self))

    def plot(self, coords: list[str] | None = None, *, axes=None):
        """Plot k̂ (top row) and the log-marginal correction with ±2 Monte Carlo
        standard errors (bottom row) against each coordinate of `phi`.

        Dashed lines mark k̂ = 0.5 and 0.7. A correction that is flat across `phi`
        only shifts the log marginal by a constant, which leaves the posterior of
        `phi` unchanged; a trend means the Laplace-marginal posterior is distorted.
        Rows where k̂ ≥ 0.7 are drawn in red: their corrections are unreliable.

        **Arguments:**

        - `coords`: the names of the `phi` coordinates to plot (the column names of
          `summary()`); default all.
        - `axes`: a `(2, len(coords))` array of matplotlib axes to draw into;
          default a new figure.

        **Returns:**

        The matplotlib `Figure`.
        """
        import matplotlib.pyplot as plt

        columns = dict(_phi_columns(self.phi))
        if coords is None:
            coords = list(columns)
        unknown = [c for c in coords if c not in columns]
        if unknown:
            raise ValueError(
                f"Unknown phi coordinates {unknown}; choose from {list(columns)}."
            )
        created = axes is None
        if created:
            fig, axes = plt.subplots(
                2,
                len(coords),
                figsize=(3.6 * len(coords), 5.4),
                squeeze=False,
                sharey="row",
            )
        else:
            axes = np.asarray(axes).reshape(2, len(coords))
            fig = axes[0, 0].figure
        k = np.asarray(self.pareto_k, float)
        shown_k = np.where(np.isneginf(k), np.nan, k)
        bad = k >= K_USABLE
        corr = np.asarray(self.correction, float)
        se = np.asarray(self.correction_se, float)
        for j, name in enumerate(coords):
            x = columns[name]
            ax = axes[0, j]
            ax.scatter(x[~bad], shown_k[~bad], color="C0", s=18)
            ax.scatter(x[bad], shown_k[bad], color="C3", s=18)
            for level, style in ((K_GOOD, ":"), (K_USABLE, "--")):
                ax.axhline(level, color="0.4", linestyle=style, linewidth=1)
            if np.all(np.isneginf(k)):
                ax.text(
                    0.5,
                    0.5,
                    "k̂ = -inf\n(weights constant:\nLaplace exact)",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
            ax.set_xlabel(name)
            ax = axes[1, j]
            for mask, color in ((~bad, "C0"), (bad, "C3")):
                ax.errorbar(
                    x[mask],
                    corr[mask],
                    yerr=2 * se[mask],
                    fmt="o",
                    color=color,
                    markersize=4,
                    capsize=2,
                )
            ax.axhline(0.0, color="0.4", linewidth=1)
            ax.set_xlabel(name)
        axes[0, 0].set_ylabel("Pareto k̂")
        axes[1, 0].set_ylabel("log p(y, φ) − Laplace")
        if created:
            fig.suptitle(f"Laplace check: {self.verdict}")
            fig.tight_layout()
        return fig

    def reweighted_means(self):
        """**Approximate, for diagnosis only.** Posterior means of the coordinates
        of `phi` over the checked values, plain and importance-reweighted by
        `exp(correction)` (self-normalised, with Pareto smoothing of the weights).

        The reweighted mean estimates what the mean would be under the exact
        marginal rather than the Laplace one, using only the `num_phi` checked
        draws (which are correlated MCMC draws): it is noisy, and meaningful only
        when every k̂ of the latent weights is below 0.7 and `num_phi` is large
        (at least ~30 for the smoothing to apply). A difference between the two
        columns larger than their Monte Carlo error says that the Laplace error
        moves the posterior of `phi`.

        **Returns:**

        A `pandas.DataFrame` with columns `laplace_mean` and `reweighted_mean`, one
        row per coordinate; `df.attrs["pareto_k"]` is the k̂ of the weights
        across `phi` (infinite when there are too few values to fit a tail: then
        the weights are not smoothed).
        """
        import pandas as pd

        from ._results_object import import_arviz

        az = import_arviz("LaplaceCheckResults.reweighted_means")
        ok = ~self.failed & np.isfinite(self.correction)
        log_w = np.asarray(self.correction, float)[ok]
        smoothed, k = az.psislw(log_w.copy(), reff=1.0)
        weights = np.exp(smoothed)
        rows = {}
        for name, values in _phi_columns(self.phi):
            values = np.asarray(values, float)[ok]
            rows[name] = (values.mean(), float(np.sum(weights * values)))
        df = pd.DataFrame.from_dict(
            rows, orient="index", columns=["laplace_mean", "reweighted_mean"]
        )
        df.attrs["pareto_k"] = float(k)
        return df


# --------------------------------------------------------------------------------
# The computation.
# --------------------------------------------------------------------------------


# The marginals with a latent to check: each gives a `_Proposal` at one `phi`.
_CHECKABLE = (LaplaceMarginal, LatentGaussianMarginal)


def _quadratic_form(
    strategy: AbstractHessianStrategy, factor: AbstractFactor, fn, theta, phi, u
):
    """`uᵀ A u` for the matrix `A` that `strategy` factorised, from the factor where
    its layout is known (so that it matches the draws exactly, jitter included), else
    by a Hessian-vector product of `fn` at the mode."""
    del strategy
    if isinstance(factor, LineaxFactor):
        factor = factor.state
    if isinstance(factor, CholeskyFactor):
        v = factor.lower.T @ u
        return jnp.dot(v, v)
    if isinstance(factor, DiagonalFactor):
        return jnp.dot(factor.diagonal * u, u)
    return jnp.dot(u, _hvp(fn, theta, phi, u))


class _Proposal(NamedTuple):
    """The Laplace conditional at one `phi`, as the check uses it (each marginal
    with a latent builds one)."""

    value: Array  # the Laplace log marginal at phi
    result: Any  # RESULTS of the solve and factorisation
    theta_star: Array  # the mode, flat
    log_joint: Callable  # flat theta -> log p(theta, phi, y) (up to a constant)
    draw: Callable  # key -> u ~ N(0, A⁻¹), A the negative Hessian at the mode
    quadratic_form: Callable  # u -> uᵀ A u, consistent with `draw`


def _laplace_marginal_proposal(marginal: LaplaceMarginal, phi, guess) -> _Proposal:
    value, aux = marginal(phi, guess)
    theta = marginal.raveller.ravel(aux.theta_star)
    fn = marginal._negative_log_joint(theta, phi)
    strategy = marginal.hessian
    factor = strategy.factorise(fn, theta, phi)
    result = RESULTS.where(
        factor.positive_definite, aux.result, RESULTS.hessian_not_positive_definite
    )
    return _Proposal(
        value,
        result,
        theta,
        lambda t: -fn(t, phi),
        lambda k: strategy.sample(factor, k),
        lambda u: _quadratic_form(strategy, factor, fn, theta, phi, u),
    )


def _proposal(marginal, phi, guess) -> _Proposal:
    if isinstance(marginal, LaplaceMarginal):
        return _laplace_marginal_proposal(marginal, phi, guess)
    return _Proposal(*marginal._laplace_proposal(phi, guess))


def _log_weights_one(marginal, num_draws: int, df, phi, guess, key):
    """Log-weights relative to the Laplace value at one `phi`:
    `log p(theta, phi, y) - log q(theta | phi) - laplace(phi)`."""
    proposal = _proposal(marginal, phi, guess)
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
    from ._results_object import import_arviz

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
    from ._results_object import SampleResults
    from ._run import _check_int, _check_key

    num_draws = _check_int("num_draws", num_draws, 2)
    num_phi = _check_int("num_phi", num_phi, 1)
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
    if not isinstance(marginal, _CHECKABLE):
        raise ValueError(
            "`laplace_check` needs a `lapsample.LaplaceMarginal` or a "
            "`lapsample.LatentGaussianMarginal`: there is no latent to check in a "
            f"{type(marginal).__name__}."
        )
    key = _check_key(key)
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
    if isinstance(marginal, LaplaceMarginal):
        marginal.check(first)
    else:
        jax.eval_shape(marginal, first)  # shape errors, before compiling
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
