"""Proposals per hour on 1 and 2 local workers, the loop's own overhead, and a search
through a local Ray cluster that must end as the local one did.

    python benchmarks/bench_workers.py                          # everything, ~15 min on 2 cores
    python benchmarks/bench_workers.py --rounds 5 --groups 22   # more rounds, every group
    python benchmarks/bench_workers.py --skip-ray --skip-search # throughput only

1. Throughput: one iteration's proposals of a real network (default MobileNetV3-Large,
   Fashion-MNIST at 32 px, T steps, the default 2,000-image holdout): each group cut by
   8 channels, fine-tuned and scored, run by 1 worker process and by 2, interleaved
   round by round (the order alternates) so drift hits both alike. Workers are started
   and warmed up (data loaded) before timing, as they are for all but the first
   iteration of a search. Reports proposals per hour per round, the median and the
   spread, and checks that every proposal's accuracy and weights are identical.
2. A whole search (default MobileNetV3-Small, budget 85%) serial, with --workers 2 and
   through a Ray cluster started here (`ray start --head --num-cpus 2`): proposals per
   hour of the proposal loop, the loop's overhead (everything but the jobs themselves:
   picking widths, saving, journaling, plotting; wall time minus the jobs' own seconds
   divided by the workers) and whether best.yaml and best.pt are byte-identical.

The machine's state matters: run it on a quiet machine for figures to quote. There is
no GPU section: the GPU figures (proposals per GPU-hour with 1, 2, 4 workers on one GPU)
need a machine with one (`--workers N --torch-device cuda`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from netadapt.config import SearchConfig
from netadapt.driver import start_search
from netadapt.executors import Executor, ProcessExecutor
from netadapt.jobs import DataSource, ProposalJob, ProposalResult, Training
from netadapt.model import build_model
from netadapt.resources import default_spec
from netadapt.rundir import RunDir
from netadapt.spec import WIDTH_STEP, load_spec

DEFAULT_SPEC = default_spec()


def iteration_jobs(spec_path: Path, groups: int, steps: int, holdout: int
                   ) -> tuple[list[ProposalJob], dict[str, torch.Tensor]]:
    """One iteration's proposals: each of the first ``groups`` groups 8 channels narrower."""
    spec = load_spec(spec_path)
    source = DataSource(None, 32, spec.in_channels, holdout, 0)
    spec = dataclasses.replace(spec, num_classes=source.load().num_classes)
    torch.manual_seed(0)
    parent_state = build_model(spec).state_dict()
    training = Training(steps, 0.02, 64, "cpu", 1)
    jobs = [ProposalJob(1, g.name, spec, spec.with_group_width(g.name, g.width - WIDTH_STEP),
                        1234, training, source)
            for g in spec.groups if g.width > WIDTH_STEP][:groups]
    return jobs, parent_state


def digest(result: ProposalResult) -> str:
    h = hashlib.sha256(repr(result.accuracy).encode())
    for key in sorted(result.state):
        h.update(result.state[key].numpy().tobytes())
    return h.hexdigest()[:12]


def throughput(args: argparse.Namespace) -> None:
    jobs, parent_state = iteration_jobs(args.spec, args.groups, args.steps, args.holdout)
    print(f"\n== throughput: {len(jobs)} proposals of {args.spec.name} (T={args.steps}, "
          f"32 px, holdout {args.holdout}), 1 thread per worker, {os.cpu_count()} cores")
    executors = {n: ProcessExecutor(n, threads=1) for n in (1, 2)}
    rates: dict[int, list[float]] = {1: [], 2: []}
    digests: dict[int, dict[str, str]] = {}
    try:
        for n, executor in executors.items():  # start and warm up: data loaded per worker
            list(executor.run([jobs[0]] * n, parent_state))
        for r in range(args.rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                started = time.perf_counter()
                results = list(executors[n].run(jobs, parent_state))
                seconds = time.perf_counter() - started
                rates[n].append(len(jobs) / seconds * 3600)
                digests.setdefault(n, {}).update({x.group: digest(x) for x in results})
                job_seconds = sum(x.seconds for x in results)
                cpu_seconds = sum(x.cpu_seconds for x in results)
                print(f"round {r + 1}, {n} worker{'s' if n > 1 else ' '}: {seconds:7.1f} s, "
                      f"{rates[n][-1]:7.0f} proposals/h (jobs' own time {job_seconds:.1f} s, "
                      f"their CPU time {cpu_seconds:.1f} s: below their own time when "
                      f"they wait for a core)", flush=True)
    finally:
        for executor in executors.values():
            executor.close()
    print("\n| workers | proposals/h median | min-max | speed-up (median) |")
    print("| --- | --- | --- | --- |")
    base = statistics.median(rates[1])
    for n, values in rates.items():
        med = statistics.median(values)
        print(f"| {n} | {med:.0f} | {min(values):.0f}-{max(values):.0f} | {med / base:.2f}x |")
    same = digests[1] == digests[2]
    print(f"every proposal's accuracy and weights identical with 1 and 2 workers: {same}")


def start_ray_cluster() -> None:
    """A local cluster whose workers run this environment's python (netadapt installed)."""
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), "start", "--head", "--num-cpus", "2", "--include-dashboard",
                    "false", "--disable-usage-stats"], check=True, stdout=subprocess.DEVNULL)


