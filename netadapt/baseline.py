"""The simple answers NetAdapt must beat, at the same budgets.

- width multiplier: every width x m (the paper's rule, head kept), the largest m that
  meets every budget;
- uniform pruning: every channel group cut by the same fraction, the smallest fraction
  that meets every budget;
- input resolution: the largest input size (multiple of 16) that meets every budget,
  where the latency table covers it;
- Torch-Pruning (optional, ``pip install torch-pruning``): its magnitude pruner with
  global L2 group importance and ``round_to=8``, stepped until it meets every budget.

Each gives a plain spec; :func:`run_baselines` inherits the seed's largest-L2 filters
and fine-tunes it as long as the search's winner, on the same batches, then finishes it as
the winner was finished (deployed-size training, export, the ONNX file's test accuracy),
so the comparison is fair.

On a device that can be timed (``measured.timing``), each setting is also held to the
latency budget as measured, as the search's result is: timed beside the seed (each at
its own input size), and while it is over, the next smaller setting of the same knob
(:func:`held_to_measured`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NetadaptError
from .records import BaselineRecord
from .search import Budget, Predict, resources_of, unmet
from .spec import WIDTH_STEP, NetworkSpec, resolution_sizes

if TYPE_CHECKING:
    from .context import SearchContext
    from .latency.devices import Device
    from .latency.timers import Timer
    from .measured import Timed
    from .observer import Observer



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
    candidates = ((f"{size}x{size}", dataclasses.replace(
        seed, input_size=(size, size), name=f"{seed.name}_{size}px"))
        for size in resolution_sizes(min(seed.input_size)))
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
Make = Callable[..., BaselineSpec | None]  # one of BASELINES
MAX_BASELINE_CHECKS = 12  # settings of one baseline timed, the predicted choice included


def no_setting_note(name: str, seed: NetworkSpec, budgets: Sequence[Budget],
                    predict_ms: Predict, device: str) -> str:
    """Why baseline ``name`` found no setting. For the resolution baseline, which sizes
    the latency table lacks (and the command that adds them), or what its smallest size
    is predicted at; for the others, both possibilities in one line."""
    if name != "resolution":
        return "no setting meets the budgets (or the latency table lacks it)"
    side = min(seed.input_size)
    sizes = resolution_sizes(side)
    if not sizes:
        return f"no input size to try: {side} px has no multiple of 16 >= 32 at or below it"
    missing = []
    for size in sizes:
        try:
            predict_ms(dataclasses.replace(seed, input_size=(size, size)))
        except NetadaptError:
            missing.append(f"{size}x{size}")
    if missing:
        return (f"the latency table lacks {', '.join(missing)}; netadapt profile --device "
                f"{device} --input-size {side} adds the sizes this tries")
    smallest = dataclasses.replace(seed, input_size=(sizes[-1], sizes[-1]))
    over = ", ".join(str(b) for b in unmet(resources_of(smallest, predict_ms), budgets))
    return (f"no input size meets the budgets: the smallest, {sizes[-1]}x{sizes[-1]}, "
            f"is over {over}")


def run_baselines(ctx: SearchContext, names: Sequence[str] = ()) -> list[BaselineRecord]:
    """The baselines ``names`` (default: all) at the run's budgets, from the same seed
    weights, each trained exactly as many steps as the search's winner got from the seed
    (its iterations' short-term steps + the long-term steps), on the same batches, then
    finished as the winner was. Finished baselines (journal records) are not trained
    again."""
    from .measured import checked_timer, timing
    from .model import read_state_dict

    done = {r.name for r in ctx.run.baseline_records()}
    seed_state = read_state_dict(ctx.run.path / "seed.pt")
    device = timing(ctx).device
    timing_on: tuple[Device, Timer] | None = None
    for name, make in BASELINES.items():
        if name in done or (names and name not in names):
            continue
        try:
            found = make(ctx.seed_spec, ctx.budgets, ctx.predict_ms, seed_state)
        except BaselineUnavailable as exc:
            ctx.finish_phase(BaselineRecord(name=name, note=str(exc)))
            continue
        if found is None:
            ctx.finish_phase(BaselineRecord(name=name, note=no_setting_note(
                name, ctx.seed_spec, ctx.budgets, ctx.predict_ms, ctx.config.device)))
        else:
            held: dict[str, Any] = {}
            if device is not None:  # held to the measured latency, as the result is
                timing_on = timing_on or checked_timer(ctx, device, f"baseline {name} is")
                found, held = held_to_measured(ctx, make, found, seed_state, timing_on)
            ctx.finish_phase(_train_baseline(ctx, found, seed_state, held))
    ctx.run.write_csv()
    ctx.journal_changed()
    return ctx.run.baseline_records()


def held_to_measured(ctx: SearchContext, make: Make, found: BaselineSpec,
                     seed_state: dict[str, Any], timing_on: tuple[Device, Timer]
                     ) -> tuple[BaselineSpec, dict[str, Any]]:
    """Baseline ``found`` (its predicted choice) held to the latency budget as measured:
    timed beside the seed as the search's result is (measured.time_beside_seed), and
    while it is over, the next smaller setting of its knob (the first predicted below it:
    the next multiplier or fraction; Torch-Pruning pruned again from the seed to its next
    step), up to MAX_BASELINE_CHECKS timings. The setting, and its record's measured
    fields. What was found is written to baselines/NAME.measured.json before training, so
    a resumed run walks to the same setting without timing again (its checkpoints fit it)."""
    from .files import write_text_atomic
    from .measured import time_beside_seed
    from .search import Start

    saved = ctx.run.path / "baselines" / f"{found.name}.measured.json"
    if saved.is_file():
        fields = json.loads(saved.read_text(encoding="utf-8"))
        walked: BaselineSpec | None = found
        for _ in range(int(fields["measured_checks"]) - 1):
            if walked is not None:
                walked = _smaller(ctx, make, walked, seed_state)
        if walked is not None and walked.knob == fields.pop("knob"):
            return walked, fields
    start = Start(ctx.seed_spec, 0.0, resources_of(ctx.seed_spec, ctx.predict_ms))
    device, timer = timing_on
    for checks in range(1, MAX_BASELINE_CHECKS + 1):
        t = time_beside_seed(ctx, device, timer, found.spec, start)
        smaller = None if t.met or checks == MAX_BASELINE_CHECKS else _smaller(
            ctx, make, found, seed_state)
        ctx.observer.measured(_check_line(found, t, device.name, smaller))
        if smaller is None:
            break
        found = smaller
    fields = {"measured_ms": t.measured_ms, "measured_vs_seed": t.vs_seed,
              "measured_budget_ms": t.budget_ms, "measured_checks": checks}
    saved.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, json.dumps({"knob": found.knob, **fields}, indent=1))
    return found, fields


def _smaller(ctx: SearchContext, make: Make, found: BaselineSpec,
             seed_state: dict[str, Any]) -> BaselineSpec | None:
    """The next setting of ``found``'s knob: the first (largest) one predicted below it
    that meets every budget."""
    below = math.nextafter(found.resources["latency_ms"], 0.0)
    budgets = [Budget(b.resource, min(b.limit, below)) if b.resource == "latency_ms" else b
               for b in ctx.budgets]
    return make(ctx.seed_spec, budgets, ctx.predict_ms, seed_state)


def _check_line(found: BaselineSpec, t: Timed, device: str,
                smaller: BaselineSpec | None) -> str:
    from .measured import timed_text

    head = (f"measured check: baseline {found.name} {found.knob} "
            + timed_text(found.resources["latency_ms"], t, device))
    if t.met:
        return f"{head}: met"
    if smaller is not None:
        return f"{head}: OVER; next {smaller.knob}"
    return f"{head}: OVER; kept (no smaller setting, or {MAX_BASELINE_CHECKS} timed)"


def _train_baseline(ctx: SearchContext, found: BaselineSpec, seed_state: dict[str, Any],
                    held: dict[str, Any] | None = None) -> BaselineRecord:
    """Train and finish one baseline network; its record."""
    from .context import LONG_TERM_SEED
    from .finish import finish_network
    from .model import build_model
    from .prune import inherit_weights
    from .train import finetune

    cfg, seed, data = ctx.config, ctx.seed_spec, ctx.data
    steps = ctx.run.require_final().steps
    model = build_model(found.spec)
    same_size = found.spec.input_size == seed.input_size
    if found.state is not None:  # the method's own weights (Torch-Pruning)
        model.load_state_dict(found.state)
    else:
        model.load_state_dict(inherit_weights(seed, seed_state, found.spec) if same_size
                              else seed_state)
    if not same_size:  # trained at the same fraction of the seed's resolution as deployed
        data = data.at(max(8, round(data.resolution * found.spec.input_size[0]
                                    / seed.input_size[0])))
    with ctx.clock.phase("train"):
        finetune(model, data, steps=steps, lr=cfg.lr, batch_size=cfg.batch_size,
                 seed=ctx.seed_for(LONG_TERM_SEED), device=ctx.torch_device,
                 progress=ctx.progress(f"baseline {found.name}", steps),
                 checkpoint=ctx.checkpoint(f"baseline-{found.name}"))
    r = found.resources
    return BaselineRecord(name=found.name, knob=found.knob, latency_ms=r["latency_ms"],
                          params=r["params"], macs=r["macs"], steps=steps,
                          **(held or {}),
                          **finish_network(ctx, model, found.spec, f"baselines/{found.name}",
                                           data))


def baselines_for_run(path: Path, *, predict_ms: Predict | None = None,
                      observer: Observer | None = None) -> list[BaselineRecord]:
    """Train the baselines of a finished search run (its seed, data, budgets, steps).
    ``predict_ms`` places them by another latency predictor than the run's table (e.g.
    latency measured on the device)."""
    from .config import SearchConfig
    from .context import open_context
    from .rundir import RunDir
    from .spec import spec_from_dict

    run = RunDir.open(path)
    run.require_final()
    config = SearchConfig.from_json(run.config["search"])
    seed_spec = spec_from_dict(run.config["seed_spec"])
    return run_baselines(open_context(config, run, seed_spec, predict_ms, observer))
