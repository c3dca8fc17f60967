"""The NetAdapt loop as plain code over injected functions.

    while any Res_j(net) > Bud_j:
        target = Res(net) - dR_i                        (never below the budget; halved
                                                         while no single group can meet it)
        for each channel group g:
            child = net with g cut to the widest width meeting the target
            acc   = evaluate(child)                     (inherit, fine-tune T steps, holdout)
        net = the best child                            (accuracy, or dAcc / |dRes|)

It does not train, time, print or write anything: it is handed ``predict_ms`` (a
latency-table lookup) and ``evaluate_many`` (fine-tune + holdout accuracy of a whole
iteration's proposals at once, so an executor can run them in parallel), and yields a
record for every proposal as its result arrives (carrying whatever else the evaluation
returned: weights, timings) and for every iteration. The caller
persists them and, to resume, hands the records back as ``history``: finished proposals
are not evaluated again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .cost import count_macs, count_params
from .errors import NetadaptError
from .racing import Racing, Rung, full_rung
from .spec import WIDTH_STEP, NetworkSpec

RESOURCES = ("latency_ms", "params", "macs")
CRITERIA = ("accuracy", "slope")
# When no single group can meet an iteration's target, the step is halved up to this many
# times (to 1/256 of the scheduled step) before the search gives up: a smaller step, never
# a destructive one (cutting a group to its narrowest width).
MAX_HALVINGS = 8


Predict = Callable[[NetworkSpec], float]  # a latency predictor: spec -> milliseconds


class BudgetError(NetadaptError):
    """A budget that cannot be parsed or cannot be reached."""


@dataclass(frozen=True)
class Budget:
    """Res_j(net) <= limit for one resource (``latency_ms``, ``params`` or ``macs``)."""

    resource: str
    limit: float

    def __str__(self) -> str:
        return f"{self.resource} <= {format_resource(self.resource, self.limit)}"


_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


def parse_budget(text: str, seed: dict[str, float]) -> Budget:
    """``20ms``, ``60%`` (of the seed's latency), ``latency=20ms``, ``params=2M``,
    ``macs=100M``, ``params=50%``."""
    raw = text.strip()
    name, _, value = raw.rpartition("=")
    name = {"": "latency_ms", "latency": "latency_ms", "latency_ms": "latency_ms",
            "params": "params", "macs": "macs"}.get(name.strip().lower(), "?")
    if name == "?":
        raise BudgetError(f"budget {text!r}: unknown resource; use latency (e.g. 20ms or "
                          f"60%), params=2M or macs=100M")
    value = value.strip()
    if value.endswith("%"):
        number = _number(value[:-1], text)
        if not 0 < number < 100:
            raise BudgetError(f"budget {text!r}: a percentage must be in (0, 100)")
        return Budget(name, seed[name] * number / 100)
    if name == "latency_ms":
        match = re.fullmatch(r"([0-9.eE+-]+)\s*(ms|s)", value)
        if not match:
            raise BudgetError(f"budget {text!r}: latency needs a unit, e.g. 20ms, 0.02s or 60%")
        number = _number(match.group(1), text) * (1000.0 if match.group(2) == "s" else 1.0)
    else:
        match = re.fullmatch(r"([0-9.eE+-]+)\s*([kKMG]?)", value)
        if not match:
            raise BudgetError(f"budget {text!r}: expected a count like 2M, 150k or 50%")
        number = _number(match.group(1), text) * _SUFFIX[match.group(2)]
    if number <= 0:
        raise BudgetError(f"budget {text!r}: must be positive")
    return Budget(name, number)


def _number(text: str, whole: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BudgetError(f"budget {whole!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise BudgetError(f"budget {whole!r}: must be finite")
    return value


def format_resource(resource: str, value: float) -> str:
    if resource == "latency_ms":
        return f"{value:.2f} ms"
    return f"{value / 1e6:.3f} M" if resource == "params" else f"{value / 1e6:.2f} M"


@dataclass(frozen=True)
class Schedule:
    """How far each iteration lowers the driving resource, as a fraction of the seed's.

    ``decay``: dR_i = initial x decay^i (the NetAdapt authors' code: 2.5%, 0.96).
    ``constant``: dR_i = initial (MobileNetV3: 1% of the seed latency per step).
    """

    initial: float = 0.025
    decay: float = 0.96

    @classmethod
    def named(cls, name: str, initial: float | None = None) -> Schedule:
        if name == "decay":
            return cls(initial if initial is not None else 0.025, 0.96)
        if name == "constant":
            return cls(initial if initial is not None else 0.01, 1.0)
        raise BudgetError(f"unknown schedule {name!r}; use decay (NetAdapt) or constant "
                          f"(MobileNetV3)")

    def reduction(self, iteration: int, seed_value: float) -> float:
        """dR for iteration ``iteration`` (1-based)."""
        return seed_value * self.initial * self.decay ** (iteration - 1)


@dataclass(frozen=True)
class Proposal:
    """One group cut to one width, fine-tuned and scored on the holdout split."""

    iteration: int
    group: str
    width_from: int
    width_to: int
    spec: NetworkSpec = field(repr=False, compare=False)
    resources: dict[str, float] = field(compare=False)
    accuracy: float
    rung: int = 0  # the rung of the iteration's race it was scored in (0 without racing)
    steps: int | None = None  # short-term steps it had when scored
    # the evaluation's whole result as evaluate_many returned it (weights, per-image
    # correctness, timings), for the caller to save; None for a proposal read back from
    # the journal
    result: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Iteration:
    """The proposal chosen in one iteration: the network the next one starts from."""

    iteration: int
    target: dict[str, float]  # {driving resource: target value}
    chosen: Proposal
    score: float  # the criterion's value for the chosen proposal
    reduction: float = 0.0  # the step asked for (driving resource); < scheduled if halved
    scheduled: float = 0.0  # the schedule's step for this iteration
    runner_up: str | None = None  # the second-best proposal's group (None: only one)


@dataclass(frozen=True)
class Start:
    """The seed network: spec, its holdout accuracy and its resources."""

    spec: NetworkSpec
    accuracy: float
    resources: dict[str, float]


Event = Proposal | Iteration


class Child(NamedTuple):
    """A proposal to evaluate in a rung: its spec, its group, and its result in the
    previous rung (None in the first), whose weights it continues from."""

    spec: NetworkSpec
    group: str
    previous: Proposal | None = None


Evaluate = Callable[[int, NetworkSpec, str], float]  # (iteration, child spec, group) -> acc
# (iteration, rung, children) -> (group, accuracy, result) of each, as each finishes; the
# result (anything) travels with the proposal's record
Evaluated = tuple[str, float, object]
EvaluateMany = Callable[[int, Rung, Sequence[Child]], Iterable[Evaluated]]


def one_by_one(evaluate: Evaluate) -> EvaluateMany:
    """An EvaluateMany that evaluates the proposals one after another (no result)."""
    def evaluate_many(iteration: int, rung: Rung, children: Sequence[Child]
                      ) -> Iterator[Evaluated]:
        for child in children:
            yield child.group, evaluate(iteration, child.spec, child.group), None
    return evaluate_many


def resources_of(spec: NetworkSpec, predict_ms: Callable[[NetworkSpec], float]
                 ) -> dict[str, float]:
    return {"latency_ms": predict_ms(spec), "params": float(count_params(spec)),
            "macs": float(count_macs(spec))}


def resolve_budgets(texts: Sequence[str], seed: NetworkSpec,
                    predict_ms: Callable[[NetworkSpec], float]) -> tuple[Budget, ...]:
    """Budgets as given on the command line, percentages taken of ``seed``'s values."""
    seed_resources = resources_of(seed, predict_ms)
    return tuple(parse_budget(text, seed_resources) for text in texts)


def smallest_reachable(spec: NetworkSpec, predict_ms: Callable[[NetworkSpec], float]
                       ) -> dict[str, float]:
    """Resources of the network with every channel group at the minimum width."""
    smallest = spec.with_fields({path: WIDTH_STEP for g in spec.groups for path in g.fields})
    return resources_of(smallest, predict_ms)


def check_reachable(spec: NetworkSpec, budgets: Sequence[Budget],
                    predict_ms: Callable[[NetworkSpec], float]) -> None:
    """Refuse, before any training, a budget below what the smallest network costs."""
    floor = smallest_reachable(spec, predict_ms)
    for budget in budgets:
        if floor[budget.resource] > budget.limit:
            raise BudgetError(
                f"budget {budget} is unreachable: the smallest network this search can "
                f"produce (every channel group at {WIDTH_STEP}) has "
                f"{format_resource(budget.resource, floor[budget.resource])}; "
                f"raise the budget to at least that"
            )


def unmet(resources: dict[str, float], budgets: Sequence[Budget]) -> list[Budget]:
    return [b for b in budgets if resources[b.resource] > b.limit]


def propose(spec: NetworkSpec, resource: str, target: float,
            measure: Callable[[NetworkSpec], float]) -> list[tuple[str, int, NetworkSpec, float]]:
    """For every group, the widest width whose resource meets ``target``.

    Every candidate width is evaluated: latency is not monotone in channels (a width of
    8 mod 16 can be slower than 16 more), so no binary search. Returns (group, width,
    child spec, value) for the groups that can meet the target.
    """
    out = []
    for group in spec.groups:
        for width in range(group.width - WIDTH_STEP, 0, -WIDTH_STEP):
            child = spec.with_group_width(group.name, width)
            value = measure(child)
            if value <= target:
                out.append((group.name, width, child, value))
                break
    return out


def netadapt(
    start: Start,
    budgets: Sequence[Budget],
    predict_ms: Callable[[NetworkSpec], float],
    evaluate_many: EvaluateMany,
    schedule: Schedule = Schedule(),
    criterion: str = "accuracy",
    history: Sequence[Event] = (),
    max_iterations: int = 1000,
    steps: int = 0,
    racing: Racing | None = None,
) -> Iterator[Event]:
    """Run NetAdapt from ``start`` until every budget is met; yield each new record.

    ``evaluate_many`` gets each iteration's unfinished proposals at once; a Proposal
    is yielded as each result arrives (in any order), so the caller can record it before
    the others finish. ``history`` holds records of an earlier, interrupted run of the
    same search: its iterations are replayed without work and its finished proposals
    are not re-evaluated. When no single group can meet an iteration's target, the step is
    halved (recorded as the iteration's ``reduction``). Raises BudgetError when no
    single-group change can reduce the driving resource any further.

    ``steps`` is T, the short-term fine-tuning steps a chosen proposal has had. With
    ``racing``, an iteration's proposals race in rungs (racing.py) and it chooses among
    those that reached T; without, each is evaluated once, with all T steps.
    """
    if criterion not in CRITERIA:
        raise BudgetError(f"unknown criterion {criterion!r}; use accuracy (NetAdapt) or "
                          f"slope (MobileNetV3: dAcc / |dLatency|)")
    if not budgets:
        raise BudgetError("no budget given; e.g. --budget 20ms")
    measures = _measures(predict_ms)
    done_iterations = {e.iteration: e for e in history if isinstance(e, Iteration)}
    # a result counts for the rung it was scored in only at the steps it had (a record
    # without steps had all T): a run journaled under another schedule is evaluated again
    done_proposals = {(e.iteration, e.group, e.rung, steps if e.steps is None else e.steps): e
                      for e in history if isinstance(e, Proposal)}
    spec, accuracy, resources = start.spec, start.accuracy, dict(start.resources)
    for iteration in range(1, max_iterations + 1):
        pending = unmet(resources, budgets)
        if not pending:
            return
        if iteration in done_iterations:  # replay a finished iteration
            chosen = done_iterations[iteration].chosen
            spec, accuracy, resources = chosen.spec, chosen.accuracy, dict(chosen.resources)
            continue
        driver = pending[0]  # latency first when it is unmet (budgets keep CLI order)
        resource = driver.resource
        scheduled = schedule.reduction(iteration, start.resources[resource])
        target, reduction, candidates = _candidates(spec, resources, driver, scheduled,
                                                    measures[resource])
        race = Race(iteration, spec, resources, candidates, predict_ms, done_proposals)
        proposals = yield from race.run(evaluate_many, racing, steps, criterion, accuracy,
                                        resource)
        ranked = rank(proposals, criterion, accuracy, resources, resource)
        (best, score), runner_up = ranked[0], (ranked[1][0].group if len(ranked) > 1 else None)
        yield Iteration(iteration, {resource: target}, best, score, reduction, scheduled,
                        runner_up)
        spec, accuracy, resources = best.spec, best.accuracy, dict(best.resources)
    raise BudgetError(f"budgets not met after {max_iterations} iterations")


@dataclass
class Race:
    """One iteration's proposals, evaluated rung by rung (one rung without racing).
    ``candidates`` are ``propose``'s (group, width, child spec, value)."""

    iteration: int
    parent: NetworkSpec
    resources: dict[str, float]
    candidates: list[tuple[str, int, NetworkSpec, float]]
    predict_ms: Callable[[NetworkSpec], float]
    # from the journal, by (iteration, group, rung, steps): not evaluated again
    done: dict[tuple[int, str, int, int], Proposal]

    def run(self, evaluate_many: EvaluateMany, racing: Racing | None, steps: int,
            criterion: str, accuracy: float, resource: str
            ) -> Generator[Proposal, None, list[Proposal]]:
        """Yield every new proposal result; return those of the final rung, in the
        candidates' order (whatever order results came in: ties rank the same)."""
        children = [Child(child, group) for group, _, child, _ in self.candidates]
        start, index = 0, 0
        while True:
            rung = full_rung(steps) if racing is None else \
                racing.rung(index, start, len(children), steps)
            results = yield from self._rung(evaluate_many, rung, children)
            if rung.final:
                return results
            assert racing is not None
            ranked = [p for p, _ in rank(results, criterion, accuracy, self.resources,
                                          resource)]
            kept = {p.group for p in racing.survivors(ranked)}
            children = [Child(p.spec, p.group, p) for p in results if p.group in kept]
            start, index = rung.until, index + 1

    def _rung(self, evaluate_many: EvaluateMany, rung: Rung, children: list[Child]
              ) -> Generator[Proposal, None, list[Proposal]]:
        widths = {group: width for group, width, _, _ in self.candidates}
        keys = {c.group: (self.iteration, c.group, rung.index, rung.until) for c in children}
        found = {group: self.done[key] for group, key in keys.items() if key in self.done}
        todo = [c for c in children if c.group not in found]
        for group, child_accuracy, result in evaluate_many(self.iteration, rung, todo):
            child = next(c for c in todo if c.group == group)
            found[group] = Proposal(self.iteration, group, self.parent.group(group).width,
                                    widths[group], child.spec,
                                    resources_of(child.spec, self.predict_ms), child_accuracy,
                                    rung=rung.index, steps=rung.until, result=result)
            yield found[group]
        return [found[c.group] for c in children]


def _measures(predict_ms: Callable[[NetworkSpec], float]
              ) -> dict[str, Callable[[NetworkSpec], float]]:
    """How each resource of a spec is measured."""
    return {"latency_ms": predict_ms, "params": lambda s: float(count_params(s)),
            "macs": lambda s: float(count_macs(s))}


def _candidates(spec: NetworkSpec, resources: dict[str, float], driver: Budget,
                scheduled: float, measure: Callable[[NetworkSpec], float]
                ) -> tuple[float, float, list[tuple[str, int, NetworkSpec, float]]]:
    """An iteration's target, the reduction it asks for and its proposals: the
    scheduled step, halved while no single group can meet the target."""
    resource, reduction = driver.resource, scheduled
    for _ in range(MAX_HALVINGS + 1):
        target = max(resources[resource] - reduction, driver.limit)
        candidates = propose(spec, resource, target, measure)
        if candidates:
            return target, reduction, candidates
        reduction /= 2
    raise BudgetError(
        f"cannot reduce {resource} below {format_resource(resource, resources[resource])}"
        f" by shrinking any single channel group, even by 1/{2 ** MAX_HALVINGS} of the "
        f"scheduled step; the unmet budget is {driver}")


def rank(proposals: list[Proposal], criterion: str, accuracy: float,
          resources: dict[str, float], resource: str) -> list[tuple[Proposal, float]]:
    """Proposals with their scores, best first: highest accuracy (NetAdapt), or highest
    dAcc / |dRes| (MobileNetV3); ties go to the lower resource."""
    def score(p: Proposal) -> float:
        if criterion == "accuracy":
            return p.accuracy
        saved = abs(resources[resource] - p.resources[resource])
        return (p.accuracy - accuracy) / max(saved, 1e-12)
    ranked = sorted(proposals, key=lambda p: (score(p), -p.resources[resource]), reverse=True)
    return [(p, score(p)) for p in ranked]
