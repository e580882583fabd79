"""Time one Laplace-marginal value-and-gradient: lapsample against the floor and
BlackJAX 1.7.

    .venv/bin/python benchmarks/marginal.py            # d = 20, 100, 300, 1000
    .venv/bin/python benchmarks/marginal.py --quick    # ~30 s, mostly compiling, for CI
    .venv/bin/python benchmarks/marginal.py --sizes 100 300
    .venv/bin/python benchmarks/marginal.py --sizes 300 1000 \
        --before ../main/src/lapsample

`--before PATH` loads a second copy of the package from `PATH` (e.g. the main
branch's `src/lapsample`) under another name and times its dense marginal
interleaved with this one, so that both see the same machine load.

The run is single-threaded (XLA's Eigen pool off, OpenBLAS at one thread, unless
the environment sets them, and the process pinned to one core unless `--cores`
says otherwise: see `pin_to_cores`), and every time is given as wall and CPU
seconds: on a shared machine the CPU time is the steadier of the two.

Two models, float64:

- `seed`: `log_sigma ~ N(0, 3²)`, `theta ~ N(0, σ² I_d)`, `y ~ N(theta, I)`. The
  Laplace approximation is exact, and `y_i ~ N(0, σ² + 1)` gives the true value
  and gradient.
- `gp`: a Poisson GP. `x = linspace(0, 10, d)`, squared-exponential kernel
  `K = a² exp(-(x_i - x_j)² / (2 l²)) + 1e-6 I`, `phi = (log a, log l)`,
  `theta ~ N(0, K)` (Cholesky of K and a triangular solve inside the log joint),
  `y_i ~ Poisson(exp(theta_i))`, true `a = 1`, `l = 1.5`; the jitter bounds
  cond(H) near 1e6. The reference is lapsample's marginal with a tight Newton
  tolerance: its value, and central finite differences of it (re-solved at
  `phi ± h`) for the gradient.

Each timing is the median over several calls of a jitted function, after a
warm-up call that compiles it, with `block_until_ready`. The marginal is evaluated
at `phi1 = phi0 + delta`, warm-started from `theta*(phi0)`, as inside a leapfrog
trajectory. The "floor" is one dense Hessian (`jax.jacfwd(jax.grad(.))`) and one
Cholesky factorisation at `(theta*(phi1), phi1)`: what any dense Laplace marginal
must do at least once per evaluation.
"""

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import platform
import statistics
import sys
import time


# Single-threaded, before jax (and the BLAS that jaxlib loads) start.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax


jax.config.update("jax_enable_x64", True)

import blackjax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import jax.scipy.special as jss
import jax.scipy.stats as jstats
from blackjax.mcmc.laplace_marginal import laplace_marginal_factory as bj_factory

import lapsample


# --------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------


class SeedModel(eqx.Module):
    """`log p(theta, log_sigma, y)` for the seed's Gaussian hierarchy."""

    y: jax.Array

    def __call__(self, theta, log_sigma):
        sigma = jnp.exp(log_sigma)
        log_prior_phi = jstats.norm.logpdf(log_sigma, 0.0, 3.0)
        log_prior_theta = jstats.norm.logpdf(theta, 0.0, sigma).sum()
        log_lik = jstats.norm.logpdf(self.y, theta, 1.0).sum()
        return log_prior_phi + log_prior_theta + log_lik

    def exact(self, log_sigma):
        """The true marginal `log p(log_sigma, y)`."""
        variance = jnp.exp(2 * log_sigma) + 1.0
        log_prior_phi = jstats.norm.logpdf(log_sigma, 0.0, 3.0)
        return log_prior_phi + jstats.norm.logpdf(self.y, 0.0, jnp.sqrt(variance)).sum()


