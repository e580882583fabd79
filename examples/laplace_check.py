"""Checking the Laplace approximation with `lapsample.laplace_check`.

A logistic hierarchy with one latent per group,

    log_sigma ~ N(0, 1)                  phi, the hyperparameter (sampled by HMC)
    theta_j   ~ N(0, σ²), j = 1..J       the latent (integrated out by Laplace)
    y_j       ~ Binomial(m, logit⁻¹ θ_j)

fitted twice: with m = 1 trial per group (one Bernoulli observation per latent, where
the Laplace approximation of p(theta | phi, y) is known to be poor) and with m = 20
(where it is good). `sample(..., laplace_check=True)` checks each run; the figure
shows k̂ and the log-marginal correction against log_sigma for both.

    python examples/laplace_check.py            # full run, writes the figure
    python examples/laplace_check.py --quick    # a fast smoke run (CI)
"""

import argparse
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as stats
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import lapsample


FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "laplace_check.png"
NUM_GROUPS = 40


class BinomialLogit(eqx.Module):
    """`log p(theta, log_sigma, y)` with `y_j ~ Binomial(trials, logit⁻¹ θ_j)`."""

    y: jax.Array
    trials: jax.Array

    def __call__(self, theta, log_sigma):
        log_lik = self.y * jax.nn.log_sigmoid(theta) + (
            self.trials - self.y
        ) * jax.nn.log_sigmoid(-theta)
        return (
            stats.norm.logpdf(log_sigma, 0.0, 1.0)
            + stats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
            + log_lik.sum()
        )


def make_model(trials: int, key) -> BinomialLogit:
    theta_key, y_key = jr.split(key)
    theta = 2.0 * jr.normal(theta_key, (NUM_GROUPS,))  # true sigma = 2
    y = jr.binomial(y_key, trials, jax.nn.sigmoid(theta)).astype(float)
    return BinomialLogit(y=y, trials=jnp.full(NUM_GROUPS, float(trials)))


def quadrature_moments(model: BinomialLogit, marginal) -> dict[str, tuple]:
    """Posterior mean and sd of log_sigma on a grid, under the Laplace marginal and
    the exact one. Given sigma the latents are independent, so the exact marginal is
    a product of one-dimensional integrals (Gauss-Hermite). Both omit the binomial
    coefficients, a constant."""
    grid = np.linspace(-4.0, 3.0, 351)
    nodes, weights = np.polynomial.hermite.hermgauss(150)
    y, trials = np.asarray(model.y), np.asarray(model.trials)
    evaluate = eqx.filter_jit(marginal)
    guess = jnp.zeros(NUM_GROUPS)
    laplace, exact = [], []
    for log_sigma in grid:
        # Warm-started along the grid, as the sampler warm-starts along a chain.
        value, aux = evaluate(jnp.asarray(log_sigma), guess)
        guess = aux.theta_star
        laplace.append(float(value))
        theta = np.sqrt(2.0) * np.exp(log_sigma) * nodes
        log_lik = -y[:, None] * np.logaddexp(0.0, -theta) - (trials - y)[
            :, None
        ] * np.logaddexp(0.0, theta)
        integrals = np.log(np.exp(log_lik) @ weights / np.sqrt(np.pi))
        exact.append(-0.5 * log_sigma**2 + integrals.sum())

    def moments(log_density):
        w = np.exp(np.asarray(log_density) - np.max(log_density))
        w /= w.sum()
        mean = float(np.sum(w * grid))
        return mean, float(np.sqrt(np.sum(w * (grid - mean) ** 2)))

    return {"laplace": moments(laplace), "exact": moments(exact)}


def main(quick: bool, figure: Path | None) -> None:
    settings = (
        dict(num_warmup=150, num_samples=150, num_chains=2)
        if quick
        else dict(num_warmup=1000, num_samples=1000, num_chains=4)
    )
    fig, axes = plt.subplots(2, 2, figsize=(8.0, 5.6), sharex="col")
    for column, trials in enumerate((1, 20)):
        model = make_model(trials, jr.key(trials))
        marginal = lapsample.LaplaceMarginal(
            model, jnp.zeros(NUM_GROUPS), hessian=lapsample.DiagonalHessian()
        )
        results = lapsample.sample(
            jr.key(0),
            marginal,
            jnp.array(0.0),
            progress_bar=False,
            laplace_check=True,
            **settings,
        )
        check = results.laplace_check
        print(f"--- {trials} trial(s) per group ---")
        print(check)
        check.plot(axes=axes[:, column])
        axes[0, column].set_title(f"m = {trials}: {check.verdict}")
        for ax in axes[:, column]:
            ax.set_xlabel("log_sigma")
        if not quick:
            # Noisy (num_phi draws only), labelled as approximate.
            print("Approximate importance-reweighted means of phi:")
            check_many = lapsample.laplace_check(results, jr.key(1), num_phi=100)
            print(check_many.reweighted_means().to_string())
            for name, (mean, sd) in quadrature_moments(model, marginal).items():
                print(
                    f"quadrature, {name} marginal: log_sigma mean {mean:.3f}, "
                    f"sd {sd:.3f}"
                )
    axes[1, 0].set_ylabel("log p(y, φ) − Laplace")
    fig.suptitle("lapsample.laplace_check: one observation per latent vs twenty")
    fig.tight_layout()
    if figure is not None:
        figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=110)
        print(f"wrote {figure}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args()
    main(args.quick, None if args.quick and args.figure == FIGURE else args.figure)
