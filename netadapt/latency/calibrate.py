"""Calibration: what turns a table's sum of entries into a network's end-to-end latency.

Entries are timed alone, and a network is more (or less) than the sum of its pieces
timed alone: each entry timed alone converts its input into onnxruntime's blocked layout
and back, and pays a session call and its input and output copies, which the whole
network pays once. So a prediction is factor x (sum of entries - boundary x their input
elements - per_entry x their number), the three fitted per seed structure to the seed
and reduced variants of it timed end to end (see fit_calibration; docs/latency.md
describes the protocol).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import LatencyError
from ..spec import NetworkSpec
from .devices import Protocol
from .graphs import entry_keys, network_input_shape, network_model
from .measure import Model, fast_spread
from .table import LatencyTable, input_elements_m
from .timers import Timer, time_burst

# Fewer networks than this fit the factor alone (a seed covered at its multipliers only).
MIN_BOUNDARY_FIT = 12
# The random seed of the calibration's variants: a validation draws with other seeds,
# so it measures networks the calibration was not fitted to.
CALIBRATION_RNG_SEED = 1000


def random_variants(seed: NetworkSpec, n: int, rng_seed: int = 0,
                    deep: bool = False) -> list[NetworkSpec]:
    """Reduced variants as the search makes them: each group independently, with
    probability 1/2, cut to a random multiple of 8 between a quarter of its width and
    its width. ``deep``: with probability 4/5, to any multiple of 8 up to its width
    (what low budgets and uniform baselines reach). Distinct from the seed and from
    each other."""
    def cut(rng: random.Random, width: int) -> int | None:
        if rng.random() >= (0.8 if deep else 0.5):
            return None
        low = 8 if deep else max(8, (width // 4 + 7) // 8 * 8)
        return rng.randrange(low, width + 1, 8)
    return _variants(seed, n, rng_seed, cut)


def lopsided_variants(seed: NetworkSpec, n: int, rng_seed: int = 0) -> list[NetworkSpec]:
    """Reduced variants as a search ends: each group independently, with probability
    1/3, cut deep (to a random multiple of 8 up to a quarter of its width), the others
    untouched; at least one group cut. Distinct from the seed and from each other."""
    def cut(rng: random.Random, width: int) -> int | None:
        if rng.random() >= 1 / 3:
            return None
        return rng.randrange(8, max(8, width // 4 // 8 * 8) + 1, 8)
    return _variants(seed, n, rng_seed, cut)


def _variants(seed: NetworkSpec, n: int, rng_seed: int,
              cut: Callable[[random.Random, int], int | None]) -> list[NetworkSpec]:
    """``n`` distinct variants of ``seed`` (none the seed itself), each group's width
    drawn by ``cut`` (None: left as it is), in the order the draws make them."""
    rng = random.Random(rng_seed)
    variants: list[NetworkSpec] = []
    seen = {seed}
    while len(variants) < n:
        spec = seed
        for g in seed.groups:
            width = cut(rng, g.width)
            if width is not None:
                spec = spec.with_group_width(g.name, width)
        if spec not in seen:
            seen.add(spec)
            variants.append(dataclasses.replace(spec, name=f"{seed.name}_v{len(variants)}"))
    return variants


def mixed_variants(seed: NetworkSpec, n: int, rng_seed: int) -> list[NetworkSpec]:
    """The networks a calibration is fitted to and a validation times, a third each: as
    the search makes them early (random_variants); deep (every group likely cut, down
    to 8 channels; named ``..._deep``), as low budgets and the baselines reach; and
    lopsided (a few groups cut deep, the rest untouched; ``..._lopsided``), as a search
    ends. Fitted to the first kind alone, a table mispredicted a width multiplier x0.41
    by 15-40% at 64 px (README "Latency tables"); the search's results are lopsided."""
    third = n // 3
    return random_variants(seed, n - 2 * third, rng_seed) + [
        dataclasses.replace(v, name=f"{v.name}_deep")
        for v in random_variants(seed, third, rng_seed + 1, deep=True)] + [
        dataclasses.replace(v, name=f"{v.name}_lopsided")
        for v in lopsided_variants(seed, third, rng_seed + 2)]


def calibration_variants(seed: NetworkSpec, n: int) -> list[NetworkSpec]:
    """The ``n`` variants a grid seed's calibration is fitted to (CALIBRATION_RNG_SEED)."""
    return mixed_variants(seed, n, CALIBRATION_RNG_SEED)


def fit_calibration(x: np.ndarray, e: np.ndarray, n: np.ndarray, y: np.ndarray,
                    w: np.ndarray) -> tuple[float, float, float]:
    """(factor, boundary, per_entry): end to end ~ factor x (table sum - boundary x input
    elements - per_entry x entries), least squares on relative error, weighted.

    ``boundary`` >= 0 is what an entry timed alone pays per million elements of its
    input beyond its share in the network (the input converted into onnxruntime's
    blocked layout and back, which the whole network does once); ``per_entry`` >= 0 the
    fixed cost of running an entry alone (session call, input and output copies), which
    does not shrink with the widths: a factor alone prices it into thin networks, which
    at 64 px made a network at 40% of the seed's widths look 15-40% slower than it runs
    (README "Latency tables"). With too few networks only the factor is fitted; of the
    fits whose costs come out >= 0 the one with the smallest error is kept.
    """
    sw = np.sqrt(w)
    columns = {"boundary": e, "per_entry": n}
    subsets = ([["boundary", "per_entry"], ["boundary"], ["per_entry"], []]
               if len(y) >= MIN_BOUNDARY_FIT else [[]])
    best: tuple[float, tuple[float, float, float]] | None = None
    for names in subsets:
        design = np.c_[(x, *(columns[k] for k in names))] / y[:, None]
        coef, *_ = np.linalg.lstsq(design * sw[:, None], sw, rcond=None)
        if coef[0] <= 0 or any(c > 0 for c in coef[1:]):
            continue  # an entry cheaper alone than in the network: not physical
        costs = dict(zip(names, -coef[1:] / coef[0]))
        error = float(np.sum(w * (design @ coef - 1) ** 2))
        if best is None or error < best[0] - 1e-12:
            best = (error, (float(coef[0]), float(costs.get("boundary", 0.0)),
                            float(costs.get("per_entry", 0.0))))
    if best is None:
        raise LatencyError("latency calibration failed: a non-positive factor (table sums "
                           "<= 0?); rebuild the table with --fresh")
    return best[1]



