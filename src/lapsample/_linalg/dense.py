"""Dense triangular kernels: the inverse of a lower-triangular factor by blocked
recursion, so that nearly all of its work runs as matrix products."""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Bool, Float


# Below this size a block is inverted by one triangular solve against the identity.
# On XLA:CPU a triangular solve with many right-hand sides runs at a fraction of
# the speed of a matrix product of the same flop count; small leaves keep its share
# of the work small while the recursion stays a few levels deep.
_LEAF = 64
# At most about this many leaves: the recursion is unrolled at trace time, and at
# n = 10,000 with 64-wide leaves (156 of them) an H200 spent 46 s compiling one
# latent-Gaussian value+grad (5 s with a solve against the identity).
_MAX_LEAVES = 16


def _blocked() -> bool:
    """Whether to use the blocked kernels: on the CPU. Elsewhere (GPU) a solve
    against the identity is fast, and the blocked recursion's many distinct product
    shapes each cost compilation (and autotuning) time: one latent-Gaussian
    value+grad on an H200 took 15-25 s to compile with them against 3.5-5 s."""
    return jax.default_backend() == "cpu"


def _leaf_size(n: int) -> int:
    """`_LEAF`, or a larger multiple of it so that there are at most about
    `_MAX_LEAVES` leaves."""
    return _LEAF * max(1, -(-n // (_LEAF * _MAX_LEAVES)))


def _split(n: int, leaf: int) -> int:
    """Where the recursions here split an `n × n` triangle: a multiple of the leaf
    size (so that the leaves are full-sized blocks) near `n / 2`."""
    return max(leaf, (n // 2 // leaf) * leaf)


# The two products below skip a triangle's zero upper-right block: three products
# on half-size blocks, 3/4 of a full product's flops. Measured on one core (AMD
# EPYC, n = 1000): `inverse_lower` 14.3-19.0 → 11.5-12.2 CPU-ms, as fast as one
# Cholesky factorisation; n = 300: 0.54-0.56 → 0.50-0.52 (`benchmarks/kernels.py`
# times both kernels against an earlier copy). Skipping the block at the first split
# only was as fast as at every level; splitting the triangles' own diagonal blocks
# again saved 7-8 % more at n = 911-1000, nothing at 300, for 0.1-0.4 n² more
# temporaries, and is not done.


def _times_lower(x: Float[Array, "m n"], t: Float[Array, "n n"], leaf: int):
    """`x @ t` for a lower-triangular `t` (its upper triangle is assumed zero)."""
    n = t.shape[0]
    if n <= leaf:
        return x @ t
    j = _split(n, leaf)
    left = x[:, :j] @ t[:j, :j] + x[:, j:] @ t[j:, :j]
    return jnp.concatenate([left, x[:, j:] @ t[j:, j:]], axis=1)


def _lower_times(t: Float[Array, "m m"], x: Float[Array, "m n"], leaf: int):
    """`t @ x` for a lower-triangular `t` (its upper triangle is assumed zero)."""
    m = t.shape[0]
    if m <= leaf:
        return t @ x
    j = _split(m, leaf)
    bottom = t[j:, :j] @ x[:j] + t[j:, j:] @ x[j:]
    return jnp.concatenate([t[:j, :j] @ x[:j], bottom], axis=0)


def inverse_lower(
    lower: Float[Array, "n n"], leaf: int | None = None
) -> Float[Array, "n n"]:
    """`L⁻¹` for a lower-triangular `L` (its strict upper triangle is ignored).

    With `L = [[A, 0], [B, C]]`, `L⁻¹ = [[A⁻¹, 0], [-C⁻¹ B A⁻¹, C⁻¹]]`: two half-size
    inverses (recursively) and two matrix products by triangles (`_lower_times`,
    `_times_lower`). About `n³/2` flops, nearly all of them in matrix products,
    against `n³` for a triangular solve against the identity, whose XLA:CPU kernel
    is also slower per flop. `leaf` defaults to 64 up to n = 1024 and grows beyond
    so that there are at most about 16 leaves; off the CPU it is `n` (one solve
    against the identity).
    """
    n = lower.shape[0]
    if leaf is None:
        leaf = _leaf_size(n) if _blocked() else n
    if n <= leaf:
        eye = jnp.eye(n, dtype=lower.dtype)
        return jsl.solve_triangular(lower, eye, lower=True)
    k = _split(n, leaf)
    top = inverse_lower(lower[:k, :k], leaf)
    bottom = inverse_lower(lower[k:, k:], leaf)
    corner = -_lower_times(bottom, _times_lower(lower[k:, :k], top, leaf), leaf)
    zeros = jnp.zeros((k, n - k), dtype=lower.dtype)
    return jnp.block([[top, zeros], [corner, bottom]])


def cholesky_lower(matrix: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """The Cholesky factor of the symmetric matrix whose lower triangle is
    `matrix`'s (NaN throughout where it is not positive definite). Unlike
    `jnp.linalg.cholesky`'s default, it does not first average `matrix` with its
    transpose: callers pass matrices symmetric by construction (or symmetrised or
    checked once themselves), and the averaging is a transposed pass over `n²`
    entries per factorisation."""
    return jax.lax.linalg.cholesky(matrix, symmetrize_input=False)


def factor_finite(lower: Float[Array, "n n"]) -> Bool[Array, ""]:
    """Whether a Cholesky factor is finite. JAX's factor of a matrix that is not
    positive definite is NaN throughout, and a NaN or inf entry of the input
    reaches the diagonal of its row (every later pivot subtracts the squares of its
    row), so the diagonal tells, in `n` reads instead of `n²`."""
    return jnp.all(jnp.isfinite(jnp.diagonal(lower)))


def _materialised_transpose(x):
    # XLA:CPU's product with a transposed operand ran at half the speed of a plain
    # one (n = 911: 33 against 16 CPU-ms); the copy costs under 1 ms.
    return jax.lax.optimization_barrier(x.T)


def _gram_lower(g: Float[Array, "n n"], leaf: int) -> Float[Array, "n n"]:
    """`gᵀ g` for a lower-triangular `g`: with `g = [[A, 0], [C, D]]`,
    `gᵀ g = [[AᵀA + CᵀC, CᵀD], [DᵀC, DᵀD]]`, the triangular grams recursively and
    `CᵀD` by a triangle; about `7n³/12` flops against `2n³` for a full product."""
    n = g.shape[0]
    if n <= leaf:
        return _materialised_transpose(g) @ g
    k = _split(n, leaf)
    a, c, d = g[:k, :k], g[k:, :k], g[k:, k:]
    c_t = _materialised_transpose(c)
    top_left = _gram_lower(a, leaf) + c_t @ c
    top_right = _times_lower(c_t, d, leaf)
    bottom_right = _gram_lower(d, leaf)
    return jnp.block(
        [[top_left, top_right], [_materialised_transpose(top_right), bottom_right]]
    )


def gram_of_lower_inverse(lower: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """`(L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹` for a lower Cholesky factor `L`, from the blocked
    inverse above and a blocked triangular product (n = 911: 14 CPU-ms, against
    22 with one full product and 60 for triangular solves against the identity
    and a product). Off the CPU, two triangular solves against the identity."""
    if not _blocked():
        eye = jnp.eye(lower.shape[0], dtype=lower.dtype)
        return jsl.cho_solve((lower, True), eye)
    leaf = _leaf_size(lower.shape[0])
    return _gram_lower(inverse_lower(lower, leaf), leaf)
