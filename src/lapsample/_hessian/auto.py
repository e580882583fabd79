"""`AutoHessian`, the default Hessian strategy: the cheapest strategy whose
structure holds, chosen once by `detect_hessian` where a concrete `phi` is at hand;
and the cost estimate of a materialised (dense) Hessian, said before compiling."""

import logging
import time
import warnings
from collections.abc import Callable

from jaxtyping import PyTree

from .._validate import check_int
from .base import AbstractHessianStrategy
from .dense import DenseHessian, LineaxHessian
from .detect import detect_hessian


# The library's log lines (what `AutoHessian` chose, a detection that did not run)
# go through this logger: `logging.basicConfig(level=logging.INFO)` shows them.
logger = logging.getLogger("lapsample")


class LargeDenseHessianWarning(UserWarning):
    """Warned before compiling when a dense Hessian (`DenseHessian`,
    `LineaxHessian`, or `AutoHessian` choosing dense) would need more than
    `DENSE_WARN_BYTES` of `d × d` temporaries or more than `DENSE_WARN_SECONDS` per
    value and gradient on one CPU core. Filter it by category
    (`warnings.filterwarnings("ignore", category=lapsample.LargeDenseHessianWarning)`)
    when the cost is intended, e.g. on a GPU."""


# What one value and gradient of the dense marginal holds and does, from `d` alone.
# Temporaries: the Hessian, its Cholesky factor, the inverse factor of the
# gradient's log-determinant term and the products read from it, about 5 `d × d`
# doubles at the peak (issue 19 measured 38 MiB at d = 1000; 9 GB had passed at
# d = 20,000 when that run was stopped). Time: the Cholesky and the triangular
# solves are `O(d³)`; the seed model's dense value and gradient took 0.059 / 0.35
# CPU-seconds at d = 1000 / 2000 on one core of the development machine (about
# 0.045 ns · d³; docs/choosing-components.md has the command), a little more with
# a model whose own Hessian-vector products are costly.
DENSE_DOUBLES_PER_D2 = 5
DENSE_NS_PER_D3 = 0.05
# Warn above 1 s per value and gradient (d ≳ 2,700: a default run of 4 × 2000
# draws at ~10 evaluations each then takes about a day of one core) or above 1 GiB
# of temporaries (d ≳ 5,200).
DENSE_WARN_BYTES = 2**30
DENSE_WARN_SECONDS = 1.0


def dense_cost(d: int) -> tuple[float, float]:
    """`(bytes, seconds)`: the estimated peak `d × d` temporaries and the CPU time
    (one core) of one value and gradient of a dense Laplace marginal in `d`
    latents, in float64."""
    return DENSE_DOUBLES_PER_D2 * 8.0 * d * d, DENSE_NS_PER_D3 * 1e-9 * float(d) ** 3


def dense_cost_message(d: int) -> str | None:
    """A sentence with the estimate and what to use instead when a dense Hessian
    in `d` latents is large (see `LargeDenseHessianWarning`), else `None`."""
    memory, seconds = dense_cost(d)
    if memory <= DENSE_WARN_BYTES and seconds <= DENSE_WARN_SECONDS:
        return None
    return (
        f"A dense Hessian in d = {d} latents needs about {memory / 2**30:.1f} GiB of "
        f"d × d temporaries and roughly {seconds:.3g} s of one CPU core per value and "
        "gradient of the marginal (O(d³); thousands of evaluations per run). If the "
        "Hessian has structure, use it: `lapsample.detect_hessian(log_joint, "
        "theta_init, phi)` finds a diagonal, banded or block-diagonal one "
        "(`DiagonalHessian()`, `BandedHessian(bandwidth=...)`, "
        "`BlockDiagonalHessian(block_size=...)`), which cost O(d); for a latent "
        "Gaussian field use `lapsample.LatentGaussianMarginal` (sparse precision "
        "forms); or write an `lapsample.AbstractHessianStrategy` for your structure. "
        "Silence this with `warnings.filterwarnings('ignore', "
        "category=lapsample.LargeDenseHessianWarning)` when the cost is intended "
        "(e.g. on a GPU)."
    )


def warn_if_dense_is_large(
    strategy: AbstractHessianStrategy, d: int, stacklevel: int = 2
) -> None:
    """Warn (`LargeDenseHessianWarning`) when `strategy` materialises the Hessian
    and `d` is large. Called before anything is compiled."""
    if not isinstance(strategy, DenseHessian | LineaxHessian):
        return
    message = dense_cost_message(d)
    if message is not None:
        warnings.warn(
            f"{type(strategy).__name__}: {message}",
            LargeDenseHessianWarning,
            stacklevel=stacklevel + 1,
        )


# Log lines already given at WARNING level: a strategy is traced several times per
# compilation (Newton's loop, the mode, the gradient), one line is enough.
_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message in _SAID:
        logger.debug(message)
    else:
        _SAID.add(message)
        logger.warning(message)


