"""Latency tables: entries, lookup, profiling (real onnxruntime on a tiny spec), resume,
calibration, validation, device errors and every bad input as one clean line."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from typer.testing import CliRunner

from netadapt.cli import app
from netadapt.cost import count_macs
from netadapt.errors import LatencyError
from netadapt.latency import LatencyTable, build, entry_keys, load_device, load_table
from netadapt.latency.build import reference_key
from netadapt.latency.calibrate import (
    calibrate,
    calibration_variants,
    fit_calibration,
    random_variants,
)
from netadapt.latency.coverage import required_keys
from netadapt.latency.estimate import estimate
from netadapt.latency.graphs import entry_model, input_shape, network_model
from netadapt.latency.journal import JOURNAL_COLUMNS, JOURNAL_FILE, ProfileJournal
from netadapt.latency.measure import fast_ms, time_round_robin
from netadapt.latency.table import input_elements_m, table_paths
from netadapt.latency.timers import LocalTimer, parse_perf_test
from netadapt.latency.validate import save_validation, validate
from netadapt.spec import load_spec, save_spec

from .conftest import CONFIGS

cli = CliRunner()
FAST = """name: {name}
description: test device
runner: local
runtime: {{threads: 1, optimization: all}}
protocol: {{rounds: 5, warmup: 1, chunk: 64, max_spread: 0.5, attempts: 2,
           calibration_bursts: 2, calibration_rounds: 8,
           calibration_every: 2, calibration_variants: 4}}
"""


@pytest.fixture
def root(tmp_path, monkeypatch):
    """A checkout-like root with a fast local device, used by the CLI via NETADAPT_HOME."""
    devices = tmp_path / "configs" / "devices"
    devices.mkdir(parents=True)
    (devices / "fast.yaml").write_text(FAST.format(name="fast"))
    for name in ("pixel", "rpi4"):
        (devices / f"{name}.yaml").write_text(
            (Path(CONFIGS) / "devices" / f"{name}.yaml").read_text())
    monkeypatch.setenv("NETADAPT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def built(root, tiny_spec):
    """The fast device's table for the tiny spec, really measured."""
    build.profile(load_device("fast"), [tiny_spec], root=root, progress=False, log=lambda _: None)
    return load_table("fast")


def fake_table(spec, value=1.0) -> LatencyTable:
    entries = {k: value for k in required_keys(spec)}
    meta = {"seeds": [{"spec": spec.to_dict(), "factor": 1.0}], "runtime": {}}
    return LatencyTable("fake", entries, meta)


