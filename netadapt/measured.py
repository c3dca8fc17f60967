"""Holding the search's result to its measured latency, not only its predicted one.

A search that chooses among many candidates by a latency table picks the ones the table
underprices (the winner's curse): on Large at 64 px a result predicted at 50% of the
seed's latency ran at 54-62% of it, while the width multiplier and uniform pruning ran
within half a point of their predictions. So, when the run's device can be timed (its
table is measured, not an ESTIMATE), the loop's network is timed end to end once the
loop says every budget is met as predicted, beside the seed in the same round-robin
(``latency.validate.measure_e2e``), before the latency budget counts as met.

Over the budget, the loop goes on one iteration at a time, each network timed, toward a
tighter predicted target, up to MAX_ROUNDS checks. The rule (``tightened``): a network
predicted at P ms that ran at a ratio M to the seed beside it must give up M - G more,
G being the budget's ratio to that seed less a margin of twice the ratio's standard
error (at least MIN_MARGIN), so that the next check is decided by the network and not
by the timing noise; the measured ratio is taken to fall by ``slope`` per predicted ms.
At the first check that is the ratio rule (M / P: the table prices the next networks as
it priced this one); from the second, the secant through the last two checks, kept
between MIN_SLOPE_SHARE of the ratio rule and the ratio rule: two checks a minute apart
differ by the host's drift as well as by the cut (Large at 64 px: cuts priced at 1.6-1.9
points of the seed read -0.6 to -0.1 between checks and saved 1.1-2.4 re-timed in one
sitting), so a secant over a point or two is as much noise as signal, and a flat one
must not stop the loop. Checking every iteration bounds how far the last one can
overshoot.

Each check is a ``MeasuredRecord`` in the journal, written before the loop goes on, so a
resumed run takes the loop's target from the last record, replays the journal's
iterations under it, and never times a network it has timed already.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .context import SearchContext
from .errors import LatencyError
from .records import MeasuredRecord, of_type
from .search import Budget, Iteration, Start, format_resource, smallest_reachable

if TYPE_CHECKING:
    from .executors import Executor
    from .latency.devices import Device
    from .latency.timers import Timer
    from .spec import NetworkSpec

MAX_ROUNDS = 6  # checks of one run, the first included
MIN_MARGIN = 0.01  # the tightened target's least margin below the budget
MIN_SLOPE_SHARE = 0.5  # see slope
# Each check: 12 bursts of 30 round-robin runs of the network and the seed. A host's
# speed drifts by 25% within minutes (the Large seed: 1.58 ms at calibration, 1.96 ms
# later); the ratio to the seed timed in the same burst does not.
BURSTS = 12  # even: half of them in each order (latency.timers.balanced_order)
ROUNDS = 30


@dataclass(frozen=True)
class Timing:
    """Where the run's result is timed, or (``device`` None) why it is not."""

    device: Device | None
    why_not: str = ""


def timing(ctx: SearchContext) -> Timing:
    """The device the run's result is timed on: the run's own, when it has a profile
    (a local, ssh or adb runner), its table is not an ESTIMATE, a budget is on latency
    and the check is on."""
    from .latency import load_device

    if not any(b.resource == "latency_ms" for b in ctx.budgets):
        return Timing(None, "no latency budget")
    if not ctx.config.measured_check:
        return Timing(None, "measured check off (--no-measured-check)")
    try:
        device = load_device(ctx.config.device)
    except LatencyError:
        return Timing(None, f"no device profile {ctx.config.device!r} to time it on")
    if ctx.latency.estimate:
        attached = "no phone attached" if device.runner == "adb" else "no device timed"
        return Timing(None, f"ESTIMATE; {attached}")
    return Timing(device)


def ready_timer(ctx: SearchContext) -> tuple[Device, Timer] | None:
    """The run's device and its timer, checked, when a check lies ahead (None when the
    result is not timed, or its last check closed the loop): called before any training,
    so a missing phone, board or binary stops the run at once, in one line."""
    device = timing(ctx).device
    checks = of_type(ctx.run.records(), MeasuredRecord)
    if device is None or (checks and checks[-1].next_target_ms is None):
        return None
    return checked_timer(ctx, device, "the result is")


