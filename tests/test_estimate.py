"""The phone ESTIMATE: a few analytic terms per entry, non-negative coefficients fitted to
published end-to-end latencies and to a size sweep's ratios, leave-one-out and
leave-one-size-out validation, held-out latencies checked and never fitted, entries at
any input size the source table covers (composed entries priced exactly), heads for any
class count priced directly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from netadapt.cli import app
from netadapt.latency import LatencyTable, load_device, load_table
from netadapt.latency.coverage import required_keys
from netadapt.latency.estimate import (
    PHONE_TERMS,
    Published,
    estimate,
    fit_phone_model,
    nnls,
    published_points,
    size_sweep_points,
)
from netadapt.latency.graphs import BLANK, EntryKey, entry_keys
from netadapt.latency.table import COLUMNS, KEY_COLUMNS
from netadapt.latency.terms import network_terms, term_values
from netadapt.resources import shipped_dir
from netadapt.spec import at_size as spec_at_size
from netadapt.spec import load_spec

from .conftest import CONFIGS

SHIPPED = shipped_dir()  # configs/ and latency_tables/ as netadapt ships them

# ms per MMAC, per M SE elements, per M op positions, per M feature-map conv weights, per
# M elements of convs larger than the cache
TRUE = {"mmacs": 0.13, "se_m_elements": 10.0, "op_m_positions": 45.0, "map_weights_m": 2.0,
        "spilled_m_elements": 0.4}
TRUE_COEF = np.array([TRUE[t] for t in PHONE_TERMS])


def source_table(specs) -> tuple[LatencyTable, pd.DataFrame]:
    """A measured-looking source table holding every entry the specs can reach."""
    keys = sorted(set().union(*(required_keys(s) for s in specs)))
    frame = pd.DataFrame([[getattr(k, c) for c in KEY_COLUMNS] + [1.0, 0.01, 20] for k in keys],
                         columns=COLUMNS)
    meta = {"device": "src", "runtime": {"onnxruntime": "1.0", "threads": 1},
            "reference": {"key": keys[0].columns(), "base_ms": 1.0},
            "seeds": [{"name": s.name, "signature": "", "spec": s.to_dict(), "factor": 0.7}
                      for s in specs]}
    return LatencyTable("src", {k: 1.0 for k in keys}, meta), frame


def synthetic_points(specs, coef=TRUE_COEF) -> list[Published]:
    return [Published(s.name, s, float(network_terms(s, PHONE_TERMS) @ coef)) for s in specs]


def at_size(spec, size):
    return dataclasses.replace(spec, input_size=(size, size), name=f"{spec.name}_{size}")


def test_a_model_with_the_true_terms_is_recovered_and_predicts_left_out_points(tiny_spec):
    # at 256 px the first convs' tensors exceed the cache, at 32-64 px none do
    specs = [at_size(tiny_spec.scaled(m), size) for m in (1.0, 0.5) for size in (64, 256)]
    specs += [tiny_spec.scaled(0.75), at_size(tiny_spec.scaled(0.75), 256)]
    fit = fit_phone_model(synthetic_points(specs))
    assert fit.coef == pytest.approx(TRUE_COEF, rel=1e-6)
    assert np.abs(fit.loo_errors).max() < 1e-6


def synthetic_sweep(coef=TRUE_COEF, scale=1.17) -> dict[str, dict[int, float]]:
    """MobileNetV2's size sweep as the model prices it, on another runtime version
    (every latency x ``scale``: the ratios are the model's)."""
    from netadapt.latency.estimate import keys_terms, mobilenet_v2_keys

    return {f"mobilenet_v2 x{a}": {size: scale * float(keys_terms(
        mobilenet_v2_keys(a, size), PHONE_TERMS) @ coef) for size in (96, 160, 224)}
            for a in (1.0, 0.5)}


def test_a_size_sweep_fixes_what_a_smaller_input_does_not_save(tiny_spec):
    """At one input size, conv weights (paid whatever the size) and pointwise MACs both
    grow with the width squared: the width sweep alone cannot tell them apart. The size
    sweep's ratios can, whatever its runtime's overall speed."""
    widths = synthetic_points([tiny_spec.scaled(m) for m in (1.0, 0.75, 0.5, 0.35)])
    sweep = size_sweep_points(synthetic_sweep())
    fit = fit_phone_model(widths, sweep=sweep)
    assert fit.coef == pytest.approx(TRUE_COEF, rel=1e-4)
    assert np.abs(fit.sweep_loso_errors).max() < 1e-4 and len(fit.sweep) == 4
    assert fit.to_dict()["size_sweep"]["leave_size_out_max_abs_error"] < 1e-4
    # a size sweep the model cannot follow shows in the size left out
    off = synthetic_sweep()
    off["mobilenet_v2 x1.0"][96] *= 1.2
    bad = fit_phone_model(widths, sweep=size_sweep_points(off))
    assert np.abs(bad.sweep_loso_errors).max() > 0.05


def test_a_bad_size_sweep_names_the_form():
    from netadapt.errors import LatencyError

    for sweep in ({"resnet50 x1.0": {224: 5.0, 96: 1.0}}, {"mobilenet_v2 x1.0": {224: 5.0}},
                  {"mobilenet_v2 xone": {224: 5.0, 96: 1.0}}):
        with pytest.raises(LatencyError, match="NETWORK xMULT"):
            size_sweep_points(sweep)


def test_leave_one_out_shows_the_point_the_model_cannot_explain(tiny_spec):
    specs = [at_size(tiny_spec.scaled(m), size) for m in (1.0, 0.5) for size in (32, 64)]
    points = synthetic_points(specs + [tiny_spec.scaled(0.75)])
    points[2] = dataclasses.replace(points[2], ms=points[2].ms * 1.3)  # 30% off the model
    fit = fit_phone_model(points)
    # left out, it is predicted by the exact fit to the others; fitted, it pulls the fit
    assert fit.loo_errors[2] == pytest.approx(1 / 1.3 - 1, abs=1e-6)
    assert abs(fit.fit_errors[2]) < abs(fit.loo_errors[2])


def test_coefficients_are_never_negative():
    a = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    b = np.array([3.0, 2.0, 1.0])  # unconstrained: a negative slope
    coef = nnls(a, b)
    assert (coef >= 0).all() and coef[1] == 0 and coef[0] == pytest.approx(2.0)


def block(**fields) -> EntryKey:
    """A 5x5 block with an expansion, SE, h-swish and a residual, at 14x14."""
    key = BLANK._replace(kind="block", c_in=40, exp=240, out=40, kernel=5, stride=1,
                         dilation=1, se=True, act="hswish", expand=True, residual=True,
                         h=14, w=14)
    return key._replace(**fields)


def phone_terms(key) -> dict[str, float]:
    return dict(zip(PHONE_TERMS, term_values(key, PHONE_TERMS)))


def test_an_se_blocks_1x1_convs_cost_their_macs_not_a_feature_map_convs_weights():
    """The SE's two 1x1 convs run on pooled 1x1 features: matrix-vector products, priced
    like the head's FC layers by their MACs; its pool and rescale sweep the expanded map,
    per position and per element."""
    with_se, without = phone_terms(block()), phone_terms(block(se=False))
    extra = {t: with_se[t] - without[t] for t in PHONE_TERMS}
    assert extra["mmacs"] == pytest.approx(2 * 240 * 64 / 1e6)  # 240 -> squeeze 64 -> 240
    assert extra["map_weights_m"] == 0
    assert extra["op_m_positions"] == pytest.approx(2 * 14 * 14 / 1e6)  # pool, rescale
    assert extra["se_m_elements"] == pytest.approx(240 * 14 * 14 / 1e6)
    head = next(k for _, k in entry_keys(load_spec(CONFIGS / "mobilenetv3_large.yaml"))
                if k.kind == "head")
    assert [t for t, v in phone_terms(head).items() if v] == ["mmacs"]  # like the SE's


def test_op_positions_count_every_sweep_of_a_feature_map():
    """Expansion conv + h-swish at the input size; depthwise + h-swish, SE pool + rescale,
    projection and residual add at the output size. ReLU is fused into the conv."""
    positions = phone_terms(block())["op_m_positions"]
    assert positions == pytest.approx((2 * 14 * 14 + 6 * 14 * 14) / 1e6)
    strided = block(stride=2, residual=False, act="relu", se=False)
    assert phone_terms(strided)["op_m_positions"] == pytest.approx((14 * 14 + 2 * 7 * 7) / 1e6)


def test_only_convs_whose_tensors_exceed_the_cache_count_as_spilled():
    """Large's second block at 224 px (16 -> 64 channels at 112x112: 4 MB a conv) spills
    all three convs; at 96 px (0.7 MB) none."""
    key = block(c_in=16, exp=64, out=24, kernel=3, stride=2, se=False, act="relu",
                residual=False, h=112, w=112)
    expected = (16 + 64) * 112**2 + 64 * (112**2 + 56**2) + (64 + 24) * 56**2
    assert phone_terms(key)["spilled_m_elements"] == pytest.approx(expected / 1e6)
    assert phone_terms(key._replace(h=48, w=48))["spilled_m_elements"] == 0


@pytest.mark.parametrize("fields", [{}, {"se": False, "act": "relu", "kernel": 3},
                                    {"stride": 2, "h": 28, "w": 28},
                                    {"exp": 280, "h": 28, "w": 28}])  # 80 spills, 24 not
def test_composed_blocks_are_priced_exactly(fields):
    """The table composes a block without residual from two slices,
    T(c,e,o) = T(c,e,o0) + T(c0,e,o) - T(c0,e,o0): exact when every term is."""
    key = block(residual=False, **fields)
    c, o, c0, o0 = 24, 24, 80, 80

    def terms(c_in, out):
        return np.array(list(phone_terms(key._replace(c_in=c_in, out=out)).values()))

    composed = terms(c, o0) + terms(c0, o) - terms(c0, o0)
    assert composed == pytest.approx(terms(c, o), rel=1e-12, abs=1e-15)


def test_published_labels_take_a_width_and_an_input_size():
    (point,) = published_points({"configs/mobilenetv3_small.yaml x0.5 @128": 3.0},
                                root=SHIPPED)
    small = load_spec(CONFIGS / "mobilenetv3_small.yaml")
    assert point.spec == spec_at_size(small.scaled(0.5), 128)
    assert point.spec.input_size == (128, 128) and point.spec.name.endswith("@128")


def test_estimate_prices_entries_at_every_input_size_the_source_covers(root, tiny_spec):
    """A source table at two input sizes gives an estimate that predicts both, with the
    model's own value, and more for the larger input."""
    small, large = tiny_spec, at_size(tiny_spec, 64)
    source, frame = source_table([small, large])
    points = synthetic_points([s.scaled(m) for s in (small, large) for m in (1.0, 0.75, 0.5)])
    fit = estimate(source, load_device("pixel"), {p.label: p.ms for p in points},
                   {p.label: p.spec for p in points}, frame, root=root)
    table = load_table("pixel")
    assert table.is_estimate and "ESTIMATE" in table.label() and "leave-one-out" in table.label()
    for spec in (small, large, small.scaled(0.75), large.with_group_width("head.width", 64)):
        expected = float(network_terms(spec, PHONE_TERMS) @ fit.coef)
        assert table.predict_ms(spec) == pytest.approx(expected, rel=1e-4), spec.name
    assert table.predict_ms(large) > 2 * table.predict_ms(small)  # 4x the pixels
    saved = table.meta["estimate_fit"]
    assert saved["leave_one_out_max_abs_error"] < 1e-6 and len(saved["points"]) == 6
    assert "held_out" not in saved  # none given


def test_held_out_points_are_checked_never_fitted(tiny_spec):
    """A held-out point far off the model changes no coefficient; its error shows."""
    widths = synthetic_points([tiny_spec.scaled(m) for m in (1.0, 0.75, 0.5, 0.35)])
    sweep = size_sweep_points(synthetic_sweep())
    plain = fit_phone_model(widths, sweep=sweep)
    (right,) = synthetic_points([at_size(tiny_spec, 64)])
    wrong = dataclasses.replace(right, ms=right.ms * 1.5)
    fit = fit_phone_model(widths, sweep=sweep, held_out=[right, wrong])
    assert fit.coef == pytest.approx(plain.coef, rel=1e-12)
    assert fit.held_out_errors == pytest.approx([0, 1 / 1.5 - 1], abs=1e-4)
    saved = fit.to_dict()["held_out"]
    assert saved["max_abs_error"] == pytest.approx(1 / 3, abs=1e-4)
    assert [p["network"] for p in saved["points"]] == [right.label, wrong.label]


def test_a_search_on_the_estimate_says_so(root, tiny_spec, tmp_path):
    from .test_remote import search_cli

    source, frame = source_table([tiny_spec])
    points = synthetic_points([tiny_spec, tiny_spec.scaled(0.5)])
    estimate(source, load_device("pixel"), {p.label: p.ms for p in points},
             {p.label: p.spec for p in points}, frame, root=root)
    result = search_cli(tmp_path, tiny_spec, "pixel", "90%")
    line = next(x for x in result.output.splitlines() if x.startswith("latency: "))
    assert "pixel (ESTIMATE: Google Pixel 1" in line


def test_heads_for_other_class_counts_are_priced_directly(root, tiny_spec):
    source, frame = source_table([tiny_spec])
    points = synthetic_points([tiny_spec, tiny_spec.scaled(0.5)])
    fit = estimate(source, load_device("pixel"), {p.label: p.ms for p in points},
                   {p.label: p.spec for p in points}, frame, root=root)
    table = load_table("pixel")
    narrow = tiny_spec.with_group_width("last_conv.out", 8)
    for classes in (10, 100, 1000):
        spec = dataclasses.replace(narrow, num_classes=classes)
        head = [k for k in table._entries if k.kind == "head" and k.out == classes]
        assert head, classes  # a row of its own, not a composition
        assert table.predict_ms(spec) == pytest.approx(
            float(network_terms(spec, PHONE_TERMS) @ fit.coef), rel=1e-4)


@pytest.fixture
def root(tmp_path, monkeypatch):
    devices = tmp_path / "configs" / "devices"
    devices.mkdir(parents=True)
    (devices / "pixel.yaml").write_text((CONFIGS / "devices" / "pixel.yaml").read_text())
    monkeypatch.setenv("NETADAPT_HOME", str(tmp_path))
    return tmp_path


# ---------------------------------------------------------------------- shipped pixel
@pytest.fixture(scope="module")
def pixel_points():
    return published_points(load_device("pixel", root=SHIPPED).published, root=SHIPPED)


def test_width_multiplier_networks_are_the_papers(pixel_points):
    """NetworkSpec.scaled (the TensorFlow reference's rule, head kept) gives the
    paper's MAdds for the x0.5 / x0.35 networks: Large 69 / 40 M, Small 21 / 12 M."""
    from netadapt.cost import count_macs

    macs = {p.label: count_macs(p.spec) / 1e6 for p in pixel_points}
    assert macs["configs/mobilenetv3_large.yaml x0.5"] == pytest.approx(69, abs=1)
    assert macs["configs/mobilenetv3_large.yaml x0.35"] == pytest.approx(40, abs=1)
    assert macs["configs/mobilenetv3_small.yaml x0.5"] == pytest.approx(21, abs=1)
    assert macs["configs/mobilenetv3_small.yaml x0.35"] == pytest.approx(12.5, abs=1)


def test_shipped_pixel_estimate_is_within_5pct_of_every_published_point_left_out(
        pixel_points):
    assert len(pixel_points) == 8
    sweep = size_sweep_points(load_device("pixel", root=SHIPPED).size_sweep)
    fit = fit_phone_model(pixel_points, sweep=sweep)
    assert np.abs(fit.loo_errors).max() < 0.05
    table = load_table("pixel", root=SHIPPED)
    for p in pixel_points:
        assert table.predict_ms(p.spec) == pytest.approx(p.ms, rel=0.05), p.label
    shipped = table.meta["estimate_fit"]
    assert tuple(shipped["coefficients"]) == PHONE_TERMS
    assert list(shipped["coefficients"].values()) == pytest.approx(fit.coef, rel=1e-6)
    assert shipped["leave_one_out_max_abs_error"] < 0.05
    # how latency falls with the input size: every size of MobileNetV2's sweep, left out,
    # is predicted within 8% (the worst, x0.75 at 96-128 px, lies off its neighbours)
    assert len(sweep) == 16
    assert shipped["size_sweep"]["leave_size_out_max_abs_error"] < 0.08


@pytest.fixture(scope="module")
def held_out():
    device = load_device("pixel", root=SHIPPED)
    return published_points(device.held_out, root=SHIPPED)


def test_shipped_pixel_estimate_predicts_the_held_out_input_sizes(pixel_points, held_out):
    """MobileNetV3 at 96-256 px on the same phone (the paper's appendix), never fitted:
    within 10% at 96-128 px, 3% at 160-256 px, by the fit and the shipped table alike."""
    assert len(held_out) == 9
    sweep = size_sweep_points(load_device("pixel", root=SHIPPED).size_sweep)
    fit = fit_phone_model(pixel_points, sweep=sweep, held_out=held_out)
    for p, error in zip(held_out, fit.held_out_errors):
        assert abs(error) < (0.10 if p.spec.input_size[0] <= 128 else 0.03), p.label
    table = load_table("pixel", root=SHIPPED)
    for p, ms in zip(held_out, fit.held_out_ms):
        assert table.predict_ms(p.spec) == pytest.approx(ms, rel=1e-3), p.label
    saved = table.meta["estimate_fit"]["held_out"]
    assert saved["max_abs_error"] == pytest.approx(np.abs(fit.held_out_errors).max())
    assert "9 held-out latencies" in table.label()


def test_the_shipped_table_prices_composed_widths_as_the_model_does():
    """Every bottleneck group of Large at 8 channels: its blocks composed from slices."""
    table = load_table("pixel", root=SHIPPED)
    coef = np.array(list(table.meta["estimate_fit"]["coefficients"].values()))
    large = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    for group in large.groups:
        spec = large.with_group_width(group.name, 8)
        expected = float(network_terms(spec, PHONE_TERMS) @ coef)
        assert table.predict_ms(spec) == pytest.approx(expected, rel=1e-3), group.name


def test_the_models_macs_are_netadapts_mac_count(pixel_points):
    """The per-entry MACs of the phone model add up to netadapt.cost's count."""
    from netadapt.cost import count_macs

    for p in pixel_points:
        assert network_terms(p.spec, ["mmacs"])[0] == pytest.approx(count_macs(p.spec) / 1e6,
                                                                     rel=1e-9), p.label


def test_shipped_pixel_estimate_is_smaller_for_every_narrower_network():
    table = load_table("pixel", root=SHIPPED)
    large = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    base = table.predict_ms(large)
    for group in large.groups:
        assert table.predict_ms(large.with_group_width(group.name, 8)) < base, group.name


def test_estimate_from_prints_the_fit_and_leave_one_out_errors(root, tmp_path, monkeypatch):
    """The CLI on the shipped local-ref table, writing into a scratch root."""
    import shutil

    shutil.copytree(SHIPPED / "latency_tables" / "local-ref", root / "latency_tables" / "local-ref")
    shutil.copytree(SHIPPED / "configs", root / "configs", dirs_exist_ok=True)
    result = CliRunner().invoke(app, ["profile", "--device", "pixel", "--estimate-from",
                                      "local-ref"])
    assert result.exit_code == 0, result.output
    assert "ESTIMATE" in result.output and "leave-one-out" in result.output
    assert "configs/mobilenetv3_small.yaml x0.35" in result.output
    table = load_table("pixel")
    assert table.is_estimate and "held-out latencies (never fitted)" in table.label()
    assert len(table.meta["estimate_fit"]["held_out"]["points"]) == 9


def test_estimate_without_published_latencies_says_what_to_add(root):
    pixel = root / "configs" / "devices" / "pixel.yaml"
    pixel.write_text(pixel.read_text().split("published:")[0])
    result = CliRunner().invoke(app, ["profile", "--device", "pixel", "--estimate-from",
                                      "local-ref"])
    assert result.exit_code == 1 and "add published:" in result.output


def test_a_bad_published_label_names_the_form(root):
    from netadapt.errors import LatencyError

    for label in ("configs/mobilenetv3_large.yaml xhalf", "configs/mobilenetv3_large.yaml @x"):
        with pytest.raises(LatencyError, match="SPEC.yaml xMULT"):
            published_points({label: 20.0}, root=SHIPPED)


def test_a_bad_held_out_section_names_the_form(root):
    from netadapt.errors import LatencyError

    pixel = root / "configs" / "devices" / "pixel.yaml"
    pixel.write_text(pixel.read_text().split("held_out:")[0] + "held_out: [12.5]\n")
    with pytest.raises(LatencyError, match="held_out: write"):
        load_device("pixel")
