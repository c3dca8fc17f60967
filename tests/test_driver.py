"""`netadapt search` end to end on a tiny spec and a tiny IDX dataset: real training,
real checkpoints, a real kill -9 and resume."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from netadapt.driver import SearchConfig, baselines_for_run, resume_search, start_search
from netadapt.model import build_model, load_weights
from netadapt.records import BaselineRecord
from netadapt.rundir import proposal_name
from netadapt.spec import load_spec

from .conftest import CONFIGS, TINY, fake_ms


def write_idx(directory: Path, n_train: int = 240, n_test: int = 80, seed: int = 0) -> Path:
    """A learnable 3-class IDX dataset: each class is a bright bar in another place."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 3, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 4 + 8 * label: 10 + 8 * label, 4:24] = 250
        header = np.array([0x803, n, 28, 28], dtype=">i4").tobytes()
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(header + images.tobytes())
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(np.array([0x801, n], dtype=">i4").tobytes() + labels.tobytes())
    return directory


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The config of a tiny search, and one uninterrupted run of it to compare with."""
    tmp_path = tmp_path_factory.mktemp("search")
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(yaml.safe_dump(TINY))
    data = write_idx(tmp_path / "data")
    budget = fake_ms(load_spec(spec_path)) * 0.75
    config = SearchConfig(budgets=(f"{budget:.4f}ms",), spec=str(spec_path), data=str(data),
                          device="fake", step=0.1, short_term_steps=3, long_term_steps=4,
                          seed_steps=6, deploy_steps=3, resolution=16, batch_size=16,
                          holdout=40,
                          torch_device="cpu")
    start_search(config, tmp_path / "full", predict_ms=fake_ms, progress=False)
    return tmp_path, config


def test_a_search_leaves_a_complete_run_directory(setup):
    tmp_path, config = setup
    run = tmp_path / "full"
    result = resume_search(run, predict_ms=fake_ms, progress=False)  # finished: no work
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
    resume_search(run, predict_ms=fake_ms, progress=False)
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
        start_search(config, tmp_path / "cut", predict_ms=fake_ms, progress=False,
                     executor=Executor(crash_on_fifth))
    resume_search(tmp_path / "cut", predict_ms=fake_ms, progress=False)
    assert (tmp_path / "cut" / "best.yaml").read_text() == \
        (tmp_path / "full" / "best.yaml").read_text()
    full = torch.load(tmp_path / "full" / "best.pt")
    cut = torch.load(tmp_path / "cut" / "best.pt")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_only_proposals_that_can_still_win_keep_their_weights(setup, tmp_path):
    """Each proposal's weights (an fsynced file of the whole network) are saved only
    while it is at least as accurate as every earlier proposal of its iteration."""
    from netadapt.executors import Executor
    from netadapt.jobs import run_proposal

    root, config = setup
    first = sum(r["type"] == "proposal" and r["iteration"] == 1 for r in journal(root / "full"))
    accuracies = iter([0.5, 0.3, 0.5][:first - 1])  # then Ctrl-C, within iteration 1

    def scored(job, parent_state):
        accuracy = next(accuracies, None)
        if accuracy is None:
            raise KeyboardInterrupt
        return dataclasses.replace(run_proposal(job, parent_state), accuracy=accuracy)

    with pytest.raises(KeyboardInterrupt):
        start_search(config, tmp_path / "cut", predict_ms=fake_ms, progress=False,
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
    return baselines_for_run(tmp_path / "full", predict_ms=fake_ms, progress=False)


def same_weights(a: Path, b: Path) -> bool:
    x, y = torch.load(a), torch.load(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def journal(run: Path) -> list[dict]:
    path = run / "history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


# One run killed in every phase in turn: after the N-th atomic write of a file
# (files.KILL_ENV), with a checkpoint after every step, so each kill lands mid-phase,
# deterministically. Phase -> (kill point, what the run holds when the kill landed there:
# record types not yet journaled, files already written).
KILL_POINTS: dict[str, tuple[str, set[str], str | None]] = {
    "seed training": ("checkpoints/seed.pt#3", {"seed"}, "checkpoints/seed.pt"),  # 3 of 6
    "proposals": (".correct.pt#3", {"iteration"}, None),  # a proposal scored, not saved
    "promotion": ("iterations/iter_001.yaml", {"iteration"}, "iterations/iter_001.yaml"),
    "long-term fine-tune": ("checkpoints/long_term.pt#2", {"final"},  # 2 of 4 steps
                            "checkpoints/long_term.pt"),
    "deploy-size training": ("checkpoints/deploy-best.pt#2", {"final"},  # 2 of 3 steps
                             "checkpoints/deploy-best.pt"),
    "baseline training": ("checkpoints/baseline-uniform_pruning.pt#3",
                          {"baseline uniform_pruning"},
                          "checkpoints/baseline-uniform_pruning.pt"),
}
GO = """\
import json, sys
from pathlib import Path
from netadapt.checkpoint import Checkpoint
from netadapt.driver import SearchConfig, resume_search, start_search
from tests.conftest import fake_ms

load = Checkpoint.load
def spy(self, settings):  # report which phase continues from which step
    state = load(self, settings)
    if state is not None:
        print("resumed", self.path.name, state["step"], flush=True)
    return state
Checkpoint.load = spy
run = Path(sys.argv[1])
if run.exists():
    resume_search(run, predict_ms=fake_ms, progress=False)
