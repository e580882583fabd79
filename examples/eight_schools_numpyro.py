"""Eight schools, written in NumPyro, with the school effects `theta` integrated out.

    mu    ~ N(0, 5²)               phi (sampled by HMC)
    tau   ~ half-Cauchy(0, 5)      phi (sampled as log tau)
    theta ~ N(mu, tau² I_8)        the latent (integrated out by Laplace; exact here)
    y     ~ N(theta, diag(σ²))

`lapsample.from_numpyro` turns the usual (centred) NumPyro model into a Laplace
marginal over (mu, tau); NUTS on that 2-D marginal is compared with NumPyro's own
NUTS on the full 10-D posterior, centred (with its funnel) and non-centred: the
posterior, the divergences and the effective sample size per second, side by side.

    python examples/eight_schools_numpyro.py            # 4 chains, 1000 + 1000
    python examples/eight_schools_numpyro.py --quick    # a smoke run (CI): 2 chains,
                                                        # 200 + 200, no non-centred run

In the full run every method runs twice and the second (compiled) run is timed; in
quick mode the times include compilation.
"""

import argparse
import time
import warnings

import jax


jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import NUTS
from numpyro.infer.util import constrain_fn


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=FutureWarning)  # ArviZ 1.0 notice
    import arviz as az

import lapsample


J = 8
Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def centred(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", J):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def noncentred(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", J):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_tilde)
        numpyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def run_lapsample(key, settings, repeats):
    model = lapsample.from_numpyro(centred, J, SIGMA, y=Y, latent=("theta",))
    for i in range(repeats):
        start = time.perf_counter()
        results = lapsample.sample(
            jr.fold_in(key, i),
            model,  # starts at model.phi_init; results named by site
            num_warmup=settings["num_warmup"],
            num_samples=settings["num_samples"],
            num_chains=settings["num_chains"],
            sample_theta=True,
            progress_bar=False,
        )
        seconds = time.perf_counter() - start
    draws = model.constrain_results(results)  # mu, tau, theta: constrained
    divergences = int(results.num_divergences.sum())
    return draws, divergences, seconds, model, results


def run_numpyro(key, model, settings, repeats):
    """NumPyro's NUTS with its default warm-up (step size and diagonal mass
    matrix over `num_warmup` iterations), its chains one after another. The
    kernel is stepped by a jitted `lax.scan` (as in benchmarks/samplers.py):
    `MCMC.run` traces its loop afresh on every call, so a second `run` would
    still time the compilation."""
    kernel = NUTS(model)
    num_warmup, num_samples = settings["num_warmup"], settings["num_samples"]
    args, kwargs = (J, SIGMA), {"y": Y}

    @jax.jit
    def run_chains(states):
        def one_chain(state):
            def step(state, _):
                state = kernel.sample(state, args, kwargs)
                return state, (state.z, state.diverging)

            return jax.lax.scan(step, state, None, length=num_warmup + num_samples)[1]

        return jax.lax.map(one_chain, states)

    for i in range(repeats):
        keys = jr.split(jr.fold_in(key, i), settings["num_chains"])
        # One chain at a time (not timed): the kernel then steps one chain.
        states = [kernel.init(k, num_warmup, None, args, kwargs) for k in keys]
        states = jax.tree.map(lambda *x: jnp.stack(x), *states)
        start = time.perf_counter()
        z, diverging = jax.block_until_ready(run_chains(states))
        seconds = time.perf_counter() - start
    z = {name: value[:, num_warmup:] for name, value in z.items()}
    draws = jax.vmap(jax.vmap(lambda z: constrain_fn(model, args, kwargs, z, True)))(z)
    draws = {name: np.asarray(value) for name, value in draws.items()}
    divergences = int(np.asarray(diverging)[:, num_warmup:].sum())
    return draws, divergences, seconds


def row(name, draws, divergences, seconds):
    ess = {
        "mu": float(az.ess(draws["mu"])),
        "tau": float(az.ess(draws["tau"])),
        "theta": float(np.min(az.ess(az.convert_to_dataset(draws["theta"])).x)),
    }
    min_ess = min(ess.values())
    return (
        f"| {name} | {draws['mu'].mean():.2f} | {draws['tau'].mean():.2f} | "
        f"{draws['tau'].std():.2f} | {draws['theta'][..., 0].mean():.2f} | "
        f"{divergences} | {ess['tau']:.0f} | {min_ess:.0f} | {seconds:.1f} | "
        f"{min_ess / seconds:.0f} |"
    )


def main(quick: bool = False):
    if quick:
        settings = dict(num_warmup=200, num_samples=200, num_chains=2)
        repeats = 1
    else:
        settings = dict(num_warmup=1000, num_samples=1000, num_chains=4)
        repeats = 2
    key = jr.key(20261127)
    key_ls, key_c, key_nc = jr.split(key, 3)

    draws, divergences, seconds, model, results = run_lapsample(
        key_ls, settings, repeats
    )
    rows = [row("lapsample, theta integrated out", draws, divergences, seconds)]
    competitors = [("NumPyro NUTS, centred", centred, key_c)]
    if not quick:  # (each NumPyro model is a compilation; CI's smoke run needs one)
        competitors.append(("NumPyro NUTS, non-centred", noncentred, key_nc))
    for name, numpyro_model, k in competitors:
        rows.append(row(name, *run_numpyro(k, numpyro_model, settings, repeats)))

    print(
        f"Eight schools: {settings['num_chains']} chains, {settings['num_warmup']} "
        f"warm-up iterations + {settings['num_samples']} draws each; time = warm-up + "
        "sampling" + (", compilation included" if quick else " (second, compiled run)")
    )
    print()
    print(
        "| method | E[mu] | E[tau] | sd(tau) | E[theta[1]] | divergences | ESS(tau) | "
        "min ESS (mu, tau, theta) | time (s) | min ESS/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    # The sites under their own names and shapes, constrained (tau > 0).
    idata = results.to_arviz()
    print(az.summary(idata, var_names=["mu", "tau", "theta"], kind="stats"))
    y_rep = model.predictive(jr.key(1), results, J, SIGMA)["obs"]
    print(
        f"\nposterior predictive y_rep: shape {y_rep.shape}; P(y_rep > y) per school "
        + ", ".join(f"{p:.2f}" for p in (y_rep > Y).mean(axis=(0, 1)))
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    main(**vars(parser.parse_args()))
