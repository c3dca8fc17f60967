"""The NetAdapt loop (search.py) bridged to an executor and the run directory.

search.py decides; this module hands each iteration's proposals to the executor as jobs,
and as each proposal's result arrives (it travels with the proposal's event) saves what
may still be needed, journals it, and, when an iteration has chosen, promotes the chosen
proposal to the iteration's network and hands its weights to the next iteration.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .context import SearchContext
from .errors import NetadaptError
from .executors import Executor, WorkerError
from .jobs import ProposalJob, ProposalResult, Training
from .model import read_state_dict
from .records import IterationRecord, ProposalRecord
from .rundir import iteration_name, proposal_name
from .search import Evaluated, Event, Iteration, Proposal, Schedule, Start, netadapt
from .spec import NetworkSpec

State = dict[str, torch.Tensor]


def correct_name(weights: str) -> str:
    """Where the per-holdout-image correctness of a proposal's weights is kept."""
    return weights.removesuffix(".pt") + ".correct.pt"


@dataclass
class _Parent:
    """The network an iteration starts from: handed over in memory by the promotion of
    the previous iteration, read from the run only when a resumed run starts mid-search."""

    iteration: int
    spec: NetworkSpec
    state: State


def run_loop(ctx: SearchContext, executor: Executor, start: Start, history: list[Event]
             ) -> tuple[list[Iteration], float]:
    """Run (or resume, after ``history``) the proposal loop until every budget is met.
    Returns this session's iterations and the loop's wall time in seconds."""
    parent: _Parent | None = None  # the network the next iteration starts from
    best_saved = _best_saved(history)
    now = dict(start.resources)
    for event in history:
        if isinstance(event, Iteration):
            now = dict(event.chosen.resources)
    ctx.observer.loop_started(start, ctx.budgets, now)

    def evaluate_many(iteration: int, children: Sequence[tuple[NetworkSpec, str]]
                      ) -> Iterator[Evaluated]:
        nonlocal parent
        if parent is None or parent.iteration != iteration:
            parent = _read_parent(ctx, iteration)
        yield from _evaluate(ctx, executor, parent, children)

    chosen: list[Iteration] = []
    started = time.perf_counter()
    for event in netadapt(start, ctx.budgets, ctx.predict_ms, evaluate_many,
                          Schedule.named(ctx.config.schedule, ctx.config.step),
                          ctx.config.criterion, history):
        if isinstance(event, Proposal):
            _save_proposal(ctx, event, best_saved)
            ctx.observer.proposal(event)
        else:
            parent = _promote(ctx, event)
            chosen.append(event)
            ctx.observer.iteration(event)
    seconds = time.perf_counter() - started
    ctx.observer.loop_finished()
    return chosen, seconds


def _evaluate(ctx: SearchContext, executor: Executor, parent: _Parent,
              children: Sequence[tuple[NetworkSpec, str]]) -> Iterator[Evaluated]:
    """Hand an iteration's proposals to the executor as jobs; yield each one's accuracy
    and whole result as it arrives. Every proposal of an iteration sees the same training
    and BN batches."""
    cfg, iteration = ctx.config, parent.iteration
    training = Training(cfg.short_term_steps, cfg.lr, cfg.batch_size, ctx.torch_device,
                        cfg.threads)
    jobs = [ProposalJob(iteration, group, parent.spec, child, ctx.seed_for(iteration),
                        training, ctx.data_source) for child, group in children]
    try:
        for result in executor.run(jobs, parent.state):
            # the job's training and scoring: its share of the wall time (N run at once)
            ctx.clock.credit("train", result.train_seconds / executor.slots)
            ctx.clock.credit("evaluate", result.eval_seconds / executor.slots)
            yield result.group, result.accuracy, result
    except WorkerError as exc:
        log = ctx.run.write_text(
            f"errors/{Path(proposal_name(iteration, exc.job.group)).stem}-iter_"
            f"{iteration:03d}.log", f"{exc}\n{exc.details}")
        raise NetadaptError(f"{exc}; tracebacks: {log}; fix the cause and run `netadapt "
                            f"search --resume {ctx.run.path}`") from None


