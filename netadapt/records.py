"""The search's journal records, typed: one place that says what each line of
history.jsonl holds (the seed, every proposal, every iteration's choice, the final
result, every baseline), how it is written and read back.

Every record is a JSON object with a ``type``; ``to_dict`` / ``from_dict`` convert, and
unknown keys written by other versions are ignored on reading. The seed, final and
baseline records leave out the keys they do not have (None), as the journal always has:
their lines, and history.csv's columns, are what the dict-built records wrote.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .search import Iteration, Proposal
from .spec import NetworkSpec

# The wall time since the previous record, and of it the seconds spent training and
# evaluating (clock.PhaseClock.lap): a run's totals are their sums (RunTimes).
TIME_FIELDS = {"wall": "wall_s", "train": "train_s", "evaluate": "eval_s"}


R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    """A journal record: its ``type`` and the wall time (by phase) since the previous one."""

    TYPE: ClassVar[str]
    # True: fields at None are left out of the dict (the key is absent on disk)
    SPARSE: ClassVar[bool] = False
    wall_s: float | None = field(default=None, kw_only=True)
    train_s: float | None = field(default=None, kw_only=True)
    eval_s: float | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.SPARSE:
            data = {k: v for k, v in data.items() if v is not None}
        return {"type": self.TYPE, **data}

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def of_type(records: Iterable[dict[str, Any]], cls: type[R]) -> list[R]:
    """The records of ``cls``'s type among journal dicts, typed, in order."""
    return [cls.from_dict(r) for r in records if r.get("type") == cls.TYPE]


@dataclass(frozen=True)
class ProposalRecord(Record):
    """A finished proposal (of one rung, with racing): which group went to which width,
    its resources, its holdout accuracy after ``steps`` short-term steps; where (worker)
    and how long (seconds, attempts) it ran."""

    TYPE: ClassVar[str] = "proposal"
    iteration: int
    group: str
    width_from: int
    width_to: int
    latency_ms: float
    params: float
    macs: float
    accuracy: float
    holdout_px: int | None = None
    seconds: float | None = None  # the job's own time (fine-tune + scoring)
    worker: str | None = None  # host:pid that ran it
    attempts: int = 1
    rung: int = 0  # of the iteration's race (racing.py); 0 without racing
    steps: int | None = None  # short-term steps it had when scored
    holdout_images: int | None = None  # scored on (a rung short of T scores a subset)

    @classmethod
    def of(cls, p: Proposal, **facts: Any) -> ProposalRecord:
        r = p.resources
        return cls(p.iteration, p.group, p.width_from, p.width_to, r["latency_ms"],
                   r["params"], r["macs"], p.accuracy, rung=p.rung, steps=p.steps, **facts)

    def event(self, parent: NetworkSpec) -> Proposal:
        """The search's Proposal, its spec re-derived from the parent's."""
        return Proposal(self.iteration, self.group, self.width_from, self.width_to,
                        parent.with_group_width(self.group, self.width_to),
                        {"latency_ms": self.latency_ms, "params": self.params,
                         "macs": self.macs}, self.accuracy, rung=self.rung, steps=self.steps)


@dataclass(frozen=True)
class IterationRecord(Record):
    """The proposal an iteration chose, and how clearly it won (margin over the
    runner-up, paired on the holdout images, with its standard error)."""

    TYPE: ClassVar[str] = "iteration"
    iteration: int
    target: dict[str, float]
    group: str
    score: float
    width_from: int | None = None
    width_to: int | None = None
    latency_ms: float | None = None
    params: float | None = None
    macs: float | None = None
    accuracy: float | None = None
    holdout_px: int | None = None
    reduction: float = 0.0
    scheduled: float = 0.0
    runner_up: str | None = None
    margin: float | None = None
    margin_se: float | None = None

    @classmethod
    def of(cls, it: Iteration, **facts: Any) -> IterationRecord:
        p, r = it.chosen, it.chosen.resources
        return cls(it.iteration, it.target, p.group, it.score, p.width_from, p.width_to,
                   r["latency_ms"], r["params"], r["macs"], p.accuracy,
                   reduction=it.reduction,
                   scheduled=it.scheduled, runner_up=it.runner_up, **facts)

    def event(self, chosen: Proposal) -> Iteration:
        return Iteration(self.iteration, self.target, chosen, self.score, self.reduction,
                         self.scheduled, self.runner_up)


# Field order is key order on disk, and so history.csv's column order: keep it.

@dataclass(frozen=True, kw_only=True)
class SeedRecord(Record):
    """The seed network: its holdout accuracy, scored as its children are (BN
    re-estimated: ``accuracy_protocol``), its resources, and how it came to be."""

    TYPE: ClassVar[str] = "seed"
    SPARSE: ClassVar[bool] = True
    accuracy: float
    trained_steps: int  # 0: loaded from --weights
    notes: list[str]  # what was done to it (reused from the cache, classifier re-fitted)
    accuracy_protocol: str
    metric: str  # what accuracy is: top-1, or mIoU for segmentation
    pixel_accuracy: float | None = None  # segmentation: holdout per-pixel accuracy
    holdout_px: int
    latency_ms: float
    params: float
    macs: float


