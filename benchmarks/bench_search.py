"""Is the search worth running? NetAdapt vs the simple answers at matched budgets, over
several seeds.

    python benchmarks/bench_search.py                               # seeds 0 1 2; 70/50/35%
    python benchmarks/bench_search.py --seeds 0 --budgets 60% --out runs/bench-quick step=0.1

For each seed (it moves the holdout split, the seed network's training and every
fine-tune) and each budget (a share of the seed's predicted latency on the default
device) it runs `netadapt search --compare`: every baseline starts from the same seed
weights and gets exactly the winner's training from the seed, and every test accuracy
is the exported ONNX file's at its input size. A seed network is trained once per seed
and reused from the seed cache by the other budgets. Runs are resumable: re-running the
command continues unfinished ones and reuses finished ones.

Prints every run's table, then per budget and network the mean test accuracy over the
seeds with a 95% t-interval, and netadapt's paired margin over each baseline (per seed
on the same test images; across seeds its mean with a 95% t-interval). Extra arguments
are SearchConfig fields as name=value.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import pandas as pd

from netadapt.config import SearchConfig
from netadapt.driver import resume_search, start_search
from netadapt.errors import NetadaptError
from netadapt.executors import make_executor
from netadapt.report import comparison, comparison_text, verdict


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``short_term_steps=20`` -> {"short_term_steps": 20}, typed like SearchConfig's."""
    defaults = SearchConfig(budgets=("50%",))
    out: dict[str, object] = {}
    for item in items:
        name, _, value = item.lstrip("-").partition("=")
        name = name.replace("-", "_")  # only the name: values like local-ref keep theirs
        if not hasattr(defaults, name) or name == "budgets":
            fields = ", ".join(f.name for f in dataclasses.fields(SearchConfig))
            raise SystemExit(f"unknown option {name!r}; SearchConfig fields: {fields}")
        current = getattr(defaults, name)
        if isinstance(current, bool):
            out[name] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float)):
            out[name] = type(current)(value)
        elif current is None and value.isdigit():  # an optional size, e.g. resolution=64
            out[name] = int(value)
        else:
            out[name] = value
    return out


# two-sided 95% quantiles of Student's t by degrees of freedom (no scipy needed)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262, 10: 2.228}


def interval(values: pd.Series) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval (nan for a single value)."""
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return mean, float("nan")
    return mean, T95.get(n - 1, 1.96) * float(values.std(ddof=1)) / math.sqrt(n)


def summarise(everything: pd.DataFrame) -> pd.DataFrame:
    """Per budget and network: mean test accuracy and latency over seeds, 95% intervals,
    and netadapt's margin over it (per seed paired on the test images)."""
    rows = []
    for (budget, network), group in everything.groupby(["budget", "network"], sort=False):
        accuracy, accuracy_half = interval(group["test_accuracy"].dropna())
        row = {"budget": budget, "network": network, "seeds": group["seed"].nunique(),
               "pred_ms": round(float(group["latency_ms"].mean()), 2),
               "test_px": group["test_px"].iloc[0],
               "test_mean": round(accuracy, 4), "test_95": round(accuracy_half, 4)}
        margins = group["margin"].dropna()
        if len(margins):
            margin, half = interval(margins)
            row.update(margin_mean=round(margin, 4), margin_95=round(half, 4),
                       per_seed=" ".join(f"{m:+.4f}+-{1.96 * se:.4f}" for m, se in
                                         zip(group["margin"], group["margin_se"])
                                         if not pd.isna(m)))
        if "measured_vs_seed" in group:
            row["measured_vs_seed"] = round(float(group["measured_vs_seed"].mean()), 3)
            row["pred_vs_seed"] = round(float(group["pred_vs_seed"].mean()), 3)
        rows.append(row)
    return pd.DataFrame(rows)


def time_networks(run: Path, table: pd.DataFrame, bursts: int = 10) -> None:
    """Add measured_ms (end to end here, each of the run's networks beside its seed as
    the search's check times it, the median of ``bursts`` bursts), measured_vs_seed and
    pred_vs_seed to a run's comparison table: is the comparison at matched latency on
    this machine, not only in the table?"""
    from netadapt.report import measure_here_ms
    from netadapt.spec import load_spec

    present = table["spec"].astype(bool)
    measured = measure_here_ms([load_spec(run / p) for p in table.loc[present, "spec"]],
                               bursts=bursts, rounds=30)
    table.loc[present, "measured_ms"] = measured
    seed = table["network"] == "seed"
    table["measured_vs_seed"] = table["measured_ms"] / float(table.loc[seed, "measured_ms"].iloc[0])
    table["pred_vs_seed"] = table["latency_ms"] / float(table.loc[seed, "latency_ms"].iloc[0])
    print(f"{run}: measured here / predicted, relative to the seed: " + ", ".join(
        f"{n} {m:.3f}/{p:.3f}" for n, m, p in
        zip(table["network"], table["measured_vs_seed"], table["pred_vs_seed"]) if m == m),
        flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["70%", "50%", "35%"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=None,
                        help="proposals on N local worker processes (netadapt search "
                        "--workers; the same results as one, on the CPU)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-search"))
    parser.add_argument("--measure", action="store_true",
                        help="at the end, time every run's networks end to end on this "
                        "machine, each run's in one round-robin with its seed (a quiet "
                        "machine; meaningful when the runs' device is this machine): "
                        "columns measured_ms and measured_vs_seed beside pred_vs_seed")
    parser.add_argument("overrides", nargs="*", help="SearchConfig fields as name=value")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    tables: list[pd.DataFrame] = []
    tables_to_time: list[tuple[Path, pd.DataFrame]] = []
    for seed in args.seeds:
        for budget in args.budgets:
            run = args.out / f"seed{seed}" / budget.replace("%", "pct")
            run.parent.mkdir(parents=True, exist_ok=True)
            started = time.time()
            with make_executor(args.workers, None, 0, "auto") as executor:
                if (run / "config.json").exists():
                    result = resume_search(run, executor=executor)
                else:
                    config = SearchConfig(budgets=(budget,), compare=True,
                                          **{"seed": seed, **overrides})  # type: ignore[arg-type]
                    result = start_search(config, run, executor=executor)
            table = comparison(run)
            if args.measure:
                tables_to_time.append((run, table))
            table.insert(0, "budget", budget)
            table.insert(0, "seed", seed)
            tables.append(table)
            print(f"seed {seed}, {budget}: {result.iterations} iterations, "
                  f"{(time.time() - started) / 60:.1f} min (this call); {verdict(table)}",
                  flush=True)
    for run, table in tables_to_time:  # after every run: training does not disturb it
        time_networks(run, table)
    everything = pd.concat(tables, ignore_index=True)
    print("\n" + comparison_text(everything.drop(columns="spec")))
    summary = summarise(everything)
    print("\nover seeds (test accuracy mean +- 95% t-interval; margin = netadapt minus the "
          "network, paired on the test images per seed):")
    print(summary.astype(object).where(summary.notna(), "").to_string(index=False))
    everything.to_csv(args.out / "runs.csv", index=False)
    summary.to_csv(args.out / "summary.csv", index=False)
    print(f"\nevery run: {args.out / 'runs.csv'}; summary: {args.out / 'summary.csv'}")


if __name__ == "__main__":
    try:
        main()
    except NetadaptError as exc:
        raise SystemExit(f"error: {exc}") from None
