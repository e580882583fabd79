"""The settings of a run and the preparation of its inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

from .._marginal.base import AbstractMarginal
from .._metric import DenseMetric, DiagonalMetric
from .._numpyro import NumPyroModel
from .._nuts import NoUTurn
from .._output.sample_results import SampleResults
from .._proposal import Multinomial
from .._sampler import Sampler


# Aim for about this many chunks per run (progress updates and checkpoints).
TARGET_CHUNKS = 50


def unwrap_numpyro(model, initial_position, need_position: bool = True):
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


def with_postprocess(results: SampleResults, postprocess) -> SampleResults:
    if postprocess is None:
        return results
    return eqx.tree_at(
        lambda r: r.postprocess, results, postprocess, is_leaf=lambda x: x is None
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
    """The sampler's inverse mass matrix as an array, or `None` for a custom
    metric."""
    imm = sampler.inverse_mass_matrix
    if isinstance(imm, DiagonalMetric | DenseMetric):
        return imm.inverse_mass_matrix
    if isinstance(imm, jax.Array | np.ndarray):
        return imm
    return None


def per_chain_positions(initial_position, num_chains, chain_axis):
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


def settings_for(
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
