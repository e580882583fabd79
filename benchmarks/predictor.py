"""Does a first-order predictor warm start cut Newton steps? (issue 19)

    python benchmarks/predictor.py              # 911-cell disease map
    python benchmarks/predictor.py --cells 100

Samplers warm-start each inner solve from the previous mode `theta*(phi_prev)`. The
predictor would start from `theta*(phi_prev) + (dtheta*/dphi) · Δphi` instead, whose
error is second order in `Δphi`. This script measures, on the disease map
(`LatentGaussianMarginal`, examples/disease_map.py's model), the Newton steps of one
solve at `phi_prev + Δphi` from both starts, for random directions of several lengths
`|Δphi|` (10 each, fixed seed). The tangent is the exact one (central differences of
converged modes, h = 1e-5), so this is the best a predictor could do. Compare the
lengths with the leapfrog steps of a real run: `--leapfrog` runs one chain of 200
warm-up iterations and prints the adapted step size `ε`, the root-mean-square
leapfrog move `ε·sqrt(tr M⁻¹)` (momentum `p ~ N(0, M)`) and, over 100 draws, the
mean of each transition's largest Newton step count (`sample_stats["inner_steps"]`).
"""

import argparse
import importlib.util
import math
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import numpy as np


ROOT = Path(__file__).resolve().parent


def _disease_map_benchmark():
    spec = importlib.util.spec_from_file_location(
        "disease_map_benchmark", ROOT / "disease_map.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=911, choices=(100, 250, 911))
    parser.add_argument("--leapfrog", action="store_true")
    args = parser.parse_args()
    latent, _, _ = _disease_map_benchmark().disease_map_models(args.cells)
    solve = eqx.filter_jit(lambda phi, guess: latent(phi, guess)[1])
    phi0 = jnp.array([math.log(0.8), math.log(6.0)])
    theta0 = solve(phi0, None).theta_star
    h = 1e-5
    tangent = jnp.stack(
        [
            (
                solve(phi0 + h * e, theta0).theta_star
                - solve(phi0 - h * e, theta0).theta_star
            )
            / (2 * h)
            for e in jnp.eye(2)
        ],
        axis=1,
    )
    rng = np.random.default_rng(0)
    print(f"disease map, {args.cells} cells, phi_prev = (log 0.8, log 6)")
    print("\n| abs dphi | Newton steps, previous mode | Newton steps, predictor |")
    print("|---|---|---|")
    for length in (0.01, 0.03, 0.1, 0.3):
        plain, predicted = [], []
        for _ in range(10):
            d = jnp.asarray(rng.normal(size=2))
            d = length * d / jnp.linalg.norm(d)
            plain.append(int(solve(phi0 + d, theta0).num_steps))
            predicted.append(int(solve(phi0 + d, theta0 + tangent @ d).num_steps))
        print(f"| {length} | {np.mean(plain):.1f} | {np.mean(predicted):.1f} |")
    if args.leapfrog:
        import jax.random as jr

        import lapsample

        results = lapsample.sample(
            jr.key(0),
            latent,
            phi0,
            num_warmup=200,
            num_samples=100,
            num_chains=1,
            progress_bar=False,
        )
        step = float(np.asarray(results.step_size)[0])
        inv_mass = np.asarray(results.inverse_mass_matrix)[0]
        diagonal = np.diag(inv_mass) if inv_mass.ndim == 2 else inv_mass
        trace = float(diagonal.sum())
        inner = np.asarray(results.sample_stats["inner_steps"], float)
        print(
            f"\nafter 200 warm-up iterations: step size {step:.3f}, inverse mass "
            f"diagonal {np.round(diagonal, 4)}, "
            f"RMS leapfrog move {step * np.sqrt(trace):.3f}; most Newton steps of "
            f"an evaluation per transition, mean over 100 draws {inner.mean():.2f}"
        )


if __name__ == "__main__":
    main()
