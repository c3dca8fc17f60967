"""Progress checkpoints of long training phases (seed training, long-term fine-tune,
deployed-size training, baselines), so that a kill loses minutes, not the phase.

A checkpoint holds the model, the optimizer (momentum buffers), the gradient scaler and
the number of steps done. Nothing else is needed for a bit-identical resume: a step's
batch comes from (seed, step) (data.batch_indices), its dropout RNG is re-seeded from
(seed, step) (train._step_seed), its LR is a function of the step (train.lr_at) and BN
momentum is set afresh by every call; the BN running statistics are in the model.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .clock import PhaseClock
from .files import write_bytes_atomic

SECONDS_ENV = "NETADAPT_CHECKPOINT_SECONDS"
# Saving MobileNetV3-Large with its SGD momentum writes ~44 MB (well under a second),
# so once a minute costs < 1% of the phase and a kill loses at most a minute of it.
DEFAULT_SECONDS = 60.0


def checkpoint_seconds() -> float:
    """Seconds between checkpoints: ``$NETADAPT_CHECKPOINT_SECONDS`` (0: every step)."""
    text = os.environ.get(SECONDS_ENV, "")
    try:
        return max(0.0, float(text)) if text else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS


@dataclass
class Checkpoint:
    """One phase's progress file. The trainer adds its settings (steps, seed, LR, ...) to
    ``key``; a file saved under another key is ignored, never resumed from."""

    path: Path
    key: dict[str, Any] = field(default_factory=dict)
    every_s: float = field(default_factory=checkpoint_seconds)
    clock: PhaseClock | None = None  # saving counts as overhead, not as training
    _last: float = field(default_factory=time.monotonic, repr=False)

    def load(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The saved state, or None when there is none (or it is foreign or unreadable:
        starting over is always correct, only slower)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - any unreadable file means "start over"
            return None
        if not isinstance(state, dict) or state.get("key") != {**self.key, **settings}:
            return None
        return state

    def due(self, step: int, steps: int) -> bool:
        """Whether to save after ``step`` of ``steps`` steps: when the interval has passed,
        and always after the last one (the phase's caller removes the file once the
        phase's result is recorded, so a kill in between does not redo the phase)."""
        return step >= steps or time.monotonic() - self._last >= self.every_s

    def save(self, state: dict[str, Any], settings: dict[str, Any]) -> None:
        """Write ``state`` (with the key) atomically: a kill leaves the old file or this."""
        with self.clock.phase("other") if self.clock else contextlib.nullcontext():
            buffer = io.BytesIO()
            torch.save({**state, "key": {**self.key, **settings}}, buffer)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.path, buffer.getvalue())
        self._last = time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class MemoryCheckpoint(Checkpoint):
    """A phase's progress kept in memory, as bytes (what a file checkpoint would hold):
    how a raced proposal's fine-tune stops after one rung and continues in the next,
    possibly in another process, exactly as if it had never stopped."""

    path: Path = Path()  # unused: nothing is written
    data: bytes | None = field(default=None, repr=False)
    keep: bool = True  # False: only continue from ``data``; progress is not kept again

    def load(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The progress held, or None when there is none. Progress saved under other
        settings is an error here, not a fresh start: the model it would continue holds
        no weights of its own yet."""
        if self.data is None:
            return None
        state = torch.load(io.BytesIO(self.data), map_location="cpu", weights_only=True)
        if state.get("key") != {**self.key, **settings}:
            raise ValueError(f"progress saved with {state.get('key')}, continued with "
                             f"{ {**self.key, **settings} }")
        return state

    def due(self, step: int, steps: int) -> bool:
        return step >= steps  # the trainer saves where it stops, wherever that is

    def save(self, state: dict[str, Any], settings: dict[str, Any]) -> None:
        if not self.keep:  # serializing model and optimizer costs; nobody reads it here
            return
        buffer = io.BytesIO()
        torch.save({**state, "key": {**self.key, **settings}}, buffer)
        self.data = buffer.getvalue()

    def remove(self) -> None:
        self.data = None
