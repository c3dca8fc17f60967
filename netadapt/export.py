"""Export a network to ONNX and prove onnxruntime computes what PyTorch computes (a
segmentation graph also in float64: :func:`double_parity`); score an exported file with
onnxruntime alone (the accuracy of what is shipped).

The file carries what a user needs to run it without netadapt, as ONNX metadata_props:
``input_size`` (C,H,W), ``mean`` and ``std`` (per channel, for pixels in [0, 1]),
``labels`` (a JSON list) and, when known, the latency predicted for it
(``predicted_latency_ms``, ``latency_device``, ``latency_table_sha256``).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from .errors import ExportError
from .spec import NetworkSpec

if TYPE_CHECKING:
    from .data import Split

OPSET = 17  # >= 14 has HardSwish as one op; 17 is widely supported by mobile runtimes
PARITY_TOLERANCE = 1e-4  # max |onnxruntime - torch| on logits
# A segmentation network is exported with dynamic height and width (its pooled gate is a
# global average pool and both resizes take their sizes from the feature maps, so any
# size works) and parity is checked at its input size and at this many px more as well.
OTHER_SIZE_PX = 32
# The float64 check (double_parity) runs at the input size, at most this many px a side.
DOUBLE_MAX_PX = 128


def _bound(spec: NetworkSpec, tolerance: float, scale: float) -> float:
    """The float32 parity bound: ``tolerance`` on classifier logits; on segmentation
    logits ``tolerance`` x the largest |logit| (when above 1). Float32 rounding grows
    with the logits, and a trained LR-ASPP's can reach 100 (README "Parity of the
    segmentation logits": a -44% uniformly pruned baseline), where PyTorch float32
    itself is 2e-4 from float64: two float32 runtimes cannot agree within an absolute
    1e-4. The absolute bound is checked in float64 instead (:func:`double_parity`)."""
    return tolerance * max(1.0, scale) if spec.task == "segmentation" else tolerance


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely onnxruntime matches PyTorch."""

    path: Path
    size_bytes: int
    opset: int
    max_abs_diff: float
    output_scale: float  # max |output|: a diff is only meaningful next to this
    tolerance: float  # the bound applied (segmentation: relative to output_scale)
    other_size_diff: float | None = None  # segmentation: at OTHER_SIZE_PX px more
    # segmentation: the same graph run in float64 against PyTorch float64 (absolute bound)
    double_diff: float | None = None
    double_scale: float | None = None


def deployment_metadata(spec: NetworkSpec, mean: Sequence[float], std: Sequence[float],
                        labels: Sequence[str], latency_ms: float | None = None,
                        device: str | None = None, table_sha256: str | None = None
                        ) -> dict[str, str]:
    """The metadata_props that make an exported file usable on its own."""
    meta = {"input_size": ",".join(str(v) for v in (spec.in_channels, *spec.input_size)),
            "mean": ",".join(f"{v:g}" for v in mean), "std": ",".join(f"{v:g}" for v in std),
            "labels": json.dumps(list(labels)),
            "preprocessing": "resize to input_size (bilinear), pixels / 255, grey repeated "
                             "to C channels, then (x - mean) / std per channel"}
    if latency_ms is not None:
        meta.update(predicted_latency_ms=f"{latency_ms:.3f}", latency_device=str(device),
                    latency_table_sha256=str(table_sha256))
    return meta


