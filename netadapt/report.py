"""Pictures and tables of a run, built from its history at the edge."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .search import Budget


def plot_history(history: pd.DataFrame, path: Path, budgets: Sequence[Budget] = ()) -> None:
    """Holdout accuracy vs predicted latency: every proposal (grey), the network of each
    iteration (the curve NetAdapt walks down), the seed and the long-term result."""
    if history.empty or "type" not in history:
        return
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    kinds = {k: history[history["type"] == k] for k in ("proposal", "iteration", "seed", "final")}
    if not kinds["proposal"].empty:
        ax.scatter(kinds["proposal"]["latency_ms"], kinds["proposal"]["accuracy"], s=8,
                   color="0.75", label="proposals (short-term fine-tuned)")
    curve = pd.concat([kinds["seed"], kinds["iteration"]])
    if not curve.empty:
        ax.plot(curve["latency_ms"], curve["accuracy"], "o-", color="tab:blue", ms=4,
                label="chosen network per iteration")
    if not kinds["seed"].empty:
        ax.scatter(kinds["seed"]["latency_ms"], kinds["seed"]["accuracy"], s=60,
                   color="tab:green", zorder=3, label="seed")
    if not kinds["final"].empty:
        ax.scatter(kinds["final"]["latency_ms"], kinds["final"]["accuracy"], s=80, marker="*",
                   color="tab:red", zorder=3, label="result (long-term fine-tuned)")
    for budget in budgets:
        if budget.resource == "latency_ms":
            ax.axvline(budget.limit, color="tab:red", ls="--", lw=1, label="latency budget")
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("holdout accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
