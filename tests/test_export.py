"""ONNX export: onnxruntime computes what PyTorch computes, or nothing is written."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from netadapt.errors import ExportError
from netadapt.export import OPSET, export_onnx
from netadapt.model import build_model
from netadapt.spec import load_spec

from .conftest import CONFIGS, randomize_


@pytest.mark.parametrize("name", ["mobilenetv3_large", "mobilenetv3_small",
                                  "lraspp_mobilenetv3_large"])
def test_onnx_matches_pytorch_with_trained_like_weights(name, tmp_path):
    spec = load_spec(CONFIGS / f"{name}.yaml")
    if spec.task == "segmentation":  # same graph, smaller input keeps the test quick
        spec = dataclasses.replace(spec, input_size=(128, 128))
    model = randomize_(build_model(spec), spec.input_size)
    report = export_onnx(model, spec, tmp_path / "m.onnx")
    assert report.max_abs_diff <= 1e-4
    assert report.output_scale > 0.1  # compared on O(1) outputs, not ~0 logits of a fresh init
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert graph.opset_import[0].version == OPSET >= 17
    assert "HardSwish" in {n.op_type for n in graph.graph.node}


def test_exported_model_has_a_dynamic_batch(tiny_spec, tmp_path):
    model = randomize_(build_model(tiny_spec))
    export_onnx(model, tiny_spec, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    (out,) = session.run(None, {"input": x.numpy()})
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=1e-4)


def test_a_failed_parity_check_writes_nothing_and_keeps_the_old_file(tiny_spec, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"the user's previous export")
    with pytest.raises(ExportError, match="differs from PyTorch .* not written"):
        export_onnx(build_model(tiny_spec), tiny_spec, target, tolerance=-1.0)
    assert target.read_bytes() == b"the user's previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp files left


def test_a_missing_output_directory_is_refused(tiny_spec, tmp_path):
    with pytest.raises(ExportError, match="directory .*missing does not exist"):
        export_onnx(build_model(tiny_spec), tiny_spec, tmp_path / "missing" / "m.onnx")
