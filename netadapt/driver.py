"""`netadapt search` end to end: wires spec, latency table, data, training and the
NetAdapt loop to a run directory, and resumes one.

Data flows one way: the config names a seed spec, a device table and data; the loop
(search.py) decides; an executor (executors.py) runs each iteration's proposal jobs
(jobs.py) wherever it runs them; this module alone writes what they return, and the
phases it performs itself, to the run directory (rundir.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from tqdm import tqdm

from .checkpoint import Checkpoint
from .clock import PhaseClock
from .errors import NetadaptError
from .executors import Executor, WorkerError
from .jobs import DataSource, ProposalJob, ProposalResult, Training, recalibrated
from .model import build_model, check_state_dict, read_state_dict
from .prune import inherit_weights
from .records import (
    BaselineRecord,
    FinalRecord,
    IterationRecord,
    ProposalRecord,
    Record,
    SeedRecord,
    of_type,
    timed,
)
from .resources import default_spec
from .rundir import RunDir, iteration_name, proposal_name
from .search import (
    CRITERIA,
    Budget,
    Iteration,
    Proposal,
    Schedule,
    Start,
    check_reachable,
    format_resource,
    netadapt,
    parse_budget,
    resources_of,
    unmet,
)
from .spec import NetworkSpec, load_spec, spec_from_dict

if TYPE_CHECKING:
    from .data import Data

CLASSIFIER_FIT_STEPS = 200  # a classifier for another class count, before the search
DEPLOY_SEED = -2  # the "iteration" whose seed every deployed-size phase shares
CLASSIFIER_RESOLUTION = 32  # --resolution's default for a classifier
DEFAULT_SPEC = default_spec()  # shipped (in the wheel, or the checkout's configs/)


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a search's result; saved as the run's config.json."""

    budgets: tuple[str, ...]
    spec: str = str(DEFAULT_SPEC)
    weights: str | None = None
    device: str = "pixel"
    data: str | None = None  # None: the built-in Fashion-MNIST
    criterion: str = "accuracy"
    schedule: str = "constant"
    step: float = 0.06  # fraction of the seed's value removed per iteration
    short_term_steps: int = 20
    long_term_steps: int = 500
    # training at the spec's (deployed) input size after the search ran at --resolution,
    # for the result and every baseline alike; 0: none (then the export may score chance)
    # (README "Input sizes": measured on the 20 ms network of README command (a); at 200
    # steps a smaller LR and a larger batch beat the earlier 0.1 / 8: 0.79 against 0.50)
    deploy_steps: int = 200
    deploy_lr: float = 0.02
    deploy_batch_size: int = 16  # at 224 px a step's cost grows with the batch
    # training of the seed when no weights are given: one epoch of Fashion-MNIST at batch
    # 64 (README: 1 epoch 0.876 test accuracy at 32 px; 500 steps ~0.85)
    seed_steps: int = 900
    # training resolution (latency is always at the spec's size); None: 32 px for a
    # classifier, the deployed input size for segmentation (masks need the pixels)
    resolution: int | None = None
    input_size: int | None = None  # deployed square input size; None: the spec's own
    batch_size: int = 64  # on CPU a step costs about the same at 32 or 64 (op overhead)
    lr: float = 0.02  # fine-tuning (SGD); the seed trains from scratch at 5x this
    # images that score proposals; measured (README): choosing on 2000 instead of 5000
    # costs ~0.05 points a iteration, on 500 ~0.17
    holdout: int = 2000
    seed: int = 0
    torch_device: str = "auto"
    # CPU threads for training. One: at 32 px the ops are too small to split, and two
    # OpenMP threads on a 2-core machine that also runs anything else wait for each
    # other (measured here: 4.3 s/step vs 0.22 s/step with one thread). 0: torch's default.
    threads: int = 1
    compare: bool = False  # also train the baselines (width multiplier, uniform, resolution)

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
        for name in ("resolution", "input_size", "batch_size", "holdout", "deploy_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise NetadaptError(f"--{name.replace('_', '-')}: must be positive")
        if self.weights is None and self.seed_steps == 0:
            raise NetadaptError("no --weights and --seed-steps 0: the seed would be untrained; "
                                "pass --weights W.pt (e.g. torchvision ImageNet weights) or "
                                "--seed-steps N")
        if self.torch_device not in ("auto", "cpu", "cuda") and \
                not self.torch_device.startswith("cuda:"):
            raise NetadaptError(f"--torch-device {self.torch_device!r}: use auto, cpu or cuda")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "budgets": list(self.budgets)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise NetadaptError(f"run config has unknown fields {sorted(unknown)}")
        return cls(**{**data, "budgets": tuple(data["budgets"])})


@dataclass
class SearchResult:
    """What a finished search reports: its seed, final and baseline records."""

    run: Path
    seed: SeedRecord
    final: FinalRecord
    iterations: int
    seconds: float = 0.0
    baselines: list[BaselineRecord] = field(default_factory=list)
    loop_seconds: float = 0.0  # wall time of this session's proposal loop


def _torch_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise NetadaptError("--torch-device cuda: no CUDA GPU is visible; use cpu or auto")
    return name


def _iteration_seed(seed: int, iteration: int) -> int:
    """The training and BN-recalibration seed of every proposal of an iteration: common
    random numbers, so proposals differ by their architecture, not by their batches (and
    the same whether the run was interrupted or not)."""
    return zlib.crc32(f"{seed}/{iteration}".encode())


# during the loop the plot is redrawn at most this often (always at the end of a phase)
PLOT_EVERY_S = 60.0
LONG_TERM_SEED = -1  # the "iteration" whose seed the long-term fine-tunes share


def _deploy_phase(name: str) -> str:
    """The checkpoint name of network ``name``'s training at its deployed input size."""
    return "deploy-" + name.replace("/", "-")


# the records of the phases this module performs itself (checkpointed while they run)
PhaseRecord = SeedRecord | FinalRecord | BaselineRecord


def _phases_of(record: PhaseRecord) -> list[str]:
    """The checkpointed phases whose result ``record`` is."""
    if isinstance(record, SeedRecord):
        return ["seed"]
    if isinstance(record, FinalRecord):
        return ["long_term", _deploy_phase("best")]
    return [f"baseline-{record.name}", _deploy_phase(f"baselines/{record.name}")]


def correct_name(weights: str) -> str:
    """Where the per-holdout-image correctness of a proposal's weights is kept."""
    return weights.removesuffix(".pt") + ".correct.pt"


def load_seed_weights(model: torch.nn.Module, path: str, num_classes: int) -> list[str]:
    """Load a netadapt / torchvision checkpoint strictly, except that output layers made
    for another class count (e.g. ImageNet's 1000) keep their fresh initialisation.
    Returns the names of those re-initialised tensors."""
    state = read_state_dict(path)
    own = model.state_dict()
    reinit = sorted(k for k, t in own.items() if k in state and t.dim() >= 1
                    and t.shape[0] == num_classes and state[k].shape[0] != num_classes
                    and state[k].shape[1:] == t.shape[1:])
    for key in reinit:
        state[key] = own[key]
    check_state_dict(model, state, path)
    model.load_state_dict(state)
    return reinit


def resolve_budgets(texts: Sequence[str], seed: NetworkSpec,
                    predict_ms: Callable[[NetworkSpec], float]) -> list[Budget]:
    """Budgets as given on the command line, percentages taken of ``seed``'s values."""
    seed_resources = resources_of(seed, predict_ms)
    return [parse_budget(text, seed_resources) for text in texts]


class Searcher:
    """Performs one search in one run directory (new or resumed)."""

    def __init__(self, config: SearchConfig, run: RunDir, seed_spec: NetworkSpec,
                 predict_ms: Callable[[NetworkSpec], float] | None = None,
                 progress: bool = True, executor: Executor | None = None) -> None:
        from .latency import load_table
        from .latency.table import at_size

        # wall time by phase from here on (start-up and data loading count as overhead);
        # every journal record carries its lap
        self.clock = PhaseClock()
        self.config, self.run, self.progress = config, run, progress
        self._plotted_at = -math.inf  # monotonic time of the last plot redraw
        # where proposal jobs run; the caller owns (and closes) one it passes in
        self.executor = executor or Executor()
        self.torch_device = _torch_device(config.torch_device)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.table_label = f"{config.device} (injected predictor)"
        self.table_sha256: str | None = None
        if predict_ms is None:
            table = load_table(config.device)
            predict_ms, self.table_label = table.predict_ms, table.label()
            self.table_sha256 = getattr(table, "meta", {}).get("sha256")
        self.predict_ms = predict_ms
        if config.input_size is not None:
            seed_spec = at_size(seed_spec, config.input_size)
        segmentation = seed_spec.task == "segmentation"
        resolution = config.resolution or (seed_spec.input_size[0] if segmentation
                                           else CLASSIFIER_RESOLUTION)
        # what workers load the data from; loaded here too (the same splits, bit for bit)
        self.data_source = DataSource(config.data, resolution, seed_spec.in_channels,
                                      config.holdout, config.seed, segmentation)
        self.data = self.data_source.load()
        self.metric = "mIoU" if segmentation else "top-1"
        self.seed_spec = dataclasses.replace(seed_spec, num_classes=self.data.num_classes)
        self.budgets = resolve_budgets(config.budgets, self.seed_spec, predict_ms)
        check_reachable(self.seed_spec, self.budgets, predict_ms)
        if config.weights and not (run.path / "seed.pt").exists():  # fail before any work
            load_seed_weights(build_model(self.seed_spec), config.weights,
                              self.seed_spec.num_classes)
        if "data" not in run.config:  # resolved once, recorded with the run's config
            run.update_config({"data": self.data.description,
                               "latency_table": self.table_label,
                               # what "accuracy" holds, and what a paired margin is of
                               "metric": self.metric,
                               "margin_of": "per-image pixel accuracy" if segmentation
                               else "per-image correctness"})
        self.schedule = Schedule.named(config.schedule, config.step)
        self._parent_cache: tuple[int, NetworkSpec, dict[str, torch.Tensor]] | None = None
        self._results: dict[tuple[int, str], ProposalResult] = {}  # this session's jobs
        # (iteration, group, weights) of the proposal whose weights were saved last
        self._last_saved: tuple[int, str, dict[str, torch.Tensor]] | None = None
        self.loop_seconds = 0.0

    # ------------------------------------------------------------------ phases

    def run_all(self) -> SearchResult:
        started = time.time()
        records = self.run.records()
        seeds, finals = of_type(records, SeedRecord), of_type(records, FinalRecord)
        # checkpoints left by a kill between a record and the clean-up
        done: list[PhaseRecord] = [*seeds, *finals, *of_type(records, BaselineRecord)]
        for record in done:
            for phase in _phases_of(record):
                self._checkpoint(phase).remove()
        seed_record = seeds[0] if seeds else self._prepare_seed()
        start = Start(self.seed_spec, seed_record.accuracy,
                      {"latency_ms": seed_record.latency_ms, "params": seed_record.params,
                       "macs": seed_record.macs})
        final = finals[0] if finals else None
        history = self.run.events(self.seed_spec)
        iterations = [e for e in history if isinstance(e, Iteration)]
        if final is None:
            iterations += self._loop(start, history)
            final = self._long_term(start, iterations)
        baselines = self.run_baselines() if self.config.compare else []
        self.run.write_csv()
        self._plot()
        return SearchResult(self.run.path, seed_record, final, len(iterations),
                            time.time() - started, baselines, self.loop_seconds)

    def _prepare_seed(self) -> SeedRecord:
        from .scoring import score_model
        from .seedcache import cached_seed
        from .train import fit_layers, train_seed

        cfg = self.config
        notes: list[str] = []
        model = build_model(self.seed_spec)
        if cfg.weights:
            fresh = load_seed_weights(model, cfg.weights, self.seed_spec.num_classes)
            if fresh:  # fit the new classifier first, so that dAcc means what it says
                with self.clock.phase("train"):
                    fit_layers(model, self.data, fresh, CLASSIFIER_FIT_STEPS, lr=cfg.lr * 5,
                               batch_size=cfg.batch_size, seed=cfg.seed,
                               device=self.torch_device, progress=self._bar(
                                   "fit the new classifier", CLASSIFIER_FIT_STEPS))
                notes.append(f"re-initialised {', '.join(fresh)} (the checkpoint has another "
                             f"class count) and fitted them {CLASSIFIER_FIT_STEPS} steps, the "
                             f"rest frozen")
        else:  # from scratch a larger LR than fine-tuning's pays off
            def train() -> dict[str, torch.Tensor]:
                with self.clock.phase("train"):
                    trained = train_seed(self.seed_spec, self.data, steps=cfg.seed_steps,
                                         lr=cfg.lr * 5, batch_size=cfg.batch_size,
                                         seed=cfg.seed, device=self.torch_device,
                                         progress=self._bar("train seed", cfg.seed_steps),
                                         checkpoint=self._checkpoint("seed"))
                return {k: v.cpu() for k, v in trained.state_dict().items()}

            state, path, hit = cached_seed(self._seed_recipe(), train)
            model.load_state_dict(state)
            notes.append(f"{'reused the cached seed' if hit else 'trained the seed; cached'} "
                         f"{path}")
        self.run.write_spec("seed.yaml", self.seed_spec)
        self.run.save_state("seed.pt", model.state_dict())
        # Scored as its children will be (BN re-estimated on a copy), so that dAcc
        # compares weights, not protocols.
        with self.clock.phase("evaluate"):
            accuracy, _, extra = score_model(
                recalibrated(copy.deepcopy(model), self.data, cfg.batch_size,
                             _iteration_seed(cfg.seed, 0), self.torch_device),
                self.data.holdout, self.data.num_classes, batch_size=256,
                device=self.torch_device)
        record = SeedRecord(accuracy=accuracy,
                            trained_steps=0 if cfg.weights else cfg.seed_steps, notes=notes,
                            accuracy_protocol="BN re-estimated", metric=self.metric,
                            pixel_accuracy=extra.get("pixel_accuracy"),
                            holdout_px=self.data.resolution,
                            **resources_of(self.seed_spec, self.predict_ms))
        self._record(record)
        return record

    def _seed_recipe(self) -> dict[str, Any]:
        """Everything that decides a seed trained from scratch: its cache key."""
        cfg, data = self.config, self.data.description
        return {"spec": self.seed_spec.to_dict(),
                "data": {k: data[k] for k in ("source", "format", "resolution", "in_channels",
                                              "classes", "seed", "sizes", "split_sha256")},
                "steps": cfg.seed_steps, "lr": cfg.lr * 5, "batch_size": cfg.batch_size,
                "seed": cfg.seed, "schedule": "cosine, warm-up min(100, steps // 20)",
                "torch_device": torch.device(self.torch_device).type}

    def _parent(self, iteration: int) -> tuple[NetworkSpec, dict[str, torch.Tensor]]:
        """Spec and weights of the network iteration ``iteration`` starts from: the seed,
        or the network the previous iteration promoted (read back from the run only when
        a resumed run starts mid-search)."""
        if self._parent_cache is None or self._parent_cache[0] != iteration:
            if iteration == 1:
                spec, name = self.seed_spec, "seed.pt"
            else:
                spec = self.run.read_spec(f"{iteration_name(iteration - 1)}.yaml")
                name = f"{iteration_name(iteration - 1)}.pt"
            self._parent_cache = (iteration, spec, read_state_dict(self.run.path / name))
        return self._parent_cache[1], self._parent_cache[2]

    def _evaluate_many(self, iteration: int, children: Sequence[tuple[NetworkSpec, str]]
                       ) -> Iterator[tuple[str, float]]:
        """Hand the iteration's proposals to the executor as jobs and report each one's
        accuracy as it arrives (``_loop`` saves and journals it). Every proposal of an
        iteration sees the same training and BN batches."""
        cfg = self.config
        parent, parent_state = self._parent(iteration)
        training = Training(cfg.short_term_steps, cfg.lr, cfg.batch_size, self.torch_device,
                            cfg.threads)
        seed = _iteration_seed(cfg.seed, iteration)
        jobs = [ProposalJob(iteration, group, parent, child, seed, training, self.data_source)
                for child, group in children]
        try:
            for result in self.executor.run(jobs, parent_state):
                # the job's training and scoring, its share of the wall time (N at once)
                self.clock.credit("train", result.train_seconds / self.executor.slots)
                self.clock.credit("evaluate", result.eval_seconds / self.executor.slots)
                self._results[(iteration, result.group)] = result
                yield result.group, result.accuracy
        except WorkerError as exc:
            log = self.run.write_text(
                f"errors/{Path(proposal_name(iteration, exc.job.group)).stem}-iter_"
                f"{iteration:03d}.log", f"{exc}\n{exc.details}")
            raise NetadaptError(f"{exc}; tracebacks: {log}; fix the cause and run `netadapt "
                                f"search --resume {self.run.path}`") from None

    def _loop(self, start: Start, history: list) -> list[Iteration]:
        chosen: list[Iteration] = []
        # Overall progress: how much of the first budget's gap has been closed (with ETA).
        budget = self.budgets[0]
        now = dict(start.resources)
        for event in history:
            if isinstance(event, Iteration):
                now = dict(event.chosen.resources)
        gap = max(start.resources[budget.resource] - budget.limit, 1e-9)
        unit = "ms" if budget.resource == "latency_ms" else budget.resource  # params, macs
        overall = tqdm(total=round(gap, 3), desc=f"{unit} to budget", unit=unit,
                       disable=not self.progress, position=0,
                       initial=round(min(gap, start.resources[budget.resource]
                                         - now[budget.resource]), 3),
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} "
                                  "{unit} [{elapsed}<{remaining}]")
        bar = tqdm(desc="proposals", unit="proposal", disable=not self.progress, leave=False,
                   position=1)
        # the best holdout accuracy saved so far in each iteration (see _save_proposal)
        best_saved: dict[int, float] = {}
        for event in history:
            if isinstance(event, Proposal):
                best_saved[event.iteration] = max(event.accuracy,
                                                  best_saved.get(event.iteration, -math.inf))
        loop_started = time.perf_counter()
        # the plot's first redraw a minute into the loop (each costs ~0.5 s: overhead)
        self._plotted_at = time.monotonic()
        for event in netadapt(start, self.budgets, self.predict_ms, self._evaluate_many,
                              self.schedule, self.config.criterion, history):
            if isinstance(event, Proposal):
                job = self._results.pop((event.iteration, event.group))
                self._save_proposal(event, job, best_saved)
                self._journal(ProposalRecord.of(
                    event, holdout_px=self.data.resolution, seconds=round(job.seconds, 3),
                    worker=job.worker, attempts=job.attempts))
                bar.update()
                bar.set_postfix_str(f"iter {event.iteration} {event.group} "
                                    f"acc {event.accuracy:.3f}")
            else:
                self._promote(event)
                chosen.append(event)
                done = start.resources[budget.resource] - event.chosen.resources[budget.resource]
                overall.update(round(min(gap, done), 3) - overall.n)
                if self.progress:
                    c = event.chosen
                    latency = format_resource("latency_ms", c.resources["latency_ms"])
                    tqdm.write(f"iteration {event.iteration}: {c.group} {c.width_from}->"
                               f"{c.width_to}, {latency}, holdout {c.accuracy:.4f}")
        self.loop_seconds = time.perf_counter() - loop_started
        bar.close()
        overall.close()
        return chosen

    def _save_proposal(self, event: Proposal, job: ProposalResult,
                       best_saved: dict[int, float]) -> None:
        """Save a finished proposal before it is journaled: its per-image correctness
        always (the winner's margin over the runner-up, selection-noise studies), its
        weights only if it can still win. Under the accuracy criterion that is a
        proposal at least as accurate as every earlier one of its iteration (ties
        included: the ranking breaks them); the slope criterion weighs resources too, so
        there every proposal is kept. Each save is an fsynced file of the whole network
        (17 MB for Large): loop overhead, and most proposals never win."""
        name = proposal_name(event.iteration, event.group)
        self.run.save_state(correct_name(name), {"correct": job.correct})
        best = best_saved.get(event.iteration, -math.inf)
        if self.config.criterion != "accuracy" or event.accuracy >= best:
            self.run.save_state(name, job.state)
            best_saved[event.iteration] = max(best, event.accuracy)
            self._last_saved = (event.iteration, event.group, job.state)  # see _promote

    def _promote(self, event: Iteration) -> None:
        """Make the chosen proposal the iteration's network, then record it with its
        holdout margin over the runner-up (paired on the same images) and that margin's
        standard error: a margin inside ~2 SE means the choice was a coin toss."""
        from .train import paired_margin

        p = event.chosen
        margin = margin_se = None
        if event.runner_up is not None:
            chosen, second = (read_state_dict(self.run.path / correct_name(
                proposal_name(p.iteration, g)))["correct"] for g in (p.group, event.runner_up))
            margin, margin_se = paired_margin(chosen, second)
        self.run.write_spec(f"{iteration_name(p.iteration)}.yaml", p.spec)
        chosen_weights = proposal_name(p.iteration, p.group)
        # the next iteration's parent, handed over here rather than found on disk later;
        # usually still in memory (the last proposal saved), else read back (a resumed
        # run, a tie, the slope criterion)
        last, self._last_saved = self._last_saved, None
        state = last[2] if last is not None and last[:2] == (p.iteration, p.group) \
            else read_state_dict(self.run.path / chosen_weights)
        self._parent_cache = (p.iteration + 1, p.spec, state)
        self.run.copy(chosen_weights, f"{iteration_name(p.iteration)}.pt")
        self._journal(IterationRecord.of(event, holdout_px=self.data.resolution,
                                         margin=margin, margin_se=margin_se))
        # The proposals' weights go; their per-image correctness stays (a few KB each),
        # so selection noise can be studied afterwards (scripts/measure_defaults.py).
        folder = self.run.path / Path(proposal_name(p.iteration, p.group)).parent
        for weights in folder.glob("*.pt"):
            if not weights.name.endswith(".correct.pt"):
                weights.unlink(missing_ok=True)
        self.run.write_csv()
        self._plot(at_most_every_s=PLOT_EVERY_S)

    def _long_term(self, start: Start, iterations: list[Iteration]) -> FinalRecord:
        from .scoring import score_model
        from .train import finetune

        cfg = self.config
        if iterations:
            spec = iterations[-1].chosen.spec
            state = read_state_dict(self.run.path / f"{iteration_name(len(iterations))}.pt")
        else:
            spec, state = self.seed_spec, read_state_dict(self.run.path / "seed.pt")
        model = build_model(spec)
        model.load_state_dict(state)
        with self.clock.phase("train"):
            finetune(model, self.data, steps=cfg.long_term_steps, lr=cfg.lr,
                     batch_size=cfg.batch_size, seed=_iteration_seed(cfg.seed, LONG_TERM_SEED),
                     device=self.torch_device,
                     progress=self._bar("long-term fine-tune", cfg.long_term_steps),
                     checkpoint=self._checkpoint("long_term"))
        seed_model = build_model(self.seed_spec)
        seed_model.load_state_dict(read_state_dict(self.run.path / "seed.pt"))
        resources = resources_of(spec, self.predict_ms)
        finished = self._finish(model, spec, "best", self.data)
        with self.clock.phase("evaluate"):
            seed_test = score_model(seed_model, self.data.test, self.data.num_classes, 256,
                                    self.torch_device)[0]
        record = FinalRecord(
            iteration=len(iterations), latency_ms=resources["latency_ms"],
            params=resources["params"], macs=resources["macs"],
            # the training this network got from the seed: what every baseline gets too
            steps=len(iterations) * cfg.short_term_steps + cfg.long_term_steps,
            **finished,
            seed_test_accuracy=seed_test,
            seed_test_px=self.data.resolution,
            budgets_met=not unmet(resources, self.budgets),
        )
        self._record(record)
        return record

    def deploy_steps(self, spec: NetworkSpec, data: Data) -> int:
        """Steps at the deployed input size: none when the search already ran at it."""
        same = tuple(spec.input_size) == (data.resolution, data.resolution)
        return 0 if same else self.config.deploy_steps

    def _finish(self, model: torch.nn.Module, spec: NetworkSpec, name: str, data: Data
                ) -> dict[str, Any]:
        """The last steps every compared network takes alike: holdout accuracy at the
        search's size; when the search ran at a smaller proxy size, ``deploy_steps`` of
        training at the deployed input size (a network trained at 32 px alone scores
        chance at 224 px); export to ONNX; and the test accuracy of that file, run by
        onnxruntime at its input size: the accuracy of what is shipped."""
        from .export import export_onnx
        from .scoring import score_model, score_onnx
        from .train import finetune

        cfg = self.config
        with self.clock.phase("evaluate"):
            holdout = score_model(model, data.holdout, data.num_classes, 256,
                                  self.torch_device)[0]
        steps = self.deploy_steps(spec, data)
        deployed = data.at(spec.input_size)
        # At the deployed size the ops are large enough to split across cores (unlike at
        # the 32 px proxy, where --threads 1 is fastest) and nothing else of the search runs
        # now: use every core this process may run on (README command (a)).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        threads = max(cfg.threads, cores) if cfg.threads > 0 else 0
        previous = torch.get_num_threads()
        if steps:
            if threads:
                torch.set_num_threads(threads)
            try:
                with self.clock.phase("train"):
                    finetune(model, deployed, steps, lr=cfg.deploy_lr,
                             batch_size=cfg.deploy_batch_size,
                             seed=_iteration_seed(cfg.seed, DEPLOY_SEED),
                             device=self.torch_device,
                             progress=self._bar(f"{name} at {spec.input_size[0]} px", steps),
                             checkpoint=self._checkpoint(_deploy_phase(name)))
            finally:
                torch.set_num_threads(previous)
        self.run.write_spec(f"{name}.yaml", spec)
        self.run.save_state(f"{name}.pt", model.state_dict())
        onnx_path = self.run.path / f"{name}.onnx"
        export_onnx(model, spec, onnx_path, metadata=self.metadata(spec))
        with self.clock.phase("evaluate"):
            test, correct, extra = score_onnx(onnx_path, deployed.test, data.num_classes,
                                              threads=threads)
        self.run.save_state(f"{name}.test_correct.pt", {"correct": correct})
        # the fields the final and baseline records share
        return {"accuracy": holdout, "holdout_px": data.resolution, "deploy_steps": steps,
                "test_accuracy": test, "test_pixel_accuracy": extra.get("pixel_accuracy"),
                "test_px": "x".join(str(v) for v in spec.input_size)}

    def metadata(self, spec: NetworkSpec) -> dict[str, str]:
        """ONNX metadata_props of an exported network of this run."""
        from .export import deployment_metadata

        d = self.data.description
        return deployment_metadata(spec, d["mean"], d["std"], d["classes"],
                                   self.predict_ms(spec), self.config.device, self.table_sha256)

    def run_baselines(self) -> list[BaselineRecord]:
        """Width multiplier, uniform pruning and input resolution at the same budgets,
        from the same seed weights, each trained exactly as many steps as the search's
        winner got from the seed (its iterations' short-term steps + the long-term
        steps), on the same data, evaluated the same way. Finished baselines (journal
        records) are not trained again."""
        from .baseline import BASELINES, BaselineUnavailable
        from .train import finetune

        cfg = self.config
        steps = _final_of(self.run).steps
        done = {r.name for r in self.run.baseline_records()}
        seed_state = read_state_dict(self.run.path / "seed.pt")
        for name, make in BASELINES.items():
            if name in done:
                continue
            try:
                found = make(self.seed_spec, self.budgets, self.predict_ms, seed_state)
            except BaselineUnavailable as exc:
                self._record(BaselineRecord(name=name, note=str(exc)))
                continue
            if found is None:
                record = BaselineRecord(
                    name=name,
                    note="no setting meets the budgets (or the latency table lacks it)")
            else:
                model = build_model(found.spec)
                if found.state is not None:  # the method's own weights (Torch-Pruning)
                    model.load_state_dict(found.state)
                else:
                    model.load_state_dict(
                        inherit_weights(self.seed_spec, seed_state, found.spec)
                        if found.spec.input_size == self.seed_spec.input_size
                        else seed_state)
                data = self.data
                if found.spec.input_size != self.seed_spec.input_size:
                    # Train at the same fraction of the seed's resolution as the latency.
                    res = max(8, round(self.data.resolution * found.spec.input_size[0]
                                       / self.seed_spec.input_size[0]))
                    data = self.data.at(res)
                with self.clock.phase("train"):
                    finetune(model, data, steps=steps, lr=cfg.lr, batch_size=cfg.batch_size,
                             seed=_iteration_seed(cfg.seed, LONG_TERM_SEED),
                             device=self.torch_device,
                             progress=self._bar(f"baseline {name}", steps),
                             checkpoint=self._checkpoint(f"baseline-{name}"))
                r = found.resources
                record = BaselineRecord(
                    name=name, knob=found.knob, latency_ms=r["latency_ms"],
                    params=r["params"], macs=r["macs"], steps=steps,
                    **self._finish(model, found.spec, f"baselines/{name}", data))
            self._record(record)
        self.run.write_csv()
        self._plot()
        return self.run.baseline_records()

    def _record(self, record: PhaseRecord) -> None:
        """Journal the result of a phase, then drop the phase's checkpoints."""
        self._journal(record)
        for phase in _phases_of(record):
            self._checkpoint(phase).remove()

    def _journal(self, record: Record) -> None:
        """Append a record with the wall time since the previous one, by phase."""
        self.run.append(timed(record.to_dict(), self.clock.lap()))

    def _checkpoint(self, phase: str) -> Checkpoint:
        """The progress file of a long training phase (removed once its record is in the
        journal; until then a resumed run continues the phase from it)."""
        return Checkpoint(self.run.path / "checkpoints" / f"{phase}.pt", clock=self.clock)

    # ------------------------------------------------------------------ output

    def _bar(self, desc: str, total: int) -> Callable[[int, float], None] | None:
        """A tqdm bar fed by the trainer's (step, loss) callback; None when quiet."""
        if not self.progress or total <= 0:
            return None
        bar = tqdm(total=total, desc=desc, unit="step", leave=False)

        def update(step: int, loss: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
            if step >= total:
                bar.close()
        return update

    def _plot(self, at_most_every_s: float = 0.0) -> None:
        """Redraw the run's accuracy-vs-latency plot (skipped when the last one is more
        recent than ``at_most_every_s``: a redraw costs ~0.5 s, loop overhead)."""
        from .report import plot_history

        now = time.monotonic()
        if now - self._plotted_at < at_most_every_s:
            return
        self._plotted_at = now
        plot_history(self.run.history_table(), self.run.path / "accuracy_vs_latency.png",
                     self.budgets)


def _final_of(run: RunDir) -> FinalRecord:
    """A finished run's result record; refuses a run whose search has not finished."""
    final = run.final_record()
    if final is None:
        raise NetadaptError(f"{run.path}: the search has not finished; run "
                            f"`netadapt search --resume {run.path}` first")
    return final


def baselines_for_run(path: Path, **kwargs: Any) -> list[BaselineRecord]:
    """Train the baselines of a finished search run (its seed, data, budgets, steps)."""
    run = RunDir.open(path)
    _final_of(run)
    config = SearchConfig.from_json(run.config["search"])
    seed_spec = spec_from_dict(run.config["seed_spec"])
    return Searcher(config, run, seed_spec, **kwargs).run_baselines()


def comparison(path: Path) -> pd.DataFrame:
    """Seed, the search's result and every baseline of a run, side by side; for each
    baseline, netadapt's test-accuracy margin over it, paired on the same test images,
    and that margin's standard error (``margin``, ``margin_se``)."""
    from .train import paired_margin

    run = RunDir.open(path)
    final, records = _final_of(run), run.records()
    seed = of_type(records, SeedRecord)[0]
    rows = [{"network": "seed", "setting": "", "spec": "seed.yaml", **seed.to_dict(),
             "steps": 0, "holdout_px": final.holdout_px,
             "test_accuracy": final.seed_test_accuracy, "test_px": final.seed_test_px},
            {"network": "netadapt", "setting": f"{final.iteration} iterations",
             "spec": "best.yaml", **final.to_dict()}]
    ours = _test_correct(path / "best.test_correct.pt")
    for r in of_type(records, BaselineRecord):
        row = {"network": r.name, "setting": r.knob or r.note or "",
               "spec": f"baselines/{r.name}.yaml" if r.trained else "", **r.to_dict()}
        theirs = _test_correct(path / f"baselines/{r.name}.test_correct.pt")
        if ours is not None and theirs is not None and ours.shape == theirs.shape:
            row["margin"], row["margin_se"] = paired_margin(ours, theirs)
        rows.append(row)
    columns = ["network", "setting", "latency_ms", "params", "macs", "steps", "deploy_steps",
               "accuracy", "holdout_px", "test_accuracy", "test_px", "margin", "margin_se",
               "spec"]
    return pd.DataFrame(rows).reindex(columns=columns)


def _test_correct(path: Path) -> torch.Tensor | None:
    return read_state_dict(path)["correct"] if path.is_file() else None


def training_note(path: Path) -> str:
    """How many training steps from the seed the comparison's networks got, in words."""
    run = RunDir.open(path)
    config = SearchConfig.from_json(run.config["search"])
    final = _final_of(run)
    return (f"netadapt: {final.iteration} iterations x {config.short_term_steps} + "
            f"{config.long_term_steps} long-term = {final.steps} steps from the seed; "
            f"every baseline: {final.steps} steps from the seed"
            + (f"; then each {final.deploy_steps} steps at its input size"
               if final.deploy_steps else ""))


def _run_of(spec_path: Path) -> Path | None:
    """The run directory a spec belongs to (``RUN/best.yaml``, ``RUN/iterations/..``)."""
    return next((p for p in (spec_path.parent, spec_path.parent.parent)
                 if (p / "config.json").is_file()), None)


def export_metadata(spec_path: Path, spec: NetworkSpec, device: str = "pixel"
                    ) -> dict[str, str]:
    """ONNX metadata_props for exporting ``spec``: for a spec of a search run, the run's
    normalisation, class labels and latency table; otherwise netadapt's normalisation,
    class indices, and ``device``'s predicted latency when its table covers the spec."""
    from .data import channel_stats
    from .export import deployment_metadata
    from .latency import load_table

    run_path = _run_of(spec_path)
    mean, std = channel_stats(spec.in_channels)
    labels = [str(i) for i in range(spec.num_classes)]
    if run_path is not None:
        run = RunDir.open(run_path)
        data = run.config.get("data", {})
        mean, std = data.get("mean", mean), data.get("std", std)
        labels = data.get("classes", labels)
        device = SearchConfig.from_json(run.config["search"]).device
    try:
        table = load_table(device)
        latency: float | None = table.predict_ms(spec) if table.covers(spec) else None
        sha = getattr(table, "meta", {}).get("sha256")
    except NetadaptError:
        latency, sha = None, None
    return deployment_metadata(spec, mean, std, labels, latency, device, sha)


def run_budget_report(spec_path: Path, spec: NetworkSpec) -> list[str]:
    """For a spec inside a search run directory (``RUN/best.yaml``, ``RUN/iterations/..``):
    its predicted latency on the run's device against the run's budgets, and for a
    device that runs here (``local`` runner) the latency measured end to end now.
    Empty when the spec is not part of a run."""
    from .latency import load_device, load_table
    from .latency.profile import measure_e2e

    run_path = _run_of(spec_path)
    if run_path is None:
        return []
    run = RunDir.open(run_path)
    config = SearchConfig.from_json(run.config["search"])
    seed_spec = spec_from_dict(run.config["seed_spec"])
    if config.input_size is not None:  # the run's deployed size, as the search used it
        from .latency.table import at_size

        seed_spec = at_size(seed_spec, config.input_size)
    table = load_table(config.device)
    budgets = resolve_budgets(config.budgets, dataclasses.replace(
        seed_spec, num_classes=spec.num_classes), table.predict_ms)
    resources = resources_of(spec, table.predict_ms)
    where = f"{table.device}{' (ESTIMATE)' if table.is_estimate else ''}"
    lines = []
    for budget in budgets:
        value = resources[budget.resource]
        verdict = "within" if value <= budget.limit else "OVER"
        lines.append(f"{budget.resource} on {where}: "
                     f"{format_resource(budget.resource, value)} predicted, {verdict} the "
                     f"budget {format_resource(budget.resource, budget.limit)}")
    device = load_device(config.device)
    if device.runner == "local":
        measured = measure_e2e(spec, device, table)
        ms = measured.get("vs_seed_ms", measured["raw_ms"])
        lines.append(f"measured here end to end: {ms:.2f} ms (raw median "
                     f"{measured['raw_ms']:.2f} ms)")
    return lines


def start_search(config: SearchConfig, out: Path, **kwargs: Any) -> SearchResult:
    """A new search in a new run directory (the seed spec is copied into it)."""
    seed_spec = load_spec(config.spec)
    run = RunDir.create(out, {"search": config.to_json(), "seed_spec": seed_spec.to_dict()})
    try:
        searcher = Searcher(config, run, seed_spec, **kwargs)
    except NetadaptError:
        shutil.rmtree(out, ignore_errors=True)  # nothing happened: leave no half-made run
        raise
    return searcher.run_all()


def resume_search(path: Path, **kwargs: Any) -> SearchResult:
    """Continue an interrupted search from its last finished proposal, with the run's
    own config and seed spec (later edits to the spec file do not leak in)."""
    run = RunDir.open(path)
    config = SearchConfig.from_json(run.config.get("search", {}))
    seed_spec = spec_from_dict(run.config["seed_spec"])
    return Searcher(config, run, seed_spec, **kwargs).run_all()
