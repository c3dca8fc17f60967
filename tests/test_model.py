"""The builder, and weights in torchvision's format in and out, strictly."""

from __future__ import annotations

import json

import pytest
import torch

from netadapt.errors import WeightsError
from netadapt.model import build_model, load_weights, read_state_dict, save_weights
from netadapt.spec import load_spec

from .conftest import CONFIGS, TORCHVISION_KEYS, randomize_

TORCHVISION_TO_CONFIG = {
    "mobilenet_v3_large": "mobilenetv3_large",
    "mobilenet_v3_small": "mobilenetv3_small",
    "lraspp_mobilenet_v3_large_21_classes": "lraspp_mobilenetv3_large",
}


def torchvision_state_dict(name: str) -> dict[str, torch.Tensor]:
    """A state_dict with torchvision's exact keys and shapes (values random)."""
    shapes = json.loads(TORCHVISION_KEYS.read_text())["models"][name]["state_dict"]
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randn(s, generator=g) if s else torch.tensor(7)) for k, s in shapes.items()}


@pytest.mark.parametrize("tv_name", sorted(TORCHVISION_TO_CONFIG))
def test_torchvision_state_dict_loads_strictly_and_comes_back_out(tv_name, tmp_path):
    state = torchvision_state_dict(tv_name)
    path = tmp_path / "tv.pt"
    torch.save(state, path)
    model = build_model(load_spec(CONFIGS / f"{TORCHVISION_TO_CONFIG[tv_name]}.yaml"))
    load_weights(model, path)
    out = model.state_dict()
    assert list(out) == list(state)  # same keys, same order
    assert all(torch.equal(out[k], state[k]) for k in state)


def test_weights_round_trip_gives_identical_outputs(tiny_spec, tmp_path):
    model = randomize_(build_model(tiny_spec))
    save_weights(model, tmp_path / "w.pt")
    other = build_model(tiny_spec).eval()
    load_weights(other, tmp_path / "w.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), other(x))


def test_checkpoint_dict_with_a_state_dict_entry_is_accepted(tiny_spec, tmp_path):
    saved = randomize_(build_model(tiny_spec)).state_dict()
    torch.save({"epoch": 3, "state_dict": saved}, tmp_path / "ckpt.pt")
    model = build_model(tiny_spec)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_weights(model, tmp_path / "ckpt.pt")
    loaded = model.state_dict()
    assert list(loaded) == list(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)  # every tensor loaded
    floating = [k for k in saved if saved[k].is_floating_point()]
    assert all(not torch.equal(fresh[k], saved[k]) for k in floating)  # none was there before


def test_weights_for_another_architecture_name_the_key(tmp_path):
    small = build_model(load_spec(CONFIGS / "mobilenetv3_small.yaml"))
    torch.save(small.state_dict(), tmp_path / "small.pt")
    large = build_model(load_spec(CONFIGS / "mobilenetv3_large.yaml"))
    with pytest.raises(WeightsError, match=r"small.pt: missing key 'features.1.block.1.0.weight';"
                       r" was it saved for another spec"):
        load_weights(large, tmp_path / "small.pt")


def test_missing_and_unexpected_keys_are_named(tiny_spec, tmp_path):
    state = build_model(tiny_spec).state_dict()
    missing = dict(state)
    del missing["classifier.3.bias"]
    torch.save(missing, tmp_path / "m.pt")
    with pytest.raises(WeightsError, match="missing key 'classifier.3.bias'"):
        load_weights(build_model(tiny_spec), tmp_path / "m.pt")
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "e.pt")
    with pytest.raises(WeightsError, match="unexpected key 'extra.weight'"):
        load_weights(build_model(tiny_spec), tmp_path / "e.pt")


def test_a_shape_mismatch_is_named(tiny_spec, tmp_path):
    other = build_model(tiny_spec.with_group_width("blocks[2].exp", 64))
    torch.save(other.state_dict(), tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"'features.3.block.0.0.weight' has shape "
                       r"\[64, 24, 1, 1\], the spec needs \[72, 24, 1, 1\]"):
        load_weights(build_model(tiny_spec), tmp_path / "w.pt")


def test_garbage_and_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt: not a readable PyTorch weights file"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="nothere.pt: weights file not found"):
        read_state_dict(tmp_path / "nothere.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="does not hold a state_dict"):
        read_state_dict(tmp_path / "list.pt")


def test_segmentation_output_has_the_input_size():
    import dataclasses
    spec = load_spec(CONFIGS / "lraspp_mobilenetv3_large.yaml")
    spec = dataclasses.replace(spec, input_size=(64, 96))
    out = build_model(spec).eval()(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 21, 64, 96)


def test_blocks_follow_the_spec(tiny_spec):
    model = build_model(tiny_spec)
    first, second, third = model.features[1:4]
    assert len(first.block) == 2 and first.residual  # no expansion conv
    assert second.block[2].fc1.out_channels == tiny_spec.blocks[1].squeeze
    assert third.residual and not second.residual


@pytest.mark.parametrize("name", ["mobilenetv3_small", "lraspp_mobilenetv3_large"])
def test_a_network_built_without_initialisation_takes_weights_like_any_other(name):
    """build_model(init=False) (every proposal's child: its weights are loaded next)
    is the same network once loaded: same keys and shapes, on the CPU, same outputs."""
    spec = load_spec(CONFIGS / f"{name}.yaml")
    reference = build_model(spec).eval()
    bare = build_model(spec, init=False)
    assert {k: v.shape for k, v in bare.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    bare.load_state_dict(reference.state_dict())  # strict
    bare.eval()
    assert all(t.device.type == "cpu" for t in bare.state_dict().values())
    assert all(p.requires_grad for p in bare.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bare(x), reference(x))