def make_seed(d: int):
    key_theta, key_y = jr.split(jr.key(0))
    log_sigma = jnp.log(2.0)
    theta = jnp.exp(log_sigma) * jr.normal(key_theta, (d,))
    y = theta + jr.normal(key_y, (d,))
    phi0 = jnp.asarray(log_sigma)
    return SeedModel(y), phi0, phi0 + 0.05


class PoissonGP(eqx.Module):
    """`log p(theta, (log a, log l), y)` for a Poisson GP on a 1-D grid."""

    x: jax.Array
    y: jax.Array
    jitter: float = eqx.field(static=True, default=1e-6)

    def kernel(self, phi):
        amplitude, length = jnp.exp(phi[0]), jnp.exp(phi[1])
        sq = (self.x[:, None] - self.x[None, :]) ** 2
        k = amplitude**2 * jnp.exp(-0.5 * sq / length**2)
        return k + self.jitter * jnp.eye(self.x.shape[0], dtype=k.dtype)

    def __call__(self, theta, phi):
        lower = jnp.linalg.cholesky(self.kernel(phi))
        white = jsl.solve_triangular(lower, theta, lower=True)
        d = theta.shape[0]
        log_prior_theta = (
            -0.5 * jnp.dot(white, white)
            - jnp.sum(jnp.log(jnp.diagonal(lower)))
            - 0.5 * d * math.log(2 * math.pi)
        )
        log_prior_phi = jstats.norm.logpdf(phi, 0.0, 1.0).sum()
        log_lik = jnp.sum(self.y * theta - jnp.exp(theta) - jss.gammaln(self.y + 1.0))
        return log_prior_phi + log_prior_theta + log_lik


GP_AMPLITUDE, GP_LENGTH = 1.0, 1.5


def make_gp(d: int):
    x = jnp.linspace(0.0, 10.0, d)
    phi0 = jnp.log(jnp.array([GP_AMPLITUDE, GP_LENGTH]))
    key_f, key_y = jr.split(jr.key(1))
    model = PoissonGP(x, jnp.zeros(d))
    lower = jnp.linalg.cholesky(model.kernel(phi0))
    f = lower @ jr.normal(key_f, (d,))
    y = jr.poisson(key_y, jnp.exp(f)).astype(jnp.float64)
    return PoissonGP(x, y), phi0, phi0 + jnp.array([0.03, -0.02])


MODELS = {"seed": make_seed, "gp": make_gp}


# --------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------


def median_times_ms(calls: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall and CPU times in ms of each `fn(*args)` in `calls` (name ->
    (fn, args)).

    Every function is called once first (compiling it) and not timed. The timed
    calls are interleaved, one of each per round, so that a change in the
    machine's load during the run moves all of them alike and spares the ratios.
    In each round a function is called twice and the second call is timed: a
    sampler calls the same marginal back to back, with its buffers in cache, and
    the first call after another function's (BlackJAX's takes ~100 times the
    memory traffic of the floor at d = 300) would time cache refills instead (the
    seed model at d = 300: 2.9 against 2.5 times the floor).
    """
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (fn, args) in calls.items():
            jax.block_until_ready(fn(*args))
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)

    def medians(times):
        return {name: 1e3 * statistics.median(t) for name, t in times.items()}

    return medians(wall), medians(cpu)


def load_copy(path: str, name: str = "lapsample_before"):
    """Import the package at `path` (a `lapsample` folder) as module `name`."""
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def pin_to_cores(n: int) -> str:
    """Pin this process to the first `n` cores it may use (before any computation
    starts XLA's thread pools) and say which. With Eigen's pool off and one OpenBLAS
    thread, XLA:CPU still runs independent operations of one program on a second
    thread: on the 2-core box that thread's waiting was counted as CPU time (GP d =
    1000: 430 CPU-ms for 291 ms of wall time) and handing work between the threads
    made small calls slower (seed d = 300: 0.73-1.4 ms against 0.69 ms on one
    core), differently for each function, which made the CPU ratios swing by ±25 %
    between runs. On one core CPU and wall time agree and the ratios repeat to a
    few per cent."""
    allowed = sorted(os.sched_getaffinity(0))
    if n <= 0 or n >= len(allowed):
        return f"all {len(allowed)} allowed (not pinned)"
    # Every thread of the process: importing jax has started some already, and
    # Linux applies an affinity to one thread (new ones inherit their creator's).
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), allowed[:n])
    return f"pinned to {allowed[:n]} of {len(allowed)}"


def per_d2(nbytes: int | None, d: int) -> float | None:
    """Bytes as a multiple of a d × d float64 matrix."""
    return None if nbytes is None else nbytes / (8 * d * d)


def temp_bytes(fn, *args) -> int | None:
    """XLA's temporary buffer size for one call of the jitted `fn`."""
    analysis = fn.lower(*args).compile().memory_analysis()
    return None if analysis is None else analysis.temp_size_in_bytes


