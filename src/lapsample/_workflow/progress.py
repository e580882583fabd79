"""Progress meters for the host loop (as Diffrax's `_progress_meter.py`): one that
does nothing and one that draws a tqdm bar, chosen once when a run starts."""

import abc
import os
import sys

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


class TqdmProgressMeter(AbstractProgressMeter):
    """A tqdm bar on standard error: the phase (warm-up or sampling), divergences
    and the mean step size."""

    def __init__(self, tqdm, total: int, initial: int, num_warmup: int):
        self.num_warmup = num_warmup
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
        )

    def _phase(self, step: int) -> str:
        return "warmup" if step < self.num_warmup else "sampling"

    def update(self, step, n, warmup_divergences, divergences, step_size):
        self.bar.set_description(self._phase(step + n), refresh=False)
        self.bar.set_postfix(
            divergences=int(
                divergences if step + n > self.num_warmup else warmup_divergences
            ),
            step_size=f"{float(np.mean(step_size)):.3g}",
            refresh=False,
        )
        self.bar.update(n)

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
