"""Dense triangular kernels: the inverse of a lower-triangular factor by blocked
recursion, so that nearly all of its work runs as matrix products."""

import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float


# Below this size a block is inverted by one triangular solve against the identity.
# On XLA:CPU a triangular solve with many right-hand sides runs at a fraction of
# the speed of a matrix product of the same flop count; small leaves keep its share
# of the work small while the recursion stays a few levels deep.
_LEAF = 64


def inverse_lower(lower: Float[Array, "n n"], leaf: int = _LEAF) -> Float[Array, "n n"]:
    """`L⁻¹` for a lower-triangular `L` (its strict upper triangle is ignored).

    With `L = [[A, 0], [B, C]]`, `L⁻¹ = [[A⁻¹, 0], [-C⁻¹ B A⁻¹, C⁻¹]]`: two half-size
    inverses (recursively) and two matrix products. About `2n³/3` flops, nearly all
    of them in matrix products, against `n³` for a triangular solve against the
    identity, whose XLA:CPU kernel is also several times slower per flop.
    """
    n = lower.shape[0]
    if n <= leaf:
        eye = jnp.eye(n, dtype=lower.dtype)
        return jsl.solve_triangular(lower, eye, lower=True)
    # A multiple of the leaf size, so that the leaves are full-sized blocks.
    k = max(leaf, (n // 2 // leaf) * leaf)
    top = inverse_lower(lower[:k, :k], leaf)
    bottom = inverse_lower(lower[k:, k:], leaf)
    corner = -(bottom @ (lower[k:, :k] @ top))
    zeros = jnp.zeros((k, n - k), dtype=lower.dtype)
    return jnp.block([[top, zeros], [corner, bottom]])
