"""The verdict says "beats" only when the margin is larger than its noise."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from netadapt.report import verdict
from netadapt.train import paired_margin


def table(margin: float | None, se: float | None) -> pd.DataFrame:
    return pd.DataFrame([
        {"network": "seed", "test_accuracy": 0.80, "margin": None, "margin_se": None},
        {"network": "netadapt", "test_accuracy": 0.86, "margin": None, "margin_se": None},
        {"network": "width_multiplier", "test_accuracy": 0.85, "margin": margin,
         "margin_se": se},
        {"network": "uniform_pruning", "test_accuracy": 0.84, "margin": 0.02, "margin_se": 0.001},
    ])


@pytest.mark.parametrize("margin, se, word", [
    (0.01, 0.002, "beats"),       # 1 point, interval +-0.39
    (0.01, 0.008, "ties with"),   # 1 point, interval +-1.57: noise
    (-0.01, 0.002, "LOSES TO"),
])
def test_the_verdict_weighs_the_margin_against_its_interval(margin, se, word):
    line = verdict(table(margin, se))
    assert line.startswith(f"netadapt {word} the best baseline (width_multiplier)")
    assert "95%" in line


def test_without_per_image_results_the_verdict_claims_nothing():
    assert "no per-image results" in verdict(table(None, None))


def test_paired_margin_and_its_standard_error():
    a = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    margin, se = paired_margin(a, b)
    d = a.double() - b.double()
    assert margin == pytest.approx(1 / 8)
    assert se == pytest.approx(float(d.std()) / 8 ** 0.5)
    assert paired_margin(a, a) == (0.0, 0.0)


def test_a_baseline_not_placed_gives_its_reason_below_the_table():
    from netadapt.report import comparison_text

    reason = "no input size meets the budgets: the smallest, 32x32, is over latency_ms <= 0.65 ms"
    rows = [
        {"network": "seed", "setting": "", "latency_ms": 1.3, "params": 4.2e6, "macs": 2e7,
         "steps": 0, "holdout_px": 64, "test_accuracy": 0.906},
        {"network": "netadapt", "setting": "10 iterations", "latency_ms": 0.57,
         "params": 0.8e6, "macs": 1.2e7, "steps": 700, "holdout_px": 64, "test_accuracy": 0.911},
        {"network": "resolution", "setting": reason},
    ]
    lines = comparison_text(pd.DataFrame(rows)).splitlines()
    assert lines[-1] == f"resolution: {reason}"
    table_lines = lines[:-1]
    assert all(reason not in line for line in table_lines)
    assert "not placed" in table_lines[-1]
    assert "700.0" not in "\n".join(table_lines) and " 700 " in table_lines[2]
