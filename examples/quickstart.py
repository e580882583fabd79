"""Quickstart: the seed walkthrough's Gaussian hierarchy, where Laplace is exact.

    log_sigma ~ N(0, 3²)            (phi, the hyperparameter)
    theta     ~ N(0, σ² I_n)        (the latent, integrated out)
    y         ~ N(theta, I_n)

Evaluates lapsample's Laplace marginal and its gradient against the closed form
y_i ~ N(0, σ² + 1).
"""

import argparse

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as stats
import lapsample


def main(quick: bool = False):
    n = 20
    key = jr.key(20261127)
    true_log_sigma = jnp.log(2.0)
    data_key, obs_key = jr.split(key)
    true_theta = jr.normal(data_key, (n,)) * jnp.exp(true_log_sigma)
    y_obs = true_theta + jr.normal(obs_key, (n,))

    def log_joint(theta, log_sigma):
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

    marginal = lapsample.LaplaceMarginal(log_joint, theta_init=jnp.zeros(n))
    value_and_grad = jax.jit(jax.value_and_grad(marginal, has_aux=True))
    exact = jax.jit(jax.value_and_grad(exact_log_marginal))
    print(f"{'log_sigma':>9} {'laplace':>14} {'exact':>14} {'grad':>12} {'exact grad':>12}")
    worst_value = worst_grad = 0.0
    for log_sigma in [-1.0, 0.0, 0.7, 1.5]:
        phi = jnp.array(log_sigma)
        (value, aux), grad = value_and_grad(phi)
        value_exact, grad_exact = exact(phi)
        worst_value = max(worst_value, abs(float(value - value_exact)))
        worst_grad = max(worst_grad, abs(float(grad - grad_exact)))
        print(
            f"{log_sigma:9.2f} {float(value):14.8f} {float(value_exact):14.8f} "
            f"{float(grad):12.8f} {float(grad_exact):12.8f}  "
            f"({int(aux.num_steps)} Newton steps)"
        )
    print(f"max |value error| = {worst_value:.2e}, max |grad error| = {worst_grad:.2e}")
    if worst_value > 1e-10 or worst_grad > 1e-8:
        raise SystemExit("The Laplace marginal does not match the closed form.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fast smoke run")
    main(parser.parse_args().quick)
