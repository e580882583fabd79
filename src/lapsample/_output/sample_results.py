"""`SampleResults`: the draws of a run, with ArviZ output and a summary."""

import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

from .._marginal.laplace import LaplaceMarginal
from .._misc import import_arviz
from .._sampler import Sampler, SamplerState
from .arviz_groups import pointwise_log_likelihood, posterior_variables
from .check_results import LaplaceCheckResults
from .problems import (
    LAPLACE_FAILURE_THRESHOLD,
    laplace_validity_message,
    tuning_problems,
)


# The R-hat above which `summary` warns (Vehtari et al. 2021).
RHAT_THRESHOLD = 1.01

# The per-draw statistics of `sample_stats`, in the order ArviZ shows them.
SAMPLE_STATS = (
    "lp",
    "acceptance_rate",
    "diverging",
    "energy",
    "step_size",
    "n_steps",
    "tree_depth",
    "reached_max_treedepth",
    "inner_steps",
    "inner_failed",
)


class SampleResults(eqx.Module):
    """The draws and diagnostics of [`lapsample.sample`][].

    Every array has leading axes `(chains, draws)`.

    - `phi`: the draws of the hyperparameters, a PyTree like the initial position.
    - `theta_star`: the latent mode `theta*(phi)` at every draw (`None` for a
      marginal without a latent).
    - `theta`: draws of the latent from the Laplace approximation
      `N(theta*, H⁻¹)`, one per draw of `phi`, when `sample_theta=True` (else
      `None`). A draw is NaN where `H` was not positive definite.
    - `sample_stats`: a dict of per-draw statistics with ArviZ's names: `lp` (the
      marginal log density), `acceptance_rate`, `diverging`, `energy`,
      `step_size`, `n_steps` (integrator steps), `tree_depth`,
      `reached_max_treedepth`, `inner_steps` (the most inner-solver iterations of
      an evaluation in the transition) and `inner_failed` (the number of failed
      inner solves in the transition).
    - `warmup_phi`, `warmup_sample_stats`: the same for warm-up, when
      `save_warmup=True` (else `None`).
    - `step_size`: the adapted step size of each chain, shape `(chains,)`.
    - `inverse_mass_matrix`: the adapted inverse mass matrix of each chain, shape
      `(chains, n)` (diagonal) or `(chains, n, n)` (dense), over the flattened
      `phi`; `None` if the sampler's own (non-array) metric was kept.
    - `final_state`: the [`lapsample.SamplerState`][] of every chain after the
      last draw (leading axis `chains`), to continue sampling.
    - `num_warmup`: the number of warm-up iterations.
    - `num_warmup_divergences`: divergent warm-up transitions per chain.
    - `sampler`: the [`lapsample.Sampler`][] that was run (before tuning).
    - `laplace_check`: the [`lapsample.LaplaceCheckResults`][] of
      `sample(..., laplace_check=True)`, else `None`.
    - `postprocess`: `(phi, theta) -> {name: array}`, the posterior variables that
      `to_arviz()` and `summary()` show, or `None` to show `phi` and `theta` as
      they are. `sample` sets it for a [`lapsample.NumPyroModel`][]: the model's
      sites in their constrained space (`tau`, not its logarithm), with
      deterministic sites when `theta` was drawn.
    - `pointwise_log_likelihood`: `(phi, theta) -> {name: array}`, the
      log-likelihood of each observation at draws with leading axes `(chains,
      draws)`, which `to_arviz()` puts in its `log_likelihood` group; `sample`
      sets it for a [`lapsample.NumPyroModel`][] (its observed sites). `None`
      otherwise (a [`lapsample.LatentGaussianMarginal`][] needs none: its
      likelihood gives the terms).
    - `phi_order`: the names of `phi`'s variables in the order of the initial
      position that `sample` was given (JAX orders dict keys alphabetically);
      `to_arviz()` and `summary()` list the variables in this order, `phi` before
      `theta`. `None` keeps the PyTree's order.

    `to_arviz()` gives an `arviz.InferenceData`, `summary()` a table with R-hat and
    ESS, `print_summary()` prints it with the diagnostics.
    """

    phi: PyTree[np.ndarray]
    theta_star: PyTree[np.ndarray] | None
    theta: PyTree[np.ndarray] | None
    sample_stats: dict[str, np.ndarray]
    warmup_phi: PyTree[np.ndarray] | None
    warmup_sample_stats: dict[str, np.ndarray] | None
    step_size: np.ndarray
    inverse_mass_matrix: np.ndarray | None
    final_state: SamplerState
    num_warmup: int = eqx.field(static=True)
    num_warmup_divergences: np.ndarray
    sampler: Sampler
    laplace_check: LaplaceCheckResults | None = None
    postprocess: Callable[..., dict[str, Any]] | None = None
    pointwise_log_likelihood: Callable[..., dict[str, Any]] | None = None
    phi_order: tuple[str, ...] | None = eqx.field(static=True, default=None)

    @property
    def num_chains(self) -> int:
        return int(self.sample_stats["lp"].shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.sample_stats["lp"].shape[1])

    @property
    def num_divergences(self) -> np.ndarray:
        """Divergent transitions after warm-up, per chain."""
        return self.sample_stats["diverging"].sum(axis=1)

    @property
    def num_inner_failures(self) -> np.ndarray:
        """Transitions after warm-up with at least one failed inner solve, per
        chain."""
        return (self.sample_stats["inner_failed"] > 0).sum(axis=1)

    def __repr__(self) -> str:
        shapes = jtu.tree_map(lambda x: tuple(np.shape(x)[2:]), self.phi)
        return (
            f"SampleResults(chains={self.num_chains}, draws={self.num_samples}, "
            f"warmup={self.num_warmup}, phi shapes={shapes}, "
            f"divergences={int(self.num_divergences.sum())}, "
            f"sample_theta={self.theta is not None})"
        )

    def _posterior_dict(self, phi, theta) -> dict[str, np.ndarray]:
        return posterior_variables(phi, theta, self.postprocess, self.phi_order)

    def to_arviz(
        self,
        log_likelihood: bool | Callable[..., Any] | None = None,
        *,
        coords: dict[str, Any] | None = None,
        dims: dict[str, list[str]] | None = None,
    ):
        """The draws as an `arviz.InferenceData`.

        - `posterior`: `phi`, named from its PyTree (a bare array is `phi`, a dict
          gives its keys, nested levels are joined with `.`) in the order of the
          initial position given to `sample`, then the draws of `theta` when they
          were requested (a bare array is `theta`; names that clash with `phi`'s
          get a `theta.` prefix).
        - `log_likelihood`: `log p(y_i | theta, phi)` of every observation at
          every draw, for `az.loo`, `az.waic` and `az.compare` (see below).
        - `sample_stats`: `lp`, `acceptance_rate`, `diverging`, `energy`,
          `step_size`, `n_steps`, `tree_depth`, `reached_max_treedepth`,
          `inner_steps`, `inner_failed`.
        - `warmup_posterior`, `warmup_sample_stats` when `save_warmup=True`.

        The pointwise log-likelihood is evaluated at the joint draws of `theta` and
        `phi`, so it needs `sample(..., sample_theta=True)`. It is built in for a
        [`lapsample.LatentGaussianMarginal`][] (its likelihood's terms, named `y`)
        and a [`lapsample.NumPyroModel`][] (NumPyro's
        `numpyro.infer.util.log_likelihood` of each observed site, named by site);
        for a [`lapsample.LaplaceMarginal`][] pass your own:

        ```python
        def log_lik(theta, phi):      # one draw -> one value per observation
            return jax.scipy.stats.poisson.logpmf(y, jnp.exp(theta))

        idata = results.to_arviz(log_likelihood=log_lik)
        az.loo(idata)
        ```

        **Arguments:**

        - `log_likelihood`: `None` (default): the built-in one when there is one
          and `theta` was drawn, else no group. `True`: the built-in one, or an
          error saying what is missing. `False`: no group. A function
          `(theta, phi) -> array` (or a dict of arrays, one per observed
          variable), for one draw, with one value per observation, written
          with JAX (it is mapped over chains and draws and compiled).
        - `coords`, `dims`: passed to `arviz.from_dict`, to name the axes of
          variables (e.g. `dims={"theta": ["county"], "y": ["county"]}`).

        **Returns:**

        An `arviz.InferenceData`.

        **Raises:**

        `ValueError` when `log_likelihood` is a function or `True` and the results
        have no draws of `theta`, or when it is `True` and the model has no
        likelihood of its own.

        !!! info

            Needs ArviZ: `pip install "lapsample[arviz]"`.
        """
        az = import_arviz("SampleResults.to_arviz")
        kwargs = {}
        if self.warmup_phi is not None:
            kwargs = dict(
                warmup_posterior=self._posterior_dict(self.warmup_phi, None),
                warmup_sample_stats=dict(self.warmup_sample_stats or {}),
                save_warmup=True,
            )
        pointwise = pointwise_log_likelihood(
            log_likelihood,
            self.sampler.marginal,
            self.phi,
            self.theta,
            self.pointwise_log_likelihood,
        )
        if pointwise is not None:
            kwargs["log_likelihood"] = pointwise
        return az.from_dict(
            posterior=self._posterior_dict(self.phi, self.theta),
            sample_stats={k: self.sample_stats[k] for k in SAMPLE_STATS},
            coords=coords,
            dims=dims,
            **kwargs,
        )

    def diagnostics(self) -> dict[str, Any]:
        """Counts that should be zero after a healthy run, per chain: divergent
        transitions, transitions with a failed inner solve, transitions that hit
        the maximum tree depth, and divergent warm-up transitions."""
        return {
            "divergences": self.num_divergences,
            "inner_failures": self.num_inner_failures,
            "inner_failure_fraction": float(
                self.num_inner_failures.sum()
                / max(1, self.num_chains * self.num_samples)
            ),
            "max_treedepth_hits": self.sample_stats["reached_max_treedepth"].sum(
                axis=1
            ),
            "warmup_divergences": np.asarray(self.num_warmup_divergences),
        }

    def summary(self, var_names=None, hdi_prob: float = 0.94, **kwargs):
        """Posterior summary by ArviZ (`arviz.summary`): mean, sd, HDI, MCSE, bulk
        and tail ESS and R-hat of every variable of the posterior.

        Warns (`UserWarning`) when there were divergent transitions after
        warm-up, failed inner solves, more than 1% of transitions at the maximum
        tree depth, a warm-up shorter than its schedule (150 iterations), or any
        R-hat above 1.01; the counts are also
        in `df.attrs["diagnostics"]` (see `diagnostics()`). When more than 5% of
        the transitions had a failed inner solve, the warning says that the
        Laplace approximation itself is in doubt and lists the usual fixes (more
        inner steps, another inner solver, float64, a Hessian jitter).

        For a [`lapsample.LaplaceMarginal`][], `df.attrs["hessian"]` says which
        Hessian strategy ran and, when [`lapsample.AutoHessian`][] chose it, why
        (`print_summary()` prints it).

        After `sample(..., laplace_check=True)` the
        [`lapsample.LaplaceCheckResults`][] is in `df.attrs["laplace_check"]`, and a
        "bad" verdict (Pareto k̂ ≥ 0.7 somewhere) is part of the warning.

        **Arguments:**

        - `var_names`: the variables to summarise (default: all).
        - `hdi_prob`: the probability of the highest-density interval.
        - `**kwargs`: passed to `arviz.summary`.

        **Returns:**

        A `pandas.DataFrame`, one row per scalar component.
        """
        az = import_arviz("SampleResults.summary")
        idata = self.to_arviz(log_likelihood=False)
        df = az.summary(idata, var_names=var_names, hdi_prob=hdi_prob, **kwargs)
        diagnostics = self.diagnostics()
        df.attrs["diagnostics"] = diagnostics
        marginal = self.sampler.marginal
        if isinstance(marginal, LaplaceMarginal):
            # Which Hessian strategy ran, and why when it chose itself.
            df.attrs["hessian"] = f"hessian: {marginal.hessian}" + (
                f", {marginal.hessian_reason}" if marginal.hessian_reason else ""
            )
        problems = []
        divergences = diagnostics["divergences"]
        if divergences.sum() > 0:
            problems.append(
                f"{int(divergences.sum())} divergent transitions after warm-up "
                f"(per chain: {divergences.tolist()}). The draws may be biased: "
                "raise `target_accept` (e.g. 0.95) or reparameterise the model."
            )
        failures = diagnostics["inner_failures"]
        fraction = diagnostics["inner_failure_fraction"]
        if fraction > LAPLACE_FAILURE_THRESHOLD:
            problems.append(laplace_validity_message(self, failures, fraction))
        elif failures.sum() > 0:
            problems.append(
                f"{int(failures.sum())} transitions with a failed inner solve "
                f"(per chain: {failures.tolist()}); they count as divergent. Check "
                "that the log joint is concave in theta there, or give the inner "
                "solver more steps."
            )
        problems.extend(tuning_problems(self, diagnostics))
        if "r_hat" in df.columns:
            rhat = df["r_hat"].to_numpy(dtype=float)
            bad = [
                f"{name} ({value:.3f})"
                for name, value in zip(df.index, rhat)
                if np.isfinite(value) and value > RHAT_THRESHOLD
            ]
            if bad:
                problems.append(
                    f"R-hat above {RHAT_THRESHOLD} for {', '.join(bad)}: the chains "
                    "have not mixed; run longer or check the model."
                )
        if self.laplace_check is not None:
            df.attrs["laplace_check"] = self.laplace_check
            if self.laplace_check.verdict == "bad":
                problems.append(self.laplace_check.message)
        if problems:
            warnings.warn("\n".join(problems), UserWarning, stacklevel=3)
        return df

    def print_summary(self, **kwargs) -> None:
        """Print `summary(**kwargs)` followed by the diagnostic counts."""
        df = self.summary(**kwargs)
        print(df.to_string())
        diagnostics = df.attrs["diagnostics"]
        print(
            "divergences: "
            f"{int(diagnostics['divergences'].sum())} "
            f"(per chain {diagnostics['divergences'].tolist()}); "
            "failed inner solves: "
            f"{int(diagnostics['inner_failures'].sum())}; "
            "max tree depth hits: "
            f"{int(diagnostics['max_treedepth_hits'].sum())}; "
            "step size per chain: "
            + ", ".join(f"{s:.3g}" for s in np.asarray(self.step_size).tolist())
        )
        if "hessian" in df.attrs:
            print(df.attrs["hessian"])
        if self.laplace_check is not None:
            print(self.laplace_check.message)
