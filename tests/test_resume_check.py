"""`resume` against a changed model, end to end in child processes, and the checks
of a checkpoint path before anything compiles: a path that cannot be written, a
second run writing the same file (the lock), a full disk.

The model of the end-to-end cases is a script, as a user writes it: the log joint
reads its data from a module-level global loaded from a file, and calls a helper
function. The fingerprint of a model sees neither (it hashes the log joint's own
bytecode); the recomputation of the log density at the checkpoint does.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import lapsample as ls
from lapsample._workflow import (
    checkpoint as _checkpoint,
    checkpoint_lock as _lock,
    settings as _settings,
)


REPO = Path(__file__).resolve().parents[1]

_MODEL_SCRIPT = """
import os
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import lapsample as ls

HERE = os.path.dirname(os.path.abspath(__file__))
Y = jnp.asarray(np.load(os.path.join(HERE, "y.npy")))


def prior_scale(log_tau):
    return jnp.exp(log_tau)


def log_joint(theta, log_tau):
    tau = prior_scale(log_tau)
    return (
        -0.5 * log_tau**2
        - 0.5 * jnp.sum((theta / tau) ** 2)
        - theta.size * jnp.log(tau)
        - 0.5 * jnp.sum((Y - theta) ** 2)
    )


marginal = ls.LaplaceMarginal(log_joint, jnp.zeros(Y.shape[0]))
SETTINGS = dict(
    num_warmup=20, num_samples=20, num_chains=2, chunk_size=10, progress_bar=False
)


def save(results, path):
    np.savez(path, phi=results.phi, theta_star=results.theta_star,
             lp=results.sample_stats["lp"], step_size=results.step_size)


if __name__ == "__main__":
    out = sys.argv[1]
    save(ls.sample(jr.key(7), marginal, jnp.array(0.0), **SETTINGS),
         os.path.join(out, "reference.npz"))
    # The same run with a checkpoint, stopped (as by Ctrl-C) after its third
    # checkpoint: 10 of its 20 draws are in the file.
    from lapsample._workflow import checkpoint as _checkpoint
    write, writes = _checkpoint.write, []
    def write_then_stop(*args, **kwargs):
        write(*args, **kwargs)
        writes.append(1)
        if len(writes) == 3:
            raise KeyboardInterrupt
    _checkpoint.write = write_then_stop
    try:
        ls.sample(jr.key(7), marginal, jnp.array(0.0),
                  checkpoint=os.path.join(out, "run.lsmp"), **SETTINGS)
    except KeyboardInterrupt:
        print("STOPPED")
"""

# A child that tries `resume` with a changed model: (a) the data file edited,
# Y -> Y + 1, the script unchanged; (b) the script's helper function edited. It
# records the error, whether the fingerprint noticed, and whether the file changed.
_REFUSED = """
import json, os, shutil, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import lapsample as ls
from lapsample._workflow import checkpoint as _checkpoint
out = sys.argv[1]
outcome = {}
def attempt(case, marginal):
    path = os.path.join(out, case + ".lsmp")
    shutil.copy(os.path.join(out, "run.lsmp"), path)
    before = open(path, "rb").read()
    header, _ = _checkpoint.read(path)
    same_fingerprint = _checkpoint.model_fingerprint(marginal) == header["fingerprint"]
    start = time.monotonic()
    try:
        ls.resume(path, marginal, progress_bar=False)
        error = None
    except Exception as e:
        error = [type(e).__name__, str(e)]
    outcome[case] = dict(error=error, same_fingerprint=same_fingerprint,
                         seconds=time.monotonic() - start,
                         unchanged=open(path, "rb").read() == before,
                         lock_left=os.path.exists(path + ".lock"))
