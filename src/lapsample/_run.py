"""The workflow driver: warm-up, many chains (on many devices), progress,
checkpoints. `sample` starts a run and `resume` continues one from a checkpoint."""

import math
import os
import sys
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from . import _checkpoint
from ._adaptation import (
    adapt,
    AdaptationState,
    dual_averaging_init,
    find_reasonable_step_size,
    initial_inverse_mass_matrix,
    MIN_WARMUP_FOR_MASS,
    schedule_flags,
    StepFlags,
    welford_init,
)
from ._check import _CHECKABLE, laplace_check as _laplace_check
from ._marginal import AbstractMarginal, LaplaceMarginal
from ._metric import DenseMetric, DiagonalMetric
from ._misc import TreeRaveller
from ._numpyro import NumPyroModel
from ._proposal import Multinomial
from ._results_object import SampleResults
from ._sampler import Sampler, SamplerInfo, SamplerState
from ._trajectory import NoUTurn


_AXIS = "chains"
# Aim for about this many chunks per run (progress updates and checkpoints).
_TARGET_CHUNKS = 50
# `fold_in` index of the key of `sample(..., laplace_check=True)`.
_LAPLACE_CHECK_STREAM = 0x1A9C


# --------------------------------------------------------------------------------
# Per-chain pieces (traced inside the jitted chunk).
# --------------------------------------------------------------------------------


class _ChainCarry(eqx.Module):
    state: SamplerState
    adaptation: AdaptationState


class _Record(eqx.Module):
    position: PyTree[Array]
    logdensity: Float[Array, ""]
    theta_star: PyTree[Array] | None
    theta: PyTree[Array] | None
    info: SamplerInfo
    step_size: Float[Array, ""]


def _tuned(sampler: Sampler, adaptation: AdaptationState) -> Sampler:
    if adaptation.inverse_mass_matrix is None:
        return eqx.tree_at(lambda s: s.step_size, sampler, adaptation.step_size)
    return eqx.tree_at(
        lambda s: (s.step_size, s.inverse_mass_matrix),
        sampler,
        (adaptation.step_size, adaptation.inverse_mass_matrix),
    )


def _chain_keys(key_data, key_impl: str):
    key = jr.wrap_key_data(key_data, impl=key_impl)
    setup_key, run_key = jr.split(key)
    return setup_key, run_key


def _transition(sampler, run_key, carry: _ChainCarry, step, flags, sample_theta):
    key = jr.fold_in(run_key, step)
    key_step, key_adapt, key_theta = jr.split(key, 3)
    tuned = _tuned(sampler, carry.adaptation)
    state, info = tuned.step(key_step, carry.state)
    adaptation = jax.lax.cond(
        flags.is_warmup,
        lambda a: adapt(tuned, key_adapt, a, state, info.acceptance_rate, flags),
        lambda a: a,
        carry.adaptation,
    )
    theta = None
    if sample_theta:
        marginal = sampler.marginal

        def draw(_):
            return marginal.sample_theta(key_theta, state.position, state.theta_star)

        def skip(_):
            return jtu.tree_map(lambda x: jnp.full_like(x, jnp.nan), state.theta_star)

        theta = jax.lax.cond(flags.is_warmup, skip, draw, None)
    record = _Record(
        position=state.position,
        logdensity=state.logdensity,
        theta_star=state.theta_star,
        theta=theta,
        info=info,
        step_size=tuned.step_size,
    )
    return _ChainCarry(state, adaptation), record


def _over_chains(fn, batched, shared, mesh, vectorized: bool):
    """`fn(shared, one_chain)` for every chain of `batched` (leading axis): `vmap`
    or a sequential `lax.map` on each device, with `shard_map` across a mesh."""

    def local(batched, shared):
        if vectorized:
            return eqx.filter_vmap(lambda b: fn(shared, b))(batched)
        return jax.lax.map(lambda b: fn(shared, b), batched)

    if mesh is None:
        return local(batched, shared)
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PartitionSpec(_AXIS), PartitionSpec()),
        out_specs=PartitionSpec(_AXIS),
        check_vma=False,
    )(batched, shared)


