"""What decides a search's result: :class:`SearchConfig`, saved as the run's config.json,
and the named presets the CLI starts from."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import NetadaptError
from .resources import default_spec
from .search import CRITERIA, Schedule, parse_budget
from .spec import NetworkSpec, at_size

CLASSIFIER_RESOLUTION = 32  # --resolution's default for a classifier
DEFAULT_SPEC = default_spec()  # shipped (in the wheel, or the checkout's configs/)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a search's result; saved as the run's config.json.
    (Where proposals run, and how progress is shown, change no result and are not here.)"""

    budgets: tuple[str, ...]
    spec: str = str(DEFAULT_SPEC)
    weights: str | None = None
    device: str = "pixel"
    data: str | None = None  # None: the built-in Fashion-MNIST
    criterion: str = "accuracy"
    schedule: str = "constant"
    step: float = 0.06  # fraction of the seed's value removed per iteration
    short_term_steps: int = 20
    # race each iteration's proposals (successive halving, racing.py): most get a few of
    # the short_term_steps; the chosen one all of them
    racing: bool = True
    # proposals that get all T steps in a race: one is successive halving; N workers
    # train N side by side, and more finalists pick full evaluation's choice more often
    # (docs/benchmarks.md, Racing). A result depends on this, never on the workers.
    finalists: int = 1
    long_term_steps: int = 500
    # Training at the spec's (deployed) input size after a search at a smaller
    # --resolution, for the result and every baseline alike; 0: none (a network trained at
    # 32 px alone scores near chance at 224 px). LR and batch measured for 200 steps at
    # 224 px: docs/benchmarks.md "Defaults".
    deploy_steps: int = 200
    deploy_lr: float = 0.02
    deploy_batch_size: int = 16  # at 224 px a step's cost grows with the batch
    # Training of the seed when no weights are given: one epoch of Fashion-MNIST at batch 64.
    seed_steps: int = 900
    # Training resolution (latency is always at the spec's size); None: 32 px for a
    # classifier, the deployed input size for segmentation (masks need the pixels).
    resolution: int | None = None
    input_size: int | None = None  # deployed square input size; None: the spec's own
    batch_size: int = 64  # on CPU a step costs about the same at 32 or 64 (op overhead)
    lr: float = 0.02  # fine-tuning (SGD); the seed trains from scratch at 5x this
    # Images carved from training to score proposals: fewer make the choice noisier
    # (docs/benchmarks.md "Defaults": the regret per iteration against the holdout size).
    holdout: int = 2000
    seed: int = 0
    torch_device: str = "auto"
    # CPU threads for training. One: at 32 px the ops are too small to split, and two
    # OpenMP threads on a 2-core machine that also runs anything else wait for each other.
    # 0: torch's default.
    threads: int = 1
    compare: bool = False  # also train the baselines (width multiplier, uniform, resolution)
    # Time the loop's result end to end on the device (when its table is measured, not an
    # ESTIMATE) before the latency budget counts as met; over it, the loop goes on to a
    # tighter predicted target (measured.py).
    measured_check: bool = True

    def __post_init__(self) -> None:
        """Refuse bad options before any data is read or any step is trained."""
        if self.criterion not in CRITERIA:
            raise NetadaptError(f"--criterion {self.criterion!r}: use accuracy (NetAdapt) or "
                                f"slope (MobileNetV3: dAcc / |dLatency|)")
        Schedule.named(self.schedule, self.step)
        if not 0 < self.step < 1:
            raise NetadaptError(f"--step {self.step}: must be a fraction in (0, 1), e.g. 0.05")
        for budget in self.budgets:  # syntax only: percentages need the seed's values
            parse_budget(budget, {"latency_ms": 1.0, "params": 1.0, "macs": 1.0})
        for name in ("short_term_steps", "long_term_steps", "seed_steps", "deploy_steps",
                     "threads"):
            if getattr(self, name) < 0:
                raise NetadaptError(f"--{name.replace('_', '-')}: must be >= 0")
        if not self.deploy_lr > 0:
            raise NetadaptError(f"--deploy-lr {self.deploy_lr}: must be positive")
        for name in ("resolution", "input_size", "batch_size", "holdout", "deploy_batch_size",
                     "finalists"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise NetadaptError(f"--{name.replace('_', '-')}: must be positive")
        if self.weights is None and self.seed_steps == 0:
            raise NetadaptError("no --weights and --seed-steps 0: the seed would be untrained; "
                                "pass --weights W.pt (e.g. torchvision ImageNet weights) or "
                                "--seed-steps N")
        if self.torch_device not in ("auto", "cpu", "cuda") and \
                not self.torch_device.startswith("cuda:"):
            raise NetadaptError(f"--torch-device {self.torch_device!r}: use auto, cpu or cuda")

    def deployed(self, seed_spec: NetworkSpec) -> NetworkSpec:
        """The seed spec at this run's deployed input size."""
        return seed_spec if self.input_size is None else at_size(seed_spec, self.input_size)

    def default_run_dir(self) -> Path:
        """``runs/<spec>-<budgets>-<time>``: a new run's directory when none is named."""
        tag = "_".join(b.replace("=", "").replace("%", "pct") for b in self.budgets)
        return Path("runs") / f"{Path(self.spec).stem}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "budgets": list(self.budgets)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise NetadaptError(f"run config has unknown fields {sorted(unknown)}")
        # a run made before racing (or the measured check) existed evaluated every
        # proposal fully and trusted the table: resume it as it was begun
        return cls(**{"racing": False, "measured_check": False, **data,
                      "budgets": tuple(data["budgets"])})


PRESETS: dict[str, dict[str, Any]] = {
    # Finishes on 2 CPU cores in minutes: low training resolution, short fine-tunes.
    "quick": {},
    # The papers' scale, for a GPU and ImageNet-size data (an ImageFolder via --data).
    "paper": {"short_term_steps": 10000, "long_term_steps": 100000, "seed_steps": 0,
              "resolution": 224, "batch_size": 128, "lr": 0.02, "holdout": 10000,
              "schedule": "constant", "step": 0.01, "criterion": "slope"},
}


def config_from_options(budgets: list[str], preset: str, compare: bool,
                        options: dict[str, Any]) -> SearchConfig:
    """The config of a new search: ``preset``'s values, overridden by the options given
    (those not None)."""
    if not budgets:
        raise NetadaptError("no budget given; e.g. --budget 20ms (or --resume RUN_DIR)")
    if preset not in PRESETS:
        raise NetadaptError(f"unknown preset {preset!r}; use {' or '.join(PRESETS)}")
    given = {k: v for k, v in options.items() if v is not None}
    return SearchConfig(budgets=tuple(budgets), compare=compare, **{**PRESETS[preset], **given})
