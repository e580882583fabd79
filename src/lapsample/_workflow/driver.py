"""`sample` starts a run."""

import contextlib
import dataclasses
import os
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray, PyTree

from .._laplace_check import laplace_check as run_laplace_check
from .._marginal.base import AbstractLaplaceMarginal, AbstractMarginal
from .._misc import insertion_order
from .._numpyro import NumPyroModel
from .._output.sample_results import SampleResults
from .._sampler import Sampler
from .._validate import check_bool, check_key
from . import checkpoint as checkpoint_file, checkpoint_lock as lock_file
from .loop import Run, run_loop
from .settings import (
    as_sampler,
    per_chain_positions,
    prepare_at_start,
    RunSettings,
    unwrap_numpyro,
    with_postprocess,
)
from .threads import check_blas_threads


def chain_keys(key, num_chains: int):
    """`(jitter_key, key_data, key_impl)`: the key of the starting points' jitter
    and the raw key of every chain (`(num_chains, ...)` host array)."""
    jitter_key, chains_key = jr.split(key)
    key_data = np.asarray(jr.key_data(jr.split(chains_key, num_chains)))
    return jitter_key, key_data, str(jr.key_impl(key))


@contextlib.contextmanager
def writing_checkpoint(checkpoint):
    """Check the path of `checkpoint` (or `None`) and hold its lock while the body
    runs (only process 0 writes, so only it locks); yields the path as a `str`."""
    if checkpoint is None:
        yield None
        return
    path = lock_file.check_path(checkpoint)
    if jax.process_index() != 0:
        yield path
        return
    with lock_file.locked(path):
        yield path


# `fold_in` index of the key of `sample(..., laplace_check=True)`.
_LAPLACE_CHECK_STREAM = 0x1A9C


