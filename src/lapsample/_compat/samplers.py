"""The seed walkthrough's sampler names (`laplace_hmc`, `laplace_mhmc`, `laplace_dhmc`,
`laplace_dmhmc`, `laplace_nuts`) and BlackJAX's marginal factory, each a thin wrapper
that builds a [`lapsample.Sampler`][] or [`lapsample.LaplaceMarginal`][]."""

from collections.abc import Callable

from jaxtyping import Array, ArrayLike, PyTree

from .._hessian.base import AbstractHessianStrategy
from .._hessian.dense import DenseHessian
from .._inner import AbstractInnerSolver, Newton
from .._integrator import AbstractIntegrator, Leapfrog
from .._marginal.laplace import LaplaceMarginal
from .._metric import AbstractMetric
from .._nuts import NoUTurn
from .._proposal import AbstractProposal, EndpointMH, Multinomial
from .._sampler import Sampler
from .._trajectory import AbstractTrajectory, Fixed, RandomLength
from .._validate import check_int


def laplace_marginal_factory(
    log_joint: Callable,
    theta_init: PyTree[Array],
    *,
    maxiter: int = 30,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
) -> LaplaceMarginal:
    """BlackJAX-compatible constructor of a [`lapsample.LaplaceMarginal`][].

    Code written for `blackjax.mcmc.laplace_marginal.laplace_marginal_factory` ports
    by changing the import. `maxiter` becomes the Newton solver's `max_steps`.

    **Arguments:**

    - `log_joint`, `theta_init`: as for [`lapsample.LaplaceMarginal`][].
    - `maxiter`: the most inner-solver iterations per evaluation.
    - `inner_solver`: overrides the default `Newton(max_steps=maxiter)`.
    - `hessian`: the Hessian strategy; default [`lapsample.DenseHessian`][].

    **Returns:**

    A [`lapsample.LaplaceMarginal`][], with `sample_theta(key, phi, theta_star)`.
    """
    if inner_solver is None:
        inner_solver = Newton(max_steps=maxiter)
    if hessian is None:
        hessian = DenseHessian()
    return LaplaceMarginal(log_joint, theta_init, inner_solver, hessian)


def _steps(num_integration_steps) -> int:
    return check_int("num_integration_steps", num_integration_steps, 1)


def _laplace_sampler(
    proposal: AbstractProposal,
    trajectory: AbstractTrajectory,
    log_joint: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    maxiter: int,
    inner_solver: AbstractInnerSolver | None,
    hessian: AbstractHessianStrategy | None,
    integrator: AbstractIntegrator,
    divergence_threshold: ArrayLike,
) -> Sampler:
    marginal = laplace_marginal_factory(
        log_joint,
        theta_init,
        maxiter=maxiter,
        inner_solver=inner_solver,
        hessian=hessian,
    )
    return Sampler(
        marginal,
        proposal,
        trajectory,
        integrator,
        step_size=step_size,
        inverse_mass_matrix=inverse_mass_matrix,
        divergence_threshold=divergence_threshold,
    )


_COMMON_ARGS = """- `log_joint`: `log_joint(theta, phi) -> scalar`, the log joint
    density `log p(theta, phi, y)` up to a constant (theta = latent, phi =
    hyperparameters, both PyTrees).
- `theta_init`: a PyTree like `theta`; the cold start of the inner solver.
- `step_size`: the integrator's step size.
- `inverse_mass_matrix`: a scalar, a vector (diagonal) or a matrix (dense) over the
    flattened `phi`, or an [`lapsample.AbstractMetric`][]."""

_SOLVER_ARGS = """- `maxiter`: the most inner Newton iterations per evaluation (default
    30).
- `inner_solver`: keyword-only; overrides the default `Newton(max_steps=maxiter)`.
- `hessian`: keyword-only; the Hessian strategy (default
    [`lapsample.DenseHessian`][]).
- `integrator`: keyword-only; default [`lapsample.Leapfrog`][].
- `divergence_threshold`: keyword-only; default 1000."""


def laplace_hmc(
    log_joint: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    num_integration_steps: int,
    maxiter: int = 30,
    *,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    integrator: AbstractIntegrator = Leapfrog(),
    divergence_threshold: ArrayLike = 1000.0,
) -> Sampler:
    return _laplace_sampler(
        EndpointMH(),
        Fixed(_steps(num_integration_steps)),
        log_joint,
        theta_init,
        step_size,
        inverse_mass_matrix,
        maxiter,
        inner_solver,
        hessian,
        integrator,
        divergence_threshold,
    )