def _setup_impl(
    sampler,
    key_data,
    positions,
    inverse_mass,
    target_accept,
    *,
    key_impl,
    search,
    welford_dense,
    mesh,
    vectorized,
):
    dynamic, static = eqx.partition(sampler, eqx.is_array)

    def one(shared, batched):
        dynamic, inverse_mass, target_accept = shared
        sampler = eqx.combine(dynamic, static)
        key_data, position = batched
        setup_key, _ = _chain_keys(key_data, key_impl)
        state = sampler.init(position)
        # A strongly typed copy, so that the adaptation's carry keeps its type.
        step_size = jnp.asarray(sampler.step_size, sampler.step_size.dtype)
        if search:
            tuned = sampler
            if inverse_mass is not None:
                tuned = eqx.tree_at(
                    lambda s: s.inverse_mass_matrix, sampler, inverse_mass
                )
            step_size = find_reasonable_step_size(tuned, setup_key, state, step_size)
        if welford_dense is None:
            welford = None
        else:
            flat = TreeRaveller(state.position).ravel(state.position)
            welford = welford_init(flat.shape[0], welford_dense, flat.dtype)
        adaptation = AdaptationState(
            step_size=step_size,
            inverse_mass_matrix=inverse_mass,
            dual_averaging=dual_averaging_init(step_size),
            welford=welford,
            target_accept=jnp.asarray(target_accept, step_size.dtype),
        )
        return _ChainCarry(state, adaptation)

    return _over_chains(
        one,
        (key_data, positions),
        (dynamic, inverse_mass, target_accept),
        mesh,
        vectorized,
    )


_setup = eqx.filter_jit(_setup_impl)


def _advance_impl(
    sampler,
    key_data,
    carry,
    flags,
    start,
    num_steps,
    *,
    key_impl,
    sample_theta,
    mesh,
    vectorized,
):
    """Run `num_steps` (at most the length of `flags`) transitions of every chain,
    from global iteration `start`; returns the new carry and the records, padded
    to the chunk length."""
    dynamic, static = eqx.partition(sampler, eqx.is_array)
    chunk = flags.is_warmup.shape[0]

    def one(shared, batched):
        dynamic, flags, start, num_steps = shared
        sampler = eqx.combine(dynamic, static)
        key_data, carry = batched
        _, run_key = _chain_keys(key_data, key_impl)

        def transition(carry, i):
            step_flags = jtu.tree_map(lambda f: f[i], flags)
            return _transition(
                sampler, run_key, carry, start + i, step_flags, sample_theta
            )

        template = eqx.filter_eval_shape(transition, carry, 0)[1]
        buffers = jtu.tree_map(
            lambda s: jnp.zeros((chunk, *s.shape), s.dtype), template
        )

        def body(i, loop):
            carry, buffers = loop
            carry, record = transition(carry, i)
            buffers = jtu.tree_map(lambda b, r: b.at[i].set(r), buffers, record)
            return carry, buffers

        return jax.lax.fori_loop(0, num_steps, body, (carry, buffers))

    return _over_chains(
        one, (key_data, carry), (dynamic, flags, start, num_steps), mesh, vectorized
    )


# A module-level jitted function, so that every run with the same structure (model
# type and shapes, number of chains, chunk length, options) shares one compilation.
_advance = eqx.filter_jit(_advance_impl)


# --------------------------------------------------------------------------------
# Devices.
# --------------------------------------------------------------------------------


def _mesh_size(num_chains: int, num_devices: int, num_processes: int) -> int:
    """How many devices the chains are split across: all of them when they divide
    `num_chains`, else (on one host) the largest number that does."""
    if num_devices <= 1 or num_chains % num_devices == 0:
        return num_devices
    if num_processes > 1:
        raise ValueError(
            f"`num_chains={num_chains}` must be a multiple of the number of devices "
            f"({num_devices}) when running on several hosts."
        )
    return max(d for d in range(1, num_devices + 1) if num_chains % d == 0)


def _choose_mesh(num_chains: int) -> Mesh | None:
    devices = jax.devices()
    count = _mesh_size(num_chains, len(devices), jax.process_count())
    if count <= 1:
        return None
    return Mesh(np.asarray(devices[:count]), (_AXIS,))


def _place(tree, mesh: Mesh | None, batched: bool):
    """Put the arrays of `tree` on the mesh: split along the leading (chain) axis
    when `batched`, else replicated. Works for several processes as well, as every
    process holds the whole host array."""
    if mesh is None:
        return jtu.tree_map(lambda x: jnp.asarray(x) if eqx.is_array(x) else x, tree)
    sharding = NamedSharding(mesh, PartitionSpec(_AXIS) if batched else PartitionSpec())

    def place(x):
        if not eqx.is_array(x):
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jtu.tree_map(place, tree)


def _to_host(tree):
    def fetch(x):
        if not isinstance(x, jax.Array):
            return x if not eqx.is_array(x) else np.asarray(x)
        if x.is_fully_addressable:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jtu.tree_map(fetch, tree)


# --------------------------------------------------------------------------------
# Progress bar.
# --------------------------------------------------------------------------------


