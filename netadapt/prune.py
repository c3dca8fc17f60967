"""Filter selection and weight inheritance: parent spec + weights -> child weights.

A child spec is its parent with some widths reduced. Every width of the network is a
*channel space*: the tensors (and the dimension of each) that index the same channels.
For each space that shrank, the filters whose producers have the largest L2 norm are
kept, and every tensor of the space is sliced with the same indices, so the child starts
from the parent's function minus the weakest filters (NetAdapt's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import SpecError, WeightsError
from .spec import ClassifierHead, LRASPPHead, NetworkSpec

_BN = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class ChannelSpace:
    """One width of the network and every tensor dimension that indexes it.

    ``producers`` are the weights (output channels on dim 0) whose filter norms rank the
    channels; ``slices`` lists every ``(state_dict key, dim)`` to cut, producers included.
    """

    name: str
    width: int
    producers: tuple[str, ...]
    slices: tuple[tuple[str, int], ...]

    def __str__(self) -> str:
        return f"{self.name} ({self.width}: {len(self.slices)} tensors)"


def channel_spaces(spec: NetworkSpec) -> dict[str, ChannelSpace]:
    """Every channel space of ``spec`` by name: the bottleneck, expansion, last-conv and
    head groups of ``spec.groups``, plus each block's SE squeeze width."""
    layout = _Layout(spec)
    spaces: dict[str, ChannelSpace] = {}
    for group in spec.groups:
        producers: list[str] = []
        slices: list[tuple[str, int]] = []
        if group.kind in ("bottleneck", "expansion"):
            for path in group.fields:
                p, s = layout.field(path)
                producers += p
                slices += s
        elif group.kind == "last_conv":
            producers, slices = layout.last_conv()
        else:
            producers, slices = layout.head()
        spaces[group.name] = ChannelSpace(group.name, group.width, tuple(producers),
                                          tuple(slices))
    for i, block in enumerate(spec.blocks):
        if block.se:
            se = layout.se_prefix(i)
            name = f"blocks[{i}].squeeze"
            spaces[name] = ChannelSpace(
                name, block.squeeze, (f"{se}.fc1.weight",),
                ((f"{se}.fc1.weight", 0), (f"{se}.fc1.bias", 0), (f"{se}.fc2.weight", 1)))
    return spaces


def kept_channels(parent_spec: NetworkSpec, parent_state: Mapping[str, torch.Tensor],
                  child_spec: NetworkSpec) -> dict[str, torch.Tensor]:
    """For every channel space that shrank: the parent channel indices the child keeps
    (the largest summed L2 filter norms over the space's producers, in ascending order)."""
    _check_same_structure(parent_spec, child_spec)
    parents, children = channel_spaces(parent_spec), channel_spaces(child_spec)
    kept: dict[str, torch.Tensor] = {}
    for name, space in parents.items():
        width = children[name].width
        if width > space.width:
            raise SpecError(
                f"{name}: the child is wider than its parent ({width} > {space.width}); "
                f"weights can only be inherited by a network with equal or smaller widths")
        if width < space.width:
            kept[name] = _largest_norms(space, parent_state, width)
    return kept


def inherit_weights(parent_spec: NetworkSpec, parent_state: Mapping[str, torch.Tensor],
                    child_spec: NetworkSpec) -> dict[str, torch.Tensor]:
    """The child's state_dict: the parent's weights with every shrunk width cut to the
    filters of largest L2 norm, in every tensor that touches it.

    Any number of groups may shrink at once. The result loads strictly into
    ``build_model(child_spec)``; tensors of unchanged widths are copies of the parent's.
    """
    kept = kept_channels(parent_spec, parent_state, child_spec)
    spaces = channel_spaces(parent_spec)
    cuts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, index in kept.items():
        for key, dim in spaces[name].slices:
            cuts.setdefault(key, []).append((dim, index))
    child: dict[str, torch.Tensor] = {}
    for key, tensor in parent_state.items():
        out = tensor.detach()
        for dim, index in cuts.get(key, ()):
            out = out.index_select(dim, index.to(out.device))
        child[key] = out.clone()
    return child


# ----------------------------------------------------------------------------- internals


def _largest_norms(space: ChannelSpace, state: Mapping[str, torch.Tensor],
                   width: int) -> torch.Tensor:
    norms = torch.zeros(space.width, dtype=torch.float64)
    for key in space.producers:
        weight = _get(state, key)
        if weight.shape[0] != space.width:
            raise WeightsError(
                f"{key!r} has {weight.shape[0]} output channels but the parent spec says "
                f"{space.name} is {space.width}; pass the spec the weights were made with")
        norms += weight.detach().flatten(1).double().norm(dim=1).cpu()
    # A stable sort makes ties (e.g. all-zero filters) resolve to the lowest indices.
    order = torch.sort(norms, descending=True, stable=True).indices
    return torch.sort(order[:width]).values


