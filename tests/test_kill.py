"""kill -9 in every phase of a real search (a tiny spec, a tiny IDX dataset, real training
and checkpoints), each time resumed: the result is bit for bit the uninterrupted run's.

The kills come from the test side: tests/killhook/sitecustomize.py, on the search
process's PYTHONPATH, SIGKILLs it right after the N-th atomic write of a given file
(NETADAPT_TEST_KILL_AFTER), so each kill lands at an exact point of its phase."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from netadapt.baseline import baselines_for_run
from netadapt.config import SearchConfig
from netadapt.driver import start_search
from netadapt.records import BaselineRecord

from .conftest import ROOT, fake_ms, journal, same_weights, tiny_search

HOOK = Path(__file__).resolve().parent / "killhook"
KILL_ENV = "NETADAPT_TEST_KILL_AFTER"  # read by HOOK / sitecustomize.py

# One run killed in every phase in turn: after the N-th atomic write of a file, with a
# checkpoint after every step, so each kill lands mid-phase, deterministically.
# Phase -> (kill point, what the run holds when the kill landed there: record types not
# yet journaled, files already written).
KILL_POINTS: dict[str, tuple[str, set[str], str | None]] = {
    "seed training": ("checkpoints/seed.pt#3", {"seed"}, "checkpoints/seed.pt"),  # 3 of 6
    "proposals": (".correct.pt#3", {"iteration"}, None),  # a proposal scored, not saved
    "promotion": ("iterations/iter_001.yaml", {"iteration"}, "iterations/iter_001.yaml"),
    "long-term fine-tune": ("checkpoints/long_term.pt#2", {"final"},  # 2 of 4 steps
                            "checkpoints/long_term.pt"),
    "deploy-size training": ("checkpoints/deploy-best.pt#2", {"final"},  # 2 of 3 steps
                             "checkpoints/deploy-best.pt"),
    "baseline training": ("checkpoints/baseline-uniform_pruning.pt#3",
                          {"baseline uniform_pruning"},
                          "checkpoints/baseline-uniform_pruning.pt"),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The config of a tiny search, one uninterrupted run of it and that run's baselines,
    to compare with."""
    tmp_path = tmp_path_factory.mktemp("search")
    config = tiny_search(tmp_path)
    start_search(config, tmp_path / "full", predict_ms=fake_ms)
    baselines = baselines_for_run(tmp_path / "full", predict_ms=fake_ms)
    return tmp_path / "full", config, baselines


def kill_in_every_phase(config: SearchConfig, points: dict[str, tuple[str, set[str], str | None]],
                        run: Path, tmp_path: Path) -> None:
    """Start ``config``'s search in a fresh process (an empty seed cache) and kill -9 it
    at each of ``points`` in turn, every start resuming what the last kill left; then
    resume it to the end. Checks that each kill landed in its phase and that each phase
    killed mid-way went on from its checkpoint's step, not from the start."""
    go = [sys.executable, str(HOOK / "run_search.py"), str(run)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HOOK), str(ROOT)]),
           "NETADAPT_CHECKPOINT_SECONDS": "0",  # a checkpoint after every step
           "NETADAPT_CACHE": str(tmp_path / "cache")}  # empty: the seed is trained here
    env.pop(KILL_ENV, None)
    resumed_at: str | None = None
    for phase, (point, not_yet, written) in points.items():
        killed = subprocess.run([*go, json.dumps(config.to_json())],
                                env={**env, KILL_ENV: point}, timeout=300,
                                capture_output=True, text=True)
        assert killed.returncode == -signal.SIGKILL, (phase, killed.stderr)
        recorded = {f"{r['type']} {r.get('name', '')}".strip() for r in journal(run)} \
            | {r["type"] for r in journal(run)}
        assert not recorded & not_yet and (written is None or (run / written).is_file()), \
            (phase, recorded)
        if resumed_at is not None:  # the phase killed last time went on from its step
            assert resumed_at in killed.stdout, (phase, killed.stdout)
        name, _, nth = point.partition("#")
        resumed_at = f"resumed {Path(name).name} {nth}" if name.startswith("checkpoints/") \
            else None
        if phase == "seed training":
            assert not list((tmp_path / "cache").glob("seeds/*.pt"))  # no partial seed cached
    finished = subprocess.run(go, env=env, timeout=300, capture_output=True, text=True,
                              check=True)
    assert resumed_at is None or resumed_at in finished.stdout
    assert not list((run / "checkpoints").glob("*.pt"))  # every phase cleaned up


def assert_same_result(run: Path, full: Path, baselines: list[BaselineRecord]) -> None:
    """``run`` (killed and resumed) ended with the uninterrupted ``full``'s bits: the
    result, the seed, every trained baseline; and trained no proposal twice."""
    assert (run / "best.yaml").read_text() == (full / "best.yaml").read_text()
    assert same_weights(run / "best.pt", full / "best.pt")
    assert same_weights(run / "seed.pt", full / "seed.pt")
    for baseline in (r for r in baselines if r.trained):
        assert same_weights(run / f"baselines/{baseline.name}.pt",
                            full / f"baselines/{baseline.name}.pt")
    proposals = [(r["iteration"], r["group"], r["rung"]) for r in journal(run)
                 if r["type"] == "proposal"]
    assert len(proposals) == len(set(proposals))  # none trained (and recorded) twice
    assert len(proposals) == sum(r["type"] == "proposal" for r in journal(full))


@pytest.mark.slow
def test_kill_dash_nine_in_every_phase_then_resume_gives_the_same_result(setup, tmp_path):
    full, config, baselines = setup
    config = dataclasses.replace(config, compare=True)  # the baselines too
    kill_in_every_phase(config, KILL_POINTS, tmp_path / "killed", tmp_path)
    assert_same_result(tmp_path / "killed", full, baselines)
