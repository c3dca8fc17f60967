"""The baselines again, matched to the search's result by latency measured here, not by
the table: is a win the architecture's, or the table's error?

    python scripts/match_measured.py plan runs/bench-64L/seed*/50pct    # quiet machine
    python scripts/match_measured.py train runs/bench-64L/seed*/50pct   # any load
    python scripts/match_measured.py time runs/bench-64L/seed*/50pct    # quiet machine

A search picks, among thousands of proposals, the ones its latency table prices lowest,
so its result tends to be one the table underprices; a baseline is one setting, not
selected that way. For each finished run whose device is this machine (a local table):
``plan`` copies the run without its baselines to RUN-measured/ (weights hard-linked),
times the search's result and the seed end to end here in one round-robin, and finds
each baseline's largest setting whose latency, timed the same way relative to the seed,
is at most the result's (the timings kept in RUN-measured/measured_ms.json); ``train``
trains every baseline at that setting with the same seed weights, steps, data and
evaluation as in the run (netadapt's baseline phase, with the timings as predictor);
``time`` times every network of RUN-measured again, all in one round-robin, and prints
the comparison. Timing needs a quiet machine (another process training on the other
core moved these ratios by up to 5%); training does not.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from bench_search import time_networks  # this folder: the same timing and columns

from netadapt.baseline import BASELINES, BaselineUnavailable
from netadapt.driver import SearchConfig, Searcher, comparison
from netadapt.errors import NetadaptError
from netadapt.files import link_atomic, write_text_atomic
from netadapt.latency import load_device
from netadapt.model import read_state_dict
from netadapt.report import comparison_text, measure_here_ms, verdict
from netadapt.rundir import RunDir
from netadapt.spec import NetworkSpec, load_spec, spec_from_dict

SKIP = {"baselines", "checkpoints", "history.jsonl", "history.csv", "config.json",
        "measured_ms.json"}
TIMINGS = "measured_ms.json"


def copy_without_baselines(run: Path, target: Path, budget_percent: float) -> None:
    """RUN's files (hard links) and journal without baseline records; the latency budget
    set to ``budget_percent`` of the seed."""
    target.mkdir(parents=True, exist_ok=True)
    for path in run.rglob("*"):
        relative = path.relative_to(run)
        if path.is_dir() or relative.parts[0] in SKIP or (target / relative).exists():
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        link_atomic(path, target / relative)
    lines = (run / "history.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("type") != "baseline"]
    write_text_atomic(target / "history.jsonl", "\n".join(kept) + "\n")
    config = json.loads((run / "config.json").read_text())
    config["search"]["budgets"] = [f"{budget_percent:.2f}%"]
    write_text_atomic(target / "config.json", json.dumps(config, indent=1) + "\n")


class MeasuredLatency:
    """A predictor: the seed's predicted ms x (spec / seed, timed here in one
    round-robin), each spec timed once and kept in RUN-measured/measured_ms.json."""

    def __init__(self, run: Path, target: Path, measure: bool) -> None:
        self.seed = load_spec(run / "seed.yaml")
        self.seed_ms = float(next(r for r in map(json.loads, (run / "history.jsonl").open())
                                  if r.get("type") == "seed")["latency_ms"])
        self.path, self.measure = target / TIMINGS, measure
        self.known: dict[str, float] = (json.loads(self.path.read_text())
                                        if self.path.exists() else {})

    def __call__(self, spec: NetworkSpec) -> float:
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self.known:
            if not self.measure:
                raise SystemExit(f"error: {self.path} has no timing for {spec.name}; run "
                                 f"`plan` first, on a quiet machine")
            s, m = measure_here_ms([self.seed, spec], bursts=9, rounds=30)
            self.known[key] = self.seed_ms * m / s
        return self.known[key]

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.known) + "\n")


def searcher_for(target: Path, predict: MeasuredLatency) -> Searcher:
    run = RunDir.open(target)
    config = SearchConfig.from_json(run.config["search"])
    return Searcher(config, run, spec_from_dict(run.config["seed_spec"]), predict_ms=predict)


def plan(run: Path) -> None:
    target = run.with_name(run.name + "-measured")
    config = json.loads((run / "config.json").read_text())
    if load_device(config["search"]["device"]).runner != "local":
        raise SystemExit(f"error: {run} was searched for {config['search']['device']!r}, "
                         f"not this machine; latency measured here says nothing about it")
    if target.exists():
        shutil.rmtree(target)  # a plan is redone whole: its timings belong together
    target.mkdir(parents=True)
    predict = MeasuredLatency(run, target, measure=True)
    result_ms = predict(load_spec(run / "best.yaml"))
    copy_without_baselines(run, target, 100 * result_ms / predict.seed_ms)
    searcher = searcher_for(target, predict)
    seed_state = read_state_dict(target / "seed.pt")
    settings = []
    for name, make in BASELINES.items():
        try:
            found = make(searcher.seed_spec, searcher.budgets, predict, seed_state)
        except BaselineUnavailable:
            found = None
        settings.append(f"{name} {found.knob if found else '-'}")
    predict.save()
    print(f"{run}: the result times {result_ms / predict.seed_ms:.3f} of the seed here; "
          f"matched: {', '.join(settings)} ({target})", flush=True)


def train(run: Path) -> None:
    target = run.with_name(run.name + "-measured")
    searcher_for(target, MeasuredLatency(run, target, measure=False)).run_baselines()


def time_all(run: Path) -> None:
    target = run.with_name(run.name + "-measured")
    table = comparison(target)
    time_networks(target, table)
    print(f"{target}:\n{comparison_text(table.drop(columns='spec'))}\n{verdict(table)}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["plan", "train", "time"])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        {"plan": plan, "train": train, "time": time_all}[args.phase](run)


if __name__ == "__main__":
    try:
        main()
    except NetadaptError as exc:
        raise SystemExit(f"error: {exc}") from None
