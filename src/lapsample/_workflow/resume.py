"""`resume` continues a run from its checkpoint file; `continue_run` draws more from
the results of a finished run."""

import dataclasses
import os

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PRNGKeyArray

from .._marginal.base import AbstractMarginal
from .._numpyro import NumPyroModel
from .._output.sample_results import SampleResults
from .._sampler import Sampler, SamplerState
from .._validate import check_bool, check_int, check_key
from . import checkpoint as checkpoint_file
from .chains import evaluate_chains
from .devices import place_on_mesh, to_host
from .driver import chain_keys, writing_checkpoint
from .loop import check_leaves, Run, run_loop
from .settings import (
    as_sampler,
    inverse_mass_array,
    prepare_at_start,
    RunSettings,
    unwrap_numpyro,
    with_postprocess,
)
from .threads import check_blas_threads


def resume(
    checkpoint: str | os.PathLike,
    model: Sampler | AbstractMarginal | NumPyroModel,
    *,
    num_samples: int | None = None,
    progress_bar: bool = True,
    blas_threads: int | None = None,
) -> SampleResults:
    """Continue a run of [`lapsample.sample`][] from its checkpoint file, or extend a
    finished one with more draws.

    The model holds callables, which cannot be stored reliably, so pass the same
    `model` again. Two checks refuse a different one before anything runs: a
    fingerprint of its structure, array shapes, dtypes and data, and a
    recomputation: the log density and its gradient are evaluated again at every
    chain's position in the checkpoint (the inner solve warm-started at the stored
    latent mode) and must equal the stored ones (to a relative `eps ** (1/2)` for the
    value and `eps ** (1/3)` for the gradient, far above the round-off and inner
    solver tolerance of the same model, far below what any change of data or code
    gives). The second catches what no fingerprint of Python code can see: a changed
    global the log joint reads, a changed helper function or method. The same model
    defined or imported elsewhere (`from run_script import marginal`) is accepted.

    Everything else (key, settings, chain and adaptation states, draws so far) comes
    from the file. The run goes on writing checkpoints to the same file (holding the
    lock beside it, as `sample` does), and the draws are identical, bit for bit, to
    those of an uninterrupted run. A finished checkpoint returns its results at once
    (it is only read: several processes may do so together, even while another
    holds the lock),
    or, with a larger `num_samples`, goes on sampling with the adapted step sizes,
    metrics and latent warm starts: the draws are those that one run with the larger
    `num_samples` would have given, bit for bit.

    **Arguments:**

    - `checkpoint`: the checkpoint file written by `sample(..., checkpoint=...)`.
    - `model`: the same `Sampler` or marginal that was passed to `sample`.
    - `num_samples`: the total number of draws per chain (default: the checkpoint's).
      A larger value extends the run; it cannot be smaller than the draws already
      in the file.
    - `progress_bar`, `blas_threads`: as for [`lapsample.sample`][].

    **Returns:**

    A [`lapsample.SampleResults`][].

    **Raises:**

    `ValueError` ([`lapsample.CheckpointError`][]) if the file is truncated or not a
    lapsample checkpoint (it is left untouched), or was written for a different model
    or data; `FileNotFoundError` if it does not exist; `FileExistsError` if another
    run holds its lock; `OSError` if its directory cannot be written to.
    """
    model, _, numpyro_model = unwrap_numpyro(model, None, need_position=False)
    check_bool("progress_bar", progress_bar)
    blas_threads = check_blas_threads(blas_threads)
    path = os.fspath(checkpoint)
    header, arrays = checkpoint_file.read(path)
    try:
        settings = RunSettings.from_header(header["settings"])
        step = int(header["step"])
        fingerprint = header["fingerprint"]
        structure = header["structure"]
        key_impl = header["key_impl"]
        counters = header["counters"]
        legacy = int(header.get("fingerprint_version", 1)) < 2
    except (KeyError, TypeError, ValueError) as e:
        raise checkpoint_file.CheckpointError(
            f"{path} is not a usable lapsample checkpoint: its header lacks {e}. The "
            "file was left unchanged."
        ) from None
    if checkpoint_file.model_fingerprint(model, legacy) != fingerprint:
        raise checkpoint_file.CheckpointError(
            f"The checkpoint {path} was written for a different model: the model "
            "passed to `resume` differs in its structure, array shapes or dtypes, or "
            "data. Pass the same model that was given to `sample`."
        )
    filled = max(0, step - settings.num_warmup)
    if num_samples is not None:
        num_samples = check_int("num_samples", num_samples, 1)
        if num_samples < filled:
            raise ValueError(
                f"`num_samples={num_samples}` is fewer than the {filled} draws per "
                f"chain already in {path}: pass the new total (at least {filled}), "
                "or leave `num_samples` out to finish the run as it was started."
            )
        settings = dataclasses.replace(settings, num_samples=num_samples)
    # A finished checkpoint that is not extended is only read: no lock, so that
    # several processes may load its results at once.
    writes = step < settings.total
    with writing_checkpoint(path if writes else None):

        def entries(prefix):
            names = sorted(
                (n for n in arrays if n.startswith(prefix + "/")),
                key=lambda n: int(n.split("/")[1]),
            )
            return [arrays[n] for n in names]

        positions = checkpoint_file.decode_structure(structure, entries("positions"))
        first = jtu.tree_map(lambda x: jnp.asarray(x[0]), positions)
        # The Hessian detection again, at the first chain's start (as `sample` did).
        sampler = prepare_at_start(as_sampler(model), first)
        run = Run(sampler, settings, arrays["key_data"], key_impl, blas_threads)
        carry_template = run.setup_shape(positions)
        carry_leaves = entries("carry")
        template_leaves, carry_def = jtu.tree_flatten(carry_template)
        check_leaves(path, "chain state", template_leaves, carry_leaves)
        carry = jtu.tree_unflatten(carry_def, carry_leaves)
        check_same_model(path, run, carry.state)
        carry = place_on_mesh(jtu.tree_map(jnp.asarray, carry), run.mesh, True)

        store = run.host_draws(run.records_shape(carry_template))
        saved_draws = entries("draws")
        check_leaves(path, "draws", store.draws, saved_draws, axis=1)
        saved_warmup = entries("warmup") if settings.save_warmup else None
        if saved_warmup is not None:
            check_leaves(path, "warm-up draws", store.warmup, saved_warmup, axis=1)
        store.restore(saved_draws, saved_warmup, counters)
        results = run_loop(
            run,
            carry,
            positions,
            start=step,
            resumed=store,
            progress_bar=progress_bar,
            checkpoint=path,
            structure=structure,
            model=model,
        )
    return with_postprocess(results, numpyro_model, settings.phi_order)


