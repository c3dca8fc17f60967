"""The per-entry terms a phone model prices an entry by (see estimate): counts of the
work an entry does, its MACs, weights and conv positions as netadapt.cost counts them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..cost import ROLES, Part, conv_output_size, layer_parts
from ..spec import Layer, NetworkSpec, make_divisible
from .graphs import EntryKey, entry_keys
from .table import LatencyTable


def entry_row(key: EntryKey) -> Layer:
    """The spec row an entry times, with the fields its key leaves blank (see EntryKey)
    filled in again: output size, SE width."""
    row = Layer._make(key)
    if key.kind in ("stem", "block"):
        return row._replace(
            h_out=conv_output_size(key.h, key.kernel, key.stride, key.dilation),
            w_out=conv_output_size(key.w, key.kernel, key.stride, key.dilation),
            squeeze=make_divisible(key.exp // 4) if key.se else 0)
    if key.kind in ("last_conv", "conv", "seg_classifier"):  # 1x1 convs at their input size
        return row._replace(h_out=key.h, w_out=key.w)
    return row


def entry_parts(key: EntryKey) -> list[Part]:
    """The Conv2d / Linear layers an entry runs, counted by netadapt.cost: those of the
    spec row it times, or, for the entries that time a piece of a row (the classifier
    alone, the pieces of a Lite R-ASPP head), of that piece."""
    if key.kind == "classifier":  # a head's last Linear alone
        return [p for p in layer_parts(key._replace(kind="head", exp=key.c_in))
                if p.name == "fc2"]
    if key.kind == "lraspp_high":  # the 128-channel branch and its pooled gate
        return [p for p in layer_parts(key._replace(kind="lraspp"))
                if p.name in ("cbr", "scale")]
    if key.kind == "seg_classifier":  # a 1x1 conv with bias, at its input size
        row = entry_row(key)._replace(kind="lraspp", low=key.c_in)
        return [p for p in layer_parts(row) if p.name == "low_classifier"]
    if key.kind == "upsample":  # a resize: no MACs
        return []
    if key.kind == "conv":  # a segmentation network's last conv: no pool, same conv
        return layer_parts(entry_row(key._replace(kind="last_conv")))
    return layer_parts(entry_row(key))


def _sum(parts: Sequence[Part], field: str, roles: Sequence[str] = ROLES) -> float:
    return sum(getattr(p, field) for p in parts if p.role in roles)


def depthwise_outputs(key: EntryKey, parts: Sequence[Part]) -> float:
    """Output elements of a block's depthwise conv (kernel x kernel MACs each)."""
    return _sum(parts, "macs", ("depthwise",)) // key.kernel ** 2 if key.kind == "block" else 0


def activations(key: EntryKey) -> float:
    """Activation elements written (input read once: the previous entry wrote it)."""
    if key.kind in ("head", "classifier"):
        return 0
    row = entry_row(key)
    ho, wo = row.h_out, row.w_out
    if key.kind in ("stem", "last_conv", "upsample", "conv", "seg_classifier"):
        return key.out * ho * wo
    if key.kind == "lraspp_high":  # the branch, gated, then resized
        return key.exp * (key.h * key.w + ho * wo)
    expanded = key.exp * key.h * key.w if key.expand else 0
    return expanded + key.exp * ho * wo + key.out * ho * wo


def map_weights_m(key: EntryKey, parts: Sequence[Part]) -> float:
    """Millions of weights of the entry's convs on feature maps (stem, expansion,
    depthwise, projection, last conv, LR-ASPP's branch conv and classifiers). Not the
    1x1 convs on pooled features (SE, LR-ASPP's gate) nor the head's Linears:
    matrix-vector products, which read each weight once and cost their MACs."""
    return sum(p.weights for p in parts if p.role in ("conv", "depthwise")) / 1e6


def op_m_positions(key: EntryKey, parts: Sequence[Part]) -> float:
    """Millions of positions swept over feature maps by the entry's ops, as the
    published runtime (TFLite) runs them: each conv's output positions, plus an h-swish
    after a conv (an op of its own; ReLU is fused into the conv), an SE block's pool and
    rescale, a residual add, the last conv's global pool, LR-ASPP's pool, gate multiply,
    branch sum and resizes. None depends on a width."""
    convs = sum(p.positions for p in parts if p.role in ("conv", "depthwise"))
    row = entry_row(key)
    at_in, at_out = key.h * key.w, row.h_out * row.w_out
    hswish = int(key.act == "hswish")
    extra = {
        "stem": hswish * at_out,
        "block": (hswish * ((at_in if key.expand else 0) + at_out)
                  + (2 * at_out if key.se else 0) + (at_out if key.residual else 0)),
        "last_conv": (hswish + 1) * at_in,
        "conv": hswish * at_in,
        "lraspp_high": 2 * at_in + at_out,
        "upsample": at_in + at_out,
    }.get(key.kind, 0)
    return (convs + extra) / 1e6


