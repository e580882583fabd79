"""`detect_hessian`: find the cheapest strategy whose structure holds, by probing
the Hessian at a few points."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from .._misc import NegativeLogJoint, TreeRaveller
from .banded import band_probes, BandedHessian
from .base import AbstractHessianStrategy, hvp, structure_agrees
from .block import BlockDiagonalHessian
from .dense import DenseHessian
from .diagonal import DiagonalHessian


class HessianDetection(eqx.Module):
    """What [`lapsample.detect_hessian`][] found.

    - `strategy`: the Hessian strategy it chose (structured ones keep their
      structure check on, so a structure that changes elsewhere is still caught).
    - `bandwidth`: the largest `|i − j|` with `A[i, j] ≠ 0` seen at any point, or
      `None` when it exceeds `max_size` (the Hessian was then not read).
    - `block_size`: the smallest block size (a divisor of `d` up to `max_size`)
      whose diagonal blocks hold every non-zero seen (1 for a diagonal Hessian),
      or `None`.
    - `reason`: one sentence saying what was seen and why this strategy.
    """

    strategy: AbstractHessianStrategy
    bandwidth: int | None = eqx.field(static=True)
    block_size: int | None = eqx.field(static=True)
    reason: str = eqx.field(static=True)


def _band_of(fn, theta, phi, width: int, key):
    """`(band, agrees)`: the entries `A[i, i + o]` for `|o| <= width` as an array
    `(2·width + 1, d)` (offset `o` in row `o + width`), read from `2·width + 1`
    coloured products, and whether one product with a random vector agrees with
    the band (it does not when some entry lies further from the diagonal)."""
    d = theta.shape[0]
    colours = 2 * width + 1
    idx = np.arange(d)
    z = jr.normal(key, (d,), theta.dtype)
    probes = jnp.concatenate([band_probes(d, width, theta.dtype), z[None]])
    products = jax.vmap(lambda v: hvp(fn, theta, phi, v))(probes)
    coloured, hz = products[:-1], products[-1]
    offsets = np.arange(-width, width + 1)
    cols = idx[None, :] + offsets[:, None]  # (2w+1, d): column of A[i, i+o]
    valid = (cols >= 0) & (cols < d)
    band = jnp.where(valid, coloured[np.where(valid, cols, 0) % colours, idx], 0.0)
    shifted = jnp.where(valid, z[np.where(valid, cols, 0)], 0.0)
    bz = jnp.sum(band * shifted, axis=0)
    scale = jnp.sum(jnp.abs(band * shifted), axis=0)
    # The strategies' own structure test; it lets non-finite entries pass, which
    # are refused here.
    agrees = structure_agrees(hz, bz, scale) & jnp.all(jnp.isfinite(hz))
    return band, agrees


@eqx.filter_jit
def _read(fn, points, probe_keys, phi, width: int):
    return jax.vmap(lambda t, k: _band_of(fn, t, phi, width, k))(points, probe_keys)


def detect_hessian(
    log_joint: Callable,
    theta_init: PyTree,
    phi: PyTree,
    *,
    key: PRNGKeyArray | None = None,
    num_points: int = 3,
    max_size: int = 16,
    verbose: bool = True,
) -> HessianDetection:
    """Read the sparsity pattern of `A = -∇²_θ log_joint(theta, phi)` and choose a
    Hessian strategy: [`lapsample.DiagonalHessian`][],
    [`lapsample.BlockDiagonalHessian`][], [`lapsample.BandedHessian`][], or
    [`lapsample.DenseHessian`][] when no structure up to `max_size` is found.

    ```python
    found = lapsample.detect_hessian(log_joint, theta_init, phi_init)
    # detect_hessian: BandedHessian(bandwidth=1): ...
    marginal = lapsample.LaplaceMarginal(log_joint, theta_init, hessian=found.strategy)
    ```

    **How.** At `theta_init` and `num_points − 1` random points around it (each
    latent moved by a normal draw of scale `0.1·(1 + |theta_init|)`), the band of
    half-width `max_size` is read from `2·max_size + 1` coloured Hessian-vector
    products, and one more product with a random vector checks that nothing lies
    outside that band. If everything lies inside, the pattern of non-zeros over all
    points gives the bandwidth and the smallest block size; the cheapest strategy
    that covers the pattern is chosen (a diagonal; blocks of `k` cost `k` products
    and banded `b` costs `2b + 1`, so blocks win at equal cover). Otherwise the
    Hessian has couplings further than `max_size` apart in the flattened `theta`
    and `DenseHessian()` is chosen (for large `d` consider reordering `theta` or a
    [`lapsample.LineaxHessian`][]). Cost: `num_points · (2·max_size + 2)`
    Hessian-vector products, in one compiled batch.

    **Limits.** A pattern seen at a few points is evidence, not proof: couplings
    that vanish exactly at all the points tried (a term switched on by a data value,
    a `where`, a `relu`) are missed. The structured strategies returned keep
    `verify=True`, so such a coupling met later gives `RESULTS.structure_violated`
    (and a failed [`lapsample.LaplaceMarginal.check`][]) rather than a wrong answer.
    Entries below `1e-12` of the largest in magnitude count as zero.

    **Arguments:**

    - `log_joint`: `log_joint(theta, phi) -> scalar`, as for
      [`lapsample.LaplaceMarginal`][].
    - `theta_init`: a PyTree of arrays, the latent's starting point; the strategy
      refers to its flattened order.
    - `phi`: hyperparameters at which to look (e.g. the sampler's starting point).
    - `key`: a JAX PRNG key for the random points and the check vector (default
      `jax.random.key(0)`).
    - `num_points`: how many points to look at (at least 1).
    - `max_size`: the widest band or largest block looked for.
    - `verbose`: print the choice and the reason.

    **Returns:**

    A [`lapsample.HessianDetection`][]: `.strategy` to pass as `hessian=`, and what
    was seen.
    """
    if not (isinstance(num_points, int) and num_points >= 1):
        raise ValueError(f"`num_points` must be an integer >= 1, got {num_points!r}.")
    if not (isinstance(max_size, int) and max_size >= 1):
        raise ValueError(f"`max_size` must be an integer >= 1, got {max_size!r}.")
    key = jr.key(0) if key is None else key
    raveller = TreeRaveller(theta_init)
    theta0 = raveller.ravel(theta_init)
    if not jnp.issubdtype(theta0.dtype, jnp.floating):
        raise TypeError(
            f"`theta_init` must hold floating-point arrays, got {theta0.dtype}."
        )
    d = theta0.shape[0]
    width = min(max_size, max(d - 1, 0))

    fn = NegativeLogJoint(log_joint, raveller)
    point_key, probe_key = jr.split(key)
    noise = jr.normal(point_key, (num_points - 1, d), theta0.dtype)
    points = jnp.concatenate(
        [theta0[None], theta0 + 0.1 * (1 + jnp.abs(theta0)) * noise]
    )
    probe_keys = jr.split(probe_key, num_points)

    bands, agrees = _read(fn, points, probe_keys, phi, width)
    bands = np.asarray(bands)
    if not (np.all(np.asarray(agrees)) and np.all(np.isfinite(bands))):
        reason = (
            f"the Hessian couples latents more than {max_size} apart in the flattened "
            "theta (or is not finite) at the points tried, so no band or block "
            "structure up to `max_size` covers it"
        )
        return _report(DenseHessian(), None, None, reason, verbose)
    magnitude = np.max(np.abs(bands), axis=(0,))  # (2w+1, d)
    nonzero = magnitude > 1e-12 * max(float(np.max(magnitude)), np.finfo(float).tiny)
    offsets = np.arange(-width, width + 1)
    used = offsets[np.any(nonzero, axis=1)]
    bandwidth = int(np.max(np.abs(used))) if used.size else 0
    block_size = _smallest_block(nonzero, offsets, d, max_size)
    if bandwidth == 0:
        strategy = DiagonalHessian()
        reason = "the Hessian is diagonal at every point tried"
    elif block_size is not None and block_size <= 2 * bandwidth + 1:
        strategy = BlockDiagonalHessian(block_size=block_size)
        reason = (
            f"every non-zero lies in diagonal blocks of {block_size} consecutive "
            f"latents (bandwidth {bandwidth}); blocks need {block_size} "
            f"Hessian-vector products per factorisation, a band {2 * bandwidth + 1}"
        )
    else:
        strategy = BandedHessian(bandwidth=bandwidth)
        reason = (
            f"the Hessian is banded with bandwidth {bandwidth} at every point tried"
            + ("" if block_size is None else f" (blocks of {block_size} cost more)")
        )
    return _report(strategy, bandwidth, block_size, reason, verbose)


def _smallest_block(nonzero, offsets, d: int, max_size: int) -> int | None:
    rows = np.arange(d)[None, :]
    cols = rows + offsets[:, None]
    # From 1: a diagonal pattern is blocks of one latent.
    for k in range(1, max_size + 1):
        if d % k:
            continue
        if not np.any(nonzero & (rows // k != cols // k)):
            return k
    return None


def _report(strategy, bandwidth, block_size, reason, verbose) -> HessianDetection:
    reason = f"{strategy!r}: {reason}."
    if verbose:
        print(f"detect_hessian: {reason}")
    return HessianDetection(
        strategy=strategy, bandwidth=bandwidth, block_size=block_size, reason=reason
    )