def repeats_for(d: int, quick: bool) -> int:
    # BlackJAX takes about a second per call at d = 1000: few rounds there.
    if quick:
        return 3
    return 5 if d >= 1000 else 10 if d >= 300 else 20


@dataclasses.dataclass
class Row:
    model: str
    d: int
    cond: float
    newton_steps: int
    dense: float
    dense_cpu: float
    dense_forward: float
    diagonal: float | None
    lineax: float
    floor: float
    floor_cpu: float
    dense_loop_cpu: float
    floor_loop_cpu: float
    blackjax: float
    blackjax_cpu: float
    before: float | None
    before_cpu: float | None
    before_loop_cpu: float | None
    temp_doubles: float | None
    before_temp_doubles: float | None
    lap_value_err: float
    lap_grad_err: float
    bj_value_err: float
    bj_grad_err: float
    bj_theta_grad_norm: float
    bj_iters: int


def jitted(fn, module):
    """`jax.jit` of `fn(module, *args)`, the module's arrays (the model's data) passed
    as arguments rather than baked in as constants. A call costs ~50 µs less than
    through `eqx.filter_jit`, which matters for the sub-millisecond diagonal case."""
    arrays, static = eqx.partition(module, eqx.is_array)
    compiled = jax.jit(lambda arrays, *args: fn(eqx.combine(arrays, static), *args))
    return functools.partial(compiled, arrays)


def value_fn(marginal):
    return jitted(lambda m, phi, theta: m(phi, theta), marginal)


def value_and_grad_fn(marginal):
    return jitted(
        lambda m, phi, theta: jax.value_and_grad(m, has_aux=True)(phi, theta),
        marginal,
    )


def value_and_grad_jit(marginal):
    """The un-partialled `jax.jit` of `value_and_grad_fn`, for `temp_bytes`."""
    arrays, static = eqx.partition(marginal, eqx.is_array)
    fn = jax.jit(
        lambda arrays, phi, theta: jax.value_and_grad(
            eqx.combine(arrays, static), has_aux=True
        )(phi, theta)
    )
    return fn, arrays


def floor_fn(log_joint):
    def floor(log_joint, theta, phi):
        hessian = jax.jacfwd(jax.grad(lambda t: -log_joint(t, phi)))(theta)
        return jnp.linalg.cholesky(hessian)

    return jitted(floor, log_joint)


def loop_length(d: int) -> int:
    """Evaluations per compiled loop in the in-loop timings."""
    return 4 if d >= 1000 else 16


def value_and_grad_loop_fn(marginal, k: int):
    """`k` value+grads in one compiled loop, each at `phi + 1e-9·i` from the same
    warm start: as inside a sampler, where the evaluation is part of a larger
    program and XLA cannot hoist a factorisation out of the solve across calls
    the way it can in a call of its own."""

    def many(m, phi, theta):
        def body(i, acc):
            (value, _), grad = jax.value_and_grad(m, has_aux=True)(
                phi + 1e-9 * i, theta
            )
            return acc + value + jnp.sum(grad)

        return jax.lax.fori_loop(0, k, body, jnp.zeros((), phi.dtype))

    return jitted(many, marginal)


