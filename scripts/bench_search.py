"""Is the search worth running? NetAdapt vs the simple answers at matched budgets.

    python scripts/bench_search.py                       # 70%, 50%, 35% of the seed
    python scripts/bench_search.py --budgets 60% --out runs/bench-quick -- --step 0.1

For each budget (a share of the seed's predicted latency on the default device) it runs
`netadapt search --compare` with a fixed seed: all budgets start from the same seed
weights (trained once, by the first run), and every baseline gets the same number of
fine-tuning steps as the search's winner. Runs are resumable: re-running the command
continues unfinished ones and reuses finished ones. Prints one table and a verdict per
budget. Extra arguments after `--` are SearchConfig fields as name=value.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from netadapt.errors import NetadaptError
from netadapt.report import comparison_text, verdict
from netadapt.runner import SearchConfig, comparison, resume_search, start_search


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``short_term_steps=20`` -> {"short_term_steps": 20}, typed like SearchConfig's."""
    defaults = SearchConfig(budgets=("50%",))
    out: dict[str, object] = {}
    for item in items:
        name, _, value = item.lstrip("-").replace("-", "_").partition("=")
        if not hasattr(defaults, name) or name == "budgets":
            fields = ", ".join(f.name for f in dataclasses.fields(SearchConfig))
            raise SystemExit(f"unknown option {name!r}; SearchConfig fields: {fields}")
        current = getattr(defaults, name)
        if isinstance(current, bool):
            out[name] = value.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float)):
            out[name] = type(current)(value)
        else:
            out[name] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["70%", "50%", "35%"])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-search"))
    parser.add_argument("overrides", nargs="*", help="SearchConfig fields as name=value")
    args = parser.parse_args()
    overrides = parse_overrides(args.overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    tables = []
    seed_weights = overrides.pop("weights", None)
    for budget in args.budgets:
        run = args.out / budget.replace("%", "pct")
        started = time.time()
        if (run / "config.json").exists():
            result = resume_search(run)
        else:
            config = SearchConfig(budgets=(budget,), compare=True, seed=0,
                                  weights=seed_weights, **overrides)  # type: ignore[arg-type]
            result = start_search(config, run)
        if seed_weights is None:  # later budgets start from the very same seed weights
            seed_weights = str(run / "seed.pt")
        table = comparison(run)
        table.insert(0, "budget", budget)
        tables.append(table)
        print(f"{budget}: {result.iterations} iterations, {(time.time() - started) / 60:.1f} "
              f"min (this call)", flush=True)
    everything = pd.concat(tables, ignore_index=True)
    print("\n" + comparison_text(everything.drop(columns="spec")))
    print()
    for budget, table in zip(args.budgets, tables):
        print(f"{budget}: {verdict(table)}")
    everything.to_csv(args.out / "summary.csv", index=False)
    print(f"\nsummary: {args.out / 'summary.csv'}")


if __name__ == "__main__":
    try:
        main()
    except NetadaptError as exc:
        raise SystemExit(f"error: {exc}") from None
