"""The baselines again, matched to the search's result by latency measured here, not by
the table: is a win the architecture's, or the table's error?

    python scripts/match_measured.py runs/bench-64L/seed*/50pct

A search picks, among thousands of proposals, the ones its latency table prices lowest,
so its result tends to be one the table underprices; a baseline is one setting, not
selected that way. For each finished run whose device is this machine (a local table),
this copies the run without its baselines to RUN-measured/ (weights hard-linked), times
the search's result and the seed end to end here in one round-robin, and trains every
baseline at the largest setting whose latency, measured here relative to the seed in
the same way, is at most the result's: the same seed weights, steps, data and
evaluation as in the run (netadapt's `baseline` phase, with a measuring predictor).
Then it prints the comparison, with every network timed again, all in one round-robin.
Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from netadapt.driver import baselines_for_run, comparison
from netadapt.errors import NetadaptError
from netadapt.files import link_atomic, write_text_atomic
from netadapt.latency import load_device
from netadapt.report import comparison_text, measure_here_ms, verdict
from netadapt.spec import NetworkSpec, load_spec

SKIP = {"baselines", "checkpoints", "history.jsonl", "history.csv", "config.json"}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run in args.runs:
        config = json.loads((run / "config.json").read_text())
        device = config["search"]["device"]
        if load_device(device).runner != "local":
            raise SystemExit(f"error: {run} was searched for {device!r}, not this machine; "
                             f"latency measured here says nothing about it")
        seed = load_spec(run / "seed.yaml")
        seed_ms = float(next(r for r in map(json.loads, (run / "history.jsonl").open())
                             if r.get("type") == "seed")["latency_ms"])

        def measured_ms(spec: NetworkSpec, seed: NetworkSpec = seed,
                        seed_ms: float = seed_ms) -> float:
            """The seed's predicted ms x (spec / seed, timed here in one round-robin)."""
            s, m = measure_here_ms([seed, spec], bursts=5, rounds=20)
            return seed_ms * m / s

        result_ms = measured_ms(load_spec(run / "best.yaml"))
        target = run.with_name(run.name + "-measured")
        if (target / "config.json").exists() and not any(
                json.loads(line).get("type") == "baseline"
                for line in (target / "history.jsonl").read_text().splitlines()):
            shutil.rmtree(target)  # an earlier copy that trained nothing: start again
        copy_without_baselines(run, target, 100 * result_ms / seed_ms)
        print(f"{run}: the result measures {result_ms / seed_ms:.3f} of the seed here; "
              f"baselines matched to that in {target}", flush=True)
        baselines_for_run(target, predict_ms=measured_ms)
        table = comparison(target)
        present = table["spec"].astype(bool)
        timed = measure_here_ms([load_spec(target / p) for p in table.loc[present, "spec"]],
                                bursts=9, rounds=30)
        table.loc[present, "measured_vs_seed"] = [t / timed[0] for t in timed]
        print(comparison_text(table.drop(columns="spec")))
        print(verdict(table), flush=True)


if __name__ == "__main__":
    try:
        main()
    except NetadaptError as exc:
        raise SystemExit(f"error: {exc}") from None