def floor_loop_fn(log_joint, k: int):
    def many(log_joint, theta, phi):
        def body(i, acc):
            p = phi + 1e-9 * i
            hessian = jax.jacfwd(jax.grad(lambda t: -log_joint(t, p)))(theta)
            return acc + jnp.linalg.cholesky(hessian)[-1, -1]

        return jax.lax.fori_loop(0, k, body, jnp.zeros((), theta.dtype))

    return jitted(many, log_joint)


def central_difference(fn, phi, step: float):
    """Central differences of a scalar `fn` at a flat or scalar `phi`."""
    flat = jnp.atleast_1d(phi)
    grads = []
    for i in range(flat.shape[0]):
        e = jnp.zeros_like(flat).at[i].set(step)
        plus, minus = (flat + e).reshape(phi.shape), (flat - e).reshape(phi.shape)
        grads.append((fn(plus) - fn(minus)) / (2 * step))
    return jnp.stack(grads).reshape(phi.shape)


def benchmark(name: str, d: int, quick: bool, bj_maxiter: int, before=None) -> Row:
    log_joint, phi0, phi1 = MODELS[name](d)
    theta_init = jnp.zeros(d)

    dense = lapsample.LaplaceMarginal(
        log_joint, theta_init, lapsample.Newton(), lapsample.DenseHessian()
    )
    lineax = lapsample.LaplaceMarginal(
        log_joint, theta_init, lapsample.Newton(), lapsample.LineaxHessian()
    )
    diagonal = lapsample.LaplaceMarginal(
        log_joint, theta_init, lapsample.Newton(), lapsample.DiagonalHessian()
    )

    # An accurate mode at phi0: the warm start for everything timed below.
    solve = value_fn(dense)
    _, aux0 = solve(phi0, theta_init)
    assert aux0.result == lapsample.RESULTS.successful, aux0.result
    theta_prev = aux0.theta_star

    dense_vg = value_and_grad_fn(dense)
    (value, aux1), grad = dense_vg(phi1, theta_prev)
    assert aux1.result == lapsample.RESULTS.successful, aux1.result
    theta_star = aux1.theta_star
    warm = (phi1, theta_prev)
    calls = {
        "dense": (dense_vg, warm),
        "forward": (solve, warm),
        "lineax": (value_and_grad_fn(lineax), warm),
        "floor": (floor_fn(log_joint), (theta_star, phi1)),
        "dense_loop": (value_and_grad_loop_fn(dense, loop_length(d)), warm),
        "floor_loop": (floor_loop_fn(log_joint, loop_length(d)), (theta_star, phi1)),
    }
    if name == "seed":
        calls["diagonal"] = (value_and_grad_fn(diagonal), warm)
    temps = {}
    fn, arrays = value_and_grad_jit(dense)
    temps["now"] = temp_bytes(fn, arrays, *warm)
    if before is not None:
        old = before.LaplaceMarginal(
            log_joint, theta_init, before.Newton(), before.DenseHessian()
        )
        calls["before"] = (value_and_grad_fn(old), warm)
        calls["before_loop"] = (value_and_grad_loop_fn(old, loop_length(d)), warm)
        (old_value, _), old_grad = calls["before"][0](*warm)
        print(
            f"  {name} d={d}: before - now: value {float(old_value - value):.1e}, "
            f"gradient {float(jnp.max(jnp.abs(old_grad - grad))):.1e}",
            file=sys.stderr,
        )
        fn, arrays = value_and_grad_jit(old)
        temps["before"] = temp_bytes(fn, arrays, *warm)

    # Reference value and gradient at phi1.
    if name == "seed":
        ref_value, ref_grad = jax.value_and_grad(log_joint.exact)(phi1)
    else:
        # Newton's default stopping rule (a last step <= 1e-8 (1 + max|theta|))
        # leaves theta* off by up to that step, and the log-determinant is
        # first-order in it: too noisy for differences with a small h. Hence
        # tight tolerances here.
        tight = lapsample.LaplaceMarginal(
            log_joint,
            theta_init,
            lapsample.Newton(rtol=1e-16, atol=1e-16, xtol=1e-14),
            lapsample.DenseHessian(),
        )
        tight_solve = value_fn(tight)

        def converged(phi):
            v, a = tight_solve(phi, theta_star)
            assert a.result == lapsample.RESULTS.successful, a.result
            return v

        ref_value = converged(phi1)
        ref_grad = central_difference(converged, phi1, 1e-4)
    lap_value_err = float(jnp.abs(value - ref_value))
    lap_grad_err = float(jnp.max(jnp.abs(grad - ref_grad)))

    # BlackJAX 1.7, same warm start, fixed maxiter. Its marginal is a bundle of
    # closures, not a PyTree, so the model's data are compile-time constants here.
    bj = bj_factory(log_joint, theta_init, maxiter=bj_maxiter)
    bj_vg = jax.jit(jax.value_and_grad(bj, has_aux=True))
    (bj_value, bj_theta), bj_grad = bj_vg(phi1, theta_prev)
    calls["blackjax"] = (bj_vg, warm)
    ms, cpu = median_times_ms(calls, repeats_for(d, quick))
    _, info = jax.jit(bj.solve_theta_with_info)(phi1, theta_prev)
    bj_theta_grad_norm = float(jnp.linalg.norm(jax.grad(log_joint)(bj_theta, phi1)))

    hessian = jax.jit(jax.hessian(lambda t, p: -log_joint(t, p)))(theta_star, phi1)
    return Row(
        model=name,
        d=d,
        cond=float(jnp.linalg.cond(hessian)),
        newton_steps=int(aux1.num_steps),
        dense=ms["dense"],
        dense_cpu=cpu["dense"],
        dense_forward=ms["forward"],
        diagonal=ms.get("diagonal"),
        lineax=ms["lineax"],
        floor=ms["floor"],
        floor_cpu=cpu["floor"],
        dense_loop_cpu=cpu["dense_loop"],
        floor_loop_cpu=cpu["floor_loop"],
        blackjax=ms["blackjax"],
        blackjax_cpu=cpu["blackjax"],
        before=ms.get("before"),
        before_cpu=cpu.get("before"),
        before_loop_cpu=cpu.get("before_loop"),
        temp_doubles=per_d2(temps.get("now"), d),
        before_temp_doubles=None
        if temps.get("before") is None
        else temps["before"] / (8 * d * d),
        lap_value_err=lap_value_err,
        lap_grad_err=lap_grad_err,
        bj_value_err=float(jnp.abs(bj_value - ref_value)),
        bj_grad_err=float(jnp.max(jnp.abs(bj_grad - ref_grad))),
        bj_theta_grad_norm=bj_theta_grad_norm,
        bj_iters=int(info.iter_num),
    )


