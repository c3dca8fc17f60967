"""What a search shows while it runs, kept out of the search: progress bars and the live
plot are observers the CLI attaches. The search calls the hooks; the base class does
nothing, so a search without an observer (a test, a benchmark script) is quiet."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

from .search import Budget, Iteration, Proposal, Start, format_resource

# (step, loss) after each training step of a long phase
StepCallback = Callable[[int, float], None]
# during the loop the plot is redrawn at most this often (a redraw costs ~0.5 s, loop
# overhead); always at the end of a phase
PLOT_EVERY_S = 60.0


class Observer:
    """The hooks a search calls; each does nothing here."""

    def training(self, desc: str, total: int) -> StepCallback | None:
        """A long training phase of ``total`` steps begins; return a step callback."""
        return None

    def loop_started(self, start: Start, budgets: Sequence[Budget],
                     now: dict[str, float]) -> None:
        """The proposal loop begins (or resumes) with the network at resources ``now``."""

    def proposal(self, event: Proposal) -> None:
        """A proposal was evaluated and journaled."""

    def iteration(self, event: Iteration) -> None:
        """An iteration chose its network (journaled)."""

    def loop_finished(self) -> None:
        """The proposal loop ended."""

    def measured(self, text: str) -> None:
        """The loop's network was timed on the device (measured.py); ``text`` says how
        it compares with the budget and what happens next."""

    def journal_changed(self, run: Path, budgets: Sequence[Budget], final: bool) -> None:
        """New records are in ``run``'s journal; ``final``: a phase ended."""


class Observers(Observer):
    """Several observers, each told everything in turn."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def training(self, desc: str, total: int) -> StepCallback | None:
        callbacks = [c for o in self.observers if (c := o.training(desc, total))]
        if not callbacks:
            return None

        def update(step: int, loss: float) -> None:
            for callback in callbacks:
                callback(step, loss)
        return update

    def loop_started(self, start: Start, budgets: Sequence[Budget],
                     now: dict[str, float]) -> None:
        for o in self.observers:
            o.loop_started(start, budgets, now)

    def proposal(self, event: Proposal) -> None:
        for o in self.observers:
            o.proposal(event)

    def iteration(self, event: Iteration) -> None:
        for o in self.observers:
            o.iteration(event)

    def loop_finished(self) -> None:
        for o in self.observers:
            o.loop_finished()

    def measured(self, text: str) -> None:
        for o in self.observers:
            o.measured(text)

    def journal_changed(self, run: Path, budgets: Sequence[Budget], final: bool) -> None:
        for o in self.observers:
            o.journal_changed(run, budgets, final)


class ProgressBars(Observer):
    """tqdm bars on stderr: one per training phase; in the loop, how much of the first
    budget's gap is closed (with an ETA) and the proposals evaluated, and a line per
    iteration."""

    def __init__(self) -> None:
        self._overall: tqdm | None = None
        self._proposals: tqdm | None = None
        self._start: dict[str, float] = {}
        self._budget: Budget | None = None
        self._gap = 0.0

    def training(self, desc: str, total: int) -> StepCallback | None:
        if total <= 0:
            return None
        bar = tqdm(total=total, desc=desc, unit="step", leave=False)

        def update(step: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
            if step >= total:
                bar.close()
        return update

    def loop_started(self, start: Start, budgets: Sequence[Budget],
                     now: dict[str, float]) -> None:
        budget = self._budget = budgets[0]
        self._start = start.resources
        self._gap = max(start.resources[budget.resource] - budget.limit, 1e-9)
        unit = "ms" if budget.resource == "latency_ms" else budget.resource  # params, macs
        done = min(self._gap, start.resources[budget.resource] - now[budget.resource])
        self._overall = tqdm(total=round(self._gap, 3), desc=f"{unit} to budget", unit=unit,
                             position=0, initial=round(done, 3),
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} "
                                        "{unit} [{elapsed}<{remaining}]")
        self._proposals = tqdm(desc="proposals", unit="proposal", leave=False, position=1)

    def proposal(self, event: Proposal) -> None:
        if self._proposals is not None:
            self._proposals.update()
            self._proposals.set_postfix_str(f"iter {event.iteration} {event.group} "
                                            f"{event.steps} steps acc {event.accuracy:.3f}")

    def iteration(self, event: Iteration) -> None:
        if self._overall is None or self._budget is None:
            return
        resource = self._budget.resource
        done = self._start[resource] - event.chosen.resources[resource]
        self._overall.update(round(min(self._gap, done), 3) - self._overall.n)
        c = event.chosen
        latency = format_resource("latency_ms", c.resources["latency_ms"])
        tqdm.write(f"iteration {event.iteration}: {c.group} {c.width_from}->{c.width_to}, "
                   f"{latency}, holdout {c.accuracy:.4f}")

    def loop_finished(self) -> None:
        for bar in (self._proposals, self._overall):
            if bar is not None:
                bar.close()

    def measured(self, text: str) -> None:
        tqdm.write(text)


class LivePlot(Observer):
    """Keeps RUN/accuracy_vs_latency.png up to date: at most once a minute during the
    loop (the first a minute into it), always when a phase ends."""

    def __init__(self, every_s: float = PLOT_EVERY_S) -> None:
        self.every_s = every_s
        self._plotted_at = -float("inf")

    def loop_started(self, start: Start, budgets: Sequence[Budget],
                     now: dict[str, float]) -> None:
        self._plotted_at = time.monotonic()

    def journal_changed(self, run: Path, budgets: Sequence[Budget], final: bool) -> None:
        from .report import plot_run

        now = time.monotonic()
        if not final and now - self._plotted_at < self.every_s:
            return
        self._plotted_at = now
        plot_run(run, budgets)
