"""What a `paper`-preset search of MobileNetV3-Large costs, with and without racing,
projected from measured costs: how many training steps and forward passes each search
spends (counted by running the search's own loop and race on the shipped `pixel` table,
with a stand-in score instead of training), times what a step and a forward pass cost.

    python benchmarks/paper_cost.py [--budgets 70% 50%] [--batch 16] [--torch-device cpu]

Counted here, not assumed: the iterations to each budget at the preset's 1% constant
step, the proposals each iteration has (every group that can meet the target alone),
and every rung's steps and scoring passes (racing.Racing, no proposal kept on noise; the
noise rule keeps more in practice, so the racing figures are also given with every
cut keeping twice its share). The stand-in score ranks proposals by the MACs they keep
(the least invasive cut wins): it sets the path, not the counts per proposal.

Measured here: a training step's and a forward pass's time per image for the seed at
224 px on ``--torch-device`` (CPU on this VM). GPU-hours use a published training
throughput (GPU_TRAIN_IMAGES_S below) and this machine's ratio of a forward image to a
training image; say which is which when quoting the output.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from netadapt.config import PRESETS, SearchConfig
from netadapt.cost import count_macs
from netadapt.jobs import BN_BATCHES
from netadapt.latency import load_table
from netadapt.model import build_model
from netadapt.racing import Racing, Rung
from netadapt.search import (
    Child,
    Evaluated,
    Iteration,
    Proposal,
    Schedule,
    Start,
    netadapt,
    resolve_budgets,
    resources_of,
)
from netadapt.spec import load_spec

# timm's published training benchmark of mobilenetv3_large_100 at 224 px: 2,167 images/s
# on one RTX 3090, AMP, batch 512, PyTorch 1.12 / CUDA 11.3
# (huggingface/pytorch-image-models results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv)
GPU_TRAIN_IMAGES_S = 2167.0
GPU_SOURCE = "RTX 3090, AMP (timm's published training benchmark)"


@dataclass
class Count:
    """One search's work: iterations, proposals, training steps, scored forward images."""

    iterations: int = 0
    proposals: int = 0
    steps: int = 0
    forward_images: int = 0


def count_search(budget: str, cfg: SearchConfig, racing: Racing | None) -> Count:
    """Run the search's loop on the shipped table with a stand-in score, counting the
    training steps and forward images every rung of every iteration would spend."""
    table = load_table(cfg.device)
    seed = load_spec(cfg.spec)
    start = Start(seed, 1.0, resources_of(seed, table.predict_ms))
    budgets = resolve_budgets([budget], seed, table.predict_ms)
    seed_macs = float(count_macs(seed))
    count = Count()
    per_job = BN_BATCHES * cfg.batch_size + cfg.holdout

    def evaluate_many(iteration: int, rung: Rung, children: Sequence[Child]
                      ) -> Iterator[Evaluated]:
        for child in children:
            count.steps += rung.until - rung.start
            count.forward_images += per_job
            count.proposals += rung.index == 0
            yield child.group, count_macs(child.spec) / seed_macs, None

    for event in netadapt(start, budgets, table.predict_ms, evaluate_many,
                          Schedule.named(cfg.schedule, cfg.step), "accuracy",
                          steps=cfg.short_term_steps, racing=racing):
        count.iterations += isinstance(event, Iteration)
    return count


def no_noise(a: Proposal, b: Proposal) -> tuple[float, float]:
    return a.accuracy - b.accuracy, 0.0


def loose(eta: int) -> Racing:
    """Racing whose every cut keeps twice its share (as if the noise rule kept as many
    again): the survivors rule with a keep ratio of 2 / eta."""
    return _Loose(no_noise, eta)


@dataclass(frozen=True)
class _Loose(Racing):
    def survivors(self, ranked: Sequence[Proposal]) -> list[Proposal]:
        return list(ranked[:max(1, min(len(ranked) - 1, math.ceil(2 * len(ranked) / self.eta)))])


def seconds_per_image(resolution: int, batch: int, device: str, repeats: int = 4
                      ) -> tuple[float, float]:
    """(training, forward) seconds per image of the seed at ``resolution`` px: the
    median of ``repeats`` timed SGD steps and eval forwards of ``batch`` images."""
    model = build_model(load_spec(SearchConfig(budgets=("50%",)).spec)).to(device)
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    times = []
    for fn, train in ((step, True), (forward, False)):
        model.train(train)
        fn()  # warm-up
        laps = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            laps.append(time.perf_counter() - t)
        times.append(sorted(laps)[len(laps) // 2] / batch)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["70%", "50%"])
    parser.add_argument("--batch", type=int, default=16, help="images per timed step")
    parser.add_argument("--torch-device", default="cpu")
    args = parser.parse_args()
    cfg = SearchConfig(budgets=("50%",), weights="imagenet.pt", **PRESETS["paper"])
    train_s, forward_s = seconds_per_image(cfg.resolution or 224, args.batch, args.torch_device)
    print(f"measured on {args.torch_device}, seed at {cfg.resolution} px, batch {args.batch}: "
          f"{1e3 * train_s:.1f} ms per training image, {1e3 * forward_s:.1f} ms per forward "
          f"image (ratio {forward_s / train_s:.2f})")
    gpu_train = 1 / GPU_TRAIN_IMAGES_S
    gpu_forward = gpu_train * forward_s / train_s
    long_term = cfg.long_term_steps * cfg.batch_size
    for budget in args.budgets:
        for name, racing in (("full", None), ("racing", Racing(no_noise)),
                             ("racing, 2x survivors", loose(3))):
            c = count_search(budget, cfg, racing)
            images = c.steps * cfg.batch_size
            gpu_h = (gpu_train * (images + long_term) + gpu_forward * c.forward_images) / 3600
            cpu_days = (train_s * (images + long_term) + forward_s * c.forward_images) / 86400
            print(f"{budget:>4} {name:<21} {c.iterations:3d} iterations, {c.proposals:4d} "
                  f"proposals, {c.steps:>10,d} proposal steps, {c.forward_images / 1e6:7.1f} M "
                  f"scored images; + {cfg.long_term_steps:,d} long-term steps: "
                  f"{gpu_h:6.1f} GPU-hours ({GPU_SOURCE}), {cpu_days:8.0f} days here")


if __name__ == "__main__":
    main()
