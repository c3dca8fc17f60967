"""Building a latency table: ``profile()`` times every entry the seeds need on the
device, calibrates, and writes the table.

Timing protocol (the host's speed drifts, by up to 2x between minutes on a shared
machine): entries are timed in chunks, round-robin, together with one fixed reference
block, and each entry is stored as (its fast time / the reference's in the same chunk)
x a fixed base, so drift between chunks cancels (a fast time is the mean of the fastest
20% of runs: see measure.fast_ms). Entries whose fast runs spread more than
``max_spread`` are timed again in a later chunk, keeping the quietest attempt. Every
chunk is appended to the profile's journal (journal.ProfileJournal), so an interrupted
run loses at most one chunk and the same command continues; the finished table replaces
table.csv.gz + meta.json at the end. With ``processes: N`` a local device times N
chunks at once, one per process (each with its own reference, so what the processes do
to each other's speed cancels as drift does); the journal is written by this process
alone. docs/latency.md describes the protocol and the calibration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import LatencyError
from ..spec import NetworkSpec, at_size, resolution_sizes, spec_from_dict
from .calibrate import SeedBursts, calibrate, calibration_variants
from .coverage import multiplier_specs, required_keys
from .devices import Device, Protocol
from .graphs import EntryKey, entry_keys, entry_model, input_shape
from .journal import ProfileJournal, sig6
from .measure import Model, fast_ms, fast_spread
from .table import (
    COLUMNS,
    FORMAT,
    KEY_COLUMNS,
    LatencyTable,
    entries_of,
    find_table,
    keys_of,
    read_table_files,
    signature,
    table_paths,
    write_table,
)
from .timers import LocalTimer, Timer, make_timer, timer_clock

REF_EVERY = 12  # a copy of the reference before every 12 entries of a chunk
Log = Callable[[str], None]


def reference_key(seed: NetworkSpec) -> EntryKey:
    """A mid-network block of the seed: cheap, and representative of what drifts."""
    blocks = [k for _, k in entry_keys(seed) if k.kind == "block"]
    return blocks[len(blocks) // 2]


@dataclass
class ProfileResult:
    """What one ``profile()`` run did, for the CLI to report."""

    device: str
    measured: int = 0  # entry timings this run (attempts)
    remeasured: int = 0  # of which repeats of noisy entries
    rows: int = 0
    seconds: float = 0.0
    calibration: list[dict[str, Any]] = field(default_factory=list)  # one per seed


# ---------------------------------------------------------------------- plan
@dataclass
class _Plan:
    """What a profile run starts from: the table so far, the journal, the reference
    entry and the entries still to time."""

    folder: Path
    journal: ProfileJournal
    old: pd.DataFrame  # the existing table's rows (empty when fresh)
    old_meta: dict[str, Any]
    ref: EntryKey
    targets: dict[str, tuple[NetworkSpec, str]]  # this run's seeds and coverage, by name
    seeds: dict[str, NetworkSpec]  # every seed the finished table covers, by name
    needed: set[EntryKey]
    have: set[EntryKey]  # in the table already
    finished: set[EntryKey]  # in the journal, no further attempt due
    attempts: dict[EntryKey, int]
    pending: list[EntryKey]


def _existing_table(device: Device, timer: Timer, root: Path | None, fresh: bool
                    ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table to extend (empty when fresh, absent or an estimate); refuses one
    measured with another onnxruntime version."""
    empty: tuple[pd.DataFrame, dict[str, Any]] = (pd.DataFrame(columns=COLUMNS), {})
    if fresh or find_table(device.name, root) is None:
        return empty
    old, old_meta = read_table_files(device.name, root)
    if old_meta.get("estimate"):
        return empty  # a measured table replaces an estimate
    version = timer.runtime_version()
    if old_meta["runtime"]["onnxruntime"] != version:
        raise LatencyError(
            f"latency table {device.name!r} was measured with onnxruntime "
            f"{old_meta['runtime']['onnxruntime']}, the device now runs {version}; "
            f"rebuild it: netadapt profile --device {device.name} --fresh")
    return old, old_meta


def targets_of(seeds: Sequence[NetworkSpec], input_sizes: Sequence[int] = (),
               multiplier_sizes: Sequence[int] = ()) -> list[tuple[NetworkSpec, str]]:
    """(seed at a size, coverage) for every seed: the full width grid at each of
    ``input_sizes`` (default: the seed's own size), its width multipliers at each of
    ``multiplier_sizes`` and at each size the resolution baseline tries below a grid's
    (spec.resolution_sizes), where it has no grid."""
    targets: list[tuple[NetworkSpec, str]] = []
    for seed in seeds:
        grids = [at_size(seed, n) for n in input_sizes] or [seed]
        targets += [(spec, "grid") for spec in grids]
        below = [n for g in grids for n in resolution_sizes(min(g.input_size))]
        sizes = dict.fromkeys([*multiplier_sizes, *below])  # in order, once each
        targets += [(at_size(seed, n), "multipliers") for n in sizes
                    if all(g.input_size != (n, n) for g in grids)]
    return targets


