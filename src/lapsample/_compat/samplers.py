"""The seed walkthrough's sampler names with BlackJAX 1.7.1's signatures, defaults,
states and infos: `laplace_hmc`, `laplace_mhmc`, `laplace_dhmc` and `laplace_dmhmc`
return BlackJAX's `SamplingAlgorithm` of plain functions over a `Sampler`;
`laplace_nuts` (lapsample's own) returns the `Sampler`."""

from collections.abc import Callable
from typing import Any

from jaxtyping import ArrayLike, PyTree

from .._hessian.base import AbstractHessianStrategy
from .._inner import AbstractInnerSolver
from .._integrator import AbstractIntegrator, Leapfrog
from .._metric import AbstractMetric
from .._nuts import NoUTurn
from .._proposal import Multinomial
from .._sampler import Sampler
from .._trajectory import AbstractTrajectory, Fixed, RandomLength
from .._validate import check_int
from .algorithm import dynamic_algorithm, fixed_algorithm, steps_uniform_below
from .marginal import native_marginal
from .types import (
    hmc_proposal,
    multinomial_hmc_proposal,
    resolve_proposal,
    SamplingAlgorithm,
)


def _sampler(
    proposal: Any,
    trajectory: AbstractTrajectory,
    log_joint: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    integrator: AbstractIntegrator,
    divergence_threshold: ArrayLike,
    maxiter: int,
    inner_solver: AbstractInnerSolver | None,
    hessian: AbstractHessianStrategy | None,
    options: dict[str, Any],
) -> Sampler:
    if not isinstance(integrator, AbstractIntegrator):
        raise TypeError(
            "`integrator` must be an `lapsample.AbstractIntegrator`: "
            "`lapsample.Leapfrog()` for BlackJAX's `velocity_verlet`, "
            f"`lapsample.McLachlan()` for `mclachlan`; got {integrator!r}."
        )
    marginal = native_marginal(
        log_joint, theta_init, maxiter, inner_solver, hessian, options
    )
    return Sampler(
        marginal,
        resolve_proposal(proposal),
        trajectory,
        integrator,
        step_size=step_size,
        inverse_mass_matrix=inverse_mass_matrix,
        divergence_threshold=divergence_threshold,
    )


_COMMON_ARGS = """- `log_joint_fn`: `log_joint(theta, phi) -> scalar`, the log joint
    density `log p(theta, phi, y)` up to a constant (theta = latent, phi =
    hyperparameters, both PyTrees).
- `theta_init`: a PyTree like `theta`; the cold start of the inner solver.
- `step_size`: the integrator's step size.
- `inverse_mass_matrix`: a scalar, a vector (diagonal) or a matrix (dense) over the
    flattened `phi`, or an [`lapsample.AbstractMetric`][]."""

_SOLVER_ARGS = """- `divergence_threshold`: keyword-only; default 1000.
- `integrator`: keyword-only; default [`lapsample.Leapfrog`][] (BlackJAX's
    `velocity_verlet`).
- `maxiter`: keyword-only; the most Newton iterations per inner solve (default
    30).
- `inner_solver`, `hessian`: keyword-only; lapsample's inner solver (default
    `Newton(max_steps=maxiter)`) and Hessian strategy (default
    [`lapsample.DenseHessian`][]).
- `**optimizer_kwargs`: BlackJAX's L-BFGS options, mapped as by
    [`lapsample.laplace_marginal_factory`][] (`gtol` becomes Newton's `atol`, the
    others are ignored)."""

_RETURNS = """**Returns:**

A `SamplingAlgorithm` (BlackJAX's): `init(position, rng_key=None)` and
`step(rng_key, state) -> (state, LaplaceHMCInfo)` are plain functions, so
`jax.jit(algorithm.step)`, `jax.vmap` and `jax.lax.scan` take them as they are;
`algorithm.sampler` is the [`lapsample.Sampler`][] underneath."""


