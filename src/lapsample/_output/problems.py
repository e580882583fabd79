"""The messages of `SampleResults.summary()` about tuning and about the Laplace
approximation's validity (`results` is a `SampleResults`)."""

from typing import Any

import jax.tree_util as jtu
import numpy as np


# The fraction of transitions (after warm-up) with a failed inner solve above which
# `summary` warns that the Laplace approximation itself is in doubt. Below it a few
# failures are ordinary rejections; above it the sampler is confined to where the
# inner solve succeeds, which truncates the posterior.
LAPLACE_FAILURE_THRESHOLD = 0.05
# `summary()` warns when more than this share of transitions hit the maximum tree
# depth (Stan's diagnostics report any; a few in a long run are harmless).
TREEDEPTH_THRESHOLD = 0.01
# Stan's warm-up windows at full size: a 75-iteration initial buffer, a first
# 25-iteration slow window and a 50-iteration terminal buffer. With fewer warm-up
# iterations they are scaled down (and below 20 the mass matrix is not adapted).
FULL_SCHEDULE_WARMUP = 150


def tuning_problems(results, diagnostics: dict[str, Any]) -> list[str]:
    """Max-tree-depth saturation and a warm-up shorter than its schedule."""
    problems = []
    hits = np.asarray(diagnostics["max_treedepth_hits"])
    share = float(hits.sum() / max(1, results.num_chains * results.num_samples))
    if share > TREEDEPTH_THRESHOLD:
        problems.append(
            f"{share:.0%} of the transitions hit the maximum tree depth (per "
            f"chain: {hits.tolist()}): the trajectories were cut short, so the "
            "chains explore slowly and the effective sample size is low. Raise "
            "`max_tree_depth` (e.g. `laplace_nuts(..., max_tree_depth=12)`), "
            "reparameterise the model (e.g. non-centred), or check the priors "
            "of phi (a missing or very wide prior gives a flat, long posterior)."
        )
    if 0 < results.num_warmup < FULL_SCHEDULE_WARMUP:
        problems.append(
            f"`num_warmup={results.num_warmup}` is shorter than the warm-up "
            f"schedule ({FULL_SCHEDULE_WARMUP} iterations at least: Stan's 75 + "
            "25 + 50 windows), so its windows were shrunk"
            + (
                " and the mass matrix was not adapted"
                if results.num_warmup < 20
                else ""
            )
            + ": the step size and mass matrix may be poorly tuned (acceptance "
            "far from `target_accept`). Use `num_warmup` of at least "
            f"{FULL_SCHEDULE_WARMUP} (the default 1000 is safer)."
        )
    return problems


def laplace_validity_message(results, failures: np.ndarray, fraction: float) -> str:
    dtype = np.result_type(*[np.asarray(x) for x in jtu.tree_leaves(results.phi)])
    precision = (
        f"The draws are {dtype}: run in float64 with "
        '`jax.config.update("jax_enable_x64", True)` at the top of the script; '
        if np.finfo(dtype).bits < 64
        else ""
    )
    return (
        f"The Laplace approximation may not be valid here: {fraction:.1%} of "
        f"the transitions after warm-up (per chain: {failures.tolist()}) had a "
        "failed inner solve (the mode theta* was not found, or the Hessian was "
        "not positive definite there). Those transitions are rejected, so the "
        "chains avoid that region of phi and the posterior is truncated there. "
        "Fixes: give the inner solver more steps (`Newton(max_steps=200)`, or "
        "`maxiter=` of `laplace_*`); try another inner solver (`Newton()` or "
        "`BFGS()`/`LBFGS()`); "
        + precision
        + "add `jitter=1e-8` to `DenseHessian` if the Hessian is nearly "
        "singular; and check that the log joint is concave in theta in that "
        "region (`results.sample_stats['inner_failed']` marks the draws)."
    )
