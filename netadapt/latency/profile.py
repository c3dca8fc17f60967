"""Building, calibrating, validating and estimating latency tables (the effects side).

Protocol (DESIGN.md section 2; the host drifts by up to 2x): entries are timed in
chunks, round-robin, together with one fixed reference block, and each entry is stored
as (its median / the reference's median in the same chunk) x a fixed base, so drift
between chunks cancels (each time is the mean of the model's fastest 20% of runs:
see fast_ms). Entries whose fast runs spread more than ``max_spread`` are timed
again in a later chunk, keeping the quietest attempt. Every chunk is appended to the
profile's journal (journal.jsonl, see ProfileJournal) and fsynced, so an interrupted
run loses at most one chunk and the same command continues; the finished table
replaces table.csv.gz + meta.json at the end.
With ``processes: N`` a local device times N chunks at once, one per process (each with
its own reference, so what the processes do to each other's speed cancels as drift
does); the journal is written by this process alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import LatencyError
from ..files import Journal, write_bytes_atomic, write_text_atomic
from ..spec import NetworkSpec, spec_from_dict
from .devices import Device, Protocol
from .graphs import (
    EntryKey,
    entry_keys,
    entry_model,
    input_shape,
    network_input_shape,
    network_model,
)
from .table import (
    COLUMNS,
    FORMAT,
    KEY_COLUMNS,
    LEGACY_TABLE_FILE,
    LatencyTable,
    at_size,
    entries_of,
    find_table,
    frame_to_csv,
    input_elements_m,
    key_of,
    multiplier_specs,
    read_table_files,
    required_keys,
    signature,
    table_bytes,
    table_paths,
)
from .timers import LocalTimer, Model, Timer, make_timer

JOURNAL_COLUMNS = KEY_COLUMNS + ["raw_ms", "ref_ms", "spread", "n"]
REF_EVERY = 12  # a copy of the reference before every 12 entries of a chunk
Log = Callable[[str], None]


def fast_ms(ms: np.ndarray) -> np.ndarray:
    """Per model (rows of ``ms``): the mean of its fastest 20% of runs.

    Not the median: with other processes on the CPU, a round-robin's runs are
    pre-empted in bursts, and measured here with two busy neighbours the median of the
    same model varied by 24% between sessions while the fastest 20% varied by 1%. A run
    is only ever slowed by interference, so the fast tail is the latency the device
    has when it is not shared (a phone's big core running one model).
    """
    ms = np.atleast_2d(ms)
    k = max(1, ms.shape[1] // 5)
    return np.sort(ms, axis=1)[:, :k].mean(axis=1)


def _spread(ms: np.ndarray) -> float:
    """Scatter of the fast tail: (30th percentile - fastest) / fastest. Interference
    inflates the slow runs, which fast_ms ignores; a high value here means even the
    fast runs disagree, and the entry is timed again later."""
    q0, q30 = np.percentile(ms, [0, 30])
    return float((q30 - q0) / q0)


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


JOURNAL_FILE = "journal.jsonl"
# What netadapt 0.1.0 wrote before its profile journal was one JSON-lines file: an
# interrupted profile of that version is continued from them (read, never written).
LEGACY_ATTEMPTS, LEGACY_RATIOS, LEGACY_STATE = "journal.csv", "journal_seeds.csv", "journal.json"


def _sig6(value: float) -> float:
    """6 significant digits: the journal's precision (timings are not better than that)."""
    return float(f"{value:.6g}")


class ProfileJournal:
    """What an interrupted profile continues from, in one append-only JSON-lines file
    beside the table (files.Journal: fsynced, a torn last line dropped). Its records:

    - ``start``, one per session: the reference entry, whether the session rebuilds the
      table (``fresh``) and its seeds; the last one is the journal's state;
    - ``attempt``, one per timing of an entry (one fsync per chunk): the entry's key
      fields, its fast time and the reference's in the same chunk (``raw_ms``,
      ``ref_ms``), the spread of its fast runs and their number (``n``);
    - ``ratio``, one per seed per burst: seed end to end / reference block.

    A profile interrupted by an older netadapt left journal.csv, journal_seeds.csv and
    journal.json instead: they are read as this journal's first records, and removed
    with it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.journal = Journal(folder / JOURNAL_FILE)

    @property
    def paths(self) -> list[Path]:
        """Every file of the journal, the legacy ones included."""
        return [self.journal.path] + [self.folder / name for name in
                                      (LEGACY_ATTEMPTS, LEGACY_RATIOS, LEGACY_STATE)]

    def remove(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)

    def _of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.journal.read() if r.get("type") == kind]

    # ----------------------------------------------------------- state

    def start(self, reference: EntryKey, fresh: bool, seeds: Sequence[NetworkSpec]) -> None:
        """Record a session's start (read the journal first: see files.Journal)."""
        self.journal.append({"type": "start", "reference": reference._asdict(),
                             "fresh": fresh, "seeds": [s.to_dict() for s in seeds]})

    def state(self) -> dict[str, Any]:
        """The last session's start record: ``reference`` and ``fresh`` ({}: none)."""
        starts = self._of_type("start")
        if starts:
            return starts[-1]
        legacy = self.folder / LEGACY_STATE
        return json.loads(legacy.read_text()) if legacy.is_file() else {}

    # ----------------------------------------------------------- attempts

    def add_attempts(self, rows: list[dict[str, Any]]) -> None:
        """Journal a chunk's attempts (each: KEY_COLUMNS, raw_ms, ref_ms, spread, n)."""
        self.journal.extend([{"type": "attempt", **row} for row in rows])

    def attempts(self) -> pd.DataFrame:
        """Every attempt so far, in order, as a frame of JOURNAL_COLUMNS."""
        frames = [self._legacy_attempts(), pd.DataFrame(self._of_type("attempt"),
                                                        columns=JOURNAL_COLUMNS)]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=JOURNAL_COLUMNS)
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def _legacy_attempts(self) -> pd.DataFrame:
        """journal.csv: a header of JOURNAL_COLUMNS, a row per attempt, perhaps half a
        last row (a kill mid-write)."""
        import io

        path = self.folder / LEGACY_ATTEMPTS
        if not path.is_file():
            return pd.DataFrame(columns=JOURNAL_COLUMNS)
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]
        if not lines or lines[0].strip().split(",") != JOURNAL_COLUMNS:
            return pd.DataFrame(columns=JOURNAL_COLUMNS)
        frame = pd.read_csv(io.StringIO("".join(lines)), dtype={"kind": str, "act": str})
        frame = frame.dropna()
        for c in ("se", "expand", "residual"):
            frame[c] = frame[c].astype(str) == "True"
        return frame

    # ----------------------------------------------------------- seed ratios

    def add_ratio(self, seed: str, ratio: float) -> None:
        self.journal.append({"type": "ratio", "seed": seed, "ratio": _sig6(ratio)})

    def ratios(self, seed: str) -> list[float]:
        """Seed ``seed``'s end-to-end / reference ratios so far, in order."""
        out = []
        legacy = self.folder / LEGACY_RATIOS
        if legacy.is_file():  # lines "name,ratio"; a kill may have cut the last one
            for line in legacy.read_text(encoding="utf-8").splitlines():
                parts = line.split(",")
                if len(parts) == 2 and parts[0] == seed:
                    try:
                        out.append(float(parts[1]))
                    except ValueError:
                        pass
        return out + [float(r["ratio"]) for r in self._of_type("ratio") if r["seed"] == seed]


