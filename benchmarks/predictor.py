"""Does a first-order predictor warm start cut Newton steps? (issue 19)

    python benchmarks/predictor.py              # 911-cell disease map
    python benchmarks/predictor.py --cells 100
    python benchmarks/predictor.py --xtol 3.7e-11 1e-9   # step tolerances, A/B
    python benchmarks/predictor.py --secant 0.778 0.35    # a free secant predictor
    python benchmarks/predictor.py --trajectories 0.778 0.35   # the built one, A/B

`--trajectories EPS ...` runs leapfrog trajectories (8 of 8 steps per step size,
fixed momenta, the 911-cell run's adapted inverse mass) through lapsample's own
integrator, each in one compiled loop, with `LatentGaussianMarginal(predictor=True)`
(the default: each solve starts from the better of the previous mode and the secant
prediction, `lapsample.WarmStart`) and `predictor=False`, and prints Newton steps
per evaluation, the largest difference of the log densities along the trajectories
and CPU-ms per evaluation (the two interleaved `--repeats` times in this process;
medians). `--cells 0` runs the stochastic volatility model (T = 1000, precision
form) instead of the disease map; `--generic` the disease map as a
`LaplaceMarginal` (dense Hessian, Newton: the generic path takes the pair too).

`--sample ROUNDS` runs `lapsample.sample` (NUTS, 2 chains × (150 + 150), keys
1..ROUNDS) with and without the prediction, interleaved, and prints CPU-ms per
leapfrog step (warm-up included) and the mean over transitions of the most Newton
steps of an evaluation; the first round includes compilation. Run it with
`XLA_FLAGS` set to `--xla_cpu_multi_thread_eigen=false
--xla_force_host_platform_device_count=2`.

`--secant EPS ...` integrates leapfrog trajectories with each step size (the
inverse mass of a 911-cell run's adaptation) and counts Newton steps per
evaluation from the previous mode, from a secant prediction (the last two modes
extrapolated along the projection of the new move on the last: no tangent to
compute), and from the better of the two by the log joint at the new phi.

`--xtol X ...` compares Newton's step tolerances instead: the default (1e-8 in
float64) and each `X`, along one trajectory of ten moves of about 0.1 in phi (each
solve warm-started from the previous mode, value+grad inside one compiled loop, as a
sampler runs them): Newton steps per evaluation, the largest error of the log
marginal (nats) and of its gradient (relative) against `xtol = 1e-14`, and CPU-ms
per evaluation, the variants interleaved six times in this one process (medians).
Run it single-threaded (`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
OPENBLAS_NUM_THREADS=1`).

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
import dataclasses
import importlib.util
import math
import os
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import lapsample
from lapsample._hamiltonian import Hamiltonian, initial_point
from lapsample._metric import metric_from_inverse_mass_matrix
from lapsample._misc import TreeRaveller
from lapsample._phase_space import FlatLogDensity


ROOT = Path(__file__).resolve().parent
# The adapted inverse mass diagonal of a 911-cell run (`--leapfrog`, 200 warm-up
# iterations); its step size was 0.778.
INVERSE_MASS = (0.0088, 0.0103)


def _disease_map_benchmark():
    spec = importlib.util.spec_from_file_location(
        "disease_map_benchmark", ROOT / "disease_map.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compare_xtol(latent, phi0, xtols, evaluations=10, repeats=6):
    move = jnp.array([0.08, -0.06])  # |move| = 0.1, alternately scaled by 0.7

    @eqx.filter_jit
    def trajectory(marginal, guess):
        def body(k, carry):
            guess, steps, out = carry
            phi = phi0 + (k + 1) * move * jnp.where(k % 2 == 0, 1.0, 0.7)
            (value, aux), grad = jax.value_and_grad(marginal, has_aux=True)(phi, guess)
            out = out.at[k].set(jnp.concatenate([value[None], grad]))
            return aux.theta_star, steps + aux.num_steps, out

        out = jnp.zeros((evaluations, 1 + phi0.size))
        return jax.lax.fori_loop(0, evaluations, body, (guess, 0, out))

    guess = eqx.filter_jit(latent)(phi0)[1].theta_star
    tight = dataclasses.replace(latent, xtol=1e-14)
    reference = np.asarray(trajectory(tight, guess)[2])
    variants = {"default (1e-8)": latent}
    variants.update({f"{x:g}": dataclasses.replace(latent, xtol=x) for x in xtols})
    rows = {}
    for name, marginal in variants.items():
        _, steps, out = trajectory(marginal, guess)
        error = np.abs(np.asarray(out) - reference)
        rows[name] = [
            int(steps) / evaluations,
            error[:, 0].max(),
            (error[:, 1:] / np.abs(reference[:, 1:])).max(),
        ]
    cpu = {name: [] for name in variants}
    for _ in range(repeats):
        for name, marginal in variants.items():
            start = time.process_time()
            jax.block_until_ready(trajectory(marginal, guess))
            cpu[name].append(1e3 * (time.process_time() - start) / evaluations)
    print(
        "\n| xtol | Newton steps / evaluation | max abs value error (nats) "
        "| max relative gradient error | CPU-ms / value+grad (median) |"
    )
    print("|---|---|---|---|---|")
    for name, (steps, value_error, grad_error) in rows.items():
        print(
            f"| {name} | {steps:.1f} | {value_error:.1e} | {grad_error:.1e} "
            f"| {np.median(cpu[name]):.1f} |"
        )
    print(f"\nload average {os.getloadavg()}")


def compare_secant(latent, log_joint, phi0, step_sizes, inverse_mass, seed=0):
    """Newton steps per evaluation along leapfrog trajectories (8 trajectories of 8
    steps per step size, fixed seed), warm-started three ways: from the previous
    mode; from the secant prediction `theta_k + a (theta_k - theta_(k-1))`, `a` the
    projection of the new move on the last one (free: no tangent is computed);
    and from whichever of the two has the higher log joint at the new phi."""
    value_and_grad = eqx.filter_jit(
        lambda phi, guess: jax.value_and_grad(lambda p: latent(p, guess), has_aux=True)(
            phi
        )
    )
    joint = jax.jit(log_joint)

    def steps(phi, guess):
        return int(value_and_grad(phi, guess)[0][1].num_steps)

    rng = np.random.default_rng(seed)
    print("\n| step size | RMS move | previous mode | secant | better of the two |")
    print("|---|---|---|---|---|")
    for step_size in step_sizes:
        counts = {"previous": [], "secant": [], "better": []}
        moves = []
        for _ in range(8):
            momentum = jnp.asarray(rng.normal(size=2)) / jnp.sqrt(inverse_mass)
            (_, aux), grad = value_and_grad(phi0, None)
            phi, theta = phi0, aux.theta_star
            last_phi, last_theta = phi, theta
            for _ in range(8):
                momentum = momentum + 0.5 * step_size * grad
                new = phi + step_size * inverse_mass * momentum
                moves.append(float(jnp.linalg.norm(new - phi)))
                last_move, move = phi - last_phi, new - phi
                norm = float(last_move @ last_move)
                a = float(move @ last_move) / norm if norm > 0 else 0.0
                secant = theta + a * (theta - last_theta)
                better = secant if joint(secant, new) > joint(theta, new) else theta
                counts["secant"].append(steps(new, secant))
                counts["better"].append(steps(new, better))
                (_, aux), grad = value_and_grad(new, theta)
                counts["previous"].append(int(aux.num_steps))
                last_phi, last_theta = phi, theta
                phi, theta = new, aux.theta_star
                momentum = momentum + 0.5 * step_size * grad
        rms = math.sqrt(np.mean(np.square(moves)))
        print(
            f"| {step_size} | {rms:.3f} | {np.mean(counts['previous']):.2f} | "
            f"{np.mean(counts['secant']):.2f} | {np.mean(counts['better']):.2f} |"
        )


def compare_trajectories(latent, phi0, step_sizes, inverse_mass, repeats, seed=0):
    """Newton steps and CPU time per evaluation along leapfrog trajectories
    through lapsample's integrator, with and without the predicted warm start."""
    num_trajectories, num_steps = 8, 8

    @eqx.filter_jit
    def run(marginal, momenta, step_size):
        logdensity = FlatLogDensity(marginal, TreeRaveller(phi0))
        value, grad, aux = logdensity(phi0, None)
        metric = metric_from_inverse_mass_matrix(inverse_mass, phi0)
        hamiltonian = Hamiltonian(logdensity, metric, lapsample.Leapfrog(), step_size)

        def trajectory(total, momentum):
            point = initial_point(
                phi0, momentum, value, grad, aux.theta_star,
                logdensity.trail(phi0, aux.theta_star),
            )  # fmt: skip

            def step(carry, _):
                point, steps = carry
                point, _ = hamiltonian.step(point, jnp.ones((), jnp.int32))
                return (point, steps + point.aux.num_steps), point.logdensity

            (_, steps), values = jax.lax.scan(step, (point, 0), None, length=num_steps)
            return total + steps, values

        return jax.lax.scan(trajectory, 0, momenta)

    variants = {
        "previous mode": dataclasses.replace(latent, predictor=False),
        "predictor": latent,
    }
    rng = np.random.default_rng(seed)
    evaluations = num_trajectories * num_steps
    print(
        "\n| step size | Newton steps, previous mode | Newton steps, predictor | "
        "largest log density difference | CPU-ms, previous mode | CPU-ms, predictor |"
    )
    print("|---|---|---|---|---|---|")
    for step_size in step_sizes:
        momenta = jnp.asarray(
            rng.normal(size=(num_trajectories, phi0.size))
        ) / jnp.sqrt(inverse_mass)
        eps = jnp.asarray(step_size)
        steps, values = {}, {}
        for name, marginal in variants.items():
            total, vals = run(marginal, momenta, eps)
            steps[name], values[name] = int(total) / evaluations, np.asarray(vals)
        cpu = {name: [] for name in variants}
        for _ in range(repeats):
            for name, marginal in variants.items():
                start = time.process_time()
                jax.block_until_ready(run(marginal, momenta, eps))
                cpu[name].append(1e3 * (time.process_time() - start) / evaluations)
        difference = np.abs(values["predictor"] - values["previous mode"]).max()
        print(
            f"| {step_size} | {steps['previous mode']:.2f} | "
            f"{steps['predictor']:.2f} | {difference:.1e} | "
            f"{np.median(cpu['previous mode']):.3g} | "
            f"{np.median(cpu['predictor']):.3g} |"
        )
    print(f"load average {os.getloadavg()[0]:.2f}")


