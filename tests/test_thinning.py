"""`sample(..., thinning=k)`: which draws are kept, statistics over every
transition, checkpoints and `resume`, validation."""

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import lapsample as ls
from lapsample._workflow import (
    checkpoint as _checkpoint,
    draws as _draws,
    settings as _settings,
)

from .helpers import seed_data, SEED_N, SeedModel


# --------------------------------------------------------------------------------
# Which transitions are kept (host-side logic, no JAX).
# --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_samples, k, kept",
    [
        (6, 1, [0, 1, 2, 3, 4, 5]),
        (12, 3, [2, 5, 8, 11]),
        # 12 = 2 * 5 + 2: the two left over join the first group; the last
        # transition is always kept.
        (12, 5, [6, 11]),
        (5, 5, [4]),
    ],
)
def test_kept_iterations(num_samples, k, kept):
    i = np.arange(num_samples)
    slot, is_kept = _draws.draw_slots(i, num_samples, k)
    assert np.flatnonzero(is_kept).tolist() == kept
    assert _draws.num_kept(num_samples, k) == len(kept)
    # Every transition belongs to the group of the next kept one (or the first).
    expected = np.searchsorted(np.asarray(kept), i)
    np.testing.assert_array_equal(slot, expected)
    assert _draws.slots_touched(0, num_samples, k) == 0
    for done in range(1, num_samples + 1):
        assert _draws.slots_touched(done, num_samples, k) == expected[done - 1] + 1


class _Info(eqx.Module):
    is_divergent: np.ndarray
    inner_failures: np.ndarray


class _Record(eqx.Module):
    position: np.ndarray
    info: _Info


def _record(rng, chains, length):
    return _Record(
        position=rng.normal(size=(chains, length, 2)),
        info=_Info(
            is_divergent=rng.random((chains, length)) < 0.3,
            inner_failures=rng.integers(0, 3, (chains, length)).astype(np.int32),
        ),
    )


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_host_draws_thin_and_combine_over_groups(chunk):
    """Filled chunk by chunk (chunks that straddle warm-up, groups and the end),
    the store equals thinning the whole run at once: positions of the kept
    transitions, divergences OR-ed and failures summed over each group, warm-up
    untouched and divergences counted over every transition."""
    rng = np.random.default_rng(0)
    num_warmup, num_samples, k, chains = 5, 17, 4, 3
    run = _record(rng, chains, num_warmup + num_samples)
    store = _draws.HostDraws(
        _record(rng, chains, chunk), num_warmup, num_samples, k, save_warmup=True
    )
    for step in range(0, num_warmup + num_samples, chunk):
        n = min(chunk, num_warmup + num_samples - step)
        part = _record(rng, chains, chunk)
        part = eqx.tree_at(
            lambda r: (r.position, r.info.is_divergent, r.info.inner_failures),
            part,
            (
                np.pad(
                    run.position[:, step : step + n], ((0, 0), (0, chunk - n), (0, 0))
                ),
                np.pad(
                    run.info.is_divergent[:, step : step + n], ((0, 0), (0, chunk - n))
                ),
                np.pad(
                    run.info.inner_failures[:, step : step + n],
                    ((0, 0), (0, chunk - n)),
                ),
            ),
        )
        store.add(
            step, n, [part.position, part.info.is_divergent, part.info.inner_failures]
        )
    after = slice(num_warmup, None)
    kept = np.asarray([4, 8, 12, 16])  # 17 = 4 * 4 + 1: the first group has 5
    groups = [range(0, 5), range(5, 9), range(9, 13), range(13, 17)]
    draws = store.records()
    np.testing.assert_array_equal(draws.position, run.position[:, after][:, kept])
    div = run.info.is_divergent[:, after]
    fail = run.info.inner_failures[:, after]
    for j, g in enumerate(groups):
        np.testing.assert_array_equal(draws.info.is_divergent[:, j], div[:, g].any(1))
        np.testing.assert_array_equal(
            draws.info.inner_failures[:, j], fail[:, g].sum(1)
        )
    np.testing.assert_array_equal(store.divergences, div.sum(1))
    np.testing.assert_array_equal(
        store.warmup_divergences, run.info.is_divergent[:, :num_warmup].sum(1)
    )
    np.testing.assert_array_equal(
        store.records(warmup=True).position, run.position[:, :num_warmup]
    )


# --------------------------------------------------------------------------------
# Runs of the seed model: one compiled chunk for every run in this module.
# --------------------------------------------------------------------------------

