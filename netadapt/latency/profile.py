"""Building, calibrating, validating and estimating latency tables (the effects side).

Protocol (DESIGN.md section 2; the host drifts by up to 2x): entries are timed in
chunks, round-robin, together with one fixed reference block, and each entry is stored
as (its median / the reference's median in the same chunk) x a fixed base, so drift
between chunks cancels. Entries whose runs spread more than ``max_spread`` are timed
again in a later chunk, keeping the quietest attempt. Every chunk is appended to
journal.csv and fsynced, so an interrupted run loses at most one chunk and the same
command continues; the finished table replaces table.csv + meta.json at the end.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cost import conv_output_size
from ..errors import LatencyError
from ..spec import NetworkSpec, make_divisible, spec_from_dict, write_text_atomic
from .devices import Device
from .graphs import EntryKey, entry_keys, entry_model, input_shape, network_model
from .runners import Runner, make_runner
from .table import (
    COLUMNS,
    FORMAT,
    KEY_COLUMNS,
    LatencyTable,
    entries_of,
    frame_to_csv,
    key_of,
    read_table_files,
    required_keys,
    signature,
    table_paths,
)

JOURNAL_COLUMNS = KEY_COLUMNS + ["raw_ms", "ref_ms", "spread", "n"]
Log = Callable[[str], None]


def _spread(ms: np.ndarray) -> float:
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return float((q75 - q25) / q50)


def _key_row(key: EntryKey) -> list[Any]:
    return [getattr(key, c) for c in KEY_COLUMNS]


def reference_key(seed: NetworkSpec) -> EntryKey:
    """A mid-network block of the seed: cheap, and representative of what drifts."""
    blocks = [k for _, k in entry_keys(seed) if k.kind == "block"]
    return blocks[len(blocks) // 2]


@dataclass
class ProfileResult:
    device: str
    measured: int = 0  # entry timings this run (attempts)
    remeasured: int = 0  # of which repeats of noisy entries
    rows: int = 0
    seconds: float = 0.0
    calibration: list[dict[str, Any]] = field(default_factory=list)


class Journal:
    """Append-only CSV of raw attempts; survives kill (one fsync per chunk)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> pd.DataFrame:
        if not self.path.is_file():
            return pd.DataFrame(columns=JOURNAL_COLUMNS)
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # a kill mid-write leaves half a line: drop it
        if not lines or lines[0].strip().split(",") != JOURNAL_COLUMNS:
            return pd.DataFrame(columns=JOURNAL_COLUMNS)
        import io

        frame = pd.read_csv(io.StringIO("".join(lines)), dtype={"kind": str, "act": str})
        frame = frame.dropna()
        for c in ("se", "expand", "residual"):
            frame[c] = frame[c].astype(str) == "True"
        return frame

    def _drop_partial_line(self) -> None:
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, rows: list[list[Any]]) -> None:
        new = not self.path.is_file()
        if not new:
            self._drop_partial_line()
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                f.write(",".join(JOURNAL_COLUMNS) + "\n")
            for row in rows:
                f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v)
                                 for v in row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _best_attempts(journal: pd.DataFrame, base_ms: float) -> pd.DataFrame:
    """One row per key: the attempt with the smallest spread, scaled to the base."""
    if journal.empty:
        return pd.DataFrame(columns=COLUMNS)
    j = journal.copy()
    j["ms"] = j["raw_ms"] / j["ref_ms"] * base_ms
    j = j.sort_values("spread", kind="stable").drop_duplicates(KEY_COLUMNS, keep="first")
    return j[COLUMNS]


