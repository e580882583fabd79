"""Hessian strategies: how the curvature of the negative log joint in theta is
built, factorised once, and reused for the log-determinant, solves, draws and the
log-determinant's derivative."""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree, Scalar

from ._results import RESULTS


# `fn(theta, phi)` below is always the *negative* log joint with a flat `theta`, so
# its Hessian `A = ∇²_θ fn` is positive definite at a mode.
FlatFn = Callable[[Float[Array, " d"], PyTree[Array]], Scalar]


def _hvp(fn: FlatFn, theta, phi, v):
    """Hessian-vector product `∇²_θ fn(theta, phi) v` (forward over reverse)."""
    grad_fn = jax.grad(fn)
    return jax.jvp(lambda t: grad_fn(t, phi), (theta,), (v,))[1]


def _second_directional(fn: FlatFn, theta, phi, v):
    """`vᵀ ∇²_θ fn(theta, phi) v` (forward over forward)."""

    def first(t):
        return jax.jvp(lambda s: fn(s, phi), (t,), (v,))[1]

    return jax.jvp(first, (theta,), (v,))[1]


class AbstractFactor(eqx.Module):
    """A factorisation of `A = ∇²_θ fn(theta, phi)` made by a Hessian strategy.

    Holds arrays only, so it can be carried through `lax.while_loop` and returned as
    a residual of a custom VJP.
    """

    positive_definite: eqx.AbstractVar[Bool[Array, ""]]


class AbstractStructuredFactor(AbstractFactor):
    """A factor of a strategy that assumes structure (diagonal, banded, block).

    `structure_ok` is `False` when the extra Hessian-vector product made at the
    factorisation disagreed with the assumed structure; `positive_definite` is then
    `False` too, and the inner solver reports `RESULTS.structure_violated`.
    """

    structure_ok: eqx.AbstractVar[Bool[Array, ""]]


def factor_result(factor: AbstractFactor, result: RESULTS) -> RESULTS:
    """`result`, or the code that explains why `factor` cannot be used."""
    result = RESULTS.where(
        factor.positive_definite, result, RESULTS.hessian_not_positive_definite
    )
    if isinstance(factor, AbstractStructuredFactor):
        result = RESULTS.where(factor.structure_ok, result, RESULTS.structure_violated)
    return result


def probe_vector(theta: Float[Array, " d"]) -> Float[Array, " d"]:
    """A fixed pseudo-random vector in `[-1, 1]` (a Weyl sequence) for structure
    checks: no two entries are equal, so curvature outside the assumed structure
    changes `A z`."""
    golden = 0.6180339887498949
    i = jnp.arange(theta.shape[0], dtype=theta.dtype)
    return 2.0 * jnp.mod(0.5 + golden * i, 1.0) - 1.0


def structure_agrees(hz, az, scale) -> Bool[Array, ""]:
    """Whether the exact product `hz = H z` matches `az`, the product with the
    matrix assembled under the assumed structure, up to `√eps` relative to
    `max(|A| |z|)`. Non-finite entries pass: the positive-definiteness check
    reports them."""
    eps = jnp.finfo(hz.dtype).eps
    tol = jnp.sqrt(eps) * jnp.max(scale, initial=0.0)
    # Two reductions in all (each is a separate kernel on CPU).
    differ = jnp.abs(hz - az) > tol  # False where either is NaN
    finite = jnp.isfinite(hz) & jnp.isfinite(az)
    return ~jnp.any(differ & finite)