def _reference(old_meta: dict[str, Any], state: dict[str, Any], seed: NetworkSpec
               ) -> EntryKey:
    """The table's reference entry, else the interrupted run's, else a new one: every
    entry of a table is relative to the same reference."""
    if "reference" in old_meta:
        return EntryKey.from_columns(old_meta["reference"]["key"])
    if "reference" in state:
        return EntryKey.from_columns(state["reference"])
    return reference_key(seed)


def plan(device: Device, seeds: list[NetworkSpec], timer: Timer, root: Path | None = None,
         fresh: bool = False, targets: list[tuple[NetworkSpec, str]] | None = None,
         recalibrate: bool = False, retime: bool = False) -> _Plan:
    """Step 1: what the finished table must hold, and what is left to time (the table
    and the journal of an interrupted run count as done). ``targets`` (see targets_of)
    default to each seed's full grid at its own size. ``retime``: every entry the
    targets need is timed again (the table's own value of it does not count as done),
    and the targets are calibrated again; the table's other entries stay."""
    targets = targets if targets is not None else targets_of(seeds)
    folder = table_paths(device.name, root)[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    journal = ProfileJournal(folder)
    old, old_meta = _existing_table(device, timer, root, fresh)
    state = journal.state()
    if fresh and not state.get("fresh"):  # not the journal of an interrupted --fresh run
        journal.remove()
        state = {}
    ref = _reference(old_meta, state, seeds[0])
    journal.start(ref, fresh, seeds)
    covered = {s["spec"]["name"]: (spec_from_dict(s["spec"]), s.get("coverage", "grid"))
               for s in old_meta.get("seeds", [])}
    rank = {"multipliers": 0, "grid": 1}  # a grid covers the multipliers too
    new = {spec.name: (spec, coverage) for spec, coverage in targets
           if spec.name not in covered or rank[coverage] > rank[covered[spec.name][1]]
           or recalibrate or retime}
    covered.update(new)
    have = set(entries_of(old)) if len(old) else set()
    needed: set[EntryKey] = set()
    for spec, coverage in covered.values():
        needed |= required_keys(spec, coverage)
    proto = device.protocol
    attempts: dict[EntryKey, int] = {}
    finished: set[EntryKey] = set()
    journaled = journal.attempts()
    for k, spread in zip(keys_of(journaled), journaled["spread"]):
        attempts[k] = attempts.get(k, 0) + 1
        if spread <= proto.max_spread or attempts[k] >= proto.attempts:
            finished.add(k)
    stale: set[EntryKey] = set()
    if retime:
        for spec, coverage in new.values():
            stale |= required_keys(spec, coverage)
    pending = sorted((needed - have | stale) - finished)
    random.Random(0).shuffle(pending)  # spread every layer's entries over the whole run
    return _Plan(folder, journal, old, old_meta, ref, new,
                 {name: spec for name, (spec, _) in covered.items()}, needed, have, finished,
                 attempts, pending)


# ---------------------------------------------------------------------- timing
def _time_chunk(timer: Timer, chunk: list[EntryKey], ref_model: Model, rounds: int,
                warmup: int) -> tuple[float, np.ndarray]:
    """Time one chunk round-robin with the reference at several places in it: (the
    reference's fast time, each entry's runs)."""
    models: list[Model] = []
    ref_rows: list[int] = []
    for i, k in enumerate(chunk):
        if i % REF_EVERY == 0:
            ref_rows.append(len(models))
            models.append(ref_model)
        models.append((entry_model(k), input_shape(k)))
    ms = timer.time(models, rounds, warmup)
    return float(fast_ms(ms[ref_rows].reshape(1, -1))[0]), np.delete(ms, ref_rows, axis=0)


_worker: tuple[Timer, Model] | None = None  # a timing process's timer and reference


def _start_worker(device: Device, ref: EntryKey) -> None:
    global _worker
    _worker = (LocalTimer(device), (entry_model(ref), input_shape(ref)))


def _time_chunk_in_worker(chunk: list[EntryKey], rounds: int,
                          warmup: int) -> tuple[float, np.ndarray]:
    assert _worker is not None
    return _time_chunk(_worker[0], chunk, _worker[1], rounds, warmup)


def _timing_pool(timer: Timer, device: Device | None, ref: EntryKey, processes: int
                 ) -> Executor | None:
    """Worker processes that time chunks for a local device (None: time here)."""
    import multiprocessing

    if processes > 1 and isinstance(timer, LocalTimer) and device is not None:
        return ProcessPoolExecutor(processes, multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(device, ref))
    return None


def _record_chunk(work: _Plan, chunk: list[EntryKey], ref_ms: float, runs: np.ndarray,
                  proto: Protocol, result: ProfileResult) -> list[EntryKey]:
    """Journal a timed chunk (one attempt per entry); returns the entries to time again
    (too noisy, attempts left)."""
    rows, again = [], []
    for k, entry_runs in zip(chunk, runs):
        spread = fast_spread(entry_runs)
        work.attempts[k] = work.attempts.get(k, 0) + 1
        rows.append({**k.columns(), "raw_ms": sig6(float(fast_ms(entry_runs)[0])),
                     "ref_ms": sig6(ref_ms), "spread": sig6(spread), "n": len(entry_runs)})
        if spread > proto.max_spread and work.attempts[k] < proto.attempts:
            again.append(k)  # noisy: again later, in another time window
    work.journal.add_attempts(rows)
    result.measured += len(chunk)
    result.remeasured += len(again)
    return again


def measure_entries(work: _Plan, timer: Timer, proto: Protocol, ref_model: Model,
                    seed_ratios: SeedBursts, result: ProfileResult, progress: bool,
                    device: Device | None = None) -> None:
    """Step 2: time the pending entries in chunks, round-robin with the reference,
    journaling every chunk; noisy entries go back in the queue; the seeds are timed end
    to end every ``calibration_every`` chunks. ``proto.processes`` > 1 (a local
    ``device``) times that many chunks at once in worker processes."""
    from tqdm import tqdm

    processes = min(proto.processes, os.cpu_count() or 1)  # never two timers on one core
    pool = _timing_pool(timer, device, work.ref, processes)

    def submit(chunk: list[EntryKey]) -> Future[tuple[float, np.ndarray]]:
        if pool is not None:
            return pool.submit(_time_chunk_in_worker, chunk, proto.rounds, proto.warmup)
        done: Future[tuple[float, np.ndarray]] = Future()
        done.set_result(_time_chunk(timer, chunk, ref_model, proto.rounds, proto.warmup))
        return done

    bar = tqdm(total=len(work.pending), unit="entry", disable=not progress, smoothing=0.05)
    try:
        queue = list(work.pending)
        in_flight: dict[Future[tuple[float, np.ndarray]], list[EntryKey]] = {}
        chunks = 0
        while queue or in_flight:
            while queue and len(in_flight) < (processes if pool is not None else 1):
                chunk, queue = queue[:proto.chunk], queue[proto.chunk:]
                in_flight[submit(chunk)] = chunk
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                chunk = in_flight.pop(future)
                again = _record_chunk(work, chunk, *future.result(), proto, result)
                queue += again
                bar.total += len(again)
                bar.update(len(chunk))
                chunks += 1
                if chunks % proto.calibration_every == 1:
                    seed_ratios.burst()  # the seeds end to end, spread over the whole run
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------------- the table
def _best_attempts(journal: pd.DataFrame, base_ms: float) -> pd.DataFrame:
    """One row per key: the attempt with the smallest spread, scaled to the base."""
    if journal.empty:
        return pd.DataFrame(columns=COLUMNS)
    j = journal.copy()
    j["ms"] = j["raw_ms"] / j["ref_ms"] * base_ms
    j = j.sort_values("spread", kind="stable").drop_duplicates(KEY_COLUMNS, keep="first")
    return j[COLUMNS]


def assemble(work: _Plan) -> tuple[pd.DataFrame, float]:
    """Step 3: the table's rows (the best attempt of every entry timed in this run,
    scaled to the reference's base ms, and the old table's other rows) and that base."""
    journal_rows = work.journal.attempts()
    if "reference" in work.old_meta:
        base_ms = float(work.old_meta["reference"]["base_ms"])
    elif len(journal_rows):
        base_ms = float(np.median(journal_rows["ref_ms"]))
    else:
        raise LatencyError("nothing measured")
    new = _best_attempts(journal_rows, base_ms)
    old = work.old
    if len(old):  # an entry timed again (--retime) replaces the table's value
        old = old[~old.set_index(KEY_COLUMNS).index.isin(new.set_index(KEY_COLUMNS).index)]
    frame = pd.concat([old[COLUMNS], new], ignore_index=True) if len(old) else new
    return frame.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True), base_ms


