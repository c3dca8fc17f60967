"""How racing would have chosen, replayed on a search run that evaluated every proposal
fully (--no-racing): per iteration, which proposal each racing setting picks, the
training steps it spends, and its regret (the full-T holdout accuracy of full
evaluation's pick minus that of racing's pick), on the same parents, batches and holdout.

    python benchmarks/race_replay.py RUN [--eta 2 3] [--z 0 1 1.96] [--finalists 1 3]
        [--rung-holdout 1 3] [--none-dropped final climb] [--small-field deep shallow]

A raced proposal's score after k steps is what its first k steps of the T-step
fine-tune give (the race continues that fine-tune bit for bit), so each iteration's
proposals are re-trained here only up to the rungs' step counts (0 = inherited weights,
BN re-estimated) with the run's own iteration seed; their T-step scores and per-image
correctness are the run's. z is the noise rule's: a proposal whose paired margin behind
the rung's leader is at most z SE is kept beyond the top 1/eta (z = 0: only exact ties).
finalists: how many proposals the rungs cut down to before the last gets all T steps.
rung-holdout k: the rungs before the final one score every k-th holdout image (the final
rung always scores the whole holdout); 1 means all; the default is the search's own.
small-field: "deep" (the search's own) starts a field of eta or fewer one rung earlier
than its j cuts need, at T / eta^(j+1); "shallow" (the earlier rule) at T / eta^j.
none-dropped: after a rung that dropped no proposal, "final" sends them all to T steps,
"climb" (the search's own) goes on to the next rung of the schedule (T / eta^j).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from netadapt.config import SearchConfig
from netadapt.context import SearchContext, open_context
from netadapt.jobs import ProposalJob, Training, run_proposal
from netadapt.loop import correct_name
from netadapt.model import read_state_dict
from netadapt.racing import STRIDE, Racing, Rung
from netadapt.rundir import RunDir, iteration_name, proposal_name
from netadapt.search import Child, Evaluated, Iteration, Proposal, Race, rank
from netadapt.spec import spec_from_dict
from netadapt.train import paired_margin


class Scores:
    """Each proposal's (holdout accuracy, per-image correctness) after k steps."""

    def __init__(self, ctx: SearchContext, it: Iteration, proposals: list[Proposal]) -> None:
        self.ctx, self.it = ctx, it
        self.by_group = {p.group: p for p in proposals}
        if it.iteration == 1:
            self.parent, state = ctx.seed_spec, read_state_dict(ctx.run.path / "seed.pt")
        else:
            name = iteration_name(it.iteration - 1)
            self.parent = ctx.run.read_spec(f"{name}.yaml")
            state = read_state_dict(ctx.run.path / f"{name}.pt")
        self.state = state
        self.cache: dict[tuple[str, int], tuple[float, torch.Tensor]] = {}

    def __call__(self, group: str, steps: int, stride: int = 1
                 ) -> tuple[float, torch.Tensor]:
        """``group``'s score after ``steps``; short of T, on every ``stride``-th image."""
        cfg, T = self.ctx.config, self.ctx.config.short_term_steps
        if (group, steps) not in self.cache:
            p = self.by_group[group]
            if steps == T:  # the run's own result
                correct = read_state_dict(self.ctx.run.path / correct_name(
                    proposal_name(p.iteration, group)))["correct"]
                self.cache[(group, steps)] = (p.accuracy, correct)
            else:
                job = ProposalJob(p.iteration, group, self.parent, p.spec,
                                  self.ctx.seed_for(p.iteration),
                                  Training(T, cfg.lr, cfg.batch_size, self.ctx.torch_device,
                                           cfg.threads), self.ctx.data_source, until=steps)
                result = run_proposal(job, self.state)
                self.cache[(group, steps)] = (result.accuracy, result.correct)
        accuracy, correct = self.cache[(group, steps)]
        if steps < T:  # Split.every on the run's own per-image correctness
            correct = correct[::stride]
            accuracy = float(correct.float().mean())
        return accuracy, correct

    def paired(self, a: Proposal, b: Proposal, stride: int) -> tuple[float, float]:
        """a's holdout margin over b at the steps each has had, paired on the images a
        rung with ``stride`` scores."""
        assert a.steps is not None and b.steps is not None
        return paired_margin(self(a.group, a.steps, stride)[1],
                             self(b.group, b.steps, stride)[1])


@dataclass(frozen=True)
class ShallowStart(Racing):
    """The earlier rule: a field of eta or fewer starts at T / eta^j, where its j cuts
    need it; the search now starts it one rung earlier (racing.Racing.rung)."""

    def rung(self, index: int, start: int, survivors: int, steps: int) -> Rung:
        first = super().rung(index, start, survivors, steps)
        if index > 0 or first.final or survivors > self.eta:
            return first
        until = round(steps / self.eta ** self.cuts(survivors))
        return Rung(index, start, until, False, self.stride)


