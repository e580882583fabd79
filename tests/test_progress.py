"""The progress bar's speed and time left leave out the compilation (the first
chunk), tested without a terminal: a clock that the test moves."""

import io

import numpy as np
import pytest
from tqdm import tqdm

from lapsample._workflow import progress as _progress


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_throughput_starts_after_the_first_chunk():
    clock = _Clock()
    throughput = _progress.Throughput(total=1000, clock=clock)
    # The first chunk: 60 s of compilation and 1 s of sampling for 10 iterations.
    clock.now = 61.0
    throughput.record(10)
    assert throughput.rate is None and throughput.remaining is None
    # Then 10 iterations per second.
    for done in (20, 30, 110):
        clock.now = 61.0 + (done - 10) / 10
        throughput.record(done)
        assert throughput.rate == pytest.approx(10.0)
        assert throughput.remaining == pytest.approx((1000 - done) / 10)
    # Counting the compilation would have said 110 iterations in 71 s: 1.5 it/s
    # and more than 9 minutes left instead of 89 s.


def test_throughput_of_a_resumed_run_counts_from_its_own_first_chunk():
    clock = _Clock()
    throughput = _progress.Throughput(total=100, clock=clock)
    clock.now = 30.0
    throughput.record(60)  # resumed at 50: compiled again during 50..59
    clock.now = 32.0
    throughput.record(80)
    assert throughput.rate == pytest.approx(10.0)
    assert throughput.remaining == pytest.approx(2.0)


def test_tqdm_meter_shows_the_time_left_without_compilation(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(_progress.sys, "stderr", stream)
    clock = _Clock()
    meter = _progress.TqdmProgressMeter(
        tqdm, total=200, initial=0, num_warmup=100, clock=clock
    )
    step_size = np.array([0.25, 0.35])
    clock.now = 600.0  # a ten-minute compilation
    meter.update(0, 20, 0, 0, step_size)
    assert meter.bar.postfix.startswith("eta ?, ? it/s, divergences=0")
    clock.now = 602.0
    meter.update(20, 20, 3, 0, step_size)
    assert meter.bar.postfix == "eta 00:16, 10 it/s, divergences=3, step_size=0.3"
    clock.now = 610.0
    meter.update(100, 20, 3, 1, step_size)  # sampling: the draws' divergences
    assert meter.bar.postfix.startswith("eta 00:08, 10 it/s, divergences=1")
    meter.close()
    text = stream.getvalue()
    # tqdm's own rate and time left (which count the compilation) are not shown.
    assert "eta 00:08, 10 it/s" in text and "s/it" not in text
