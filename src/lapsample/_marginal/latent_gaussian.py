r"""The Laplace marginal of a latent Gaussian model.

    theta ~ N(m(phi), K(phi))   (or precision Q(phi), banded),
    y_i | theta ~ p(y_i | theta_i, phi)   conditionally independent,

so the negative Hessian of the log joint in `theta` is `K⁻¹ + W` with `W` diagonal.

Covariance form (Rasmussen & Williams, *Gaussian Processes for Machine Learning*,
§3.4, in our own notation). Newton runs on `a = K⁻¹(theta - m)`, `theta = m + K a`,
with every solve against `B = I + W½ K W½ = L Lᵀ`, whose eigenvalues lie in
`[1, 1 + max(W)·‖K‖]`, so `K` is never inverted. With `ℓ` the log-likelihood,
`ℓ', ℓ'', ℓ'''` its elementwise derivatives and `W = -ℓ''`:

    log q(phi) = ℓ(theta*) - ½ aᵀ(theta* - m) - Σ log diag L  (+ log prior(phi))

Gradient. With `R = W½ B⁻¹ W½ = (K + W⁻¹)⁻¹` and `Σ = (K⁻¹ + W)⁻¹ = K - K R K`:

- explicit terms: `ḡ·(½ aᵀ dK a + aᵀ dm - ½ tr(R dK) + dℓ + ½ diag(Σ)ᵀ dℓ'')`;
- through the mode: `d theta* = (I + K W)⁻¹ (dm + dK a + K dℓ')` is contracted
  first with `s = ½ ḡ diag(Σ) ⊙ ℓ''' + θ̄` (the derivative of `-½ log det B` in
  `theta`, plus any cotangent on `theta*`): `u = (I + W K)⁻¹ s = s - R K s`, adding
  `uᵀ dm + uᵀ dK a + (K u)ᵀ dℓ'`.

So the cotangent of `K(phi)` is `K̄ = ḡ(½ a aᵀ - ½ R) + u aᵀ` and that of `m(phi)` is
`ḡ a + u`: they are pulled back through the user's covariance and mean functions by
one reverse-mode VJP. No Newton iteration is differentiated. The one `O(n³)` step of
the backward pass is `P = B⁻¹ = L⁻ᵀ L⁻¹` (on the CPU a blocked inverse and a
blocked triangular product, about `n³` flops in matrix products); `R = W½ P W½`, and
`diag(Σ)` from `Σ = W^-½ (I - P) W^-½` with `I - P = P W½ K W½`, in `O(n²)`
(`lg_covariance._posterior_variances`).

Precision form. `H = Q + W` is banded like `Q`; Newton runs directly on `theta` with a
banded Cholesky, and

    log q(phi) = ℓ(theta*) - ½ rᵀ Q r + ½ log det Q - ½ log det(Q + W),  r = theta* - m.

Its gradient is `∂_phi[ḡ·log q + uᵀ ∇_theta log q]` at fixed `theta*` with
`u = (Q + W)⁻¹ s` as above. Each log-determinant enters through its linearisation
`tr(A⁻¹ dA)`, with the band of `(Q + W)⁻¹` (whose diagonal is `diag(Σ)`) and of `Q⁻¹`
from the selected inverse of the banded factors, so no recurrence is differentiated:
one reverse pass through `Q(phi)`, `m(phi)` and the likelihood. The banded
factorisations, solves and selected inverses are `BandedHessian`'s
(`_linalg/banded.py`).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._linalg.banded import (
    add_to_block_diagonal,
    band_matvec,
    banded_draw,
    banded_factorise,
    banded_logdet,
    check_recurrences,
    lower_bands_to_blocks,
    use_associative,
)
from .._misc import default_step_tolerance, default_tolerance, map_starts
from .._results import RESULTS
from .._validate import check_int, check_solver_settings
from .ad import finish_forward
from .base import (
    AbstractLaplaceMarginal,
    LaplaceConditional,
    MarginalAux,
)
from .lg_covariance import (
    b_draw,
    cov_cotangents,
    covariance_ok,
    newton_cov,
)
from .lg_design import (
    check_design,
    design_cotangents,
    design_draw,
    DesignLikelihood,
    newton_design,
)
from .lg_link import check_index, check_link, check_shapes, LinkedLikelihood
from .lg_newton import NewtonSettings
from .lg_precision import check_band_layout, newton_prec, prec_cotangents
from .likelihoods import AbstractLikelihood


# --------------------------------------------------------------------------------
# The user's functions of phi, as one Module (closure-converted at the call).
# --------------------------------------------------------------------------------


class _PhiFunctions(eqx.Module):
    """`phi -> (K or Q_band, m, (likelihood params, offset))`."""

    prior_matrix: Callable
    mean: Callable | None
    likelihood_params: Callable | None
    offset: Callable | None

    def __call__(self, phi):
        mat = jnp.asarray(self.prior_matrix(phi))
        n = mat.shape[1]
        if self.mean is None:
            mean = jnp.zeros(n, mat.dtype)
        else:
            mean = jnp.broadcast_to(jnp.asarray(self.mean(phi), mat.dtype), (n,))
        params = None if self.likelihood_params is None else self.likelihood_params(phi)
        offset = (
            None if self.offset is None else jnp.asarray(self.offset(phi), mat.dtype)
        )
        return mat, mean, (params, offset)


# --------------------------------------------------------------------------------
# The value with one custom VJP.
# --------------------------------------------------------------------------------


def _forward(mat, mean, params, lik, theta_guess, settings):
    if settings.precision_form:
        value, theta, factor, result, num_steps = newton_prec(
            lik, params, mat, mean, theta_guess, settings
        )
        a = jnp.zeros_like(theta)
    else:
        newton = newton_design if isinstance(lik, DesignLikelihood) else newton_cov
        value, a, theta, factor, result, num_steps = newton(
            lik, params, mat, mean, theta_guess, settings
        )
    value, theta_out, result, ok = finish_forward(value, theta, result, theta_guess)
    return (value, theta_out, result, num_steps), (theta, a, factor, ok)


@eqx.filter_custom_vjp
def _latent_gaussian_log_marginal(phi, fns, lik, theta_guess, settings):
    out, _ = _forward(*fns(phi), lik, theta_guess, settings)
    return out


@_latent_gaussian_log_marginal.def_fwd
def _lg_fwd(perturbed, phi, fns, lik, theta_guess, settings):
    del perturbed
    # `K(phi)` is evaluated once: its pullback is kept for the backward pass
    # (evaluating it again there cost about 2 ms of 70 at n = 911).
    prior, pullback = jax.vjp(fns, phi)
    out, residuals = _forward(*prior, lik, theta_guess, settings)
    return out, (residuals, prior, pullback)


@_latent_gaussian_log_marginal.def_bwd
def _lg_bwd(residuals, cotangents, perturbed, phi, fns, lik, theta_guess, settings):
    del perturbed, phi, fns, theta_guess
    (theta, a, factor, ok), prior, pullback = residuals
    value_bar, theta_bar, _, _ = cotangents
    if value_bar is None:
        value_bar = jnp.zeros((), theta.dtype)
    mat, mean, params = prior
    # Sanitise a failed point so that nothing below produces NaN (its gradient is
    # zeroed at the end anyway).
    theta = jnp.where(ok, theta, mean)
    if settings.precision_form:
        # The banded factors are finite even where a factorisation failed.
        terms = prec_cotangents(
            lik, theta, factor, mat, mean, params, value_bar, theta_bar
        )
        if params is None:
            mat_bar, mean_bar = jax.grad(terms, argnums=(0, 1))(mat, mean, None)
            params_bar = None
        else:
            mat_bar, mean_bar, params_bar = jax.grad(terms, argnums=(0, 1, 2))(
                mat, mean, params
            )
    else:
        a = jnp.where(ok, a, 0.0)
        factor = jnp.where(ok, factor, jnp.eye(theta.shape[0], dtype=theta.dtype))
        design = isinstance(lik, DesignLikelihood)
        cotangents = design_cotangents if design else cov_cotangents
        mat_bar, mean_bar, lik_terms = cotangents(
            lik, theta, a, factor, mat, mean, params, value_bar, theta_bar
        )
        params_bar = None if params is None else jax.grad(lik_terms)(params)
    (phi_bar,) = pullback((mat_bar, mean_bar, params_bar))
    return jax.tree.map(lambda g: jnp.where(ok, g, jnp.zeros_like(g)), phi_bar)


# --------------------------------------------------------------------------------
# The public Module.
# --------------------------------------------------------------------------------


class LatentGaussianMarginal(AbstractLaplaceMarginal):
    r"""The Laplace marginal `log p(phi | y)` (up to a constant) of a latent Gaussian
    model with a conditionally independent likelihood:

    $$\theta \sim N(m(\phi), K(\phi)) \ \text{or}\ N(m(\phi), Q(\phi)^{-1}),\qquad
    y_i \mid \theta \sim p(y_i \mid \theta_i, \phi).$$

    The negative Hessian of the log joint is `K⁻¹ + W` with `W` diagonal, and this
    marginal exploits it:

    - **covariance form** (`covariance=`): Newton in the stable
      `B = I + W½ K W½` form of Rasmussen & Williams (Alg. 3.1): only `B` is
      factorised, never `K`, so a nearly singular `K` (a squared-exponential kernel
      with a small jitter) is harmless;
    - **precision form** (`precision=`, a banded `Q` such as a random walk or an
      AR(1)): `Q + W` is banded and factorised in `O(n b²)` by the kernels of
      [`lapsample.BandedHessian`][] (for `b = 1` off the CPU, associative scans of
      depth `log n`; see `recurrences`).

    The gradient in `phi` comes from the implicit function theorem with the
    likelihood's diagonal third derivative (R&W Alg. 5.1), in one custom VJP; the
    cotangent of `K(phi)` is pulled back through `covariance` by **one reverse-mode
    VJP**, so the cost of the backward pass does not grow with the number of
    kernel hyperparameters. Newton is never differentiated.

    Newton is warm-started from `theta_guess` and stops when the step is negligible.
    Along a trajectory samplers pass the previous mode and, with `predictor=True`,
    a prediction of the new one (a [`lapsample.WarmStart`][]: the last two modes
    extrapolated, free to form), and Newton starts from whichever has the higher
    objective at the new `phi` (on the 911-cell disease map, 2.5 instead of 2.8
    Newton steps per evaluation; `benchmarks/predictor.py --trajectories`). A
    failed solve, a `W` with negative entries (a likelihood that is not
    log-concave at the mode) or a `Q` that is not positive definite gives `-inf`,
    a zero gradient and a [`lapsample.RESULTS`][] code.

    It equals [`lapsample.LaplaceMarginal`][] with `log_joint = log_prior(phi) +
    log N(theta; m, K) + log_likelihood` (to rounding), at a fraction of the cost.

    !!! info

        Like `LaplaceMarginal`, only reverse mode (`jax.grad`) is defined in `phi`.
        `theta` is a flat vector: one latent per observation, or mapped to the
        observations by `index=` or `design=` (GLMMs: see the how-to, `glmm.md`).

    ??? cite "References"

        ```bibtex
        @book{rasmussen2006gaussian,
            title={Gaussian Processes for Machine Learning},
            author={Rasmussen, Carl Edward and Williams, Christopher K. I.},
            publisher={MIT Press},
            year={2006}
        }
        @inproceedings{margossian2020hamiltonian,
            title={Hamiltonian Monte Carlo using an adjoint-differentiated
                   Laplace approximation: Bayesian inference for latent
                   Gaussian models and beyond},
            author={Margossian, Charles C and Vehtari, Aki and Simpson, Daniel
                    and Agrawal, Raj},
            booktitle={Advances in Neural Information Processing Systems},
            year={2020}
        }
        ```
    """

    likelihood: AbstractLikelihood
    covariance: Callable | None = None
    precision: Callable | None = None
    mean: Callable | None = None
    likelihood_params: Callable | None = None
    index: Any = eqx.field(default=None, converter=check_index)
    design: Any = eqx.field(default=None, converter=check_design)
    offset: Callable | None = None
    log_prior: Callable | None = None
    theta_init: Any = None
    max_steps: int = 50
    max_backtracks: int = 30
    xtol: float | None = None
    recurrences: str = "auto"
    predictor: bool = eqx.field(default=True, static=True)

    @property
    def takes_warm_start_pair(self) -> bool:
        return self.predictor

    def __check_init__(self):
        if not isinstance(self.likelihood, AbstractLikelihood):
            raise TypeError(
                "`likelihood` must be an `lapsample.AbstractLikelihood` such as "
                "`lapsample.PoissonLog(y)`, got "
                f"{type(self.likelihood).__name__}."
            )
        if (self.covariance is None) == (self.precision is None):
            raise ValueError(
                "Give exactly one of `covariance=phi -> K` (an n × n matrix) or "
                "`precision=phi -> Q_band` (the lower bands of a banded precision, "
                "shape (bandwidth + 1, n))."
            )
        for name in ("covariance", "precision", "mean", "likelihood_params", "offset"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"`{name}` must be a function of `phi`, got {type(fn).__name__}."
                )
        if self.log_prior is not None and not callable(self.log_prior):
            raise TypeError("`log_prior` must be a function `phi -> scalar`.")
        if self.theta_init is not None:
            theta_init = jnp.asarray(self.theta_init)
            if theta_init.ndim != 1 or not jnp.issubdtype(
                theta_init.dtype, jnp.floating
            ):
                raise TypeError(
                    "`theta_init` must be a 1-D real floating array (one entry per "
                    f"latent), got shape {theta_init.shape} and dtype "
                    f"{theta_init.dtype}."
                )
        check_link(self.index, self.design, self.precision)
        check_recurrences(self.recurrences, "LatentGaussianMarginal")
        check_solver_settings("LatentGaussianMarginal", self.max_steps, xtol=self.xtol)
        check_int("LatentGaussianMarginal(max_backtracks=...)", self.max_backtracks, 0)

    def _functions(self) -> _PhiFunctions:
        matrix = self.covariance if self.precision is None else self.precision
        return _PhiFunctions(matrix, self.mean, self.likelihood_params, self.offset)

    def _settings(self, dtype) -> NewtonSettings:
        tol = default_tolerance(dtype)
        xtol = default_step_tolerance(dtype) if self.xtol is None else self.xtol
        return NewtonSettings(
            self.precision is not None,
            self.max_steps,
            self.max_backtracks,
            xtol,
            tol,
            tol,
            use_associative(self.recurrences),
        )

    def _linked(self, num_latent: int) -> LinkedLikelihood | DesignLikelihood:
        if self.design is not None:
            return DesignLikelihood(self.likelihood, self.design)
        return LinkedLikelihood(self.likelihood, self.index, num_latent)

    def __call__(self, phi, theta_guess=None):
        fns = self._functions()
        # Closed-over tracers become explicit inputs, as custom rules require.
        fns = eqx.filter_closure_convert(fns, phi)
        mat, _, params = jax.eval_shape(fns, phi)
        link = self.index if self.design is None else self.design
        check_shapes(self.likelihood, link, mat, params, self.precision is not None)
        guess = self.theta_init if theta_guess is None else theta_guess

        def latent(start):
            start = jnp.asarray(start, mat.dtype)
            if start.shape != (mat.shape[1],):
                raise ValueError(
                    f"`theta_init`/`theta_guess` has shape {start.shape}; the latent "
                    f"has {mat.shape[1]} entries, so it must have shape "
                    f"({mat.shape[1]},)."
                )
            return start

        guess = map_starts(latent, guess)
        value, theta, result, num_steps = _latent_gaussian_log_marginal(
            phi, fns, self._linked(mat.shape[1]), guess, self._settings(mat.dtype)
        )
        if self.log_prior is not None:
            value = value + jnp.where(
                jnp.isfinite(value), jnp.asarray(self.log_prior(phi), value.dtype), 0.0
            )
            ok = jnp.isfinite(value)
            result = RESULTS.where(
                ok | (result != RESULTS.successful),
                result,
                RESULTS.nonfinite_log_density,
            )
            value = jnp.where(ok, value, -jnp.inf)
        aux = MarginalAux(theta_star=theta, result=result, num_steps=num_steps)
        return value, aux

    def sample_theta(
        self, key: PRNGKeyArray, phi: PyTree[Array], theta_star: Float[Array, " n"]
    ) -> Float[Array, " n"]:
        """Draw `theta ~ N(theta_star, (K⁻¹ + W)⁻¹)` (or `(Q + W)⁻¹`), the Laplace
        approximation to `p(theta | phi, y)`, without inverting `K`.

        Covariance form: with `f ~ N(0, K)` and `e ~ N(0, I)`,
        `h = f + K W½ e` has covariance `K + K W K`, and `h - K R h` (with
        `R = W½ B⁻¹ W½`) has covariance `(K⁻¹ + W)⁻¹`. Needs a Cholesky of `K`;
        precision form: `theta_star + L⁻ᵀ z` with `L Lᵀ = Q + W`.

        **Arguments:**

        - `key`: a JAX PRNG key.
        - `phi`: the hyperparameters of this draw.
        - `theta_star`: the mode at `phi` (e.g. `aux.theta_star`).

        **Returns:**

        One draw, shape `(n,)`; NaN where a factorisation fails.
        """
        mat, _, params = self._functions()(phi)
        theta_star = jnp.asarray(theta_star, mat.dtype)
        w = self._linked(mat.shape[1]).curvature(theta_star, params)
        draw, _, _ = self._conditional(mat, w)
        return theta_star + draw(key)

    def _conditional(self, mat, w):
        """The Laplace conditional about its mode, factorised once: `(draw,
        quadratic_form, log_prior_density)` with `draw: key -> u ~ N(0, A⁻¹)`,
        `quadratic_form: u -> uᵀ A u` for `A = K⁻¹ + W` (or `Q + W`), and
        `log_prior_density: r -> log N(m + r; m, K)` (or with precision `Q`). NaN
        where a factorisation fails."""
        n = w.shape[0]
        half_log_2pi = 0.5 * n * jnp.log(2 * jnp.pi)
        if self.precision is not None:
            q_diag, q_sub = lower_bands_to_blocks(mat)
            associative = use_associative(self.recurrences)
            factor, ok = banded_factorise(
                add_to_block_diagonal(q_diag, w), q_sub, n, associative=associative
            )
            prior_factor, prior_ok = banded_factorise(
                q_diag, q_sub, n, associative=associative
            )
            half_logdet_q = jnp.where(
                prior_ok, 0.5 * banded_logdet(prior_factor), jnp.nan
            )

            def draw(key):
                return jnp.where(ok, banded_draw(factor, key), jnp.nan)

            def prior_quadratic(u):
                return jnp.dot(u, band_matvec(mat, u))

            def log_prior_density(r):
                return -0.5 * prior_quadratic(r) + half_logdet_q - half_log_2pi

        else:
            chol_k = jnp.linalg.cholesky(mat)
            # A K that is not symmetric still has a (wrong) factor of its lower
            # triangle: no draws from it. (The factor itself tells positive
            # definiteness: no second Cholesky.)
            k_ok = covariance_ok(mat, chol_k)
            chol_k = jnp.where(k_ok, chol_k, jnp.nan)
            half_logdet_k = jnp.sum(jnp.log(jnp.diagonal(chol_k)))

            if w.ndim == 2:  # a design matrix: W = Aᵀ diag(w) A is dense
                draw = design_draw(mat, w, k_ok)
            else:
                draw = b_draw(mat, w, chol_k)

            def prior_quadratic(u):
                z = jsl.solve_triangular(chol_k, u, lower=True)
                return jnp.dot(z, z)

            def log_prior_density(r):
                return -0.5 * prior_quadratic(r) - half_logdet_k - half_log_2pi

        def quadratic_form(u):
            return prior_quadratic(u) + jnp.dot(w @ u if w.ndim == 2 else w * u, u)

        return draw, quadratic_form, log_prior_density

    def laplace_conditional(
        self, phi: PyTree[Array], theta_guess: Float[Array, " n"] | None = None
    ) -> LaplaceConditional:
        """The Laplace approximation at `phi`, factorised in this marginal's own
        form (`B` or `Q + W`), with `log_joint: theta -> log p(theta, phi, y)`."""
        value, aux = self(phi, theta_guess)
        mat, mean, params = self._functions()(phi)
        theta_star = aux.theta_star
        w = self._linked(mat.shape[1]).curvature(theta_star, params)
        draw, quadratic_form, log_prior_density = self._conditional(mat, w)
        log_prior = (
            jnp.zeros((), mat.dtype)
            if self.log_prior is None
            else jnp.asarray(self.log_prior(phi), mat.dtype)
        )

        def log_joint(theta):
            return (
                log_prior_density(theta - mean)
                + self._linked(mat.shape[1]).log_density(theta, params)
                + log_prior
            )

        # The prior's own factorisation (of K, or of Q for its log-determinant) can
        # fail where the solve did not: no draws or densities there.
        ok = jnp.isfinite(log_joint(theta_star)) | (aux.result != RESULTS.successful)
        result = RESULTS.where(ok, aux.result, RESULTS.hessian_not_positive_definite)
        return LaplaceConditional(
            value, result, theta_star, log_joint, draw, quadratic_form
        )

    def check(self, phi: PyTree[ArrayLike]) -> None:
        """Check shapes and dtypes of the prior's matrix, mean and likelihood at
        `phi` by tracing once, and (covariance form) that `K(phi)` is symmetric
        positive definite there (compiling only the user's functions of `phi`);
        raises a `ValueError` that names the mismatch or the fix."""
        phi = jtu.tree_map(jnp.asarray, phi)
        jax.eval_shape(self, phi)
        if self.covariance is not None:
            mat, _, _ = eqx.filter_jit(self._functions())(phi)
            if not bool(covariance_ok(mat)):
                raise ValueError(
                    "At the starting `phi`: "
                    + RESULTS[RESULTS.prior_not_positive_definite]
                )
        else:
            check_band_layout(eqx.filter_jit(self._functions())(phi)[0])


LatentGaussianMarginal.__init__.__doc__ = """**Arguments:**

- `likelihood`: an [`lapsample.AbstractLikelihood`][]: [`lapsample.PoissonLog`][],
    [`lapsample.NegBinomial2Log`][], [`lapsample.BernoulliLogit`][],
    [`lapsample.Gaussian`][] or your own.
- `covariance`: `phi -> K`, the `n × n` prior covariance of `theta` (include any
    jitter). Give this or `precision`.
- `precision`: `phi -> Q_band`, a banded prior precision in lower-band storage:
    shape `(b + 1, n)` with `Q_band[k, i] = Q[i + k, i]` (row 0 the diagonal; the
    last `k` entries of row `k` are ignored). E.g. a stationary AR(1) with
    coefficient `r` and innovation sd `s` has diagonal `(1, 1 + r², …, 1 + r², 1)/s²`
    and first sub-diagonal `-r/s²`.
- `mean`: `phi -> m`, the prior mean (a vector or a scalar); `None` means zero.
- `likelihood_params`: `phi -> params`, what the likelihood reads from `phi` (the
    negative-binomial dispersion, the Gaussian noise sd); `None` when it needs none.
- `index`: optional integer array, one entry per observation: observation `i` reads
    `theta[index[i]]` (random intercepts; `W` stays diagonal, `O(n_obs)` per step).
    Its range is checked before compiling by `sample` and `check` (not inside your
    own `jit` of a traced marginal).
- `design`: optional dense matrix `A`, shape `(n_obs, n)`: observations read
    `A @ theta` (random slopes); covariance form only, `O(n_obs n² + n³)` per step.
- `offset`: optional `phi -> o`, added to each observation's linear predictor
    (fixed effects, e.g. `lambda phi: X @ phi["beta"]`), differentiated in `phi`.
- `log_prior`: `phi -> scalar`, the log prior density of `phi` (with any Jacobian of
    its transform); `None` means flat.
- `theta_init`: optional cold start of Newton (a 1-D array); `None` starts at the
    prior mean.
- `max_steps`, `max_backtracks`: the most Newton iterations per solve, and the most
    step halvings per iteration.
- `xtol`: Newton stops when `max|Δtheta| <= xtol·(1 + max|theta|)`; `None` gives
    `max(1e-8, eps ** (2/3))` of the dtype (1e-8 in float64, about `2.4e-5` in
    float32). The returned mode is off by about that step, the log marginal and its
    gradient by first order in it (3e-8 on the 911-cell disease map); a smaller
    `xtol` costs at most one more Newton step per tenfold.
- `recurrences`: precision form with a bandwidth-1 `Q` only: `'sequential'`,
    `'associative'` or `'auto'`, as for [`lapsample.BandedHessian`][] (same
    numbers to rounding; `'auto'` is associative unless JAX's default backend is
    the CPU).
- `predictor`: whether samplers also pass a predicted mode (a
    [`lapsample.WarmStart`][]), Newton starting from the better of it and the
    previous mode; `False` starts from the previous mode alone.
"""
