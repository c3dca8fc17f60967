"""`netadapt search` end to end on a tiny spec and a tiny IDX dataset: real training,
real checkpoints, a real kill -9 and resume."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from netadapt.baseline import baselines_for_run
from netadapt.driver import resume_search, start_search
from netadapt.model import build_model, load_weights
from netadapt.observer import LivePlot
from netadapt.rundir import proposal_name
from netadapt.spec import load_spec

from .conftest import CONFIGS, fake_ms, journal, tiny_search


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The config of a tiny search, and one uninterrupted run of it to compare with."""
    tmp_path = tmp_path_factory.mktemp("search")
    config = tiny_search(tmp_path)
    start_search(config, tmp_path / "full", predict_ms=fake_ms, observer=LivePlot())
    return tmp_path, config


def test_a_search_leaves_a_complete_run_directory(setup):
    tmp_path, config = setup
    run = tmp_path / "full"
    result = resume_search(run, predict_ms=fake_ms)  # finished: no work
    assert result.final.budgets_met and result.iterations >= 1
    best = load_spec(run / "best.yaml")
    assert fake_ms(best) <= float(config.budgets[0][:-2])
    load_weights(build_model(best), run / "best.pt")  # weights fit the spec, strictly
    for i in range(1, result.iterations + 1):
        load_weights(build_model(load_spec(run / f"iterations/iter_{i:03d}.yaml")),
                     run / f"iterations/iter_{i:03d}.pt")
    history = (run / "history.csv").read_text().splitlines()
    assert history[0].startswith("type,") and len(history) > 3
    assert (run / "accuracy_vs_latency.png").stat().st_size > 1000
    left = list((run / "proposals").glob("*/*.pt"))  # losers' weights cleaned up ...
    assert left and all(p.name.endswith(".correct.pt") for p in left)  # ... not their scores
    config_json = json.loads((run / "config.json").read_text())
    assert config_json["search"]["budgets"] == list(config.budgets)
    assert 0 <= result.final.test_accuracy <= 1
    # every iteration records its margin over the runner-up with the paired SE
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    chosen = [r for r in rows if r["type"] == "iteration"]
    assert all(r["runner_up"] and r["margin"] >= 0 and r["margin_se"] >= 0 for r in chosen)
    assert "margin_se" in history[0] and "reduction" in history[0]
    assert result.final.steps == result.iterations * config.short_term_steps \
        + config.long_term_steps


def test_checkpoints_of_recorded_phases_are_dropped_on_resume(setup, tmp_path):
    """A kill between a phase's journal record and the removal of its checkpoint."""
    import shutil

    root, _ = setup
    run = tmp_path / "run"
    shutil.copytree(root / "full", run)
    (run / "checkpoints").mkdir(exist_ok=True)
    for phase in ("seed", "long_term", "deploy-best"):
        (run / "checkpoints" / f"{phase}.pt").write_bytes(b"stale")
    resume_search(run, predict_ms=fake_ms)
    assert not list((run / "checkpoints").iterdir())


def test_an_interrupted_search_resumes_to_the_same_result(setup):
    from netadapt.executors import Executor
    from netadapt.jobs import run_proposal

    tmp_path, config = setup
    calls = {"n": 0}

    def crash_on_fifth(job, parent_state):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of an iteration
        return run_proposal(job, parent_state)

    with pytest.raises(KeyboardInterrupt):
        start_search(config, tmp_path / "cut", predict_ms=fake_ms,
                     executor=Executor(crash_on_fifth))
    resume_search(tmp_path / "cut", predict_ms=fake_ms)
    assert (tmp_path / "cut" / "best.yaml").read_text() == \
        (tmp_path / "full" / "best.yaml").read_text()
    full = torch.load(tmp_path / "full" / "best.pt")
    cut = torch.load(tmp_path / "cut" / "best.pt")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_only_proposals_that_can_still_win_keep_their_weights(setup, tmp_path):
    """Each proposal's weights (an fsynced file of the whole network) are saved only
    while it is at least as accurate as every earlier proposal of its iteration (that had
    all T steps: here every one, without racing)."""
    from netadapt.executors import Executor
    from netadapt.jobs import run_proposal

    root, config = setup
    config = dataclasses.replace(config, racing=False)
    first = sum(r["type"] == "proposal" and r["iteration"] == 1 and r["rung"] == 0
                for r in journal(root / "full"))
    accuracies = iter([0.5, 0.3, 0.5][:first - 1])  # then Ctrl-C, within iteration 1

    def scored(job, parent_state):
        accuracy = next(accuracies, None)
        if accuracy is None:
            raise KeyboardInterrupt
        return dataclasses.replace(run_proposal(job, parent_state), accuracy=accuracy)

    with pytest.raises(KeyboardInterrupt):
        start_search(config, tmp_path / "cut", predict_ms=fake_ms,
                     executor=Executor(scored))
    done = [r for r in journal(tmp_path / "cut") if r["type"] == "proposal"]
    assert [r["accuracy"] for r in done] == [0.5, 0.3, 0.5][:first - 1]
    for r in done:
        weights = tmp_path / "cut" / proposal_name(1, r["group"])
        assert weights.with_suffix(".correct.pt").is_file()  # every score is kept
        assert weights.is_file() == (r["accuracy"] == 0.5), r  # the 0.3 one cannot win