def checked_timer(ctx: SearchContext, device: Device, what: str) -> tuple[Device, Timer]:
    """``device``'s timer, checked: a device that does not answer stops the run in one
    line that says how to go on (``what``: what is timed on it, "the result is")."""
    from .latency.timers import make_timer

    timer = make_timer(device)
    try:
        timer.check()
    except LatencyError as exc:
        raise LatencyError(f"{exc}; {what} timed on {device.name} before its "
                           f"latency budget counts as met: make the device reachable and "
                           f"run `netadapt search --resume {ctx.run.path}` (or search with "
                           f"--no-measured-check)") from None
    return device, timer


def run_measured_loop(ctx: SearchContext, executor: Executor, start: Start,
                      timing_on: tuple[Device, Timer] | None) -> tuple[list[Iteration], float]:
    """The proposal loop (loop.run_loop) until every budget is met as predicted and,
    with ``timing_on`` (ready_timer's), the latency budget as measured (see the module's
    docstring). Returns every iteration of the run, journaled ones included, and this
    session's loop wall time in seconds."""
    from .loop import run_loop

    checks = of_type(ctx.run.records(), MeasuredRecord)
    seconds = 0.0
    for _ in range(MAX_ROUNDS + 1):  # each pass adds a check or returns
        history = ctx.run.events(ctx.seed_spec)
        journaled = [e for e in history if isinstance(e, Iteration)]
        until = _last_iteration(checks)
        if until is not None and len(journaled) >= until:
            new: list[Iteration] = []  # resumed: the journal holds it (the loop would go on)
        else:
            new, took = run_loop(loop_context(ctx, checks), executor, start, history, until)
            seconds += took
        iterations = journaled + new
        if timing_on is None:
            return iterations, seconds
        if not checks or checks[-1].iteration != len(iterations):
            checks.append(check(ctx, *timing_on, start, iterations, checks))
        if checks[-1].next_target_ms is None:
            return iterations, seconds
    raise AssertionError("a tightened target added no iteration")  # L' < P: cannot happen


def _last_iteration(checks: Sequence[MeasuredRecord]) -> int | None:
    """The iteration the loop stops at before its next check (None: where every budget
    is met as predicted): past the first check, the one after the last check's; the
    last check's own when that check closed the loop. A network met as measured may
    still be over the predicted target, which a resumed loop would otherwise chase."""
    if not checks:
        return None
    return checks[-1].iteration + (0 if checks[-1].next_target_ms is None else 1)


def loop_context(ctx: SearchContext, checks: Sequence[MeasuredRecord]) -> SearchContext:
    """The context the loop runs under: the run's, with every latency budget lowered to
    the last check's target (the tightened one, or the one its network met)."""
    if not checks:
        return ctx
    last = checks[-1]
    limit = last.target_ms if last.next_target_ms is None else last.next_target_ms
    return dataclasses.replace(ctx, budgets=tuple(
        Budget(b.resource, min(b.limit, limit)) if b.resource == "latency_ms" else b
        for b in ctx.budgets))


def check(ctx: SearchContext, device: Device, timer: Timer, start: Start,
          iterations: list[Iteration], checks: Sequence[MeasuredRecord]) -> MeasuredRecord:
    """Time the loop's network beside the seed, compare it with the latency budget on
    the measured scale, decide the next target, and journal the check."""
    spec = iterations[-1].chosen.spec if iterations else ctx.seed_spec
    predicted = ctx.predict_ms(spec)
    target = min(b.limit for b in loop_context(ctx, checks).budgets
                 if b.resource == "latency_ms")
    round_ = len(checks) + 1
    expected = expected_vs_seed(predicted, start.resources["latency_ms"], checks)
    t = time_beside_seed(ctx, device, timer, spec, start)
    next_target, note = (None, None) if t.met else _next(
        ctx, checks, predicted, t.vs_seed, t.budget_ms / t.seed_ms, t.vs_seed_se)
    record = MeasuredRecord(
        round=round_, iteration=len(iterations), device=device.name,
        predicted_ms=predicted, measured_ms=t.measured_ms, vs_seed=t.vs_seed,
        vs_seed_se=t.vs_seed_se, anchor=t.anchor, raw_ms=t.raw_ms, bursts=BURSTS,
        budget_ms=t.budget_ms, target_ms=target, met=t.met, next_target_ms=next_target,
        note=note, expected_vs_seed=expected)
    ctx.journal(record)
    ctx.run.write_csv()
    ctx.observer.measured(check_line(record))
    return record


