"""Where a run's wall time goes: training, evaluation, and everything else (the loop's
overhead: proposal generation, latency prediction, weight slicing, journaling, atomic
writes, promotion, checkpoints, worker start-up and IPC).

The driver owns one PhaseClock. Its phases nest (a checkpoint saved inside a training
phase is overhead, not training); work done elsewhere (a proposal job on a worker) is
credited to its phase when its result arrives. ``lap`` hands the seconds since the
previous lap to the journal record being written, so a run's totals are sums over its
records, across resumes (records.RunTimes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("train", "evaluate", "other")


class PhaseClock:
    """Wall time of this process split by phase; "other" when no phase is open."""

    def __init__(self) -> None:
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._open = ["other"]
        self._since = time.perf_counter()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time inside the block as ``name`` (an enclosing phase pauses)."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; one of {PHASES}")
        self._tick()
        self._open.append(name)
        try:
            yield
        finally:
            self._tick()
            self._open.pop()

    def credit(self, name: str, seconds: float) -> None:
        """``seconds`` of ``name`` done elsewhere while this process waited for it (a
        job's training on a worker): moved from the current phase to ``name``. With N
        jobs running at once, a job's seconds / N is its share of the wall time."""
        self._tick()
        self._seconds[self._open[-1]] -= seconds
        self._seconds[name] += seconds

    def lap(self) -> dict[str, float]:
        """Seconds per phase (and ``wall``) since the previous lap; restarts them."""
        self._tick()
        out = {name: round(s, 4) for name, s in self._seconds.items()}
        out["wall"] = round(sum(self._seconds.values()), 4)
        self._seconds = dict.fromkeys(PHASES, 0.0)
        return out

    def _tick(self) -> None:
        now = time.perf_counter()
        self._seconds[self._open[-1]] += now - self._since
        self._since = now