@pytest.fixture(scope="module")
def with_baselines(setup):
    """The uninterrupted run's baselines (trained once; later calls read the journal)."""
    tmp_path, _ = setup
    return baselines_for_run(tmp_path / "full", predict_ms=fake_ms)


def test_baselines_meet_the_budget_and_sit_beside_the_search(setup, with_baselines):
    from typer.testing import CliRunner

    from netadapt.cli import app
    from netadapt.report import comparison

    tmp_path, config = setup
    run = tmp_path / "full"
    records = with_baselines
    budget = float(config.budgets[0][:-2])
    trained = [r for r in records if r.trained]
    assert {r.name for r in records} == {"width_multiplier", "uniform_pruning", "resolution",
                                            "torch_pruning"}
    assert len(trained) >= 2 and all(r.latency_ms <= budget for r in trained)
    final = next(r for r in map(json.loads, (run / "history.jsonl").read_text().splitlines())
                 if r["type"] == "final")
    assert all(r.steps == final["steps"] for r in trained)  # the winner's training
    for r in trained:  # each is a normal spec + weights that export accepts
        load_weights(build_model(load_spec(run / f"baselines/{r.name}.yaml")),
                     run / f"baselines/{r.name}.pt")
    table = comparison(run)
    assert list(table["network"][:2]) == ["seed", "netadapt"] and len(table) == 6
    assert baselines_for_run(run, predict_ms=fake_ms) == records  # no rework
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "uniform_pruning" in result.output and "the best baseline" in result.output
    assert "measured_ms" in result.output  # timed end to end here, interleaved
    assert "loop overhead" in result.output  # where the run's wall time went


@pytest.mark.parametrize("change, fragment", [
    ({"data": "/nonexistent/data"}, "/nonexistent/data"),
    ({"budgets": ("0.001ms",)}, "unreachable"),
    ({"weights": "WRONG"}, "missing key"),
])
def test_bad_runs_fail_before_any_work_and_leave_nothing(setup, tmp_path, change, fragment):
    from netadapt.errors import NetadaptError

    _, config = setup
    if change.get("weights") == "WRONG":
        other = build_model(load_spec(CONFIGS / "mobilenetv3_small.yaml"))
        torch.save(other.state_dict(), tmp_path / "small.pt")
        change = {"weights": str(tmp_path / "small.pt")}
    bad = dataclasses.replace(config, **change)
    with pytest.raises(NetadaptError, match=fragment):
        start_search(bad, tmp_path / "run", predict_ms=fake_ms)
    assert not (tmp_path / "run").exists()


def test_imagenet_weights_load_into_a_ten_class_seed_with_a_fresh_classifier(tmp_path):
    from netadapt.seed import load_seed_weights

    spec = load_spec(CONFIGS / "mobilenetv3_small.yaml")
    imagenet = build_model(spec)
    torch.save(imagenet.state_dict(), tmp_path / "imagenet.pt")
    ten = build_model(dataclasses.replace(spec, num_classes=10))
    fresh = ten.state_dict()["classifier.3.weight"].clone()
    fresh_keys = load_seed_weights(ten, str(tmp_path / "imagenet.pt"), 10)
    assert fresh_keys == ["classifier.3.bias", "classifier.3.weight"]
    state = ten.state_dict()
    assert torch.equal(state["classifier.3.weight"], fresh)
    assert torch.equal(state["features.1.block.0.0.weight"],
                       imagenet.state_dict()["features.1.block.0.0.weight"])