def export_onnx(model: nn.Module, spec: NetworkSpec, path: str | os.PathLike[str],
                opset: int = OPSET, tolerance: float = PARITY_TOLERANCE,
                metadata: Mapping[str, str] | None = None) -> ExportReport:
    """Write ``model`` as ONNX (dynamic batch; segmentation: dynamic height and width too)
    with ``metadata`` as metadata_props, and check it against PyTorch (segmentation: at
    the spec's input size and at OTHER_SIZE_PX px more).

    The file appears at ``path`` only after the parity check passes; a failed export
    leaves any existing file untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"{path}: directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise ExportError(f"{path} is a directory; name the ONNX file, e.g. "
                          f"-o {path / 'model.onnx'}")
    model = model.cpu().eval()
    shape = (1, spec.in_channels, *spec.input_size)
    axes = {0: "batch", 2: "height", 3: "width"} if spec.task == "segmentation" else \
        {0: "batch"}
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ExportError(f"{path}: cannot write in {path.parent} ({exc.strerror}); pick "
                          f"another -o") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _write_onnx(model, tmp, shape, axes, opset, metadata)
        diff, scale = parity(model.cpu(), tmp, (2, *shape[1:]))
        bound = _bound(spec, tolerance, scale)
        if not diff <= bound:
            raise ExportError(
                f"{path}: onnxruntime output differs from PyTorch by {diff:.3g} "
                f"(tolerance {bound:.3g}); the ONNX file was not written"
            )
        if spec.task == "segmentation":
            extra = _segmentation_parity(model, tmp, path, spec, axes, opset, tolerance)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if spec.task != "segmentation":
        return ExportReport(path, path.stat().st_size, opset, diff, scale, bound)
    return ExportReport(path, path.stat().st_size, opset, diff, scale, bound, *extra)


def _write_onnx(model: nn.Module, path: Path, shape: tuple[int, ...], axes: dict[int, str],
                opset: int, metadata: Mapping[str, str] | None) -> None:
    """The graph of ``model`` at ``path``, with ``metadata`` as metadata_props."""
    # The TorchScript exporter on purpose: the dynamo one needs onnxscript and takes
    # ~30x longer per graph; torch 2.13 warns (twice) that the former is deprecated.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.zeros(shape),), str(path), dynamo=False, opset_version=opset,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
        )
    if metadata:
        import onnx

        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, dict(metadata))
        onnx.save(proto, str(path))


def _segmentation_parity(model: nn.Module, tmp: Path, path: Path, spec: NetworkSpec,
                         axes: dict[int, str], opset: int, tolerance: float
                         ) -> tuple[float, float, float]:
    """A segmentation graph's further checks: at OTHER_SIZE_PX px more (its height and
    width are dynamic), and in float64 against PyTorch float64. Returns the first's max
    |diff| and the second's max |diff| and output scale."""
    shape = (2, spec.in_channels, *(v + OTHER_SIZE_PX for v in spec.input_size))
    other, other_scale = parity(model, tmp, shape)
    if not other <= _bound(spec, tolerance, other_scale):
        raise ExportError(
            f"{path}: at {shape[2]}x{shape[3]} px onnxruntime output differs from "
            f"PyTorch by {other:.3g} (tolerance "
            f"{_bound(spec, tolerance, other_scale):.3g}): the dynamic height/width "
            f"graph is wrong; the ONNX file was not written")
    try:  # at most DOUBLE_MAX_PX a side: at 520 px numpy took 9-22 s
        small = (1, spec.in_channels, *(min(v, DOUBLE_MAX_PX) for v in spec.input_size))
        double, double_scale = double_parity(model, tmp, small, opset, axes)
    except ExportError as exc:
        raise ExportError(f"{path}: {exc}; the ONNX file was not written") from None
    if not double <= tolerance:
        raise ExportError(
            f"{path}: run in float64, the exported graph differs from PyTorch float64 "
            f"by {double:.3g} (tolerance {tolerance:g}): the graph computes another "
            f"function; the ONNX file was not written")
    return other, double, double_scale