class AbstractHessianStrategy(eqx.Module):
    """How the Hessian in `theta` is represented and factorised.

    A strategy builds `A = ∇²_θ fn(theta, phi)` of the negative log joint `fn` (with
    a flat `theta`), factorises it **once**, and answers every question the
    Laplace marginal asks from that one factor:

    - `logdet(factor)`: `log det A`;
    - `solve(factor, v)`: `A⁻¹ v`;
    - `sample(factor, key)`: a draw from `N(0, A⁻¹)`;
    - `logdet_surrogate(factor, fn, theta, phi)`: the scalar
      `tr(A₀⁻¹ ∇²_θ fn(theta, phi))` with `A₀⁻¹` held fixed at the factorised point.
      Its first derivatives in `theta` and `phi` equal those of `log det A` there,
      which is how the marginal's gradient gets the third-derivative term without a
      `d × d × d` tensor.

    Subclass it to exploit structure (diagonal, banded, block, latent-Gaussian...).
    """

    @abc.abstractmethod
    def factorise(
        self, fn: FlatFn, theta: Float[Array, " d"], phi: PyTree[Array]
    ) -> AbstractFactor:
        """Build and factorise `A = ∇²_θ fn(theta, phi)`.

        **Arguments:**

        - `fn`: the negative log joint, `fn(theta_flat, phi) -> scalar`.
        - `theta`: the flat latent vector.
        - `phi`: the hyperparameters (any PyTree).

        **Returns:**

        A factor (arrays only). Its `positive_definite` is `False` when `A` is not
        positive definite or not finite.
        """

    def factorise_and_solve(
        self,
        fn: FlatFn,
        theta: Float[Array, " d"],
        phi: PyTree[Array],
        vector: Float[Array, " d"],
    ) -> tuple[AbstractFactor, Array]:
        """`(factorise(fn, theta, phi), A⁻¹ vector)`: what a Newton step needs. By
        default the two calls; a strategy may fuse them (the tridiagonal one runs
        the forward substitution inside its factorisation loop)."""
        factor = self.factorise(fn, theta, phi)
        return factor, self.solve(factor, vector)

    @abc.abstractmethod
    def logdet(self, factor: AbstractFactor) -> Scalar:
        """`log det A` from the factor."""

    @abc.abstractmethod
    def solve(self, factor: AbstractFactor, vector: Float[Array, " d"]) -> Array:
        """`A⁻¹ vector` from the factor."""

    @abc.abstractmethod
    def sample(self, factor: AbstractFactor, key: PRNGKeyArray) -> Array:
        """A draw from `N(0, A⁻¹)` using the factor."""

    @abc.abstractmethod
    def logdet_surrogate(
        self,
        factor: AbstractFactor,
        fn: FlatFn,
        theta: Float[Array, " d"],
        phi: PyTree[Array],
    ) -> Scalar:
        """`tr(A₀⁻¹ ∇²_θ fn(theta, phi))`, with `A₀` the factorised matrix held fixed.

        Differentiable in `theta` and `phi`; its gradient at the factorised point
        equals the gradient of `log det ∇²_θ fn`.
        """

    def without_checks(self) -> "AbstractHessianStrategy":
        """This strategy with its per-factorisation structure check turned off.

        An iterative inner solver factorises with it at every iterate and checks
        only the factor it returns, with `check_factor`: a wrong structure can only
        misdirect intermediate steps, and the final check still turns it into
        `RESULTS.structure_violated`. Strategies that assume no structure return
        themselves.
        """
        return self

    def check_factor(
        self,
        factor: AbstractFactor,
        fn: FlatFn,
        theta: Float[Array, " d"],
        phi: PyTree[Array],
    ) -> AbstractFactor:
        """`factor`, made at `(theta, phi)` by `self.without_checks()`, with the
        structure check that `self.factorise` would have made applied to it.
        Strategies that assume no structure return it unchanged."""
        del fn, theta, phi
        return factor

    def check_structure(
        self, fn: FlatFn, theta: Float[Array, " d"], phi: PyTree[Array]
    ) -> None:
        """Check, before compilation, that the Hessian at `(theta, phi)` has the
        structure this strategy assumes; [`lapsample.LaplaceMarginal.check`][] calls
        it.

        Strategies that assume nothing (dense, matrix-free) pass. Structured ones
        ([`lapsample.DiagonalHessian`][], [`lapsample.BandedHessian`][],
        [`lapsample.BlockDiagonalHessian`][]) factorise once, with their structure
        check on, and raise a `ValueError` that names the fix when one extra
        Hessian-vector product disagrees with the assumed structure.
        """
        if not isinstance(self, AbstractStructuredHessian):
            return None
        strategy = eqx.tree_at(lambda s: s.verify, self, True)
        factor = eqx.filter_jit(strategy.factorise)(fn, theta, phi)
        if not bool(factor.structure_ok):
            raise ValueError(
                f"The Hessian of the log joint in `theta` does not have the structure "
                f"that `{self!r}` assumes: at `theta_init` it has curvature outside "
                "it. Use a wider band or larger blocks, order the flattened `theta` "
                "so that coupled latents are neighbours (neighbours in time next to "
                "each other; each group's latents consecutive), or use "
                "`DenseHessian()`."
            )
        return None