class SeedBursts:
    """(seed end to end) / (reference block), timed in bursts through a profile run and
    handed to ``record`` (the journal), so the calibration sees the host in all the
    states the entries were timed in, not just the last minute's."""

    def __init__(self, record: Callable[[str, float], None], timer: Timer,
                 ref_model: Model, seeds: dict[str, NetworkSpec], rounds: int) -> None:
        self.record, self.timer, self.ref_model = record, timer, ref_model
        self.seeds, self.rounds = seeds, rounds
        self.count = 0  # bursts so far: the order alternates (timers.balanced_order)

    def burst(self) -> None:
        """Time every seed once, round-robin with the reference block."""
        for name, seed in self.seeds.items():
            shape = network_input_shape(seed)
            med = time_burst(self.timer, [self.ref_model, (network_model(seed), shape)],
                             self.rounds, self.count)
            self.record(name, float(med[1] / med[0]))
        self.count += 1


@dataclasses.dataclass
class _Bursts:
    """End-to-end timings of one calibration: the seed / reference-block ratio of every
    burst, the seed's raw fast time in each, and each variant's time relative to the
    seed in the same burst (by variant index)."""

    ratios: list[float]
    raw: list[float]
    relative: dict[int, list[float]]


def _time_bursts(seed: NetworkSpec, variants: Sequence[NetworkSpec], timer: Timer,
                 ref_model: Model, proto: Protocol) -> _Bursts:
    """``proto.calibration_bursts`` round-robins of the reference block, the seed and
    8 of the variants (in turn): a variant is timed beside the seed, so it is known
    relative to the seed with the host's drift cancelled. Each variant is in two bursts
    of opposite order (timers.balanced_order; 8 a burst, 24 variants, 6 bursts)."""
    shape = network_input_shape(seed)
    seed_model = (network_model(seed), shape)
    bursts = _Bursts([], [], {})
    for b in range(proto.calibration_bursts):
        idx = [(b * 8 + j) % len(variants) for j in range(min(8, len(variants)))] \
            if variants else []
        models = [ref_model, seed_model] + [(network_model(variants[i]), shape) for i in idx]
        med = time_burst(timer, models, proto.calibration_rounds, b)
        bursts.ratios.append(float(med[1] / med[0]))
        bursts.raw.append(float(med[1]))
        for i, m in zip(idx, med[2:]):
            bursts.relative.setdefault(i, []).append(float(m / med[1]))
    return bursts


def calibrate(table: LatencyTable, seed: NetworkSpec, timer: Timer, ref_model: Model,
              base_ms: float, proto: Protocol, earlier_ratios: Sequence[float] = (),
              variants: Sequence[NetworkSpec] | None = None) -> dict[str, Any]:
    """The factor (and boundary and per-entry costs, see fit_calibration) that turn a
    sum of entries into end-to-end milliseconds, with how well they fit: the seed's
    entry in meta.json's ``seeds``.

    The seed's level: median of (seed end to end / reference block) over bursts spread
    through the profile run (``earlier_ratios``) and at its end, x the reference's base
    ms. The factor is then fitted (least squares on relative error) to the seed and to
    ``proto.calibration_variants`` reduced variants (calibration_variants), each timed
    end to end in the same round-robin as the seed: a factor from the seed alone is
    biased for the smaller networks the search actually scores. ``variants`` replace
    those (a seed covered at its width multipliers only is fitted to those).
    """
    if variants is None:
        variants = calibration_variants(seed, proto.calibration_variants)
    bursts = _time_bursts(seed, variants, timer, ref_model, proto)
    ratios = list(earlier_ratios) + bursts.ratios
    relative = bursts.relative
    seed_ms = float(np.median(ratios)) * base_ms
    networks = [seed] + [variants[i] for i in sorted(relative)]
    x = np.array([sum(table.entry_ms(k) or np.nan for _, k in entry_keys(s)) for s in networks])
    e = np.array([input_elements_m(s) for s in networks])
    n = np.array([len(entry_keys(s)) for s in networks], dtype=float)
    y = np.array([seed_ms] + [float(np.median(relative[i])) * seed_ms for i in sorted(relative)])
    # the seed weighs as much as a quarter of the variants: its level anchors the table
    w = np.array([max(1.0, len(relative) / 4)] + [1.0] * len(relative))
    factor, boundary, per_entry = fit_calibration(x, e, n, y, w)
    fit = np.abs(factor * (x - boundary * e - per_entry * n) / y - 1)
    return {"factor": factor, "boundary_ms_per_m": boundary, "per_entry_ms": per_entry,
            "factor_seed_only": seed_ms / x[0], "seed_e2e_ms": seed_ms,
            "table_sum_ms": float(x[0]), "calibration_variants": len(relative),
            "fit_median_abs_error": float(np.median(fit[1:])) if len(fit) > 1 else 0.0,
            "seed_ratio_bursts": len(ratios), "seed_ratio_spread": fast_spread(np.asarray(ratios)),
            "e2e_raw_ms_final_bursts": [round(r, 4) for r in bursts.raw]}
