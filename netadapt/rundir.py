"""The run directory: resolved config, append-only history, checkpoints, resume.

    RUN/
      config.json            the resolved config of the command that made the run
      history.jsonl          append-only journal: one JSON record per line, fsynced
      history.csv            the same records as a table (rewritten atomically)
      seed.yaml, seed.pt     the seed network (trained here when no weights were given)
      iterations/iter_NNN.yaml, .pt   the network chosen by each iteration
      proposals/iter_NNN/    weights of the running iteration's finished proposals
      checkpoints/PHASE.pt   progress of a running long phase (seed, long-term, deploy,
                             baseline training); removed once the phase is recorded
      best.yaml, best.pt     the result, after the long-term fine-tune
      seed_deployed.*        the seed after the same training at the deployed size
      baselines/NAME.*       the width multiplier (every baseline with --compare)
      accuracy_vs_latency.png

A kill at any moment loses at most the record being written: files are replaced
atomically, and a torn last journal line is ignored when the run is read back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import __version__
from .errors import NetadaptError
from .files import Journal, JournalError, link_atomic, write_bytes_atomic
from .records import (
    BaselineRecord,
    FinalRecord,
    IterationRecord,
    ProposalRecord,
    Record,
    SeedRecord,
    of_type,
)
from .search import Event, Proposal
from .spec import NetworkSpec, dumps_spec, load_spec


class RunError(NetadaptError):
    """A run directory that cannot be created, written or resumed."""


@contextlib.contextmanager
def _writing(path: Path, run: Path) -> Iterator[None]:
    """Turn an OS error while writing into one line that says how to recover."""
    try:
        yield
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise RunError(f"cannot write {path}: {reason}; the run is intact up to its last "
                       f"record: fix that and run `netadapt search --resume {run}`") from None


@dataclass
class RunDir:
    """One search run on disk."""

    path: Path

    # ------------------------------------------------------------------ create / open

    @classmethod
    def create(cls, path: Path, config: dict[str, Any]) -> RunDir:
        """A new run directory holding ``config``; refuses to reuse a non-empty one."""
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path} is a file, not a run directory; pick another --out "
                           f"(the file is left as it is)")
        if path.exists() and any(path.iterdir()):
            raise RunError(f"{path} already exists and is not empty; resume it with "
                           f"`netadapt search --resume {path}` or pick another --out")
        run = cls(path)
        with _writing(path, path):
            path.mkdir(parents=True, exist_ok=True)
            run._write_json("config.json", {"command": "search", "version": __version__,
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                            **config})
        return run

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run, checked to be a search run of this netadapt version."""
        config_path = path / "config.json"
        if not config_path.is_file():
            raise RunError(f"{path} is not a netadapt run directory (no config.json)")
        run = cls(path)
        config = run.config
        if config.get("command") != "search":
            raise RunError(f"{path} was made by `netadapt {config.get('command')}`, not "
                           f"`netadapt search`; it cannot be resumed as a search")
        if config.get("version") != __version__:
            raise RunError(f"{path} was made by netadapt {config.get('version')}; this is "
                           f"{__version__}: re-run the search with this version")
        return run

    def update_config(self, values: dict[str, Any]) -> None:
        """Add resolved facts (data splits, latency table) to config.json, atomically."""
        with _writing(self.path / "config.json", self.path):
            self._write_json("config.json", {**self.config, **values})

    @property
    def config(self) -> dict[str, Any]:
        try:
            data = json.loads((self.path / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunError(f"{self.path / 'config.json'}: unreadable ({exc})") from None
        if not isinstance(data, dict):
            raise RunError(f"{self.path / 'config.json'}: not a JSON object")
        return data

    # ------------------------------------------------------------------ journal

    def append(self, record: dict[str, Any] | Record) -> None:
        """Append one record to the journal (flushed and fsynced before returning)."""
        data = record if isinstance(record, dict) else record.to_dict()
        with _writing(self._journal.path, self.path):
            self._journal.append({**data, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def records(self) -> list[dict[str, Any]]:
        """Every complete record; a torn last line (a kill mid-write) is dropped."""
        try:
            with _writing(self._journal.path, self.path):
                return self._journal.read()
        except JournalError as exc:
            raise RunError(f"{exc} (edited by hand?); restore it or start a new "
                           f"run") from None

    def seed_record(self) -> SeedRecord | None:
        """The seed's record; None before the seed is ready."""
        return next(iter(of_type(self.records(), SeedRecord)), None)

    def final_record(self) -> FinalRecord | None:
        """The result's record; None until the search has finished."""
        return next(iter(of_type(self.records(), FinalRecord)), None)

    def require_final(self) -> FinalRecord:
        """The result's record; refuses a run whose search has not finished."""
        final = self.final_record()
        if final is None:
            raise RunError(f"{self.path}: the search has not finished; run "
                           f"`netadapt search --resume {self.path}` first")
        return final

    def baseline_records(self) -> list[BaselineRecord]:
        """The finished baselines, in the order they were recorded."""
        return of_type(self.records(), BaselineRecord)

    @property
    def _journal(self) -> Journal:
        return Journal(self.path / "history.jsonl")

    def history_table(self) -> pd.DataFrame:
        """The journal as a table (one row per proposal / iteration / seed / final)."""
        return pd.DataFrame(self.records())

    def write_csv(self) -> None:
        path = self.path / "history.csv"
        with _writing(path, self.path):
            write_bytes_atomic(path, self.history_table().to_csv(index=False).encode())

    def events(self, seed: NetworkSpec) -> list[Event]:
        """The journal's proposals and iterations as search records, specs re-derived
        from the seed (a proposal = its parent with one group at a new width)."""
        events: list[Event] = []
        current = seed
        pending: dict[tuple[int, str], Proposal] = {}
        for r in self.records():
            if r["type"] == ProposalRecord.TYPE:
                p = ProposalRecord.from_dict(r).event(current)
                pending[(p.iteration, p.group)] = p
                events.append(p)
            elif r["type"] == IterationRecord.TYPE:
                record = IterationRecord.from_dict(r)
                iteration = record.event(pending[(record.iteration, record.group)])
                events.append(iteration)
                current = iteration.chosen.spec
        return events

    # ------------------------------------------------------------------ files

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        write_bytes_atomic(self.path / name, (json.dumps(data, indent=2) + "\n").encode())

    def write_spec(self, relative: str, spec: NetworkSpec) -> Path:
        path = self.path / relative
        with _writing(path, self.path):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, dumps_spec(spec).encode("utf-8"))
        return path

    def write_text(self, relative: str, text: str) -> Path:
        """Write a text file of the run atomically (e.g. a failed job's tracebacks)."""
        path = self.weights_path(relative)
        with _writing(path, self.path):
            write_bytes_atomic(path, text.encode("utf-8"))
        return path

    def read_spec(self, relative: str) -> NetworkSpec:
        return load_spec(self.path / relative)

    def weights_path(self, relative: str) -> Path:
        path = self.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_state(self, relative: str, state: dict[str, Any]) -> Path:
        """Save a state_dict atomically (a kill never leaves half a checkpoint)."""
        from .model import save_state_dict

        path = self.weights_path(relative)
        with _writing(path, self.path):
            save_state_dict(state, path)
        return path

    def copy(self, source: str, target: str) -> None:
        """Copy a file of the run atomically (e.g. a proposal's weights to its iteration):
        a hard link where the file system has them (17 MB not written again), else bytes."""
        path = self.weights_path(target)
        with _writing(path, self.path):
            try:
                link_atomic(self.path / source, path)
            except OSError:
                write_bytes_atomic(path, (self.path / source).read_bytes())

    def remove(self, relative: str) -> None:
        target = self.path / relative
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


SEED_DEPLOYED = "seed_deployed"  # the seed trained at the deployed size, for comparison


def iteration_name(iteration: int) -> str:
    return f"iterations/iter_{iteration:03d}"


def proposal_name(iteration: int, group: str) -> str:
    safe = group.replace("[", "").replace("]", "").replace("..", "-").replace("+", "_")
    return f"proposals/iter_{iteration:03d}/{safe}.pt"