def sample(
    key: PRNGKeyArray,
    model: Sampler | AbstractMarginal | NumPyroModel,
    initial_position: PyTree[ArrayLike] | None = None,
    *,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int | None = None,
    target_accept: float = 0.8,
    dense_mass: bool | None = None,
    adapt_mass_matrix: bool = True,
    chain_axis: bool = False,
    jitter: float = 0.0,
    sample_theta: bool = False,
    save_warmup: bool = False,
    chain_method: Literal["vectorized", "sequential"] | None = None,
    chunk_size: int | None = None,
    progress_bar: bool = True,
    checkpoint: str | os.PathLike | None = None,
    overwrite: bool = False,
    laplace_check: bool = False,
    thinning: int = 1,
    blas_threads: int | None = None,
) -> SampleResults:
    r"""Run several chains of Hamiltonian Monte Carlo with Stan-style warm-up.

    ```python
    marginal = lapsample.LaplaceMarginal(log_joint, theta_init=jnp.zeros(n))
    results = lapsample.sample(jax.random.key(0), marginal, phi_init)
    results.print_summary()            # mean, sd, HDI, ESS, R-hat; divergences
    idata = results.to_arviz()
    ```

    **The sampler.** A [`lapsample.LaplaceMarginal`][] (or any
    [`lapsample.AbstractMarginal`][]) is sampled with NUTS:
    `Sampler(model, Multinomial(), NoUTurn(), step_size=1.0,
    inverse_mass_matrix=1.0)`, the starting values of warm-up. Pass a
    [`lapsample.Sampler`][] to choose the trajectory, integrator, maximum tree depth
    or starting metric; its step size and inverse mass matrix are where warm-up
    starts.

    **Warm-up** follows Stan. Before the first transition a heuristic search sets
    the step size (double or halve it until one integrator step's acceptance
    probability crosses 0.8). Then, over `num_warmup` iterations: an initial fast
    window of 75 iterations, slow windows of 25, 50, 100, ... iterations (the last
    stretched to fill the space) and a final fast window of 50; when `num_warmup <
    150` the three are scaled to 15% / 75% / 10%, and below 20 iterations only the
    step size is adapted. In every warm-up iteration the step size follows dual
    averaging (Hoffman & Gelman 2014: `gamma = 0.05`, `t0 = 10`, `kappa = 0.75`,
    `mu = log(10 · step_size)`) toward `target_accept`; at the end of each slow
    window the inverse mass matrix becomes the window's sample variance of `phi`
    (a diagonal by default, the covariance with `dense_mass=True`), regularised as
    Stan does, `(n/(n + 5)) · var + 1e-3 · 5/(n + 5)`, and the step size is searched
    afresh. After warm-up the step size is the dual-averaging average and stays
    fixed, as does the mass matrix. Each chain adapts on its own. Adapted values
    are arrays: they never cause recompilation.

    **Chains and devices.** Chains run in parallel inside one compiled function.
    When several devices are visible (`jax.devices()`), the chains are split
    across them (a 1-D mesh named `"chains"`; with `num_chains` not a multiple of
    the device count, the largest number of devices that divides it); on each
    device the chains are vectorised with `vmap` or run one after another
    (`chain_method`). Chains never exchange information, and the randomness of a
    chain depends only on the key and the chain's index, so with
    `chain_method="sequential"` (the default on CPU) the same key gives the same
    draws, bit for bit, on one device or on four. Vectorised chains agree across
    device counts only up to floating-point round-off (which then grows along the
    chain): the number of chains per device changes the batch shape, and with it
    the kernels XLA picks.

    *Several hosts.* Start one process per host and call
    `jax.distributed.initialize()` at the top of the script (before any other
    JAX call); `jax.devices()` then lists every device of every host, and
    `sample` spreads the chains over all of them (`num_chains` must then be a
    multiple of the total number of devices). Run the same script, with the same
    key and arguments, on every host: every process receives the complete results.
    Only process 0 shows the progress bar and writes the checkpoint (the others
    wait for its last write), so put the checkpoint on a file system that process 0
    can write to and every process can read, and resume the same way (every process
    calls `resume` with the same file). On CPUs, set
    `jax.config.update("jax_cpu_collectives_implementation", "gloo")` before
    `jax.distributed.initialize`; `docs/workflow.md` has a SLURM example.

    **Progress.** The chains advance in compiled chunks of `chunk_size`
    iterations (default: about 50 chunks per run) driven from Python. A `tqdm`
    progress bar shows the phase (warm-up or sampling), the time left and the speed
    in iterations per second (both from the end of the first chunk, so without the
    compilation), divergences so far and the mean step size. It is shown only when
    standard error is a terminal and the `CI` environment variable is not set;
    `progress_bar=False` turns it off. The chunk size never changes the draws:
    the randomness of iteration `i` of a chain comes from `fold_in(chain_key, i)`.

    **Checkpoints.** With `checkpoint="run.lsmp"` the chain states, the adaptation
    state, the keys, the iteration count and the draws so far are written at the
    end of every chunk, atomically (a temporary file in the same directory, then a
    rename), so a run killed at any moment leaves the last complete checkpoint.
    [`lapsample.resume`][] continues it and gives draws identical, bit for bit, to
    an uninterrupted run. An existing file is not overwritten unless
    `overwrite=True`, and a file that is not a lapsample checkpoint never is. The
    path is checked before anything compiles (a missing or read-only directory is
    an error that names the fix), and while the run writes it, it holds a lock file
    beside it (`run.lsmp.lock`): a second run given the same path is refused. If a
    write fails (a full disk), the error says that the previous checkpoint is still
    valid. To draw more after a run, see [`lapsample.continue_run`][].

    **Arguments:**

    - `key`: a JAX PRNG key (`jax.random.key(seed)`).
    - `model`: a [`lapsample.Sampler`][], or a marginal such as
      [`lapsample.LaplaceMarginal`][] (sampled with NUTS).
    - `initial_position`: the starting `phi`, a PyTree of arrays. By default it is
      one position, used by every chain. With `chain_axis=True` every leaf has a
      leading axis of length `num_chains`: one starting point per chain.
    - `num_warmup`: warm-up iterations per chain (at least 0; default 1000).
      `num_warmup=0` turns adaptation off: a `Sampler` runs with its own step size
      and metric, a marginal with the searched step size and a unit metric.
    - `num_samples`: draws per chain after warm-up (at least 1; default 1000).
    - `num_chains`: the number of chains (default 4, or the leading axis of
      `initial_position` with `chain_axis=True`).
    - `target_accept`: the acceptance statistic that step-size adaptation aims
      for, in (0, 1); default 0.8. Raise it (0.9, 0.95) to remove divergences.
    - `dense_mass`: adapt a dense inverse mass matrix (the posterior covariance of
      `phi`) instead of a diagonal one. Default: dense if the sampler's inverse
      mass matrix is a matrix, else diagonal.
    - `adapt_mass_matrix`: whether warm-up adapts the mass matrix (default
      `True`); with `False` only the step size is adapted and the sampler's metric
      is kept (needed for a custom [`lapsample.AbstractMetric`][]).
    - `chain_axis`: whether `initial_position` has a leading chain axis.
    - `jitter`: if positive, every chain starts at `initial_position` plus
      independent uniform noise on `(-jitter, jitter)` in each coordinate (Stan's
      random initialisation uses 2 on the unconstrained scale). Over-dispersed
      starts make R-hat more sensitive. A start where the log density is not
      finite is redrawn (up to 100 times).
    - `sample_theta`: also draw the latent `theta ~ N(theta*, H⁻¹)` at every draw
      (needs a marginal with a latent: a [`lapsample.LaplaceMarginal`][], a
      [`lapsample.LatentGaussianMarginal`][] or a NumPyro model).
    - `save_warmup`: also keep the warm-up draws and statistics.
    - `chain_method`: `"vectorized"` (chains batched with `vmap` on each device)
      or `"sequential"` (one after another on each device, inside the same
      compiled loop). Default: vectorized on GPU/TPU, sequential on CPU, where
      vectorising NUTS gains little (the batch waits for the longest trajectory)
      and where batched LAPACK factorisations of jaxlib 0.10 can deadlock on
      machines with few cores.
    - `chunk_size`: iterations per compiled chunk (default: about 1/50 of the
      run).
    - `progress_bar`: show a progress bar when attached to a terminal (default
      `True`).
    - `checkpoint`: a file to write checkpoints to (e.g. `"run.lsmp"`).
    - `overwrite`: replace an existing checkpoint file at `checkpoint`.
    - `laplace_check`: after sampling, run [`lapsample.laplace_check`][] with its
      defaults (20 draws of `phi`, or all when there are fewer) on the results
      (needs a marginal with a latent, as for `sample_theta`); the result is
      `results.laplace_check` and `results.summary()` reports it. `resume` does not
      run it: call `lapsample.laplace_check(results, key)` afterwards.
    - `thinning`: keep every `thinning`-th draw after warm-up (`num_samples //
      thinning` in all, the last among them; warm-up is not thinned); a kept
      draw's `diverging` and `inner_failed` cover the transitions since the
      previous kept one.
    - `blas_threads`: threads of the BLAS pool (SciPy's OpenBLAS, which jaxlib's
      CPU factorisations call, outside `XLA_FLAGS`' reach) during the run. Default:
      1 on the CPU (see the Performance page), unchanged elsewhere.

    **Returns:**

    A [`lapsample.SampleResults`][].

    **Raises:**

    `ValueError` for invalid settings, and for a starting point where the log
    density is not finite; `LaplaceMarginal.check` errors for a
    model that fails at the starting point; `FileExistsError` if `checkpoint`
    exists and `overwrite` is `False`, or another run holds its lock; `OSError`
    (and `ValueError` for `""`) if it cannot be written.

    ??? cite "References"

        ```bibtex
        @article{hoffman2014no,
            title={The No-U-Turn sampler: adaptively setting path lengths in
                   Hamiltonian Monte Carlo},
            author={Hoffman, Matthew D and Gelman, Andrew},
            journal={Journal of Machine Learning Research},
            volume={15},
            number={1},
            pages={1593--1623},
            year={2014}
        }

        @article{carpenter2017stan,
            title={Stan: A probabilistic programming language},
            author={Carpenter, Bob and Gelman, Andrew and Hoffman, Matthew D and
                    Lee, Daniel and Goodrich, Ben and Betancourt, Michael and
                    Brubaker, Marcus and Guo, Jiqiang and Li, Peter and
                    Riddell, Allen},
            journal={Journal of Statistical Software},
            volume={76},
            number={1},
            year={2017}
        }
        ```
    """
    key = check_key(key)
    model, initial_position, numpyro_model = unwrap_numpyro(model, initial_position)
    sampler = as_sampler(model)
    check_bool("progress_bar", progress_bar)
    check_bool("overwrite", overwrite)
    check_bool("laplace_check", laplace_check)
    blas_threads = check_blas_threads(blas_threads)
    settings = RunSettings.from_arguments(
        sampler,
        initial_position,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        target_accept=target_accept,
        dense_mass=dense_mass,
        adapt_mass_matrix=adapt_mass_matrix,
        chain_axis=chain_axis,
        jitter=jitter,
        sample_theta=sample_theta,
        save_warmup=save_warmup,
        chain_method=chain_method,
        chunk_size=chunk_size,
        model_is_marginal=not isinstance(model, Sampler),
        thinning=thinning,
    )
    settings = dataclasses.replace(
        settings, phi_order=insertion_order(initial_position, "phi")
    )
    has_latent = isinstance(sampler.marginal, AbstractLaplaceMarginal)
    if laplace_check and not has_latent:
        raise ValueError(
            "`laplace_check=True` needs a marginal with a latent, an "
            "`lapsample.AbstractLaplaceMarginal` such as "
            "`lapsample.LaplaceMarginal` or `lapsample.LatentGaussianMarginal`; "
            f"the model's marginal is a {type(sampler.marginal).__name__}."
        )
    structure = None
    with writing_checkpoint(checkpoint) as checkpoint:
        if checkpoint is not None:
            structure = checkpoint_file.preflight(
                checkpoint, overwrite, initial_position
            )
        positions = per_chain_positions(
            initial_position, settings.num_chains, settings.chain_axis
        )
        first = jtu.tree_map(lambda x: jnp.asarray(x[0]), positions)
        # The default Hessian strategy picks itself here, once, before compiling.
        sampler = prepare_at_start(sampler, first)
        if has_latent:
            # Clear errors for a model that fails at the start, before compiling.
            sampler.marginal.check(first)

        jitter_key, key_data, key_impl = chain_keys(key, settings.num_chains)
        run = Run(sampler, settings, key_data, key_impl, blas_threads)

        carry, positions = run.start_chains(positions, jitter_key)
        results = run_loop(
            run,
            carry,
            positions,
            start=0,
            resumed=None,
            progress_bar=progress_bar,
            checkpoint=checkpoint,
            structure=structure,
            model=model,
        )
    results = with_postprocess(results, numpyro_model, settings.phi_order)
    if laplace_check:
        # A stream of its own, so the draws are the same with or without the check.
        check = run_laplace_check(
            results,
            jr.fold_in(key, _LAPLACE_CHECK_STREAM),
            num_phi=min(20, settings.num_chains * settings.num_samples),
        )
        results = eqx.tree_at(
            lambda r: r.laplace_check, results, check, is_leaf=lambda x: x is None
        )
    return results
