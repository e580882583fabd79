"""`lapsample.sample` and `lapsample.resume` in a multi-process JAX program.

Two processes on this machine (CPU, two forced host devices each, gloo collectives,
the coordinator on a free loopback port) form one global mesh of four devices and
run the same four chains as one process on one device: the draws must agree bit for
bit. Each process also continues, with `resume`, a checkpoint that process 0 wrote
mid-run, and only process 0 ever writes the checkpoint file.

That a run split over several devices of *one* process gives the draws of a
one-device run is checked in `tests/test_workflow.py`
(`test_four_devices_and_other_chunks_give_the_same_draws`).
"""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest


REPO = Path(__file__).resolve().parents[1]

# 50 iterations in chunks of 10: five checkpoints; the second is kept for `resume`.
SETTINGS = dict(
    num_warmup=30,
    num_samples=20,
    num_chains=4,
    sample_theta=True,
    chain_method="sequential",
    chunk_size=10,
    progress_bar=False,
)
NUM_CHUNKS = 5
KEY = 20260702
START = 0.5

_FIELDS = ("phi", "theta", "theta_star", "step_size", "inverse_mass_matrix")
_STATS = ("lp", "acceptance_rate", "diverging", "energy", "n_steps", "step_size")

# Argument vector: process id, number of processes, port, output directory.
_CHILD = """
import os, shutil, sys
import jax
jax.config.update("jax_enable_x64", True)
process_id, num_processes, port, out = (
    int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
if num_processes > 1:
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=60,
        )
    except Exception as e:
        print(f"RUNTIME UNAVAILABLE: {type(e).__name__}: {e}", flush=True)
        sys.exit(3)
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import lapsample as ls
from lapsample._workflow import checkpoint as _checkpoint
from tests.helpers import SeedModel, seed_data

assert jax.process_count() == num_processes
assert len(jax.devices()) == 2 * num_processes if num_processes > 1 else 1

path = os.path.join(out, "run.lsmp")
mid = os.path.join(out, "mid.lsmp")
writes = []
write = _checkpoint.write
def counted_write(target, header, arrays):
    write(target, header, arrays)
    writes.append(int(header["step"]))
    if len(writes) == 2:
        shutil.copy(target, mid)
_checkpoint.write = counted_write

marginal = ls.LaplaceMarginal(SeedModel(seed_data(5)), jnp.zeros(5))
settings = SETTINGS
checkpoint = path if num_processes > 1 else None
full = ls.sample(jr.key(KEY), marginal, jnp.array(START), checkpoint=checkpoint,
                 **settings)
arrays = {}
def keep(prefix, r):
    for name in FIELDS:
        arrays[prefix + name] = np.asarray(getattr(r, name))
    for name in STATS:
        arrays[prefix + "stats." + name] = r.sample_stats[name]
keep("full.", full)
if num_processes > 1:
    # Every process continues the mid-run checkpoint written by process 0 (the
    # file is shared: the processes run on one machine).
    keep("resumed.", ls.resume(mid, marginal, progress_bar=False))
    # And the final checkpoint, which `resume` returns as it is.
    keep("final.", ls.resume(path, marginal, progress_bar=False))
np.savez(os.path.join(out, f"draws{process_id}.npz"), writes=np.asarray(writes, int),
         **arrays)
print("DONE", flush=True)
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(process_id, num_processes, port, out, num_devices):
    env = dict(os.environ)
    env.pop("CI", None)
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    script = (
        f"SETTINGS = {SETTINGS!r}\nKEY = {KEY}\nSTART = {START}\n"
        f"FIELDS = {_FIELDS!r}\nSTATS = {_STATS!r}\n" + textwrap.dedent(_CHILD)
    )
    args = [str(process_id), str(num_processes), str(port), str(out)]
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=str(REPO),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two processes of one distributed run (2 × 2 host devices) and a one-process
    reference on one device, started together."""
    shared = tmp_path_factory.mktemp("distributed")
    reference = tmp_path_factory.mktemp("reference")
    port = _free_port()
    procs = [_start(i, 2, port, shared, 2) for i in range(2)]
    procs.append(_start(0, 1, port, reference, 1))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    for proc, (out, err) in zip(procs[:2], outputs[:2]):
        if proc.returncode == 3 and b"RUNTIME UNAVAILABLE" in out:
            pytest.skip(
                "JAX's distributed runtime could not start on this machine (gloo "
                "CPU collectives on 127.0.0.1): " + out.decode().strip()[-500:]
            )
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, (out + err).decode()[-4000:]
    load = lambda d, i: dict(np.load(d / f"draws{i}.npz"))  # noqa: E731
    return load(shared, 0), load(shared, 1), load(reference, 0)


def _assert_same(got, expected, prefix):
    for name in _FIELDS + tuple("stats." + s for s in _STATS):
        assert np.array_equal(
            got[prefix + name], expected["full." + name], equal_nan=True
        ), prefix + name


def test_two_processes_give_the_draws_of_one(runs):
    # Same key, same chains: four chains over 2 processes × 2 devices give the draws
    # of four chains on one device, bit for bit, and every process gets all of them.
    first, second, reference = runs
    assert first["full.phi"].shape == (4, 20)
    _assert_same(first, reference, "full.")
    _assert_same(second, reference, "full.")


def test_two_processes_checkpoint_once_and_resume(runs):
    first, second, reference = runs
    # Process 0 wrote every chunk's checkpoint (the run's five, then the three of
    # the resumed run, from step 20 on; a finished checkpoint is not rewritten);
    # process 1 wrote none.
    steps = [10 * (i + 1) for i in range(NUM_CHUNKS)]
    assert first["writes"].tolist() == steps + steps[2:]
    assert second["writes"].size == 0
    # `resume` of a mid-run checkpoint, on both processes, continues to the same
    # draws; the finished checkpoint gives them back as they are.
    for results in (first, second):
        _assert_same(results, reference, "resumed.")
        _assert_same(results, reference, "final.")
