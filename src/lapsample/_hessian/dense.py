"""Dense strategies: the materialised Hessian with one Cholesky factor
(`DenseHessian`), or a Lineax operator (`LineaxHessian`)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import lineax as lx
from jaxtyping import Array, Bool, Float, PRNGKeyArray, Scalar

from .._custom_types import FlatFn
from .._factor import AbstractFactor
from .._linalg.dense import cholesky_lower, factor_finite, inverse_lower
from .._validate import check_nonnegative
from .base import (
    AbstractHessianStrategy,
    envelope_terms,
    hvp,
    quadratic_form,
    second_directional,
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
    lower = cholesky_lower(matrix)  # symmetrised once, just above
    ok = factor_finite(lower)
    lower = jnp.where(ok, lower, jnp.eye(d, dtype=matrix.dtype))
    return CholeskyFactor(lower=lower, positive_definite=ok)


def _cholesky_logdet(factor: CholeskyFactor) -> Scalar:
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(factor.lower)))


def _cholesky_sample(factor: CholeskyFactor, key: PRNGKeyArray) -> Array:
    d = factor.lower.shape[0]
    z = jr.normal(key, (d,), dtype=factor.lower.dtype)
    # x = L⁻ᵀ z has covariance L⁻ᵀ L⁻¹ = A⁻¹.
    return jsl.solve_triangular(factor.lower, z, lower=True, trans="T")


def _inverse_rows(factor: CholeskyFactor):
    # tr(A₀⁻¹ M) = Σ_k c_kᵀ M c_k with c_k the columns of L⁻ᵀ, i.e. the rows of
    # L⁻¹; each term is a second directional derivative, so M = ∇²_θ fn is never
    # formed. L⁻¹ by blocked recursion (matrix products) rather than a triangular
    # solve against the identity.
    return inverse_lower(jax.lax.stop_gradient(factor.lower))


def _cholesky_surrogate(factor: CholeskyFactor, fn: FlatFn, theta, phi) -> Scalar:
    rows = _inverse_rows(factor)
    return jnp.sum(jax.vmap(lambda c: second_directional(fn, theta, phi, c))(rows))


def _cholesky_envelope_terms(factor: CholeskyFactor, fn: FlatFn, theta, phi, u):
    # All three terms from one (batched) trace of `fn`: along each row c of L⁻¹,
    # three nested jvps give fn, its slope along u and its curvature along c. The
    # value and the slope do not depend on c, so vmap computes them once, and the
    # model's phi-path (e.g. the Cholesky factor of K(phi)) appears once in the
    # trace: a reverse pass in phi then goes through it once, where separate
    # `value_and_grad` and surrogate traces went through it twice. The unused
    # third-order tangent (the slope of the curvature) is dead code that XLA
    # removes. Measured on one core (`benchmarks/marginal.py`'s Poisson GP,
    # cond(H) ≈ 3e6): value+grad 22-25 % faster at d = 300 and 1000 (six
    # triangular solves with d right-hand sides instead of eight), temporaries
    # 11.3 → 10.3 d². The slope as a jvp along u is also the closer of the two to
    # an independent oracle (`LatentGaussianMarginal`'s own formulas, every solve
    # to 1e-14; two runs): gradient 1.4-3.9e-10 / 0.3-1.0e-10 from it at d = 1000
    # / 300, against 1.5-2.2e-8 / 0.1-1.5e-9 for `⟨u, ∇_θ fn⟩` from a separate
    # gradient trace. On the seed model (no costly phi-path) the two cost the
    # same to 3 %.
    # `u = None` (a zero adjoint): no slope.
    def along(c):
        def first(t):
            return jax.jvp(lambda s: fn(s, phi), (t,), (c,))

        def second(t):
            (value, _), (_, curvature) = jax.jvp(first, (t,), (c,))
            return value, curvature

        if u is None:
            value, curvature = second(theta)
            return value, jnp.zeros((), theta.dtype), curvature
        (value, curvature), (slope, _) = jax.jvp(second, (theta,), (u,))
        return value, slope, curvature

    value, slope, curvature = jax.vmap(along)(_inverse_rows(factor))
    return value[0], slope[0], jnp.sum(curvature)


class DenseHessian(AbstractHessianStrategy):
    """Materialise the Hessian and take its Cholesky factor.

    The general-purpose choice for `d` up to a few thousand: `O(d²)` memory and
    `O(d³)` time per factorisation. The factor is reused for the log-determinant,
    the implicit-function solve, the log-determinant's gradient and latent draws.
    """

    jitter: float = 0.0

    def __check_init__(self):
        check_nonnegative(
            "DenseHessian(jitter=...)",
            self.jitter,
            "A negative jitter subtracts curvature and biases the marginal: use 0 "
            "(the default, exact) or a small positive value such as 1e-8.",
        )

    @property
    def exact(self):
        return isinstance(self.jitter, (int, float)) and self.jitter == 0

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
    the cost of a small bias. The gradient's implicit-function term uses the
    jittered factor too: the gradient is that of the jittered value up to a
    relative error of order `jitter / λ_min(H)` (the samplers stay exact; see
    "Choosing components").
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
        return hvp(self.fn, self.theta, self.phi, v)


class LineaxHessian(AbstractHessianStrategy):
    """The Hessian as a Lineax operator built from Hessian-vector products.

    The operator is a `lineax.FunctionLinearOperator` of Hessian-vector products
    (forward over reverse), tagged `lineax.positive_semidefinite_tag`; it is
    materialised with `lineax.materialise` (one batched product per column) and all
    solves go through `lineax.linear_solve`. The solver is a Cholesky solver whose
    factor lapsample owns, so that the same single factorisation also gives the
    log-determinant and the draws.
    """

    @property
    def exact(self):
        return True

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


@quadratic_form.register(CholeskyFactor)
def _(factor: CholeskyFactor, fn, theta, phi, u):
    del fn, theta, phi
    v = factor.lower.T @ u
    return jnp.dot(v, v)


@quadratic_form.register(LineaxFactor)
def _(factor: LineaxFactor, fn, theta, phi, u):
    return quadratic_form(factor.state, fn, theta, phi, u)


@envelope_terms.register(CholeskyFactor)
def _(factor: CholeskyFactor, strategy, fn, theta, phi, u):
    del strategy
    return _cholesky_envelope_terms(factor, fn, theta, phi, u)


@envelope_terms.register(LineaxFactor)
def _(factor: LineaxFactor, strategy, fn, theta, phi, u):
    del strategy
    return _cholesky_envelope_terms(factor.state, fn, theta, phi, u)
