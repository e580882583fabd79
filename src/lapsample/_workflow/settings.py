"""The settings of a run and the preparation of its inputs."""

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .._marginal.base import AbstractLaplaceMarginal, AbstractMarginal
from .._marginal.laplace import resolve_hessian
from .._metric import DenseMetric, DiagonalMetric, metric_from_inverse_mass_matrix
from .._numpyro import numpyro_postprocess, NumPyroModel
from .._nuts import NoUTurn
from .._output.sample_results import SampleResults
from .._proposal import Multinomial
from .._sampler import Sampler
from .._validate import check_bool, check_int, check_real_tree
from .schedule import MIN_WARMUP_FOR_MASS


# Aim for about this many chunks per run (progress updates and checkpoints).
TARGET_CHUNKS = 50


def unwrap_numpyro(model, initial_position, need_position: bool = True):
    """`(model, initial_position, source)`: a [`lapsample.NumPyroModel`][]
    becomes its marginal and starts at its `phi_init` unless told otherwise;
    `source` (the NumPyro model, or the log joint of a marginal built by
    `from_numpyro`, else `None`) lets `with_postprocess` name the draws by the
    model's constrained sites, also for its marginal (or a `Sampler` on it) given
    on its own."""
    if isinstance(model, NumPyroModel):
        if initial_position is None:
            initial_position = model.phi_init
        return model.marginal, initial_position, model
    if initial_position is None and need_position:
        raise TypeError(
            "`sample` needs an `initial_position` (a value of phi) for a "
            f"{type(model).__name__}; only a model from `lapsample.from_numpyro` "
            "brings its own."
        )
    # `model.marginal` of a NumPyro model (or a `Sampler` on it) names its draws
    # by the model's constrained sites too: never `tau` holding log tau.
    marginal = model.marginal if isinstance(model, Sampler) else model
    source = marginal.log_joint if numpyro_postprocess(marginal) is not None else None
    return model, initial_position, source


def with_postprocess(results: SampleResults, source, phi_order=None) -> SampleResults:
    """`results` with the user's order of `phi` and, for a NumPyro model (`source`
    from `unwrap_numpyro`), its constrained sites and, where the source has them,
    pointwise log-likelihoods."""
    results = dataclasses.replace(results, phi_order=phi_order)
    if source is None:
        return results
    return eqx.tree_at(
        lambda r: (r.postprocess, r.pointwise_log_likelihood),
        results,
        (source.postprocess, getattr(source, "pointwise_log_likelihood", None)),
        is_leaf=lambda x: x is None,
    )


def as_sampler(model) -> Sampler:
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


def inverse_mass_array(sampler: Sampler):
    """The sampler's inverse mass matrix as an array (a dict mirroring phi as it
    is), or `None` for a custom metric."""
    imm = sampler.inverse_mass_matrix
    if isinstance(imm, DiagonalMetric | DenseMetric):
        return imm.inverse_mass_matrix
    if isinstance(imm, jax.Array | np.ndarray | dict):
        return imm
    return None


def prepare_at_start(sampler: Sampler, first) -> Sampler:
    """`sampler` made concrete at the first chain's start `first`, before anything
    compiles (`sample` and `resume` alike): a dict inverse mass mapped onto the
    flattened layout, and the default Hessian strategy's choice made."""
    sampler = resolve_inverse_mass(sampler, first)
    marginal = resolve_hessian(sampler.marginal, first)
    return eqx.tree_at(lambda s: s.marginal, sampler, marginal)


def resolve_inverse_mass(sampler: Sampler, position) -> Sampler:
    """A dict inverse mass matrix mirroring phi becomes the vector over the
    flattened `position` (sorted keys), before anything compiles; a clear error
    when it does not mirror `position`."""
    if not isinstance(sampler.inverse_mass_matrix, dict):
        return sampler
    metric = metric_from_inverse_mass_matrix(sampler.inverse_mass_matrix, position)
    return eqx.tree_at(
        lambda s: s.inverse_mass_matrix, sampler, metric.inverse_mass_matrix
    )


def per_chain_positions(initial_position, num_chains, chain_axis):
    leaves, treedef = jtu.tree_flatten(initial_position)
    if not leaves:
        raise ValueError("`initial_position` has no arrays.")
    check_real_tree(initial_position, "initial_position")
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


def jitter_positions(base, jitter: float, key, chains, attempt: int):
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


