"""Time lapsample's dense triangular kernels: `L⁻¹` (`inverse_lower`) and
`(L Lᵀ)⁻¹` (`gram_of_lower_inverse`), against a second copy of the package.

    .venv/bin/python benchmarks/kernels.py --before /tmp/head/src/lapsample
    .venv/bin/python benchmarks/kernels.py --sizes 300 911 1000

`--before PATH` loads the package at `PATH` (e.g. `git archive HEAD src/lapsample |
tar -x -C /tmp/head`) under another name; both copies are timed in this process,
interleaved call by call, so that both see the same machine load. Without it only
this copy is timed, beside a triangular solve against the identity.

Single-threaded and pinned to one core as `benchmarks/marginal.py` is (its
`pin_to_cores`). `L` is the Cholesky factor of `a aᵀ / n + I` for a standard
normal `a`, float64. Each time is the median and the minimum of CPU time over the
calls, after one compiling call; temporaries are XLA's memory analysis.
"""

import argparse
import os
import statistics
import sys
import time


os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
from marginal import load_copy, pin_to_cores, table

from lapsample._linalg import dense as kernels


def identity_solve(lower):
    return jsl.solve_triangular(
        lower, jnp.eye(lower.shape[0], dtype=lower.dtype), lower=True
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 911, 1000])
    parser.add_argument("--before", help="a second copy's `lapsample` folder")
    parser.add_argument("--calls", type=int, default=0, help="timed calls per function")
    args = parser.parse_args()
    print(pin_to_cores(1), file=sys.stderr)
    copies = {"now": kernels}
    if args.before:
        load_copy(args.before)
        copies["before"] = sys.modules["lapsample_before._linalg.dense"]
    rows = []
    for n in args.sizes:
        a = jr.normal(jr.key(0), (n, n))
        lower = jnp.linalg.cholesky(a @ a.T / n + jnp.eye(n))
        exact = {"inverse_lower": identity_solve(lower)}
        exact["gram_of_lower_inverse"] = (
            exact["inverse_lower"].T @ exact["inverse_lower"]
        )
        fns = {}
        for kernel in exact:
            for copy, module in copies.items():
                fns[kernel, copy] = jax.jit(getattr(module, kernel))
        if not args.before:
            fns["inverse_lower", "solve against I"] = jax.jit(identity_solve)
        times = {key: [] for key in fns}
        for fn in fns.values():
            jax.block_until_ready(fn(lower))
        for _ in range(args.calls or (200 if n < 600 else 30)):
            for key, fn in fns.items():
                start = time.process_time()
                jax.block_until_ready(fn(lower))
                times[key].append(time.process_time() - start)
        for (kernel, copy), fn in fns.items():
            error = jnp.max(jnp.abs(fn(lower) - exact[kernel])) / jnp.max(
                jnp.abs(exact[kernel])
            )
            temps = fn.lower(lower).compile().memory_analysis().temp_size_in_bytes
            t = times[kernel, copy]
            rows.append(
                [
                    kernel,
                    str(n),
                    copy,
                    f"{1e3 * statistics.median(t):.3g}",
                    f"{1e3 * min(t):.3g}",
                    f"{temps / (8 * n * n):.2f}",
                    f"{float(error):.1e}",
                ]
            )
    header = ["kernel", "n", "copy", "median CPU-ms", "min CPU-ms", "temporaries (n²)"]
    print(table(header + ["max rel. error"], rows))
    print(
        f"Load average (1 min) {os.getloadavg()[0]:.2f} at the end, "
        f"on {os.cpu_count()} CPUs."
    )


if __name__ == "__main__":
    main()