# --------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------


def fmt_ms(t: float | None) -> str:
    if t is None:
        return "–"
    return f"{t:.3g}" if t < 100 else f"{t:.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt_pair(wall: float | None, cpu: float | None) -> str:
    return "–" if wall is None else f"{fmt_ms(wall)} / {fmt_ms(cpu)}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}"


def timing_table(rows: list[Row]) -> str:
    header = [
        "model",
        "d",
        "floor wall / CPU (ms)",
        "lapsample now wall / CPU (ms)",
        "now / floor (CPU)",
        "now / floor in a loop (CPU)",
        "lapsample before wall / CPU (ms)",
        "before / floor (CPU)",
        "before / floor in a loop (CPU)",
        "blackjax wall / CPU (ms)",
        "blackjax / now (CPU)",
        "now temporaries (d² doubles)",
        "before temporaries (d² doubles)",
    ]

    def doubles(x):
        return "–" if x is None else f"{x:.2f}"

    body = [
        [
            r.model,
            str(r.d),
            fmt_pair(r.floor, r.floor_cpu),
            fmt_pair(r.dense, r.dense_cpu),
            fmt_ratio(r.dense_cpu, r.floor_cpu),
            fmt_ratio(r.dense_loop_cpu, r.floor_loop_cpu),
            fmt_pair(r.before, r.before_cpu),
            fmt_ratio(r.before_cpu, r.floor_cpu),
            fmt_ratio(r.before_loop_cpu, r.floor_loop_cpu),
            fmt_pair(r.blackjax, r.blackjax_cpu),
            fmt_ratio(r.blackjax_cpu, r.dense_cpu),
            doubles(r.temp_doubles),
            doubles(r.before_temp_doubles),
        ]
        for r in rows
    ]
    return table(header, body)


