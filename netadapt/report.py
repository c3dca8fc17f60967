"""Pictures and tables of a run, built from its run directory at the edge: the
accuracy-vs-latency plot, the comparison of the seed, the result and the baselines, and
the verdict on it."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from .files import write_bytes_atomic
from .records import BaselineRecord, SeedRecord, of_type
from .rundir import SEED_DEPLOYED, RunDir
from .search import Budget

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .spec import NetworkSpec


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
    _plot_proposals(ax, kinds["proposal"])
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
    baselines = history[history["type"] == "baseline"]
    for _, row in baselines.dropna(subset=["accuracy"]).iterrows():
        ax.scatter(row["latency_ms"], row["accuracy"], marker="s", s=40, zorder=3,
                   label=f"baseline: {row['name']}")
    for budget in budgets:
        if budget.resource == "latency_ms":
            ax.axvline(budget.limit, color="tab:red", ls="--", lw=1, label="latency budget")
    ax.set_xlabel("predicted latency (ms)")
    px = history["holdout_px"].dropna() if "holdout_px" in history else pd.Series([])
    ax.set_ylabel(f"holdout accuracy (at {int(px.iloc[0])} px)" if len(px)
                  else "holdout accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def _plot_proposals(ax: Axes, proposals: pd.DataFrame) -> None:
    """Each proposal at its last score: after all T short-term steps, or (raced) where it
    stopped."""
    if proposals.empty:
        return
    if "rung" in proposals and proposals["rung"].max() > 0:
        proposals = proposals.sort_values("rung", kind="stable")
        proposals = proposals.groupby(["iteration", "group"]).tail(1)
    steps = proposals["steps"] if "steps" in proposals else pd.Series(dtype=float)
    full = steps.isna() | (steps == steps.max())
    ax.scatter(proposals.loc[full, "latency_ms"], proposals.loc[full, "accuracy"], s=8,
               color="0.6", label="proposals (short-term fine-tuned)")
    if not full.all():
        ax.scatter(proposals.loc[~full, "latency_ms"], proposals.loc[~full, "accuracy"], s=8,
                   marker="x", color="0.8", label="proposals stopped by the race")


def plot_run(run: Path, budgets: Sequence[Budget] = ()) -> None:
    """Redraw RUN/accuracy_vs_latency.png from the run's journal."""
    plot_history(RunDir(run).history_table(), run / "accuracy_vs_latency.png", budgets)


def comparison(path: Path) -> pd.DataFrame:
    """Seed, the search's result and every baseline of a run, side by side; for each
    baseline, netadapt's test-accuracy margin over it, paired on the same test images,
    and that margin's standard error (``margin``, ``margin_se``)."""
    from .train import paired_margin

    run = RunDir.open(path)
    final, records = run.require_final(), run.records()
    seed = of_type(records, SeedRecord)[0]
    seed_row = {"network": "seed", "setting": "", "spec": "seed.yaml", **seed.to_dict(),
                "steps": 0, "holdout_px": final.holdout_px,
                "test_accuracy": final.seed_test_accuracy, "test_px": final.seed_test_px}
    if final.seed_deploy_test_accuracy is not None:  # at the deployed size, trained alike
        seed_row.update(setting="unpruned", deploy_steps=final.deploy_steps,
                        test_accuracy=final.seed_deploy_test_accuracy,
                        test_px=final.seed_deploy_px, correct=f"{SEED_DEPLOYED}.test_correct.pt")
    rows = [seed_row, {"network": "netadapt", "setting": f"{final.iteration} iterations",
                       "spec": "best.yaml", **final.to_dict()}]
    for r in of_type(records, BaselineRecord):
        rows.append({"network": r.name, "setting": r.knob or r.note or "",
                     "spec": f"baselines/{r.name}.yaml" if r.trained else "", **r.to_dict(),
                     "correct": f"baselines/{r.name}.test_correct.pt"})
    ours = _test_correct(path / "best.test_correct.pt")
    for row in rows:
        theirs = _test_correct(path / row["correct"]) if "correct" in row else None
        if ours is not None and theirs is not None and ours.shape == theirs.shape:
            row["margin"], row["margin_se"] = paired_margin(ours, theirs)
    columns = ["network", "setting", "latency_ms", "params", "macs", "steps", "deploy_steps",
               "accuracy", "holdout_px", "test_accuracy", "test_px", "margin", "margin_se",
               "spec"]
    return pd.DataFrame(rows).reindex(columns=columns)


def _test_correct(path: Path) -> torch.Tensor | None:
    from .model import read_state_dict

    return read_state_dict(path)["correct"] if path.is_file() else None


def training_note(path: Path) -> str:
    """How many training steps from the seed the comparison's networks got, in words."""
    from .config import SearchConfig

    run = RunDir.open(path)
    config = SearchConfig.from_json(run.config["search"])
    final = run.require_final()
    return (f"netadapt: {final.iteration} iterations x {config.short_term_steps} + "
            f"{config.long_term_steps} long-term = {final.steps} steps from the seed; "
            f"every baseline: {final.steps} steps from the seed"
            + (f"; then each {final.deploy_steps} steps at its input size"
               if final.deploy_steps else ""))


@dataclass(frozen=True)
class Comparison:
    """A run's networks side by side, how they were trained, and the verdict."""

    table: pd.DataFrame  # comparison(), with measured_ms when measured
    training: str  # training_note()
    metric: str  # top-1 | mIoU
    verdict: str


