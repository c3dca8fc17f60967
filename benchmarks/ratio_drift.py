"""What moves a network's measured ratio to its seed, within this machine?

    python benchmarks/ratio_drift.py RUN [--train-s 25] [--rounds 2]

Times the run's result (and its width multiplier, if the run has one) beside the seed as
the comparison times them (``report.measure_here_ms``), in one fresh process, under
each condition in turn, ``--rounds`` times interleaved:

- ``idle``: nothing before it;
- ``after training``: right after training the result with torch (one thread, batch
  32, random 64 px images) for ``--train-s`` seconds in this process, as a check follows
  an iteration's training;
- ``after scoring``: right after ``scoring.score_onnx`` scored the exported
  ``best.onnx`` on two threads for 15 s in this process (random images), as the
  comparison follows the exported files' scoring;
- ``cache pressure``: while another process adds 1 to a 96 MiB buffer on the other
  core, over and over;
- ``cold``: every cache evicted before each run (``table_errors._beside_seed``).

A condition whose ratios differ from the idle ones by more than the idle rounds differ
among themselves is one a search's check would carry. Run it on an otherwise quiet
machine; about 1 minute a round.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from table_errors import _beside_seed

from netadapt.data import Split
from netadapt.latency.graphs import network_input_shape, network_model
from netadapt.model import build_model
from netadapt.report import measure_here_ms
from netadapt.scoring import score_onnx
from netadapt.spec import NetworkSpec, load_spec

THRASH = ("import numpy as np, time, sys\n"
          "a = np.zeros(96 << 20, dtype=np.uint8)\n"
          "t0 = time.time()\n"
          "while time.time() - t0 < float(sys.argv[1]): np.add(a, 1, out=a)\n")


def train_for(spec: NetworkSpec, seconds: float) -> None:
    """Train a fresh model of ``spec`` on random images for ``seconds``."""
    torch.set_num_threads(1)
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(32, spec.in_channels, *spec.input_size)
    y = torch.randint(0, spec.num_classes, (32,))
    t0 = time.time()
    while time.time() - t0 < seconds:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def score_for(onnx_path: Path, spec: NetworkSpec, seconds: float) -> None:
    """Score the exported file with ``scoring.score_onnx`` on two threads, as the run
    scores its exported files, over random images until ``seconds`` have passed."""
    split = Split("random", torch.randint(0, 256, (640, spec.in_channels, *spec.input_size),
                                          dtype=torch.uint8),
                  torch.randint(0, spec.num_classes, (640,)), spec.in_channels,
                  (0.5,) * spec.in_channels, (0.25,) * spec.in_channels)
    t0 = time.time()
    while time.time() - t0 < seconds:
        score_onnx(onnx_path, split, spec.num_classes, threads=2)


def under_pressure(specs: list[NetworkSpec]) -> list[float]:
    """measure_here_ms while another process thrashes a buffer larger than the cache."""
    thrasher = subprocess.Popen([sys.executable, "-c", THRASH, "600"])
    try:
        time.sleep(1)
        return measure_here_ms(specs)
    finally:
        thrasher.kill()
        thrasher.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--train-s", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    seed, result = load_spec(args.run / "seed.yaml"), load_spec(args.run / "best.yaml")
    specs = [seed, result]
    names = ["result"]
    if (args.run / "baselines" / "width_multiplier.yaml").exists():
        specs.append(load_spec(args.run / "baselines" / "width_multiplier.yaml"))
        names.append("width multiplier")

    def after(prepare: Callable[[], None]) -> list[float]:
        prepare()
        return measure_here_ms(specs)

    def cold() -> list[float]:
        seed_model = (network_model(seed), network_input_shape(seed))
        return [1.0] + [_beside_seed(seed_model, s, cold=True, passes=1) for s in specs[1:]]

    conditions: dict[str, Callable[[], list[float]]] = {
        "idle": lambda: measure_here_ms(specs),
        "after training": lambda: after(lambda: train_for(result, args.train_s)),
        "after scoring": lambda: after(lambda: score_for(args.run / "best.onnx", result, 15.0)),
        "cache pressure": lambda: under_pressure(specs),
        "cold": cold,
    }
    got: dict[str, list[list[float]]] = {c: [] for c in conditions}
    for r in range(args.rounds):
        for condition, measure in conditions.items():
            ms = measure()
            got[condition].append([m / ms[0] for m in ms[1:]])
        print(f"round {r + 1} of {args.rounds} done", flush=True)
    print(f"{args.run}: ratio to the seed, % (each round)")
    for condition, rounds in got.items():
        cells = [f"{name} {' '.join(f'{100 * r[i]:.1f}' for r in rounds)}"
                 for i, name in enumerate(names)]
        print(f"  {condition:15s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