# The L2 cache of the Pixel 1's big cores (Snapdragon 821: 1 MiB shared by its two Kryo
# big cores, no L3 below it: Kryo's published specifications, AnandTech's Snapdragon 820
# preview): the working set a conv keeps on chip. Assumed, not fitted.
CACHE_BYTES = 1 << 20
FLOAT_BYTES = 4


def conv_tensors(key: EntryKey, name: str) -> tuple[int, int]:
    """Elements of the input and output tensors of the entry's conv ``name`` (a Part on
    a feature map)."""
    row = entry_row(key)
    at_in, at_out = key.h * key.w, row.h_out * row.w_out
    if name == "depthwise":
        return key.exp * at_in, key.exp * at_out
    if name == "project":
        return key.exp * at_out, key.out * at_out
    if name in ("expand", "cbr"):  # to the expansion (LR-ASPP: the branch) width
        return key.c_in * at_in, key.exp * at_in
    return key.c_in * at_in, key.out * at_out  # the stem, last conv, a seg classifier


def spilled_m_elements(key: EntryKey, parts: Sequence[Part]) -> float:
    """Millions of activation elements (input + output) of the entry's convs whose
    working set exceeds CACHE_BYTES: a GEMM re-reads its input for every block of output
    channels (a depthwise conv, every row for each kernel row), from the cache when the
    tensors fit it, else from DRAM. What a smaller input saves beyond its positions."""
    total = 0
    for part in parts:
        if part.role in ("conv", "depthwise"):
            n = sum(conv_tensors(key, part.name))
            total += n if n * FLOAT_BYTES > CACHE_BYTES else 0
    return total / 1e6


# The terms a model may use, per entry (from the entry and its counted parts): millions
# of each, "entries" a fixed cost per entry, and SOURCE_TERM the source table's own time
# for the entry. MACs, weights and conv positions are netadapt.cost's counts.
TERMS: dict[str, Callable[[EntryKey, Sequence[Part]], float]] = {
    # all multiply-accumulates
    "mmacs": lambda k, p: _sum(p, "macs") / 1e6,
    # elements an SE block pools and rescales (the expanded tensor after depthwise)
    "se_m_elements": lambda k, p: (depthwise_outputs(k, p) if k.se else 0) / 1e6,
    # output positions summed over the entry's convs on feature maps (not on pooled
    # features), whatever their widths
    "conv_m_positions": lambda k, p: _sum(p, "positions", ("conv", "depthwise")) / 1e6,
    # dense convs: the stem, a block's expansion and projection, the last conv
    "pointwise_mmacs": lambda k, p: _sum(p, "macs", ("conv",)) / 1e6,
    "depthwise_mmacs": lambda k, p: _sum(p, "macs", ("depthwise",)) / 1e6,
    # matrix-vector products on pooled features: the head's Linears, LR-ASPP's gate
    "gemm_mmacs": lambda k, p: _sum(p, "macs", ("linear", "gate")) / 1e6,
    "depthwise_m_outputs": lambda k, p: depthwise_outputs(k, p) / 1e6,
    # weights read per inference (biases and folded BN left out: a few per channel)
    "weights_m": lambda k, p: _sum(p, "weights") / 1e6,
    # the convolutions' weights (the head's Linears left out: they are read once whatever
    # the input size too, but fit no published point)
    "conv_weights_m": lambda k, p: _sum(p, "weights", ("conv", "depthwise", "se", "gate")) / 1e6,
    "activations_m": lambda k, p: activations(k) / 1e6,
    "entries": lambda k, p: 0.0 if k.kind == "classifier" else 1.0,
    "map_weights_m": map_weights_m,
    "op_m_positions": op_m_positions,
    "spilled_m_elements": spilled_m_elements,
}
SOURCE_TERM = "source_ms"  # the source table's entry time (the device it was measured on)


def term_values(key: EntryKey, terms: Sequence[str],
                source: LatencyTable | None = None) -> list[float]:
    """The model's terms for one entry."""
    parts = entry_parts(key)
    values = []
    for t in terms:
        if t == SOURCE_TERM:
            ms = source.entry_ms(key) if source is not None else None
            values.append(float("nan") if ms is None else ms)
        else:
            values.append(TERMS[t](key, parts))
    return values


def keys_terms(keys: Sequence[EntryKey], terms: Sequence[str],
               source: LatencyTable | None = None) -> np.ndarray:
    """Sum of the terms over a network's entries."""
    return np.array([term_values(k, terms, source) for k in keys]).sum(axis=0)


def network_terms(spec: NetworkSpec, terms: Sequence[str],
                  source: LatencyTable | None = None) -> np.ndarray:
    """Sum of the terms over the spec's entries (the source's time uncalibrated: its
    coefficient absorbs the calibration, as the estimate's table has none)."""
    return keys_terms([k for _, k in entry_keys(spec)], terms, source)
