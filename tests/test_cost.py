"""Parameter and MAC counts: the published numbers, and analytic == measured."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netadapt.cost import ROLES, count_macs, count_params, layer_costs, layer_parts
from netadapt.model import build_model
from netadapt.spec import load_spec

from .conftest import CONFIGS

# ../shared/reference/MOBILENETV3.md (torchvision 0.29.1 and the paper)
EXPECTED = {
    "mobilenetv3_large": (5_483_032, 216.59),
    "mobilenetv3_small": (2_542_856, 56.51),
    "lraspp_mobilenetv3_large": (3_221_538, 2086),
    "mobilenetv3_large_075": (3_993_528, 154.6),
    "mobilenetv3_small_075": (2_041_872, 43.4),
}


def measured_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs of every Conv2d and Linear, from the shapes seen in a real forward pass."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_pixel = module.weight.numel() // module.groups * module.groups
            total += per_pixel * output.shape[-1] * output.shape[-2]
        else:
            total += module.weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(shape))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_counts_match_the_reference(name):
    spec = load_spec(CONFIGS / f"{name}.yaml")
    params, mmacs = EXPECTED[name]
    assert count_params(spec) == params
    decimals = len(str(mmacs).split(".")[1]) if "." in str(mmacs) else 0
    assert round(count_macs(spec) / 1e6, decimals) == mmacs


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_analytic_counts_equal_the_built_model(name):
    spec = load_spec(CONFIGS / f"{name}.yaml")
    model = build_model(spec)
    assert count_params(spec) == sum(p.numel() for p in model.parameters())
    if spec.task == "classification":  # the 520x520 LR-ASPP forward pass is slow-ish
        assert count_macs(spec) == measured_macs(model, (1, 3, *spec.input_size))


def test_analytic_counts_follow_a_pruned_spec(tiny_spec):
    child = tiny_spec.with_group_width("blocks[1..2].out", 8).with_group_width("blocks[2].exp", 16)
    model = build_model(child)
    assert count_params(child) == sum(p.numel() for p in model.parameters())
    assert count_macs(child) == measured_macs(model, (1, 3, 32, 32))
    assert count_macs(child) < count_macs(tiny_spec)


def test_segmentation_macs_match_a_forward_pass_on_a_small_input():
    spec = load_spec(CONFIGS / "lraspp_mobilenetv3_large.yaml")
    import dataclasses
    small = dataclasses.replace(spec, input_size=(96, 128))
    assert count_macs(small) == measured_macs(build_model(small), (1, 3, 96, 128))


def test_layer_rows_cover_stem_blocks_last_conv_and_head(tiny_spec):
    rows = layer_costs(tiny_spec)
    assert [r.name for r in rows] == ["stem", "blocks[0]", "blocks[1]", "blocks[2]",
                                      "last_conv", "head"]
    assert rows[1].resolution == (16, 16) and rows[2].resolution == (8, 8)


def test_layer_parts_split_the_counts_by_the_models_layers(tiny_spec):
    """Per part (what the latency estimate prices): the parts add up to the totals, and
    their weights, all and depthwise alone, are the built model's."""
    parts = [p for row in tiny_spec.layers for p in layer_parts(row)]
    assert sum(p.macs for p in parts) == count_macs(tiny_spec)
    assert sum(p.params for p in parts) == count_params(tiny_spec)
    assert {p.role for p in parts} == set(ROLES) - {"gate"}  # gate: LR-ASPP only
    layers = [m for m in build_model(tiny_spec).modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(p.weights for p in parts) == sum(m.weight.numel() for m in layers)
    depthwise = [m for m in layers if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert sum(p.weights for p in parts if p.role == "depthwise") == \
        sum(m.weight.numel() for m in depthwise)
    linear = [m for m in layers if isinstance(m, nn.Linear)]
    assert sum(p.weights for p in parts if p.role == "linear") == \
        sum(m.weight.numel() for m in linear)