def _best_attempts(journal: pd.DataFrame, base_ms: float) -> pd.DataFrame:
    """One row per key: the attempt with the smallest spread, scaled to the base."""
    if journal.empty:
        return pd.DataFrame(columns=COLUMNS)
    j = journal.copy()
    j["ms"] = j["raw_ms"] / j["ref_ms"] * base_ms
    j = j.sort_values("spread", kind="stable").drop_duplicates(KEY_COLUMNS, keep="first")
    return j[COLUMNS]


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
    ``multiplier_sizes`` where it has no grid."""
    targets: list[tuple[NetworkSpec, str]] = []
    for seed in seeds:
        grids = [at_size(seed, n) for n in input_sizes] or [seed]
        targets += [(spec, "grid") for spec in grids]
        targets += [(at_size(seed, n), "multipliers") for n in multiplier_sizes
                    if all(g.input_size != (n, n) for g in grids)]
    return targets


def plan(device: Device, seeds: list[NetworkSpec], timer: Timer, root: Path | None = None,
         fresh: bool = False, targets: list[tuple[NetworkSpec, str]] | None = None,
         recalibrate: bool = False) -> _Plan:
    """Step 1: what the finished table must hold, and what is left to time (the table
    and the journal of an interrupted run count as done). ``targets`` (see targets_of)
    default to each seed's full grid at its own size."""
    targets = targets if targets is not None else targets_of(seeds)
    csv_path, _ = table_paths(device.name, root)
    folder = csv_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    journal = ProfileJournal(folder)
    old, old_meta = _existing_table(device, timer, root, fresh)
    state = journal.state()
    if fresh and not state.get("fresh"):  # not the journal of an interrupted --fresh run
        journal.remove()
        state = {}
    if "reference" in old_meta:
        ref = EntryKey(**old_meta["reference"]["key"])
    elif "reference" in state:
        ref = EntryKey(**state["reference"])
    else:
        ref = reference_key(seeds[0])
    journal.start(ref, fresh, seeds)
    covered = {s["spec"]["name"]: (spec_from_dict(s["spec"]), s.get("coverage", "grid"))
               for s in old_meta.get("seeds", [])}
    rank = {"multipliers": 0, "grid": 1}  # a grid covers the multipliers too
    new = {spec.name: (spec, coverage) for spec, coverage in targets
           if spec.name not in covered or rank[coverage] > rank[covered[spec.name][1]]
           or recalibrate}
    covered.update(new)
    have = set(entries_of(old)) if len(old) else set()
    needed: set[EntryKey] = set()
    for spec, coverage in covered.values():
        needed |= required_keys(spec, coverage)
    proto = device.protocol
    attempts: dict[EntryKey, int] = {}
    finished: set[EntryKey] = set()
    for row in journal.attempts().itertuples(index=False):
        k = key_of(row)
        attempts[k] = attempts.get(k, 0) + 1
        if row.spread <= proto.max_spread or attempts[k] >= proto.attempts:
            finished.add(k)
    pending = sorted(needed - have - finished, key=lambda k: _key_row(k))
    random.Random(0).shuffle(pending)  # spread every layer's entries over the whole run
    return _Plan(folder, journal, old, old_meta, ref, new,
                 {name: spec for name, (spec, _) in covered.items()}, needed, have, finished,
                 attempts, pending)


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


