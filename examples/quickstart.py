"""Quickstart: the seed walkthrough's Gaussian hierarchy in lapsample.

    log_sigma ~ N(0, 3²)            phi, the hyperparameter (sampled by HMC)
    theta     ~ N(0, σ² I_n)        the latent (integrated out by Laplace)
    y         ~ N(theta, I_n)

The Laplace approximation is exact here (y_i ~ N(0, σ² + 1)), so every number the
samplers print can be checked against quadrature of the closed-form marginal.

    python examples/quickstart.py            # full run, writes the figure
    python examples/quickstart.py --quick    # a fast smoke run (CI)
"""

import argparse
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as stats
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import lapsample


FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "quickstart.png"


def make_data(n: int, key):
    true_log_sigma = jnp.log(2.0)
    data_key, obs_key = jr.split(key)
    true_theta = jr.normal(data_key, (n,)) * jnp.exp(true_log_sigma)
    y_obs = true_theta + jr.normal(obs_key, (n,))
    return true_log_sigma, y_obs


def make_model(y_obs):
    def log_joint(theta, log_sigma):
        """log p(theta, log_sigma, y): theta is the latent, log_sigma is phi."""
        sigma = jnp.exp(log_sigma)
        return (
            stats.norm.logpdf(log_sigma, 0.0, 3.0)
            + stats.norm.logpdf(theta, 0.0, sigma).sum()
            + stats.norm.logpdf(y_obs, theta, 1.0).sum()
        )

    def exact_log_marginal(log_sigma):
        sigma = jnp.exp(log_sigma)
        return (
            stats.norm.logpdf(log_sigma, 0.0, 3.0)
            + stats.norm.logpdf(y_obs, 0.0, jnp.sqrt(sigma**2 + 1.0)).sum()
        )

    return log_joint, exact_log_marginal


def quadrature(exact_log_marginal, lo=-6.0, hi=4.0, num=20_001):
    """Exact posterior of log_sigma on a fine grid (trapezoid rule)."""
    grid = jnp.linspace(lo, hi, num)
    log_p = jax.vmap(exact_log_marginal)(grid)
    density = jnp.exp(log_p - log_p.max())
    density = density / jnp.trapezoid(density, grid)
    mean = jnp.trapezoid(grid * density, grid)
    sd = jnp.sqrt(jnp.trapezoid((grid - mean) ** 2 * density, grid))
    return grid, density, float(mean), float(sd)


def main(quick: bool = False, figure: Path = FIGURE):
    num_steps = 200 if quick else 1_000
    n = 20
    key = jr.key(20261127)
    key, data_key = jr.split(key)
    true_log_sigma, y_obs = make_data(n, data_key)
    log_joint, exact_log_marginal = make_model(y_obs)
    theta_init = jnp.zeros(n)
    phi_init = jnp.array(0.0)
    grid, density, exact_mean, exact_sd = quadrature(exact_log_marginal)

    print("== laplace_hmc and laplace_mhmc on the seed model (n = 20) ==")
    draws = {}
    for name, build in [
        ("laplace_hmc", lapsample.laplace_hmc),
        ("laplace_mhmc", lapsample.laplace_mhmc),
    ]:
        sampler = build(
            log_joint,
            theta_init=theta_init,
            step_size=0.3,
            inverse_mass_matrix=jnp.ones(1),
            num_integration_steps=10,
        )
        key, run_key = jr.split(key)
        _, (states, infos) = lapsample.run_inference_algorithm(
            run_key, sampler, num_steps=num_steps, initial_position=phi_init
        )
        draws[name] = states
        print(
            f"{name:>13}: acceptance {float(infos.acceptance_rate.mean()):.2f}, "
            f"divergences {int(infos.is_divergent.sum())}, "
            f"mean log_sigma {float(states.position.mean()):.3f}, "
            f"ESS {float(lapsample.ess(states.position[None])):.0f}"
        )
    print(
        f"{'exact':>13}: mean log_sigma {exact_mean:.3f} (sd {exact_sd:.3f}, "
        f"by quadrature; true value {float(true_log_sigma):.3f})"
    )

    # Posterior draws of theta: one N(theta*, H⁻¹) draw per phi draw.
    states = draws["laplace_hmc"]
    laplace = lapsample.laplace_marginal_factory(log_joint, theta_init)
    key, theta_key = jr.split(key)
    theta_keys = jr.split(theta_key, num_steps)
    theta_samples = jax.jit(jax.vmap(laplace.sample_theta))(
        theta_keys, states.position, states.theta_star
    )
    print(
        f"theta posterior mean (first 5): {np.round(theta_samples[:, :5].mean(0), 3)}"
    )

    # Without adaptation the seed's settings stop working once n = 300 (the posterior
    # sd of log_sigma shrinks to ~0.08): `lapsample.sample` tunes step size and mass
    # in Stan's windowed warm-up and runs several chains.
    print("== lapsample.sample with defaults on the same model, n = 300 ==")
    key, big_key, run_key = jr.split(key, 3)
    _, y_big = make_data(300, big_key)
    log_joint_big, exact_big = make_model(y_big)
    size = {"num_warmup": 150, "num_samples": 150, "num_chains": 2} if quick else {}
    results = lapsample.sample(
        run_key,
        lapsample.LaplaceMarginal(log_joint_big, jnp.zeros(300)),
        jnp.array(0.0),
        **size,
    )
    results.print_summary()
    _, _, big_mean, big_sd = quadrature(exact_big)
    print(f"exact: mean log_sigma {big_mean:.3f}, sd {big_sd:.3f} (quadrature)")

    figure.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, states in draws.items():
        ax.hist(
            np.asarray(states.position), bins=40, density=True, alpha=0.45, label=name
        )
    ax.plot(grid, density, "k", lw=1.5, label="exact marginal")
    ax.set_xlim(exact_mean - 4 * exact_sd, exact_mean + 4 * exact_sd)
    ax.set_xlabel("log_sigma")
    ax.set_ylabel("density")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    print(f"figure written to {figure}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args()
    main(args.quick, args.figure)
