"""Racing against full evaluation: the same search (same seed network, data, table and
settings) with every proposal given all T steps (--no-racing) and raced (the default).

    python benchmarks/bench_racing.py --seeds 0 1 2 --budgets 50% --out runs/bench-racing \
        input_size=64 resolution=64 device=local

For each seed and budget it runs both searches (resumable: re-running continues them) and
reports, per pair: the proposals' training steps (each rung's steps counted once), the
loop's wall time and training time (from the journal), the iterations, the result's
predicted latency, and the test accuracy of each exported result with racing's margin
over full evaluation, paired on the same test images; then over seeds the mean margin
with its 95% t-interval and the share of training steps racing spent (also against what
full evaluation would train on racing's own iterations, free of the path). Extra arguments are
SearchConfig fields as name=value (as in bench_search.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from bench_search import interval, parse_overrides

from netadapt.config import SearchConfig
from netadapt.driver import resume_search, start_search
from netadapt.model import read_state_dict
from netadapt.rundir import RunDir
from netadapt.train import paired_margin


def proposal_steps(run: Path) -> int:
    """Short-term steps the run's proposals were trained, each rung counted once."""
    reached: dict[tuple[int, str], int] = {}
    total = 0
    for r in RunDir.open(run).records():
        if r["type"] == "proposal":
            key = (r["iteration"], r["group"])
            total += r["steps"] - reached.get(key, 0)
            reached[key] = r["steps"]
    return total


def own_path_steps(run: Path) -> int:
    """What full evaluation would have trained on this run's own iterations: every
    proposal of each iteration given all T steps. Racing's steps over this are its saving
    free of the path: a raced search can take more or fewer iterations than the fully
    evaluated one it is compared with."""
    rundir = RunDir.open(run)
    T = SearchConfig.from_json(rundir.config["search"]).short_term_steps
    fields = {(r["iteration"], r["group"]) for r in rundir.records() if r["type"] == "proposal"}
    return len(fields) * T


def loop_times(run: Path) -> tuple[float, float]:
    """Wall and training seconds of the proposal loop, summed over the journal."""
    records = [r for r in RunDir.open(run).records() if r["type"] in ("proposal", "iteration")]
    return sum(r.get("wall_s") or 0 for r in records), sum(r.get("train_s") or 0 for r in records)


def run_pair(out: Path, seed: int, budget: str, overrides: dict[str, object]) -> dict:
    """Both searches of one seed and budget; one row of the comparison."""
    row: dict[str, object] = {"seed": seed, "budget": budget}
    for mode, racing in (("full", False), ("racing", True)):
        run = out / f"seed{seed}" / budget.replace("%", "pct") / mode
        run.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        if (run / "config.json").exists():
            result = resume_search(run)
        else:
            config = SearchConfig(budgets=(budget,), **{"seed": seed, **overrides,
                                                         "racing": racing})  # type: ignore[arg-type]
            result = start_search(config, run)
        wall, train = loop_times(run)
        row.update({f"{mode}_steps": proposal_steps(run), f"{mode}_loop_s": round(wall, 1),
                    f"{mode}_train_s": round(train, 1), f"{mode}_iterations": result.iterations,
                    f"{mode}_ms": round(result.final.latency_ms, 3),
                    f"{mode}_test": result.final.test_accuracy})
        print(f"seed {seed}, {budget}, {mode}: {result.iterations} iterations, test "
              f"{result.final.test_accuracy:.4f}, {(time.time() - started) / 60:.1f} min "
              f"(this call)", flush=True)
    runs = out / f"seed{seed}" / budget.replace("%", "pct")
    margin, se = paired_margin(*(read_state_dict(runs / m / "best.test_correct.pt")["correct"]
                                 for m in ("racing", "full")))
    own_path = own_path_steps(runs / "racing")
    row.update(margin=round(margin, 4), margin_se=round(se, 4),
               steps_share=round(row["racing_steps"] / row["full_steps"], 3),  # type: ignore[operator]
               own_path_share=round(row["racing_steps"] / own_path, 3))  # type: ignore[operator]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["50%"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-racing"))
    parser.add_argument("overrides", nargs="*", help="SearchConfig fields as name=value")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    rows = [run_pair(args.out, seed, budget, overrides)
            for budget in args.budgets for seed in args.seeds]
    table = pd.DataFrame(rows)
    print("\n" + table.to_string(index=False))
    for budget, group in table.groupby("budget", sort=False):
        mean, half = interval(group["margin"])
        print(f"{budget}: racing minus full evaluation, test accuracy {100 * mean:+.2f} "
              f"+- {100 * half:.2f} points (95% t over {len(group)} seeds; per seed paired "
              f"+-{100 * 1.96 * group['margin_se'].max():.2f} at most); racing's training "
              f"steps {group['racing_steps'].sum() / group['full_steps'].sum():.1%} of full's "
              f"({group['own_path_share'].median():.1%} of what full evaluation would train "
              f"on racing's own iterations, median)")
    table.to_csv(args.out / "racing.csv", index=False)
    print(f"every pair: {args.out / 'racing.csv'}")


if __name__ == "__main__":
    main()
