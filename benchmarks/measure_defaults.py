"""The measurements behind the search's defaults (seed schedule, deployed-size phase).

    python benchmarks/measure_defaults.py seed --epochs 1 2     # seed length -> accuracy
    python benchmarks/measure_defaults.py deploy --steps 100 200 --lr 0.01 0.02 --batch 8 16 \
        [--network RUN/iterations/iter_012.yaml]                 # 224 px phase -> accuracy
    python benchmarks/measure_defaults.py holdout RUN_DIR       # selection noise by holdout size

`holdout` reads a search run made with a large --holdout (its proposals' per-image
correctness is kept) and reports, per iteration, the best-vs-second gap and its paired
standard error, and for smaller holdouts (random subsets, 200 draws) the paired SE, how
often the subset picks the same winner as the whole holdout, and the mean accuracy (on
the whole holdout) lost by choosing on the subset ("regret").

Every figure is printed as one line and appended to runs/measure/results.jsonl. Run it
under `nice -n 10` on a shared machine. Uses the default Large spec on Fashion-MNIST at
the quick preset's 32 px, one CPU thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch

from netadapt.data import load_data
from netadapt.model import build_model, read_state_dict, save_state_dict
from netadapt.resources import default_spec
from netadapt.spec import load_spec
from netadapt.train import evaluate, finetune, train_seed

OUT = Path("runs/measure")


def log(**row: object) -> None:
    print(json.dumps(row), flush=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["seed", "deploy", "holdout"])
    parser.add_argument("run", nargs="?", type=Path, help="run directory (holdout)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--epochs", type=float, nargs="+", default=[1.0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50])
    parser.add_argument("--seed-weights", type=Path, default=OUT / "seed_e1.pt")
    parser.add_argument("--deploy", type=int, default=224)
    parser.add_argument("--network", type=Path, default=None,
                        help="deploy: start from this spec (its weights: the same name .pt), "
                             "e.g. a search's last iteration; default: the seed")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.02],
                        help="deploy phase learning rates")
    parser.add_argument("--batch", type=int, nargs="+", default=[16],
                        help="deploy phase batch sizes")
    parser.add_argument("--test", type=int, default=2000,
                        help="how many test images to score at the deployed size "
                        "(evenly spaced over the 10,000)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.what == "holdout":
        return selection_noise(args.run, args.sizes)
    data = load_data(None, resolution=32, in_channels=3, holdout=5000, seed=0)
    spec = dataclasses.replace(load_spec(default_spec()), num_classes=10)
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
    every = max(1, len(data.test) // args.test)
    small_test = dataclasses.replace(data.test, images=data.test.images[::every],
                                     labels=data.test.labels[::every])
    weights = args.seed_weights
    if args.network is not None:
        spec, weights = load_spec(args.network), args.network.with_suffix(".pt")
    deployed = data.at(args.deploy)
    for steps, lr, batch in itertools.product(args.steps, args.lr, args.batch):
        model = build_model(spec)
        model.load_state_dict(read_state_dict(weights))
        started = time.time()
        finetune(model, deployed, steps, lr=lr, batch_size=batch, seed=1)
        minutes = (time.time() - started) / 60
        log(what="deploy", network=str(args.network or "seed"), steps=steps,
            size=args.deploy, lr=lr, batch=batch, minutes=minutes,
            test_deployed=evaluate(model, small_test.at(args.deploy), 50),
            test_32=evaluate(model, small_test.at(32), 50), test_images=len(small_test))


def selection_noise(run: Path, sizes: list[int], draws: int = 200) -> None:
    """Per iteration of ``run``: gap and paired SE at the full holdout, and for each
    smaller size the paired SE and the share of random subsets that pick the same winner."""
    from netadapt.train import paired_margin

    generator = torch.Generator().manual_seed(0)
    for folder in sorted((run / "proposals").glob("iter_*")):
        scores = {p.name.removesuffix(".correct.pt"): read_state_dict(p)["correct"]
                  for p in sorted(folder.glob("*.correct.pt"))}
        if len(scores) < 2:
            continue
        names = list(scores)
        matrix = torch.stack([scores[n] for n in names]).float()  # proposals x images
        order = matrix.mean(1).argsort(descending=True)
        best, second = int(order[0]), int(order[1])
        gap, se = paired_margin(matrix[best].bool(), matrix[second].bool())
        row: dict[str, object] = {"what": "holdout", "run": str(run), "iteration": folder.name,
                                  "proposals": len(names), "holdout": matrix.shape[1],
                                  "best": names[best], "second": names[second],
                                  "gap": gap, "se": se}
        for size in sizes:
            if size >= matrix.shape[1]:
                continue
            same, regret = 0, 0.0
            full = matrix.mean(1)
            for _ in range(draws):
                subset = torch.randperm(matrix.shape[1], generator=generator)[:size]
                pick = int(matrix[:, subset].mean(1).argmax())
                same += int(pick == best)
                regret += float(full[best] - full[pick])
            row[f"se_{size}"] = se * (matrix.shape[1] / size) ** 0.5
            row[f"same_winner_{size}"] = same / draws
            # what choosing on the smaller holdout costs, in whole-holdout accuracy
            row[f"regret_{size}"] = regret / draws
        log(**row)


if __name__ == "__main__":
    main()