def parity(model: nn.Module, onnx_path: Path, shape: tuple[int, ...],
           seed: int = 0) -> tuple[float, float]:
    """(max |onnxruntime - PyTorch|, max |PyTorch output|) on a random input."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"input": x.numpy()})
    return float(np.max(np.abs(actual - expected))), float(np.max(np.abs(expected)))


# ONNX float attributes are float32: HardSigmoid's alpha (and HardSwish's, a function of
# HardSigmoid) is 1/6 + 5e-9 in every file, which moved float64 logits by up to 1.6e-6 of
# their largest value. The float64 reference computes with the file's alpha instead.
ONNX_ALPHA = float(np.float32(1 / 6))


class _OnnxHardSigmoid(nn.Module):
    """max(0, min(1, alpha x + 1/2)) with the float32 alpha an ONNX file holds."""

    def __init__(self, swish: bool) -> None:
        super().__init__()
        self.swish = swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.clamp(x * ONNX_ALPHA + 0.5, 0.0, 1.0)
        return x * gate if self.swish else gate


def _with_onnx_constants(model: nn.Module) -> nn.Module:
    """``model`` with its Hardswish / Hardsigmoid computed as the ONNX file computes them."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, (nn.Hardswish, nn.Hardsigmoid)):
                setattr(module, name, _OnnxHardSigmoid(isinstance(child, nn.Hardswish)))
    return model


