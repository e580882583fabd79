"""Progress meters for the host loop."""

import os
import sys

import jax
import numpy as np


# --------------------------------------------------------------------------------
# Progress bar.
# --------------------------------------------------------------------------------


def progress_wanted(progress_bar: bool) -> bool:
    if not progress_bar or os.environ.get("CI"):
        return False
    if jax.process_index() != 0:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(self, enabled: bool, total: int, initial: int, num_warmup: int):
        self.bar = None
        self.num_warmup = num_warmup
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm comes with the arviz extra
            return
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
        if self.bar is None:
            return
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
        if self.bar is not None:
            self.bar.close()
