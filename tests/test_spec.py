"""The spec format: round trips, validation messages, derived channel groups."""

from __future__ import annotations

import pytest
import yaml

from netadapt.errors import SpecError
from netadapt.spec import (
    at_size,
    dumps_spec,
    load_spec,
    loads_spec,
    make_divisible,
    spec_from_dict,
)

from .conftest import CONFIGS

CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))


def test_every_shipped_config_is_loaded_and_saved_byte_for_byte():
    assert len(CONFIG_FILES) == 5
    for path in CONFIG_FILES:
        text = path.read_text()
        assert dumps_spec(load_spec(path)) == text, path.name


def test_load_save_load_is_identity(tiny_spec):
    again = loads_spec(dumps_spec(tiny_spec))
    assert again == tiny_spec
    assert dumps_spec(again) == dumps_spec(tiny_spec)


def test_expand_and_residual_default_to_torchvisions_rules(tiny_spec):
    first, second, third = tiny_spec.blocks
    assert (first.expand, first.residual) == (False, True)  # exp == in, stride 1, in == out
    assert (second.expand, second.residual) == (True, False)  # stride 2
    assert (third.expand, third.residual) == (True, True)


def test_make_divisible_never_rounds_more_than_ten_percent_down():
    assert make_divisible(18) == 24  # 16 would be 11% below
    assert make_divisible(12) == 16
    assert make_divisible(3) == 8
    assert make_divisible(120 / 4) == 32
    assert make_divisible(960 / 4) == 240


def test_large_has_the_papers_coupled_groups():
    spec = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    bottlenecks = {g.name: g.width for g in spec.groups if g.kind == "bottleneck"}
    assert bottlenecks == {
        "stem+blocks[0].out": 16, "blocks[1..2].out": 24, "blocks[3..5].out": 40,
        "blocks[6..9].out": 80, "blocks[10..11].out": 112, "blocks[12..14].out": 160,
    }
    expansions = [g for g in spec.groups if g.kind == "expansion"]
    assert len(expansions) == 14  # blocks 2..15 of the paper; block 1 has no expansion
    assert [g.kind for g in spec.groups[-2:]] == ["last_conv", "head"]
    assert spec.group("stem+blocks[0].out").fields == ("stem.out", "blocks[0].exp", "blocks[0].out")


def test_small_first_block_output_is_its_own_group():
    spec = load_spec(CONFIGS / "mobilenetv3_small.yaml")
    groups = {g.name: g for g in spec.groups}
    assert groups["stem.out"].fields == ("stem.out", "blocks[0].exp")
    assert groups["blocks[0].out"].fields == ("blocks[0].out",)
    assert groups["blocks[6..7].out"].width == 48
    assert sum(g.kind == "expansion" for g in spec.groups) == 10


def test_shrinking_a_bottleneck_group_keeps_residuals_valid():
    spec = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    child = spec.with_group_width("blocks[3..5].out", 24)
    assert [b.out for b in child.blocks[3:6]] == [24, 24, 24]
    assert all(b.residual for b in child.blocks[4:6])
    child = spec.with_group_width("stem+blocks[0].out", 8)
    assert (child.stem.out, child.blocks[0].exp, child.blocks[0].out) == (8, 8, 8)


def test_shrinking_an_expansion_shrinks_its_squeeze():
    spec = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    assert spec.blocks[11].squeeze == 168
    child = spec.with_group_width("blocks[11].exp", 336)
    assert (child.blocks[11].exp, child.blocks[11].squeeze) == (336, 88)
    assert child.groups != spec.groups


