"""The measurements behind the search's defaults (seed schedule, deployed-size phase).

    python scripts/measure_defaults.py seed --epochs 1 2        # seed length -> accuracy
    python scripts/measure_defaults.py deploy --steps 25 50 100  # 224 px phase -> accuracy

Every figure is printed as one line and appended to runs/measure/results.jsonl. Run it
under `nice -n 10` on a shared machine. Uses the default Large spec on Fashion-MNIST at
the quick preset's 32 px, one CPU thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from netadapt.data import load_data
from netadapt.model import build_model, read_state_dict, save_state_dict
from netadapt.runner import DEFAULT_SPEC
from netadapt.spec import load_spec
from netadapt.train import evaluate, finetune, train_seed

OUT = Path("runs/measure")


def log(**row: object) -> None:
    print(json.dumps(row), flush=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["seed", "deploy"])
    parser.add_argument("--epochs", type=float, nargs="+", default=[1.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50])
    parser.add_argument("--seed-weights", type=Path, default=OUT / "seed_e1.pt")
    parser.add_argument("--deploy", type=int, default=224)
    parser.add_argument("--test", type=int, default=1000, help="test images at the deployed size")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    data = load_data(None, resolution=32, in_channels=3, holdout=5000, seed=0)
    spec = dataclasses.replace(load_spec(DEFAULT_SPEC), num_classes=10)
    if args.what == "seed":
        per_epoch = len(data.train) // 64
        for epochs in args.epochs:
            steps = round(epochs * per_epoch)
            started = time.time()
            model = train_seed(spec, data, steps, lr=0.1, batch_size=64, seed=0)
            save_state_dict(model.state_dict(), OUT / f"seed_e{epochs:g}.pt")
            log(what="seed", epochs=epochs, steps=steps, minutes=(time.time() - started) / 60,
                holdout_32=evaluate(model, data.holdout), test_32=evaluate(model, data.test))
        return
    small_test = dataclasses.replace(data.test, images=data.test.images[:args.test],
                                     labels=data.test.labels[:args.test])
    deployed = data.at(args.deploy)
    for steps in args.steps:
        model = build_model(spec)
        model.load_state_dict(read_state_dict(args.seed_weights))
        started = time.time()
        finetune(model, deployed, steps, lr=0.02, batch_size=32, seed=1)
        minutes = (time.time() - started) / 60
        log(what="deploy", steps=steps, size=args.deploy, minutes=minutes,
            test_deployed=evaluate(model, small_test.at(args.deploy), 50),
            test_32=evaluate(model, small_test.at(32), 50), test_images=args.test)


if __name__ == "__main__":
    main()