def stop_ray_cluster() -> None:
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), "stop"], check=False, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def search(args: argparse.Namespace) -> None:
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    config = SearchConfig(budgets=(args.budget,), spec=str(args.search_spec), step=0.05,
                          short_term_steps=args.steps, long_term_steps=0, deploy_steps=0,
                          seed_steps=args.seed_steps, holdout=args.holdout,
                          torch_device="cpu", threads=1, racing=args.racing,
                          finalists=args.finalists)
    racing = f"racing to {args.finalists}" if args.racing else "every proposal all T steps"
    print(f"\n== search: {args.search_spec.name}, budget {args.budget}, T={args.steps}, "
          f"{racing}, "
          f"seed {args.seed_steps} steps (cached after the first run) -> {out}")
    modes: list[tuple[str, int]] = [("serial", 1), ("workers2", 2)]
    if not args.skip_ray:
        modes.append(("ray", 2))
    rows = []
    for name, workers in modes:
        if name == "ray":
            from netadapt.executors import RayExecutor

            start_ray_cluster()
            executor: Executor = RayExecutor("auto", threads=1, workers=2)
        else:
            executor = ProcessExecutor(2, threads=1) if workers == 2 else Executor()
        try:
            with executor:
                result = start_search(config, out / name, executor=executor)
        finally:
            if name == "ray":
                stop_ray_cluster()
        records = [r for r in RunDir.open(out / name).records() if r["type"] == "proposal"]
        job_seconds = sum(r["seconds"] for r in records)
        overhead = result.loop_seconds - job_seconds / workers
        rows.append((name, len(records), result.loop_seconds,
                     len(records) / result.loop_seconds * 3600, overhead,
                     len({r["worker"] for r in records})))
        print(f"{name}: {len(records)} proposals in {result.loop_seconds:.1f} s", flush=True)
    reference = out / "serial"
    print("\n| executor | proposals | loop s | proposals/h | overhead s (% of loop) | "
          "workers seen | best.yaml, best.pt as serial |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, count, seconds, rate, overhead, seen in rows:
        same = all((out / name / f).read_bytes() == (reference / f).read_bytes()
                   for f in ("best.yaml",)) and same_weights(out / name, reference)
        print(f"| {name} | {count} | {seconds:.1f} | {rate:.0f} | {overhead:.1f} "
              f"({100 * overhead / seconds:.1f}%) | {seen} | {same} |")
    print("overhead: loop wall time minus the jobs' own seconds / workers (serial: the "
          "driver's own work; with workers also the idle tail of each iteration)")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


def same_weights(a: Path, b: Path) -> bool:
    x, y = torch.load(a / "best.pt"), torch.load(b / "best.pt")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC,
                        help="network of the throughput part")
    parser.add_argument("--groups", type=int, default=12, help="proposals per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="T: fine-tuning steps")
    parser.add_argument("--holdout", type=int, default=2000)
    parser.add_argument("--search-spec", type=Path,
                        default=DEFAULT_SPEC.parent / "mobilenetv3_small.yaml")
    parser.add_argument("--budget", default="85%")
    parser.add_argument("--racing", action=argparse.BooleanOptionalAction, default=True,
                        help="race each iteration's proposals, as a search does by default")
    parser.add_argument("--finalists", type=int, default=1,
                        help="with racing: proposals that get all T steps (--finalists)")
    parser.add_argument("--seed-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-workers"))
    parser.add_argument("--keep", action="store_true", help="keep the search runs")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    print(f"bench_workers: {time.strftime('%Y-%m-%d %H:%M:%S')}, torch {torch.__version__}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; GPU section: none "
          f"({'a GPU is visible but not benchmarked' if torch.cuda.is_available() else 'no GPU'})")
    if not args.skip_throughput:
        throughput(args)
    if not args.skip_search:
        search(args)


if __name__ == "__main__":
    main()
