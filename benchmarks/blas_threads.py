"""The BLAS thread pool under a competing load: one value+grad of a dense Laplace
marginal with the pool at its default size against limited to one thread.

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \\
        .venv/bin/python benchmarks/blas_threads.py [--d 300] [--busy 1] [--rounds 15]

jaxlib's CPU Cholesky factorisations and triangular solves call SciPy's OpenBLAS,
whose thread pool (one thread per core by default) `XLA_FLAGS` does not reach.
The model: the seed model (`theta ~ N(0, σ² I_d)`, `y ~ N(theta, I)`, phi =
log σ) with `DenseHessian`, warm-started from the mode at a nearby phi as inside a
trajectory. `--busy N` starts N busy-loop processes (a competing load; default one
fewer than the cores, "the other core"); do not set `OPENBLAS_NUM_THREADS`, which
would fix the pool before the script can compare. The two settings alternate in
rounds of `--calls` calls each, so that both see the same load; reported: the median
over rounds of the per-call wall and CPU milliseconds (`time.process_time` counts
every thread of the process, BLAS's included), and the load average.
"""

import argparse
import os
import subprocess
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import threadpoolctl

import lapsample


class SeedModel(eqx.Module):
    y: jax.Array

    def __call__(self, theta, log_sigma):
        return (
            jstats.norm.logpdf(log_sigma, 0.0, 3.0)
            + jstats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
            + jstats.norm.logpdf(self.y, theta, 1.0).sum()
        )


def value_and_grad(d: int):
    key_theta, key_y = jr.split(jr.key(0))
    theta = 2.0 * jr.normal(key_theta, (d,))
    marginal = lapsample.LaplaceMarginal(
        SeedModel(theta + jr.normal(key_y, (d,))),
        jnp.zeros(d),
        lapsample.Newton(),
        lapsample.DenseHessian(),
    )

    @eqx.filter_jit
    def run(marginal, phi, guess):
        return jax.value_and_grad(marginal, has_aux=True)(phi, guess)

    phi0 = jnp.log(2.0)
    (_, aux), _ = run(marginal, phi0, jnp.zeros(d))
    guess = aux.theta_star
    return lambda: run(marginal, phi0 + 0.05, guess)


def blas_pools():
    return [
        (os.path.basename(i["filepath"]), i["num_threads"])
        for i in threadpoolctl.threadpool_info()
        if i["user_api"] == "blas"
    ]


def per_call_ms(fn, calls: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        jax.block_until_ready(fn())
    return (
        1e3 * (time.perf_counter() - wall) / calls,
        1e3 * (time.process_time() - cpu) / calls,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d", type=int, default=300)
    parser.add_argument("--busy", type=int, default=max(1, os.cpu_count() - 1))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    fn = value_and_grad(args.d)
    jax.block_until_ready(fn())
    print(
        f"jax {jax.__version__}, {os.cpu_count()} CPUs, d = {args.d}, "
        f"{args.busy} busy-loop process(es); BLAS pools: {blas_pools()}"
    )
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(args.busy)
    ]
    try:
        time.sleep(1.0)
        load_before = os.getloadavg()
        results = {"default": [], "limited to 1": []}
        for _ in range(args.rounds):
            results["default"].append(per_call_ms(fn, args.calls))
            with threadpoolctl.threadpool_limits(1, user_api="blas"):
                results["limited to 1"].append(per_call_ms(fn, args.calls))
        load_after = os.getloadavg()
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    print("\n| BLAS pool | wall ms / call (median) | CPU ms / call (median) |")
    print("|---|---|---|")
    for name, rows in results.items():
        wall, cpu = np.median(np.asarray(rows), axis=0)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    fmt = ", ".join
    print(
        f"\nload average (1, 5, 15 min): before {fmt(f'{x:.2f}' for x in load_before)}"
        f"; after {fmt(f'{x:.2f}' for x in load_after)}"
    )


if __name__ == "__main__":
    main()
