"""Stan's warm-up schedule: the windows and the per-iteration flags."""

import equinox as eqx
import numpy as np
from jaxtyping import Array, Bool


# Stan's default window sizes.
INIT_BUFFER = 75
TERM_BUFFER = 50
BASE_WINDOW = 25
# Below this many warm-up iterations Stan adapts the step size only.
MIN_WARMUP_FOR_MASS = 20


# --------------------------------------------------------------------------------
# The windowed schedule (host side: plain NumPy, computed once per run).
# --------------------------------------------------------------------------------


class WindowSchedule(eqx.Module):
    """Stan's windowed adaptation schedule for `num_warmup` iterations.

    Warm-up is split into an initial fast window (`init_buffer` iterations: step
    size only), a sequence of slow windows that double in length (step size, and the
    mass matrix estimated from the draws of each window), and a final fast window
    (`term_buffer` iterations: step size only, with the final mass matrix). When
    `init_buffer + base_window + term_buffer > num_warmup`, the three are scaled to
    15% / 75% / 10% of `num_warmup`, as Stan does; below 20 iterations only the step
    size is adapted.

    - `in_window[i]`: iteration `i` (0-based) adds its draw to the current slow
      window's estimate.
    - `window_end[i]`: iteration `i` closes a slow window (the mass matrix is
      updated and the step size re-initialised).
    """

    in_window: np.ndarray
    window_end: np.ndarray
    init_buffer: int = eqx.field(static=True)
    term_buffer: int = eqx.field(static=True)
    base_window: int = eqx.field(static=True)

    def __init__(
        self,
        num_warmup: int,
        init_buffer: int = INIT_BUFFER,
        term_buffer: int = TERM_BUFFER,
        base_window: int = BASE_WINDOW,
    ):
        in_window = np.zeros(num_warmup, bool)
        window_end = np.zeros(num_warmup, bool)
        if num_warmup < MIN_WARMUP_FOR_MASS:
            init_buffer, term_buffer, base_window = num_warmup, 0, 0
        else:
            if init_buffer + base_window + term_buffer > num_warmup:
                init_buffer = int(0.15 * num_warmup)
                term_buffer = int(0.1 * num_warmup)
                base_window = num_warmup - (init_buffer + term_buffer)
            # Stan's `windowed_adaptation`, iteration by iteration.
            last = num_warmup - term_buffer - 1
            window_size = base_window
            next_end = init_buffer + window_size - 1
            for i in range(num_warmup):
                in_window[i] = init_buffer <= i < num_warmup - term_buffer
                if i == next_end:
                    window_end[i] = True
                    if next_end != last:
                        window_size *= 2
                        next_end = i + window_size
                        if next_end != last and next_end + 2 * window_size > last:
                            next_end = last
        self.in_window = in_window
        self.window_end = window_end
        self.init_buffer = init_buffer
        self.term_buffer = term_buffer
        self.base_window = base_window

    @property
    def windows(self) -> list[tuple[int, int]]:
        """The slow windows as `(first, last)` iteration pairs (inclusive)."""
        out = []
        start = self.init_buffer
        for end in np.flatnonzero(self.window_end):
            out.append((start, int(end)))
            start = int(end) + 1
        return out


class StepFlags(eqx.Module):
    """Where a transition sits in the schedule (the same for every chain).

    - `is_warmup`: the transition is a warm-up transition (adapt after it).
    - `in_window`: its draw joins the current slow window's estimate.
    - `window_end`: it closes a slow window.
    - `is_last_warmup`: it is the last warm-up transition (fix the step size to
      the dual-averaging average after it).
    """

    is_warmup: Bool[Array | np.ndarray, "*steps"]
    in_window: Bool[Array | np.ndarray, "*steps"]
    window_end: Bool[Array | np.ndarray, "*steps"]
    is_last_warmup: Bool[Array | np.ndarray, "*steps"]


def schedule_flags(num_warmup: int, num_samples: int) -> dict[str, np.ndarray]:
    """The per-iteration flags of a whole run (warm-up then sampling), as NumPy
    arrays of length `num_warmup + num_samples`, keyed like the fields of
    `StepFlags`."""
    total = num_warmup + num_samples
    schedule = WindowSchedule(num_warmup)
    pad = np.zeros(num_samples, bool)
    is_warmup = np.arange(total) < num_warmup
    is_last = np.arange(total) == num_warmup - 1
    return dict(
        is_warmup=is_warmup,
        in_window=np.concatenate([schedule.in_window, pad]),
        window_end=np.concatenate([schedule.window_end, pad]),
        is_last_warmup=is_last,
    )
