# The seed walkthrough ("How to use Laplace-preconditioned HMC", written for
# BlackJAX) with `blackjax` replaced by `lapsample` and nothing else changed except
# the imports. It runs as written: this is the migration path.
from datetime import date

import jax
import jax.numpy as jnp
import jax.scipy.stats as stats
import matplotlib.pyplot as plt  # noqa: F401  (imported by the walkthrough)
import numpy as np  # noqa: F401  (imported by the walkthrough)

import lapsample
from lapsample.mcmc.laplace_marginal import laplace_marginal_factory
from lapsample.util import run_inference_algorithm


rng_key = jax.random.key(int(date.today().strftime("%Y%m%d")))

n = 20  # latent dimension

# Generate data
true_log_sigma = jnp.log(jnp.array(2.0))
rng_key, data_key = jax.random.split(rng_key)
true_theta = jax.random.normal(data_key, (n,)) * jnp.exp(true_log_sigma)
rng_key, obs_key = jax.random.split(rng_key)
y_obs = true_theta + jax.random.normal(obs_key, (n,))


def log_joint(theta, log_sigma):
    """log p(theta, log_sigma, y). theta is the latent, log_sigma is phi."""
    sigma = jnp.exp(log_sigma)
    log_prior_phi = stats.norm.logpdf(log_sigma, 0.0, 3.0)
    log_prior_theta = stats.norm.logpdf(theta, 0.0, sigma).sum()
    log_lik = stats.norm.logpdf(y_obs, theta, 1.0).sum()
    return log_prior_phi + log_prior_theta + log_lik


def exact_log_marginal(log_sigma):
    """Closed-form marginal p̂(log_sigma | y) for verification."""
    sigma = jnp.exp(log_sigma)
    log_prior_phi = stats.norm.logpdf(log_sigma, 0.0, 3.0)
    var_marg = sigma**2 + 1.0
    log_lik_marg = stats.norm.logpdf(y_obs, 0.0, jnp.sqrt(var_marg)).sum()
    return log_prior_phi + log_lik_marg


theta_init = jnp.zeros(n)
phi_init = jnp.array(0.0)

sampler = lapsample.laplace_hmc(
    log_joint,
    theta_init=theta_init,
    step_size=0.3,
    inverse_mass_matrix=jnp.ones(1),
    num_integration_steps=10,
    maxiter=100,  # L-BFGS iterations per leapfrog step
)

rng_key, run_key = jax.random.split(rng_key)
final_state, (states, infos) = run_inference_algorithm(
    run_key,
    sampler,
    num_steps=1_000,
    initial_position=phi_init,
    transform=lambda state, info: (state, info),
)

phi_samples = states.position  # shape (1000,)
theta_star_samples = states.theta_star  # shape (1000, n) — MAP theta at each phi

print(f"Acceptance rate: {infos.acceptance_rate.mean():.2f}")
print(f"Divergences: {infos.is_divergent.sum()}")
print(
    f"phi posterior mean: {phi_samples.mean():.3f} (true log_sigma={true_log_sigma:.3f})"  # noqa: E501
)

laplace = laplace_marginal_factory(log_joint, theta_init, maxiter=100)

rng_key, *theta_keys = jax.random.split(rng_key, len(phi_samples) + 1)
theta_keys = jnp.array(theta_keys)

# Draw one theta sample per phi sample
theta_samples = jax.vmap(laplace.sample_theta)(
    jnp.array(theta_keys), phi_samples, theta_star_samples
)  # shape (1000, n)

print(f"theta posterior mean (first 5): {theta_samples[:, :5].mean(axis=0)}")

sampler_mhmc = lapsample.laplace_mhmc(
    log_joint,
    theta_init=theta_init,
    step_size=0.3,
    inverse_mass_matrix=jnp.ones(1),
    num_integration_steps=10,
    maxiter=100,
)

rng_key, run_key = jax.random.split(rng_key)
_, (states_mhmc, _) = run_inference_algorithm(
    run_key,
    sampler_mhmc,
    num_steps=1_000,
    initial_position=phi_init,
    transform=lambda state, info: (state, info),
)

ess_hmc = lapsample.ess(phi_samples[None])
ess_mhmc = lapsample.ess(states_mhmc.position[None])
print(f"ESS laplace_hmc: {ess_hmc:.1f}")
print(f"ESS laplace_mhmc: {ess_mhmc:.1f}")