sys.path.insert(0, os.path.join(out, "edited_data"))
import model_script
attempt("data", model_script.marginal)
sys.path.insert(0, os.path.join(out, "edited_code"))
import model_script_edited
attempt("code", model_script_edited.marginal)
json.dump(outcome, open(os.path.join(out, "refused.json"), "w"))
"""

# A child that analyses the run in "a notebook": the model imported from the script.
_ACCEPTED = """
import os, shutil, sys
import jax
jax.config.update("jax_enable_x64", True)
import lapsample as ls
out = sys.argv[1]
sys.path.insert(0, out)
from model_script import marginal, save
path = os.path.join(out, "accepted.lsmp")
shutil.copy(os.path.join(out, "run.lsmp"), path)
save(ls.resume(path, marginal, progress_bar=False), os.path.join(out, "resumed.npz"))
"""


def _env(cache_dir):
    env = dict(os.environ)
    env.pop("CI", None)
    env.pop("XLA_FLAGS", None)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    return env


def _run(args, env, cwd, timeout=900):
    proc = subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, subprocess_cache_dir):
    """The script's run (a reference run and a stopped run with a checkpoint), then
    the two children that resume it, in parallel."""
    out = tmp_path_factory.mktemp("script_run")
    (out / "model_script.py").write_text(_MODEL_SCRIPT)
    y = np.linspace(-1.0, 2.0, 6)
    np.save(out / "y.npy", y)
    # (a) the data edited, the script as it was.
    (out / "edited_data").mkdir()
    shutil.copy(out / "model_script.py", out / "edited_data" / "model_script.py")
    np.save(out / "edited_data" / "y.npy", y + 1.0)
    # (b) the code edited: the helper's body (the log joint's own code is the same).
    (out / "edited_code").mkdir()
    edited = _MODEL_SCRIPT.replace(
        "return jnp.exp(log_tau)", "return jnp.exp(log_tau) + 0.1"
    )
    assert edited != _MODEL_SCRIPT
    (out / "edited_code" / "model_script_edited.py").write_text(edited)
    np.save(out / "edited_code" / "y.npy", y)

    env = _env(subprocess_cache_dir)
    stdout = _run([str(out / "model_script.py"), str(out)], env, out)
    assert "STOPPED" in stdout
    children = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(out)],
            env=env,
            cwd=str(out),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in (_REFUSED, _ACCEPTED)
    ]
    for child in children:
        _, err = child.communicate(timeout=900)
        assert child.returncode == 0, err[-3000:]
    return out


# Child processes that compile a run and its resume: 25-100 s, so in the slow suite.
@pytest.mark.slow
def test_stopped_run_left_a_checkpoint(run_dir):
    header, _ = _checkpoint.read(run_dir / "run.lsmp")
    assert header["step"] == 30 and not header["complete"]
    assert not os.path.exists(str(run_dir / "run.lsmp") + ".lock")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["data", "code"])
def test_changed_model_is_refused(run_dir, case):
    outcome = json.loads((run_dir / "refused.json").read_text())[case]
    # The fingerprint alone would have let both through (as before this check).
    assert outcome["same_fingerprint"]
    kind, message = outcome["error"]
    assert kind == "CheckpointError"
    assert "written for a different model" in message
    assert "code or data differ" in message and "log density" in message
    assert outcome["unchanged"] and not outcome["lock_left"]


@pytest.mark.slow
def test_same_model_imported_from_the_script_resumes_bit_for_bit(run_dir):
    with (
        np.load(run_dir / "reference.npz") as ref,
        np.load(run_dir / "resumed.npz") as resumed,
    ):
        for name in ("phi", "theta_star", "lp", "step_size"):
            assert np.array_equal(ref[name], resumed[name]), name
    header, _ = _checkpoint.read(run_dir / "accepted.lsmp")
    assert header["complete"]


# --------------------------------------------------------------------------------
# The checkpoint path, checked before anything compiles.
# --------------------------------------------------------------------------------


class _Counted:
    """A log density that counts how often it is traced or called."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return -0.5 * jnp.sum(x**2)


def _sample(model, checkpoint, **kwargs):
    return ls.sample(
        jr.key(0),
        ls.PlainDensity(model),
        jnp.zeros(2),
        num_warmup=10,
        num_samples=10,
        progress_bar=False,
        checkpoint=checkpoint,
        **kwargs,
    )


def _read_only(tmp_path, monkeypatch):
    # As a read-only file system answers any attempt to create a file there.
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(_lock.tempfile, "mkstemp", refuse)
    return tmp_path / "run.lsmp"


@pytest.mark.parametrize(
    "make_path, error, match",
    [
        (lambda tmp, mp: "", ValueError, "empty path.*run.lsmp"),
        (lambda tmp, mp: tmp, IsADirectoryError, "is a directory.*run.lsmp"),
        (
            lambda tmp, mp: tmp / "missing" / "run.lsmp",
            FileNotFoundError,
            r"does not exist: create it first \(`os.makedirs",
        ),
        (_read_only, OSError, "Read-only file system. Choose a `checkpoint` path"),
    ],
    ids=["empty", "directory", "missing_directory", "read_only"],
)
def test_bad_checkpoint_path_is_refused_before_compiling(
    tmp_path, monkeypatch, make_path, error, match
):
    model = _Counted()
    path = make_path(tmp_path, monkeypatch)
    with pytest.raises(error, match=match):
        _sample(model, path)
    assert model.calls == 0  # never traced: nothing compiled
    assert not any(p.name.endswith(".lock") for p in tmp_path.iterdir())


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere"
)
def test_read_only_directory(tmp_path):
    model = _Counted()
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OSError, match="Permission denied. Choose a `checkpoint`"):
            _sample(model, tmp_path / "run.lsmp")
    finally:
        tmp_path.chmod(0o700)
    assert model.calls == 0