def _progress_wanted(progress_bar: bool) -> bool:
    if not progress_bar or os.environ.get("CI"):
        return False
    if jax.process_index() != 0:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    def __init__(self, enabled: bool, total: int, initial: int, num_warmup: int):
        self.bar = None
        self.num_warmup = num_warmup
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm comes with the arviz extra
            return
        try:
            width, height = os.get_terminal_size(sys.stderr.fileno())
        except (AttributeError, OSError, ValueError):
            width = height = 0
        sized = width > 0 and height > 1
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=self._phase(initial),
            unit="it",
            file=sys.stderr,
            # A terminal that reports no size (e.g. a bare pseudo-terminal) would
            # otherwise get no bar at all from tqdm.
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            nrows=None if sized else 20,
        )

    def _phase(self, step: int) -> str:
        return "warmup" if step < self.num_warmup else "sampling"

    def update(self, step, n, warmup_divergences, divergences, step_size):
        if self.bar is None:
            return
        self.bar.set_description(self._phase(step + n), refresh=False)
        self.bar.set_postfix(
            divergences=int(
                divergences if step + n > self.num_warmup else warmup_divergences
            ),
            step_size=f"{float(np.mean(step_size)):.3g}",
            refresh=False,
        )
        self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------
# Validation.
# --------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    return int(value)


def _check_key(key) -> jax.Array:
    if not isinstance(key, jax.Array):
        raise TypeError(
            "`key` must be a JAX PRNG key such as `jax.random.key(0)`, got "
            f"{type(key).__name__}."
        )
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"`key` must be a single key, got shape {key.shape}.")
        return key
    if key.shape == (2,) and key.dtype == jnp.uint32:
        return jr.wrap_key_data(key)
    raise ValueError(
        "`key` must be a single JAX PRNG key (`jax.random.key(seed)`); got an array "
        f"of shape {key.shape} and dtype {key.dtype}."
    )


def _unwrap_numpyro(model, initial_position, need_position: bool = True):
    """`(model, initial_position, postprocess)`: a [`lapsample.NumPyroModel`][]
    becomes its marginal, starts at its `phi_init` unless told otherwise, and names
    the draws by its constrained sites."""
    if isinstance(model, NumPyroModel):
        if initial_position is None:
            initial_position = model.phi_init
        return model.marginal, initial_position, model.postprocess
    if initial_position is None and need_position:
        raise TypeError(
            "`sample` needs an `initial_position` (a value of phi) for a "
            f"{type(model).__name__}; only a model from `lapsample.from_numpyro` "
            "brings its own."
        )
    return model, initial_position, None


def _with_postprocess(results: SampleResults, postprocess) -> SampleResults:
    if postprocess is None:
        return results
    return eqx.tree_at(
        lambda r: r.postprocess, results, postprocess, is_leaf=lambda x: x is None
    )


def _as_sampler(model) -> Sampler:
    if isinstance(model, Sampler):
        return model
    if isinstance(model, AbstractMarginal):
        return Sampler(
            model, Multinomial(), NoUTurn(), step_size=1.0, inverse_mass_matrix=1.0
        )
    raise TypeError(
        "`model` must be a `lapsample.Sampler` or a marginal such as "
        "`lapsample.LaplaceMarginal(log_joint, theta_init)`; got "
        f"{type(model).__name__}."
    )


def _inverse_mass_array(sampler: Sampler):
    """The sampler's inverse mass matrix as an array, or `None` for a custom
    metric."""
    imm = sampler.inverse_mass_matrix
    if isinstance(imm, DiagonalMetric | DenseMetric):
        return imm.inverse_mass_matrix
    if isinstance(imm, jax.Array | np.ndarray):
        return imm
    return None


def _per_chain_positions(initial_position, num_chains, chain_axis):
    leaves, treedef = jtu.tree_flatten(initial_position)
    if not leaves:
        raise ValueError("`initial_position` has no arrays.")
    out = []
    for path, leaf in jtu.tree_flatten_with_path(initial_position)[0]:
        array = np.asarray(leaf)
        if not np.issubdtype(array.dtype, np.inexact):
            array = array.astype(np.asarray(jnp.zeros((), float)).dtype)
        if chain_axis:
            if array.ndim == 0 or array.shape[0] != num_chains:
                raise ValueError(
                    "With `chain_axis=True`, every leaf of `initial_position` needs a "
                    f"leading axis of length num_chains={num_chains}; "
                    f"`initial_position{jtu.keystr(path)}` has shape {array.shape}."
                )
        else:
            array = np.broadcast_to(array, (num_chains, *array.shape)).copy()
        out.append(array)
    return jtu.tree_unflatten(treedef, out)


def _jitter_positions(base, jitter: float, key, chains, attempt: int):
    """Uniform(-jitter, jitter) noise on each coordinate of the given chains."""
    if jitter == 0.0:
        return base
    leaves, treedef = jtu.tree_flatten(base)
    new = [x.copy() for x in leaves]
    for c in chains:
        chain_key = jr.fold_in(jr.fold_in(key, c), attempt)
        for j, x in enumerate(leaves):
            noise = jr.uniform(
                jr.fold_in(chain_key, j), x.shape[1:], minval=-jitter, maxval=jitter
            )
            new[j][c] = x[c] + np.asarray(noise, x.dtype)
    return jtu.tree_unflatten(treedef, new)


# --------------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------------