def profile(device: Device, seeds: list[NetworkSpec], root: Path | None = None,
            fresh: bool = False, progress: bool = True, log: Log = print,
            runner: Runner | None = None) -> ProfileResult:
    """Build or extend DEVICE's table so that it covers every seed, then calibrate."""
    runner = runner or make_runner(device)
    runner.check()  # fail at once: no phone, no host, no perf_test
    csv_path, meta_path = table_paths(device.name, root)
    folder = csv_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    journal = Journal(folder / "journal.csv")
    old_meta: dict[str, Any] = {}
    old = pd.DataFrame(columns=COLUMNS)
    if csv_path.is_file() and not fresh:
        old, old_meta = read_table_files(device.name, root)
        if old_meta.get("estimate"):
            old, old_meta = pd.DataFrame(columns=COLUMNS), {}  # a measured table replaces it
        else:
            version = runner.runtime_version()
            if old_meta["runtime"]["onnxruntime"] != version:
                raise LatencyError(
                    f"latency table {device.name!r} was measured with onnxruntime "
                    f"{old_meta['runtime']['onnxruntime']}, the device now runs {version}; "
                    f"rebuild it: netadapt profile --device {device.name} --fresh")
    state_path = folder / "journal.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if fresh and not state.get("fresh"):
        journal.path.unlink(missing_ok=True)
        state = {}
    if "reference" in old_meta:
        ref = EntryKey(**old_meta["reference"]["key"])
    elif "reference" in state:
        ref = EntryKey(**state["reference"])
    else:
        ref = reference_key(seeds[0])
    seed_dicts = [s.to_dict() for s in seeds]
    write_text_atomic(state_path, json.dumps({"reference": dataclasses.asdict(ref),
                                              "fresh": fresh, "seeds": seed_dicts}))
    have = set(entries_of(old)) if len(old) else set()
    needed: set[EntryKey] = set()
    for seed in seeds:
        needed |= required_keys(seed)
    for seed_dict in old_meta.get("seeds", []):
        needed |= required_keys(spec_from_dict(seed_dict["spec"]))
    proto = device.protocol
    done_rows = journal.read()
    attempts: dict[EntryKey, int] = {}
    finished: set[EntryKey] = set()
    for row in done_rows.itertuples(index=False):
        k = key_of(row)
        attempts[k] = attempts.get(k, 0) + 1
        if row.spread <= proto.max_spread or attempts[k] >= proto.attempts:
            finished.add(k)
    pending = sorted(needed - have - finished, key=lambda k: _key_row(k))
    random.Random(0).shuffle(pending)  # spread every layer's entries over the whole run
    result = ProfileResult(device.name)
    start = time.perf_counter()
    if pending:
        log(f"{device.name}: {len(have) + len(finished)} of {len(needed)} entries in the table "
            f"or journal; measuring {len(pending)} (reference: {ref.label()})")
    from tqdm import tqdm

    bar = tqdm(total=len(pending), unit="entry", disable=not progress, smoothing=0.05)
    ref_model = (entry_model(ref), input_shape(ref))
    try:
        queue = list(pending)
        while queue:
            chunk, queue = queue[:proto.chunk], queue[proto.chunk:]
            models = [ref_model] + [(entry_model(k), input_shape(k)) for k in chunk]
            ms = runner.time(models, proto.rounds, proto.warmup)
            ref_ms = float(np.median(ms[0]))
            rows = []
            for k, runs in zip(chunk, ms[1:]):
                spread = _spread(runs)
                attempts[k] = attempts.get(k, 0) + 1
                rows.append(_key_row(k) + [float(np.median(runs)), ref_ms, spread, len(runs)])
                if spread > proto.max_spread and attempts[k] < proto.attempts:
                    queue.append(k)  # noisy: again later, in another time window
                    result.remeasured += 1
                    bar.total += 1
            journal.append(rows)
            result.measured += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    journal_rows = journal.read()
    if "reference" in old_meta:
        base_ms = float(old_meta["reference"]["base_ms"])
    elif len(journal_rows):
        base_ms = float(np.median(journal_rows["ref_ms"]))
    else:
        raise LatencyError(f"{device.name}: nothing measured")
    new = _best_attempts(journal_rows, base_ms)
    if len(old):
        new = new[~new.set_index(KEY_COLUMNS).index.isin(old.set_index(KEY_COLUMNS).index)]
    frame = pd.concat([old[COLUMNS], new], ignore_index=True) if len(old) else new
    frame = frame.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True)
    all_seeds = {s["spec"]["name"]: spec_from_dict(s["spec"]) for s in old_meta.get("seeds", [])}
    all_seeds.update({s.name: s for s in seeds})
    entries = entries_of(frame)
    seeds_meta: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "format": FORMAT, "device": device.name, "description": device.description,
        "runner": device.runner, "estimate": False,
        "runtime": {"onnxruntime": runner.runtime_version(), **device.settings},
        "cpu": runner.cpu_model(), "date": dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds"),
        "protocol": dataclasses.asdict(proto),
        "reference": {"key": dataclasses.asdict(ref), "base_ms": base_ms,
                      "note": "entry ms = median(entry) / median(reference) in the same "
                              "chunk x base_ms"},
        "seeds": seeds_meta, "rows": len(frame),
        "profiling": {**old_meta.get("profiling", {}),
                      "last_run_s": round(time.perf_counter() - start, 1),
                      "last_run_entries": result.measured,
                      "last_run_remeasured": result.remeasured},
    }
    table = LatencyTable(device.name, entries, {"seeds": []})
    for seed in all_seeds.values():
        cal = calibrate(table, seed, runner, ref, base_ms, proto.calibration_bursts,
                        proto.calibration_rounds)
        seeds_meta.append({"name": seed.name, "signature": signature(seed),
                              "spec": seed.to_dict(), **cal})
        result.calibration.append({"seed": seed.name, **cal})
    write_table(device.name, frame, meta, root)
    journal.path.unlink(missing_ok=True)
    state_path.unlink(missing_ok=True)
    result.rows = len(frame)
    result.seconds = time.perf_counter() - start
    return result


