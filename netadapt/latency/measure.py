"""Time ONNX models with onnxruntime, round-robin, in this process.

Standalone on purpose (imports only numpy and onnxruntime): the ssh runner copies this
file to the board and runs it there as a script, so a board measures exactly as this
machine does. Round-robin (one run of each model, then again) puts every model of a
chunk in the same time window, so host drift moves them together and a reference
model in the chunk can cancel it.

Script use: ``python3 measure.py JOB.json`` where the job holds ``settings``,
``rounds``, ``warmup`` and ``models`` (``[{"file": ..., "shape": [...]}]``); prints
``{"ms": [[...per round...] per model], "onnxruntime": version}`` as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import onnxruntime as ort

LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


# ``wall``: elapsed time. ``thread``: CPU time of this thread, which runs the whole
# inference with one intra-op thread: a run pre-empted by other processes is not charged
# for the time it waited (measured on this 2-core VM at load 8: Large end to end, 20
# runs: wall 45-88 ms, thread 12.1-13.1 ms).
# a model to time: its serialized ONNX and its input shape
Model = tuple[bytes, tuple[int, ...]]

CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def session(model: bytes | str, settings: dict[str, Any]) -> ort.InferenceSession:
    """An inference session with the device profile's runtime settings."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(settings.get("threads", 1))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = LEVELS[settings.get("optimization", "all")]
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if settings.get("spinning", True) else "0")
    options.log_severity_level = 3
    providers = settings.get("providers", ["CPUExecutionProvider"])
    return ort.InferenceSession(model, options, providers=providers)


def time_round_robin(models: list[tuple[bytes | str, tuple[int, ...]]],
                     settings: dict[str, Any], rounds: int, warmup: int = 2) -> np.ndarray:
    """Milliseconds, shape (models, rounds): round r runs every model once, in order."""
    runs = []
    rng = np.random.default_rng(0)
    for model, shape in models:
        sess = session(model, settings)
        feed = {sess.get_inputs()[0].name: rng.standard_normal(shape).astype(np.float32)}
        for _ in range(warmup):
            sess.run(None, feed)
        runs.append((sess, feed))
    times = np.empty((len(runs), rounds))
    clock = CLOCKS[settings.get("clock", "wall")]
    for r in range(rounds):
        for i, (sess, feed) in enumerate(runs):
            t0 = clock()
            sess.run(None, feed)
            times[i, r] = clock() - t0
    return times * 1e3


def fast_ms(ms: np.ndarray) -> np.ndarray:
    """Per model (rows of ``ms``): the mean of its fastest 20% of runs.

    Not the median: with other processes on the CPU, a round-robin's runs are
    pre-empted in bursts, and measured here with two busy neighbours the median of the
    same model varied by 24% between sessions while the fastest 20% varied by 1%. A run
    is only ever slowed by interference, so the fast tail is the latency the device
    has when it is not shared (a phone's big core running one model).
    """
    ms = np.atleast_2d(ms)
    k = max(1, ms.shape[1] // 5)
    return np.sort(ms, axis=1)[:, :k].mean(axis=1)


def fast_spread(ms: np.ndarray) -> float:
    """Scatter of one model's fast tail: (30th percentile - fastest) / fastest.
    Interference inflates the slow runs, which fast_ms ignores; a high value here means
    even the fast runs disagree, and a profile times the entry again later."""
    q0, q30 = np.percentile(ms, [0, 30])
    return float((q30 - q0) / q0)


def main(argv: list[str]) -> int:
    with open(argv[1], encoding="utf-8") as f:
        job = json.load(f)
    models = [(m["file"], tuple(m["shape"])) for m in job["models"]]
    ms = time_round_robin(models, job["settings"], int(job["rounds"]), int(job["warmup"]))
    json.dump({"ms": ms.tolist(), "onnxruntime": ort.__version__}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
