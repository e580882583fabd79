"""The host loop of a run: advance chunk by chunk, record draws, report progress,
write checkpoints, and assemble the results."""

import contextlib

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

from .._marginal.base import result_at
from .._misc import TreeRaveller
from .._output.sample_results import SampleResults
from .._results import failure_fix
from .._sampler import Sampler
from .._trajectory import AbstractDynamicTrajectory
from . import checkpoint as checkpoint_file
from .adaptation import initial_inverse_mass_matrix
from .chains import advance_chains, advance_chains_impl, setup_chains, setup_chains_impl
from .devices import choose_mesh, place_on_mesh, to_host, wait_for_every_process
from .draws import HostDraws
from .progress import progress_meter
from .schedule import MIN_WARMUP_FOR_MASS, schedule_flags, StepFlags
from .settings import inverse_mass_array, jitter_positions, RunSettings
from .threads import limited_blas_threads


class Run:
    """Everything about a run that is fixed when it starts (host side)."""

    def __init__(
        self,
        sampler: Sampler,
        settings: RunSettings,
        key_data: np.ndarray,
        key_impl: str,
        blas_threads: int | None = None,
    ):
        self.sampler = sampler
        self.blas_threads = blas_threads
        self.settings = settings
        self.key_data = key_data
        self.key_impl = key_impl
        self.mesh = choose_mesh(settings.num_chains)
        self.vectorized = settings.vectorized
        self.total = settings.total
        self.flags = schedule_flags(settings.num_warmup, settings.num_samples)
        self.chunk = settings.chunk_size
        # What warm-up adapts.
        self.base_mass = inverse_mass_array(sampler)
        self.adapt_mass = (
            settings.adapt_mass_matrix and settings.num_warmup >= MIN_WARMUP_FOR_MASS
        )
        self.search = settings.num_warmup > 0 or settings.model_is_marginal

    def host_draws(self, records) -> HostDraws:
        """Host arrays for the draws, shaped like the records of one chunk."""
        s = self.settings
        return HostDraws(
            records, s.num_warmup, s.num_samples, s.thinning, s.save_warmup
        )

    def initial_inverse_mass(self, size, dtype):
        if not self.adapt_mass:
            return None
        base = 1.0 if self.base_mass is None else self.base_mass
        return initial_inverse_mass_matrix(base, size, self.settings.dense_mass, dtype)

    def setup_kwargs(self):
        return dict(
            key_impl=self.key_impl,
            search=self.search,
            welford_dense=self.settings.dense_mass if self.adapt_mass else None,
            mesh=self.mesh,
            vectorized=self.vectorized,
        )

    def setup(self, positions):
        first = jtu.tree_map(lambda x: x[0], positions)
        raveller = TreeRaveller(first)
        inverse_mass = self.initial_inverse_mass(raveller.size, raveller.dtype)
        mesh = self.mesh
        return setup_chains(
            place_on_mesh(self.sampler, mesh, False),
            place_on_mesh(self.key_data, mesh, True),
            place_on_mesh(positions, mesh, True),
            place_on_mesh(inverse_mass, mesh, False),
            place_on_mesh(np.asarray(self.settings.target_accept), mesh, False),
            **self.setup_kwargs(),
        )

    def setup_shape(self, positions):
        first = jtu.tree_map(lambda x: x[0], positions)
        raveller = TreeRaveller(first)
        inverse_mass = self.initial_inverse_mass(raveller.size, raveller.dtype)
        return eqx.filter_eval_shape(
            setup_chains_impl,
            self.sampler,
            self.key_data,
            positions,
            inverse_mass,
            np.asarray(self.settings.target_accept),
            **self.setup_kwargs(),
        )

    def start_chains(self, positions, jitter_key):
        """Set up every chain from `positions` (jittered by `settings.jitter`);
        starts where the log density is not finite are redrawn, up to 100 times,
        and otherwise refused with a `ValueError`. Returns `(carry, positions)`."""
        jitter = self.settings.jitter
        num_chains = self.settings.num_chains
        base = positions
        positions = jitter_positions(base, jitter, jitter_key, range(num_chains), 0)
        for attempt in range(1, 101 if jitter > 0 else 2):
            with limited_blas_threads(self.blas_threads, self.mesh):
                carry = self.setup(positions)
            logdensity = np.asarray(to_host(carry.state.logdensity))
            bad = np.flatnonzero(~np.isfinite(logdensity))
            if bad.size == 0:
                return carry, positions
            if jitter > 0 and attempt < 100:
                # Redraw the starts of the failing chains only, from the given point.
                redrawn = jitter_positions(
                    base, jitter, jitter_key, bad.tolist(), attempt
                )
                failed = np.isin(np.arange(num_chains), bad)
                positions = jtu.tree_map(
                    lambda old, new: np.where(
                        failed.reshape((-1,) + (1,) * (old.ndim - 1)), new, old
                    ),
                    positions,
                    redrawn,
                )
                continue
            first = jtu.tree_map(lambda x: np.asarray(x)[bad[0]], positions)
            # Evaluated once more there, for its `RESULTS` code and the fix.
            reason = failure_fix(result_at(self.sampler.marginal, first))
            raise ValueError(
                f"The log density is not finite at the starting point of chain(s) "
                f"{bad.tolist()} (values {logdensity[bad].tolist()}). "
                + (
                    reason + " "
                    if reason
                    else "The inner solve may have failed there, or the point is "
                    "outside the support. "
                )
                + "Or choose another `initial_position`"
                + (" or a smaller `jitter`." if jitter > 0 else ".")
            )
        raise AssertionError("unreachable")  # pragma: no cover

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
            sample_theta=self.settings.sample_theta,
            mesh=self.mesh,
            vectorized=self.vectorized,
        )

    def records_shape(self, carry):
        out = eqx.filter_eval_shape(
            advance_chains_impl,
            self.sampler,
            self.key_data,
            carry,
            self.chunk_flags(0, 0),
            np.int32(0),
            np.int32(0),
            **self.advance_kwargs(),
        )
        return out[1]


