"""ONNX parity of a segmentation run's networks, and how large their logits are.

    python benchmarks/seg_parity.py RUN [RUN ...]

For the seed, the result and every trained baseline of each run, prints what `netadapt
export` checks (README "Segmentation", Export) and the same on the run's own test images:

- random input (the export's probe, at the spec's size): max |logit|, onnxruntime vs
  PyTorch float32 (bounded by 1e-4 x max |logit|), the same at 32 px more, and the graph
  run in float64 by onnx's reference evaluator vs PyTorch float64 (bounded by 1e-4);
- the run's test images (at the spec's size, as the run scored them): max |logit|, its
  99th percentile, PyTorch float32 vs float64 (float32 rounding alone) and onnxruntime
  vs PyTorch float32.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from netadapt.export import export_onnx
from netadapt.model import build_model
from netadapt.segdata import load_segmentation
from netadapt.spec import load_spec


def networks(run: Path) -> list[str]:
    names = ["seed", "best"]
    names += [f"baselines/{p.stem}" for p in sorted((run / "baselines").glob("*.pt"))
              if not p.name.endswith(".test_correct.pt")]
    return [n for n in names if (run / f"{n}.yaml").is_file() and (run / f"{n}.pt").is_file()]


def main(runs: list[str]) -> None:
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp()) / "net.onnx"
    print("network | random: max|logit|, ort-torch32, at +32 px, float64 graph-torch64 | "
          "test images: max|logit|, p99, torch32-torch64, ort-torch32")
    for run in map(Path, runs):
        config = json.loads((run / "config.json").read_text())
        source = config["data"]["source"]
        data = load_segmentation(None if config["data"]["format"] == "synthetic" else Path(source),
                                 config["data"]["resolution"], config["data"]["in_channels"],
                                 config["search"]["holdout"], config["search"]["seed"])
        for name in networks(run):
            spec = load_spec(run / f"{name}.yaml")
            model = build_model(spec)
            model.load_state_dict(torch.load(run / f"{name}.pt"))
            report = export_onnx(model, spec, out)
            double = build_model(spec).double()
            double.load_state_dict(model.state_dict())
            double.eval()
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            scale = t32 = o32 = 0.0
            p99 = []
            with torch.no_grad():
                for x, _ in data.test.at(spec.input_size).batches(100):
                    y32 = model(x).numpy()
                    y64 = double(x.double()).numpy()
                    (yo,) = session.run(None, {"input": x.numpy()})
                    scale = max(scale, float(np.abs(y64).max()))
                    t32 = max(t32, float(np.abs(y32 - y64).max()))
                    o32 = max(o32, float(np.abs(yo - y32).max()))
                    p99.append(float(np.percentile(np.abs(y64), 99)))
            print(f"{run.name}/{name} | {report.output_scale:.1f}, {report.max_abs_diff:.1e}, "
                  f"{report.other_size_diff:.1e}, {report.double_diff:.1e} | {scale:.1f}, "
                  f"{np.median(p99):.1f}, {t32:.1e}, {o32:.1e}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
