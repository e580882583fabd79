"""Banded symmetric positive definite matrices as chains of blocks: factorisation,
solves, draws, log-determinant and the selected inverse.

The structured strategies ([`lapsample.BandedHessian`][], and
[`lapsample.BlockDiagonalHessian`][] for its small blocks) read the Hessian
`A = ∇²_θ fn` from a few Hessian-vector products by colouring
(`block_size` products for blocks, `2·bandwidth + 1` for a band), never from `d`
of them, and factorise it in `O(d·k²)` time and `O(d·k)` memory (`k` the block
size or bandwidth). Small `k × k` Cholesky factors and triangular solves are written
out here, unrolled over `k` and vectorised over the blocks: no batched LAPACK call
(whose vmapped form can hang inside loops on CPU with jaxlib 0.10).

A banded matrix of bandwidth `b` is block tridiagonal in blocks of `b` consecutive
entries, so the banded strategy runs the block-tridiagonal Cholesky recurrence

    C_I = B_{I-1} L_{I-1}⁻ᵀ,   L_I L_Iᵀ = A_II − C_I C_Iᵀ

(`B_{I-1} = A_{I,I-1}`) as one `lax.scan` over `d / b` blocks, and the band of
`A⁻¹` needed by the log-determinant's gradient with the matching backward
(Takahashi) recurrence. For bandwidth 1 every recurrence is scalar, either affine
(solves, selected inverse) or a linear-fractional map (the pivots), and maps of
either kind compose associatively, so off the CPU they run as
`lax.associative_scan`s of depth `log d`.

Both strategies check the declared structure with one extra Hessian-vector product
against a fixed pseudo-random vector, at every direct `factorise` and, inside the
Laplace marginal, once per inner solve on the factor at the mode (Newton iterates
without it and compares `H z` with `L Lᵀ z` at the end): a mismatch
makes the factor's `structure_ok` (and `positive_definite`) false, so the
marginal is `-inf` with the code `RESULTS.structure_violated`, and
`LaplaceMarginal.check` raises a `ValueError` before compilation.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float

from .._factor import AbstractStructuredFactor
from .small_blocks import (
    forward_substitute,
    identity_like,
    logdet_from_lower,
    mm,
    mT,
    mv,
    small_cholesky,
)


RECURRENCES = ("auto", "sequential", "associative")


def check_recurrences(value, cls: str):
    if value not in RECURRENCES:
        raise ValueError(
            f"`{cls}(recurrences=...)` must be 'auto', 'sequential' or "
            f"'associative', got {value!r}."
        )


def use_associative(recurrences: str) -> bool:
    """Whether bandwidth-1 recurrences run as associative scans. `'auto'` decides by
    JAX's default backend when the model is traced: a sequential `lax.scan` is the
    fastest form on a CPU (2–3× the associative one at T = 1000), but on a GPU it
    launches its body once per latent."""
    if recurrences == "auto":
        return jax.default_backend() != "cpu"
    return recurrences == "associative"


# --------------------------------------------------------------------------------
# Banded
# --------------------------------------------------------------------------------


class BandedFactor(AbstractStructuredFactor):
    """The factor of [`lapsample.BandedHessian`][], in block-tridiagonal form with
    blocks of `bandwidth` consecutive latents (the last padded with the identity):
    `A = L Lᵀ` with `L` block lower bidiagonal, diagonal blocks `lower[I]` and
    sub-diagonal blocks `sub[I] = L[I, I-1]` (`sub[0] = 0`), and the inverses
    `inverse_lower[I] = lower[I]⁻¹` of the diagonal blocks."""

    lower: Float[Array, "blocks b b"]
    sub: Float[Array, "blocks b b"]
    inverse_lower: Float[Array, "blocks b b"]
    positive_definite: Bool[Array, ""]
    structure_ok: Bool[Array, ""]
    size: int = eqx.field(static=True)  # d, before padding to whole blocks
    # Bandwidth 1: run the recurrences of solves and draws as log-depth
    # associative scans (see `BandedHessian.recurrences`).
    associative: bool = eqx.field(static=True, default=False)


def band_matvec_blocks(diag, sub, x):
    """`A x` for the block-tridiagonal `A` (blocks `diag`, `sub`); `x (nb, b)`."""
    y = mv(diag, x)
    below = mv(sub[:-1], x[:-1])  # A[I+1, I] x_I
    above = mv(mT(sub[:-1]), x[1:])  # A[I, I+1] x_{I+1}
    y = y.at[1:].add(below)
    return y.at[:-1].add(above)


def _block_tridiagonal_cholesky(diag, sub, associative: bool = False):
    """Returns `(lower, c, inverse_lower)` with `c[I] = L[I, I-1]` (`c[0] = 0`) and
    `inverse_lower[I] = L[I, I]⁻¹`. `associative` applies to bandwidth 1 only."""
    b = diag.shape[-1]
    previous_sub = shift_down(sub)
    if b == 1:
        return _tridiagonal_cholesky(
            diag[:, 0, 0], previous_sub[:, 0, 0], associative=associative
        )
    identity = jnp.eye(b, dtype=diag.dtype)

    def step(inverse_prev, inputs):
        a_ii, b_prev = inputs
        c = mm(b_prev, mT(inverse_prev))  # C = B L_prev⁻ᵀ
        lower = small_cholesky(a_ii - mm(c, mT(c)))
        inverse = forward_substitute(lower, identity)
        return inverse, (lower, c, inverse)

    # `previous_sub[0]` is zero, so the first block ignores the initial carry.
    init = jnp.zeros_like(identity)
    _, out = jax.lax.scan(step, init, (diag, previous_sub))
    return out


def _affine_scan(coefficient, offset, reverse: bool = False):
    """`x_i = coefficient_i · x_{i∓1} + offset_i` from `x = 0` (previous entry
    forwards, next backwards), as a log-depth associative scan: each element is the
    map `x -> c x + o`, and maps compose associatively."""

    def compose(first, then):
        c1, o1 = first
        c2, o2 = then
        return c2 * c1, c2 * o1 + o2

    return jax.lax.associative_scan(compose, (coefficient, offset), reverse=reverse)[1]


def _associative_pivots(a, e):
    """The pivots `p_i = a_i − e_i² / p_{i−1}` (`e_0 = 0`) as a log-depth scan:
    `(p_i, 1) ∝ M_i (p_{i−1}, 1)` with `M_i = [[a_i, −e_i²], [1, 0]]`, so `p_i` is
    the ratio of the first column of `M_i ⋯ M_0`. Each partial product is divided
    by its largest entry (the ratio is unchanged) so that none overflows."""
    zero, one = jnp.zeros_like(a), jnp.ones_like(a)
    mobius = jnp.stack(
        [jnp.stack([a, -e * e], axis=-1), jnp.stack([one, zero], axis=-1)], axis=-2
    )

    def compose(first, then):
        product = mm(then, first)
        scale = jnp.max(jnp.abs(product), axis=(-2, -1), keepdims=True)
        return product / scale

    prefix = jax.lax.associative_scan(compose, mobius)
    return prefix[:, 0, 0] / prefix[:, 1, 0]


def _tridiagonal_cholesky(a, e, rhs=None, associative: bool = False):
    """Bandwidth 1: the pivots `p_i = a_i − e_i² / p_{i−1}` of `A = L D Lᵀ` (`e_i =
    A[i, i−1]`, `e_0 = 0`) are the only recurrence, one division deep, so the scan
    is a short dependency chain; square roots and the rest are vectorised.

    With `rhs`, the same scan also runs the forward substitution of `A x = rhs`
    (`u_i = rhs_i − (e_i / p_{i−1}) u_{i−1}`, then `y = u / √p = L⁻¹ rhs`), one
    sequential loop instead of two; returns `y` as a fourth output."""

    def pivots_only(pivot_prev, inputs):
        a_i, e_i = inputs
        pivot = a_i - e_i * (e_i / pivot_prev)
        return pivot, pivot

    def with_forward(carry, inputs):
        pivot_prev, u_prev = carry
        a_i, e_i, r_i = inputs
        multiplier = e_i / pivot_prev
        pivot = a_i - e_i * multiplier
        u = r_i - multiplier * u_prev
        return (pivot, u), (pivot, u)

    one = jnp.ones_like(a[0])
    if associative:
        pivots = _associative_pivots(a, e)
        if rhs is not None:
            multiplier = e / shift_down(pivots).at[0].set(1.0)
            u = _affine_scan(-multiplier, rhs)
    elif rhs is None:
        _, pivots = jax.lax.scan(pivots_only, one, (a, e))
    else:
        init = (one, jnp.zeros_like(one))
        _, (pivots, u) = jax.lax.scan(with_forward, init, (a, e, rhs))
    lower = jnp.sqrt(pivots)
    previous = jnp.concatenate([jnp.ones_like(lower[:1]), lower[:-1]])
    c = e / previous
    inverse = 1.0 / lower
    out = (lower[:, None, None], c[:, None, None], inverse[:, None, None])
    return out if rhs is None else (*out, (u * inverse)[:, None])


def shift_up(x):
    """`x[I+1]` at `I` along the leading (block) axis, zero past the end."""
    return jnp.concatenate([x[1:], jnp.zeros_like(x[:1])])


def shift_down(x):
    """`x[I-1]` at `I` along the leading (block) axis, zero before the start."""
    return jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]])


def _linear_recurrence(w, g, reverse: bool = False, associative: bool = False):
    """`x_I = w_I − G_I x_{I∓1}` (previous block forwards, next block backwards),
    starting from zero: the only sequential part of a banded solve."""

    if w.shape[-1] == 1 and associative:
        return _affine_scan(-g[:, 0, 0], w[:, 0], reverse=reverse)[:, None]
    if w.shape[-1] == 1:
        # Bandwidth 1: the same recurrence on scalars (XLA:CPU runs the loop about
        # twice as fast as on 1 × 1 blocks; the results are identical).
        def scalar_step(x_other, inputs):
            w_i, g_i = inputs
            x = w_i - g_i * x_other
            return x, x

        inputs = (w[:, 0], g[:, 0, 0])
        _, x = jax.lax.scan(
            scalar_step, jnp.zeros_like(w[0, 0]), inputs, reverse=reverse
        )
        return x[:, None]

    def step(x_other, inputs):
        w_i, g_i = inputs
        x = w_i - mv(g_i, x_other)
        return x, x

    _, x = jax.lax.scan(step, jnp.zeros_like(w[0]), (w, g), reverse=reverse)
    return x


def _band_forward(factor: BandedFactor, v):
    """`L⁻¹ v` for `v (nb, b)`: `y_I = L_I⁻¹ v_I − (L_I⁻¹ C_I) y_{I−1}`."""
    inverse = factor.inverse_lower
    return _linear_recurrence(
        mv(inverse, v), mm(inverse, factor.sub), associative=factor.associative
    )


def _coupling(factor: BandedFactor):
    """`F_I = L[I+1, I] L_I⁻¹`, the coupling of block `I` to the next in the
    backward recurrences (zero for the last block)."""
    return mm(shift_up(factor.sub), factor.inverse_lower)


def band_backward(factor: BandedFactor, y):
    """`L⁻ᵀ y` for `y (nb, b)`: `x_I = L_I⁻ᵀ y_I − F_Iᵀ x_{I+1}`."""
    w = mv(mT(factor.inverse_lower), y)
    return _linear_recurrence(
        w, mT(_coupling(factor)), reverse=True, associative=factor.associative
    )


def band_selected_inverse(factor: BandedFactor):
    """The blocks of `A⁻¹` on the block-tridiagonal pattern: `(S_diag, S_sub)` with
    `S_sub[I] = (A⁻¹)[I+1, I]` (zero for the last). Backward (Takahashi)
    recurrence, with `F_I = L[I+1, I] L_I⁻¹`:

        (A⁻¹)[I+1, I] = −(A⁻¹)[I+1, I+1] F_I,
        (A⁻¹)[I, I]   = L_I⁻ᵀ L_I⁻¹ + F_Iᵀ (A⁻¹)[I+1, I+1] F_I.
    """
    inverse = factor.inverse_lower
    f = _coupling(factor)
    own = mm(mT(inverse), inverse)

    if inverse.shape[-1] == 1 and factor.associative:
        # s_I = own_I + f_I² s_{I+1}, an affine recurrence.
        own, f = own[:, 0, 0], f[:, 0, 0]
        s_diag = _affine_scan(f * f, own, reverse=True)
        s_sub = -shift_up(s_diag) * f
        return s_diag[:, None, None], s_sub[:, None, None]
    if inverse.shape[-1] == 1:
        # Bandwidth 1: the same recurrence on scalars (faster loop, same numbers).
        def scalar_step(s_next, inputs):
            own_i, f_i = inputs
            t = s_next * f_i
            s_diag = own_i + f_i * t
            return s_diag, (s_diag, -t)

        init = jnp.zeros_like(own[0, 0, 0])
        inputs = (own[:, 0, 0], f[:, 0, 0])
        _, (s_diag, s_sub) = jax.lax.scan(scalar_step, init, inputs, reverse=True)
        return s_diag[:, None, None], s_sub[:, None, None]

    def step(s_next, inputs):
        own_i, f_i = inputs
        t = mm(s_next, f_i)
        s_diag = own_i + mm(mT(f_i), t)
        return s_diag, (s_diag, -t)

    init = jnp.zeros_like(inverse[0])
    _, (s_diag, s_sub) = jax.lax.scan(step, init, (own, f), reverse=True)
    return s_diag, s_sub


def pad_blocks(vector: Array, b: int) -> Array:
    """`(d,) -> (nb, b)`, zero-padded to whole blocks."""
    d = vector.shape[0]
    nb = -(-d // b)
    return jnp.pad(vector, (0, nb * b - d)).reshape(nb, b)


def _banded_factor(lower, c, inverse, structure_ok, size, associative):
    """The `BandedFactor` of a Cholesky recurrence's output, and whether it is
    positive definite (every entry finite, every pivot positive). A failed factor is
    replaced by the identity so that nothing computed from it is NaN."""
    pivot = jnp.eye(lower.shape[-1], dtype=bool)
    entry_ok = jnp.isfinite(lower) & jnp.isfinite(c) & jnp.isfinite(inverse)
    ok = jnp.all(entry_ok & (~pivot | (lower > 0)))
    lower = jnp.where(ok, lower, identity_like(lower))
    c = jnp.where(ok, c, 0.0)
    inverse = jnp.where(ok, inverse, identity_like(inverse))
    factor = BandedFactor(
        lower=lower,
        sub=c,
        inverse_lower=inverse,
        positive_definite=ok & structure_ok,
        structure_ok=structure_ok,
        size=size,
        associative=associative,
    )
    return factor, ok


def banded_factorise(
    diag, sub, size: int, structure_ok=True, rhs=None, associative: bool = False
):
    """The banded Cholesky factor of the block-tridiagonal `A` (diagonal blocks
    `diag`, sub-diagonal blocks `sub[I] = A[I+1, I]`, both `(nb, b, b)`) of a
    `size × size` matrix: `(factor, ok)`, or `(factor, ok, A⁻¹ rhs)` given `rhs`
    (shape `(size,)`). For bandwidth 1 the forward substitution runs inside the
    pivot recurrence, and `associative` runs every recurrence (here and in the
    factor's solves) as a log-depth associative scan."""
    structure_ok = jnp.asarray(structure_ok)
    associative = associative and diag.shape[-1] == 1
    if rhs is None:
        lower, c, inverse = _block_tridiagonal_cholesky(diag, sub, associative)
        return _banded_factor(lower, c, inverse, structure_ok, size, associative)
    if diag.shape[-1] != 1:
        factor, ok = banded_factorise(diag, sub, size, structure_ok)
        return factor, ok, banded_solve(factor, rhs)
    previous_sub = shift_down(sub)
    lower, c, inverse, y = _tridiagonal_cholesky(
        diag[:, 0, 0], previous_sub[:, 0, 0], rhs, associative
    )
    factor, ok = _banded_factor(lower, c, inverse, structure_ok, size, associative)
    # Where the factor was replaced by the identity, so is its solve.
    y = jnp.where(ok, y, rhs[:, None])
    return factor, ok, band_backward(factor, y).ravel()


def banded_solve(factor: BandedFactor, vector: Array) -> Array:
    """`A⁻¹ vector` from the banded factor of `A`."""
    y = _band_forward(factor, pad_blocks(vector, factor.lower.shape[-1]))
    return band_backward(factor, y).ravel()[: vector.shape[0]]


def banded_logdet(factor: BandedFactor) -> Array:
    # The padding blocks are identities: they add nothing.
    return logdet_from_lower(factor.lower)


def banded_draw(factor: BandedFactor, key) -> Array:
    """A draw from `N(0, A⁻¹)`, shape `(size,)`: `L⁻ᵀ z` (the padded entries are
    independent of the rest and dropped)."""
    nb, b, _ = factor.lower.shape
    z = jr.normal(key, (nb * b,), dtype=factor.lower.dtype)
    return band_backward(factor, z.reshape(nb, b)).ravel()[: factor.size]


def lower_bands_to_blocks(band: Float[Array, "k n"]):
    """A symmetric banded matrix in lower-band storage (`band[k, i] = A[i + k, i]`
    for `k = 0..b`; the last `k` entries of row `k` are ignored) as the blocks
    `(diag, sub)` of its block-tridiagonal form, blocks of `max(b, 1)` latents and
    the padding past `n` an identity block. Linear in `band` (so differentiable),
    without a gather: one slice of `band` per block entry."""
    n = band.shape[1]
    if band.shape[0] == 1:  # diagonal: blocks of one, uncoupled
        band = jnp.concatenate([band, jnp.zeros_like(band)])
    b = band.shape[0] - 1
    nb = -(-n // b)
    # by_block[k, I, j] = band[k, I b + j]
    by_block = jnp.pad(band, ((0, 0), (0, nb * b - n))).reshape(b + 1, nb, b)
    inside = np.arange(nb * b).reshape(nb, b) < n
    zero = jnp.zeros((nb,), band.dtype)
    diag, sub = [], []
    for p in range(b):
        diag_row, sub_row = [], []
        for q in range(b):
            # A[I b + p, I b + q]; the identity past the end.
            entry = by_block[abs(p - q), :, min(p, q)]
            both = inside[:, p] & inside[:, q]
            diag_row.append(jnp.where(both, entry, float(p == q)))
            # A[(I+1) b + p, I b + q]: inside the band only for p <= q, zero where
            # the row lies past the end.
            below = by_block[b + p - q, :, q] if p <= q else zero
            sub_row.append(jnp.where(np.append(inside[1:, p], False), below, 0.0))
        diag.append(jnp.stack(diag_row, axis=-1))
        sub.append(jnp.stack(sub_row, axis=-1))
    return jnp.stack(diag, axis=-2), jnp.stack(sub, axis=-2)


def add_to_block_diagonal(diag: Array, vector: Array) -> Array:
    """The blocks `diag` `(nb, b, b)` plus `diag(vector)`, `vector` of shape
    `(n,)`."""
    b = diag.shape[-1]
    return diag + pad_blocks(vector, b)[:, :, None] * jnp.eye(b, dtype=diag.dtype)


# --------------------------------------------------------------------------------
# Banded precision: lower-band storage, `band[k, i] = Q[i + k, i]` for k = 0..b (the
# last k entries of row k are ignored). Factorisations, solves and the selected
# inverse are those of `BandedHessian` (this module), on the blocks of
# `lower_bands_to_blocks`.
# --------------------------------------------------------------------------------


def band_matvec(band: Float[Array, "b1 n"], x: Float[Array, " n"]) -> Array:
    """`A x` for a symmetric banded `A` in lower-band storage."""
    n = x.shape[0]
    out = band[0] * x
    for k in range(1, band.shape[0]):
        lower = band[k, : n - k]
        out = out.at[k:].add(lower * x[: n - k])
        out = out.at[: n - k].add(lower * x[k:])
    return out


def blocks_inner(s_blocks, blocks) -> Array:
    """`Σ_ij S_ij A_ij` over the block-tridiagonal pattern of symmetric `S` and
    `A` (diagonal blocks once, the sub-diagonal blocks for both triangles)."""
    return jnp.sum(s_blocks[0] * blocks[0]) + 2.0 * jnp.sum(s_blocks[1] * blocks[1])
