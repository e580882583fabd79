"""BlackJAX's `run_inference_algorithm` and `ess`, on lapsample's samplers."""

import functools
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray, PyTree

from .._sampler import Sampler


def _identity_transform(state: Any, info: Any) -> Any:
    return state, info


@eqx.filter_jit
def _run(rng_key, sampler, num_steps, initial_state, transform):
    def one_step(state, key):
        state, info = sampler.step(key, state)
        return state, transform(state, info)

    return jax.lax.scan(one_step, initial_state, jr.split(rng_key, num_steps))


def run_inference_algorithm(
    rng_key: PRNGKeyArray,
    inference_algorithm: Sampler | Any,
    num_steps: int,
    initial_state: Any = None,
    initial_position: PyTree[ArrayLike] | None = None,
    transform: Callable[[Any, Any], Any] = _identity_transform,
) -> tuple[Any, Any]:
    """Run one chain for `num_steps` transitions, BlackJAX-style.

    ```python
    final_state, (states, infos) = lapsample.run_inference_algorithm(
        key, algorithm, num_steps=1_000, initial_position=phi_init
    )
    ```

    `inference_algorithm` is what [`lapsample.laplace_hmc`][] and its siblings
    return (BlackJAX's `SamplingAlgorithm`), or any object with BlackJAX's
    `init(position, rng_key)` and `step(rng_key, state)`: then this is BlackJAX's
    function (the key is split for `init`, the loop is `jax.jit` of a `lax.scan`).
    For a [`lapsample.Sampler`][] the loop is a `lax.scan` inside `eqx.filter_jit`,
    compiled once per sampler structure, `num_steps` and `transform` (a fresh
    `lambda` for `transform` on each call compiles afresh; define it once to reuse
    the compilation), and `init` takes the position only.

    For several chains, `jax.vmap` this over keys and initial positions, e.g.
    `eqx.filter_vmap(lambda k, p: run_inference_algorithm(k, sampler, n,
    initial_position=p))(keys, positions)`.

    **Arguments:**

    - `rng_key`: a JAX PRNG key.
    - `inference_algorithm`: a `SamplingAlgorithm` or a [`lapsample.Sampler`][].
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
    if not isinstance(inference_algorithm, Sampler):
        return _run_algorithm(
            rng_key,
            inference_algorithm,
            int(num_steps),
            initial_state,
            initial_position,
            transform,
        )
    if initial_state is None:
        # Jitted on its own (per marginal), so samplers that share a marginal share
        # this compilation.
        initial_state = inference_algorithm.init(initial_position)
    return _run(rng_key, inference_algorithm, int(num_steps), initial_state, transform)


def _run_algorithm(rng_key, algorithm, num_steps, state, position, transform):
    if state is None:
        rng_key, init_key = jr.split(rng_key)
        state = algorithm.init(position, init_key)

    def one_step(state, key):
        state, info = algorithm.step(key, state)
        return state, transform(state, info)

    return jax.jit(functools.partial(jax.lax.scan, one_step))(
        state, jr.split(rng_key, num_steps)
    )


def ess(
    samples: ArrayLike,
    chain_axis: int = 0,
    sample_axis: int = 1,
    *,
    method: str = "bulk",
    relative: bool = False,
) -> Any:
    """The effective sample size of MCMC draws, computed by ArviZ
    ([`arviz.ess`](https://python.arviz.org/en/stable/api/generated/arviz.ess.html),
    rank-normalised split-R̂-style estimator by default).

    Like `blackjax.ess`, the input is shaped `(chains, draws, ...)`: pass one chain
    as `x[None]`.

    **Arguments:**

    - `samples`: draws shaped `(chains, draws, *event_shape)`.
    - `chain_axis`, `sample_axis`: BlackJAX's arguments: the axes of chains and of
      draws in `samples` (default 0 and 1).
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
    x = np.moveaxis(x, (chain_axis, sample_axis), (0, 1))
    if x.ndim == 2:
        return np.float64(az.ess(x, method=method, relative=relative))
    dataset = az.convert_to_dataset({"x": x})
    return np.asarray(az.ess(dataset, method=method, relative=relative)["x"].values)
