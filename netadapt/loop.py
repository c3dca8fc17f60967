"""The NetAdapt loop (search.py) bridged to an executor and the run directory.

search.py decides; this module hands each rung of an iteration's proposals to the
executor as jobs (one rung of all T steps without racing), and as each proposal's result
arrives (it travels with the proposal's event) saves what may still be needed, journals
it, and, when an iteration has chosen, promotes the chosen proposal to the iteration's
network and hands its weights to the next iteration.

A raced proposal's rung leaves, besides its record, its per-image correctness (the next
rung's noise rule reads it) and, when it stopped short of T, its fine-tune's progress
(``GROUP.rungR.progress.pt``), so that a resumed run continues it from there.
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
from .files import write_bytes_atomic
from .jobs import ProposalJob, ProposalResult, Training
from .model import read_state_dict
from .racing import Racing, Rung
from .records import IterationRecord, ProposalRecord
from .rundir import iteration_name, proposal_name
from .search import (
    Child,
    Evaluated,
    Event,
    Iteration,
    Proposal,
    Schedule,
    Start,
    netadapt,
)
from .spec import NetworkSpec

State = dict[str, torch.Tensor]


def correct_name(weights: str) -> str:
    """Where the per-holdout-image correctness of a proposal's weights is kept."""
    return weights.removesuffix(".pt") + ".correct.pt"


def rung_name(p: Proposal, what: str) -> str:
    """A raced proposal's file of one rung short of T: ``what`` is correct or progress."""
    return proposal_name(p.iteration, p.group).removesuffix(".pt") + f".rung{p.rung}.{what}.pt"


@dataclass
class _Parent:
    """The network an iteration starts from: handed over in memory by the promotion of
    the previous iteration, read from the run only when a resumed run starts mid-search."""

    iteration: int
    spec: NetworkSpec
    state: State


def run_loop(ctx: SearchContext, executor: Executor, start: Start, history: list[Event],
             until: int | None = None) -> tuple[list[Iteration], float]:
    """Run (or resume, after ``history``) the proposal loop until every budget is met,
    or (``until``) that iteration is chosen. Returns this session's iterations and the
    loop's wall time in seconds."""
    parent: _Parent | None = None  # the network the next iteration starts from
    best_saved = _best_saved(ctx, history)
    now = dict(start.resources)
    for event in history:
        if isinstance(event, Iteration):
            now = dict(event.chosen.resources)
    ctx.observer.loop_started(start, ctx.budgets, now)

    def evaluate_many(iteration: int, rung: Rung, children: Sequence[Child]
                      ) -> Iterator[Evaluated]:
        nonlocal parent
        if parent is None or parent.iteration != iteration:
            parent = _read_parent(ctx, iteration)
        yield from _evaluate(ctx, executor, parent, rung, children)

    cfg = ctx.config
    racing = Racing(lambda a, b: _paired(ctx, a, b), finalists=cfg.finalists) \
        if cfg.racing else None
    chosen: list[Iteration] = []
    started = time.perf_counter()
    for event in netadapt(start, ctx.budgets, ctx.predict_ms, evaluate_many,
                          Schedule.named(cfg.schedule, cfg.step), cfg.criterion, history,
                          steps=cfg.short_term_steps, racing=racing):
        if isinstance(event, Proposal):
            _save_proposal(ctx, event, best_saved)
            ctx.observer.proposal(event)
        else:
            parent = _promote(ctx, event)
            chosen.append(event)
            ctx.observer.iteration(event)
            if until is not None and event.iteration >= until:
                break
    seconds = time.perf_counter() - started
    ctx.observer.loop_finished()
    return chosen, seconds


def _evaluate(ctx: SearchContext, executor: Executor, parent: _Parent, rung: Rung,
              children: Sequence[Child]) -> Iterator[Evaluated]:
    """Hand a rung of an iteration's proposals to the executor as jobs; yield each one's
    accuracy and whole result as it arrives. Every proposal of an iteration sees the same
    training and BN batches."""
    cfg, iteration = ctx.config, parent.iteration
    training = Training(cfg.short_term_steps, cfg.lr, cfg.batch_size, ctx.torch_device,
                        cfg.threads)
    jobs = [ProposalJob(iteration, c.group, parent.spec, c.spec, ctx.seed_for(iteration),
                        training, ctx.data_source,
                        until=rung.until if cfg.racing else None,
                        progress=_progress(ctx, c.previous) if rung.start else None,
                        holdout_stride=rung.stride)
            for c in children]
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


def _progress(ctx: SearchContext, previous: Proposal | None) -> bytes:
    """A raced proposal's fine-tune as its previous rung left it: handed over in memory,
    or read back after a resume."""
    assert previous is not None
    if isinstance(previous.result, ProposalResult) and previous.result.progress is not None:
        return previous.result.progress
    return (ctx.run.path / rung_name(previous, "progress")).read_bytes()


def _correct(ctx: SearchContext, p: Proposal) -> torch.Tensor:
    """A proposal's per-holdout-image correctness in its rung."""
    if isinstance(p.result, ProposalResult):
        return p.result.correct
    name = correct_name(proposal_name(p.iteration, p.group)) if _final(ctx, p) \
        else rung_name(p, "correct")
    return read_state_dict(ctx.run.path / name)["correct"]


def _paired(ctx: SearchContext, a: Proposal, b: Proposal) -> tuple[float, float]:
    """``a``'s holdout margin over ``b``, paired on the same images, and its SE."""
    from .train import paired_margin

    return paired_margin(_correct(ctx, a), _correct(ctx, b))


def _final(ctx: SearchContext, p: Proposal) -> bool:
    """Whether ``p`` was scored after all T steps: the iteration chooses among those."""
    return p.steps is None or p.steps == ctx.config.short_term_steps


def _best_saved(ctx: SearchContext, history: list[Event]) -> dict[int, float]:
    """The best holdout accuracy saved so far in each iteration (see _save_proposal);
    only proposals that had all T steps count (``steps`` None: a run without racing)."""
    best: dict[int, float] = {}
    for event in history:
        if isinstance(event, Proposal) and _final(ctx, event):
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
    if not _final(ctx, event):  # a rung short of T: what the race and a resume need
        ctx.run.save_state(rung_name(event, "correct"), {"correct": job.correct})
        if job.progress is not None:
            path = ctx.run.weights_path(rung_name(event, "progress"))
            write_bytes_atomic(path, job.progress)
    else:
        name = proposal_name(event.iteration, event.group)
        ctx.run.save_state(correct_name(name), {"correct": job.correct})
        best = best_saved.get(event.iteration, -math.inf)
        if ctx.config.criterion != "accuracy" or event.accuracy >= best:
            ctx.run.save_state(name, job.state)
            best_saved[event.iteration] = max(best, event.accuracy)
    ctx.journal(ProposalRecord.of(event, holdout_px=ctx.data.resolution,
                                  holdout_images=len(job.correct),
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
    # The proposals' weights and rung progress go; their per-image correctness stays (a
    # few KB each), so selection noise can be studied afterwards.
    folder = ctx.run.path / Path(weights).parent
    for path in folder.glob("*.pt"):
        if not path.name.endswith(".correct.pt"):
            path.unlink(missing_ok=True)
    ctx.run.write_csv()
    ctx.journal_changed(final=False)
    return _Parent(p.iteration + 1, p.spec, state)
