"""The BLAS thread pool during a run (`sample(..., blas_threads=...)`): the limits
chosen, applied while the chains run, restored afterwards, the draws unchanged."""

import json
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import threadpoolctl

import lapsample as ls
from lapsample._workflow import loop as _loop, threads as _threads

from .helpers import seed_data, SEED_N, SeedModel


def _blas_threads() -> dict[str, int]:
    return {
        info["filepath"]: info["num_threads"]
        for info in threadpoolctl.threadpool_info()
        if info["user_api"] == "blas"
    }


@pytest.fixture(autouse=True)
def _needs_blas():
    if not _blas_threads():
        pytest.skip("threadpoolctl sees no BLAS library in this process")


def _run_script(script: str, **env) -> str:
    env = {"JAX_PLATFORMS": "cpu", "PYTHONPATH": ":".join(sys.path), **env}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


def test_the_blas_of_jaxlib_is_loaded_by_lapsample():
    """jaxlib's CPU LAPACK calls go through `scipy.linalg.cython_lapack`, whose
    BLAS jaxlib loads only when it first lowers a linear-algebra operation (after
    a run has set its limit). Importing lapsample loads it, and jaxlib's Cholesky
    and triangular solves then load no BLAS that the limit would miss."""
    out = _run_script(
        """
        import json, threadpoolctl
        def blas():
            return sorted(i["filepath"] for i in threadpoolctl.threadpool_info()
                          if i["user_api"] == "blas")
        import jax, jax.numpy as jnp, jax.scipy.linalg as jsl
        bare = blas()
        import lapsample
        imported = blas()
        a = jnp.eye(3) * 2.0
        jsl.solve_triangular(jnp.linalg.cholesky(a), a, lower=True).block_until_ready()
        print(json.dumps([bare, imported, blas()]))
        """
    )
    bare, imported, used = json.loads(out)
    assert set(imported) > set(bare), "lapsample loaded no BLAS library"
    assert used == imported


@pytest.mark.parametrize(
    "asked, on_cpu, current, expected",
    [
        # Asked for: exactly that, raised or lowered, on any device.
        (1, True, [2, 2], [1, 1]),
        (3, True, [2], [3]),
        (2, False, [8], [2]),
        # Automatic: one thread on the CPU, nothing changed elsewhere or when
        # already there.
        (None, True, [2, 2], [1, 1]),
        (None, True, [16, 1], [1, 1]),
        (None, True, [1], None),
        (None, False, [16], None),
    ],
)
def test_blas_thread_limits(asked, on_cpu, current, expected):
    assert _threads.blas_thread_limits(asked, on_cpu, current) == expected


def test_limit_is_restored_after_an_error():
    before = _blas_threads()
    with pytest.raises(RuntimeError):
        with _threads.limited_blas_threads(1, None):
            assert set(_blas_threads().values()) == {1}
            raise RuntimeError
    assert _blas_threads() == before


RUN = dict(num_warmup=0, num_samples=12, num_chains=2, chunk_size=5, progress_bar=False)


def _sample(monkeypatch, **kwargs):
    """The run of `test_thinning.py` (one compiled chunk for both modules),
    recording the BLAS threads whenever a chunk starts."""
    seen = []
    advance = _loop.advance_chains

    def spy(*args, **kw):
        seen.append(_blas_threads())
        return advance(*args, **kw)

    marginal = ls.LaplaceMarginal(SeedModel(seed_data()), jnp.zeros(SEED_N))
    sampler = ls.Sampler(
        marginal,
        ls.Multinomial(),
        ls.NoUTurn(),
        step_size=jnp.asarray(1.5),
        inverse_mass_matrix=1.0,
    )
    with monkeypatch.context() as mp:
        mp.setattr(_loop, "advance_chains", spy)
        results = ls.sample(jr.key(1), sampler, jnp.array(0.5), **RUN, **kwargs)
    return results, seen


def test_blas_threads_applied_during_the_run_and_restored(monkeypatch):
    before = _blas_threads()
    if max(before.values()) <= 1:
        pytest.skip("the BLAS pools have one thread already (OPENBLAS_NUM_THREADS?)")
    runs = {}
    for asked, expected in ((None, 1), (2, 2)):
        runs[asked], seen = _sample(monkeypatch, blas_threads=asked)
        assert len(seen) == 3  # 12 iterations in chunks of 5
        for during in seen:
            assert set(during) == set(before)
            assert set(during.values()) == {expected}, asked
        assert _blas_threads() == before
    # The same draws, bit for bit (the model's 20 x 20 factorisations are too
    # small for OpenBLAS to split between threads, so their round-off is the same).
    np.testing.assert_array_equal(runs[None].phi, runs[2].phi)
    for name, value in runs[2].sample_stats.items():
        np.testing.assert_array_equal(runs[None].sample_stats[name], value, name)


@pytest.mark.parametrize(
    "value, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError)]
)
def test_invalid_blas_threads(value, error, monkeypatch):
    with pytest.raises(error, match="blas_threads"):
        _sample(monkeypatch, blas_threads=value)
    marginal = ls.LaplaceMarginal(SeedModel(seed_data()), jnp.zeros(SEED_N))
    with pytest.raises(error, match="blas_threads"):
        # Before the file is looked for.
        ls.resume("no-such-file.lsmp", marginal, blas_threads=value)


def test_parallel_host_devices_limit_automatically():
    """Chains on four host devices: one BLAS thread while inside the limit (no
    compilation needed to check it), restored after."""
    script = """
        import json
        import jax, threadpoolctl
        from lapsample._workflow import devices, threads
        def blas():
            return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas"]
        mesh = devices.choose_mesh(4)
        assert mesh.devices.size == 4 and threads.chains_on_cpu(mesh)
        before = blas()
        with threads.limited_blas_threads(None, mesh):
            during = blas()
        print(json.dumps([before, during, blas()]))
        """
    out = _run_script(script, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    before, during, after = json.loads(out)
    assert during == [1] * len(before)
    assert after == before