class _Run:
    """Everything about a run that is fixed when it starts (host side)."""

    def __init__(
        self, sampler: Sampler, settings: dict, key_data: np.ndarray, key_impl: str
    ):
        self.sampler = sampler
        self.settings = settings
        self.key_data = key_data
        self.key_impl = key_impl
        num_chains = settings["num_chains"]
        self.mesh = _choose_mesh(num_chains)
        method = settings["chain_method"]
        self.vectorized = method == "vectorized"
        self.total = settings["num_warmup"] + settings["num_samples"]
        self.flags = schedule_flags(settings["num_warmup"], settings["num_samples"])
        self.chunk = settings["chunk_size"]
        # What warm-up adapts.
        num_warmup = settings["num_warmup"]
        base_mass = _inverse_mass_array(sampler)
        self.adapt_mass = (
            settings["adapt_mass_matrix"] and num_warmup >= MIN_WARMUP_FOR_MASS
        )
        self.search = num_warmup > 0 or settings["model_is_marginal"]
        self.base_mass = base_mass

    def initial_inverse_mass(self, size, dtype):
        if not self.adapt_mass:
            return None
        base = 1.0 if self.base_mass is None else self.base_mass
        return initial_inverse_mass_matrix(
            base, size, self.settings["dense_mass"], dtype
        )

    def setup_kwargs(self):
        return dict(
            key_impl=self.key_impl,
            search=self.search,
            welford_dense=self.settings["dense_mass"] if self.adapt_mass else None,
            mesh=self.mesh,
            vectorized=self.vectorized,
        )

    def setup(self, positions):
        first = jtu.tree_map(lambda x: x[0], positions)
        raveller = TreeRaveller(first)
        inverse_mass = self.initial_inverse_mass(raveller.size, raveller.dtype)
        mesh = self.mesh
        return _setup(
            _place(self.sampler, mesh, False),
            _place(self.key_data, mesh, True),
            _place(positions, mesh, True),
            _place(inverse_mass, mesh, False),
            _place(np.asarray(self.settings["target_accept"]), mesh, False),
            **self.setup_kwargs(),
        )

    def setup_shape(self, positions):
        first = jtu.tree_map(lambda x: x[0], positions)
        raveller = TreeRaveller(first)
        inverse_mass = self.initial_inverse_mass(raveller.size, raveller.dtype)
        return eqx.filter_eval_shape(
            _setup_impl,
            self.sampler,
            self.key_data,
            positions,
            inverse_mass,
            np.asarray(self.settings["target_accept"]),
            **self.setup_kwargs(),
        )

    def chunk_flags(self, step: int, n: int) -> StepFlags:
        def take(name):
            out = np.zeros(self.chunk, bool)
            out[:n] = self.flags[name][step : step + n]
            return out

        return StepFlags(
            is_warmup=take("is_warmup"),
            in_window=take("in_window"),
            window_end=take("window_end"),
            is_last_warmup=take("is_last_warmup"),
        )

    def advance_kwargs(self):
        return dict(
            key_impl=self.key_impl,
            sample_theta=self.settings["sample_theta"],
            mesh=self.mesh,
            vectorized=self.vectorized,
        )

    def records_shape(self, carry):
        out = eqx.filter_eval_shape(
            _advance_impl,
            self.sampler,
            self.key_data,
            carry,
            self.chunk_flags(0, 0),
            np.int32(0),
            np.int32(0),
            **self.advance_kwargs(),
        )
        return out[1]


def _empty_like_records(leaves, length: int):
    """Host arrays `(chains, length, ...)` like the `(chains, chunk, ...)` leaves of
    the records."""

    def empty(s):
        shape = (s.shape[0], length, *s.shape[2:])
        if np.issubdtype(s.dtype, np.inexact):
            return np.full(shape, np.nan, s.dtype)
        return np.zeros(shape, s.dtype)

    return [empty(s) for s in leaves]


