"""Kill -9 a small search at random moments, resume it, and compare with a run that was
never interrupted.

    python benchmarks/kill_resume.py                    # 20 trials, seed 0
    python benchmarks/kill_resume.py --trials 5 --seed 1 --out runs/kill-resume

Everything goes through the command line, as a user would run it. A trial starts
``python -m netadapt search ...`` in a fresh process (an empty seed cache, so the seed is
trained too), sends it SIGKILL at a moment drawn uniformly over the run's wall time after
its start-up, then runs ``python -m netadapt search --resume RUN`` in a new process to
the end. The trial passes when best.yaml, best.pt, seed.pt and every baseline's weights
equal the uninterrupted run's, and the journal records every proposal exactly once (none
trained twice) and as many as the uninterrupted run. The wall time is the latest one
seen (the machine's speed drifts with other work); a kill that comes after the run
finished is not counted, and another moment is drawn. Long phases checkpoint every 0.5 s
here (NETADAPT_CHECKPOINT_SECONDS), so kills also land between checkpoints.

Which phase a kill landed in is read from what the killed run left in its directory (the
journal's records, the checkpoints/ files), against the uninterrupted run's journal.

The search is small and real: a 3-block spec at 48 px, the built-in Fashion-MNIST data
(scripts/setup.sh installs it), and latencies from a real ``local`` table that
``netadapt profile`` measures for that spec first (about 10 s; at 48 px, and at 32 px for
the width-multiplier and resolution baselines) in a private NETADAPT_HOME, so the user's
own tables are never touched. Its steps are chosen so that every phase takes a measurable
share of the run: seed training, proposals, promotion, long-term fine-tune, training at
the deployed size, baselines (--compare).
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

SPEC = {
    "name": "tiny",
    "input_size": [48, 48],
    "in_channels": 3,
    "num_classes": 10,  # Fashion-MNIST's: the latency table covers this very head
    "stem": {"out": 16, "kernel": 3, "stride": 2, "act": "hswish"},
    "blocks": [
        {"kernel": 3, "exp": 16, "out": 16, "stride": 1, "se": False, "act": "relu"},
        {"kernel": 3, "exp": 48, "out": 24, "stride": 2, "se": True, "act": "hswish"},
        {"kernel": 5, "exp": 72, "out": 24, "stride": 1, "se": True, "act": "hswish"},
    ],
    "last_conv": {"out": 64, "act": "hswish"},
    "head": {"type": "classifier", "width": 128, "act": "hswish", "dropout": 0.2},
}
LONG_TERM_STEPS = 40
SEARCH = ["--budget", "80%", "--device", "local", "--step", "0.05",
          "--short-term-steps", "20", "--long-term-steps", str(LONG_TERM_STEPS),
          "--seed-steps", "150", "--deploy-steps", "10", "--resolution", "16",
          "--batch-size", "16", "--holdout", "40", "--torch-device", "cpu", "--compare"]


def netadapt(*args: str) -> list[str]:
    return [sys.executable, "-m", "netadapt", *args]


def prepare(folder: Path) -> tuple[list[str], dict[str, str]]:
    """The spec and a local latency table for it; the search's command line (without
    --out) and the environment every netadapt process of the trials gets."""
    spec = folder / "tiny.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, "NETADAPT_HOME": str(folder / "home"),
           "NETADAPT_CHECKPOINT_SECONDS": "0.5"}
    env.pop("NETADAPT_ROOT", None)  # NETADAPT_HOME's older name: no doubt which home
    began = time.monotonic()
    profiled = subprocess.run(
        netadapt("profile", "--device", "local", "--spec", str(spec),
                 "--multiplier-sizes", "32,48"),
        env=env, capture_output=True, text=True)
    if profiled.returncode != 0:
        raise SystemExit(f"netadapt profile failed:\n{profiled.stdout}\n{profiled.stderr}")
    made = next(line for line in profiled.stdout.splitlines() if "timed this run" in line)
    print(f"latency table: {made.strip()} ({time.monotonic() - began:.0f} s)")
    return netadapt("search", "--spec", str(spec), *SEARCH), env


def start(args: list[str], cache: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "a") as out:  # the child holds its own copy of the descriptor
        return subprocess.Popen(args, env={**env, "NETADAPT_CACHE": str(cache)},
                                stdout=out, stderr=subprocess.STDOUT)


def journal(run: Path) -> list[dict]:
    """The run's records (a last line torn by the kill is not one)."""
    path = run / "history.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def checkpoint_steps(run: Path) -> dict[str, int]:
    """Each phase checkpoint the run holds and the steps it had done."""
    steps = {}
    for path in sorted((run / "checkpoints").glob("*.pt")):
        try:
            steps[path.stem] = int(torch.load(path, weights_only=True)["step"])
        except Exception:  # noqa: BLE001 - atomic writes leave whole files; if not, say so
            steps[path.stem] = -1
    return steps


