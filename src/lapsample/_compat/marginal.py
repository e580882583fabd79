"""BlackJAX's `laplace_marginal_factory` and its `LaplaceMarginal` bundle of
functions, on lapsample's [`lapsample.LaplaceMarginal`][] (Newton, one
factorisation, the adjoint gradient)."""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

from .._hessian.base import AbstractHessianStrategy
from .._hessian.dense import DenseHessian
from .._inner import AbstractInnerSolver, Newton
from .._marginal.base import MarginalAux
from .._marginal.laplace import LaplaceMarginal as NativeLaplaceMarginal
from .._results import RESULTS
from .._validate import check_int


# BlackJAX's L-BFGS options with no counterpart in a Newton solve: accepted so that
# BlackJAX code runs, and ignored (Newton needs no line-search budget, history or
# step-size cap, and its own tolerances are set from the dtype).
LBFGS_ONLY_OPTIONS = frozenset(
    {"ftol", "maxls", "maxcor", "maxgrad", "gamma", "memory_size", "stepsize"}
)


class InnerDiagnostics(NamedTuple):
    """BlackJAX's `LBFGSDiagnostics`, for lapsample's Newton solve.

    - `iter_num`: Newton iterations;
    - `error`: `‖∇_θ log_joint(θ*, φ)‖₂` at the returned mode;
    - `converged`: whether the solve met its tolerance (lapsample's own test, not a
      gradient-norm threshold);
    - `hit_maxiter`: whether it used its whole iteration budget.
    """

    iter_num: Int[Array, ""]
    error: Float[Array, ""]
    converged: Bool[Array, ""]
    hit_maxiter: Bool[Array, ""]


def gradient_norm(native: NativeLaplaceMarginal, theta: PyTree, phi: PyTree) -> Array:
    """`‖∇_θ log_joint(θ, φ)‖₂`, the residual BlackJAX reports as `lbfgs_error`."""
    grad = jax.grad(native.log_joint)(theta, phi)
    return jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grad)))


def max_steps_of(native: NativeLaplaceMarginal) -> int | None:
    solver = native.inner_solver
    return solver.max_steps if isinstance(solver, Newton) else None


