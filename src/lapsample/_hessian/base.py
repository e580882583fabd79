"""The Hessian-strategy interface, its structured variant, and the
Hessian-vector products every strategy builds on."""

import abc
import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree, Scalar

from .._custom_types import FlatFn
from .._factor import AbstractFactor


def hvp(fn: FlatFn, theta, phi, v):
    """Hessian-vector product `∇²_θ fn(theta, phi) v` (forward over reverse)."""
    grad_fn = jax.grad(fn)
    return jax.jvp(lambda t: grad_fn(t, phi), (theta,), (v,))[1]


def second_directional(fn: FlatFn, theta, phi, v):
    """`vᵀ ∇²_θ fn(theta, phi) v` (forward over forward)."""

    def first(t):
        return jax.jvp(lambda s: fn(s, phi), (t,), (v,))[1]

    return jax.jvp(first, (theta,), (v,))[1]


def probe_vector(theta: Float[Array, " d"]) -> Float[Array, " d"]:
    """A fixed pseudo-random vector in `[-1, 1]` (a Weyl sequence) for structure
    checks: no two entries are equal, so curvature outside the assumed structure
    changes `A z`."""
    golden = 0.6180339887498949
    i = jnp.arange(theta.shape[0], dtype=theta.dtype)
    return 2.0 * jnp.mod(0.5 + golden * i, 1.0) - 1.0


def structure_agrees(hz, az, scale) -> Bool[Array, ""]:
    """Whether the exact product `hz = H z` matches `az`, the product with the
    matrix assembled under the assumed structure, row by row: `|hz_i - az_i| <=
    √eps·scale_i + eps·max(scale)`, with `scale = |A| |z|`.

    Each row is compared with its own scale (the rounding of `(H z)_i` is of order
    `eps·Σ_j |H_ij| |z_j|`, the row's own), so one very stiff latent (a curvature
    of 1e9) no longer hides real coupling between ordinary ones, as one tolerance
    for the whole Hessian (`√eps·max(scale)`) did. The `eps·max(scale)` floor
    covers rows whose scale vanishes (`z_i = 0`) at the level of the largest
    product's rounding. Non-finite entries pass: the positive-definiteness check
    reports them."""
    eps = jnp.finfo(hz.dtype).eps
    tol = jnp.sqrt(eps) * scale + eps * jnp.max(scale, initial=0.0)
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

    @property
    def exact(self) -> bool:
        """Whether `factorise` factorises `∇²_θ fn` itself (no jitter, no
        approximation). [`lapsample.Newton`][] then solves a log joint that is
        quadratic in `theta` by one step. `False` unless a strategy says so: with an
        approximate Hessian one step does not reach the mode, and the solve
        iterates."""
        return False


class AbstractStructuredHessian(AbstractHessianStrategy):
    """A strategy that assumes structure in the Hessian (diagonal, banded, blocks)
    and checks it.

    Its factors are `AbstractStructuredFactor`s, and `verify` says whether each
    factorisation checks the structure with one extra Hessian-vector product. A
    subclass implements `factor_product` (the product with the matrix assembled
    under the assumed structure) and gets three things:

    - `without_checks()`: the strategy with its per-factorisation check off. An
      iterative inner solver factorises with it at every iterate and checks only
      the factor it returns: a wrong structure can only misdirect intermediate
      steps, and the final check still turns it into
      `RESULTS.structure_violated`;
    - `check_factor(factor, fn, theta, phi)`: that final check;
    - `check_structure(fn, theta, phi)`: the same check before compilation, which
      [`lapsample.LaplaceMarginal.check`][] calls and which raises a `ValueError`
      naming the fix.
    """

    verify: eqx.AbstractVar[bool]

    @property
    def exact(self) -> bool:
        # The assembled matrix is the Hessian when the structure holds, which the
        # returned factor's check confirms (or the user asserts, `verify=False`).
        return True

    @abc.abstractmethod
    def factor_product(
        self, factor: AbstractFactor, z: Float[Array, " d"]
    ) -> tuple[Array, Array]:
        """`(A z, |L||Lᵀ||z|)` from the factor `A = L Lᵀ`: the product with the
        matrix assembled under the assumed structure, and a bound on `|A||z|` that
        scales the comparison."""

    def without_checks(self) -> "AbstractStructuredHessian":
        """This strategy with its per-factorisation structure check turned off."""
        return eqx.tree_at(lambda s: s.verify, self, False) if self.verify else self

    def check_factor(
        self,
        factor: AbstractFactor,
        fn: FlatFn,
        theta: Float[Array, " d"],
        phi: PyTree[Array],
    ) -> AbstractFactor:
        """`factor`, made at `(theta, phi)` by `self.without_checks()`, with the
        structure check that `self.factorise` would have made applied to it."""
        if not self.verify:
            return factor
        z = probe_vector(theta)
        az, scale = self.factor_product(factor, z)
        agrees = structure_agrees(hvp(fn, theta, phi, z), az, scale)
        # A factor that is not positive definite has been replaced by identities,
        # so its product says nothing about the structure; its own code explains
        # the failure.
        structure_ok = agrees | ~factor.positive_definite
        return eqx.tree_at(
            lambda f: (f.structure_ok, f.positive_definite),
            factor,
            (structure_ok, factor.positive_definite & structure_ok),
        )

    def check_structure(
        self, fn: FlatFn, theta: Float[Array, " d"], phi: PyTree[Array]
    ) -> None:
        """Check, before compilation, that the Hessian at `(theta, phi)` has the
        structure this strategy assumes: factorise once with the check on and raise
        a `ValueError` that names the fix when one extra Hessian-vector product
        disagrees with the assumed structure."""
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