else:
    config = SearchConfig.from_json(json.loads(sys.argv[2]))
    start_search(config, run, predict_ms=fake_ms, progress=False)
"""


def kill_in_every_phase(config: SearchConfig, points: dict[str, tuple[str, set[str], str | None]],
                        run: Path, tmp_path: Path) -> None:
    """Start ``config``'s search in a fresh process (an empty seed cache) and kill -9 it
    at each of ``points`` in turn, every start resuming what the last kill left; then
    resume it to the end. Checks that each kill landed in its phase and that each phase
    killed mid-way went on from its checkpoint's step, not from the start."""
    (tmp_path / "go.py").write_text(GO)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "NETADAPT_CHECKPOINT_SECONDS": "0",  # a checkpoint after every step
           "NETADAPT_CACHE": str(tmp_path / "cache")}  # empty: the seed is trained here
    resumed_at: str | None = None
    for phase, (point, not_yet, written) in points.items():
        killed = subprocess.run(
            [sys.executable, str(tmp_path / "go.py"), str(run), json.dumps(config.to_json())],
            env={**env, "NETADAPT_TEST_KILL_AFTER": point}, timeout=300, capture_output=True,
            text=True)
        assert killed.returncode == -signal.SIGKILL, (phase, killed.stderr)
        recorded = {f"{r['type']} {r.get('name', '')}".strip() for r in journal(run)} \
            | {r["type"] for r in journal(run)}
        assert not recorded & not_yet and (written is None or (run / written).is_file()), \
            (phase, recorded)
        if resumed_at is not None:  # the phase killed last time went on from its step
            assert resumed_at in killed.stdout, (phase, killed.stdout)
        name, _, nth = point.partition("#")
        resumed_at = f"resumed {Path(name).name} {nth}" if name.startswith("checkpoints/") \
            else None
        if phase == "seed training":
            assert not list((tmp_path / "cache").glob("seeds/*.pt"))  # no partial seed cached
    finished = subprocess.run(
        [sys.executable, str(tmp_path / "go.py"), str(run)], env=env, timeout=300,
        capture_output=True, text=True, check=True)
    assert resumed_at is None or resumed_at in finished.stdout
    assert not list((run / "checkpoints").glob("*.pt"))  # every phase cleaned up


def assert_same_result(run: Path, full: Path, baselines: list[BaselineRecord]) -> None:
    """``run`` (killed and resumed) ended with the uninterrupted ``full``'s bits: the
    result, the seed, every trained baseline; and trained no proposal twice."""
    assert (run / "best.yaml").read_text() == (full / "best.yaml").read_text()
    assert same_weights(run / "best.pt", full / "best.pt")
    assert same_weights(run / "seed.pt", full / "seed.pt")
    for baseline in (r for r in baselines if r.trained):
        assert same_weights(run / f"baselines/{baseline.name}.pt",
                            full / f"baselines/{baseline.name}.pt")
    proposals = [(r["iteration"], r["group"]) for r in journal(run) if r["type"] == "proposal"]
    assert len(proposals) == len(set(proposals))  # none trained (and recorded) twice
    assert len(proposals) == sum(r["type"] == "proposal" for r in journal(full))


def test_kill_dash_nine_in_every_phase_then_resume_gives_the_same_result(
        setup, with_baselines, tmp_path):
    root, config = setup
    config = dataclasses.replace(config, compare=True)  # the baselines too
    kill_in_every_phase(config, KILL_POINTS, tmp_path / "killed", tmp_path)
    assert_same_result(tmp_path / "killed", root / "full", with_baselines)


def test_baselines_meet_the_budget_and_sit_beside_the_search(setup, with_baselines):
    from typer.testing import CliRunner

    from netadapt.cli import app
    from netadapt.driver import comparison

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
    assert baselines_for_run(run, predict_ms=fake_ms, progress=False) == records  # no rework
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
        start_search(bad, tmp_path / "run", predict_ms=fake_ms, progress=False)
    assert not (tmp_path / "run").exists()


def test_imagenet_weights_load_into_a_ten_class_seed_with_a_fresh_classifier(tmp_path):
    from netadapt.driver import load_seed_weights

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
    from netadapt.seedcache import cache_dir

    _, config = setup
    fast = dataclasses.replace(config, budgets=("99%",))  # no iteration: only the seed
    first = start_search(fast, tmp_path / "a", predict_ms=fake_ms, progress=False)
    again = start_search(fast, tmp_path / "b", predict_ms=fake_ms, progress=False)
    assert "reused the cached seed" in again.seed.notes[0]
    assert str(cache_dir()) in again.seed.notes[0]
    a, b = (torch.load(tmp_path / r / "seed.pt") for r in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.seed.accuracy == again.seed.accuracy
    other = start_search(dataclasses.replace(fast, seed_steps=5), tmp_path / "c",
                         predict_ms=fake_ms, progress=False)  # another recipe, another key
    assert "trained the seed" in other.seed.notes[0]


def test_weights_for_another_class_count_get_their_classifier_fitted(setup, tmp_path):
    _, config = setup
    spec = load_spec(config.spec)
    seven = build_model(dataclasses.replace(spec, num_classes=7))
    torch.save(seven.state_dict(), tmp_path / "seven.pt")
    fast = dataclasses.replace(config, budgets=("99%",), weights=str(tmp_path / "seven.pt"))
    result = start_search(fast, tmp_path / "run", predict_ms=fake_ms, progress=False)
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
