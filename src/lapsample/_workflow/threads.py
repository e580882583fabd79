"""The BLAS thread pool during a run.

On the CPU, jaxlib runs Cholesky factorisations, triangular solves and the other
LAPACK calls through the OpenBLAS that comes with SciPy (it takes the function
pointers from `scipy.linalg.cython_lapack`). That library has its own thread pool,
one thread per core by default, which `XLA_FLAGS` does not reach: chains run in
parallel on several host devices each start that many BLAS threads, and on a busy
machine the threads of one call wait on each other. A run therefore limits the pool
(with threadpoolctl) while it samples, and restores it afterwards.
"""

import contextlib
import os
from collections.abc import Iterator

import jax

# Loads SciPy's OpenBLAS now, the library that jaxlib's LAPACK calls use; jaxlib
# itself loads it only when it first lowers a linear-algebra operation, and
# threadpoolctl can limit only a library that is already loaded. (SciPy is a
# dependency of JAX.)
import scipy.linalg.cython_lapack  # noqa: F401
import threadpoolctl
from jax.sharding import Mesh

from .._validate import check_int


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform
    reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def parallel_cpu_chains(mesh: Mesh | None) -> int:
    """How many chain groups of this process run at the same time on CPU devices:
    the host devices of the mesh that belong to this process (0 when the chains
    run on accelerators, 1 without a mesh on the CPU)."""
    if mesh is None:
        return 1 if jax.default_backend() == "cpu" else 0
    return sum(
        1
        for d in mesh.devices.flat
        if d.platform == "cpu" and d.process_index == jax.process_index()
    )


def check_blas_threads(blas_threads) -> int | None:
    """`None` (automatic) or a positive integer, else a clear error."""
    if blas_threads is None:
        return None
    return check_int("blas_threads", blas_threads, 1)


def blas_thread_limits(
    blas_threads: int | None, parallel: int, cores: int, current: list[int]
) -> list[int] | None:
    """The number of threads for each loaded BLAS library (now at `current`), or
    `None` to leave them alone.

    Asked for (`blas_threads`), every library gets that many. Automatic (`None`):
    when `parallel > 1` chain groups run at once on `cores` CPU cores, each library
    is lowered (never raised) to `max(1, cores // parallel)` threads, so that BLAS
    threads times parallel chains do not exceed the cores; else nothing changes.
    """
    if blas_threads is not None:
        return [blas_threads] * len(current)
    if parallel <= 1:
        return None
    cap = max(1, cores // parallel)
    if all(n <= cap for n in current):
        return None
    return [min(n, cap) for n in current]


@contextlib.contextmanager
def limited_blas_threads(blas_threads: int | None, mesh: Mesh | None) -> Iterator:
    """Within the block, the BLAS libraries of the process run with the threads
    that `blas_thread_limits` gives; restored on leaving it, also on an error."""
    controllers = [
        c
        for c in threadpoolctl.ThreadpoolController().lib_controllers
        if c.user_api == "blas"
    ]
    current = [c.num_threads for c in controllers]
    limits = blas_thread_limits(
        blas_threads, parallel_cpu_chains(mesh), available_cores(), current
    )
    if limits is None:
        yield
        return
    try:
        for controller, n in zip(controllers, limits):
            controller.set_num_threads(n)
        yield
    finally:
        for controller, n in zip(controllers, current):
            controller.set_num_threads(n)
