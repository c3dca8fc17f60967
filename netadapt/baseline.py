"""The simple answers NetAdapt must beat, at the same budgets.

- width multiplier: every width x m (the paper's rule, head kept), the largest m that
  meets every budget;
- uniform pruning: every channel group cut by the same fraction, the smallest fraction
  that meets every budget;
- input resolution: the largest input size (multiple of 16) that meets every budget,
  where the latency table covers it.

Each gives a plain spec; the caller inherits the seed's largest-L2 filters and
fine-tunes it as long as the search's winner, so the comparison is fair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .errors import NetadaptError
from .search import Budget, resources_of, unmet
from .spec import WIDTH_STEP, NetworkSpec

Predict = Callable[[NetworkSpec], float]


@dataclass(frozen=True)
class BaselineSpec:
    """A baseline network and the knob value that produced it."""

    name: str  # width_multiplier | uniform_pruning | resolution
    knob: str  # e.g. "x0.62", "-41%", "160x160"
    spec: NetworkSpec
    resources: dict[str, float]


def _first_meeting(name: str, candidates: Iterator[tuple[str, NetworkSpec]],
                   budgets: Sequence[Budget], predict_ms: Predict) -> BaselineSpec | None:
    """The first (knob, spec) candidate that meets every budget, largest first."""
    for knob, spec in candidates:
        try:
            resources = resources_of(spec, predict_ms)
        except NetadaptError:  # a width or input size the latency table does not cover
            continue
        if not unmet(resources, budgets):
            return BaselineSpec(name, knob, spec, resources)
    return None


def width_multiplier(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict
                     ) -> BaselineSpec | None:
    """The largest multiplier (steps of 0.01) whose scaled network meets every budget.

    Widths are capped at the seed's, so weights can be inherited from it."""
    def candidates() -> Iterator[tuple[str, NetworkSpec]]:
        for hundredths in range(100, 4, -1):
            scaled = seed.scaled(hundredths / 100)
            widths = {g.name: g.width for g in scaled.groups}
            yield f"x{hundredths / 100:.2f}", dataclasses.replace(seed.with_fields({
                path: min(widths[g.name], g.width) for g in seed.groups for path in g.fields}),
                name=f"{seed.name}_x{hundredths / 100:.2f}")
    return _first_meeting("width_multiplier", candidates(), budgets, predict_ms)


def uniform_pruning(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict
                    ) -> BaselineSpec | None:
    """Every channel group cut by the same fraction (rounded to 8, at least 8): the
    smallest fraction (steps of 1%) that meets every budget."""
    def candidates() -> Iterator[tuple[str, NetworkSpec]]:
        for percent in range(0, 100):
            keep = 1 - percent / 100
            yield f"-{percent}%", dataclasses.replace(seed.with_fields({
                path: max(WIDTH_STEP, round(g.width * keep / WIDTH_STEP) * WIDTH_STEP)
                for g in seed.groups for path in g.fields}), name=f"{seed.name}_uniform{percent}")
    return _first_meeting("uniform_pruning", candidates(), budgets, predict_ms)


def resolution(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict
               ) -> BaselineSpec | None:
    """The largest square input size (multiple of 16, >= 32) meeting every budget."""
    side = min(seed.input_size)
    candidates = ((f"{size}x{size}", dataclasses.replace(
        seed, input_size=(size, size), name=f"{seed.name}_{size}px"))
        for size in range(side - side % 16, 31, -16))
    return _first_meeting("resolution", candidates, budgets, predict_ms)


BASELINES = {"width_multiplier": width_multiplier, "uniform_pruning": uniform_pruning,
             "resolution": resolution}

