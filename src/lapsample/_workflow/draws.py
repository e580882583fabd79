"""The draws of a run on the host: filled chunk by chunk, thinned, counted.

With `thinning=k` a run keeps `num_samples // k` of its `num_samples` transitions
after warm-up: the last of every group of `k`, counted back from the last
transition (so the last draw is always kept, and is `final_state`); the first group
also takes the `num_samples % k` transitions left over. Every transition belongs to
one group, and a kept draw's `diverging` flag and `inner_failed` count cover its
whole group, so thinning never hides a divergence or a failed inner solve; the
other statistics are those of the kept transition.
"""

import jax.tree_util as jtu
import numpy as np


def empty_like_records(leaves, length: int):
    """Host arrays `(chains, length, ...)` like the `(chains, chunk, ...)` leaves of
    the records: NaN for floating point, zeros (False) otherwise."""

    def empty(s):
        shape = (s.shape[0], length, *s.shape[2:])
        if np.issubdtype(s.dtype, np.inexact):
            return np.full(shape, np.nan, s.dtype)
        return np.zeros(shape, s.dtype)

    return [empty(s) for s in leaves]


def leaf_index(leaves, target) -> int:
    for i, leaf in enumerate(leaves):
        if leaf is target:
            return i
    raise AssertionError("record leaf not found")  # pragma: no cover


def num_kept(num_samples: int, thinning: int) -> int:
    """How many of `num_samples` transitions a thinned run keeps."""
    return num_samples // thinning


def draw_slots(
    iterations: np.ndarray, num_samples: int, thinning: int
) -> tuple[np.ndarray, np.ndarray]:
    """`(slot, kept)` for sampling iterations (0-based, after warm-up): the kept
    draw whose group each one belongs to, and whether it is that draw."""
    rest = num_samples % thinning
    shifted = np.asarray(iterations) - rest
    slot = np.maximum(0, shifted // thinning)
    kept = (shifted >= 0) & (shifted % thinning == thinning - 1)
    return slot, kept


def slots_touched(done: int, num_samples: int, thinning: int) -> int:
    """How many kept draws the first `done` sampling iterations have reached (the
    last one possibly still open: its group has not ended)."""
    if done <= 0:
        return 0
    slot, _ = draw_slots(np.asarray([done - 1]), num_samples, thinning)
    return int(slot[0]) + 1


class HostDraws:
    """The draws and warm-up draws of a run as host arrays, and its divergence
    counts (over every transition)."""

    def __init__(
        self,
        records,
        num_warmup: int,
        num_samples: int,
        thinning: int,
        save_warmup: bool,
    ):
        """`records`: the records of one chunk on the host (or their shapes)."""
        leaves, self.record_def = jtu.tree_flatten(records)
        div_index = leaf_index(leaves, records.info.is_divergent)
        fail_index = leaf_index(leaves, records.info.inner_failures)
        self.num_warmup = num_warmup
        self.num_samples = num_samples
        self.thinning = thinning
        self.div_index = div_index
        self.draws = empty_like_records(leaves, num_kept(num_samples, thinning))
        self.warmup = empty_like_records(leaves, num_warmup) if save_warmup else None
        # Combined over a kept draw's group: any divergence, every failure.
        self.combine = {div_index: np.logical_or, fail_index: np.add}
        self.warmup_divergences = np.zeros(leaves[0].shape[0], np.int64)
        self.divergences = np.zeros(leaves[0].shape[0], np.int64)

    def add(self, step: int, n: int, host) -> None:
        """Record iterations `step .. step + n - 1` (warm-up first, then draws)
        from the flattened host records `host` of one chunk."""
        n_warm = max(0, min(self.num_warmup - step, n))
        divergent = host[self.div_index]
        if n_warm > 0:
            self.warmup_divergences += divergent[:, :n_warm].sum(axis=1)
            if self.warmup is not None:
                for dst, src in zip(self.warmup, host):
                    dst[:, step : step + n_warm] = src[:, :n_warm]
        if n <= n_warm:
            return
        self.divergences += divergent[:, n_warm:n].sum(axis=1)
        lo = step + n_warm - self.num_warmup
        slot, kept = draw_slots(
            np.arange(lo, lo + n - n_warm), self.num_samples, self.thinning
        )
        for i, (dst, src) in enumerate(zip(self.draws, host)):
            part = src[:, n_warm:n]
            if i in self.combine:
                self.combine[i].at(dst, (slice(None), slot), part)
            else:
                dst[:, slot[kept]] = part[:, kept]

    def touched(self, step: int) -> int:
        """Kept draws reached after `step` iterations (what a checkpoint saves)."""
        return slots_touched(step - self.num_warmup, self.num_samples, self.thinning)

    def restore(self, draws, warmup, counters) -> None:
        """Fill in what a checkpoint saved: the first draws (and warm-up draws) and
        the divergence counts."""
        for dst, src in zip(self.draws, draws):
            dst[:, : src.shape[1]] = src
        if self.warmup is not None:
            for dst, src in zip(self.warmup, warmup):
                dst[:, : src.shape[1]] = src
        self.warmup_divergences[:] = counters["warmup_divergences"]
        # Checkpoints written before thinning existed: every transition was kept.
        self.divergences[:] = counters.get(
            "divergences", self.draws[self.div_index].sum(axis=1)
        )

    def records(self, warmup: bool = False):
        """The draws (or the warm-up draws) as records."""
        leaves = self.warmup if warmup else self.draws
        return jtu.tree_unflatten(self.record_def, leaves)

    def counters(self) -> dict[str, list[int]]:
        return dict(
            warmup_divergences=self.warmup_divergences.tolist(),
            divergences=self.divergences.tolist(),
        )
