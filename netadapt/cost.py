"""Parameters and MACs of a spec, counted analytically (no torch, microseconds).

MACs are the multiply-accumulates of Conv2d and Linear layers only (the usual
convention: BN, activations, pooling and adds are free), at the spec's input size.
The search uses these for params / MACs budgets; tests check them against the
PyTorch model built from the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .spec import Layer, NetworkSpec, conv_output_size

__all__ = ["LayerCost", "conv_output_size", "count_macs", "count_params", "layer_costs",
           "spec_table"]


@dataclass(frozen=True)
class LayerCost:
    """Cost of one row of the network (stem, a block, last conv, head)."""

    name: str
    resolution: tuple[int, int]  # output (height, width)
    params: int
    macs: int


def _conv(c_in: int, c_out: int, kernel: int, hw: tuple[int, int], groups: int = 1,
          bias: bool = False, bn: bool = True) -> tuple[int, int]:
    weights = c_out * (c_in // groups) * kernel * kernel
    params = weights + (c_out if bias else 0) + (2 * c_out if bn else 0)
    return params, weights * hw[0] * hw[1]


def _parts(row: Layer) -> list[tuple[int, int]]:
    """(params, MACs) of every conv / Linear of one row."""
    hw_in, hw_out = (row.h, row.w), (row.h_out, row.w_out)
    if row.kind in ("stem", "last_conv"):
        return [_conv(row.c_in, row.out, row.kernel, hw_out)]
    if row.kind == "block":
        parts = [_conv(row.c_in, row.exp, 1, hw_in)] if row.expand else []
        parts.append(_conv(row.exp, row.exp, row.kernel, hw_out, groups=row.exp))
        if row.se:  # two 1x1 convs with bias on the pooled (1x1) features
            parts.append(_conv(row.exp, row.squeeze, 1, (1, 1), bias=True, bn=False))
            parts.append(_conv(row.squeeze, row.exp, 1, (1, 1), bias=True, bn=False))
        parts.append(_conv(row.exp, row.out, 1, hw_out))
        return parts
    if row.kind == "head":
        return [_conv(row.c_in, row.exp, 1, (1, 1), bias=True, bn=False),
                _conv(row.exp, row.out, 1, (1, 1), bias=True, bn=False)]
    return [  # lraspp
        _conv(row.c_in, row.exp, 1, hw_in),  # cbr: conv + BN + ReLU on the high feature
        _conv(row.c_in, row.exp, 1, (1, 1), bn=False),  # scale: pooled gate, no bias
        _conv(row.low, row.out, 1, hw_out, bias=True, bn=False),  # low classifier
        _conv(row.exp, row.out, 1, hw_out, bias=True, bn=False),  # high classifier
    ]


def layer_costs(spec: NetworkSpec) -> list[LayerCost]:
    """One row per stem / block / last conv / head, in network order."""
    costs = []
    for row in spec.layers:
        parts = _parts(row)
        costs.append(LayerCost(row.name, (row.h_out, row.w_out), sum(p for p, _ in parts),
                               sum(m for _, m in parts)))
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
