"""Where proposal jobs run: in this process, on N local worker processes, or as Ray tasks.

Every executor takes one iteration's jobs at once and yields each result as it finishes,
so the driver journals it at once (a kill loses only unfinished proposals). A job that
raises, or whose worker dies (os._exit, kill -9, out of memory), is run again up to
``retries`` more times; then the search stops with a WorkerError carrying the
tracebacks. Nothing hangs: a dead worker is replaced, never waited for.

The executor changes where a job runs, never what it computes: on CPU with the same
threads per job the results are bit-identical (tests/test_executors.py).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import Any

import torch

from .errors import NetadaptError
from .jobs import ProposalJob, ProposalResult, run_proposal, set_worker_device

RETRIES = 2  # extra attempts per job before the search stops
RAY_HINT = "pip install 'netadapt[ray]'"

JobFunction = Callable[[ProposalJob, Any], ProposalResult]


class WorkerError(NetadaptError):
    """A job failed on every attempt; ``details`` holds each attempt's traceback."""

    def __init__(self, job: ProposalJob, attempts: int, failures: list[str]) -> None:
        last = failures[-1].strip().splitlines()[-1] if failures else "?"
        super().__init__(f"proposal {job.group} of iteration {job.iteration} failed "
                         f"{attempts} times (last: {last})")
        self.job, self.attempts, self.failures = job, attempts, failures

    @property
    def details(self) -> str:
        return "\n".join(f"--- attempt {i + 1} ---\n{text}"
                         for i, text in enumerate(self.failures))


class Executor:
    """Runs jobs one at a time in this process; the base of the parallel executors, which
    override the four hooks (_share, _has_room, _submit, _finished) and _abandon."""

    name = "serial"
    slots = 1  # jobs running at once

    def __init__(self, function: JobFunction = run_proposal, retries: int = RETRIES) -> None:
        if retries < 0:
            raise NetadaptError(f"retries must be >= 0, got {retries}")
        self.function, self.retries = function, retries
        self._queued: list[tuple[int, ProposalJob, Any]] = []

    def run(self, jobs: Sequence[ProposalJob], parent_state: dict[str, torch.Tensor]
            ) -> Iterator[ProposalResult]:
        """Run ``jobs`` (one iteration's, sharing ``parent_state``); yield each result as
        it finishes, in no particular order."""
        pending = deque(range(len(jobs)))
        attempts = [0] * len(jobs)
        failures: list[list[str]] = [[] for _ in jobs]
        shared = self._share(parent_state)
        finished = 0
        try:
            while finished < len(jobs):
                while pending and self._has_room():
                    i = pending.popleft()
                    attempts[i] += 1
                    self._submit(i, jobs[i], shared)
                for i, outcome in self._finished():
                    if isinstance(outcome, ProposalResult):
                        finished += 1
                        yield replace(outcome, attempts=attempts[i])
                        continue
                    failures[i].append(outcome)
                    if attempts[i] > self.retries:
                        raise WorkerError(jobs[i], attempts[i], failures[i])
                    pending.appendleft(i)  # again, first in line
        finally:
            self._abandon()

    def close(self) -> None:
        """Release workers (a no-op here)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # hooks -----------------------------------------------------------------

    def _share(self, parent_state: dict[str, torch.Tensor]) -> Any:
        """What the jobs receive as the parent's weights (Ray: one object-store ref)."""
        return parent_state

    def _has_room(self) -> bool:
        return not self._queued

    def _submit(self, index: int, job: ProposalJob, shared: Any) -> None:
        self._queued.append((index, job, shared))

    def _finished(self) -> list[tuple[int, ProposalResult | str]]:
        """Wait for at least one submitted job; its result, or the failure's text."""
        index, job, shared = self._queued.pop()
        try:
            return [(index, self.function(job, shared))]
        except Exception:
            return [(index, traceback.format_exc())]

    def _abandon(self) -> None:
        """Stop whatever still runs (the caller stopped early or a job failed for good)."""
        self._queued.clear()


def _start_worker(threads: int, device: str | None, parent: int | None = None) -> None:
    """Initialise a worker process: its torch threads (a job's own setting, when it has
    one, wins), its GPU, and a watch on ``parent`` (the driver)."""
    if threads > 0:
        torch.set_num_threads(threads)
    set_worker_device(device)
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _warm_up() -> None:
    """Sent to a new worker before any job: unpickling it imports this module, and with
    it torch and the job code, which is the slow part of a worker's start."""