def test_a_trained_seed_is_cached_and_reused_by_the_next_run(setup, tmp_path):
    from netadapt.seed import cache_dir

    _, config = setup
    fast = dataclasses.replace(config, budgets=("99%",))  # no iteration: only the seed
    first = start_search(fast, tmp_path / "a", predict_ms=fake_ms)
    again = start_search(fast, tmp_path / "b", predict_ms=fake_ms)
    assert "reused the cached seed" in again.seed.notes[0]
    assert str(cache_dir()) in again.seed.notes[0]
    a, b = (torch.load(tmp_path / r / "seed.pt") for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.seed.accuracy == again.seed.accuracy
    other = start_search(dataclasses.replace(fast, seed_steps=5), tmp_path / "c",
                         predict_ms=fake_ms)  # another recipe, another key
    assert "trained the seed" in other.seed.notes[0]


def test_weights_for_another_class_count_get_their_classifier_fitted(setup, tmp_path):
    _, config = setup
    spec = load_spec(config.spec)
    seven = build_model(dataclasses.replace(spec, num_classes=7))
    torch.save(seven.state_dict(), tmp_path / "seven.pt")
    fast = dataclasses.replace(config, budgets=("99%",), weights=str(tmp_path / "seven.pt"))
    result = start_search(fast, tmp_path / "run", predict_ms=fake_ms)
    assert "fitted them" in result.seed.notes[0]
    seed = torch.load(tmp_path / "run" / "seed.pt")
    fresh = build_model(dataclasses.replace(spec, num_classes=3)).state_dict()
    assert not torch.equal(seed["classifier.3.weight"], fresh["classifier.3.weight"])
    assert torch.equal(seed["features.0.0.weight"], seven.state_dict()["features.0.0.weight"])


def test_export_of_a_runs_result_checks_the_runs_budget(setup, monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from netadapt import latency
    from netadapt.cli import app

    tmp_path, config = setup
    table = SimpleNamespace(device="fake", is_estimate=True, predict_ms=fake_ms,
                            covers=lambda spec: True, meta={"sha256": "f00d"})
    monkeypatch.setattr(latency, "load_table", lambda device: table)
    monkeypatch.setattr(latency, "load_device", lambda device: SimpleNamespace(runner="adb"))
    out = tmp_path / "best.onnx"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "full" / "best.yaml"),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "weights: " in result.output and out.stat().st_size > 0
    assert "latency_ms on fake (ESTIMATE)" in result.output
    assert "predicted, within the budget" in result.output
    from netadapt.export import read_metadata

    meta = read_metadata(out)
    assert meta["latency_device"] == "fake" and meta["latency_table_sha256"] == "f00d"


def test_the_exported_result_scores_what_the_run_reported_with_plain_onnxruntime(
        setup, monkeypatch):
    """As a user would: export best.yaml, then only onnxruntime, numpy and PIL: read the
    test images, resize them to the file's input size, normalise with its metadata."""
    from types import SimpleNamespace

    import onnxruntime as ort
    from PIL import Image
    from typer.testing import CliRunner

    from netadapt import latency
    from netadapt.cli import app

    tmp_path, config = setup
    table = SimpleNamespace(device="fake", is_estimate=True, predict_ms=fake_ms,
                            covers=lambda spec: True, meta={})
    monkeypatch.setattr(latency, "load_table", lambda device: table)
    monkeypatch.setattr(latency, "load_device", lambda device: SimpleNamespace(runner="adb"))
    run = tmp_path / "full"
    out = tmp_path / "user.onnx"
    result = CliRunner().invoke(app, ["export", str(run / "best.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    channels, height, width = (int(v) for v in meta["input_size"].split(","))
    mean = np.array([float(v) for v in meta["mean"].split(",")]).reshape(1, -1, 1, 1)
    std = np.array([float(v) for v in meta["std"].split(",")]).reshape(1, -1, 1, 1)
    assert json.loads(meta["labels"]) == ["0", "1", "2"]
    assert float(meta["predicted_latency_ms"]) == pytest.approx(
        fake_ms(load_spec(run / "best.yaml")), abs=1e-3)
    with gzip.open(Path(config.data) / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 28, 28)
    with gzip.open(Path(config.data) / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], np.uint8)
    pixels = np.stack([np.asarray(Image.fromarray(im).resize((width, height),
                                                             Image.Resampling.BILINEAR))
                       for im in images]).astype(np.float32)[:, None] / 255
    x = ((np.repeat(pixels, channels, axis=1) - mean) / std).astype(np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    accuracy = float((logits.argmax(1) == labels).mean())
    final = next(r for r in map(json.loads, (run / "history.jsonl").read_text().splitlines())
                 if r["type"] == "final")
    assert final["test_px"] == f"{height}x{width}"
    assert abs(accuracy - final["test_accuracy"]) <= 2 / len(labels)  # PIL vs torch resize


def test_the_search_command_prints_each_accuracy_with_its_input_size(setup, tmp_path,
                                                                     monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from netadapt import latency
    from netadapt.cli import app

    _, config = setup
    table = SimpleNamespace(device="fake", is_estimate=True, predict_ms=fake_ms,
                            covers=lambda spec: True, meta={}, label=lambda: "fake")
    monkeypatch.setattr(latency, "load_table", lambda device: table)
    result = CliRunner().invoke(app, [
        "search", "--budget", "99%", "--spec", config.spec, "--data", config.data,
        "--seed-steps", "6", "--deploy-steps", "2", "--resolution", "16", "--batch-size", "16",
        "--holdout", "40", "--long-term-steps", "2", "--torch-device", "cpu",
        "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "holdout acc @16" in result.output
    assert "at input px" in result.output and "32x32" in result.output


def test_every_record_carries_its_wall_time_by_phase(setup):
    """The journal accounts the run's wall time: training, evaluation and the rest (the
    loop's overhead), so `netadapt report` can say what the loop itself cost."""
    from netadapt.records import RunTimes

    root, _ = setup
    records = journal(root / "full")
    assert records and all(r["wall_s"] is not None for r in records)
    for r in records:  # serial: the phases of an interval never exceed its wall time
        assert 0 <= r["train_s"] + r["eval_s"] <= r["wall_s"] + 1e-3
    proposals = [r for r in records if r["type"] == "proposal"]
    assert all(r["train_s"] > 0 and r["eval_s"] > 0 for r in proposals)
    final = next(r for r in records if r["type"] == "final")
    assert final["train_s"] > 0 and final["eval_s"] > 0  # long-term, deploy; test scoring
    times = RunTimes.of(records)
    assert 0 < times.overhead_s < times.wall_s