def other_strategies_table(rows: list[Row]) -> str:
    header = [
        "model",
        "d",
        "dense forward only (ms)",
        "lapsample diagonal (ms)",
        "lineax (ms)",
        "blackjax \\|value err\\|",
        "blackjax \\|grad err\\|",
    ]
    body = [
        [
            r.model,
            str(r.d),
            fmt_ms(r.dense_forward),
            fmt_ms(r.diagonal),
            fmt_ms(r.lineax),
            f"{r.bj_value_err:.1e}",
            f"{r.bj_grad_err:.1e}",
        ]
        for r in rows
    ]
    return table(header, body)


def accuracy_table(rows: list[Row], bj_maxiter: int) -> str:
    header = [
        "model",
        "d",
        "cond(H)",
        "Newton steps",
        "lapsample \\|value err\\|",
        "lapsample \\|grad err\\|",
        f"blackjax L-BFGS iters (maxiter={bj_maxiter})",
        "blackjax ‖∇θ log p‖ at its θ*",
    ]
    body = [
        [
            r.model,
            str(r.d),
            f"{r.cond:.1e}",
            str(r.newton_steps),
            f"{r.lap_value_err:.1e}",
            f"{r.lap_grad_err:.1e}",
            str(r.bj_iters),
            f"{r.bj_theta_grad_norm:.1e}",
        ]
        for r in rows
    ]
    return table(header, body)


def blackjax_note(rows: list[Row], maxiter: int) -> str:
    hit = [f"{r.model} d={r.d}" for r in rows if r.bj_iters >= maxiter]
    worst = max(rows, key=lambda r: r.bj_theta_grad_norm)
    if hit:
        stop = f"used all maxiter={maxiter} iterations at {', '.join(hit)}"
    else:
        iters = sorted({r.bj_iters for r in rows})
        stop = (
            f"stopped after {', '.join(map(str, iters))} iteration(s), before "
            f"maxiter={maxiter}, on its own ftol/gtol test"
        )
    return (
        f"BlackJAX's L-BFGS {stop}; the largest ‖∇θ log p‖ left at its θ* is "
        f"{worst.bj_theta_grad_norm:.1e} ({worst.model} d={worst.d}), and its value "
        "and gradient are those of that point, not of the mode."
    )


