"""The run directory: journal survives a kill, events replay, resume is guarded."""

from __future__ import annotations

import errno
import json

import pytest

from netadapt import __version__
from netadapt.records import (
    TIME_FIELDS,
    BaselineRecord,
    FinalRecord,
    IterationRecord,
    ProposalRecord,
    SeedRecord,
    timed,
)
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


# Seed, final and baseline records exactly as the driver wrote them as dict literals
# (before they were typed): classification, segmentation, and the three baseline shapes.
LAP = {"wall_s": 12.5, "train_s": 10.25, "eval_s": 1.5}
WRITTEN = [
    {"type": "seed", "accuracy": 0.8125, "trained_steps": 900,
     "notes": ["trained the seed; cached /home/u/.cache/netadapt/seeds/ab12.pt"],
     "accuracy_protocol": "BN re-estimated", "metric": "top-1", "holdout_px": 32,
     "latency_ms": 20.5, "params": 4202216.0, "macs": 10856384.0, **LAP,
     "time": "2026-11-30T10:00:00"},
    {"type": "seed", "accuracy": 0.4375, "trained_steps": 0, "notes": [],
     "accuracy_protocol": "BN re-estimated", "metric": "mIoU", "pixel_accuracy": 0.875,
     "holdout_px": 24, "latency_ms": 30.0, "params": 3.0e6, "macs": 2.5e8, **LAP,
     "time": "2026-11-30T10:00:00"},
    {"type": "final", "iteration": 4, "latency_ms": 11.75, "params": 2.5e6, "macs": 6.0e6,
     "steps": 580, "accuracy": 0.78125, "holdout_px": 32, "deploy_steps": 200,
     "test_accuracy": 0.7734, "test_px": "224x224", "seed_test_accuracy": 0.8301,
     "seed_test_px": 32, "budgets_met": True, **LAP, "time": "2026-11-30T11:00:00"},
    {"type": "final", "iteration": 2, "latency_ms": 20.0, "params": 2.0e6, "macs": 2.0e8,
     "steps": 40, "accuracy": 0.375, "holdout_px": 24, "deploy_steps": 0,
     "test_accuracy": 0.3125, "test_pixel_accuracy": 0.8125, "test_px": "24x24",
     "seed_test_accuracy": 0.4, "seed_test_px": 24, "budgets_met": False, **LAP,
     "time": "2026-11-30T11:00:00"},
    {"type": "baseline", "name": "width_multiplier", "knob": "x0.62", "latency_ms": 11.5,
     "params": 1.9e6, "macs": 5.5e6, "steps": 580, "accuracy": 0.75, "holdout_px": 32,
     "deploy_steps": 200, "test_accuracy": 0.7461, "test_px": "224x224", **LAP,
     "time": "2026-11-30T12:00:00"},
    {"type": "baseline", "name": "resolution",
     "note": "no setting meets the budgets (or the latency table lacks it)", **LAP,
     "time": "2026-11-30T12:00:00"},
    {"type": "baseline", "name": "torch_pruning",
     "note": "Torch-Pruning is not installed: pip install netadapt[pruning]", **LAP,
     "time": "2026-11-30T12:00:00"},
]


def test_seed_final_and_baseline_records_written_as_dicts_read_back_typed(tmp_path):
    """A journal of a run made before the records were typed reads back, and a typed
    record writes the very same line (same keys, in the same order: history.csv's
    columns)."""
    run = RunDir.create(tmp_path / "run", {})
    (tmp_path / "run" / "history.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in WRITTEN))
    seed, final = run.seed_record(), run.final_record()
    assert seed == SeedRecord(accuracy=0.8125, trained_steps=900, notes=WRITTEN[0]["notes"],
                              accuracy_protocol="BN re-estimated", metric="top-1",
                              holdout_px=32, latency_ms=20.5, params=4202216.0,
                              macs=10856384.0, **LAP)
    assert final is not None and final.budgets_met and final.test_pixel_accuracy is None
    assert (final.iteration, final.steps, final.test_px, final.seed_test_px) == \
        (4, 580, "224x224", 32)
    baselines = run.baseline_records()
    assert [(b.name, b.trained) for b in baselines] == \
        [("width_multiplier", True), ("resolution", False), ("torch_pruning", False)]
    assert baselines[0].knob == "x0.62" and baselines[0].test_accuracy == 0.7461
    assert baselines[2].note == WRITTEN[-1]["note"] and baselines[2].latency_ms is None
    for written in WRITTEN:
        cls = {"seed": SeedRecord, "final": FinalRecord, "baseline": BaselineRecord}[
            written["type"]]
        record = cls.from_dict(written)
        # what the driver journals: the record's dict, then its clock lap
        fresh = {k: v for k, v in record.to_dict().items() if k not in TIME_FIELDS.values()}
        again = timed(fresh, {phase: written[name] for phase, name in TIME_FIELDS.items()})
        assert list(again.items()) == [(k, v) for k, v in written.items() if k != "time"]


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
