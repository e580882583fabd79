"""ESS/s of `log_sigma` on the seed model: lapsample against BlackJAX 1.7 and
full-joint NUTS (BlackJAX and NumPyro, centred and non-centred); and the 100-cell
disease map of Finland: `LatentGaussianMarginal` against NumPyro's non-centred NUTS.

    .venv/bin/python benchmarks/samplers.py                      # full run
    .venv/bin/python benchmarks/samplers.py --quick              # smoke test (CI)
    .venv/bin/python benchmarks/samplers.py --num-samples 5000
    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OPENBLAS_NUM_THREADS=1 \
        .venv/bin/python benchmarks/samplers.py --part disease-map [--quick]

The model (n = 20, float64), as in `examples/quickstart.py`:

    log_sigma ~ N(0, 3²),  theta ~ N(0, σ² I_n),  y ~ N(theta, I_n)

The Laplace samplers run on `log_sigma` alone (theta integrated out) with step size
0.3, 10 leapfrog steps (HMC variants) and unit mass, untuned. Full-joint NUTS runs
on `(theta, log_sigma)` after a window adaptation (BlackJAX) or NumPyro's default
warm-up; warm-up time is reported in its own column and excluded from ESS/s.

Every timed function is jitted and called once beforehand (compiling it); the
timed call uses a fresh key and `jax.block_until_ready`. NumPyro's NUTS kernel is
stepped by a jitted `lax.scan` for the same reason (see `run_numpyro_nuts`). ESS is
`arviz.ess` (bulk) of one chain's `log_sigma` draws. On a loaded machine wall
times, and hence ESS/s, are noisy: the load average is printed alongside.

The disease map (examples/disease_map.py's model and data, from
../shared/margossian; skipped when absent): 4 chains x (1000 warm-up + 1000 draws),
`--quick` 4 x (300 + 300), chains one after another in one process. lapsample
samples phi = (log alpha, log rho) with the example's settings (dense mass matrix);
NumPyro samples alpha, rho and the whitened latent z (theta = chol(K) z) with its
own warm-up, stepped by jitted `lax.scan`s as above. Each sampler runs twice with
different keys: the first call (compilation included) is timed as a user's first
run; ESS (bulk, `arviz.ess` over the 4 chains, the smaller of log alpha and log
rho) is of the second, divided by its CPU seconds (`time.process_time`, which the
load of a shared machine changes far less than wall time). Agreement: the
difference of the posterior means of log alpha and log rho in units of its Monte
Carlo standard error (`arviz.mcse` of both runs combined).
"""

import argparse
import importlib.util
import math
import os
import platform
import time
from pathlib import Path

import jax


jax.config.update("jax_enable_x64", True)

import arviz as az
import blackjax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jstats
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import NUTS

import lapsample


N = 20
STEP_SIZE = 0.3
NUM_INTEGRATION_STEPS = 10


# --------------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------------


def make_data(n: int):
    """y from a fixed key, drawn as in the quickstart (true sigma = 2)."""
    _, data_key = jr.split(jr.key(20261127))
    theta_key, noise_key = jr.split(data_key)
    theta = 2.0 * jr.normal(theta_key, (n,))
    return theta + jr.normal(noise_key, (n,))


def make_log_joint(y):
    def log_joint(theta, log_sigma):
        return (
            jstats.norm.logpdf(log_sigma, 0.0, 3.0)
            + jstats.norm.logpdf(theta, 0.0, jnp.exp(log_sigma)).sum()
            + jstats.norm.logpdf(y, theta, 1.0).sum()
        )

    return log_joint


def centred_logdensity(y):
    log_joint = make_log_joint(y)
    return lambda x: log_joint(x["theta"], x["log_sigma"])


def noncentred_logdensity(y):
    def logdensity(x):
        z, log_sigma = x["z"], x["log_sigma"]
        theta = jnp.exp(log_sigma) * z
        return (
            jstats.norm.logpdf(log_sigma, 0.0, 3.0)
            + jstats.norm.logpdf(z).sum()
            + jstats.norm.logpdf(y, theta, 1.0).sum()
        )

    return logdensity


