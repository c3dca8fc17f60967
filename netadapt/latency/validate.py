"""Checking a table against the device: networks timed end to end, now.

``validate`` times random reduced variants of a seed and compares each with the table's
prediction (``netadapt profile --validate``); ``measure_e2e`` times one network
(``netadapt latency --measure``, the search's final check). Both time a reference
network in the same round-robin and report the timing relative to it, so the host's
drift between runs cancels (docs/latency.md describes the timing protocol).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..files import write_text_atomic
from ..spec import NetworkSpec, at_size
from .calibrate import mixed_variants
from .devices import Device
from .graphs import EntryKey, entry_model, input_shape, network_input_shape, network_model
from .table import LatencyTable, signature, table_paths
from .timers import Timer, make_timer, time_burst


def seed_e2e_ms(table: LatencyTable, seed: NetworkSpec) -> float:
    """The seed's end-to-end latency measured at calibration (else its prediction)."""
    for s in table.meta.get("seeds", []):
        if s.get("signature") == signature(seed) and "seed_e2e_ms" in s:
            return float(s["seed_e2e_ms"])
    return table.predict_ms(seed)


def validate(table: LatencyTable, device: Device, seed: NetworkSpec, n: int,
             timer: Timer | None = None, rng_seed: int = 0, progress: bool = True,
             per_chunk: int = 8, rounds: int = 60) -> tuple[dict[str, Any], pd.DataFrame]:
    """Measure ``n`` random reduced variants end to end and compare them with the
    table's predictions: (summary, one row per variant). A third are as the search
    makes them early (random_variants), a third deep (``deep`` in the frame), as low
    budgets and the baselines reach, a third lopsided (``lopsided``), as a search ends
    (calibrate.mixed_variants).

    Each chunk times the reference block, the seed and ``per_chunk`` variants
    round-robin. ``measured_ms`` = fast time(variant) / fast time(seed) in the same
    chunk x the seed's end-to-end latency measured at calibration: the seed, timed
    beside every variant, moves with the host's drift as the variant does, and the
    calibration's own error still counts. Also kept: ``vs_ref_block_ms`` (normalised by
    the reference block instead, which drifts differently from whole networks) and
    ``raw_ms`` (unnormalised, drift included). ``rng_seed`` must differ from
    CALIBRATION_RNG_SEED, or the variants are those the calibration was fitted to.
    """
    from tqdm import tqdm

    timer = timer or make_timer(device)
    timer.check()
    ref = EntryKey.from_columns(table.meta["reference"]["key"])
    base_ms = float(table.meta["reference"]["base_ms"])
    anchor_ms = seed_e2e_ms(table, seed)
    variants = mixed_variants(seed, n, rng_seed)
    rows = []
    ref_model = (entry_model(ref), input_shape(ref))
    shape = network_input_shape(seed)
    seed_model = (network_model(seed), shape)
    for c, i in enumerate(tqdm(range(0, n, per_chunk), disable=not progress, unit="chunk")):
        chunk = variants[i:i + per_chunk]
        models = [ref_model, seed_model] + [(network_model(v), shape) for v in chunk]
        med = time_burst(timer, models, rounds, c)
        for v, m in zip(chunk, med[2:]):
            rows.append({"variant": v.name, "predicted_ms": table.predict_ms(v),
                         "measured_ms": m / med[1] * anchor_ms,
                         "vs_ref_block_ms": m / med[0] * base_ms, "raw_ms": m,
                         "seed_raw_ms": med[1], "deep": v.name.endswith("_deep"),
                         "lopsided": v.name.endswith("_lopsided")})
    frame = pd.DataFrame(rows)
    frame["error"] = frame["predicted_ms"] / frame["measured_ms"] - 1
    return summarize(frame, table, seed, n), frame


def summarize(frame: pd.DataFrame, table: LatencyTable, seed: NetworkSpec, n: int
              ) -> dict[str, Any]:
    """A validation's errors (``validate``'s frame), overall, for the search-like, the
    deep and the lopsided variants, and normalised the two other ways (see validate)."""
    err = frame["error"].abs()
    raw_err = (frame["predicted_ms"] / frame["raw_ms"] - 1).abs()
    ref_err = (frame["predicted_ms"] / frame["vs_ref_block_ms"] - 1).abs()
    rank = frame["predicted_ms"].rank().corr(frame["measured_ms"].rank())
    return {
        "device": table.device, "seed": seed.name, "variants": n,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "median_abs_error": float(err.median()), "max_abs_error": float(err.max()),
        "within_5pct": float((err <= 0.05).mean()), "within_10pct": float((err <= 0.10).mean()),
        "spearman": float(rank), "mean_error": float(frame["error"].mean()),
        **{f"{part}_{k}": v for part, rows in (
            ("search_like", ~frame["deep"] & ~frame["lopsided"]), ("deep", frame["deep"]),
            ("lopsided", frame["lopsided"])) if rows.any()
           for k, v in (("median_abs_error", float(err[rows].median())),
                        ("max_abs_error", float(err[rows].max())),
                        ("within_5pct", float((err[rows] <= 0.05).mean())))},
        "median_abs_error_vs_ref_block": float(ref_err.median()),
        "median_abs_error_raw": float(raw_err.median()),
        "measured_range_ms": [float(frame["measured_ms"].min()),
                              float(frame["measured_ms"].max())],
        "seed_raw_ms_range": [float(frame["seed_raw_ms"].min()),
                              float(frame["seed_raw_ms"].max())],
    }


