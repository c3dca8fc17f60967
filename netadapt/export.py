"""Export a network to ONNX and prove onnxruntime computes what PyTorch computes."""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .errors import ExportError
from .spec import NetworkSpec

OPSET = 17  # >= 14 has HardSwish as one op; 17 is widely supported by mobile runtimes
PARITY_TOLERANCE = 1e-4  # max |onnxruntime - torch| on logits


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely onnxruntime matches PyTorch."""

    path: Path
    size_bytes: int
    opset: int
    max_abs_diff: float
    output_scale: float  # max |output|: a diff is only meaningful next to this
    tolerance: float


def export_onnx(model: nn.Module, spec: NetworkSpec, path: str | os.PathLike[str],
                opset: int = OPSET, tolerance: float = PARITY_TOLERANCE) -> ExportReport:
    """Write ``model`` as ONNX (dynamic batch) and check it against PyTorch.

    The file appears at ``path`` only after the parity check passes; a failed export
    leaves any existing file untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"{path}: directory {path.parent} does not exist; create it first")
    model = model.eval()
    shape = (1, spec.in_channels, *spec.input_size)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # The TorchScript exporter on purpose: the dynamo one needs onnxscript and takes
        # ~30x longer per graph; torch 2.13 warns (twice) that the former is deprecated.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (torch.zeros(shape),), str(tmp), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        diff, scale = parity(model, tmp, (2, *shape[1:]))
        if not diff <= tolerance:
            raise ExportError(
                f"{path}: onnxruntime output differs from PyTorch by {diff:.3g} "
                f"(tolerance {tolerance:g}); the ONNX file was not written"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(path, path.stat().st_size, opset, diff, scale, tolerance)


def parity(model: nn.Module, onnx_path: Path, shape: tuple[int, ...],
           seed: int = 0) -> tuple[float, float]:
    """(max |onnxruntime - PyTorch|, max |PyTorch output|) on a random input."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": x.numpy()})
    return float(np.max(np.abs(actual - expected))), float(np.max(np.abs(expected)))