def compare_run(path: Path, measure: bool) -> Comparison:
    """The comparison of a finished run; ``measure``: each network also timed end to end
    on this machine (interleaved, a few seconds)."""
    from .spec import load_spec

    table = comparison(path)
    if measure:
        present = table["spec"].astype(bool)
        specs = [load_spec(path / p) for p in table.loc[present, "spec"]]
        table.loc[present, "measured_ms"] = measure_here_ms(specs)
    metric = RunDir.open(path).config.get("metric", "top-1")
    return Comparison(table.drop(columns="spec"), training_note(path), metric,
                      verdict(table, metric))


def measure_here_ms(specs: Sequence[NetworkSpec], bursts: int = 12,
                    rounds: int = 30) -> list[float]:
    """End-to-end latency of each spec on this machine's CPU (the ``local`` device
    profile), timed as the search's measured check times a network: each spec beside
    the first (the seed) in its own round-robin of ``bursts`` bursts of ``rounds`` runs
    (the fast tail), so its figure is its median ratio to the seed, x the seed's time.
    Not all in one round-robin: on a machine whose cache holds a small network between
    runs, a network's time depends on what else the round-robin holds (by up to 13% at
    64 px here; docs/latency.md), and a baseline held to its budget by its own check
    must be timed in the same company here."""
    import numpy as np

    from .latency import load_device, measure_e2e
    from .latency.timers import make_timer

    device = load_device("local")
    timer = make_timer(device)
    timer.check()
    seed, *others = specs
    timed = [measure_e2e(s, device, None, timer, bursts=bursts, rounds=rounds, beside=seed)
             for s in others]
    seed_ms = (float(np.median([t["raw_ms"] / t["beside_ratio"] for t in timed])) if timed
               else measure_e2e(seed, device, None, timer, bursts=bursts, rounds=rounds)["raw_ms"])
    return [seed_ms] + [t["beside_ratio"] * seed_ms for t in timed]


def comparison_text(table: pd.DataFrame) -> str:
    """The comparison table as aligned text, with units in the headers; a baseline that
    was not placed (no network, so no latency) shows "not placed", its reason on a line
    below, so that one long reason does not widen every row."""
    shown = table.copy()
    unplaced = ~shown["network"].isin(["seed", "netadapt"]) & shown["latency_ms"].isna()
    reasons = [f"{row.network}: {row.setting}" for row in shown[unplaced].itertuples()
               if isinstance(row.setting, str) and row.setting]
    shown.loc[unplaced, "setting"] = "not placed"
    for column in ("steps", "deploy_steps", "holdout_px"):  # a blank must not make 700 "700.0"
        if column in shown and pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].astype("Int64")
    shown["params"] = (shown["params"] / 1e6).round(3)
    shown["macs"] = (shown["macs"] / 1e6).round(1)
    # three significant digits: a 64 px network runs in half a millisecond
    ms_digits = 3 if shown["latency_ms"].max() < 10 else 2
    shown["latency_ms"] = shown["latency_ms"].round(ms_digits)
    for column in ("accuracy", "test_accuracy", "margin", "margin_se"):
        if column in shown:
            shown[column] = shown[column].round(4)
    if "measured_ms" in shown:
        shown["measured_ms"] = shown["measured_ms"].round(ms_digits)
    shown = shown.rename(columns={"latency_ms": "pred_ms", "params": "params_M",
                                  "macs": "MACs_M", "accuracy": "holdout", "test_accuracy": "test"})
    text = shown.astype(object).where(shown.notna(), "").to_string(index=False)
    return "\n".join([text, *reasons])


Z95 = 1.96  # a 95% interval is the margin +- 1.96 standard errors


def verdict(table: pd.DataFrame, metric: str = "top-1") -> str:
    """One plain line: does the search beat the best baseline on test accuracy? "beats"
    or "LOSES TO" only when the paired margin's 95% interval excludes zero; else "ties".
    For segmentation (``metric`` mIoU) the networks are compared on test mIoU and the
    paired margin is of per-image pixel accuracy (mIoU has no per-image terms)."""
    ours = float(table.loc[table["network"] == "netadapt", "test_accuracy"].iloc[0])
    baselines = table[~table["network"].isin(["seed", "netadapt"])]
    if baselines.empty:
        return "no baseline in this run: `netadapt baseline RUN_DIR` trains them"
    others = baselines.dropna(subset=["test_accuracy"])
    if others.empty:
        return "no baseline could meet the budgets"
    best = others.loc[others["test_accuracy"].idxmax()]
    if metric == "mIoU":
        word = "above" if ours > best["test_accuracy"] else "at or below"
        line = (f"netadapt is {word} the best baseline ({best['network']}) on test mIoU: "
                f"{ours:.4f} vs {best['test_accuracy']:.4f}")
        if not pd.isna(best.get("margin")) and not pd.isna(best.get("margin_se")):
            line += (f"; per-image pixel accuracy margin {100 * best['margin']:+.2f} +- "
                     f"{100 * Z95 * best['margin_se']:.2f} points (95%, paired)")
        return line
    margin = best.get("margin")
    se = best.get("margin_se")
    if margin is None or se is None or pd.isna(margin) or pd.isna(se):
        return (f"netadapt vs the best baseline ({best['network']}) on test accuracy: "
                f"{ours:.4f} vs {best['test_accuracy']:.4f}; no per-image results to tell "
                f"whether that differs from noise")
    half = Z95 * float(se)
    word = "beats" if margin > half else ("LOSES TO" if margin < -half else "ties with")
    return (f"netadapt {word} the best baseline ({best['network']}) on test accuracy: "
            f"{ours:.4f} vs {best['test_accuracy']:.4f}, margin {100 * margin:+.2f} "
            f"+- {100 * half:.2f} points (95%, paired on the same test images)")
