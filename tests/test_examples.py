"""Every file in `examples/` runs, in its fast mode, so that the examples (and the
documentation pages that include them) cannot rot.

An example that defines a `--quick` flag is run with it; one that defines
`--figure` writes its figure to a temporary folder rather than over the figure the
documentation includes. Each runs in its own process, as a user would run it.
"""

import os
import pathlib
import subprocess
import sys

import pytest


EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 600


# The examples of the README and the extension guide run in the fast suite; the
# larger ones (each compiles a model of its own in a fresh process, 25-60 s on 2
# cores) run in the slow suite, so that CI still runs every example.
FAST = {
    "quickstart.py",
    "seed_walkthrough.py",
    "custom_hessian_strategy.py",
    "custom_proposal.py",
}


def _example_files() -> list[pathlib.Path]:
    return sorted(EXAMPLES.glob("*.py"))


def _example_params():
    return [
        pytest.param(
            path,
            id=path.name,
            marks=() if path.name in FAST else pytest.mark.slow,
        )
        for path in _example_files()
    ]


def test_examples_exist():
    names = {p.name for p in _example_files()}
    expected = {"quickstart.py", "custom_hessian_strategy.py", "custom_proposal.py"}
    assert expected <= names


@pytest.mark.parametrize("path", _example_params())
def test_example_runs(path: pathlib.Path, tmp_path: pathlib.Path, subprocess_cache_dir):
    source = path.read_text()
    command = [sys.executable, str(path)]
    if '"--quick"' in source:
        command.append("--quick")
    figure = tmp_path / f"{path.stem}.png"
    if '"--figure"' in source:
        command += ["--figure", str(figure)]
    env = dict(os.environ, MPLBACKEND="Agg")
    if subprocess_cache_dir is not None:
        # Compiled programs are kept between test sessions (see conftest.py).
        env["JAX_COMPILATION_CACHE_DIR"] = str(subprocess_cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    proc = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"`{' '.join(command)}` exited with {proc.returncode}.\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n"
        f"--- stderr ---\n{proc.stderr[-4000:]}"
    )
    assert proc.stdout.strip(), f"{path.name} printed nothing"
    if '"--figure"' in source:
        assert figure.stat().st_size > 0