@ft.singledispatch
def factorise_and_solve(
    strategy: AbstractHessianStrategy,
    fn: FlatFn,
    theta: Float[Array, " d"],
    phi: PyTree[Array],
    vector: Float[Array, " d"],
) -> tuple[AbstractFactor, Array]:
    """`(strategy.factorise(fn, theta, phi), A⁻¹ vector)`: what a Newton step needs.

    By default the two calls. A strategy that can fuse them registers its own
    implementation (as Lineax's `materialise` is registered per operator): the
    banded one runs the forward substitution inside its factorisation loop.
    """
    factor = strategy.factorise(fn, theta, phi)
    return factor, strategy.solve(factor, vector)


@ft.singledispatch
def quadratic_form(
    factor: AbstractFactor,
    fn: FlatFn,
    theta: Float[Array, " d"],
    phi: PyTree[Array],
    u: Float[Array, " d"],
) -> Scalar:
    """`uᵀ A u` for the matrix `A` that `factor` factorises (at `(theta, phi)`).

    Factor types whose layout is known register an implementation that reads the
    factor, so that it matches the strategy's draws exactly (jitter included); for
    any other factor it is a Hessian-vector product of `fn` at the mode.
    """
    del factor
    return jnp.dot(u, hvp(fn, theta, phi, u))


@ft.singledispatch
def envelope_terms(
    factor: AbstractFactor,
    strategy: AbstractHessianStrategy,
    fn: FlatFn,
    theta: Float[Array, " d"],
    phi: PyTree[Array],
    u: Float[Array, " d"] | None,
) -> tuple[Scalar, Scalar, Scalar]:
    """`(fn(theta, phi), ⟨u, ∇_θ fn(theta, phi)⟩, strategy.logdet_surrogate(factor,
    fn, theta, phi))`: the three terms whose derivatives in `phi` make the Laplace
    marginal's gradient (the envelope term, the implicit-function term and the
    log-determinant's own phi-dependence).

    By default the value and gradient come from one `jax.value_and_grad` trace of
    `fn` and the surrogate from the strategy's own. Every trace of `fn` is
    reverse-differentiated in `phi` on its own, so a model whose `phi`-path is
    costly (the Cholesky factor of a covariance `K(phi)`) pays for that path once
    per trace; a factor type whose surrogate is a batch of directional derivatives
    registers an implementation that takes all three from one trace.

    `u = None` stands for a zero adjoint: the slope is zero and not computed.
    """
    surrogate = strategy.logdet_surrogate(factor, fn, theta, phi)
    if u is None:
        return fn(theta, phi), jnp.zeros((), theta.dtype), surrogate
    value, grad = jax.value_and_grad(fn)(theta, phi)
    return value, jnp.dot(u, grad), surrogate
