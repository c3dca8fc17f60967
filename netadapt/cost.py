"""Parameters and MACs of a spec, counted analytically (no torch, microseconds).

MACs are the multiply-accumulates of Conv2d and Linear layers only (the usual
convention: BN, activations, pooling and adds are free), at the spec's input size.
The search uses these for params / MACs budgets; tests check them against the
PyTorch model built from the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .spec import ClassifierHead, NetworkSpec


@dataclass(frozen=True)
class LayerCost:
    """Cost of one row of the network (stem, a block, last conv, head)."""

    name: str
    resolution: tuple[int, int]  # output (height, width)
    params: int
    macs: int


def conv_output_size(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Output size of a 'same'-padded conv (padding = (kernel - 1) // 2 * dilation)."""
    padding = (kernel - 1) // 2 * dilation
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv(c_in: int, c_out: int, kernel: int, hw: tuple[int, int], groups: int = 1,
          bias: bool = False, bn: bool = True) -> tuple[int, int]:
    weights = c_out * (c_in // groups) * kernel * kernel
    params = weights + (c_out if bias else 0) + (2 * c_out if bn else 0)
    return params, weights * hw[0] * hw[1]


def layer_costs(spec: NetworkSpec) -> list[LayerCost]:
    """One row per stem / block / last conv / head, in network order."""
    rows: list[LayerCost] = []
    h, w = spec.input_size
    s = spec.stem
    h, w = conv_output_size(h, s.kernel, s.stride), conv_output_size(w, s.kernel, s.stride)
    params, macs = _conv(spec.in_channels, s.out, s.kernel, (h, w))
    rows.append(LayerCost("stem", (h, w), params, macs))
    low_channels, low_hw = 0, (0, 0)
    for i, (block, c_in) in enumerate(zip(spec.blocks, spec.block_inputs())):
        parts = []
        if block.expand:
            parts.append(_conv(c_in, block.exp, 1, (h, w)))
        h = conv_output_size(h, block.kernel, block.stride, block.dilation)
        w = conv_output_size(w, block.kernel, block.stride, block.dilation)
        parts.append(_conv(block.exp, block.exp, block.kernel, (h, w), groups=block.exp))
        if block.se:  # two 1x1 convs with bias on the pooled (1x1) features
            parts.append(_conv(block.exp, block.squeeze, 1, (1, 1), bias=True, bn=False))
            parts.append(_conv(block.squeeze, block.exp, 1, (1, 1), bias=True, bn=False))
        parts.append(_conv(block.exp, block.out, 1, (h, w)))
        rows.append(LayerCost(f"blocks[{i}]", (h, w), sum(p for p, _ in parts),
                              sum(m for _, m in parts)))
        if not isinstance(spec.head, ClassifierHead) and i == spec.head.low_block:
            low_channels, low_hw = block.out, (h, w)
    c_last = spec.blocks[-1].out
    params, macs = _conv(c_last, spec.last_conv.out, 1, (h, w))
    rows.append(LayerCost("last_conv", (h, w), params, macs))
    head = spec.head
    k = spec.num_classes
    if isinstance(head, ClassifierHead):
        p1, m1 = _conv(spec.last_conv.out, head.width, 1, (1, 1), bias=True, bn=False)
        p2, m2 = _conv(head.width, k, 1, (1, 1), bias=True, bn=False)
        rows.append(LayerCost("head", (1, 1), p1 + p2, m1 + m2))
    else:
        high = spec.last_conv.out
        parts = [
            _conv(high, head.inter, 1, (h, w)),  # cbr: conv + BN + ReLU at 1/16
            _conv(high, head.inter, 1, (1, 1), bn=False),  # scale: pooled gate, no bias
            _conv(low_channels, k, 1, low_hw, bias=True, bn=False),  # low classifier
            _conv(head.inter, k, 1, low_hw, bias=True, bn=False),  # high classifier, 1/8
        ]
        rows.append(LayerCost("head", low_hw, sum(p for p, _ in parts),
                              sum(m for _, m in parts)))
    return rows


def count_params(spec: NetworkSpec) -> int:
    """Trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(row.params for row in layer_costs(spec))


def count_macs(spec: NetworkSpec) -> int:
    """Conv2d + Linear multiply-accumulates at the spec's input size."""
    return sum(row.macs for row in layer_costs(spec))


def spec_table(spec: NetworkSpec) -> pd.DataFrame:
    """One row per layer: widths, kernel, stride, SE, activation, params, MACs."""
    costs = layer_costs(spec)
    rows = [dict(layer="stem", c_in=spec.in_channels, exp="", out=spec.stem.out,
                 k=spec.stem.kernel, s=spec.stem.stride, se="", act=spec.stem.act, res="")]
    for i, (b, c_in) in enumerate(zip(spec.blocks, spec.block_inputs())):
        rows.append(dict(
            layer=f"blocks[{i}]", c_in=c_in, exp=b.exp if b.expand else f"({b.exp})",
            out=b.out, k=b.kernel, s=b.stride if b.dilation == 1 else f"{b.stride} d{b.dilation}",
            se=b.squeeze if b.se else "-", act=b.act, res="yes" if b.residual else "-"))
    rows.append(dict(layer="last_conv", c_in=spec.blocks[-1].out, exp="",
                     out=spec.last_conv.out, k=1, s=1, se="", act=spec.last_conv.act, res=""))
    head = spec.head
    if isinstance(head, ClassifierHead):
        rows.append(dict(layer="head", c_in=spec.last_conv.out, exp=head.width,
                         out=spec.num_classes, k=1, s="", se="", act=head.act, res=""))
    else:
        rows.append(dict(layer="head (lraspp)", c_in=spec.last_conv.out, exp=head.inter,
                         out=spec.num_classes, k=1, s="", se="", act="relu", res=""))
    for row, cost in zip(rows, costs):
        row["hw_out"] = f"{cost.resolution[0]}x{cost.resolution[1]}"
        row["params"] = f"{cost.params:,}"
        row["MMACs"] = f"{cost.macs / 1e6:.2f}"
    return pd.DataFrame(rows)