def save_validation(device: str, summary: dict[str, Any], frame: pd.DataFrame,
                    root: Path | None = None, suffix: str = "") -> Path:
    """Write ``validation_SEED{suffix}.csv`` (the frame) and ``.json`` (the summary)
    beside DEVICE's table; returns the .json's path."""
    folder = table_paths(device, root)[0].parent
    stem = folder / f"validation_{summary['seed']}{suffix}"
    write_text_atomic(stem.with_suffix(".csv"), frame.to_csv(index=False, float_format="%.5g"))
    write_text_atomic(stem.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    return stem.with_suffix(".json")


def validate_seeds(table: LatencyTable, device: Device, seeds: Sequence[NetworkSpec],
                   n: int, sizes: Sequence[int] = (), suffix: str = "",
                   root: Path | None = None) -> Iterator[tuple[NetworkSpec, dict[str, Any], Path]]:
    """``netadapt profile --validate N``: validate every seed at each of ``sizes``
    (default: its own) and save each validation (save_validation, ``suffix`` added to
    the file names); yields (seed at its size, summary, saved .json) as each is done.
    The summary records the device's clock, which the errors depend on."""
    for seed in [at_size(s, size) for s in seeds for size in sizes] or list(seeds):
        summary, frame = validate(table, device, seed, n)
        summary["clock"] = device.settings["clock"]
        yield seed, summary, save_validation(table.device, summary, frame, root, suffix)


def measure_e2e(spec: NetworkSpec, device: Device, table: LatencyTable | None,
                timer: Timer | None = None, bursts: int = 6, rounds: int = 20,
                beside: NetworkSpec | None = None) -> dict[str, Any]:
    """``spec`` end to end, now: ``raw_ms`` (fast-tail time, median over bursts), and
    ``vs_seed_ms`` (relative to the table's seed of the same structure timed in the same
    round-robin, x that seed's latency at calibration: drift cancels) with that seed's
    name as ``seed``, when the table has such a seed. ``beside``: another network (a
    search's own seed) timed in the same round-robin too: ``beside_ratio`` = median of
    time(spec) / time(beside) over pairs of bursts (order_pairs), and
    ``beside_ratio_se``, that median's relative standard error from their interquartile
    range. The bursts alternate the order the models are created and run in
    (timers.balanced_order): give an even number."""
    timer = timer or make_timer(device)
    timer.check()
    seeds = [s for s in (table.seeds if table is not None else [])
             if signature(s) == signature(spec)]
    others = ([beside] if beside is not None else []) + seeds[:1]
    models = [(network_model(s), network_input_shape(s)) for s in [spec, *others]]
    raw: list[float] = []
    ratios: dict[int, list[float]] = {i: [] for i in range(1, len(models))}
    for b in range(bursts):
        med = time_burst(timer, models, rounds, b)
        raw.append(med[0])
        for i in ratios:
            ratios[i].append(med[0] / med[i])
    out: dict[str, Any] = {"raw_ms": float(np.median(raw))}
    if beside is not None:
        out["beside_ratio"] = float(np.median(order_pairs(ratios[1])))
        out["beside_ratio_se"] = median_se(order_pairs(ratios[1]))
    if seeds and table is not None:
        out["vs_seed_ms"] = float(np.median(order_pairs(ratios[len(models) - 1]))) * \
            seed_e2e_ms(table, seeds[0])
        out["seed"] = seeds[0].name
    return out


def order_pairs(ratios: Sequence[float]) -> list[float]:
    """Ratios of bursts timed in balanced orders, two bursts at a time (each pair of
    models once each way): their geometric means, in which the order's own effect
    cancels. Its 2-3% would otherwise count as timing noise in a median's SE. An odd
    last burst stands alone."""
    pairs = [float(np.sqrt(a * b)) for a, b in zip(ratios[::2], ratios[1::2])]
    return pairs + ([float(ratios[-1])] if len(ratios) % 2 else [])


def median_se(values: Sequence[float]) -> float:
    """A median's relative standard error: the interquartile range / 1.349 estimates a
    normal's sigma, and the median's SE is 1.2533 sigma / sqrt(n)."""
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return float(1.2533 * (q75 - q25) / 1.349 / np.sqrt(len(values)) / q50)