@dataclass(frozen=True, kw_only=True)
class FinalRecord(Record):
    """The search's result after the long-term fine-tune (and the training at its
    deployed input size): resources, holdout accuracy, the test accuracy of its
    exported ONNX file, and the seed's test accuracy beside it."""

    TYPE: ClassVar[str] = "final"
    SPARSE: ClassVar[bool] = True
    iteration: int  # the iterations it took
    latency_ms: float
    params: float
    macs: float
    steps: int  # training from the seed: iterations x short-term + long-term steps
    accuracy: float  # holdout, at the search's resolution
    holdout_px: int | None = None
    deploy_steps: int = 0  # training at the deployed input size, after the long-term
    test_accuracy: float  # the exported file, at its input size
    test_pixel_accuracy: float | None = None  # segmentation
    test_px: str | None = None  # e.g. "224x224"
    seed_test_accuracy: float
    seed_test_px: int | None = None
    budgets_met: bool
    # the seed after the same training at the deployed size (when the search ran at a
    # smaller proxy size): its exported file's test accuracy at that size
    seed_deploy_test_accuracy: float | None = None
    seed_deploy_px: str | None = None


@dataclass(frozen=True, kw_only=True)
class BaselineRecord(Record):
    """A baseline (width multiplier, uniform pruning, resolution, Torch-Pruning) at the
    search's budgets: trained and scored as the result is (``knob`` says which setting),
    or, with a ``note`` and nothing else, why it was not."""

    TYPE: ClassVar[str] = "baseline"
    SPARSE: ClassVar[bool] = True
    name: str
    note: str | None = None  # why it was not trained
    knob: str | None = None  # the setting that meets the budgets, e.g. "x0.62"
    latency_ms: float | None = None
    params: float | None = None
    macs: float | None = None
    steps: int | None = None  # the search's result got as many from the seed
    accuracy: float | None = None
    holdout_px: int | None = None
    deploy_steps: int | None = None
    test_accuracy: float | None = None
    test_pixel_accuracy: float | None = None
    test_px: str | None = None
    # held to the measured latency (measured.py, on a device that can be timed): the
    # setting, timed end to end beside the seed, and the budget on that scale; None: the
    # predicted choice stands (an ESTIMATE, the check off, or a run made before)
    measured_ms: float | None = None
    measured_vs_seed: float | None = None  # time(network) / time(seed), same round-robin
    measured_budget_ms: float | None = None
    measured_checks: int | None = None  # settings timed, largest first, this one last

    @property
    def trained(self) -> bool:
        return self.knob is not None


@dataclass(frozen=True, kw_only=True)
class MeasuredRecord(Record):
    """The loop's network timed end to end on the run's device once the loop met every
    budget as predicted (measured.py): beside the seed in the same round-robin, so the
    host's drift cancels. ``met`` False with a ``next_target_ms``: the loop goes on to
    that predicted latency; with none, it cannot (``note`` says why)."""

    TYPE: ClassVar[str] = "measured"
    SPARSE: ClassVar[bool] = True
    round: int  # 1 for the first check of a run
    iteration: int  # the network measured is this iteration's (0: the seed)
    device: str
    predicted_ms: float
    measured_ms: float  # vs_seed x the seed's latency it is scaled by (anchor)
    vs_seed: float  # time(network) / time(seed), median over the bursts
    vs_seed_se: float  # that ratio's relative standard error, from the bursts' spread
    anchor: str  # what scales vs_seed to ms: the seed's predicted latency (earlier runs:
    # the table seed's at calibration, timed in the same round-robin)
    raw_ms: float  # the network's fast time, median over the bursts (drift included)
    bursts: int
    budget_ms: float  # the latency budget on the measured scale
    target_ms: float  # the loop's predicted latency limit that produced this network
    met: bool
    next_target_ms: float | None = None  # the loop's tightened limit, when not met
    note: str | None = None
    # the ratio to the seed expected before timing: the table's at the first check, the
    # earlier checks' correction after (measured.expected_vs_seed); None in older runs
    expected_vs_seed: float | None = None


def timed(record: dict[str, Any], lap: dict[str, float]) -> dict[str, Any]:
    """``record`` with a clock lap (clock.PhaseClock.lap) in its time fields."""
    return {**record, **{name: lap[phase] for phase, name in TIME_FIELDS.items()}}


@dataclass(frozen=True)
class RunTimes:
    """Where a run's wall time went, summed over its records (every session of it)."""

    wall_s: float
    train_s: float
    eval_s: float

    @classmethod
    def of(cls, records: Iterable[dict[str, Any]]) -> RunTimes:
        sums = dict.fromkeys(TIME_FIELDS.values(), 0.0)
        for r in records:
            for name in sums:
                sums[name] += r.get(name) or 0.0
        return cls(**sums)

    @property
    def overhead_s(self) -> float:
        """Everything but training and evaluation: the loop's own cost."""
        return self.wall_s - self.train_s - self.eval_s

    def summary(self) -> str:
        if not self.wall_s:
            return "loop overhead: not recorded (a run of an earlier netadapt)"
        return (f"loop overhead {100 * self.overhead_s / self.wall_s:.1f}% of "
                f"{self.wall_s:.0f} s (training {self.train_s:.0f} s, evaluation "
                f"{self.eval_s:.0f} s, everything else {self.overhead_s:.1f} s)")