class AutoHessian(AbstractHessianStrategy):
    """The default Hessian strategy: find the cheapest strategy whose structure
    holds, once, before compiling.

    `AutoHessian` is a placeholder that is *resolved* where a concrete `phi` is at
    hand: [`lapsample.sample`][] (at the first chain's starting point, before
    anything is compiled), [`lapsample.LaplaceMarginal.check`][] (which checks with
    the strategy that detection picks), and
    [`lapsample.LaplaceMarginal.with_hessian_for`][] (which returns the resolved
    marginal, for evaluating it yourself). Resolution runs
    [`lapsample.detect_hessian`][] at `(theta_init, phi)` and replaces the strategy
    with what it found: [`lapsample.DiagonalHessian`][],
    [`lapsample.BlockDiagonalHessian`][], [`lapsample.BandedHessian`][] (all with
    their structure check on) or [`lapsample.DenseHessian`][]. The choice and the
    reason go to the `"lapsample"` logger (level INFO), to the resolved marginal's
    `hessian_reason` (so to its repr), and to `SampleResults.summary()`.

    **Cost.** One compiled batch of `num_points · (2·max_size + 2)`
    Hessian-vector products: 1.8 / 2.6 CPU-seconds for the seed model / a Poisson
    GP with `d = 300` on a loaded 2-core CPU, nearly all of it compilation (0.01 s
    for a second detection on the same model; `docs/choosing-components.md`).

    **When it can be wrong.** The pattern is read at `theta_init` and
    `num_points − 1` random points near it. A coupling that is exactly zero at all
    of them (switched on by a `where`, a `relu`, a data value, or only far from
    `theta_init`) is missed; the structured strategy then meets it at some mode, its
    structure check fails, and the marginal is `-inf` with
    `RESULTS.structure_violated` (a failed start names the fix:
    `hessian=lapsample.DenseHessian()`), never a wrong value. Couplings further than
    `max_size` apart in the flattened `theta` give `DenseHessian()`.

    **Unresolved.** Evaluated directly (e.g. under your own `jax.jit`, where `phi`
    is a tracer and detection cannot run) it *is* `DenseHessian()`, exactly, and
    says so once through the `"lapsample"` logger (level WARNING), with how to make
    detection run.
    """

    num_points: int = 3
    max_size: int = 16

    def __check_init__(self):
        check_int("AutoHessian(num_points=...)", self.num_points, 1)
        check_int("AutoHessian(max_size=...)", self.max_size, 1)

    def choose(
        self, log_joint: Callable, theta_init: PyTree, phi: PyTree
    ) -> tuple[AbstractHessianStrategy, str]:
        """Run the detection at `(theta_init, phi)` (concrete values) and return
        `(strategy, reason)`, and log the choice (level INFO). The
        `LaplaceMarginal` built with the strategy warns
        (`LargeDenseHessianWarning`) when it is a large dense Hessian."""
        start = time.perf_counter()
        found = detect_hessian(
            log_joint,
            theta_init,
            phi,
            num_points=self.num_points,
            max_size=self.max_size,
            verbose=False,
        )
        seconds = time.perf_counter() - start
        # No timing in the reason: it is a static field of the marginal, and the
        # same choice must give the same compiled functions.
        # `found.reason` is "<strategy>: <why>."
        reason = "chosen by AutoHessian: " + found.reason.split(": ", 1)[-1]
        logger.info(
            "LaplaceMarginal: hessian=%s, %s (detection took %.2g s; pass `hessian=` "
            "to choose yourself)",
            found.strategy,
            reason,
            seconds,
        )
        return found.strategy, reason

    def _dense(self, theta) -> DenseHessian:
        d = theta.shape[0]
        cost = dense_cost_message(d)
        _say_once(
            f"AutoHessian was evaluated before detection could run (phi was not "
            f"concrete, e.g. under your own `jax.jit`), so this marginal in d = {d} "
            "latents uses `DenseHessian()`. To let it pick a structured strategy, "
            "call `marginal = marginal.with_hessian_for(phi)` with a concrete phi "
            "before jitting (`lapsample.sample` does this itself), or pass "
            "`hessian=` to `LaplaceMarginal`." + ("" if cost is None else " " + cost)
        )
        return DenseHessian()

    @property
    def exact(self):
        # Unresolved, it factorises as `DenseHessian()` does.
        return DenseHessian().exact

    def factorise(self, fn, theta, phi):
        return self._dense(theta).factorise(fn, theta, phi)

    def logdet(self, factor):
        return DenseHessian().logdet(factor)

    def solve(self, factor, vector):
        return DenseHessian().solve(factor, vector)

    def sample(self, factor, key):
        return DenseHessian().sample(factor, key)

    def logdet_surrogate(self, factor, fn, theta, phi):
        return DenseHessian().logdet_surrogate(factor, fn, theta, phi)


AutoHessian.__init__.__doc__ = """**Arguments:**

- `num_points`: the points the detection looks at (as for
    [`lapsample.detect_hessian`][]; default 3).
- `max_size`: the widest band or largest block looked for (default 16).
"""
