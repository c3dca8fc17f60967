"""Segmentation (Lite R-ASPP): data, mIoU, latency entries of the head, export with
dynamic height and width, and a tiny search end to end."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from netadapt.config import SearchConfig
from netadapt.driver import start_search
from netadapt.errors import DataError, ExportError
from netadapt.export import export_onnx, parity
from netadapt.latency import load_table
from netadapt.latency.coverage import required_keys
from netadapt.latency.graphs import entry_keys, entry_model, input_shape, network_model
from netadapt.model import build_model
from netadapt.report import comparison
from netadapt.scoring import confusion, mean_iou, per_image_pixel_accuracy, pixel_accuracy
from netadapt.segdata import IGNORE_INDEX, load_segmentation, synthetic_canvases
from netadapt.spec import at_size, load_spec, spec_from_dict

from .conftest import CONFIGS, TINY, randomize_
from .test_search import fake_ms

TINY_SEG = {**TINY, "name": "tiny_seg", "num_classes": 3,
            "blocks": TINY["blocks"] + [{"kernel": 3, "exp": 48, "out": 32, "stride": 2,
                                         "se": True, "act": "hswish"}],
            "head": {"type": "lraspp", "low_block": 1, "inter": 32}}


@pytest.fixture
def tiny_seg():
    return spec_from_dict(json.loads(json.dumps(TINY_SEG)))


def write_voc(root: Path, n: int = 40, side: int = 24, seed: int = 0) -> Path:
    """A learnable 3-class VOC-style set: a bright square is class 1, a mid-grey bar class
    2, background 0; a 1-pixel rim around the square is 255 (ignore)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        img = rng.integers(0, 40, (side, side, 3)).astype(np.uint8)
        mask = np.zeros((side, side), np.uint8)
        y, x = rng.integers(1, side - 9, 2)
        mask[y - 1:y + 9, x - 1:x + 9] = IGNORE_INDEX
        mask[y:y + 8, x:x + 8] = 1
        img[y:y + 8, x:x + 8] = 250
        r = int(rng.integers(0, side - 4))
        mask[r:r + 3, :] = np.where(mask[r:r + 3, :] == 0, 2, mask[r:r + 3, :])
        img[r:r + 3, :][mask[r:r + 3, :] == 2] = 140
        Image.fromarray(img).save(root / "images" / f"{i:03d}.png")
        m = Image.fromarray(mask, mode="L").convert("P")
        m.save(root / "masks" / f"{i:03d}.png")
    (root / "classes.txt").write_text("background\nsquare\nbar\n")
    return root