class AbstractStructuredHessian(AbstractHessianStrategy):
    """A strategy that assumes structure in the Hessian and checks it.

    Its factors are `AbstractStructuredFactor`s, and `verify` says whether each
    factorisation checks the structure with one extra Hessian-vector product.
    """

    verify: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def _factor_product(self, factor, z) -> tuple[Array, Array]:
        """`(A z, |L||Lᵀ||z|)` from the factor `A = L Lᵀ`: the product with the
        matrix assembled under the assumed structure, and a bound on `|A||z|` that
        scales the comparison."""

    def without_checks(self):
        return eqx.tree_at(lambda s: s.verify, self, False) if self.verify else self

    def check_factor(self, factor, fn, theta, phi):
        if not self.verify:
            return factor
        z = probe_vector(theta)
        az, scale = self._factor_product(factor, z)
        agrees = structure_agrees(_hvp(fn, theta, phi, z), az, scale)
        # A factor that is not positive definite has been replaced by identities,
        # so its product says nothing about the structure; its own code explains
        # the failure.
        structure_ok = agrees | ~factor.positive_definite
        return eqx.tree_at(
            lambda f: (f.structure_ok, f.positive_definite),
            factor,
            (structure_ok, factor.positive_definite & structure_ok),
        )


# --------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------


class CholeskyFactor(AbstractFactor):
    """Lower Cholesky factor `L` with `A = L Lᵀ` (replaced by the identity where `A`
    is not positive definite, so downstream arithmetic stays finite)."""

    lower: Float[Array, "d d"]
    positive_definite: Bool[Array, ""]


def _cholesky_factor(matrix: Float[Array, "d d"], jitter) -> CholeskyFactor:
    d = matrix.shape[0]
    if jitter is not None and jitter != 0:
        matrix = matrix + jitter * jnp.eye(d, dtype=matrix.dtype)
    # Symmetrise: AD-built Hessians are symmetric only up to rounding.
    matrix = 0.5 * (matrix + matrix.T)
    lower = jnp.linalg.cholesky(matrix)
    ok = jnp.all(jnp.isfinite(lower))
    lower = jnp.where(ok, lower, jnp.eye(d, dtype=matrix.dtype))
    return CholeskyFactor(lower=lower, positive_definite=ok)


def _cholesky_logdet(factor: CholeskyFactor) -> Scalar:
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(factor.lower)))


def _cholesky_sample(factor: CholeskyFactor, key: PRNGKeyArray) -> Array:
    d = factor.lower.shape[0]
    z = jr.normal(key, (d,), dtype=factor.lower.dtype)
    # x = L⁻ᵀ z has covariance L⁻ᵀ L⁻¹ = A⁻¹.
    return jsl.solve_triangular(factor.lower, z, lower=True, trans="T")