@dataclass(frozen=True)
class AllToT(ShallowStart):
    """The earlier rule: after a rung that dropped none (every proposal within noise of
    the leader), the whole field goes to T. The search now goes on to the schedule's next
    rung instead (racing.Racing.rung)."""

    last: list[int] = field(default_factory=list)  # survivors of this race's rungs so far

    def rung(self, index: int, start: int, survivors: int, steps: int) -> Rung:
        if index == 0:
            self.last.clear()
        none_dropped = bool(self.last) and self.last[-1] == survivors
        self.last.append(survivors)
        if none_dropped:
            return Rung(index, start, steps, True)
        return super().rung(index, start, survivors, steps)


def race(scores: Scores, proposals: list[Proposal], racing: Racing, criterion: str,
         parent_accuracy: float, parent_resources: dict[str, float], resource: str
         ) -> tuple[str, int, int]:
    """The group racing picks, the training steps it spends and the holdout images it
    scores: the search's own race (search.Race), its proposals scored from ``scores``."""
    T = scores.ctx.config.short_term_steps
    spent = scored = 0

    def evaluate_many(iteration: int, rung: Rung, children: Sequence[Child]
                      ) -> Iterator[Evaluated]:
        nonlocal spent, scored
        spent += len(children) * (rung.until - rung.start)
        for child in children:
            accuracy, correct = scores(child.group, rung.until, rung.stride)
            scored += len(correct)
            yield child.group, accuracy, None

    candidates = [(p.group, p.width_to, p.spec, p.resources[resource]) for p in proposals]
    running = Race(scores.it.iteration, scores.parent, parent_resources, candidates,
                   scores.ctx.predict_ms, {}).run(evaluate_many, racing, T,
                                                   criterion, parent_accuracy, resource)
    finals = yield_all(running)
    best = rank(finals, criterion, parent_accuracy, parent_resources, resource)[0][0]
    return best.group, spent, scored


def yield_all(generator: Generator[Proposal, None, list[Proposal]]) -> list[Proposal]:
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--eta", type=int, nargs="+", default=[3])
    parser.add_argument("--z", type=float, nargs="+", default=[0.0, 1.0, 1.96])
    parser.add_argument("--finalists", type=int, nargs="+", default=[1])
    parser.add_argument("--rung-holdout", type=int, nargs="+", default=[STRIDE])
    parser.add_argument("--none-dropped", nargs="+", choices=["final", "climb"],
                        default=["climb"])
    parser.add_argument("--small-field", nargs="+", choices=["deep", "shallow"],
                        default=["deep"])
    args = parser.parse_args()
    run = RunDir.open(args.run)
    config = SearchConfig.from_json(run.config["search"])
    ctx = open_context(config, run, spec_from_dict(run.config["seed_spec"]))
    events = run.events(ctx.seed_spec)
    seed = run.seed_record()
    assert seed is not None
    accuracy = seed.accuracy
    resources = {"latency_ms": seed.latency_ms, "params": seed.params, "macs": seed.macs}
    rows, T = [], config.short_term_steps
    for it in (e for e in events if isinstance(e, Iteration)):
        proposals = [e for e in events if isinstance(e, Proposal) and e.iteration == it.iteration]
        scores = Scores(ctx, it, proposals)
        resource = next(iter(it.target))
        best_T, full_steps = max(p.accuracy for p in proposals), len(proposals) * T
        full_scored = len(proposals) * len(scores(proposals[0].group, T)[1])

        for eta, z, finalists, rung_holdout, none_dropped, small_field in itertools.product(
                args.eta, args.z, args.finalists, args.rung_holdout, args.none_dropped,
                args.small_field):
            if none_dropped == "final" and small_field == "deep":
                continue  # AllToT replays the earlier rules only as they were
            kind = (AllToT if none_dropped == "final"
                    else ShallowStart if small_field == "shallow" else Racing)
            racing = kind(partial(scores.paired, stride=rung_holdout), eta, z, finalists,
                          stride=rung_holdout)
            pick, spent, scored = race(scores, proposals, racing, config.criterion,
                                       accuracy, resources, resource)
            rows.append({"iteration": it.iteration, "proposals": len(proposals),
                         "eta": eta, "z": z, "finalists": finalists,
                         "rung_holdout": rung_holdout, "none_dropped": none_dropped,
                         "small_field": small_field,
                         "full_pick": it.chosen.group, "pick": pick,
                         "same": pick == it.chosen.group,
                         "regret": round(best_T - scores.by_group[pick].accuracy, 4),
                         "steps": spent, "full_steps": full_steps,
                         "scored_images": scored, "full_scored": full_scored})
        accuracy, resources = it.chosen.accuracy, it.chosen.resources
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print("\nover the run's iterations:")
    summary = table.groupby(["eta", "z", "finalists", "rung_holdout", "none_dropped",
                             "small_field"]).agg(
        iterations=("same", "size"), same=("same", "sum"), mean_regret=("regret", "mean"),
        max_regret=("regret", "max"), steps=("steps", "sum"), full_steps=("full_steps", "sum"),
        scored_images=("scored_images", "sum"), full_scored=("full_scored", "sum"))
    summary["steps_share"] = (summary["steps"] / summary["full_steps"]).round(3)
    summary["scoring_share"] = (summary["scored_images"] / summary["full_scored"]).round(3)
    print(summary.to_string())


if __name__ == "__main__":
    main()
