"""BlackJAX's `nuts` for a plain log density and its `window_adaptation`, so that
BlackJAX code which builds a reference NUTS run (as BlackJAX's own Laplace tests
do) runs unchanged: thin translations onto [`lapsample.Sampler`][] with a
[`lapsample.PlainDensity`][], and onto [`lapsample.sample`][]'s Stan warm-up."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.tree_util as jtu
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray, PyTree

from .._marginal.base import PlainDensity
from .._nuts import NoUTurn
from .._proposal import Multinomial
from .._sampler import Sampler
from .._workflow.driver import sample
from .types import SamplingAlgorithm


def nuts(
    logdensity_fn: Callable,
    step_size: ArrayLike,
    inverse_mass_matrix: ArrayLike,
    *,
    max_num_doublings: int = 10,
    divergence_threshold: float = 1000.0,
) -> SamplingAlgorithm:
    """BlackJAX's `nuts(logdensity_fn, step_size, inverse_mass_matrix)` for an
    ordinary log density `logdensity_fn(position)`: lapsample's
    `Sampler(PlainDensity(logdensity_fn), Multinomial(),
    NoUTurn(max_num_doublings), step_size=..., inverse_mass_matrix=...)` behind
    plain `init(position, rng_key=None)` and `step(rng_key, state)` functions. The
    state is a [`lapsample.SamplerState`][] (`position`, `logdensity`,
    `logdensity_grad`) and the info a [`lapsample.SamplerInfo`][].

    **Arguments:**

    - `logdensity_fn`: `position -> scalar`, a log density up to a constant.
    - `step_size`, `inverse_mass_matrix`: the integrator's step size and the
      metric (a vector for a diagonal metric, a matrix for a dense one).
    - `max_num_doublings`: the most doublings per transition (default 10).
    - `divergence_threshold`: the energy error that counts as a divergence.

    **Returns:**

    A [`lapsample.SamplingAlgorithm`][].
    """
    sampler = Sampler(
        PlainDensity(logdensity_fn),
        Multinomial(),
        NoUTurn(max_num_doublings),
        step_size=step_size,
        inverse_mass_matrix=inverse_mass_matrix,
        divergence_threshold=divergence_threshold,
    )

    def init(position: PyTree[ArrayLike], rng_key: PRNGKeyArray | None = None):
        del rng_key
        return sampler.init(position)

    def step(rng_key: PRNGKeyArray, state):
        return sampler.step(rng_key, state)

    return SamplingAlgorithm(init, step, sampler)


class AdaptationResults(NamedTuple):
    """BlackJAX's `(state, parameters)`: the chain's state after warm-up and the
    tuned `{"step_size": ..., "inverse_mass_matrix": ...}`, to pass on as
    `algorithm(logdensity_fn, **parameters)`."""

    state: Any
    parameters: dict[str, Any]


class WindowAdaptation(NamedTuple):
    """What [`lapsample.window_adaptation`][] returns: `run(rng_key, position,
    num_steps=1000)`."""

    run: Callable


def window_adaptation(
    algorithm: Callable,
    logdensity_fn: Callable,
    is_mass_matrix_diagonal: bool = True,
    initial_step_size: float = 1.0,
    target_acceptance_rate: float = 0.80,
    progress_bar: bool = False,
    **extra_parameters,
):
    """BlackJAX's `window_adaptation(algorithm, logdensity_fn)`: Stan's windowed
    warm-up of the step size and the metric, run by [`lapsample.sample`][] on one
    chain.

    ```python
    warmup = lapsample.window_adaptation(lapsample.nuts, logdensity_fn)
    (state, parameters), info = warmup.run(key, position, num_steps=1000)
    algorithm = lapsample.nuts(logdensity_fn, **parameters)
    ```

    **Arguments:**

    - `algorithm`: a function like [`lapsample.nuts`][]:
      `algorithm(logdensity_fn, step_size=..., inverse_mass_matrix=...,
      **extra_parameters)` returning a `SamplingAlgorithm`.
    - `logdensity_fn`: `position -> scalar`.
    - `is_mass_matrix_diagonal`: adapt a diagonal metric (default) or a dense one.
    - `initial_step_size`: where the step-size search starts.
    - `target_acceptance_rate`: the acceptance statistic dual averaging aims for.
    - `progress_bar`: show lapsample's progress bar.
    - `extra_parameters`: passed on to `algorithm`.

    **Returns:**

    An object whose `run(rng_key, position, num_steps=1000)` returns
    `(AdaptationResults(state, parameters), info)`, with `state` the chain's state
    after `num_steps` warm-up iterations and one transition with the tuned
    parameters, and `info` the [`lapsample.SampleResults`][] of that run
    (lapsample's diagnostics, not BlackJAX's per-step adaptation infos).
    """

    def run(rng_key: PRNGKeyArray, position: PyTree[ArrayLike], num_steps: int = 1000):
        # Warm-up starts from a unit metric and adapts it.
        size = sum(np.size(x) for x in jtu.tree_leaves(position))
        unit = np.ones(size) if is_mass_matrix_diagonal else np.eye(size)
        start = algorithm(
            logdensity_fn,
            step_size=initial_step_size,
            inverse_mass_matrix=unit,
            **extra_parameters,
        )
        results = sample(
            rng_key,
            start.sampler,
            position,
            num_warmup=num_steps,
            num_samples=1,
            num_chains=1,
            target_accept=target_acceptance_rate,
            dense_mass=not is_mass_matrix_diagonal,
            chain_method="sequential",
            progress_bar=progress_bar,
        )
        parameters = {
            "step_size": results.step_size[0],
            "inverse_mass_matrix": results.inverse_mass_matrix[0],
        }
        tuned = algorithm(logdensity_fn, **parameters, **extra_parameters)
        last = jtu.tree_map(lambda x: x[0, -1], results.phi)
        return AdaptationResults(tuned.init(last), parameters), results

    return WindowAdaptation(run)