def _cholesky_surrogate(factor: CholeskyFactor, fn: FlatFn, theta, phi) -> Scalar:
    # tr(A₀⁻¹ M) = Σ_k c_kᵀ M c_k with c_k the columns of L⁻ᵀ; each term is a
    # second directional derivative, so M = ∇²_θ fn is never formed here.
    lower = jax.lax.stop_gradient(factor.lower)
    d = lower.shape[0]
    inv_lower_t = jsl.solve_triangular(
        lower, jnp.eye(d, dtype=lower.dtype), lower=True, trans="T"
    )
    terms = jax.vmap(lambda c: _second_directional(fn, theta, phi, c), in_axes=1)(
        inv_lower_t
    )
    return jnp.sum(terms)


class DenseHessian(AbstractHessianStrategy):
    """Materialise the Hessian and take its Cholesky factor.

    The general-purpose choice for `d` up to a few thousand: `O(d²)` memory and
    `O(d³)` time per factorisation. The factor is reused for the log-determinant,
    the implicit-function solve, the log-determinant's gradient and latent draws.
    """

    jitter: float = 0.0

    def factorise(self, fn, theta, phi):
        matrix = jax.jacfwd(jax.grad(fn))(theta, phi)
        return _cholesky_factor(matrix, self.jitter)

    def logdet(self, factor):
        return _cholesky_logdet(factor)

    def solve(self, factor, vector):
        return jsl.cho_solve((factor.lower, True), vector)

    def sample(self, factor, key):
        return _cholesky_sample(factor, key)

    def logdet_surrogate(self, factor, fn, theta, phi):
        return _cholesky_surrogate(factor, fn, theta, phi)


DenseHessian.__init__.__doc__ = """**Arguments:**

- `jitter`: a non-negative constant added to the diagonal of the Hessian before it is
    factorised. Zero (the default) keeps the Laplace approximation exact where it
    should be; a small value such as `1e-8` can rescue nearly singular Hessians at
    the cost of a small bias.
"""


# --------------------------------------------------------------------------------
# Lineax
# --------------------------------------------------------------------------------


class _OwnedCholesky(lx.AbstractLinearSolver):
    """A lineax solver whose state is our own lower Cholesky factor.

    `lineax.Cholesky` keeps its factor in a private layout and offers no
    log-determinant; this solver owns the layout so the one factor serves both
    `lineax.linear_solve` and `log det`.
    """

    def init(self, operator, options):
        del options
        if not lx.is_positive_semidefinite(operator):
            raise ValueError(
                "The Hessian operator must carry `lineax.positive_semidefinite_tag`."
            )
        return _cholesky_factor(operator.as_matrix(), None)

    def compute(self, state, vector, options):
        del options
        solution = jsl.cho_solve((state.lower, True), vector)
        return solution, lx.RESULTS.successful, {}

    def transpose(self, state, options):
        return state, options

    def conj(self, state, options):
        return state, options

    def assume_full_rank(self):
        return True


class LineaxFactor(AbstractFactor):
    """The factor of [`lapsample.LineaxHessian`][]: the materialised Hessian as a
    `lineax.MatrixLinearOperator` and its [`lapsample.CholeskyFactor`][]."""

    operator: lx.MatrixLinearOperator
    state: CholeskyFactor

    @property
    def positive_definite(self):
        return self.state.positive_definite


class _HessianVectorProduct(eqx.Module):
    fn: Callable
    theta: Array
    phi: Any

    def __call__(self, v):
        return _hvp(self.fn, self.theta, self.phi, v)