def laplace_hmc(
    log_joint_fn: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    num_integration_steps: int,
    *,
    divergence_threshold: ArrayLike = 1000.0,
    integrator: AbstractIntegrator = Leapfrog(),
    build_proposal: Any = hmc_proposal,
    maxiter: int = 30,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    **optimizer_kwargs: Any,
) -> SamplingAlgorithm:
    steps = check_int("num_integration_steps", num_integration_steps, 1)
    sampler = _sampler(
        build_proposal,
        Fixed(steps),
        log_joint_fn,
        theta_init,
        step_size,
        inverse_mass_matrix,
        integrator,
        divergence_threshold,
        maxiter,
        inner_solver,
        hessian,
        optimizer_kwargs,
    )
    return fixed_algorithm(sampler)


laplace_hmc.__doc__ = f"""HMC on the Laplace marginal: `num_integration_steps` steps,
then a Metropolis–Hastings test of the endpoint (BlackJAX's `laplace_hmc`).

`Sampler(LaplaceMarginal(...), EndpointMH(), Fixed(num_integration_steps), ...)`.

**Arguments:**

{_COMMON_ARGS}
- `num_integration_steps`: integrator steps per transition.
- `build_proposal`: keyword-only; `lapsample.mcmc.hmc.hmc_proposal` (default) or
    `multinomial_hmc_proposal`, or an [`lapsample.AbstractProposal`][].
{_SOLVER_ARGS}

{_RETURNS}
"""


def laplace_mhmc(
    log_joint_fn: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    num_integration_steps: int,
    *,
    divergence_threshold: ArrayLike = 1000.0,
    integrator: AbstractIntegrator = Leapfrog(),
    maxiter: int = 30,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    **optimizer_kwargs: Any,
) -> SamplingAlgorithm:
    return laplace_hmc(
        log_joint_fn,
        theta_init,
        step_size,
        inverse_mass_matrix,
        num_integration_steps,
        divergence_threshold=divergence_threshold,
        integrator=integrator,
        build_proposal=multinomial_hmc_proposal,
        maxiter=maxiter,
        inner_solver=inner_solver,
        hessian=hessian,
        **optimizer_kwargs,
    )


laplace_mhmc.__doc__ = f"""Multinomial HMC on the Laplace marginal: a trajectory of
`num_integration_steps` steps around the current point, and the next state drawn
from all of its points with probability proportional to `exp(-H)` (BlackJAX's
`laplace_mhmc`, i.e. `laplace_hmc(..., build_proposal=multinomial_hmc_proposal)`).

`Sampler(LaplaceMarginal(...), Multinomial(), Fixed(num_integration_steps), ...)`.

**Arguments:**

{_COMMON_ARGS}
- `num_integration_steps`: integrator steps per transition.
{_SOLVER_ARGS}

{_RETURNS}
"""


def laplace_dhmc(
    log_joint_fn: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    *,
    divergence_threshold: ArrayLike = 1000.0,
    integrator: AbstractIntegrator = Leapfrog(),
    next_random_arg_fn: Callable | None = None,
    integration_steps_fn: Callable | None = None,
    integration_steps_params: tuple = (),
    build_proposal: Any = hmc_proposal,
    num_integration_steps: int | None = None,
    maxiter: int = 30,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    **optimizer_kwargs: Any,
) -> SamplingAlgorithm:
    if num_integration_steps is None:
        max_steps = 9  # BlackJAX's default: uniform on 1 … 9.
    else:
        if integration_steps_fn is not None:
            raise TypeError(
                "Pass `num_integration_steps` (uniform on 1 … 2L - 1) or "
                "`integration_steps_fn`, not both."
            )
        max_steps = 2 * check_int("num_integration_steps", num_integration_steps, 1) - 1
    if integration_steps_fn is None:
        integration_steps_fn = steps_uniform_below(max_steps + 1)
    sampler = _sampler(
        build_proposal,
        RandomLength(max_steps),
        log_joint_fn,
        theta_init,
        step_size,
        inverse_mass_matrix,
        integrator,
        divergence_threshold,
        maxiter,
        inner_solver,
        hessian,
        optimizer_kwargs,
    )
    return dynamic_algorithm(
        sampler, next_random_arg_fn, integration_steps_fn, integration_steps_params
    )