def measure_entries(work: _Plan, timer: Timer, proto: Protocol, ref_model: Model,
                    seed_ratios: _SeedRatios, result: ProfileResult, progress: bool,
                    device: Device | None = None) -> None:
    """Step 2: time the pending entries in chunks, round-robin with the reference,
    journaling every chunk; noisy entries go back in the queue; the seeds are timed end
    to end every ``calibration_every`` chunks. ``proto.processes`` > 1 (a local
    ``device``) times that many chunks at once in worker processes."""
    import multiprocessing

    from tqdm import tqdm

    pool = None
    processes = min(proto.processes, os.cpu_count() or 1)  # never two timers on one core
    if processes > 1 and isinstance(timer, LocalTimer) and device is not None:
        pool = ProcessPoolExecutor(processes, multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(device, work.ref))

    def submit(chunk: list[EntryKey]) -> Future[tuple[float, np.ndarray]]:
        if pool is not None:
            return pool.submit(_time_chunk_in_worker, chunk, proto.rounds, proto.warmup)
        done: Future[tuple[float, np.ndarray]] = Future()
        done.set_result(_time_chunk(timer, chunk, ref_model, proto.rounds, proto.warmup))
        return done

    attempts = work.attempts
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
                ref_ms, entry_ms = future.result()
                rows = []
                for k, runs in zip(chunk, entry_ms):
                    spread = _spread(runs)
                    attempts[k] = attempts.get(k, 0) + 1
                    rows.append({**k._asdict(), "raw_ms": _sig6(float(fast_ms(runs)[0])),
                                 "ref_ms": _sig6(ref_ms), "spread": _sig6(spread),
                                 "n": len(runs)})
                    if spread > proto.max_spread and attempts[k] < proto.attempts:
                        queue.append(k)  # noisy: again later, in another time window
                        result.remeasured += 1
                        bar.total += 1
                work.journal.add_attempts(rows)
                result.measured += len(chunk)
                bar.update(len(chunk))
                chunks += 1
                if chunks % proto.calibration_every == 1:
                    seed_ratios.burst()  # the seeds end to end, spread over the whole run
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def assemble(work: _Plan) -> tuple[pd.DataFrame, float]:
    """Step 3: the table's rows (the old table + the best attempt of every new entry,
    scaled to the reference's base ms) and that base."""
    journal_rows = work.journal.attempts()
    if "reference" in work.old_meta:
        base_ms = float(work.old_meta["reference"]["base_ms"])
    elif len(journal_rows):
        base_ms = float(np.median(journal_rows["ref_ms"]))
    else:
        raise LatencyError("nothing measured")
    new = _best_attempts(journal_rows, base_ms)
    old = work.old
    if len(old):
        new = new[~new.set_index(KEY_COLUMNS).index.isin(old.set_index(KEY_COLUMNS).index)]
    frame = pd.concat([old[COLUMNS], new], ignore_index=True) if len(old) else new
    return frame.sort_values(KEY_COLUMNS, kind="stable").reset_index(drop=True), base_ms