def _exit_with(parent: int) -> None:
    """End this worker when the driver is gone (kill -9 gives it no chance to say so;
    an orphan would keep its memory, and its job's CPU, forever)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


class ProcessExecutor(Executor):
    """N local worker processes (spawned: safe with torch and CUDA), ``threads`` torch
    threads each (0: the cores shared out). Each worker is a
    one-process pool of its own, so a death is charged to the job that caused it, and
    a worker keeps its loaded data between jobs and iterations."""

    def __init__(self, workers: int, threads: int = 1, function: JobFunction = run_proposal,
                 retries: int = RETRIES, devices: Sequence[str | None] = (None,)) -> None:
        super().__init__(function, retries)
        if workers < 1:
            raise NetadaptError(f"--workers {workers}: must be >= 1")
        self.workers, self.threads = workers, threads or default_threads(workers)
        self.slots = workers
        self.name = f"{workers} local worker process{'es' if workers > 1 else ''}"
        self._devices = [devices[i % len(devices)] for i in range(workers)]
        self._pools: list[ProcessPoolExecutor | None] = [None] * workers
        self._running: dict[Future[ProposalResult], tuple[int, int]] = {}  # -> slot, job
        # The parent's weights (22 MB for Large) go to each worker once per iteration,
        # not with every job: which iteration's each slot's worker holds.
        self._holds: list[int | None] = [None] * workers
        self._parent: dict[str, torch.Tensor] | None = None  # the current iteration's
        self._key = -1  # ... and its key

    def __enter__(self) -> ProcessExecutor:
        """Start the workers now: each spawns and imports torch (seconds) while the driver
        prepares the seed, instead of when the first iteration's jobs wait for it."""
        for slot in range(self.workers):
            self._pool(slot).submit(_warm_up)
        return self

    def _pool(self, slot: int) -> ProcessPoolExecutor:
        pool = self._pools[slot]
        if pool is None:
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_start_worker,
                                       initargs=(self.threads, self._devices[slot],
                                                 os.getpid()))
            self._pools[slot] = pool
        return pool

    def _free_slot(self) -> int | None:
        busy = {slot for slot, _ in self._running.values()}
        return next((s for s in range(self.workers) if s not in busy), None)

    def _has_room(self) -> bool:
        return self._free_slot() is not None

    def _share(self, parent_state: dict[str, torch.Tensor]) -> Any:
        if parent_state is not self._parent:  # a new iteration; its rungs share one parent
            self._parent, self._key = parent_state, self._key + 1
        return self._key, parent_state

    def _submit(self, index: int, job: ProposalJob, shared: Any) -> None:
        slot = self._free_slot()
        assert slot is not None  # _has_room said so
        key, parent_state = shared
        send = parent_state if self._holds[slot] != key else None
        future = self._pool(slot).submit(_with_parent, self.function, job, key, send)
        self._holds[slot] = key
        self._running[future] = (slot, index)

    def _finished(self) -> list[tuple[int, ProposalResult | str]]:
        done, _ = wait(list(self._running), return_when=FIRST_COMPLETED)
        out: list[tuple[int, ProposalResult | str]] = []
        for future in done:
            slot, index = self._running.pop(future)
            try:
                out.append((index, future.result()))
            except BrokenProcessPool:
                self._discard(slot)  # its process is gone; the next job starts a fresh one
                out.append((index, "worker process died while running the job (killed, "
                                   "os._exit or out of memory)\nBrokenProcessPool"))
            except Exception as exc:  # the worker's traceback is the exception's cause
                out.append((index, "".join(traceback.format_exception(exc))))
        return out

    def _discard(self, slot: int, kill: bool = False) -> None:
        pool, self._pools[slot] = self._pools[slot], None
        self._holds[slot] = None  # a fresh worker holds no parent
        if pool is None:
            return
        if kill:  # a job still runs there: end it rather than wait for it
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
        pool.shutdown(wait=kill, cancel_futures=True)

    def _abandon(self) -> None:
        for slot, _ in list(self._running.values()):
            self._discard(slot, kill=True)
        self._running.clear()

    def close(self) -> None:
        self._abandon()
        for slot in range(self.workers):
            self._discard(slot)


_HELD: tuple[int, Any] | None = None  # in a worker: (key, the parent's weights)