@dataclass(frozen=True)
class Timed:
    """A network timed end to end beside the seed, on the measured scale."""

    measured_ms: float  # vs_seed x the seed's predicted latency (anchor)
    vs_seed: float  # time(network) / time(seed), median over the bursts
    vs_seed_se: float  # that median's relative standard error
    raw_ms: float
    anchor: str
    budget_ms: float  # the tightest latency budget on the measured scale

    @property
    def seed_ms(self) -> float:
        """The seed timed beside the network, on the same scale."""
        return self.measured_ms / self.vs_seed

    @property
    def met(self) -> bool:
        return self.measured_ms <= self.budget_ms


def time_beside_seed(ctx: SearchContext, device: Device, timer: Timer, spec: NetworkSpec,
                     start: Start) -> Timed:
    """``spec`` timed end to end beside the seed and nothing else (BURSTS bursts of
    ROUNDS round-robin runs), scaled to ms by the seed's predicted latency, with the
    latency budget on the same scale (measured_budget). The search's check, the
    baselines' (baseline.py) and the comparison (report.measure_here_ms) time alike: a
    third network in the round-robin (the table's seed, 17 MiB of weights at 64 px)
    evicts more of the network's weights between its runs: at 64 px here it read the
    search's results 2-7% faster and the baselines up to 4% slower than the pair."""
    from .latency import measure_e2e

    with ctx.clock.phase("evaluate"):
        got = measure_e2e(spec, device, None, timer, bursts=BURSTS, rounds=ROUNDS,
                          beside=ctx.seed_spec)
    ratio = got["beside_ratio"]
    measured = ratio * start.resources["latency_ms"]
    return Timed(measured_ms=measured, vs_seed=ratio, vs_seed_se=got["beside_ratio_se"],
                 raw_ms=got["raw_ms"], anchor="seed's predicted latency",
                 budget_ms=measured_budget(ctx, start, start.resources["latency_ms"]))


def measured_budget(ctx: SearchContext, start: Start, seed_measured_ms: float) -> float:
    """The tightest latency budget on the measured scale: a percentage is of the seed
    timed beside the network (``seed_measured_ms``), as it was of the seed's predicted
    latency; a budget in ms is itself."""
    seed_predicted = start.resources["latency_ms"]
    limits = [b.limit * seed_measured_ms / seed_predicted if text.strip().endswith("%")
              else b.limit
              for text, b in zip(ctx.config.budgets, ctx.budgets)
              if b.resource == "latency_ms"]
    return min(limits)


def _next(ctx: SearchContext, checks: Sequence[MeasuredRecord], predicted: float,
          vs_seed: float, budget: float, se: float) -> tuple[float | None, str | None]:
    """The loop's next predicted target after a check of a network predicted at
    ``predicted`` ms that ran at ``vs_seed`` of the seed, over a ``budget`` that is also
    a ratio to the seed; or (None) why there is none."""
    goal = budget * (1 - max(MIN_MARGIN, 2 * se))
    target = tightened(predicted, vs_seed, goal, checks[-1] if checks else None)
    floor = smallest_reachable(ctx.seed_spec, ctx.predict_ms)["latency_ms"]
    if len(checks) + 1 >= MAX_ROUNDS:
        return None, (f"still over the budget after {len(checks) + 1} checks (the most a "
                      f"run makes): the table underprices networks like this one; "
                      f"re-profile the device (netadapt profile --device "
                      f"{ctx.config.device} --fresh) or raise the budget")
    if target < floor:
        return None, (f"a network predicted at {target:.3f} ms would be needed, below the "
                      f"smallest this search can produce ({floor:.3f} ms); raise the budget")
    return target, None


def tightened(predicted: float, vs_seed: float, goal: float,
              previous: MeasuredRecord | None) -> float:
    """Where the next network must be predicted for it to run at ``goal`` (a ratio to
    the seed timed beside it), after a network predicted at ``predicted`` ms ran at
    ``vs_seed`` (``previous``: the check before, predicted higher; see slope)."""
    return predicted - (vs_seed - goal) / slope(previous, predicted, vs_seed)


