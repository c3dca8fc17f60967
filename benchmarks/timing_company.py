"""What a network's measured ratio to its seed depends on: the company it is timed in.

    python benchmarks/timing_company.py RUN [RUN ...] [--passes 3] [--device local]

For each run's result and baselines, ``--passes`` times, interleaved:

- ``pair``: beside the run's seed alone, as the search's check, the baselines' checks
  and the comparison time it (``measure_e2e``, 12 bursts of 30 round-robin runs);
- ``+table seed``: the same with the table's seed of that structure as a third network
  in the round-robin (as the check timed it before);
- ``alone``: the network and the seed each in its own session, 150 runs in a row (fast
  tail), alternated six times: each keeps its weights in the caches between runs, as a
  process running one network does.

And the seed's own time (fast-tail ms) in each pair against beside a copy of itself,
timed in turn within each pass: does the seed run faster beside a small network?

A round-robin runs every network once in turn, so each run finds the caches holding
the others' weights; on a host whose cache is near a network's size (the VM of
2026-12-07: 32 MiB L3) what else is in the round-robin changes how much of a network's
weights survive between its runs.
Run it on an otherwise quiet machine; about 1 minute a network per pass.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from table_errors import run_networks

from netadapt.latency import load_device, load_table, measure_e2e
from netadapt.latency.graphs import network_input_shape, network_model
from netadapt.latency.measure import fast_ms
from netadapt.latency.table import signature
from netadapt.latency.timers import Timer, make_timer
from netadapt.spec import NetworkSpec, load_spec


def alone_ms(spec: NetworkSpec, timer: Timer, runs: int = 150) -> float:
    """Fast-tail ms of ``spec`` run ``runs`` times in a row in its own session."""
    return float(fast_ms(timer.time([(network_model(spec), network_input_shape(spec))],
                                    runs, 5))[0])


def alone_ratio(spec: NetworkSpec, seed: NetworkSpec, timer: Timer) -> float:
    """Median over six alternations (which one runs first swapped each time)."""
    ratios = []
    for k in range(6):
        if k % 2:
            s, n = alone_ms(seed, timer), alone_ms(spec, timer)
        else:
            n, s = alone_ms(spec, timer), alone_ms(seed, timer)
        ratios.append(n / s)
    return float(np.median(ratios))


def seed_ms(timed: dict[str, float]) -> float:
    """The seed's fast-tail ms in a pair timed by measure_e2e (as measure_here_ms
    derives it): the network's ms over its ratio to the seed."""
    return timed["raw_ms"] / timed["beside_ratio"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--device", default="local")
    args = parser.parse_args()
    device = load_device(args.device)
    timer = make_timer(device)
    table = load_table(args.device)
    got: dict[tuple[str, str, str], list[float]] = {}
    for p in range(args.passes):
        for run in args.runs:
            seed = load_spec(run / "seed.yaml")
            if not any(signature(s) == signature(seed) for s in table.seeds):
                raise SystemExit(f"{run}: the {args.device} table has no seed like its own")
            copy = seed_ms(measure_e2e(seed, device, None, timer, bursts=12, rounds=30,
                                       beside=seed))
            for name, spec in run_networks(run).items():
                timed = measure_e2e(spec, device, None, timer, bursts=12, rounds=30,
                                    beside=seed)
                pair = timed["beside_ratio"]
                got.setdefault((run.name, name, "seed"), []).append(seed_ms(timed) / copy)
                # with the table: its seed of this structure joins the round-robin
                three = measure_e2e(spec, device, table, timer, bursts=12, rounds=30,
                                    beside=seed)["beside_ratio"]
                for company, ratio in (("pair", pair), ("+table seed", three),
                                       ("alone", alone_ratio(spec, seed, timer))):
                    got.setdefault((run.name, name, company), []).append(ratio)
        print(f"pass {p + 1} of {args.passes} done", flush=True)
    print("ratio to the seed, % (median over passes; each pass)")
    for run in args.runs:
        for name in run_networks(run):
            cells = [f"{company} {100 * np.median(v):5.1f} "
                     f"({' '.join(f'{100 * x:.1f}' for x in v)})"
                     for company in ("pair", "+table seed", "alone")
                     for v in [got[(run.name, name, company)]]]
            print(f"  {run.name:12s} {name:17s} " + "   ".join(cells))
    print("the seed's own time beside each network / beside a copy of itself, % "
          "(median over passes; each pass)")
    for run in args.runs:
        for name in run_networks(run):
            v = got[(run.name, name, "seed")]
            print(f"  {run.name:12s} {name:17s} {100 * np.median(v):5.1f} "
                  f"({' '.join(f'{100 * x:.1f}' for x in v)})")


if __name__ == "__main__":
    main()
