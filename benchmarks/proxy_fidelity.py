"""Does a proxy input size rank networks the way the deployed size does? One fixed set
of networks (an iteration's proposals from a search run, plus the width multiplier and
uniform pruning at 70/50/35% of the seed's latency), each given the same training at
every size, scored on the same test images at that size; the Kendall tau of every
proxy size's accuracies against the deployed size's, with a 95% bootstrap interval over
the networks, and what a network's training and scoring cost at each size.

    python benchmarks/proxy_fidelity.py RUN [--iteration 1] [--sizes 32 64 96 224]
        [--steps 60] [--seed-steps 200] [--test 2000] [--out runs/proxy-fidelity.csv]
        [--networks best baselines/uniform_pruning ...]

``--networks`` replaces the fixed set with the run's own networks (spec names relative
to RUN): whether the architectures a search and its baselines ended at rank at the
deployed size as at the proxy when all inherit from the same seed and train alike.

The same training at every size s: the run's seed (trained at the run's resolution) gets
``--seed-steps`` at s (the search's own deploy recipe: batch 16, LR 0.02), then each
network inherits that seed's largest-L2 filters and trains ``--steps`` at s (batch 16,
LR 0.02, the same batches for every network). Rows are appended to ``--out`` as they
finish; a rerun skips what is there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from netadapt.baseline import uniform_pruning, width_multiplier
from netadapt.config import SearchConfig
from netadapt.data import load_data
from netadapt.latency import load_table
from netadapt.model import build_model, read_state_dict
from netadapt.prune import inherit_weights
from netadapt.rundir import RunDir
from netadapt.scoring import score_model
from netadapt.search import Proposal, resolve_budgets
from netadapt.spec import NetworkSpec
from netadapt.train import finetune, paired_margin

BATCH, LR = 16, 0.02  # the search's deploy recipe (config.py deploy_batch_size, deploy_lr)


def networks(run: RunDir, iteration: int) -> tuple[NetworkSpec, dict[str, NetworkSpec]]:
    """The run's seed spec and the fixed set: ``iteration``'s proposals (by group) and
    the two simple baselines at 70/50/35% of the seed's predicted latency."""
    config = SearchConfig.from_json(run.config["search"])
    seed = run.read_spec("seed.yaml")  # at the data's class count
    found = {f"{p.group} -> {p.width_to}": p.spec for p in run.events(seed)
             if isinstance(p, Proposal) and p.iteration == iteration}
    predict_ms = load_table(config.device).predict_ms
    for budget in ("70%", "50%", "35%"):
        budgets = resolve_budgets([budget], seed, predict_ms)
        for make in (width_multiplier, uniform_pruning):
            b = make(seed, budgets, predict_ms)
            if b is not None:
                found[f"{b.name} {budget} ({b.knob})"] = b.spec
    return seed, found


def seed_at(seed: NetworkSpec, state: dict, size: int, steps: int, run_px: int,
            data_source: Path | None, cache: Path) -> dict:
    """The run's seed after ``steps`` of training at ``size`` px (cached on disk)."""
    if size == run_px or steps == 0:
        return state
    path = cache / f"seed_{size}px_{steps}.pt"
    if path.exists():
        return torch.load(path)
    model = build_model(seed)
    model.load_state_dict(state)
    data = load_data(data_source, size, seed.in_channels, 2000, 0)
    finetune(model, data, steps, lr=LR, batch_size=BATCH, seed=1)
    torch.save(model.state_dict(), path)
    return model.state_dict()


def kendall(a: np.ndarray, b: np.ndarray, ids: np.ndarray | None = None) -> float:
    """Kendall's tau: (concordant - discordant pairs) / pairs, over pairs of two
    different networks (``ids``: which network each entry is; a bootstrap draws some
    twice, and a network paired with itself says nothing about the ranking)."""
    ids = np.arange(len(a)) if ids is None else ids
    i, j = np.triu_indices(len(a), 1)
    distinct = ids[i] != ids[j]
    i, j = i[distinct], j[distinct]
    return float(np.sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])) / len(i))