class RunSettings(eqx.Module):
    """What a run of [`lapsample.sample`][] was told, after defaults: fixed when it
    starts, stored in the checkpoint header (as JSON, with these field names) and
    read back by [`lapsample.resume`][]. Host-side only: nothing here is traced."""

    num_warmup: int
    num_samples: int
    num_chains: int
    target_accept: float
    dense_mass: bool
    adapt_mass_matrix: bool
    chain_axis: bool
    jitter: float
    sample_theta: bool
    save_warmup: bool
    chain_method: str
    chunk_size: int
    model_is_marginal: bool
    thinning: int = 1
    # The names of phi's variables in the order the user wrote them (output order;
    # `None` in checkpoints from before it was stored).
    phi_order: tuple[str, ...] | None = eqx.field(
        default=None, converter=lambda x: None if x is None else tuple(x)
    )

    @property
    def total(self) -> int:
        return self.num_warmup + self.num_samples

    @property
    def vectorized(self) -> bool:
        return self.chain_method == "vectorized"

    def to_header(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> "RunSettings":
        """Raises `KeyError` for a missing field and `TypeError` for a header that
        is not a mapping (the checkpoint reader turns both into its own error).
        A field with a default may be missing (a checkpoint from before it)."""
        fields = dataclasses.fields(cls)
        missing = dataclasses.MISSING
        return cls(
            **{f.name: header[f.name] for f in fields if f.default is missing}
            | {f.name: header[f.name] for f in fields if f.name in header}
        )

    @classmethod
    def from_arguments(
        cls,
        sampler: Sampler,
        initial_position,
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
        model_is_marginal: bool,
        thinning=1,
    ) -> "RunSettings":
        """Validate the arguments of `sample` and fill in the defaults, before
        anything compiles; each error names the argument and the fix."""
        num_warmup = check_int("num_warmup", num_warmup, 0)
        num_samples = check_int("num_samples", num_samples, 1)
        thinning = check_int("thinning", thinning, 1)
        if thinning > num_samples:
            raise ValueError(
                f"`thinning={thinning}` is more than `num_samples={num_samples}`: no "
                "draw would be kept. Lower `thinning` or raise `num_samples`."
            )
        for name, value in (
            ("chain_axis", chain_axis),
            ("sample_theta", sample_theta),
            ("save_warmup", save_warmup),
            ("adapt_mass_matrix", adapt_mass_matrix),
        ):
            check_bool(name, value)
        if num_chains is None:
            num_chains = 4
            if chain_axis:
                leaves = jtu.tree_leaves(initial_position)
                if not leaves or np.ndim(leaves[0]) == 0:
                    raise ValueError(
                        "With `chain_axis=True`, the leaves of `initial_position` "
                        "need a leading chain axis."
                    )
                num_chains = int(np.shape(leaves[0])[0])
        num_chains = check_int("num_chains", num_chains, 1)
        if isinstance(target_accept, bool) or not isinstance(
            target_accept, int | float | np.floating
        ):
            raise TypeError(f"`target_accept` must be a float, got {target_accept!r}.")
        if not 0.0 < float(target_accept) < 1.0:
            raise ValueError(f"`target_accept` must be in (0, 1), got {target_accept}.")
        if isinstance(jitter, bool) or not isinstance(
            jitter, int | float | np.floating
        ):
            raise TypeError(f"`jitter` must be a float, got {jitter!r}.")
        if not (math.isfinite(float(jitter)) and float(jitter) >= 0.0):
            raise ValueError(f"`jitter` must be finite and at least 0, got {jitter}.")
        if dense_mass is not None and not isinstance(dense_mass, bool):
            raise TypeError(
                f"`dense_mass` must be True, False or None, got {dense_mass!r}."
            )
        if chain_method is None:
            cpu = jax.default_backend() == "cpu"
            chain_method = "sequential" if cpu else "vectorized"
        if chain_method not in ("vectorized", "sequential"):
            raise ValueError(
                '`chain_method` must be "vectorized" or "sequential", got '
                f"{chain_method!r}."
            )
        total = num_warmup + num_samples
        if chunk_size is None:
            chunk_size = max(1, math.ceil(total / TARGET_CHUNKS))
        chunk_size = min(check_int("chunk_size", chunk_size, 1), total)
        if sample_theta and not isinstance(sampler.marginal, AbstractLaplaceMarginal):
            raise ValueError(
                "`sample_theta=True` needs a marginal with a latent, an "
                "`lapsample.AbstractLaplaceMarginal` such as "
                "`lapsample.LaplaceMarginal` or `lapsample.LatentGaussianMarginal`; "
                f"the model's marginal is a {type(sampler.marginal).__name__}."
            )
        base_mass = inverse_mass_array(sampler)
        if dense_mass is None:
            dense_mass = base_mass is not None and np.ndim(base_mass) == 2
        if (
            adapt_mass_matrix
            and num_warmup >= MIN_WARMUP_FOR_MASS
            and base_mass is None
        ):
            raise ValueError(
                "Warm-up adapts the mass matrix, which needs the sampler's "
                "`inverse_mass_matrix` to be an array, a `DiagonalMetric` or a "
                f"`DenseMetric`; got a {type(sampler.inverse_mass_matrix).__name__}. "
                "Pass `adapt_mass_matrix=False` to adapt the step size only."
            )
        return cls(
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
            model_is_marginal=model_is_marginal,
            thinning=thinning,
        )