def numpyro_centred(y):
    log_sigma = numpyro.sample("log_sigma", dist.Normal(0.0, 3.0))
    with numpyro.plate("i", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(0.0, jnp.exp(log_sigma)))
        numpyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def numpyro_noncentred(y):
    log_sigma = numpyro.sample("log_sigma", dist.Normal(0.0, 3.0))
    with numpyro.plate("i", y.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(jnp.exp(log_sigma) * z, 1.0), obs=y)


# --------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------


def timed(fn, *args):
    """(result, seconds) of one call, blocking until the result is ready."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def compiled_then_timed(fn, key):
    """Call `fn(key)` once to compile it, then time a call with a fresh key."""
    compile_key, run_key = jr.split(key)
    jax.block_until_ready(fn(compile_key))
    return timed(fn, run_key)


def ess(draws) -> float:
    draws = np.asarray(draws, dtype=np.float64).reshape(1, -1)
    return float(az.ess(draws))


def row(name, draws, divergent, seconds, warmup_seconds=None):
    value = ess(draws)
    return {
        "sampler": name,
        "ess": value,
        "seconds": seconds,
        "ess_per_s": value / seconds,
        "divergences": int(np.sum(np.asarray(divergent))),
        "warmup_seconds": warmup_seconds,
        "mean": float(np.mean(np.asarray(draws))),
    }


# --------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------


def run_lapsample(name, build, log_joint, key, num_samples, **kwargs):
    sampler = build(
        log_joint,
        theta_init=jnp.zeros(N),
        step_size=STEP_SIZE,
        inverse_mass_matrix=jnp.ones(1),
        **kwargs,
    )

    @jax.jit
    def run(key):
        _, (states, infos) = lapsample.run_inference_algorithm(
            key, sampler, num_steps=num_samples, initial_position=jnp.array(0.0)
        )
        return states.position, infos.is_divergent

    (draws, divergent), seconds = compiled_then_timed(run, key)
    return row(name, draws, divergent, seconds)


def run_blackjax_laplace(log_joint, key, num_samples):
    algorithm = blackjax.laplace_hmc(
        log_joint,
        jnp.zeros(N),
        step_size=STEP_SIZE,
        inverse_mass_matrix=jnp.ones(1),
        num_integration_steps=NUM_INTEGRATION_STEPS,
    )

    @jax.jit
    def run(key):
        _, (states, infos) = blackjax.util.run_inference_algorithm(
            key, algorithm, num_steps=num_samples, initial_position=jnp.array(0.0)
        )
        return states.position, infos.is_divergent

    (draws, divergent), seconds = compiled_then_timed(run, key)
    return row("blackjax laplace_hmc", draws, divergent, seconds)


def run_blackjax_nuts(name, logdensity, initial_position, key, num_warmup, num_samples):
    adaptation = blackjax.window_adaptation(blackjax.nuts, logdensity)

    @jax.jit
    def warmup(key):
        (state, parameters), _ = adaptation.run(key, initial_position, num_warmup)
        return state, parameters

    @jax.jit
    def sample(key, state, parameters):
        algorithm = blackjax.nuts(logdensity, **parameters)
        _, (states, infos) = blackjax.util.run_inference_algorithm(
            key, algorithm, num_steps=num_samples, initial_state=state
        )
        return states.position["log_sigma"], infos.is_divergent

    warmup_key, sample_key = jr.split(key)
    (state, parameters), warmup_seconds = compiled_then_timed(warmup, warmup_key)
    (draws, divergent), seconds = compiled_then_timed(
        lambda k: sample(k, state, parameters), sample_key
    )
    return row(name, draws, divergent, seconds, warmup_seconds)


def run_numpyro_nuts(name, model, y, key, num_warmup, num_samples):
    """NumPyro's NUTS kernel (its default warm-up: step size and diagonal mass
    adaptation over `num_warmup` steps), stepped by a jitted `lax.scan` so that
    warm-up and sampling can be compiled once and timed apart. (`MCMC.run` re-traces
    its loop on every call, so a second `run` would still include compilation.)"""
    kernel = NUTS(model)
    init_key, sample_key = jr.split(key)
    state = kernel.init(init_key, num_warmup, None, (y,), {})

    def steps(state, num_steps):
        def one(state, _):
            state = kernel.sample(state, (y,), {})
            return state, (state.z["log_sigma"], state.diverging)

        return jax.lax.scan(one, state, None, length=num_steps)

    warmup = jax.jit(lambda s: steps(s, num_warmup)[0])
    sample = jax.jit(lambda s: steps(s, num_samples)[1])
    jax.block_until_ready(warmup(state))  # compiles; the timed call repeats it
    warm_state, warmup_seconds = timed(warmup, state)
    jax.block_until_ready(sample(warm_state))
    # A fresh sampling key for the timed call (the compiling call used the same).
    warm_state = warm_state._replace(rng_key=sample_key)
    (draws, divergent), seconds = timed(sample, warm_state)
    return row(name, draws, divergent, seconds, warmup_seconds)


# --------------------------------------------------------------------------------
# Disease map, 100 cells
# --------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
DISEASE_DATA = ROOT.parent / "shared" / "margossian"


def disease_map_example():
    """examples/disease_map.py (its model and data loader), loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "disease_map_example", ROOT / "examples" / "disease_map.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed_cpu(fn, *args):
    """(result, wall seconds, CPU seconds of this process) of one blocking call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_twice(name, run, key) -> dict:
    """`run(key) -> (draws, divergent, steps)`: a first call (compiling), timed,
    then a second with another key, whose draws and times are reported."""
    first_key, key = jr.split(key)
    _, first_wall, first_cpu = timed_cpu(run, first_key)
    (draws, divergent, steps), wall, cpu = timed_cpu(run, key)
    return dict(
        sampler=name,
        draws=draws,
        divergences=int(np.sum(divergent)),
        steps=float(np.mean(steps)),
        first_wall=first_wall,
        first_cpu=first_cpu,
        wall=wall,
        cpu=cpu,
    )


def disease_map_lapsample(example, data, key, num_warmup, num_samples):
    likelihood, covariance, log_prior = example.make_model(data)
    marginal = lapsample.LatentGaussianMarginal(
        likelihood, covariance=covariance, log_prior=log_prior
    )
    phi_init = jnp.array([0.0, math.log(5.0)])

    def run(key):
        results = lapsample.sample(
            key,
            marginal,
            phi_init,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=4,
            dense_mass=True,
            progress_bar=False,
        )
        stats = results.sample_stats
        return np.asarray(results.phi), stats["diverging"], stats["n_steps"]

    return run_twice("lapsample LatentGaussianMarginal (NUTS)", run, key)


def disease_map_numpyro(data, key, num_warmup, num_samples):
    """Non-centred: theta = chol(K(alpha, rho)) z with z ~ N(0, I); NumPyro keeps
    alpha and rho on the log scale internally (`state.z`), as lapsample's phi."""
    x = jnp.asarray(data["x"], float)
    sq_dist = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    n = x.shape[0]
    y = jnp.asarray(data["y"], float)
    ye = jnp.asarray(data["ye"], float)

    def model():
        alpha = numpyro.sample("alpha", dist.InverseGamma(10.0, 10.0))
        rho = numpyro.sample(
            "rho",
            dist.InverseGamma(data["rho_alpha_prior"], data["rho_beta_prior"]),
        )
        cov = alpha**2 * jnp.exp(-sq_dist / (2 * rho**2)) + 1e-8 * jnp.eye(n)
        with numpyro.plate("cells", n):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
            theta = jnp.linalg.cholesky(cov) @ z
            numpyro.sample("y", dist.Poisson(ye * jnp.exp(theta)), obs=y)

    kernel = NUTS(model)

    def steps(state, num_steps):
        def one(state, _):
            state = kernel.sample(state, (), {})
            log_phi = jnp.stack([state.z["alpha"], state.z["rho"]])
            return state, (log_phi, state.diverging, state.num_steps)

        return jax.lax.scan(one, state, None, length=num_steps)

    warmup = jax.jit(lambda s: steps(s, num_warmup)[0])
    sample = jax.jit(lambda s: steps(s, num_samples)[1])

    def run(key):
        out = []
        for chain_key in jr.split(key, 4):
            init_key, sample_key = jr.split(chain_key)
            state = kernel.init(init_key, num_warmup, None, (), {})
            state = warmup(state)._replace(rng_key=sample_key)
            out.append(sample(state))
        return [np.stack([np.asarray(o[i]) for o in out]) for i in range(3)]

    return run_twice("numpyro NUTS non-centred", run, key)


