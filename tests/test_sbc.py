"""Simulation-based calibration (Talts et al. 2018) of the five samplers of the seed
API on two models whose Laplace marginal is exact (the seed model, n = 10, and eight
schools' structure with simulated data), so any miscalibration is the sampler's.
The machinery is in `tests/_sbc.py`, shared with `benchmarks/sbc.py`.

Why these tests have power. Each (model, sampler) pair runs R = 1000 replications;
the rank of the truth among L = 19 thinned draws is grouped into B = 10 bins (100
expected per bin) and tested with Pearson's chi-square (9 degrees of freedom; the
test fails at p <= 0.01, i.e. a statistic above 21.7). If the sampler's posterior
has the right centre but a scale c times the true one, then for a roughly Gaussian
posterior the rank fraction is Φ(z / c) with z ~ N(0, 1), so bin i has probability
p_i = Φ(c Φ⁻¹(i / B)) - Φ(c Φ⁻¹((i - 1) / B)) and the statistic is non-central
chi-square with non-centrality λ = R B Σ (p_i - 1/B)²:

- c = 0.9 (posterior sd 10% too narrow): λ ≈ 16, expected statistic ≈ 25 (p = 0.003 at
  that value);
- c = 0.8 (20% too narrow): λ ≈ 73, expected statistic ≈ 82 (p ≈ 1e-13).

With only L + 1 = 20 distinct ranks the ranks are coarser than this continuous
calculation assumes; simulating them (truth ~ N(0, 1), 19 draws ~ N(0, c²), 2000
repetitions of the test) gives a median p of 0.015 and a detection rate (p <= 0.01)
of 0.45 for c = 0.9, and a median p of 1e-10 and a detection rate of 1.000 for
c = 0.8.

`test_sbc_detects_a_narrow_posterior` checks the second case on real ranks (the seed
model's NUTS draws shrunk toward each replication's mean by 0.8), so the test is
shown to fail on a miscalibrated sampler. A calibrated pair fails by chance with
probability 0.01 per statistic (3 per sampler, 15 in all); the seeds are fixed.
"""

import functools

import numpy as np
import pytest

from . import _sbc


pytestmark = pytest.mark.slow

PAIRS = [(m, s) for m in _sbc.MODELS for s in _sbc.SAMPLERS]


@functools.cache
def _results(model_name: str, sampler_name: str) -> dict[str, np.ndarray]:
    # One compilation and one vmapped run per pair, shared by the tests below.
    return _sbc.simulate(model_name, sampler_name)


@pytest.mark.parametrize("model_name, sampler_name", PAIRS)
def test_sbc_ranks_are_uniform(model_name, sampler_name):
    results = _results(model_name, sampler_name)
    assert np.isfinite(results["draws"]).all()
    # A divergent transition is rejected (the chain stays put), which is still a
    # valid Markov chain; many of them would mean the tuning failed.
    assert results["divergences"].mean() < 0.01 * _sbc.NUM_DRAWS * _sbc.THIN
    for name, (stat, p) in zip(
        _sbc.MODELS[model_name].parameters, _sbc.uniformity(results)
    ):
        assert p > 0.01, f"{sampler_name} on {model_name}: {name} chi² = {stat:.1f}"


def test_sbc_detects_a_narrow_posterior():
    """The negative control: the same ranks from a posterior 20% too narrow must
    fail the uniformity test (power > 0.999, see the module docstring)."""
    results = dict(_results("seed", "laplace_nuts"))
    results["draws"] = _sbc.shrink(results["draws"], 0.8)
    [(stat, p)] = _sbc.uniformity(results)
    assert p < 0.01, f"chi² = {stat:.1f}"
