"""Structured Hessian strategies: block-diagonal and banded.

Both read the Hessian `A = ∇²_θ fn` from a few Hessian-vector products by colouring
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

from ._hessian import (
    _hvp,
    AbstractStructuredFactor,
    AbstractStructuredHessian,
    probe_vector,
    structure_agrees,
)


# --------------------------------------------------------------------------------
# Small dense kernels on (..., k, k) arrays, unrolled over k.
# --------------------------------------------------------------------------------


def _small_cholesky(a: Array) -> Array:
    """Lower Cholesky factors of a stack of `k × k` matrices (`NaN`/`inf` where a
    matrix is not positive definite). Left-looking, one column at a time."""
    k = a.shape[-1]
    rows = jnp.arange(k)
    cols = []
    for j in range(k):
        s = a[..., :, j]
        for m in range(j):
            s = s - cols[m] * cols[m][..., j : j + 1]
        pivot = jnp.sqrt(s[..., j : j + 1])
        cols.append(jnp.where(rows >= j, s / pivot, 0.0))
    return jnp.stack(cols, axis=-1)


def _forward_substitute(lower: Array, rhs: Array) -> Array:
    """`L⁻¹ rhs` for stacks `lower (..., k, k)`, `rhs (..., k, m)`."""
    k = lower.shape[-1]
    xs = []
    for i in range(k):
        s = rhs[..., i, :]
        for m in range(i):
            s = s - lower[..., i, m : m + 1] * xs[m]
        xs.append(s / lower[..., i, i : i + 1])
    return jnp.stack(xs, axis=-2)


def _backward_substitute(lower: Array, rhs: Array) -> Array:
    """`L⁻ᵀ rhs` for stacks `lower (..., k, k)`, `rhs (..., k, m)`."""
    k = lower.shape[-1]
    xs: list = [None] * k
    for i in reversed(range(k)):
        s = rhs[..., i, :]
        for m in range(i + 1, k):
            s = s - lower[..., m, i : i + 1] * xs[m]
        xs[i] = s / lower[..., i, i : i + 1]
    return jnp.stack(xs, axis=-2)


def _identity_like(lower: Array) -> Array:
    k = lower.shape[-1]
    return jnp.broadcast_to(jnp.eye(k, dtype=lower.dtype), lower.shape)


def _factor_ok(lower: Array) -> Bool[Array, ""]:
    diagonal = jnp.diagonal(lower, axis1=-2, axis2=-1)
    return jnp.all(jnp.isfinite(lower)) & jnp.all(diagonal > 0)


def _logdet_from_lower(lower: Array):
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(lower, axis1=-2, axis2=-1)))


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


# Products of small blocks as broadcast multiply-and-sum rather than `@`: on CPU a
# `dot` of 1 × 1 or 2 × 2 blocks is a library call per product (about 30 ns each
# inside a scan, several times the arithmetic), while the elementwise form fuses
# with its neighbours. For bandwidth 1 the scans below become scalar recurrences.


def _mm(a: Array, b: Array) -> Array:
    """`a @ b` for stacks of small matrices."""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def _mv(a: Array, x: Array) -> Array:
    """`a @ x` for stacks of small matrices `a (..., p, q)` and vectors `x (..., q)`."""
    return jnp.sum(a * x[..., None, :], axis=-1)


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


def _check_int(value, name: str, cls: str):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"`{cls}({name}=...)` must be a positive Python integer, got {value!r}."
        )


# --------------------------------------------------------------------------------
# Block diagonal
# --------------------------------------------------------------------------------


class BlockFactor(AbstractStructuredFactor):
    """The factor of [`lapsample.BlockDiagonalHessian`][]: one lower Cholesky
    factor per block, shape `(d / block_size, block_size, block_size)` (identities
    where the Hessian is not positive definite, so downstream arithmetic stays
    finite)."""

    lower: Float[Array, "blocks k k"]
    positive_definite: Bool[Array, ""]
    structure_ok: Bool[Array, ""]


def _block_probes(d: int, k: int, dtype) -> Array:
    # Probe j is 1 at every entry with index ≡ j (mod k): H times it holds column j
    # of every block.
    return jnp.asarray(np.arange(d)[None, :] % k == np.arange(k)[:, None], dtype)


class BlockDiagonalHessian(AbstractStructuredHessian):
    """For models whose latents come in independent groups of `block_size`
    consecutive entries of the flattened `theta` (a random intercept and slope per
    group, written e.g. as `theta` of shape `(groups, block_size)`).

    The blocks are read from `block_size` Hessian-vector products and factorised as
    a batch with a Cholesky written for small blocks (vectorised over the blocks):
    `O(d·block_size²)` time and `O(d·block_size)` memory.

    The structure is checked with one more Hessian-vector product (see `verify`;
    once per inner solve, at the mode): curvature between blocks gives a factor with
    `structure_ok = False`, a marginal of `-inf` and the code
    `RESULTS.structure_violated`; [`lapsample.LaplaceMarginal.check`][] raises a
    `ValueError` before compilation.
    """

    block_size: int
    verify: bool = True

    def __check_init__(self):
        _check_int(self.block_size, "block_size", "BlockDiagonalHessian")

    def _num_blocks(self, theta) -> int:
        d = theta.shape[0]
        if d % self.block_size != 0:
            raise ValueError(
                f"`BlockDiagonalHessian(block_size={self.block_size})` needs a latent "
                f"whose size is a multiple of {self.block_size}, but theta has {d} "
                "entries. Order theta so that each group's entries are consecutive "
                "(e.g. shape `(groups, block_size)`), or pad it."
            )
        return d // self.block_size

    def _blocks(self, fn, theta, phi) -> Array:
        k = self.block_size
        nb = self._num_blocks(theta)
        probes = _block_probes(theta.shape[0], k, theta.dtype)
        columns = jax.vmap(lambda v: _hvp(fn, theta, phi, v))(probes)  # (k, d)
        # columns[j, g*k + i] = H[g*k + i, g*k + j]
        return jnp.transpose(columns.reshape(k, nb, k), (1, 2, 0))

    def factorise(self, fn, theta, phi):
        blocks = self._blocks(fn, theta, phi)
        blocks = 0.5 * (blocks + _mT(blocks))
        if self.verify:
            z = probe_vector(theta)
            hz = _hvp(fn, theta, phi, z)
            zb = z.reshape(blocks.shape[:2])
            bz = _mv(blocks, zb).ravel()
            scale = _mv(jnp.abs(blocks), jnp.abs(zb)).ravel()
            structure_ok = structure_agrees(hz, bz, scale)
        else:
            structure_ok = jnp.array(True)
        lower = _small_cholesky(blocks)
        ok = _factor_ok(lower)
        lower = jnp.where(ok, lower, _identity_like(lower))
        return BlockFactor(
            lower=lower,
            positive_definite=ok & structure_ok,
            structure_ok=structure_ok,
        )

    def _factor_product(self, factor, z):
        lower = factor.lower
        zb = z.reshape(lower.shape[:2])
        az = _mv(lower, _mv(_mT(lower), zb)).ravel()
        absolute = jnp.abs(lower)
        scale = _mv(absolute, _mv(_mT(absolute), jnp.abs(zb))).ravel()
        return az, scale

    def logdet(self, factor):
        return _logdet_from_lower(factor.lower)

    def solve(self, factor, vector):
        nb, k, _ = factor.lower.shape
        y = _forward_substitute(factor.lower, vector.reshape(nb, k, 1))
        return _backward_substitute(factor.lower, y).ravel()

    def _transform(self, factor, z):
        nb, k, _ = factor.lower.shape
        return _backward_substitute(factor.lower, z.reshape(nb, k, 1)).ravel()

    def sample(self, factor, key):
        nb, k, _ = factor.lower.shape
        z = jr.normal(key, (nb * k,), dtype=factor.lower.dtype)
        # L⁻ᵀ z has covariance (L Lᵀ)⁻¹ = A⁻¹, block by block.
        return self._transform(factor, z)

    def logdet_surrogate(self, factor, fn, theta, phi):
        lower = jax.lax.stop_gradient(factor.lower)
        inverse_lower = _forward_substitute(lower, _identity_like(lower))
        inverse = _mm(_mT(inverse_lower), inverse_lower)  # A₀⁻¹, block by block
        return jnp.sum(inverse * self._blocks(fn, theta, phi))


BlockDiagonalHessian.__init__.__doc__ = """**Arguments:**

