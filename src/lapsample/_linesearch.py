"""The backtracking Armijo line search of every damped-Newton loop in lapsample
(the `Newton` inner solver and both latent-Gaussian forms), written once, as
Optimistix keeps its search (`BacktrackingArmijo`) apart from its loops."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float


# Armijo's sufficient-decrease constant.
ARMIJO = 1e-4
# Near the optimum, a full step may raise the objective by this many float
# epsilons (relative to its size) and still count: that is rounding, not ascent.
ROUNDING_SLACK = 16


def backtracking_armijo(
    trial_value,
    value: Float[Array, ""],
    decrement: Float[Array, ""],
    near: Bool[Array, ""],
    max_backtracks: int,
) -> tuple[Float[Array, ""], Bool[Array, ""]]:
    """Halve the step length from 1 until Armijo's condition holds for the
    *minimised* objective: `trial_value(step) <= value - 1e-4·step·decrement`, with
    `decrement = -gᵀp > 0` the predicted decrease of a full Newton step `p`.

    Where `near` (the decrement is already within tolerance, so the predicted
    decrease is below the rounding of the objective) Armijo's test would only
    compare noise and halve the step to nothing; there the bound is relaxed to
    `value + 16·eps·(1 + |value|)`: the full step is taken unless it visibly
    increases the objective.

    Returns `(step, accepted)`; `accepted` is false when no step of the
    `max_backtracks` halvings satisfies the condition (or the objective is not
    finite there).
    """
    dtype = value.dtype
    eps = jnp.finfo(dtype).eps
    slack = ROUNDING_SLACK * eps * (1 + jnp.abs(value))

    def armijo(step, trial):
        bound = value - ARMIJO * step * decrement
        bound = jnp.where(near, jnp.maximum(bound, value + slack), bound)
        return jnp.isfinite(trial) & (trial <= bound)

    def cond(ls):
        step, trial, k = ls
        return ~armijo(step, trial) & (k < max_backtracks)

    def body(ls):
        step, _, k = ls
        step = 0.5 * step
        return step, trial_value(step), k + 1

    one = jnp.ones((), dtype)
    step, trial, _ = jax.lax.while_loop(cond, body, (one, trial_value(one), 0))
    return step, armijo(step, trial)