def compare_sampling(latent, phi0, rounds, iterations=150):
    """CPU time per leapfrog step and Newton steps of `lapsample.sample`, with and
    without the predicted warm start, interleaved."""
    variants = {
        "previous mode": dataclasses.replace(latent, predictor=False),
        "predictor": latent,
    }
    print("\n| round | variant | CPU s | leapfrog steps | CPU-ms per step | Newton |")
    print("|---|---|---|---|---|---|")
    for r in range(1, rounds + 1):
        for name, marginal in variants.items():
            start = time.process_time()
            results = lapsample.sample(
                jax.random.key(r),
                marginal,
                phi0,
                num_warmup=iterations,
                num_samples=iterations,
                num_chains=2,
                progress_bar=False,
                save_warmup=True,
            )
            cpu = time.process_time() - start
            steps = sum(
                int(np.asarray(stats["n_steps"]).sum())
                for stats in (results.sample_stats, results.warmup_sample_stats)
            )
            newton = np.asarray(results.sample_stats["inner_steps"], float).mean()
            print(
                f"| {r} | {name} | {cpu:.1f} | {steps} | {1e3 * cpu / steps:.1f} | "
                f"{newton:.2f} |"
            )
    print(f"load average {os.getloadavg()[0]:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=911, choices=(0, 100, 250, 911))
    parser.add_argument("--leapfrog", action="store_true")
    parser.add_argument("--xtol", type=float, nargs="+")
    parser.add_argument("--secant", type=float, nargs="+", metavar="STEP_SIZE")
    parser.add_argument("--trajectories", type=float, nargs="+", metavar="STEP_SIZE")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--generic", action="store_true")
    parser.add_argument("--sample", type=int, metavar="ROUNDS")
    args = parser.parse_args()
    if args.sample:
        latent, _, _ = _disease_map_benchmark().disease_map_models(args.cells)
        print(f"disease map, {args.cells} cells, lapsample.sample, NUTS")
        compare_sampling(latent, jnp.array([math.log(0.8), math.log(6.0)]), args.sample)
        return
    if args.trajectories:
        if args.cells == 0:
            import sys

            sys.path.insert(0, str(ROOT.parent / "examples"))
            import stochastic_volatility as sv

            print("stochastic volatility, T = 1000, precision form")
            compare_trajectories(
                sv.latent_gaussian_marginal_for(sv.simulate(1000)),
                jnp.array([-1.0, 2.94, -1.39]),
                args.trajectories,
                jnp.array([0.01, 0.25, 0.04]),
                args.repeats,
            )
            return
        latent, dense, _ = _disease_map_benchmark().disease_map_models(args.cells)
        phi0 = jnp.array([math.log(0.8), math.log(6.0)])
        kind = "LaplaceMarginal" if args.generic else "LatentGaussianMarginal"
        print(
            f"disease map, {args.cells} cells, {kind}, trajectories from "
            "(log 0.8, log 6)"
        )
        compare_trajectories(
            dense.with_hessian_for(phi0) if args.generic else latent,
            phi0,
            args.trajectories,
            jnp.array(INVERSE_MASS),
            args.repeats,
        )
        return
    latent, dense, _ = _disease_map_benchmark().disease_map_models(args.cells)
    if args.secant:
        print(f"disease map, {args.cells} cells, trajectories from (log 0.8, log 6)")
        compare_secant(
            latent,
            dense.log_joint,
            jnp.array([math.log(0.8), math.log(6.0)]),
            args.secant,
            jnp.array(INVERSE_MASS),
        )
        return
    if args.xtol:
        compare_xtol(latent, jnp.array([math.log(0.8), math.log(6.0)]), args.xtol)
        return
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
        results = lapsample.sample(
            jax.random.key(0),
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
