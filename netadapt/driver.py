"""`netadapt search` end to end: the phases of a search in order, in a new run directory
or resuming one.

    seed (seed.py) -> proposal loop (loop.py, over search.py; measured.py times its
    result on the device and sends the loop on while it is over the latency budget)
    -> long-term fine-tune and deployed-size finish (finish.py) -> the width multiplier
    (baseline.py; with --compare every baseline)

Each phase is a function of the run's SearchContext (context.py) and journals its record;
resuming replays the journal: finished phases are skipped, finished proposals are not
evaluated again, and a long phase continues from its checkpoint.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import SearchConfig
from .context import PhaseRecord, Predict, SearchContext, open_context, phases_of
from .errors import NetadaptError
from .executors import Executor
from .observer import Observer
from .records import (
    BaselineRecord,
    FinalRecord,
    MeasuredRecord,
    RunTimes,
    SeedRecord,
    of_type,
)
from .rundir import RunDir
from .search import Iteration, Start
from .spec import load_spec, spec_from_dict

DEFAULT_BASELINE = "width_multiplier"  # trained in every run: the simplest alternative


@dataclass
class SearchResult:
    """What a finished search reports: its seed, result and baseline records, and where
    its wall time went."""

    run: Path
    seed: SeedRecord
    final: FinalRecord
    iterations: int
    seconds: float = 0.0  # this session's wall time
    baselines: list[BaselineRecord] = field(default_factory=list)
    loop_seconds: float = 0.0  # wall time of this session's proposal loop
    metric: str = "top-1"  # what the accuracies are: top-1 or mIoU
    latency_table: str = ""  # the device and table that predicted the latencies
    times: RunTimes = field(default_factory=lambda: RunTimes(0.0, 0.0, 0.0))  # every session
    measured: MeasuredRecord | None = None  # the result timed on the device (measured.py)
    # the latency, predicted beside measured, or why it is predicted only: printed as is
    latency_lines: list[str] = field(default_factory=list)


def run_search(ctx: SearchContext, executor: Executor) -> SearchResult:
    """Every phase of the search not yet in the run's journal, in order."""
    from .baseline import run_baselines
    from .finish import long_term
    from .measured import ready_timer, run_measured_loop, summary_lines
    from .seed import prepare_seed

    started = time.time()
    records = ctx.run.records()
    seeds, finals = of_type(records, SeedRecord), of_type(records, FinalRecord)
    # checkpoints left by a kill between a phase's record and their removal
    done: list[PhaseRecord] = [*seeds, *finals, *of_type(records, BaselineRecord)]
    for record in done:
        for phase in phases_of(record):
            ctx.checkpoint(phase).remove()
    # the device the result is timed on answers, before any training
    timing_on = ready_timer(ctx) if not finals else None
    seed = seeds[0] if seeds else prepare_seed(ctx)
    start = Start(ctx.seed_spec, seed.accuracy, {"latency_ms": seed.latency_ms,
                                                 "params": seed.params, "macs": seed.macs})
    history = ctx.run.events(ctx.seed_spec)
    iterations = [e for e in history if isinstance(e, Iteration)]
    final, loop_seconds = (finals[0] if finals else None), 0.0
    if final is None:
        # until every budget is met as predicted, and the latency one as measured
        iterations, loop_seconds = run_measured_loop(ctx, executor, start, timing_on)
        final = long_term(ctx, iterations)
    # the simplest alternative always sits beside the result; --compare adds the others
    baselines = run_baselines(ctx, () if ctx.config.compare else (DEFAULT_BASELINE,))
    ctx.run.write_csv()
    ctx.journal_changed()
    records = ctx.run.records()
    checks = of_type(records, MeasuredRecord)
    return SearchResult(ctx.run.path, seed, final, len(iterations), time.time() - started,
                        baselines, loop_seconds, ctx.metric, ctx.latency.label,
                        RunTimes.of(records), checks[-1] if checks else None,
                        summary_lines(ctx, final.latency_ms))


def start_search(config: SearchConfig, out: Path, *, predict_ms: Predict | None = None,
                 executor: Executor | None = None, observer: Observer | None = None
                 ) -> SearchResult:
    """A new search in a new run directory (the seed spec is copied into it).
    ``predict_ms`` replaces the device's latency table (tests, measured latency);
    ``executor`` runs the proposals (default: in this process; the caller closes one it
    passes); ``observer`` is told the progress (default: nothing is shown)."""
    from .seed import check_seed_weights

    seed_spec = load_spec(config.spec)
    run = RunDir.create(out, {"search": config.to_json(), "seed_spec": seed_spec.to_dict()})
    try:
        ctx = open_context(config, run, seed_spec, predict_ms, observer)
        check_seed_weights(ctx)
    except NetadaptError:
        shutil.rmtree(out, ignore_errors=True)  # nothing happened: leave no half-made run
        raise
    return run_search(ctx, executor or Executor())


def resume_search(path: Path, *, predict_ms: Predict | None = None,
                  executor: Executor | None = None, observer: Observer | None = None
                  ) -> SearchResult:
    """Continue an interrupted search from its last finished proposal, with the run's
    own config and seed spec (later edits to the spec file do not leak in)."""
    from .seed import check_seed_weights

    run = RunDir.open(path)
    config = SearchConfig.from_json(run.config.get("search", {}))
    ctx = open_context(config, run, spec_from_dict(run.config["seed_spec"]), predict_ms,
                       observer)
    check_seed_weights(ctx)
    return run_search(ctx, executor or Executor())
