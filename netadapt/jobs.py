"""A proposal evaluation as a plain job: everything it needs in, its result out.

    ProposalJob (parent spec, child spec, group, iteration seed, training settings,
                 data description) + the parent's weights
        -> run_proposal ->
    ProposalResult (holdout accuracy, per-image correctness, child weights, seconds, worker)

A job touches no file and no state of the search: any process that can import netadapt
runs it (the driver itself, a local worker process, a Ray task on another machine) and
gets the same bits on CPU. The driver alone writes the run directory from the results.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .spec import NetworkSpec

if TYPE_CHECKING:
    from .data import Data

BN_BATCHES = 4  # batches that re-estimate BN statistics before a proposal is scored
EVAL_BATCH = 256


@dataclass(frozen=True)
class DataSource:
    """How to load the search's data: workers load it themselves (once per process)
    instead of receiving 50 MB of images with every job."""

    path: str | None  # None: the built-in Fashion-MNIST
    resolution: int
    in_channels: int
    holdout: int
    seed: int
    segmentation: bool = False  # images and masks (netadapt.segdata), not labels

    def load(self) -> Data:
        """The data, loaded once per process (deterministic: the same splits anywhere)."""
        from .data import load_data
        from .segdata import load_segmentation

        if self not in _LOADED:
            load = load_segmentation if self.segmentation else load_data
            _LOADED[self] = load(Path(self.path) if self.path else None,
                                 resolution=self.resolution, in_channels=self.in_channels,
                                 holdout=self.holdout, seed=self.seed)
        return _LOADED[self]


_LOADED: dict[DataSource, Data] = {}


@dataclass(frozen=True)
class Training:
    """How a proposal is fine-tuned and scored."""

    steps: int
    lr: float
    batch_size: int
    device: str = "cpu"  # "cuda": the worker's own GPU (see set_worker_device)
    threads: int = 1  # torch CPU threads in the process that runs the job; 0: leave as is


@dataclass(frozen=True)
class ProposalJob:
    """One proposal: the parent with ``group`` cut to the child's width, fine-tuned with
    the iteration's seed (every proposal of an iteration sees the same batches). Raced,
    a job trains one rung: up to ``until`` of the T steps, continuing from ``progress``
    (the proposal's fine-tune as the previous rung left it) when that is given, and
    scores every ``holdout_stride``-th holdout image."""

    iteration: int
    group: str
    parent: NetworkSpec
    child: NetworkSpec
    seed: int
    training: Training
    data: DataSource
    until: int | None = None  # None: all T (training.steps) steps
    progress: bytes | None = field(default=None, repr=False)
    holdout_stride: int = 1


@dataclass(frozen=True)
class ProposalResult:
    """What a job hands back: the driver records and saves it."""

    iteration: int
    group: str
    accuracy: float  # on the holdout split: top-1, or mIoU for segmentation
    correct: torch.Tensor  # per holdout image: correct (bool), or pixel accuracy
    # the fine-tuned child's weights (CPU); empty for a rung short of T, whose weights go
    # on only inside ``progress`` (a worker would otherwise send the network back twice)
    state: dict[str, torch.Tensor]
    seconds: float
    worker: str  # host:pid of the process that ran it
    attempts: int = 1
    cpu_seconds: float = 0.0  # CPU time of the job's process (below seconds: it waited)
    # of seconds: the fine-tune, and the BN re-estimation + scoring (the rest is the
    # job's overhead: building the child, slicing the parent's weights)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    # the fine-tune's state where it stopped (model, optimizer, step), to continue in the
    # next rung; None when it ran all T steps or none
    progress: bytes | None = field(default=None, repr=False)


_WORKER_DEVICE: str | None = None  # a GPU assigned to this worker process


def set_worker_device(device: str | None) -> None:
    """Pin the jobs this process runs with ``device == "cuda"`` to one GPU."""
    global _WORKER_DEVICE
    _WORKER_DEVICE = device


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def recalibrated(model: torch.nn.Module, data: Data, batch_size: int, seed: int,
                 device: str) -> torch.nn.Module:
    """BN statistics re-estimated on the seed's batches: a few hundred steps leave them
    behind the new weights, and proposals must be compared on weights, not stale BN."""
    from .train import recalibrate_bn

    return recalibrate_bn(model, data, BN_BATCHES, batch_size=batch_size, seed=seed,
                          device=device)


def run_proposal(job: ProposalJob, parent_state: dict[str, torch.Tensor]) -> ProposalResult:
    """Inherit the parent's largest-norm filters (or continue the proposal's own
    fine-tune), fine-tune, re-estimate BN, score."""
    from .checkpoint import MemoryCheckpoint
    from .model import build_model
    from .prune import inherit_weights
    from .scoring import score_model
    from .train import finetune

    started, cpu_started = time.perf_counter(), time.process_time()
    settings = job.training
    if settings.threads > 0 and torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)
    device = _WORKER_DEVICE if settings.device == "cuda" and _WORKER_DEVICE else settings.device
    data = job.data.load()
    model = build_model(job.child, init=False)  # the inherited weights replace it all
    if job.progress is None:
        model.load_state_dict(inherit_weights(job.parent, parent_state, job.child))
    until = settings.steps if job.until is None else job.until
    short = until < settings.steps  # a rung short of T
    stops = short and until > 0  # ... that trains: its progress goes on
    progress = MemoryCheckpoint(data=job.progress, keep=stops) if stops or job.progress \
        else None
    trained = time.perf_counter()
    finetune(model, data, steps=settings.steps, lr=settings.lr,
             batch_size=settings.batch_size, seed=job.seed, device=device,
             checkpoint=progress, until=job.until)
    evaluated = time.perf_counter()
    recalibrated(model, data, settings.batch_size, job.seed, device)
    score, correct, _ = score_model(model, data.holdout.every(job.holdout_stride),
                                    data.num_classes, batch_size=EVAL_BATCH, device=device)
    done = time.perf_counter()
    return ProposalResult(job.iteration, job.group, score, correct,
                          {} if short else {k: v.cpu() for k, v in model.state_dict().items()},
                          done - started, worker_name(),
                          cpu_seconds=time.process_time() - cpu_started,
                          train_seconds=evaluated - trained, eval_seconds=done - evaluated,
                          progress=progress.data if stops and progress else None)