# No warm-up and a step size too large for the seed model: about half of the
# transitions diverge (far out in log_sigma the energy error passes the threshold
# or the value overflows), some kept, some not. (At 1.5 they diverged only because the
# marginal's value was wrong far out, where a step negligible in theta was not
# negligible in the objective: `tests/test_newton_stopping.py`.)
RUN = dict(num_warmup=0, num_samples=12, num_chains=2, chunk_size=5, progress_bar=False)


def _sampler():
    marginal = ls.LaplaceMarginal(SeedModel(seed_data()), jnp.zeros(SEED_N))
    return ls.Sampler(
        marginal,
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=jnp.asarray(2.0),
        inverse_mass_matrix=1.0,
    )


def _sample(**kwargs):
    return ls.sample(jr.key(1), _sampler(), jnp.array(0.5), **{**RUN, **kwargs})


@pytest.fixture(scope="module")
def unthinned():
    return _sample()


@pytest.fixture(scope="module")
def thinned():
    return _sample(thinning=5)


def test_thinning_keeps_every_kth_draw(unthinned, thinned):
    kept = [6, 11]  # 12 = 2 * 5 + 2
    assert thinned.num_samples == 2
    for name in ("phi", "theta_star"):
        np.testing.assert_array_equal(
            getattr(thinned, name), getattr(unthinned, name)[:, kept]
        )
    for name in ("lp", "acceptance_rate", "energy", "n_steps", "tree_depth"):
        np.testing.assert_array_equal(
            thinned.sample_stats[name], unthinned.sample_stats[name][:, kept], name
        )
    # The final state is that of the last transition, the last kept draw.
    np.testing.assert_array_equal(thinned.final_state.position, thinned.phi[:, -1])


def test_thinning_hides_no_divergence(unthinned, thinned):
    div = unthinned.sample_stats["diverging"]
    groups = [range(0, 7), range(7, 12)]
    expected = np.stack([div[:, g].any(axis=1) for g in groups], axis=1)
    np.testing.assert_array_equal(thinned.sample_stats["diverging"], expected)
    # The test is real: some group diverged only at a transition thinning drops.
    kept_div = div[:, [6, 11]]
    assert (expected & ~kept_div).any(), div


class _Interrupted(Exception):
    pass


def test_thinned_run_resumes_bit_for_bit(thinned, tmp_path, monkeypatch):
    """Killed after the checkpoint at iteration 5, inside the first group (whose
    divergences so far must survive in the file), then resumed."""
    path = tmp_path / "run.lsmp"
    write = _checkpoint.write

    def write_then_stop(file, header, arrays):
        write(file, header, arrays)
        if header["step"] == 5:
            raise _Interrupted

    monkeypatch.setattr(_checkpoint, "write", write_then_stop)
    with pytest.raises(_Interrupted):
        _sample(thinning=5, checkpoint=path)
    monkeypatch.setattr(_checkpoint, "write", write)
    resumed = ls.resume(path, _sampler(), progress_bar=False)
    assert resumed.num_samples == 2
    for name in ("phi", "theta_star"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(thinned, name))
    for name, value in thinned.sample_stats.items():
        np.testing.assert_array_equal(resumed.sample_stats[name], value, name)


def test_settings_header_without_thinning_reads_as_one():
    """A checkpoint written before `thinning` existed keeps every draw."""
    settings = _settings.RunSettings.from_arguments(
        _sampler(),
        jnp.array(0.5),
        num_warmup=0,
        num_samples=4,
        num_chains=1,
        target_accept=0.8,
        dense_mass=None,
        adapt_mass_matrix=True,
        chain_axis=False,
        jitter=0.0,
        sample_theta=False,
        save_warmup=False,
        chain_method=None,
        chunk_size=None,
        model_is_marginal=False,
        thinning=2,
    )
    header = settings.to_header()
    assert header["thinning"] == 2
    del header["thinning"]
    assert _settings.RunSettings.from_header(header).thinning == 1


@pytest.mark.parametrize(
    "thinning, error, match",
    [
        (0, ValueError, "`thinning` must be at least 1"),
        (-2, ValueError, "`thinning` must be at least 1"),
        # Also caught first by the jaxtyping checks the test suite turns on.
        (2.0, TypeError, "thinning"),
        (True, TypeError, "`thinning` must be a Python int"),
        (13, ValueError, "Lower `thinning` or raise `num_samples`"),
    ],
)
def test_invalid_thinning(thinning, error, match):
    # Raised before anything compiles.
    with pytest.raises(error, match=match):
        _sample(thinning=thinning)