def kendall_interval(a: np.ndarray, b: np.ndarray, draws: int = 2000
                     ) -> tuple[float, float, float]:
    """Kendall tau of a and b, and its 95% bootstrap interval over the networks."""
    rng = np.random.default_rng(0)
    boot = [kendall(a[i], b[i], i) for i in (rng.integers(0, len(a), len(a))
                                             for _ in range(draws))]
    low, high = np.percentile(boot, [2.5, 97.5])
    return kendall(a, b), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--iteration", type=int, default=1)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96, 224])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed-steps", type=int, default=200)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/proxy-fidelity.csv"))
    parser.add_argument("--networks", nargs="+", help="the run's specs instead of the set")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = RunDir.open(args.run)
    config = SearchConfig.from_json(run.config["search"])
    seed, nets = networks(run, args.iteration)
    if args.networks:
        nets = {name: run.read_spec(f"{name}.yaml") for name in args.networks}
    seed_state = read_state_dict(run.path / "seed.pt")
    data_source = Path(config.data) if config.data else None
    args.out.with_suffix("").mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame(
        columns=["size", "network"])
    for size in args.sizes:
        state_s = seed_at(seed, seed_state, size, args.seed_steps, config.resolution or 32,
                          data_source, args.out.parent)
        data = load_data(data_source, size, seed.in_channels, 2000, 0, max_test=args.test)
        for name, spec in nets.items():
            if ((done["size"] == size) & (done["network"] == name)).any():
                continue
            model = build_model(spec)
            model.load_state_dict(inherit_weights(seed, state_s, spec))
            t = time.perf_counter()
            finetune(model, data, args.steps, lr=LR, batch_size=BATCH, seed=2)
            trained = time.perf_counter()
            accuracy, correct, _ = score_model(model, data.test, data.num_classes, 256)
            torch.save(correct, correct_path(args.out, size, name))
            row = {"size": size, "network": name, "test_accuracy": accuracy,
                   "train_s": trained - t, "score_s": time.perf_counter() - trained}
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            done.to_csv(args.out, index=False)
            print(f"{size:4d} px  {name:<40} {accuracy:.4f}  train {row['train_s']:.0f} s")
    report(done, max(args.sizes))
    if args.networks:
        margins(args.out, args.sizes, args.networks)


def correct_path(out: Path, size: int, name: str) -> Path:
    """Where a network's per-test-image correctness at ``size`` is kept."""
    return out.with_suffix("") / f"{size}px_{name.replace('/', '_')}.pt"


def margins(out: Path, sizes: list[int], names: list[str]) -> None:
    """At each size, the first network's test accuracy minus each other's, paired on the
    same test images (+- 1.96 SE)."""
    for size in sizes:
        first = torch.load(correct_path(out, size, names[0]))
        line = [f"{size:4d} px, {names[0]} minus:"]
        for name in names[1:]:
            margin, se = paired_margin(first, torch.load(correct_path(out, size, name)))
            line.append(f"{name} {100 * margin:+.2f} +- {196 * se:.2f} pt;")
        print(" ".join(line))


def report(rows: pd.DataFrame, deployed: int) -> None:
    """Kendall tau of every size against ``deployed``, and the cost per network."""
    wide = rows.pivot(index="network", columns="size", values="test_accuracy").dropna()
    print(f"\n{len(wide)} networks; accuracy by size:\n{wide.round(4).to_string()}\n")
    proposals = ~wide.index.str.startswith(("width_multiplier", "uniform_pruning"))
    for size in wide.columns:
        cost = rows[rows["size"] == size][["train_s", "score_s"]].mean()
        line = [f"{size:4d} px vs {deployed} px, Kendall tau:"]
        for label, subset in (("all", wide), ("the iteration's proposals", wide[proposals])):
            tau, low, high = kendall_interval(subset[size].to_numpy(),
                                              subset[deployed].to_numpy())
            line.append(f"{label} {tau:+.2f} [{low:+.2f}, {high:+.2f}];")
        print(" ".join(line), f"cost per network: train {cost['train_s']:.1f} s, "
              f"score {cost['score_s']:.1f} s")


if __name__ == "__main__":
    main()