# ---------------------------------------------------------------------- data
def test_synthetic_canvases_are_a_pure_function_of_their_seed():
    garments = np.random.default_rng(0).integers(0, 255, (20, 28, 28)).astype(np.uint8)
    labels = np.arange(20) % 10
    a = synthetic_canvases(garments, labels, 6, 64, seed=3)
    b = synthetic_canvases(garments, labels, 6, 64, seed=3)
    c = synthetic_canvases(garments, labels, 6, 64, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert a[0].shape == (6, 1, 64, 64) and a[1].shape == (6, 64, 64)
    ids = set(np.unique(a[1]).tolist())
    assert ids <= set(range(11)) | {IGNORE_INDEX} and len(ids - {0, IGNORE_INDEX}) >= 2


def test_builtin_synthetic_set_is_labelled_and_splits_by_seed():
    a = load_segmentation(None, 32, 3, holdout=5, seed=0, train_count=20, test_count=6)
    b = load_segmentation(None, 32, 3, holdout=5, seed=1, train_count=20, test_count=6)
    assert "SYNTHETIC" in a.description["source"] and a.classes[0] == "background"
    assert a.num_classes == 11 and len(a.holdout) == 5 and len(a.train) == 15
    assert len(a.test) == 6 and torch.equal(a.test.labels, b.test.labels)  # test fixed
    assert not torch.equal(a.holdout.labels, b.holdout.labels)  # holdout follows --seed


def test_masks_are_resized_nearest_so_ids_stay_ids(tmp_path):
    data = load_segmentation(write_voc(tmp_path / "voc"), 24, 3, holdout=4, seed=0)
    x, y = data.train.at(17).batch(torch.arange(4))
    assert x.shape == (4, 3, 17, 17) and y.shape == (4, 17, 17) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    _, big = data.train.at(48).batch(torch.arange(1))
    stored = data.train.labels[0].long()
    assert torch.equal(big[0, ::2, ::2], stored)  # 2x nearest: every pixel doubled


def test_voc_directory_is_split_and_resized_jointly(tmp_path):
    root = write_voc(tmp_path / "voc", n=30, side=40)
    data = load_segmentation(root, 20, 3, holdout=4, seed=0)
    assert data.classes == ("background", "square", "bar")
    assert sum(data.description["sizes"].values()) == 30 and len(data.test) == 6
    assert data.train.labels.shape[1:] == (20, 20)  # decoded at the resolution asked
    assert data.description["format"] == "voc"


def test_image_without_mask_is_one_clear_error(tmp_path):
    root = write_voc(tmp_path / "voc", n=5)
    (root / "masks" / "002.png").unlink()
    with pytest.raises(DataError, match=r"002.png: no mask masks/002.png"):
        load_segmentation(root, 16, 3, holdout=1, seed=0)


# ---------------------------------------------------------------------- mIoU
def test_miou_of_a_perfect_prediction_is_one_and_ignores_void():
    target = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    predicted = torch.tensor([[[0, 1], [2, 1]]])  # the ignored pixel is wrong: no matter
    m = confusion(predicted, target, 3)
    assert m.sum() == 3 and mean_iou(m) == 1.0 and pixel_accuracy(m) == 1.0


def test_miou_on_a_hand_computed_case():
    target = torch.tensor([[[0, 0, 1, 1]]])
    predicted = torch.tensor([[[0, 1, 1, 1]]])
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3; class 2 absent: left out
    assert mean_iou(confusion(predicted, target, 3)) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_a_class_only_predicted_counts_with_iou_zero():
    target = torch.tensor([[[0, 0]]])
    predicted = torch.tensor([[[0, 2]]])
    assert mean_iou(confusion(predicted, target, 3)) == pytest.approx((1 / 2 + 0) / 2)


def test_per_image_pixel_accuracy_leaves_out_ignored_pixels():
    target = torch.tensor([[[0, IGNORE_INDEX]], [[1, 1]]])
    predicted = torch.tensor([[[0, 1]], [[1, 0]]])
    assert per_image_pixel_accuracy(predicted, target).tolist() == [1.0, 0.5]


# ---------------------------------------------------------------------- latency
def test_head_entries_chain_shapes_in_onnxruntime(tiny_seg):
    keys = entry_keys(tiny_seg)
    names = [n for n, _ in keys]
    assert names[-5:] == ["last_conv", "head.high", "head.high_classifier",
                          "head.low_classifier", "head.upsample"]
    for _, key in keys[-4:]:
        (out,) = ort.InferenceSession(entry_model(key)).run(
            None, {"input": np.zeros(input_shape(key), np.float32)})
        assert out.shape[1] in (key.exp, key.out)
    assert out.shape == (1, 3, 32, 32)
    (whole,) = ort.InferenceSession(network_model(tiny_seg)).run(
        None, {"input": np.zeros((1, 3, 32, 32), np.float32)})
    assert whole.shape == (1, 3, 32, 32)


def test_grid_covers_every_head_width_the_search_can_reach(tiny_seg):
    from .test_latency import fake_table

    table = fake_table(tiny_seg)
    for group in tiny_seg.groups:
        for width in range(8, group.width + 1, 8):
            assert table.covers(tiny_seg.with_group_width(group.name, width)), group.name
    assert table.covers(dataclasses.replace(tiny_seg, num_classes=11))  # synthetic set
    kinds = {k.kind for k in required_keys(tiny_seg)}
    assert {"conv", "lraspp_high", "seg_classifier", "upsample"} <= kinds


def test_shipped_table_predicts_the_whole_segmentation_network_at_96_px():
    table = load_table("local-ref")
    seed = dataclasses.replace(at_size(load_spec(CONFIGS / "lraspp_mobilenetv3_large.yaml"),
                                       96), num_classes=11)
    breakdown = dict(table.breakdown_ms(seed))
    assert {"head.high", "head.low_classifier", "head.upsample"} <= set(breakdown)
    assert sum(breakdown.values()) == pytest.approx(table.predict_ms(seed))
    for group in seed.groups:  # every single-group reduction, head groups included
        assert table.covers(seed.with_group_width(group.name, 8)), group.name


# ---------------------------------------------------------------------- export
def test_export_checks_parity_at_two_sizes_and_keeps_height_and_width_dynamic(tiny_seg,
                                                                              tmp_path):
    model = randomize_(build_model(tiny_seg))
    report = export_onnx(model, tiny_seg, tmp_path / "seg.onnx")
    assert report.max_abs_diff <= 1e-4 and report.output_scale > 0.1
    assert report.other_size_diff is not None and report.other_size_diff <= 1e-4
    assert report.double_diff is not None and report.double_diff <= 1e-9  # float64
    diff, _ = parity(model, tmp_path / "seg.onnx", (1, 3, 48, 40))  # another size
    assert diff <= 1e-4
    shape = ort.InferenceSession(str(tmp_path / "seg.onnx")).get_inputs()[0].shape
    assert shape[2:] == ["height", "width"]


class ShiftedInExport(torch.nn.Module):
    """A network whose exported graph adds ``shift`` to every logit: a wrong graph."""

    def __init__(self, model: torch.nn.Module, shift: float) -> None:
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y + self.shift if torch.onnx.is_in_onnx_export() else y


def test_float64_parity_catches_an_error_the_relative_float32_bound_lets_through(tiny_seg,
                                                                                 tmp_path):
    model = randomize_(build_model(tiny_seg))
    with torch.no_grad():
        scale = float(model(torch.randn((2, 3, 32, 32),
                                        generator=torch.Generator().manual_seed(0))).abs().max())
    assert scale > 3  # so that a shift between 1e-4 and 1e-4 x scale exists
    shift = 1e-4 * (1 + scale) / 2
    (tmp_path / "seg.onnx").write_bytes(b"the user's file")
    with pytest.raises(ExportError, match=r"run in float64, the exported graph differs from "
                                          r"PyTorch float64 by 0.000"):
        export_onnx(ShiftedInExport(model, shift), tiny_seg, tmp_path / "seg.onnx")
    assert (tmp_path / "seg.onnx").read_bytes() == b"the user's file"  # left untouched
    assert list(tmp_path.iterdir()) == [tmp_path / "seg.onnx"]  # no temporary file left


# ---------------------------------------------------------------------- search
def score_onnx_script(onnx_path: Path, data: Path | None = None) -> tuple[float, float]:
    """(mIoU, pixel accuracy) as scripts/score_onnx.py prints them, run as a user would."""
    import re
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "score_onnx.py"
    done = subprocess.run([sys.executable, str(script), str(onnx_path),
                           *([str(data)] if data else [])], capture_output=True, text=True,
                          timeout=300)
    found = re.search(r"mIoU (\S+), pixel accuracy (\S+) on", done.stdout)
    assert done.returncode == 0 and found, done.stderr
    return float(found[1]), float(found[2])


def test_score_onnx_script_scores_a_segmentation_export_on_the_synthetic_test_set(
        tiny_seg, tmp_path):
    """From the file's metadata alone, the script scores what netadapt scores: the same
    1,000 SYNTHETIC test canvases at the file's input size."""
    from netadapt.data import channel_stats
    from netadapt.export import deployment_metadata
    from netadapt.scoring import score_onnx
    from netadapt.segdata import SYNTHETIC_CLASSES

    spec = dataclasses.replace(tiny_seg, num_classes=len(SYNTHETIC_CLASSES))
    path = tmp_path / "seg.onnx"
    export_onnx(randomize_(build_model(spec)), spec, path,
                metadata=deployment_metadata(spec, *channel_stats(3), SYNTHETIC_CLASSES))
    data = load_segmentation(None, 32, 3, holdout=5, seed=0)
    miou, _, extra = score_onnx(path, data.test, data.num_classes)
    assert 0.01 < miou < 0.99  # the untrained network neither all right nor all wrong
    assert score_onnx_script(path) == pytest.approx((miou, extra["pixel_accuracy"]), abs=1e-4)


def test_tiny_lraspp_search_runs_end_to_end_and_scores_miou(tiny_seg, tmp_path):
    spec_path = tmp_path / "tiny_seg.yaml"
    spec_path.write_text(json.dumps(TINY_SEG))
    data = write_voc(tmp_path / "voc")
    budget = fake_ms(dataclasses.replace(tiny_seg, input_size=(24, 24))) * 0.8
    config = SearchConfig(budgets=(f"{budget:.4f}ms",), spec=str(spec_path), data=str(data),
                          device="fake", step=0.15, short_term_steps=2, long_term_steps=2,
                          seed_steps=4, batch_size=8, holdout=6, input_size=24,
                          torch_device="cpu", compare=True)
    result = start_search(config, tmp_path / "run", predict_ms=fake_ms)
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    assert run["metric"] == "mIoU" and run["data"]["task"] == "segmentation"
    assert result.final.budgets_met and result.iterations >= 1
    assert result.final.test_px == "24x24" and 0 <= result.final.test_accuracy <= 1
    assert 0 <= result.final.test_pixel_accuracy <= 1
    assert result.seed.metric == "mIoU"
    table = comparison(tmp_path / "run")
    assert {"width_multiplier", "uniform_pruning"} <= set(table["network"])
    assert table["margin"].notna().any()  # paired on per-image pixel accuracy
    head = dataclasses.replace(load_spec(tmp_path / "run" / "best.yaml")).head
    assert head.inter <= 32  # the head's group was a candidate like any other
    # the reported test mIoU is the exported file's: a user's check, from its metadata
    miou, accuracy = score_onnx_script(tmp_path / "run" / "best.onnx", data)
    assert miou == pytest.approx(result.final.test_accuracy, abs=1e-4)
    assert accuracy == pytest.approx(result.final.test_pixel_accuracy, abs=1e-4)


def test_segmentation_verdict_compares_miou_and_names_the_margins_unit():
    import pandas as pd

    from netadapt.report import verdict

    table = pd.DataFrame([
        {"network": "seed", "test_accuracy": 0.70, "margin": None, "margin_se": None},
        {"network": "netadapt", "test_accuracy": 0.66, "margin": None, "margin_se": None},
        {"network": "uniform_pruning", "test_accuracy": 0.62, "margin": 0.01,
         "margin_se": 0.002}])
    line = verdict(table, "mIoU")
    assert "above the best baseline (uniform_pruning) on test mIoU: 0.6600 vs 0.6200" in line
    assert "per-image pixel accuracy margin +1.00" in line


def test_export_command_says_height_and_width_are_dynamic(tmp_path):
    from typer.testing import CliRunner

    from netadapt.cli import app

    spec_path = tmp_path / "tiny_seg.yaml"
    spec_path.write_text(json.dumps(TINY_SEG))
    result = CliRunner().invoke(app, ["export", str(spec_path)])
    assert result.exit_code == 0, result.output
    assert "height and width are dynamic" in result.output and "at 64x64" in result.output
    assert "float64: the same graph, run by onnx's reference evaluator" in result.output
    assert (tmp_path / "tiny_seg.onnx").is_file()


def test_segmentation_parity_bound_scales_with_the_logits_classifiers_stay_absolute(
        tiny_seg, tiny_spec):
    from netadapt.export import _bound

    assert _bound(tiny_seg, 1e-4, 50.0) == pytest.approx(5e-3)
    assert _bound(tiny_seg, 1e-4, 0.5) == 1e-4
    assert _bound(tiny_spec, 1e-4, 50.0) == 1e-4


def test_latency_command_predicts_the_segmentation_network_at_an_input_size():
    from typer.testing import CliRunner

    from netadapt.cli import app

    result = CliRunner().invoke(app, ["latency", str(CONFIGS / "lraspp_mobilenetv3_large.yaml"),
                                      "--device", "local-ref", "--input-size", "64"])
    assert result.exit_code == 0, result.output
    assert "lraspp_mobilenetv3_large@64" in result.output and "head.upsample" in result.output


# ---------------------------------------------------------------------- kill -9
@pytest.fixture
def one_core():
    """This process, and so every search process it starts, on one core: the deploy-size
    phase trains on every core a process may use, and on this shared 2-core machine two
    OpenMP threads took 3.4 s a step of the tiny LR-ASPP where one took 17 ms."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    yield
    os.sched_setaffinity(0, cores)


@pytest.mark.slow
def test_kill_dash_nine_in_every_phase_of_a_segmentation_search_then_resume(
        tiny_seg, tmp_path, one_core):
    """The classifier's kill test (tests/test_kill.py) on a tiny LR-ASPP search of the
    built-in SYNTHETIC set, trained at 24 px and deployed at 32 so that every phase runs
    (the deploy-size training and the baselines included): killed in each phase in turn
    and resumed, it ends with the uninterrupted run's best.yaml, best.pt, seed and
    baselines, bit for bit."""
    from .test_kill import KILL_POINTS, assert_same_result, kill_in_every_phase

    spec_path = tmp_path / "tiny_seg.yaml"
    spec_path.write_text(json.dumps(TINY_SEG))
    config = SearchConfig(budgets=(f"{fake_ms(tiny_seg) * 0.75:.4f}ms",), spec=str(spec_path),
                          device="fake", step=0.1, short_term_steps=3, long_term_steps=4,
                          seed_steps=6, deploy_steps=3, resolution=24, batch_size=8,
                          holdout=40, torch_device="cpu", compare=True)
    full = start_search(config, tmp_path / "full", predict_ms=fake_ms)
    run = json.loads((tmp_path / "full" / "config.json").read_text())
    assert "SYNTHETIC" in run["data"]["source"] and run["metric"] == "mIoU"
    assert full.iterations >= 1 and full.final.deploy_steps == 3
    assert "uniform_pruning" in {b.name for b in full.baselines if b.trained}
    kill_in_every_phase(config, KILL_POINTS, tmp_path / "killed", tmp_path)
    assert_same_result(tmp_path / "killed", tmp_path / "full", full.baselines)
