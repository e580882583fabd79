"""BlackJAX-style entry points: the seed walkthrough's sampler names, a driver and
an effective-sample-size helper."""

import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray, PyTree

from ._hessian import AbstractHessianStrategy
from ._inner import AbstractInnerSolver
from ._integrator import AbstractIntegrator, Leapfrog
from ._marginal import laplace_marginal_factory
from ._metric import AbstractMetric
from ._proposal import AbstractProposal, EndpointMH, Multinomial
from ._sampler import Sampler, SamplerInfo, SamplerState
from ._trajectory import _check_int, AbstractTrajectory, Fixed, NoUTurn, RandomLength


def _steps(num_integration_steps) -> int:
    return _check_int("num_integration_steps", num_integration_steps, 1)


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
        NoUTurn(_check_int("max_tree_depth", max_tree_depth, 1)),
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


def _identity_transform(state: SamplerState, info: SamplerInfo) -> Any:
    return state, info


@eqx.filter_jit
def _run(rng_key, sampler, num_steps, initial_state, transform):
    def one_step(state, key):
        state, info = sampler.step(key, state)
        return state, transform(state, info)

    return jax.lax.scan(one_step, initial_state, jr.split(rng_key, num_steps))


def run_inference_algorithm(
    rng_key: PRNGKeyArray,
    sampler: Sampler,
    num_steps: int,
    initial_state: SamplerState | None = None,
    initial_position: PyTree[ArrayLike] | None = None,
    transform: Callable[[SamplerState, SamplerInfo], Any] = _identity_transform,
) -> tuple[SamplerState, Any]:
    """Run one chain for `num_steps` transitions, BlackJAX-style.

    The loop is a `lax.scan` inside `eqx.filter_jit`, compiled once per sampler
    structure, `num_steps` and `transform`. (A fresh `lambda` for `transform` on
    each call compiles afresh; define it once to reuse the compilation.)

    ```python
    final_state, (states, infos) = lapsample.run_inference_algorithm(
        key, sampler, num_steps=1_000, initial_position=phi_init
    )
    ```

    For several chains, `jax.vmap` this over keys and initial positions with the
    sampler unbatched, e.g.
    `eqx.filter_vmap(lambda k, p: run_inference_algorithm(k, sampler, n,
    initial_position=p))(keys, positions)`.

    **Arguments:**

    - `rng_key`: a JAX PRNG key.
    - `sampler`: a [`lapsample.Sampler`][].
    - `num_steps`: the number of transitions (a Python int).
    - `initial_state`: the state to start from; or
    - `initial_position`: the `phi` to start from (exactly one of the two).
    - `transform`: `(state, info) -> anything`, applied after each transition to
      choose what is recorded; default `(state, info)`.

    **Returns:**

    `(final_state, history)`, with `history` the stacked outputs of `transform`.
    """
    if (initial_state is None) == (initial_position is None):
        raise ValueError(
            "Pass exactly one of `initial_state` and `initial_position` to "
            "`run_inference_algorithm`."
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise TypeError(f"`num_steps` must be a Python int, got {num_steps!r}.")
    if num_steps < 1:
        raise ValueError(
            f"`num_steps` must be at least 1, got {num_steps}: it is the number of "
            "transitions (draws) to run."
        )
    if initial_state is None:
        # Jitted on its own (per marginal), so samplers that share a marginal share
        # this compilation.
        initial_state = sampler.init(initial_position)
    return _run(rng_key, sampler, int(num_steps), initial_state, transform)


def ess(samples: ArrayLike, *, method: str = "bulk", relative: bool = False) -> Any:
    """The effective sample size of MCMC draws, computed by ArviZ
    ([`arviz.ess`](https://python.arviz.org/en/stable/api/generated/arviz.ess.html),
    rank-normalised split-R̂-style estimator by default).

    Like `blackjax.ess`, the input is shaped `(chains, draws, ...)`: pass one chain
    as `x[None]`.

    **Arguments:**

    - `samples`: draws shaped `(chains, draws, *event_shape)`.
    - `method`: ArviZ's method: `"bulk"` (default), `"tail"`, `"mean"`, `"sd"`,
      `"quantile"`, ...
    - `relative`: if `True`, return the ESS divided by the number of draws.

    **Returns:**

    A NumPy float for `(chains, draws)` input, else a NumPy array of shape
    `event_shape`.

    !!! info

        Needs ArviZ (`pip install 'lapsample[arviz]'`); it is imported on first use.
    """
    try:
        with warnings.catch_warnings():
            # ArviZ 0.2x announces its 1.0 refactor with a FutureWarning on import.
            warnings.filterwarnings(
                "ignore", message=".*ArviZ is undergoing", category=FutureWarning
            )
            import arviz as az
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "`lapsample.ess` uses ArviZ, which is not installed. Install it with "
            "`pip install 'lapsample[arviz]'` (or `pip install arviz`)."
        ) from e
    x = np.asarray(samples)
    if x.ndim < 2:
        raise ValueError(
            "`ess` expects draws shaped (chains, draws, ...); for a single chain "
            f"pass `x[None]`. Got shape {x.shape}."
        )
    if x.ndim == 2:
        return np.float64(az.ess(x, method=method, relative=relative))
    dataset = az.convert_to_dataset({"x": x})
    return np.asarray(az.ess(dataset, method=method, relative=relative)["x"].values)
