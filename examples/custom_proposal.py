"""Extending lapsample: a proposal that accepts with Barker's rule.

A proposal decides which point of a trajectory the chain moves to. `EndpointMH`
accepts the endpoint with the Metropolis probability `min(1, exp(H₀ - H))`; Barker's
rule accepts it with `exp(-H) / (exp(-H₀) + exp(-H))`, i.e. `sigmoid(H₀ - H)`. Both
leave the target invariant (the trajectory is reversible and volume preserving);
Barker's never accepts more often (Peskun 1973), so it is here to show the extension
point, not to replace the default.

The model is the quickstart's Gaussian hierarchy, where the Laplace approximation is
exact; the script compares the chain's mean with quadrature of the closed form.

    python examples/custom_proposal.py            # 4,000 draws
    python examples/custom_proposal.py --quick    # 300 draws
"""

import argparse

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as stats
import jax.tree_util as jtu
import numpy as np

import lapsample


# --8<-- [start:proposal]
class BarkerEndpoint(lapsample.AbstractProposal):
    """Propose the last point of the trajectory; accept it with probability
    `sigmoid(H₀ - H)` (Barker 1965)."""

    def update(self, key, state, point, energy, energy0):
        # Only the latest point matters: forget the rest of the trajectory.
        return self.init(point, energy, energy0)

    def finalise(self, key, state, initial, energy0):
        log_u = jnp.log(jr.uniform(key, dtype=energy0.dtype))
        # NaN or inf energies give False: a bad endpoint is never accepted.
        accept = log_u < jax.nn.log_sigmoid(energy0 - state.energy)
        return jtu.tree_map(lambda a, b: jnp.where(accept, a, b), state, initial)


# --8<-- [end:proposal]


def make_model(n: int, key):
    y = jr.normal(key, (n,)) * jnp.sqrt(2.0**2 + 1.0)

    def log_joint(theta, log_sigma):
        return (
            stats.norm.logpdf(log_sigma, 0.0, 3.0)
            + stats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
            + stats.norm.logpdf(y, theta, 1.0).sum()
        )

    def exact_log_marginal(log_sigma):
        scale = jnp.sqrt(jnp.exp(2 * log_sigma) + 1.0)
        return (
            stats.norm.logpdf(log_sigma, 0.0, 3.0)
            + stats.norm.logpdf(y, 0.0, scale).sum()
        )

    return log_joint, exact_log_marginal


def main(quick: bool = False):
    n = 20
    num_steps = 300 if quick else 4_000
    key_data, key_run = jr.split(jr.key(20261127))
    log_joint, exact_log_marginal = make_model(n, key_data)

    grid = jnp.linspace(-6.0, 4.0, 20_001)
    density = jnp.exp(jax.vmap(exact_log_marginal)(grid))
    density = density / jnp.trapezoid(density, grid)
    exact_mean = float(jnp.trapezoid(grid * density, grid))
    exact_sd = float(jnp.sqrt(jnp.trapezoid((grid - exact_mean) ** 2 * density, grid)))

    marginal = lapsample.LaplaceMarginal(log_joint, theta_init=jnp.zeros(n))
    for proposal in [lapsample.EndpointMH(), BarkerEndpoint()]:
        sampler = lapsample.Sampler(
            marginal,
            proposal,
            lapsample.Fixed(8),
            step_size=0.2,
            inverse_mass_matrix=jnp.ones(1),
        )
        _, (states, infos) = lapsample.run_inference_algorithm(
            key_run, sampler, num_steps=num_steps, initial_position=jnp.array(0.0)
        )
        draws = np.asarray(states.position)
        ess = float(lapsample.ess(draws[None]))
        error = (draws.mean() - exact_mean) / (exact_sd / np.sqrt(ess))
        print(
            f"{type(proposal).__name__:>14}: moved {infos.is_accepted.mean():.2f} "
            f"of the time, mean log_sigma {draws.mean():.3f} vs exact "
            f"{exact_mean:.3f} ({error:+.1f} Monte Carlo SEs), ESS {ess:.0f}"
        )
        assert abs(error) < 5, "the chain's mean is far from the exact mean"

    # A trajectory whose length depends on the states it visits needs a proposal
    # that samples the whole trajectory: the sampler says so when it is built.
    try:
        lapsample.Sampler(
            marginal,
            BarkerEndpoint(),
            lapsample.NoUTurn(),
            step_size=0.2,
            inverse_mass_matrix=jnp.ones(1),
        )
    except lapsample.IncompatibleComponentsError as e:
        print(f"NoUTurn + BarkerEndpoint is refused: {str(e)[:72]}...")
    else:
        raise AssertionError("NoUTurn should refuse an endpoint proposal")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    main(parser.parse_args().quick)
