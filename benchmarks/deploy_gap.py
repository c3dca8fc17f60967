"""Does more training at the deployed size close the gap between a search's result and
a baseline? Continues each network of a finished run from its deployed weights (after
the run's `--deploy-steps` at the deployed size) for more steps of the same recipe, and
scores it on the test split at that size after every ``--every`` steps.

    python benchmarks/deploy_gap.py RUN [--networks best baselines/width_multiplier]
        [--steps 600] [--every 200]

Each network gets the same batches (one seed for all); the paired margin of the first
network over each other one is on the same test images, with its 95% interval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from netadapt.config import SearchConfig
from netadapt.data import load_data
from netadapt.model import build_model, read_state_dict
from netadapt.rundir import RunDir
from netadapt.scoring import score_model
from netadapt.train import finetune, paired_margin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--networks", nargs="+", default=["best", "baselines/width_multiplier"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = RunDir.open(args.run)
    config = SearchConfig.from_json(run.config["search"])
    specs = {n: run.read_spec(f"{n}.yaml") for n in args.networks}
    size = specs[args.networks[0]].input_size[0]
    data = load_data(Path(config.data) if config.data else None, size,
                     specs[args.networks[0]].in_channels, config.holdout, config.seed)
    models = {}
    for name, spec in specs.items():
        models[name] = build_model(spec)
        models[name].load_state_dict(read_state_dict(run.path / f"{name}.pt"))
    done = config.deploy_steps
    while True:
        correct = {}
        for name, model in models.items():
            accuracy, correct[name], _ = score_model(model, data.test, data.num_classes, 256)
            print(f"{done:5d} steps at {size} px  {name:<32} test {accuracy:.4f}", flush=True)
        first = args.networks[0]
        for other in args.networks[1:]:
            margin, se = paired_margin(correct[first], correct[other])
            print(f"      {first} - {other}: {100 * margin:+.2f} +- {196 * se:.2f} points")
        if done - config.deploy_steps >= args.steps:
            return
        for model in models.values():  # the same batches for every network
            finetune(model, data, args.every, lr=config.deploy_lr,
                     batch_size=config.deploy_batch_size, seed=done)
        done += args.every


if __name__ == "__main__":
    main()
