"""Run on an ssh board by the ssh runner: one process for a whole profiling run, timing
chunk after chunk with measure.py (copied beside it), so a chunk costs no ssh login, no
python start-up and no onnxruntime import.

Standalone on purpose (python3, numpy and onnxruntime; nothing of netadapt). Protocol
on stdin / stdout, one job at a time: a JSON line ``{"settings", "rounds", "warmup",
"shapes": [[...]], "sizes": [bytes per model]}`` followed by the models' ONNX bytes back
to back; the answer is one JSON line, ``{"ms": [[...per round...] per model]}`` or
``{"error": "..."}``. End of input ends the process.
"""

from __future__ import annotations

import json
import sys

import measure  # type: ignore[import-not-found]  # beside this file on the board


def serve(stdin, stdout) -> int:  # type: ignore[no-untyped-def]
    while True:
        header = stdin.readline()
        if not header.strip():
            return 0
        job = json.loads(header)
        models = [(stdin.read(size), tuple(shape))
                  for size, shape in zip(job["sizes"], job["shapes"])]
        try:
            ms = measure.time_round_robin(models, job["settings"], int(job["rounds"]),
                                          int(job["warmup"]))
            answer = {"ms": ms.tolist()}
        except Exception as exc:  # a bad model or runtime: say so, keep serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        stdout.write((json.dumps(answer) + "\n").encode())
        stdout.flush()


if __name__ == "__main__":
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
