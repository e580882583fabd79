"""Factors of the Hessian `A = ∇²_θ fn(theta, phi)`: what a Hessian strategy (or a
banded kernel) returns, holding arrays only, and the result code it implies."""

import equinox as eqx
from jaxtyping import Array, Bool

from ._results import RESULTS


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
