"""Kill -9 a small search at random moments, resume it, and compare with a run that was
never interrupted.

    python scripts/kill_resume.py                    # 20 trials, seed 0
    python scripts/kill_resume.py --trials 5 --seed 1 --out runs/kill-resume

A trial starts the search in a fresh process (an empty seed cache, so the seed is trained
too), sends SIGKILL at a moment drawn uniformly over the run's wall time after its
start-up, then resumes it (`resume_search`, a new process) to the end. The trial passes
when best.yaml, best.pt, seed.pt and every baseline's weights equal the uninterrupted
run's, and the journal records every proposal exactly once (none trained twice) and as
many as the uninterrupted run. The wall time is the latest one seen (the machine's speed
drifts with other work); a kill that comes after the run finished is not counted, and
another moment is drawn. Long phases checkpoint every 0.5 s here
(NETADAPT_CHECKPOINT_SECONDS), so kills also land between checkpoints.

The search is tests/test_driver.py's tiny one (3-block spec, a generated 3-class IDX
dataset, latency from tests.conftest.fake_ms), made longer so that every phase takes
a measurable share of the run: seed training, proposals, promotion, long-term
fine-tune, training at the deployed size, baselines (--compare).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from netadapt.driver import SearchConfig  # noqa: E402
from netadapt.spec import load_spec  # noqa: E402
from tests.conftest import TINY, fake_ms  # noqa: E402
from tests.test_driver import write_idx  # noqa: E402

# Runs in the search process: prints each phase as it starts, so a kill can be placed.
GO = """\
import json, sys
from pathlib import Path
from netadapt import driver
from tests.conftest import fake_ms

def marked(name, method):
    def wrapper(self, *args, **kwargs):
        print("phase", name, flush=True)
        result = method(self, *args, **kwargs)
        if name == "promotion":  # back to the next iteration's proposals
            print("phase proposals", flush=True)
        return result
    return wrapper

for name, method in (("seed training", "_prepare_seed"), ("proposals", "_loop"),
                     ("promotion", "_promote"), ("long-term fine-tune", "_long_term"),
                     ("deploy-size training", "_finish"), ("baselines", "run_baselines")):
    if hasattr(driver.Searcher, method):
        setattr(driver.Searcher, method, marked(name, getattr(driver.Searcher, method)))
run = Path(sys.argv[1])
if len(sys.argv) > 2:
    config = driver.SearchConfig.from_json(json.loads(sys.argv[2]))
    driver.start_search(config, run, predict_ms=fake_ms, progress=False)
else:
    driver.resume_search(run, predict_ms=fake_ms, progress=False)
print("phase done", flush=True)
"""


def config_for(folder: Path) -> SearchConfig:
    spec_path = folder / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(TINY))
    data = write_idx(folder / "data")
    budget = fake_ms(load_spec(spec_path)) * 0.75
    return SearchConfig(budgets=(f"{budget:.4f}ms",), spec=str(spec_path), data=str(data),
                        device="fake", step=0.1, short_term_steps=6, long_term_steps=30,
                        seed_steps=40, deploy_steps=10, resolution=16, batch_size=16,
                        holdout=40, torch_device="cpu", compare=True)


def start(run: Path, config: SearchConfig | None, cache: Path, go: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NETADAPT_CACHE": str(cache),
           "NETADAPT_CHECKPOINT_SECONDS": "0.5"}
    args = [sys.executable, str(go), str(run)]
    if config is not None:
        args.append(json.dumps(config.to_json()))
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def same_weights(a: Path, b: Path) -> bool:
    x, y = torch.load(a), torch.load(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def proposals(run: Path) -> list[tuple[int, str]]:
    lines = (run / "history.jsonl").read_text().splitlines()
    return [(r["iteration"], r["group"]) for r in map(json.loads, lines)
            if r["type"] == "proposal"]


def compare(run: Path, reference: Path) -> list[str]:
    """What differs from the uninterrupted run (empty: identical)."""
    problems = []
    if (run / "best.yaml").read_text() != (reference / "best.yaml").read_text():
        problems.append("best.yaml")
    weights = ["best.pt", "seed.pt"] + [str(p.relative_to(reference))
                                        for p in sorted(reference.glob("baselines/*.pt"))
                                        if not p.name.endswith("test_correct.pt")]
    problems += [w for w in weights if not same_weights(run / w, reference / w)]
    done = proposals(run)
    if len(done) != len(set(done)):
        problems.append("a proposal recorded twice")
    if len(done) != len(proposals(reference)):
        problems.append(f"{len(done)} proposals, reference {len(proposals(reference))}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    folder.mkdir(parents=True, exist_ok=True)
    go = folder / "go.py"
    go.write_text(GO)
    config = config_for(folder)
    rng = random.Random(args.seed)

    began = time.monotonic()
    reference = folder / "reference"
    proc = start(reference, config, folder / "cache-reference", go)
    while not (reference / "config.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    startup = time.monotonic() - began
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted run failed:\n{err}")
    total = time.monotonic() - began
    print(f"uninterrupted run: {total:.1f} s ({startup:.1f} s start-up); "
          f"{len(proposals(reference))} proposals")

    passed, phases, attempts = 0, collections.Counter(), 0
    trial = 0
    while trial < args.trials and attempts < 3 * args.trials:
        attempts += 1
        run = folder / f"trial-{trial:02d}"
        cache = folder / f"cache-{trial:02d}"
        for old in (run, cache):
            shutil.rmtree(old, ignore_errors=True)
        moment = startup + rng.random() * (total - startup)
        began = time.monotonic()
        proc = start(run, config, cache, go)
        try:
            out, _ = proc.communicate(timeout=moment)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate()
        marks = [line[6:] for line in out.splitlines() if line.startswith("phase ")]
        if proc.returncode != -signal.SIGKILL or not (run / "config.json").exists() \
                or "done" in marks:
            # The machine got faster (other work stopped): the run finished first. Draw
            # the next moment over this run's duration.
            total = time.monotonic() - began
            print(f"  moment {moment:.1f} s: the run had finished (rc {proc.returncode}); "
                  f"drawing another over {total:.1f} s")
            continue
        phase = marks[-1] if marks else "start-up"
        if "baselines" in marks:  # a baseline's deploy-size phase is still the baselines'
            phase = "baselines"
        phases[phase] += 1
        resumed_at = time.monotonic()
        resumed = start(run, None, cache, go)
        _, err = resumed.communicate()
        # The machine's speed drifts with other work: the next moment is drawn over the
        # duration this trial suggests (killed part + resumed part, one start-up).
        total = moment + time.monotonic() - resumed_at - startup
        if resumed.returncode != 0:
            print(f"trial {trial}: killed at {moment:.1f} s in {phase}; resume FAILED:\n{err}")
            trial += 1
            continue
        problems = compare(run, reference)
        passed += not problems
        print(f"trial {trial}: killed at {moment:.1f} s in {phase}; resumed: "
              f"{'identical' if not problems else 'DIFFERENT: ' + ', '.join(problems)}")
        trial += 1
    print(f"\n{passed}/{trial} killed-and-resumed runs identical to the uninterrupted one "
          f"(best.yaml, best.pt, seed.pt, baselines' weights; no proposal trained twice)")
    print("kills per phase: " + ", ".join(f"{k} {v}" for k, v in phases.items()))


if __name__ == "__main__":
    main()