def disease_map_table(rows) -> str:
    header = [
        "sampler",
        "min bulk ESS",
        "R-hat (max)",
        "CPU s",
        "wall s",
        "ESS / CPU s",
        "first call wall s (CPU s)",
        "leapfrog steps / draw",
        "divergences",
    ]
    body = []
    for r in rows:
        draws = r["draws"]
        ess_min = min(float(az.ess(draws[:, :, i])) for i in range(2))
        rhat = max(float(az.rhat(draws[:, :, i])) for i in range(2))
        r["ess_per_cpu"] = ess_min / r["cpu"]
        cells = [
            r["sampler"],
            f"{ess_min:.0f}",
            f"{rhat:.3f}",
            f"{r['cpu']:.1f}",
            f"{r['wall']:.1f}",
            f"{r['ess_per_cpu']:.1f}",
            f"{r['first_wall']:.1f} ({r['first_cpu']:.1f})",
            f"{r['steps']:.1f}",
            str(r["divergences"]),
        ]
        body.append(cells)
    return md_table(header, body)


def agreement(a, b) -> str:
    """Posterior means of log alpha and log rho, and their difference in Monte
    Carlo standard errors."""
    parts = []
    for i, name in enumerate(("log alpha", "log rho")):
        x, y = a["draws"][:, :, i], b["draws"][:, :, i]
        se = math.hypot(float(az.mcse(x)), float(az.mcse(y)))
        z = (x.mean() - y.mean()) / se
        parts.append(
            f"{name}: {x.mean():.4f} against {y.mean():.4f} (sd {x.std():.3f}, "
            f"{y.std():.3f}), difference {z:+.2f} MCSE"
        )
    return "; ".join(parts)


