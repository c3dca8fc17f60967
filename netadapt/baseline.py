"""The simple answers NetAdapt must beat, at the same budgets.

- width multiplier: every width x m (the paper's rule, head kept), the largest m that
  meets every budget;
- uniform pruning: every channel group cut by the same fraction, the smallest fraction
  that meets every budget;
- input resolution: the largest input size (multiple of 16) that meets every budget,
  where the latency table covers it;
- Torch-Pruning (optional, ``pip install torch-pruning``): its magnitude pruner with
  global L2 group importance and ``round_to=8``, stepped until it meets every budget.

Each gives a plain spec; the caller inherits the seed's largest-L2 filters and
fine-tunes it as long as the search's winner, so the comparison is fair.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    # weights chosen by the method itself (Torch-Pruning); None: inherit the seed's
    # largest-L2 filters
    state: dict[str, Any] | None = field(default=None, repr=False, compare=False)


class BaselineUnavailable(NetadaptError):
    """A baseline whose optional dependency is not installed."""


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


def width_multiplier(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict,
                     state: dict[str, Any] | None = None) -> BaselineSpec | None:
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


def uniform_pruning(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict,
                    state: dict[str, Any] | None = None) -> BaselineSpec | None:
    """Every channel group cut by the same fraction (rounded to 8, at least 8): the
    smallest fraction (steps of 1%) that meets every budget."""
    def candidates() -> Iterator[tuple[str, NetworkSpec]]:
        for percent in range(0, 100):
            keep = 1 - percent / 100
            yield f"-{percent}%", dataclasses.replace(seed.with_fields({
                path: max(WIDTH_STEP, round(g.width * keep / WIDTH_STEP) * WIDTH_STEP)
                for g in seed.groups for path in g.fields}), name=f"{seed.name}_uniform{percent}")
    return _first_meeting("uniform_pruning", candidates(), budgets, predict_ms)


def resolution(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict,
               state: dict[str, Any] | None = None) -> BaselineSpec | None:
    """The largest square input size (multiple of 16, >= 32) meeting every budget."""
    side = min(seed.input_size)
    candidates = ((f"{size}x{size}", dataclasses.replace(
        seed, input_size=(size, size), name=f"{seed.name}_{size}px"))
        for size in range(side - side % 16, 31, -16))
    return _first_meeting("resolution", candidates, budgets, predict_ms)


def torch_pruning(seed: NetworkSpec, budgets: Sequence[Budget], predict_ms: Predict,
                  state: dict[str, Any] | None = None, steps: int = 100
                  ) -> BaselineSpec | None:
    """Torch-Pruning's MagnitudePruner (GroupMagnitudeImportance p=2, global ranking,
    ``round_to=8``, the classifier's output kept) on the seed's weights, one step (of
    ``steps`` up to 95% of the channels) at a time until the network meets every budget.
    Its pruned weights are kept when they fit the spec; on MobileNetV3 they do not (it
    also prunes the SE squeeze layers, whose width the spec derives), so there the widths
    are Torch-Pruning's and the filters the seed's largest-L2 ones, as for every other
    network compared."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise BaselineUnavailable("torch-pruning is not installed (pip install "
                                  "'netadapt[pruning]' or torch-pruning)") from None
    import torch

    from .model import build_model

    model = build_model(seed)
    if state is not None:
        model.load_state_dict(state)
    # Each group is read off the pruned model through a tensor whose first dimension is
    # that group's width (found by shrinking the group alone in the seed).
    reference = build_model(seed).state_dict()
    probes = {}
    for group in seed.groups:
        if group.width <= WIDTH_STEP:
            continue
        shrunk = build_model(seed.with_group_width(group.name, group.width - WIDTH_STEP))
        shapes = shrunk.state_dict()
        probes[group.name] = next(k for k, t in reference.items()
                                  if shapes[k].shape[:1] != t.shape[:1])
    output = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    example = torch.zeros(1, seed.in_channels, 32, 32)
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.95, iterative_steps=steps, round_to=WIDTH_STEP, global_pruning=True,
        ignored_layers=output)
    for step in range(1, steps + 1):
        pruner.step()
        pruned = model.state_dict()
        widths = {path: max(WIDTH_STEP, int(pruned[key].shape[0]))
                  for name, key in probes.items() for path in seed.group(name).fields}
        try:
            spec = dataclasses.replace(seed.with_fields(widths),
                                       name=f"{seed.name}_torch_pruning{step}")
        except NetadaptError:  # widths the spec cannot express: prune further
            continue
        found = _first_meeting("torch_pruning", iter([(f"{step}% step", spec)]), budgets,
                               predict_ms)
        if found is not None:
            shapes_fit = all(pruned.get(k) is not None and pruned[k].shape == t.shape
                             for k, t in build_model(spec).state_dict().items())
            return dataclasses.replace(found, knob=f"{step * 95 // steps}% of channels "
                                       f"(global L2, {step} steps)",
                                       state=dict(pruned) if shapes_fit else None)
    return None


BASELINES = {"width_multiplier": width_multiplier, "uniform_pruning": uniform_pruning,
             "resolution": resolution, "torch_pruning": torch_pruning}

