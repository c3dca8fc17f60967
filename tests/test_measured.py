"""The measured check (netadapt/measured.py): a search's result timed end to end on the
device, for real (onnxruntime on this machine's ``local`` runner), before its latency
budget counts as met; over it, the loop goes on to a tighter predicted target.

The search runs the tiny spec at 128 px, where its latency follows its widths (at 32 px
it is mostly per-operator overhead), against a latency table of it measured here (a
second). The predictor the search is given is that table x UNDERPRICE for every network
but the seed: a table that underprices what the search picks, as the winner's curse
makes a real one do, so the first check must fail and the loop must go on. No test
asserts an absolute time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from netadapt import measured
from netadapt.config import SearchConfig
from netadapt.driver import resume_search, start_search
from netadapt.records import BaselineRecord, MeasuredRecord, of_type
from netadapt.spec import at_size, load_spec, spec_from_dict

from .conftest import TINY, fake_ms, journal, same_weights, tiny_search

DEVICE = "tiny-local"  # this machine's CPU, with a table of the tiny spec at SIZE
SIZE = 128
UNDERPRICE = 0.7  # every network but the seed predicted at 70% of the table's figure
PROFILE = {"name": DEVICE, "description": "this machine's CPU, for tests/test_measured.py",
           "runner": "local", "runtime": {"threads": 1, "optimization": "all",
                                          "clock": "thread"},
           "protocol": {"rounds": 10, "warmup": 1, "chunk": 64, "max_spread": 0.3,
                        "attempts": 2, "calibration_bursts": 3, "calibration_rounds": 10,
                        "calibration_every": 50, "calibration_variants": 16}}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The tiny spec's table at SIZE px on this machine, in the tests' own user folder
    (conftest.private_user_dirs)."""
    from netadapt.latency import build, load_device, load_table

    folder = tmp_path_factory.mktemp("measured-spec")
    config = tiny_search(folder)
    home = Path(os.environ["NETADAPT_HOME"])
    (home / "configs" / "devices").mkdir(parents=True, exist_ok=True)
    (home / "configs" / "devices" / f"{DEVICE}.yaml").write_text(yaml.safe_dump(PROFILE))
    build.profile(load_device(DEVICE), [at_size(load_spec(config.spec), SIZE)],
                  progress=False, log=lambda _: None)
    return load_table(DEVICE)


def underpricing(table):
    """The table's prediction, x UNDERPRICE for every network but the seed."""
    seed_widths = [g.width for g in spec_from_dict(TINY).groups]

    def predict_ms(spec) -> float:
        seed = [g.width for g in spec.groups] == seed_widths
        return table.predict_ms(spec) * (1.0 if seed else UNDERPRICE)
    return predict_ms


def measured_search(folder: Path, **changes) -> SearchConfig:
    """The tiny search on DEVICE at SIZE px: 80% of the seed's latency, no training at
    the deployed size (what is timed is the architecture)."""
    return dataclasses.replace(tiny_search(folder, device=DEVICE, input_size=SIZE,
                                           deploy_steps=0, **changes), budgets=("80%",))


def checks(run: Path) -> list[MeasuredRecord]:
    return of_type(journal(run), MeasuredRecord)