def run_disease_map(quick: bool):
    if not DISEASE_DATA.is_dir():
        print(f"\n(disease map skipped: {DISEASE_DATA} is absent)")
        return
    num_warmup = num_samples = 300 if quick else 1000
    print(
        f"\n# disease map of Finland, 100 cells: 4 chains x ({num_warmup} warm-up + "
        f"{num_samples} draws), chains one after another"
    )
    load_before = load()
    print(f"load average before (1, 5, 15 min): {load_before}", flush=True)
    example = disease_map_example()
    data = example.load(100)
    keys = jr.split(jr.key(2026), 2)
    ours = disease_map_lapsample(example, data, keys[0], num_warmup, num_samples)
    print("  done: lapsample", flush=True)
    theirs = disease_map_numpyro(data, keys[1], num_warmup, num_samples)
    print("  done: numpyro", flush=True)
    print()
    print(disease_map_table([ours, theirs]))
    print(
        f"\nESS per CPU second: {ours['ess_per_cpu'] / theirs['ess_per_cpu']:.0f}x "
        f"NumPyro's; first call (wall): "
        f"{theirs['first_wall'] / ours['first_wall']:.1f}x faster."
    )
    print(f"Posterior agreement: {agreement(ours, theirs)}.")
    print(f"load average (1, 5, 15 min): before {load_before}; after {load()}.")


# --------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------


def md_table(header, body) -> str:
    """A Markdown table of the rows of cells in `body`."""
    rows = [header, ["---"] * len(header), *body]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def markdown(rows) -> str:
    header = [
        "sampler",
        "ESS",
        "wall (s)",
        "ESS/s",
        "divergences",
        "warm-up (s)",
        "mean log_sigma",
    ]
    body = []
    for r in rows:
        warm = "–" if r["warmup_seconds"] is None else f"{r['warmup_seconds']:.2f}"
        cells = [
            r["sampler"],
            f"{r['ess']:.0f}",
            f"{r['seconds']:.2f}",
            f"{r['ess_per_s']:.0f}",
            str(r["divergences"]),
            warm,
            f"{r['mean']:.3f}",
        ]
        body.append(cells)
    return md_table(header, body)