def targets(rows: list[Row]) -> list[str]:
    """The issue's targets, judged on the measured CPU times."""
    lines = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    big = [r for r in rows if r.d >= 300]
    if big:
        worst = min(big, key=lambda r: r.blackjax_cpu / r.dense_cpu)
        speedup = worst.blackjax_cpu / worst.dense_cpu
        lines.append(
            f"- dense ≥ 3× faster than BlackJAX at d ≥ 300: "
            f"{verdict(speedup >= 3)} (smallest speed-up {speedup:.1f}×, "
            f"{worst.model} d={worst.d})"
        )
    for model, d, bound in (("seed", 300, 2.5), ("seed", 1000, 2.5), ("gp", 1000, 5)):
        match = [r for r in rows if r.model == model and r.d == d]
        if match:
            ratio = match[0].dense_cpu / match[0].floor_cpu
            in_loop = match[0].dense_loop_cpu / match[0].floor_loop_cpu
            lines.append(
                f"- dense value+grad ≤ {bound:g}× floor on {model} at d={d}: "
                f"{verdict(ratio <= bound)} ({ratio:.2f}× per call); "
                f"{verdict(in_loop <= bound)} ({in_loop:.2f}× in a compiled loop)"
            )
    measured = [r for r in rows if r.temp_doubles is not None and r.d >= 300]
    if measured:
        worst = max(measured, key=lambda r: r.temp_doubles)
        lines.append(
            f"- peak temporaries ≤ 3 d² doubles at d ≥ 300: "
            f"{verdict(worst.temp_doubles <= 3)} (largest {worst.temp_doubles:.2f}, "
            f"{worst.model} d={worst.d})"
        )
    match = [r for r in rows if r.model == "seed" and r.d == 1000]
    if match and match[0].diagonal is not None:
        ratio = match[0].dense / match[0].diagonal
        lines.append(
            f"- (issue 2's target, not issue 19's) DiagonalHessian ≥ 300× faster "
            f"than dense on seed at d=1000: {verdict(ratio >= 300)} ({ratio:.0f}×)"
        )
    if not lines:
        lines.append("- (no size in this run is one the targets are stated for)")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small d, few repeats (a smoke run)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="latent sizes d")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(MODELS), default=["seed", "gp"]
    )
    parser.add_argument(
        "--blackjax-maxiter",
        type=int,
        default=30,
        help="BlackJAX L-BFGS maxiter (its default is 30)",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=1,
        help="run on this many of the allowed CPU cores (default 1; 0: no pinning)",
    )
    parser.add_argument(
        "--before",
        metavar="PATH",
        help="a `lapsample` package folder to time beside this one (e.g. "
        "../main/src/lapsample)",
    )
    args = parser.parse_args()
    pinned = pin_to_cores(args.cores)
    before = None if args.before is None else load_copy(args.before)
    sizes = args.sizes or ([20] if args.quick else [20, 100, 300, 1000])

    load_before = os.getloadavg()
    start = time.perf_counter()
    rows = []
    for name in args.models:
        for d in sizes:
            rows.append(benchmark(name, d, args.quick, args.blackjax_maxiter, before))
            r = rows[-1]
            print(
                f"{name} d={d}: dense {fmt_ms(r.dense)} ms, floor {fmt_ms(r.floor)} "
                f"ms, blackjax {fmt_ms(r.blackjax)} ms "
                f"({time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - start

    print(
        f"jax {jax.__version__}, blackjax {blackjax.__version__}, "
        f"lapsample {lapsample.__version__}, float64, "
        f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()})"
    )
    print()
    print("Median ms (wall / CPU) of one jitted value_and_grad at phi0 + delta,")
    print("warm-started from theta*(phi0); floor = one dense Hessian + one Cholesky;")
    print("ratios of CPU times; temporaries from XLA's memory analysis of the call;")
    print("'in a loop': 16 (d < 1000) or 4 evaluations of each in one compiled loop.")
    print(f"Cores: {pinned}.")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}, ", end="")
    print(f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')!r}")
    print()
    print(timing_table(rows))
    print()
    print(other_strategies_table(rows))
    print()
    print(accuracy_table(rows, args.blackjax_maxiter))
    print()
    print(blackjax_note(rows, args.blackjax_maxiter))
    print()
    print("Targets (issue 19):")
    print("\n".join(targets(rows)))
    print()
    print(
        f"Total time {elapsed:.0f} s. Load average (1 min) {load_before[0]:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs; this "
        "run adds about 2. More means other processes shared the CPUs and inflated "
        "and scattered the timings."
    )


if __name__ == "__main__":
    main()
