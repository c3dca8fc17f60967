"""How far a measured check repeats: the same networks timed beside their seed again
and again over minutes, as the search's check times them.

    python benchmarks/timing_drift.py RUN [RUN ...] --passes 12 --every 60 [--csv F]

Every pass times each run's result and baselines beside the run's seed
(``measure_e2e``: 12 bursts of 30 round-robin runs, alternating orders), then waits
``--every`` seconds. Printed per network: the ratio to the seed in every pass, its
spread across passes (SD) against the median SE one pass claims, and, pooled over the
networks, how the ratio moves with the seed's own speed in that pass (the slope of
ratio / the network's mean ratio against seed ms / the mean seed ms): a host whose
caches other tenants share slows a large seed more than a small network. Run it on an
otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from table_errors import run_networks

from netadapt.latency import load_device, load_table, measure_e2e
from netadapt.latency.timers import make_timer
from netadapt.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--passes", type=int, default=12)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between passes")
    parser.add_argument("--device", default="local")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    device = load_device(args.device)
    timer = make_timer(device)
    table = load_table(args.device)
    nets = {(run, name): (load_spec(run / "seed.yaml"), spec)
            for run in args.runs for name, spec in run_networks(run).items()}
    rows = []
    for p in range(args.passes):
        started = time.time()
        for (run, name), (seed, spec) in nets.items():
            got = measure_e2e(spec, device, table, timer, bursts=12, rounds=30, beside=seed)
            rows.append({"pass": p, "clock": round(started), "run": str(run), "network": name,
                         "ratio": got["beside_ratio"], "se": got["beside_ratio_se"],
                         "seed_ms": got["raw_ms"] / got["beside_ratio"]})
        print(f"pass {p + 1}/{args.passes} done ({time.time() - started:.0f} s)", flush=True)
        if p + 1 < args.passes:
            time.sleep(max(0.0, args.every - (time.time() - started)))
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    report(rows)


def report(rows: list[dict]) -> None:
    """Per network: its ratios, their SD across passes against one pass's SE; pooled:
    the ratio's relative change per relative change of the seed's speed."""
    x, y = [], []
    print(f"{'run / network':48s} ratio per pass (%)   SD across passes / median SE (%)")
    for key in dict.fromkeys((r["run"], r["network"]) for r in rows):
        mine = [r for r in rows if (r["run"], r["network"]) == key]
        ratio = np.array([r["ratio"] for r in mine])
        seed = np.array([r["seed_ms"] for r in mine])
        sd = ratio.std(ddof=1) / ratio.mean()
        se = float(np.median([r["se"] for r in mine]))
        print(f"{key[0][-24:] + ' ' + key[1]:48s} "
              f"{' '.join(f'{100 * v:.1f}' for v in ratio)}   {100 * sd:.1f} / {100 * se:.1f}")
        x += list(seed / seed.mean() - 1)
        y += list(ratio / ratio.mean() - 1)
    slope, intercept = np.polyfit(x, y, 1)
    r = np.corrcoef(x, y)[0, 1]
    print(f"pooled: ratio change = {slope:+.2f} x seed-time change (r = {r:+.2f}, "
          f"{len(x)} timings); seed ms ranged {min(x):+.1%} to {max(x):+.1%} of each "
          f"network's mean")


if __name__ == "__main__":
    main()
