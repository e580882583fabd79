"""Fast tests of the workflow driver: `lapsample.sample`, `lapsample.resume`, warm-up
adaptation, devices, progress bar, checkpoints and ArviZ output.

Compilation dominates the cost, so the in-process runs of the seed model share one
compiled chunk: they all go through `_seed_sample`, which uses one traced-and-counted
copy of the driver's chunk function (and so also checks that adapted step sizes,
mass matrices, data and settings never retrace it). Subprocesses (four forced host
devices, a killed run, a pseudo-terminal) compile on their own and share a
persistent compilation cache.
"""

import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import lapsample as ls
from lapsample._misc import variable_names
from lapsample._workflow import (
    adaptation as _adaptation,
    chains as _chains,
    checkpoint as _checkpoint,
    devices as _devices,
    loop as _loop,
    progress as _progress,
    schedule as _schedule,
    settings as _settings,
)

from .helpers import (
    CORRELATED_COV,
    correlated_gaussian,
    import_arviz,
    seed_data,
    SEED_N,
    SeedModel,
)


REPO = Path(__file__).resolve().parents[1]

# The seed model run shared by most tests: 4 chains, 150 warm-up iterations (Stan's
# 75 / 25 / 50 windows), 100 draws, latent draws, 10 chunks.
SEED_KEY = 20260601
SEED_START = 0.5
SEED_SETTINGS = dict(
    num_warmup=150,
    num_samples=100,
    num_chains=4,
    sample_theta=True,
    chunk_size=25,
    progress_bar=False,
)

_DRAW_FIELDS = ("phi", "theta", "theta_star", "step_size", "inverse_mass_matrix")

SCHEMA = (
    "lp",
    "acceptance_rate",
    "diverging",
    "energy",
    "step_size",
    "n_steps",
    "tree_depth",
    "reached_max_treedepth",
    "inner_steps",
    "inner_failed",
)

# One traced copy of the chunk function for every run of the seed configuration:
# a second trace (a recompilation) raises.
_SEED_ADVANCE = eqx.debug.assert_max_traces(_chains.advance_chains_impl, max_traces=1)
_SEED_ADVANCE_JIT = eqx.filter_jit(_SEED_ADVANCE)


def _seed_marginal(y=None):
    y = seed_data() if y is None else y
    return ls.LaplaceMarginal(SeedModel(y), jnp.zeros(SEED_N))


def _seed_sample(key=SEED_KEY, marginal=None, start=SEED_START, **overrides):
    marginal = _seed_marginal() if marginal is None else marginal
    settings = {**SEED_SETTINGS, **overrides}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_loop, "advance_chains", _SEED_ADVANCE_JIT)
        return ls.sample(jr.key(key), marginal, jnp.array(start), **settings)


def _seed_resume(path, marginal=None, **kwargs):
    marginal = _seed_marginal() if marginal is None else marginal
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_loop, "advance_chains", _SEED_ADVANCE_JIT)
        return ls.resume(path, marginal, progress_bar=False, **kwargs)