def verdict(label, ours, theirs, factor) -> str:
    ratio = ours["ess_per_s"] / theirs["ess_per_s"]
    status = "MET" if ratio >= factor else "NOT MET"
    return (
        f"- {label}: {ours['sampler']} / {theirs['sampler']} = {ratio:.1f}× "
        f"(target ≥ {factor}×): {status}"
    )


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: few draws, lapsample and BlackJAX laplace_hmc only",
    )
    parser.add_argument("--num-samples", type=int, default=None)
    parser.add_argument("--num-warmup", type=int, default=1_000)
    parser.add_argument(
        "--part",
        choices=("all", "seed", "disease-map"),
        default="all",
        help="the seed-model comparison, the disease map, or both",
    )
    args = parser.parse_args()
    if args.part != "disease-map":
        seed_model(args)
    if args.part != "seed":
        run_disease_map(args.quick)


def seed_model(args):
    num_samples = args.num_samples or (200 if args.quick else 10_000)

    print(
        f"# samplers: seed model, n = {N}, {num_samples} draws, 1 chain\n"
        f"jax {jax.__version__}, blackjax {blackjax.__version__}, numpyro "
        f"{numpyro.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"device {jax.devices()[0].platform}"
    )
    load_before = load()
    print(f"load average before (1, 5, 15 min): {load_before}", flush=True)

    y = make_data(N)
    log_joint = make_log_joint(y)
    keys = iter(jr.split(jr.key(0), 16))
    rows = []

    laplace = [
        ("lapsample laplace_hmc", lapsample.laplace_hmc, NUM_INTEGRATION_STEPS),
        ("lapsample laplace_mhmc", lapsample.laplace_mhmc, NUM_INTEGRATION_STEPS),
    ]
    for name, build, steps in laplace:
        rows.append(
            run_lapsample(
                name, build, log_joint, next(keys), num_samples,
                num_integration_steps=steps,
            )
        )  # fmt: skip
        print(f"  done: {name}", flush=True)
    if not args.quick:
        rows.append(
            run_lapsample(
                "lapsample laplace_nuts",
                lapsample.laplace_nuts,
                log_joint,
                next(keys),
                num_samples,
            )
        )
        print("  done: lapsample laplace_nuts", flush=True)
    rows.append(run_blackjax_laplace(log_joint, next(keys), num_samples))
    print("  done: blackjax laplace_hmc", flush=True)

    if not args.quick:
        centred_init = {"theta": jnp.zeros(N), "log_sigma": jnp.array(0.0)}
        noncentred_init = {"z": jnp.zeros(N), "log_sigma": jnp.array(0.0)}
        for name, logdensity, init in [
            ("blackjax nuts centred", centred_logdensity(y), centred_init),
            ("blackjax nuts non-centred", noncentred_logdensity(y), noncentred_init),
        ]:
            rows.append(
                run_blackjax_nuts(
                    name, logdensity, init, next(keys), args.num_warmup, num_samples
                )
            )
            print(f"  done: {name}", flush=True)
        for name, model in [
            ("numpyro nuts centred", numpyro_centred),
            ("numpyro nuts non-centred", numpyro_noncentred),
        ]:
            rows.append(
                run_numpyro_nuts(
                    name, model, y, next(keys), args.num_warmup, num_samples
                )
            )
            print(f"  done: {name}", flush=True)

    load_after = load()
    print()
    print(markdown(rows))
    print()
    print(
        f"load average (1, 5, 15 min): before {load_before}; after {load_after}. "
        "Wall times on a loaded or shared machine are unreliable; compare ratios "
        "from one run, and rerun on an idle machine before quoting them."
    )

    by_name = {r["sampler"]: r for r in rows}
    lapsample_rows = [r for r in rows if r["sampler"].startswith("lapsample")]
    best = max(lapsample_rows, key=lambda r: r["ess_per_s"])
    print("\nTargets (issue 3), judged from the numbers above:")
    print(
        verdict(
            "like-for-like vs BlackJAX laplace_hmc",
            by_name["lapsample laplace_hmc"],
            by_name["blackjax laplace_hmc"],
            10,
        )
    )
    print(
        verdict(
            "best lapsample vs BlackJAX laplace_hmc",
            best,
            by_name["blackjax laplace_hmc"],
            10,
        )
    )
    noncentred = [r for r in rows if r["sampler"].endswith("non-centred")]
    if noncentred:
        fastest = max(noncentred, key=lambda r: r["ess_per_s"])
        print(verdict("best lapsample vs fastest non-centred NUTS", best, fastest, 3))
    else:
        print("- vs non-centred full-joint NUTS: not run (--quick)")


if __name__ == "__main__":
    main()