def _read_parent(ctx: SearchContext, iteration: int) -> _Parent:
    """The network iteration ``iteration`` starts from, read from the run."""
    if iteration == 1:
        return _Parent(1, ctx.seed_spec, read_state_dict(ctx.run.path / "seed.pt"))
    name = iteration_name(iteration - 1)
    return _Parent(iteration, ctx.run.read_spec(f"{name}.yaml"),
                   read_state_dict(ctx.run.path / f"{name}.pt"))


def _best_saved(history: list[Event]) -> dict[int, float]:
    """The best holdout accuracy saved so far in each iteration (see _save_proposal)."""
    best: dict[int, float] = {}
    for event in history:
        if isinstance(event, Proposal):
            best[event.iteration] = max(event.accuracy, best.get(event.iteration, -math.inf))
    return best


def _save_proposal(ctx: SearchContext, event: Proposal, best_saved: dict[int, float]) -> None:
    """Save a finished proposal, then journal it: its per-image correctness always (the
    winner's margin over the runner-up, selection-noise studies), its weights only if it
    can still win. Under the accuracy criterion that is a proposal at least as accurate as
    every earlier one of its iteration (ties included: the ranking breaks them); the
    slope criterion weighs resources too, so there every proposal is kept. Each save is an
    fsynced file of the whole network (17 MB for Large): loop overhead, and most proposals
    never win."""
    job = event.result
    assert isinstance(job, ProposalResult)
    name = proposal_name(event.iteration, event.group)
    ctx.run.save_state(correct_name(name), {"correct": job.correct})
    best = best_saved.get(event.iteration, -math.inf)
    if ctx.config.criterion != "accuracy" or event.accuracy >= best:
        ctx.run.save_state(name, job.state)
        best_saved[event.iteration] = max(best, event.accuracy)
    ctx.journal(ProposalRecord.of(event, holdout_px=ctx.data.resolution,
                                  seconds=round(job.seconds, 3), worker=job.worker,
                                  attempts=job.attempts))


def _promote(ctx: SearchContext, event: Iteration) -> _Parent:
    """Make the chosen proposal the iteration's network and record it with its holdout
    margin over the runner-up (paired on the same images) and that margin's standard
    error: a margin inside ~2 SE means the choice was a coin toss. Returns the next
    iteration's parent."""
    from .train import paired_margin

    p = event.chosen
    margin = margin_se = None
    if event.runner_up is not None:
        chosen, second = (read_state_dict(ctx.run.path / correct_name(
            proposal_name(p.iteration, g)))["correct"] for g in (p.group, event.runner_up))
        margin, margin_se = paired_margin(chosen, second)
    ctx.run.write_spec(f"{iteration_name(p.iteration)}.yaml", p.spec)
    weights = proposal_name(p.iteration, p.group)
    # in memory when this session evaluated it; read back after a resume
    state = p.result.state if isinstance(p.result, ProposalResult) else \
        read_state_dict(ctx.run.path / weights)
    ctx.run.copy(weights, f"{iteration_name(p.iteration)}.pt")
    ctx.journal(IterationRecord.of(event, holdout_px=ctx.data.resolution, margin=margin,
                                   margin_se=margin_se))
    # The proposals' weights go; their per-image correctness stays (a few KB each), so
    # selection noise can be studied afterwards.
    folder = ctx.run.path / Path(weights).parent
    for path in folder.glob("*.pt"):
        if not path.name.endswith(".correct.pt"):
            path.unlink(missing_ok=True)
    ctx.run.write_csv()
    ctx.journal_changed(final=False)
    return _Parent(p.iteration + 1, p.spec, state)