def one_line_error(result, fragment: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and fragment in lines[-1], result.output
    assert "Traceback" not in result.output
    return lines[-1]


# ---------------------------------------------------------------------- entries
def test_entries_are_stem_blocks_last_conv_and_head(tiny_spec):
    names = [n for n, _ in entry_keys(tiny_spec)]
    assert names == ["stem", "blocks[0]", "blocks[1]", "blocks[2]", "last_conv", "head"]


def test_entry_keys_chain_the_walks_widths_and_sizes():
    large = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    for spec in [large, *random_variants(large, 5)]:
        keys = [k for _, k in entry_keys(spec)]
        for (prev, key), row in zip(zip(keys, keys[1:]), spec.layers[1:]):
            if key.kind != "head":  # the head's input is the pooled 1x1 vector
                assert (key.c_in, key.h, key.w) == (prev.out, row.h, row.w)
        assert keys[-2].h == keys[-2].w == 7 and keys[-1].c_in == spec.last_conv.out


def test_an_entry_key_is_its_spec_row_and_the_table_columns_are_its_fields(tiny_spec):
    """One row schema: a key is the spec.Layer it times with the row's name and derived
    widths blank, and the table's key columns are Layer's fields, in the shipped files'
    order; a table written and read back gives the same keys."""
    import io

    from netadapt.latency.table import COLUMNS, KEY_COLUMNS, _read_csv, frame_to_csv, keys_of
    from netadapt.spec import Layer

    assert KEY_COLUMNS == [f for f in Layer._fields if f not in ("name", "squeeze", "low")]
    assert KEY_COLUMNS == ["kind", "c_in", "exp", "out", "kernel", "stride", "dilation", "se",
                           "act", "expand", "residual", "h", "w", "h_out", "w_out"]
    keys = [k for _, k in entry_keys(tiny_spec)]
    for row, key in zip(tiny_spec.layers, keys):
        assert isinstance(key, Layer) and key.name == "" and key.squeeze == 0
        assert key[1:13] == row[1:13] or key.kind == "head"
    frame = pd.DataFrame([{**k.columns(), "ms": 1.0, "spread": 0.0, "n": 1} for k in keys])
    text = frame_to_csv(frame)
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert keys_of(_read_csv(io.BytesIO(text.encode()))) == keys


def test_network_graph_runs_in_onnxruntime_with_the_specs_output(tiny_spec):
    session = ort.InferenceSession(network_model(tiny_spec))
    (out,) = session.run(None, {"input": np.zeros((1, 3, 32, 32), np.float32)})
    assert out.shape == (1, tiny_spec.num_classes)


def test_entry_graphs_chain_shapes(tiny_spec):
    x = np.zeros((1, 3, 32, 32), np.float32)
    for _, key in entry_keys(tiny_spec):
        assert x.shape == input_shape(key)
        (x,) = ort.InferenceSession(entry_model(key)).run(None, {"input": x})


def test_table_covers_every_width_the_search_can_reach(tiny_spec):
    table = fake_table(tiny_spec)
    for group in tiny_spec.groups:
        for width in range(8, group.width + 1, 8):
            assert table.covers(tiny_spec.with_group_width(group.name, width)), group.name
    for variant in random_variants(tiny_spec, 40):
        assert table.covers(variant)


def test_both_seeds_need_a_grid_measurable_in_minutes():
    large = required_keys(load_spec(CONFIGS / "mobilenetv3_large.yaml"))
    assert len(large) < 35_000  # the full (in, exp, out) grid would be ~60k entries


def test_block_without_residual_is_composed_from_two_exact_slices(tiny_spec):
    table = fake_table(tiny_spec)
    key = dict(entry_keys(tiny_spec))["blocks[1]"]  # 16 -> 48 -> 24, no residual
    table._entries[key._replace(c_in=8, exp=40)] = 3.0  # (c, e, o_seed)
    table._entries[key._replace(exp=40, out=8)] = 5.0  # (c_seed, e, o)
    table._entries[key._replace(exp=40)] = 4.0  # (c_seed, e, o_seed)
    assert table.entry_ms(key._replace(c_in=8, exp=40, out=8)) == 4.0


def test_head_for_another_number_of_classes_swaps_the_last_gemm(tiny_spec):
    table = fake_table(tiny_spec, 1.0)
    for key in list(table._entries):
        if key.kind == "classifier":
            table._entries[key] = key.out / 1000  # linear in classes
    ten = dataclasses.replace(tiny_spec, num_classes=10)
    other = dataclasses.replace(tiny_spec, num_classes=550)
    assert table.covers(ten) and table.covers(other)
    head = {n: ms for n, ms in table.breakdown_ms(other)}["head"]
    assert head == pytest.approx(1.0 - 0.01 + 0.55)  # seed has 10 classes


def _smooth_heads(tiny_spec):
    """A table whose heads cost 0.5 ms + 1 us per unit of width, classifiers 1 us a class."""
    table = fake_table(tiny_spec, 1.0)
    for key in list(table._entries):
        if key.kind == "classifier":
            table._entries[key] = key.out / 1000
        elif key.kind == "head":
            table._entries[key] = 0.5 + key.exp / 1000
    return table, dict(entry_keys(tiny_spec))["head"]


def test_a_head_ignores_one_low_timing_among_its_widths(tiny_spec):
    table, head = _smooth_heads(tiny_spec)
    width = head.exp - 3 * 8
    table._entries[head._replace(exp=width)] = 0.05  # one noisy timing, far too low
    # a neighbour's price, a step of the trend away
    assert table.entry_ms(head._replace(exp=width)) == pytest.approx(0.5 + width / 1000, rel=0.02)
    assert table.entry_ms(head) == pytest.approx(0.5 + head.exp / 1000)  # the seed's: alone


def test_a_head_for_other_classes_ignores_one_low_timing_among_its_widths(tiny_spec):
    table, head = _smooth_heads(tiny_spec)
    width = head.exp - 3 * 8
    table._entries[head._replace(exp=width)] = 0.05
    other = dataclasses.replace(tiny_spec, num_classes=550).with_group_width("head.width", width)
    derived = {n: ms for n, ms in table.breakdown_ms(other)}["head"]
    assert derived == pytest.approx(0.5 + width / 1000 - 0.01 + 0.55, rel=0.02)


def test_a_block_ignores_one_low_timing_among_its_expansions_and_keeps_their_sawtooth(
        tiny_spec):
    """blocks[2] (expansion 72) costs 0.2 ms + 1 us per expansion channel, 0.03 ms more at
    an odd multiple of 8 (the alignment step measured here); one timing far too low."""
    table = fake_table(tiny_spec)
    block = dict(entry_keys(tiny_spec))["blocks[2]"]
    for key in list(table._entries):
        if key._replace(exp=block.exp) == block:
            table._entries[key] = 0.2 + key.exp / 1000 + (0.03 if key.exp % 16 else 0)
    table._entries[block._replace(exp=40)] = 0.01
    # the median of 8, 24, 56 and 72 channels: a trend step away from its true 0.27
    assert table.entry_ms(block._replace(exp=40)) == pytest.approx(0.27, rel=0.07)
    # a multiple of 16 among multiples of 16, not pulled up by its odd neighbours
    assert table.entry_ms(block._replace(exp=48)) == pytest.approx(0.248)


def test_prediction_is_a_sum_of_the_breakdown_times_the_calibration(tiny_spec):
    table = fake_table(tiny_spec, 0.5)
    table._calibration = {k: 1.2 for k in table._calibration}
    assert table.predict_ms(tiny_spec) == pytest.approx(1.2 * 0.5 * 6)
    breakdown = table.breakdown_ms(tiny_spec)
    assert sum(ms for _, ms in breakdown) == pytest.approx(table.predict_ms(tiny_spec))


def test_missing_entry_names_it_and_the_command_that_adds_it(tiny_spec, tiny_dict):
    tiny_dict["head"]["width"] = 256
    from netadapt.spec import spec_from_dict

    wider = spec_from_dict(tiny_dict)
    table = fake_table(tiny_spec)
    assert not table.covers(wider)
    with pytest.raises(LatencyError, match=r"head 64->256->10.*netadapt profile --device fake"):
        table.predict_ms(wider)


def test_prediction_is_cheaper_than_counting_macs(tiny_spec):
    """>= 10,000 predictions/s in practice (benchmarks/bench_latency.py prints the rate);
    here only a relation: a lookup costs no more than the analytic MAC count."""
    large = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    variants = random_variants(large, 300)
    table = fake_table(large)
    table.predict_ms(variants[0])

    def rate(fn) -> float:
        t0 = time.perf_counter()
        for v in variants:
            fn(v)
        return time.perf_counter() - t0

    # Python's cyclic GC scans every live object of the process, so what earlier tests
    # left alive (e.g. a 100k-entry table) would be timed too: time without it.
    gc.collect()
    gc.disable()
    try:
        macs = min(rate(count_macs) for _ in range(3))
        # first pass of each fresh table: no spec cache
        predict = min(rate(fake_table(large).predict_ms) for _ in range(3))
    finally:
        gc.enable()
    assert predict < 2 * macs


# ---------------------------------------------------------------------- profiling
def test_profile_builds_a_table_that_covers_the_seed(built, tiny_spec):
    assert built.covers(tiny_spec) and not built.is_estimate
    meta = built.meta
    assert meta["runtime"]["onnxruntime"] == ort.__version__ and meta["runtime"]["threads"] == 1
    assert meta["seeds"][0]["name"] == "tiny" and meta["seeds"][0]["factor"] > 0
    assert meta["cpu"] and meta["date"]
    seed = meta["seeds"][0]
    expected = seed["factor"] * (seed["table_sum_ms"]
                                 - seed["boundary_ms_per_m"] * input_elements_m(tiny_spec)
                                 - seed["per_entry_ms"] * len(entry_keys(tiny_spec)))
    assert built.predict_ms(tiny_spec) == pytest.approx(expected, rel=1e-3)
    folder = table_paths("fast")[0].parent
    assert not [p for p in ProfileJournal(folder).paths if p.exists()]  # done: removed


def test_calibration_fits_what_entries_timed_alone_pay_per_input_element_and_per_entry():
    """end to end = factor x (table sum - boundary x input elements - per_entry x
    entries): recovered from enough networks; with few, the factor alone; a cost that
    would make an entry cheaper alone than in the network is dropped from the fit."""
    rng = np.random.default_rng(0)
    x = rng.uniform(3, 9, 25)
    e = x * rng.uniform(0.2, 0.4, 25)  # correlated with the sum, as real variants are
    n = np.full(25, 18.0)  # one seed structure: every variant has the seed's entries
    w = np.ones(25)
    y = 0.9 * (x - 0.8 * e - 0.05 * n)
    assert fit_calibration(x, e, n, y, w) == pytest.approx((0.9, 0.8, 0.05), rel=1e-9)
    y2 = 0.9 * (x - 0.8 * e)
    assert fit_calibration(x, e, n, y2, w) == pytest.approx((0.9, 0.8, 0.0), abs=1e-9)
    factor, boundary, per_entry = fit_calibration(x[:4], e[:4], n[:4], y[:4], w[:4])
    assert boundary == per_entry == 0 and factor == pytest.approx(float(
        np.sum(x[:4] / y[:4]) / np.sum((x[:4] / y[:4]) ** 2)))
    assert fit_calibration(x, e, n, 0.9 * (x + 0.5 * e), w)[1] == 0
    assert fit_calibration(x, e, n, 0.9 * (x - 0.8 * e + 0.05 * n), w)[2] == 0


def test_calibration_variants_reach_the_thin_networks_low_budgets_produce(tiny_spec):
    """A third of the calibration networks as the search makes them early, a third deep
    (a factor fitted to mild cuts alone mispriced thin networks by 15-40%, README), a
    third lopsided: a few groups cut deep, the others untouched, as a search ends."""
    variants = calibration_variants(tiny_spec, 24)
    assert len(variants) == len({v.name for v in variants}) == 24
    widths = {g.name: g.width for g in tiny_spec.groups}

    def share(v):
        return sum(g.width for g in v.groups) / sum(widths.values())
    mild, deep = [share(v) for v in variants[:8]], [share(v) for v in variants[8:16]]
    assert min(mild) > 0.25 and np.mean(deep) < np.mean(mild)
    lopsided = variants[16:]
    assert all(v.name.endswith("_lopsided") for v in lopsided)
    for v in lopsided:  # every group untouched or at most a quarter of its width
        cut = [g for g in v.groups if g.width != widths[g.name]]
        assert cut and all(g.width <= max(8, widths[g.name] // 4) for g in cut)
    assert any(len([g for g in v.groups if g.width == widths[g.name]]) >= 3 for v in lopsided)


def test_two_timing_processes_build_the_same_table(built, root, tiny_spec):
    """Chunks timed in two worker processes, journaled by this one: the same entries,
    ranked as the one-process table ranks them."""
    two = dataclasses.replace(load_device("fast"), name="fast2", protocol=dataclasses.replace(
        load_device("fast").protocol, processes=2))
    (root / "configs" / "devices" / "fast2.yaml").write_text(FAST.format(name="fast2"))
    result = build.profile(two, [tiny_spec], root=root, progress=False, log=lambda _: None)
    table = load_table("fast2")
    assert set(table._entries) == set(built._entries) and result.measured >= len(built._entries)
    assert table.meta["profiling"]["last_run_processes"] == 2
    # the same ranking of entries (they span widths 8-64 and three input sizes); the
    # two tables are timed minutes apart on a shared machine, so only loosely the same ms
    keys = sorted(built._entries)
    one = np.log([built._entries[k] for k in keys])
    two = np.log([table._entries[k] for k in keys])
    assert np.corrcoef(one, two)[0, 1] > 0.9


def interrupt_profile(root: Path, spec) -> list[dict]:
    """Profile the fast device for ``spec`` until the third chunk of entries, which is
    interrupted; the journal's records."""
    device = load_device("fast")

    class Interrupting(LocalTimer):
        calls = 0

        def time(self, models, rounds, warmup):
            if len(models) > 2:  # a chunk of entries, not a burst of the seed
                Interrupting.calls += 1
                if Interrupting.calls == 3:
                    raise KeyboardInterrupt
            return super().time(models, rounds, warmup)

    with pytest.raises(KeyboardInterrupt):
        build.profile(device, [spec], root=root, progress=False, log=lambda _: None,
                      timer=Interrupting(device))
    journal = table_paths("fast")[0].parent / JOURNAL_FILE
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len([r for r in records if r["type"] == "attempt"]) == 2 * device.protocol.chunk
    return records


def quiet_attempts(records: list[dict]) -> int:
    """Attempts that need no repeat."""
    spread = load_device("fast").protocol.max_spread
    return sum(r["spread"] <= spread for r in records if r["type"] == "attempt")


def test_interrupted_profile_continues_where_it_stopped(root, tiny_spec):
    records = interrupt_profile(root, tiny_spec)
    with open(table_paths("fast")[0].parent / JOURNAL_FILE, "a") as f:
        f.write('{"type": "attempt", "kind": "bl')  # a kill in the middle of a line
    result = build.profile(load_device("fast"), [tiny_spec], root=root, progress=False,
                           log=lambda _: None)
    total = len(required_keys(tiny_spec))
    # noisy ones get retried
    assert result.measured - result.remeasured == total - quiet_attempts(records)
    assert load_table("fast").covers(tiny_spec)


def test_a_profile_interrupted_by_netadapt_0_1_0_continues_from_its_csv_journal(
        root, tiny_spec, monkeypatch):
    """Before the profile journal was JSON lines, an interrupted profile left
    journal.csv (attempts), journal_seeds.csv (seed ratios) and journal.json (the
    reference): all three are read, and removed once the table is written."""
    records = interrupt_profile(root, tiny_spec)
    folder = table_paths("fast")[0].parent
    (folder / JOURNAL_FILE).unlink()
    attempts = [r for r in records if r["type"] == "attempt"]
    (folder / "journal.csv").write_text(  # as 0.1.0 wrote it, torn by a kill
        ",".join(JOURNAL_COLUMNS) + "\n" + "".join(
            ",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c])
                     for c in JOURNAL_COLUMNS) + "\n" for r in attempts) + "block,16,48")
    ratios = [r["ratio"] for r in records if r["type"] == "ratio"]
    assert ratios
    (folder / "journal_seeds.csv").write_text("".join(f"tiny,{v:.6g}\n" for v in ratios))
    # another reference than this run would pick: the one the legacy attempts name wins
    other = next(k for _, k in entry_keys(tiny_spec)
                 if k.kind == "block" and k != reference_key(tiny_spec))
    (folder / "journal.json").write_text(json.dumps(
        {"reference": other.columns(), "fresh": False, "seeds": [tiny_spec.to_dict()]}))
    earlier: list = []

    def spy(table, seed, timer, ref_model, base_ms, proto, earlier_ratios=(), variants=None):
        earlier.append(list(earlier_ratios))
        return calibrate(table, seed, timer, ref_model, base_ms, proto, earlier_ratios,
                         variants)

    monkeypatch.setattr(build, "calibrate", spy)
    result = build.profile(load_device("fast"), [tiny_spec], root=root, progress=False,
                           log=lambda _: None)
    total = len(required_keys(tiny_spec))
    assert result.measured - result.remeasured == total - quiet_attempts(records)
    table = load_table("fast")
    assert table.covers(tiny_spec) and table.meta["reference"]["key"] == other.columns()
    assert earlier[0][:len(ratios)] == pytest.approx(ratios, rel=1e-5)
    assert not [p for p in ProfileJournal(folder).paths if p.exists()]


def test_profile_extends_a_table_with_another_seed(built, tiny_spec, tiny_dict):
    from netadapt.spec import spec_from_dict

    tiny_dict["name"] = "tiny_wide"
    tiny_dict["last_conv"]["out"] = 96
    wide = spec_from_dict(tiny_dict)
    assert not built.covers(wide)
    result = build.profile(load_device("fast"), [wide], root=built_root(), progress=False,
                           log=lambda _: None)
    table = load_table("fast")
    assert table.covers(wide) and table.covers(tiny_spec)
    assert result.measured < len(required_keys(wide))  # shared entries are not re-timed
    assert {s["name"] for s in table.meta["seeds"]} == {"tiny", "tiny_wide"}


def built_root() -> Path:
    return Path(os.environ["NETADAPT_HOME"])


@pytest.mark.parametrize("clock", ["wall", "thread"])
def test_round_robin_timing_ranks_large_above_small(clock):
    large, small = (load_spec(CONFIGS / f"mobilenetv3_{n}.yaml") for n in ("large", "small"))
    shape = (1, 3, 224, 224)
    ms = time_round_robin([(network_model(large), shape), (network_model(small), shape)],
                          {"threads": 1, "clock": clock}, rounds=10, warmup=1)
    fast = fast_ms(ms)
    assert fast[0] > fast[1] > 0


def test_validate_reports_error_statistics_and_saves_them(built, tiny_spec):
    summary, frame = validate(built, load_device("fast"), tiny_spec, 8, progress=False,
                              rounds=5)
    assert len(frame) == 8 and set(frame.columns) >= {"predicted_ms", "measured_ms", "error"}
    for field in ("median_abs_error", "max_abs_error", "within_5pct", "within_10pct",
                  "spearman"):
        assert field in summary
    saved = save_validation("fast", summary, frame)
    assert json.loads(saved.read_text())["variants"] == 8


def test_validate_from_the_cli_reports_and_saves_each_seed_with_its_clock(built, tiny_spec,
                                                                          tmp_path):
    path = tmp_path / "tiny.yaml"
    save_spec(tiny_spec, path)
    result = cli.invoke(app, ["profile", "--device", "fast", "--spec", str(path),
                              "--validate", "2", "--clock", "thread"])
    assert result.exit_code == 0, result.output
    assert "tiny on fast" in result.output and "2 variants, median |error|" in result.output
    saved = table_paths("fast")[0].parent / "validation_tiny_thread.json"
    assert json.loads(saved.read_text())["clock"] == "thread"


def test_estimate_reproduces_the_published_numbers_it_was_fitted_to(built, tiny_spec,
                                                                       tiny_dict, root):
    from netadapt.latency.table import read_table_files
    from netadapt.spec import spec_from_dict

    tiny_dict["name"] = "tiny_narrow"
    tiny_dict["blocks"][1]["exp"] = 24
    narrow = spec_from_dict(tiny_dict)
    frame, _ = read_table_files("fast")
    ratio = built.predict_ms(narrow) / built.predict_ms(tiny_spec)
    published = {"a": 10.0, "b": 10.0 * ratio}
    estimate(built, load_device("pixel"), published, {"a": tiny_spec, "b": narrow}, frame,
             root=root)
    pixel = load_table("pixel")
    assert pixel.is_estimate and "ESTIMATE" in pixel.label()
    assert pixel.predict_ms(tiny_spec) == pytest.approx(10.0, rel=0.1)


# ---------------------------------------------------------------------- devices
def test_pixel_without_adb_fails_at_once_saying_what_to_connect(root, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    line = one_line_error(cli.invoke(app, ["profile", "--device", "pixel"]), "adb not found")
    assert "connect the phone" in line


def test_pixel_with_no_phone_attached_says_to_connect_it(root, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text("#!/bin/sh\necho 'List of devices attached'\necho\n")
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    line = one_line_error(cli.invoke(app, ["profile", "--device", "pixel"]), "no phone attached")
    assert "USB debugging" in line


def test_rpi4_without_host_says_to_configure_it(root):
    one_line_error(cli.invoke(app, ["profile", "--device", "rpi4"]), "no host configured")


def test_unknown_device_lists_the_known_ones(root):
    line = one_line_error(cli.invoke(app, ["latency", str(CONFIGS / "mobilenetv3_small.yaml"),
                                           "--device", "iphone"]), "unknown device 'iphone'")
    assert "fast" in line and "pixel" in line


def test_perf_test_output_is_parsed_per_round_and_model():
    out = "\n".join(f"NETADAPT {r} {i}\nMin Latency: {0.001 * (i + 1)} s\nP50 Latency: 1 s"
                    for r in (1, 2) for i in range(3))
    ms = parse_perf_test(out, 3, 2)
    assert ms.shape == (3, 2) and ms[2, 1] == pytest.approx(3.0)


# ---------------------------------------------------------------------- bad tables
def test_missing_table_says_how_to_build_it(root):
    with pytest.raises(LatencyError, match="netadapt profile --device fast"):
        load_table("fast")


def test_truncated_csv_is_refused_and_left_as_it_was(built, tiny_spec):
    csv_path, _ = table_paths("fast")
    text = csv_path.read_bytes()
    csv_path.write_bytes(text[: len(text) // 2])
    spec_file = built_root() / "tiny.yaml"
    save_spec(tiny_spec, spec_file)
    line = one_line_error(cli.invoke(app, ["latency", str(spec_file), "--device", "fast"]),
                          "truncated")
    assert "netadapt profile --device fast" in line
    assert csv_path.read_bytes() == text[: len(text) // 2]


def test_table_from_another_onnxruntime_version_is_refused(built):
    _, meta_path = table_paths("fast")
    meta = json.loads(meta_path.read_text())
    meta["runtime"]["onnxruntime"] = "0.0.1"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(LatencyError, match=r"onnxruntime 0\.0\.1.*--fresh"):
        load_table("fast")


def test_latency_for_a_spec_the_table_lacks_names_the_entry(built):
    line = one_line_error(cli.invoke(app, ["latency", str(CONFIGS / "mobilenetv3_small.yaml"),
                                           "--device", "fast"]), "has no entry for")
    assert "stem" in line and "netadapt profile --device fast" in line


# ---------------------------------------------------------------------- CLI
def test_latency_command_prints_breakdown_and_measures(built, tiny_spec):
    spec_file = built_root() / "tiny.yaml"
    save_spec(tiny_spec, spec_file)
    result = cli.invoke(app, ["latency", str(spec_file), "--device", "fast", "--measure"])
    assert result.exit_code == 0, result.output
    for name in ("stem", "blocks[2]", "head", "predicted:", "measured:", "error"):
        assert name in result.output


def test_devices_lists_profiles_and_tables(built):
    result = cli.invoke(app, ["devices"])
    assert result.exit_code == 0, result.output
    assert "fast" in result.output and "seeds tiny" in result.output
    assert "no table (netadapt profile --device rpi4)" in result.output


# ---------------------------------------------------------------------- shipped tables
@pytest.fixture(scope="module")
def shipped():
    from netadapt.resources import shipped_dir

    return {name: load_table(name, root=shipped_dir()) for name in ("pixel", "local-ref")}


@pytest.mark.parametrize("seed", ["mobilenetv3_large", "mobilenetv3_small"])
def test_shipped_tables_cover_every_single_group_reduction_of_both_seeds(shipped, seed):
    spec = load_spec(CONFIGS / f"{seed}.yaml")
    for table in shipped.values():
        for group in spec.groups:
            for width in range(8, group.width + 1, 8):
                assert table.covers(spec.with_group_width(group.name, width)), group.name
        assert table.covers(dataclasses.replace(spec, num_classes=10))  # Fashion-MNIST


def test_shipped_pixel_table_is_an_estimate_matching_the_published_latencies(shipped):
    pixel = shipped["pixel"]
    assert pixel.is_estimate and "ESTIMATE" in pixel.label()
    assert not shipped["local-ref"].is_estimate
    for name, published in [("large", 51.0), ("large_075", 39.0), ("small", 15.8),
                            ("small_075", 12.8)]:
        spec = load_spec(CONFIGS / f"mobilenetv3_{name}.yaml")
        assert pixel.predict_ms(spec) == pytest.approx(published, rel=0.10), name


def test_ctrl_c_during_profile_says_how_to_continue(root, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "profile", interrupted)
    result = cli.invoke(app, ["profile", "--device", "fast", "--spec",
                              str(CONFIGS / "mobilenetv3_small.yaml")])
    assert result.exit_code == 130
    assert "run the same command to continue" in result.output


# ---------------------------------------------------------------------- input sizes
def test_a_table_extends_to_other_input_sizes(built, tiny_spec):
    from netadapt.latency.coverage import multiplier_specs
    from netadapt.spec import at_size

    at48 = at_size(tiny_spec, 48)
    assert not built.covers(at48)
    line = str(pytest.raises(LatencyError, built.predict_ms, at48).value)
    assert "--input-size 48" in line and "netadapt profile --device fast" in line
    result = build.profile(load_device("fast"), [tiny_spec], root=built_root(), progress=False,
                           log=lambda _: None, input_sizes=[48], multiplier_sizes=[64])
    table = load_table("fast")
    head_keys = {k for k in required_keys(tiny_spec) if k.kind in ("head", "classifier")}
    assert result.measured - result.remeasured < len(required_keys(at48)) - len(head_keys) + 60
    # every width at 48 px, the seed and its multipliers at 64 px, 32 px kept
    assert table.covers(tiny_spec) and table.covers(at48)
    assert all(table.covers(v) for v in random_variants(at48, 10))
    at64 = at_size(tiny_spec, 64)
    assert all(table.covers(m) for m in multiplier_specs(at64))
    assert table.covers(dataclasses.replace(at64, num_classes=100))
    assert not table.covers(random_variants(at64, 1)[0])
    # one calibration per structure and size; larger inputs take longer
    seeds = {s["name"]: s for s in table.meta["seeds"]}
    assert {n: s["coverage"] for n, s in seeds.items()} == {
        "tiny": "grid", "tiny@48": "grid", "tiny@64": "multipliers"}
    assert len({s["signature"] for s in seeds.values()}) == 3
    assert table.predict_ms(tiny_spec) < table.predict_ms(at48) < table.predict_ms(at64)


def test_a_table_covers_the_sizes_the_resolution_baseline_tries_below_its_grid(root,
                                                                                tiny_spec):
    """Deployed at 64 px, the resolution baseline tries 48 and 32 px: a profile at 64 px
    covers the seed there (and its multipliers), so the baseline finds its setting."""
    from netadapt.baseline import resolution
    from netadapt.latency.build import targets_of
    from netadapt.search import Budget
    from netadapt.spec import at_size

    at64 = at_size(tiny_spec, 64)
    large = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    assert [(s.input_size[0], c) for s, c in targets_of([large], [64], [96])] == [
        (64, "grid"), (96, "multipliers"), (48, "multipliers"), (32, "multipliers")]
    build.profile(load_device("fast"), [tiny_spec], root=root, progress=False,
                  log=lambda _: None, input_sizes=[64], multiplier_sizes=[])
    table = load_table("fast")
    assert table.covers(at_size(tiny_spec, 48)) and table.covers(tiny_spec)
    budget = (Budget("latency_ms", 0.9 * table.predict_ms(at64)),)
    found = resolution(at64, budget, table.predict_ms)
    assert found is not None and found.knob in ("48x48", "32x32")


def test_multiplier_coverage_is_the_seed_and_its_scaled_networks():
    from netadapt.latency.coverage import multiplier_specs
    from netadapt.spec import at_size

    large = at_size(load_spec(CONFIGS / "mobilenetv3_large.yaml"), 160)
    keys = required_keys(large, "multipliers")
    assert len(keys) < 150  # against ~30,000 for every width
    assert all(k.kind in ("head", "classifier") or k.h <= 160 for k in keys)
    assert [m.name for m in multiplier_specs(large)] == [
        "mobilenetv3_large@160", "mobilenetv3_large@160_x0.75", "mobilenetv3_large@160_x0.5",
        "mobilenetv3_large@160_x0.35"]


def test_entry_weights_are_appended_raw_and_parse_as_onnx(tiny_spec):
    import onnx
    from onnx import numpy_helper

    key = dict(entry_keys(tiny_spec))["blocks[2]"]
    model = onnx.load_from_string(entry_model(key))
    shapes = [tuple(i.dims) for i in model.graph.initializer[::2]]  # weights, then biases
    assert shapes == [(72, 24, 1, 1), (72, 1, 5, 5), (24, 72, 1, 1), (72, 24, 1, 1),
                      (24, 72, 1, 1)]  # expand, depthwise, SE down and up, project
    weights = numpy_helper.to_array(model.graph.initializer[2])
    assert weights.dtype == np.float32 and 0.05 < weights.std() < 0.5  # ~ fan_in ** -0.5


def test_bad_multiplier_sizes_are_one_line(root):
    one_line_error(cli.invoke(app, ["profile", "--device", "fast", "--multiplier-sizes",
                                    "96,abc"]), "--multiplier-sizes: expected sizes")
    one_line_error(cli.invoke(app, ["profile", "--device", "fast", "--multiplier-sizes",
                                    "96,8"]), "--multiplier-sizes: sizes must be >= 16")


def test_a_bad_clock_is_one_line(root):
    one_line_error(cli.invoke(app, ["profile", "--device", "fast", "--clock", "cpu"]),
                   "--clock: must be wall or thread")


def test_recalibrate_times_no_entry_and_records_the_clock(built, tiny_spec):
    device = load_device("fast")
    result = build.profile(device, [tiny_spec], root=built_root(), progress=False,
                           log=lambda _: None, recalibrate=True)
    assert result.measured == 0 and [c["seed"] for c in result.calibration] == ["tiny"]
    assert load_table("fast").meta["seeds"][0]["clock"] == "wall"


def test_retime_times_a_specs_entries_again_and_keeps_the_others(root, tiny_spec):
    """--retime: every entry the spec needs at its sizes is timed again and replaces the
    table's value; entries only other seeds or sizes need keep theirs."""
    from netadapt.spec import at_size

    device = load_device("fast")
    build.profile(device, [tiny_spec], root=root, progress=False, log=lambda _: None,
                  input_sizes=[32, 48], multiplier_sizes=[])
    before = load_table("fast")
    result = build.profile(device, [tiny_spec], root=root, progress=False,
                           log=lambda _: None, input_sizes=[48], multiplier_sizes=[],
                           retime=True)
    after = load_table("fast")
    again = (required_keys(at_size(tiny_spec, 48))
             | required_keys(at_size(tiny_spec, 32), "multipliers"))
    kept = required_keys(tiny_spec) - again
    assert kept and result.measured >= len(again)
    assert len(after) >= len(before)  # the x0.35-x0.75 networks at 32 px may add a few
    assert all(after._timed(k) == before._timed(k) for k in kept)  # timings, not windows
    assert sum(after.entry_ms(k) != before.entry_ms(k) for k in again) > len(again) // 2
    assert "tiny@48" in [c["seed"] for c in result.calibration]
