"""Structured Hessians on the stochastic volatility model (examples/
stochastic_volatility.py), float64 on CPU. Prints three tables:

1. T = 100,000 latents: one value+grad of the Laplace marginal with
   `BandedHessian(1)`, from a cold start (`theta_init`) and warm-started at the mode
   (as inside a sampler), with what a dense Hessian would need.
2. Banded vs dense value+grad time at a few T (warm start at the mode), and the
   banded value+grad against T inside a compiled loop (2b), next to the same model
   as a `LatentGaussianMarginal` with the AR(1) precision; and both with the
   tridiagonal recurrences run sequentially and as associative scans (2c; the
   associative form is the default off the CPU).
3. T = 1000: ESS/s of phi from `lapsample.sample` (banded Laplace marginal, NUTS
   with a dense metric) vs full-joint non-centred NUTS in NumPyro (diagonal
   metric, its default) on the same data, 4 chains × 1000 warm-up + 1000 draws
   each, both with target acceptance 0.8; compiled run time, and the first call
   (with compilation) separately. Each sampler runs with each way of laying out
   its chains on a CPU (one after another, batched by `vmap`, and for lapsample
   split across host devices, one per core), and the ratio compares the best of
   each.

    python benchmarks/structured.py              # everything
    python benchmarks/structured.py --skip-ess   # tables 1 and 2 only
    python benchmarks/structured.py --only-recurrences   # table 2c (e.g. on a GPU)
    python benchmarks/structured.py --large      # table 4 alone: T = 10⁶ and 10⁷

4. (`--large`) T = 1,000,000 and 10,000,000 latents on one CPU core: the SV value+grad
   with `BandedHessian(1)` and as a `LatentGaussianMarginal` (AR(1) precision), each
   size and form in a fresh subprocess (run with
   `XLA_FLAGS=--xla_cpu_multi_thread_eigen=false OPENBLAS_NUM_THREADS=1`): peak
   resident memory of that process after the data (`data GiB`), after the
   value+grad (`peak GiB`) and after the parts too (`all GiB`), wall and CPU seconds
   per compiled value+grad
   (median of 3, warm-started at the mode of a nearby phi), the cold start and
   compilation, and for the banded form the parts separately (the model's own
   value+gradient, the 4 Hessian-vector products, the tridiagonal factorisation,
   a solve, the selected inverse); the load average beside each row.
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time


# Chains run on several CPU cores at once only as separate host devices, which must
# be requested before JAX starts (one per core, at most one per chain). Tables 1
# and 2 use one device either way.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={min(4, os.cpu_count() or 1)}"
    )

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx
import numpy as np

import lapsample
from lapsample._linalg.banded import (
    band_selected_inverse,
    banded_factorise,
    banded_solve,
)


ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from stochastic_volatility import (  # noqa: E402
    latent_gaussian_marginal_for,
    marginal_for,
    PHI_INIT,
    PHI_NAMES,
    simulate,
    SVLogJoint,
)


@eqx.filter_jit
def _value_and_grad(marginal, phi, theta_guess):
    return jax.value_and_grad(marginal, has_aux=True)(phi, theta_guess)


def _time(marginal, phi, theta_guess, repeats):
    out = _value_and_grad(marginal, phi, theta_guess)  # compile
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = _value_and_grad(marginal, phi, theta_guess)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    (value, aux), grad = out
    assert aux.result == lapsample.RESULTS.successful, aux.result
    return float(np.median(times)), value, grad, aux


def big_t(num_steps=100_000):
    print(f"== 1. SV, T = {num_steps:,} latents, BandedHessian(bandwidth=1) ==")
    marginal = marginal_for(simulate(num_steps))
    cold, value, grad, aux = _time(marginal, PHI_INIT, marginal.theta_init, 3)
    warm, *_ = _time(marginal, PHI_INIT + 1e-3, aux.theta_star, 5)
    print(f"cold start (theta_init): {cold:.3f} s, Newton steps {int(aux.num_steps)}")
    print(f"warm start (mode at a nearby phi): {warm:.3f} s")
    print(f"value {float(value):.6f}, grad {np.asarray(grad)}")
    gib = 8 * num_steps**2 / 2**30
    print(
        f"dense: the Hessian alone is {gib:.0f} GiB in float64 ({num_steps:,}² × 8 B), "
        f"and one Cholesky is T³/3 ≈ {num_steps**3 / 3:.1e} flop (hours at tens of "
        "GFLOP/s), per Newton step; it does not fit this machine."
    )
    return cold, warm


def banded_vs_dense(sizes=(100, 300, 1000)):
    print("== 2. value+grad, warm start at the mode: banded vs dense ==")
    print(f"{'T':>6} {'banded ms':>10} {'dense ms':>10} {'ratio':>7} {'|Δvalue|':>9}")
    rows = []
    for t in sizes:
        y = simulate(t)
        out = {}
        for name, hessian in (
            ("banded", lapsample.BandedHessian(bandwidth=1)),
            ("dense", lapsample.DenseHessian()),
        ):
            marginal = marginal_for(y, hessian)
            _, _, _, aux = _time(marginal, PHI_INIT, marginal.theta_init, 1)
            seconds, value, grad, _ = _time(
                marginal, PHI_INIT + 1e-3, aux.theta_star, 5
            )
            out[name] = (seconds, value)
        ratio = out["dense"][0] / out["banded"][0]
        diff = abs(float(out["dense"][1] - out["banded"][1]))
        print(
            f"{t:>6} {1e3 * out['banded'][0]:>10.2f} {1e3 * out['dense'][0]:>10.1f} "
            f"{ratio:>7.0f} {diff:>9.1e}"
        )
        rows.append((t, out["banded"][0], out["dense"][0]))
    return rows


def _loop_time(marginal, phi, theta, calls, repeats):
    """Seconds per value+grad inside one compiled loop of `calls` calls."""

    @jax.jit
    def loop(phi, theta):
        def body(_, acc):
            # `acc` is ~0: it chains the calls so none is hoisted or skipped.
            (value, aux), grad = jax.value_and_grad(marginal, has_aux=True)(
                phi + 1e-300 * acc, theta
            )
            return acc + 1e-300 * (value + grad.sum() + aux.theta_star[0])

        return jax.lax.fori_loop(0, calls, body, 0.0)

    jax.block_until_ready(loop(phi, theta))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(loop(phi, theta))
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def banded_scaling(sizes=(100, 300, 1000, 3000, 10_000), repeats=5):
    """Value+grad time against T inside one compiled loop (no dispatch from Python
    per call), warm-started at the mode of a nearby phi, and a least-squares line;
    the same model as a latent Gaussian with the AR(1) precision alongside."""
    print("== 2b. banded value+grad against T, compiled loop, warm start ==")
    print(f"{'T':>6} {'banded us':>10} {'latent-Gaussian us':>19} {'Newton steps':>13}")
    times = []
    for t in sizes:
        y = simulate(t)
        marginal = marginal_for(y)
        (_, aux), _ = _value_and_grad(marginal, PHI_INIT, marginal.theta_init)
        phi = PHI_INIT + 1e-3
        calls = max(10, 100_000 // t)
        best = _loop_time(marginal, phi, aux.theta_star, calls, repeats)
        latent = _loop_time(
            latent_gaussian_marginal_for(y), phi, aux.theta_star, calls, repeats
        )
        (_, warm), _ = _value_and_grad(marginal, phi, aux.theta_star)
        print(
            f"{t:>6} {1e6 * best:>10.1f} {1e6 * latent:>19.1f} "
            f"{int(warm.num_steps):>13}"
        )
        times.append(best)
    slope, intercept = np.polyfit(np.asarray(sizes, float), 1e6 * np.asarray(times), 1)
    print(f"least squares (banded): {intercept:.1f} us + {slope:.3f} us × T")
    return times


def recurrence_forms(sizes=(1000, 10_000), repeats=3):
    """Value+grad with the bandwidth-1 recurrences run sequentially (`lax.scan`)
    and as associative scans, both marginal forms, on JAX's default backend."""
    print(
        f"== 2c. sequential vs associative recurrences on {jax.default_backend()}, "
        "compiled loop, warm start (ms) =="
    )
    print(f"{'T':>7} {'form':16} {'sequential':>11} {'associative':>12}")
    for t in sizes:
        y = simulate(t)
        for form in ("banded", "latent-Gaussian"):
            row = []
            for mode in ("sequential", "associative"):
                if form == "banded":
                    hessian = lapsample.BandedHessian(1, recurrences=mode)
                    marginal = marginal_for(y, hessian)
                else:
                    marginal = eqx.tree_at(
                        lambda m: m.recurrences, latent_gaussian_marginal_for(y), mode
                    )
                (_, aux), _ = _value_and_grad(marginal, PHI_INIT, marginal.theta_init)
                calls = max(3, 20_000 // t)
                seconds = _loop_time(
                    marginal, PHI_INIT + 1e-3, aux.theta_star, calls, repeats
                )
                row.append(1e3 * seconds)
            print(f"{t:>7} {form:16} {row[0]:>11.3f} {row[1]:>12.3f}")


def _laplace_run(y, key, num_warmup, num_samples, num_chains, chain_method):
    start = time.perf_counter()
    results = lapsample.sample(
        key,
        marginal_for(y),
        PHI_INIT,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        dense_mass=True,
        chain_method=chain_method,
        progress_bar=False,
    )
    seconds = time.perf_counter() - start
    steps = float(np.asarray(results.sample_stats["n_steps"]).mean())
    divergences = int(np.asarray(results.num_divergences).sum())
    return np.asarray(results.phi), seconds, steps, divergences


def ess_per_second(num_warmup=1000, num_samples=1000, num_chains=4):
    import arviz as az
    from make_sv_reference import run as run_numpyro

    devices = len(jax.devices())
    print(
        f"== 3. SV, T = 1000: ESS/s of phi, {num_chains} chains × {num_warmup} "
        f"warm-up + {num_samples} draws, {devices} host device(s) =="
    )
    print(
        "Each configuration runs twice with different seeds: the first call "
        "compiles, the second reuses the compiled code. ESS/s = bulk ESS of the "
        "second run / its wall time; 'first call' is the same run including "
        "compilation. lapsample splits the chains across the host devices (each "
        "device runs its chains one after another, or batched for 'vectorized'); "
        "NumPyro's 'sequential' and 'vectorized' use one device."
    )
    y = simulate(1000)
    runs = {}
    for method in ("sequential", "vectorized"):
        first = _laplace_run(
            y, jax.random.key(1), num_warmup, num_samples, num_chains, method
        )
        draws, seconds, steps, divergences = _laplace_run(
            y, jax.random.key(0), num_warmup, num_samples, num_chains, method
        )
        name = f"lapsample {method}" + (f" ({devices} devices)" if devices > 1 else "")
        runs[name] = (first[1], draws, seconds, steps, divergences)
    for method in ("sequential", "vectorized"):
        _, first, _ = run_numpyro(
            1000, num_warmup, num_samples, num_chains, 3, 0.8, chain_method=method
        )
        draws, seconds, grads = run_numpyro(
            1000, num_warmup, num_samples, num_chains, 2, 0.8, chain_method=method
        )
        steps = grads / (num_chains * num_samples)
        runs[f"NumPyro {method}"] = (first, draws, seconds, steps, None)
    print(
        f"{'':34} {'first call':>10} {'seconds':>8} {'steps/it':>8} "
        + " ".join(f"{n:>18}" for n in PHI_NAMES)
    )
    rates = {}
    for name, (first, draws, seconds, steps, _) in runs.items():
        ess = [float(az.ess(draws[:, :, i], method="bulk")) for i in range(3)]
        rates[name] = ([e / seconds for e in ess], [e / first for e in ess])
        cells = " ".join(f"{e:>7.0f} ({e / seconds:>6.1f}/s)" for e in ess)
        print(f"{name:34} {first:>10.1f} {seconds:>8.1f} {steps:>8.1f} {cells}")
    divergences = {k: v[4] for k, v in runs.items() if v[4] is not None}
    print(f"lapsample divergences (post warm-up): {divergences}")
    laplace = runs[next(iter(runs))][1]
    reference = json.loads((ROOT / "tests/data/sv_reference.json").read_text())
    print(
        "lapsample (first row) vs the long NUTS reference "
        "(tests/data/sv_reference.json):"
    )
    for i, name in enumerate(PHI_NAMES):
        ref = reference["phi"][name]
        x = laplace[:, :, i]
        se = float(np.hypot(az.mcse(x, method="mean"), ref["mcse_mean"]))
        diff = x.mean() - ref["mean"]
        print(
            f"  {name:10s} mean {x.mean():+.4f} vs {ref['mean']:+.4f}: "
            f"diff {diff:+.4f} = {diff / ref['sd']:+.3f} sd, z {diff / se:+.2f}; "
            f"sd {x.std(ddof=1):.4f} vs {ref['sd']:.4f}"
        )

    def best(prefix, which):
        # The fastest configuration of one sampler, parameter by parameter.
        chosen = [r[which] for k, r in rates.items() if k.startswith(prefix)]
        return [max(r[i] for r in chosen) for i in range(3)]

    for which, label in ((0, "compiled runs"), (1, "counting compilation")):
        gain = [a / b for a, b in zip(best("lapsample", which), best("NumPyro", which))]
        print(
            f"ESS/s ratio, best lapsample / best NumPyro, {label}: "
            + ", ".join(f"{g:.2f}" for g in gain)
        )
    return rates


# --------------------------------------------------------------------------------
# 4. T = 10⁶ and 10⁷ on one CPU core (each size and form in a fresh process).
# --------------------------------------------------------------------------------

LARGE_SIZES = (1_000_000, 10_000_000)
_LARGE_FORMS = ("banded", "latent-Gaussian")


def _clock(fn, *args, repeats=3):
    """Median wall seconds and mean CPU seconds (user + system, every thread) per
    call of a compiled `fn`, after one call that compiles it."""
    jax.block_until_ready(fn(*args))
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return float(np.median(walls)), float(np.mean(cpus))


def _banded_parts(y, phi, theta):
    """Seconds (wall, CPU) of the pieces of a banded value+grad at `theta`."""
    log_joint = SVLogJoint(jax.numpy.asarray(y))

    def fn(t, p):
        return -log_joint(t, p)

    size = theta.shape[0]
    parts = {}
    parts["model value+grad"] = _clock(jax.jit(jax.value_and_grad(fn)), theta, phi)

    @jax.jit
    def probes(theta, phi):
        # The 3 coloured probes of bandwidth 1 and the structure check's one, as
        # `BandedHessian` batches them: forward over reverse, vmapped.
        vectors = jax.numpy.stack(
            [(jax.numpy.arange(size) % 3 == c).astype(theta.dtype) for c in range(3)]
            + [jax.numpy.cos(jax.numpy.arange(size, dtype=theta.dtype))]
        )
        grad = jax.grad(fn)
        return jax.vmap(lambda v: jax.jvp(lambda t: grad(t, phi), (theta,), (v,))[1])(
            vectors
        )

    parts["4 HVPs"] = _clock(probes, theta, phi)
    diag = jax.numpy.full((size, 1, 1), 2.0) + 1e-3 * theta[:, None, None]
    sub = jax.numpy.full((size, 1, 1), -0.9)

    @jax.jit
    def factorise(diag, sub):
        return banded_factorise(diag, sub, size)[0]

    parts["factorise"] = _clock(factorise, diag, sub)
    factor = factorise(diag, sub)
    parts["solve"] = _clock(jax.jit(banded_solve), factor, theta)
    parts["selected inverse"] = _clock(jax.jit(band_selected_inverse), factor)
    return parts


def large_child(num_steps: int, form: str):
    """One row of table 4, printed as JSON (run in a fresh process)."""
    load_start = os.getloadavg()[0]
    y = simulate(num_steps)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    marginal = marginal_for(y) if form == "banded" else latent_gaussian_marginal_for(y)
    start = time.perf_counter()
    out = _value_and_grad(marginal, PHI_INIT, marginal.theta_init)
    jax.block_until_ready(out)
    cold = time.perf_counter() - start  # compilation + a cold solve
    (_, aux), _ = out
    cold_steps = int(aux.num_steps)
    phi = PHI_INIT + 1e-3
    theta = aux.theta_star
    wall, cpu = _clock(_value_and_grad, marginal, phi, theta)
    (value, warm), grad = _value_and_grad(marginal, phi, theta)
    assert warm.result == lapsample.RESULTS.successful, warm.result
    rss_value_grad = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row = dict(
        T=num_steps,
        form=form,
        wall=wall,
        cpu=cpu,
        newton_steps=int(warm.num_steps),
        cold=cold,
        cold_steps=cold_steps,
        value=float(value),
        grad=np.asarray(grad).tolist(),
        rss_data_gib=rss_data,
        rss_value_grad_gib=rss_value_grad,
    )
    if form == "banded":
        row["parts"] = _banded_parts(y, phi, theta)
    row["rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    row["load"] = (load_start, os.getloadavg()[0])
    print("ROW " + json.dumps(row), flush=True)


def large_t(sizes=LARGE_SIZES):
    print(
        "== 4. SV value+grad at large T, one CPU core (each row a fresh process; "
        "warm start at the mode of a nearby phi, median of 3) =="
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=1"
    )
    env["OPENBLAS_NUM_THREADS"] = "1"
    print(f"XLA_FLAGS={env['XLA_FLAGS']} OPENBLAS_NUM_THREADS=1, {os.cpu_count()} CPUs")
    print(
        f"{'T':>11} {'form':16} {'wall s':>7} {'CPU s':>6} {'Newton':>6} "
        f"{'peak GiB':>8} {'data GiB':>8} {'all GiB':>8} {'cold s':>7} "
        f"{'load 1m':>11}"
    )
    rows = []
    for t in sizes:
        for form in _LARGE_FORMS:
            proc = subprocess.run(
                [sys.executable, __file__, "--large-child", str(t), form],
                env=env,
                capture_output=True,
                text=True,
            )
            lines = [x for x in proc.stdout.splitlines() if x.startswith("ROW ")]
            if proc.returncode != 0 or not lines:
                print(f"{t:>11,} {form:16} failed: {proc.stderr[-2000:]}")
                continue
            row = json.loads(lines[0][4:])
            rows.append(row)
            print(
                f"{t:>11,} {form:16} {row['wall']:>7.2f} {row['cpu']:>6.2f} "
                f"{row['newton_steps']:>6} {row['rss_value_grad_gib']:>8.2f} "
                f"{row['rss_data_gib']:>8.2f} {row['rss_gib']:>8.2f} "
                f"{row['cold']:>7.1f} "
                f"{row['load'][0]:>5.2f}-{row['load'][1]:<5.2f}"
            )
            for name, (wall, cpu) in row.get("parts", {}).items():
                print(f"{'':11}   {name:24} {wall:>7.3f} s wall, {cpu:>6.3f} s CPU")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-ess", action="store_true")
    parser.add_argument(
        "--only-recurrences", action="store_true", help="table 2c alone (for a GPU)"
    )
    parser.add_argument(
        "--large", action="store_true", help="table 4 alone (T = 10⁶ and 10⁷)"
    )
    parser.add_argument(
        "--large-sizes", type=int, nargs="+", default=LARGE_SIZES, help="for --large"
    )
    parser.add_argument("--large-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large_child:
        large_child(int(args.large_child[0]), args.large_child[1])
        return
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    if args.large:
        large_t(args.large_sizes)
        return
    if args.only_recurrences:
        recurrence_forms()
        return
    big_t()
    banded_vs_dense()
    banded_scaling()
    recurrence_forms()
    if not args.skip_ess:
        ess_per_second()


if __name__ == "__main__":
    main()
