"""Simulation-based calibration (Talts et al. 2018) of lapsample's five seed-API
samplers on the seed model (n = 10) and eight schools' structure with simulated data:
the same runs as `tests/test_sbc.py` (the machinery is `tests/_sbc.py`).

    .venv/bin/python benchmarks/sbc.py                 # all 10 pairs, table + figure
    .venv/bin/python benchmarks/sbc.py --ess           # also ESS per draw (for THIN)
    .venv/bin/python benchmarks/sbc.py --models seed --samplers laplace_nuts --reps 200

For each (model, sampler) pair and parameter it prints the chi-square statistic of
the rank histogram (B bins) and its p-value, plus a negative control (the seed
model's NUTS draws shrunk by 0.8 toward each replication's mean, a posterior 20%
too narrow, which must fail). It draws the rank histograms with the 99% band of a
uniform histogram to `docs/figures/sbc_ranks.png`. Wall times include compilation
and are noisy on a shared machine (the load average is printed).
"""

import argparse
import os
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import scipy.stats
from tests import _sbc


SHRINK = 0.8


def histogram_panel(ax, rank, num_ranks, num_bins, title):
    counts = np.bincount(rank * num_bins // num_ranks, minlength=num_bins)
    n = rank.size
    low, high = scipy.stats.binom.ppf([0.005, 0.995], n, 1 / num_bins)
    ax.axhspan(low, high, color="0.85", label="99% band (uniform)")
    ax.axhline(n / num_bins, color="0.5", lw=0.8)
    ax.bar(np.arange(num_bins), counts, width=0.9, color="C0")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.tick_params(labelsize=7)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(_sbc.MODELS))
    parser.add_argument("--samplers", nargs="+", default=list(_sbc.SAMPLERS))
    parser.add_argument("--reps", type=int, default=_sbc.NUM_REPLICATIONS)
    parser.add_argument("--seed", type=int, default=_sbc.SEED)
    parser.add_argument("--ess", action="store_true", help="report ESS per draw")
    parser.add_argument(
        "--figure", default=str(ROOT / "docs" / "figures" / "sbc_ranks.png")
    )
    args = parser.parse_args()

    num_ranks = _sbc.NUM_DRAWS + 1
    print(
        f"{args.reps} replications, {_sbc.NUM_WARMUP} warm-up + "
        f"{_sbc.NUM_DRAWS * _sbc.THIN} transitions, L = {_sbc.NUM_DRAWS} draws "
        f"(every {_sbc.THIN}th), {_sbc.NUM_BINS} bins; load average "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    header = (
        "| sampler | model | parameter | reps | chi² | p | divergences | wall (s) |"
    )
    if args.ess:
        header += " ESS/draw median | ESS/draw 5% |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    panels = []
    control = None
    for sampler_name in args.samplers:
        for model_name in args.models:
            start = time.perf_counter()
            results = _sbc.simulate(
                model_name, sampler_name, seed=args.seed, num_replications=args.reps
            )
            wall = time.perf_counter() - start
            tests = _sbc.uniformity(results)
            rank = _sbc.ranks(results["truth"], results["draws"], _sbc.NUM_DRAWS)
            ess = _sbc.relative_ess(results["draws"]) if args.ess else None
            names = _sbc.MODELS[model_name].parameters
            for i, (name, (stat, p)) in enumerate(zip(names, tests)):
                row = (
                    f"| {sampler_name} | {model_name} | {name} | {args.reps} | "
                    f"{stat:.1f} | {p:.3f} | {int(results['divergences'].sum())} | "
                    f"{wall:.0f} |"
                )
                if ess is not None:
                    row += (
                        f" {np.median(ess[:, i]):.2f} | "
                        f"{np.quantile(ess[:, i], 0.05):.2f} |"
                    )
                print(row, flush=True)
                panels.append((rank[:, i], f"{sampler_name}, {model_name}: {name}"))
            if (model_name, sampler_name) == ("seed", "laplace_nuts"):
                control = dict(results, draws=_sbc.shrink(results["draws"], SHRINK))
    if control is not None:
        [(stat, p)] = _sbc.uniformity(control)
        print(
            f"\nNegative control (seed, laplace_nuts, posterior scale × {SHRINK}): "
            f"chi² = {stat:.1f}, p = {p:.2g} (must be < 0.01)"
        )
        rank = _sbc.ranks(control["truth"], control["draws"], _sbc.NUM_DRAWS)
        panels.append((rank[:, 0], f"negative control: NUTS, seed, sd × {SHRINK}"))
    print(f"load average {os.getloadavg()[0]:.1f}")

    num_cols = 3
    num_rows = -(-len(panels) // num_cols)
    fig, axes = plt.subplots(
        num_rows, num_cols, figsize=(9, 1.6 * num_rows), squeeze=False
    )
    for ax, (rank, title) in zip(axes.flat, panels):
        histogram_panel(ax, rank, num_ranks, _sbc.NUM_BINS, title)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"SBC rank histograms ({args.reps} replications, {_sbc.NUM_BINS} bins of "
        f"the ranks 0-{_sbc.NUM_DRAWS}); grey: 99% band of a uniform histogram",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(args.figure, dpi=110)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