def _differs(new, old, rtol: float) -> np.ndarray:
    """Per chain (leading axis): whether `new` and `old` differ by more than `rtol`
    relative to `1 + max|old|` (a NaN or infinity must match exactly)."""
    new = np.asarray(new, np.float64).reshape(new.shape[0], -1)
    old = np.asarray(old, np.float64).reshape(old.shape[0], -1)
    scale = 1.0 + np.max(np.abs(np.where(np.isfinite(old), old, 0.0)), axis=1)
    with np.errstate(invalid="ignore"):
        close = np.abs(new - old) <= rtol * scale[:, None]
    same = (new == old) | (np.isnan(new) & np.isnan(old)) | close
    return ~np.all(same, axis=1)


def check_same_model(path: str, run: Run, stored: SamplerState) -> None:
    """Evaluate the model at every chain's checkpointed position (the inner solve
    warm-started at the stored mode) and refuse a log density or gradient that
    differs from the stored one.

    The same model and data reproduce the stored values bit for bit, or up to
    round-off where the evaluation compiles differently (another device or batch
    shape), and up to the inner solver's tolerance: at most `eps ** (1/2)` relative
    for the solvers wrapping Optimistix, `eps ** (3/4)` for `Newton`. The value
    errs only to second order in the mode's error, the gradient to first order: so
    the value is compared at `rtol = 10 · eps ** (1/2)` (1.5e-7 in float64), the
    gradient at `eps ** (1/3)` (6e-6), both relative to `1 + |stored|`."""
    recomputed = to_host(
        evaluate_chains(
            place_on_mesh(run.sampler, run.mesh, False),
            place_on_mesh(stored.position, run.mesh, True),
            place_on_mesh(stored.theta_star, run.mesh, True),
            mesh=run.mesh,
            vectorized=run.vectorized,
        )
    )
    old_value = np.asarray(stored.logdensity)
    new_value = np.asarray(recomputed.logdensity)
    eps = float(np.finfo(old_value.dtype).eps)
    value_bad = _differs(new_value[:, None], old_value[:, None], 10 * eps**0.5)
    grad_bad = _differs(
        _flat(recomputed.logdensity_grad), _flat(stored.logdensity_grad), eps ** (1 / 3)
    )
    bad = value_bad | grad_bad
    if not bad.any():
        return
    chain = int(np.flatnonzero(bad)[0])
    what = (
        f"log density {float(new_value[chain])!r} where the run that wrote the "
        f"checkpoint had {float(old_value[chain])!r}"
        if value_bad[chain]
        else "a different gradient of the log density than the run that wrote the "
        "checkpoint"
    )
    raise checkpoint_file.CheckpointError(
        f"The checkpoint {path} was written for a different model: at chain "
        f"{chain}'s position in the checkpoint, the model passed to `resume` has "
        f"{what} ({int(bad.sum())} of {bad.size} chains differ). Its code or data "
        "differ from that run's (a changed data array or global, log joint, helper "
        "function or method); continuing would mix draws from two posteriors. Pass "
        "the same model and data, or start a new run with `lapsample.sample`. The "
        "file was left unchanged."
    )