def double_parity(model: nn.Module, onnx_path: Path, shape: tuple[int, ...], opset: int,
                  axes: dict[int, str], seed: int = 0) -> tuple[float, float]:
    """(max |graph in float64 - PyTorch float64|, max |PyTorch float64 output|) on a random
    input: the exported file's computation without float32 rounding.

    onnxruntime has no float64 Conv, so the model is exported again in float64 by the
    same exporter, checked to have the file's nodes (op types and attributes, in order:
    the same graph but for the dtype of its weights), and run by onnx's reference
    evaluator (numpy, float64); PyTorch computes in float64 with the file's float32
    constants (ONNX_ALPHA), so that only a different computation can differ."""
    import copy

    import onnx
    from onnx.reference import ReferenceEvaluator

    double = copy.deepcopy(model).double().eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fd, name = tempfile.mkstemp(dir=onnx_path.parent, prefix=f".{onnx_path.name}.", suffix=".f64")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(double, (x,), name, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": axes, "output": axes})
        graph = onnx.load(name)
    finally:
        Path(name).unlink(missing_ok=True)
    shipped = onnx.load(str(onnx_path)).graph.node
    if list(map(_node_key, graph.graph.node)) != list(map(_node_key, shipped)):
        raise ExportError("the float64 export is not the same graph as the float32 one, so "
                          "it cannot be checked in float64")
    with torch.no_grad():
        expected = _with_onnx_constants(double)(x).numpy()
    with np.errstate(over="ignore", invalid="ignore"):  # its Sigmoid overflows exp(-x)
        (actual,) = ReferenceEvaluator(graph).run(None, {"input": x.numpy()})
    return float(np.max(np.abs(actual - expected))), float(np.max(np.abs(expected)))


def _node_key(node: Any) -> tuple[str, list[tuple[str, Any]]]:
    """A node's op type and attributes, tensor constants compared at float32 precision
    (a float64 export holds the same constants in float64)."""
    from onnx import TensorProto, helper, numpy_helper

    attributes = []
    for attribute in node.attribute:
        value = helper.get_attribute_value(attribute)
        if isinstance(value, TensorProto):
            array = numpy_helper.to_array(value)
            array = array.astype(np.float32) if array.dtype.kind == "f" else array
            value = (array.shape, array.tobytes())
        attributes.append((attribute.name, value))
    return node.op_type, attributes


def read_metadata(onnx_path: str | os.PathLike[str]) -> dict[str, str]:
    """An exported file's metadata_props, as onnxruntime reads them."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def onnx_correct_items(onnx_path: str | os.PathLike[str], split: Split, batch_size: int = 128,
                       threads: int = 1) -> torch.Tensor:
    """Per image of ``split`` (served at the file's input size), whether onnxruntime's
    top-1 prediction from the exported file is right: the accuracy of what is shipped."""
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    parts = []
    for x, y in split.batches(batch_size):
        (logits,) = session.run(None, {name: x.numpy()})
        parts.append(torch.from_numpy(logits.argmax(1)) == y)
    return torch.cat(parts)


@dataclass(frozen=True)
class SpecExport:
    """What `netadapt export` did: the file's parity report, its metadata, the weights
    it carries (None: random initialisation), and the run's budgets checked for it."""

    spec: NetworkSpec
    report: ExportReport
    metadata: dict[str, str]
    weights: Path | None
    budget_report: list[str]


def export_spec(spec_path: Path, weights: Path | None = None, output: Path | None = None,
                opset: int = OPSET) -> SpecExport:
    """Export a spec file with its weights (default: ``SPEC.pt`` beside it, if any) to
    ``output`` (default: ``SPEC.onnx``), with the metadata a deployment needs, checked
    against PyTorch; for a spec of a search run, also its budgets on the run's device."""
    from .model import build_model, load_weights
    from .spec import load_spec

    spec = load_spec(spec_path)
    model = build_model(spec)
    beside = spec_path.with_suffix(".pt")
    if weights is None and beside.is_file():
        weights = beside
    if weights is not None:
        load_weights(model, weights)
    metadata = export_metadata(spec_path, spec)
    report = export_onnx(model, spec, output or spec_path.with_suffix(".onnx"), opset=opset,
                         metadata=metadata)
    return SpecExport(spec, report, metadata, weights, run_budget_report(spec_path, spec))


def run_of(spec_path: Path) -> Path | None:
    """The search run directory a spec belongs to (``RUN/best.yaml``,
    ``RUN/iterations/..``); None for a spec outside any run."""
    return next((p for p in (spec_path.parent, spec_path.parent.parent)
                 if (p / "config.json").is_file()), None)


def export_metadata(spec_path: Path, spec: NetworkSpec, device: str = "pixel"
                    ) -> dict[str, str]:
    """ONNX metadata_props for exporting ``spec``: for a spec of a search run, the run's
    normalisation, class labels and latency table; otherwise netadapt's normalisation,
    class indices, and ``device``'s predicted latency when its table covers the spec."""
    from .config import SearchConfig
    from .data import channel_stats
    from .errors import NetadaptError
    from .latency import load_table
    from .rundir import RunDir

    run_path = run_of(spec_path)
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
    """For a spec inside a search run directory: its predicted latency on the run's
    device against the run's budgets, and for a device that runs here (``local``
    runner) the latency measured end to end now. Empty when the spec is not part of a
    run."""
    from dataclasses import replace

    from .config import SearchConfig
    from .latency import load_device, load_table, measure_e2e
    from .rundir import RunDir
    from .search import format_resource, resolve_budgets, resources_of
    from .spec import spec_from_dict

    run_path = run_of(spec_path)
    if run_path is None:
        return []
    run = RunDir.open(run_path)
    config = SearchConfig.from_json(run.config["search"])
    seed_spec = config.deployed(spec_from_dict(run.config["seed_spec"]))
    table = load_table(config.device)
    budgets = resolve_budgets(config.budgets, replace(seed_spec, num_classes=spec.num_classes),
                              table.predict_ms)
    resources = resources_of(spec, table.predict_ms)
    where = f"{table.device}{' (ESTIMATE)' if table.is_estimate else ''}"
    lines = []
    for budget in budgets:
        value = resources[budget.resource]
        verdict = "within" if value <= budget.limit else "OVER"
        lines.append(f"{budget.resource} on {where}: "
                     f"{format_resource(budget.resource, value)} predicted, {verdict} the "
                     f"budget {format_resource(budget.resource, budget.limit)}")
    if load_device(config.device).runner == "local":
        measured = measure_e2e(spec, load_device(config.device), table)
        ms = measured.get("vs_seed_ms", measured["raw_ms"])
        lines.append(f"measured here end to end: {ms:.2f} ms (raw median "
                     f"{measured['raw_ms']:.2f} ms)")
    return lines