@pytest.fixture(scope="module")
def full(table, tmp_path_factory):
    """One uninterrupted run: the first check fails (the predictor underprices), the
    loop goes on. The tightened target keeps a 10% margin: the tiny table's own error
    (median 3.5%, up to 17%) would otherwise make each later check a coin toss between
    table error and budget; the rule is the same."""
    folder = tmp_path_factory.mktemp("measured")
    config = measured_search(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(measured, "MIN_MARGIN", 0.1)
        result = start_search(config, folder / "full", predict_ms=underpricing(table))
    return folder, config, result


def test_the_check_fires_and_the_loop_goes_on_until_the_measured_latency_meets_the_budget(
        full):
    _, _, result = full
    records = checks(result.run)
    assert len(records) >= 2
    first, last = records[0], records[-1]
    assert not first.met and first.measured_ms > first.budget_ms  # underpriced: over
    assert first.predicted_ms <= first.target_ms  # met as predicted when it was timed
    assert last.met and last.measured_ms <= last.budget_ms and last.next_target_ms is None
    assert result.measured == last and result.final.budgets_met
    assert result.iterations == last.iteration > first.iteration  # it went on
    # the final network is the one last timed
    spec = load_spec(result.run / "best.yaml")
    assert underpricing_of(full)(spec) == pytest.approx(last.predicted_ms)


def underpricing_of(full):
    from netadapt.latency import load_table

    return underpricing(load_table(DEVICE))


def test_every_check_is_a_record_and_each_tightened_target_is_the_next_loops(full):
    _, config, result = full
    records = checks(result.run)
    assert [r.round for r in records] == list(range(1, len(records) + 1))
    seed_ms = result.seed.latency_ms
    assert records[0].target_ms == pytest.approx(0.8 * seed_ms)  # the budget as given
    for before, after in zip(records, records[1:]):
        assert not before.met and before.next_target_ms is not None
        assert after.target_ms == pytest.approx(before.next_target_ms)
        # the rule: predicted x budget / measured, less the margin
        assert before.next_target_ms <= before.predicted_ms * before.budget_ms \
            / before.measured_ms * 0.9 + 1e-9
        assert after.iteration == before.iteration + 1  # one iteration between checks
        assert after.predicted_ms < before.predicted_ms
    assert records[0].expected_vs_seed == pytest.approx(records[0].predicted_ms / seed_ms)
    for i, r in enumerate(records[1:], 1):  # said before timing, from the checks before
        assert r.expected_vs_seed == pytest.approx(
            measured.expected_vs_seed(r.predicted_ms, seed_ms, records[:i]))
    for r in records:  # a percentage of the seed timed beside it; the ratio x the anchor
        assert r.budget_ms == pytest.approx(0.8 * r.measured_ms / r.vs_seed)
        assert r.measured_ms == pytest.approx(r.vs_seed * seed_ms)
        assert r.anchor == "seed's predicted latency" and r.device == DEVICE and r.bursts > 5
    assert "measured" in (result.run / "history.csv").read_text()
    lines = "\n".join(result.latency_lines)
    assert "predicted" in lines and "measured on tiny-local" in lines and "met" in lines


def truncated_copy(run: Path, to: Path, after: MeasuredRecord) -> None:
    """What a kill -9 right after ``after`` was journaled leaves of ``run``: the journal
    up to that record and the files written before it (later iterations, the result and
    the baselines not yet)."""
    shutil.copytree(run, to)
    lines = (to / "history.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "measured"
               and json.loads(line)["round"] == after.round)
    (to / "history.jsonl").write_text("".join(lines[:cut + 1]))
    for folder in ("iterations", "proposals"):
        for path in (to / folder).glob("iter_*"):
            if int(path.name[5:8]) > after.iteration:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    for path in [*to.glob("best*"), *to.glob("seed_deployed*"), to / "baselines",
                 to / "checkpoints", to / "history.csv"]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def test_a_kill_between_a_check_and_the_further_iterations_resumes_to_the_same_result(
        full, tmp_path):
    """Resumed right after the first (failed) check: the check is not timed again, the
    loop replays the journal under the tightened target and goes on as the
    uninterrupted run did, to the same network."""
    _, _, result = full
    first = checks(result.run)[0]
    run = tmp_path / "killed"
    truncated_copy(result.run, run, first)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(measured, "MIN_MARGIN", 0.1)
        resumed = resume_search(run, predict_ms=underpricing_of(full))
    again = checks(run)
    assert again[0] == first and [r.round for r in again].count(1) == 1  # not re-timed
    ours = [r for r in journal(run) if r["type"] == "iteration"]
    theirs = [r for r in journal(result.run) if r["type"] == "iteration"]
    assert [(r["group"], r["width_to"], r["target"]) for r in ours] == \
        [(r["group"], r["width_to"], r["target"]) for r in theirs]
    assert again[-1].met and resumed.iterations == result.iterations
    assert (run / "best.yaml").read_text() == (result.run / "best.yaml").read_text()
    assert same_weights(run / "best.pt", result.run / "best.pt")


def test_a_kill_after_the_last_check_resumes_without_timing_again(full, tmp_path):
    _, _, result = full
    last = checks(result.run)[-1]
    run = tmp_path / "killed"
    truncated_copy(result.run, run, last)
    resume_search(run, predict_ms=underpricing_of(full))
    assert checks(run) == checks(result.run)
    assert (run / "best.yaml").read_text() == (result.run / "best.yaml").read_text()


def test_a_check_met_above_the_predicted_target_ends_the_loop_when_resumed(full, tmp_path):
    """One iteration between checks: the last check may meet the budget as measured with
    a network still over the loop's predicted target. Resumed after it, the loop must
    not chase that target (here made so by lowering the record's target)."""
    _, _, result = full
    last = checks(result.run)[-1]
    run = tmp_path / "killed"
    truncated_copy(result.run, run, last)
    lines = (run / "history.jsonl").read_text().splitlines(keepends=True)
    record = json.loads(lines[-1])
    assert record["type"] == "measured" and record["met"]
    record["target_ms"] = 0.9 * record["predicted_ms"]
    (run / "history.jsonl").write_text("".join(lines[:-1]) + json.dumps(record) + "\n")
    resumed = resume_search(run, predict_ms=underpricing_of(full))
    assert resumed.iterations == last.iteration
    assert (run / "best.yaml").read_text() == (result.run / "best.yaml").read_text()


def test_an_estimate_device_says_its_latency_is_predicted_not_measured(tmp_path):
    config = tiny_search(tmp_path, device="pixel", deploy_steps=0)  # the shipped ESTIMATE
    result = start_search(config, tmp_path / "run", predict_ms=fake_ms)
    assert not checks(result.run) and result.measured is None
    assert result.latency_lines[1] == (
        f"  result: {result.final.latency_ms:.2f} ms predicted on pixel, not measured "
        f"(ESTIMATE; no phone attached)")
    assert sum("not measured" in line for line in result.latency_lines) == 1


def width_baseline(run: Path) -> BaselineRecord:
    return next(r for r in of_type(journal(run), BaselineRecord)
                if r.name == "width_multiplier")


def predicted_width_choice(run: Path, seed_ms: float, predict_ms):
    """The width multiplier chosen by the predictor alone, at the runs' 80% budget."""
    from netadapt.baseline import width_multiplier
    from netadapt.search import Budget

    return width_multiplier(load_spec(run / "seed.yaml"),
                            [Budget("latency_ms", 0.8 * seed_ms)], predict_ms)


def test_the_width_multiplier_is_held_to_the_measured_budget_too(full):
    """The underpricing predictor chose a multiplier that runs over the budget; the
    baseline is the next smaller ones until one runs within it, as the result is."""
    _, _, result = full
    record = width_baseline(result.run)
    predicted = predicted_width_choice(result.run, result.seed.latency_ms,
                                       underpricing_of(full))
    assert predicted is not None and record.trained and record.measured_checks is not None
    assert float(record.knob[1:]) < float(predicted.knob[1:])  # smaller than predicted
    assert record.measured_checks >= 2
    assert record.measured_ms is not None and record.measured_budget_ms is not None
    assert record.measured_ms <= record.measured_budget_ms  # within, as measured
    assert record.measured_vs_seed is not None and record.measured_budget_ms == \
        pytest.approx(0.8 * record.measured_ms / record.measured_vs_seed)
    assert load_spec(result.run / "baselines" / "width_multiplier.yaml").name.endswith(
        record.knob)


def test_a_kill_before_the_baselines_record_resumes_to_its_setting_without_timing(
        full, tmp_path):
    """Killed after the width multiplier was timed and trained, before its record: the
    resumed run walks to the setting found (no timing) and trains that one."""
    _, _, result = full
    record = width_baseline(result.run)
    run = tmp_path / "killed"
    shutil.copytree(result.run, run)
    lines = (run / "history.jsonl").read_text().splitlines(keepends=True)
    (run / "history.jsonl").write_text("".join(
        line for line in lines if json.loads(line)["type"] != "baseline"))

    def no_timing(*_args, **_kwargs):
        raise AssertionError("timed again")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(measured, "time_beside_seed", no_timing)
        resume_search(run, predict_ms=underpricing_of(full))
    again = width_baseline(run)
    assert again.knob == record.knob and again.measured_ms == record.measured_ms
    assert again.measured_checks == record.measured_checks


def test_the_check_can_be_turned_off(table, tmp_path):
    config = measured_search(tmp_path, measured_check=False)
    result = start_search(config, tmp_path / "run", predict_ms=underpricing(table))
    assert not checks(result.run) and result.measured is None
    # the baseline's setting is the predicted choice, not timed
    record = width_baseline(result.run)
    predicted = predicted_width_choice(result.run, result.seed.latency_ms,
                                       underpricing(table))
    assert predicted is not None and record.knob == predicted.knob
    assert record.measured_ms is None and record.measured_checks is None
    assert "measured check off (--no-measured-check)" in result.latency_lines[1]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["search"][
        "measured_check"] is False


def test_a_run_made_before_the_check_existed_resumes_without_it():
    old = {"budgets": ["50%"], "racing": True}
    assert SearchConfig.from_json(old).measured_check is False
    assert SearchConfig(budgets=("50%",)).measured_check is True


def test_a_percentage_budget_is_of_the_seed_timed_beside_the_network():
    from types import SimpleNamespace

    from netadapt.search import Budget, Start

    ctx = SimpleNamespace(config=SimpleNamespace(budgets=("50%", "8ms", "params=1M")),
                          budgets=(Budget("latency_ms", 5.0), Budget("latency_ms", 8.0),
                                   Budget("params", 1e6)))
    start = Start(None, 0.9, {"latency_ms": 10.0})  # type: ignore[arg-type]
    # the seed measured at 12 ms beside the network: 50% of it is 6 ms, under 8 ms
    assert measured.measured_budget(ctx, start, 12.0) == pytest.approx(6.0)  # type: ignore[arg-type]
    assert measured.measured_budget(ctx, start, 20.0) == pytest.approx(8.0)  # type: ignore[arg-type]


def test_the_search_command_prints_predicted_beside_measured(table, tmp_path):
    """Through the CLI, with the device's own table: the summary's latency rows and
    lines, whatever the check found."""
    from typer.testing import CliRunner

    from netadapt.cli import app
    from netadapt.spec import save_spec

    from .conftest import write_idx

    save_spec(spec_from_dict(TINY), tmp_path / "tiny.yaml")
    result = CliRunner().invoke(app, [
        "search", "--spec", str(tmp_path / "tiny.yaml"), "--data",
        str(write_idx(tmp_path / "data")), "--device", DEVICE, "--input-size", str(SIZE),
        "--budget", "85%", "--step", "0.1", "--short-term-steps", "2", "--long-term-steps",
        "2", "--seed-steps", "2", "--deploy-steps", "0", "--resolution", "16",
        "--batch-size", "16", "--holdout", "40", "--torch-device", "cpu", "--out",
        str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    last = checks(tmp_path / "run")[-1]
    assert any(x.startswith("latency (ms)") and x.endswith("(predicted)") for x in lines)
    row = next(x for x in lines if x.startswith("  measured (ms)"))
    assert f"{last.measured_ms:.2f}" in row and f"{last.measured_ms / last.vs_seed:.2f}" in row
    assert f"latency: {DEVICE} (" in result.output
    assert f"  result: {last.predicted_ms:.3f} ms predicted (expected " \
        f"{100 * last.expected_vs_seed:.1f}% of the seed " in result.output
    assert f"), {last.measured_ms:.3f} ms measured on {DEVICE}" in result.output
    assert f"budgets met: {last.met} (latency as measured)" in result.output
    assert f"measured check 1: iteration {checks(tmp_path / 'run')[0].iteration}" \
        in result.output


def test_search_takes_the_switch(tmp_path):
    from typer.testing import CliRunner

    from netadapt.cli import app

    result = CliRunner().invoke(app, ["search", "--help"])
    assert "--no-measured-check" in result.output


def test_a_device_that_does_not_answer_stops_the_search_before_any_training(tmp_path):
    """rpi4's shipped profile names no host: the check could never time the result, so
    the search stops at once, in one line that says how to go on."""
    from netadapt.errors import NetadaptError

    config = tiny_search(tmp_path, device="rpi4")
    with pytest.raises(NetadaptError) as error:
        start_search(config, tmp_path / "run", predict_ms=fake_ms)
    message = str(error.value)
    assert "\n" not in message and "--resume" in message and "--no-measured-check" in message
    assert not [r for r in journal(tmp_path / "run") if r["type"] == "seed"]


def a_check(predicted: float, vs_seed: float) -> MeasuredRecord:
    return MeasuredRecord(round=1, iteration=8, device="local", predicted_ms=predicted,
                          measured_ms=vs_seed, vs_seed=vs_seed, vs_seed_se=0.001,
                          anchor="seed predicted", raw_ms=vs_seed, bursts=11, budget_ms=0.5,
                          target_ms=predicted, met=False)


def test_the_tightened_target_follows_the_ratio_then_the_secant_through_two_checks():
    """Large at 64 px, 50% (this machine, 2026-12-07): the loop first stopped at a
    network predicted 0.682 ms that ran at 61.2% of the seed; the ratio rule sent it to
    0.551 ms, which ran at 53.1%. The secant through the two asks for 0.493 ms where the
    ratio rule alone asked for 0.514 (and then took two more checks)."""
    goal = 0.5 * 0.99
    assert measured.tightened(0.682, 0.612, goal, None) == pytest.approx(0.682 * goal / 0.612)
    first = a_check(0.682, 0.612)
    assert measured.tightened(0.551, 0.531, goal, first) == pytest.approx(
        0.551 - (0.531 - goal) / ((0.612 - 0.531) / (0.682 - 0.551)))
    assert measured.tightened(0.551, 0.531, goal, first) < 0.551 * goal / 0.531
    # a steep secant asks for less than the ratio rule: the ratio rule
    assert measured.tightened(0.551, 0.531, goal, a_check(0.6, 0.9)) == pytest.approx(
        0.551 * goal / 0.531)
    # a flat one, or one that rose (noise): the floor, twice the ratio rule's step
    step = 0.551 - 0.551 * goal / 0.531
    floor = 0.551 - step / measured.MIN_SLOPE_SHARE
    assert measured.tightened(0.551, 0.531, goal, a_check(0.682, 0.532)) == \
        pytest.approx(floor)
    assert measured.tightened(0.551, 0.531, goal, a_check(0.682, 0.52)) == \
        pytest.approx(floor)


def test_what_a_network_is_expected_at_is_the_line_its_target_was_set_on():
    """Large at 64 px, 50% (this machine, 2026-12-07, warm timing): checks at 0.624 ms
    predicted (58.0% of the seed measured), then 0.529 (50.9%), then 0.505 ms, which
    ran at 49.8%. The table expected 39.8% of the seed (1.27 ms) of the last; the first
    check alone 46.4%; the secant through both 49.1%."""
    assert measured.expected_vs_seed(0.505, 1.27, []) == pytest.approx(0.505 / 1.27)
    first, second = a_check(0.624, 0.580), a_check(0.529, 0.509)
    assert measured.expected_vs_seed(0.505, 1.27, [first]) == pytest.approx(
        0.580 * 0.505 / 0.624)
    secant = 0.509 + (0.580 - 0.509) / (0.624 - 0.529) * (0.505 - 0.529)
    assert measured.expected_vs_seed(0.505, 1.27, [first, second]) == pytest.approx(secant)
    assert abs(secant / 0.498 - 1) < 0.03
    # what a network at the tightened target is expected at: the goal it was set for
    goal = 0.5 * 0.99
    for before in (first, a_check(0.6, 0.9), a_check(0.624, 0.51), a_check(0.624, 0.49)):
        checks = [before, dataclasses.replace(second, round=2)]
        target = measured.tightened(0.529, 0.509, goal, before)
        assert measured.expected_vs_seed(target, 1.27, checks) == pytest.approx(goal)


def test_a_network_is_timed_beside_a_seed_of_another_input_size_at_its_own():
    """The resolution baseline's network (a smaller input) is timed beside the full-size
    seed, each fed its own input: four times the pixels take longer."""
    from netadapt.latency import load_device
    from netadapt.latency.validate import measure_e2e

    seed = at_size(spec_from_dict(TINY), SIZE)
    small = at_size(seed, SIZE // 2)
    got = measure_e2e(small, load_device("local"), None, bursts=3, rounds=10, beside=seed)
    assert 0 < got["beside_ratio"] < 1


class _FirstCreatedSlow:
    """A timer whose first model of each call runs 3% slow, as an onnxruntime session
    created first does here; every model is otherwise as fast as the next."""

    def check(self) -> None:
        pass

    def time(self, models, rounds, warmup):
        ms = np.ones((len(models), rounds))
        ms[0] *= 1.03
        return ms


def test_a_network_beside_a_copy_of_itself_reads_one_whatever_is_created_first():
    """The check's ratio to the seed must not depend on which session is created first:
    the bursts alternate the order (timers.balanced_order)."""
    from netadapt.latency import load_device
    from netadapt.latency.validate import measure_e2e

    seed = at_size(spec_from_dict(TINY), SIZE)
    copy = dataclasses.replace(seed, name="copy")
    got = measure_e2e(copy, load_device("local"), None, _FirstCreatedSlow(), bursts=12,
                      rounds=5, beside=seed)
    assert got["beside_ratio"] == pytest.approx(1.0, abs=1e-6)  # in one order: 1.03


@pytest.mark.parametrize("n", [2, 3, 10])
def test_balanced_orders_put_every_pair_both_ways_and_every_model_everywhere(n):
    from netadapt.latency.timers import balanced_order

    orders = [balanced_order(n, b) for b in range(2 * n)]
    assert all(sorted(o) == list(range(n)) for o in orders)
    for b in range(0, 2 * n, 2):  # two bursts in a row: each pair once each way
        first, second = orders[b], orders[b + 1]
        for i in range(n):
            for j in range(i + 1, n):
                assert (first.index(i) < first.index(j)) != (second.index(i) < second.index(j))
    for model in range(n):  # 2n bursts: each model twice at every position
        assert sorted(o.index(model) for o in orders) == sorted(list(range(n)) * 2)


def test_the_check_times_the_network_beside_the_seed_and_nothing_else(table):
    """The check, the baselines' checks and the comparison time the same pair: a third
    network in the round-robin (the table's seed, at hand here) changes what the network
    reads, by 2-7% for the search's results at 64 px (docs/latency.md)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from netadapt.latency import load_device
    from netadapt.latency.table import signature
    from netadapt.search import Budget, Start

    class Counting(_FirstCreatedSlow):
        def __init__(self) -> None:
            self.models: list[int] = []

        def time(self, models, rounds, warmup):
            self.models.append(len(models))
            return super().time(models, rounds, warmup)

    seed = dataclasses.replace(at_size(spec_from_dict(TINY), SIZE), num_classes=7)
    assert any(signature(s) == signature(seed) for s in table.seeds)
    ctx = SimpleNamespace(clock=SimpleNamespace(phase=lambda _: nullcontext()),
                          latency=SimpleNamespace(table=table), seed_spec=seed,
                          config=SimpleNamespace(budgets=("80%",)),
                          budgets=(Budget("latency_ms", 0.8),))
    timer = Counting()
    t = measured.time_beside_seed(ctx, load_device(DEVICE), timer,  # type: ignore[arg-type]
                                  seed.with_group_width(seed.groups[0].name, 8),
                                  Start(seed, 0.9, {"latency_ms": 1.0}))
    assert timer.models == [2] * measured.BURSTS
    assert t.vs_seed == pytest.approx(1.0, abs=1e-6) and t.measured_ms == pytest.approx(1.0)
