import os
import shutil
import tempfile

import jax
import jax.random as jr
import pytest


# Tests run in float64; the library itself never sets this flag.
jax.config.update("jax_enable_x64", True)


# Set LAPSAMPLE_TEST_NO_CACHE=1 to compile everything afresh.
NO_CACHE_ENV = "LAPSAMPLE_TEST_NO_CACHE"


def pytest_configure(config):
    """Turn on JAX's persistent compilation cache for the test session.

    The suite's time is mostly tracing and XLA compilation; the cache keeps the
    compiled executables between sessions, in pytest's cache folder
    (`.pytest_cache/d/jax_compilation_cache`), or in a temporary folder removed at
    the end when pytest's cache is disabled (`-p no:cacheprovider`). Results are
    the same: a cached executable is the one XLA compiled for the same program.
    """
    if not _cache_wanted():
        return
    cache = getattr(config, "cache", None)
    if cache is not None:
        path = cache.mkdir("jax_compilation_cache")
    else:
        path = tempfile.mkdtemp(prefix="lapsample-jax-cache-")
        config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every executable, however small or quick to compile: the suite's many
    # small programs add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _cache_wanted() -> bool:
    return os.environ.get(NO_CACHE_ENV, "") in ("", "0")


@pytest.fixture(scope="session")
def subprocess_cache_dir(request):
    """A persistent compilation cache folder for the tests' subprocesses (their
    `JAX_COMPILATION_CACHE_DIR`), kept between sessions in pytest's cache folder;
    `None` when caching is off or pytest's cache is disabled.

    It is not this process's folder: JAX writes an entry in place, without a lock,
    so a process must not read the folder another is writing the same entry to.
    """
    cache = getattr(request.config, "cache", None)
    if not _cache_wanted() or cache is None:
        return None
    return cache.mkdir("jax_compilation_cache_subprocesses")


@pytest.fixture
def getkey():
    """Returns a function that gives a new, deterministic key on each call."""
    key = jr.key(20261127)

    def _getkey():
        nonlocal key
        key, sub = jr.split(key)
        return sub

    return _getkey