laplace_hmc.__doc__ = f"""HMC on the Laplace marginal: `num_integration_steps` steps,
then a Metropolis–Hastings test of the endpoint.

`Sampler(LaplaceMarginal(...), EndpointMH(), Fixed(num_integration_steps), ...)`.

**Arguments:**

{_COMMON_ARGS}
- `num_integration_steps`: integrator steps per transition.
{_SOLVER_ARGS}

**Returns:**

A [`lapsample.Sampler`][].
"""


def laplace_mhmc(
    log_joint: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    num_integration_steps: int,
    maxiter: int = 30,
    *,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    integrator: AbstractIntegrator = Leapfrog(),
    divergence_threshold: ArrayLike = 1000.0,
) -> Sampler:
    return _laplace_sampler(
        Multinomial(),
        Fixed(_steps(num_integration_steps)),
        log_joint,
        theta_init,
        step_size,
        inverse_mass_matrix,
        maxiter,
        inner_solver,
        hessian,
        integrator,
        divergence_threshold,
    )


laplace_mhmc.__doc__ = f"""Multinomial HMC on the Laplace marginal: a trajectory of
`num_integration_steps` steps around the current point, and the next state drawn
from all of its points with probability proportional to `exp(-H)`.

`Sampler(LaplaceMarginal(...), Multinomial(), Fixed(num_integration_steps), ...)`.

**Arguments:**

{_COMMON_ARGS}
- `num_integration_steps`: integrator steps per transition.
{_SOLVER_ARGS}

**Returns:**

A [`lapsample.Sampler`][].
"""


def laplace_dhmc(
    log_joint: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    num_integration_steps: int,
    maxiter: int = 30,
    *,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    integrator: AbstractIntegrator = Leapfrog(),
    divergence_threshold: ArrayLike = 1000.0,
) -> Sampler:
    return _laplace_sampler(
        EndpointMH(),
        RandomLength(2 * _steps(num_integration_steps) - 1),
        log_joint,
        theta_init,
        step_size,
        inverse_mass_matrix,
        maxiter,
        inner_solver,
        hessian,
        integrator,
        divergence_threshold,
    )


laplace_dhmc.__doc__ = f"""HMC on the Laplace marginal with a random number of steps
per transition (uniform on `1 … 2·num_integration_steps - 1`, mean
`num_integration_steps`) and a Metropolis–Hastings test of the endpoint.

`Sampler(LaplaceMarginal(...), EndpointMH(), RandomLength(2 * L - 1), ...)`. For a
trajectory length that adapts to the target, use [`lapsample.laplace_nuts`][].

**Arguments:**

{_COMMON_ARGS}
- `num_integration_steps`: the mean number of integrator steps per transition.
{_SOLVER_ARGS}

**Returns:**

A [`lapsample.Sampler`][].
"""


def laplace_dmhmc(
    log_joint: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    num_integration_steps: int,
    maxiter: int = 30,
    *,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    integrator: AbstractIntegrator = Leapfrog(),
    divergence_threshold: ArrayLike = 1000.0,
) -> Sampler:
    return _laplace_sampler(
        Multinomial(),
        RandomLength(2 * _steps(num_integration_steps) - 1),
        log_joint,
        theta_init,
        step_size,
        inverse_mass_matrix,
        maxiter,
        inner_solver,
        hessian,
        integrator,
        divergence_threshold,
    )


laplace_dmhmc.__doc__ = f"""Multinomial HMC on the Laplace marginal with a random
number of steps per transition (uniform on `1 … 2·num_integration_steps - 1`).

`Sampler(LaplaceMarginal(...), Multinomial(), RandomLength(2 * L - 1), ...)`.

**Arguments:**

{_COMMON_ARGS}
- `num_integration_steps`: the mean number of integrator steps per transition.
{_SOLVER_ARGS}

**Returns:**

A [`lapsample.Sampler`][].
"""


def laplace_nuts(
    log_joint: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    max_tree_depth: int = 10,
    maxiter: int = 30,
    *,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    integrator: AbstractIntegrator = Leapfrog(),
    divergence_threshold: ArrayLike = 1000.0,
) -> Sampler:
    return _laplace_sampler(
        Multinomial(),
        NoUTurn(check_int("max_tree_depth", max_tree_depth, 1)),
        log_joint,
        theta_init,
        step_size,
        inverse_mass_matrix,
        maxiter,
        inner_solver,
        hessian,
        integrator,
        divergence_threshold,
    )


laplace_nuts.__doc__ = f"""The No-U-Turn sampler on the Laplace marginal: the
trajectory doubles until it turns back on itself, with multinomial sampling.

`Sampler(LaplaceMarginal(...), Multinomial(), NoUTurn(max_tree_depth), ...)`.

**Arguments:**

{_COMMON_ARGS}
- `max_tree_depth`: the most doublings per transition (default 10).
{_SOLVER_ARGS}

**Returns:**

A [`lapsample.Sampler`][].
"""
