"""Batched arithmetic on small dense blocks (Cholesky, triangular substitution,
products), written out so that XLA fuses it instead of calling LAPACK per block."""

import jax.numpy as jnp
from jaxtyping import Array, Bool


# --------------------------------------------------------------------------------
# Small dense kernels on (..., k, k) arrays, unrolled over k.
# --------------------------------------------------------------------------------


def small_cholesky(a: Array) -> Array:
    """Lower Cholesky factors of a stack of `k × k` matrices (`NaN`/`inf` where a
    matrix is not positive definite). Left-looking, one column at a time."""
    k = a.shape[-1]
    rows = jnp.arange(k)
    cols = []
    for j in range(k):
        s = a[..., :, j]
        for m in range(j):
            s = s - cols[m] * cols[m][..., j : j + 1]
        pivot = jnp.sqrt(s[..., j : j + 1])
        cols.append(jnp.where(rows >= j, s / pivot, 0.0))
    return jnp.stack(cols, axis=-1)


def forward_substitute(lower: Array, rhs: Array) -> Array:
    """`L⁻¹ rhs` for stacks `lower (..., k, k)`, `rhs (..., k, m)`."""
    k = lower.shape[-1]
    xs = []
    for i in range(k):
        s = rhs[..., i, :]
        for m in range(i):
            s = s - lower[..., i, m : m + 1] * xs[m]
        xs.append(s / lower[..., i, i : i + 1])
    return jnp.stack(xs, axis=-2)


def backward_substitute(lower: Array, rhs: Array) -> Array:
    """`L⁻ᵀ rhs` for stacks `lower (..., k, k)`, `rhs (..., k, m)`."""
    k = lower.shape[-1]
    xs: list = [None] * k
    for i in reversed(range(k)):
        s = rhs[..., i, :]
        for m in range(i + 1, k):
            s = s - lower[..., m, i : i + 1] * xs[m]
        xs[i] = s / lower[..., i, i : i + 1]
    return jnp.stack(xs, axis=-2)


def identity_like(lower: Array) -> Array:
    k = lower.shape[-1]
    return jnp.broadcast_to(jnp.eye(k, dtype=lower.dtype), lower.shape)


def factor_ok(lower: Array) -> Bool[Array, ""]:
    diagonal = jnp.diagonal(lower, axis1=-2, axis2=-1)
    return jnp.all(jnp.isfinite(lower)) & jnp.all(diagonal > 0)


def logdet_from_lower(lower: Array):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(lower, axis1=-2, axis2=-1)))


def mT(x):
    return jnp.swapaxes(x, -1, -2)


# Products of small blocks as broadcast multiply-and-sum rather than `@`: on CPU a
# `dot` of 1 × 1 or 2 × 2 blocks is a library call per product (about 30 ns each
# inside a scan, several times the arithmetic), while the elementwise form fuses
# with its neighbours. For bandwidth 1 the scans below become scalar recurrences.


def mm(a: Array, b: Array) -> Array:
    """`a @ b` for stacks of small matrices."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def mv(a: Array, x: Array) -> Array:
    """`a @ x` for stacks of small matrices `a (..., p, q)` and vectors `x (..., q)`."""
    return jnp.sum(a * x[..., None, :], axis=-1)