def calibrate_seeds(work: _Plan, frame: pd.DataFrame, timer: Timer, ref_model: Model,
                    base_ms: float, proto: Protocol) -> list[dict[str, Any]]:
    """Step 4: one calibration per seed of this run (see calibrate.calibrate); the
    table's other seeds keep theirs (their entries and the reference's base are
    unchanged). Returns meta.json's ``seeds``."""
    table = LatencyTable("profiling", entries_of(frame), {"seeds": [  # composed blocks' anchors
        {"spec": seed.to_dict(), "factor": 1.0} for seed in work.seeds.values()]})
    seeds_meta = [m for m in work.old_meta.get("seeds", [])
                  if m["spec"]["name"] not in work.targets]
    for seed, coverage in work.targets.values():
        variants = (calibration_variants(seed, proto.calibration_variants)
                    if coverage == "grid" else multiplier_specs(seed)[1:])
        cal = calibrate(table, seed, timer, ref_model, base_ms, proto,
                        work.journal.ratios(seed.name), variants)
        seeds_meta.append({"name": seed.name, "signature": signature(seed),
                           "coverage": coverage, "spec": seed.to_dict(), **cal,
                           "clock": timer_clock(timer)})
    return seeds_meta


def _table_meta(device: Device, work: _Plan, timer: Timer, base_ms: float,
                seeds_meta: list[dict[str, Any]], rows: int, result: ProfileResult,
                seconds: float) -> dict[str, Any]:
    """meta.json of the finished table (write_table adds the rows' count and hash)."""
    proto, old_meta = device.protocol, work.old_meta
    return {
        "format": FORMAT, "device": device.name, "description": device.description,
        "runner": device.runner, "estimate": False,
        "runtime": old_meta["runtime"] if old_meta and not work.pending  # recalibrated only
        else {"onnxruntime": timer.runtime_version(), **device.settings},
        "cpu": timer.cpu_model(), "date": dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds"),
        "protocol": dataclasses.asdict(proto),
        "reference": {"key": work.ref.columns(), "base_ms": base_ms,
                      "note": "entry ms = median(entry) / median(reference) in the same "
                              "chunk x base_ms"},
        "seeds": seeds_meta, "rows": rows,
        "profiling": {**old_meta.get("profiling", {}),
                      "last_run_s": round(seconds, 1),
                      "last_run_entries": result.measured,
                      "last_run_remeasured": result.remeasured,
                      "last_run_processes": min(proto.processes, os.cpu_count() or 1)
                      if isinstance(timer, LocalTimer) else 1},
    }


