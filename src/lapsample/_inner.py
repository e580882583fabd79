"""Inner solvers: find `theta*(phi) = argmax_theta log p(theta, phi, y)`."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PyTree

from ._custom_types import FlatFn
from ._factor import AbstractFactor, factor_result
from ._hessian.base import (
    AbstractHessianStrategy,
    AbstractStructuredHessian,
    factorise_and_solve,
)
from ._hoist import hoist
from ._linesearch import backtracking_armijo
from ._misc import (
    better_start,
    consider_prediction,
    default_step_tolerance,
    default_tolerance,
    max_abs,
    WarmStart,
)
from ._results import RESULTS
from ._validate import check_int, check_solver_settings


class InnerSolution(eqx.Module):
    """What an inner solver returns.

    - `theta`: the flat mode `theta*`.
    - `result`: a [`lapsample.RESULTS`][] code.
    - `num_steps`: iterations taken.
    - `factor`: the Hessian strategy's factor of `∇²_θ fn` **at `theta`**, to be
      reused by the marginal (no second factorisation).
    - `value`: `fn(theta, phi)` **at `theta`**, to be reused by the marginal (no
      second evaluation of the model, whose `phi`-path may be costly).
    """

    theta: Float[Array, " d"]
    result: RESULTS
    num_steps: Int[Array, ""]
    factor: AbstractFactor
    value: Float[Array, ""]


class AbstractInnerSolver(eqx.Module):
    """Finds the mode in `theta` of the log joint at fixed `phi`.

    Subclasses implement `solve`. The solver minimises `fn(theta, phi)`, the negative
    log joint with a flat `theta`, from the warm start `theta0`, and returns the
    Hessian strategy's factor at the returned point together with a result code. It
    never raises on numerical failure: failures are result codes.
    """

    @property
    def takes_warm_start_pair(self) -> bool:
        """Whether `solve` accepts a [`lapsample.WarmStart`][] of two flat starts
        as `theta0` (and starts from the better one)."""
        return False

    @abc.abstractmethod
    def solve(
        self,
        fn: FlatFn,
        theta0: Float[Array, " d"],
        phi: PyTree[Array],
        hessian: AbstractHessianStrategy,
    ) -> InnerSolution:
        """**Arguments:**

        - `fn`: the negative log joint `fn(theta_flat, phi)`.
        - `theta0`: the starting point (a warm start when available); for a solver
          whose `takes_warm_start_pair` is `True`, possibly a
          [`lapsample.WarmStart`][] of two.
        - `phi`: the hyperparameters.
        - `hessian`: the Hessian strategy used to factorise at the solution.

        **Returns:**

        An [`lapsample.InnerSolution`][].
        """


def finalise_solution(fn, theta, phi, hessian, result, num_steps) -> InnerSolution:
    factor = hessian.factorise(fn, theta, phi)
    result = factor_result(factor, result)
    return InnerSolution(
        theta=theta,
        result=result,
        num_steps=num_steps,
        factor=factor,
        value=fn(theta, phi),
    )


class _NewtonCarry(eqx.Module):
    theta: Array
    value: Array
    grad: Array
    factor: AbstractFactor
    direction: Array
    decrement: Array
    num_steps: Array
    done: Array
    failed: Array


class Newton(AbstractInnerSolver):
    """Newton's method with a Cholesky (or structured) factor and a backtracking
    line search: the default inner solver.

    Each iteration factorises the Hessian with the marginal's Hessian strategy, takes
    the Newton direction `p = -A⁻¹ g`, and halves the step until the Armijo condition
    holds (plain Newton from a cold start can overflow `exp(theta)` in count models).

    Stopping. The solve iterates until the Newton step is negligible,
    `max|p| <= xtol·(1 + max|theta|)` and `½ gᵀA⁻¹g <= xtol·(1 + |fn|)` (a step
    far below `xtol` in a latent that a prior scale of e^-60 pins is still worth
    e^120 times its square in `fn`, and in the marginal's value): the
    log-determinant and its gradient are
    sensitive to error in `theta` along weakly curved directions, which a test on the
    objective alone misses when `H` is ill-conditioned. Newton converges
    quadratically, so this costs at most one extra iteration; from a sampler's warm
    start, where a solve takes two or three, that iteration (a factorisation) is a
    large share, which is why the default `xtol` is 1e-8 in float64 rather than a
    few digits from rounding. If rounding stops the step from shrinking first, the
    solve ends there and succeeds when half the Newton decrement `gᵀA⁻¹g` (the
    predicted distance to the optimum in objective value, independent of how
    `theta` is scaled) is below `atol + rtol·|fn|`. The test is
    made with the factor at the returned point, and that factor is handed to the
    marginal: no extra factorisation. Work that does not depend on `theta` (a GP's
    `K(phi)` and its factor; a Gaussian log joint's whole Hessian and its factor)
    is done once per solve, not at every iterate, also when the solve runs inside
    a sampler's compiled loop.
    A structured Hessian strategy's structure check is made once, on that factor
    (`check_factor`), not at every iterate.

    A log joint whose gradient is proved affine in `theta` from the operations that
    compute it (a Gaussian model: normal latents, normal observations, linear in
    `theta`) is quadratic, and with a strategy that factorises the exact Hessian
    (`exact`: not `DenseHessian(jitter>0)`, not a custom approximation) one full
    Newton step lands on its mode: the solve takes that step and stops, without a
    second iterate to confirm it.
    """

    rtol: float | None = None
    atol: float | None = None
    xtol: float | None = None
    max_steps: int = 50
    max_backtracks: int = 30

    def __check_init__(self):
        check_solver_settings(
            "Newton", self.max_steps, rtol=self.rtol, atol=self.atol, xtol=self.xtol
        )
        check_int("Newton(max_backtracks=...)", self.max_backtracks, 0)

    @property
    def takes_warm_start_pair(self) -> bool:
        return True

    def solve(self, fn, theta0, phi, hessian):
        starts = theta0 if isinstance(theta0, WarmStart) else None
        if starts is not None:
            theta0 = starts.previous
        dtype = theta0.dtype
        rtol = default_tolerance(dtype) if self.rtol is None else self.rtol
        atol = default_tolerance(dtype) if self.atol is None else self.atol
        xtol = default_step_tolerance(dtype) if self.xtol is None else self.xtol
        value_and_grad = jax.value_and_grad(fn)
        # Structure checks (an extra Hessian-vector product each) are made once,
        # on the returned factor, not at every iterate.
        structured = isinstance(hessian, AbstractStructuredHessian)
        iterating = hessian.without_checks() if structured else hessian

        def acceptable(value, decrement):
            return 0.5 * decrement <= atol + rtol * jnp.abs(value)

        def negligible(theta, value, direction, decrement):
            # Negligible in theta and in the objective: where fn is curved enough
            # (a latent pinned by a prior scale of e^-60), a step far below xtol
            # in theta can still be worth 1e20 in fn, and the marginal's value
            # would be off by that much.
            small = max_abs(direction) <= xtol * (1 + max_abs(theta))
            return small & (0.5 * decrement <= xtol * (1 + jnp.abs(value)))

        def evaluate(theta):
            value, grad = value_and_grad(theta, phi)
            factor, step = factorise_and_solve(iterating, fn, theta, phi, grad)
            direction = -step
            decrement = -jnp.dot(grad, direction)
            # A non-finite gradient makes the direction and the decrement
            # non-finite, so the decrement stands for it (one reduction fewer).
            ok = jnp.isfinite(value) & factor.positive_definite
            ok = ok & jnp.isfinite(decrement)
            return value, grad, factor, direction, decrement, ok

        def finish(theta, value, factor, num_steps, converged):
            result = RESULTS.where(
                converged, RESULTS.successful, RESULTS.inner_solve_failed
            )
            if structured:
                factor = hessian.check_factor(factor, fn, theta, phi)
            return InnerSolution(
                theta=theta,
                result=factor_result(factor, result),
                num_steps=num_steps,
                factor=factor,
                value=value,
            )

        # What an iterate's evaluation computes without reading theta (a GP's
        # K(phi), its factor and K⁻¹; a Gaussian log joint's whole Hessian and its
        # factor) is computed once per solve, here, and only the rest at every
        # iterate. XLA does this by itself when the solve is a program of its
        # own, but not inside a sampler's loop.
        memo = {}
        evaluate = hoist(evaluate, theta0, memo=memo)
        objective = hoist(lambda t: fn(t, phi), theta0, memo=memo)

        _, grad_affine, *_ = evaluate.affine
        quadratic = hessian.exact and all(jax.tree.leaves(grad_affine))
        if starts is not None and not quadratic:
            # Two starts (a sampler's previous mode and a predicted one): the one
            # with the lower objective, with the phi-only work shared. From any
            # start one step solves a quadratic.
            def choose(best, predicted):
                # `fn` is minimised: its negative ranks the starts.
                better = better_start(-objective(predicted), -objective(best))
                return jnp.where(better, predicted, best)

            theta0 = consider_prediction(starts, choose, starts.previous)
        value, grad, factor, direction, decrement, ok = evaluate(theta0)
        if quadratic:
            # The gradient is affine in theta (proved from the operations that
            # compute it; `hoist`), so fn is quadratic, and with the exact Hessian
            # one full Newton step lands on its minimum: a second iterate would
            # only confirm a step at the rounding of the first (its own rounding
            # is no smaller).
            theta1 = theta0 + direction
            value1 = objective(theta1)
            ok = ok & jnp.isfinite(value1)
            return finish(
                theta=jnp.where(ok, theta1, theta0),
                value=jnp.where(ok, value1, value),
                factor=factor,
                num_steps=jnp.where(
                    ok & ~negligible(theta0, value, direction, decrement), 1, 0
                ),
                converged=ok,
            )
        carry = _NewtonCarry(
            theta=theta0,
            value=value,
            grad=grad,
            factor=factor,
            direction=direction,
            decrement=decrement,
            num_steps=jnp.array(0),
            done=~ok | negligible(theta0, value, direction, decrement),
            failed=~ok,
        )

        def cond(c):
            return ~c.done & (c.num_steps < self.max_steps)

        def body(c):
            # Inside the tolerance the predicted decrease is below the rounding of
            # `fn`, and Armijo's test would only compare noise (and halve the step
            # to nothing); there the full step is taken unless it visibly
            # increases `fn`.
            step, accepted = backtracking_armijo(
                lambda t: objective(c.theta + t * c.direction),
                c.value,
                c.decrement,
                acceptable(c.value, c.decrement),
                self.max_backtracks,
            )
            # A failed line search keeps the last iterate and stops. Only theta is
            # selected (re-evaluating there gives the same carry): selecting the
            # whole carry would copy the d × d factor at every iteration.
            theta = jnp.where(accepted, c.theta + step * c.direction, c.theta)
            value, grad, factor, direction, decrement, ok = evaluate(theta)
            # Rounding has taken over when a full-length step stops shrinking the
            # step: stop there (success is then judged by the decrement). Far
            # from the mode (large latents, damped steps) the largest entry of the
            # step need not halve, so this only stops a solve that is already
            # acceptable.
            stalled = (step == 1) & (max_abs(direction) > 0.5 * max_abs(c.direction))
            stalled = stalled & acceptable(value, decrement)
            return _NewtonCarry(
                theta=theta,
                value=value,
                grad=grad,
                factor=factor,
                direction=direction,
                decrement=decrement,
                num_steps=c.num_steps + accepted.astype(c.num_steps.dtype),
                done=~accepted
                | ~ok
                | negligible(theta, value, direction, decrement)
                | stalled,
                failed=~ok,
            )

        c = jax.lax.while_loop(cond, body, carry)
        converged = (
            negligible(c.theta, c.value, c.direction, c.decrement)
            | acceptable(c.value, c.decrement)
        ) & ~c.failed
        return finish(
            theta=c.theta,
            value=c.value,
            factor=c.factor,
            num_steps=c.num_steps,
            converged=converged,
        )


Newton.__init__.__doc__ = """**Arguments:**

- `xtol`: the solve iterates until `max|p| <= xtol·(1 + max|theta|)` for the Newton
    step `p` and its predicted decrease `½ gᵀA⁻¹g <= xtol·(1 + |fn|)`. `None`
    (the default) gives `max(1e-8, eps ** (2/3))` of the dtype: 1e-8 in float64
    and about `2.4e-5` in float32. The returned `theta` is off by about that last
    step; the log marginal and its gradient by first order in it (the objective by
    second order). Each tenfold tightening costs at most one more iteration.
- `rtol`, `atol`: a solve that stops before that (rounding, a failed line search,
    `max_steps`) still succeeds when `½ gᵀA⁻¹g <= atol + rtol·|fn(theta)|`. `None`
    gives `eps ** 0.75`: about `1.8e-12` in float64 and `6.4e-6` in float32.
- `max_steps`: the most Newton iterations per solve. Warm-started solves inside a
    sampler typically take 1 or 2.
- `max_backtracks`: the most step halvings in the line search of one iteration.
"""