- `block_size`: the number of consecutive entries of the flattened `theta` in each
    independent group; the latent's size must be a multiple of it. Meant for small
    blocks (up to a few tens): the block Cholesky is unrolled over `block_size`.
- `verify`: check the block structure with one extra Hessian-vector product
    (default `True`), once per inner solve. Turn it off only for a model already
    checked: a violated structure then gives silently wrong values.
"""


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


def _colour_sum(rows: Array, columns: Array) -> Array:
    """`Σ_c rows[c, I, p] columns[c, I, q]` as `(nb, b, b)`, written as a sum of
    `2b+1` products rather than a reduction (XLA:CPU hands small batched reductions
    to a library call that is slow here)."""
    terms = [rows[k, :, :, None] * columns[k, :, None, :] for k in range(rows.shape[0])]
    return sum(terms[1:], terms[0])


def _band_blocks(products: Array, d: int, b: int):
    """The diagonal blocks `A[I, I]` and sub-diagonal blocks `A[I+1, I]` from the
    coloured products `P (2b+1, d)`, `P[c] = A v_c`.

    Entry `A[r, j]` of the band is `P[c(j), r]`, the product with the probe that
    covers column `j` (no other column of that colour lies within `b` of `r`), so
    with `V[c] = v_c` both blocks are sums over the colours of `P[c, r] V[c, j]`:
    elementwise products of reshaped arrays, with no gather (a gather of computed
    values is slow on CPU once the model is batched over chains by `vmap`).
    """
    c = 2 * b + 1
    nb = -(-d // b)
    pad = nb * b - d
    rows = jnp.pad(products, ((0, 0), (0, pad))).reshape(c, nb, b)
    columns = np.pad(_band_pattern(d, b), ((0, 0), (0, pad)))
    columns = jnp.asarray(columns.reshape(c, nb, b), products.dtype)
    # diag[I, p, q] = A[I b + p, I b + q].
    diag = _colour_sum(rows, columns)
    # The padding entries (past d) get an identity block: decoupled, log det 0.
    padded = np.arange(nb * b).reshape(nb, b) >= d
    diag = diag + jnp.asarray(padded[:, :, None] * np.eye(b, dtype=bool), diag.dtype)
    # sub[I, p, q] = A[(I+1) b + p, I b + q], inside the band only for p <= q; the
    # last one lies outside the matrix and is zero.
    next_rows = jnp.concatenate([rows[:, 1:], jnp.zeros_like(rows[:, :1])], axis=1)
    sub = _colour_sum(next_rows, columns)
    sub = jnp.where(np.triu(np.ones((b, b), dtype=bool)), sub, 0.0)
    return diag, sub


def _band_pattern(d: int, b: int) -> np.ndarray:
    """`(2b+1, d)` booleans: probe `c` covers the columns `j ≡ c (mod 2b+1)`."""
    c = 2 * b + 1
    return np.arange(d)[None, :] % c == np.arange(c)[:, None]


def _band_probes(d: int, b: int, dtype) -> Array:
    return jnp.asarray(_band_pattern(d, b), dtype)


def _band_matvec(diag, sub, x):
    """`A x` for the block-tridiagonal `A` (blocks `diag`, `sub`); `x (nb, b)`."""
    y = _mv(diag, x)
    below = _mv(sub[:-1], x[:-1])  # A[I+1, I] x_I
    above = _mv(_mT(sub[:-1]), x[1:])  # A[I, I+1] x_{I+1}
    y = y.at[1:].add(below)
    return y.at[:-1].add(above)


def _block_tridiagonal_cholesky(diag, sub, associative: bool = False):
    """Returns `(lower, c, inverse_lower)` with `c[I] = L[I, I-1]` (`c[0] = 0`) and
    `inverse_lower[I] = L[I, I]⁻¹`. `associative` applies to bandwidth 1 only."""
    b = diag.shape[-1]
    previous_sub = _shift_down(sub)
    if b == 1:
        return _tridiagonal_cholesky(
            diag[:, 0, 0], previous_sub[:, 0, 0], associative=associative
        )
    identity = jnp.eye(b, dtype=diag.dtype)

    def step(inverse_prev, inputs):
        a_ii, b_prev = inputs
        c = _mm(b_prev, _mT(inverse_prev))  # C = B L_prev⁻ᵀ
        lower = _small_cholesky(a_ii - _mm(c, _mT(c)))
        inverse = _forward_substitute(lower, identity)
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
        product = _mm(then, first)
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
            multiplier = e / _shift_down(pivots).at[0].set(1.0)
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


def _shift_up(x):
    """`x[I+1]` at `I` along the leading (block) axis, zero past the end."""
    return jnp.concatenate([x[1:], jnp.zeros_like(x[:1])])


def _shift_down(x):
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
        x = w_i - _mv(g_i, x_other)
        return x, x

    _, x = jax.lax.scan(step, jnp.zeros_like(w[0]), (w, g), reverse=reverse)
    return x


def _band_forward(factor: BandedFactor, v):
    """`L⁻¹ v` for `v (nb, b)`: `y_I = L_I⁻¹ v_I − (L_I⁻¹ C_I) y_{I−1}`."""
    inverse = factor.inverse_lower
    return _linear_recurrence(
        _mv(inverse, v), _mm(inverse, factor.sub), associative=factor.associative
    )


def _coupling(factor: BandedFactor):
    """`F_I = L[I+1, I] L_I⁻¹`, the coupling of block `I` to the next in the
    backward recurrences (zero for the last block)."""
    return _mm(_shift_up(factor.sub), factor.inverse_lower)


def _band_backward(factor: BandedFactor, y):
    """`L⁻ᵀ y` for `y (nb, b)`: `x_I = L_I⁻ᵀ y_I − F_Iᵀ x_{I+1}`."""
    w = _mv(_mT(factor.inverse_lower), y)
    return _linear_recurrence(
        w, _mT(_coupling(factor)), reverse=True, associative=factor.associative
    )


def _band_selected_inverse(factor: BandedFactor):
    """The blocks of `A⁻¹` on the block-tridiagonal pattern: `(S_diag, S_sub)` with
    `S_sub[I] = (A⁻¹)[I+1, I]` (zero for the last). Backward (Takahashi)
    recurrence, with `F_I = L[I+1, I] L_I⁻¹`:

        (A⁻¹)[I+1, I] = −(A⁻¹)[I+1, I+1] F_I,
        (A⁻¹)[I, I]   = L_I⁻ᵀ L_I⁻¹ + F_Iᵀ (A⁻¹)[I+1, I+1] F_I.
    """
    inverse = factor.inverse_lower
    f = _coupling(factor)
    own = _mm(_mT(inverse), inverse)

    if inverse.shape[-1] == 1 and factor.associative:
        # s_I = own_I + f_I² s_{I+1}, an affine recurrence.
        own, f = own[:, 0, 0], f[:, 0, 0]
        s_diag = _affine_scan(f * f, own, reverse=True)
        s_sub = -_shift_up(s_diag) * f
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
        t = _mm(s_next, f_i)
        s_diag = own_i + _mm(_mT(f_i), t)
        return s_diag, (s_diag, -t)

    init = jnp.zeros_like(inverse[0])
    _, (s_diag, s_sub) = jax.lax.scan(step, init, (own, f), reverse=True)
    return s_diag, s_sub


def _pad_blocks(vector: Array, b: int) -> Array:
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
    lower = jnp.where(ok, lower, _identity_like(lower))
    c = jnp.where(ok, c, 0.0)
    inverse = jnp.where(ok, inverse, _identity_like(inverse))
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
    previous_sub = _shift_down(sub)
    lower, c, inverse, y = _tridiagonal_cholesky(
        diag[:, 0, 0], previous_sub[:, 0, 0], rhs, associative
    )
    factor, ok = _banded_factor(lower, c, inverse, structure_ok, size, associative)
    # Where the factor was replaced by the identity, so is its solve.
    y = jnp.where(ok, y, rhs[:, None])
    return factor, ok, _band_backward(factor, y).ravel()


def banded_solve(factor: BandedFactor, vector: Array) -> Array:
    """`A⁻¹ vector` from the banded factor of `A`."""
    y = _band_forward(factor, _pad_blocks(vector, factor.lower.shape[-1]))
    return _band_backward(factor, y).ravel()[: vector.shape[0]]


def banded_logdet(factor: BandedFactor) -> Array:
    # The padding blocks are identities: they add nothing.
    return _logdet_from_lower(factor.lower)


def banded_draw(factor: BandedFactor, key) -> Array:
    """A draw from `N(0, A⁻¹)`, shape `(size,)`: `L⁻ᵀ z` (the padded entries are
    independent of the rest and dropped)."""
    nb, b, _ = factor.lower.shape
    z = jr.normal(key, (nb * b,), dtype=factor.lower.dtype)
    return _band_backward(factor, z.reshape(nb, b)).ravel()[: factor.size]


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
    return diag + _pad_blocks(vector, b)[:, :, None] * jnp.eye(b, dtype=diag.dtype)


class BandedHessian(AbstractStructuredHessian):
    """For models whose Hessian in the flattened `theta` is banded: `A[i, j] = 0`
    for `|i − j| > bandwidth`. Time series and other chain-structured latents: an
    AR(1) or first-order random walk gives `bandwidth=1` (tridiagonal), AR(2) or a
    second-order random walk `bandwidth=2`.

    The band is read from `2·bandwidth + 1` Hessian-vector products (colouring:
    entries `bandwidth + 1` or more apart never share a row's support), and
    factorised as a block-tridiagonal matrix with blocks of `bandwidth` latents by
    one `lax.scan` over `d / bandwidth` blocks. The log-determinant, solves, draws
    and the log-determinant's gradient (from the band of `A⁻¹`, by the backward
    Takahashi recurrence) are all `O(d·bandwidth²)` in time and `O(d·bandwidth)` in
    memory, so `d = 100,000` latents take well under a second. For a tridiagonal
    band on a GPU the recurrences run as log-depth associative scans instead (see
    `recurrences`): a sequential scan there costs a kernel launch per latent.

    The structure is checked with one more Hessian-vector product (see `verify`;
    once per inner solve, at the mode): curvature outside the band gives a factor with
    `structure_ok = False`, a marginal of `-inf` and the code
    `RESULTS.structure_violated`; [`lapsample.LaplaceMarginal.check`][] raises a
    `ValueError` before compilation.
    """

    bandwidth: int
    verify: bool = True
    recurrences: str = "auto"

    def __check_init__(self):
        _check_int(self.bandwidth, "bandwidth", "BandedHessian")
        check_recurrences(self.recurrences, "BandedHessian")

    def _band(self, fn, theta, phi, extra=None):
        """The band blocks, and `A @ extra` when a probe `extra` is given: all the
        products in one batch (one pass of the model's code, not two)."""
        d = theta.shape[0]
        b = self.bandwidth
        probes = _band_probes(d, b, theta.dtype)
        if extra is not None:
            probes = jnp.concatenate([probes, extra[None]])
        products = jax.vmap(lambda v: _hvp(fn, theta, phi, v))(probes)
        diag, sub = _band_blocks(products[: 2 * b + 1], d, b)
        return diag, sub, (None if extra is None else products[-1])

    def _pad(self, vector):
        return _pad_blocks(vector, self.bandwidth)

    def _assemble(self, fn, theta, phi):
        """The symmetrised band blocks and the structure check's verdict."""
        z = probe_vector(theta) if self.verify else None
        diag, sub, hz = self._band(fn, theta, phi, z)
        diag = 0.5 * (diag + _mT(diag))
        if self.verify:
            d = theta.shape[0]
            az = _band_matvec(diag, sub, self._pad(z)).ravel()[:d]
            scale = _band_matvec(jnp.abs(diag), jnp.abs(sub), self._pad(jnp.abs(z)))
            structure_ok = structure_agrees(hz, az, scale.ravel()[:d])
        else:
            structure_ok = jnp.array(True)
        return diag, sub, structure_ok

    def factorise(self, fn, theta, phi):
        diag, sub, structure_ok = self._assemble(fn, theta, phi)
        associative = use_associative(self.recurrences)
        return banded_factorise(
            diag, sub, theta.shape[0], structure_ok, associative=associative
        )[0]

    def factorise_and_solve(self, fn, theta, phi, vector):
        diag, sub, structure_ok = self._assemble(fn, theta, phi)
        factor, _, solution = banded_factorise(
            diag,
            sub,
            theta.shape[0],
            structure_ok,
            rhs=vector,
            associative=use_associative(self.recurrences),
        )
        return factor, solution

    def _factor_product(self, factor, z):
        d = z.shape[0]

        def product(lower, sub, x):
            # Lᵀ x: block I gets L[I, I]ᵀ x_I + L[I+1, I]ᵀ x_{I+1}; then L y:
            # block I gets L[I, I] y_I + L[I, I−1] y_{I−1}.
            y = _mv(_mT(lower), x) + _mv(_mT(_shift_up(sub)), _shift_up(x))
            return (_mv(lower, y) + _mv(sub, _shift_down(y))).ravel()[:d]

        zb = self._pad(z)
        az = product(factor.lower, factor.sub, zb)
        scale = product(jnp.abs(factor.lower), jnp.abs(factor.sub), jnp.abs(zb))
        return az, scale

    def logdet(self, factor):
        return banded_logdet(factor)

    def solve(self, factor, vector):
        return banded_solve(factor, vector)

    def _transform(self, factor, z):
        d = z.shape[0]
        return _band_backward(factor, self._pad(z)).ravel()[:d]

    def sample(self, factor, key):
        return banded_draw(factor, key)

    def logdet_surrogate(self, factor, fn, theta, phi):
        s_diag, s_sub = _band_selected_inverse(jax.lax.stop_gradient(factor))
        diag, h_sub, _ = self._band(fn, theta, phi)
        # tr(A₀⁻¹ H) over the band: diagonal blocks once, off-diagonal blocks twice.
        # The padding (an identity block, decoupled) adds 1 per padded entry.
        nb, b, _ = factor.lower.shape
        padding = nb * b - theta.shape[0]
        return jnp.sum(s_diag * diag) + 2.0 * jnp.sum(s_sub * h_sub) - padding


BandedHessian.__init__.__doc__ = """**Arguments:**

- `bandwidth`: the number of non-zero off-diagonals on each side of the diagonal of
    the Hessian in the flattened `theta` (1 for a tridiagonal Hessian). Neighbours in
    the chain must be neighbours in `theta`'s flattened order. Meant for small
    bandwidths (up to a few tens): the blocks are unrolled over `bandwidth`.
- `verify`: check the band with one extra Hessian-vector product (default
    `True`), once per inner solve. Turn it off only for a model already checked: a
    violated structure then gives silently wrong values.
- `recurrences`: how the sequential parts of a bandwidth-1 factorisation, solve,
    draw and selected inverse run: `'sequential'` (`lax.scan`, one step per latent;
    the fastest form on a CPU), `'associative'` (`lax.associative_scan`, log depth;
    the fastest form on a GPU, where a sequential scan launches its body once per
    latent) or `'auto'` (the default: associative unless JAX's default backend is
    the CPU). Both give the same numbers to rounding. Wider bands always run
    sequentially. On one H100, SV value+grad at T = 1000: 113 ms sequential,
    0.97 ms associative (`benchmarks/README.md`).
"""
