"""Type aliases shared by several layers."""

from collections.abc import Callable

from jaxtyping import Array, Float, PyTree, Scalar


# `fn(theta, phi)` below is always the *negative* log joint with a flat `theta`, so
# its Hessian `A = ∇²_θ fn` is positive definite at a mode.
FlatFn = Callable[[Float[Array, " d"], PyTree[Array]], Scalar]


Derivatives = tuple[
    Float[Array, " n"], Float[Array, " n"], Float[Array, " n"], Float[Array, " n"]
]
