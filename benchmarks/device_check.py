"""A short check on an accelerator (≤ 5 minutes on one GPU), float64, one table.

    python benchmarks/device_check.py                  # GPU sizes
    python benchmarks/device_check.py --disease-map    # + the 911-cell full run
    python benchmarks/device_check.py --quick          # small sizes (runs on a CPU)

Rows, each a compiled value+grad (median of 3 calls after a compiling call, with
`block_until_ready`), on JAX's default backend:

- Poisson GP on a 1-D grid, `LatentGaussianMarginal` with a dense covariance
  (benchmarks/disease_map.py's `gp_models`), d = 2,000 / 5,000 / 10,000
  (`--quick`: 200 / 500).
- Stochastic volatility, `LaplaceMarginal` with `BandedHessian(1)`
  (examples/stochastic_volatility.py's `marginal_for`; associative recurrences off
  the CPU), warm-started at the mode of a nearby phi, T = 10⁶ / 10⁷
  (`--quick`: 10⁴ / 10⁵).
- With `--disease-map`: benchmarks/disease_map.py's full run, 911 cells (`--quick`:
  100), 4 chains × (1000 warm-up + 1000 draws) with `lapsample.sample`; about 4
  minutes on an H100, hours on a CPU. Needs ../shared/margossian.

Peak device memory is the device's `peak_bytes_in_use` where the backend reports
it (GPUs), after each row.
"""

import argparse
import pathlib
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import numpy as np


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import disease_map  # noqa: E402
from stochastic_volatility import marginal_for, PHI_INIT, simulate  # noqa: E402

import lapsample  # noqa: E402


@eqx.filter_jit
def _value_and_grad(marginal, phi, guess):
    return jax.value_and_grad(marginal, has_aux=True)(phi, guess)


def _peak_gib():
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def _time(marginal, phi, guess, repeats=3):
    """(first call s, median ms, value, Newton steps) of a compiled value+grad."""
    start = time.perf_counter()
    out = jax.block_until_ready(_value_and_grad(marginal, phi, guess))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(_value_and_grad(marginal, phi, guess))
        times.append(time.perf_counter() - start)
    (value, aux), grad = out
    assert aux.result == lapsample.RESULTS.successful, aux.result
    assert np.all(np.isfinite(np.asarray(grad))), grad
    return first, 1e3 * float(np.median(times)), float(value), int(aux.num_steps)


def gp_row(d):
    latent, _, phi0 = disease_map.gp_models(d)
    phi1 = phi0 + jnp.array([0.03, -0.02])
    _, aux0 = eqx.filter_jit(latent)(phi0)
    return _time(latent, phi1, aux0.theta_star)


def sv_row(num_steps):
    marginal = marginal_for(simulate(num_steps))
    (_, aux), _ = _value_and_grad(marginal, PHI_INIT, marginal.theta_init)
    return _time(marginal, PHI_INIT + 1e-3, aux.theta_star)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CPU)")
    parser.add_argument(
        "--disease-map", action="store_true", help="also the disease map's full run"
    )
    args = parser.parse_args(argv)
    gp_sizes = (200, 500) if args.quick else (2_000, 5_000, 10_000)
    sv_sizes = (10_000, 100_000) if args.quick else (1_000_000, 10_000_000)
    cells = 100 if args.quick else 911
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), float64"
        + (", quick sizes" if args.quick else "")
    )
    print(
        "\n| model | size | first call (s) | value+grad (ms) | Newton steps "
        "| value | peak device GiB |"
    )
    print("|---|---|---|---|---|---|---|")

    def show(name, size, row):
        first, ms, value, steps = row
        peak = _peak_gib()
        peak = "n/a" if peak is None else f"{peak:.2f}"
        print(
            f"| {name} | {size:,} | {first:.2f} | {ms:.4g} | {steps} | {value:.6g} "
            f"| {peak} |",
            flush=True,
        )

    for d in gp_sizes:
        show("Poisson GP, dense latent-Gaussian", d, gp_row(d))
    for t in sv_sizes:
        show("SV, BandedHessian(1)", t, sv_row(t))
    if args.disease_map:
        if not disease_map.DATA.is_dir():
            print(f"\n(disease map full run skipped: {disease_map.DATA} is absent)")
        else:
            f = disease_map.full_run(cells)
            print(
                f"| disease map full run, 4 × (1000 + 1000) | {cells} cells "
                f"| {f['first_call_s']:.1f} | whole run {f['wall_s']:.1f} s "
                f"| {f['mean_steps']:.1f} leapfrog/it | divergences "
                f"{f['divergences']}, bulk ESS "
                f"{', '.join(f'{e:.0f}' for e in f['ess'])} | {_peak_gib() or 'n/a'} |"
            )


if __name__ == "__main__":
    main()
