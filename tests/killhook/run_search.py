"""Start or resume a search with the tests' fake latency (tests.conftest.fake_ms), for
tests/test_kill.py, which runs it in a process of its own with this folder (the kill
hook, sitecustomize.py) and the repository on PYTHONPATH:

    python tests/killhook/run_search.py RUN [CONFIG_JSON]

A new search in RUN with the config given, or, where RUN exists, that run resumed.

Prints "resumed CHECKPOINT STEP" whenever a phase continues from its checkpoint, so the
test can check that a phase killed mid-way went on from its step, not from the start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from netadapt.checkpoint import Checkpoint
from netadapt.config import SearchConfig
from netadapt.driver import resume_search, start_search
from tests.conftest import fake_ms

load = Checkpoint.load


def spy(self: Checkpoint, settings: dict) -> dict | None:
    """Checkpoint.load, reporting which phase continues from which step."""
    state = load(self, settings)
    if state is not None:
        print("resumed", self.path.name, state["step"], flush=True)
    return state


Checkpoint.load = spy  # type: ignore[method-assign]
run = Path(sys.argv[1])
if run.exists():
    resume_search(run, predict_ms=fake_ms)
else:
    start_search(SearchConfig.from_json(json.loads(sys.argv[2])), run, predict_ms=fake_ms)