def diagnostics(
    native: NativeLaplaceMarginal, theta: PyTree, phi: PyTree, aux: MarginalAux
) -> InnerDiagnostics:
    max_steps = max_steps_of(native)
    failed = aux.result != RESULTS.successful
    hit = failed if max_steps is None else (aux.num_steps >= max_steps) | failed
    return InnerDiagnostics(
        iter_num=aux.num_steps,
        error=gradient_norm(native, theta, phi),
        converged=~failed,
        hit_maxiter=hit,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class LaplaceMarginal:
    """BlackJAX's `LaplaceMarginal`: a bundle of plain functions over one lapsample
    [`lapsample.LaplaceMarginal`][] (`.marginal`). It hashes by identity, so
    `jax.jit(laplace)` works, and `laplace(phi, theta_prev)` returns
    `(log_density, theta_star)`.

    - `log_marginal(phi, theta_prev=None) -> (lp, theta_star)` (also `__call__`);
    - `solve_theta(phi, theta_prev=None) -> theta_star`;
    - `solve_theta_with_info(phi, theta_prev=None) -> (theta_star, InnerDiagnostics)`;
    - `get_theta_star(phi, theta_prev=None) -> theta_star`, differentiable in `phi`
      (implicit function theorem);
    - `sample_theta(key, phi, theta_star) -> theta ~ N(theta_star, H⁻¹)`.
    """

    solve_theta: Callable
    solve_theta_with_info: Callable
    get_theta_star: Callable
    log_marginal: Callable
    sample_theta: Callable
    marginal: NativeLaplaceMarginal

    def __call__(
        self, phi: PyTree[ArrayLike], theta_prev: PyTree[Array] | None = None
    ) -> tuple[Float[Array, ""], PyTree[Array]]:
        return self.log_marginal(phi, theta_prev)


def compat_marginal(native: NativeLaplaceMarginal) -> LaplaceMarginal:
    """BlackJAX's bundle of functions over the lapsample marginal `native`."""

    def log_marginal(phi, theta_prev=None):
        value, aux = native(phi, theta_prev)
        return value, aux.theta_star

    def solve_theta_with_info(phi, theta_prev=None):
        _, aux = native(jax.lax.stop_gradient(phi), theta_prev)
        return aux.theta_star, diagnostics(native, aux.theta_star, phi, aux)

    def solve_theta(phi, theta_prev=None):
        return native(jax.lax.stop_gradient(phi), theta_prev)[1].theta_star

    def get_theta_star(phi, theta_prev=None):
        # θ* - H⁻¹ ∇_θ f(θ*, φ) with θ* and H held constant: the value is θ* (the
        # gradient vanishes there), the derivative is the implicit function
        # theorem's dθ*/dφ = -H⁻¹ ∂_φ ∇_θ f.
        raveller = native.raveller
        theta = jax.lax.stop_gradient(raveller.ravel(solve_theta(phi, theta_prev)))

        def grad_flat(t, p):
            return raveller.ravel(jax.grad(native.log_joint)(raveller.unravel(t), p))

        hessian = jax.jacfwd(grad_flat)(theta, jax.lax.stop_gradient(phi))
        correction = jnp.linalg.solve(hessian, grad_flat(theta, phi))
        return raveller.unravel(theta - correction)

    def sample_theta(rng_key, phi, theta_star):
        # A plain function: `jax.jit(laplace.sample_theta)` hashes it.
        return native.sample_theta(rng_key, phi, theta_star)

    return LaplaceMarginal(
        solve_theta=solve_theta,
        solve_theta_with_info=solve_theta_with_info,
        get_theta_star=get_theta_star,
        log_marginal=log_marginal,
        sample_theta=sample_theta,
        marginal=native,
    )


def native_marginal(
    log_joint: Callable,
    theta_init: PyTree[ArrayLike],
    maxiter: int,
    inner_solver: AbstractInnerSolver | None,
    hessian: AbstractHessianStrategy | None,
    options: dict[str, Any],
) -> NativeLaplaceMarginal:
    """lapsample's marginal for BlackJAX's factory arguments (see
    `laplace_marginal_factory` for the mapping of `options`)."""
    unknown = set(options) - LBFGS_ONLY_OPTIONS - {"gtol"}
    if unknown:
        raise TypeError(
            f"Unknown option(s) {sorted(unknown)}. lapsample accepts BlackJAX's "
            "`maxiter` and `gtol`, ignores its other L-BFGS options "
            f"({sorted(LBFGS_ONLY_OPTIONS)}), and takes `inner_solver=` and "
            "`hessian=` for its own settings."
        )
    if inner_solver is None:
        maxiter = check_int("maxiter", maxiter, 1)
        inner_solver = Newton(atol=options.get("gtol"), max_steps=maxiter)
    if hessian is None:
        hessian = DenseHessian()
    return NativeLaplaceMarginal(log_joint, theta_init, inner_solver, hessian)


def laplace_marginal_factory(
    log_joint_fn: Callable,
    theta_init: PyTree[ArrayLike],
    *,
    maxiter: int = 30,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    **optimizer_kwargs: Any,
) -> LaplaceMarginal:
    """BlackJAX's `laplace_marginal_factory`, on lapsample's engine.

    ```python
    laplace = laplace_marginal_factory(log_joint, jnp.zeros(n), maxiter=100)
    (lp, theta_star), grad = jax.value_and_grad(laplace, has_aux=True)(phi)
    ```

    The solve is lapsample's Newton method, warm-started from `theta_prev`, with
    one factorisation per evaluation shared by the log-determinant, the adjoint
    gradient and `sample_theta`. For the composable object, use `laplace.marginal`
    (a [`lapsample.LaplaceMarginal`][]).

    **Arguments:**

    - `log_joint_fn`: `log_joint(theta, phi) -> scalar`, the log joint density.
    - `theta_init`: a PyTree like `theta`; the cold start of the inner solve.
    - `maxiter`: the most Newton iterations per solve (BlackJAX: L-BFGS
      iterations); default 30.
    - `inner_solver`, `hessian`: lapsample's own settings (an
      [`lapsample.AbstractInnerSolver`][], default `Newton(max_steps=maxiter)`; an
      [`lapsample.AbstractHessianStrategy`][], default
      [`lapsample.DenseHessian`][]).
    - `**optimizer_kwargs`: BlackJAX's L-BFGS options. `gtol` becomes Newton's
      absolute tolerance `atol` (on the decrement, not a gradient norm);
      `ftol`, `maxls`, `maxcor`, `maxgrad`, `gamma`, `memory_size` and `stepsize`
      have no Newton counterpart and are ignored; anything else is a `TypeError`.

    **Returns:**

    BlackJAX's `LaplaceMarginal` bundle (`lapsample.mcmc.laplace_marginal.
    LaplaceMarginal`): `laplace(phi, theta_prev=None) -> (lp, theta_star)`,
    `solve_theta`, `solve_theta_with_info`, `get_theta_star`, `log_marginal`,
    `sample_theta`, and `marginal`, the lapsample marginal underneath.
    """
    native = native_marginal(
        log_joint_fn, theta_init, maxiter, inner_solver, hessian, optimizer_kwargs
    )
    return compat_marginal(native)


def laplace_lbfgs_grad_evals(info: Any) -> Int[Array, ""]:
    """BlackJAX's estimate of inner gradient evaluations in one transition,
    `(num_integration_steps + 1) × lbfgs_iter_num`. For lapsample's Newton solve it
    bounds the inner iterations (`lbfgs_iter_num` is the most of any evaluation)."""
    return jnp.asarray(
        (info.num_integration_steps + 1) * info.lbfgs_iter_num, dtype=jnp.int32
    )