def phase_of(run: Path, reference: list[dict]) -> str:
    """The phase a killed run was in, from what it left: each phase ends with a journal
    record, so the phase running was the one after the last record; the uninterrupted
    run's journal says how many proposals an iteration has and how many iterations."""
    config = run / "config.json"
    if not config.exists() or "data" not in json.loads(config.read_text()):
        return "start-up"  # the run's data not yet loaded
    records = journal(run)
    types = collections.Counter(r["type"] for r in records)
    if not types["seed"]:
        return "seed training"
    if types["final"]:
        done = types["baseline"] == sum(r["type"] == "baseline" for r in reference)
        return "after the baselines" if done else "baselines"
    iterations = [r for r in reference if r["type"] == "iteration"]
    if types["iteration"] < len(iterations):
        current = types["iteration"] + 1
        proposals = sum(r["type"] == "proposal" and r["iteration"] == current
                        for r in records)
        wanted = sum(r["type"] == "proposal" and r["iteration"] == current for r in reference)
        return "promotion" if proposals == wanted else "proposals"
    # A checkpoint is written after a phase's last step too: a finished long-term
    # fine-tune leaves one with every step done.
    checkpoints = checkpoint_steps(run)
    if "deploy-best" in checkpoints or (run / "best.pt").exists() or \
            checkpoints.get("long_term") == LONG_TERM_STEPS:
        return "deploy-size training"
    return "long-term fine-tune"


def phase_seconds(records: list[dict]) -> list[tuple[str, float]]:
    """Wall seconds by phase, from the records' ``wall_s`` (each record's time since the
    one before it: the seed's includes loading the data)."""
    names = {"seed": "seed training", "proposal": "proposals", "iteration": "promotion",
             "final": "long-term fine-tune + deploy-size training", "baseline": "baselines"}
    seconds: dict[str, float] = dict.fromkeys(names.values(), 0.0)
    for r in records:
        seconds[names[r["type"]]] += r.get("wall_s", 0.0)
    return list(seconds.items())


def same_weights(a: Path, b: Path) -> bool:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def proposals(run: Path) -> list[tuple[int, str]]:
    return [(r["iteration"], r["group"], r["rung"]) for r in journal(run)
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
    folder = (args.out or Path(tempfile.mkdtemp(prefix="kill-resume-"))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # a new table and a new reference each time: nothing of an earlier invocation
    for old in [folder / name for name in ("home", "reference", "reference.log")] \
            + list(folder.glob("cache-*")) + list(folder.glob("trial-*")):
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink(missing_ok=True)
    search, env = prepare(folder)
    rng = random.Random(args.seed)

    began = time.monotonic()
    reference = folder / "reference"
    proc = start([*search, "--out", str(reference)], folder / "cache-reference", env,
                 folder / "reference.log")
    while not (reference / "config.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    startup = time.monotonic() - began
    if proc.wait() != 0:
        raise SystemExit(f"the uninterrupted run failed: {folder / 'reference.log'}")
    total = time.monotonic() - began
    reference_records = journal(reference)
    iterations = sum(r["type"] == "iteration" for r in reference_records)
    print(f"uninterrupted run: {total:.1f} s ({startup:.1f} s start-up); "
          f"{len(proposals(reference))} proposals in {iterations} iterations; "
          f"runs and logs in {folder}")
    print("  its wall time by phase (journal): " + ", ".join(
        f"{name} {seconds:.1f} s" for name, seconds in phase_seconds(reference_records)))

    passed, phases, attempts = 0, collections.Counter(), 0
    trial = 0
    while trial < args.trials and attempts < 3 * args.trials:
        attempts += 1
        run = folder / f"trial-{trial:02d}"
        cache = folder / f"cache-{trial:02d}"
        log = folder / f"trial-{trial:02d}.log"
        for old in (run, cache):
            shutil.rmtree(old, ignore_errors=True)
        log.unlink(missing_ok=True)
        moment = startup + rng.random() * (total - startup)
        began = time.monotonic()
        proc = start([*search, "--out", str(run)], cache, env, log)
        try:
            proc.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if proc.returncode != -signal.SIGKILL or not (run / "config.json").exists():
            # The machine got faster (other work stopped): the run finished first, or it
            # had not started. Draw the next moment over this run's duration.
            if proc.returncode == 0:
                total = time.monotonic() - began
            print(f"  moment {moment:.1f} s: the run had finished or not started "
                  f"(rc {proc.returncode}); drawing another over {total:.1f} s")
            continue
        phase = phase_of(run, reference_records)
        phases[phase] += 1
        held = ", ".join(f"{name} at step {step}" for name, step in
                         checkpoint_steps(run).items()) or "none"
        resumed_at = time.monotonic()
        resumed = start(netadapt("search", "--resume", str(run)), cache, env, log)
        resumed.wait()
        # The machine's speed drifts with other work: the next moment is drawn over the
        # duration this trial suggests (killed part + resumed part, one start-up).
        total = moment + time.monotonic() - resumed_at - startup
        where = f"killed at {moment:.1f} s in {phase} (checkpoints: {held})"
        if resumed.returncode != 0:
            print(f"trial {trial}: {where}; resume FAILED (rc {resumed.returncode}): {log}")
            trial += 1
            continue
        problems = compare(run, reference)
        passed += not problems
        print(f"trial {trial}: {where}; resumed: "
              f"{'identical' if not problems else 'DIFFERENT: ' + ', '.join(problems)}",
              flush=True)
        trial += 1
    print(f"\n{passed}/{trial} killed-and-resumed runs identical to the uninterrupted one "
          f"(best.yaml, best.pt, seed.pt, baselines' weights; no proposal trained twice)")
    print("kills per phase: " + ", ".join(f"{k} {v}" for k, v in phases.items()))
    if passed < args.trials:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
