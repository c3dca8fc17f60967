"""The baselines again, matched to the search's result by latency measured here, not by
the table: is a win the architecture's, or the table's error?

    python benchmarks/match_measured.py plan runs/bench-64L/seed*/50pct    # quiet machine
    python benchmarks/match_measured.py train runs/bench-64L/seed*/50pct   # any load
    python benchmarks/match_measured.py time runs/bench-64L/seed*/50pct    # quiet machine

A search picks, among thousands of proposals, the ones its latency table prices lowest,
so its result tends to be one the table underprices; a baseline is one setting, not
selected that way. For each finished run whose device is this machine (a local table):
``plan`` copies the run without its baselines to RUN-measured/ (weights hard-linked),
times the search's result and the seed end to end here in one round-robin, and finds
each baseline's largest setting whose latency, timed the same way relative to the seed,
is at most the result's (the timings kept in RUN-measured/measured_ms.json); ``train``
trains every baseline at that setting with the same seed weights, steps, data and
evaluation as in the run (netadapt's baseline phase, with the timings as predictor);
``time`` times every network of RUN-measured again, all in one round-robin, prints the
comparison and keeps it in RUN-measured/timed.csv; ``summary`` reads those of all the
runs given and prints, per budget and network, the mean test accuracy and netadapt's
margins over the seeds, raw and adjusted: a matched baseline can still time a few
percent faster than the result, so each baseline's accuracy is also read off its own
accuracy-latency line (per seed, through its runs at every budget, as timed) at the
result's measured latency. Timing needs a quiet machine (another process training on
the other core moved these ratios by up to 5%); training does not.

    python benchmarks/match_measured.py summary runs/bench-64L/seed*/*pct
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from bench_search import interval, summarise, time_networks  # this folder: the same columns

from netadapt.baseline import BASELINES, BaselineUnavailable, baselines_for_run
from netadapt.errors import NetadaptError
from netadapt.files import link_atomic, write_text_atomic
from netadapt.latency import load_device
from netadapt.model import read_state_dict
from netadapt.report import comparison, comparison_text, measure_here_ms, verdict
from netadapt.search import check_reachable, parse_budget, resources_of
from netadapt.spec import NetworkSpec, load_spec

TIMED = "timed.csv"
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
            s, m = measure_here_ms([self.seed, spec], bursts=10, rounds=30)
            self.known[key] = self.seed_ms * m / s
        return self.known[key]

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.known) + "\n")


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
    # the seed as the search ran it (input size, class count) and the copy's budgets,
    # resolved and checked as `train` (baselines_for_run) will, by the timings: every
    # network it asks the predictor about is timed here, on a quiet machine
    seed = load_spec(target / "seed.yaml")
    texts = json.loads((target / "config.json").read_text())["search"]["budgets"]
    budgets = [parse_budget(text, resources_of(seed, predict)) for text in texts]
    check_reachable(seed, budgets, predict)
    seed_state = read_state_dict(target / "seed.pt")
    settings = []
    for name, make in BASELINES.items():
        try:
            found = make(seed, budgets, predict, seed_state)
        except BaselineUnavailable:
            found = None
        settings.append(f"{name} {found.knob if found else '-'}")
    predict.save()
    print(f"{run}: the result times {result_ms / predict.seed_ms:.3f} of the seed here; "
          f"matched: {', '.join(settings)} ({target})", flush=True)


def train(run: Path) -> None:
    target = run.with_name(run.name + "-measured")
    baselines_for_run(target, predict_ms=MeasuredLatency(run, target, measure=False))


def time_all(run: Path) -> None:
    target = run.with_name(run.name + "-measured")
    table = comparison(target)
    time_networks(target, table, bursts=46)  # sub-ms networks: 9 bursts moved ratios ~3%
    write_text_atomic(target / TIMED, table.to_csv(index=False))
    print(f"{target}:\n{comparison_text(table.drop(columns='spec'))}\n{verdict(table)}",
          flush=True)


def on_line(points: pd.DataFrame, at: float) -> float:
    """The test accuracy on the piecewise-linear line through ``points`` (measured_vs_seed,
    test_accuracy) at ``at``, the end segments extended."""
    points = points.sort_values("measured_vs_seed")
    x, y = points["measured_vs_seed"].to_numpy(), points["test_accuracy"].to_numpy()
    i = int(np.clip(np.searchsorted(x, at) - 1, 0, len(x) - 2))
    return float(y[i] + (y[i + 1] - y[i]) * (at - x[i]) / (x[i + 1] - x[i]))


def summary(runs: list[Path]) -> None:
    """Over the seeds of ``runs`` (each timed by ``time``): the mean-and-interval table of
    bench_search.py, then netadapt's margins read at its own measured latency."""
    tables = []
    for run in runs:
        target = run.with_name(run.name + "-measured")
        if not (target / TIMED).exists():
            raise SystemExit(f"error: {target / TIMED} is missing; run `time` first")
        table = pd.read_csv(target / TIMED)
        table.insert(0, "budget", run.name.replace("pct", "%"))
        table.insert(0, "seed", json.loads((run / "config.json").read_text())["search"]["seed"])
        tables.append(table)
    everything = pd.concat(tables, ignore_index=True)
    raw = summarise(everything)
    print(raw.astype(object).where(raw.notna(), "").to_string(index=False))
    print("\nnetadapt's margin (points) at its measured latency: each baseline's accuracy "
          "read off its line through its runs of the same seed")
    ours = everything[everything["network"] == "netadapt"].set_index(["seed", "budget"])
    timed = everything.dropna(subset=["measured_vs_seed", "test_accuracy"])
    for name, theirs in timed.groupby("network", sort=False):
        if name in ("seed", "netadapt") or theirs.groupby("seed")["budget"].nunique().min() < 2:
            continue  # no line through one point (resolution reaches 70% only)
        for budget, group in theirs.groupby("budget", sort=False):
            adjusted, time_more = [], []
            for seed, row in group.set_index("seed").iterrows():
                mine = ours.loc[(seed, budget)]
                line = theirs[theirs["seed"] == seed]
                adjusted.append(100 * (mine["test_accuracy"] -
                                       on_line(line, mine["measured_vs_seed"])))
                time_more.append(100 * (mine["measured_vs_seed"] / row["measured_vs_seed"] - 1))
            mean, half = interval(pd.Series(adjusted))
            print(f"{budget:>4} {name:17s} netadapt's time vs it "
                  f"{' / '.join(f'{t:+.1f}%' for t in time_more)}; adjusted margin "
                  f"{' / '.join(f'{a:+.2f}' for a in adjusted)}: {mean:+.2f} +- {half:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["plan", "train", "time", "summary"])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    if args.phase == "summary":
        summary(args.runs)
        return
    for run in args.runs:
        {"plan": plan, "train": train, "time": time_all}[args.phase](run)


if __name__ == "__main__":
    try:
        main()
    except NetadaptError as exc:
        raise SystemExit(f"error: {exc}") from None
