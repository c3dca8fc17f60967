"""Racing (successive halving) inside one NetAdapt iteration: how many of the T short-term
steps each proposal gets before the iteration chooses. Decisions only; nothing here
trains.

    rung 0   every proposal: inherited weights, BN re-estimated, no fine-tuning
             (EagleEye's adaptive-BN score); keep the best 1/eta
    rung k   the survivors continue from their own weights, up to T / eta^j steps, where
             j more cuts are still needed; keep the best 1/eta ...
    final    the survivors reach T steps; the iteration chooses among them only

A survivor continues its own T-step fine-tune (same learning-rate schedule, same batches,
its optimizer state carried over), so whatever wins was trained exactly as full
evaluation would have trained it; racing only decides which proposals get that far.
A proposal whose holdout accuracy is within noise of the rung's leader is kept even when
it ranks below the top 1/eta: "within noise" means the paired 95% interval of the
leader's margin over it (on the same holdout images) includes zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .search import Proposal

ETA = 3  # keep the best third at each rung (the successive-halving default)
Z95 = 1.96


@dataclass(frozen=True)
class Rung:
    """One round of an iteration's race: every proposal in it has had ``start`` steps of
    its short-term fine-tune and is trained to ``until``, then scored."""

    index: int
    start: int
    until: int
    final: bool  # until == T: the iteration chooses among this rung's proposals

    def __str__(self) -> str:
        return f"rung {self.index} ({self.until} steps)"


def full_rung(steps: int) -> Rung:
    """The one rung of an iteration without racing: every proposal gets all T steps."""
    return Rung(0, 0, steps, True)


# (a, b) -> (a's holdout accuracy margin over b, paired on the same images; its SE)
Paired = Callable[["Proposal", "Proposal"], tuple[float, float]]


@dataclass(frozen=True)
class Racing:
    """Successive halving with keep ratio 1/``eta``; ``paired`` measures a margin's noise."""

    paired: Paired
    eta: int = ETA
    z: float = Z95

    def rung(self, index: int, start: int, survivors: int, steps: int,
             dropped: bool = True) -> Rung:
        """The next rung for ``survivors`` proposals that have had ``start`` of the T =
        ``steps`` short-term steps. Eta or fewer proposals do not race: a zero-step rung
        would keep only one of them (replayed on a default run, dropping one of two that
        way cost up to 8 points of holdout accuracy). When the previous rung dropped none
        (all within noise of each other), more rungs would only cost more scoring: the next
        one is final."""
        if survivors <= self.eta or not dropped:  # a race of eta or fewer: one rung
            return Rung(index, start, steps, True)
        if index == 0 and steps > 0:
            return Rung(0, 0, 0, False)
        cuts = math.ceil(math.log(survivors) / math.log(self.eta) - 1e-9) - 1
        until = max(start + 1, round(steps / self.eta ** cuts))
        return Rung(index, start, min(until, steps), until >= steps)

    def survivors(self, ranked: Sequence[Proposal]) -> list[Proposal]:
        """The proposals of a finished rung that go on, best first: the top 1/eta
        (at least one), and every other one within noise of the leader."""
        count = max(1, math.ceil(len(ranked) / self.eta))
        leader = ranked[0]
        kept = list(ranked[:count])
        for p in ranked[count:]:
            margin, se = self.paired(leader, p)
            if margin <= self.z * se:
                kept.append(p)
        return kept
