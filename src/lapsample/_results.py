import warnings

import optimistix as optx


# Lineax's `successful` has an empty message, which Equinox shows as `RESULTS<>`;
# giving it one here (Equinox warns that it replaces the inherited message) makes
# a successful result print as `lapsample.RESULTS<successful>`.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class RESULTS(optx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
        """Outcome codes of lapsample's numerical pieces.

        Extends `optimistix.RESULTS` (and through it `lineax.RESULTS`), so codes
        from Optimistix solvers are promoted with `RESULTS.promote(...)` and
        compared directly. A code other than `RESULTS.successful` inside a sampler
        is a rejected, counted transition, never an exception. A code prints as
        `lapsample.RESULTS<its message>`, e.g. `lapsample.RESULTS<successful>`.
        """

        successful = "successful"

        hessian_not_positive_definite = (
            "The negative Hessian of the log joint in `theta` is not positive definite"
            " at the point returned by the inner solver, so the Laplace approximation "
            "is not defined there. The log joint may not be concave in `theta` at this"
            " `phi`, or the inner solve stopped at a saddle point."
        )
        inner_solve_failed = (
            "The inner solver did not find the mode of the log joint in `theta` within"
            " `max_steps`. Increase `max_steps`, use `Newton()` (the default inner "
            "solver), or check that the log joint is concave in `theta`."
        )
        structure_violated = (
            "The Hessian of the log joint in `theta` has curvature outside the "
            "structure that the Hessian strategy assumes (diagonal, banded or block "
            "diagonal), so its factor would be wrong. Use a wider "
            "`BandedHessian(bandwidth=...)` or larger "
            "`BlockDiagonalHessian(block_size=...)`, order the flattened `theta` so "
            "that coupled latents are neighbours, or pass "
            "`hessian=lapsample.DenseHessian()`."
        )
        prior_not_positive_definite = (
            "The prior covariance `K(phi)` of the latent-Gaussian marginal is not "
            "symmetric positive definite at this `phi` (its Cholesky factor failed, or"
            " `K` differs from `Kᵀ` beyond rounding), so the Gaussian prior and the "
            "Laplace approximation are not defined there. Add a jitter to the diagonal"
            " (e.g. `K + 1e-6 * jnp.eye(n)`), check the kernel's formula, or constrain"
            " `phi` to where the kernel is valid."
        )
        nonfinite_log_density = (
            "The log density, or its gradient, is not finite (NaN or inf)."
        )
        divergent = (
            "The energy error of the trajectory exceeded the divergence threshold."
        )


# What to do about each code when it stops a run before it starts (the codes'
# own messages say what happened; these add the fix in the user's terms).
_MAX_STEPS_FIX = (
    "The inner solve did not converge from `theta_init` at this `phi`: raise "
    "the inner solver's `max_steps` (e.g. `Newton(max_steps=200)`, "
    "`BFGS(max_steps=500)`, or `LatentGaussianMarginal(max_steps=200)`), or start "
    "it nearer the mode (for count models, `theta_init = log(y + 1)`)."
)
_FIXES = {
    "inner_solve_failed": _MAX_STEPS_FIX,
    # Optimistix's own codes, from the `BFGS`/`NonlinearCG` inner solvers.
    "nonlinear_max_steps_reached": _MAX_STEPS_FIX,
    "nonlinear_divergence": (
        "The inner solver diverged from `theta_init` at this `phi`: use "
        "`Newton()` (the default inner solver), start `theta_init` nearer the "
        "mode, and check that the log joint is concave in `theta` and that the "
        "data it reads are finite."
    ),
    "nonfinite": (
        "The inner solve met a NaN or inf: check the data the log joint reads "
        "for NaN or inf, and start at a `phi` inside the support of the prior."
    ),
    "hessian_not_positive_definite": (
        "The log joint is not concave in `theta` at this `phi` (its negative "
        "Hessian is not positive definite at the point the inner solve reached): "
        "check the signs of the log joint's terms (a sign error makes it convex), "
        "that every latent has a proper prior, or use a Hessian jitter "
        "(`DenseHessian(jitter=1e-8)`) for a nearly singular one. For a "
        "likelihood that is not log-concave, start `theta_init` nearer the mode "
        "(Newton cannot start where the curvature is negative) or use `BFGS()`."
    ),
    "structure_violated": (
        "The Hessian in `theta` has curvature outside the structure that the "
        "Hessian strategy assumes: use a wider `BandedHessian(bandwidth=...)`, "
        "larger `BlockDiagonalHessian(block_size=...)`, reorder `theta`, or pass "
        "`hessian=lapsample.DenseHessian()` (the default `AutoHessian` reads the "
        "structure near `theta_init` only)."
    ),
    "prior_not_positive_definite": (
        "Add a jitter to the diagonal of `K` (e.g. `K + 1e-6 * jnp.eye(n)`), check "
        "the kernel's formula, or start at a `phi` where the kernel is valid."
    ),
    "nonfinite_log_density": (
        "The log density or its gradient is NaN or infinite there: check the data "
        "for NaN or inf (e.g. `np.isfinite(y).all()`), and start at a `phi` inside "
        "the support of the prior."
    ),
}


def failure_fix(result: RESULTS) -> str | None:
    """For a concrete code other than `successful`: what happened and what to do,
    in one sentence or two (`None` for `successful`)."""
    for name, fix in _FIXES.items():
        if bool(result == getattr(RESULTS, name)):
            return f"Reason: {fix}"
    if bool(result == RESULTS.successful):
        return None
    return f"Reason: {RESULTS[result]}"