def calibrate_seeds(work: _Plan, frame: pd.DataFrame, timer: Timer, ref_model: Model,
                    base_ms: float, proto: Protocol) -> list[dict[str, Any]]:
    """Step 4: one calibration per seed of this run (see calibrate); the table's other
    seeds keep theirs (their entries and the reference's base are unchanged). Returns
    meta.json's ``seeds``."""
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


def profile(device: Device, seeds: list[NetworkSpec], root: Path | None = None,
            fresh: bool = False, progress: bool = True, log: Log = print,
            timer: Timer | None = None, input_sizes: Sequence[int] = (),
            multiplier_sizes: Sequence[int] = (), recalibrate: bool = False) -> ProfileResult:
    """Build or extend DEVICE's table so that it covers every seed (see targets_of for
    the sizes), then calibrate: plan, measure_entries, assemble, calibrate_seeds, then
    the table is written and the journals removed."""
    timer = timer or make_timer(device)
    timer.check()  # fail at once: no phone, no host, no perf_test
    work = plan(device, seeds, timer, root, fresh,
                targets_of(seeds, input_sizes, multiplier_sizes), recalibrate)
    proto = device.protocol
    result = ProfileResult(device.name)
    start = time.perf_counter()
    if work.pending:
        log(f"{device.name}: {len(work.have) + len(work.finished)} of {len(work.needed)} "
            f"entries in the table or journal; measuring {len(work.pending)} "
            f"(reference: {work.ref.label()})")
    ref_model = (entry_model(work.ref), input_shape(work.ref))
    seed_ratios = _SeedRatios(work.journal, timer, ref_model,
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
    old_meta = work.old_meta
    meta: dict[str, Any] = {
        "format": FORMAT, "device": device.name, "description": device.description,
        "runner": device.runner, "estimate": False,
        "runtime": old_meta["runtime"] if old_meta and not work.pending  # recalibrated only
        else {"onnxruntime": timer.runtime_version(), **device.settings},
        "cpu": timer.cpu_model(), "date": dt.datetime.now(dt.timezone.utc).isoformat(
            timespec="seconds"),
        "protocol": dataclasses.asdict(proto),
        "reference": {"key": work.ref._asdict(), "base_ms": base_ms,
                      "note": "entry ms = median(entry) / median(reference) in the same "
                              "chunk x base_ms"},
        "seeds": seeds_meta, "rows": len(frame),
        "profiling": {**old_meta.get("profiling", {}),
                      "last_run_s": round(time.perf_counter() - start, 1),
                      "last_run_entries": result.measured,
                      "last_run_remeasured": result.remeasured,
                      "last_run_processes": min(proto.processes, os.cpu_count() or 1)
                      if isinstance(timer, LocalTimer) else 1},
    }
    write_table(device.name, frame, meta, root)
    work.journal.remove()
    result.rows = len(frame)
    result.seconds = time.perf_counter() - start
    return result


def timer_clock(timer: Timer) -> str:
    device = getattr(timer, "device", None)
    return str(device.settings.get("clock", "wall")) if device is not None else "wall"


def write_table(device: str, frame: pd.DataFrame, meta: dict[str, Any],
                root: Path | None = None) -> None:
    csv_path, meta_path = table_paths(device, root)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    text = frame_to_csv(frame)
    meta = {**meta, "rows": len(frame),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    write_bytes_atomic(csv_path, table_bytes(text))
    write_text_atomic(meta_path, json.dumps(meta, indent=1) + "\n")
    (csv_path.parent / LEGACY_TABLE_FILE).unlink(missing_ok=True)  # replaced by the above


class _SeedRatios:
    """(seed end to end) / (reference block), measured in bursts through the profile
    run and journaled, so the calibration sees the host in all the states the entries
    were measured in, not just the last minute's."""

    def __init__(self, journal: ProfileJournal, timer: Timer, ref_model: Model,
                 seeds: dict[str, NetworkSpec], rounds: int) -> None:
        self.journal, self.timer, self.ref_model = journal, timer, ref_model
        self.seeds, self.rounds = seeds, rounds

    def burst(self) -> None:
        for name, seed in self.seeds.items():
            shape = network_input_shape(seed)
            med = fast_ms(self.timer.time(
                [self.ref_model, (network_model(seed), shape)], self.rounds, 2))
            self.journal.add_ratio(name, float(med[1] / med[0]))


def calibrate(table: LatencyTable, seed: NetworkSpec, timer: Timer, ref_model: Model,
              base_ms: float, proto: Any, earlier_ratios: Sequence[float] = (),
              variants: Sequence[NetworkSpec] | None = None) -> dict[str, Any]:
    """The factor (and boundary and per-entry costs, see fit_calibration) that turn a
    sum of entries into end-to-end milliseconds.

    The seed's level: median of (seed end to end / reference block) over bursts spread
    through the profile run and at its end, x the reference's base ms. The factor is
    then fitted (least squares on relative error) to the seed and to
    ``calibration_variants`` reduced variants (calibration_variants()), each timed end
    to end in the same round-robin as the seed: a factor from the seed alone is biased
    for the smaller networks the search actually scores. ``variants`` replace those
    (a seed covered at its width multipliers only is fitted to those).
    """
    shape = network_input_shape(seed)
    seed_model = (network_model(seed), shape)
    if variants is None:
        variants = calibration_variants(seed, proto.calibration_variants)
    ratios = list(earlier_ratios)
    relative: dict[int, list[float]] = {}
    raw = []
    for b in range(proto.calibration_bursts):
        idx = [(b * 8 + j) % len(variants) for j in range(min(8, len(variants)))] \
            if variants else []
        models = [ref_model, seed_model] + [(network_model(variants[i]), shape) for i in idx]
        med = fast_ms(timer.time(models, proto.calibration_rounds, 2))
        ratios.append(float(med[1] / med[0]))
        raw.append(float(med[1]))
        for i, m in zip(idx, med[2:]):
            relative.setdefault(i, []).append(float(m / med[1]))
    seed_ms = float(np.median(ratios)) * base_ms
    networks = [seed] + [variants[i] for i in sorted(relative)]
    x = np.array([sum(table.entry_ms(k) or np.nan for _, k in entry_keys(s)) for s in networks])
    e = np.array([input_elements_m(s) for s in networks])
    n = np.array([len(entry_keys(s)) for s in networks], dtype=float)
    y = np.array([seed_ms] + [float(np.median(relative[i])) * seed_ms for i in sorted(relative)])
    w = np.array([max(1.0, len(relative) / 4)] + [1.0] * len(relative))
    factor, boundary, per_entry = fit_calibration(x, e, n, y, w)
    fit = np.abs(factor * (x - boundary * e - per_entry * n) / y - 1)
    return {"factor": factor, "boundary_ms_per_m": boundary, "per_entry_ms": per_entry,
            "factor_seed_only": seed_ms / x[0], "seed_e2e_ms": seed_ms,
            "table_sum_ms": float(x[0]), "calibration_variants": len(relative),
            "fit_median_abs_error": float(np.median(fit[1:])) if len(fit) > 1 else 0.0,
            "seed_ratio_bursts": len(ratios), "seed_ratio_spread": _spread(np.asarray(ratios)),
            "e2e_raw_ms_final_bursts": [round(r, 4) for r in raw]}


# Fewer networks than this fit the factor alone (a seed covered at its multipliers only).
MIN_BOUNDARY_FIT = 12


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


def mixed_variants(seed: NetworkSpec, n: int, rng_seed: int) -> list[NetworkSpec]:
    """The networks a calibration is fitted to and a validation times: half as the
    search makes them early (random_variants), half deep (every group likely cut, down
    to 8 channels; named ``..._deep``), as low budgets and the baselines reach. Fitted
    to the first half alone, a table mispredicted a width multiplier x0.41 by 15-40% at
    64 px (README "Latency tables")."""
    return random_variants(seed, n - n // 2, rng_seed) + [
        dataclasses.replace(v, name=f"{v.name}_deep")
        for v in random_variants(seed, n // 2, rng_seed + 1, deep=True)]


def calibration_variants(seed: NetworkSpec, n: int) -> list[NetworkSpec]:
    """The calibration's variants (rng seed 1000: validate with others)."""
    return mixed_variants(seed, n, 1000)


# ---------------------------------------------------------------------- validation
def random_variants(seed: NetworkSpec, n: int, rng_seed: int = 0,
                    deep: bool = False) -> list[NetworkSpec]:
    """Reduced variants as the search makes them: each group independently, with
    probability 1/2, cut to a random multiple of 8 between a quarter of its width and
    its width. ``deep``: with probability 4/5, to any multiple of 8 up to its width
    (what low budgets and uniform baselines reach). Distinct from the seed and from
    each other."""
    rng = random.Random(rng_seed)
    variants: list[NetworkSpec] = []
    seen = {seed}
    while len(variants) < n:
        spec = seed
        for g in seed.groups:
            if rng.random() < (0.8 if deep else 0.5):
                low = 8 if deep else max(8, (g.width // 4 + 7) // 8 * 8)
                spec = spec.with_group_width(g.name, rng.randrange(low, g.width + 1, 8))
        if spec not in seen:
            seen.add(spec)
            variants.append(dataclasses.replace(spec, name=f"{seed.name}_v{len(variants)}"))
    return variants


def seed_e2e_ms(table: LatencyTable, seed: NetworkSpec) -> float:
    """The seed's end-to-end latency measured at calibration (else its prediction)."""
    for s in table.meta.get("seeds", []):
        if s.get("signature") == signature(seed) and "seed_e2e_ms" in s:
            return float(s["seed_e2e_ms"])
    return table.predict_ms(seed)


def validate(table: LatencyTable, device: Device, seed: NetworkSpec, n: int,
             timer: Timer | None = None, rng_seed: int = 0, progress: bool = True,
             per_chunk: int = 8, rounds: int = 60) -> tuple[dict[str, Any], pd.DataFrame]:
    """Measure ``n`` random reduced variants end to end, compare with predictions: half
    as the search makes them (random_variants), half deep (``deep`` in the frame), as
    low budgets and the baselines reach.

    Each chunk times the reference block, the seed and ``per_chunk`` variants
    round-robin. ``measured_ms`` = median(variant) / median(seed) in the same chunk x
    the seed's end-to-end latency measured at calibration: an end-to-end reference
    interleaved with every variant cancels host drift (DESIGN.md section 2), and the
    calibration's own error still counts. Also kept: ``vs_ref_block_ms`` (normalised by
    the reference block instead, which drifts differently from whole networks) and
    ``raw_ms`` (unnormalised, drift included). rng_seed 1000 is the
    calibration's variants: validate with other seeds.
    """
    from tqdm import tqdm

    timer = timer or make_timer(device)
    timer.check()
    ref = EntryKey(**table.meta["reference"]["key"])
    base_ms = float(table.meta["reference"]["base_ms"])
    anchor_ms = seed_e2e_ms(table, seed)
    variants = mixed_variants(seed, n, rng_seed)
    rows = []
    ref_model = (entry_model(ref), input_shape(ref))
    shape = network_input_shape(seed)
    seed_model = (network_model(seed), shape)
    for i in tqdm(range(0, n, per_chunk), disable=not progress, unit="chunk"):
        chunk = variants[i:i + per_chunk]
        models = [ref_model, seed_model] + [(network_model(v), shape) for v in chunk]
        med = fast_ms(timer.time(models, rounds, warmup=2))
        for v, m in zip(chunk, med[2:]):
            rows.append({"variant": v.name, "predicted_ms": table.predict_ms(v),
                         "measured_ms": m / med[1] * anchor_ms,
                         "vs_ref_block_ms": m / med[0] * base_ms, "raw_ms": m,
                         "seed_raw_ms": med[1], "deep": v.name.endswith("_deep")})
    frame = pd.DataFrame(rows)
    frame["error"] = frame["predicted_ms"] / frame["measured_ms"] - 1
    return summarize(frame, table, seed, n), frame


def summarize(frame: pd.DataFrame, table: LatencyTable, seed: NetworkSpec, n: int
              ) -> dict[str, Any]:
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
        **{f"{part}_{k}": v for part, rows in (("search_like", ~frame["deep"]),
                                                ("deep", frame["deep"])) if rows.any()
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
    folder = table_paths(device, root)[0].parent
    stem = folder / f"validation_{summary['seed']}{suffix}"
    write_text_atomic(stem.with_suffix(".csv"), frame.to_csv(index=False, float_format="%.5g"))
    write_text_atomic(stem.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    return stem.with_suffix(".json")


def measure_e2e(spec: NetworkSpec, device: Device, table: LatencyTable,
                timer: Timer | None = None, bursts: int = 5, rounds: int = 20
                ) -> dict[str, float]:
    """``spec`` end to end, now: ``raw_ms`` (fast-tail time, median over bursts), and
    ``vs_seed_ms`` (relative to the table's seed of the same structure timed in the same
    round-robin, x that seed's latency at calibration: drift cancels), when there is
    such a seed."""
    timer = timer or make_timer(device)
    timer.check()
    shape = network_input_shape(spec)
    seeds = [s for s in table.seeds if signature(s) == signature(spec)]
    models = [(network_model(spec), shape)] + [(network_model(s), shape) for s in seeds[:1]]
    raw, ratios = [], []
    for _ in range(bursts):
        med = fast_ms(timer.time(models, rounds, warmup=2))
        raw.append(med[0])
        if seeds:
            ratios.append(med[0] / med[1])
    out = {"raw_ms": float(np.median(raw))}
    if seeds:
        out["vs_seed_ms"] = float(np.median(ratios)) * seed_e2e_ms(table, seeds[0])
        out["seed"] = seeds[0].name  # type: ignore[assignment]
    return out