def write_table(device: str, frame: pd.DataFrame, meta: dict[str, Any],
                root: Path | None = None) -> None:
    csv_path, meta_path = table_paths(device, root)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    text = frame_to_csv(frame)
    meta = {**meta, "rows": len(frame),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    write_text_atomic(csv_path, text)
    write_text_atomic(meta_path, json.dumps(meta, indent=1) + "\n")


def calibrate(table: LatencyTable, seed: NetworkSpec, runner: Runner, ref: EntryKey,
              base_ms: float, bursts: int, rounds: int) -> dict[str, Any]:
    """Factor = (seed end to end) / (sum of its table entries), both on the reference
    scale; bursts spread over time, interleaved with the seed's own entries."""
    keys = [k for _, k in entry_keys(seed)]
    table_sum = sum(table.entry_ms(k) or np.nan for k in keys)
    models = [(entry_model(ref), input_shape(ref)),
              (network_model(seed), input_shape(keys[0]))]
    models += [(entry_model(k), input_shape(k)) for k in keys]
    e2e_ratio, blocks_ratio, e2e_raw = [], [], []
    for _ in range(bursts):
        ms = runner.time(models, rounds, warmup=2)
        med = np.median(ms, axis=1)
        e2e_ratio.append(med[1] / med[0])
        blocks_ratio.append(med[1] / med[2:].sum())
        e2e_raw.append(med[1])
    seed_ms = float(np.median(e2e_ratio)) * base_ms
    return {"factor": seed_ms / table_sum, "seed_e2e_ms": seed_ms, "table_sum_ms": table_sum,
            "e2e_over_blocks_interleaved": float(np.median(blocks_ratio)),
            "burst_spread": _spread(np.asarray(e2e_ratio)),
            "e2e_raw_ms": [round(float(x), 4) for x in e2e_raw], "bursts": bursts,
            "rounds": rounds}


# ---------------------------------------------------------------------- validation
def random_variants(seed: NetworkSpec, n: int, rng_seed: int = 0) -> list[NetworkSpec]:
    """Reduced variants as the search makes them: each group independently, with
    probability 1/2, cut to a random multiple of 8 between a quarter of its width and
    its width. Distinct from the seed and from each other."""
    rng = random.Random(rng_seed)
    variants: list[NetworkSpec] = []
    seen = {seed}
    while len(variants) < n:
        spec = seed
        for g in seed.groups:
            if rng.random() < 0.5:
                low = max(8, (g.width // 4 + 7) // 8 * 8)
                spec = spec.with_group_width(g.name, rng.randrange(low, g.width + 1, 8))
        if spec not in seen:
            seen.add(spec)
            variants.append(dataclasses.replace(spec, name=f"{seed.name}_v{len(variants)}"))
    return variants


def validate(table: LatencyTable, device: Device, seed: NetworkSpec, n: int,
             runner: Runner | None = None, rng_seed: int = 0, progress: bool = True,
             per_chunk: int = 8, rounds: int = 15) -> tuple[dict[str, Any], pd.DataFrame]:
    """Measure ``n`` random reduced variants end to end, compare with predictions.

    Each chunk times the reference block, the seed and ``per_chunk`` variants
    round-robin; measured = median(variant) / median(reference) x the table's base,
    the scale the table is calibrated on (``raw_ms`` keeps the unnormalised median).
    """
    from tqdm import tqdm

    runner = runner or make_runner(device)
    runner.check()
    ref = EntryKey(**table.meta["reference"]["key"])
    base_ms = float(table.meta["reference"]["base_ms"])
    variants = random_variants(seed, n, rng_seed)
    rows = []
    ref_model = (entry_model(ref), input_shape(ref))
    shape = input_shape(entry_keys(seed)[0][1])
    seed_model = (network_model(seed), shape)
    predicted_seed = table.predict_ms(seed)
    for i in tqdm(range(0, n, per_chunk), disable=not progress, unit="chunk"):
        chunk = variants[i:i + per_chunk]
        models = [ref_model, seed_model] + [(network_model(v), shape) for v in chunk]
        med = np.median(runner.time(models, rounds, warmup=2), axis=1)
        for v, m in zip(chunk, med[2:]):
            rows.append({"variant": v.name, "predicted_ms": table.predict_ms(v),
                         "measured_ms": m / med[0] * base_ms,
                         "via_seed_ms": m / med[1] * predicted_seed, "raw_ms": m})
    frame = pd.DataFrame(rows)
    frame["error"] = frame["predicted_ms"] / frame["measured_ms"] - 1
    return summarize(frame, table, seed, n), frame


def summarize(frame: pd.DataFrame, table: LatencyTable, seed: NetworkSpec, n: int
              ) -> dict[str, Any]:
    err = frame["error"].abs()
    raw_err = (frame["predicted_ms"] / frame["raw_ms"] - 1).abs()
    seed_err = (frame["predicted_ms"] / frame["via_seed_ms"] - 1).abs()
    rank = frame["predicted_ms"].rank().corr(frame["measured_ms"].rank())
    return {
        "device": table.device, "seed": seed.name, "variants": n,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "median_abs_error": float(err.median()), "max_abs_error": float(err.max()),
        "within_5pct": float((err <= 0.05).mean()), "within_10pct": float((err <= 0.10).mean()),
        "spearman": float(rank),
        "median_abs_error_vs_seed": float(seed_err.median()),
        "median_abs_error_raw": float(raw_err.median()),
        "measured_range_ms": [float(frame["measured_ms"].min()),
                              float(frame["measured_ms"].max())],
    }


def save_validation(device: str, summary: dict[str, Any], frame: pd.DataFrame,
                    root: Path | None = None) -> Path:
    folder = table_paths(device, root)[0].parent
    stem = folder / f"validation_{summary['seed']}"
    write_text_atomic(stem.with_suffix(".csv"), frame.to_csv(index=False, float_format="%.5g"))
    write_text_atomic(stem.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    return stem.with_suffix(".json")


def measure_e2e(spec: NetworkSpec, device: Device, table: LatencyTable,
                runner: Runner | None = None, bursts: int = 5, rounds: int = 15
                ) -> tuple[float, float]:
    """(measured ms on the table's scale, raw median ms) of ``spec`` end to end."""
    runner = runner or make_runner(device)
    runner.check()
    ref = EntryKey(**table.meta["reference"]["key"])
    models = [(entry_model(ref), input_shape(ref)),
              (network_model(spec), input_shape(entry_keys(spec)[0][1]))]
    ratios, raw = [], []
    for _ in range(bursts):
        med = np.median(runner.time(models, rounds, warmup=2), axis=1)
        ratios.append(med[1] / med[0])
        raw.append(med[1])
    return float(np.median(ratios)) * float(table.meta["reference"]["base_ms"]), \
        float(np.median(raw))


# ---------------------------------------------------------------------- estimates
def entry_macs(key: EntryKey) -> int:
    """Multiply-accumulates of one entry (as netadapt.cost counts them)."""
    if key.kind == "head":
        return key.c_in * key.exp + key.exp * key.out
    if key.kind == "classifier":
        return key.c_in * key.out
    if key.kind == "last_conv":
        return key.c_in * key.out * key.h * key.w
    ho = conv_output_size(key.h, key.kernel, key.stride, key.dilation)
    wo = conv_output_size(key.w, key.kernel, key.stride, key.dilation)
    if key.kind == "stem":
        return key.c_in * key.out * key.kernel ** 2 * ho * wo
    macs = key.c_in * key.exp * key.h * key.w if key.expand else 0
    macs += key.exp * key.kernel ** 2 * ho * wo + key.exp * key.out * ho * wo
    if key.se:
        macs += 2 * key.exp * make_divisible(key.exp // 4)
    return macs


def estimate(source: LatencyTable, device: Device, published: dict[str, float],
             specs: dict[str, NetworkSpec], source_frame: pd.DataFrame,
             root: Path | None = None) -> dict[str, Any]:
    """A table for a device we cannot reach, from ``source``'s entries and published
    end-to-end latencies: entry_ms = alpha * source_ms + beta * MMACs, alpha and beta
    fitted (least squares on relative error) so that the calibrated sums reproduce
    ``published`` (spec name -> ms). Labelled an estimate everywhere."""
    names = list(published)
    a_rows = []
    for name in names:
        spec = specs[name]
        f = source.factor(spec)
        keys = [k for _, k in entry_keys(spec)]
        ms = sum(source.entry_ms(k) or np.nan for k in keys)
        macs = sum(entry_macs(k) for k in keys) / 1e6
        a_rows.append([f * ms / published[name], f * macs / published[name]])
    a = np.asarray(a_rows)
    coef, *_ = np.linalg.lstsq(a, np.ones(len(names)), rcond=None)
    if (coef < 0).any():  # fall back to the one non-negative term that fits best
        fits = [(np.linalg.lstsq(a[:, [j]], np.ones(len(names)), rcond=None)[0][0], j)
                for j in range(2)]
        errs = [np.abs(a[:, j] * c - 1).max() for c, j in fits]
        best, j = fits[int(np.argmin(errs))]
        coef = np.zeros(2)
        coef[j] = best
    alpha, beta = float(coef[0]), float(coef[1])
    frame = source_frame.copy()
    entry_mmacs = np.array([entry_macs(key_of(r)) for r in frame.itertuples(index=False)]) / 1e6
    frame["ms"] = alpha * frame["ms"] + beta * entry_mmacs
    frame["spread"] = 0.0
    frame["n"] = 0
    fit = {name: {"published_ms": published[name],
                  "estimated_ms": float(a[i] @ coef * published[name])}
           for i, name in enumerate(names)}
    meta = {
        "format": FORMAT, "device": device.name, "description": device.description,
        "runner": device.runner, "estimate": True, "estimate_of": source.device,
        "runtime": {**source.meta["runtime"], "note": f"settings of the {source.device} "
                    f"measurements this estimate is derived from"},
        "cpu": f"ESTIMATE for {device.description}, derived from {source.meta.get('cpu')}",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": source.meta["reference"],
        "seeds": [{**s, "factor": s["factor"]} for s in source.meta["seeds"]],
        "estimate_fit": {"model": "entry_ms = alpha * source_entry_ms + beta * entry_MMACs",
                         "alpha": alpha, "beta_ms_per_mmac": beta, "fit": fit,
                         "source": "Howard et al. 2019, single big core Pixel 1 (TFLite)"},
    }
    write_table(device.name, frame[COLUMNS], meta, root)
    return meta["estimate_fit"]
