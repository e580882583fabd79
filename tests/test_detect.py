"""detect_hessian: the strategy it picks on models of known structure, and that the
pick gives the dense marginal."""

import jax.numpy as jnp
import pytest

import lapsample

from .helpers import evaluate, poisson_gp, seed_model
from .test_structured import (
    _grouped_data,
    _rw2_data,
    _sv_data,
    GroupedEffects,
    RandomWalk2,
    StochasticVolatility,
)


def _expected(kind, size):
    make = {
        "diagonal": lambda: lapsample.DiagonalHessian(),
        "banded": lambda: lapsample.BandedHessian(bandwidth=size),
        "block": lambda: lapsample.BlockDiagonalHessian(block_size=size),
        "dense": lambda: lapsample.DenseHessian(),
    }
    return make[kind]()


# (log joint, d, phi, expected strategy kind and size, bandwidth seen)
CASES = {
    "diagonal-seed": (seed_model(12), 12, jnp.array(0.3), ("diagonal", None), 0),
    "tridiagonal-sv": (
        StochasticVolatility(_sv_data(40)),
        40,
        jnp.array([-1.0, 2.0, -1.2]),
        ("banded", 1),
        1,
    ),
    "rw2": (RandomWalk2(_rw2_data(30)), 30, jnp.array([-1.5, 0.8]), ("banded", 2), 2),
    # The extra coupling theta_t theta_{t+3} widens the band to 3.
    "rw2-coupled": (
        RandomWalk2(_rw2_data(30), extra=0.3),
        30,
        jnp.array([-1.5, 0.8]),
        ("banded", 3),
        3,
    ),
    # Full 3 × 3 blocks (bandwidth 2): 3 products for blocks beat 5 for a band.
    "blocks-of-3": (
        GroupedEffects(*_grouped_data(8)),
        24,
        jnp.array([-0.3, -0.8, -1.5, 0.4]),
        ("block", 3),
        2,
    ),
    # A GP couples every pair of latents: wider than max_size, so dense.
    "gp-dense": (poisson_gp(24), 24, jnp.array([0.1, 0.3]), ("dense", None), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_detects_the_structure(name, capsys):
    log_joint, d, phi, (kind, size), bandwidth = CASES[name]
    found = lapsample.detect_hessian(log_joint, jnp.zeros(d), phi, max_size=8)
    assert found.strategy == _expected(kind, size), found.reason
    assert found.bandwidth == bandwidth
    # It says what it chose.
    assert repr(found.strategy) in capsys.readouterr().out


def test_diagonal_hessian_has_blocks_of_one():
    # Issue 22: a diagonal Hessian was reported with block_size=2.
    log_joint, d, phi, _, _ = CASES["diagonal-seed"]
    found = lapsample.detect_hessian(log_joint, jnp.zeros(d), phi, verbose=False)
    assert found.strategy == lapsample.DiagonalHessian()
    assert (found.bandwidth, found.block_size) == (0, 1)
    # Blocks of 3 stay blocks of 3.
    log_joint, d, phi, _, _ = CASES["blocks-of-3"]
    found = lapsample.detect_hessian(
        log_joint, jnp.zeros(d), phi, max_size=8, verbose=False
    )
    assert found.block_size == 3


def test_detected_strategy_gives_the_dense_marginal():
    log_joint, d, phi, _, _ = CASES["tridiagonal-sv"]
    found = lapsample.detect_hessian(log_joint, jnp.zeros(d), phi, verbose=False)
    values = []
    for hessian in (found.strategy, lapsample.DenseHessian()):
        marginal = lapsample.LaplaceMarginal(log_joint, jnp.zeros(d), hessian=hessian)
        marginal.check(phi)
        value, aux = evaluate(marginal, phi)
        assert aux.result == lapsample.RESULTS.successful
        values.append(float(value))
    assert abs(values[0] - values[1]) <= 1e-10 * abs(values[1])


def test_pytree_latent_uses_the_flattened_order():
    model = seed_model(6)

    def log_joint(theta, log_sigma):
        return model(jnp.concatenate([theta["a"], theta["b"]]), log_sigma)

    theta_init = {"a": jnp.zeros(3), "b": jnp.zeros(3)}
    found = lapsample.detect_hessian(
        log_joint, theta_init, jnp.array(0.0), verbose=False
    )
    assert found.strategy == lapsample.DiagonalHessian()


@pytest.mark.parametrize(
    "kwargs, error, phrase",
    [
        ({"num_points": 0}, ValueError, "num_points"),
        ({"max_size": 0}, ValueError, "max_size"),
    ],
)
def test_bad_arguments(kwargs, error, phrase):
    log_joint, d, phi, _, _ = CASES["diagonal-seed"]
    with pytest.raises(error, match=phrase):
        lapsample.detect_hessian(log_joint, jnp.zeros(d), phi, **kwargs)


def test_integer_latent_is_refused():
    log_joint, d, phi, _, _ = CASES["diagonal-seed"]
    with pytest.raises(TypeError, match="floating-point"):
        lapsample.detect_hessian(log_joint, jnp.zeros(d, int), phi)