def _flat(tree) -> np.ndarray:
    """The leaves of `tree` (leading chain axis) as one `(chains, n)` array."""
    leaves = [np.asarray(x) for x in jtu.tree_leaves(tree)]
    return np.concatenate([x.reshape(x.shape[0], -1) for x in leaves], axis=1)


def continue_run(
    key: PRNGKeyArray,
    results: SampleResults,
    num_samples: int,
    *,
    chain_method: str | None = None,
    chunk_size: int | None = None,
    progress_bar: bool = True,
    blas_threads: int | None = None,
) -> SampleResults:
    """Draw `num_samples` more per chain after a finished run of
    [`lapsample.sample`][], without another warm-up (NumPyro's
    `mcmc.post_warmup_state = mcmc.last_state; mcmc.run(...)`).

    ```python
    results = lapsample.sample(key, marginal, phi_init, num_samples=1000)
    results = lapsample.continue_run(key, results, 1000)   # 2000 draws per chain
    ```

    Every chain goes on from its last state (`results.final_state`: position, log
    density, gradient and the latent mode that warm-starts the next inner solve)
    with its adapted step size and inverse mass matrix (`results.step_size`,
    `results.inverse_mass_matrix`). Iteration `i` of a chain draws its randomness
    from `key` and `i` exactly as in `sample`, so with the key of the original run
    the draws are those that one run with the total `num_samples` would have given,
    bit for bit (on the same device(s) and `chain_method`); another key gives an
    equally valid continuation. The returned results hold every draw: the
    previous ones first, then the new ones (`results.phi[:, n:]`), with the
    previous warm-up (if saved), the same names, order and (for a NumPyro model)
    constrained sites and log-likelihood; `laplace_check` is not
    carried over (call [`lapsample.laplace_check`][] again).

    To continue a run written to a checkpoint, call
    `lapsample.resume(path, model, num_samples=...)` with the new total instead: it
    continues the file, bit for bit as well.

    **Arguments:**

    - `key`: the JAX PRNG key (pass the original run's key for the draws of one
      longer run).
    - `results`: the [`lapsample.SampleResults`][] of `sample`, `resume` or
      `continue_run`.
    - `num_samples`: how many more draws per chain (at least 1).
    - `chain_method`, `chunk_size`, `progress_bar`, `blas_threads`: as for
      [`lapsample.sample`][] (`chunk_size` counts the new draws: default about 1/50
      of them).

    A run made with `thinning=k` continues unthinned (every new transition is
    kept) and its iteration count is that of the kept draws, so its continuation
    is a valid one but not that of one longer thinned run; use `resume(path,
    model, num_samples=...)` on its checkpoint for that.

    **Returns:**

    A [`lapsample.SampleResults`][] with `results.num_samples + num_samples` draws
    per chain.
    """
    key = check_key(key)
    if not isinstance(results, SampleResults):
        raise TypeError(
            "`results` must be the `lapsample.SampleResults` of `lapsample.sample`; "
            f"got {type(results).__name__}."
        )
    num_samples = check_int("num_samples", num_samples, 1)
    check_bool("progress_bar", progress_bar)
    blas_threads = check_blas_threads(blas_threads)
    done = results.num_samples
    imm = results.inverse_mass_matrix
    base = inverse_mass_array(results.sampler)
    if (
        imm is not None
        and base is not None
        and np.array_equal(np.broadcast_to(np.asarray(base), imm.shape), imm)
    ):
        imm = None  # the sampler's own metric was kept (or equals the adapted one)
    if chunk_size is None:
        chunk_size = max(1, -(-num_samples // 50))
    positions = results.final_state.position
    settings = RunSettings.from_arguments(
        results.sampler,
        positions,
        num_warmup=results.num_warmup,
        num_samples=done + num_samples,
        num_chains=results.num_chains,
        target_accept=0.8,  # warm-up only
        dense_mass=None if imm is None else imm.ndim == 3,
        adapt_mass_matrix=imm is not None,
        chain_axis=True,
        jitter=0.0,
        sample_theta=results.theta is not None,
        save_warmup=False,
        chain_method=chain_method,
        chunk_size=chunk_size,
        model_is_marginal=True,
    )
    _, key_data, key_impl = chain_keys(key, settings.num_chains)
    run = Run(results.sampler, settings, key_data, key_impl, blas_threads)
    template = run.setup_shape(positions)
    # The warm-up's own state (dual averaging, window variances) is no longer read
    # after warm-up: zeros of the right shapes stand in for it.
    carry = jtu.tree_map(lambda s: np.zeros(s.shape, s.dtype), template)
    adapted = eqx.tree_at(
        lambda a: a.step_size,
        carry.adaptation,
        np.asarray(results.step_size, template.adaptation.step_size.dtype),
    )
    if adapted.inverse_mass_matrix is not None:
        adapted = eqx.tree_at(
            lambda a: a.inverse_mass_matrix,
            adapted,
            np.asarray(imm, adapted.inverse_mass_matrix.dtype),
        )
    carry = eqx.tree_at(
        lambda c: (c.state, c.adaptation), carry, (results.final_state, adapted)
    )
    check_leaves(
        "`results`",
        "chain state",
        jtu.tree_leaves(template),
        jtu.tree_leaves(carry),
    )
    new = run_loop(
        run,
        place_on_mesh(carry, run.mesh, True),
        positions,
        start=settings.num_warmup + done,
        resumed=None,
        progress_bar=progress_bar,
        checkpoint=None,
        structure=None,
        model=results.sampler,
    )

    def join(new_leaf, old_leaf):
        out = np.array(new_leaf)
        out[:, :done] = old_leaf
        return out

    def joined(name):
        old = getattr(results, name)
        return None if old is None else jtu.tree_map(join, getattr(new, name), old)

    return dataclasses.replace(
        new,
        phi=joined("phi"),
        theta_star=joined("theta_star"),
        theta=joined("theta"),
        sample_stats=joined("sample_stats"),
        warmup_phi=results.warmup_phi,
        warmup_sample_stats=results.warmup_sample_stats,
        num_warmup_divergences=results.num_warmup_divergences,
        sampler=results.sampler,
        laplace_check=None,
        postprocess=results.postprocess,
        pointwise_log_likelihood=results.pointwise_log_likelihood,
        phi_order=results.phi_order,
    )
