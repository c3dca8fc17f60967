"""The simple answers: each is the least-shrunk setting of its knob that meets the budget."""

from __future__ import annotations

import pytest

from netadapt.baseline import resolution, uniform_pruning, width_multiplier
from netadapt.search import Budget
from netadapt.spec import load_spec

from .conftest import CONFIGS, fake_ms

LARGE = load_spec(CONFIGS / "mobilenetv3_large.yaml")
BUDGET = [Budget("latency_ms", fake_ms(LARGE) * 0.5)]


def test_width_multiplier_is_the_largest_that_meets_the_budget():
    found = width_multiplier(LARGE, BUDGET, fake_ms)
    assert found is not None and found.resources["latency_ms"] <= BUDGET[0].limit
    mult = float(found.knob[1:])
    assert fake_ms(LARGE.scaled(mult + 0.01)) > BUDGET[0].limit
    assert found.spec.head == LARGE.head  # head kept, as in the paper
    assert all(b.exp <= s.exp and b.out <= s.out for b, s in zip(found.spec.blocks, LARGE.blocks))


def test_uniform_pruning_cuts_every_group_by_the_same_fraction():
    found = uniform_pruning(LARGE, BUDGET, fake_ms)
    assert found is not None and found.resources["latency_ms"] <= BUDGET[0].limit
    keep = 1 - int(found.knob[1:-1]) / 100
    for before, after in zip(LARGE.groups, found.spec.groups):
        assert after.width == max(8, round(before.width * keep / 8) * 8)


def test_resolution_keeps_widths_and_shrinks_the_input():
    found = resolution(LARGE, BUDGET, fake_ms)
    assert found is not None and found.spec.blocks == LARGE.blocks
    size = found.spec.input_size[0]
    assert size % 16 == 0 and size < 224 and found.resources["latency_ms"] <= BUDGET[0].limit


def test_a_budget_no_setting_meets_gives_none():
    assert width_multiplier(LARGE, [Budget("latency_ms", 1e-6)], fake_ms) is None
    assert resolution(LARGE, [Budget("params", 10.0)], fake_ms) is None


def test_the_resolution_baseline_says_which_sizes_the_table_lacks_or_what_is_over():
    from netadapt.baseline import no_setting_note
    from netadapt.errors import LatencyError
    from netadapt.spec import at_size

    at64 = at_size(LARGE, 64)

    def covered_at_64_only(spec):
        if spec.input_size != (64, 64):
            raise LatencyError("not in the table")
        return fake_ms(spec)
    budget = [Budget("latency_ms", fake_ms(at64) * 0.5)]
    assert resolution(at64, budget, covered_at_64_only) is None
    assert no_setting_note("resolution", at64, budget, covered_at_64_only, "local") == (
        "the latency table lacks 48x48, 32x32; netadapt profile --device local "
        "--input-size 64 adds the sizes this tries")
    tight = [Budget("latency_ms", 1e-3)]
    note = no_setting_note("resolution", at64, tight, fake_ms, "local")
    assert note.startswith("no input size meets the budgets: the smallest, 32x32, is over "
                           "latency_ms <= 0.00 ms")


def test_torch_pruning_steps_until_the_budget_is_met():
    pytest.importorskip("torch_pruning")
    from netadapt.baseline import torch_pruning
    from netadapt.model import build_model

    from .conftest import randomize_

    seed = load_spec(CONFIGS / "mobilenetv3_small.yaml")
    state = randomize_(build_model(seed), (224, 224)).state_dict()
    budget = [Budget("latency_ms", fake_ms(seed) * 0.6)]
    found = torch_pruning(seed, budget, fake_ms, state)
    assert found is not None and found.resources["latency_ms"] <= budget[0].limit
    assert all(g.width % 8 == 0 for g in found.spec.groups)
    if found.state is not None:  # its own pruned weights fit the spec strictly
        build_model(found.spec).load_state_dict(found.state)
