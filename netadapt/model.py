"""Spec -> torch.nn.Module, and weights in and out.

The modules mirror torchvision's layout (``features.N.block.M``, ``classifier.K``,
``backbone.N`` for LR-ASPP), so a torchvision state_dict *is* a netadapt state_dict:
checkpoints move between the two without key mapping.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import WeightsError
from .files import write_bytes_atomic
from .spec import ClassifierHead, Layer, LRASPPHead, NetworkSpec

Device = torch.device | str | None  # where a module's tensors are created

# torchvision's MobileNetV3 BatchNorm settings. Momentum 0.01 makes running statistics
# lag during short fine-tunes; the training code raises it there, not here.
BN_EPS = 0.001
BN_MOMENTUM = 0.01


def _activation(name: str) -> nn.Module:
    return nn.Hardswish() if name == "hswish" else nn.ReLU()


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BN -> optional activation; indices 0, 1, 2 as in torchvision."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 groups: int = 1, dilation: int = 1, act: str | None = None,
                 device: Device = None) -> None:
        padding = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation,
                      groups=groups, bias=False, device=device),
            nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM, device=device),
        ]
        if act is not None:
            layers.append(_activation(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """pool -> 1x1 (bias) -> ReLU -> 1x1 (bias) -> h-sigmoid -> scale the input."""

    def __init__(self, channels: int, squeeze: int, device: Device = None) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1, device=device)
        self.fc2 = nn.Conv2d(squeeze, channels, 1, device=device)
        self.relu = nn.ReLU()
        self.hsigmoid = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.hsigmoid(self.fc2(self.relu(self.fc1(self.avgpool(x)))))
        return x * gate


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 bottleneck block built from one row of ``spec.layers``."""

    def __init__(self, row: Layer, device: Device = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if row.expand:
            layers.append(ConvBNAct(row.c_in, row.exp, 1, act=row.act, device=device))
        layers.append(ConvBNAct(row.exp, row.exp, row.kernel, row.stride, groups=row.exp,
                                dilation=row.dilation, act=row.act, device=device))
        if row.se:
            layers.append(SqueezeExcite(row.exp, row.squeeze, device=device))
        layers.append(ConvBNAct(row.exp, row.out, 1, device=device))  # linear: no act
        self.block = nn.Sequential(*layers)
        self.residual = row.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def _features(spec: NetworkSpec, device: Device = None) -> nn.Sequential:
    """Stem, blocks and last conv (torchvision's ``features`` / ``backbone``)."""
    layers: list[nn.Module] = []
    for row in spec.layers:
        if row.kind == "block":
            layers.append(InvertedResidual(row, device))
        elif row.kind in ("stem", "last_conv"):
            layers.append(ConvBNAct(row.c_in, row.out, row.kernel, row.stride, act=row.act,
                                    device=device))
    return nn.Sequential(*layers)


class MobileNetV3(nn.Module):
    """Classification network: features -> pool -> Linear -> act -> dropout -> Linear."""

    def __init__(self, spec: NetworkSpec, device: Device = None) -> None:
        super().__init__()
        assert isinstance(spec.head, ClassifierHead)
        head = spec.layers[-1]
        self.features = _features(spec, device)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(head.c_in, head.exp, device=device),
            _activation(head.act),
            nn.Dropout(p=spec.head.dropout),
            nn.Linear(head.exp, head.out, device=device),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


class LRASPPHeadModule(nn.Module):
    """Lite R-ASPP decoder (torchvision's LRASPPHead: global-pool gate)."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int,
                 inter: int, device: Device = None) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_channels, inter, 1, bias=False, device=device),
            nn.BatchNorm2d(inter, device=device),
            nn.ReLU(),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_channels, inter, 1, bias=False, device=device),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1, device=device)
        self.high_classifier = nn.Conv2d(inter, num_classes, 1, device=device)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPP(nn.Module):
    """Segmentation network: MobileNetV3 backbone + Lite R-ASPP, logits at input size."""

    def __init__(self, spec: NetworkSpec, device: Device = None) -> None:
        super().__init__()
        assert isinstance(spec.head, LRASPPHead)
        self.backbone = _features(spec, device)
        self.low_index = spec.head.low_block + 1  # backbone[0] is the stem
        head = spec.layers[-1]
        self.classifier = LRASPPHeadModule(head.low, head.c_in, head.out, head.exp, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low = x
        for i, layer in enumerate(self.backbone):
            x = layer(x)
            if i == self.low_index:
                low = x
        out = self.classifier(low, x)
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def build_model(spec: NetworkSpec, init: bool = True) -> nn.Module:
    """The PyTorch network for a spec, randomly initialised as torchvision does.

    ``init=False`` leaves its tensors uninitialised (allocated, not written) for a caller
    that loads a whole state_dict next: built on the meta device, then given memory.
    Random initialisation is most of the 36 ms a build of Large takes, and every proposal
    of a search pays it (loop overhead)."""
    network = LRASPP if isinstance(spec.head, LRASPPHead) else MobileNetV3
    if not init:
        return network(spec, device="meta").to_empty(device="cpu")
    model = network(spec)
    _init_weights(model)
    return model


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------- weights


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors from a ``.pt`` file: a plain (torchvision-format) state_dict, or a dict
    holding one under ``state_dict`` / ``model``. Never unpickles arbitrary objects."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except Exception as exc:  # torch raises many types for corrupt / foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if len(first) < 12:  # e.g. a text file gives KeyError('105'): name the type too
            first = f"{type(exc).__name__} {first}".strip()
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({first}); pass a "
                           f"state_dict saved with torch.save") from None
    if isinstance(data, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor)
                                                for v in data.values()):
        raise WeightsError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    return dict(data)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict comparison of key names and shapes; the error names the first mismatch."""
    expected = model.state_dict()
    hint = "; was it saved for another spec? pass the spec it was made with"
    for key, tensor in expected.items():
        if key not in state:
            raise WeightsError(f"{source}: missing key {key!r}{hint}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: {key!r} has shape {list(state[key].shape)}, the spec needs "
                f"{list(tensor.shape)}{hint}"
            )
    for key in state:
        if key not in expected:
            raise WeightsError(f"{source}: unexpected key {key!r}{hint}")


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a weights file into ``model`` strictly (names and shapes must all match)."""
    state = read_state_dict(path)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save the state_dict (torchvision format) atomically."""
    save_state_dict(model.state_dict(), path)


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Save a state_dict atomically (a kill never leaves half a checkpoint)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise WeightsError(f"{path}: directory {path.parent} does not exist; create it first")
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    write_bytes_atomic(path, buffer.getvalue())