@pytest.fixture(scope="module")
def seed_results(children):
    # `children` first: the subprocesses compile while this run does.
    return _seed_sample()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, subprocess_cache_dir):
    """A persistent compilation cache shared by the subprocesses of this module:
    the session's one for subprocesses (kept between sessions, see conftest.py), or
    a fresh one."""
    if subprocess_cache_dir is not None:
        return subprocess_cache_dir
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def children(tmp_path_factory, cache_dir):
    """Start the subprocess runs together, so that they compile while the tests in
    this process run.

    - `devices`: the seed configuration on four forced host (CPU) devices, with
      another chunk length, saving its draws.
    - `reference` (only when this process does not run on the CPU): the seed
      configuration on one host device, to compare `devices` with.
    - `kill`: the seed configuration with a checkpoint file; after its first
      checkpoint it waits for a `go` file, then goes on slowly (0.2 s per chunk)
      until the test kills it.
    """
    root = tmp_path_factory.mktemp("children")
    out = root / "draws.npz"
    host_env = _child_env(
        cache_dir,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
    )
    procs = {
        "devices": _start_draws_child(
            out, {**SEED_SETTINGS, "chunk_size": 40}, 4, host_env
        )
    }
    # Off the CPU (a GPU machine) this process's seed run is not comparable bit for
    # bit with the CPU child's; a second CPU child on one device is.
    reference = None
    if jax.default_backend() != "cpu":
        reference = root / "reference.npz"
        procs["reference"] = _start_draws_child(
            reference, SEED_SETTINGS, 1, _child_env(cache_dir, JAX_PLATFORMS="cpu")
        )
    path = root / "run.lsmp"
    go = root / "go"
    kill_script = _CHILD_PRELUDE + textwrap.dedent(
        f"""
        import os, time
        from lapsample._workflow import checkpoint as _checkpoint
        write = _checkpoint.write
        def gated_write(*args, **kwargs):
            write(*args, **kwargs)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.01)
            time.sleep(0.2)
        _checkpoint.write = gated_write
        ls.sample(jr.key({SEED_KEY}), marginal, jnp.array({SEED_START}),
                  checkpoint={str(path)!r}, **{SEED_SETTINGS!r})
        print("FINISHED")
        """
    )
    procs["kill"] = subprocess.Popen(
        [sys.executable, "-c", kill_script],
        env=_child_env(cache_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    yield {
        "devices": (procs["devices"], out),
        "reference": (procs.get("reference"), reference),
        "kill": (procs["kill"], path, go),
    }
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        # Close pipes that no selected test read (e.g. under `-k`), so that no
        # unclosed-file ResourceWarning turns into an error at teardown.
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def _start_draws_child(out, settings, num_devices, env):
    """A subprocess that runs the seed configuration with `settings` and saves its
    draws and statistics to `out`."""
    script = _CHILD_PRELUDE + textwrap.dedent(
        f"""
        assert len(jax.devices()) == {num_devices}, jax.devices()
        r = ls.sample(jr.key({SEED_KEY}), marginal, jnp.array({SEED_START}),
                      **{settings!r})
        stats = {{"stats." + k: v for k, v in r.sample_stats.items()}}
        np.savez({str(out)!r}, phi=r.phi, theta=r.theta, theta_star=r.theta_star,
                 step_size=r.step_size, inverse_mass_matrix=r.inverse_mass_matrix,
                 **stats)
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _child_env(cache_dir, **extra):
    env = dict(os.environ)
    env.pop("CI", None)
    env.pop("XLA_FLAGS", None)
    # On a GPU this process holds most of the memory; a child that preallocated
    # too would fail its allocation and print about it.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


_CHILD_PRELUDE = """
import sys
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import lapsample as ls
from tests.helpers import SeedModel, seed_data, SEED_N
marginal = ls.LaplaceMarginal(SeedModel(seed_data()), jnp.zeros(SEED_N))
"""


def _assert_same_draws(a: ls.SampleResults, b: ls.SampleResults):
    """Bitwise equality of everything a run returns."""
    for name in ("phi", "theta", "theta_star", "step_size", "inverse_mass_matrix"):
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True), name
    for name in SCHEMA:
        assert np.array_equal(
            a.sample_stats[name], b.sample_stats[name], equal_nan=True
        ), name


# --------------------------------------------------------------------------------
# The results of a run.
# --------------------------------------------------------------------------------


def test_results_shapes_and_stats(seed_results):
    r = seed_results
    assert r.phi.shape == (4, 100)
    assert r.theta_star.shape == (4, 100, SEED_N)
    assert r.theta.shape == (4, 100, SEED_N)
    assert np.all(np.isfinite(r.phi)) and np.all(np.isfinite(r.theta))
    assert set(r.sample_stats) == set(SCHEMA)
    for name, value in r.sample_stats.items():
        assert value.shape == (4, 100), name
    assert r.sample_stats["diverging"].dtype == bool
    assert r.sample_stats["reached_max_treedepth"].dtype == bool
    assert np.issubdtype(r.sample_stats["tree_depth"].dtype, np.integer)
    # `lp` is the log density at the draw, `step_size` the adapted one.
    assert np.all(r.sample_stats["step_size"] == r.step_size[:, None])
    assert r.step_size.shape == (4,) and np.all(r.step_size > 0)
    assert r.inverse_mass_matrix.shape == (4, 1)
    assert np.all(r.inverse_mass_matrix > 0)
    # Chains adapt independently.
    assert len(set(r.step_size.tolist())) == 4
    assert r.final_state.position.shape == (4,)
    assert np.array_equal(r.final_state.position, r.phi[:, -1])
    assert r.num_warmup == 150 and r.num_warmup_divergences.shape == (4,)
    # The latent draws scatter around theta* (the posterior sd of each theta_i is
    # below 1 here).
    assert 0.1 < np.std(r.theta - r.theta_star) < 1.0
    assert "chains=4" in repr(r)


def test_adapted_values_never_retrace(seed_results):
    # Another key, target, start and data: new step sizes and mass matrices, the
    # same compiled chunk (`_SEED_ADVANCE` allows one trace).
    y = seed_data() + 0.3
    other = _seed_sample(
        key=1, marginal=_seed_marginal(y), start=1.0, target_accept=0.9, jitter=0.1
    )
    assert eqx.debug.get_num_traces(_SEED_ADVANCE) == 1
    assert not np.allclose(other.step_size, seed_results.step_size)
    assert not np.allclose(other.inverse_mass_matrix, seed_results.inverse_mass_matrix)


def test_to_arviz_schema_and_summary(seed_results):
    az = import_arviz()
    idata = seed_results.to_arviz()
    assert set(idata.groups()) == {"posterior", "sample_stats"}
    assert set(idata.posterior.data_vars) == {"phi", "theta"}
    assert idata.posterior["phi"].shape == (4, 100)
    assert idata.posterior["theta"].shape == (4, 100, SEED_N)
    assert set(SCHEMA) <= set(idata.sample_stats.data_vars)
    table = az.summary(idata)
    assert {"mean", "sd", "ess_bulk", "r_hat"} <= set(table.columns)
    assert len(table) == 1 + SEED_N


def test_save_warmup(seed_results):
    # Keeping the warm-up is host-side bookkeeping: the same compiled chunk, the
    # same draws.
    results = _seed_sample(save_warmup=True)
    _assert_same_draws(results, seed_results)
    assert results.warmup_phi.shape == (4, 150)
    assert results.warmup_sample_stats["step_size"].shape == (4, 150)
    # Warm-up step sizes move (dual averaging), the sampling ones do not.
    assert np.ptp(results.warmup_sample_stats["step_size"], axis=1).min() > 0
    assert np.array_equal(
        results.warmup_sample_stats["diverging"].sum(axis=1),
        results.num_warmup_divergences,
    )
    idata = results.to_arviz()
    assert {"warmup_posterior", "warmup_sample_stats"} <= set(idata.groups())


def test_missing_arviz_is_a_clear_error(seed_results, monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r'pip install "lapsample\[arviz\]"'):
        seed_results.to_arviz()


def _iid_results(seed_results, phi):
    """The seed run's results with `phi` replaced (and no latent draws)."""
    return eqx.tree_at(
        lambda r: (r.phi, r.theta),
        seed_results,
        (phi, None),
        is_leaf=lambda x: x is None,
    )


def test_summary_is_quiet_for_a_healthy_run(seed_results, capsys):
    # Independent normal draws: R-hat is 1 up to noise of ~0.003 at 4 × 100 draws.
    phi = np.random.default_rng(0).normal(size=(4, 100))
    results = _iid_results(seed_results, phi)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = results.summary()
        results.print_summary()
    assert table.loc["phi", "r_hat"] < 1.01
    assert int(table.attrs["diagnostics"]["divergences"].sum()) == 0
    out = capsys.readouterr().out
    assert "divergences: 0" in out and "r_hat" in out


def test_summary_warns(seed_results):
    phi = np.random.default_rng(0).normal(size=(4, 100))
    healthy = _iid_results(seed_results, phi)
    stats = dict(healthy.sample_stats)
    stats["diverging"] = stats["diverging"].copy()
    stats["diverging"][1, 7] = True
    diverging = eqx.tree_at(lambda r: r.sample_stats, healthy, stats)
    with pytest.warns(UserWarning, match=r"1 divergent transitions.*\[0, 1, 0, 0\]"):
        diverging.summary()
    stats = dict(healthy.sample_stats)
    stats["inner_failed"] = stats["inner_failed"].copy()
    stats["inner_failed"][3, 0] = 2
    failed = eqx.tree_at(lambda r: r.sample_stats, healthy, stats)
    with pytest.warns(UserWarning, match="failed inner solve"):
        failed.summary()
    shifted = _iid_results(seed_results, phi + np.array([[3.0], [0], [0], [0]]))
    with pytest.warns(UserWarning, match="R-hat above 1.01 for phi"):
        shifted.summary()


def test_variable_names():
    x = np.zeros((2, 3))
    assert [n for n, _ in variable_names(x, "phi")] == ["phi"]
    tree = {"b": {"c": x, "d": x}, "a": x}
    assert [n for n, _ in variable_names(tree, "phi")] == ["a", "b.c", "b.d"]
    assert [n for n, _ in variable_names((x, [x]), "theta")] == [
        "theta.0",
        "theta.1.0",
    ]


def test_to_arviz_dict_names_and_clashes(seed_results):
    draws = seed_results.phi
    results = eqx.tree_at(
        lambda r: (r.phi, r.theta),
        seed_results,
        ({"mu": draws, "tau": draws}, {"mu": draws}),
    )
    idata = results.to_arviz()
    assert set(idata.posterior.data_vars) == {"mu", "tau", "theta.mu"}


# --------------------------------------------------------------------------------
# Determinism: chunks and devices.
# --------------------------------------------------------------------------------


def _saved_draws(child):
    proc, out = child
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    with np.load(out) as saved:
        return dict(saved)


def test_four_devices_and_other_chunks_give_the_same_draws(seed_results, children):
    # Four forced host devices (the chains are sharded one per device) and another
    # chunk length: both must leave every draw unchanged, bit for bit.
    saved = _saved_draws(children["devices"])
    if children["reference"][0] is None:
        expected = {name: getattr(seed_results, name) for name in _DRAW_FIELDS}
        expected.update({"stats." + k: v for k, v in seed_results.sample_stats.items()})
    else:
        expected = _saved_draws(children["reference"])
    for name in _DRAW_FIELDS + tuple("stats." + k for k in SCHEMA):
        assert np.array_equal(
            saved[name], np.asarray(expected[name]), equal_nan=True
        ), name


def test_mesh_size():
    # 4 or 8 chains on 4 devices: all of them; 6 chains: the largest divisor of 6,
    # 3 devices; 5 chains: one device. Several hosts need a multiple.
    assert _devices.mesh_size(4, 4, 1) == 4
    assert _devices.mesh_size(8, 4, 1) == 4
    assert _devices.mesh_size(6, 4, 1) == 3
    assert _devices.mesh_size(5, 4, 1) == 1
    assert _devices.mesh_size(3, 1, 1) == 1
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        _devices.mesh_size(6, 4, 2)


# --------------------------------------------------------------------------------
# Checkpoints: kill and resume, bad files.
# --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_checkpoint(children):
    """A checkpoint left by a run of the seed configuration killed with SIGKILL
    mid-run, after at least one checkpoint was written."""
    proc, path, go = children["kill"]
    deadline = time.monotonic() + 600
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the child never wrote a checkpoint:\n{err.decode()[-3000:]}")
        time.sleep(0.02)
    # Let the run go on, then kill it somewhere in the middle (each chunk now
    # takes at least 0.2 s, and 10 chunks remain at most).
    go.touch()
    time.sleep(0.7)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert b"FINISHED" not in out
    return path


def _header(path):
    header, _ = _checkpoint.read(path)
    return header


def test_kill_and_resume_is_bitwise_identical(
    seed_results, killed_checkpoint, tmp_path
):
    path = tmp_path / "run.lsmp"
    shutil.copy(killed_checkpoint, path)
    header = _header(path)
    total = SEED_SETTINGS["num_warmup"] + SEED_SETTINGS["num_samples"]
    # Killed mid-run: at least one chunk done, not all.
    assert SEED_SETTINGS["chunk_size"] <= header["step"] < total
    assert not header["complete"]
    resumed = _seed_resume(path)
    _assert_same_draws(resumed, seed_results)
    assert np.array_equal(
        resumed.num_warmup_divergences, seed_results.num_warmup_divergences
    )
    # The file now holds the finished run; resuming it again just returns it.
    assert _header(path)["complete"] and _header(path)["step"] == total
    again = _seed_resume(path)
    _assert_same_draws(again, seed_results)


def test_resume_refuses_another_model(killed_checkpoint, tmp_path):
    path = tmp_path / "run.lsmp"
    shutil.copy(killed_checkpoint, path)
    before = path.read_bytes()
    other = _seed_marginal(seed_data() + 1.0)
    with pytest.raises(ValueError, match="written for a different model"):
        ls.resume(path, other)
    with pytest.raises(ValueError, match="written for a different model"):
        ls.resume(path, ls.PlainDensity(lambda x: -(x**2)))
    assert path.read_bytes() == before


def test_truncated_checkpoint(killed_checkpoint, tmp_path):
    path = tmp_path / "run.lsmp"
    data = killed_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="truncated"):
        ls.resume(path, _seed_marginal())
    assert path.read_bytes() == before
    # Neither does a new run overwrite it.
    with pytest.raises(FileExistsError, match="not a lapsample checkpoint"):
        ls.sample(jr.key(0), _seed_marginal(), jnp.array(0.5), checkpoint=path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("kind", ["text", "npz", "bad_magic"])
def test_foreign_file(kind, tmp_path):
    path = tmp_path / "run.lsmp"
    if kind == "text":
        path.write_text("results: none\n")
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, x=np.arange(3))
    else:
        with open(path, "wb") as f:
            header = json.dumps({"magic": "something-else", "version": 1}).encode()
            np.savez(f, __header__=np.frombuffer(header, np.uint8))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not a usable lapsample checkpoint"):
        ls.resume(path, _seed_marginal())
    with pytest.raises(FileExistsError, match="not a lapsample checkpoint"):
        ls.sample(
            jr.key(0), _seed_marginal(), jnp.array(0.5), checkpoint=path, overwrite=True
        )
    assert path.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        ls.resume(tmp_path / "missing.lsmp", _seed_marginal())


def test_existing_checkpoint_is_not_overwritten(killed_checkpoint, tmp_path):
    path = tmp_path / "run.lsmp"
    shutil.copy(killed_checkpoint, path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=r"lapsample.resume"):
        ls.sample(jr.key(0), _seed_marginal(), jnp.array(0.5), checkpoint=path)
    assert path.read_bytes() == before


def test_checkpoint_needs_builtin_containers(tmp_path):
    class Phi(eqx.Module):
        a: jax.Array

    with pytest.raises(TypeError, match="dicts"):
        ls.sample(
            jr.key(0),
            ls.PlainDensity(lambda p: -(p.a**2)),
            Phi(jnp.array(0.0)),
            checkpoint=tmp_path / "x.lsmp",
        )


def test_resume_keeps_the_order_phi_was_written_in(tmp_path):
    # The output follows the user's dict order (not JAX's sorted keys), also for
    # results read back from a checkpoint by `resume`.
    model = ls.PlainDensity(lambda p: -0.5 * (p["sigma"] ** 2 + p["alpha"] ** 2))
    path = tmp_path / "order.lsmp"
    start = {"sigma": jnp.array(0.1), "alpha": jnp.array(-0.1)}
    common = dict(num_chains=1, num_warmup=5, num_samples=5, progress_bar=False)
    run = ls.sample(jr.key(3), model, start, checkpoint=path, **common)
    back = ls.resume(path, model, progress_bar=False)
    assert run.phi_order == back.phi_order == ("sigma", "alpha")
    assert list(back.to_arviz().posterior.data_vars) == ["sigma", "alpha"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    # A write interrupted half-way leaves the previous checkpoint intact and no
    # temporary file behind.
    path = tmp_path / "run.lsmp"
    _checkpoint.write(path, {"step": 1}, {"x": np.arange(3)})
    before = path.read_bytes()

    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 half an archive")
        raise KeyboardInterrupt

    monkeypatch.setattr(_checkpoint.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _checkpoint.write(path, {"step": 2}, {"x": np.arange(4)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.lsmp"]
    header, arrays = _checkpoint.read(path)
    assert header["step"] == 1 and np.array_equal(arrays["x"], np.arange(3))


def test_structure_round_trip():
    tree = {"b": [np.zeros(2), (np.ones(()), None)], "a": np.arange(3.0)}
    spec = _checkpoint.encode_structure(tree)
    leaves = jax.tree_util.tree_leaves(tree)
    rebuilt = _checkpoint.decode_structure(json.loads(json.dumps(spec)), leaves)
    assert jax.tree_util.tree_structure(rebuilt) == jax.tree_util.tree_structure(tree)


def test_fingerprint():
    a = _checkpoint.model_fingerprint(_seed_marginal())
    assert a == _checkpoint.model_fingerprint(_seed_marginal())
    assert a != _checkpoint.model_fingerprint(_seed_marginal(seed_data() * 2))
    y = seed_data()
    shorter = ls.LaplaceMarginal(SeedModel(y[:-1]), jnp.zeros(SEED_N - 1))
    assert a != _checkpoint.model_fingerprint(shorter)

    # Data held in a closure counts too.
    def closing_over(y):
        return ls.PlainDensity(lambda x: -jnp.sum((x - y) ** 2))

    zeros = _checkpoint.model_fingerprint(closing_over(jnp.zeros(2)))
    assert zeros == _checkpoint.model_fingerprint(closing_over(jnp.zeros(2)))
    assert zeros != _checkpoint.model_fingerprint(closing_over(jnp.ones(2)))


def test_fingerprint_ignores_the_module_and_takes_prng_keys():
    # The same function imported from another module (a notebook analysing a run's
    # script) has the same fingerprint.
    def log_density(x):
        return -0.5 * jnp.sum(x**2)

    here = _checkpoint.model_fingerprint(ls.PlainDensity(log_density))
    legacy = _checkpoint.model_fingerprint(ls.PlainDensity(log_density), legacy=True)
    log_density.__module__ = "run_script"
    assert _checkpoint.model_fingerprint(ls.PlainDensity(log_density)) == here
    # Checkpoints of version 1 (no `fingerprint_version`) included the module.
    moved = _checkpoint.model_fingerprint(ls.PlainDensity(log_density), legacy=True)
    assert moved != legacy

    class Keyed(eqx.Module):
        key: jax.Array
        y: jax.Array

        def __call__(self, theta, phi):
            return -0.5 * jnp.sum((self.y - theta) ** 2) - 0.5 * phi**2

    def keyed(key):
        return ls.LaplaceMarginal(Keyed(key, seed_data()), jnp.zeros(SEED_N))

    # A typed PRNG key: hashed by its bits (no NumPy TypeError), so that another key
    # is another model.
    a = _checkpoint.model_fingerprint(keyed(jr.key(0)))
    assert a == _checkpoint.model_fingerprint(keyed(jr.key(0)))
    assert a != _checkpoint.model_fingerprint(keyed(jr.key(1)))
    assert a != _checkpoint.model_fingerprint(keyed(jr.key(0, impl="rbg")))
    assert a != _checkpoint.model_fingerprint(keyed(jr.PRNGKey(0)))


# --------------------------------------------------------------------------------
# Resume by recomputation, continuing a finished run, a full disk.
# --------------------------------------------------------------------------------

# The seed configuration stopped after 60 of its 100 draws.
_SHORT = 60


@pytest.fixture(scope="module")
def short_checkpoint(seed_results, tmp_path_factory):
    """The seed configuration with 60 draws (same key), written to a checkpoint:
    `(results, path)`. The file is copied before a test changes it."""
    path = tmp_path_factory.mktemp("short") / "run.lsmp"
    results = _seed_sample(num_samples=_SHORT, checkpoint=path)
    assert not os.path.exists(str(path) + ".lock")  # the lock went with the run
    return results, path


def test_continue_run_is_one_longer_run(seed_results, short_checkpoint):
    # 60 draws, then 40 more with the same key and no warm-up: the seed run's 100
    # draws bit for bit (and no recompilation: the chunk function is the same).
    short, _ = short_checkpoint
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_loop, "advance_chains", _SEED_ADVANCE_JIT)
        more = ls.continue_run(
            jr.key(SEED_KEY), short, 100 - _SHORT, chunk_size=25, progress_bar=False
        )
        # Another key: another, equally valid continuation of the same chains.
        other = ls.continue_run(jr.key(1), short, 5, chunk_size=25, progress_bar=False)
    assert more.num_samples == 100 and more.num_warmup == short.num_warmup
    _assert_same_draws(more, seed_results)
    assert np.array_equal(more.num_warmup_divergences, short.num_warmup_divergences)
    assert np.array_equal(more.final_state.position, seed_results.final_state.position)
    assert np.array_equal(other.phi[:, :_SHORT], short.phi)
    assert not np.array_equal(other.phi[:, _SHORT:], seed_results.phi[:, _SHORT:65])
    with pytest.raises(ValueError, match="`num_samples` must be at least 1"):
        ls.continue_run(jr.key(1), short, 0)
    with pytest.raises(TypeError, match="SampleResults"):
        ls.continue_run(jr.key(1), short.phi, 10)


def test_resume_extends_a_finished_checkpoint(seed_results, short_checkpoint, tmp_path):
    short, finished = short_checkpoint
    path = tmp_path / "run.lsmp"
    shutil.copy(finished, path)
    assert _header(path)["complete"]
    # A finished checkpoint comes back as it is (only read: even while another
    # process, here the live pid 1 of this host, holds its lock) ...
    lock = tmp_path / "run.lsmp.lock"
    lock.write_text(json.dumps({"pid": 1, "host": socket.gethostname()}))
    _assert_same_draws(_seed_resume(path), short)
    # ... or, with more draws, goes on (once it can write the file): the seed run's
    # 100 draws bit for bit.
    with pytest.raises(FileExistsError, match="Another run is writing"):
        _seed_resume(path, num_samples=100)
    lock.unlink()
    _assert_same_draws(_seed_resume(path, num_samples=100), seed_results)
    assert not lock.exists()
    assert _header(path)["step"] == 250 and _header(path)["complete"]
    with pytest.raises(ValueError, match="fewer than the 100 draws per chain already"):
        ls.resume(path, _seed_marginal(), num_samples=99)


def _edit_checkpoint(src, dst, edit):
    """Copy the checkpoint `src` to `dst` with `edit(header, arrays)` applied."""
    header, arrays = _checkpoint.read(src)
    edit(header, arrays)
    raw = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, __header__=raw, **arrays)


# The leaves of the seed configuration's chain state: position, log density,
# gradient, latent mode, then the adaptation state.
_LOGDENSITY, _GRAD = "carry/1", "carry/2"


@pytest.mark.parametrize(
    "leaf, scale, refused",
    [
        (_LOGDENSITY, 1e-12, False),  # round-off: the same model
        (_GRAD, 1e-10, False),
        (_LOGDENSITY, 1e-5, True),  # anything beyond: another model
        (_GRAD, 1e-3, True),
    ],
)
def test_resume_recomputes_the_log_density(
    short_checkpoint, tmp_path, leaf, scale, refused
):
    # The fingerprint cannot see a changed global or helper function (the
    # subprocess tests in test_resume_check.py show both); the recomputation
    # compares the stored log density and gradient with the model's. Here the file
    # is edited instead of the model.
    _, finished = short_checkpoint
    path = tmp_path / "run.lsmp"

    def edit(header, arrays):
        assert arrays[_LOGDENSITY].shape == arrays[_GRAD].shape == (4,)
        arrays[leaf] = arrays[leaf] * (1 + scale)

    _edit_checkpoint(finished, path, edit)
    before = path.read_bytes()
    if not refused:
        ls.resume(path, _seed_marginal(), progress_bar=False)
        return
    what = "log density" if leaf == _LOGDENSITY else "different gradient"
    with pytest.raises(ls.CheckpointError, match=f"different model.*{what}"):
        ls.resume(path, _seed_marginal(), progress_bar=False)
    assert path.read_bytes() == before


def test_resume_reads_version_1_fingerprints(short_checkpoint, tmp_path):
    # Checkpoints written before `fingerprint_version` named functions and types
    # with their module: they are still compared that way.
    short, finished = short_checkpoint
    path = tmp_path / "run.lsmp"

    def edit(header, arrays):
        del header["fingerprint_version"]
        header["fingerprint"] = _checkpoint.model_fingerprint(
            _seed_marginal(), legacy=True
        )

    _edit_checkpoint(finished, path, edit)
    _assert_same_draws(_seed_resume(path), short)


def test_full_disk_keeps_the_previous_checkpoint(seed_results, tmp_path, monkeypatch):
    # The disk fills up at the third checkpoint: a clear error, the file holds the
    # second one, and `resume` finishes the run bit for bit.
    path = tmp_path / "run.lsmp"
    savez = _checkpoint.np.savez
    writes = []

    def filling(f, **arrays):
        writes.append(1)
        if len(writes) == 3:
            f.write(b"PK\x03\x04 part of an archive")
            raise OSError(28, "No space left on device")
        savez(f, **arrays)

    monkeypatch.setattr(_checkpoint.np, "savez", filling)
    with pytest.raises(OSError, match=r"disk is full.*still valid.*lapsample.resume"):
        _seed_sample(checkpoint=path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["run.lsmp"]  # no temporary file, no lock
    assert _header(path)["step"] == 2 * SEED_SETTINGS["chunk_size"]
    _assert_same_draws(_seed_resume(path), seed_results)


# --------------------------------------------------------------------------------
# Progress bar.
# --------------------------------------------------------------------------------

_PROGRESS_SCRIPT = """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import jax.random as jr
import lapsample as ls
model = ls.PlainDensity(lambda x: -0.5 * jnp.sum(x**2))
ls.sample(jr.key(0), model, jnp.zeros(2), num_warmup=40, num_samples=40,
          chunk_size=8)
print("DONE")
"""


def _run_in_pty(env) -> str:
    """Run the progress script with stdin, stdout and stderr on a pseudo-terminal;
    return everything it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROGRESS_SCRIPT],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal(cache_dir):
    out = _run_in_pty(_child_env(cache_dir))
    assert "warmup" in out and "sampling" in out
    assert "80/80" in out and "it/s" in out and "divergences=" in out
    assert out.rstrip().endswith("DONE")


def test_no_progress_bar_under_ci(cache_dir):
    out = _run_in_pty(_child_env(cache_dir, CI="1"))
    # Nothing but the script's own output.
    assert out.strip() == "DONE"


def test_progress_bar_off_without_terminal(capsys):
    # pytest captures stderr (not a terminal): no bar, and no stray output.
    for wanted in (True, False):
        meter = _progress.progress_meter(wanted, 10, 0, 5)
        assert isinstance(meter, _progress.NoProgressMeter)


# --------------------------------------------------------------------------------
# Chains: vectorised on one device, with data held by the model.
# --------------------------------------------------------------------------------


class _DataMean(eqx.Module):
    """A Gaussian log density around the mean of `y`, asserting at trace time that
    `y` was not split across chains (which vmapping the sampler itself would do
    when the number of chains equals the length of the data)."""

    y: jax.Array

    def __call__(self, phi):
        assert self.y.shape == (SEED_N,), "model data were batched by vmap"
        d = phi["loc"] - jnp.mean(self.y)
        return -0.5 * d**2 / 0.04 - 0.5 * jnp.sum(phi["offset"] ** 2)


def test_vectorized_chains_leave_data_unbatched():
    model = ls.PlainDensity(_DataMean(seed_data()))
    start = {"loc": jnp.array(0.0), "offset": jnp.zeros(2)}
    results = ls.sample(
        jr.key(3),
        model,
        start,
        num_chains=SEED_N,  # the trap case
        num_warmup=60,
        num_samples=20,
        chain_method="vectorized",
        chunk_size=20,
        progress_bar=False,
    )
    assert results.phi["loc"].shape == (SEED_N, 20)
    assert results.phi["offset"].shape == (SEED_N, 20, 2)
    assert results.inverse_mass_matrix.shape == (SEED_N, 3)
    assert results.theta is None and results.theta_star is None
    idata = results.to_arviz()
    assert set(idata.posterior.data_vars) == {"loc", "offset"}


# --------------------------------------------------------------------------------
# Warm-up: schedule, dual averaging, Welford, step-size search, dense mass.
# --------------------------------------------------------------------------------


def test_stan_window_schedule():
    # Stan's defaults for 1000 iterations: 75 fast, slow windows of 25, 50, 100,
    # 200 and 500 (the last stretched to fill), 50 fast.
    schedule = _schedule.WindowSchedule(1000)
    assert schedule.windows == [
        (75, 99),
        (100, 149),
        (150, 249),
        (250, 449),
        (450, 949),
    ]
    assert schedule.in_window.sum() == 1000 - 75 - 50
    # 150 iterations fit 75 + 25 + 50 exactly.
    assert _schedule.WindowSchedule(150).windows == [(75, 99)]
    # Fewer than 150: 15% / 75% / 10%.
    schedule = _schedule.WindowSchedule(100)
    assert (schedule.init_buffer, schedule.base_window, schedule.term_buffer) == (
        15,
        75,
        10,
    )
    assert schedule.windows == [(15, 89)]
    # Fewer than 20: the step size only.
    assert _schedule.WindowSchedule(19).windows == []
    assert not _schedule.WindowSchedule(19).in_window.any()
    flags = _schedule.schedule_flags(150, 10)
    assert flags["is_warmup"].sum() == 150 and flags["is_last_warmup"][149]
    assert not flags["window_end"][150:].any()


def test_dual_averaging_finds_the_target():
    # A synthetic acceptance curve a(ε) = exp(-ε): the target 0.8 is at
    # ε = log(1/0.8) ≈ 0.223. The averaged iterate converges there.
    state = _adaptation.dual_averaging_init(jnp.asarray(1.0))
    target = jnp.asarray(0.8)
    update = jax.jit(_adaptation.dual_averaging_update)
    for _ in range(2000):
        acceptance = jnp.exp(-jnp.exp(state.log_step_size))
        state = update(state, acceptance, target)
    assert np.isclose(
        float(jnp.exp(state.log_step_size_avg)), np.log(1 / 0.8), rtol=0.02
    )
    # A NaN statistic counts as a rejection (0), one above 1 as 1.
    fresh = _adaptation.dual_averaging_init(jnp.asarray(1.0))
    for bad, same in ((jnp.nan, 0.0), (1.7, 1.0)):
        after = _adaptation.dual_averaging_update(fresh, jnp.asarray(bad), target)
        expected = _adaptation.dual_averaging_update(fresh, jnp.asarray(same), target)
        assert float(after.log_step_size) == float(expected.log_step_size)


@pytest.mark.parametrize("dense", [False, True])
def test_welford_with_stan_regularisation(dense):
    x = np.random.default_rng(1).normal(size=(50, 3)) * np.array([1.0, 2.0, 0.5])
    state = _adaptation.welford_init(3, dense, jnp.float64)
    for row in x:
        state = _adaptation.welford_update(state, jnp.asarray(row))
    out = np.asarray(_adaptation.welford_inverse_mass_matrix(state))
    n = 50
    cov = np.cov(x, rowvar=False)
    expected = (n / (n + 5)) * cov + 1e-3 * (5 / (n + 5)) * np.eye(3)
    if not dense:
        expected = np.diagonal(expected)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)


class _ScaledGaussian(eqx.Module):
    sigma: jax.Array

    def __call__(self, x):
        return -0.5 * jnp.sum((x / self.sigma) ** 2)


@eqx.filter_jit
def _search(sampler, key):
    state = sampler.init(jnp.full(3, 0.5) * sampler.marginal.logdensity_fn.sigma)
    return _adaptation.find_reasonable_step_size(sampler, key, state, sampler.step_size)


def test_initial_step_size_scales_with_the_target():
    # One leapfrog step on N(0, σ² I) with unit mass: the acceptance crosses 0.8 at
    # ε of order σ, whatever the starting ε.
    for sigma in (1.0, 0.01):
        for start in (1.0, 1e-4):
            sampler = ls.Sampler(
                ls.PlainDensity(_ScaledGaussian(jnp.asarray(sigma))),
                ls.Multinomial(),
                ls.NoUTurn(),
                step_size=start,
                inverse_mass_matrix=1.0,
            )
            eps = float(_search(sampler, jr.key(0)))
            assert 0.1 * sigma < eps < 5.0 * sigma, (sigma, start, eps)


def test_short_warmup_and_no_warmup():
    # Below 20 warm-up iterations only the step size adapts (as in Stan); with none,
    # a `Sampler` runs exactly as given.
    sampler = ls.Sampler(
        ls.PlainDensity(_ScaledGaussian(jnp.asarray(0.5))),
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=0.3,
        inverse_mass_matrix=jnp.array([1.0, 2.0, 3.0]),
    )
    common = dict(num_chains=2, num_samples=5, progress_bar=False)
    short = ls.sample(jr.key(6), sampler, jnp.zeros(3), num_warmup=10, **common)
    assert np.array_equal(short.inverse_mass_matrix, [[1.0, 2.0, 3.0]] * 2)
    assert np.all(short.step_size != 0.3)
    none = ls.sample(jr.key(6), sampler, jnp.zeros(3), num_warmup=0, **common)
    assert np.all(none.step_size == 0.3)
    assert np.all(none.sample_stats["step_size"] == 0.3)
    assert np.array_equal(none.inverse_mass_matrix, [[1.0, 2.0, 3.0]] * 2)


def test_dense_mass_matrix_adapts_to_the_covariance():
    # A 2-D Gaussian with correlation 0.9 and sds 1 and √3; the sampler starts with
    # a dense identity, so the adaptation is dense. With 400 warm-up iterations the
    # last slow window holds 200 draws; NUTS on this target has an ESS of roughly
    # half that, so each variance is estimated to ~15% (sd √(2/100)) and the
    # correlation to ~0.02. Tolerances are about 3 of those.
    sampler = ls.Sampler(
        ls.PlainDensity(correlated_gaussian()),
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=1.0,
        inverse_mass_matrix=jnp.eye(2),
    )
    results = ls.sample(
        jr.key(4),
        sampler,
        jnp.zeros(2),
        num_chains=2,
        num_warmup=400,
        num_samples=50,
        progress_bar=False,
    )
    assert results.inverse_mass_matrix.shape == (2, 2, 2)
    for matrix in results.inverse_mass_matrix:
        sd = np.sqrt(np.diagonal(matrix))
        np.testing.assert_allclose(sd, np.sqrt(np.diagonal(CORRELATED_COV)), rtol=0.25)
        assert abs(matrix[0, 1] / (sd[0] * sd[1]) - 0.9) < 0.07
    # The same with `dense_mass=False` adapts only the diagonal.
    assert np.all(results.sample_stats["acceptance_rate"].mean() > 0.6)


# --------------------------------------------------------------------------------
# Starting points and validation.
# --------------------------------------------------------------------------------


class _LogNormalish(eqx.Module):
    """A density on x > 0 (`-inf` elsewhere): log x - (log x)² / 2 - log x."""

    def __call__(self, x):
        safe = jnp.where(x > 0, x, 1.0)
        value = -0.5 * jnp.log(safe) ** 2 - jnp.log(safe)
        return jnp.where(x > 0, value, -jnp.inf)


def test_jitter_redraws_starts_outside_the_support():
    # Starting at 0.1 with jitter 1, about half of the first draws fall below 0,
    # where the density is -inf: those chains are redrawn until they start inside.
    results = ls.sample(
        jr.key(5),
        ls.PlainDensity(_LogNormalish()),
        jnp.array(0.1),
        num_chains=6,
        num_warmup=30,
        num_samples=10,
        jitter=1.0,
        progress_bar=False,
    )
    assert np.all(results.phi > 0)
    # Without jitter a bad start is an error, before any sampling.
    with pytest.raises(ValueError, match=r"not finite at the starting point of chain"):
        ls.sample(
            jr.key(5),
            ls.PlainDensity(_LogNormalish()),
            jnp.array(-1.0),
            num_chains=6,
            num_warmup=30,
            num_samples=10,
            progress_bar=False,
        )


def test_per_chain_starting_points():
    positions = _settings.per_chain_positions(
        {"a": np.arange(3.0), "b": np.zeros((3, 2))}, 3, True
    )
    assert positions["a"].shape == (3,) and positions["b"].shape == (3, 2)
    positions = _settings.per_chain_positions({"a": np.arange(2.0)}, 3, False)
    assert positions["a"].shape == (3, 2)
    with pytest.raises(ValueError, match="leading axis of length num_chains=4"):
        _settings.per_chain_positions({"a": np.arange(3.0)}, 4, True)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_chains=0), ValueError, "num_chains"),
        (dict(num_samples=0), ValueError, "num_samples"),
        (dict(num_warmup=-1), ValueError, "num_warmup"),
        (dict(num_warmup=1.5), TypeError, "num_warmup"),
        (dict(target_accept=1.0), ValueError, "target_accept"),
        (dict(jitter=-1.0), ValueError, "jitter"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        # Type errors: caught by `sample` itself, or first by the jaxtyping
        # checks that the test suite turns on (both a TypeError naming the
        # argument).
        (dict(chain_method="parallel"), (TypeError, ValueError), "chain_method"),
        (dict(dense_mass="yes"), TypeError, "dense_mass"),
    ],
)
def test_invalid_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        ls.sample(jr.key(0), _seed_marginal(), jnp.array(0.5), **kwargs)


def test_invalid_model_and_inputs():
    with pytest.raises(TypeError, match="model"):
        ls.sample(jr.key(0), lambda x: x, jnp.array(0.5))
    with pytest.raises(TypeError, match="`model` must be a `lapsample.Sampler`"):
        _settings.as_sampler(lambda x: x)
    with pytest.raises(TypeError, match="key"):
        ls.sample(0, _seed_marginal(), jnp.array(0.5))
    with pytest.raises(ValueError, match="needs a marginal with a latent"):
        ls.sample(
            jr.key(0),
            ls.PlainDensity(lambda x: -(x**2)),
            jnp.array(0.5),
            sample_theta=True,
        )
    # `LaplaceMarginal.check` runs before compiling: a NaN start, a wrong shape.
    with pytest.raises(ValueError, match="not finite"):
        ls.sample(jr.key(0), _seed_marginal(), jnp.array(jnp.nan))
    with pytest.raises(ValueError, match="failed while tracing"):
        ls.sample(jr.key(0), _seed_marginal(), jnp.zeros(3))
    # A custom metric cannot be adapted.

    class Scaled(ls.AbstractMetric):
        def sample_momentum(self, key, like):
            return jr.normal(key, like.shape, like.dtype)

        def velocity(self, momentum):
            return momentum

        def check_size(self, size):
            pass

    sampler = ls.Sampler(
        _seed_marginal(),
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=0.1,
        inverse_mass_matrix=Scaled(),
    )
    with pytest.raises(ValueError, match="adapt_mass_matrix=False"):
        ls.sample(jr.key(0), sampler, jnp.array(0.5))
