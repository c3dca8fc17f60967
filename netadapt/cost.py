"""Parameters and MACs of a spec, counted analytically (no torch, microseconds).

MACs are the multiply-accumulates of Conv2d and Linear layers only (the usual
convention: BN, activations, pooling and adds are free), at the spec's input size.
The search uses these for params / MACs budgets; tests check them against the
PyTorch model built from the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd

from .spec import Layer, NetworkSpec, conv_output_size

__all__ = ["LayerCost", "Part", "ROLES", "conv_output_size", "count_macs", "count_params",
           "layer_costs", "layer_parts", "spec_table"]

# What a part is. ``conv``: a dense conv on a feature map (the stem, a block's expansion
# and projection, the last conv, LR-ASPP's branch conv and classifiers); ``depthwise``;
# ``se``: one of a squeeze-and-excitation's two 1x1 convs on the pooled features;
# ``gate``: LR-ASPP's 1x1 conv on the pooled features; ``linear``: a classifier head's
# Linear (counted as a 1x1 conv on the pooled 1x1 features).
ROLES = ("conv", "depthwise", "se", "gate", "linear")


class Part(NamedTuple):
    """One Conv2d or Linear of a layer, counted."""

    name: str  # which of the row's layers: conv, expand, depthwise, se.reduce, fc1, ...
    role: str  # see ROLES
    weights: int  # elements of its weight tensor (no bias, no BN)
    params: int  # trainable: weights + bias + BN's scale and shift
    macs: int
    positions: int  # output positions, height x width (1 on pooled features)


@dataclass(frozen=True)
class LayerCost:
    """Cost of one row of the network (stem, a block, last conv, head)."""

    name: str
    resolution: tuple[int, int]  # output (height, width)
    params: int
    macs: int


def _conv(name: str, role: str, c_in: int, c_out: int, kernel: int, hw: tuple[int, int],
          groups: int = 1, bias: bool = False, bn: bool = True) -> Part:
    weights = c_out * (c_in // groups) * kernel * kernel
    params = weights + (c_out if bias else 0) + (2 * c_out if bn else 0)
    return Part(name, role, weights, params, weights * hw[0] * hw[1], hw[0] * hw[1])


def layer_parts(row: Layer) -> list[Part]:
    """Every Conv2d / Linear of one row of ``spec.layers``, in execution order."""
    hw_in, hw_out = (row.h, row.w), (row.h_out, row.w_out)
    if row.kind in ("stem", "last_conv"):
        return [_conv("conv", "conv", row.c_in, row.out, row.kernel, hw_out)]
    if row.kind == "block":
        parts = [_conv("expand", "conv", row.c_in, row.exp, 1, hw_in)] if row.expand else []
        parts.append(_conv("depthwise", "depthwise", row.exp, row.exp, row.kernel, hw_out,
                           groups=row.exp))
        if row.se:  # two 1x1 convs with bias on the pooled (1x1) features
            parts.append(_conv("se.reduce", "se", row.exp, row.squeeze, 1, (1, 1), bias=True,
                               bn=False))
            parts.append(_conv("se.expand", "se", row.squeeze, row.exp, 1, (1, 1), bias=True,
                               bn=False))
        parts.append(_conv("project", "conv", row.exp, row.out, 1, hw_out))
        return parts
    if row.kind == "head":
        return [_conv("fc1", "linear", row.c_in, row.exp, 1, (1, 1), bias=True, bn=False),
                _conv("fc2", "linear", row.exp, row.out, 1, (1, 1), bias=True, bn=False)]
    return [  # lraspp
        _conv("cbr", "conv", row.c_in, row.exp, 1, hw_in),  # conv + BN + ReLU, high feature
        _conv("scale", "gate", row.c_in, row.exp, 1, (1, 1), bn=False),  # pooled, no bias
        _conv("low_classifier", "conv", row.low, row.out, 1, hw_out, bias=True, bn=False),
        _conv("high_classifier", "conv", row.exp, row.out, 1, hw_out, bias=True, bn=False),
    ]


def layer_costs(spec: NetworkSpec) -> list[LayerCost]:
    """One row per stem / block / last conv / head, in network order."""
    costs = []
    for row in spec.layers:
        parts = layer_parts(row)
        costs.append(LayerCost(row.name, (row.h_out, row.w_out), sum(p.params for p in parts),
                               sum(p.macs for p in parts)))
    return costs


def count_params(spec: NetworkSpec) -> int:
    """Trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(row.params for row in layer_costs(spec))


def count_macs(spec: NetworkSpec) -> int:
    """Conv2d + Linear multiply-accumulates at the spec's input size."""
    return sum(row.macs for row in layer_costs(spec))


def spec_table(spec: NetworkSpec) -> pd.DataFrame:
    """One row per layer: widths, kernel, stride, SE, activation, params, MACs."""
    rows = []
    for row, cost in zip(spec.layers, layer_costs(spec)):
        exp: int | str = ""
        stride: int | str = row.stride
        se: int | str = ""
        res = ""
        if row.kind == "block":
            exp = row.exp if row.expand else f"({row.exp})"
            stride = row.stride if row.dilation == 1 else f"{row.stride} d{row.dilation}"
            se = row.squeeze if row.se else "-"
            res = "yes" if row.residual else "-"
        elif row.kind in ("head", "lraspp"):
            exp, stride = row.exp, ""
        rows.append(dict(
            layer="head (lraspp)" if row.kind == "lraspp" else row.name, c_in=row.c_in,
            exp=exp, out=row.out, k=row.kernel, s=stride, se=se, act=row.act, res=res,
            hw_out=f"{cost.resolution[0]}x{cost.resolution[1]}", params=f"{cost.params:,}",
            MMACs=f"{cost.macs / 1e6:.2f}"))
    return pd.DataFrame(rows)
