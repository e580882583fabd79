"""A random-intercept logistic regression (40 groups, 1,084 observations, 3 fixed
effects: the shape of issue 22's GLMM): one jitted value+grad for each way of writing
it in lapsample, median CPU milliseconds over 20 interleaved rounds, and the values
(which must agree).

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OPENBLAS_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/glmm.py
"""

import os
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.stats as jstats
import numpy as np

import lapsample as ls


G, N = 40, 1084


def models():
    rng = np.random.default_rng(0)
    g = np.sort(rng.integers(0, G, N))
    x = np.column_stack([np.ones(N), rng.normal(size=(N, 2))])
    eta = x @ np.array([-0.3, 0.5, -0.2]) + 0.7 * rng.normal(size=G)[g]
    lik = ls.BernoulliLogit((rng.uniform(size=N) < 1 / (1 + np.exp(-eta))) * 1.0)

    def log_prior(phi):
        return jstats.norm.logpdf(phi["beta"], 0, 2.5).sum() + jstats.norm.logpdf(
            phi["log_tau"], 0, 1
        )

    def offset(phi):
        return x @ phi["beta"]

    def log_joint(theta, phi):
        tau = jnp.exp(phi["log_tau"])
        return (
            log_prior(phi)
            + jstats.norm.logpdf(theta, 0.0, tau).sum()
            + lik.log_density(theta[g] + offset(phi), None)
        )

    def diagonal_cov(phi):
        return jnp.exp(2 * phi["log_tau"]) * jnp.eye(G)

    onehot = (g[:, None] == np.arange(G)[None, :]).astype(float)
    grouped = onehot @ onehot.T
    common = {"offset": offset, "log_prior": log_prior}
    return {
        "index=, precision (1, G)": ls.LatentGaussianMarginal(
            lik,
            precision=lambda phi: jnp.exp(-2 * phi["log_tau"]) * jnp.ones((1, G)),
            index=g,
            **common,
        ),
        "index=, covariance G x G": ls.LatentGaussianMarginal(
            lik, covariance=diagonal_cov, index=g, **common
        ),
        "design= (one-hot), covariance": ls.LatentGaussianMarginal(
            lik, covariance=diagonal_cov, design=onehot, **common
        ),
        "LaplaceMarginal, DiagonalHessian": ls.LaplaceMarginal(
            log_joint, jnp.zeros(G), hessian=ls.DiagonalHessian()
        ),
        "LaplaceMarginal, DenseHessian": ls.LaplaceMarginal(
            log_joint, jnp.zeros(G), hessian=ls.DenseHessian()
        ),
        "n_obs x n_obs grouped covariance + 1e-6 I": ls.LatentGaussianMarginal(
            lik,
            covariance=lambda phi: (
                jnp.exp(2 * phi["log_tau"]) * grouped + 1e-6 * jnp.eye(N)
            ),
            mean=offset,
            log_prior=log_prior,
        ),
    }


@eqx.filter_jit
def value_and_grad(marginal, phi, guess):
    (value, aux), grad = jax.value_and_grad(marginal, has_aux=True)(phi, guess)
    return value, grad, aux.result


def main():
    phi0 = {"beta": jnp.array([-0.3, 0.5, -0.2]), "log_tau": jnp.array(-0.3)}
    phi1 = {"beta": phi0["beta"] + 0.02, "log_tau": phi0["log_tau"] - 0.03}
    runs = {}
    for name, marginal in models().items():
        guess = eqx.filter_jit(marginal)(phi0)[1].theta_star
        value, _, result = jax.block_until_ready(value_and_grad(marginal, phi1, guess))
        assert result == ls.RESULTS.successful, name
        runs[name] = (marginal, guess, float(value))
    times = {name: [] for name in runs}
    for _ in range(20):
        for name, (marginal, guess, _) in runs.items():
            start = time.process_time()
            jax.block_until_ready(value_and_grad(marginal, phi1, guess))
            times[name].append(1e3 * (time.process_time() - start))
    print("| model | value | value+grad, median CPU-ms |\n|---|---|---|")
    for name, (_, _, value) in runs.items():
        print(f"| {name} | {value:.10f} | {np.median(times[name]):.3g} |")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
