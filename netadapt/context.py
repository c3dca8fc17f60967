"""The frozen context every phase of a search shares, and the conventions the phases
agree on (seeds of their training, names of their checkpoints).

A phase is a plain function of a :class:`SearchContext` (and what earlier phases
returned): it trains, writes its files, and journals one record. The context holds no
results: what a phase produced reaches the next one as a return value or on disk.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .checkpoint import Checkpoint
from .clock import PhaseClock
from .config import CLASSIFIER_RESOLUTION, SearchConfig
from .errors import NetadaptError
from .jobs import DataSource
from .observer import Observer, StepCallback
from .records import BaselineRecord, FinalRecord, Record, SeedRecord, timed
from .rundir import SEED_DEPLOYED, RunDir
from .search import Budget, Predict, check_reachable, resolve_budgets
from .spec import NetworkSpec

if TYPE_CHECKING:
    from .data import Data
    from .latency.table import LatencyTable

# the "iteration" whose seed the long-term fine-tunes (and the baselines) share
LONG_TERM_SEED = -1
DEPLOY_SEED = -2  # the "iteration" whose seed every deployed-size phase shares
# the records of the phases that checkpoint while they run
PhaseRecord = SeedRecord | FinalRecord | BaselineRecord


@dataclass(frozen=True)
class Latency:
    """How latency is predicted, and what the run records about it."""

    predict_ms: Predict
    label: str  # the table's device and provenance (an ESTIMATE says so)
    sha256: str | None = None  # of the table's contents; None: an injected predictor
    # the device's table is an ESTIMATE: nothing to time the result on (measured.py)
    estimate: bool = False
    table: LatencyTable | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class SearchContext:
    """What every phase of one search reads: its config, run directory, data, latency
    prediction, torch device, budgets, wall-time clock and observer."""

    config: SearchConfig
    run: RunDir
    seed_spec: NetworkSpec  # at the deployed input size, with the data's class count
    data_source: DataSource  # what workers load the data from
    data: Data  # the same data, loaded here
    latency: Latency
    budgets: tuple[Budget, ...]
    torch_device: str
    clock: PhaseClock
    observer: Observer

    @property
    def predict_ms(self) -> Predict:
        return self.latency.predict_ms

    @property
    def metric(self) -> str:
        return "mIoU" if self.seed_spec.task == "segmentation" else "top-1"

    def seed_for(self, iteration: int) -> int:
        """The training and BN-recalibration seed of every network trained in
        ``iteration``: common random numbers, so proposals differ by their architecture,
        not by their batches (and the same whether the run was interrupted or not)."""
        return zlib.crc32(f"{self.config.seed}/{iteration}".encode())

    def journal(self, record: Record) -> None:
        """Append a record with the wall time since the previous one, by phase."""
        self.run.append(timed(record.to_dict(), self.clock.lap()))

    def finish_phase(self, record: PhaseRecord) -> None:
        """Journal the result of a checkpointed phase, then drop its checkpoints."""
        self.journal(record)
        for phase in phases_of(record):
            self.checkpoint(phase).remove()

    def checkpoint(self, phase: str) -> Checkpoint:
        """The progress file of a long training phase (removed once its record is in the
        journal; until then a resumed run continues the phase from it)."""
        return Checkpoint(self.run.path / "checkpoints" / f"{phase}.pt", clock=self.clock)

    def progress(self, desc: str, total: int) -> StepCallback | None:
        return self.observer.training(desc, total)

    def journal_changed(self, final: bool = True) -> None:
        self.observer.journal_changed(self.run.path, self.budgets, final)


def deploy_phase(name: str) -> str:
    """The checkpoint name of network ``name``'s training at its deployed input size."""
    return "deploy-" + name.replace("/", "-")


def phases_of(record: PhaseRecord) -> list[str]:
    """The checkpointed phases whose result ``record`` is."""
    if isinstance(record, SeedRecord):
        return ["seed"]
    if isinstance(record, FinalRecord):
        return ["long_term", deploy_phase("best"), deploy_phase(SEED_DEPLOYED)]
    return [f"baseline-{record.name}", deploy_phase(f"baselines/{record.name}")]


def resolve_torch_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise NetadaptError("--torch-device cuda: no CUDA GPU is visible; use cpu or auto")
    return name


def table_latency(device: str) -> Latency:
    """Latency predicted by ``device``'s table."""
    from .latency import load_table

    table = load_table(device)
    return Latency(table.predict_ms, table.label(), getattr(table, "meta", {}).get("sha256"),
                   table.is_estimate, table)


def injected_latency(predict_ms: Predict, device: str) -> Latency:
    """Latency from an injected predictor standing in for ``device``'s table; an
    ESTIMATE table there still means no device to time the result on."""
    from .latency.table import is_estimate_table

    return Latency(predict_ms, f"{device} (injected predictor)",
                   estimate=is_estimate_table(device))


def open_context(config: SearchConfig, run: RunDir, seed_spec: NetworkSpec,
                 predict_ms: Predict | None = None,
                 observer: Observer | None = None) -> SearchContext:
    """Resolve a run's config into the context its phases share: load the data, the
    latency table (or take the injected ``predict_ms``), resolve and check the budgets,
    and record the resolved facts in the run's config.json (once)."""
    clock = PhaseClock()  # start-up and data loading count as overhead
    torch_device = resolve_torch_device(config.torch_device)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    latency = table_latency(config.device) if predict_ms is None else \
        injected_latency(predict_ms, config.device)
    seed_spec = config.deployed(seed_spec)
    segmentation = seed_spec.task == "segmentation"
    resolution = config.resolution or (seed_spec.input_size[0] if segmentation
                                       else CLASSIFIER_RESOLUTION)
    source = DataSource(config.data, resolution, seed_spec.in_channels, config.holdout,
                        config.seed, segmentation)
    data = source.load()
    seed_spec = dataclasses.replace(seed_spec, num_classes=data.num_classes)
    budgets = resolve_budgets(config.budgets, seed_spec, latency.predict_ms)
    check_reachable(seed_spec, budgets, latency.predict_ms)
    ctx = SearchContext(config, run, seed_spec, source, data, latency, budgets, torch_device,
                        clock, observer or Observer())
    if "data" not in run.config:
        run.update_config({"data": data.description, "latency_table": latency.label,
                           # what "accuracy" holds, and what a paired margin is of
                           "metric": ctx.metric,
                           "margin_of": "per-image pixel accuracy" if segmentation
                           else "per-image correctness"})
    return ctx
