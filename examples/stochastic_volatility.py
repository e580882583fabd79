"""Stochastic volatility: an AR(1) log-volatility with a banded Laplace marginal.

Daily returns `y_t` have a log-variance `theta_t` that follows a stationary AR(1):

    mu        ~ N(0, 2²)          phi[0], the mean log-variance
    logit_rho ~ N(0, 2²)          phi[1], rho = sigmoid(logit_rho) in (0, 1)
    log_sigma ~ N(0, 1)           phi[2], the innovation sd
    theta_1   ~ N(mu, sigma² / (1 − rho²))
    theta_t   ~ N(mu + rho (theta_{t−1} − mu), sigma²)      t = 2…T (integrated out)
    y_t       ~ N(0, exp(theta_t))

The Hessian of the log joint in `theta` is tridiagonal, so `BandedHessian(bandwidth=1)`
gives the Laplace marginal of `phi` in `O(T)` time and memory: T = 100,000 latents
are no harder than T = 1,000. `latent_gaussian_marginal_for` writes the same model
for `LatentGaussianMarginal` (the AR(1) precision in closed form and a custom
likelihood), which gives the same gradient without Hessian-vector products.

The likelihood is not Gaussian in `theta`, so the Laplace marginal is an
approximation (close for SV; see `tests/test_structured.py`, which compares with a
long full-joint NUTS run).

    python examples/stochastic_volatility.py            # T = 1000, lapsample.sample
    python examples/stochastic_volatility.py --quick    # T = 100, short chains
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import lapsample


TRUE_PHI = {"mu": -1.0, "rho": 0.95, "sigma": 0.25}
PHI_NAMES = ("mu", "logit_rho", "log_sigma")
PRIOR_SD = (2.0, 2.0, 1.0)


def simulate(num_steps: int, seed: int = 0) -> np.ndarray:
    """Returns `y` (float64, shape `(num_steps,)`) from the model at `TRUE_PHI`."""
    rng = np.random.default_rng(seed)
    mu, rho, sigma = TRUE_PHI["mu"], TRUE_PHI["rho"], TRUE_PHI["sigma"]
    theta = np.empty(num_steps)
    theta[0] = mu + sigma / np.sqrt(1 - rho**2) * rng.normal()
    shocks = sigma * rng.normal(size=num_steps)
    for t in range(1, num_steps):
        theta[t] = mu + rho * (theta[t - 1] - mu) + shocks[t]
    return np.exp(theta / 2) * rng.normal(size=num_steps)


def log_prior_phi(phi):
    sd = jnp.asarray(PRIOR_SD, dtype=phi.dtype)
    return -0.5 * jnp.sum((phi / sd) ** 2)


class SVLogJoint(eqx.Module):
    """`log p(theta, phi, y)` up to a constant, `theta` the T log-variances."""

    y: jax.Array

    def __call__(self, theta, phi):
        mu, logit_rho, log_sigma = phi[0], phi[1], phi[2]
        rho = jax.nn.sigmoid(logit_rho)
        sigma = jnp.exp(log_sigma)
        centred = theta - mu
        innovations = (centred[1:] - rho * centred[:-1]) / sigma
        log_prior_theta = (
            -0.5 * jnp.sum(innovations**2)
            - (theta.size - 1) * log_sigma
            # Stationary start: variance sigma² / (1 − rho²).
            - 0.5 * centred[0] ** 2 * (1 - rho**2) / sigma**2
            + 0.5 * jnp.log1p(-(rho**2))
            - log_sigma
        )
        log_likelihood = jnp.sum(-0.5 * theta - 0.5 * self.y**2 * jnp.exp(-theta))
        return log_prior_theta + log_likelihood + log_prior_phi(phi)


def marginal_for(y, hessian=None) -> lapsample.LaplaceMarginal:
    y = jnp.asarray(y)
    hessian = lapsample.BandedHessian(bandwidth=1) if hessian is None else hessian
    # Start the latent at the log of the squared returns, smoothed a little.
    theta_init = jnp.full(y.shape, jnp.log(jnp.mean(y**2)))
    return lapsample.LaplaceMarginal(SVLogJoint(y), theta_init, hessian=hessian)


class SVLikelihood(lapsample.AbstractLikelihood):
    """`y_t ~ N(0, exp(theta_t))`: one latent per observation, log-concave in it,
    with its first three derivatives written out (what `LatentGaussianMarginal`
    needs from a likelihood)."""

    y: jax.Array

    def derivatives(self, theta, params):
        half_scaled = 0.5 * self.y**2 * jnp.exp(-theta)
        value = -0.5 * jnp.log(2 * jnp.pi) - 0.5 * theta - half_scaled
        return value, half_scaled - 0.5, -half_scaled, half_scaled


def latent_gaussian_marginal_for(y) -> lapsample.LatentGaussianMarginal:
    """The same model as `marginal_for`, written as a latent Gaussian: `theta ~
    N(mu, Q⁻¹)` with the AR(1)'s tridiagonal precision `Q` in closed form and the
    likelihood's curvature `W` diagonal, so the Hessian `Q + W` needs no
    Hessian-vector products. Its value is the normalised Laplace log marginal
    (`marginal_for`'s, which drops the constants, minus `T log 2π`); its gradient
    is the same."""
    y = jnp.asarray(y)
    num_steps = y.shape[0]

    def precision(phi):
        rho = jax.nn.sigmoid(phi[1])
        inverse_variance = jnp.exp(-2 * phi[2])
        diagonal = jnp.full(num_steps, 1 + rho**2).at[0].set(1.0).at[-1].set(1.0)
        sub_diagonal = jnp.full(num_steps, -rho)
        return inverse_variance * jnp.stack([diagonal, sub_diagonal])

    return lapsample.LatentGaussianMarginal(
        SVLikelihood(y),
        precision=precision,
        mean=lambda phi: phi[0],
        log_prior=log_prior_phi,
        theta_init=jnp.full(y.shape, jnp.log(jnp.mean(y**2))),
    )


PHI_INIT = jnp.array([0.0, 2.0, -1.0])


@eqx.filter_jit
def _value_and_grad(marginal, phi):
    return jax.value_and_grad(marginal, has_aux=True)(phi)


def main(quick: bool = False):
    num_steps = 100 if quick else 1_000
    y = simulate(num_steps)
    marginal = marginal_for(y)
    marginal.check(PHI_INIT)

    # One value and gradient against the dense Hessian (same numbers to rounding),
    # and the same model as a latent Gaussian with the AR(1) precision (the same
    # gradient; the value differs by the constant T log 2π).
    dense = marginal_for(y, lapsample.DenseHessian())
    latent = latent_gaussian_marginal_for(y)
    for name, m in (
        ("BandedHessian(1)", marginal),
        ("DenseHessian", dense),
        ("LatentGaussian", latent),
    ):
        (value, _), grad = _value_and_grad(m, PHI_INIT)
        jax.block_until_ready(grad)
        start = time.perf_counter()
        (value, _), grad = _value_and_grad(m, PHI_INIT)
        jax.block_until_ready(grad)
        ms = 1e3 * (time.perf_counter() - start)
        print(
            f"{name:18s} T = {num_steps}: log marginal {float(value):.10f}, "
            f"gradient {np.round(np.asarray(grad), 6)}, {ms:.2f} ms"
        )

    size = {"num_warmup": 100, "num_samples": 100, "num_chains": 2} if quick else {}
    start = time.perf_counter()
    # logit rho and log sigma are strongly correlated a posteriori (about -0.8):
    # with three hyperparameters a dense metric costs nothing and roughly doubles
    # their ESS per draw.
    results = lapsample.sample(
        jax.random.key(0),
        marginal,
        PHI_INIT,
        dense_mass=True,
        progress_bar=False,
        **size,
    )
    print(f"lapsample.sample: {time.perf_counter() - start:.1f} s")
    results.print_summary()
    draws = np.asarray(results.phi).reshape(-1, 3)
    rho = 1 / (1 + np.exp(-draws[:, 1]))
    sigma = np.exp(draws[:, 2])
    print(
        f"posterior means: mu {draws[:, 0].mean():.3f} (true {TRUE_PHI['mu']}), "
        f"rho {rho.mean():.3f} (true {TRUE_PHI['rho']}), "
        f"sigma {sigma.mean():.3f} (true {TRUE_PHI['sigma']})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args()
    main(args.quick)