def profile(device: Device, seeds: list[NetworkSpec], root: Path | None = None,
            fresh: bool = False, progress: bool = True, log: Log = print,
            timer: Timer | None = None, input_sizes: Sequence[int] = (),
            multiplier_sizes: Sequence[int] = (), recalibrate: bool = False,
            retime: bool = False) -> ProfileResult:
    """Build or extend DEVICE's table so that it covers every seed (see targets_of for
    the sizes), then calibrate: plan, measure_entries, assemble, calibrate_seeds, then
    the table is written and the journal removed. An interrupted run (even by
    KeyboardInterrupt) leaves its journal, and the same call continues it."""
    timer = timer or make_timer(device)
    timer.check()  # fail at once: no phone, no host, no perf_test
    work = plan(device, seeds, timer, root, fresh,
                targets_of(seeds, input_sizes, multiplier_sizes), recalibrate, retime)
    proto = device.protocol
    result = ProfileResult(device.name)
    start = time.perf_counter()
    if work.pending:
        again = len(work.have.intersection(work.pending))
        log(f"{device.name}: {len(work.have) + len(work.finished)} of {len(work.needed)} "
            f"entries in the table or journal; measuring {len(work.pending)}"
            + (f", {again} of them again (--retime)" if again else "")
            + f" (reference: {work.ref.label()})")
    ref_model = (entry_model(work.ref), input_shape(work.ref))
    seed_ratios = SeedBursts(work.journal.add_ratio, timer, ref_model,
                             {name: spec for name, (spec, _) in work.targets.items()},
                             proto.calibration_rounds)
    measure_entries(work, timer, proto, ref_model, seed_ratios, result, progress, device)
    try:
        frame, base_ms = assemble(work)
    except LatencyError:
        raise LatencyError(f"{device.name}: nothing measured") from None
    seeds_meta = calibrate_seeds(work, frame, timer, ref_model, base_ms, proto)
    result.calibration = [{"seed": m["name"], **{k: v for k, v in m.items()
                                                 if k not in ("name", "signature", "spec")}}
                          for m in seeds_meta]
    write_table(device.name, frame, _table_meta(device, work, timer, base_ms, seeds_meta,
                                                len(frame), result,
                                                time.perf_counter() - start), root)
    work.journal.remove()
    result.rows = len(frame)
    result.seconds = time.perf_counter() - start
    return result
