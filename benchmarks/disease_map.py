"""The latent-Gaussian marginal against the dense Laplace path.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        .venv/bin/python benchmarks/disease_map.py             # 911 cells, GP d = 1000
    .venv/bin/python benchmarks/disease_map.py --quick         # 100 cells, GP d = 200
    .venv/bin/python benchmarks/disease_map.py --full-run 100  # + 4 x (1000 + 1000)
    .venv/bin/python benchmarks/disease_map.py --profile       # n³ operations, CPU-ms
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false \
               --xla_force_host_platform_device_count=2" \
        .venv/bin/python benchmarks/disease_map.py --only-full-run --full-run 911
                                             # the 911-cell run, chains on 2 cores

Three measurements, float64:

1. Disease map of Finland (examples/disease_map.py's model; needs ../shared/margossian):
   one jitted value+grad of `LatentGaussianMarginal` (B = I + W½KW½ Newton, one
   reverse-mode VJP through K(phi)) against `LaplaceMarginal(log_joint,
   hessian=DenseHessian())` on the same model written as a log joint (Cholesky of K
   and a triangular solve inside). Both at `phi1 = phi0 + (0.03, -0.02)`, warm-started
   from `theta*(phi0)`, as inside a leapfrog trajectory; the accuracy columns compare
   the two.
2. Poisson GP on a 1-D grid (benchmarks/marginal.py's `gp` model: `x = linspace(0,
   10, d)`, `K = a² exp(-(x_i - x_j)²/(2 l²)) + 1e-6 I`, `y ~ Poisson(exp f)`, true
   `a = 1`, `l = 1.5`): the latent-Gaussian marginal's value+grad over its value
   alone (the backward-to-forward ratio) and against the generic dense floor (one
   dense Hessian of the log joint and one Cholesky).
3. With `--full-run CELLS`: `lapsample.sample` with 4 chains x (1000 warm-up + 1000
   draws) on the disease map, wall time including compilation, and the mean number
   of leapfrog steps per iteration (used to estimate the cost of a run elsewhere).

Timings are the fastest of several calls after a compiling call, with
`block_until_ready` (on a shared machine other jobs only add time).
"""

import argparse
import importlib.util
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np

import lapsample


ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "margossian"


def best_ms(fn, *args, repeats: int, clock=time.perf_counter, stat=min) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = clock()
        jax.block_until_ready(fn(*args))
        times.append(clock() - start)
    # The minimum, not the median: on a shared machine the other jobs only ever add
    # time, so the fastest call is the best estimate of the cost itself.
    return 1e3 * float(stat(times))


