"""The driver's phase clock: where a run's wall time goes."""

from __future__ import annotations

import pytest

from netadapt import clock as clock_module
from netadapt.clock import PhaseClock
from netadapt.records import RunTimes, timed


@pytest.fixture
def now(monkeypatch):
    """A hand-driven perf_counter: ``now[0] += s`` lets s seconds pass."""
    t = [100.0]
    monkeypatch.setattr(clock_module.time, "perf_counter", lambda: t[0])
    return t


def test_time_outside_any_phase_is_other(now):
    clock = PhaseClock()
    now[0] += 3
    assert clock.lap() == {"train": 0, "evaluate": 0, "other": 3, "wall": 3}


def test_a_nested_phase_pauses_the_enclosing_one(now):
    clock = PhaseClock()
    with clock.phase("train"):
        now[0] += 5
        with clock.phase("other"):  # a checkpoint saved during training
            now[0] += 1
        now[0] += 2
    now[0] += 0.5
    assert clock.lap() == {"train": 7, "evaluate": 0, "other": 1.5, "wall": 8.5}


def test_credit_moves_work_done_elsewhere_out_of_the_waiting_phase(now):
    clock = PhaseClock()
    now[0] += 10  # waiting for a worker whose job trained 6 s and scored 3 s
    clock.credit("train", 6)
    clock.credit("evaluate", 3)
    assert clock.lap() == {"train": 6, "evaluate": 3, "other": 1, "wall": 10}


def test_a_lap_restarts_the_count(now):
    clock = PhaseClock()
    now[0] += 2
    clock.lap()
    now[0] += 1
    assert clock.lap()["wall"] == 1


def test_an_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase"):
        with PhaseClock().phase("training"):
            pass


def test_run_times_sum_the_laps_of_every_record(now):
    clock = PhaseClock()
    records = []
    for _ in range(3):
        with clock.phase("train"):
            now[0] += 9
        now[0] += 1
        records.append(timed({"type": "proposal"}, clock.lap()))
    records.append({"type": "seed"})  # written by an earlier version: no times
    times = RunTimes.of(records)
    assert (times.wall_s, times.train_s, times.eval_s) == (30, 27, 0)
    assert times.summary().startswith("loop overhead 10.0% of 30 s")


def test_a_run_without_times_says_so():
    assert "not recorded" in RunTimes.of([{"type": "seed"}]).summary()
