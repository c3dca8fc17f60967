"""The command line: what a user sees, and one clean line for every bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from netadapt.cli import app
from netadapt.model import build_model
from netadapt.spec import load_spec, save_spec

from .conftest import CONFIGS, randomize_

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and fragment in lines[-1], result.output
    assert "Traceback" not in result.output


def test_show_prints_blocks_totals_and_groups():
    result = run("show", str(CONFIGS / "mobilenetv3_large.yaml"))
    assert result.exit_code == 0, result.output
    assert "total: 5,483,032 params, 216.59 M MACs" in result.output
    assert "blocks[14]" in result.output and "blocks[12..14].out" in result.output
    assert "channel groups (22)" in result.output


def test_export_with_weights_writes_a_checked_onnx(tiny_spec, tmp_path):
    save_spec(tiny_spec, tmp_path / "best.yaml")
    torch.save(randomize_(build_model(tiny_spec)).state_dict(), tmp_path / "best.pt")
    result = run("export", str(tmp_path / "best.yaml"))  # weights found beside the spec
    assert result.exit_code == 0, result.output
    assert "weights: " in result.output and "parity: onnxruntime matches PyTorch" in result.output
    assert (tmp_path / "best.onnx").stat().st_size > 0


def test_export_without_weights_says_it_is_random(tiny_spec, tmp_path):
    save_spec(tiny_spec, tmp_path / "s.yaml")
    result = run("export", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "x.onnx"))
    assert result.exit_code == 0, result.output
    assert "randomly initialised" in result.output


@pytest.mark.parametrize("content, fragment", [
    ("name: x\nblocks: [\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_bad_spec_files_give_one_line(tmp_path, content, fragment):
    (tmp_path / "bad.yaml").write_text(content)
    assert_one_line_error(run("show", str(tmp_path / "bad.yaml")), fragment)


def test_bad_widths_give_one_line(tiny_dict, tmp_path):
    tiny_dict["blocks"][2]["exp"] = 50
    import yaml
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(tiny_dict))
    assert_one_line_error(run("export", str(tmp_path / "bad.yaml")),
                          "blocks[2].exp: must be a positive multiple of 8, got 50")


def test_weights_for_another_architecture_give_one_line(tmp_path):
    small = build_model(load_spec(CONFIGS / "mobilenetv3_small.yaml"))
    torch.save(small.state_dict(), tmp_path / "small.pt")
    result = run("export", str(CONFIGS / "mobilenetv3_large.yaml"), "--weights",
                 str(tmp_path / "small.pt"), "-o", str(tmp_path / "l.onnx"))
    assert_one_line_error(result, "missing key")
    assert not (tmp_path / "l.onnx").exists()


def test_output_in_a_missing_directory_gives_one_line(tiny_spec, tmp_path):
    save_spec(tiny_spec, tmp_path / "s.yaml")
    result = run("export", str(tmp_path / "s.yaml"), "-o", str(tmp_path / "no" / "m.onnx"))
    assert_one_line_error(result, "does not exist; create it first")


def test_missing_spec_file_gives_one_line(tmp_path):
    assert_one_line_error(run("show", str(tmp_path / "none.yaml")), "spec file not found")


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "netadapt", "--help"], capture_output=True,
                         text=True, check=True)
    assert "export" in out.stdout and "show" in out.stdout


@pytest.mark.parametrize("args, fragment", [
    ([], "no budget given"),
    (["--budget", "20parsecs"], "latency needs a unit"),
    (["--budget", "flops=3M"], "unknown resource"),
    (["--budget", "20ms", "--criterion", "best"], "--criterion 'best'"),
    (["--budget", "20ms", "--schedule", "linear"], "unknown schedule 'linear'"),
    (["--budget", "20ms", "--preset", "huge"], "unknown preset 'huge'"),
    (["--budget", "20ms", "--finalists", "0"], "--finalists: must be positive"),
    (["--budget", "20ms", "--preset", "paper"], "no --weights and --seed-steps 0"),
])
def test_bad_search_options_are_refused_before_any_work(tmp_path, args, fragment):
    result = run("search", *args, "--out", str(tmp_path / "run"))
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_resuming_something_that_is_not_a_run_is_refused(tmp_path):
    assert_one_line_error(run("search", "--resume", str(tmp_path)),
                          "not a netadapt run directory")


def test_search_out_naming_an_existing_file_is_refused_and_the_file_kept(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert_one_line_error(run("search", "--budget", "20ms", "--out", str(tmp_path / "notes.txt")),
                          "is a file, not a run directory")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("target, fragment", [
    ("folder", "is a directory; name the ONNX file"),
    ("/proc/m.onnx", "cannot write in /proc"),
])
def test_export_to_an_unwritable_output_gives_one_line(tiny_spec, tmp_path, target, fragment):
    save_spec(tiny_spec, tmp_path / "s.yaml")
    (tmp_path / "folder").mkdir()
    out = target if target.startswith("/") else str(tmp_path / target)
    assert_one_line_error(run("export", str(tmp_path / "s.yaml"), "-o", out), fragment)


# ------------------------------------------------ what `search` hands the engine


@pytest.fixture
def engine(monkeypatch):
    """start_search / resume_search replaced by recorders that return a finished run."""
    from netadapt import driver
    from netadapt.records import FinalRecord, SeedRecord
    from netadapt.rundir import RunDir

    calls: dict = {}

    def finished(path):
        if not (path / "config.json").exists():
            RunDir.create(path, {"latency_table": "fake"})
        resources = {"latency_ms": 10.0, "params": 1e6, "macs": 1e8}
        return driver.SearchResult(
            path, SeedRecord(accuracy=0.9, trained_steps=0, notes=[], accuracy_protocol="",
                             metric="top-1", holdout_px=32, **resources),
            FinalRecord(iteration=2, steps=3, accuracy=0.8, seed_test_accuracy=0.9,
                        test_accuracy=0.8, budgets_met=True, **resources), iterations=2)

    def start_search(config, out, **kwargs):
        calls["start"] = (config, out)
        return finished(out)

    def resume_search(path, **kwargs):
        calls["resume"] = path
        return finished(path)

    monkeypatch.setattr(driver, "start_search", start_search)
    monkeypatch.setattr(driver, "resume_search", resume_search)
    return calls


def test_search_flags_reach_the_engine_as_a_search_config(engine, tmp_path):
    from netadapt.config import SearchConfig

    result = run("search", "--budget", "20ms", "-b", "params=2M", "--spec", "my.yaml",
                 "--weights", "w.pt", "--device", "local-ref", "--data", "/data/x",
                 "--criterion", "slope", "--schedule", "decay", "--step", "0.02",
                 "--short-term-steps", "7", "--long-term-steps", "9", "--deploy-steps", "3",
                 "--seed-steps", "11", "--resolution", "24", "--batch-size", "8", "--lr", "0.5",
                 "--holdout", "100", "--seed", "3", "--torch-device", "cpu", "--threads", "2",
                 "--compare", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "resume" not in engine
    assert engine["start"] == (SearchConfig(
        budgets=("20ms", "params=2M"), spec="my.yaml", weights="w.pt", device="local-ref",
        data="/data/x", criterion="slope", schedule="decay", step=0.02, short_term_steps=7,
        long_term_steps=9, deploy_steps=3, seed_steps=11, resolution=24, batch_size=8,
        lr=0.5, holdout=100, seed=3, torch_device="cpu", threads=2, compare=True),
        tmp_path / "run")


def test_search_with_only_a_budget_uses_the_defaults_and_names_the_run(engine, tmp_path,
                                                                        monkeypatch):
    from netadapt.config import SearchConfig

    monkeypatch.chdir(tmp_path)
    result = run("search", "--budget", "60%")
    assert result.exit_code == 0, result.output
    config, out = engine["start"]
    assert config == SearchConfig(budgets=("60%",))
    assert out.parent == Path("runs") and out.name.startswith("mobilenetv3_large-60pct-")


def test_a_preset_sets_its_values_and_given_flags_override_them(engine, tmp_path):
    from netadapt.config import PRESETS, SearchConfig

    result = run("search", "--budget", "20ms", "--preset", "paper", "--weights", "w.pt",
                 "--short-term-steps", "500", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert engine["start"][0] == SearchConfig(
        budgets=("20ms",), weights="w.pt", **{**PRESETS["paper"], "short_term_steps": 500})


def test_resume_hands_the_run_directory_to_the_engine_and_nothing_else(engine, tmp_path):
    result = run("search", "--resume", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert engine == {"resume": tmp_path / "run"}
