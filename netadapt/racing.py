"""Racing (successive halving) inside one NetAdapt iteration: how many of the T short-term
steps each proposal gets before the iteration chooses. Decisions only; nothing here
trains.

    rung 0   more than eta proposals: inherited weights, BN re-estimated, no
             fine-tuning (EagleEye's adaptive-BN score); keep the best 1/eta.
             eta or fewer: a few steps (T / eta^(j+1)), never zero
    rung k   the survivors continue from their own weights, up to T / eta^j steps, where
             j more cuts are still needed to leave ``finalists``; keep the best 1/eta ...
    final    the finalists reach T steps; the iteration chooses among them only

A rung short of T only decides which proposals go on, so it scores every ``stride``-th
holdout image (a third); the final rung scores the whole holdout, and the iteration's
choice is made on that alone.

A survivor continues its own T-step fine-tune (same learning-rate schedule, same batches,
its optimizer state carried over), so whatever wins was trained exactly as full
evaluation would have trained it; racing only decides which proposals get that far.
A proposal whose holdout accuracy is within noise of the rung's leader is kept even when
it ranks below the top 1/eta: "within noise" means its paired margin behind the leader
(on the same holdout images) is under Z standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .search import Proposal

ETA = 3  # keep the best third at each rung (the successive-halving default)
# Proposals that all get T steps: one, as in successive halving. A field of eta or fewer
# is first cut after a few steps (T / eta^2 for two or three), never at zero: the
# zero-step score alone dropped the T-step winner of a two-proposal race by 8 points
# (docs/benchmarks.md, Racing).
FINALISTS = 1
# Within one standard error of the leader is noise. Replayed on a default run
# (docs/benchmarks.md, Racing), z = 1.96 cost 46% of full evaluation's steps and z = 1
# 39%, for the same mean regret within 0.02 points; z = 0 (rank alone) 32%.
Z = 1.0
# Rungs short of T score every third holdout image. Replayed on two 64 px runs
# (docs/benchmarks.md, Racing), its picks stayed within noise of full evaluation's (mean
# regret 0.05-0.06 points) for the same steps, and racing's scoring fell from 1.7-2.0x
# full evaluation's images to 0.8-0.9x: at a 20-step T, scoring every rung on the whole
# holdout cost more than the training racing saved.
STRIDE = 3


@dataclass(frozen=True)
class Rung:
    """One round of an iteration's race: every proposal in it has had ``start`` steps of
    its short-term fine-tune and is trained to ``until``, then scored on every
    ``stride``-th holdout image."""

    index: int
    start: int
    until: int
    final: bool  # until == T: the iteration chooses among this rung's proposals
    stride: int = 1  # the whole holdout for a final rung

    def __str__(self) -> str:
        return f"rung {self.index} ({self.until} steps)"


def full_rung(steps: int) -> Rung:
    """The one rung of an iteration without racing: every proposal gets all T steps."""
    return Rung(0, 0, steps, True)


# (a, b) -> (a's holdout accuracy margin over b, paired on the same images; its SE)
Paired = Callable[["Proposal", "Proposal"], tuple[float, float]]


@dataclass(frozen=True)
class Racing:
    """Successive halving with keep ratio 1/``eta``; ``paired`` measures a margin's noise;
    a rung short of T scores every ``stride``-th holdout image."""

    paired: Paired
    eta: int = ETA
    z: float = Z
    finalists: int = FINALISTS
    stride: int = STRIDE

    def rung(self, index: int, start: int, survivors: int, steps: int) -> Rung:
        """The next rung for ``survivors`` proposals that have had ``start`` of the T =
        ``steps`` short-term steps. Only a field of more than eta starts with the
        zero-step rung; a smaller one starts a rung earlier than its cuts need (two
        proposals at T / 9, not T / 3): replayed, that spent fewer steps on the same
        picks. A rung that dropped none (all within noise of each other) is followed by
        the schedule's next, longer rung, not by all T steps for the whole field:
        replayed, that saved steps without a worse pick (docs/benchmarks.md, Racing)."""
        if survivors <= self.finalists:
            return Rung(index, start, steps, True)
        if index == 0 and steps > 0 and survivors > self.eta:
            return Rung(0, 0, 0, False, self.stride)
        cuts = self.cuts(survivors)
        if index == 0:  # too few for the zero-step rung: start one rung earlier instead
            cuts += 1
        until = round(steps / self.eta ** cuts)
        while until <= start and cuts > 0:  # a rung kept more than its 1/eta (noise)
            cuts -= 1
            until = round(steps / self.eta ** cuts)
        until = max(start + 1, until)
        final = until >= steps
        return Rung(index, start, min(until, steps), final, 1 if final else self.stride)

    def cuts(self, survivors: int) -> int:
        """How many 1/eta cuts take ``survivors`` proposals down to the finalists."""
        return math.ceil(math.log(survivors / self.finalists) / math.log(self.eta) - 1e-9)

    def survivors(self, ranked: Sequence[Proposal]) -> list[Proposal]:
        """The proposals of a finished rung that go on, best first: the top 1/eta
        (at least ``finalists``), and every other one within noise of the leader."""
        count = max(self.finalists, math.ceil(len(ranked) / self.eta))
        leader = ranked[0]
        kept = list(ranked[:count])
        for p in ranked[count:]:
            margin, se = self.paired(leader, p)
            if margin <= self.z * se:
                kept.append(p)
        return kept
