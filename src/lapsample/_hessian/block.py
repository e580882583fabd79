"""`BlockDiagonalHessian`: independent small blocks, read with `block_size`
Hessian-vector products and factorised block by block."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float

from .._factor import AbstractStructuredFactor
from .._linalg.small_blocks import (
    backward_substitute,
    factor_ok,
    forward_substitute,
    identity_like,
    logdet_from_lower,
    mm,
    mT,
    mv,
    small_cholesky,
)
from .._validate import check_int
from .base import AbstractStructuredHessian, hvp, probe_vector, structure_agrees


# --------------------------------------------------------------------------------
# Block diagonal
# --------------------------------------------------------------------------------


class BlockFactor(AbstractStructuredFactor):
    """The factor of [`lapsample.BlockDiagonalHessian`][]: one lower Cholesky
    factor per block, shape `(d / block_size, block_size, block_size)` (identities
    where the Hessian is not positive definite, so downstream arithmetic stays
    finite)."""

    lower: Float[Array, "blocks k k"]
    positive_definite: Bool[Array, ""]
    structure_ok: Bool[Array, ""]


def _block_probes(d: int, k: int, dtype) -> Array:
    # Probe j is 1 at every entry with index ≡ j (mod k): H times it holds column j
    # of every block.
    return jnp.asarray(np.arange(d)[None, :] % k == np.arange(k)[:, None], dtype)


class BlockDiagonalHessian(AbstractStructuredHessian):
    """For models whose latents come in independent groups of `block_size`
    consecutive entries of the flattened `theta` (a random intercept and slope per
    group, written e.g. as `theta` of shape `(groups, block_size)`).

    The blocks are read from `block_size` Hessian-vector products and factorised as
    a batch with a Cholesky written for small blocks (vectorised over the blocks):
    `O(d·block_size²)` time and `O(d·block_size)` memory.

    The structure is checked with one more Hessian-vector product (see `verify`;
    once per inner solve, at the mode): curvature between blocks gives a factor with
    `structure_ok = False`, a marginal of `-inf` and the code
    `RESULTS.structure_violated`; [`lapsample.LaplaceMarginal.check`][] raises a
    `ValueError` before compilation.
    """

    block_size: int
    verify: bool = True

    def __check_init__(self):
        check_int("BlockDiagonalHessian(block_size=...)", self.block_size, 1)

    def _num_blocks(self, theta) -> int:
        d = theta.shape[0]
        if d % self.block_size != 0:
            raise ValueError(
                f"`BlockDiagonalHessian(block_size={self.block_size})` needs a latent "
                f"whose size is a multiple of {self.block_size}, but theta has {d} "
                "entries. Order theta so that each group's entries are consecutive "
                "(e.g. shape `(groups, block_size)`), or pad it."
            )
        return d // self.block_size

    def _blocks(self, fn, theta, phi) -> Array:
        k = self.block_size
        nb = self._num_blocks(theta)
        probes = _block_probes(theta.shape[0], k, theta.dtype)
        columns = jax.vmap(lambda v: hvp(fn, theta, phi, v))(probes)  # (k, d)
        # columns[j, g*k + i] = H[g*k + i, g*k + j]
        return jnp.transpose(columns.reshape(k, nb, k), (1, 2, 0))

    def factorise(self, fn, theta, phi):
        blocks = self._blocks(fn, theta, phi)
        blocks = 0.5 * (blocks + mT(blocks))
        if self.verify:
            z = probe_vector(theta)
            hz = hvp(fn, theta, phi, z)
            zb = z.reshape(blocks.shape[:2])
            bz = mv(blocks, zb).ravel()
            scale = mv(jnp.abs(blocks), jnp.abs(zb)).ravel()
            structure_ok = structure_agrees(hz, bz, scale)
        else:
            structure_ok = jnp.array(True)
        lower = small_cholesky(blocks)
        ok = factor_ok(lower)
        lower = jnp.where(ok, lower, identity_like(lower))
        return BlockFactor(
            lower=lower,
            positive_definite=ok & structure_ok,
            structure_ok=structure_ok,
        )

    def factor_product(self, factor, z):
        lower = factor.lower
        zb = z.reshape(lower.shape[:2])
        az = mv(lower, mv(mT(lower), zb)).ravel()
        absolute = jnp.abs(lower)
        scale = mv(absolute, mv(mT(absolute), jnp.abs(zb))).ravel()
        return az, scale

    def logdet(self, factor):
        return logdet_from_lower(factor.lower)

    def solve(self, factor, vector):
        nb, k, _ = factor.lower.shape
        y = forward_substitute(factor.lower, vector.reshape(nb, k, 1))
        return backward_substitute(factor.lower, y).ravel()

    def _transform(self, factor, z):
        nb, k, _ = factor.lower.shape
        return backward_substitute(factor.lower, z.reshape(nb, k, 1)).ravel()

    def sample(self, factor, key):
        nb, k, _ = factor.lower.shape
        z = jr.normal(key, (nb * k,), dtype=factor.lower.dtype)
        # L⁻ᵀ z has covariance (L Lᵀ)⁻¹ = A⁻¹, block by block.
        return self._transform(factor, z)

    def logdet_surrogate(self, factor, fn, theta, phi):
        lower = jax.lax.stop_gradient(factor.lower)
        inverse_lower = forward_substitute(lower, identity_like(lower))
        inverse = mm(mT(inverse_lower), inverse_lower)  # A₀⁻¹, block by block
        return jnp.sum(inverse * self._blocks(fn, theta, phi))


BlockDiagonalHessian.__init__.__doc__ = """**Arguments:**

- `block_size`: the number of consecutive entries of the flattened `theta` in each
    independent group; the latent's size must be a multiple of it. Meant for small
    blocks (up to a few tens): the block Cholesky is unrolled over `block_size`.
- `verify`: check the block structure with one extra Hessian-vector product
    (default `True`), once per inner solve. Turn it off only for a model already
    checked: a violated structure then gives silently wrong values.
"""
