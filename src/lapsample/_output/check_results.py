"""`LaplaceCheckResults`: the table, printing and plot of a `laplace_check`."""

import math

import equinox as eqx
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from .._misc import import_arviz, variable_names
from .._results import RESULTS


# Pareto k̂ thresholds of Vehtari et al. (2024): below GOOD the importance-sampling
# estimates converge at the usual rate; below USABLE they are usable but slow; at or
# above USABLE the proposal misses mass that matters.
K_GOOD = 0.5
K_USABLE = 0.7


# --------------------------------------------------------------------------------
# The result.
# --------------------------------------------------------------------------------


def phi_columns(phi) -> list[tuple[str, np.ndarray]]:
    """`(name, values)` of every scalar coordinate of `phi` (leading axis: the
    checked draws), named as in `SampleResults.to_arviz`."""

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
        columns = dict(phi_columns(self.phi))
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

        columns = dict(phi_columns(self.phi))
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

        az = import_arviz("LaplaceCheckResults.reweighted_means")
        ok = ~self.failed & np.isfinite(self.correction)
        log_w = np.asarray(self.correction, float)[ok]
        smoothed, k = az.psislw(log_w.copy(), reff=1.0)
        weights = np.exp(smoothed)
        rows = {}
        for name, values in phi_columns(self.phi):
            values = np.asarray(values, float)[ok]
            rows[name] = (values.mean(), float(np.sum(weights * values)))
        df = pd.DataFrame.from_dict(
            rows, orient="index", columns=["laplace_mean", "reweighted_mean"]
        )
        df.attrs["pareto_k"] = float(k)
        return df
