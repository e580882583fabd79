"""Quasi-Newton inner solvers: Optimistix's BFGS and L-BFGS, then one Hessian and
one factorisation at their answer."""

import abc

import equinox as eqx
import optimistix as optx

from ._inner import AbstractInnerSolver, finalise_solution
from ._misc import default_tolerance
from ._results import RESULTS
from ._validate import check_int, check_solver_settings


class _AbstractOptxSolver(AbstractInnerSolver):
    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float | None]
    max_steps: eqx.AbstractVar[int]

    def __check_init__(self):
        check_solver_settings(
            type(self).__name__, self.max_steps, rtol=self.rtol, atol=self.atol
        )

    @abc.abstractmethod
    def _minimiser(self, dtype) -> optx.AbstractMinimiser:
        """The Optimistix minimiser, with tolerances resolved for `dtype`."""

    def solve(self, fn, theta0, phi, hessian):
        solution = optx.minimise(
            fn,
            self._minimiser(theta0.dtype),
            theta0,
            args=phi,
            max_steps=self.max_steps,
            throw=False,
        )
        theta = solution.value
        num_steps = solution.stats["num_steps"]
        return finalise_solution(
            fn, theta, phi, hessian, RESULTS.promote(solution.result), num_steps
        )


def _tolerances(solver, dtype):
    rtol = default_tolerance(dtype) ** (2 / 3) if solver.rtol is None else solver.rtol
    atol = default_tolerance(dtype) ** (2 / 3) if solver.atol is None else solver.atol
    return rtol, atol


class BFGS(_AbstractOptxSolver):
    """`optimistix.BFGS` as the inner solver, then one Hessian and one
    factorisation at its answer.

    Quasi-Newton solvers need no Hessian while iterating, but on stiff latent models
    (Poisson GPs) they can stop far from the mode; `Newton()` is the safer default.
    """

    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 256

    def _minimiser(self, dtype):
        rtol, atol = _tolerances(self, dtype)
        return optx.BFGS(rtol=rtol, atol=atol)


BFGS.__init__.__doc__ = """**Arguments:**

- `rtol`, `atol`: Optimistix's Cauchy termination tolerances. `None` gives `1e-8` in
    float64 and `3e-4` in float32.
- `max_steps`: the most BFGS iterations per solve.
"""


class LBFGS(_AbstractOptxSolver):
    """`optimistix.LBFGS` as the inner solver, then one Hessian and one
    factorisation at its answer."""

    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 256
    history_length: int = 10

    def __check_init__(self):
        check_int("LBFGS(history_length=...)", self.history_length, 1)

    def _minimiser(self, dtype):
        rtol, atol = _tolerances(self, dtype)
        return optx.LBFGS(rtol=rtol, atol=atol, history_length=self.history_length)


LBFGS.__init__.__doc__ = """**Arguments:**

- `rtol`, `atol`: Optimistix's Cauchy termination tolerances. `None` gives `1e-8` in
    float64 and `3e-4` in float32.
- `max_steps`: the most L-BFGS iterations per solve.
- `history_length`: the number of past gradient pairs kept.
"""