def _with_parent(function: JobFunction, job: ProposalJob, key: int, parent_state: Any
                 ) -> ProposalResult:
    """In a worker: run ``job`` on the parent's weights, sent with the iteration's first
    job to this worker (``parent_state``) and kept for its other jobs (None)."""
    global _HELD
    if parent_state is not None:
        _HELD = (key, parent_state)
    elif _HELD is None or _HELD[0] != key:
        raise RuntimeError(f"worker holds no parent weights for key {key} (a bug)")
    return function(job, _HELD[1])


def import_ray() -> Any:
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise NetadaptError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


class RayExecutor(Executor):
    """Jobs as Ray tasks on a running cluster (``auto``: the one started on this
    machine with `ray start --head`; ``local``: a private one for this process). The
    parent's weights go to the object store once per iteration; each node loads the
    data itself. Retries are counted here (not by Ray) so that every executor reports
    attempts and tracebacks the same way."""

    def __init__(self, address: str, threads: int = 1, workers: int | None = None,
                 gpus_per_job: float = 0.0, function: JobFunction = run_proposal,
                 retries: int = RETRIES, num_cpus: int | None = None) -> None:
        super().__init__(function, retries)
        ray = self.ray = import_ray()
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            try:
                if address == "local":
                    ray.init(num_cpus=num_cpus, include_dashboard=False,
                             log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
                raise NetadaptError(f"--ray {address}: cannot connect to a Ray cluster "
                                    f"({reason}); start one with `ray start --head` or "
                                    f"pass its address") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = workers or max(1, cpus // max(threads, 1))
        self.name = f"Ray ({address}, {self.slots} tasks at a time)"
        self._remote = ray.remote(_ray_job).options(
            num_cpus=max(threads, 1), num_gpus=gpus_per_job, max_retries=0)
        self._threads = max(threads, 1)
        self._running: dict[Any, int] = {}  # object ref -> job index

    def _share(self, parent_state: dict[str, torch.Tensor]) -> Any:
        return self.ray.put(parent_state)

    def _has_room(self) -> bool:
        return len(self._running) < self.slots

    def _submit(self, index: int, job: ProposalJob, shared: Any) -> None:
        self._running[self._remote.remote(self.function, self._threads, job, shared)] = index

    def _finished(self) -> list[tuple[int, ProposalResult | str]]:
        ray = self.ray
        done, _ = ray.wait(list(self._running), num_returns=1)
        out: list[tuple[int, ProposalResult | str]] = []
        for ref in done:
            index = self._running.pop(ref)
            try:
                out.append((index, ray.get(ref)))
            except ray.exceptions.RayError as exc:  # a raise (with its traceback) or a crash
                out.append((index, f"{type(exc).__name__}: {exc}"))
        return out

    def _abandon(self) -> None:
        for ref in self._running:
            self.ray.cancel(ref, force=True)
        self._running.clear()

    def close(self) -> None:
        """Disconnect from the cluster (stopping it if it was ``local``: ours)."""
        if self._owns_connection and self.ray.is_initialized():
            self.ray.shutdown()


def _ray_job(function: JobFunction, threads: int, job: ProposalJob, parent_state: Any
             ) -> ProposalResult:
    """A Ray task: the worker's threads and GPU (Ray sets CUDA_VISIBLE_DEVICES), then
    the job."""
    _start_worker(threads, "cuda:0" if os.environ.get("CUDA_VISIBLE_DEVICES") else None)
    return function(job, parent_state)


def make_executor(workers: int | None, ray_address: str | None, threads: int,
                  torch_device: str) -> Executor:
    """The executor the CLI options ask for: serial (neither), local processes
    (``--workers N``) or Ray (``--ray ADDRESS``, ``--workers`` tasks at a time)."""
    if workers is not None and workers < 1:
        raise NetadaptError(f"--workers {workers}: must be >= 1 (1 = in this process)")
    cuda = torch_device.startswith("cuda") or (torch_device == "auto"
                                               and torch.cuda.is_available())
    if ray_address is not None:
        return RayExecutor(ray_address, threads=threads, workers=workers,
                           gpus_per_job=1.0 if cuda else 0.0)
    if workers is None or workers == 1:
        return Executor()
    gpus = torch.cuda.device_count() if cuda else 0
    devices: list[str | None] = [f"cuda:{i}" for i in range(gpus)] or [None]
    return ProcessExecutor(workers, threads=threads, devices=devices)


def default_threads(workers: int) -> int:
    """Torch threads per worker: the machine's cores shared out."""
    return max(1, (os.cpu_count() or 1) // workers)