def test_resume_checks_the_path_before_compiling(tmp_path, monkeypatch):
    # A checkpoint that can be read but not continued in place (its directory has
    # become read-only): refused before the model is evaluated.
    model = _Counted()
    density = ls.PlainDensity(model)
    settings = _settings.RunSettings.from_arguments(
        _settings.as_sampler(density),
        jnp.zeros(2),
        num_warmup=10,
        num_samples=10,
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
        model_is_marginal=True,
    )
    header = dict(
        settings=settings.to_header(),
        step=5,
        fingerprint=_checkpoint.model_fingerprint(density),
        structure=_checkpoint.encode_structure(jnp.zeros(2)),
        key_impl="threefry2x32",
        counters={"warmup_divergences": [0]},
    )
    path = tmp_path / "run.lsmp"
    _checkpoint.write(path, header, {"key_data": np.zeros((1, 2), np.uint32)})
    before = path.read_bytes()
    _read_only(tmp_path, monkeypatch)
    with pytest.raises(OSError, match="Read-only file system"):
        ls.resume(path, density, progress_bar=False)
    assert model.calls == 0
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------
# One writer per checkpoint.
# --------------------------------------------------------------------------------

_HOLDER = """
import sys
from lapsample._workflow import checkpoint_lock
with checkpoint_lock.locked(sys.argv[1]):
    print("LOCKED", flush=True)
    sys.stdin.read()
"""


def test_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    path = tmp_path / "run.lsmp"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        env=_env(None),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        model = _Counted()
        for overwrite in (False, True):
            with pytest.raises(FileExistsError, match=f"process {holder.pid} on"):
                _sample(model, path, overwrite=overwrite)
        assert model.calls == 0
        with pytest.raises(FileExistsError, match="Another run is writing"):
            with _lock.locked(str(path)):
                pass
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    # Killed, its lock stays behind; the next run takes it over and says so.
    lock = Path(str(path) + ".lock")
    assert json.loads(lock.read_text())["pid"] == holder.pid
    with pytest.warns(UserWarning, match=f"process {holder.pid}, which no longer runs"):
        with _lock.locked(str(path)):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_is_released_on_interrupt(tmp_path):
    # (And on an error: see test_full_disk_keeps_the_previous_checkpoint in
    # test_workflow.py, which also checks that a finished run leaves no lock.)
    path = str(tmp_path / "run.lsmp")
    with pytest.raises(KeyboardInterrupt):
        with _lock.locked(path):
            assert os.listdir(tmp_path) == ["run.lsmp.lock"]
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    path = str(tmp_path / "run.lsmp")
    with open(path + ".lock", "w") as f:
        json.dump({"pid": 1, "host": "elsewhere"}, f)
    with pytest.raises(FileExistsError, match=r"process 1 on elsewhere.*delete"):
        with _lock.locked(path):
            pass
    assert os.path.exists(path + ".lock")


# --------------------------------------------------------------------------------
# A full disk.
# --------------------------------------------------------------------------------


def test_full_disk_says_the_previous_checkpoint_is_valid(tmp_path, monkeypatch):
    path = tmp_path / "run.lsmp"

    def full(f, **arrays):
        f.write(b"PK\x03\x04 part")
        raise OSError(errno.ENOSPC, "No space left on device")

    savez = _checkpoint.np.savez
    monkeypatch.setattr(_checkpoint.np, "savez", full)
    # The first write: nothing to keep.
    with pytest.raises(OSError, match="disk is full. No checkpoint was written") as e:
        _checkpoint.write(path, {"step": 1}, {"x": np.arange(3)})
    assert e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(_checkpoint.np, "savez", savez)
    _checkpoint.write(path, {"step": 1}, {"x": np.arange(3)})
    before = path.read_bytes()
    monkeypatch.setattr(_checkpoint.np, "savez", full)
    with pytest.raises(
        OSError, match=r"still valid and unchanged.*lapsample.resume\('.*run.lsmp'"
    ):
        _checkpoint.write(path, {"step": 2}, {"x": np.arange(4)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["run.lsmp"]
