"""The run directory: journal survives a kill, events replay, resume is guarded."""

from __future__ import annotations

import errno
import json

import pytest

from netadapt import __version__
from netadapt.records import IterationRecord, ProposalRecord
from netadapt.rundir import RunDir, RunError
from netadapt.search import Budget, Iteration, Start, netadapt, one_by_one, resources_of

from .conftest import evaluate, fake_accuracy, fake_ms


def journal_events(run: RunDir, events) -> None:
    """Write search events as the driver does."""
    for e in events:
        run.append(IterationRecord.of(e) if isinstance(e, Iteration) else ProposalRecord.of(e))


def test_journal_replays_into_the_same_search_events(tiny_spec, tmp_path):
    start = Start(tiny_spec, fake_accuracy(tiny_spec), resources_of(tiny_spec, fake_ms))
    budgets = [Budget("latency_ms", start.resources["latency_ms"] * 0.6)]
    events = list(netadapt(start, budgets, fake_ms, one_by_one(evaluate)))
    run = RunDir.create(tmp_path / "run", {"budget": ["x"]})
    journal_events(run, events)
    assert run.events(tiny_spec) == events
    assert [e.chosen.spec for e in run.events(tiny_spec) if isinstance(e, Iteration)] == \
        [e.chosen.spec for e in events if isinstance(e, Iteration)]


def test_a_torn_last_line_is_dropped_and_the_journal_stays_appendable(tmp_path):
    run = RunDir.create(tmp_path / "run", {})
    run.append({"type": "seed", "accuracy": 0.5})
    with open(tmp_path / "run" / "history.jsonl", "a") as f:
        f.write('{"type": "proposal", "iter')  # kill -9 in the middle of a write
    assert [r["type"] for r in run.records()] == ["seed"]
    run.append({"type": "final", "accuracy": 0.6})
    assert [r["type"] for r in run.records()] == ["seed", "final"]


def test_a_corrupt_middle_line_is_an_error_not_silence(tmp_path):
    run = RunDir.create(tmp_path / "run", {})
    (tmp_path / "run" / "history.jsonl").write_text('{"type": "seed"}\nnot json\n{"a": 1}\n')
    with pytest.raises(RunError, match="line 2 is corrupt"):
        run.records()


def test_a_new_run_never_reuses_a_non_empty_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="already exists and is not empty; resume it with"):
        RunDir.create(tmp_path / "run", {})
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_resume_refuses_other_commands_versions_and_plain_directories(tmp_path):
    with pytest.raises(RunError, match="not a netadapt run directory"):
        RunDir.open(tmp_path)
    RunDir.create(tmp_path / "a", {})
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert RunDir.open(tmp_path / "a").config["version"] == __version__
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "command": "baseline"}))
    with pytest.raises(RunError, match="made by `netadapt baseline`"):
        RunDir.open(tmp_path / "a")
    (tmp_path / "a" / "config.json").write_text(json.dumps({**config, "version": "0.0.1"}))
    with pytest.raises(RunError, match="made by netadapt 0.0.1"):
        RunDir.open(tmp_path / "a")


def test_a_full_disk_is_one_line_that_says_how_to_resume(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "run", {})
    run.append({"type": "seed"})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("netadapt.files.os.fsync", full)
    with pytest.raises(RunError, match=r"the disk is full; .* --resume"):
        run.save_state("iterations/iter_001.pt", {})
    assert not (tmp_path / "run" / "iterations" / "iter_001.pt").exists()
    monkeypatch.undo()
    assert [r["type"] for r in run.records()] == ["seed"]
