"""The damped-Newton settings and line search shared by both latent-Gaussian forms."""

import equinox as eqx
import jax
import jax.numpy as jnp


class NewtonSettings(eqx.Module):
    precision_form: bool = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    max_backtracks: int = eqx.field(static=True)
    xtol: float = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    associative: bool = eqx.field(static=True)


def backtrack(trial_value, value, decrement, full, settings, dtype):
    """Halve the step from 1 until Armijo's condition holds for the maximised
    objective; returns `(step, accepted)`. With `full` (the decrement is already
    within tolerance, so the objective's change is rounding noise) the full step is
    taken if finite, rather than creeping along on noise."""

    def armijo(step, trial):
        return jnp.isfinite(trial) & (trial >= value + 1e-4 * step * decrement)

    def ls_cond(ls):
        step, trial, k = ls
        return ~full & ~armijo(step, trial) & (k < settings.max_backtracks)

    def ls_body(ls):
        step, _, k = ls
        step = 0.5 * step
        return step, trial_value(step), k + 1

    one = jnp.ones((), dtype)
    step, trial, _ = jax.lax.while_loop(
        ls_cond, ls_body, (one, trial_value(one), jnp.array(0))
    )
    return step, armijo(step, trial) | (full & jnp.isfinite(trial))
