"""The BLAS thread pool under a competing load: one value+grad of a dense Laplace
marginal with the pool at its default size against limited to one thread.

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \\
        .venv/bin/python benchmarks/blas_threads.py [--d 300] [--busy 1] [--rounds 15]
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false \\
        --xla_force_host_platform_device_count=2" \\
        .venv/bin/python benchmarks/blas_threads.py --sampler --busy 0 --rounds 2

`--sampler`: whole runs of `lapsample.sample` instead (the 100-cell disease map of
examples/disease_map.py, 4 chains x (300 + 300), from ../shared/margossian), with
`blas_threads=None` (one thread) against `blas_threads=<cores>` (the pool's
default size), alternating; the same key, so the same trajectories up to round-off.

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
import importlib.util
import math
import os
import subprocess
import sys
import time
from pathlib import Path

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


def disease_map_runs(blas_threads: int):
    """`run()`: one `lapsample.sample` of the 100-cell disease map."""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "disease_map_example", root / "examples" / "disease_map.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    likelihood, covariance, log_prior = example.make_model(example.load(100))
    marginal = lapsample.LatentGaussianMarginal(
        likelihood, covariance=covariance, log_prior=log_prior
    )

    def run():
        results = lapsample.sample(
            jr.key(0),
            marginal,
            jnp.array([0.0, math.log(5.0)]),
            num_warmup=300,
            num_samples=300,
            dense_mass=True,
            progress_bar=False,
            blas_threads=blas_threads,
        )
        return results.phi

    return run


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
    parser.add_argument("--sampler", action="store_true")
    args = parser.parse_args()
    if args.sampler:
        cores = len(os.sched_getaffinity(0))
        runs = {
            "default (1 thread)": disease_map_runs(None),
            f"{cores} threads": disease_map_runs(cores),
        }
        jax.block_until_ready(runs["default (1 thread)"]())  # compiles
        args.calls = 1
        print(f"devices: {len(jax.devices())}")
    else:
        fn = value_and_grad(args.d)
        jax.block_until_ready(fn())
        runs = {"default": fn, "limited to 1": fn}
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
        results = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, fn in runs.items():
                if args.sampler or name == "default":
                    results[name].append(per_call_ms(fn, args.calls))
                    continue
                with threadpoolctl.threadpool_limits(1, user_api="blas"):
                    results[name].append(per_call_ms(fn, args.calls))
        load_after = os.getloadavg()
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    unit, scale = ("s / run", 1e-3) if args.sampler else ("ms / call", 1.0)
    print(f"\n| BLAS pool | wall {unit} (median) | CPU {unit} (median) |")
    print("|---|---|---|")
    for name, rows in results.items():
        wall, cpu = scale * np.median(np.asarray(rows), axis=0)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    fmt = ", ".join
    print(
        f"\nload average (1, 5, 15 min): before {fmt(f'{x:.2f}' for x in load_before)}"
        f"; after {fmt(f'{x:.2f}' for x in load_after)}"
    )


if __name__ == "__main__":
    main()
