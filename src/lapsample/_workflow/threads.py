"""The BLAS thread pool during a run.

On the CPU, jaxlib runs Cholesky factorisations, triangular solves and the other
LAPACK calls through the OpenBLAS that comes with SciPy (it takes the function
pointers from `scipy.linalg.cython_lapack`). That library has its own thread pool,
one thread per core by default, which `XLA_FLAGS` does not reach: chains run in
parallel on several host devices each start that many BLAS threads, and on a busy
machine the threads of one call wait on each other. A run on the CPU therefore
limits the pool (with threadpoolctl) while it samples, and restores it afterwards.
"""

import contextlib
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


def chains_on_cpu(mesh: Mesh | None) -> bool:
    """Whether the chains of this process run on CPU devices."""
    if mesh is None:
        return jax.default_backend() == "cpu"
    return any(
        d.platform == "cpu" and d.process_index == jax.process_index()
        for d in mesh.devices.flat
    )


def check_blas_threads(blas_threads) -> int | None:
    """`None` (automatic) or a positive integer, else a clear error."""
    if blas_threads is None:
        return None
    return check_int("blas_threads", blas_threads, 1)


def blas_thread_limits(
    blas_threads: int | None, on_cpu: bool, current: list[int]
) -> list[int] | None:
    """The number of threads for each loaded BLAS library (now at `current`), or
    `None` to leave them alone.

    Asked for (`blas_threads`), every library gets that many. Automatic (`None`):
    one thread when the chains run on the CPU, else nothing changes. One thread
    keeps BLAS threads times parallel chains within the cores whatever the number
    of host devices, keeps the round-off of a factorisation (and so the draws) the
    same on one device or several, and avoids the collapse of a multi-threaded pool
    on a busy machine (docs/performance.md: 7-140x slower per evaluation at
    d = 300 on a loaded 2-core machine). Large dense factorisations on an idle
    machine with many cores may gain from more: ask for them.
    """
    if blas_threads is not None:
        return [blas_threads] * len(current)
    if not on_cpu or all(n <= 1 for n in current):
        return None
    return [1] * len(current)


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
    limits = blas_thread_limits(blas_threads, chains_on_cpu(mesh), current)
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