_DYNAMIC_ARGS = """- `next_random_arg_fn`: keyword-only; advances the state's
    `random_generator_arg` (default: `jax.random.split(key)[1]`).
- `integration_steps_fn`: keyword-only;
    `(random_generator_arg, *integration_steps_params) -> int`, the number of
    steps of a transition (default: uniform on `1 … 9`, as BlackJAX).
- `integration_steps_params`: keyword-only; extra arguments of
    `integration_steps_fn`.
- `num_integration_steps`: keyword-only, lapsample's shorthand: steps uniform on
    `1 … 2L - 1` (mean `L`) instead of `integration_steps_fn`."""


laplace_dhmc.__doc__ = f"""HMC on the Laplace marginal with a random number of steps
per transition and a Metropolis–Hastings test of the endpoint (BlackJAX's
`laplace_dhmc`). `init(position, rng_key)` seeds the step-count generator.

`algorithm.sampler` is `Sampler(LaplaceMarginal(...), EndpointMH(),
RandomLength(9 or 2L - 1), ...)`, which draws the length from the step key. For a
trajectory length that adapts to the target, use [`lapsample.laplace_nuts`][].

**Arguments:**

{_COMMON_ARGS}
{_DYNAMIC_ARGS}
- `build_proposal`: keyword-only; as for [`lapsample.laplace_hmc`][].
{_SOLVER_ARGS}

{_RETURNS}
"""


def laplace_dmhmc(
    log_joint_fn: Callable,
    theta_init: PyTree[ArrayLike],
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike | AbstractMetric,
    *,
    divergence_threshold: ArrayLike = 1000.0,
    integrator: AbstractIntegrator = Leapfrog(),
    next_random_arg_fn: Callable | None = None,
    integration_steps_fn: Callable | None = None,
    integration_steps_params: tuple = (),
    num_integration_steps: int | None = None,
    maxiter: int = 30,
    inner_solver: AbstractInnerSolver | None = None,
    hessian: AbstractHessianStrategy | None = None,
    **optimizer_kwargs: Any,
) -> SamplingAlgorithm:
    return laplace_dhmc(
        log_joint_fn,
        theta_init,
        step_size,
        inverse_mass_matrix,
        divergence_threshold=divergence_threshold,
        integrator=integrator,
        next_random_arg_fn=next_random_arg_fn,
        integration_steps_fn=integration_steps_fn,
        integration_steps_params=integration_steps_params,
        build_proposal=multinomial_hmc_proposal,
        num_integration_steps=num_integration_steps,
        maxiter=maxiter,
        inner_solver=inner_solver,
        hessian=hessian,
        **optimizer_kwargs,
    )


laplace_dmhmc.__doc__ = f"""Multinomial HMC on the Laplace marginal with a random
number of steps per transition (BlackJAX's `laplace_dmhmc`, i.e. `laplace_dhmc(...,
build_proposal=multinomial_hmc_proposal)`).

**Arguments:**

{_COMMON_ARGS}
{_DYNAMIC_ARGS}
{_SOLVER_ARGS}

{_RETURNS}
"""


_NUTS_ARGS = _COMMON_ARGS.replace("`log_joint_fn`", "`log_joint`")
_NUTS_SOLVER_ARGS = """- `maxiter`: the most inner Newton iterations per evaluation
    (default 30).
- `inner_solver`: keyword-only; overrides the default `Newton(max_steps=maxiter)`.
- `hessian`: keyword-only; the Hessian strategy (default
    [`lapsample.DenseHessian`][]).
- `integrator`: keyword-only; default [`lapsample.Leapfrog`][].
- `divergence_threshold`: keyword-only; default 1000."""


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
    return _sampler(
        Multinomial(),
        NoUTurn(check_int("max_tree_depth", max_tree_depth, 1)),
        log_joint,
        theta_init,
        step_size,
        inverse_mass_matrix,
        integrator,
        divergence_threshold,
        maxiter,
        inner_solver,
        hessian,
        {},
    )


laplace_nuts.__doc__ = f"""The No-U-Turn sampler on the Laplace marginal: the
trajectory doubles until it turns back on itself, with multinomial sampling.

`Sampler(LaplaceMarginal(...), Multinomial(), NoUTurn(max_tree_depth), ...)`.

**Arguments:**

{_NUTS_ARGS}
- `max_tree_depth`: the most doublings per transition (default 10).
{_NUTS_SOLVER_ARGS}

**Returns:**

A [`lapsample.Sampler`][].
"""