def _settings_for(
    *,
    num_warmup,
    num_samples,
    num_chains,
    target_accept,
    dense_mass,
    adapt_mass_matrix,
    chain_axis,
    jitter,
    sample_theta,
    save_warmup,
    chain_method,
    chunk_size,
    model_is_marginal,
):
    return dict(
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
        model_is_marginal=model_is_marginal,
    )


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
    Only process 0 shows the progress bar and writes the checkpoint, so put the
    checkpoint on a file system process 0 can write to, and resume the same way
    (every process calls `resume` with the same file).

    **Progress.** The chains advance in compiled chunks of `chunk_size`
    iterations (default: about 50 chunks per run) driven from Python. A `tqdm`
    progress bar shows the phase (warm-up or sampling), divergences so far, the mean
    step size and the speed in iterations per second. It is shown only when
    standard error is a terminal and the `CI` environment variable is not set;
    `progress_bar=False` turns it off. The chunk size never changes the draws:
    the randomness of iteration `i` of a chain comes from `fold_in(chain_key, i)`.

    **Checkpoints.** With `checkpoint="run.lsmp"` the chain states, the adaptation
    state, the keys, the iteration count and the draws so far are written at the
    end of every chunk, atomically (a temporary file in the same directory, then a
    rename), so a run killed at any moment leaves the last complete checkpoint.
    [`lapsample.resume`][] continues it and gives draws identical, bit for bit, to
    an uninterrupted run. An existing file is not overwritten unless
    `overwrite=True`, and a file that is not a lapsample checkpoint never is.

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
      (needs a [`lapsample.LaplaceMarginal`][]).
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
      (needs a [`lapsample.LaplaceMarginal`][]); the result is
      `results.laplace_check` and `results.summary()` reports it. `resume` does not
      run it: call `lapsample.laplace_check(results, key)` afterwards.

    **Returns:**

    A [`lapsample.SampleResults`][].

    **Raises:**

    `ValueError` for invalid settings, and for a starting point where the log
    density is not finite; `LaplaceMarginal.check` errors for a
    model that fails at the starting point; `FileExistsError` if `checkpoint`
    exists and `overwrite` is `False`.

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
    key = _check_key(key)
    model, initial_position, postprocess = _unwrap_numpyro(model, initial_position)
    sampler = _as_sampler(model)
    num_warmup = _check_int("num_warmup", num_warmup, 0)
    num_samples = _check_int("num_samples", num_samples, 1)
    if num_chains is None:
        if chain_axis:
            leaves = jtu.tree_leaves(initial_position)
            if not leaves or np.ndim(leaves[0]) == 0:
                raise ValueError(
                    "With `chain_axis=True`, the leaves of `initial_position` need a "
                    "leading chain axis."
                )
            num_chains = int(np.shape(leaves[0])[0])
        else:
            num_chains = 4
    num_chains = _check_int("num_chains", num_chains, 1)
    if isinstance(target_accept, bool) or not isinstance(
        target_accept, int | float | np.floating
    ):
        raise TypeError(f"`target_accept` must be a float, got {target_accept!r}.")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"`target_accept` must be in (0, 1), got {target_accept}.")
    if isinstance(jitter, bool) or not isinstance(jitter, int | float | np.floating):
        raise TypeError(f"`jitter` must be a float, got {jitter!r}.")
    if not (math.isfinite(float(jitter)) and float(jitter) >= 0.0):
        raise ValueError(f"`jitter` must be finite and at least 0, got {jitter}.")
    for name, value in (
        ("chain_axis", chain_axis),
        ("sample_theta", sample_theta),
        ("save_warmup", save_warmup),
        ("adapt_mass_matrix", adapt_mass_matrix),
        ("progress_bar", progress_bar),
        ("overwrite", overwrite),
        ("laplace_check", laplace_check),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    if dense_mass is not None and not isinstance(dense_mass, bool):
        raise TypeError(
            f"`dense_mass` must be True, False or None, got {dense_mass!r}."
        )
    if chain_method is None:
        chain_method = "sequential" if jax.default_backend() == "cpu" else "vectorized"
    if chain_method not in ("vectorized", "sequential"):
        raise ValueError(
            '`chain_method` must be "vectorized" or "sequential", got '
            f"{chain_method!r}."
        )
    total = num_warmup + num_samples
    if chunk_size is None:
        chunk_size = max(1, math.ceil(total / _TARGET_CHUNKS))
    chunk_size = _check_int("chunk_size", chunk_size, 1)
    chunk_size = min(chunk_size, total)
    if sample_theta and not callable(getattr(sampler.marginal, "sample_theta", None)):
        raise ValueError(
            "`sample_theta=True` needs a marginal with a latent to draw (a "
            "`lapsample.LaplaceMarginal` or `lapsample.LatentGaussianMarginal`, "
            "which have a `sample_theta` method); the model's marginal is a "
            f"{type(sampler.marginal).__name__}."
        )
    if laplace_check and not isinstance(sampler.marginal, _CHECKABLE):
        raise ValueError(
            "`laplace_check=True` needs a `lapsample.LaplaceMarginal` or a "
            "`lapsample.LatentGaussianMarginal` (a latent to check); the model's "
            f"marginal is a {type(sampler.marginal).__name__}."
        )
    base_mass = _inverse_mass_array(sampler)
    if dense_mass is None:
        dense_mass = base_mass is not None and np.ndim(base_mass) == 2
    if adapt_mass_matrix and num_warmup >= MIN_WARMUP_FOR_MASS and base_mass is None:
        raise ValueError(
            "Warm-up adapts the mass matrix, which needs the sampler's "
            "`inverse_mass_matrix` to be an array, a `DiagonalMetric` or a "
            f"`DenseMetric`; got a {type(sampler.inverse_mass_matrix).__name__}. "
            "Pass `adapt_mass_matrix=False` to adapt the step size only."
        )
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if os.path.exists(checkpoint):
            if not _checkpoint.is_checkpoint(checkpoint):
                raise FileExistsError(
                    f"{checkpoint} exists and is not a lapsample checkpoint; it will "
                    "not be overwritten. Choose another `checkpoint` path."
                )
            if not overwrite:
                raise FileExistsError(
                    f"The checkpoint {checkpoint} exists. Continue it with "
                    f"`lapsample.resume({checkpoint!r}, model)`, or pass "
                    "`overwrite=True` to start afresh."
                )
        try:
            structure = _checkpoint.encode_structure(initial_position)
        except TypeError as e:
            raise TypeError(
                "Checkpoints need `initial_position` made of arrays in dicts (with "
                f"string keys), lists and tuples: {e}."
            ) from None
    else:
        structure = None

    positions = _per_chain_positions(initial_position, num_chains, chain_axis)
    first = jtu.tree_map(lambda x: jnp.asarray(x[0]), positions)
    if isinstance(sampler.marginal, LaplaceMarginal):
        # Clear errors for a model that fails at the start, before any compilation.
        sampler.marginal.check(first)

    settings = _settings_for(
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        target_accept=float(target_accept),
        dense_mass=bool(dense_mass),
        adapt_mass_matrix=adapt_mass_matrix,
        chain_axis=chain_axis,
        jitter=float(jitter),
        sample_theta=sample_theta,
        save_warmup=save_warmup,
        chain_method=chain_method,
        chunk_size=chunk_size,
        model_is_marginal=not isinstance(model, Sampler),
    )
    key_impl = str(jr.key_impl(key))
    jitter_key, chains_key = jr.split(key)
    key_data = np.asarray(jr.key_data(jr.split(chains_key, num_chains)))
    run = _Run(sampler, settings, key_data, key_impl)

    base = positions
    positions = _jitter_positions(base, float(jitter), jitter_key, range(num_chains), 0)
    carry = None
    for attempt in range(1, 101 if jitter > 0 else 2):
        carry = run.setup(positions)
        logdensity = np.asarray(_to_host(carry.state.logdensity))
        bad = np.flatnonzero(~np.isfinite(logdensity))
        if bad.size == 0:
            break
        if jitter > 0 and attempt < 100:
            # Redraw the starts of the failing chains only, from the given point.
            redrawn = _jitter_positions(
                base, float(jitter), jitter_key, bad.tolist(), attempt
            )
            positions = jtu.tree_map(
                lambda old, new: np.where(
                    np.isin(np.arange(num_chains), bad).reshape(
                        (-1,) + (1,) * (old.ndim - 1)
                    ),
                    new,
                    old,
                ),
                positions,
                redrawn,
            )
            continue
        raise ValueError(
            f"The log density is not finite at the starting point of chain(s) "
            f"{bad.tolist()} (values {logdensity[bad].tolist()}): the inner solve may "
            "have failed there, or the point is outside the support. Choose another "
            "`initial_position`" + (" or a smaller `jitter`." if jitter > 0 else ".")
        )

    results = _loop(
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
    results = _with_postprocess(results, postprocess)
    if laplace_check:
        # A stream of its own, so the draws are the same with or without the check.
        check = _laplace_check(
            results,
            jr.fold_in(key, _LAPLACE_CHECK_STREAM),
            num_phi=min(20, num_chains * num_samples),
        )
        results = eqx.tree_at(
            lambda r: r.laplace_check, results, check, is_leaf=lambda x: x is None
        )
    return results


def _loop(
    run: _Run,
    carry,
    positions,
    *,
    start,
    resumed,
    progress_bar,
    checkpoint,
    structure,
    model,
):
    s = run.settings
    num_warmup, num_samples = s["num_warmup"], s["num_samples"]
    if resumed is None:
        # Allocated from the first chunk's records.
        draws = warmup = record_def = div_index = None
        warmup_divergences = np.zeros(s["num_chains"], np.int64)
    else:
        draws, warmup, counters, record_def, div_index = resumed
        warmup_divergences = np.asarray(counters["warmup_divergences"], np.int64)

    mesh = run.mesh
    sampler = _place(run.sampler, mesh, False)
    key_data = _place(run.key_data, mesh, True)
    step = start
    progress = _Progress(_progress_wanted(progress_bar), run.total, step, num_warmup)
    fingerprint = (
        _checkpoint.model_fingerprint(model) if checkpoint is not None else None
    )
    try:
        while step < run.total:
            n = min(run.chunk, run.total - step)
            flags = _place(run.chunk_flags(step, n), mesh, False)
            carry, records = _advance(
                sampler,
                key_data,
                carry,
                flags,
                _place(np.int32(step), mesh, False),
                _place(np.int32(n), mesh, False),
                **run.advance_kwargs(),
            )
            host_records = _to_host(records)
            host, record_def = jtu.tree_flatten(host_records)
            if draws is None:
                draws = _empty_like_records(host, num_samples)
                if s["save_warmup"]:
                    warmup = _empty_like_records(host, num_warmup)
                div_index = _leaf_index(host, host_records.info.is_divergent)
            # Iterations step .. step + n - 1: warm-up first, then draws.
            n_warm = max(0, min(num_warmup - step, n))
            if n_warm > 0:
                warmup_divergences += host[div_index][:, :n_warm].sum(axis=1)
                if warmup is not None:
                    for dst, src in zip(warmup, host):
                        dst[:, step : step + n_warm] = src[:, :n_warm]
            if n > n_warm:
                lo = step + n_warm - num_warmup
                for dst, src in zip(draws, host):
                    dst[:, lo : lo + n - n_warm] = src[:, n_warm:n]
            step += n
            filled = max(0, step - num_warmup)
            progress.update(
                step - n,
                n,
                int(warmup_divergences.sum()),
                int(draws[div_index][:, :filled].sum()),
                _to_host(carry.adaptation.step_size),
            )
            if checkpoint is not None:
                # Every process takes part in gathering the state; one writes it.
                host_carry = _to_host(carry)
            if checkpoint is not None and jax.process_index() == 0:
                _write_checkpoint(
                    checkpoint,
                    run,
                    host_carry,
                    positions,
                    structure,
                    fingerprint,
                    step,
                    draws,
                    warmup,
                    dict(warmup_divergences=warmup_divergences.tolist()),
                )
    finally:
        progress.close()

    return _results(run, carry, record_def, draws, warmup, warmup_divergences)


def _leaf_index(leaves, target) -> int:
    for i, leaf in enumerate(leaves):
        if leaf is target:
            return i
    raise AssertionError("record leaf not found")  # pragma: no cover


def _stats(record, sampler: Sampler) -> dict[str, np.ndarray]:
    info = record.info
    trajectory = sampler.trajectory
    depth = np.asarray(info.tree_depth)
    if isinstance(trajectory, NoUTurn):
        reached = depth >= trajectory.max_tree_depth
    else:
        reached = np.zeros(depth.shape, bool)
    return dict(
        lp=np.asarray(record.logdensity),
        acceptance_rate=np.asarray(info.acceptance_rate),
        diverging=np.asarray(info.is_divergent, bool),
        energy=np.asarray(info.energy),
        step_size=np.asarray(record.step_size),
        n_steps=np.asarray(info.num_integration_steps),
        tree_depth=depth,
        reached_max_treedepth=reached,
        inner_steps=np.asarray(info.inner_steps_max),
        inner_failed=np.asarray(info.inner_failures),
    )


def _results(
    run, carry, record_def, draws, warmup, warmup_divergences
) -> SampleResults:
    s = run.settings
    records = jtu.tree_unflatten(record_def, draws)
    host_carry = _to_host(carry)
    adaptation = host_carry.adaptation
    inverse_mass = adaptation.inverse_mass_matrix
    if inverse_mass is None and run.base_mass is not None:
        first = jtu.tree_map(lambda x: x[0, 0], records.position)
        size = TreeRaveller(first).size
        base = np.asarray(run.base_mass)
        if base.ndim == 0:
            base = np.full((size,), base)
        inverse_mass = np.broadcast_to(base, (s["num_chains"], *base.shape)).copy()
    if warmup is not None:
        warm = jtu.tree_unflatten(record_def, warmup)
        warmup_phi = warm.position
        warmup_stats = _stats(warm, run.sampler)
    else:
        warmup_phi = warmup_stats = None
    return SampleResults(
        phi=records.position,
        theta_star=records.theta_star,
        theta=records.theta if s["sample_theta"] else None,
        sample_stats=_stats(records, run.sampler),
        warmup_phi=warmup_phi,
        warmup_sample_stats=warmup_stats,
        step_size=np.asarray(adaptation.step_size),
        inverse_mass_matrix=None if inverse_mass is None else np.asarray(inverse_mass),
        final_state=host_carry.state,
        num_warmup=s["num_warmup"],
        num_warmup_divergences=np.asarray(warmup_divergences),
        sampler=run.sampler,
    )


# --------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------


def _write_checkpoint(
    path, run, carry, positions, structure, fingerprint, step, draws, warmup, counters
):
    s = run.settings
    num_warmup = s["num_warmup"]
    filled = max(0, step - num_warmup)
    arrays = {"key_data": run.key_data}
    for i, leaf in enumerate(jtu.tree_leaves(carry)):
        arrays[f"carry/{i}"] = np.asarray(leaf)
    for i, leaf in enumerate(jtu.tree_leaves(positions)):
        arrays[f"positions/{i}"] = np.asarray(leaf)
    for i, leaf in enumerate(draws):
        arrays[f"draws/{i}"] = leaf[:, :filled]
    if warmup is not None:
        for i, leaf in enumerate(warmup):
            arrays[f"warmup/{i}"] = leaf[:, : min(step, num_warmup)]
    header = dict(
        settings=s,
        key_impl=run.key_impl,
        structure=structure,
        fingerprint=fingerprint,
        step=step,
        counters=counters,
        complete=step >= run.total,
    )
    _checkpoint.write(path, header, arrays)


def resume(
    checkpoint: str | os.PathLike,
    model: Sampler | AbstractMarginal | NumPyroModel,
    *,
    progress_bar: bool = True,
) -> SampleResults:
    """Continue a run of [`lapsample.sample`][] from its checkpoint file.

    The model holds callables, which cannot be stored reliably, so pass the same
    `model` again; the checkpoint keeps a fingerprint of its structure, array shapes,
    dtypes and data, and a different model is refused. Everything else (key,
    settings, chain and adaptation states, draws so far) comes from the file. The
    run goes on writing checkpoints to the same file, and the draws are identical,
    bit for bit, to those of an uninterrupted run. A finished checkpoint returns
    its results at once.

    **Arguments:**

    - `checkpoint`: the checkpoint file written by `sample(..., checkpoint=...)`.
    - `model`: the same `Sampler` or marginal that was passed to `sample`.
    - `progress_bar`: as for [`lapsample.sample`][].

    **Returns:**

    A [`lapsample.SampleResults`][].

    **Raises:**

    `ValueError` if the file is truncated or not a lapsample checkpoint (it is left
    untouched), or was written for a different model; `FileNotFoundError` if it
    does not exist.
    """
    model, _, postprocess = _unwrap_numpyro(model, None, need_position=False)
    path = os.fspath(checkpoint)
    header, arrays = _checkpoint.read(path)
    try:
        settings = header["settings"]
        step = int(header["step"])
        fingerprint = header["fingerprint"]
        structure = header["structure"]
        key_impl = header["key_impl"]
        counters = header["counters"]
    except (KeyError, TypeError, ValueError) as e:
        raise _checkpoint.CheckpointError(
            f"{path} is not a usable lapsample checkpoint: its header lacks {e}. The "
            "file was left unchanged."
        ) from None
    if _checkpoint.model_fingerprint(model) != fingerprint:
        raise _checkpoint.CheckpointError(
            f"The checkpoint {path} was written for a different model: the model "
            "passed to `resume` differs in its structure, array shapes or dtypes, or "
            "data. Pass the same model that was given to `sample`."
        )
    sampler = _as_sampler(model)
    run = _Run(sampler, settings, arrays["key_data"], key_impl)

    def entries(prefix):
        names = sorted(
            (n for n in arrays if n.startswith(prefix + "/")),
            key=lambda n: int(n.split("/")[1]),
        )
        return [arrays[n] for n in names]

    positions = _checkpoint.decode_structure(structure, entries("positions"))
    carry_template = run.setup_shape(positions)
    carry_leaves = entries("carry")
    template_leaves, carry_def = jtu.tree_flatten(carry_template)
    _check_leaves(path, "chain state", template_leaves, carry_leaves)
    carry = jtu.tree_unflatten(carry_def, [jnp.asarray(x) for x in carry_leaves])
    carry = _place(carry, run.mesh, True)

    template = run.records_shape(carry_template)
    template_leaves, record_def = jtu.tree_flatten(template)
    div_index = _leaf_index(template_leaves, template.info.is_divergent)
    draws = _empty_like_records(template_leaves, settings["num_samples"])
    saved = entries("draws")
    _check_leaves(path, "draws", draws, saved, axis=1)
    filled = max(0, step - settings["num_warmup"])
    for dst, src in zip(draws, saved):
        dst[:, :filled] = src
    warmup = None
    if settings["save_warmup"]:
        warmup = _empty_like_records(template_leaves, settings["num_warmup"])
        saved = entries("warmup")
        _check_leaves(path, "warm-up draws", warmup, saved, axis=1)
        for dst, src in zip(warmup, saved):
            dst[:, : src.shape[1]] = src
    results = _loop(
        run,
        carry,
        positions,
        start=step,
        resumed=(draws, warmup, counters, record_def, div_index),
        progress_bar=progress_bar,
        checkpoint=path,
        structure=structure,
        model=model,
    )
    return _with_postprocess(results, postprocess)


def _check_leaves(path, what, expected, got, axis=None):
    def same(e, g):
        e_shape = tuple(e.shape)
        g_shape = tuple(g.shape)
        if axis is not None:
            e_shape = e_shape[:axis] + e_shape[axis + 1 :]
            g_shape = g_shape[:axis] + g_shape[axis + 1 :]
        return e_shape == g_shape and np.dtype(e.dtype) == np.dtype(g.dtype)

    if len(expected) != len(got) or not all(same(e, g) for e, g in zip(expected, got)):
        raise _checkpoint.CheckpointError(
            f"The {what} in {path} do not match the model and settings (different "
            "shapes or dtypes); it was written for a different model or by another "
            "version of lapsample."
        )
