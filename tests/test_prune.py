"""Weight inheritance: the child keeps the largest-norm filters of every shrunk width and
computes exactly what the parent computes when the removed channels are dead weight."""

from __future__ import annotations

import copy

import pytest
import torch

from netadapt.errors import SpecError, WeightsError
from netadapt.model import build_model
from netadapt.prune import channel_spaces, inherit_weights, kept_channels
from netadapt.spec import NetworkSpec, load_spec, spec_from_dict

from .conftest import CONFIGS, TINY, randomize_

# Per changed width of the tiny spec: the weights that produce the channels (ranked by
# their filter norms) and every (weight, dim) that reads them. Written out by hand from
# the module layout, independently of netadapt.prune's own tables.
# tiny: features.0 stem 16 | features.1 block0 (dw 0, project 1), residual |
# features.2 block1 (expand 0, dw 1, se 2, project 3) | features.3 block2 (same) |
# features.4 last conv 64 | classifier.0 Linear 64->128, classifier.3 Linear 128->10.
CASES = {
    "expansion with SE": {
        "widths": {"blocks[2].exp": 48},
        "removals": [
            (72, 48, ["features.3.block.0.0.weight"],
             [("features.3.block.2.fc1.weight", 1), ("features.3.block.3.0.weight", 1)]),
            # the SE squeeze shrinks with it: make_divisible(72 / 4) = 24 -> 16
            (24, 16, ["features.3.block.2.fc1.weight"], [("features.3.block.2.fc2.weight", 1)]),
        ],
    },
    "bottleneck with residual": {
        "widths": {"blocks[1..2].out": 16},
        "removals": [
            (24, 16, ["features.2.block.3.0.weight", "features.3.block.3.0.weight"],
             [("features.3.block.0.0.weight", 1), ("features.4.0.weight", 1)]),
        ],
    },
    "stem group with a no-expand block": {
        "widths": {"stem+blocks[0].out": 8},
        "removals": [
            (16, 8, ["features.0.0.weight", "features.1.block.1.0.weight"],
             [("features.1.block.1.0.weight", 1), ("features.2.block.0.0.weight", 1)]),
        ],
    },
    "last conv": {
        "widths": {"last_conv.out": 40},
        "removals": [(64, 40, ["features.4.0.weight"], [("classifier.0.weight", 1)])],
    },
    "head": {
        "widths": {"head.width": 64},
        "removals": [(128, 64, ["classifier.0.weight"], [("classifier.3.weight", 1)])],
    },
}


CASES["all groups at once"] = {
    "widths": {k: v for case in CASES.values() for k, v in case["widths"].items()},
    "removals": [r for case in CASES.values() for r in case["removals"]],
}


def make_dead_channels(state: dict[str, torch.Tensor], removals: list, seed: int) -> None:
    """For each removal pick random channels, shrink their producing filters (so they
    have the smallest norms) and zero every consumer's weights on them."""
    g = torch.Generator().manual_seed(seed)
    for width, keep, producers, consumers in removals:
        dead = torch.randperm(width, generator=g)[: width - keep]
        for key in producers:
            state[key][dead] *= 1e-3
        for key, dim in consumers:
            state[key].index_fill_(dim, dead, 0.0)


def child_of(spec: NetworkSpec, widths: dict[str, int]) -> NetworkSpec:
    for name, width in widths.items():
        spec = spec.with_group_width(name, width)
    return spec


