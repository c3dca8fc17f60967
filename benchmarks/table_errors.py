"""Where a measured latency table errs: random networks against the search's own.

    python benchmarks/table_errors.py RUN [RUN ...] [--device local]
    python benchmarks/table_errors.py RUN [RUN ...] --additivity
    python benchmarks/table_errors.py RUN [RUN ...] --cuts

For finished search runs on a table measured here (a 64 px `local` table in
docs/latency.md): every run's seed, result and baselines, the table seed's calibration
and validation variants and 16 thin networks (every group at 30-70% of its width, +-25%
a group), each timed relative to the table's seed in the calibration's own company (the
reference block, the seed and 8 networks a round-robin, 3 bursts each), against the
table's ratio; then each run's result and baselines timed as the measured check times
them (beside the run's seed, 12 bursts), three passes, beside what the run's last check
measured.

``--additivity``: the entries of the runs' networks and of 8 thin and 12 calibration
networks timed afresh, warm and cold (every cache evicted before each run), and the
networks themselves beside the seed, warm and cold; the entry sums fitted (end to end
= a x sum + c, relative to the seed) to the thin and calibration networks, and the
fit's errors on the runs' networks: is a network the sum of its entries, warm or cold?
Run on a quiet machine; about 3 minutes for six runs.

``--cuts``: from the seed to each measured check's network, and from each check to the
next, every cut the search made, applied alone to the earlier network, and all of them:
the saving the table prices and the one measured beside the earlier network (points of
the seed's latency). Which cuts a first check that came out over its prediction owes it
to. About 1 minute a run.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netadapt.latency import LatencyTable, load_device, load_table, measure_e2e
from netadapt.latency.build import reference_key
from netadapt.latency.calibrate import _time_bursts, calibration_variants, mixed_variants
from netadapt.latency.devices import Protocol
from netadapt.latency.graphs import (
    entry_keys,
    entry_model,
    input_shape,
    network_input_shape,
    network_model,
)
from netadapt.latency.measure import Model, fast_ms, session, time_round_robin
from netadapt.latency.timers import Timer, make_timer
from netadapt.records import MeasuredRecord, of_type
from netadapt.rundir import RunDir
from netadapt.spec import WIDTH_STEP, NetworkSpec, load_spec

BASELINES = ("width_multiplier", "uniform_pruning", "torch_pruning")
EVICT_BYTES = 64 << 20


def run_networks(run: Path) -> dict[str, NetworkSpec]:
    """A run's result and baselines, by name."""
    nets = {"result": load_spec(run / "best.yaml")}
    for name in BASELINES:
        if (run / "baselines" / f"{name}.yaml").exists():
            nets[name] = load_spec(run / "baselines" / f"{name}.yaml")
    return nets


def thin_networks(seed: NetworkSpec, n: int, rng_seed: int = 5) -> list[NetworkSpec]:
    """Every group at m of its width (m from 0.3 to 0.7), +-25% a group."""
    rng = random.Random(rng_seed)
    out = []
    for i in range(n):
        m = 0.3 + 0.4 * i / max(1, n - 1)
        widths = {g.name: max(WIDTH_STEP, round(g.width * m * rng.uniform(0.75, 1.25)
                                                / WIDTH_STEP) * WIDTH_STEP)
                  for g in seed.groups}
        out.append(seed.with_fields({p: widths[g.name] for g in seed.groups for p in g.fields}))
    return out


