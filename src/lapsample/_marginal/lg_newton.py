"""The one damped-Newton loop of both latent-Gaussian forms, its settings and its
line search. Each form supplies its state (a Module with `theta`, `value`,
`decrement`, `step_vector`, `ok`, `num_steps`, `done`), how to move it, and the
objective along a step."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._linesearch import backtracking_armijo
from .._misc import max_abs
from .._results import RESULTS


class NewtonSettings(eqx.Module):
    precision_form: bool = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    max_backtracks: int = eqx.field(static=True)
    xtol: float = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    associative: bool = eqx.field(static=True)


def damped_newton(state, move, trial_value, settings: NewtonSettings, settle=None):
    """Maximise the form's objective from `state` (already evaluated) by Newton
    steps damped by the shared backtracking Armijo search.

    - `move(s, step)`: the state evaluated at `s` moved by `step` times its Newton
      step, with `num_steps + 1`;
    - `trial_value(s, step)`: the objective there, without the rest of the state.

    - `settle(s)`: for a quadratic objective only (a Gaussian likelihood), the
      state at `s`'s full Newton step with `s`'s factor (the Hessian does not
      change): the mode, reached in one step without a second factorisation. Then
      that is the result.

    Stops when the step is negligible, when the decrement is within tolerance and a
    full step no longer shrinks the next one (rounding has taken over), when an
    evaluation fails, when no step length satisfies Armijo's condition, or after
    `settings.max_steps` steps. Returns the final state and its `RESULTS` code
    (`inner_solve_failed` unless converged).
    """

    if settle is not None:
        s = settle(state)
        return s, RESULTS.where(s.ok, RESULTS.successful, RESULTS.inner_solve_failed)

    def acceptable(s):
        return 0.5 * jnp.abs(s.decrement) <= settings.atol + settings.rtol * jnp.abs(
            s.value
        )

    def negligible(s):
        return max_abs(s.step_vector) <= settings.xtol * (1 + max_abs(s.theta))

    state = eqx.tree_at(lambda s: s.done, state, ~state.ok | negligible(state))

    def cond(s):
        return ~s.done & (s.num_steps < settings.max_steps)

    def body(s):
        # The objective is maximised: the search minimises its negative.
        step, accepted = backtracking_armijo(
            lambda t: -trial_value(s, t),
            -s.value,
            s.decrement,
            acceptable(s),
            settings.max_backtracks,
        )
        new = move(s, step)
        # Rounding has taken over when a full step stops shrinking the step (and
        # the decrement is already small: early damped steps also do this).
        stalled = (step == 1) & (
            max_abs(new.step_vector) > 0.5 * max_abs(s.step_vector)
        )
        new = eqx.tree_at(
            lambda x: x.done,
            new,
            ~new.ok | negligible(new) | (stalled & acceptable(new)),
        )
        stay = eqx.tree_at(lambda x: x.done, s, jnp.array(True))
        # A branch, not an elementwise select: the state holds an n × n factor.
        return jax.lax.cond(accepted, lambda: new, lambda: stay)

    s = jax.lax.while_loop(cond, body, state)
    converged = negligible(s) | acceptable(s)
    result = RESULTS.where(
        converged & s.ok, RESULTS.successful, RESULTS.inner_solve_failed
    )
    return s, result