def test_unknown_group_is_an_error_listing_the_groups(tiny_spec):
    with pytest.raises(SpecError, match="no channel group named 'nope'.*head.width"):
        tiny_spec.with_group_width("nope", 8)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["blocks"][1].update(exp=50),
     r"blocks\[1\].exp: must be a positive multiple of 8, got 50"),
    (lambda d: d["blocks"][1].update(exp=0), r"blocks\[1\].exp: must be a positive multiple"),
    (lambda d: d["blocks"][2].update(out=-24), r"blocks\[2\].out: must be a positive multiple"),
    (lambda d: d["blocks"][2].update(out=24.0), r"blocks\[2\].out: .* got 24.0"),
    (lambda d: d["blocks"][2].update(out="24"), r"blocks\[2\].out: .* got '24'"),
    (lambda d: d["blocks"][1].update(kernel=4), r"blocks\[1\].kernel: must be an odd positive"),
    (lambda d: d["blocks"][1].update(stride=3), r"blocks\[1\].stride: must be 1 or 2, got 3"),
    (lambda d: d["blocks"][1].update(residual=True), r"blocks\[1\].residual: a residual needs"),
    (lambda d: d["blocks"][1].update(act="gelu"), r"blocks\[1\].act: must be one of relu, hswish"),
    (lambda d: d["blocks"][1].update(se="yes"), r"blocks\[1\].se: must be true or false"),
    (lambda d: d["blocks"][0].update(expand=False, exp=32),
     r"blocks\[0\].exp: must equal the block's input width 16 when expand is false"),
    (lambda d: d["blocks"][1].update(expansion=4), r"blocks\[1\]: unknown field 'expansion'"),
    (lambda d: d["blocks"][1].pop("exp"), r"blocks\[1\]: missing field 'exp'"),
    (lambda d: d.update(blocks=[]), r"blocks: must be a non-empty list"),
    (lambda d: d["stem"].update(out=12), r"stem.out: must be a positive multiple of 8, got 12"),
    (lambda d: d.update(colour="red"), r"spec: unknown field 'colour'"),
    (lambda d: d.update(num_classes=0), r"num_classes: must be a positive integer, got 0"),
    (lambda d: d.update(input_size=[224]), r"input_size: must be \[height, width\]"),
    (lambda d: d["head"].update(type="detector"), r"head.type: must be one of classifier, lraspp"),
    (lambda d: d["head"].update(dropout=1.5), r"head.dropout: must be a number in \[0, 1\)"),
    (lambda d: d.update(head={"type": "lraspp", "low_block": 2, "inter": 128}),
     r"head.low_block: must be a block index in 0..1, got 2"),
])
def test_bad_specs_name_the_field_and_the_allowed_values(tiny_dict, edit, message):
    edit(tiny_dict)
    with pytest.raises(SpecError, match=message):
        spec_from_dict(tiny_dict)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nblocks: [\n  {kernel: 3\n")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_spec(path)


def test_yaml_that_is_not_a_mapping_is_refused():
    with pytest.raises(SpecError, match="must be a mapping of fields, got list"):
        loads_spec(yaml.safe_dump([1, 2]))


def test_width_multiplier_reproduces_the_075_configs():
    for name in ("large", "small"):
        base = load_spec(CONFIGS / f"mobilenetv3_{name}.yaml")
        shipped = load_spec(CONFIGS / f"mobilenetv3_{name}_075.yaml")
        assert base.scaled(0.75).blocks == shipped.blocks
        assert base.scaled(0.75).head == shipped.head  # head kept (paper convention)


@pytest.mark.parametrize("name", ["mobilenetv3_large", "mobilenetv3_small",
                                  "lraspp_mobilenetv3_large"])
def test_a_group_width_copy_equals_the_fully_checked_spec(name):
    """with_group_width skips re-validation and re-derivation (the search's hot path):
    its copies must equal a spec built and checked from scratch, chained too."""
    spec = load_spec(CONFIGS / f"{name}.yaml")
    for group in spec.groups:
        for width in sorted({8, max(8, group.width // 2 // 8 * 8), group.width - 8} - {0}):
            fast = spec.with_group_width(group.name, width)
            full = spec_from_dict(fast.to_dict())  # constructed: validated, groups derived
            assert fast == full and hash(fast) == hash(full)
            assert fast.groups == full.groups and fast.layers == full.layers, group.name
            again = fast.with_group_width(spec.groups[-1].name, 8)  # a copy of a copy
            assert again.groups == spec_from_dict(again.to_dict()).groups
    assert spec.layers == spec_from_dict(spec.to_dict()).layers  # the parent untouched
    with pytest.raises(SpecError, match="multiple of 8"):
        spec.with_group_width(spec.groups[0].name, 12)


def test_at_size_names_the_spec_by_its_size(tiny_spec):
    at48 = at_size(tiny_spec, 48)
    assert at48.input_size == (48, 48) and at48.name == f"{tiny_spec.name}@48"
    assert at48.blocks == tiny_spec.blocks
    assert at_size(at48, 64).name == f"{tiny_spec.name}@64"  # one size in the name
    assert at_size(tiny_spec, 32) is tiny_spec  # its own size: itself, name unchanged
