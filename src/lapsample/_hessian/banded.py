"""`BandedHessian`: a banded Hessian read with `2b + 1` coloured Hessian-vector
products and factorised by the banded kernels of `lapsample._linalg.banded`."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._linalg.banded import (
    band_backward,
    band_matvec_blocks,
    band_selected_inverse,
    banded_draw,
    banded_factorise,
    banded_logdet,
    banded_solve,
    check_recurrences,
    pad_blocks,
    shift_down,
    shift_up,
    use_associative,
)
from .._linalg.small_blocks import mT, mv
from .._validate import check_int
from .base import (
    AbstractStructuredHessian,
    factorise_and_solve,
    hvp,
    probe_vector,
    structure_agrees,
)


# Probe batches of at least this many entries run one probe at a time (see `_band`).
_BATCHED_PROBES_LIMIT = 2**18


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
    # Patterns of length d are computed (iota), not embedded as constants: at
    # d = 10⁷ constants cost hundreds of MB and seconds of compilation.
    columns = jnp.pad(band_probes(d, b, products.dtype), ((0, 0), (0, pad)))
    columns = columns.reshape(c, nb, b)
    # diag[I, p, q] = A[I b + p, I b + q].
    diag = _colour_sum(rows, columns)
    # The padding entries (past d) get an identity block: decoupled, log det 0.
    padded = jnp.arange(nb * b).reshape(nb, b) >= d
    diag = diag + (padded[:, :, None] & np.eye(b, dtype=bool)).astype(diag.dtype)
    # sub[I, p, q] = A[(I+1) b + p, I b + q], inside the band only for p <= q; the
    # last one lies outside the matrix and is zero.
    next_rows = jnp.concatenate([rows[:, 1:], jnp.zeros_like(rows[:, :1])], axis=1)
    sub = _colour_sum(next_rows, columns)
    sub = jnp.where(np.triu(np.ones((b, b), dtype=bool)), sub, 0.0)
    return diag, sub


def band_probes(d: int, b: int, dtype) -> Array:
    """`(2b+1, d)` zeros and ones: probe `c` covers the columns `j ≡ c (mod 2b+1)`."""
    c = 2 * b + 1
    return (jnp.arange(d)[None, :] % c == jnp.arange(c)[:, None]).astype(dtype)


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
        check_int("BandedHessian(bandwidth=...)", self.bandwidth, 1)
        check_recurrences(self.recurrences, "BandedHessian")

    def _band(self, fn, theta, phi, extra=None):
        """The band blocks, and `A @ extra` when a probe `extra` is given: all the
        products in one batch (one pass of the model's code, not two)."""
        d = theta.shape[0]
        b = self.bandwidth
        if b >= d:
            # Shapes are static: refused while tracing, before XLA compiles an
            # unrolled band wider than the matrix.
            raise ValueError(
                f"`BandedHessian(bandwidth={b})` needs a bandwidth below the size of "
                f"the latent, but theta has {d} entries: a band that wide is a dense "
                f"matrix. Use `DenseHessian()` instead, or a bandwidth of at most "
                f"{d - 1}."
            )
        probes = band_probes(d, b, theta.dtype)
        if extra is not None:
            probes = jnp.concatenate([probes, extra[None]])
        if probes.size < _BATCHED_PROBES_LIMIT:
            products = jax.vmap(lambda v: hvp(fn, theta, phi, v))(probes)
        else:
            # Long latents: one probe at a time through one linearisation, so the
            # model's intermediates exist once rather than once per probe. SV at
            # T = 10⁷ (`benchmarks/structured.py --large`): peak 6.0 -> 4.7 GiB
            # and 8.5 -> 5.6 CPU s per value+grad; at T = 1000 the batch is 12%
            # faster, hence the threshold.
            _, tangent = jax.linearize(lambda t: jax.grad(fn)(t, phi), theta)
            products = jax.lax.map(tangent, probes)
        diag, sub = _band_blocks(products[: 2 * b + 1], d, b)
        return diag, sub, (None if extra is None else products[-1])

    def _pad(self, vector):
        return pad_blocks(vector, self.bandwidth)

    def _assemble(self, fn, theta, phi):
        """The symmetrised band blocks and the structure check's verdict."""
        z = probe_vector(theta) if self.verify else None
        diag, sub, hz = self._band(fn, theta, phi, z)
        diag = 0.5 * (diag + mT(diag))
        if self.verify:
            d = theta.shape[0]
            az = band_matvec_blocks(diag, sub, self._pad(z)).ravel()[:d]
            scale = band_matvec_blocks(
                jnp.abs(diag), jnp.abs(sub), self._pad(jnp.abs(z))
            )
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

    def factor_product(self, factor, z):
        d = z.shape[0]

        def product(lower, sub, x):
            # Lᵀ x: block I gets L[I, I]ᵀ x_I + L[I+1, I]ᵀ x_{I+1}; then L y:
            # block I gets L[I, I] y_I + L[I, I−1] y_{I−1}.
            y = mv(mT(lower), x) + mv(mT(shift_up(sub)), shift_up(x))
            return (mv(lower, y) + mv(sub, shift_down(y))).ravel()[:d]

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
        return band_backward(factor, self._pad(z)).ravel()[:d]

    def sample(self, factor, key):
        return banded_draw(factor, key)

    def logdet_surrogate(self, factor, fn, theta, phi):
        s_diag, s_sub = band_selected_inverse(jax.lax.stop_gradient(factor))
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


@factorise_and_solve.register(BandedHessian)
def _(strategy: BandedHessian, fn, theta, phi, vector):
    # The forward substitution of the solve runs inside the factorisation's loop.
    diag, sub, structure_ok = strategy._assemble(fn, theta, phi)
    factor, _, solution = banded_factorise(
        diag,
        sub,
        theta.shape[0],
        structure_ok,
        rhs=vector,
        associative=use_associative(strategy.recurrences),
    )
    return factor, solution
