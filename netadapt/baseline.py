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
from collections.abc import Callable, Sequence
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


def _meets(spec: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict
           ) -> dict[str, float] | None:
    try:
        resources = resources_of(spec, predict_ms)
    except NetadaptError:  # a width or size the latency table does not cover
        return None
    return None if unmet(resources, budgets) else resources


def width_multiplier(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict
                     ) -> BaselineSpec | None:
    """The largest multiplier (steps of 0.01) whose scaled network meets every budget.

    Widths are capped at the seed's, so weights can be inherited from it."""
    for hundredths in range(100, 4, -1):
        mult = hundredths / 100
        scaled = seed.scaled(mult)
        capped = scaled.with_fields({
            path: min(_width(scaled, path), g.width) for g in seed.groups for path in g.fields})
        resources = _meets(capped, budgets, predict_ms)
        if resources is not None:
            return BaselineSpec("width_multiplier", f"x{mult:.2f}",
                                dataclasses.replace(capped, name=f"{seed.name}_x{mult:.2f}"),
                                resources)
    return None


def uniform_pruning(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict
                    ) -> BaselineSpec | None:
    """Every channel group cut by the same fraction (rounded to 8, at least 8): the
    smallest fraction (steps of 1%) that meets every budget."""
    for percent in range(0, 100):
        keep = 1 - percent / 100
        values = {path: max(WIDTH_STEP, int(round(g.width * keep / WIDTH_STEP)) * WIDTH_STEP)
                  for g in seed.groups for path in g.fields}
        spec = seed.with_fields(values)
        resources = _meets(spec, budgets, predict_ms)
        if resources is not None:
            return BaselineSpec("uniform_pruning", f"-{percent}%",
                                dataclasses.replace(spec, name=f"{seed.name}_uniform{percent}"),
                                resources)
    return None


def resolution(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict
               ) -> BaselineSpec | None:
    """The largest square input size (multiple of 16, >= 32) meeting every budget."""
    side = min(seed.input_size)
    for size in range(side - side % 16, 31, -16):
        spec = dataclasses.replace(seed, input_size=(size, size),
                                   name=f"{seed.name}_{size}px")
        resources = _meets(spec, budgets, predict_ms)
        if resources is not None:
            return BaselineSpec("resolution", f"{size}x{size}", spec, resources)
    return None


BASELINES = {"width_multiplier": width_multiplier, "uniform_pruning": uniform_pruning,
             "resolution": resolution}


def _width(spec: NetworkSpec, path: str) -> int:
    """The value of a width field (``blocks[3].exp``) of ``spec``."""
    for g in spec.groups:
        if path in g.fields:
            return g.width
    raise NetadaptError(f"{path}: not a width field of {spec.name}")