def in_calibration_company(nets: dict[str, NetworkSpec], seed: NetworkSpec, timer: Timer,
                           protocol: Protocol, passes: int = 3) -> dict[str, float]:
    """Each network's median time relative to ``seed``, timed as a calibration times its
    variants (calibrate._time_bursts: the reference block, the seed and 8 networks a
    round-robin), each network in ``passes`` bursts."""
    ref_key = reference_key(seed)
    ref: Model = (entry_model(ref_key), input_shape(ref_key))
    names = list(nets)
    proto = dataclasses.replace(protocol, calibration_bursts=-(-passes * len(names) // 8))
    bursts = _time_bursts(seed, [nets[n] for n in names], timer, ref, proto)
    return {names[i]: float(np.median(v)) for i, v in bursts.relative.items()}


def table_errors(runs: Sequence[Path], table: LatencyTable, device: str) -> None:
    """Part one of the module docstring."""
    dev = load_device(device)
    timer = make_timer(dev)
    size = load_spec(runs[0] / "seed.yaml").input_size
    seed = next(s for s in table.seeds if s.input_size == size)
    nets = {f"calibration/{v.name}": v for v in calibration_variants(seed, 24)}
    nets.update({f"validation/{v.name}": v for v in mixed_variants(seed, 24, 7)})
    nets.update({f"thin/{i}": v for i, v in enumerate(thin_networks(seed, 16))})
    for run in runs:
        nets.update({f"{kind}/{run}:{n}": s for n, s in run_networks(run).items()
                     for kind in ["search" if n == "result" else "baseline"]})
    measured = in_calibration_company(nets, seed, timer, dev.protocol)
    seed_ms = table.predict_ms(seed)
    errors: dict[str, list[float]] = {}
    for name, spec in nets.items():
        errors.setdefault(name.split("/")[0], []).append(
            table.predict_ms(spec) / seed_ms / measured[name] - 1)
    print(f"table {device} against end-to-end timings, relative to {seed.name}, "
          "in the calibration's company (median |error|, max, median error):")
    for kind, e in errors.items():
        a = np.abs(e)
        print(f"  {kind:12s} {len(e):3d} networks: {np.median(a):6.1%} {a.max():6.1%} "
              f"{np.median(e):+6.1%}")
    print("as the measured check times them (beside the run's seed, 3 passes):")
    for run in runs:
        run_seed = load_spec(run / "seed.yaml")
        checks = of_type(RunDir.open(run).records(), MeasuredRecord)
        last = f"; its last check {checks[-1].vs_seed:.3f}" if checks else ""
        print(f"  {run}{last}")
        for name, spec in run_networks(run).items():
            passes = [measure_e2e(spec, dev, table, timer, bursts=12, rounds=30,
                                  beside=run_seed)["beside_ratio"] for _ in range(3)]
            pred = table.predict_ms(spec) / table.predict_ms(run_seed)
            print(f"    {name:17s} table {pred:.3f}  measured {np.median(passes):.3f} "
                  f"({' '.join(f'{p:.3f}' for p in passes)})")


SETTINGS = {"threads": 1, "spinning": False, "optimization": "all", "clock": "thread"}


def time_rounds(models: list[Model], rounds: int, cold: bool) -> np.ndarray:
    """measure.time_round_robin, or with ``cold`` every cache evicted before each timed
    run of models 1.. (model 0, the reference, run once more untimed to be timed warm):
    the product times warm only."""
    if not cold:
        return time_round_robin(list(models), SETTINGS, rounds)  # type: ignore[arg-type]
    evict = np.zeros(EVICT_BYTES, dtype=np.uint8)
    rng = np.random.default_rng(0)
    runs = []
    for model, shape in models:
        sess = session(model, SETTINGS)
        feed = {sess.get_inputs()[0].name: rng.standard_normal(shape).astype(np.float32)}
        for _ in range(2):
            sess.run(None, feed)
        runs.append((sess, feed))
    times = np.empty((len(runs), rounds))
    for r in range(rounds):
        for i, (sess, feed) in enumerate(runs):
            if i > 0:
                np.add(evict, 1, out=evict)
            else:
                sess.run(None, feed)
            t0 = time.thread_time()
            sess.run(None, feed)
            times[i, r] = time.thread_time() - t0
    return times * 1e3


def additivity(runs: Sequence[Path], table: LatencyTable) -> None:
    """Part two of the module docstring (--additivity)."""
    run_seed = load_spec(runs[0] / "seed.yaml")
    nets: dict[str, NetworkSpec] = {}
    for run in runs:
        nets.update({f"{'search' if n == 'result' else 'baseline'}/{run}:{n}": s
                     for n, s in run_networks(run).items()})
    nets.update({f"thin/{i}": v for i, v in enumerate(thin_networks(run_seed, 8))})
    nets.update({f"calibration/{v.name}": v
                 for v in calibration_variants(run_seed, 24)[::2]})
    keys = sorted({k for s in [run_seed, *nets.values()] for _, k in entry_keys(s)}, key=str)
    ref_key = reference_key(run_seed)
    ref: Model = (entry_model(ref_key), input_shape(ref_key))
    seed_model: Model = (network_model(run_seed), network_input_shape(run_seed))
    print(f"{len(nets)} networks, {len(keys)} entries")
    for mode in ("warm", "cold"):
        entry: dict[object, float] = {}
        for c in range(0, len(keys), 24):
            chunk = keys[c:c + 24]
            ms = fast_ms(time_rounds([ref] + [(entry_model(k), input_shape(k)) for k in chunk],
                                     20, mode == "cold"))
            entry.update({k: float(m / ms[0]) for k, m in zip(chunk, ms[1:])})
        x = np.array([_entry_sum(entry, s) for s in nets.values()]) / _entry_sum(entry, run_seed)
        y = np.array([_beside_seed(seed_model, s, mode == "cold") for s in nets.values()])
        kinds = np.array([n.split("/")[0] for n in nets])
        fit = np.isin(kinds, ("thin", "calibration"))
        xs, ys = np.r_[x[fit], 1.0], np.r_[y[fit], 1.0]
        w = np.sqrt(np.r_[np.ones(fit.sum()), 6.0])  # the seed anchors the fit
        (a, c), *_ = np.linalg.lstsq(np.c_[xs, np.ones_like(xs)] / ys[:, None] * w[:, None],
                                     w, rcond=None)
        error = (a * x + c) / (a + c) / y - 1
        print(f"{mode}: end to end ~ {a:.3f} x sum {c:+.3f} (relative to the seed)")
        for kind in ("calibration", "thin", "search", "baseline"):
            e = error[kinds == kind]
            print(f"  {kind:12s} median |error| {np.median(np.abs(e)):6.1%}, max "
                  f"{np.abs(e).max():6.1%}, median {np.median(e):+6.1%}")


def _entry_sum(entry: dict[object, float], spec: NetworkSpec) -> float:
    return sum(entry[k] for _, k in entry_keys(spec))


def _beside_seed(seed_model: Model, spec: NetworkSpec, cold: bool, passes: int = 3) -> float:
    """``spec``'s time relative to the seed's in round-robins of the seed (run first, to
    be timed warm), the seed and ``spec``: the median of ``passes``."""
    model: Model = (network_model(spec), network_input_shape(spec))
    ratios = []
    for _ in range(passes):
        ms = fast_ms(time_rounds([seed_model, seed_model, model], 30, cold))
        ratios.append(float(ms[2] / ms[1]))
    return float(np.median(ratios))


def cuts(runs: Sequence[Path], table: LatencyTable, device: str) -> None:
    """Part three of the module docstring (--cuts)."""
    dev = load_device(device)
    timer = make_timer(dev)
    for run in runs:
        seed = load_spec(run / "seed.yaml")
        checked = [c.iteration for c in of_type(RunDir.open(run).records(), MeasuredRecord)]
        stops = [seed] + [load_spec(run / "iterations" / f"iter_{i:03d}.yaml") for i in checked]
        print(f"{run}: savings in points of the seed's latency, table / measured")
        for i, (before, after) in enumerate(zip(stops, stops[1:])):
            changed = [(g.name, after.group(g.name).width) for g in before.groups
                       if after.group(g.name).width != g.width]
            nets = [(f"{n} {before.group(n).width}->{w}", before.with_group_width(n, w))
                    for n, w in changed] + [("all of them", after)]
            scale = 100 * measure_e2e(before, dev, None, timer, bursts=12, rounds=30,
                                      beside=seed)["beside_ratio"]
            print(f"  {'seed' if i == 0 else f'check {i}'} -> check {i + 1}:")
            for name, spec in nets:
                priced = (table.predict_ms(before) - table.predict_ms(spec)) \
                    / table.predict_ms(seed) * 100
                got = measure_e2e(spec, dev, None, timer, bursts=12, rounds=30, beside=before)
                print(f"    {name:34s} {priced:6.2f} / {(1 - got['beside_ratio']) * scale:6.2f}"
                      f" (SE {got['beside_ratio_se'] * scale:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--device", default="local")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--additivity", action="store_true")
    mode.add_argument("--cuts", action="store_true")
    args = parser.parse_args()
    table = load_table(args.device)
    if args.additivity:
        additivity(args.runs, table)
    elif args.cuts:
        cuts(args.runs, table, args.device)
    else:
        table_errors(args.runs, table, args.device)


if __name__ == "__main__":
    main()