def _get(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise WeightsError(f"the parent weights have no {key!r}; pass the spec they were made "
                           "with")
    return state[key]


def _check_same_structure(parent: NetworkSpec, child: NetworkSpec) -> None:
    """The child must be the parent with widths changed and nothing else."""
    def shape(spec: NetworkSpec) -> tuple[object, ...]:
        blocks = tuple((b.kernel, b.stride, b.dilation, b.se, b.act, b.expand, b.residual)
                       for b in spec.blocks)
        head = ((spec.head.act, spec.head.dropout) if isinstance(spec.head, ClassifierHead)
                else (spec.head.low_block,))
        return (spec.in_channels, spec.num_classes, spec.stem.kernel, spec.stem.stride,
                spec.stem.act, blocks, spec.last_conv.act, type(spec.head), head)

    if shape(parent) != shape(child):
        raise SpecError(
            f"{child.name}: not a width-reduced copy of {parent.name} (blocks, kernels, "
            "strides, activations, head or class count differ); weights can only be "
            "inherited between specs that differ in widths")


class _Layout:
    """State_dict key names of a spec's modules (torchvision's layout, see model.py)."""

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.features = "backbone" if isinstance(spec.head, LRASPPHead) else "features"

    def _block_indices(self, i: int) -> tuple[str, int | None, int, int | None, int]:
        """(prefix, expand, depthwise, se, project) positions in block i's Sequential."""
        block = self.spec.blocks[i]
        j = 0
        expand = None
        if block.expand:
            expand, j = 0, 1
        dw, j = j, j + 1
        se = None
        if block.se:
            se, j = j, j + 1
        return f"{self.features}.{i + 1}.block", expand, dw, se, j

    def se_prefix(self, i: int) -> str:
        prefix, _, _, se, _ = self._block_indices(i)
        return f"{prefix}.{se}"

    def field(self, path: str) -> tuple[list[str], list[tuple[str, int]]]:
        """Producers and slices of one width field of a bottleneck or expansion group."""
        if path == "stem.out":
            conv = f"{self.features}.0"
            return [f"{conv}.0.weight"], _conv_bn_out(conv) + self._input_of(0)
        i = int(path[len("blocks["):path.index("]")])
        prefix, expand, dw, se, project = self._block_indices(i)
        if path.endswith(".out"):
            conv = f"{prefix}.{project}"
            slices = _conv_bn_out(conv) + self._input_of(i + 1)
            if isinstance(self.spec.head, LRASPPHead) and i == self.spec.head.low_block:
                slices.append(("classifier.low_classifier.weight", 1))
            return [f"{conv}.0.weight"], slices
        # blocks[i].exp: the expanded channels, from the expand conv (if any) through the
        # depthwise conv and SE to the project conv's inputs.
        producers: list[str] = []
        slices = _conv_bn_out(f"{prefix}.{dw}")
        if expand is not None:
            producers.append(f"{prefix}.{expand}.0.weight")
            slices += _conv_bn_out(f"{prefix}.{expand}")
        if se is not None:
            slices += [(f"{prefix}.{se}.fc1.weight", 1), (f"{prefix}.{se}.fc2.weight", 0),
                       (f"{prefix}.{se}.fc2.bias", 0)]
        slices.append((f"{prefix}.{project}.0.weight", 1))
        return producers, slices

    def _input_of(self, i: int) -> list[tuple[str, int]]:
        """Slices of block i's input channels that belong to the previous width: the
        expand conv's inputs (a block without one has its exp in the same group, so its
        depthwise conv is covered by that field), or the last conv's for i past the end."""
        if i == len(self.spec.blocks):
            return [(f"{self.features}.{i + 1}.0.weight", 1)]
        prefix, expand, _, _, _ = self._block_indices(i)
        return [] if expand is None else [(f"{prefix}.{expand}.0.weight", 1)]

    def last_conv(self) -> tuple[list[str], list[tuple[str, int]]]:
        conv = f"{self.features}.{len(self.spec.blocks) + 1}"
        slices = _conv_bn_out(conv)
        if isinstance(self.spec.head, ClassifierHead):
            slices.append(("classifier.0.weight", 1))
        else:
            slices += [("classifier.cbr.0.weight", 1), ("classifier.scale.1.weight", 1)]
        return [f"{conv}.0.weight"], slices

    def head(self) -> tuple[list[str], list[tuple[str, int]]]:
        if isinstance(self.spec.head, ClassifierHead):
            return (["classifier.0.weight"], [("classifier.0.weight", 0),
                                              ("classifier.0.bias", 0),
                                              ("classifier.3.weight", 1)])
        # LR-ASPP: the cbr branch and the scale gate multiply channel by channel.
        producers = ["classifier.cbr.0.weight", "classifier.scale.1.weight"]
        slices = [("classifier.cbr.0.weight", 0), ("classifier.scale.1.weight", 0)]
        slices += [(f"classifier.cbr.1.{name}", 0) for name in _BN]
        slices.append(("classifier.high_classifier.weight", 1))
        return producers, slices


def _conv_bn_out(prefix: str) -> list[tuple[str, int]]:
    """Output channels of a ConvBNAct: the conv's filters and its BN's four vectors."""
    return [(f"{prefix}.0.weight", 0)] + [(f"{prefix}.1.{name}", 0) for name in _BN]
