"""Makes tests/data/sv_reference.json: a long full-joint NUTS run on the stochastic
volatility example (T = 1000, data seed 0), non-centred, with NumPyro.

The full joint samples phi = (mu, logit_rho, log_sigma) together with T standard
normal innovations eps (non-centred):

    theta_1 = mu + sigma / sqrt(1 − rho²) · eps_1
    theta_t = mu + rho (theta_{t−1} − mu) + sigma · eps_t

which is the same posterior as the example's centred model (the map eps → theta
has a constant Jacobian given phi, accounted for). The summary (mean, sd, bulk ESS
and the MCSEs of mean and sd of each phi coordinate, with the settings and seed) is
what the slow test in tests/test_structured.py compares `lapsample.sample` with.

    python benchmarks/make_sv_reference.py                    # writes the fixture
    python benchmarks/make_sv_reference.py --num-samples 500  # a quick look
"""

import argparse
import json
import pathlib
import sys
import time

import jax


jax.config.update("jax_enable_x64", True)

import arviz as az
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from stochastic_volatility import log_prior_phi, PHI_NAMES, simulate  # noqa: E402


FIXTURE = ROOT / "tests" / "data" / "sv_reference.json"


def non_centred_theta(phi, eps):
    mu, logit_rho, log_sigma = phi[0], phi[1], phi[2]
    rho = jax.nn.sigmoid(logit_rho)
    sigma = jnp.exp(log_sigma)
    first = sigma / jnp.sqrt(1 - rho**2) * eps[0]

    def step(previous, e):
        current = rho * previous + sigma * e
        return current, current

    _, rest = jax.lax.scan(step, first, eps[1:])
    return mu + jnp.concatenate([first[None], rest])


def make_potential(y):
    y = jnp.asarray(y)

    def potential(params):
        phi, eps = params["phi"], params["eps"]
        theta = non_centred_theta(phi, eps)
        log_likelihood = jnp.sum(-0.5 * theta - 0.5 * y**2 * jnp.exp(-theta))
        return -(log_likelihood - 0.5 * jnp.sum(eps**2) + log_prior_phi(phi))

    return potential


def run(
    num_steps,
    num_warmup,
    num_samples,
    num_chains,
    seed,
    target_accept_prob=0.9,
    max_tree_depth=10,
    chain_method="sequential",
):
    y = simulate(num_steps)
    kernel = NUTS(
        potential_fn=make_potential(y),
        target_accept_prob=target_accept_prob,
        max_tree_depth=max_tree_depth,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=False,
    )
    init = {
        "phi": jnp.tile(jnp.array([0.0, 2.0, -1.0]), (num_chains, 1)),
        "eps": jnp.zeros((num_chains, num_steps)),
    }
    if num_chains == 1:
        init = {k: v[0] for k, v in init.items()}
    start = time.perf_counter()
    mcmc.run(jax.random.key(seed), init_params=init, extra_fields=("num_steps",))
    seconds = time.perf_counter() - start
    phi = np.asarray(mcmc.get_samples(group_by_chain=True)["phi"])
    grads = int(np.sum(mcmc.get_extra_fields()["num_steps"]))
    return phi, seconds, grads


def summarise(phi):
    out = {}
    for i, name in enumerate(PHI_NAMES):
        x = phi[:, :, i]
        out[name] = {
            "mean": float(x.mean()),
            "sd": float(x.std(ddof=1)),
            "ess_bulk": float(az.ess(x, method="bulk")),
            "mcse_mean": float(az.mcse(x, method="mean")),
            "mcse_sd": float(az.mcse(x, method="sd")),
            "r_hat": float(az.rhat(x)),
        }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-steps", type=int, default=1000)
    parser.add_argument("--num-warmup", type=int, default=1000)
    parser.add_argument("--num-samples", type=int, default=10000)
    parser.add_argument("--num-chains", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write the fixture")
    args = parser.parse_args()
    phi, seconds, grads = run(
        args.num_steps, args.num_warmup, args.num_samples, args.num_chains, args.seed
    )
    summary = summarise(phi)
    print(json.dumps(summary, indent=2))
    print(f"{seconds:.0f} s, {grads} gradient evaluations (sampling phase)")
    if args.write:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "made_by": "python benchmarks/make_sv_reference.py --write",
            "model": "examples/stochastic_volatility.py, simulate(T, seed=0)",
            "sampler": "NumPyro 0.22 NUTS, full joint, non-centred, "
            "target_accept_prob=0.9, max_tree_depth=10, chain_method=sequential",
            "T": args.num_steps,
            "num_warmup": args.num_warmup,
            "num_samples": args.num_samples,
            "num_chains": args.num_chains,
            "seed": args.seed,
            "seconds": round(seconds, 1),
            "phi": summary,
        }
        FIXTURE.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