class LineaxHessian(AbstractHessianStrategy):
    """The Hessian as a Lineax operator built from Hessian-vector products.

    The operator is a `lineax.FunctionLinearOperator` of Hessian-vector products
    (forward over reverse), tagged `lineax.positive_semidefinite_tag`; it is
    materialised with `lineax.materialise` (one batched product per column) and all
    solves go through `lineax.linear_solve`. The solver is a Cholesky solver whose
    factor lapsample owns, so that the same single factorisation also gives the
    log-determinant and the draws.
    """

    def factorise(self, fn, theta, phi):
        struct = jax.ShapeDtypeStruct(theta.shape, theta.dtype)
        operator = lx.FunctionLinearOperator(
            _HessianVectorProduct(fn, theta, phi),
            struct,
            tags=lx.positive_semidefinite_tag,
        )
        matrix = lx.MatrixLinearOperator(
            lx.materialise(operator).as_matrix(), lx.positive_semidefinite_tag
        )
        state = _OwnedCholesky().init(matrix, {})
        return LineaxFactor(operator=matrix, state=state)

    def logdet(self, factor):
        return _cholesky_logdet(factor.state)

    def solve(self, factor, vector):
        solution = lx.linear_solve(
            factor.operator, vector, _OwnedCholesky(), state=factor.state, throw=False
        )
        return solution.value

    def sample(self, factor, key):
        return _cholesky_sample(factor.state, key)

    def logdet_surrogate(self, factor, fn, theta, phi):
        return _cholesky_surrogate(factor.state, fn, theta, phi)


LineaxHessian.__init__.__doc__ = """**Arguments:**

Nothing.
"""


# --------------------------------------------------------------------------------
# Diagonal
# --------------------------------------------------------------------------------


class DiagonalFactor(AbstractStructuredFactor):
    """The factor of [`lapsample.DiagonalHessian`][]: the diagonal of the Hessian
    (replaced by ones where it is not positive, so downstream arithmetic stays
    finite)."""

    diagonal: Float[Array, " d"]
    positive_definite: Bool[Array, ""]
    structure_ok: Bool[Array, ""] = eqx.field(default_factory=lambda: jnp.array(True))


class DiagonalHessian(AbstractStructuredHessian):
    """For models whose Hessian in `theta` is diagonal (conditionally independent
    latents, e.g. `theta_i ~ N(mu, tau²)`, `y_i ~ p(y_i | theta_i)`).

    The diagonal is one Hessian-vector product with a vector of ones, and every
    operation is `O(d)`.

    With off-diagonal curvature the product with ones returns row sums, so the
    structure is checked with one more Hessian-vector product (see `verify`; once per
    inner solve, on the factor at the mode): a violation gives a factor with
    `structure_ok = False`, a marginal of `-inf` and the code
    `RESULTS.structure_violated`; [`lapsample.LaplaceMarginal.check`][] raises a
    `ValueError` before compilation.
    """

    verify: bool = True

    def factorise(self, fn, theta, phi):
        diagonal = _hvp(fn, theta, phi, jnp.ones_like(theta))
        if self.verify:
            z = probe_vector(theta)
            structure_ok = structure_agrees(
                _hvp(fn, theta, phi, z), diagonal * z, jnp.abs(diagonal * z)
            )
        else:
            structure_ok = jnp.array(True)
        ok = jnp.all(jnp.isfinite(diagonal)) & jnp.all(diagonal > 0)
        diagonal = jnp.where(ok, diagonal, jnp.ones_like(diagonal))
        return DiagonalFactor(
            diagonal=diagonal,
            positive_definite=ok & structure_ok,
            structure_ok=structure_ok,
        )

    def _factor_product(self, factor, z):
        product = factor.diagonal * z
        return product, jnp.abs(product)

    def logdet(self, factor):
        return jnp.sum(jnp.log(factor.diagonal))

    def solve(self, factor, vector):
        return vector / factor.diagonal

    def sample(self, factor, key):
        z = jr.normal(key, factor.diagonal.shape, dtype=factor.diagonal.dtype)
        return z / jnp.sqrt(factor.diagonal)

    def logdet_surrogate(self, factor, fn, theta, phi):
        inverse = jax.lax.stop_gradient(1.0 / factor.diagonal)
        return jnp.dot(inverse, _hvp(fn, theta, phi, jnp.ones_like(theta)))


DiagonalHessian.__init__.__doc__ = """**Arguments:**

- `verify`: check that the Hessian is diagonal with one extra Hessian-vector
    product (default `True`): at every direct `factorise`, and once per inner solve
    (on the factor at the mode) inside the Laplace marginal. Turn it off only for a
    model already checked: with off-diagonal curvature the results are then
    silently wrong.
"""
