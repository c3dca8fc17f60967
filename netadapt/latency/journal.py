"""The profiling journal: what an interrupted ``netadapt profile`` continues from.

Every chunk of entry timings is appended to journal.jsonl beside the table and fsynced
before the next chunk starts, so a killed run loses at most one chunk and the same
command picks up where it stopped; the finished table replaces the old one only at the
end, and the journal is removed then.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..files import Journal
from ..spec import NetworkSpec
from .graphs import EntryKey
from .table import KEY_COLUMNS, table_paths

JOURNAL_COLUMNS = KEY_COLUMNS + ["raw_ms", "ref_ms", "spread", "n"]
JOURNAL_FILE = "journal.jsonl"
# What netadapt 0.1.0 wrote before its profile journal was one JSON-lines file: an
# interrupted profile of that version is continued from them (read, never written).
LEGACY_ATTEMPTS, LEGACY_RATIOS, LEGACY_STATE = "journal.csv", "journal_seeds.csv", "journal.json"


def journal_path(device: str, root: Path | None = None) -> Path:
    """Where DEVICE's profiling journal is written: beside its table."""
    return table_paths(device, root)[0].parent / JOURNAL_FILE


def sig6(value: float) -> float:
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
        """Delete every file of the journal (the table holds what it recorded)."""
        for path in self.paths:
            path.unlink(missing_ok=True)

    def _of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.journal.read() if r.get("type") == kind]

    # ----------------------------------------------------------- state

    def start(self, reference: EntryKey, fresh: bool, seeds: Sequence[NetworkSpec]) -> None:
        """Record a session's start (read the journal first: see files.Journal)."""
        self.journal.append({"type": "start", "reference": reference.columns(),
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
        """Journal one burst's seed end to end / reference block (see ratios)."""
        self.journal.append({"type": "ratio", "seed": seed, "ratio": sig6(ratio)})

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