def run_loop(
    run: Run,
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
    """Advance the chains from iteration `start` to the end; `resumed` is the
    `HostDraws` of a resumed run (else `None`: allocated from the first chunk)."""
    s = run.settings
    store = resumed
    mesh = run.mesh
    sampler = place_on_mesh(run.sampler, mesh, False)
    key_data = place_on_mesh(run.key_data, mesh, True)
    step = start
    progress = progress_meter(progress_bar, run.total, step, s.num_warmup)
    fingerprint = (
        checkpoint_file.model_fingerprint(model) if checkpoint is not None else None
    )
    blas = contextlib.ExitStack()
    try:
        blas.enter_context(limited_blas_threads(run.blas_threads, mesh))
        while step < run.total:
            n = min(run.chunk, run.total - step)
            flags = place_on_mesh(run.chunk_flags(step, n), mesh, False)
            carry, records = advance_chains(
                sampler,
                key_data,
                carry,
                flags,
                place_on_mesh(np.int32(step), mesh, False),
                place_on_mesh(np.int32(n), mesh, False),
                **run.advance_kwargs(),
            )
            host_records = to_host(records)
            if store is None:
                store = run.host_draws(host_records)
            store.add(step, n, jtu.tree_leaves(host_records))
            step += n
            progress.update(
                step - n,
                n,
                int(store.warmup_divergences.sum()),
                int(store.divergences.sum()),
                to_host(carry.adaptation.step_size),
            )
            if checkpoint is not None:
                # Every process takes part in gathering the state; one writes it.
                host_carry = to_host(carry)
            if checkpoint is not None and jax.process_index() == 0:
                _write_checkpoint(
                    checkpoint,
                    run,
                    host_carry,
                    positions,
                    structure,
                    fingerprint,
                    step,
                    store,
                )
        if checkpoint is not None:
            # Only process 0 writes: the others wait for its last checkpoint, so that
            # on every process the file is final when `sample` returns (a `resume`
            # that follows reads the same file everywhere).
            wait_for_every_process("lapsample checkpoint written")
    finally:
        blas.close()
        progress.close()

    return _results(run, carry, store)


def _stats(record, sampler: Sampler) -> dict[str, np.ndarray]:
    info = record.info
    trajectory = sampler.trajectory
    depth = np.asarray(info.tree_depth)
    if isinstance(trajectory, AbstractDynamicTrajectory):
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


def _results(run, carry, store: HostDraws) -> SampleResults:
    s = run.settings
    records = store.records()
    host_carry = to_host(carry)
    adaptation = host_carry.adaptation
    inverse_mass = adaptation.inverse_mass_matrix
    if inverse_mass is None and run.base_mass is not None:
        first = jtu.tree_map(lambda x: x[0, 0], records.position)
        size = TreeRaveller(first).size
        base = np.asarray(run.base_mass)
        if base.ndim == 0:
            base = np.full((size,), base)
        inverse_mass = np.broadcast_to(base, (s.num_chains, *base.shape)).copy()
    if store.warmup is not None:
        warm = store.records(warmup=True)
        warmup_phi = warm.position
        warmup_stats = _stats(warm, run.sampler)
    else:
        warmup_phi = warmup_stats = None
    return SampleResults(
        phi=records.position,
        theta_star=records.theta_star,
        theta=records.theta if s.sample_theta else None,
        sample_stats=_stats(records, run.sampler),
        warmup_phi=warmup_phi,
        warmup_sample_stats=warmup_stats,
        step_size=np.asarray(adaptation.step_size),
        inverse_mass_matrix=None if inverse_mass is None else np.asarray(inverse_mass),
        final_state=host_carry.state,
        num_warmup=s.num_warmup,
        num_warmup_divergences=store.warmup_divergences.copy(),
        sampler=run.sampler,
    )


# --------------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------------


def _write_checkpoint(path, run, carry, positions, structure, fingerprint, step, store):
    s = run.settings
    num_warmup = s.num_warmup
    filled = store.touched(step)
    arrays = {"key_data": run.key_data}
    for i, leaf in enumerate(jtu.tree_leaves(carry)):
        arrays[f"carry/{i}"] = np.asarray(leaf)
    for i, leaf in enumerate(jtu.tree_leaves(positions)):
        arrays[f"positions/{i}"] = np.asarray(leaf)
    for i, leaf in enumerate(store.draws):
        arrays[f"draws/{i}"] = leaf[:, :filled]
    if store.warmup is not None:
        for i, leaf in enumerate(store.warmup):
            arrays[f"warmup/{i}"] = leaf[:, : min(step, num_warmup)]
    header = dict(
        settings=s.to_header(),
        key_impl=run.key_impl,
        structure=structure,
        fingerprint=fingerprint,
        step=step,
        counters=store.counters(),
        complete=step >= run.total,
    )
    checkpoint_file.write(path, header, arrays)


def check_leaves(path, what, expected, got, axis=None):
    def same(e, g):
        e_shape = tuple(e.shape)
        g_shape = tuple(g.shape)
        if axis is not None:
            e_shape = e_shape[:axis] + e_shape[axis + 1 :]
            g_shape = g_shape[:axis] + g_shape[axis + 1 :]
        return e_shape == g_shape and np.dtype(e.dtype) == np.dtype(g.dtype)

    if len(expected) != len(got) or not all(same(e, g) for e, g in zip(expected, got)):
        raise checkpoint_file.CheckpointError(
            f"The {what} in {path} do not match the model and settings (different "
            "shapes or dtypes); it was written for a different model or by another "
            "version of lapsample."
        )
