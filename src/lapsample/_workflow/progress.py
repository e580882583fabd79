"""Progress meters for the host loop (as Diffrax's `_progress_meter.py`): one that
does nothing and one that draws a tqdm bar, chosen once when a run starts."""

import abc
import os
import sys
import time
from collections.abc import Callable

import jax
import numpy as np


class AbstractProgressMeter(abc.ABC):
    """Told, after each chunk of iterations, how far the run has got."""

    @abc.abstractmethod
    def update(
        self,
        step: int,
        n: int,
        warmup_divergences: int,
        divergences: int,
        step_size: np.ndarray,
    ) -> None:
        """Iterations `step .. step + n - 1` are done; divergences so far (of the
        warm-up and of the draws) and the chains' current step sizes."""

    @abc.abstractmethod
    def close(self) -> None:
        """The run has ended (or failed)."""


class NoProgressMeter(AbstractProgressMeter):
    """Reports nothing."""

    def update(self, step, n, warmup_divergences, divergences, step_size):
        pass

    def close(self):
        pass


class Throughput:
    """Iterations per second and the time left, counted from the end of the first
    chunk: that chunk includes the compilation, which can take far longer than the
    sampling (a rate that counted it would predict minutes for a run that needs
    seconds). `record(done)` after every chunk, with the iterations done so far."""

    def __init__(
        self, total: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.total = total
        self.clock = clock
        self.origin: tuple[float, int] | None = None
        self.done = 0
        self.rate: float | None = None

    def record(self, done: int) -> None:
        now = self.clock()
        self.done = done
        if self.origin is None:
            self.origin = (now, done)
            return
        start, done_then = self.origin
        if now > start and done > done_then:
            self.rate = (done - done_then) / (now - start)

    @property
    def remaining(self) -> float | None:
        """Seconds left at the current rate; `None` before the second chunk."""
        if self.rate is None:
            return None
        return (self.total - self.done) / self.rate


class TqdmProgressMeter(AbstractProgressMeter):
    """A tqdm bar on standard error: the phase (warm-up or sampling), the time
    left and the speed (both without the compilation, see `Throughput`),
    divergences and the mean step size."""

    def __init__(
        self,
        tqdm,
        total: int,
        initial: int,
        num_warmup: int,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.num_warmup = num_warmup
        self.format_interval = tqdm.format_interval
        self.throughput = Throughput(total, clock)
        try:
            width, height = os.get_terminal_size(sys.stderr.fileno())
        except (AttributeError, OSError, ValueError):
            width = height = 0
        sized = width > 0 and height > 1
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=self._phase(initial),
            unit="it",
            file=sys.stderr,
            # A terminal that reports no size (e.g. a bare pseudo-terminal) would
            # otherwise get no bar at all from tqdm.
            dynamic_ncols=sized,
            ncols=None if sized else 100,
            nrows=None if sized else 20,
            # tqdm's own time left and rate would count the compilation.
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self.bar.set_postfix_str("eta ?", refresh=False)

    def _phase(self, step: int) -> str:
        return "warmup" if step < self.num_warmup else "sampling"

    def update(self, step, n, warmup_divergences, divergences, step_size):
        self.bar.set_description(self._phase(step + n), refresh=False)
        self.throughput.record(step + n)
        self.bar.set_postfix_str(
            self.postfix(
                divergences if step + n > self.num_warmup else warmup_divergences,
                step_size,
            ),
            refresh=False,
        )
        self.bar.update(n)

    def postfix(self, divergences: int, step_size: np.ndarray) -> str:
        left = self.throughput.remaining
        rate = self.throughput.rate
        return ", ".join(
            [
                "eta " + ("?" if left is None else self.format_interval(left)),
                "? it/s" if rate is None else f"{rate:.3g} it/s",
                f"divergences={int(divergences)}",
                f"step_size={float(np.mean(step_size)):.3g}",
            ]
        )

    def close(self):
        self.bar.close()


def _on_a_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_meter(
    progress_bar: bool, total: int, initial: int, num_warmup: int
) -> AbstractProgressMeter:
    """A tqdm bar when one is wanted and can be shown: asked for, not under CI, on
    process 0, standard error a terminal, tqdm installed (it comes with the
    `arviz` extra); else a meter that does nothing."""
    wanted = (
        progress_bar
        and not os.environ.get("CI")
        and jax.process_index() == 0
        and _on_a_terminal()
    )
    if not wanted:
        return NoProgressMeter()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the arviz extra
        return NoProgressMeter()
    return TqdmProgressMeter(tqdm, total, initial, num_warmup)
