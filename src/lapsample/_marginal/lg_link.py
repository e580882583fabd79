"""From latents to observations in the latent-Gaussian marginal: an index map and a
phi-dependent offset (fixed effects), as the linear predictor

    eta_i = theta[index_i] + offset_i(phi)     (INLA's eta = A theta + X beta with
                                               one 1 per row of A).

Each observation reads one latent, so `d eta_i / d theta_j` is 0 or 1 and the
log-likelihood's derivatives in `theta` are the per-observation derivatives summed
per latent (a segment sum): the Hessian in `theta` stays diagonal, and so do the
third derivatives. Every form of the marginal (the `B` Newton, the banded precision,
the cotangents, the draws) then runs unchanged on the summed likelihood, in the
latent's own length. The offset enters as a likelihood parameter: the cotangents
already account for parameters of the likelihood (its value, `ℓ'` through the mode
and `ℓ''` through the log-determinant), so its phi-gradient needs nothing new.

Also here: the shape checks of the marginal's inputs, made before compiling.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from .likelihoods import AbstractLikelihood


class LinkedLikelihood(AbstractLikelihood):
    """The log-likelihood as a function of the latent: observation `i` sees
    `theta[index[i]] + offset_i` (no index: `theta_i + offset_i`). `params` is the
    pair `(params of the observation likelihood, offset or None)`."""

    likelihood: AbstractLikelihood
    index: Int[Array, " n_obs"] | None
    num_latent: int = eqx.field(static=True)

    @property
    def quadratic(self):
        return self.likelihood.quadratic

    def derivatives(self, theta, params):
        inner_params, offset = params
        eta = theta if self.index is None else theta[self.index]
        if offset is not None:
            eta = eta + offset
        terms = self.likelihood.derivatives(eta, inner_params)
        if self.index is None:
            return terms
        return tuple(
            jax.ops.segment_sum(t, self.index, num_segments=self.num_latent)
            for t in terms
        )

    def curvature(self, theta, params):
        """`W = -∇²_θ ℓ`, diagonal: its diagonal."""
        return -self.derivatives(theta, params)[2]


def check_index(index) -> Array | None:
    """`index` as an integer array, refusing what cannot be an observation-to-latent
    map (checked at construction; its range is checked at the first call, when
    the latent's length is known)."""
    if index is None:
        return None
    arr = jnp.asarray(index)
    if arr.ndim != 1 or not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(
            "`index` must be a 1-D integer array with one entry per observation "
            f"(the latent it reads), got shape {arr.shape} and dtype {arr.dtype}. "
            "For group labels that are strings or floats, map them to 0, 1, … "
            "first (e.g. `np.unique(labels, return_inverse=True)[1]`)."
        )
    if not isinstance(index, jax.core.Tracer) and arr.size and int(arr.min()) < 0:
        raise ValueError(
            f"`index` has negative entries (smallest {int(arr.min())}); entries are "
            "positions in theta, 0 to n_latent - 1."
        )
    return arr


def _prior_matrix_shape(mat, precision_form: bool) -> int:
    if mat.ndim != 2 or not jnp.issubdtype(mat.dtype, jnp.floating):
        raise ValueError(
            "`covariance(phi)`/`precision(phi)` must return a 2-D floating array, "
            f"got shape {mat.shape} and dtype {mat.dtype}."
        )
    n = mat.shape[1]
    if not precision_form and mat.shape != (n, n):
        raise ValueError(
            f"`covariance(phi)` must return a square n × n matrix, got shape "
            f"{mat.shape}."
        )
    if precision_form and not 1 <= mat.shape[0] <= n:
        raise ValueError(
            "`precision(phi)` must return the lower bands of Q, shape "
            f"(bandwidth + 1, n) with bandwidth < n, got shape {mat.shape}."
        )
    return n


def check_link(index, design, precision) -> None:
    """The combinations of the observation-to-latent map and the prior's form."""
    if index is not None and design is not None:
        raise ValueError(
            "Give `index=` (one latent per observation) or `design=` (a matrix A, "
            "eta = A theta + offset), not both: an index map is the design matrix "
            "with a single 1 per row."
        )
    if design is not None and precision is not None:
        raise ValueError(
            "`design=` needs the covariance form (`covariance=phi -> K`): with a "
            "design matrix Q + AᵀWA is not banded. Use `index=` (W stays diagonal, "
            "Q + W banded) or give the prior as a covariance."
        )


def check_shapes(likelihood, link, mat, params, precision_form: bool) -> None:
    """Shapes are static: a mismatch of the prior's matrix, the index map or
    design matrix (`link`), the offset and the data is a user error, reported
    before compiling. `params` are the shapes of `(likelihood params, offset)`."""
    n = _prior_matrix_shape(mat, precision_form)
    inner_params, offset = params
    index = link
    if link is None:
        n_obs, what = n, f"a latent of length {n} (the size of the prior's matrix)"
    elif link.ndim == 2:
        n_obs, what = link.shape[0], f"{link.shape[0]} observations (`design`)"
        if link.shape[1] != n:
            raise ValueError(
                f"`design` has shape {link.shape}, but the prior's matrix has {n} "
                f"latents: it must have shape (n_obs, {n})."
            )
    else:
        n_obs, what = index.shape[0], f"{index.shape[0]} observations (`index`)"
        if not isinstance(index, jax.core.Tracer) and index.size:
            largest = int(np.max(np.asarray(index)))
            if largest >= n:
                raise ValueError(
                    f"`index` reads latent {largest}, but the prior's matrix has "
                    f"{n} latents (entries must be 0 to {n - 1})."
                )
    if offset is not None and offset.shape not in ((), (n_obs,)):
        raise ValueError(
            f"`offset(phi)` has shape {offset.shape}; it must be a scalar or have "
            f"one entry per observation, shape ({n_obs},)."
        )
    fix = (
        "the data and the prior's matrix disagree in length (give `index=` to "
        "map observations to latents)"
        if link is None
        else "the data and `index`/`design` disagree in length"
    )
    try:
        out = jax.eval_shape(
            likelihood.derivatives,
            jax.ShapeDtypeStruct((n_obs,), mat.dtype),
            inner_params,
        )
    except Exception as e:
        raise ValueError(
            f"The likelihood does not accept {what} with these "
            f"`likelihood_params` (if {fix}): {e}"
        ) from e
    if any(o.shape != (n_obs,) for o in out):
        raise ValueError(
            f"The likelihood's derivatives have shapes {[o.shape for o in out]}, "
            f"not ({n_obs},): {fix}."
        )