def _example_module():
    """examples/disease_map.py (the model and the data loader), by path: it has
    this script's name."""
    spec = importlib.util.spec_from_file_location(
        "disease_map_example", ROOT / "examples" / "disease_map.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EXAMPLE = _example_module()
load, make_model = _EXAMPLE.load, _EXAMPLE.make_model


# --------------------------------------------------------------------------------
# Disease map
# --------------------------------------------------------------------------------


def disease_map_models(cells: int):
    likelihood, covariance, log_prior = make_model(load(cells))
    n = likelihood.y.shape[0]
    latent = lapsample.LatentGaussianMarginal(
        likelihood, covariance=covariance, log_prior=log_prior
    )

    def log_joint(theta, phi):
        chol = jnp.linalg.cholesky(covariance(phi))
        white = jsl.solve_triangular(chol, theta, lower=True)
        return (
            log_prior(phi)
            - 0.5 * jnp.dot(white, white)
            - jnp.sum(jnp.log(jnp.diagonal(chol)))
            - 0.5 * n * math.log(2 * math.pi)
            + likelihood.log_density(theta, None)
        )

    dense = lapsample.LaplaceMarginal(log_joint, jnp.zeros(n))
    return latent, dense, n


def value_and_grad(marginal):
    @eqx.filter_jit
    def run(marginal, phi, guess):
        (value, aux), grad = jax.value_and_grad(marginal, has_aux=True)(phi, guess)
        return value, grad, aux.result, aux.num_steps

    return lambda phi, guess: run(marginal, phi, guess)


def value_only(marginal):
    @eqx.filter_jit
    def run(marginal, phi, guess):
        value, aux = marginal(phi, guess)
        return value, aux.result

    return lambda phi, guess: run(marginal, phi, guess)


def bench_disease_map(cells: int, repeats: int) -> dict:
    latent, dense, n = disease_map_models(cells)
    phi0 = jnp.array([math.log(0.8), math.log(6.0)])
    phi1 = phi0 + jnp.array([0.03, -0.02])
    _, aux0 = eqx.filter_jit(latent)(phi0)
    guess = aux0.theta_star
    vg_latent = value_and_grad(latent)
    vg_dense = value_and_grad(dense)
    v_latent, g_latent, r_latent, steps_latent = vg_latent(phi1, guess)
    v_dense, g_dense, r_dense, steps_dense = vg_dense(phi1, guess)
    assert r_latent == lapsample.RESULTS.successful
    assert r_dense == lapsample.RESULTS.successful
    t_latent = best_ms(vg_latent, phi1, guess, repeats=repeats)
    t_value = best_ms(value_only(latent), phi1, guess, repeats=repeats)
    t_dense = best_ms(vg_dense, phi1, guess, repeats=max(2, repeats // 3))
    return dict(
        cells=n,
        latent_vg_ms=t_latent,
        latent_value_ms=t_value,
        dense_vg_ms=t_dense,
        speedup=t_dense / t_latent,
        value_rel_diff=float(abs(v_latent - v_dense) / abs(v_dense)),
        grad_rel_diff=float(
            jnp.max(jnp.abs(g_latent - g_dense)) / jnp.max(jnp.abs(g_dense))
        ),
        newton_steps=(int(steps_latent), int(steps_dense)),
    )


# --------------------------------------------------------------------------------
# Poisson GP, backward vs forward
# --------------------------------------------------------------------------------


def gp_models(d: int):
    x = jnp.linspace(0.0, 10.0, d)

    def covariance(phi):
        a, length = jnp.exp(phi[0]), jnp.exp(phi[1])
        sq = (x[:, None] - x[None, :]) ** 2
        return a**2 * jnp.exp(-sq / (2 * length**2)) + 1e-6 * jnp.eye(d)

    phi0 = jnp.log(jnp.array([1.0, 1.5]))
    key_f, key_y = jr.split(jr.key(0))
    f = jnp.linalg.cholesky(covariance(phi0)) @ jr.normal(key_f, (d,))
    y = jr.poisson(key_y, jnp.exp(f)).astype(jnp.float64)
    likelihood = lapsample.PoissonLog(y)
    latent = lapsample.LatentGaussianMarginal(likelihood, covariance=covariance)

    def log_joint(theta, phi):
        chol = jnp.linalg.cholesky(covariance(phi))
        white = jsl.solve_triangular(chol, theta, lower=True)
        return (
            -0.5 * jnp.dot(white, white)
            - jnp.sum(jnp.log(jnp.diagonal(chol)))
            + likelihood.log_density(theta, None)
        )

    return latent, log_joint, phi0


def bench_gp(d: int, repeats: int) -> dict:
    latent, log_joint, phi0 = gp_models(d)
    phi1 = phi0 + jnp.array([0.03, -0.02])
    _, aux0 = eqx.filter_jit(latent)(phi0)
    guess = aux0.theta_star
    t_vg = best_ms(value_and_grad(latent), phi1, guess, repeats=repeats)
    t_v = best_ms(value_only(latent), phi1, guess, repeats=repeats)
    _, aux1 = eqx.filter_jit(latent)(phi1, guess)
    theta1 = aux1.theta_star

    @jax.jit
    def floor(theta, phi):
        hess = jax.jacfwd(jax.grad(lambda t: -log_joint(t, phi)))(theta)
        return jnp.linalg.cholesky(hess)

    t_floor = best_ms(floor, theta1, phi1, repeats=max(2, repeats // 2))
    return dict(
        d=d,
        value_ms=t_v,
        vg_ms=t_vg,
        ratio=t_vg / t_v,
        floor_ms=t_floor,
        vg_over_floor=t_vg / t_floor,
    )


# --------------------------------------------------------------------------------
# Profile: what one latent-Gaussian value+grad executes, against its floor
# --------------------------------------------------------------------------------


def _cpu_ms(fn, *args, repeats: int) -> float:
    """Median CPU milliseconds of a jitted call (CPU time: other jobs on a shared
    machine do not count, unlike wall time)."""
    return best_ms(fn, *args, repeats=repeats, clock=time.process_time, stat=np.median)


def profile(cells: int, repeats: int, steps_per_draw: float = 4.4) -> dict:
    """Counts of the n³ operations in the compiled value+grad (static sites in the
    HLO text, and which sit in Newton's loop), the Newton steps taken from a warm
    start, their CPU cost, the floor `(steps + 1)` Cholesky factors of `B` + the
    Cholesky of `K` (its positive-definiteness check) + what the gradient needs,
    `B⁻¹` (blocked inverse and triangular gram, `_linalg/dense.py`), the CPU cost
    per evaluation inside a compiled loop (`loop_cpu_ms`) and the projected full run
    from it (`steps_per_draw` leapfrog steps, 4 chains x 2000 iterations, on one
    core; half that on two host devices)."""
    import re

    latent, _, n = disease_map_models(cells)
    phi0 = jnp.array([math.log(0.8), math.log(6.0)])
    phi1 = phi0 + jnp.array([0.03, -0.02])
    guess = eqx.filter_jit(latent)(phi0)[1].theta_star
    arrays, static = eqx.partition(latent, eqx.is_array)

    @jax.jit
    def vg(arrays, phi, guess):
        marginal = eqx.combine(arrays, static)
        (value, aux), grad = jax.value_and_grad(marginal, has_aux=True)(phi, guess)
        return value, grad, aux.num_steps

    hlo = vg.lower(arrays, phi1, guess).compile().as_text()
    loop = "\n".join(
        block
        for block in re.split(r"\n(?=\S)", hlo)
        if "while/body" in block and "ENTRY" not in block
    )
    square = f"f64[{n},{n}]"

    def count(text):
        lines = text.splitlines()
        return dict(
            cholesky=sum("potrf" in x and "custom-call(" in x for x in lines),
            trsm_nxn=sum("trsm" in x and f"= {square}" in x for x in lines),
            dot_nxn=sum(" dot(" in x and f"= {square}" in x for x in lines),
        )

    steps = int(vg(arrays, phi1, guess)[2])
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)))
    spd = a @ a.T / n + jnp.eye(n)
    lower = jnp.linalg.cholesky(spd)
    t_chol = _cpu_ms(jax.jit(jnp.linalg.cholesky), spd, repeats=repeats)
    t_trsm = _cpu_ms(
        jax.jit(lambda m, x: jsl.solve_triangular(m, x, lower=True)),
        lower,
        a,
        repeats=repeats,
    )
    t_dot = _cpu_ms(jax.jit(jnp.matmul), a, spd, repeats=repeats)
    from lapsample._linalg.dense import gram_of_lower_inverse

    t_inv = _cpu_ms(jax.jit(gram_of_lower_inverse), lower, repeats=repeats)
    t_vg = _cpu_ms(vg, arrays, phi1, guess, repeats=repeats)
    t_v = _cpu_ms(value_only(latent), phi1, guess, repeats=repeats)
    floor = (steps + 2) * t_chol + t_inv
    in_loop = loop_cpu_ms(latent, phi0)
    return dict(
        cells=n,
        all_sites=count(hlo),
        loop_sites=count(loop),
        newton_steps=steps,
        cholesky_ms=t_chol,
        trsm_ms=t_trsm,
        dot_ms=t_dot,
        b_inverse_ms=t_inv,
        value_ms=t_v,
        vg_ms=t_vg,
        floor_ms=floor,
        loop_value_cpu_ms=in_loop["value"],
        loop_vg_cpu_ms=in_loop["value+grad"],
        loop_newton_steps=in_loop["newton_steps"],
        projected_run_min=in_loop["value+grad"] * steps_per_draw * 8000 / 6e4,
    )


def loop_cpu_ms(latent, phi0, evaluations: int = 10, repeats: int = 7) -> dict:
    """CPU milliseconds per evaluation inside one compiled loop of `evaluations`
    value (and value+grad) calls along a line in phi, each warm-started from the
    previous mode, as in a trajectory (steps of (0.03, -0.02)): the median of
    `repeats` loops. Unlike single calls, the loop reuses XLA's temporaries as a
    sampler does (a single call maps ~40 MB afresh and page-faults through it)."""
    step = jnp.array([0.03, -0.02])
    guess = eqx.filter_jit(latent)(phi0)[1].theta_star
    out = {}
    for name in ("value", "value+grad"):

        @eqx.filter_jit
        def run(marginal, guess, name=name):
            def body(k, carry):
                guess, total, steps = carry
                phi = phi0 + (k + 1) * step
                if name == "value":
                    value, aux = marginal(phi, guess)
                else:
                    (value, aux), grad = jax.value_and_grad(marginal, has_aux=True)(
                        phi, guess
                    )
                    value = value + jnp.sum(grad)
                return aux.theta_star, total + value, steps + aux.num_steps

            return jax.lax.fori_loop(0, evaluations, body, (guess, 0.0, 0))

        out[name] = _cpu_ms(run, latent, guess, repeats=repeats) / evaluations
        out["newton_steps"] = int(run(latent, guess)[2]) / evaluations
    return out


# --------------------------------------------------------------------------------
# Full run
# --------------------------------------------------------------------------------


def full_run(cells: int, chunk_size: int = 40) -> dict:
    """4 chains × (1000 warm-up + 1000 draws). A short run with the same chunk
    length compiles first, so `wall_s` is the run alone; `first_call_s` is the
    short run (compilation + 2 chunks per chain)."""
    import arviz as az

    latent, _, _ = disease_map_models(cells)
    phi0 = jnp.array([0.0, math.log(5.0)])

    def run(key, num_warmup, num_samples):
        start = time.perf_counter()
        results = lapsample.sample(
            key,
            latent,
            phi0,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=4,
            chunk_size=chunk_size,
            # Shown only on a terminal: a 911-cell run on a CPU takes hours.
            progress_bar=True,
        )
        return results, time.perf_counter() - start

    _, first = run(jr.key(1), chunk_size, chunk_size)
    cpu_start = time.process_time()
    results, wall = run(jr.key(0), 1000, 1000)
    cpu = time.process_time() - cpu_start
    steps = np.asarray(results.sample_stats["n_steps"])
    phi = np.asarray(results.phi)
    return dict(
        cells=cells,
        first_call_s=first,
        wall_s=wall,
        cpu_s=cpu,
        devices=jax.device_count(),
        load=os.getloadavg(),
        mean_steps=float(steps.mean()),
        divergences=int(np.asarray(results.num_divergences).sum()),
        inner_failures=int(np.asarray(results.num_inner_failures).sum()),
        ess=[float(az.ess(phi[:, :, i], method="bulk")) for i in range(phi.shape[2])],
        rhat=[float(az.rhat(phi[:, :, i])) for i in range(phi.shape[2])],
        chain_method="sequential" if jax.default_backend() == "cpu" else "vectorized",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cells", type=int, default=911, choices=(100, 250, 911))
    parser.add_argument("--gp-size", type=int, default=1000)
    parser.add_argument("--full-run", type=int, default=None, choices=(100, 250, 911))
    parser.add_argument(
        "--only-full-run", action="store_true", help="skip the value+grad tables"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only the operation counts and CPU costs of one value+grad",
    )
    args = parser.parse_args()
    cells, gp_size, repeats = args.cells, args.gp_size, 7
    if args.quick:
        cells, gp_size, repeats = 100, 200, 3
    print(
        f"jax {jax.__version__}, {platform.machine()}, {jax.devices()[0].platform}, "
        "float64"
    )

    if args.only_full_run:
        _print_full_run(args.full_run)
        return
    if args.profile:
        for key, value in profile(cells, max(repeats, 9)).items():
            print(
                f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}"
            )
        return
    print(
        "\n| model | n | latent-Gaussian value (ms) | latent-Gaussian value+grad (ms) "
        "| dense value+grad (ms) | dense / latent | value rel. diff | grad rel. diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    if DATA.is_dir():
        r = bench_disease_map(cells, repeats)
        print(
            f"| disease map | {r['cells']} | {r['latent_value_ms']:.3g} | "
            f"{r['latent_vg_ms']:.3g} | {r['dense_vg_ms']:.4g} | {r['speedup']:.0f}x | "
            f"{r['value_rel_diff']:.1e} | {r['grad_rel_diff']:.1e} |"
        )
    else:
        print(f"(disease map skipped: {DATA} is absent)")

    g = bench_gp(gp_size, repeats)
    print(
        "\n| model | d | value (ms) | value+grad (ms) | value+grad / value "
        "| dense floor (ms) | value+grad / floor |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| Poisson GP | {g['d']} | {g['value_ms']:.3g} | {g['vg_ms']:.3g} | "
        f"{g['ratio']:.2f} | {g['floor_ms']:.4g} | {g['vg_over_floor']:.2f} |"
    )

    _print_full_run(args.full_run)


def _print_full_run(cells):
    if cells is None:
        return
    if not DATA.is_dir():
        print(f"(full run skipped: {DATA} is absent)")
        return
    f = full_run(cells)
    print(
        f"\nfull run, {f['cells']} cells, 4 chains x (1000 warm-up + 1000 draws), "
        f"chains {f['chain_method']} on {f['devices']} device(s): "
        f"{f['wall_s']:.0f} s wall, {f['cpu_s']:.0f} CPU-s compiled (first call, "
        f"compilation + 2 x 40 iterations: {f['first_call_s']:.0f} s); mean "
        f"leapfrog steps per iteration {f['mean_steps']:.1f}; divergences "
        f"{f['divergences']}; failed inner solves {f['inner_failures']}; bulk ESS "
        f"{', '.join(f'{e:.0f}' for e in f['ess'])}; R-hat "
        f"{', '.join(f'{r:.3f}' for r in f['rhat'])}; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in f['load'])}"
    )


if __name__ == "__main__":
    sys.exit(main())