def assert_same_function(parent_spec, state, child_spec, input_size=(32, 32)) -> None:
    parent = build_model(parent_spec).eval()
    parent.load_state_dict(state, strict=True)
    child = build_model(child_spec).eval()
    child.load_state_dict(inherit_weights(parent_spec, state, child_spec), strict=True)
    x = torch.randn(3, parent_spec.in_channels, *input_size,
                    generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = parent(x), child(x)
    assert expected.abs().mean() > 0.1  # a real signal, not ~0 logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_child_equals_parent_when_removed_channels_are_unused(case, tiny_spec):
    state = randomize_(build_model(tiny_spec)).state_dict()
    make_dead_channels(state, CASES[case]["removals"], seed=7)
    assert_same_function(tiny_spec, state, child_of(tiny_spec, CASES[case]["widths"]))


def test_no_expand_block_with_se_shrinks_with_its_input_group():
    data = copy.deepcopy(TINY)
    data["blocks"][0]["se"] = True  # MobileNetV3-Small's first block: SE, no expansion
    spec = spec_from_dict(data)
    state = randomize_(build_model(spec)).state_dict()
    make_dead_channels(state, [
        (16, 8, ["features.0.0.weight", "features.1.block.2.0.weight"],
         [("features.1.block.1.fc1.weight", 1), ("features.1.block.2.0.weight", 1),
          ("features.2.block.0.0.weight", 1)]),
    ], seed=3)
    assert_same_function(spec, state, spec.with_group_width("stem+blocks[0].out", 8))


def test_lraspp_child_equals_parent_when_removed_channels_are_unused():
    data = copy.deepcopy(TINY)
    data["head"] = {"type": "lraspp", "low_block": 1, "inter": 32}
    spec = spec_from_dict(data)
    state = randomize_(build_model(spec)).state_dict()
    make_dead_channels(state, [
        # low-level feature (block 1's output, tied to block 2 by the residual)
        (24, 16, ["backbone.2.block.3.0.weight", "backbone.3.block.3.0.weight"],
         [("backbone.3.block.0.0.weight", 1), ("backbone.4.0.weight", 1),
          ("classifier.low_classifier.weight", 1)]),
        (64, 40, ["backbone.4.0.weight"],
         [("classifier.cbr.0.weight", 1), ("classifier.scale.1.weight", 1)]),
        (32, 16, ["classifier.cbr.0.weight", "classifier.scale.1.weight"],
         [("classifier.high_classifier.weight", 1)]),
    ], seed=5)
    child = child_of(spec, {"blocks[1..2].out": 16, "last_conv.out": 40, "head.inter": 16})
    assert_same_function(spec, state, child)


def test_kept_filters_are_those_of_largest_l2_norm_in_original_order(tiny_spec):
    state = build_model(tiny_spec).state_dict()
    norms = torch.rand(72, generator=torch.Generator().manual_seed(0)) + 0.1
    weight = state["features.3.block.0.0.weight"]  # block 2's expand conv, 72 x 24
    weight.copy_(torch.nn.functional.normalize(weight.flatten(1), dim=1).view_as(weight)
                 * norms.view(-1, 1, 1, 1))
    child_spec = tiny_spec.with_group_width("blocks[2].exp", 32)
    expected = torch.sort(torch.topk(norms, 32).indices).values
    assert torch.equal(kept_channels(tiny_spec, state, child_spec)["blocks[2].exp"], expected)
    child = inherit_weights(tiny_spec, state, child_spec)
    assert torch.equal(child["features.3.block.0.0.weight"], weight[expected])
    assert torch.equal(child["features.3.block.1.1.running_var"],
                       state["features.3.block.1.1.running_var"][expected])
    assert torch.equal(child["features.3.block.3.0.weight"],
                       state["features.3.block.3.0.weight"][:, expected])


def test_bottleneck_channels_are_ranked_by_norm_summed_over_all_producers(tiny_spec):
    state = build_model(tiny_spec).state_dict()
    stem, project = "features.0.0.weight", "features.1.block.1.0.weight"
    state[stem].fill_(0.0)
    state[project].fill_(0.0)
    state[stem][:8] = 1.0  # the stem alone prefers channels 0..7
    state[project][8:] = 1.0  # the residual block's projection prefers 8..15, by more
    state[project][8:] *= 2.0
    kept = kept_channels(tiny_spec, state, tiny_spec.with_group_width("stem+blocks[0].out", 8))
    assert kept["stem+blocks[0].out"].tolist() == list(range(8, 16))


@pytest.mark.parametrize("config", ["mobilenetv3_large", "mobilenetv3_small",
                                    "lraspp_mobilenetv3_large"])
def test_child_weights_fit_the_child_for_every_group_and_a_width_multiplier(config):
    spec = load_spec(CONFIGS / f"{config}.yaml")
    state = build_model(spec).state_dict()
    children = [spec.with_group_width(g.name, max(8, g.width - 8)) for g in spec.groups]
    children.append(spec.scaled(0.5, keep_head=False))
    for child_spec in children:
        with torch.device("meta"):  # shapes only: building on meta costs no memory
            expected = build_model(child_spec).state_dict()
        child = inherit_weights(spec, state, child_spec)
        assert list(child) == list(expected)
        shapes = {k: tuple(v.shape) for k, v in child.items()}
        assert shapes == {k: tuple(v.shape) for k, v in expected.items()}, child_spec.name


def test_unchanged_spec_inherits_an_equal_copy(tiny_spec):
    state = randomize_(build_model(tiny_spec)).state_dict()
    child = inherit_weights(tiny_spec, state, tiny_spec)
    assert all(torch.equal(child[k], state[k]) and child[k] is not state[k] for k in state)


def test_every_group_has_a_channel_space_with_its_width(tiny_spec):
    spaces = channel_spaces(tiny_spec)
    for group in tiny_spec.groups:
        assert spaces[group.name].width == group.width
    assert spaces["blocks[2].squeeze"].width == 24


def test_wider_child_is_refused(tiny_spec):
    child = tiny_spec.with_group_width("head.width", 256)
    with pytest.raises(SpecError, match="wider than its parent"):
        inherit_weights(tiny_spec, build_model(tiny_spec).state_dict(), child)


def test_child_with_another_structure_is_refused(tiny_dict, tiny_spec):
    tiny_dict["blocks"][2]["kernel"] = 3
    with pytest.raises(SpecError, match="not a width-reduced copy"):
        inherit_weights(tiny_spec, build_model(tiny_spec).state_dict(),
                        spec_from_dict(tiny_dict))


def test_weights_of_another_spec_are_refused(tiny_spec, tiny_dict):
    tiny_dict["last_conv"]["out"] = 96
    other = build_model(spec_from_dict(tiny_dict)).state_dict()
    with pytest.raises(WeightsError, match="last_conv.out"):
        inherit_weights(tiny_spec, other, tiny_spec.with_group_width("last_conv.out", 32))