def slope(before: MeasuredRecord | None, predicted: float, vs_seed: float) -> float:
    """How fast the measured ratio to the seed falls per predicted ms below a network
    predicted at ``predicted`` ms that ran at ``vs_seed``.

    Without an earlier check (``before``, predicted higher), the ratio rule: vs_seed /
    predicted, the table pricing the next networks as it priced this one. With one, the
    secant through the two checks, kept between MIN_SLOPE_SHARE of the ratio rule and
    the ratio rule: a secant over a step of a point or two carries the host's drift
    between the two checks (a ratio that did not fall, or fell ten times slower, is
    taken at the floor, so the loop still moves)."""
    ratio = vs_seed / predicted
    if before is None or before.predicted_ms <= predicted:
        return ratio
    secant = (before.vs_seed - vs_seed) / (before.predicted_ms - predicted)
    return min(ratio, max(MIN_SLOPE_SHARE * ratio, secant))


def expected_vs_seed(predicted: float, seed_predicted: float,
                     checks: Sequence[MeasuredRecord]) -> float:
    """The ratio to the seed a network predicted at ``predicted`` ms should run at, said
    before it is timed: at the first check the table's (``predicted`` / the seed's
    predicted ms); after, the last check's ratio moved along ``slope``, as ``tightened``
    assumes when it sets the target."""
    if not checks:
        return predicted / seed_predicted
    last = checks[-1]
    before = checks[-2] if len(checks) > 1 else None
    return last.vs_seed + slope(before, last.predicted_ms, last.vs_seed) * (
        predicted - last.predicted_ms)


def timed_text(predicted_ms: float, t: Timed | MeasuredRecord, device: str,
               expected: str = "") -> str:
    """A network timed beside the seed, in words: predicted beside measured, as a share
    of the seed, and the budget on the same scale (a check's line, a baseline's)."""
    return (f"{predicted_ms:.3f} ms predicted{expected}, {t.measured_ms:.3f} ms measured "
            f"on {device} ({100 * t.vs_seed:.1f}% of the seed timed beside it), budget "
            f"{t.budget_ms:.3f} ms")


def check_line(r: MeasuredRecord) -> str:
    """One line on a check: the network, predicted beside measured, and what follows."""
    head = (f"measured check {r.round}: iteration {r.iteration}'s network "
            + timed_text(r.predicted_ms, r, r.device, _expected(r)))
    if r.met:
        return f"{head}: met"
    if r.next_target_ms is not None:
        return (f"{head}: OVER; the loop goes on to a predicted "
                f"{r.next_target_ms:.3f} ms")
    return f"{head}: OVER; {r.note}"


def _expected(r: MeasuredRecord) -> str:
    """What was expected of a check's network before it was timed, as a share of the
    seed: the table's, or (from the second check) the run's earlier checks'."""
    if r.expected_vs_seed is None:
        return ""
    by = "by the table" if r.round == 1 else "after the run's earlier checks"
    return f" (expected {100 * r.expected_vs_seed:.1f}% of the seed {by})"


def summary_lines(ctx: SearchContext, result_ms: float) -> list[str]:
    """What the search's summary says about its latency: the table that predicted it,
    then the result predicted beside measured, or, plainly and once, that it is
    predicted only and why."""
    where = timing(ctx)
    checks = of_type(ctx.run.records(), MeasuredRecord)
    lines = [f"latency: {ctx.latency.label}"]
    if where.device is None or not checks:
        why = where.why_not or "not measured"
        return lines + [f"  result: {format_resource('latency_ms', result_ms)} predicted "
                        f"on {ctx.config.device}, not measured ({why})"]
    last = checks[-1]
    verdict = "met" if last.met else "NOT met"
    lines.append(f"  result: {last.predicted_ms:.3f} ms predicted{_expected(last)}, "
                 f"{last.measured_ms:.3f} ms "
                 f"measured on {last.device} ({100 * last.vs_seed:.1f}% of the seed timed "
                 f"beside it, scaled by the {last.anchor}); budget {last.budget_ms:.3f} ms "
                 f"{verdict}, measured")
    if len(checks) > 1:
        first = checks[0]
        lines.append(f"  the loop first stopped at {first.predicted_ms:.3f} ms predicted, "
                     f"{first.measured_ms:.3f} ms measured; went on to {len(checks)} checks")
    if last.note:
        lines.append(f"  {last.note}")
    return lines
